//! One node's conversation: input lines in, reply lines out. [`Session::handle_line`] is the
//! single entry point the binary, the tests and the fuzzers share: it decodes the line, hands the
//! request to the [`Machine`], performs at once the operations whose lane executor is instant
//! (the simulated world at pace 0), and leaves the others for the runtime's lane workers
//! ([`Session::take_starts`], [`Session::complete`]). It writes at most one reply line per input
//! line (more only when an operation that other requests waited for completes) and returns a
//! diagnostic (for stderr) whenever a line gets no reply.

use crate::core::effects::{Completion, Effect, Lane, Operation, StatementView};
use crate::core::ladder;
use crate::core::machine::{Inbound, Machine, Record, Sink};
use crate::core::transitions::Request;
use crate::exec::estate::Estate;
use crate::exec::simulated::Simulated;
use crate::exec::{Executors, LaneExecutor};
use crate::protocol::encode::{body_string, write_reply, write_reply_raw};
use crate::protocol::replies::RungApproved;
use crate::protocol::replies::{BackupsOk, HistoryEntry, HistoryOk};
use crate::protocol::values::{BackupView, Progress};
use crate::protocol::Refusal;
use crate::runtime::flags::FlagsView;
use crate::runtime::ladder::{error_code, now_millis, Watch};
use crate::store::replay::Open;
use crate::store::{MemoryStore, Store, StoreError};
use crate::wire::{self, MAX_LINE_BYTES};
use std::collections::{HashMap, VecDeque};
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
    routes: Routes,
    /// Reply bodies for waiters, held until the store has committed what they answer.
    held: Vec<(Waiter, String)>,
    /// `Some` when the entries of operations that end are published: those not yet taken.
    ended: Option<Vec<HistoryEntry>>,
    /// The escalation ladder, when the estate configures one.
    ladder: Option<Watch>,
    /// `approve_rung` requests taken from the machine, for the ladder to answer once the
    /// machine is done with the input.
    approvals: Vec<Approval>,
}

/// An `approve_rung` request waiting for the ladder.
struct Approval {
    to: String,
    addressed: Option<String>,
    msg_id: u64,
    rung: u64,
    waiter: Option<Waiter>,
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

/// Where one reply goes when its request did not come from stdin (an HTTP request): it is handed
/// the reply body (without the envelope), or why there is none, once. Dropped unused (the node
/// stopped first), it hands over nothing.
pub struct Waiter(Box<dyn FnOnce(Result<String, Unanswerable>) + Send>);

impl Waiter {
    /// A waiter that hands the outcome to `deliver`.
    pub fn new(deliver: impl FnOnce(Result<String, Unanswerable>) + Send + 'static) -> Self {
        Waiter(Box::new(deliver))
    }

    /// Hands over the reply body.
    pub fn send(self, body: String) {
        (self.0)(Ok(body));
    }

    /// Says why no reply will come.
    pub fn refuse(self, why: Unanswerable) {
        (self.0)(Err(why));
    }
}

impl fmt::Debug for Waiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Waiter")
    }
}

/// Where the replies to `(sender, msg_id)` go: the request being decided first (its reply,
/// if it gets one at once — a refusal, a remembered answer, a dry run — is its own, whatever
/// waits under the same id), then the others in the order their requests arrived: a waiter, or
/// stdout (`None`). Empty while nothing but stdin speaks, so that stdin pays nothing for it.
#[derive(Debug, Default)]
struct Routes {
    waiting: HashMap<(String, u64), VecDeque<Option<Waiter>>>,
    /// The request being decided now, while it is.
    deciding: Option<((String, u64), Option<Waiter>)>,
}

impl Routes {
    /// The request `(src, msg_id)` is being decided, its reply going to `waiter`.
    fn decide(&mut self, src: &str, msg_id: u64, waiter: Option<Waiter>) {
        self.deciding = Some(((src.to_owned(), msg_id), waiter));
    }

    /// The request decided has no reply yet: it waits behind those of its id.
    fn decided(&mut self) {
        if let Some(((src, msg_id), waiter)) = self.deciding.take() {
            self.waiting
                .entry((src, msg_id))
                .or_default()
                .push_back(waiter);
        }
    }

