//! The PostgreSQL schema database (the synchronous `postgres` client): golang-migrate's layout
//! for `schema_migrations` and its advisory lock, so this engine and golang-migrate never run at
//! the same time on one database.
//!
//! ## The fence
//!
//! When several controller nodes share one store, one of them leads at a time, under a lease
//! with an increasing integer epoch. A node that lost its lease may not know it yet (a long
//! pause, a partition), so the target itself refuses its writes: the table
//! [`FENCE_TABLE`]`(epoch bigint NOT NULL)`, one row, in the database's default schema, holds
//! the newest epoch that has led.
//!
//! - A node that takes the lease calls [`advance_fence`] first (it waits for any transaction
//!   holding the row), then reads the target, reconciles and starts its queue.
//! - A database opened with [`PostgresDb::open_fenced`] at epoch `E` begins every transaction
//!   it opens with `SET LOCAL idle_in_transaction_session_timeout` ([`FENCE_IDLE_TIMEOUT`], so
//!   a paused holder does not keep the next leader waiting) and
//!   `UPDATE rollback_node_fence SET epoch = E WHERE epoch <= E`, raising an error when no row
//!   matched: the row lock is held through the migration, and a node that has lost its lease
//!   stops at its next transaction. A file run outside a transaction (`CREATE INDEX
//!   CONCURRENTLY`) is preceded by the same check as a statement of its own.
//!
//! SQLite targets have no fence: they are one file on one machine ([`fences`] says which URLs
//! have one).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use ::postgres::{Client, Config, NoTls};

use crate::exec::database::Database;

use super::schema::{
    Backend, DbFailure, Direction, Engine, Evidence, SchemaDb, SchemaError, CHECKSUM_TABLE,
    EVIDENCE_TABLE, VERSION_TABLE,
};

/// How long to wait for the server, and for the migration lock.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The fence table: one row, the newest epoch that has led (see the module's documentation).
pub const FENCE_TABLE: &str = "rollback_node_fence";

/// How long a fenced transaction may sit idle before the server ends its session, releasing the
/// fence row: a paused or partitioned holder keeps the next leader's [`advance_fence`] waiting
/// at most this long once its current statement is done. Set with `SET LOCAL`, so only our own
/// transactions have it.
pub const FENCE_IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// A PostgreSQL database as a [`SchemaDb`].
pub struct PostgresDb(Engine<PostgresBackend>);

/// The PostgreSQL side of [`Engine`].
pub(crate) struct PostgresBackend {
    client: Client,
    /// How to connect again (a fenced session the server ended, see [`FENCE_IDLE_TIMEOUT`]).
    config: Config,
    url: String,
    lock_id: i64,
    locked: bool,
    /// Whether a transaction may be open (false only right after our own COMMIT/ROLLBACK).
    maybe_in_tx: bool,
    /// The three tables were seen on this connection.
    tables_ok: bool,
    /// The epoch every transaction checks the fence against (`None`: unfenced).
    fence: Option<u64>,
}

/// The first row of a simple query, as text.
/// The key of the transaction-scoped advisory lock that serialises creating the bookkeeping
/// tables.
const TABLES_LOCK: i64 = 0x7262_6e5f_7462_6c73;

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
    /// Connects (with a timeout of [`TIMEOUT`]), unfenced.
    pub fn open(url: &str) -> Result<PostgresDb, SchemaError> {
        PostgresDb::open_fenced(url, None)
    }

    /// Connects (with a timeout of [`TIMEOUT`]); with `Some(epoch)`, every transaction it opens
    /// first checks [`FENCE_TABLE`] against that epoch and fails, changing nothing, when a newer
    /// epoch has been recorded or the table is missing (see the module's documentation). An
    /// epoch beyond `bigint` is refused by the database at each transaction.
    pub fn open_fenced(url: &str, fence: Option<u64>) -> Result<PostgresDb, SchemaError> {
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
                config,
                url: shown,
                lock_id,
                locked: false,
                maybe_in_tx: false,
                tables_ok: false,
                fence,
            },
        }))
    }
}

