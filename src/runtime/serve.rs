//! The concurrent runtime: one thread owns the [`Session`] (and so the machine); a reader thread
//! sends it input in chunks; one worker per slow lane performs that lane's operations and sends
//! back progress and completions. Everything the machine learns arrives as an [`Event`] on one
//! channel, in the order it happened.
//!
//! When every lane is instant (the simulated world at pace 0) there is nothing to wait for but
//! input, and the owner thread reads it itself ([`serve_inline`]).
//!
//! The loop handles events while more are waiting, and when none is: commits the store (so
//! every intent is durable before its effects start and every outcome before its reply), writes
//! the replies, and hands started operations to their workers. So a piped batch is committed
//! and written in large groups while an interactive caller sees each reply at once. At the end
//! of input it waits for every running and queued operation, then returns.

use crate::core::effects::{Completion, ExecError, Failure, FailureKind, Lane, Operation};
use crate::exec::LaneExecutor;
use crate::protocol::values::Progress;
use crate::runtime::session::{Lookup, Session};
use crate::store::{Store, StoreError};
use crate::wire::lines::{LineSplitter, Piece};
use crate::wire::MAX_LINE_BYTES;
use std::io::{self, Read, Write};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::thread;

/// How many bytes the reader reads at a time (at most).
const CHUNK: usize = 1 << 20;
/// How many chunks may wait for the owner thread (bounds memory when input outruns it).
const CHUNKS_WAITING: usize = 4;
/// Replies are written out once this many bytes are waiting, even while input keeps coming.
const FLUSH_AT: usize = 1 << 16;

/// An operation handed to a lane worker, with its sequence number.
type Job = (u64, Operation);

/// An input of the owner thread.
#[derive(Debug)]
pub enum Event {
    /// Bytes read from the input.
    Input(Vec<u8>),
    /// The input ended.
    End,
    /// Reading the input failed.
    ReadFailed(io::Error),
    /// A worker's operation made progress.
    Progress(Lane, u64, Progress),
    /// A worker's operation ended.
    Completed(Lane, u64, Box<Completion>),
    /// A look-up answered off the owner thread: its reply line.
    Answered(Vec<u8>),
}

/// Why serving stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The input or output failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The store could not record: the unrecorded replies were not sent.
    #[error("{0}; stopping without sending the unrecorded replies")]
    Store(#[from] StoreError),
}

/// Serves `input` to `output` until the input ends and every operation has completed.
/// Diagnostics go to `diagnostics` (stderr in the binary).
///
/// # Errors
/// Reading or writing failed, or the store could not commit.
pub fn serve<S: Store>(
    mut session: Session<S>,
    input: impl Read + Send + 'static,
    mut output: impl Write,
    mut diagnostics: impl Write,
) -> Result<(), ServeError> {
    let slow = session.take_slow_executors();
    if slow.is_empty() {
        return serve_inline(session, input, output, diagnostics);
    }
    let (events, inbox) = mpsc::sync_channel::<Event>(CHUNKS_WAITING);
    let (used, recycled) = mpsc::channel::<Vec<u8>>();
    spawn_reader(input, events.clone(), recycled);
    let mut workers: [Option<Sender<Job>>; 3] = Default::default();
    for (lane, executor) in slow {
        workers[lane.index()] = Some(spawn_worker(lane, executor, events.clone()));
    }
    let lookups = session
        .defer_lookups()
        .map(|reader| spawn_reader_of_lookups(reader, events.clone()));
    let mut looking_up = 0usize;
    drop(events);
    let mut splitter = LineSplitter::new(MAX_LINE_BYTES);
    let mut out = Vec::with_capacity(FLUSH_AT);
    let mut ended = false;
    loop {
        let event = match inbox.try_recv() {
            Ok(event) => event,
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                quiet(&mut session, &mut out, &mut output, &workers)?;
                if ended && session.machine().is_idle() && looking_up == 0 {
                    return Ok(());
                }
                match inbox.recv() {
                    Ok(event) => event,
                    Err(_) => return Ok(()),
                }
            }
        };
        match event {
            Event::Input(chunk) => {
                splitter.push(&chunk, |piece| {
                    handle(&mut session, piece, &mut out, &mut diagnostics)
                });
                let _ = used.send(chunk);
            }
            Event::End => {
                splitter.finish(|piece| handle(&mut session, piece, &mut out, &mut diagnostics));
                ended = true;
            }
            Event::ReadFailed(error) => return Err(error.into()),
            Event::Progress(lane, seq, progress) => session.progress(lane, seq, progress),
            Event::Completed(lane, seq, completion) => {
                session.complete(lane, seq, *completion, &mut out)
            }
            Event::Answered(line) => {
                looking_up -= 1;
                out.extend_from_slice(&line);
            }
        }
        if let Some(lookups) = &lookups {
            for lookup in session.take_lookups() {
                looking_up += 1;
                let _ = lookups.send(lookup);
            }
        }
        if out.len() >= FLUSH_AT {
            quiet(&mut session, &mut out, &mut output, &workers)?;
        }
    }
}

