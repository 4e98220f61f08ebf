//! SQLite backups: read-only inspection (`PRAGMA quick_check`, rows per table, the version in
//! `schema_migrations`), restore into the live file with SQLite's online backup API in steps —
//! one write transaction on the live database, so a reader in WAL mode sees the old content or
//! the new, never an error or a half, committed only once the backup's verification (run beside
//! the copy) has passed — and taking a backup the same way.

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

/// Why a copy stopped.
enum CopyError {
    /// SQLite failed; the copy's transaction is rolled back.
    Sqlite(rusqlite::Error),
    /// The check before the commit failed; the copy's transaction is rolled back.
    Refused(String),
    /// The check failed after the copy had committed: the source shrank while it was copied, so
    /// the step meant to stop short of its last page copied it all.
    Committed(String),
}

impl From<rusqlite::Error> for CopyError {
    fn from(e: rusqlite::Error) -> Self {
        CopyError::Sqlite(e)
    }
}

/// Copies `from` into `to` with the online backup API, `pages` per step (negative: all in one),
/// reporting pages done of total after each step. One write transaction on `to`: if it fails,
/// `to` is as it was. With `before_commit`, the copy stops one page short of the end, calls it,
/// and commits only if it passes: when it fails, the transaction is rolled back.
fn copy(
    from: &Connection,
    to: &mut Connection,
    pages: i32,
    report: &mut dyn FnMut(u64, u64),
    mut before_commit: Option<&mut dyn FnMut() -> Result<(), String>>,
) -> Result<(), CopyError> {
    // Pages still to copy: the source's size until a step says.
    let mut remaining: i32 = if before_commit.is_some() {
        from.query_row("PRAGMA page_count", [], |r| r.get(0))?
    } else {
        0
    };
    let backup = Backup::new(from, to)?;
    let mut last_progress = Instant::now();
    loop {
        let mut n = pages;
        // This step stops short of the last page, so that the commit waits for the check.
        let mut held = false;
        if before_commit.is_some() && (pages < 0 || pages >= remaining) {
            if remaining > 1 {
                n = remaining - 1;
                held = true;
            } else if let Some(check) = before_commit.take() {
                check().map_err(CopyError::Refused)?;
            }
        }
        match backup.step(n)? {
            StepResult::Done => {
                if let Some(check) = before_commit.take() {
                    check().map_err(CopyError::Committed)?;
                }
                let p = backup.progress();
                report(p.pagecount as u64, p.pagecount as u64);
                return Ok(());
            }
            StepResult::More => {
                last_progress = Instant::now();
                let p = backup.progress();
                remaining = p.remaining;
                if !held {
                    report((p.pagecount - p.remaining) as u64, p.pagecount as u64);
                }
            }
            StepResult::Busy | StepResult::Locked => {
                if last_progress.elapsed() > LOCK_TIMEOUT {
                    return Err(CopyError::Sqlite(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                        Some(format!(
                            "the database stayed locked by another writer for {} s",
                            LOCK_TIMEOUT.as_secs()
                        )),
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// A backup's verification running on a thread of its own beside the copy; its result is waited
/// for once and kept.
struct Verifying<'s> {
    running: Option<std::thread::ScopedJoinHandle<'s, Result<Inspection, String>>>,
    result: Option<Result<Inspection, String>>,
}

impl<'s> Verifying<'s> {
    fn start<'e: 's>(
        scope: &'s std::thread::Scope<'s, 'e>,
        backup: &'e Path,
        manifest: Option<&'e Manifest>,
    ) -> Verifying<'s> {
        Verifying {
            running: Some(scope.spawn(move || verify(backup, manifest))),
            result: None,
        }
    }

    /// The verification's result, waiting for it the first time.
    fn wait(&mut self) -> &Result<Inspection, String> {
        if let Some(running) = self.running.take() {
            let result = running
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            self.result = Some(result);
        }
        self.result
            .as_ref()
            .expect("a verification started has a result once waited for")
    }

    /// The verification's failure, if it failed, as the refusal; else `otherwise`: a failure of
    /// the backup's own is what a restore of it says first, as when it was verified before.
    fn refusal_or(&mut self, otherwise: RestoreError) -> RestoreError {
        match self.wait() {
            Err(e) => RestoreError::Refused(e.clone()),
            Ok(_) => otherwise,
        }
    }
}

/// The live copy checked after the commit, on connections of its own: `quick_check` on one
/// thread, the version and rows per table on this one, while the target connection
/// checkpoints the copy from the write-ahead log into the file (WAL mode) on a third.
fn check_live(live: &Path, target: Connection) -> Result<Inspection, String> {
    std::thread::scope(|scope| {
        let checkpoint = scope.spawn(move || {
            // What the connection would do when it closes, done while the checks read: a
            // failure here leaves the copy committed in the log, as a failed close would.
            let _ = target.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            target
        });
        let checked = scope.spawn(|| quick_check(&open_read_only(live)?, live));
        let counted = open_read_only(live).and_then(|conn| {
            Ok(Inspection {
                schema_version: read_version(&conn, live)?,
                tables: count_tables(&conn, live)?,
            })
        });
        let checked = checked
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let target = checkpoint
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        drop(target);
        checked.and(counted)
    })
}

/// Restores the backup at `backup` into the live database at `live`: verified (read-only) on a
/// thread of its own while it is copied with the online backup API `pages` per step with
/// progress; the copy's one transaction commits only once the verification has passed, so a
/// failure refuses it and rolls the copy back, leaving the live database as it was. The live
/// copy is then verified (`quick_check`, version, rows per table against the backup's).
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
    let (before, target) = std::thread::scope(|scope| {
        let mut verifying = Verifying::start(scope, backup, manifest);
        let source = match open_read_only(backup) {
            Ok(source) => source,
            Err(e) => return Err(verifying.refusal_or(RestoreError::Refused(e))),
        };
        if !live.exists() {
            // Opening it would create it: nothing is made before the backup has passed.
            if let Err(e) = verifying.wait() {
                return Err(RestoreError::Refused(e.clone()));
            }
        }
        let mut target = match Connection::open_with_flags(
            live,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        ) {
            Ok(target) => target,
            Err(e) => {
                let e = RestoreError::NothingChanged(said(live, "cannot be opened", e));
                return Err(verifying.refusal_or(e));
            }
        };
        let mut passed = || verifying.wait().as_ref().map(|_| ()).map_err(Clone::clone);
        let copied = copy(&source, &mut target, pages, report, Some(&mut passed));
        match copied {
            Ok(()) => {}
            Err(CopyError::Refused(e)) => return Err(RestoreError::Refused(e)),
            Err(CopyError::Committed(e)) => {
                return Err(RestoreError::PartWay(format!(
                    "{e} (it changed while it was copied into {})",
                    live.display()
                )))
            }
            Err(CopyError::Sqlite(e)) => {
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
                return Err(verifying.refusal_or(RestoreError::NothingChanged(text)));
            }
        }
        drop(source);
        match verifying.wait() {
            Ok(before) => Ok((before.clone(), target)),
            Err(e) => Err(RestoreError::Refused(e.clone())),
        }
    })?;
    let after = check_live(live, target).map_err(RestoreError::PartWay)?;
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
            copy(&source, &mut target, -1, &mut |_, _| {}, None).map_err(|e| match e {
                CopyError::Sqlite(e) => said(live, "backing it up", e),
                CopyError::Refused(e) | CopyError::Committed(e) => e,
            })?;
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
