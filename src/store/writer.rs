//! The journal's writer: a thread with a connection of its own that writes and commits the rows
//! the owner thread recorded, so that deciding the next input and committing the last one
//! overlap. The owner hands over what it recorded with what must wait for it (the replies it
//! answers); the writer takes everything handed over since its last commit as one transaction —
//! a group commit as large as the time one commit took — and then calls what waited, in the
//! order it was handed over, with the result. After a failure nothing more is written, and
//! everything handed over later is told the same failure.
//!
//! Checkpointing the write-ahead log into the database (copying every page a second time) is
//! mostly a third thread's, on a connection of its own, so that neither deciding nor committing
//! waits for it.

use crate::core::machine::SnapshotOut;
use crate::store::snapshot::SnapshotWriter;
use crate::store::{StoreError, Then};
use rusqlite::{params, Connection};
use std::ops::Range;
use std::path::Path;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

/// The owner thread waits for the writer once this much text waits to be committed (bounds the
/// memory a fast input can fill).
const WAITING_AT_MOST: usize = 2 << 20;
/// The checkpointer is asked to copy the log into the database once this many rows were
/// committed since it was last asked (it skips a request while it is still copying).
const ASK_CHECKPOINT_EVERY_ROWS: u64 = 2_048;
/// The writer checkpoints itself once this many rows were committed since it last did: it
/// copies only what the checkpointer has not yet, and the log then starts again from its
/// beginning with the next commit (a checkpoint on another connection, however complete, cannot
/// tell when that may happen), so the log stays about this long at most.
const CHECKPOINT_EVERY_ROWS: u64 = 16_384;

/// A piece of a batch's text.
pub(crate) type Span = Range<usize>;

/// One row of the journal, its text in the batch's buffer.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub seq: u64,
    pub msg_id: u64,
    pub accepted: bool,
    pub src: Span,
    pub request: Span,
    pub operation: Option<Span>,
    pub outcome: Option<Span>,
    pub reply: Option<Span>,
}

impl Row {
    /// The row's fields, read from `batch`.
    fn fields<'a>(&self, batch: &'a Batch) -> RowRef<'a> {
        let text = |span: &Option<Span>| span.as_ref().map(|s| batch.at(s));
        RowRef {
            seq: self.seq,
            src: batch.at(&self.src),
            msg_id: self.msg_id,
            accepted: self.accepted,
            request: batch.at(&self.request),
            operation: text(&self.operation),
            outcome: text(&self.outcome),
            reply: text(&self.reply),
        }
    }

    /// A row of `fields`, their text put in `batch`.
    pub fn put(batch: &mut Batch, fields: RowRef<'_>) -> Row {
        let src = batch.put(fields.src);
        let request = batch.put(fields.request);
        let operation = fields.operation.map(|t| batch.put(t));
        let outcome = fields.outcome.map(|t| batch.put(t));
        let reply = fields.reply.map(|t| batch.put(t));
        Row {
            seq: fields.seq,
            msg_id: fields.msg_id,
            accepted: fields.accepted,
            src,
            request,
            operation,
            outcome,
            reply,
        }
    }
}

/// One write of a batch.
#[derive(Debug, Clone)]
pub(crate) enum Write {
    /// A new row.
    Insert(Row),
    /// An intent's row completed with its outcome and reply.
    Update(Row),
    /// The escalation ladder's saved state.
    Ladder(Span),
}

/// The writes of one commit, their text in one buffer; reused from commit to commit.
#[derive(Default)]
pub(crate) struct Batch {
    pub text: String,
    pub writes: Vec<Write>,
    /// A snapshot taken right after these writes, written once they are committed.
    pub snapshot: Option<SnapshotOut>,
    /// What waits for these writes, in the order it was handed over.
    thens: Vec<Then>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("writes", &self.writes.len())
            .field("bytes", &self.text.len())
            .finish_non_exhaustive()
    }
}

impl Batch {
    /// Appends `text` to the batch's buffer; where it is.
    pub fn put(&mut self, text: &str) -> Span {
        let start = self.text.len();
        self.text.push_str(text);
        start..self.text.len()
    }

    /// The text at `span`.
    pub fn at(&self, span: &Span) -> &str {
        &self.text[span.clone()]
    }

    /// Whether nothing is to be written and nothing waits.
    fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.thens.is_empty() && self.snapshot.is_none()
    }

    /// Moves `other`'s writes (and what waits for them) after this batch's.
    fn append(&mut self, other: &mut Batch) {
        if self.is_empty() && self.text.is_empty() {
            std::mem::swap(self, other);
            return;
        }
        let offset = self.text.len();
        self.text.push_str(&other.text);
        let shift = |span: &mut Span| *span = span.start + offset..span.end + offset;
        for mut write in other.writes.drain(..) {
            match &mut write {
                Write::Insert(row) | Write::Update(row) => {
                    shift(&mut row.src);
                    shift(&mut row.request);
                    for span in [&mut row.operation, &mut row.outcome, &mut row.reply]
                        .into_iter()
                        .flatten()
                    {
                        shift(span);
                    }
                }
                Write::Ladder(span) => shift(span),
            }
            self.writes.push(write);
        }
        if let Some(snapshot) = other.snapshot.take() {
            self.snapshot = Some(snapshot);
        }
        self.thens.append(&mut other.thens);
        other.text.clear();
    }

    fn clear(&mut self) {
        self.text.clear();
        self.writes.clear();
        self.snapshot = None;
        self.thens.clear();
    }
}

