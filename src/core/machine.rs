//! The node's formal state and how inputs move it: the estate's [`State`], the three lanes (each
//! with at most one running operation and a bounded queue), the retry memory, the sequence of
//! decided changes and the operations a crash interrupted.
//!
//! [`Machine`] is sans-I/O, like a protocol state machine that "performs no I/O whatsoever":
//! its inputs are decoded requests ([`Machine::receive`]), completions ([`Machine::complete`])
//! and progress reports ([`Machine::progress`]); its outputs go to a [`Sink`]: reply bodies,
//! journal records (an operation's intent before it starts, its outcome before its reply) and
//! the lanes whose operation may start. Whoever drives it — the inline session, the concurrent
//! runtime, a test delivering completions in any order — decides when effects run.

use crate::core::effects::{
    Completion, Decision, Effect, Found, Lane, Lookup, Operation, StatementView,
};
use crate::core::retries::{Answer, Answered};
use crate::core::state::{join, State};
pub use crate::core::transitions::HISTORY_WINDOW;
use crate::core::transitions::{status_of, Reply, Request};
use crate::protocol::encode::{body_into, body_string, ReplyBody};
use crate::protocol::replies::{BackupsOk, HistoryEntry, HistoryOk, StatusOk};
use crate::protocol::values::BackupView;
use crate::protocol::values::{InFlightView, InterruptedView, Progress};
use crate::protocol::Refusal;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;

/// How many requests may wait in one lane's queue; beyond that a request is refused with 11.
pub const QUEUE_LIMIT: usize = 1_024;
/// How many interrupted operations `status` keeps listing.
pub const INTERRUPTED_KEPT: usize = 100;

/// Where the machine's outputs go.
pub trait Sink {
    /// A reply body for the sender `to`, to its request `msg_id`; `addressed` is whom that
    /// request was addressed to (the reply's `src` before `init`).
    fn reply(&mut self, to: &str, addressed: Option<&str>, msg_id: u64, body: &str);
    /// A journal record: an intent must be durable before its effects start, an outcome before
    /// its reply is sent.
    fn record(&mut self, record: Record<'_>);
    /// The operation now running in `lane` (see [`Machine::running`]) may start once its intent
    /// is durable.
    fn start(&mut self, lane: Lane, seq: u64);
    /// Reads the audit trail.
    ///
    /// # Errors
    /// The store could not be read; the text says why.
    fn history(&mut self, limit: u32) -> Result<Vec<HistoryEntry>, String>;

    /// The first `limit` operations that ended with a sequence number above `after`, oldest
    /// first.
    ///
    /// # Errors
    /// The store could not be read.
    fn history_after(&mut self, after: u64, limit: u32) -> Result<Vec<HistoryEntry>, String> {
        let mut entries = self.history(u32::try_from(HISTORY_WINDOW).unwrap_or(u32::MAX))?;
        entries.retain(|e| e.seq > after);
        entries.truncate(limit as usize);
        Ok(entries)
    }

    /// The backups, newest first, as the executor finds them now (by default, the state's).
    ///
    /// # Errors
    /// The backups could not be read; the text says why.
    fn backups(&mut self, state: &State) -> Result<Vec<BackupView>, String> {
        Ok(simulated_backups(state))
    }

    /// Takes the `backups` request `msg_id` from `to` to answer it itself, later and elsewhere
    /// (listing a real directory hashes its files: not on the thread that owns the machine).
    /// Returns whether it did; by default it does not, and [`Sink::backups`] answers now.
    fn defer_backups(&mut self, _to: &str, _addressed: Option<&str>, _msg_id: u64) -> bool {
        false
    }

    /// Takes the `approve_rung` request `msg_id` from `to` for the escalation ladder to answer
    /// once the machine is done with this input. Returns whether it did; by default (no ladder)
    /// it does not, and the request is refused (22).
    fn defer_approval(
        &mut self,
        _to: &str,
        _addressed: Option<&str>,
        _msg_id: u64,
        _rung: u64,
    ) -> bool {
        false
    }

    /// The escalation ladder's `status_ok.ladder`, when there is one.
    fn ladder_status(&self) -> Option<serde_json::Value> {
        None
    }

    /// The statements `effects` would run, in order, for a dry run (a real database's files
    /// read now); none by default.
    fn statements(&mut self, _effects: &[Effect]) -> Vec<StatementView> {
        Vec::new()
    }
}

/// What the journal records.
#[derive(Debug, Clone, Copy)]
pub enum Record<'a> {
    /// A change refused when it was decided: remembered for retries, nothing performed.
    Refused {
        /// Its sequence number.
        seq: u64,
        /// Its sender.
        src: &'a str,
        /// Its msg_id.
        msg_id: u64,
        /// The answer (request and refusal).
        answer: &'a Arc<Answer>,
    },
    /// An accepted operation, before its effects start.
    Intent {
        /// Its sequence number.
        seq: u64,
        /// Its sender.
        src: &'a str,
        /// Its msg_id.
        msg_id: u64,
        /// The request.
        request: &'a Request,
        /// The operation (shared: a store may keep it until its outcome).
        operation: &'a Arc<Operation>,
    },
    /// How an operation ended, before its reply is sent.
    Outcome {
        /// Its sequence number.
        seq: u64,
        /// Its sender (shared with the retry memory).
        src: &'a Arc<str>,
        /// Its msg_id.
        msg_id: u64,
        /// What the executor reported.
        completion: &'a Completion,
        /// The answer (request and reply).
        answer: &'a Arc<Answer>,
    },
    /// An operation a crash cut short, reconciled at start.
    Interrupted {
        /// Its sequence number.
        seq: u64,
        /// Its sender.
        src: &'a Arc<str>,
        /// Its msg_id.
        msg_id: u64,
        /// What the executor said was true.
        found: &'a Found,
        /// The answer (request and the interruption).
        answer: &'a Arc<Answer>,
    },
}

