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
//!
//! With a [`Link`] (the HTTP service), calls arrive on the same channel as [`Event::Call`]s,
//! the end of input does not stop the loop ([`Call::Stop`] does), and after each commit the loop
//! tells its [`Audience`] the entries that ended and, at most ten times a second, the status.

use crate::core::effects::{Completion, ExecError, Failure, FailureKind, Lane, Operation};
use crate::exec::LaneExecutor;
use crate::protocol::replies::HistoryEntry;
use crate::protocol::values::Progress;
use crate::runtime::session::{Lookup, Session, Unanswerable, Waiter};
use crate::store::{Store, StoreError};
use crate::wire::lines::{LineSplitter, Piece};
use crate::wire::MAX_LINE_BYTES;
use std::io::{self, Read, Write};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How many bytes the reader reads at a time (at most).
const CHUNK: usize = 1 << 20;
/// How many input chunks the reader may have read ahead of the owner thread (bounds memory when
/// input outruns it: the reader reuses these buffers and waits for one to come back).
const CHUNKS_WAITING: usize = 4;
/// How many events may wait for the owner thread (input chunks are bounded apart).
const EVENTS_WAITING: usize = 4_096;
/// HTTP replies are committed and handed over once this many are waiting, even while input keeps
/// coming.
const HOLD_AT: usize = 256;
/// The least time between two published statuses (at most ten a second).
const STATUS_EVERY: Duration = Duration::from_millis(100);
/// How long a stopping node waits for its running operations before it leaves them to be
/// reconciled as interrupted at the next start.
const STOP_WITHIN: Duration = Duration::from_secs(7);
/// Replies are written out once this many bytes are waiting, even while input keeps coming.
const FLUSH_AT: usize = 1 << 16;

/// An operation handed to a lane worker, with its sequence number.
pub(crate) type Job = (u64, Operation);

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
    /// A look-up answered off the owner thread: its reply line for stdout, if it had one.
    Answered(Option<Vec<u8>>),
    /// A call from the HTTP service.
    Call(Call),
    /// An input of the escalation ladder (a round of samples, time passing).
    Ladder(crate::core::ladder::Input),
}

/// What the HTTP service asks of the owner thread. Every answer goes through a one-shot
/// channel; a dropped sender means the node is stopping.
#[derive(Debug)]
pub enum Call {
    /// A request body, as stdin's line would carry it, from `sender` (a token's name).
    Message {
        /// The sender.
        sender: String,
        /// The request body.
        body: Vec<u8>,
        /// Where its reply body goes (or why there is none).
        reply: tokio::sync::oneshot::Sender<Result<String, Unanswerable>>,
    },
    /// The body of `status_ok`, without `in_reply_to`.
    Status(tokio::sync::oneshot::Sender<String>),
    /// The body of `history_ok` for the last `limit` entries (or the first past `after`),
    /// without `in_reply_to`.
    History {
        /// How many (20 by default).
        limit: Option<u32>,
        /// Only entries with a higher sequence number, oldest first (paging on).
        after: Option<u64>,
        /// Where the body goes.
        reply: tokio::sync::oneshot::Sender<String>,
    },
    /// The entries that ended after `after` (an event stream resuming).
    After {
        /// The last sequence number the client saw.
        after: u64,
        /// At most this many.
        limit: u32,
        /// Where they go.
        reply: tokio::sync::oneshot::Sender<Result<Vec<HistoryEntry>, String>>,
    },
    /// The body of `backups_ok`, without `in_reply_to`.
    Backups(tokio::sync::oneshot::Sender<String>),
    /// Stop: let running operations finish (for a few seconds), then return.
    Stop,
}

/// A handle for the HTTP service to call the owner thread.
#[derive(Debug, Clone)]
pub struct Calls(SyncSender<Event>);

impl Calls {
    /// Hands over `call` if there is room now; gives it back when the owner thread is busy.
    ///
    /// # Errors
    /// No room now (the call is given back), or the node stopped.
    pub fn try_call(&self, call: Call) -> Result<(), Option<Call>> {
        match self.0.try_send(Event::Call(call)) {
            Ok(()) => Ok(()),
            Err(mpsc::TrySendError::Full(Event::Call(call))) => Err(Some(call)),
            Err(_) => Err(None),
        }
    }

