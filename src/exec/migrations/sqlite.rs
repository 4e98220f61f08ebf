//! The SQLite schema database (rusqlite): golang-migrate's sqlite3 layout for
//! `schema_migrations`, a busy timeout so a locked file is an error naming it, not a hang.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension};

use super::schema::{
    Backend, DbFailure, Direction, Engine, Evidence, SchemaDb, SchemaError, CHECKSUM_TABLE,
    EVIDENCE_TABLE, VERSION_TABLE,
};

/// How long a statement waits for another connection's lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(3);

/// A SQLite database file as a [`SchemaDb`].
pub struct SqliteDb(Engine<SqliteBackend>);

/// The SQLite side of [`Engine`].
pub(crate) struct SqliteBackend {
    conn: Connection,
    path: PathBuf,
    url: String,
}

fn failure(e: rusqlite::Error) -> DbFailure {
    let locked = matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    );
    DbFailure {
        said: e.to_string(),
        locked,
    }
}

impl SqliteDb {
    /// Opens (creating if absent) a SQLite database file.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteDb, SchemaError> {
        let path = path.as_ref().to_path_buf();
        let url = format!("sqlite:{}", path.display());
        let unreachable = |e: rusqlite::Error| SchemaError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        };
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(unreachable)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(unreachable)?;
        Ok(SqliteDb(Engine {
            backend: SqliteBackend { conn, path, url },
        }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.0.backend.path
    }

    /// Whether this connection enforces foreign keys now (`PRAGMA foreign_keys`): a connection
    /// setting, which a table-change file turns off before its transaction and on again after.
    pub fn foreign_keys(&self) -> Result<bool, SchemaError> {
        self.0
            .backend
            .conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .map_err(|e| SchemaError::Query {
                url: self.0.backend.url.clone(),
                doing: "reading PRAGMA foreign_keys".to_owned(),
                database_said: e.to_string(),
            })
    }
}

super::schema::delegate_schema_db!(SqliteDb);

impl Backend for SqliteBackend {
    fn url(&self) -> &str {
        &self.url
    }

    // SQLite's own locking (BEGIN IMMEDIATE, busy timeout) is the lock.
    fn lock(&mut self) -> Result<(), SchemaError> {
        Ok(())
    }

    fn unlock(&mut self) {}

    fn ensure_tables(&mut self) -> Result<(), DbFailure> {
        let exists: bool = self
            .conn
            .query_row(
                "SELECT count(*) = 3 FROM sqlite_master WHERE type = 'table' AND name IN (?1, ?2, ?3)",
                [VERSION_TABLE, CHECKSUM_TABLE, EVIDENCE_TABLE],
                |r| r.get(0),
            )
            .map_err(failure)?;
        if exists {
            return Ok(());
        }
        // golang-migrate's sqlite3 driver creates exactly this table and index.
        self.conn
            .execute_batch(&format!(
                "BEGIN IMMEDIATE;
                 CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version uint64,dirty bool);
                 CREATE UNIQUE INDEX IF NOT EXISTS version_unique ON {VERSION_TABLE} (version);
                 CREATE TABLE IF NOT EXISTS {CHECKSUM_TABLE} (
                     version INTEGER PRIMARY KEY, checksum TEXT NOT NULL, applied_at TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS {EVIDENCE_TABLE} (
                     version INTEGER NOT NULL, direction TEXT NOT NULL, file TEXT NOT NULL,
                     line INTEGER NOT NULL, statement TEXT NOT NULL, database_said TEXT NOT NULL,
                     recorded_at TEXT NOT NULL);
                 COMMIT;"
            ))
            .map_err(|e| {
                let f = failure(e);
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                f
            })
    }

    fn exec(&mut self, sql: &str) -> Result<(), DbFailure> {
        self.conn.execute_batch(sql).map_err(failure)
    }

    fn begin(&mut self) -> Result<(), DbFailure> {
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(failure)
    }

    fn in_transaction(&mut self) -> bool {
        !self.conn.is_autocommit()
    }

    fn read_version(&mut self) -> Result<(i64, bool), DbFailure> {
        let row = self
            .conn
            .prepare_cached(&format!(
                "SELECT version, dirty FROM {VERSION_TABLE} LIMIT 1"
            ))
            .and_then(|mut s| {
                s.query_row([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?)))
                    .optional()
            })
            .map_err(failure)?;
        Ok(row.unwrap_or((-1, false)))
    }

    fn read_checksums(&mut self) -> Result<Vec<(u64, String)>, DbFailure> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT version, checksum FROM {CHECKSUM_TABLE} ORDER BY version"
            ))
            .map_err(failure)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(failure)?;
        let mut out = Vec::new();
        for row in rows {
            let (v, c) = row.map_err(failure)?;
            out.push((v as u64, c));
        }
        Ok(out)
    }

    fn read_evidence(&mut self) -> Result<Option<Evidence>, DbFailure> {
        self.conn
            .query_row(
                &format!(
                    "SELECT version, direction, file, line, statement, database_said, recorded_at
                     FROM {EVIDENCE_TABLE} LIMIT 1"
                ),
                [],
                |r| {
                    Ok(Evidence {
                        version: r.get::<_, i64>(0)? as u64,
                        direction: if r.get::<_, String>(1)? == "down" {
                            Direction::Down
                        } else {
                            Direction::Up
                        },
                        file: PathBuf::from(r.get::<_, String>(2)?),
                        line: r.get::<_, i64>(3)? as u64,
                        statement: r.get(4)?,
                        database_said: r.get(5)?,
                        recorded_at: r.get(6)?,
                    })
                },
            )
            .optional()
            .map_err(failure)
    }

    fn write_evidence(&mut self, e: &Evidence) -> Result<(), DbFailure> {
        let tx = self.conn.transaction().map_err(failure)?;
        tx.execute(&format!("DELETE FROM {EVIDENCE_TABLE}"), [])
            .map_err(failure)?;
        tx.execute(
            &format!(
                "INSERT INTO {EVIDENCE_TABLE}
                 (version, direction, file, line, statement, database_said, recorded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))"
            ),
            rusqlite::params![
                e.version as i64,
                e.direction.as_str(),
                e.file.display().to_string(),
                e.line as i64,
                e.statement,
                e.database_said,
            ],
        )
        .map_err(failure)?;
        tx.commit().map_err(failure)
    }

    fn now_sql(&self) -> &'static str {
        "strftime('%Y-%m-%dT%H:%M:%SZ', 'now')"
    }
}