/// An operation a crash interrupted, as `status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interrupted {
    /// Its sequence number.
    pub seq: u64,
    /// Its sender.
    pub src: String,
    /// Its msg_id.
    pub msg_id: u64,
    /// Its type.
    pub kind: String,
    /// What the executor said was true at start.
    pub found: Found,
}

/// A decoded request as the machine receives it.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    /// The sender.
    pub src: &'a str,
    /// Whom it was addressed to.
    pub addressed: Option<&'a str>,
    /// Its msg_id.
    pub msg_id: u64,
    /// `"dry_run": true`: decide, show the plan, perform nothing.
    pub dry_run: bool,
    /// How many bytes the request took on the wire (what remembering it costs).
    pub size: usize,
}

/// A request waiting for its lane, or running in it.
#[derive(Debug, Clone, PartialEq)]
struct Pending {
    src: Arc<str>,
    msg_id: u64,
    request: Request,
    /// Its size on the wire.
    size: usize,
    /// Whom the request was addressed to.
    addressed: Option<Arc<str>>,
    /// Whom each retry that joined it was addressed to.
    joined: Vec<Option<Arc<str>>>,
    /// A dry run: decided at the head of the lane, answered with its plan, never started.
    dry_run: bool,
}

/// The operation running in a lane.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    /// Its sequence number.
    pub seq: u64,
    /// The request.
    pending: Pending,
    /// The decided operation.
    pub operation: Arc<Operation>,
    /// Its progress, once reported.
    pub progress: Option<Progress>,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct LaneState {
    running: Option<Running>,
    queue: VecDeque<Pending>,
}

/// The node's state machine. See the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    state: State,
    answered: Answered,
    /// The sequence number of the last decided change (accepted or refused): its journal entry's.
    seq: u64,
    lanes: [LaneState; 3],
    interrupted: VecDeque<Interrupted>,
    /// The last `addressed` seen, shared: requests are nearly always addressed to the same node.
    last_addressed: Option<Arc<str>>,
    /// The allocation of the last operation completed, when nothing else held it.
    spare: Spare,
}

/// An operation's allocation kept for the next one to start. Not part of the machine's
/// state: every spare is equal to every other, and a clone has none.
#[derive(Default)]
struct Spare(Option<Arc<Operation>>);

impl Spare {
    /// `operation`, shared, in the kept allocation if there is one.
    fn wrap(&mut self, operation: Operation) -> Arc<Operation> {
        match self.0.take() {
            Some(mut kept) => match Arc::get_mut(&mut kept) {
                Some(slot) => {
                    *slot = operation;
                    kept
                }
                None => Arc::new(operation),
            },
            None => Arc::new(operation),
        }
    }

    /// Keeps `operation`'s allocation if nothing else holds it.
    fn keep(&mut self, operation: Arc<Operation>) {
        if Arc::strong_count(&operation) == 1 {
            self.0 = Some(operation);
        }
    }
}

