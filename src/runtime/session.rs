//! One node's conversation: input lines in, reply lines out. [`Session::handle_line`] is the
//! single entry point the binary, the tests and the fuzzers share: it decodes the line, hands the
//! request to the [`Machine`], performs at once the operations whose lane executor is instant
//! (the simulated world at pace 0), and leaves the others for the runtime's lane workers
//! ([`Session::take_starts`], [`Session::complete`]). It writes at most one reply line per input
//! line (more only when an operation that other requests waited for completes) and returns a
//! diagnostic (for stderr) whenever a line gets no reply.

use crate::core::effects::{Completion, Effect, Lane, Operation, StatementView};
use crate::core::machine::{Inbound, Machine, Record, Sink};
use crate::core::transitions::Request;
use crate::exec::estate::Estate;
use crate::exec::simulated::Simulated;
use crate::exec::{Executors, LaneExecutor};
use crate::protocol::encode::{write_reply, write_reply_raw};
use crate::protocol::replies::HistoryEntry;
use crate::protocol::values::{BackupView, Progress};
use crate::runtime::ofrep::FlagsView;
use crate::store::replay::Open;
use crate::store::{MemoryStore, Store, StoreError};
use crate::wire::{self, MAX_LINE_BYTES};
use std::fmt;

/// The node id used before `init` when a message does not say whom it was addressed to.
pub const DEFAULT_NODE_ID: &str = "rollback-node";

/// Why a line got no reply, with its line number; the binary prints it on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based input line number.
    pub line: u64,
    /// What was wrong.
    pub text: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.text)
    }
}

/// How a session performs operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Performing {
    /// Operations of instant lanes run at once; the others wait for the runtime.
    Instant,
    /// Nothing runs by itself: a test hands out completions ([`Session::complete`]).
    Manual,
}

/// A node: the state machine, its executors, its store and its identity on the wire.
pub struct Session<S: Store = MemoryStore> {
    machine: Machine,
    executors: Executors,
    store: S,
    node_id: Option<String>,
    line: u64,
    starts: Vec<(Lane, u64)>,
    performing: Performing,
    flags_view: Option<FlagsView>,
    /// `Some` when look-ups are answered off the owner thread: those waiting to be taken.
    lookups: Option<Vec<Lookup>>,
}

impl Session<MemoryStore> {
    /// A session over the built-in example estate, simulated, in memory.
    pub fn example() -> Self {
        Session::simulated(Estate::example())
    }

    /// A session over `estate`, simulated at pace 0, in memory.
    pub fn simulated(estate: Estate) -> Self {
        let executors = Simulated::new(estate.costs, &estate.state, 0.0).executors();
        Session::new(Machine::new(estate.state), executors, MemoryStore::new())
    }
}

/// A `backups` request whose answer is read off the owner thread ([`Session::take_lookups`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The reply's `src`.
    pub from: String,
    /// The reply's `dest`.
    pub to: String,
    /// The request's msg_id.
    pub msg_id: u64,
}

impl Lookup {
    /// The reply line (with its `\n`) to this look-up, from what `reader` lists now.
    pub fn answer(&self, reader: &dyn crate::exec::Reader) -> Vec<u8> {
        let mut line = Vec::new();
        match reader.backups() {
            Ok(backups) => write_reply(
                &mut line,
                &self.from,
                &self.to,
                Some(self.msg_id),
                &crate::protocol::replies::BackupsOk { backups },
            ),
            Err(e) => write_reply(
                &mut line,
                &self.from,
                &self.to,
                Some(self.msg_id),
                &crate::protocol::Refusal::TemporarilyUnavailable(format!(
                    "the backups cannot be read: {e}"
                )),
            ),
        }
        line
    }
}

