//! The durable journal of a state directory (`DIR/journal.sqlite3`, SQLite in WAL mode with
//! `synchronous = FULL`): one row per decided change, holding its request and then either its
//! refusal, or its operation (the intent, durable before any effect starts) and later its
//! outcome and reply (durable before the reply is sent). Every so often, right after a commit, a
//! snapshot of the machine is written beside it ([`crate::store::snapshot`]), so a restart reads
//! the snapshot and the rows after it: start-up time and memory do not grow with the journal's
//! length.
//!
//! - Group commit: the rows recorded are handed to the journal's writer thread
//!   ([`crate::store::writer`]) when the runtime is about to send replies or start effects; the
//!   writer commits everything handed over since its last commit as one transaction, so a batch
//!   shares one fsync. An operation whose intent and outcome arrive before the hand-over (an
//!   instant simulated effect) is one row. Once the journal is open, its own connection only
//!   reads.
//! - Damage is never skipped: the rows read at start must be numbered without gaps after the
//!   snapshot and each must match its CRC-32; an entry that does not decode or replays to
//!   another reply stops the start, naming it. A damaged snapshot is not trusted: the journal is
//!   replayed from the start instead.
//! - The audit trail (`history`) is read from here, not held in memory.

use crate::core::effects::Operation;
use crate::core::machine::{Machine, Record, Snapshot};
use crate::protocol::replies::HistoryEntry;
use crate::store::snapshot;
use crate::store::writer::{checksum, Batch, Row, RowRef, Write, Writer};
use crate::store::{Entry, Store, StoreError, Then};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// A database error: a permission problem says so (and what to do); anything else is damage.
fn damaged(path: &Path, e: impl std::fmt::Display) -> JournalError {
    let text = e.to_string();
    if is_permission(&text) {
        return unwritable(path, &text);
    }
    fail(
        path,
        format!("the journal database is damaged ({text}); {RECOVERY}"),
    )
}

fn is_permission(text: &str) -> bool {
    [
        "readonly database",
        "unable to open database file",
        "Permission denied",
        "read-only file system",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// A state directory the node may not write (or read).
fn unwritable(path: &Path, said: &str) -> JournalError {
    let dir = path.parent().unwrap_or(path);
    JournalError(format!(
        "{}: the state directory cannot be written ({said}); this is a permission problem, not damage: let this user write it (and its files), or give --state-dir a directory it may write",
        dir.display()
    ))
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
    /// The directory the estate file was in: its relative paths are relative to it.
    pub estate_dir: Option<PathBuf>,
}

/// What a state directory was created for, read before a start adopts it
/// ([`Journal::stored`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The estate description stored with the journal (TOML).
    pub estate: String,
    /// The directory the estate file was in: its relative paths are relative to it.
    pub estate_dir: Option<PathBuf>,
}

fn another_estate(dir: &Path, origin: &str) -> JournalError {
    fail(
        dir,
        format!(
            "this state directory was created for another estate than {origin}; \
             start without --estate to resume it, or use a new --state-dir for {origin}"
        ),
    )
}

/// An open journal.
#[derive(Debug)]
pub struct Journal {
    conn: Connection,
    path: PathBuf,
    failure: Option<String>,
    /// The writes recorded since the last commit, to be handed to the writer.
    batch: Batch,
    /// The writer thread, started by the first commit that has something to write.
    writer: Option<Writer>,
    _lock: Option<File>,
    /// An intent not yet written: written with its outcome if that comes before the commit.
    held: Held,
    /// Reused for each outcome's JSON.
    outcome: String,
    /// The intents written without an outcome, to complete their rows.
    open: HashMap<u64, Entry>,
    /// Entries written since the last snapshot.
    since_snapshot: u64,
}

/// An intent held until its outcome or the commit, in buffers reused from one to the next.
#[derive(Debug, Default)]
struct Held {
    active: bool,
    seq: u64,
    src: String,
    msg_id: u64,
    request: String,
    /// The operation, turned into JSON only if the intent is written on its own.
    pending_operation: Option<Arc<Operation>>,
    operation: String,
}

impl Held {
    fn row<'a>(
        &'a self,
        outcome: Option<&'a str>,
        reply: Option<&'a str>,
        accepted: bool,
    ) -> RowRef<'a> {
        RowRef {
            seq: self.seq,
            src: &self.src,
            msg_id: self.msg_id,
            accepted,
            request: &self.request,
            operation: Some(&self.operation),
            outcome,
            reply,
        }
    }

    fn entry(&self) -> Entry {
        Entry {
            seq: self.seq,
            src: self.src.clone(),
            msg_id: self.msg_id,
            accepted: false,
            request: self.request.clone(),
            operation: Some(self.operation.clone()),
            outcome: None,
            reply: None,
        }
    }
}

