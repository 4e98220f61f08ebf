//! Real backups: a directory of `NAME.db` (SQLite) and `NAME.dump` (`pg_dump -Fc`) files, the
//! backup's name being the file's stem, with a [`Manifest`] beside the ones the node took.
//!
//! - [`list`]: every backup in the directory, read at each call, newest first; a damaged one is
//!   listed as not verified with its problem, never an error.
//! - [`sqlite::restore`] and [`postgres::restore`]: verify the backup (SQLite: while it is copied,
//!   the copy committing only once it passed), restore, verify the result; a backup that fails
//!   leaves the live database as it was.
//! - [`take`] and [`retain`]: pre-migration backups and how many of them are kept.
//! - [`executor::RealBackups`]: all of it as the node's [`crate::exec::Backups`] executor.
//!
//! ```
//! use rollback_node::exec::backups::{list, take};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let live = dir.path().join("app.db");
//! let conn = rusqlite::Connection::open(&live).unwrap();
//! conn.execute_batch("CREATE TABLE users (id INTEGER); INSERT INTO users VALUES (1), (2);").unwrap();
//! let backups = dir.path().join("backups");
//! std::fs::create_dir(&backups).unwrap();
//!
//! let url = format!("sqlite:{}", live.display());
//! let manifest = take(&backups, &url, "before an upgrade", (0, 1)).unwrap();
//! assert_eq!(manifest.rows, 2);
//! let listed = list(&backups);
//! assert_eq!(listed[0].name, manifest.name);
//! assert!(listed[0].verified);
//! ```

pub mod executor;
pub mod manifest;
pub mod postgres;
pub mod sqlite;

pub use executor::RealBackups;
pub use manifest::{Manifest, MANIFEST_SUFFIX};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The live database a backup is restored into, from the estate's `[schema] database`.
pub use crate::exec::database::Database;

/// A backup in the directory, as a `backups` message lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// Its name: the file's stem, as `restore` requests give it.
    pub name: String,
    /// Its file name.
    pub file: String,
    /// When it was taken (unix seconds): the manifest's, else the file's modification time.
    pub taken_at: u64,
    /// The schema version it holds, when it could be read.
    pub schema_version: Option<u64>,
    /// Rows in its application tables, when they could be counted.
    pub rows: Option<u64>,
    /// The file's size in bytes.
    pub size: u64,
    /// Whether it passed its checks: the manifest's checksum, or (without one) reading it whole.
    pub verified: bool,
    /// Why it did not, or what could not be said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Whether the node took it (it has a manifest).
    pub manifest: bool,
    /// Why it was taken, from its manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// A restore that completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The backup restored.
    pub backup: String,
    /// Rows in the application's tables of the live database after it.
    pub rows: u64,
    /// The schema version the live database is at after it (the backup's).
    pub schema_version: u64,
    /// Rows per table after it.
    pub tables: BTreeMap<String, u64>,
    /// How long it took, verification included.
    pub duration: Duration,
    /// PostgreSQL: the database the old one was kept as (`app_before_restore_1760000000`).
    pub kept: Option<String>,
}

/// A restore that did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The backup failed its checks; the live database was not touched.
    #[error("{0}; the live database was not touched")]
    Refused(String),
    /// The restore failed before anything in the live database changed.
    #[error("{0}; the live database is as it was")]
    NothingChanged(String),
    /// The live database changed but does not check out.
    #[error("{0}")]
    PartWay(String),
}

/// A file's stem: its name without the last extension.
pub(crate) fn stem(path: &Path) -> String {
    path.file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned())
}

/// Checks the backups directory at start: it exists, is a directory, and can be written.
///
/// # Errors
/// One line naming the directory and what is wrong.
pub fn check_dir(dir: &Path) -> Result<(), String> {
    let meta = fs::metadata(dir).map_err(|e| {
        format!(
            "[backups] dir {}: {e}; expected an existing directory of backups",
            dir.display()
        )
    })?;
    if !meta.is_dir() {
        return Err(format!(
            "[backups] dir {}: not a directory; expected a directory of backups",
            dir.display()
        ));
    }
    let probe = dir.join(format!(".rollback-node-probe-{}", std::process::id()));
    fs::write(&probe, b"")
        .and_then(|()| fs::remove_file(&probe))
        .map_err(|e| {
            format!(
                "[backups] dir {}: cannot be written ({e}); the node writes pre-migration backups there",
                dir.display()
            )
        })
}

fn mtime(meta: &fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Lists one backup file.
fn describe(dir: &Path, path: &Path, name: &str, size: u64, modified: u64) -> BackupInfo {
    let file = path
        .file_name()
        .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
    let mut info = BackupInfo {
        name: name.to_owned(),
        file,
        taken_at: modified,
        schema_version: None,
        rows: None,
        size,
        verified: false,
        problem: None,
        manifest: false,
        why: None,
    };
    let is_dump = path.extension().is_some_and(|e| e == "dump");
    match Manifest::read(dir, name) {
        Ok(Some(m)) => {
            info.taken_at = m.taken_at;
            info.schema_version = Some(m.schema_version);
            info.rows = Some(m.rows);
            info.manifest = true;
            info.why = Some(m.why.clone());
            match manifest::check_file(path, &m) {
                Ok(()) => info.verified = true,
                Err(e) => info.problem = Some(e),
            }
        }
        Ok(None) => {
            let read = if is_dump {
                postgres::scan(path)
            } else {
                sqlite::inspect(path)
            };
            match read {
                Ok(inspection) => {
                    info.schema_version = Some(inspection.schema_version);
                    info.rows = Some(manifest::application_rows(&inspection.tables));
                    info.verified = true;
                }
                Err(e) => info.problem = Some(e),
            }
        }
        Err(e) => info.problem = Some(e),
    }
    info
}

/// The backup files in `dir`: `(path, name)`.
fn files(dir: &Path) -> Vec<(PathBuf, String)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with('.') || !path.is_file() {
            continue;
        }
        if path.extension().is_some_and(|e| e == "db" || e == "dump") {
            out.push((path.clone(), stem(&path)));
        }
    }
    out
}