/// The sink the machine writes to while the session handles one input.
struct Outputs<'a, S> {
    out: &'a mut Vec<u8>,
    store: &'a mut S,
    node_id: Option<&'a str>,
    starts: &'a mut Vec<(Lane, u64)>,
    executors: &'a mut Executors,
    deferred: Option<&'a mut Vec<Lookup>>,
}

impl<S: Store> Sink for Outputs<'_, S> {
    fn reply(&mut self, to: &str, addressed: Option<&str>, body: &str) {
        let from = self.node_id.or(addressed).unwrap_or(DEFAULT_NODE_ID);
        write_reply_raw(self.out, from, to, body.as_bytes());
    }

    fn record(&mut self, record: Record<'_>) {
        self.store.record(record);
    }

    fn start(&mut self, lane: Lane, seq: u64) {
        self.starts.push((lane, seq));
    }

    fn history(&mut self, limit: u32) -> Result<Vec<HistoryEntry>, String> {
        self.store.history(limit)
    }

    fn backups(&mut self, state: &crate::core::state::State) -> Result<Vec<BackupView>, String> {
        match self.executors.reader().filter(|r| r.lists_backups()) {
            Some(reader) => reader.backups(),
            None => Ok(crate::core::machine::simulated_backups(state)),
        }
    }

    fn defer_backups(&mut self, to: &str, addressed: Option<&str>, msg_id: u64) -> bool {
        let (Some(deferred), Some(reader)) = (self.deferred.as_mut(), self.executors.reader())
        else {
            return false;
        };
        if !reader.lists_backups() {
            return false;
        }
        deferred.push(Lookup {
            from: self
                .node_id
                .or(addressed)
                .unwrap_or(DEFAULT_NODE_ID)
                .to_owned(),
            to: to.to_owned(),
            msg_id,
        });
        true
    }

    fn statements(&mut self, effects: &[Effect]) -> Vec<StatementView> {
        match self.executors.reader() {
            Some(reader) => reader.statements(effects),
            None => Vec::new(),
        }
    }
}

impl<S: Store> Session<S> {
    /// A session driving `machine` with `executors`, recording in `store`.
    pub fn new(machine: Machine, executors: Executors, store: S) -> Self {
        Session {
            machine,
            executors,
            store,
            node_id: None,
            line: 0,
            starts: Vec::new(),
            performing: Performing::Instant,
            flags_view: None,
            lookups: None,
        }
    }

    /// Publishes the flags to `view` (the OFREP server's) now and after every flag change,
    /// before the change's reply goes out.
    pub fn publish_flags(&mut self, view: FlagsView) {
        view.publish(self.machine.state().flags.clone());
        self.flags_view = Some(view);
    }

    fn flags_changed(&self, lane: Lane) {
        if let (Lane::Flags, Some(view)) = (lane, &self.flags_view) {
            view.publish(self.machine.state().flags.clone());
        }
    }

    /// Takes what the executors say is true now; see [`Machine::observe`].
    pub fn observe(&mut self, found: &crate::core::effects::Found) -> bool {
        self.machine.observe(found)
    }

    /// Sets how operations are performed.
    pub fn performing(mut self, performing: Performing) -> Self {
        self.performing = performing;
        self
    }

    /// The state machine.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store, to inspect or crash it.
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// The id given by `init`, if any.
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    /// Takes the executors of the lanes that are not instant (for the runtime's lane workers);
    /// their operations are then left in [`Session::take_starts`].
    pub fn take_slow_executors(&mut self) -> Vec<(Lane, LaneExecutor)> {
        let slow: Vec<Lane> = Lane::ALL
            .into_iter()
            .filter(|lane| !self.executors.is_instant(*lane))
            .collect();
        slow.into_iter()
            .filter_map(|lane| Some((lane, self.executors.take(lane)?)))
            .collect()
    }

