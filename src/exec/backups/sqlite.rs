//! SQLite backups: read-only inspection (`PRAGMA quick_check`, rows per table, the version in
//! `schema_migrations`), restore into the live file with SQLite's online backup API in steps —
//! one write transaction on the live database, so a reader in WAL mode sees the old content or
//! the new, never an error or a half — and taking a backup the same way.

use super::manifest::{application_rows, check_file, check_tables, Manifest};
use super::{RestoreError, Restored};
use crate::durable::{self, Temporary};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Pages copied per step of a restore: 4 MiB of 4 KiB pages between progress reports.
pub const PAGES_PER_STEP: i32 = 1024;

/// How long a step may keep finding the live database locked by another writer.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// What a SQLite file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// The version in `schema_migrations` (0 when there is none).
    pub schema_version: u64,
    /// Rows per table (SQLite's own `sqlite_*` tables left out).
    pub tables: BTreeMap<String, u64>,
}

fn said(path: &Path, doing: &str, e: impl std::fmt::Display) -> String {
    format!("{}: {doing}: {e}", path.display())
}

/// Opens a file read-only.
fn open_read_only(path: &Path) -> Result<Connection, String> {
    if !path.is_file() {
        return Err(format!("{}: no such file", path.display()));
    }
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| said(path, "cannot be opened", e))
}

/// `PRAGMA quick_check` says `ok`, or the first of what it says.
fn quick_check(conn: &Connection, path: &Path) -> Result<(), String> {
    let mut stmt = conn
        .prepare("PRAGMA quick_check")
        .map_err(|e| said(path, "quick_check failed", e))?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.take(3).collect())
        .map_err(|e| said(path, "quick_check failed", e))?;
    if lines.len() == 1 && lines[0] == "ok" {
        Ok(())
    } else {
        Err(said(path, "quick_check failed", lines.join("; ")))
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Rows per table.
fn count_tables(conn: &Connection, path: &Path) -> Result<BTreeMap<String, u64>, String> {
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
        )
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| said(path, "reading its tables", e))?;
    let mut tables = BTreeMap::new();
    for name in names {
        let n: i64 = conn
            .query_row(&format!("SELECT count(*) FROM {}", quote(&name)), [], |r| {
                r.get(0)
            })
            .map_err(|e| said(path, &format!("counting the rows of {name}"), e))?;
        tables.insert(name, n as u64);
    }
    Ok(tables)
}

/// The version in `schema_migrations`, 0 when there is no table or no row.
fn read_version(conn: &Connection, path: &Path) -> Result<u64, String> {
    let exists: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| said(path, "reading schema_migrations", e))?;
    if !exists {
        return Ok(0);
    }
    let version: Option<i64> = conn
        .query_row("SELECT max(version) FROM schema_migrations", [], |r| {
            r.get(0)
        })
        .map_err(|e| said(path, "reading schema_migrations", e))?;
    Ok(version.unwrap_or(0).max(0) as u64)
}

fn inspect_conn(conn: &Connection, path: &Path) -> Result<Inspection, String> {
    quick_check(conn, path)?;
    Ok(Inspection {
        schema_version: read_version(conn, path)?,
        tables: count_tables(conn, path)?,
    })
}

/// Reads a SQLite file without changing it: `quick_check`, its version and rows per table.
///
/// # Errors
/// The file is missing, not a SQLite database, or damaged; naming it and what SQLite said.
pub fn inspect(path: &Path) -> Result<Inspection, String> {
    inspect_conn(&open_read_only(path)?, path)
}

/// Verifies a backup before it is restored, read-only: with a manifest, its size and SHA-256,
/// rows per table and version against the manifest's (`quick_check` was run on exactly those
/// bytes when the node took it, so a matching checksum stands for it); without one,
/// `quick_check`, its version and its rows per table.
///
/// # Errors
/// What failed, naming the file.
pub fn verify(path: &Path, manifest: Option<&Manifest>) -> Result<Inspection, String> {
    let Some(manifest) = manifest else {
        return inspect(path);
    };
    check_file(path, manifest)?;
    let conn = open_read_only(path)?;
    let inspection = Inspection {
        schema_version: read_version(&conn, path)?,
        tables: count_tables(&conn, path)?,
    };
    check_tables(&inspection.tables, &manifest.tables)
        .map_err(|e| format!("{}: rows differ from its manifest: {e}", path.display()))?;
    if inspection.schema_version != manifest.schema_version {
        return Err(format!(
            "{}: schema version {} but its manifest says {}",
            path.display(),
            inspection.schema_version,
            manifest.schema_version
        ));
    }
    Ok(inspection)
}