/// Every lane is instant (the simulated world at pace 0): nothing completes on its own, so the
/// owner thread reads the input itself — no reader thread, no channel — and commits and writes
/// the replies before each read that may block.
fn serve_inline<S: Store>(
    mut session: Session<S>,
    mut input: impl Read,
    mut output: impl Write,
    mut diagnostics: impl Write,
) -> Result<(), ServeError> {
    let workers: [Option<Sender<Job>>; 3] = Default::default();
    let mut splitter = LineSplitter::new(MAX_LINE_BYTES);
    let mut out = Vec::with_capacity(FLUSH_AT);
    let mut chunk = vec![0; CHUNK];
    loop {
        let read = match input.read(&mut chunk) {
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if read == 0 {
            splitter.finish(|piece| handle(&mut session, piece, &mut out, &mut diagnostics));
            return quiet(&mut session, &mut out, &mut output, &workers);
        }
        splitter.push(&chunk[..read], |piece| {
            handle(&mut session, piece, &mut out, &mut diagnostics)
        });
        quiet(&mut session, &mut out, &mut output, &workers)?;
    }
}

/// Nothing else is waiting: commit, write the replies, start what started.
fn quiet<S: Store>(
    session: &mut Session<S>,
    out: &mut Vec<u8>,
    output: &mut impl Write,
    workers: &[Option<Sender<Job>>; 3],
) -> Result<(), ServeError> {
    session.commit()?;
    if !out.is_empty() {
        let written = output.write_all(out).and_then(|()| output.flush());
        match written {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            other => other?,
        }
        out.clear();
    }
    for (lane, seq, operation) in session.take_starts() {
        if let Some(worker) = &workers[lane.index()] {
            let _ = worker.send((seq, operation));
        }
    }
    Ok(())
}

fn handle<S: Store>(
    session: &mut Session<S>,
    piece: Piece<'_>,
    out: &mut Vec<u8>,
    diagnostics: &mut impl Write,
) {
    let diagnostic = match piece {
        Piece::Line(line) => session.handle_line(line, out),
        Piece::TooLong(bytes) => Some(session.too_long(bytes)),
    };
    if let Some(diagnostic) = diagnostic {
        let _ = writeln!(diagnostics, "rollback-node: {diagnostic}");
    }
}

/// Reads `input` in chunks, reusing the buffers the owner thread sends back.
fn spawn_reader(
    mut input: impl Read + Send + 'static,
    events: SyncSender<Event>,
    recycled: Receiver<Vec<u8>>,
) {
    thread::spawn(move || loop {
        let mut chunk = recycled.try_recv().unwrap_or_default();
        chunk.resize(CHUNK, 0);
        match input.read(&mut chunk) {
            Ok(0) => {
                let _ = events.send(Event::End);
                return;
            }
            Ok(n) => {
                chunk.truncate(n);
                if events.send(Event::Input(chunk)).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = events.send(Event::ReadFailed(e));
                return;
            }
        }
    });
}

/// Answers look-ups (`backups`: a real directory, its files hashed) with `reader`, off the
/// owner thread, so that no lane waits behind them.
fn spawn_reader_of_lookups(
    reader: std::sync::Arc<dyn crate::exec::Reader>,
    events: SyncSender<Event>,
) -> Sender<Lookup> {
    let (jobs, queue) = mpsc::channel::<Lookup>();
    thread::spawn(move || {
        for lookup in queue {
            if events
                .send(Event::Answered(lookup.answer(&*reader)))
                .is_err()
            {
                return;
            }
        }
    });
    jobs
}

fn spawn_worker(lane: Lane, mut executor: LaneExecutor, events: SyncSender<Event>) -> Sender<Job> {
    let (jobs, queue): (Sender<Job>, Receiver<Job>) = mpsc::channel();
    thread::spawn(move || {
        for (seq, operation) in queue {
            let report = events.clone();
            // An executor that panics must not leave its lane waiting forever: the operation
            // fails as one that may have changed something part-way.
            let performed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                executor.perform(&operation, &mut |progress| {
                    let _ = report.send(Event::Progress(lane, seq, progress));
                })
            }));
            let completion = performed.unwrap_or_else(|panic| {
                let said = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".to_owned());
                Completion::Failed(Failure::new(
                    FailureKind::PartWay,
                    ExecError::failed(
                        format!("the {lane} executor"),
                        None,
                        format!("it stopped unexpectedly ({said}); check what it was doing"),
                    ),
                ))
            });
            if events
                .send(Event::Completed(lane, seq, Box::new(completion)))
                .is_err()
            {
                return;
            }
        }
    });
    jobs
}