    /// Hands over `call`, waiting for room. Returns whether the node took it.
    pub fn call(&self, call: Call) -> bool {
        self.0.send(Event::Call(call)).is_ok()
    }
}

/// Who hears what the node publishes: the HTTP service's event streams.
pub trait Audience: Send {
    /// Where the estate stands now (a `status_ok` body without `in_reply_to`).
    fn status(&mut self, body: String);
    /// Operations that ended, now durable.
    fn ended(&mut self, entries: Vec<HistoryEntry>);
}

/// The HTTP service's end of the owner thread's channel.
pub struct Link {
    inbox: Receiver<Event>,
    sender: SyncSender<Event>,
    audience: Box<dyn Audience>,
}

impl Link {
    /// A new channel to the owner thread; the service calls through [`Link::calls`] and hears
    /// through `audience`.
    pub fn new(audience: Box<dyn Audience>) -> Link {
        let (sender, inbox) = mpsc::sync_channel(EVENTS_WAITING);
        Link {
            inbox,
            sender,
            audience,
        }
    }

    /// The handle the service calls through.
    pub fn calls(&self) -> Calls {
        Calls(self.sender.clone())
    }

    /// Its channel's two ends and its audience, for a loop of its own (a cluster node's).
    pub(crate) fn into_parts(self) -> (Receiver<Event>, SyncSender<Event>, Box<dyn Audience>) {
        (self.inbox, self.sender, self.audience)
    }
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
    output: impl Write + Send + 'static,
    diagnostics: impl Write,
) -> Result<(), ServeError> {
    let slow = session.take_slow_executors();
    if slow.is_empty() && session.ladder().is_none() {
        return serve_inline(session, input, output, diagnostics);
    }
    serve_events(session, slow, input, output, diagnostics, None)
}

/// Serves `input` to `output` and the HTTP service's calls through `link`, until a
/// [`Call::Stop`] (the end of input does not stop it).
///
/// # Errors
/// Reading or writing failed, or the store could not commit.
pub fn serve_linked<S: Store>(
    mut session: Session<S>,
    input: impl Read + Send + 'static,
    output: impl Write,
    diagnostics: impl Write,
    link: Link,
) -> Result<(), ServeError> {
    let slow = session.take_slow_executors();
    session.keep_ended();
    serve_events(session, slow, input, output, diagnostics, Some(link))
}

/// What the loop publishes to its audience, and when.
struct Publishing {
    audience: Box<dyn Audience>,
    /// Something happened since the last status.
    dirty: bool,
    last: Option<Instant>,
    last_body: String,
}

impl Publishing {
    /// Publishes the ended entries; the status when due. Returns how long until a status is due
    /// (none when nothing is waiting).
    fn publish<S: Store>(&mut self, session: &mut Session<S>) -> Option<Duration> {
        let ended = session.take_ended();
        if !ended.is_empty() {
            self.audience.ended(ended);
        }
        if !self.dirty {
            return None;
        }
        let now = Instant::now();
        if let Some(last) = self.last {
            let since = now.duration_since(last);
            if since < STATUS_EVERY {
                return Some(STATUS_EVERY - since);
            }
        }
        self.dirty = false;
        let body = session.status_body();
        if body != self.last_body {
            self.last = Some(now);
            self.last_body.clone_from(&body);
            self.audience.status(body);
        }
        None
    }
}

