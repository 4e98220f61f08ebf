//! The PostgreSQL store: a connection that comes back by itself ([`Db`]), the leader's journal
//! ([`PgJournal`], the second implementation of [`Store`]: every commit fenced by the lease's
//! epoch), and the reads every node makes (history, the inbox, the flags, the stored status).

use super::sql::{self, lit, opt, SCHEMA};
use crate::core::machine::{Machine, Record, Snapshot};
use crate::protocol::replies::HistoryEntry;
use crate::store::{entry_of_record, Entry, Store, StoreError};
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls, Row, SimpleQueryMessage};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// A snapshot of the machine is stored once this many entries were written since the last.
pub const SNAPSHOT_EVERY: u64 = 10_000;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbError {
    /// The store could not be reached, or the connection was lost (it may come back).
    Unreachable(String),
    /// A fenced commit found the lease gone: this node no longer leads.
    LeaseLost(String),
    /// The store answered with an error.
    Refused(String),
    /// A row of that key is there already (SQLSTATE 23505).
    Duplicate(String),
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbError::Unreachable(e) => write!(f, "the store cannot be reached: {e}"),
            DbError::LeaseLost(e) => write!(f, "{e}"),
            DbError::Refused(e) | DbError::Duplicate(e) => write!(f, "the store refused: {e}"),
        }
    }
}

/// A connection to the store, made again after a failure (at most once a `retry_after`).
pub struct Db {
    config: postgres::Config,
    client: Option<Client>,
    failed_at: Option<Instant>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("connected", &self.client.is_some())
            .finish()
    }
}

/// How long a failed connection waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_millis(200);

fn said(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => {
            let text = e.to_string();
            match std::error::Error::source(e) {
                Some(source) => format!("{text}: {source}"),
                None => text,
            }
        }
    }
}

impl Db {
    /// A store at `url`, connected now.
    ///
    /// # Errors
    /// The URL does not parse, or the store cannot be reached.
    pub fn connect(url: &str) -> Result<Db, String> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| format!("--store {url} is not a PostgreSQL URL ({e}); give postgres://USER@/DB?host=SOCKETDIR"))?;
        config.connect_timeout(Duration::from_secs(3));
        let client = config.connect(NoTls).map_err(|e| said(&e))?;
        Ok(Db {
            config,
            client: Some(client),
            failed_at: None,
        })
    }

    fn client(&mut self) -> Result<&mut Client, DbError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            if let Some(at) = self.failed_at {
                if at.elapsed() < RETRY_AFTER {
                    return Err(DbError::Unreachable("reconnecting".to_owned()));
                }
            }
            match self.config.connect(NoTls) {
                Ok(client) => {
                    self.client = Some(client);
                    self.failed_at = None;
                }
                Err(e) => {
                    self.failed_at = Some(Instant::now());
                    return Err(DbError::Unreachable(said(&e)));
                }
            }
        }
        self.client
            .as_mut()
            .ok_or_else(|| DbError::Unreachable("not connected".to_owned()))
    }

    fn classify(&mut self, e: &postgres::Error) -> DbError {
        let closed = self.client.as_ref().is_none_or(|c| c.is_closed());
        if let Some(db) = e.as_db_error() {
            if db.code().code() == sql::LEASE_LOST {
                return DbError::LeaseLost(db.message().to_owned());
            }
            if db.code().code() == "23505" {
                return DbError::Duplicate(db.message().to_owned());
            }
            // The server ended the session (pg_terminate_backend, a restart): reconnect.
            if db.code().code().starts_with("57P") || db.code().code().starts_with("08") {
                self.client = None;
                return DbError::Unreachable(db.message().to_owned());
            }
            if !closed {
                return DbError::Refused(db.message().to_owned());
            }
        }
        self.client = None;
        self.failed_at = Some(Instant::now());
        DbError::Unreachable(said(e))
    }

    /// Runs `op` on the connection; when a connection that had been working turns out dead
    /// (the server ended it while idle), once more on a new one. Every statement the store
    /// sends is safe to send twice: upserts, inserts a retry joins, reads.
    fn with<T>(
        &mut self,
        op: impl Fn(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, DbError> {
        let had = self.client.as_ref().is_some_and(|c| !c.is_closed());
        let result = op(self.client()?);
        match result {
            Ok(value) => Ok(value),
            Err(e) => match self.classify(&e) {
                DbError::Unreachable(_) if had => {
                    self.failed_at = None;
                    let again = op(self.client()?);
                    again.map_err(|e| self.classify(&e))
                }
                other => Err(other),
            },
        }
    }

    /// Runs `text` (one or more statements, as one simple query).
    ///
    /// # Errors
    /// See [`DbError`].
    pub fn batch(&mut self, text: &str) -> Result<(), DbError> {
        self.with(|c| c.batch_execute(text))
    }

    /// Runs `text` as one simple query and returns the rows of its statements as text.
    ///
    /// # Errors
    /// See [`DbError`].
    pub fn simple(&mut self, text: &str) -> Result<Vec<Vec<Option<String>>>, DbError> {
        let messages = self.with(|c| c.simple_query(text))?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                ),
                _ => None,
            })
            .collect())
    }

    /// Runs one statement with typed parameters (an unnamed statement: safe behind a pooler).
    ///
    /// # Errors
    /// See [`DbError`].
    pub fn rows(
        &mut self,
        text: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, DbError> {
        self.with(|c| c.query_typed(text, params))
    }

    /// Whether the last operation left a connection.
    pub fn is_connected(&self) -> bool {
        self.client.as_ref().is_some_and(|c| !c.is_closed())
    }
}