impl Clone for Spare {
    fn clone(&self) -> Self {
        Spare(None)
    }
}

impl PartialEq for Spare {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for Spare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Spare")
    }
}

impl Machine {
    /// A machine starting from `state`, with nothing answered.
    pub fn new(state: State) -> Self {
        Machine {
            state,
            answered: Answered::default(),
            seq: 0,
            lanes: Default::default(),
            interrupted: VecDeque::new(),
            last_addressed: None,
            spare: Spare::default(),
        }
    }

    /// The estate's current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The memory of answered state-changing requests.
    pub fn answered(&self) -> &Answered {
        &self.answered
    }

    /// The sequence number of the last decided change (0 before any).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The operation running in `lane`, with its sequence number.
    pub fn running(&self, lane: Lane) -> Option<(u64, &Operation)> {
        let running = self.lanes[lane.index()].running.as_ref()?;
        Some((running.seq, &running.operation))
    }

    /// The sequence numbers of the operations running now, in lane order.
    pub fn running_seqs(&self) -> Vec<u64> {
        self.lanes
            .iter()
            .filter_map(|l| l.running.as_ref().map(|r| r.seq))
            .collect()
    }

    /// How many requests wait in `lane`'s queue.
    pub fn queued(&self, lane: Lane) -> usize {
        self.lanes[lane.index()].queue.len()
    }

    /// Whether nothing runs and nothing waits.
    pub fn is_idle(&self) -> bool {
        self.lanes
            .iter()
            .all(|l| l.running.is_none() && l.queue.is_empty())
    }

    /// What runs and waits, as `status` lists it.
    pub fn in_flight(&self) -> Vec<InFlightView> {
        let mut views = Vec::new();
        for lane in Lane::ALL {
            let state = &self.lanes[lane.index()];
            let view =
                |pending: &Pending, running: bool, progress: Option<Progress>| InFlightView {
                    kind: pending.request.type_name().to_owned(),
                    msg_id: pending.msg_id,
                    src: pending.src.to_string(),
                    lane: lane.to_string(),
                    state: if running { "running" } else { "queued" }.to_owned(),
                    progress,
                };
            if let Some(running) = &state.running {
                views.push(view(&running.pending, true, running.progress.clone()));
            }
            views.extend(state.queue.iter().map(|p| view(p, false, None)));
        }
        views
    }

    /// The operations a crash interrupted, as `status` lists them.
    pub fn interrupted(&self) -> Vec<InterruptedView> {
        self.interrupted
            .iter()
            .map(|i| InterruptedView {
                kind: i.kind.clone(),
                msg_id: i.msg_id,
                src: i.src.clone(),
                seq: i.seq,
                found: serde_json::to_value(&i.found).unwrap_or_default(),
            })
            .collect()
    }

    /// Decides `request` from `src` as it would be decided now, guard rails included; changes
    /// nothing.
    ///
    /// # Errors
    /// The refusal it would get.
    pub fn check(&self, src: &str, request: &Request) -> Result<Decision<Reply>, Refusal> {
        self.permit(src, request)?;
        self.decide(request)
    }

    /// Where the estate stands, as `status` answers it: the four layers, what is in flight and
    /// what a crash interrupted.
    pub fn status(&self) -> StatusOk {
        let mut status = status_of(&self.state);
        status.in_flight = self.in_flight();
        status.interrupted = self.interrupted();
        status
    }

    /// Decides `request` against the estate's state (its transition); changes nothing.
    ///
    /// # Errors
    /// The transition's refusal.
    pub fn decide(&self, request: &Request) -> Result<Decision<Reply>, Refusal> {
        self.state.decide(request)
    }

    /// Takes what the executors say is true now (at start: the real systems are the truth).
    /// Returns whether anything changed.
    pub fn observe(&mut self, found: &Found) -> bool {
        let before = self.state.clone();
        found.apply(&mut self.state);
        before != self.state
    }

    /// The estate's guard rail: whether `src` may send this type of request.
    fn permit(&self, src: &str, request: &Request) -> Result<(), Refusal> {
        let kind = request.type_name();
        match self.state.permissions.get(kind) {
            Some(allowed) if !allowed.iter().any(|s| s == src) => {
                Err(Refusal::PreconditionFailed(format!(
                    "sender {src} may not send {kind}: the estate allows it only from {} (rule permissions.{kind}); nothing changed",
                    join(allowed)
                )))
            }
            _ => Ok(()),
        }
    }

