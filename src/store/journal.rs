//! The durable journal of a state directory (`DIR/journal.sqlite3`, SQLite in WAL mode with
//! `synchronous = FULL`): one row per decided change, holding its request and then either its
//! refusal, or its operation (the intent, durable before any effect starts) and later its
//! outcome and reply (durable before the reply is sent). Every so often a snapshot of the
//! machine is written in the same transaction, so a restart reads the snapshot and the rows after
//! it: start-up time and memory do not grow with the journal's length.
//!
//! - Group commit: rows are written into an open transaction and committed when the runtime is
//!   about to send replies or start effects, so a batch shares one fsync. An operation whose
//!   intent and outcome arrive before the commit (an instant simulated effect) is one row.
//! - Damage is never skipped: the rows read at start must be numbered without gaps after the
//!   snapshot and each must match its CRC-32; an entry that does not decode or replays to
//!   another reply stops the start, naming it. A damaged snapshot is not trusted: the journal is
//!   replayed from the start instead.
//! - The audit trail (`history`) is read from here, not held in memory.

use crate::core::machine::{Machine, Record, Snapshot};
use crate::protocol::encode::Decimal;
use crate::protocol::replies::HistoryEntry;
use crate::store::{Entry, Outcome, Store, StoreError};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The database file inside a state directory.
pub const FILE_NAME: &str = "journal.sqlite3";
/// The lock file that keeps a second node off a state directory.
pub const LOCK_NAME: &str = "lock";
/// The journal format this build writes and reads.
pub const FORMAT: &str = "2";
/// A snapshot is written once this many entries were added since the last one.
pub const SNAPSHOT_EVERY: u64 = 10_000;

const RECOVERY: &str = "see README \"Recovering a damaged journal\"";

/// A journal that cannot be opened, read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JournalError(pub String);

fn fail(path: &Path, what: impl std::fmt::Display) -> JournalError {
    JournalError(format!("{}: {what}", path.display()))
}

fn damaged(path: &Path, e: impl std::fmt::Display) -> JournalError {
    fail(
        path,
        format!("the journal database is damaged ({e}); {RECOVERY}"),
    )
}

/// What a journal holds at start: the estate it was created for, a snapshot (if any) and the
/// entries after it.
#[derive(Debug)]
pub struct Loaded {
    /// The estate description stored with the journal (TOML).
    pub estate: String,
    /// The latest snapshot, if one was written and is intact.
    pub snapshot: Option<Snapshot>,
    /// The entries to replay after the snapshot, in order.
    pub entries: Vec<Entry>,
    /// A note for stderr when the snapshot could not be used.
    pub warning: Option<String>,
    /// Whether the journal was created by this start.
    pub created: bool,
}

/// An open journal.
#[derive(Debug)]
pub struct Journal {
    conn: Connection,
    path: PathBuf,
    in_transaction: bool,
    failure: Option<String>,
    _lock: Option<File>,
    /// An intent not yet written: written with its outcome if that comes before the commit.
    held: Option<Entry>,
    /// The intents written without an outcome, to complete their rows.
    open: HashMap<u64, Entry>,
    /// The sequence number of the last snapshot.
    snapshot_seq: u64,
    /// Entries written since the last snapshot.
    since_snapshot: u64,
}

/// The checksum of an entry: CRC-32 over its fields (integers in decimal), each preceded by its
/// length, an absent one by a marker.
fn checksum(entry: &Entry) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    let mut part = |bytes: Option<&[u8]>| match bytes {
        Some(bytes) => {
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        }
        None => hasher.update(&u64::MAX.to_le_bytes()),
    };
    part(Some(Decimal::new(entry.seq).as_bytes()));
    part(Some(entry.src.as_bytes()));
    part(Some(Decimal::new(entry.msg_id).as_bytes()));
    part(Some(&[u8::from(entry.accepted)]));
    part(Some(entry.request.as_bytes()));
    part(entry.operation.as_deref().map(str::as_bytes));
    part(entry.outcome.as_deref().map(str::as_bytes));
    part(entry.reply.as_deref().map(str::as_bytes));
    hasher.finalize()
}

const COLUMNS: &str = "seq, src, msg_id, accepted, request, operation, outcome, reply, checksum";