/// Creates the schema if needed and checks its format.
///
/// # Errors
/// The store cannot be reached, or holds a newer format than this build reads.
pub fn prepare(db: &mut Db) -> Result<(), String> {
    // The format is read before anything is created or replaced: a newer store is left as it is.
    let present = db
        .simple(&format!("SELECT to_regclass('{SCHEMA}.meta') IS NOT NULL"))
        .map_err(|e| e.to_string())?;
    if present
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .as_deref()
        == Some("t")
    {
        let format = meta(db, "format").map_err(|e| e.to_string())?;
        let format: u32 = format.as_deref().unwrap_or("0").parse().unwrap_or(u32::MAX);
        if format > sql::FORMAT {
            return Err(format!(
                "the store's schema {SCHEMA} is of format {format}, newer than this build understands ({}); run a newer rollback-node",
                sql::FORMAT
            ));
        }
    }
    db.batch(&sql::create()).map_err(|e| e.to_string())
}

/// A value of the store's `meta` table.
///
/// # Errors
/// The store cannot be read.
pub fn meta(db: &mut Db, key: &str) -> Result<Option<String>, DbError> {
    let rows = db.rows(
        &format!("SELECT value FROM {SCHEMA}.meta WHERE key = $1"),
        &[(&key, Type::TEXT)],
    )?;
    Ok(rows.first().map(|r| r.get(0)))
}

/// Sets `key` to `value` unless it is set; returns what it holds now.
///
/// # Errors
/// The store cannot be written.
pub fn adopt(db: &mut Db, key: &str, value: &str) -> Result<String, DbError> {
    db.rows(
        &format!("INSERT INTO {SCHEMA}.meta VALUES ($1, $2) ON CONFLICT DO NOTHING"),
        &[(&key, Type::TEXT), (&value, Type::TEXT)],
    )?;
    Ok(meta(db, key)?.unwrap_or_default())
}

fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn uint(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The snapshot and the journal entries after it (and those it names as running), in order.
///
/// # Errors
/// The store cannot be read, or its journal has a gap.
pub fn load(db: &mut Db) -> Result<(Option<Snapshot>, Vec<Entry>), String> {
    let rows = db
        .rows(
            &format!("SELECT body FROM {SCHEMA}.snapshot WHERE id = 1"),
            &[],
        )
        .map_err(|e| e.to_string())?;
    let snapshot: Option<Snapshot> = match rows.first() {
        Some(row) => {
            let body: String = row.get(0);
            Some(
                serde_json::from_str(&body)
                    .map_err(|e| format!("the store's snapshot does not decode ({e})"))?,
            )
        }
        None => None,
    };
    let after = snapshot.as_ref().map_or(0, |s| s.seq);
    let running: Vec<i64> = snapshot
        .as_ref()
        .map(|s| s.running.iter().map(|&s| int(s)).collect())
        .unwrap_or_default();
    let rows = db
        .rows(
            &format!(
                "SELECT seq, src, msg_id, accepted, request, operation, outcome, reply FROM {SCHEMA}.journal WHERE seq > $1 OR seq = ANY($2) ORDER BY seq"
            ),
            &[(&int(after), Type::INT8), (&running, Type::INT8_ARRAY)],
        )
        .map_err(|e| e.to_string())?;
    let mut entries = Vec::with_capacity(rows.len());
    let mut expected = after + 1;
    for row in rows {
        let entry = Entry {
            seq: uint(row.get(0)),
            src: row.get(1),
            msg_id: uint(row.get(2)),
            accepted: row.get(3),
            request: row.get(4),
            operation: row.get(5),
            outcome: row.get(6),
            reply: row.get(7),
        };
        if entry.seq > after {
            if entry.seq != expected {
                return Err(format!(
                    "the store's journal entry {expected} is missing (the next one is {})",
                    entry.seq
                ));
            }
            expected += 1;
        }
        entries.push(entry);
    }
    Ok((snapshot, entries))
}

/// The cluster's audit trail, oldest first: without `after`, its last `limit` entries; with it,
/// the first `limit` entries with a history sequence number above `after`. Entries are the
/// operations the leaders ended and the flag changes, in the order they were committed; their
/// `seq` is that history sequence number.
///
/// # Errors
/// The store cannot be read.
pub fn history(db: &mut Db, after: Option<u64>, limit: u32) -> Result<Vec<HistoryEntry>, DbError> {
    let order = if after.is_some() { "ASC" } else { "DESC" };
    let rows = db.rows(
        &format!(
            "SELECT hseq, src, msg_id, request, reply, outcome, flag, enabled FROM (
               SELECT hseq, src, msg_id, request, reply, outcome, NULL AS flag, NULL::boolean AS enabled
                 FROM {SCHEMA}.journal WHERE hseq > $1
               UNION ALL
               SELECT hseq, src, msg_id, NULL, NULL, NULL, flag, enabled FROM {SCHEMA}.flags WHERE hseq > $1) h
             ORDER BY hseq {order} LIMIT $2"
        ),
        &[
            (&int(after.unwrap_or(0)), Type::INT8),
            (&i64::from(limit), Type::INT8),
        ],
    )?;
    let mut entries: Vec<HistoryEntry> = rows
        .into_iter()
        .filter_map(|row| {
            let msg_id = uint(row.get(2));
            let outcome: Option<String> = row.get(5);
            let flag: Option<String> = row.get(6);
            let (request, reply) = match (flag, row.get::<_, Option<bool>>(7)) {
                (Some(flag), Some(enabled)) => (
                    flag_request(&flag, enabled),
                    Some(flag_reply(&flag, enabled, msg_id)),
                ),
                _ => (row.get(3), row.get(4)),
            };
            Entry {
                seq: uint(row.get(0)),
                src: row.get(1),
                msg_id,
                accepted: true,
                request,
                operation: None,
                outcome: Some(outcome.unwrap_or_default()),
                reply,
            }
            .history_entry()
        })
        .collect();
    if after.is_none() {
        entries.reverse();
    }
    Ok(entries)
}

/// The flags `names` as the store holds them: each one's latest change (none for a flag never
/// changed).
///
/// # Errors
/// The store cannot be read.
pub fn flags(db: &mut Db, names: &[String]) -> Result<BTreeMap<String, bool>, DbError> {
    let rows = db.rows(
        &format!("SELECT flag, enabled FROM {SCHEMA}.flag_state WHERE flag = ANY($1)"),
        &[(&names, Type::TEXT_ARRAY)],
    )?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A flag change's request, as the history shows it.
pub fn flag_request(flag: &str, enabled: bool) -> String {
    let request = if enabled {
        crate::core::transitions::Request::EnableFeature {
            feature: flag.to_owned(),
        }
    } else {
        crate::core::transitions::Request::DisableFeature {
            feature: flag.to_owned(),
        }
    };
    serde_json::to_string(&request).unwrap_or_default()
}

/// A flag change's reply body.
pub fn flag_reply(flag: &str, enabled: bool, msg_id: u64) -> String {
    use crate::protocol::encode::body_string;
    use crate::protocol::replies::{FeatureDisabled, FeatureEnabled};
    let feature = flag.to_owned();
    if enabled {
        body_string(Some(msg_id), &FeatureEnabled { feature })
    } else {
        body_string(
            Some(msg_id),
            &FeatureDisabled {
                feature,
                rolled_back_instant: true,
            },
        )
    }
}

/// A flag change to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagChange {
    /// The sender.
    pub src: String,
    /// The request's msg_id.
    pub msg_id: u64,
    /// The flag.
    pub flag: String,
    /// Its new value.
    pub enabled: bool,
}