    /// Handles one decoded request: a query is answered at once; a change is answered from the
    /// retry memory, joins its running or queued copy, is decided now if its lane is free, or
    /// waits in its lane's queue.
    pub fn receive(&mut self, inbound: Inbound<'_>, request: Request, sink: &mut impl Sink) {
        let Inbound {
            src,
            addressed,
            msg_id,
            dry_run,
            size,
        } = inbound;
        let Some(lane) = request.lane() else {
            let answer = if dry_run {
                Err(Refusal::MalformedRequest(format!(
                    "dry_run applies to requests that change the estate; {} changes nothing, send it without dry_run",
                    request.type_name()
                )))
            } else {
                match self
                    .permit(src, &request)
                    .and_then(|()| self.decide(&request))
                {
                    Ok(Decision::Lookup(Lookup::Backups))
                        if sink.defer_backups(src, addressed, msg_id) =>
                    {
                        return
                    }
                    Ok(Decision::Lookup(Lookup::ApproveRung { rung }))
                        if sink.defer_approval(src, addressed, msg_id, rung) =>
                    {
                        return
                    }
                    decided => decided.and_then(|decision| self.answer_now(decision, sink)),
                }
            };
            reply(sink, src, addressed, msg_id, &answer);
            return;
        };
        if dry_run && self.lane_is_free(lane) {
            self.answer_dry_run(src, addressed, msg_id, &request, sink);
            return;
        }
        if let Some(answer) = self.answered.get(src, msg_id).filter(|_| !dry_run) {
            if answer.request == request {
                let body = answer.body.clone();
                sink.reply(src, addressed, msg_id, &body);
            } else {
                let refusal = reused(src, msg_id, answer.request.type_name(), &request);
                reply(sink, src, addressed, msg_id, &Err::<Reply, _>(refusal));
            }
            return;
        }
        let addressed = addressed.map(|a| self.intern(a));
        if let (false, Some(pending)) = (dry_run, self.pending_mut(src, msg_id)) {
            if pending.request == request {
                pending.joined.push(addressed);
            } else {
                let refusal = reused(src, msg_id, pending.request.type_name(), &request);
                reply(
                    sink,
                    src,
                    addressed.as_deref(),
                    msg_id,
                    &Err::<Reply, _>(refusal),
                );
            }
            return;
        }
        let pending = Pending {
            src: match self.answered.sender(src) {
                Some(name) => Arc::clone(name),
                None => Arc::from(src),
            },
            msg_id,
            request,
            size,
            addressed,
            joined: Vec::new(),
            dry_run,
        };
        if self.lane_is_free(lane) {
            self.decide_pending(lane, pending, sink);
        } else if self.lanes[lane.index()].queue.len() >= QUEUE_LIMIT {
            let refusal = Refusal::TemporarilyUnavailable(format!(
                "the {lane} lane has {QUEUE_LIMIT} requests waiting; nothing changed, retry later"
            ));
            let addressed = pending.addressed.clone();
            reply(
                sink,
                src,
                addressed.as_deref(),
                msg_id,
                &Err::<Reply, _>(refusal),
            );
        } else {
            self.lanes[lane.index()].queue.push_back(pending);
        }
    }

    /// Whether nothing runs or waits in `lane`: a request is decided at once.
    fn lane_is_free(&self, lane: Lane) -> bool {
        let state = &self.lanes[lane.index()];
        state.running.is_none() && state.queue.is_empty()
    }

    /// `addressed`, shared with the previous request's when it is the same.
    fn intern(&mut self, addressed: &str) -> Arc<str> {
        match &self.last_addressed {
            Some(last) if &**last == addressed => Arc::clone(last),
            _ => {
                let shared: Arc<str> = Arc::from(addressed);
                self.last_addressed = Some(Arc::clone(&shared));
                shared
            }
        }
    }

    /// The running or queued copy of `(src, msg_id)`.
    fn pending_mut(&mut self, src: &str, msg_id: u64) -> Option<&mut Pending> {
        self.lanes.iter_mut().find_map(|lane| {
            let running = lane.running.as_mut().map(|r| &mut r.pending);
            running
                .into_iter()
                .chain(lane.queue.iter_mut())
                .find(|p| !p.dry_run && p.msg_id == msg_id && &*p.src == src)
        })
    }

