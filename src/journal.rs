//! The durable journal of a state directory: every answered state-changing request, in order,
//! in an embedded SQLite database (`DIR/journal.sqlite3`, WAL mode, `synchronous = FULL`).
//!
//! - Write-ahead: a [`Session`](crate::Session) records each fresh answer here before its reply
//!   is written; the binary commits the open transaction before it writes replies out. Input
//!   that arrives in a batch is committed as a group (one fsync per flush of replies), while an
//!   interactive caller's every reply waits for its own commit.
//! - Replay: at start the estate stored with the journal is loaded and every entry is applied
//!   again through the same transitions, which rebuilds the state *and* the retry memory. Each
//!   entry must replay to exactly the reply it recorded.
//! - Damage is never skipped: a missing entry, a checksum mismatch, an entry that does not
//!   decode or replays differently, or a damaged database stops the start with an error that
//!   names the entry.
//!
//! SQLite was chosen because a committed transaction survives a `kill -9` or power loss, a torn
//! write at the end of the WAL is discarded by its frame checksums, the file can be inspected with
//! any SQLite tool, and the next step (real executors) runs migrations on SQLite anyway.

use crate::executor::Executor;
use crate::refusal::Refusal;
use crate::session::{Entry, Recorder};
use crate::transitions::{Answering, Machine, Reply, Request};
use crate::wire::{write_body, Decimal};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The database file inside a state directory.
pub const FILE_NAME: &str = "journal.sqlite3";
/// The lock file that keeps a second node off a state directory.
pub const LOCK_NAME: &str = "lock";
/// The journal format this build writes and reads.
pub const FORMAT: &str = "1";

/// A journal that cannot be opened, read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JournalError(pub String);

fn fail(path: &Path, what: impl std::fmt::Display) -> JournalError {
    JournalError(format!("{}: {what}", path.display()))
}

/// An open journal, owned by one serving node.
#[derive(Debug)]
pub struct Journal {
    conn: Connection,
    path: PathBuf,
    pending: usize,
    failure: Option<String>,
    _lock: Option<File>,
    /// Reused for each entry's request JSON.
    request_json: Vec<u8>,
    /// Reused for each entry's reply JSON.
    reply_json: Vec<u8>,
}

/// One recorded entry, as `history` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Sequence number, from 1.
    pub seq: u64,
    /// Sender.
    pub src: String,
    /// The request's msg_id.
    pub msg_id: u64,
    /// Whether the request was carried out (else it was refused).
    pub accepted: bool,
    /// The request body, as JSON.
    pub request: String,
    /// The reply body, as JSON.
    pub reply: String,
}

impl Row {
    /// One JSON line: `{"seq":…,"src":…,"msg_id":…,"request":{…},"reply":{…}}`.
    pub fn to_json_line(&self) -> String {
        format!(
            r#"{{"seq":{},"src":{},"msg_id":{},"request":{},"reply":{}}}"#,
            self.seq,
            serde_json::Value::String(self.src.clone()),
            self.msg_id,
            self.request,
            self.reply
        )
    }

    fn checksum(&self) -> u32 {
        checksum(
            self.seq,
            &self.src,
            self.msg_id,
            self.accepted,
            &self.request,
            &self.reply,
        )
    }
}

/// The checksum of an entry: CRC-32 over its fields (integers in decimal), each preceded by its
/// length.
fn checksum(seq: u64, src: &str, msg_id: u64, accepted: bool, request: &str, reply: &str) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for part in [
        Decimal::new(seq).as_bytes(),
        src.as_bytes(),
        Decimal::new(msg_id).as_bytes(),
        &[u8::from(accepted)],
        request.as_bytes(),
        reply.as_bytes(),
    ] {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize()
}

/// Appends the reply body JSON stored for an answer.
fn write_reply_json(out: &mut Vec<u8>, msg_id: u64, reply: &Result<Reply, Refusal>) {
    let written = match reply {
        Ok(reply) => write_body(out, Some(msg_id), reply),
        Err(refusal) => write_body(out, Some(msg_id), refusal),
    };
    assert!(written, "reply bodies always serialize");
}