/// The statement that records a batch of flag changes and each flag's latest state.
fn insert_flags(on_conflict: &str, answer: &str) -> String {
    format!(
        "WITH ins AS (
           INSERT INTO {SCHEMA}.flags (src, msg_id, node, flag, enabled)
           SELECT src, msg_id, $5, flag, enabled
             FROM unnest($1::text[], $2::bigint[], $3::text[], $4::boolean[]) WITH ORDINALITY AS c(src, msg_id, flag, enabled, n)
             ORDER BY n
           {on_conflict}
           RETURNING hseq, src, msg_id, flag, enabled),
         latest AS (
           INSERT INTO {SCHEMA}.flag_state
           SELECT DISTINCT ON (flag) flag, enabled, hseq FROM ins ORDER BY flag, hseq DESC
           ON CONFLICT (flag) DO UPDATE SET enabled = EXCLUDED.enabled, hseq = EXCLUDED.hseq
             WHERE flag_state.hseq < EXCLUDED.hseq)
         {answer}"
    )
}

/// Flag changes, recorded in one statement (in the order given: their history numbers follow
/// it), each once per sender and msg_id, with each flag's latest state beside them (kept by
/// history number, so the order of commits does not matter). Returns each change's reply as
/// recorded: its own, or the original's for a retry.
///
/// # Errors
/// The store cannot be written.
pub fn record_flags(
    db: &mut Db,
    node: &str,
    changes: &[FlagChange],
) -> Result<Vec<String>, DbError> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let srcs: Vec<&str> = changes.iter().map(|c| c.src.as_str()).collect();
    let ids: Vec<i64> = changes.iter().map(|c| int(c.msg_id)).collect();
    let flags: Vec<&str> = changes.iter().map(|c| c.flag.as_str()).collect();
    let values: Vec<bool> = changes.iter().map(|c| c.enabled).collect();
    let params: [(&(dyn ToSql + Sync), Type); 5] = [
        (&srcs, Type::TEXT_ARRAY),
        (&ids, Type::INT8_ARRAY),
        (&flags, Type::TEXT_ARRAY),
        (&values, Type::BOOL_ARRAY),
        (&node, Type::TEXT),
    ];
    // Most batches hold no retry: inserted as they are, without the cost of ON CONFLICT; one
    // that does is refused whole and inserted again row by row where there is room.
    let mine: std::collections::HashSet<(String, u64)> =
        match db.rows(&insert_flags("", "SELECT count(*) FROM ins"), &params) {
            Ok(_) => changes.iter().map(|c| (c.src.clone(), c.msg_id)).collect(),
            Err(DbError::Duplicate(_)) => db
                .rows(
                    &insert_flags(
                        "ON CONFLICT (src, msg_id) DO NOTHING",
                        "SELECT src, msg_id FROM ins",
                    ),
                    &params,
                )?
                .into_iter()
                .map(|r| (r.get(0), uint(r.get(1))))
                .collect(),
            Err(e) => return Err(e),
        };
    let mut originals: HashMap<(String, u64), (String, bool)> = HashMap::new();
    let retries: Vec<&FlagChange> = changes
        .iter()
        .filter(|c| !mine.contains(&(c.src.clone(), c.msg_id)))
        .collect();
    if !retries.is_empty() {
        let srcs: Vec<&str> = retries.iter().map(|c| c.src.as_str()).collect();
        let ids: Vec<i64> = retries.iter().map(|c| int(c.msg_id)).collect();
        let rows = db.rows(
            &format!(
                "SELECT f.src, f.msg_id, f.flag, f.enabled FROM unnest($1::text[], $2::bigint[]) AS k(src, msg_id)
                 JOIN {SCHEMA}.flags f ON f.src = k.src AND f.msg_id = k.msg_id"
            ),
            &[(&srcs, Type::TEXT_ARRAY), (&ids, Type::INT8_ARRAY)],
        )?;
        originals = rows
            .into_iter()
            .map(|r| ((r.get(0), uint(r.get(1))), (r.get(2), r.get(3))))
            .collect();
    }
    changes
        .iter()
        .map(|c| {
            let key = (c.src.clone(), c.msg_id);
            if mine.contains(&key) {
                return Ok(flag_reply(&c.flag, c.enabled, c.msg_id));
            }
            originals
                .get(&key)
                .map(|(flag, enabled)| flag_reply(flag, *enabled, c.msg_id))
                .ok_or_else(|| DbError::Refused("the flag change vanished".to_owned()))
        })
        .collect()
}