/// Copies `from` into `to` with the online backup API, `pages` per step (negative: all in one),
/// reporting pages done of total after each step. One write transaction on `to`: if it fails,
/// `to` is as it was.
fn copy(
    from: &Connection,
    to: &mut Connection,
    pages: i32,
    report: &mut dyn FnMut(u64, u64),
) -> Result<(), rusqlite::Error> {
    let backup = Backup::new(from, to)?;
    let mut last_progress = Instant::now();
    loop {
        match backup.step(pages)? {
            StepResult::Done => {
                let p = backup.progress();
                report(p.pagecount as u64, p.pagecount as u64);
                return Ok(());
            }
            StepResult::More => {
                last_progress = Instant::now();
                let p = backup.progress();
                report((p.pagecount - p.remaining) as u64, p.pagecount as u64);
            }
            StepResult::Busy | StepResult::Locked => {
                if last_progress.elapsed() > LOCK_TIMEOUT {
                    return Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                        Some(format!(
                            "the database stayed locked by another writer for {} s",
                            LOCK_TIMEOUT.as_secs()
                        )),
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Restores the backup at `backup` into the live database at `live`: verified first (read-only;
/// a failure refuses it and the live database is not touched), copied with the online backup
/// API `pages` per step with progress, then the live copy verified.
///
/// # Errors
/// [`RestoreError::Refused`] when the backup fails verification, [`RestoreError::NothingChanged`]
/// when the copy fails (its transaction is rolled back), [`RestoreError::PartWay`] when the live
/// copy fails verification after the copy committed.
pub fn restore(
    backup: &Path,
    manifest: Option<&Manifest>,
    live: &Path,
    pages: i32,
    report: &mut dyn FnMut(u64, u64),
) -> Result<Restored, RestoreError> {
    let started = Instant::now();
    let name = super::stem(backup);
    let before = verify(backup, manifest).map_err(RestoreError::Refused)?;
    let source = open_read_only(backup).map_err(RestoreError::Refused)?;
    let mut target = Connection::open_with_flags(
        live,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| RestoreError::NothingChanged(said(live, "cannot be opened", e)))?;
    copy(&source, &mut target, pages, report).map_err(|e| {
        let mut text = said(live, &format!("copying {} into it", backup.display()), e);
        let sizes = (
            page_size(&source).unwrap_or(0),
            page_size(&target).unwrap_or(0),
        );
        if sizes.0 != sizes.1 {
            text.push_str(&format!(
                " (the backup's page size is {} and the live database's {}; a database in WAL mode cannot change its page size)",
                sizes.0, sizes.1
            ));
        }
        RestoreError::NothingChanged(text)
    })?;
    drop(source);
    let after = inspect_conn(&target, live).map_err(RestoreError::PartWay)?;
    check_tables(&after.tables, &before.tables).map_err(|e| {
        RestoreError::PartWay(format!(
            "{}: after restoring {name} the rows differ from the backup's: {e}",
            live.display()
        ))
    })?;
    Ok(Restored {
        backup: name,
        rows: application_rows(&after.tables),
        schema_version: after.schema_version,
        tables: after.tables,
        duration: started.elapsed(),
        kept: None,
    })
}

fn page_size(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA page_size", [], |r| r.get(0))
}

/// The version the live database's `schema_migrations` says.
///
/// # Errors
/// The file cannot be read.
pub fn live_version(live: &Path) -> Result<u64, String> {
    read_version(&open_read_only(live)?, live)
}

/// Takes a backup of the live database at `live` into `dir/NAME.db` with the online backup API
/// (a consistent snapshot while the application keeps writing), and writes its manifest.
///
/// # Errors
/// The live database cannot be read or the directory written.
pub fn take(dir: &Path, live: &Path, name: &str, why: &str) -> Result<Manifest, String> {
    let file = format!("{name}.db");
    let path = dir.join(&file);
    let temporary = Temporary::named(&path, &format!(".{file}.tmp"));
    // A leftover of a crashed backup is not a database to open: start from nothing.
    std::fs::remove_file(temporary.path())
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(e),
        })
        .map_err(|e| said(temporary.path(), "cannot be removed", e))?;
    let inspection = durable::replace_with(
        temporary,
        |tmp| -> Result<Inspection, String> {
            let source = open_read_only(live)?;
            let mut target =
                Connection::open(tmp).map_err(|e| said(tmp, "cannot be created", e))?;
            copy(&source, &mut target, -1, &mut |_, _| {})
                .map_err(|e| said(live, "backing it up", e))?;
            drop(source);
            // A self-contained file: no WAL beside it.
            let _: String = target
                .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
                .map_err(|e| said(tmp, "setting its journal mode", e))?;
            let inspection = inspect_conn(&target, tmp)?;
            drop(target);
            Ok(inspection)
        },
        |e| match e.step {
            durable::Step::Sync => said(&e.path, "cannot be synced", e.source),
            _ => said(&e.path, "cannot be written", e.source),
        },
    )?;
    Manifest::record(
        dir,
        name,
        file,
        &path,
        why,
        inspection.schema_version,
        inspection.tables,
    )
}