/// The reply body JSON stored for an answer.
fn reply_json(msg_id: u64, reply: &Result<Reply, Refusal>) -> String {
    let mut out = Vec::with_capacity(128);
    write_reply_json(&mut out, msg_id, reply);
    String::from_utf8(out).expect("JSON is UTF-8")
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir` for a serving node and locks the
    /// directory against a second node.
    ///
    /// `estate` is the estate description the caller was given (TOML text and where it came
    /// from), or `None` to use the one stored with the journal. A new journal stores the given
    /// estate, or `default_estate`. Returns the journal and the estate text to load.
    ///
    /// # Errors
    /// The directory cannot be created or is in use by another node; the database is damaged,
    /// of another format, or was created for a different estate than the one given.
    pub fn open(
        dir: &Path,
        estate: Option<(&str, &str)>,
        default_estate: &str,
    ) -> Result<(Journal, String), JournalError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(dir, format!("cannot create the state directory: {e}")))?;
        let lock_path = dir.join(LOCK_NAME);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| fail(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(fail(
                    dir,
                    "another rollback-node is serving this state directory; stop it first",
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(fail(&lock_path, e)),
        }
        let path = dir.join(FILE_NAME);
        let conn = Connection::open(&path).map_err(|e| fail(&path, e))?;
        let mut journal = Journal {
            conn,
            path,
            pending: 0,
            failure: None,
            _lock: Some(lock),
            request_json: Vec::new(),
            reply_json: Vec::new(),
        };
        journal.prepare()?;
        let stored = journal.meta("estate")?;
        let text = match (stored, estate) {
            (Some(stored), None) => stored,
            (Some(stored), Some((given, origin))) => {
                if stored != given {
                    return Err(fail(
                        dir,
                        format!(
                            "this state directory was created for another estate than {origin}; \
                             start without --estate to resume it, or use a new --state-dir for {origin}"
                        ),
                    ));
                }
                stored
            }
            (None, given) => {
                let text = given.map_or(default_estate, |(text, _)| text).to_owned();
                journal
                    .conn
                    .execute(
                        "INSERT INTO meta (key, value) VALUES ('estate', ?1), ('format', ?2)",
                        params![text, FORMAT],
                    )
                    .map_err(|e| fail(&journal.path, e))?;
                text
            }
        };
        Ok((journal, text))
    }

    /// Opens an existing journal to read it (`status`, `history`); takes no lock, writes nothing.
    ///
    /// # Errors
    /// There is no journal in `dir`, or it is damaged or of another format.
    pub fn open_existing(dir: &Path) -> Result<(Journal, String), JournalError> {
        let path = dir.join(FILE_NAME);
        if !path.is_file() {
            return Err(fail(
                dir,
                format!("no journal here ({FILE_NAME} not found); start the node with --state-dir first"),
            ));
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| fail(&path, e))?;
        let journal = Journal {
            conn,
            path,
            pending: 0,
            failure: None,
            _lock: None,
            request_json: Vec::new(),
            reply_json: Vec::new(),
        };
        journal.check()?;
        let text = journal
            .meta("estate")?
            .ok_or_else(|| fail(&journal.path, "the stored estate is missing"))?;
        Ok((journal, text))
    }

    /// Where the database is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn prepare(&mut self) -> Result<(), JournalError> {
        let path = self.path.clone();
        self.conn
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
                 CREATE TABLE IF NOT EXISTS journal (
                     seq INTEGER PRIMARY KEY,
                     src TEXT NOT NULL,
                     msg_id INTEGER NOT NULL,
                     accepted INTEGER NOT NULL,
                     request TEXT NOT NULL,
                     reply TEXT NOT NULL,
                     checksum INTEGER NOT NULL
                 ) STRICT;",
            )
            .map_err(|e| damaged(&path, e))?;
        self.check()
    }

    /// SQLite's own consistency check, and the format.
    fn check(&self) -> Result<(), JournalError> {
        let verdict: String = self
            .conn
            .query_row("PRAGMA quick_check", [], |row| row.get(0))
            .map_err(|e| damaged(&self.path, e))?;
        if verdict != "ok" {
            return Err(damaged(&self.path, verdict));
        }
        match self.meta("format")? {
            None => Ok(()),
            Some(format) if format == FORMAT => Ok(()),
            Some(other) => Err(fail(
                &self.path,
                format!("journal format {other} is not the format {FORMAT} this build reads"),
            )),
        }
    }

    fn meta(&self, key: &str) -> Result<Option<String>, JournalError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()
            .map_err(|e| damaged(&self.path, e))
    }

    /// Every entry in order, each checked: numbered 1, 2, 3, … without gaps, checksum intact.
    ///
    /// # Errors
    /// The first entry that is missing or damaged.
    pub fn rows(&self) -> Result<Vec<Row>, JournalError> {
        let mut statement = self
            .conn
            .prepare(
                "SELECT seq, src, msg_id, accepted, request, reply, checksum FROM journal ORDER BY seq",
            )
            .map_err(|e| damaged(&self.path, e))?;
        let mut rows = statement.query([]).map_err(|e| damaged(&self.path, e))?;
        let mut all = Vec::new();
        while let Some(row) = rows.next().map_err(|e| damaged(&self.path, e))? {
            let read = |row: &rusqlite::Row| -> rusqlite::Result<(Row, i64)> {
                Ok((
                    Row {
                        seq: row.get::<_, i64>(0)? as u64,
                        src: row.get(1)?,
                        msg_id: row.get::<_, i64>(2)? as u64,
                        accepted: row.get(3)?,
                        request: row.get(4)?,
                        reply: row.get(5)?,
                    },
                    row.get(6)?,
                ))
            };
            let (entry, checksum) = read(row).map_err(|e| damaged(&self.path, e))?;
            let expected = all.len() as u64 + 1;
            if entry.seq != expected {
                return Err(fail(
                    &self.path,
                    format!(
                        "journal entry {expected} is missing (the next one is {}); see README \"Recovering a damaged journal\"",
                        entry.seq
                    ),
                ));
            }
            if i64::from(entry.checksum()) != checksum {
                return Err(fail(
                    &self.path,
                    format!(
                        "journal entry {} fails its checksum: it was altered or damaged; see README \"Recovering a damaged journal\"",
                        entry.seq
                    ),
                ));
            }
            all.push(entry);
        }
        Ok(all)
    }

    /// Replays every entry over `machine` (freshly loaded from the stored estate). Returns how
    /// many entries were replayed.
    ///
    /// # Errors
    /// A damaged entry (see [`Journal::rows`]), or one that does not replay to the reply it
    /// recorded.
    pub fn replay<E: Executor>(&self, machine: &mut Machine<E>) -> Result<u64, JournalError> {
        let rows = self.rows()?;
        for row in &rows {
            let entry_error = |what: String| {
                fail(
                    &self.path,
                    format!(
                        "journal entry {}: {what}; see README \"Recovering a damaged journal\"",
                        row.seq
                    ),
                )
            };
            let request: Request = serde_json::from_str(&row.request)
                .map_err(|e| entry_error(format!("its request does not decode ({e})")))?;
            let (reply, answering) = machine.handle_traced(&row.src, Some(row.msg_id), request);
            if answering != Answering::Fresh(row.seq) {
                return Err(entry_error(format!(
                    "it does not replay as answer {} ({answering:?})",
                    row.seq
                )));
            }
            let replayed = reply_json(row.msg_id, &reply);
            if replayed != row.reply || reply.is_ok() != row.accepted {
                return Err(entry_error(format!(
                    "it recorded the reply {} but replays to {replayed}",
                    row.reply
                )));
            }
        }
        Ok(rows.len() as u64)
    }

    /// The last `limit` accepted entries (all when `None`), oldest first.
    ///
    /// # Errors
    /// As [`Journal::rows`].
    pub fn history(&self, limit: Option<usize>) -> Result<Vec<Row>, JournalError> {
        let mut accepted: Vec<Row> = self.rows()?.into_iter().filter(|r| r.accepted).collect();
        if let Some(limit) = limit {
            let skip = accepted.len().saturating_sub(limit);
            accepted.drain(..skip);
        }
        Ok(accepted)
    }

    /// Makes every entry recorded so far durable.
    ///
    /// # Errors
    /// A write that failed since the last commit, or the commit itself. The entries since the
    /// last commit are then lost, and so must be their replies: the caller stops.
    pub fn commit(&mut self) -> Result<(), JournalError> {
        if let Some(failure) = self.failure.take() {
            let _ = self.conn.execute_batch("ROLLBACK");
            self.pending = 0;
            return Err(fail(&self.path, failure));
        }
        if self.pending > 0 {
            self.pending = 0;
            self.conn
                .execute_batch("COMMIT")
                .map_err(|e| fail(&self.path, format!("commit failed: {e}")))?;
        }
        Ok(())
    }

    fn insert(&mut self, entry: &Entry<'_>) -> rusqlite::Result<()> {
        if self.pending == 0 {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
        }
        self.pending += 1;
        self.request_json.clear();
        serde_json::to_writer(&mut self.request_json, entry.request)
            .expect("requests always serialize");
        self.reply_json.clear();
        write_reply_json(&mut self.reply_json, entry.msg_id, entry.reply);
        let request = std::str::from_utf8(&self.request_json).expect("JSON is UTF-8");
        let reply = std::str::from_utf8(&self.reply_json).expect("JSON is UTF-8");
        let accepted = entry.reply.is_ok();
        let checksum = checksum(entry.seq, entry.src, entry.msg_id, accepted, request, reply);
        self.conn
            .prepare_cached(
                "INSERT INTO journal (seq, src, msg_id, accepted, request, reply, checksum)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                entry.seq as i64,
                entry.src,
                entry.msg_id as i64,
                accepted,
                request,
                reply,
                i64::from(checksum)
            ])?;
        Ok(())
    }
}

impl Recorder for Journal {
    fn record(&mut self, entry: Entry<'_>) {
        if self.failure.is_none() {
            if let Err(e) = self.insert(&entry) {
                self.failure = Some(format!("cannot write journal entry {}: {e}", entry.seq));
            }
        }
    }

    fn commit(&mut self) -> Result<(), String> {
        Journal::commit(self).map_err(|e| e.to_string())
    }
}

fn damaged(path: &Path, e: impl std::fmt::Display) -> JournalError {
    fail(
        path,
        format!(
            "the journal database is damaged ({e}); see README \"Recovering a damaged journal\""
        ),
    )
}
