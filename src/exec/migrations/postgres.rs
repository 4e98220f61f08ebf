//! The PostgreSQL schema database (the synchronous `postgres` client): golang-migrate's layout
//! for `schema_migrations` and its advisory lock, so this engine and golang-migrate never run at
//! the same time on one database.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use ::postgres::{Client, Config, NoTls};

use super::schema::{
    Backend, DbFailure, Direction, Engine, Evidence, SchemaDb, SchemaError, CHECKSUM_TABLE,
    EVIDENCE_TABLE, VERSION_TABLE,
};

/// How long to wait for the server, and for the migration lock.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A PostgreSQL database as a [`SchemaDb`].
pub struct PostgresDb(Engine<PostgresBackend>);

/// The PostgreSQL side of [`Engine`].
pub(crate) struct PostgresBackend {
    client: Client,
    url: String,
    lock_id: i64,
    locked: bool,
    /// Whether a transaction may be open (false only right after our own COMMIT/ROLLBACK).
    maybe_in_tx: bool,
    /// The three tables were seen on this connection.
    tables_ok: bool,
}

/// The first row of a simple query, as text.
fn first_row(
    client: &mut Client,
    sql: &str,
) -> Result<Option<Vec<Option<String>>>, ::postgres::Error> {
    for message in client.simple_query(sql)? {
        if let ::postgres::SimpleQueryMessage::Row(row) = message {
            return Ok(Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ));
        }
    }
    Ok(None)
}

/// The URL with its password hidden.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end + 3],
                &authority[..colon],
                &rest[at..]
            ),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

fn failure(e: ::postgres::Error) -> DbFailure {
    match e.as_db_error() {
        Some(db) => {
            let mut said = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(detail) = db.detail() {
                said.push_str(&format!(" (detail: {detail})"));
            }
            if let Some(hint) = db.hint() {
                said.push_str(&format!(" (hint: {hint})"));
            }
            DbFailure {
                said,
                locked: db.code().code() == "55P03",
            }
        }
        None => DbFailure {
            said: e.to_string(),
            locked: false,
        },
    }
}

/// golang-migrate's advisory lock id: CRC-32 (IEEE) of `schema\0table\0database` times a salt,
/// in 32 bits.
pub fn advisory_lock_id(database: &str, schema: &str, table: &str) -> i64 {
    let name = format!("{schema}\0{table}\0{database}");
    let sum = crc32fast::hash(name.as_bytes());
    i64::from(sum.wrapping_mul(1_486_364_155))
}

impl PostgresDb {
    /// Connects (with a timeout of [`TIMEOUT`]).
    pub fn open(url: &str) -> Result<PostgresDb, SchemaError> {
        let shown = redact(url);
        let mut config = Config::from_str(url).map_err(|e| SchemaError::BadUrl {
            url: shown.clone(),
            problem: e.to_string(),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(TIMEOUT);
        }
        let mut client = config
            .connect(NoTls)
            .map_err(|e| SchemaError::Unreachable {
                url: shown.clone(),
                reason: e.to_string(),
            })?;
        let row = client
            .query_one(
                "SELECT current_database()::text, current_schema()::text",
                &[],
            )
            .map_err(|e| SchemaError::Query {
                url: shown.clone(),
                doing: "reading the database and schema names".into(),
                database_said: failure(e).said,
            })?;
        let database: String = row.get(0);
        let schema: Option<String> = row.get(1);
        let lock_id = advisory_lock_id(
            &database,
            schema.as_deref().unwrap_or("public"),
            VERSION_TABLE,
        );
        Ok(PostgresDb(Engine {
            backend: PostgresBackend {
                client,
                url: shown,
                lock_id,
                locked: false,
                maybe_in_tx: false,
                tables_ok: false,
            },
        }))
    }
}

super::schema::delegate_schema_db!(PostgresDb);

impl Backend for PostgresBackend {
    fn url(&self) -> &str {
        &self.url
    }