/// The event loop, on `link`'s channel or, without one, a channel of its own.
fn serve_events<S: Store>(
    mut session: Session<S>,
    slow: Vec<(Lane, LaneExecutor)>,
    input: impl Read + Send + 'static,
    mut output: impl Write,
    mut diagnostics: impl Write,
    link: Option<Link>,
) -> Result<(), ServeError> {
    let linked = link.is_some();
    let (events, inbox, audience) = match link {
        Some(Link {
            inbox,
            sender,
            audience,
        }) => (sender, inbox, Some(audience)),
        None => {
            let (sender, inbox) = mpsc::sync_channel::<Event>(EVENTS_WAITING);
            (sender, inbox, None)
        }
    };
    let mut publishing = audience.map(|audience| Publishing {
        audience,
        dirty: true,
        last: None,
        last_body: String::new(),
    });
    let mut stopping: Option<Instant> = None;
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
    let mut out = Vec::with_capacity(FLUSH_AT);
    let _sampler = match session.ladder() {
        Some(watch) => {
            let sampler = start_sampler(watch.ladder().config(), events.clone());
            session.start_ladder(crate::runtime::ladder::now_millis(), &mut out);
            Some(sampler?)
        }
        None => None,
    };
    drop(events);
    let mut splitter = LineSplitter::new(MAX_LINE_BYTES);
    let mut ended = false;
    if let Some(publishing) = publishing.as_mut() {
        publishing.publish(&mut session);
    }
    loop {
        let event = match inbox.try_recv() {
            Ok(event) => event,
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                quiet(&mut session, &mut out, &mut output, &workers)?;
                let due = publishing.as_mut().and_then(|p| p.publish(&mut session));
                let done = session.machine().is_idle() && looking_up == 0;
                if let Some(since) = stopping {
                    if done || since.elapsed() >= STOP_WITHIN {
                        return Ok(());
                    }
                } else if ended && !linked && done {
                    return Ok(());
                }
                let wait = match (due, stopping) {
                    (Some(due), Some(since)) => {
                        Some(due.min(STOP_WITHIN.saturating_sub(since.elapsed())))
                    }
                    (None, Some(since)) => Some(STOP_WITHIN.saturating_sub(since.elapsed())),
                    (due, None) => due,
                };
                let received = match wait {
                    Some(wait) => inbox.recv_timeout(wait),
                    None => inbox.recv().map_err(|_| RecvTimeoutError::Disconnected),
                };
                match received {
                    Ok(event) => event,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                }
            }
        };
        if let Some(publishing) = publishing.as_mut() {
            publishing.dirty |= !matches!(
                event,
                Event::Answered(_)
                    | Event::Call(
                        Call::Status(_)
                            | Call::History { .. }
                            | Call::After { .. }
                            | Call::Backups(_)
                    )
            );
        }
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
                if let Some(line) = line {
                    out.extend_from_slice(&line);
                }
            }
            // A stopping node (stopped, or its input ended without a listener) starts nothing
            // more: the ladder's samples wait for the restart (its state is saved; it resumes
            // from there).
            Event::Ladder(input) if stopping.is_none() && (linked || !ended) => {
                session.ladder_input(&input, &mut out)
            }
            Event::Ladder(_) => {}
            Event::Call(call) => match call {
                Call::Message {
                    sender,
                    body,
                    reply,
                } if stopping.is_none() => {
                    let waiter = Waiter::new(move |answer| {
                        let _ = reply.send(answer);
                    });
                    session.handle_message(&sender, &body, waiter, &mut out);
                }
                Call::Message { .. } => {}
                Call::Status(reply) => {
                    let _ = reply.send(session.status_body());
                }
                Call::History {
                    limit,
                    after,
                    reply,
                } => {
                    let _ = reply.send(session.history_body(limit, after));
                }
                Call::After {
                    after,
                    limit,
                    reply,
                } => {
                    let _ = reply.send(session.history_after(after, limit));
                }
                Call::Backups(reply) => session.backups_body(Waiter::new(move |answer| {
                    let _ = reply.send(answer.unwrap_or_else(|why| why.0));
                })),
                Call::Stop => {
                    stopping.get_or_insert_with(Instant::now);
                }
            },
        }
        if let Some(lookups) = &lookups {
            for lookup in session.take_lookups() {
                looking_up += 1;
                let _ = lookups.send(lookup);
            }
        }
        if out.len() >= FLUSH_AT || session.holding() >= HOLD_AT {
            quiet(&mut session, &mut out, &mut output, &workers)?;
        }
    }
}