    /// A query's decision, answered now.
    fn answer_now(
        &self,
        decision: Decision<Reply>,
        sink: &mut impl Sink,
    ) -> Result<Reply, Refusal> {
        match decision {
            Decision::Reply(Reply::StatusOk(_)) => {
                let mut status = self.status();
                status.ladder = sink.ladder_status();
                Ok(Reply::StatusOk(status))
            }
            Decision::Lookup(Lookup::ApproveRung { rung }) => Err(Refusal::PreconditionFailed(
                format!("nothing awaits approval at rung {rung}: this node has no escalation ladder (the estate has no [ladder])"),
            )),
            Decision::Reply(reply) => Ok(reply),
            Decision::Lookup(Lookup::Backups) => sink
                .backups(&self.state)
                .map(|backups| Reply::BackupsOk(BackupsOk { backups }))
                .map_err(|e| {
                    Refusal::TemporarilyUnavailable(format!("the backups cannot be read: {e}"))
                }),
            Decision::Lookup(Lookup::History { limit, after }) => match after {
                Some(after) => sink.history_after(after, limit),
                None => sink.history(limit),
            }
            .map(|entries| Reply::HistoryOk(HistoryOk { entries }))
            .map_err(|e| {
                Refusal::TemporarilyUnavailable(format!("the audit trail cannot be read: {e}"))
            }),
            Decision::Accept(_) => Err(Refusal::Crash(
                "a query was decided as an operation; nothing changed".to_owned(),
            )),
        }
    }

    /// Answers a dry run against the state as it is now (its lane's predecessors done).
    fn answer_dry_run(
        &self,
        src: &str,
        addressed: Option<&str>,
        msg_id: u64,
        request: &Request,
        sink: &mut impl Sink,
    ) {
        let plan = self
            .permit(src, request)
            .and_then(|()| self.decide(request))
            .map(|decision| self.plan(decision))
            .map(|mut plan| {
                plan.statements = sink.statements(&plan.effects);
                plan
            });
        match plan {
            Ok(plan) => sink.reply(src, addressed, msg_id, &body_string(Some(msg_id), &plan)),
            Err(refusal) => reply(sink, src, addressed, msg_id, &Err::<Reply, _>(refusal)),
        }
    }

    /// What a dry run answers: the effects, and the state if they all succeed.
    fn plan(&self, decision: Decision<Reply>) -> PlanOk {
        match decision {
            Decision::Accept(operation) => {
                let mut after = self.state.clone();
                let expected = operation.expected_completion();
                let _ = after.finish(&operation, &expected);
                PlanOk {
                    effects: operation.effects,
                    state_after: status_of(&after),
                    statements: Vec::new(),
                }
            }
            Decision::Reply(_) | Decision::Lookup(_) => PlanOk {
                effects: Vec::new(),
                state_after: status_of(&self.state),
                statements: Vec::new(),
            },
        }
    }

    /// Decides a request at the head of its lane: a refusal is remembered and answered; an
    /// accepted operation is recorded as an intent and starts. Returns whether it started.
    fn decide_pending(&mut self, lane: Lane, pending: Pending, sink: &mut impl Sink) -> bool {
        if pending.dry_run {
            let addressed = pending.addressed.clone();
            self.answer_dry_run(
                &pending.src,
                addressed.as_deref(),
                pending.msg_id,
                &pending.request,
                sink,
            );
            return false;
        }
        self.seq += 1;
        let seq = self.seq;
        let decision = self
            .permit(&pending.src, &pending.request)
            .and_then(|()| self.decide(&pending.request));
        let answer = match decision {
            Ok(Decision::Accept(operation)) => {
                let operation = self.spare.wrap(operation);
                sink.record(Record::Intent {
                    seq,
                    src: &pending.src,
                    msg_id: pending.msg_id,
                    request: &pending.request,
                    operation: &operation,
                });
                self.lanes[lane.index()].running = Some(Running {
                    seq,
                    pending,
                    operation,
                    progress: None,
                });
                sink.start(lane, seq);
                return true;
            }
            Ok(decision) => self.answer_now(decision, sink),
            Err(refusal) => Err(refusal),
        };
        let Pending {
            src,
            msg_id,
            request,
            size,
            addressed,
            joined,
            ..
        } = pending;
        let answer = fresh_answer(&mut self.answered, request, size, msg_id, &answer);
        sink.record(Record::Refused {
            seq,
            src: &src,
            msg_id,
            answer: &answer,
        });
        for addressed in std::iter::once(&addressed).chain(&joined) {
            sink.reply(&src, addressed.as_deref(), msg_id, &answer.body);
        }
        self.answered.insert_shared(&src, msg_id, answer);
        false
    }