/// What the owner thread and the writer share.
#[derive(Default)]
struct Queue {
    /// Handed over and not yet taken by the writer.
    pending: Batch,
    /// What was handed over (each with its `then`), and how much of it has been told its result.
    handed: u64,
    told: u64,
    /// The first failure, after which nothing more is written.
    failure: Option<String>,
    /// The owner is gone: the writer ends once nothing is pending.
    closed: bool,
    /// The writer thread has ended (it was closed, or it stopped unexpectedly): nothing handed
    /// over from now on is written or told.
    stopped: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Something was handed over (or the owner is gone).
    work: Condvar,
    /// The writer took what was pending, or told a result.
    progress: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The owner thread's end of the writer.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the writer (and its checkpointer) on the journal database at `path`.
    ///
    /// # Errors
    /// Its connection cannot be opened.
    pub fn start(path: &Path) -> Result<Writer, String> {
        let conn = open(path)?;
        let checkpointer = start_checkpointer(path);
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = Arc::clone(&shared);
            let dir = path.parent().unwrap_or(Path::new(".")).to_owned();
            let path = path.to_owned();
            thread::Builder::new()
                .name("journal".to_owned())
                .spawn(move || write_batches(&conn, &path, &dir, &shared, checkpointer))
                .map_err(|e| format!("cannot start the journal's writer: {e}"))?
        };
        Ok(Writer {
            shared,
            thread: Some(thread),
        })
    }

    /// Whether everything handed over has been told its result.
    pub fn idle(&self) -> bool {
        let queue = self.shared.lock();
        queue.told == queue.handed
    }

    /// The first failure, if a commit failed.
    pub fn failure(&self) -> Option<String> {
        self.shared.lock().failure.clone()
    }

    /// Hands `batch`'s writes over to be committed (leaving it empty, to be filled again);
    /// `then` runs once they are. Waits while too much waits already.
    pub fn send(&mut self, batch: &mut Batch, then: Then) {
        let mut queue = self.shared.lock();
        if queue.stopped {
            let why = queue.failure.clone().unwrap_or_default();
            drop(queue);
            then(&Err(StoreError(why)));
            return;
        }
        batch.thens.push(then);
        while queue.pending.text.len() >= WAITING_AT_MOST
            && queue.failure.is_none()
            && !queue.stopped
        {
            queue = self
                .shared
                .progress
                .wait(queue)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        queue.pending.append(batch);
        queue.handed += 1;
        drop(queue);
        self.shared.work.notify_one();
    }

    /// Waits until everything handed over has been committed (or failed) and its `then` has run.
    pub fn settle(&mut self) {
        let mut queue = self.shared.lock();
        while queue.told < queue.handed && !queue.stopped {
            queue = self
                .shared
                .progress
                .wait(queue)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // What was handed over is finished before the journal (and its lock) goes.
        self.shared.lock().closed = true;
        self.shared.work.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn open(path: &Path) -> Result<Connection, String> {
    let conn = Connection::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA wal_autocheckpoint = 0;",
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(conn)
}

/// The writer thread: everything pending in one transaction, then what waited for it.
fn write_batches(
    conn: &Connection,
    path: &Path,
    dir: &Path,
    shared: &Shared,
    checkpointer: Option<Checkpointer>,
) {
    /// Marks the writer stopped when this thread ends, however it ends (a panic included), so
    /// that nobody waits for it.
    struct Ending<'a>(&'a Shared, &'a Path);
    impl Drop for Ending<'_> {
        fn drop(&mut self) {
            let mut queue = self.0.lock();
            queue.stopped = true;
            queue.failure.get_or_insert_with(|| {
                format!("{}: the journal's writer stopped", self.1.display())
            });
            drop(queue);
            self.0.progress.notify_all();
        }
    }
    let _ending = Ending(shared, path);
    let mut snapshots: Option<SnapshotWriter> = None;
    let mut since_checkpoint = 0u64;
    let mut since_asked = 0u64;
    let mut batch = Batch::default();
    loop {
        let failure = {
            let mut queue = shared.lock();
            while queue.pending.is_empty() && !queue.closed {
                queue = shared
                    .work
                    .wait(queue)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if queue.pending.is_empty() {
                break;
            }
            std::mem::swap(&mut batch, &mut queue.pending);
            queue.failure.clone()
        };
        shared.progress.notify_all();
        let result = match failure {
            Some(why) => Err(StoreError(why)),
            None if batch.writes.is_empty() => Ok(()),
            None => commit(conn, &batch).map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                let why = format!("{}: cannot write the journal: {e}", path.display());
                shared.lock().failure.get_or_insert(why.clone());
                StoreError(why)
            }),
        };
        if result.is_ok() {
            let rows = batch.writes.len() as u64;
            since_checkpoint += rows;
            since_asked += rows;
            if since_checkpoint >= CHECKPOINT_EVERY_ROWS {
                since_checkpoint = 0;
                since_asked = 0;
                let _ = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)");
            } else if since_asked >= ASK_CHECKPOINT_EVERY_ROWS {
                since_asked = 0;
                if let Some(checkpointer) = &checkpointer {
                    let _ = checkpointer.ask.try_send(());
                }
            }
            if let Some(snapshot) = batch.snapshot.take() {
                let writer = snapshots.get_or_insert_with(|| SnapshotWriter::new(dir));
                if let Some(failure) = writer.failure() {
                    eprintln!("rollback-node: {failure}; start-up will replay more of the journal");
                }
                writer.submit(snapshot);
            }
        }
        let told = batch.thens.len() as u64;
        for then in batch.thens.drain(..) {
            then(&result);
        }
        batch.clear();
        shared.lock().told += told;
        shared.progress.notify_all();
    }
    if let Some(checkpointer) = checkpointer {
        checkpointer.stop();
    }
}