super::schema::delegate_schema_db!(PostgresDb);

impl PostgresBackend {
    /// A fenced connection the server has closed (its idle timeout ended a paused
    /// transaction) is opened again, so a node that still leads can go on; an unfenced one is
    /// left as it is.
    fn revive(&mut self) -> Result<(), SchemaError> {
        if self.fence.is_none() || !self.client.is_closed() {
            return Ok(());
        }
        self.client = self
            .config
            .connect(NoTls)
            .map_err(|e| SchemaError::Unreachable {
                url: self.url.clone(),
                reason: e.to_string(),
            })?;
        // The session's locks, transaction and what it had seen went with it.
        self.locked = false;
        self.maybe_in_tx = false;
        self.tables_ok = false;
        Ok(())
    }
}

impl Backend for PostgresBackend {
    fn url(&self) -> &str {
        &self.url
    }

    fn lock(&mut self) -> Result<(), SchemaError> {
        self.revive()?;
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
        self.revive().map_err(|e| DbFailure {
            said: e.to_string(),
            locked: false,
        })?;
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
        // golang-migrate's postgres driver creates exactly this table. Several nodes may start
        // on one database at the same moment: CREATE TABLE IF NOT EXISTS alone can then fail on
        // a duplicate type, so the creation is serialised by a transaction-scoped lock.
        self.client
            .batch_execute(&format!(
                "BEGIN;
                 SELECT pg_advisory_xact_lock({TABLES_LOCK});
                 CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version bigint not null primary key, dirty boolean not null);
                 CREATE TABLE IF NOT EXISTS {CHECKSUM_TABLE} (
                     version bigint primary key, checksum text not null, applied_at timestamptz not null);
                 CREATE TABLE IF NOT EXISTS {EVIDENCE_TABLE} (
                     version bigint not null, direction text not null, file text not null,
                     line bigint not null, statement text not null, database_said text not null,
                     recorded_at timestamptz not null default now());
                 COMMIT;"
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
        let Some(epoch) = self.fence else {
            return self.exec("BEGIN");
        };
        // One round trip: the fence row is locked by the transaction's first statements and
        // held until it ends.
        let sql = format!(
            "BEGIN; SET LOCAL idle_in_transaction_session_timeout = '{}'; {}",
            timeout_setting(FENCE_IDLE_TIMEOUT),
            fence_check_sql(epoch)
        );
        let result = self.exec(&sql);
        if result.is_err() {
            // Refused (or failed) after BEGIN: leave no aborted transaction behind, so the
            // engine can still read where the database stands.
            let _ = self.exec("ROLLBACK");
        }
        result
    }

    fn fence(&mut self) -> Result<(), DbFailure> {
        match self.fence {
            Some(epoch) => self
                .client
                .batch_execute(&fence_check_sql(epoch))
                .map_err(failure),
            None => Ok(()),
        }
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
        if let Some(epoch) = self.fence {
            tx.batch_execute(&fence_check_sql(epoch)).map_err(failure)?;
        }
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

/// A duration as a PostgreSQL time setting: whole seconds as `3s`, else milliseconds.
fn timeout_setting(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// One statement that advances the fence to `epoch` (the row stays locked until the
/// transaction ends) or raises an error naming the epoch it holds: a newer one, no row, or no
/// table are all a lease this node no longer has.
fn fence_check_sql(epoch: u64) -> String {
    format!(
        "DO $rollback_node_fence$
DECLARE held bigint;
BEGIN
  IF to_regclass('{FENCE_TABLE}') IS NULL THEN
    RAISE EXCEPTION '{FENCE_TABLE} does not exist, so no leader has advanced it: this node''s lease (epoch {epoch}) was lost or never recorded, so it must not change the database';
  END IF;
  UPDATE {FENCE_TABLE} SET epoch = {epoch} WHERE epoch <= {epoch};
  IF NOT FOUND THEN
    SELECT max(epoch) INTO held FROM {FENCE_TABLE};
    RAISE EXCEPTION '{FENCE_TABLE} holds epoch %, newer than this node''s epoch {epoch}: this node''s lease was lost, so it must not change the database', coalesce(held::text, 'none (it has no row)');
  END IF;
END
$rollback_node_fence$"
    )
}

/// Whether a target URL has a fence: a PostgreSQL one does; an SQLite one (one file on one
/// machine) does not, nor does a URL that names neither.
pub fn fences(url: &str) -> bool {
    matches!(Database::from_url(url), Ok(Database::Postgres(_)))
}

/// Advances the fence of the PostgreSQL target at `url` to `epoch`: what a node does first when
/// it takes the lease, before it reads the target and starts its queue.
///
/// Creates [`FENCE_TABLE`]`(epoch bigint NOT NULL)` in the database's default schema if it is
/// missing, and its one row (epoch 0) if it has none, under a transaction-scoped advisory lock,
/// so two nodes doing it at once are safe; then `UPDATE rollback_node_fence SET epoch = E WHERE
/// epoch <= E`, which waits for any transaction holding the row (a fenced migration of the
/// previous leader; at most [`FENCE_IDLE_TIMEOUT`] once that leader stops sending statements).
/// The same epoch again is accepted.
///
/// An SQLite target has no fence: `Ok(())` at once (see [`fences`]).
///
/// # Errors
/// The URL or server cannot be used, or a newer epoch than `epoch` has been recorded: then this
/// node must not lead, and the error names that epoch.
pub fn advance_fence(url: &str, epoch: u64) -> Result<(), String> {
    if let Database::Sqlite(_) = Database::from_url(url)? {
        return Ok(());
    }
    let shown = redact(url);
    let wanted = i64::try_from(epoch).map_err(|_| {
        format!(
            "{shown}: epoch {epoch} does not fit {FENCE_TABLE}.epoch (bigint, at most {})",
            i64::MAX
        )
    })?;
    let mut config = Config::from_str(url).map_err(|e| format!("{shown}: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(TIMEOUT);
    }
    let mut client = config
        .connect(NoTls)
        .map_err(|e| format!("{shown}: unreachable: {e}"))?;
    let said =
        |doing: &str, e: ::postgres::Error| format!("{shown}: {doing} failed: {}", failure(e).said);
    let names = client
        .query_one(
            "SELECT current_database()::text, coalesce(current_schema()::text, 'public')",
            &[],
        )
        .map_err(|e| said("reading the database and schema names", e))?;
    let lock_id = advisory_lock_id(
        &names.get::<_, String>(0),
        &names.get::<_, String>(1),
        FENCE_TABLE,
    );
    client
        .batch_execute(&format!(
            "BEGIN;
             SELECT pg_advisory_xact_lock({lock_id});
             CREATE TABLE IF NOT EXISTS {FENCE_TABLE} (epoch bigint NOT NULL);
             INSERT INTO {FENCE_TABLE} (epoch) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM {FENCE_TABLE});
             COMMIT;"
        ))
        .map_err(|e| said(&format!("creating {FENCE_TABLE}"), e))?;
    let advanced = client
        .execute(
            &format!("UPDATE {FENCE_TABLE} SET epoch = $1 WHERE epoch <= $1"),
            &[&wanted],
        )
        .map_err(|e| said(&format!("advancing {FENCE_TABLE} to epoch {epoch}"), e))?;
    if advanced > 0 {
        return Ok(());
    }
    let held: Option<i64> = client
        .query_one(&format!("SELECT max(epoch) FROM {FENCE_TABLE}"), &[])
        .map_err(|e| said(&format!("reading {FENCE_TABLE}"), e))?
        .get(0);
    let held = held.map_or("none (it has no row)".to_owned(), |h| h.to_string());
    Err(format!(
        "{shown}: {FENCE_TABLE} holds epoch {held}, newer than epoch {epoch}: a node with a newer lease has led this database, so this node must not lead"
    ))
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