impl Entry {
    fn as_row(&self) -> RowRef<'_> {
        RowRef {
            seq: self.seq,
            src: &self.src,
            msg_id: self.msg_id,
            accepted: self.accepted,
            request: &self.request,
            operation: self.operation.as_deref(),
            outcome: self.outcome.as_deref(),
            reply: self.reply.as_deref(),
        }
    }
}

/// [`Outcome`] by reference, for writing.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum OutcomeRef<'a> {
    Completion(&'a crate::core::effects::Completion),
    Interrupted(&'a crate::core::effects::Found),
}

/// `value` as JSON in `buffer` (cleared first), whose capacity is reused.
fn into_json<T: Serialize>(mut buffer: String, value: &T) -> String {
    buffer.clear();
    crate::protocol::encode::json_into(&mut buffer, value);
    buffer
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
        estate_dir: &Path,
    ) -> Result<(Journal, Loaded), JournalError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(dir, format!("cannot create the state directory: {e}")))?;
        let lock_path = dir.join(LOCK_NAME);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                    unwritable(&lock_path, &e.to_string())
                }
                _ => fail(&lock_path, e),
            })?;
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
        // A snapshot a crash cut short is only a temporary file: the last one is intact.
        let _ = std::fs::remove_file(dir.join(snapshot::TEMPORARY_NAME));
        let path = dir.join(FILE_NAME);
        let conn = Connection::open(&path).map_err(|e| fail(&path, e))?;
        let mut journal = Journal::with(conn, path, Some(lock));
        journal.prepare()?;
        let stored = journal.meta("estate")?;
        let created = stored.is_none();
        match (&stored, estate) {
            (Some(stored), Some((given, origin))) if stored != given => {
                return Err(another_estate(dir, origin));
            }
            (Some(_), _) => {}
            (None, given) => {
                let text = given.map_or(default_estate, |(text, _)| text);
                journal
                    .conn
                    .execute(
                        "INSERT INTO meta (key, value) VALUES ('estate', ?1), ('format', ?2), ('estate_dir', ?3)",
                        params![text, FORMAT, estate_dir.display().to_string()],
                    )
                    .map_err(|e| fail(&journal.path, e))?;
            }
        }
        let mut loaded = journal.load()?;
        loaded.created = created;
        journal.since_snapshot = loaded.entries.len() as u64;
        Ok((journal, loaded))
    }

    /// What the state directory `dir` was created for, read the way a start needs it before it
    /// may adopt the directory: nothing is created (not even `dir`), written or locked, so a
    /// start that is refused afterwards (its estate does not parse, a real system cannot be
    /// reached) leaves the directory exactly as it was. `Ok(None)`: there is no journal yet, and
    /// [`Journal::open`] would create one.
    ///
    /// `estate` is the estate the caller was given (TOML text and where it came from), or `None`.
    ///
    /// # Errors
    /// What [`Journal::open`] would refuse without writing: another node serves the directory;
    /// the database is damaged or of another format; it was created for another estate than the
    /// one given.
    pub fn stored(
        dir: &Path,
        estate: Option<(&str, &str)>,
    ) -> Result<Option<Stored>, JournalError> {
        let lock_path = dir.join(LOCK_NAME);
        if let Ok(lock) = File::open(&lock_path) {
            if let Err(std::fs::TryLockError::WouldBlock) = lock.try_lock_shared() {
                return Err(fail(
                    dir,
                    "another rollback-node is serving this state directory; stop it first",
                ));
            }
        }
        let path = dir.join(FILE_NAME);
        if !path.is_file() {
            return Ok(None);
        }
        let read_only = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        // Without a write-ahead log beside it (the node that wrote it stopped cleanly) the
        // database file holds everything, and is read as immutable: SQLite then makes no
        // shared-memory or log file. With one, it is read through the log, which exists already.
        let wal = dir.join(format!("{FILE_NAME}-wal"));
        let conn = if wal.exists() {
            Connection::open_with_flags(&path, read_only)
        } else {
            let uri = format!("file:{}?immutable=1", path.display());
            Connection::open_with_flags(uri, read_only | OpenFlags::SQLITE_OPEN_URI)
        }
        .map_err(|e| damaged(&path, e))?;
        let journal = Journal::with(conn, path, None);
        let has_meta: bool = journal
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(|e| damaged(&journal.path, e))?;
        if !has_meta {
            return Ok(None);
        }
        journal.check_format()?;
        let Some(stored) = journal.meta("estate")? else {
            return Ok(None);
        };
        if let Some((given, origin)) = estate {
            if stored != given {
                return Err(another_estate(dir, origin));
            }
        }
        Ok(Some(Stored {
            estate: stored,
            estate_dir: journal.meta("estate_dir")?.map(PathBuf::from),
        }))
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
        // Read only: `status` and `history` must work on a directory they may not write. A WAL
        // database needs its shared-memory file; where that cannot be made, the database is
        // read as immutable (no node may be writing it then: it could not either).
        let read_only = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let opened = Connection::open_with_flags(&path, read_only).and_then(|conn| {
            conn.query_row("SELECT count(*) FROM meta", [], |_| Ok(()))?;
            Ok(conn)
        });
        let conn = match opened {
            Ok(conn) => conn,
            Err(_) => {
                let uri = format!("file:{}?immutable=1", path.display());
                Connection::open_with_flags(uri, read_only | OpenFlags::SQLITE_OPEN_URI)
                    .map_err(|e| damaged(&path, e))?
            }
        };
        let journal = Journal::with(conn, path, None);
        journal.check_format()?;
        Ok(journal)
    }

    fn with(conn: Connection, path: PathBuf, lock: Option<File>) -> Self {
        Journal {
            conn,
            path,
            failure: None,
            batch: Batch::default(),
            writer: None,
            _lock: lock,
            held: Held::default(),
            outcome: String::new(),
            open: HashMap::new(),
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
                "PRAGMA page_size = 16384;
                 PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 PRAGMA wal_autocheckpoint = 2048;
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
            estate_dir: self.meta("estate_dir")?.map(PathBuf::from),
        })
    }

    fn read_snapshot(&self) -> Result<Option<Snapshot>, String> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let Some(snapshot) = snapshot::read(dir)? else {
            return Ok(None);
        };
        let last: Option<i64> = self
            .conn
            .query_row("SELECT max(seq) FROM journal", [], |row| row.get(0))
            .map_err(|e| e.to_string())?;
        if snapshot.seq > last.unwrap_or(0) as u64 {
            return Err(format!(
                "it is of entry {}, beyond the journal's last entry {}",
                snapshot.seq,
                last.unwrap_or(0)
            ));
        }
        Ok(Some(snapshot))
    }

    /// Checks one stored row against its checksum.
    fn verified(&self, (entry, sum): (Entry, i64)) -> Result<Entry, JournalError> {
        if i64::from(checksum(entry.as_row())) != sum {
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
                "SELECT {COLUMNS} FROM journal WHERE outcome IS NOT NULL ORDER BY seq DESC LIMIT ?1"
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

    /// The operations that ended after sequence number `after`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// The journal cannot be read.
    pub fn history_after(&self, after: u64, limit: u64) -> Result<Vec<HistoryEntry>, JournalError> {
        let mut statement = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM journal WHERE outcome IS NOT NULL AND seq > ?1 ORDER BY seq LIMIT ?2"
            ))
            .map_err(|e| damaged(&self.path, e))?;
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = statement
            .query_map([after, limit], read_row)
            .map_err(|e| damaged(&self.path, e))?;
        let mut entries = Vec::new();
        for row in rows {
            let entry = self.verified(row.map_err(|e| damaged(&self.path, e))?)?;
            entries.extend(entry.history_entry());
        }
        Ok(entries)
    }

    fn insert(&mut self, row: RowRef<'_>) -> rusqlite::Result<()> {
        self.since_snapshot += 1;
        let row = Row::put(&mut self.batch, row);
        self.batch.writes.push(Write::Insert(row));
        Ok(())
    }

    fn update(&mut self, row: RowRef<'_>) -> rusqlite::Result<()> {
        let row = Row::put(&mut self.batch, row);
        self.batch.writes.push(Write::Update(row));
        Ok(())
    }

    /// Hands what was recorded since the last commit to the writer (started now if it is not
    /// yet); `then` runs once it is committed. A snapshot is taken with it when one is due.
    fn hand_over(&mut self, machine: Option<&Machine>, then: Then) -> Result<(), StoreError> {
        if let Some(why) = self.failed() {
            let error = StoreError(why);
            then(&Err(error.clone()));
            return Err(error);
        }
        let idle = self.writer.as_ref().is_none_or(Writer::idle);
        if self.batch.writes.is_empty() && idle {
            then(&Ok(()));
            return Ok(());
        }
        if self.writer.is_none() {
            match Writer::start(&self.path) {
                Ok(writer) => self.writer = Some(writer),
                Err(why) => {
                    let error = StoreError(why);
                    self.failure = Some(error.0.clone());
                    then(&Err(error.clone()));
                    return Err(error);
                }
            }
        }
        if let Some(machine) = machine.filter(|_| self.since_snapshot >= SNAPSHOT_EVERY) {
            self.batch.snapshot = Some(machine.snapshot());
            self.since_snapshot = 0;
        }
        let writer = self.writer.as_mut().expect("started above");
        writer.send(&mut self.batch, then);
        Ok(())
    }

    /// Waits for every commit handed over.
    fn settle_writes(&mut self) -> Result<(), StoreError> {
        if let Some(writer) = self.writer.as_mut() {
            writer.settle();
        }
        match self.failed() {
            Some(why) => Err(StoreError(why)),
            None => Ok(()),
        }
    }

    /// Makes what was recorded so far readable through this connection (committing it early),
    /// before a read of the journal.
    fn readable(&mut self) -> Result<(), String> {
        if !self.batch.writes.is_empty() {
            let _ = self.hand_over(None, Box::new(|_| {}));
        }
        self.settle_writes().map_err(|e| e.0)
    }

    /// Why nothing more can be written: a record that failed, or a commit.
    fn failed(&self) -> Option<String> {
        if let Some(failure) = &self.failure {
            return Some(format!("{}: {failure}", self.path.display()));
        }
        self.writer.as_ref().and_then(Writer::failure)
    }

    /// Writes the held intent as a row of its own (its outcome comes after this commit).
    fn write_held(&mut self) -> rusqlite::Result<()> {
        if !self.held.active {
            return Ok(());
        }
        self.held.active = false;
        if let Some(operation) = self.held.pending_operation.take() {
            self.held.operation = into_json(std::mem::take(&mut self.held.operation), &*operation);
        }
        let held = std::mem::take(&mut self.held);
        let written = self.insert(held.row(None, None, false));
        self.open.insert(held.seq, held.entry());
        self.held = Held {
            request: held.request,
            operation: held.operation,
            src: held.src,
            ..Held::default()
        };
        self.held.request.clear();
        self.held.operation.clear();
        self.held.src.clear();
        written
    }

    /// Completes the row of intent `seq` with its outcome (in `self.outcome`) and reply.
    fn finish(&mut self, seq: u64, accepted: bool, reply: &str) -> rusqlite::Result<()> {
        let outcome = std::mem::take(&mut self.outcome);
        let result = self.finish_with(seq, accepted, &outcome, reply);
        self.outcome = outcome;
        result
    }

    fn finish_with(
        &mut self,
        seq: u64,
        accepted: bool,
        outcome: &str,
        reply: &str,
    ) -> rusqlite::Result<()> {
        if self.held.active && self.held.seq == seq {
            // Intent and outcome in one commit: an instant operation, which changed nothing
            // outside the node. Its effects are not stored: deciding is pure, so replay derives
            // them again from the request (and checks the recorded reply).
            self.held.active = false;
            self.held.pending_operation = None;
            let held = std::mem::take(&mut self.held);
            let mut row = held.row(Some(outcome), Some(reply), accepted);
            row.operation = None;
            let written = self.insert(row);
            self.held = held;
            return written;
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
        entry.outcome = Some(outcome.to_owned());
        entry.reply = Some(reply.to_owned());
        self.update(entry.as_row())
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
                let request = std::mem::take(&mut self.held.request);
                let mut request = into_json(request, &answer.request);
                let written = self.insert(RowRef {
                    seq,
                    src,
                    msg_id,
                    accepted: false,
                    request: &request,
                    operation: None,
                    outcome: None,
                    reply: Some(&answer.body),
                });
                request.clear();
                self.held.request = request;
                written
            }
            Record::Intent {
                seq,
                src,
                msg_id,
                request,
                operation,
            } => {
                self.write_held()?;
                let held = &mut self.held;
                held.active = true;
                held.seq = seq;
                held.msg_id = msg_id;
                held.src.clear();
                held.src.push_str(src);
                held.request = into_json(std::mem::take(&mut held.request), request);
                // The operation's JSON is written only if the intent is committed on its own.
                held.pending_operation = Some(Arc::clone(operation));
                Ok(())
            }
            Record::Outcome {
                seq,
                completion,
                answer,
                ..
            } => {
                self.outcome = into_json(
                    std::mem::take(&mut self.outcome),
                    &OutcomeRef::Completion(completion),
                );
                self.finish(seq, answer.accepted, &answer.body)
            }
            Record::Interrupted {
                seq, found, answer, ..
            } => {
                self.outcome = into_json(
                    std::mem::take(&mut self.outcome),
                    &OutcomeRef::Interrupted(found),
                );
                self.finish(seq, answer.accepted, &answer.body)
            }
        }
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
        self.commit_then(machine, Box::new(|_| {}))?;
        self.settle_writes()
    }

    fn commit_then(&mut self, machine: &Machine, then: Then) -> Result<(), StoreError> {
        if self.failure.is_none() {
            if let Err(e) = self.write_held() {
                self.failure = Some(format!("cannot write the journal: {e}"));
            }
        }
        self.hand_over(Some(machine), then)
    }

    fn settle(&mut self) -> Result<(), StoreError> {
        self.settle_writes()
    }

    fn history(&mut self, limit: u32) -> Result<Vec<HistoryEntry>, String> {
        self.readable()?;
        Journal::history(self, Some(u64::from(limit))).map_err(|e| e.to_string())
    }

    fn save_ladder(&mut self, state: &str) {
        if self.failure.is_some() {
            return;
        }
        match self.write_held() {
            Ok(()) => {
                let span = self.batch.put(state);
                self.batch.writes.push(Write::Ladder(span));
            }
            Err(e) => self.failure = Some(format!("cannot write the ladder's state: {e}")),
        }
    }

    fn saved_ladder(&self) -> Option<String> {
        self.meta("ladder").ok().flatten()
    }

    fn history_after(&mut self, after: u64, limit: u32) -> Result<Vec<HistoryEntry>, String> {
        self.readable()?;
        Journal::history_after(self, after, u64::from(limit)).map_err(|e| e.to_string())
    }
}