    /// The next reply's route for `(src, msg_id)`: `None` when none was pushed (stdout).
    fn take(&mut self, src: &str, msg_id: u64) -> Option<Waiter> {
        if let Some(((s, m), _)) = &self.deciding {
            if s == src && *m == msg_id {
                return self.deciding.take().and_then(|(_, waiter)| waiter);
            }
        }
        if self.waiting.is_empty() {
            return None;
        }
        let key = (src.to_owned(), msg_id);
        let queue = self.waiting.get_mut(&key)?;
        let waiter = queue.pop_front().flatten();
        if queue.is_empty() {
            self.waiting.remove(&key);
        }
        waiter
    }

    fn contains(&self, src: &str, msg_id: u64) -> bool {
        !self.waiting.is_empty() && self.waiting.contains_key(&(src.to_owned(), msg_id))
    }
}

/// A `backups` look-up whose answer is read off the owner thread ([`Session::take_lookups`]).
#[derive(Debug)]
pub struct Lookup {
    /// The reply's `src`.
    pub from: String,
    /// The reply's `dest`.
    pub to: String,
    /// The request's msg_id (none for a look-up that is not a protocol request).
    pub msg_id: Option<u64>,
    /// Who waits for the body; stdout when none.
    pub waiter: Option<Waiter>,
}

impl Lookup {
    /// Answers this look-up from what `reader` lists now: the reply line (with its `\n`) for
    /// stdout, or nothing when the body went to its waiter.
    pub fn answer(self, reader: &dyn crate::exec::Reader) -> Option<Vec<u8>> {
        let answer = backups_answer(reader.backups());
        if let Some(waiter) = self.waiter {
            waiter.send(body_of(self.msg_id, &answer));
            return None;
        }
        let mut line = Vec::new();
        match &answer {
            Ok(ok) => write_reply(&mut line, &self.from, &self.to, self.msg_id, ok),
            Err(refusal) => write_reply(&mut line, &self.from, &self.to, self.msg_id, refusal),
        }
        Some(line)
    }
}

/// A backups listing as `backups` answers it: `backups_ok`, or 11 when it cannot be read.
fn backups_answer(listed: Result<Vec<BackupView>, String>) -> Result<BackupsOk, Refusal> {
    listed
        .map(|backups| BackupsOk { backups })
        .map_err(|e| Refusal::TemporarilyUnavailable(format!("the backups cannot be read: {e}")))
}

/// An answer's body: its reply's, or its refusal's.
fn body_of<B: crate::protocol::ReplyBody>(
    in_reply_to: Option<u64>,
    answer: &Result<B, Refusal>,
) -> String {
    match answer {
        Ok(ok) => body_string(in_reply_to, ok),
        Err(refusal) => body_string(in_reply_to, refusal),
    }
}

/// Why a request that did not come from stdin got no reply: the text a person reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unanswerable(pub String);

/// The sink over a session's own fields (borrowed apart from its machine) and `out`.
macro_rules! outputs {
    ($session:ident, $out:expr) => {
        Outputs {
            out: $out,
            store: &mut $session.store,
            node_id: $session.node_id.as_deref(),
            starts: &mut $session.starts,
            executors: &mut $session.executors,
            deferred: $session.lookups.as_mut(),
            routes: &mut $session.routes,
            ended: $session.ended.as_mut(),
            held: &mut $session.held,
            ladder: $session.ladder.as_mut(),
            approvals: &mut $session.approvals,
        }
    };
}

/// The sink the machine writes to while the session handles one input.
struct Outputs<'a, S> {
    out: &'a mut Vec<u8>,
    store: &'a mut S,
    node_id: Option<&'a str>,
    starts: &'a mut Vec<(Lane, u64)>,
    executors: &'a mut Executors,
    deferred: Option<&'a mut Vec<Lookup>>,
    routes: &'a mut Routes,
    ended: Option<&'a mut Vec<HistoryEntry>>,
    held: &'a mut Vec<(Waiter, String)>,
    ladder: Option<&'a mut Watch>,
    approvals: &'a mut Vec<Approval>,
}

/// The last `limit` entries of the audit trail, or with `after` the first `limit` past that
/// sequence number, the ladder's with their `why`.
fn read_history<S: Store>(
    store: &mut S,
    ladder: Option<&Watch>,
    after: Option<u64>,
    limit: u32,
) -> Result<Vec<HistoryEntry>, String> {
    let mut entries = match after {
        Some(after) => store.history_after(after, limit)?,
        None => store.history(limit)?,
    };
    with_whys(ladder, &mut entries);
    Ok(entries)
}