    /// Decides queued requests in `lane` until one starts or the queue is empty.
    fn advance(&mut self, lane: Lane, sink: &mut impl Sink) {
        while self.lanes[lane.index()].running.is_none() {
            let Some(next) = self.lanes[lane.index()].queue.pop_front() else {
                return;
            };
            if self.decide_pending(lane, next, sink) {
                return;
            }
        }
    }

    /// An executor reports how the operation `seq` in `lane` ended: the state takes it, the
    /// outcome is recorded, every copy of the request is answered, and the lane moves on. A
    /// completion for an operation that is not running there is ignored.
    pub fn complete(&mut self, lane: Lane, seq: u64, completion: Completion, sink: &mut impl Sink) {
        let slot = &mut self.lanes[lane.index()].running;
        if slot.as_ref().is_none_or(|r| r.seq != seq) {
            return;
        }
        let Some(running) = slot.take() else {
            return;
        };
        let Running {
            pending, operation, ..
        } = running;
        let Pending {
            src,
            msg_id,
            request,
            size,
            addressed,
            joined,
            ..
        } = pending;
        let reply = self.state.finish(&operation, &completion);
        let answer = fresh_answer(&mut self.answered, request, size, msg_id, &reply);
        let (shared_src, remembered) =
            self.answered
                .insert_shared(&src, msg_id, Arc::clone(&answer));
        sink.record(Record::Outcome {
            seq,
            src: shared_src,
            msg_id,
            completion: &completion,
            answer: remembered,
        });
        // After the record: a store holds the operation until the outcome joins its intent.
        self.spare.keep(operation);
        for addressed in std::iter::once(&addressed).chain(&joined) {
            sink.reply(&src, addressed.as_deref(), msg_id, &answer.body);
        }
        self.advance(lane, sink);
    }

    /// An executor reports how far the operation `seq` in `lane` has come.
    pub fn progress(&mut self, lane: Lane, seq: u64, progress: Progress) {
        if let Some(running) = &mut self.lanes[lane.index()].running {
            if running.seq == seq {
                running.progress = Some(progress);
            }
        }
    }

    // --- Rebuilding from the journal ---

    /// Replays a change refused when it was decided.
    pub fn replay_refused(&mut self, seq: u64, src: &str, msg_id: u64, answer: Answer) {
        self.seq = self.seq.max(seq);
        self.answered.insert(src, msg_id, answer);
    }

    /// Replays a completed operation: applies its recorded completion (no executor is called)
    /// and remembers its answer. Returns the reply body it replays to, for the caller to compare
    /// with the one recorded.
    pub fn replay_outcome(
        &mut self,
        seq: u64,
        src: &str,
        msg_id: u64,
        request: Request,
        operation: &Operation,
        completion: &Completion,
    ) -> Arc<Answer> {
        self.seq = self.seq.max(seq);
        let reply = self.state.finish(operation, completion);
        let answer = Arc::new(encode_answer(request, msg_id, &reply));
        self.answered
            .insert_shared(src, msg_id, Arc::clone(&answer));
        answer
    }

    /// Notes a decided operation whose outcome was never recorded (the journal's intent), so
    /// that its sequence number is not given out again.
    pub fn replay_intent(&mut self, seq: u64) {
        self.seq = self.seq.max(seq);
    }

    /// Reconciles (or replays the reconciliation of) an operation a crash interrupted: the state
    /// takes what the executor found, the interruption is remembered as its answer (code 13) so
    /// a retry is told rather than run, and `status` lists it. Never re-runs it.
    pub fn interrupt(
        &mut self,
        seq: u64,
        src: &str,
        msg_id: u64,
        request: Request,
        found: Found,
    ) -> Arc<Answer> {
        self.seq = self.seq.max(seq);
        found.apply(&mut self.state);
        let kind = request.type_name();
        let refusal = Refusal::Crash(format!(
            "{kind} (journal entry {seq}) was interrupted by a restart before it completed; at start the executor found {}; it was not run again: check the estate and send a new request with a new msg_id if it is still needed",
            serde_json::to_string(&found).unwrap_or_default()
        ));
        let answer = Arc::new(encode_answer(request, msg_id, &Err(refusal)));
        self.answered
            .insert_shared(src, msg_id, Arc::clone(&answer));
        if self.interrupted.len() >= INTERRUPTED_KEPT {
            self.interrupted.pop_front();
        }
        self.interrupted.push_back(Interrupted {
            seq,
            src: src.to_owned(),
            msg_id,
            kind: kind.to_owned(),
            found,
        });
        answer
    }