/// Starts sampling the ladder's signals: each round goes to the loop as samples, then as time
/// passing (which ends verify windows).
fn start_sampler(
    config: &crate::core::ladder::LadderConfig,
    events: SyncSender<Event>,
) -> Result<crate::exec::prometheus::Sampler, ServeError> {
    use crate::core::ladder::{Input, Sample};
    let sampling = crate::exec::prometheus::SamplerConfig {
        base: config.prometheus.clone(),
        signals: config
            .signals
            .iter()
            .map(|s| (s.name.clone(), s.query.clone()))
            .collect(),
        interval: Duration::from_secs(config.interval_seconds),
        timeout: None,
    };
    crate::exec::prometheus::Sampler::start(sampling, move |round| {
        let at = round.at_millis;
        let values = round
            .values
            .into_iter()
            .map(|(name, value)| {
                let sample = match value {
                    Ok(value) => Sample::Value(value),
                    Err(no_data) => Sample::NoData(no_data.to_string()),
                };
                (name, sample)
            })
            .collect();
        events
            .send(Event::Ladder(Input::Samples { at, values }))
            .and_then(|()| events.send(Event::Ladder(Input::Tick { at })))
            .is_ok()
    })
    .map_err(|e| {
        ServeError::from(io::Error::other(format!(
            "the ladder's sampler cannot start: {e}"
        )))
    })
}

/// Every lane is instant (the simulated world at pace 0): nothing completes on its own, so the
/// owner thread reads the input itself — no reader thread, no channel — and hands what it
/// recorded to the store before each read that may block. The replies go out once what they
/// answer is durable: a store that commits on a thread of its own writes them there, while this
/// thread decides the next input.
fn serve_inline<S: Store>(
    mut session: Session<S>,
    mut input: impl Read,
    output: impl Write + Send + 'static,
    mut diagnostics: impl Write,
) -> Result<(), ServeError> {
    let mut replies = Replies::new(output);
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
            replies.commit(&mut session, &mut out)?;
            session.settle()?;
            // Every reply has been written, or the first write that failed says why.
            return replies.failure();
        }
        splitter.push(&chunk[..read], |piece| {
            handle(&mut session, piece, &mut out, &mut diagnostics)
        });
        replies.commit(&mut session, &mut out)?;
    }
}

/// The output of [`serve_inline`]: reply lines written by whichever thread learns that what
/// they answer is durable, in the order they were handed over.
struct Replies<W> {
    output: Arc<Mutex<W>>,
    /// The first write that failed (a closed output is not a failure: nobody is reading).
    failed: Arc<Mutex<Option<io::Error>>>,
    /// Reply buffers written out, back for reuse.
    spare: Receiver<Vec<u8>>,
    back: Sender<Vec<u8>>,
}

impl<W: Write + Send + 'static> Replies<W> {
    fn new(output: W) -> Self {
        let (back, spare) = mpsc::channel();
        Replies {
            output: Arc::new(Mutex::new(output)),
            failed: Arc::new(Mutex::new(None)),
            spare,
            back,
        }
    }

    /// Commits what `session` recorded; `out`'s replies are written once that is durable.
    fn commit<S: Store>(
        &mut self,
        session: &mut Session<S>,
        out: &mut Vec<u8>,
    ) -> Result<(), ServeError> {
        self.failure()?;
        let replies = if out.is_empty() {
            Vec::new()
        } else {
            let next = self
                .spare
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(FLUSH_AT));
            std::mem::replace(out, next)
        };
        let output = Arc::clone(&self.output);
        let failed = Arc::clone(&self.failed);
        let back = self.back.clone();
        session.commit_then(Box::new(move |committed| {
            let mut replies = replies;
            if committed.is_ok() && !replies.is_empty() {
                if let Ok(mut output) = output.lock() {
                    match output.write_all(&replies).and_then(|()| output.flush()) {
                        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                            if let Ok(mut failed) = failed.lock() {
                                failed.get_or_insert(e);
                            }
                        }
                        _ => {}
                    }
                }
            }
            if replies.capacity() > 0 {
                replies.clear();
                let _ = back.send(replies);
            }
        }))?;
        Ok(())
    }

    /// The first write that failed, if one did.
    fn failure(&self) -> Result<(), ServeError> {
        match self.failed.lock().ok().and_then(|mut f| f.take()) {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
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
    session.deliver();
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
    let mut made = 0;
    thread::spawn(move || loop {
        let mut chunk = if made < CHUNKS_WAITING {
            made += 1;
            Vec::new()
        } else {
            match recycled.recv() {
                Ok(chunk) => chunk,
                Err(_) => return,
            }
        };
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

pub(crate) fn spawn_worker(
    lane: Lane,
    mut executor: LaneExecutor,
    events: SyncSender<Event>,
) -> Sender<Job> {
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