/// Gives the entries of the ladder's requests their `why`.
fn with_whys(ladder: Option<&Watch>, entries: &mut [HistoryEntry]) {
    let Some(watch) = ladder else {
        return;
    };
    for entry in entries.iter_mut().filter(|e| e.src == ladder::SENDER) {
        entry.why = watch.why(entry.msg_id);
    }
}

impl<S: Store> Sink for Outputs<'_, S> {
    fn reply(&mut self, to: &str, addressed: Option<&str>, msg_id: u64, body: &str) {
        if let Some(watch) = self.ladder.as_mut().filter(|_| to == ladder::SENDER) {
            watch.done.push((msg_id, error_code(body)));
            return;
        }
        if let Some(waiter) = self.routes.take(to, msg_id) {
            // Like a stdout line, it goes out only after the commit: see Session::deliver.
            self.held.push((waiter, body.to_owned()));
            return;
        }
        let from = self.node_id.or(addressed).unwrap_or(DEFAULT_NODE_ID);
        write_reply_raw(self.out, from, to, body.as_bytes());
    }

    fn record(&mut self, record: Record<'_>) {
        if let Some(ended) = self.ended.as_mut() {
            let before = ended.len();
            ended.extend(crate::store::ended_entry(&record));
            with_whys(self.ladder.as_deref(), &mut ended[before..]);
        }
        self.store.record(record);
    }

    fn start(&mut self, lane: Lane, seq: u64) {
        self.starts.push((lane, seq));
    }

    fn history(&mut self, limit: u32) -> Result<Vec<HistoryEntry>, String> {
        read_history(self.store, self.ladder.as_deref(), None, limit)
    }

    fn history_after(&mut self, after: u64, limit: u32) -> Result<Vec<HistoryEntry>, String> {
        read_history(self.store, self.ladder.as_deref(), Some(after), limit)
    }

    fn defer_approval(
        &mut self,
        to: &str,
        addressed: Option<&str>,
        msg_id: u64,
        rung: u64,
    ) -> bool {
        if self.ladder.is_none() {
            return false;
        }
        self.approvals.push(Approval {
            to: to.to_owned(),
            addressed: addressed.map(str::to_owned),
            msg_id,
            rung,
            waiter: self.routes.take(to, msg_id),
        });
        true
    }

    fn ladder_status(&self) -> Option<serde_json::Value> {
        self.ladder.as_deref().map(Watch::status_json)
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
            msg_id: Some(msg_id),
            waiter: self.routes.take(to, msg_id),
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
            routes: Routes::default(),
            held: Vec::new(),
            ended: None,
            ladder: None,
            approvals: Vec::new(),
        }
    }

    /// Gives the session an escalation ladder (see [`Session::start_ladder`]).
    pub fn with_ladder(mut self, watch: Watch) -> Self {
        self.ladder = Some(watch);
        self
    }

    /// The escalation ladder, if the estate configures one.
    pub fn ladder(&self) -> Option<&Watch> {
        self.ladder.as_ref()
    }

    /// Starts the ladder at `at`: the request it was taking when the node stopped is sent
    /// again with its msg_id (answered from the retry memory if it ran, never run twice), and
    /// an exhausted ladder watches again. Its replies go to `out`.
    pub fn start_ladder(&mut self, at: crate::core::ladder::Millis, out: &mut Vec<u8>) {
        let Some(watch) = self.ladder.as_mut() else {
            return;
        };
        let again = watch.ladder().outstanding().cloned();
        let rearmed = watch.ladder_mut().rearm(at);
        if let Some(take) = again {
            self.take_rung(&take, out);
        }
        self.apply_ladder(rearmed, out);
        self.settle_ladder(out);
    }

    /// Hands the ladder one input (samples, time passing) and acts on what it decides.
    pub fn ladder_input(&mut self, input: &crate::core::ladder::Input, out: &mut Vec<u8>) {
        let Some(watch) = self.ladder.as_mut() else {
            return;
        };
        let decision = watch.ladder_mut().step(input);
        self.apply_ladder(decision, out);
        self.settle_ladder(out);
    }

    /// Acts on a ladder decision: its notes go to stderr (and are kept in its saved state),
    /// its requests to their lanes, from sender `ladder`.
    fn apply_ladder(&mut self, decision: crate::core::ladder::LadderDecision, out: &mut Vec<u8>) {
        for action in decision.actions {
            match action {
                crate::core::ladder::Action::Journal(note) => {
                    let note = note.to_json();
                    eprintln!("rollback-node: ladder: {note}");
                    if let Some(watch) = self.ladder.as_mut() {
                        watch.remember_note(note);
                    }
                }
                crate::core::ladder::Action::Take(take) => {
                    if let Some(watch) = self.ladder.as_mut() {
                        watch.remember(take.msg_id, take.why.to_json());
                    }
                    eprintln!(
                        "rollback-node: ladder: run {} takes rung {}: {}",
                        take.run,
                        take.rung,
                        take.body_with_msg_id()
                    );
                    self.take_rung(&take, out);
                }
            }
        }
    }

    /// Sends a rung's request to the machine as sender `ladder`.
    fn take_rung(&mut self, take: &crate::core::ladder::Take, out: &mut Vec<u8>) {
        let inbound = Inbound {
            src: ladder::SENDER,
            addressed: None,
            msg_id: take.msg_id,
            dry_run: false,
            size: take.body.to_string().len(),
        };
        let mut sink = outputs!(self, out);
        self.machine
            .receive(inbound, take.request.clone(), &mut sink);
        self.perform_instant(out);
    }

    /// Feeds the ladder what the machine told it (approvals, replies to its requests) until
    /// nothing is left, then records its state for the next commit.
    fn settle_ladder(&mut self, out: &mut Vec<u8>) {
        loop {
            if let Some(approval) = self.approvals.pop() {
                let decision = self.answer_approval(approval, out);
                self.apply_ladder(decision, out);
                continue;
            }
            let Some(watch) = self.ladder.as_mut() else {
                return;
            };
            let done = watch.take_done(now_millis());
            if done.is_empty() {
                if watch.dirty {
                    watch.dirty = false;
                    let saved = watch.saved_json();
                    self.store.save_ladder(&saved);
                }
                return;
            }
            for input in done {
                if let Some(watch) = self.ladder.as_mut() {
                    let decision = watch.ladder_mut().step(&input);
                    self.apply_ladder(decision, out);
                }
            }
        }
    }

    /// Answers an `approve_rung` (a retry of one answered before gets the same answer) and
    /// returns what the ladder decided on it.
    fn answer_approval(
        &mut self,
        approval: Approval,
        out: &mut Vec<u8>,
    ) -> crate::core::ladder::LadderDecision {
        let mut decision = crate::core::ladder::LadderDecision::default();
        let answer = match self.ladder.as_mut() {
            None => Err(Refusal::Crash("the ladder is gone".to_owned())),
            Some(watch) => match watch.approved(&approval.to, approval.msg_id) {
                Some(rung) if rung == approval.rung => Ok(RungApproved { rung }),
                Some(rung) => Err(Refusal::PreconditionFailed(format!(
                    "msg_id {} of {} was an approval of rung {rung}, not {}; use a new msg_id",
                    approval.msg_id, approval.to, approval.rung
                ))),
                None => {
                    let input = crate::core::ladder::Input::Approve {
                        at: now_millis(),
                        rung: usize::try_from(approval.rung).unwrap_or(usize::MAX),
                        by: approval.to.clone(),
                    };
                    decision = watch.ladder_mut().step(&input);
                    match decision.answer.take() {
                        Some(Ok(rung)) => {
                            watch.remember_approval(&approval.to, approval.msg_id, rung as u64);
                            Ok(RungApproved { rung: rung as u64 })
                        }
                        Some(Err(refusal)) => Err(refusal),
                        None => Err(Refusal::Crash("the ladder gave no answer".to_owned())),
                    }
                }
            },
        };
        let body = body_of(Some(approval.msg_id), &answer);
        match approval.waiter {
            Some(waiter) => self.held.push((waiter, body)),
            None => {
                let from = self
                    .node_id
                    .as_deref()
                    .or(approval.addressed.as_deref())
                    .unwrap_or(DEFAULT_NODE_ID);
                write_reply_raw(out, from, &approval.to, body.as_bytes());
            }
        }
        decision
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
        match self.handle_text(text, &mut None, out) {
            Ok(()) => None,
            Err(Unanswerable(why)) => self.diagnostic(why),
        }
    }

    /// Handles one request that came from elsewhere than stdin (an HTTP request): `body` is what
    /// stdin's line would carry as its `body`, from sender `src`. Its reply body goes to
    /// `waiter` (now, or when its operation completes); other replies it causes go to `out`.
    /// A body stdin could not answer either (not JSON, not an object, a change without
    /// `msg_id`) changes nothing, and the waiter is told why.
    pub fn handle_message(&mut self, src: &str, body: &[u8], waiter: Waiter, out: &mut Vec<u8>) {
        let mut waiter = Some(waiter);
        if let Err(why) = self.message(src, body, &mut waiter, out) {
            if let Some(waiter) = waiter {
                waiter.refuse(why);
            }
        }
    }

    fn message(
        &mut self,
        src: &str,
        body: &[u8],
        waiter: &mut Option<Waiter>,
        out: &mut Vec<u8>,
    ) -> Result<(), Unanswerable> {
        let raw: &serde_json::value::RawValue = serde_json::from_slice(body)
            .map_err(|e| Unanswerable(format!("the body is not JSON: {e}")))?;
        if !raw.get().starts_with('{') {
            return Err(Unanswerable(
                "the body is not a JSON object; send {\"type\": ..., \"msg_id\": N, ...}"
                    .to_owned(),
            ));
        }
        let mut line = String::with_capacity(raw.get().len() + src.len() + 48);
        line.push_str("{\"src\":");
        line.push_str(&serde_json::to_string(src).unwrap_or_default());
        line.push_str(",\"dest\":");
        let dest = self.node_id.as_deref().unwrap_or(DEFAULT_NODE_ID);
        line.push_str(&serde_json::to_string(dest).unwrap_or_default());
        line.push_str(",\"body\":");
        line.push_str(raw.get());
        line.push('}');
        self.handle_text(&line, waiter, out)
    }

    /// Handles one request line: its reply goes to `waiter` when there is one (taken then), else
    /// to `out`.
    fn handle_text(
        &mut self,
        text: &str,
        waiter: &mut Option<Waiter>,
        out: &mut Vec<u8>,
    ) -> Result<(), Unanswerable> {
        let incoming = match wire::decode(text) {
            Ok(incoming) => incoming,
            Err(problem) => {
                return Err(Unanswerable(match waiter {
                    None => format!("{problem}; skipped"),
                    Some(_) => problem.to_string(),
                }))
            }
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
            return Err(Unanswerable(why));
        };
        let mut request = incoming.request;
        if self.ladder.is_some() && src == ladder::SENDER {
            request = Err(Refusal::MalformedRequest(format!(
                "the sender name {} is the escalation ladder's own (its requests are told apart by it); send as another name, nothing changed",
                ladder::SENDER
            )));
        }
        match request {
            Err(refusal) => match waiter.take() {
                Some(waiter) => self
                    .held
                    .push((waiter, body_string(Some(msg_id), &refusal))),
                None => {
                    let from = self
                        .node_id
                        .as_deref()
                        .or(incoming.dest.as_deref())
                        .unwrap_or(DEFAULT_NODE_ID);
                    write_reply(out, from, src, Some(msg_id), &refusal);
                }
            },
            Ok(request) => {
                if let Request::Init { node_id, .. } = &request {
                    if !incoming.dry_run && self.machine.check(src, &request).is_ok() {
                        self.node_id = Some(node_id.clone());
                    }
                }
                let routed = match waiter.take() {
                    Some(waiter) => Some(Some(waiter)),
                    None if self.routes.contains(src, msg_id) => Some(None),
                    None => None,
                };
                if let Some(waiter) = routed {
                    self.routes.decide(src, msg_id, waiter);
                }
                let inbound = Inbound {
                    src,
                    addressed: incoming.dest.as_deref(),
                    msg_id,
                    dry_run: incoming.dry_run,
                    size: text.len(),
                };
                let mut sink = outputs!(self, out);
                self.machine.receive(inbound, request, &mut sink);
                self.routes.decided();
                self.perform_instant(out);
                self.settle_ladder(out);
            }
        }
        Ok(())
    }

    /// Where the estate stands, as `status` answers it, without `in_reply_to`.
    pub fn status_body(&self) -> String {
        let mut status = self.machine.status();
        status.ladder = self.ladder.as_ref().map(Watch::status_json);
        body_string(None, &status)
    }

    /// The body of `history_ok` for the last `limit` entries (20 by default), or with `after`
    /// the first `limit` entries past that sequence number, without `in_reply_to`; a refusal's
    /// body when the limit is out of range or the store cannot be read.
    pub fn history_body(&mut self, limit: Option<u32>, after: Option<u64>) -> String {
        let answer =
            self.machine
                .state()
                .history(limit, after)
                .and_then(|decision| {
                    let crate::core::effects::Decision::Lookup(
                        crate::core::effects::Lookup::History { limit, after },
                    ) = decision
                    else {
                        return Err(Refusal::Crash("history was not a look-up".to_owned()));
                    };
                    read_history(&mut self.store, self.ladder.as_ref(), after, limit)
                        .map(|entries| HistoryOk { entries })
                        .map_err(|e| {
                            Refusal::TemporarilyUnavailable(format!(
                                "the audit trail cannot be read: {e}"
                            ))
                        })
                });
        body_of(None, &answer)
    }

    /// The operations that ended after `after`, oldest first (at most `limit`).
    ///
    /// # Errors
    /// The store could not be read.
    pub fn history_after(&mut self, after: u64, limit: u32) -> Result<Vec<HistoryEntry>, String> {
        read_history(&mut self.store, self.ladder.as_ref(), Some(after), limit)
    }

    /// Answers a `backups` look-up that is not a protocol request (its body without
    /// `in_reply_to` goes to `waiter`): now from the state, or off the owner thread when a real
    /// directory is listed ([`Session::take_lookups`]).
    pub fn backups_body(&mut self, waiter: Waiter) {
        if let Some(lookups) = self.lookups.as_mut() {
            lookups.push(Lookup {
                from: String::new(),
                to: String::new(),
                msg_id: None,
                waiter: Some(waiter),
            });
            return;
        }
        let mut scratch = Vec::new();
        let listed = outputs!(self, &mut scratch).backups(self.machine.state());
        waiter.send(body_of(None, &backups_answer(listed)));
    }

    /// Keeps, from now on, the history entry of every operation that ends, for
    /// [`Session::take_ended`] (an event stream's `entry` events).
    pub fn keep_ended(&mut self) {
        self.ended.get_or_insert_with(Vec::new);
    }

    /// The entries of the operations that ended since the last call (publish them only after a
    /// commit: then they are durable).
    pub fn take_ended(&mut self) -> Vec<HistoryEntry> {
        self.ended.as_mut().map(std::mem::take).unwrap_or_default()
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
            let mut sink = outputs!(self, out);
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
        let mut sink = outputs!(self, out);
        self.machine.complete(lane, seq, completion, &mut sink);
        self.flags_changed(lane);
        self.perform_instant(out);
        self.settle_ladder(out);
    }

    /// Delivers an operation's progress.
    pub fn progress(&mut self, lane: Lane, seq: u64, progress: Progress) {
        self.machine.progress(lane, seq, progress);
    }

    /// How many reply bodies wait for the next commit.
    pub fn holding(&self) -> usize {
        self.held.len()
    }

    /// Hands the held reply bodies to their waiters: call after [`Session::commit`], when what
    /// they answer is durable (as stdout's replies are written only then).
    pub fn deliver(&mut self) {
        for (waiter, body) in self.held.drain(..) {
            waiter.send(body);
        }
    }

    /// Commits what the store holds: call before writing replies out or starting effects.
    ///
    /// # Errors
    /// The store's failure: the replies and effects since the last commit must not go out.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        self.store.commit(&self.machine)
    }

    /// Hands what the store recorded to be committed without waiting: `then` runs once it is
    /// durable (or is known not to be), perhaps on the store's own thread. For a session whose
    /// replies all go to one output (none waits in [`Session::deliver`]).
    ///
    /// # Errors
    /// An earlier commit failed.
    pub fn commit_then(&mut self, then: crate::store::Then) -> Result<(), StoreError> {
        debug_assert!(
            self.held.is_empty(),
            "commit_then with replies held for waiters"
        );
        self.store.commit_then(&self.machine, then)
    }

    /// Waits for every commit handed over by [`Session::commit_then`].
    ///
    /// # Errors
    /// One of them failed.
    pub fn settle(&mut self) -> Result<(), StoreError> {
        self.store.settle()
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