fn read_row(row: &rusqlite::Row) -> rusqlite::Result<(Entry, i64)> {
    Ok((
        Entry {
            seq: row.get::<_, i64>(0)? as u64,
            src: row.get(1)?,
            msg_id: row.get::<_, i64>(2)? as u64,
            accepted: row.get(3)?,
            request: row.get(4)?,
            operation: row.get(5)?,
            outcome: row.get(6)?,
            reply: row.get(7)?,
        },
        row.get(8)?,
    ))
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir` for a serving node and locks the
    /// directory against a second node.
    ///
    /// `estate` is the estate description the caller was given (TOML text and where it came
    /// from), or `None` to use the one stored with the journal. A new journal stores the given
    /// estate, or `default_estate`. Returns the journal and what it holds.
    ///
    /// # Errors
    /// The directory cannot be created or is in use by another node; the database is damaged,
    /// of another format, or was created for a different estate than the one given.
    pub fn open(
        dir: &Path,
        estate: Option<(&str, &str)>,
        default_estate: &str,
    ) -> Result<(Journal, Loaded), JournalError> {
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
        let mut journal = Journal::with(conn, path, Some(lock));
        journal.prepare()?;
        let stored = journal.meta("estate")?;
        let created = stored.is_none();
        match (&stored, estate) {
            (Some(stored), Some((given, origin))) if stored != given => {
                return Err(fail(
                    dir,
                    format!(
                        "this state directory was created for another estate than {origin}; \
                         start without --estate to resume it, or use a new --state-dir for {origin}"
                    ),
                ));
            }
            (Some(_), _) => {}
            (None, given) => {
                let text = given.map_or(default_estate, |(text, _)| text);
                journal
                    .conn
                    .execute(
                        "INSERT INTO meta (key, value) VALUES ('estate', ?1), ('format', ?2)",
                        params![text, FORMAT],
                    )
                    .map_err(|e| fail(&journal.path, e))?;
            }
        }
        let mut loaded = journal.load()?;
        loaded.created = created;
        journal.snapshot_seq = loaded.snapshot.as_ref().map_or(0, |s| s.seq);
        journal.since_snapshot = loaded.entries.len() as u64;
        Ok((journal, loaded))
    }

    /// Opens an existing journal to read it (`status`, `history`); takes no lock, writes nothing.
    ///
    /// # Errors
    /// There is no journal in `dir`, or it is damaged or of another format.
    pub fn open_existing(dir: &Path) -> Result<Journal, JournalError> {
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
        let journal = Journal::with(conn, path, None);
        journal.check_format()?;
        Ok(journal)
    }

    fn with(conn: Connection, path: PathBuf, lock: Option<File>) -> Self {
        Journal {
            conn,
            path,
            in_transaction: false,
            failure: None,
            _lock: lock,
            held: None,
            open: HashMap::new(),
            snapshot_seq: 0,
            since_snapshot: 0,
        }
    }

    /// Where the database is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn prepare(&mut self) -> Result<(), JournalError> {
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
                     operation TEXT,
                     outcome TEXT,
                     reply TEXT,
                     checksum INTEGER NOT NULL
                 ) STRICT;
                 CREATE TABLE IF NOT EXISTS snapshot (
                     id INTEGER PRIMARY KEY CHECK (id = 1),
                     seq INTEGER NOT NULL,
                     data TEXT NOT NULL,
                     checksum INTEGER NOT NULL
                 ) STRICT;",
            )
            .map_err(|e| damaged(&self.path, e))?;
        self.check_format()
    }

    fn check_format(&self) -> Result<(), JournalError> {
        match self.meta("format")? {
            None => Ok(()),
            Some(format) if format == FORMAT => Ok(()),
            Some(other) => Err(fail(
                &self.path,
                format!(
                    "journal format {other} is not the format {FORMAT} this build reads; \
                     run the version that wrote it, or start with a new --state-dir"
                ),
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

    /// The stored estate, the latest intact snapshot and the entries to replay after it, each
    /// checked: numbered without gaps, checksum intact.
    ///
    /// # Errors
    /// The database is damaged, or an entry is missing or fails its checksum.
    pub fn load(&self) -> Result<Loaded, JournalError> {
        let estate = self
            .meta("estate")?
            .ok_or_else(|| fail(&self.path, "the stored estate is missing"))?;
        let (snapshot, warning) = match self.read_snapshot() {
            Ok(snapshot) => (snapshot, None),
            Err(problem) => (
                None,
                Some(format!(
                    "{}: the snapshot is not usable ({problem}); replaying the whole journal",
                    self.path.display()
                )),
            ),
        };
        let after = snapshot.as_ref().map_or(0, |s| s.seq);
        let mut entries = Vec::new();
        if let Some(snapshot) = &snapshot {
            for &seq in &snapshot.running {
                let entry = self.entry(seq)?.ok_or_else(|| {
                    fail(
                        &self.path,
                        format!("journal entry {seq} is missing; {RECOVERY}"),
                    )
                })?;
                entries.push(entry);
            }
        }
        let mut expected = after + 1;
        self.scan(after, |entry| {
            if entry.seq != expected {
                return Err(fail(
                    &self.path,
                    format!(
                        "journal entry {expected} is missing (the next one is {}); {RECOVERY}",
                        entry.seq
                    ),
                ));
            }
            expected += 1;
            entries.push(entry);
            Ok(true)
        })?;
        Ok(Loaded {
            estate,
            snapshot,
            entries,
            warning,
            created: false,
        })
    }

    fn read_snapshot(&self) -> Result<Option<Snapshot>, String> {
        let row: Option<(i64, String, i64)> = self
            .conn
            .query_row(
                "SELECT seq, data, checksum FROM snapshot WHERE id = 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()
            .map_err(|e| e.to_string())?;
        let Some((seq, data, sum)) = row else {
            return Ok(None);
        };
        if i64::from(crc32fast::hash(data.as_bytes())) != sum {
            return Err("it fails its checksum".to_owned());
        }
        let snapshot: Snapshot = serde_json::from_str(&data).map_err(|e| e.to_string())?;
        if snapshot.seq != seq as u64 {
            return Err(format!(
                "it says entry {} but is filed as {seq}",
                snapshot.seq
            ));
        }
        Ok(Some(snapshot))
    }

    /// Checks one stored row against its checksum.
    fn verified(&self, (entry, sum): (Entry, i64)) -> Result<Entry, JournalError> {
        if i64::from(checksum(&entry)) != sum {
            return Err(fail(
                &self.path,
                format!(
                    "journal entry {} fails its checksum: it was altered or damaged; {RECOVERY}",
                    entry.seq
                ),
            ));
        }
        Ok(entry)
    }

    fn entry(&self, seq: u64) -> Result<Option<Entry>, JournalError> {
        let row = self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM journal WHERE seq = ?1"),
                [seq as i64],
                read_row,
            )
            .optional()
            .map_err(|e| damaged(&self.path, e))?;
        row.map(|row| self.verified(row)).transpose()
    }

    /// Every entry after `after`, in order, each checked against its checksum, handed to `each`
    /// until it returns `false`.
    ///
    /// # Errors
    /// The first damaged entry, or what `each` returned.
    pub fn scan(
        &self,
        after: u64,
        mut each: impl FnMut(Entry) -> Result<bool, JournalError>,
    ) -> Result<(), JournalError> {
        let mut statement = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM journal WHERE seq > ?1 ORDER BY seq"
            ))
            .map_err(|e| damaged(&self.path, e))?;
        let mut rows = statement
            .query([after as i64])
            .map_err(|e| damaged(&self.path, e))?;
        while let Some(row) = rows.next().map_err(|e| damaged(&self.path, e))? {
            let row = read_row(row).map_err(|e| damaged(&self.path, e))?;
            if !each(self.verified(row)?)? {
                break;
            }
        }
        Ok(())
    }

    /// The last `limit` operations that ended (all when `None`), oldest first, read from the
    /// end of the journal.
    ///
    /// # Errors
    /// The database cannot be read, or an entry read fails its checksum.
    pub fn history(&self, limit: Option<u64>) -> Result<Vec<HistoryEntry>, JournalError> {
        let mut statement = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM journal WHERE operation IS NOT NULL AND reply IS NOT NULL \
                 ORDER BY seq DESC LIMIT ?1"
            ))
            .map_err(|e| damaged(&self.path, e))?;
        let limit = limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let rows = statement
            .query_map([limit], read_row)
            .map_err(|e| damaged(&self.path, e))?;
        let mut entries = Vec::new();
        for row in rows {
            let entry = self.verified(row.map_err(|e| damaged(&self.path, e))?)?;
            entries.extend(entry.history_entry());
        }
        entries.reverse();
        Ok(entries)
    }

    fn begin(&mut self) -> rusqlite::Result<()> {
        if !self.in_transaction {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.in_transaction = true;
        }
        Ok(())
    }

    fn insert(&mut self, entry: &Entry) -> rusqlite::Result<()> {
        self.begin()?;
        self.since_snapshot += 1;
        self.conn
            .prepare_cached(
                "INSERT INTO journal (seq, src, msg_id, accepted, request, operation, outcome, reply, checksum)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                entry.seq as i64,
                entry.src,
                entry.msg_id as i64,
                entry.accepted,
                entry.request,
                entry.operation,
                entry.outcome,
                entry.reply,
                i64::from(checksum(entry))
            ])?;
        Ok(())
    }

    fn update(&mut self, entry: &Entry) -> rusqlite::Result<()> {
        self.begin()?;
        self.conn
            .prepare_cached(
                "UPDATE journal SET accepted = ?2, outcome = ?3, reply = ?4, checksum = ?5 WHERE seq = ?1",
            )?
            .execute(params![
                entry.seq as i64,
                entry.accepted,
                entry.outcome,
                entry.reply,
                i64::from(checksum(entry))
            ])?;
        Ok(())
    }

    fn write_held(&mut self) -> rusqlite::Result<()> {
        if let Some(held) = self.held.take() {
            self.insert(&held)?;
            self.open.insert(held.seq, held);
        }
        Ok(())
    }

    /// Completes the row of intent `seq` with its outcome and reply.
    fn finish(
        &mut self,
        seq: u64,
        accepted: bool,
        outcome: String,
        reply: &str,
    ) -> rusqlite::Result<()> {
        if let Some(mut held) = self.held.take().filter(|h| h.seq == seq) {
            held.accepted = accepted;
            held.outcome = Some(outcome);
            held.reply = Some(reply.to_owned());
            return self.insert(&held);
        }
        self.write_held()?;
        let mut entry = match self.open.remove(&seq) {
            Some(entry) => entry,
            None => match self.entry(seq) {
                Ok(Some(entry)) => entry,
                _ => return Err(rusqlite::Error::QueryReturnedNoRows),
            },
        };
        entry.accepted = accepted;
        entry.outcome = Some(outcome);
        entry.reply = Some(reply.to_owned());
        self.update(&entry)
    }

    fn write(&mut self, record: Record<'_>) -> rusqlite::Result<()> {
        match record {
            Record::Refused {
                seq,
                src,
                msg_id,
                answer,
            } => {
                self.write_held()?;
                self.insert(&Entry {
                    seq,
                    src: src.to_owned(),
                    msg_id,
                    accepted: false,
                    request: json(&answer.request),
                    operation: None,
                    outcome: None,
                    reply: Some(answer.body.to_string()),
                })
            }
            Record::Intent {
                seq,
                src,
                msg_id,
                request,
                operation,
            } => {
                self.write_held()?;
                self.held = Some(Entry {
                    seq,
                    src: src.to_owned(),
                    msg_id,
                    accepted: false,
                    request: json(request),
                    operation: Some(json(operation)),
                    outcome: None,
                    reply: None,
                });
                Ok(())
            }
            Record::Outcome {
                seq,
                completion,
                answer,
                ..
            } => self.finish(
                seq,
                answer.accepted,
                json(&Outcome::Completion(completion.clone())),
                &answer.body,
            ),
            Record::Interrupted {
                seq, found, answer, ..
            } => self.finish(
                seq,
                answer.accepted,
                json(&Outcome::Interrupted(found.clone())),
                &answer.body,
            ),
        }
    }

    fn write_snapshot(&mut self, machine: &Machine) -> Result<(), String> {
        let data = json(&machine.snapshot());
        self.conn
            .execute(
                "INSERT OR REPLACE INTO snapshot (id, seq, data, checksum) VALUES (1, ?1, ?2, ?3)",
                params![
                    machine.seq() as i64,
                    data,
                    i64::from(crc32fast::hash(data.as_bytes()))
                ],
            )
            .map_err(|e| e.to_string())?;
        self.snapshot_seq = machine.seq();
        self.since_snapshot = 0;
        Ok(())
    }
}

impl Store for Journal {
    fn record(&mut self, record: Record<'_>) {
        if self.failure.is_none() {
            if let Err(e) = self.write(record) {
                self.failure = Some(format!("cannot write the journal: {e}"));
            }
        }
    }

    fn commit(&mut self, machine: &Machine) -> Result<(), StoreError> {
        let mut result = Ok(());
        if self.failure.is_none() {
            if let Err(e) = self.write_held() {
                self.failure = Some(format!("cannot write the journal: {e}"));
            }
        }
        if self.failure.is_none() && self.in_transaction && self.since_snapshot >= SNAPSHOT_EVERY {
            if let Err(e) = self.write_snapshot(machine) {
                self.failure = Some(format!("cannot write a snapshot: {e}"));
            }
        }
        if let Some(failure) = self.failure.take() {
            if self.in_transaction {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.in_transaction = false;
            }
            return Err(StoreError(format!("{}: {failure}", self.path.display())));
        }
        if self.in_transaction {
            self.in_transaction = false;
            if let Err(e) = self.conn.execute_batch("COMMIT") {
                result = Err(StoreError(format!(
                    "{}: commit failed: {e}",
                    self.path.display()
                )));
            }
        }
        result
    }

    fn history(&mut self, limit: u32) -> Result<Vec<HistoryEntry>, String> {
        Journal::history(self, Some(u64::from(limit))).map_err(|e| e.to_string())
    }
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}