/// Every backup in `dir`, read now, newest first (then by name). A damaged file is listed as
/// not verified with its problem; a manifest whose file is gone is listed with that problem. A
/// directory that cannot be read lists nothing ([`check_dir`] says why at start).
pub fn list(dir: &Path) -> Vec<BackupInfo> {
    let found = files(dir);
    let mut out: Vec<BackupInfo> = found
        .iter()
        .map(|(path, name)| {
            let meta = fs::metadata(path);
            let (size, modified) = meta.as_ref().map_or((0, 0), |m| (m.len(), mtime(m)));
            describe(dir, path, name, size, modified)
        })
        .collect();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(MANIFEST_SUFFIX) else {
                continue;
            };
            if file.starts_with('.') || found.iter().any(|(_, n)| n == name) {
                continue;
            }
            if let Ok(Some(m)) = Manifest::read(dir, name) {
                out.push(BackupInfo {
                    name: m.name.clone(),
                    file: m.file.clone(),
                    taken_at: m.taken_at,
                    schema_version: Some(m.schema_version),
                    rows: Some(m.rows),
                    size: 0,
                    verified: false,
                    problem: Some(format!(
                        "{}: missing (its manifest is there)",
                        dir.join(&m.file).display()
                    )),
                    manifest: true,
                    why: Some(m.why),
                });
            }
        }
    }
    // Newest first: by the time taken (seconds), then by the file's modification time, which
    // tells apart two backups taken in the same second.
    let modified = |file: &str| fs::metadata(dir.join(file)).and_then(|m| m.modified()).ok();
    out.sort_by_cached_key(|b| {
        (
            std::cmp::Reverse(b.taken_at),
            std::cmp::Reverse(modified(&b.file)),
            b.name.clone(),
        )
    });
    out
}

/// The file of backup `name` for `database` in `dir`, if there is one.
pub fn find(dir: &Path, database: &Database, name: &str) -> Option<PathBuf> {
    let path = dir.join(format!("{name}.{}", database.extension()));
    (path.is_file() && stem(&path) == name && !name.contains('/')).then_some(path)
}

/// Takes a pre-migration backup of the live database at `url` into `dir`, named after the
/// versions and the time (`pre_migrate_3_to_4_1760000000`), with its manifest. SQLite: the
/// online backup API; PostgreSQL: `pg_dump -Fc`.
///
/// # Errors
/// The live database cannot be read, the tool fails, or `dir` cannot be written.
pub fn take(dir: &Path, url: &str, why: &str, versions: (u64, u64)) -> Result<Manifest, String> {
    let database = Database::from_url(url)?;
    let base = format!(
        "pre_migrate_{}_to_{}_{}",
        versions.0,
        versions.1,
        manifest::unix_now()
    );
    let mut name = base.clone();
    let mut n = 1;
    while dir
        .join(format!("{name}.{}", database.extension()))
        .exists()
        || Manifest::path(dir, &name).exists()
    {
        n += 1;
        name = format!("{base}_{n}");
    }
    take_named(dir, &database, &name, why)
}

/// Takes a backup of `database` into `dir` as `name`, with its manifest.
///
/// # Errors
/// As [`take`].
pub fn take_named(
    dir: &Path,
    database: &Database,
    name: &str,
    why: &str,
) -> Result<Manifest, String> {
    match database {
        Database::Sqlite(live) => sqlite::take(dir, live, name, why),
        Database::Postgres(url) => postgres::take(dir, url, name, why),
    }
}

/// Keeps the newest `keep_last` backups the node took (those with a manifest) and deletes the
/// older ones with their manifests; backups put there by hand are never deleted. Returns the
/// names deleted.
///
/// # Errors
/// A file that cannot be deleted, naming it.
pub fn retain(dir: &Path, keep_last: usize) -> Result<Vec<String>, String> {
    let mut taken: Vec<Manifest> = fs::read_dir(dir)
        .map_err(|e| format!("{}: cannot be read: {e}", dir.display()))?
        .flatten()
        .filter_map(|entry| {
            let file = entry.file_name().to_string_lossy().into_owned();
            let name = file.strip_suffix(MANIFEST_SUFFIX)?;
            if file.starts_with('.') {
                return None;
            }
            Manifest::read(dir, name).ok().flatten()
        })
        .collect();
    taken.sort_by(|a, b| {
        b.taken_at
            .cmp(&a.taken_at)
            .then_with(|| b.name.cmp(&a.name))
    });
    let mut deleted = Vec::new();
    for m in taken.into_iter().skip(keep_last) {
        // Only the file the manifest names beside it, never a path elsewhere.
        if m.file.contains('/') || m.file.starts_with('.') || stem(Path::new(&m.file)) != m.name {
            continue;
        }
        let file = dir.join(&m.file);
        match fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: cannot be deleted: {e}", file.display())),
        }
        let path = Manifest::path(dir, &m.name);
        fs::remove_file(&path)
            .map_err(|e| format!("{}: cannot be deleted: {e}", path.display()))?;
        deleted.push(m.name);
    }
    manifest::sync_dir(dir);
    Ok(deleted)
}
