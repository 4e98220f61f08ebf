//! The manifest the node writes beside each backup it takes, `NAME.manifest.json`: what the
//! file must hash to, the rows each table holds and the schema version it was taken at, so a
//! restore can be checked before and after it touches the live database.

use crate::durable::{self, Temporary};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The suffix of a manifest file: `NAME.manifest.json`.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";

/// What a backup the node took holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The backup's name: its file's stem.
    pub name: String,
    /// Its file name in the backups directory (`NAME.db` or `NAME.dump`).
    pub file: String,
    /// SHA-256 of the file, in hex.
    pub sha256: String,
    /// The file's size in bytes.
    pub size: u64,
    /// When it was taken (unix seconds).
    pub taken_at: u64,
    /// Why it was taken (`pre-migrate 3 -> 4`, say).
    pub why: String,
    /// The schema version in its `schema_migrations` (0 when none).
    pub schema_version: u64,
    /// Rows per table, every table included (`schema_migrations` and the node's own too). For
    /// PostgreSQL the keys are `schema.table`.
    pub tables: BTreeMap<String, u64>,
    /// Rows in the application's tables: all but `schema_migrations` and `rollback_node_*`.
    pub rows: u64,
}

impl Manifest {
    /// Writes the manifest of the backup just taken at `path` (named `name`, file `file`, in
    /// `dir`): its checksum and size now, the tables and version inspected, why and when.
    ///
    /// # Errors
    /// The file cannot be read, or the manifest cannot be written.
    pub fn record(
        dir: &Path,
        name: &str,
        file: String,
        path: &Path,
        why: &str,
        schema_version: u64,
        tables: BTreeMap<String, u64>,
    ) -> Result<Manifest, String> {
        let manifest = Manifest {
            name: name.to_owned(),
            file,
            sha256: sha256_file(path)?,
            size: fs::metadata(path)
                .map_err(|e| format!("{}: cannot be read: {e}", path.display()))?
                .len(),
            taken_at: unix_now(),
            why: why.to_owned(),
            schema_version,
            rows: application_rows(&tables),
            tables,
        };
        manifest.write(dir)?;
        Ok(manifest)
    }

    /// The manifest's path for the backup `name` in `dir`.
    pub fn path(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{name}{MANIFEST_SUFFIX}"))
    }

    /// Reads the manifest of `name` in `dir`: `Ok(None)` when there is none.
    ///
    /// # Errors
    /// The file exists but cannot be read or is not a manifest.
    pub fn read(dir: &Path, name: &str) -> Result<Option<Manifest>, String> {
        let path = Self::path(dir, name);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: cannot be read: {e}", path.display())),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{}: not a backup manifest: {e}", path.display()))
    }

    /// Writes the manifest beside its backup, durably (temporary file, fsync, rename, fsync of
    /// the directory).
    ///
    /// # Errors
    /// The directory cannot be written.
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        let path = Self::path(dir, &self.name);
        let mut text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        text.push('\n');
        let temporary = Temporary::named(&path, &format!(".{}{MANIFEST_SUFFIX}.tmp", self.name));
        durable::write(temporary, text.as_bytes())
            .map_err(|e| format!("{}: cannot be written: {}", path.display(), e.source))
    }
}

/// Whether a table is the application's: not golang-migrate's `schema_migrations`, not one of
/// the node's `rollback_node_*` tables, not SQLite's own `sqlite_*`. `table` may be qualified
/// (`public.users`).
pub fn is_application_table(table: &str) -> bool {
    let bare = table.rsplit('.').next().unwrap_or(table).trim_matches('"');
    bare != "schema_migrations"
        && !bare.starts_with("rollback_node_")
        && !bare.starts_with("sqlite_")
}

/// The rows of the application's tables among `tables`.
pub fn application_rows(tables: &BTreeMap<String, u64>) -> u64 {
    tables
        .iter()
        .filter(|(table, _)| is_application_table(table))
        .map(|(_, rows)| rows)
        .sum()
}

/// SHA-256 of a file, in hex.
///
/// # Errors
/// The file cannot be read.
pub fn sha256_file(path: &Path) -> Result<String, String> {
    let mut file =
        fs::File::open(path).map_err(|e| format!("{}: cannot be read: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("{}: cannot be read: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Checks `path` against its manifest: size and SHA-256.
///
/// # Errors
/// What differs, naming the file.
pub fn check_file(path: &Path, manifest: &Manifest) -> Result<(), String> {
    let size = fs::metadata(path)
        .map_err(|e| format!("{}: cannot be read: {e}", path.display()))?
        .len();
    if size != manifest.size {
        return Err(format!(
            "{}: {size} bytes, but its manifest says {} bytes (truncated or replaced)",
            path.display(),
            manifest.size
        ));
    }
    let sum = sha256_file(path)?;
    if sum != manifest.sha256 {
        return Err(format!(
            "{}: SHA-256 {} does not match its manifest's {} (the file was damaged or changed)",
            path.display(),
            &sum[..12],
            manifest.sha256.get(..12).unwrap_or(&manifest.sha256)
        ));
    }
    Ok(())
}

/// Compares row counts found with those expected; the first differences, in words.
///
/// # Errors
/// Which tables differ and how.
pub fn check_tables(
    found: &BTreeMap<String, u64>,
    expected: &BTreeMap<String, u64>,
) -> Result<(), String> {
    let mut problems = Vec::new();
    for (table, rows) in expected {
        match found.get(table) {
            Some(n) if n == rows => {}
            Some(n) => problems.push(format!("{table} has {n} rows, expected {rows}")),
            None => problems.push(format!("{table} is missing ({rows} rows expected)")),
        }
    }
    for table in found.keys().filter(|t| !expected.contains_key(*t)) {
        problems.push(format!("{table} is not expected"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        let more = problems.len().saturating_sub(3);
        problems.truncate(3);
        let mut text = problems.join("; ");
        if more > 0 {
            text.push_str(&format!("; and {more} more"));
        }
        Err(text)
    }
}

/// Fsyncs a directory so a rename in it is durable (best effort).
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Now, in unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