/// Puts a request into the inbox for the leader; returns its inbox number.
///
/// # Errors
/// The store cannot be written.
pub fn enqueue(
    db: &mut Db,
    node: &str,
    src: &str,
    msg_id: u64,
    body: &str,
) -> Result<u64, DbError> {
    let rows = db.rows(
        &format!(
            "INSERT INTO {SCHEMA}.inbox (node, src, msg_id, body) VALUES ($1, $2, $3, $4) RETURNING seq"
        ),
        &[
            (&node, Type::TEXT),
            (&src, Type::TEXT),
            (&int(msg_id), Type::INT8),
            (&body, Type::TEXT),
        ],
    )?;
    Ok(rows.first().map_or(0, |r| uint(r.get(0))))
}

/// The replies written so far to the inbox rows `seqs`.
///
/// # Errors
/// The store cannot be read.
pub fn replies(db: &mut Db, seqs: &[u64]) -> Result<Vec<(u64, String)>, DbError> {
    let seqs: Vec<i64> = seqs.iter().map(|&s| int(s)).collect();
    let rows = db.rows(
        &format!("SELECT seq, reply FROM {SCHEMA}.inbox WHERE seq = ANY($1) AND reply IS NOT NULL"),
        &[(&seqs, Type::INT8_ARRAY)],
    )?;
    Ok(rows
        .into_iter()
        .map(|r| (uint(r.get(0)), r.get(1)))
        .collect())
}

/// One inbox row the leader has not answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inboxed {
    /// Its inbox number.
    pub seq: u64,
    /// The sender.
    pub src: String,
    /// The request body.
    pub body: String,
}

/// The unanswered inbox rows, oldest first (at most a thousand). Not "after the last one
/// read": inbox numbers are taken when a row is inserted, not when it commits, so a row can
/// appear after one with a higher number.
///
/// # Errors
/// The store cannot be read.
pub fn unanswered(db: &mut Db) -> Result<Vec<Inboxed>, DbError> {
    let rows = db.rows(
        &format!(
            "SELECT seq, src, body FROM {SCHEMA}.inbox WHERE reply IS NULL ORDER BY seq LIMIT 1000"
        ),
        &[],
    )?;
    Ok(rows
        .into_iter()
        .map(|r| Inboxed {
            seq: uint(r.get(0)),
            src: r.get(1),
            body: r.get(2),
        })
        .collect())
}

/// The status the leader last stored, with its epoch.
///
/// # Errors
/// The store cannot be read.
pub fn stored_status(db: &mut Db) -> Result<Option<(u64, String)>, DbError> {
    let rows = db.rows(
        &format!("SELECT epoch, body FROM {SCHEMA}.status WHERE id = 1"),
        &[],
    )?;
    Ok(rows.first().map(|r| (uint(r.get(0)), r.get(1))))
}

/// The statement that writes `entries` at `epoch`: safe to run again (as after a commit whose
/// answer was lost): a row is replaced by its sequence number, and keeps the history sequence
/// number it was first given.
pub fn upsert(entries: &[Entry], epoch: u64) -> String {
    let mut body = format!(
        "INSERT INTO {SCHEMA}.journal (seq, epoch, src, msg_id, accepted, request, operation, outcome, reply, hseq) VALUES "
    );
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        let hseq = if e.outcome.is_some() {
            format!("nextval('{SCHEMA}.history_seq')")
        } else {
            "NULL".to_owned()
        };
        let _ = write!(
            body,
            "({}, {epoch}, {}, {}, {}, {}, {}, {}, {}, {hseq})",
            e.seq,
            lit(&e.src),
            int(e.msg_id),
            e.accepted,
            lit(&e.request),
            opt(e.operation.as_deref()),
            opt(e.outcome.as_deref()),
            opt(e.reply.as_deref()),
        );
    }
    body.push_str(
        " ON CONFLICT (seq) DO UPDATE SET accepted = EXCLUDED.accepted, operation = coalesce(EXCLUDED.operation, journal.operation), outcome = EXCLUDED.outcome, reply = EXCLUDED.reply, hseq = coalesce(journal.hseq, EXCLUDED.hseq), epoch = EXCLUDED.epoch; ",
    );
    body
}

/// The leader's journal: records buffered between commits, each commit one transaction that
/// holds the lease of its epoch or writes nothing.
#[derive(Debug)]
pub struct PgJournal {
    db: Db,
    node: String,
    epoch: u64,
    /// Entries recorded since the last commit, by sequence number.
    pending: Vec<Entry>,
    /// Intents committed without an outcome, to complete their rows.
    open: HashMap<u64, Entry>,
    since_snapshot: u64,
    /// Until when a lost connection is retried (the lease's local deadline).
    deadline: std::sync::Arc<super::deadline::Deadline>,
}