    fn lock(&mut self) -> Result<(), SchemaError> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            // Simple queries: one round trip each, no statement to prepare.
            let sql = format!("SELECT pg_try_advisory_lock({})", self.lock_id);
            let got = first_row(&mut self.client, &sql)
                .map(|row| row.and_then(|r| r.into_iter().next().flatten()) == Some("t".into()))
                .map_err(|e| SchemaError::Query {
                    url: self.url.clone(),
                    doing: "taking the migration lock".into(),
                    database_said: failure(e).said,
                })?;
            if got {
                self.locked = true;
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SchemaError::Locked {
                    url: self.url.clone(),
                    reason: format!(
                        "advisory lock {} (golang-migrate's) held for over {} s",
                        self.lock_id,
                        TIMEOUT.as_secs()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn unlock(&mut self) {
        if self.locked {
            let _ = self
                .client
                .batch_execute(&format!("SELECT pg_advisory_unlock({})", self.lock_id));
            self.locked = false;
        }
    }

    fn ensure_tables(&mut self) -> Result<(), DbFailure> {
        if self.tables_ok {
            return Ok(());
        }
        let present: bool = self
            .client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL AND to_regclass($3) IS NOT NULL",
                &[&VERSION_TABLE, &CHECKSUM_TABLE, &EVIDENCE_TABLE],
            )
            .map(|r| r.get(0))
            .map_err(failure)?;
        if present {
            self.tables_ok = true;
            return Ok(());
        }
        // golang-migrate's postgres driver creates exactly this table.
        self.client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version bigint not null primary key, dirty boolean not null);
                 CREATE TABLE IF NOT EXISTS {CHECKSUM_TABLE} (
                     version bigint primary key, checksum text not null, applied_at timestamptz not null);
                 CREATE TABLE IF NOT EXISTS {EVIDENCE_TABLE} (
                     version bigint not null, direction text not null, file text not null,
                     line bigint not null, statement text not null, database_said text not null,
                     recorded_at timestamptz not null default now());"
            ))
            .map_err(failure)?;
        self.tables_ok = true;
        Ok(())
    }

    fn exec(&mut self, sql: &str) -> Result<(), DbFailure> {
        let result = self.client.batch_execute(sql).map_err(failure);
        self.maybe_in_tx = !(result.is_ok()
            && (sql.ends_with("; COMMIT") || sql == "COMMIT" || sql == "ROLLBACK"));
        result
    }

    fn begin(&mut self) -> Result<(), DbFailure> {
        self.exec("BEGIN")
    }

    // The client does not follow BEGIN/COMMIT sent as text, and a file run outside our
    // transactions may open its own: unless our own COMMIT/ROLLBACK just ran, assume one is open
    // (a ROLLBACK outside a transaction only warns).
    fn in_transaction(&mut self) -> bool {
        self.maybe_in_tx
    }

    fn read_version(&mut self) -> Result<(i64, bool), DbFailure> {
        let sql = format!("SELECT version, dirty FROM {VERSION_TABLE} LIMIT 1");
        let row = first_row(&mut self.client, &sql).map_err(failure)?;
        Ok(match row.as_deref() {
            Some([Some(version), Some(dirty)]) => (
                version.parse().map_err(|_| DbFailure {
                    said: format!("{VERSION_TABLE}.version is {version:?}, not a number"),
                    locked: false,
                })?,
                dirty == "t",
            ),
            _ => (-1, false),
        })
    }

    fn read_checksums(&mut self) -> Result<Vec<(u64, String)>, DbFailure> {
        let rows = self
            .client
            .query(
                &format!("SELECT version, checksum FROM {CHECKSUM_TABLE} ORDER BY version"),
                &[],
            )
            .map_err(failure)?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
            .collect())
    }

    fn read_evidence(&mut self) -> Result<Option<Evidence>, DbFailure> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT version, direction, file, line, statement, database_said,
                     to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                     FROM {EVIDENCE_TABLE} LIMIT 1"
                ),
                &[],
            )
            .map_err(failure)?;
        Ok(row.map(|r| Evidence {
            version: r.get::<_, i64>(0) as u64,
            direction: if r.get::<_, String>(1) == "down" {
                Direction::Down
            } else {
                Direction::Up
            },
            file: PathBuf::from(r.get::<_, String>(2)),
            line: r.get::<_, i64>(3) as u64,
            statement: r.get(4),
            database_said: r.get(5),
            recorded_at: r.get(6),
        }))
    }

    fn write_evidence(&mut self, e: &Evidence) -> Result<(), DbFailure> {
        let mut tx = self.client.transaction().map_err(failure)?;
        tx.execute(&format!("DELETE FROM {EVIDENCE_TABLE}"), &[])
            .map_err(failure)?;
        tx.execute(
            &format!(
                "INSERT INTO {EVIDENCE_TABLE}
                 (version, direction, file, line, statement, database_said)
                 VALUES ($1, $2, $3, $4, $5, $6)"
            ),
            &[
                &(e.version as i64),
                &e.direction.as_str(),
                &e.file.display().to_string(),
                &(e.line as i64),
                &e.statement,
                &e.database_said,
            ],
        )
        .map_err(failure)?;
        tx.commit().map_err(failure)
    }

    fn now_sql(&self) -> &'static str {
        "now()"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact("postgres://u@/db?host=/tmp/x"),
            "postgres://u@/db?host=/tmp/x"
        );
    }
}