    /// The persistent part of the machine, sharing the retry memory's answers (cheap to take;
    /// serialized elsewhere).
    pub fn snapshot(&self) -> SnapshotOut {
        SnapshotOut {
            seq: self.seq,
            state: self.state.clone(),
            answers: self
                .answered
                .entries()
                .map(|(src, msg_id, answer)| (Arc::clone(src), msg_id, Arc::clone(answer)))
                .collect(),
            interrupted: self.interrupted.iter().cloned().collect(),
            running: self.running_seqs(),
        }
    }

    /// A machine rebuilt from a snapshot (nothing running: the snapshot's running operations are
    /// replayed from the journal).
    pub fn from_snapshot(snapshot: Snapshot) -> Self {
        let mut machine = Machine::new(snapshot.state);
        machine.seq = snapshot.seq;
        for answer in snapshot.answers {
            machine.answered.insert(
                &answer.src,
                answer.msg_id,
                Answer::new(
                    answer.request,
                    answer.body.get().to_owned(),
                    answer.accepted,
                ),
            );
        }
        machine.interrupted = snapshot.interrupted.into();
        machine
    }
}

/// A snapshot as taken: the answers are shared with the retry memory, and serialize to the
/// shape [`Snapshot`] reads.
#[derive(Debug, Clone)]
pub struct SnapshotOut {
    /// The last decided sequence number.
    pub seq: u64,
    /// The estate's state.
    pub state: State,
    /// The retry memory, in the order that rebuilds it.
    pub answers: Vec<(Arc<str>, u64, Arc<Answer>)>,
    /// The interruptions still listed.
    pub interrupted: Vec<Interrupted>,
    /// The sequence numbers of the operations running when it was taken.
    pub running: Vec<u64>,
}

impl SnapshotOut {
    /// The snapshot as JSON: the bytes its `Serialize` gives, but with each remembered reply
    /// body copied as it is kept (JSON the encoder wrote) rather than parsed again to be
    /// written.
    ///
    /// # Errors
    /// A part could not be serialized.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let bytes: usize = self.answers.iter().map(|(_, _, a)| a.weight()).sum();
        let mut out = Vec::with_capacity(bytes + 256);
        out.extend_from_slice(b"{\"seq\":");
        serde_json::to_writer(&mut out, &self.seq)?;
        out.extend_from_slice(b",\"state\":");
        serde_json::to_writer(&mut out, &self.state)?;
        out.extend_from_slice(b",\"answers\":[");
        for (i, (src, msg_id, answer)) in self.answers.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"src\":");
            serde_json::to_writer(&mut out, &**src)?;
            out.extend_from_slice(b",\"msg_id\":");
            serde_json::to_writer(&mut out, msg_id)?;
            out.extend_from_slice(b",\"request\":");
            serde_json::to_writer(&mut out, &answer.request)?;
            out.extend_from_slice(b",\"body\":");
            out.extend_from_slice(answer.body.as_bytes());
            out.extend_from_slice(if answer.accepted {
                b",\"accepted\":true}"
            } else {
                b",\"accepted\":false}"
            });
        }
        out.extend_from_slice(b"],\"interrupted\":");
        serde_json::to_writer(&mut out, &self.interrupted)?;
        out.extend_from_slice(b",\"running\":");
        serde_json::to_writer(&mut out, &self.running)?;
        out.push(b'}');
        Ok(out)
    }
}

impl Serialize for SnapshotOut {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};

        struct Answers<'a>(&'a [(Arc<str>, u64, Arc<Answer>)]);

        impl Serialize for Answers<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
                for (src, msg_id, answer) in self.0 {
                    let body: &serde_json::value::RawValue =
                        serde_json::from_str(&answer.body).map_err(serde::ser::Error::custom)?;
                    seq.serialize_element(&SnapshotAnswerRef {
                        src,
                        msg_id: *msg_id,
                        request: &answer.request,
                        body,
                        accepted: answer.accepted,
                    })?;
                }
                seq.end()
            }
        }

        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("seq", &self.seq)?;
        map.serialize_entry("state", &self.state)?;
        map.serialize_entry("answers", &Answers(&self.answers))?;
        map.serialize_entry("interrupted", &self.interrupted)?;
        map.serialize_entry("running", &self.running)?;
        map.end()
    }
}