impl PgJournal {
    /// The journal of `node`'s term at `epoch`, over its own connection; `open` are the
    /// intents the store holds without an outcome.
    pub fn new(
        db: Db,
        node: &str,
        epoch: u64,
        open: impl IntoIterator<Item = Entry>,
        deadline: std::sync::Arc<super::deadline::Deadline>,
    ) -> Self {
        PgJournal {
            db,
            node: node.to_owned(),
            epoch,
            pending: Vec::new(),
            open: open.into_iter().map(|e| (e.seq, e)).collect(),
            since_snapshot: 0,
            deadline,
        }
    }

    /// The journal's connection, for the leader's reads.
    pub fn db(&mut self) -> &mut Db {
        &mut self.db
    }

    /// The epoch this journal writes at.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Runs `text` as one fenced transaction, again after a lost connection (the statements are
    /// idempotent) until it commits, the lease is found lost, or the lease's deadline passes.
    fn fenced(&mut self, body: &str) -> Result<(), StoreError> {
        let text = format!(
            "BEGIN; {}; {body} COMMIT;",
            sql::hold(self.epoch, &self.node)
        );
        loop {
            match self.db.batch(&text) {
                Ok(()) => return Ok(()),
                Err(DbError::Unreachable(e)) if self.deadline.holds() => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    // Leave the connection in a clean state for whoever uses it next.
                    let _ = self.db.batch("ROLLBACK");
                    return Err(StoreError(format!(
                        "the commit at epoch {} did not happen: {e}",
                        self.epoch
                    )));
                }
            }
        }
    }

    /// Writes the replies of inbox rows and the status, fenced.
    ///
    /// # Errors
    /// The lease is lost or the store is gone past the lease's deadline.
    pub fn answer(&mut self, replies: &[(u64, String)], status: &str) -> Result<(), StoreError> {
        let mut body = String::new();
        for (seq, reply) in replies {
            let _ = write!(
                body,
                "UPDATE {SCHEMA}.inbox SET reply = {} WHERE seq = {seq} AND reply IS NULL; ",
                lit(reply)
            );
        }
        let _ = write!(
            body,
            "INSERT INTO {SCHEMA}.status VALUES (1, {}, {}) ON CONFLICT (id) DO UPDATE SET epoch = EXCLUDED.epoch, body = EXCLUDED.body;",
            self.epoch,
            lit(status)
        );
        self.fenced(&body)
    }
}

impl Store for PgJournal {
    fn record(&mut self, record: Record<'_>) {
        let current = |seq: u64| {
            self.pending
                .iter()
                .rev()
                .find(|e| e.seq == seq)
                .or_else(|| self.open.get(&seq))
                .cloned()
        };
        let Some(entry) = entry_of_record(&record, current) else {
            return;
        };
        self.pending.retain(|e| e.seq != entry.seq);
        self.pending.push(entry);
    }

    fn commit(&mut self, machine: &Machine) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut body = upsert(&self.pending, self.epoch);
        let written = self.pending.len() as u64;
        let snapshot_due = self.since_snapshot + written >= SNAPSHOT_EVERY;
        if snapshot_due {
            let text = machine
                .snapshot()
                .to_json()
                .ok()
                .and_then(|json| String::from_utf8(json).ok())
                .unwrap_or_default();
            let _ = write!(
                body,
                "INSERT INTO {SCHEMA}.snapshot VALUES (1, {}, {}) ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, body = EXCLUDED.body; ",
                machine.seq(),
                lit(&text)
            );
        }
        self.fenced(&body)?;
        for e in self.pending.drain(..) {
            if e.operation.is_some() && e.outcome.is_none() {
                self.open.insert(e.seq, e);
            } else {
                self.open.remove(&e.seq);
            }
        }
        self.since_snapshot = if snapshot_due {
            0
        } else {
            self.since_snapshot + written
        };
        Ok(())
    }

    fn history(&mut self, limit: u32) -> Result<Vec<HistoryEntry>, String> {
        history(&mut self.db, None, limit).map_err(|e| e.to_string())
    }

    fn history_after(&mut self, after: u64, limit: u32) -> Result<Vec<HistoryEntry>, String> {
        history(&mut self.db, Some(after), limit).map_err(|e| e.to_string())
    }
}