    fn outputs<'a>(
        out: &'a mut Vec<u8>,
        store: &'a mut S,
        node_id: Option<&'a str>,
        starts: &'a mut Vec<(Lane, u64)>,
        executors: &'a mut Executors,
        deferred: Option<&'a mut Vec<Lookup>>,
    ) -> Outputs<'a, S> {
        Outputs {
            out,
            store,
            node_id,
            starts,
            executors,
            deferred,
        }
    }

    /// Answers `backups` look-ups off the owner thread from now on: they wait in
    /// [`Session::take_lookups`] for [`Lookup::answer`] with the reader it returns (none when no
    /// real system lists backups, and look-ups stay inline).
    pub fn defer_lookups(&mut self) -> Option<std::sync::Arc<dyn crate::exec::Reader>> {
        let reader = self.executors.reader()?.clone();
        reader.lists_backups().then(|| {
            self.lookups = Some(Vec::new());
            reader
        })
    }

    /// The look-ups waiting to be answered off the owner thread.
    pub fn take_lookups(&mut self) -> Vec<Lookup> {
        self.lookups
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Handles one input line (without `\n`; a trailing `\r` is ignored). Appends the reply
    /// line to `out` (and those of operations that completed because of it). Blank lines are
    /// skipped silently.
    pub fn handle_line(&mut self, line: &[u8], out: &mut Vec<u8>) -> Option<Diagnostic> {
        self.line += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        if line.len() > MAX_LINE_BYTES {
            return Some(self.too_long_now(line.len()));
        }
        let text = match std::str::from_utf8(line) {
            Ok(text) => text,
            Err(e) => {
                return self.diagnostic(format!(
                    "not UTF-8 (invalid byte at offset {}); skipped",
                    e.valid_up_to()
                ))
            }
        };
        let incoming = match wire::decode(text) {
            Ok(incoming) => incoming,
            Err(problem) => return self.diagnostic(format!("{problem}; skipped")),
        };
        let (Some(src), Some(msg_id)) = (incoming.src.as_deref(), incoming.msg_id) else {
            let why = match incoming.request {
                Err(refusal) => refusal.text().to_owned(),
                Ok(request) if request.changes_state() => format!(
                    "{} has no msg_id, so a retry could not be told apart; refused, nothing changed",
                    request.type_name()
                ),
                Ok(request) => format!(
                    "{} has no msg_id, so there is nothing to reply to; add \"msg_id\": N",
                    request.type_name()
                ),
            };
            return self.diagnostic(why);
        };
        match incoming.request {
            Err(refusal) => {
                let from = self
                    .node_id
                    .as_deref()
                    .or(incoming.dest.as_deref())
                    .unwrap_or(DEFAULT_NODE_ID);
                write_reply(out, from, src, Some(msg_id), &refusal);
            }
            Ok(request) => {
                if let Request::Init { node_id, .. } = &request {
                    if !incoming.dry_run && self.machine.check(src, &request).is_ok() {
                        self.node_id = Some(node_id.clone());
                    }
                }
                let inbound = Inbound {
                    src,
                    addressed: incoming.dest.as_deref(),
                    msg_id,
                    dry_run: incoming.dry_run,
                    size: line.len(),
                };
                let mut sink = Self::outputs(
                    out,
                    &mut self.store,
                    self.node_id.as_deref(),
                    &mut self.starts,
                    &mut self.executors,
                    self.lookups.as_mut(),
                );
                self.machine.receive(inbound, request, &mut sink);
                self.perform_instant(out);
            }
        }
        None
    }

    /// Performs, at once, the started operations whose lane is instant, until none is left.
    fn perform_instant(&mut self, out: &mut Vec<u8>) {
        if self.performing == Performing::Manual {
            return;
        }
        while let Some(index) = self
            .starts
            .iter()
            .position(|(lane, _)| self.executors.is_instant(*lane))
        {
            let (lane, seq) = self.starts.remove(index);
            let Some((running, operation)) = self.machine.running(lane) else {
                continue;
            };
            if running != seq {
                continue;
            }
            let Some(executor) = self.executors.lane(lane) else {
                continue;
            };
            let completion = executor.perform(operation, &mut |_| {});
            let mut sink = Self::outputs(
                out,
                &mut self.store,
                self.node_id.as_deref(),
                &mut self.starts,
                &mut self.executors,
                self.lookups.as_mut(),
            );
            self.machine.complete(lane, seq, completion, &mut sink);
            self.flags_changed(lane);
        }
    }

    /// The operations that started and wait to be performed outside the session, with their
    /// operations (for the lane workers). Their intents must be committed first.
    pub fn take_starts(&mut self) -> Vec<(Lane, u64, Operation)> {
        std::mem::take(&mut self.starts)
            .into_iter()
            .filter_map(|(lane, seq)| {
                let (running, operation) = self.machine.running(lane)?;
                (running == seq).then(|| (lane, seq, operation.clone()))
            })
            .collect()
    }

    /// The started operations not yet taken.
    pub fn starts(&self) -> &[(Lane, u64)] {
        &self.starts
    }

    /// Delivers an operation's completion: replies go to `out`.
    pub fn complete(&mut self, lane: Lane, seq: u64, completion: Completion, out: &mut Vec<u8>) {
        let mut sink = Self::outputs(
            out,
            &mut self.store,
            self.node_id.as_deref(),
            &mut self.starts,
            &mut self.executors,
            self.lookups.as_mut(),
        );
        self.machine.complete(lane, seq, completion, &mut sink);
        self.flags_changed(lane);
        self.perform_instant(out);
    }

    /// Delivers an operation's progress.
    pub fn progress(&mut self, lane: Lane, seq: u64, progress: Progress) {
        self.machine.progress(lane, seq, progress);
    }

    /// Commits what the store holds: call before writing replies out or starting effects.
    ///
    /// # Errors
    /// The store's failure: the replies and effects since the last commit must not go out.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        self.store.commit(&self.machine)
    }

    /// Reconciles operations a crash interrupted: each lane's executor says what is true now,
    /// the machine takes it and remembers the interruption, the store records it. Returns one
    /// line per operation for stderr.
    pub fn reconcile(&mut self, open: Vec<Open>) -> Vec<String> {
        let mut notes = Vec::new();
        for open in open {
            let found = match self.executors.lane(open.lane) {
                Some(executor) => executor.observe(&open.operation, self.machine.state()),
                None => crate::core::effects::Found {
                    unknown: Some("no executor for this lane".to_owned()),
                    ..Default::default()
                },
            };
            let kind = open.request.type_name();
            let answer = self.machine.interrupt(
                open.seq,
                &open.src,
                open.msg_id,
                open.request.clone(),
                found.clone(),
            );
            let src: std::sync::Arc<str> = std::sync::Arc::from(open.src.as_str());
            self.store.record(Record::Interrupted {
                seq: open.seq,
                src: &src,
                msg_id: open.msg_id,
                found: &found,
                answer: &answer,
            });
            notes.push(format!(
                "{kind} from {} (msg_id {}, journal entry {}) was interrupted by a restart and is not run again; found {}",
                open.src,
                open.msg_id,
                open.seq,
                serde_json::to_string(&found).unwrap_or_default()
            ));
        }
        notes
    }

    /// Records a line that the reader dropped for being longer than [`MAX_LINE_BYTES`].
    pub fn too_long(&mut self, bytes: usize) -> Diagnostic {
        self.line += 1;
        self.too_long_now(bytes)
    }

    fn too_long_now(&self, bytes: usize) -> Diagnostic {
        Diagnostic {
            line: self.line,
            text: format!(
                "{bytes} bytes is over the {MAX_LINE_BYTES}-byte line limit; skipped without reading"
            ),
        }
    }

    fn diagnostic(&self, text: String) -> Option<Diagnostic> {
        Some(Diagnostic {
            line: self.line,
            text,
        })
    }
}