#[derive(Serialize)]
struct SnapshotAnswerRef<'a> {
    src: &'a str,
    msg_id: u64,
    request: &'a Request,
    body: &'a serde_json::value::RawValue,
    accepted: bool,
}

/// The persistent part of a [`Machine`]: state, retry memory, sequence, interruptions, and the
/// operations running when it was taken (their outcomes come later in the journal).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// The last decided sequence number.
    pub seq: u64,
    /// The estate's state.
    pub state: State,
    /// The retry memory, in the order that rebuilds it.
    pub answers: Vec<SnapshotAnswer>,
    /// The interruptions still listed.
    pub interrupted: Vec<Interrupted>,
    /// The sequence numbers of the operations running when it was taken.
    pub running: Vec<u64>,
}

/// One remembered answer in a [`Snapshot`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotAnswer {
    /// The sender.
    pub src: String,
    /// The msg_id.
    pub msg_id: u64,
    /// The request.
    pub request: Request,
    /// The reply body, as the JSON it is (written as is, not as an escaped string).
    pub body: Box<serde_json::value::RawValue>,
    /// Whether it was carried out.
    pub accepted: bool,
}

/// `plan_ok`: what a `dry_run` request would do, with nothing performed. `statements` is written
/// only when a real database would run some.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanOk {
    /// The effects an executor would perform, in order.
    pub effects: Vec<Effect>,
    /// The state if they all succeed, shaped like `status_ok`.
    pub state_after: StatusOk,
    /// The statements the files would run, in order.
    pub statements: Vec<StatementView>,
}

impl ReplyBody for PlanOk {
    fn type_name(&self) -> &'static str {
        "plan_ok"
    }

    fn serialize_fields<M: serde::ser::SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        map.serialize_entry("effects", &self.effects)?;
        map.serialize_entry("state_after", &self.state_after)?;
        if !self.statements.is_empty() {
            map.serialize_entry("statements", &self.statements)?;
        }
        Ok(())
    }
}

/// The state's own backups as `backups` lists them (a simulated world: no file, no time).
pub fn simulated_backups(state: &State) -> Vec<BackupView> {
    state
        .backups
        .iter()
        .rev()
        .map(|b| BackupView {
            name: b.name.clone(),
            taken_at: None,
            schema_version: Some(b.schema_version),
            rows: Some(b.rows),
            size: None,
            verified: true,
            problem: None,
        })
        .collect()
}

/// The answer to remember: the request, its reply body as encoded, and what it weighs (`size`:
/// the request's size on the wire, when known).
/// The reply body to an answer, appended to `out`.
fn answer_body<B: ReplyBody>(out: &mut String, msg_id: u64, answer: &Result<B, Refusal>) {
    match answer {
        Ok(reply) => body_into(out, Some(msg_id), reply),
        Err(refusal) => body_into(out, Some(msg_id), refusal),
    }
}

/// An answer to remember, built through [`Answered::fresh`]: in the allocations of a forgotten
/// one.
fn fresh_answer<B: ReplyBody>(
    answered: &mut Answered,
    request: Request,
    size: usize,
    msg_id: u64,
    answer: &Result<B, Refusal>,
) -> Arc<Answer> {
    answered.fresh(request, size, answer.is_ok(), |out| {
        answer_body(out, msg_id, answer)
    })
}

/// An answer to remember, its request measured (it did not come from a line).
fn encode_answer(request: Request, msg_id: u64, answer: &Result<Reply, Refusal>) -> Answer {
    let mut body = String::with_capacity(128);
    answer_body(&mut body, msg_id, answer);
    Answer::new(request, body, answer.is_ok())
}

fn reply<B: ReplyBody>(
    sink: &mut impl Sink,
    src: &str,
    addressed: Option<&str>,
    msg_id: u64,
    answer: &Result<B, Refusal>,
) {
    let mut body = String::with_capacity(128);
    answer_body(&mut body, msg_id, answer);
    sink.reply(src, addressed, msg_id, &body);
}

fn reused(src: &str, msg_id: u64, earlier: &str, request: &Request) -> Refusal {
    Refusal::PreconditionFailed(format!(
        "msg_id {msg_id} from {src} already answered a different request ({earlier}); send this {} with a new msg_id",
        request.type_name()
    ))
}