fn commit(conn: &Connection, batch: &Batch) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO journal (seq, src, msg_id, accepted, request, operation, outcome, reply, checksum)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let mut update = conn.prepare_cached(
        "UPDATE journal SET accepted = ?2, outcome = ?3, reply = ?4, checksum = ?5 WHERE seq = ?1",
    )?;
    for write in &batch.writes {
        match write {
            Write::Insert(row) => {
                let row = row.fields(batch);
                insert.execute(params![
                    row.seq as i64,
                    row.src,
                    row.msg_id as i64,
                    row.accepted,
                    row.request,
                    row.operation,
                    row.outcome,
                    row.reply,
                    i64::from(checksum(row))
                ])?;
            }
            Write::Update(row) => {
                let row = row.fields(batch);
                let changed = update.execute(params![
                    row.seq as i64,
                    row.accepted,
                    row.outcome,
                    row.reply,
                    i64::from(checksum(row))
                ])?;
                if changed != 1 {
                    return Err(rusqlite::Error::QueryReturnedNoRows);
                }
            }
            Write::Ladder(span) => {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('ladder', ?1)",
                )?
                .execute([batch.at(span)])?;
            }
        }
    }
    drop((insert, update));
    conn.execute_batch("COMMIT")
}

/// A row's fields, borrowed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowRef<'a> {
    pub seq: u64,
    pub src: &'a str,
    pub msg_id: u64,
    pub accepted: bool,
    pub request: &'a str,
    pub operation: Option<&'a str>,
    pub outcome: Option<&'a str>,
    pub reply: Option<&'a str>,
}

/// The checksum of an entry: CRC-32 over its fields (integers in decimal), each preceded by its
/// length, an absent one by a marker.
pub(crate) fn checksum(entry: RowRef<'_>) -> u32 {
    // A header of the integers and every part's length (u64::MAX for an absent one), then the
    // parts themselves: the same bytes as hashing each part after its length, in fewer calls.
    let parts = [
        Some(entry.src),
        Some(entry.request),
        entry.operation,
        entry.outcome,
        entry.reply,
    ];
    let mut header = [0u8; 8 * 8];
    let integers = [entry.seq, entry.msg_id, u64::from(entry.accepted)];
    let lengths = parts.iter().map(|p| p.map_or(u64::MAX, |p| p.len() as u64));
    for (slot, value) in header
        .chunks_exact_mut(8)
        .zip(integers.into_iter().chain(lengths))
    {
        slot.copy_from_slice(&value.to_le_bytes());
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header);
    for part in parts.into_iter().flatten() {
        hasher.update(part.as_bytes());
    }
    hasher.finalize()
}

/// The checkpointer: copies the log into the database when asked, without blocking the writer
/// (`PASSIVE`). None when its connection cannot be opened: the writer's own checkpoints then
/// copy everything.
fn start_checkpointer(path: &Path) -> Option<Checkpointer> {
    let conn = open(path).ok()?;
    let (ask, asked) = mpsc::sync_channel::<()>(1);
    let thread = thread::Builder::new()
        .name("checkpoint".to_owned())
        .spawn(move || {
            for () in asked {
                let _ = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)");
            }
        })
        .ok()?;
    Some(Checkpointer { ask, thread })
}

/// The checkpointer thread, asked through `ask`; it ends when `ask` is dropped.
struct Checkpointer {
    ask: SyncSender<()>,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    /// Ends the thread and waits for it: its connection is closed before the writer's.
    fn stop(self) {
        drop(self.ask);
        let _ = self.thread.join();
    }
}
