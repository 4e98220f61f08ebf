//! Model-based test of the lanes: queues, retries that join, completions in any order, failures,
//! progress, commits and crashes with a restart from the journal.
//!
//! The reference model below is written from the design alone. It keeps, per lane, the request
//! running there and a first-come-first-served queue; the estate's schema version, flags, live
//! environment and last restore; the answers given to each (src, msg_id); the sequence counter;
//! and what the last commit made durable. It shares no code with the library: its requests,
//! decisions, effects and reply bodies are its own, and it reads the example estate from
//! constants written out by hand.
//!
//! The real node is a `Session` performing nothing by itself (`Performing::Manual`) over a
//! `MemoryStore::durable()`: the test takes the started operations, and hands in completions,
//! failures and progress, as the runtime's lane workers would. As the runtime does, it performs
//! an operation's effects only once its intent is committed, and treats a reply as sent (seen by
//! the client) only once it is committed. A crash loses what was recorded since the last commit;
//! the node restarts from the committed entries (`replay::rebuild`), reconciles the operations the
//! crash interrupted, and commits.
//!
//! Every step compares the reply bodies with the model's and checks the named invariants.

use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::Union;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence};
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use rollback_node::core::effects::{Completion, Done, ExecError, Failure, FailureKind, Lane};
use rollback_node::protocol::values::{InFlightView, Progress, Seconds};
use rollback_node::runtime::session::Performing;
use rollback_node::store::{replay, MemoryStore, Store};
use rollback_node::{Estate, Machine, Session, Simulated, State};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Test cases of the state-machine test (`PROPTEST_CASES` overrides).
const CASES: u32 = 1024;
/// Steps per test case (exclusive upper bound).
const MAX_STEPS: usize = 48;

// ---------------------------------------------------------------------------------------------
// The example estate, as the model knows it (estates/example.toml, written out by hand).
// ---------------------------------------------------------------------------------------------

const MIGRATIONS: [&str; 3] = [
    "create_users",
    "add_users_email_index",
    "add_checkout_columns",
];
const FLAG: &str = "new_checkout";
const BACKUP: &str = "users_backup_20240115";
const BACKUP_ROWS: u64 = 100_000;
const BACKUP_SCHEMA: u64 = 2;
/// How many requests one lane's queue holds.
const QUEUE_LIMIT: usize = 1_024;
/// Whom every request is addressed to (no `init`: replies come from it).
const NODE: &str = "n1";
const SENDERS: [&str; 3] = ["alice", "bob", "carol"];
/// Lane names, in the order `status` lists them.
const LANES: [&str; 3] = ["schema", "traffic", "flags"];

// ---------------------------------------------------------------------------------------------
// The reference model.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Env {
    Blue,
    Green,
}

impl Env {
    fn name(self) -> &'static str {
        match self {
            Env::Blue => "blue",
            Env::Green => "green",
        }
    }
}

/// A request as the model understands it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Req {
    Rollback(u64),
    Migrate(u64),
    Disable(&'static str),
    Enable(&'static str),
    Switch(Env, Env),
    Restore(&'static str),
    Status,
}

impl Req {
    fn type_name(&self) -> &'static str {
        match self {
            Req::Rollback(_) => "rollback",
            Req::Migrate(_) => "migrate",
            Req::Disable(_) => "disable_feature",
            Req::Enable(_) => "enable_feature",
            Req::Switch(..) => "switch_traffic",
            Req::Restore(_) => "restore",
            Req::Status => "status",
        }
    }

    /// Its lane: 0 schema, 1 traffic, 2 flags; none for a query.
    fn lane(&self) -> Option<usize> {
        match self {
            Req::Rollback(_) | Req::Migrate(_) | Req::Restore(_) => Some(0),
            Req::Switch(..) => Some(1),
            Req::Disable(_) | Req::Enable(_) => Some(2),
            Req::Status => None,
        }
    }

    /// The request body (without `msg_id` and `dry_run`).
    fn body(&self) -> Value {
        let mut body = json!({"type": self.type_name()});
        match self {
            Req::Rollback(v) | Req::Migrate(v) => body["version"] = json!(v),
            Req::Disable(f) | Req::Enable(f) => body["feature"] = json!(f),
            Req::Switch(from, to) => {
                body["from"] = json!(from.name());
                body["to"] = json!(to.name());
            }
            Req::Restore(b) => body["backup"] = json!(b),
            Req::Status => {}
        }
        body
    }
}

/// The estate as the model sees it.
#[derive(Clone, Debug, PartialEq)]
struct World {
    schema: u64,
    flags: BTreeMap<String, bool>,
    live: Env,
    last_restore: Option<(String, u64, u64)>,
}

impl World {
    fn example() -> Self {
        World {
            schema: 3,
            flags: BTreeMap::from([(FLAG.to_owned(), true)]),
            live: Env::Green,
            last_restore: None,
        }
    }

    /// The fields `status_ok` and `state_after` share.
    fn status_fields(&self) -> Value {
        json!({
            "schema_version": self.schema,
            "live_environment": self.live.name(),
            "flags": self.flags,
            "restore": self.last_restore.as_ref().map(|(backup, rows, schema)| json!({
                "backup": backup,
                "restored_rows": rows,
                "schema_version": schema,
            })),
        })
    }
}

/// An accepted request: its effects (as a dry run lists them) and the schema it started from.
#[derive(Clone, Debug, PartialEq)]
struct Decided {
    effects: Vec<Value>,
    from: u64,
}

/// Decides `req` against `world`: the effects, or the refusal's code. Both environments of the
/// example estate are healthy and every migration has a down().
fn decide(world: &World, req: &Req) -> Result<Decided, u64> {
    let last = MIGRATIONS.len() as u64;
    let current = world.schema;
    let step = |kind: &str, v: u64| json!({"effect": kind, "version": v, "file": MIGRATIONS[v as usize - 1]});
    let effects = match req {
        Req::Rollback(v) => {
            if *v > last {
                return Err(20);
            }
            if *v > current {
                return Err(22);
            }
            (*v..=current).rev().map(|x| step("run_down", x)).collect()
        }
        Req::Migrate(v) => {
            if *v > last {
                return Err(20);
            }
            if *v <= current {
                return Err(22);
            }
            (current + 1..=*v).map(|x| step("run_up", x)).collect()
        }
        Req::Disable(f) | Req::Enable(f) => {
            if !world.flags.contains_key(*f) {
                return Err(20);
            }
            let enabled = matches!(req, Req::Enable(_));
            vec![json!({"effect": "write_flags", "flag": f, "enabled": enabled})]
        }
        Req::Switch(from, to) => {
            if from == to {
                return Err(12);
            }
            if *from != world.live {
                return Err(22);
            }
            vec![
                json!({"effect": "set_server_state", "server": to.name(), "state": "ready"}),
                json!({"effect": "set_server_state", "server": from.name(), "state": "drain"}),
            ]
        }
        Req::Restore(b) => {
            if *b != BACKUP {
                return Err(20);
            }
            vec![json!({"effect": "restore", "backup": b})]
        }
        Req::Status => unreachable!("a query has no lane"),
    };
    Ok(Decided {
        effects,
        from: current,
    })
}

/// How an operation ends, as the model hands it in.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fin {
    Done { seconds: u64, rows: Option<u64> },
    Failed { completed: usize, part_way: bool },
}

/// A reply body as the model predicts it.
#[derive(Clone, Debug, PartialEq)]
enum Pred {
    /// The exact body (compared as JSON values).
    Body(Value),
    /// An error with this code; its text is free prose.
    Code(u64),
    /// Code 13, telling that a restart interrupted the operation.
    Interrupted,
}

/// Applies a finished operation to `world` and predicts its reply.
fn finish(world: &mut World, req: &Req, decided: &Decided, msg_id: u64, fin: Fin) -> Pred {
    match fin {
        Fin::Done { seconds, rows } => Pred::Body(match req {
            Req::Rollback(v) => {
                world.schema = v - 1;
                json!({"type": "rollback_complete", "in_reply_to": msg_id,
                       "rolled_back_from": decided.from, "rolled_back_to": v - 1,
                       "duration_seconds": seconds})
            }
            Req::Migrate(v) => {
                world.schema = *v;
                json!({"type": "migrate_complete", "in_reply_to": msg_id,
                       "migrated_from": decided.from, "migrated_to": v,
                       "duration_seconds": seconds})
            }
            Req::Disable(f) => {
                world.flags.insert(f.to_string(), false);
                json!({"type": "feature_disabled", "in_reply_to": msg_id, "feature": f,
                       "rolled_back_instant": true})
            }
            Req::Enable(f) => {
                world.flags.insert(f.to_string(), true);
                json!({"type": "feature_enabled", "in_reply_to": msg_id, "feature": f})
            }
            Req::Switch(_, to) => {
                world.live = *to;
                json!({"type": "traffic_switched", "in_reply_to": msg_id,
                       "current_environment": to.name(), "downtime_seconds": 0})
            }
            Req::Restore(b) => {
                let rows = rows.unwrap_or(BACKUP_ROWS);
                world.schema = BACKUP_SCHEMA;
                world.last_restore = Some((b.to_string(), rows, BACKUP_SCHEMA));
                json!({"type": "restore_complete", "in_reply_to": msg_id,
                       "restored_rows": rows, "duration_seconds": seconds})
            }
            Req::Status => unreachable!("a query is not an operation"),
        }),
        Fin::Failed {
            completed,
            part_way,
        } => {
            // Each completed down() leaves the schema one below its version, each up() at its.
            match req {
                Req::Rollback(_) => world.schema = decided.from - completed as u64,
                Req::Migrate(_) => world.schema = decided.from + completed as u64,
                _ => {}
            }
            Pred::Code(if completed == 0 && !part_way { 14 } else { 13 })
        }
    }
}

type Key = (&'static str, u64);

/// A request waiting in a lane's queue, with how many copies (itself and joined retries) wait
/// for its answer.
#[derive(Clone, Debug)]
struct Waiting {
    src: &'static str,
    msg_id: u64,
    req: Req,
    copies: usize,
    /// A dry run: answered with its plan when it reaches the head, never started.
    dry_run: bool,
}

/// The operation running in a lane.
#[derive(Clone, Debug)]
struct Op {
    seq: u64,
    waiting: Waiting,
    decided: Decided,
    progress: Option<Value>,
}

#[derive(Clone, Debug, Default)]
struct LaneModel {
    running: Option<Op>,
    queue: VecDeque<Waiting>,
}

/// What the last commit made durable.
#[derive(Clone, Debug)]
struct Durable {
    world: World,
    seq: u64,
    answered: BTreeMap<Key, (Req, Pred)>,
    interrupted: Vec<Value>,
    /// The operations running then: their intents are committed, their outcomes are not.
    running: Vec<(usize, Op)>,
}

/// One reply the model expects.
#[derive(Clone, Debug)]
struct Expect {
    to: &'static str,
    in_reply_to: u64,
    pred: Pred,
    /// The request it answers is remembered with this answer: a retry gets the identical body.
    remembered: Option<Key>,
}

/// What the model predicts for the last step.
#[derive(Clone, Debug, Default)]
struct Step {
    replies: Vec<Expect>,
    /// Operations that started: lane, seq, sender, msg_id.
    starts: Vec<(usize, u64, &'static str, u64)>,
    /// The request was refused when decided: it took a sequence number.
    decided_refusal: bool,
}

#[derive(Clone, Debug)]
struct Model {
    world: World,
    seq: u64,
    lanes: [LaneModel; 3],
    answered: BTreeMap<Key, (Req, Pred)>,
    /// `status`'s `interrupted` entries, in order.
    interrupted: Vec<Value>,
    durable: Durable,
    /// Earlier change requests, to retry or to reuse the msg_id of.
    sent: Vec<(&'static str, u64, Req)>,
    next_id: u64,
    step: Step,
}

impl Model {
    fn new() -> Self {
        let world = World::example();
        Model {
            durable: Durable {
                world: world.clone(),
                seq: 0,
                answered: BTreeMap::new(),
                interrupted: Vec::new(),
                running: Vec::new(),
            },
            world,
            seq: 0,
            lanes: Default::default(),
            answered: BTreeMap::new(),
            interrupted: Vec::new(),
            sent: Vec::new(),
            next_id: 1,
            step: Step::default(),
        }
    }

    /// Whether the operation running in `lane` may be performed: its intent is committed.
    fn performable(&self, lane: usize) -> Option<&Op> {
        self.lanes[lane]
            .running
            .as_ref()
            .filter(|op| op.seq <= self.durable.seq)
    }

    fn reply(&mut self, to: &'static str, in_reply_to: u64, pred: Pred, remembered: bool) {
        self.step.replies.push(Expect {
            to,
            in_reply_to,
            pred,
            remembered: remembered.then_some((to, in_reply_to)),
        });
    }

    fn in_flight(&self) -> Vec<Value> {
        let mut views = Vec::new();
        for (lane, state) in self.lanes.iter().enumerate() {
            let view = |w: &Waiting, state: &str| {
                json!({"type": w.req.type_name(), "msg_id": w.msg_id, "src": w.src,
                       "lane": LANES[lane], "state": state})
            };
            if let Some(op) = &state.running {
                let mut v = view(&op.waiting, "running");
                if let Some(progress) = &op.progress {
                    v["progress"] = progress.clone();
                }
                views.push(v);
            }
            views.extend(state.queue.iter().map(|w| view(w, "queued")));
        }
        views
    }

    fn status(&self, msg_id: u64) -> Value {
        let mut body = self.world.status_fields();
        body["type"] = json!("status_ok");
        body["in_reply_to"] = json!(msg_id);
        let in_flight = self.in_flight();
        if !in_flight.is_empty() {
            body["in_flight"] = Value::Array(in_flight);
        }
        if !self.interrupted.is_empty() {
            body["interrupted"] = Value::Array(self.interrupted.clone());
        }
        body
    }

    fn send(&mut self, src: &'static str, msg_id: u64, req: Req, dry_run: bool) {
        let Some(lane) = req.lane() else {
            let pred = if dry_run {
                Pred::Code(12)
            } else {
                Pred::Body(self.status(msg_id))
            };
            self.reply(src, msg_id, pred, false);
            return;
        };
        let busy = self.lanes[lane].running.is_some() || !self.lanes[lane].queue.is_empty();
        if dry_run && !busy {
            self.dry_run(src, msg_id, &req);
            return;
        }
        if !dry_run {
            self.sent.push((src, msg_id, req.clone()));
            if self.sent.len() > 12 {
                self.sent.remove(0);
            }
        }
        if let (false, Some((earlier, pred))) = (dry_run, self.answered.get(&(src, msg_id))) {
            let (same, pred) = (*earlier == req, pred.clone());
            if same {
                self.reply(src, msg_id, pred, true);
            } else {
                self.reply(src, msg_id, Pred::Code(22), false);
            }
            return;
        }
        let pending = self.lanes.iter_mut().find_map(|l| {
            l.running
                .as_mut()
                .map(|op| &mut op.waiting)
                .into_iter()
                .chain(l.queue.iter_mut())
                .find(|w| !w.dry_run && w.src == src && w.msg_id == msg_id)
        });
        if let (false, Some(waiting)) = (dry_run, pending) {
            if waiting.req == req {
                waiting.copies += 1;
            } else {
                self.reply(src, msg_id, Pred::Code(22), false);
            }
            return;
        }
        let waiting = Waiting {
            src,
            msg_id,
            req,
            copies: 1,
            dry_run,
        };
        let state = &mut self.lanes[lane];
        if state.running.is_none() && state.queue.is_empty() {
            self.decide_head(lane, waiting);
        } else if state.queue.len() >= QUEUE_LIMIT {
            self.reply(src, msg_id, Pred::Code(11), false);
        } else {
            state.queue.push_back(waiting);
        }
    }

    /// A dry run, decided against the state as it is now (its lane's predecessors done);
    /// nothing is remembered.
    fn dry_run(&mut self, src: &'static str, msg_id: u64, req: &Req) {
        {
            let pred = match decide(&self.world, req) {
                Ok(decided) => {
                    let mut after = self.world.clone();
                    let fin = Fin::Done {
                        seconds: 0,
                        rows: None,
                    };
                    finish(&mut after, req, &decided, msg_id, fin);
                    Pred::Body(json!({"type": "plan_ok", "in_reply_to": msg_id,
                                      "effects": decided.effects,
                                      "state_after": after.status_fields()}))
                }
                Err(code) => Pred::Code(code),
            };
            self.reply(src, msg_id, pred, false);
        }
    }

    /// Decides the request at the head of `lane`; returns whether it started.
    fn decide_head(&mut self, lane: usize, waiting: Waiting) -> bool {
        if waiting.dry_run {
            self.dry_run(waiting.src, waiting.msg_id, &waiting.req);
            return false;
        }
        self.seq += 1;
        match decide(&self.world, &waiting.req) {
            Ok(decided) => {
                self.step
                    .starts
                    .push((lane, self.seq, waiting.src, waiting.msg_id));
                self.lanes[lane].running = Some(Op {
                    seq: self.seq,
                    waiting,
                    decided,
                    progress: None,
                });
                true
            }
            Err(code) => {
                let key = (waiting.src, waiting.msg_id);
                self.answered.insert(key, (waiting.req, Pred::Code(code)));
                for _ in 0..waiting.copies {
                    self.reply(waiting.src, waiting.msg_id, Pred::Code(code), true);
                }
                self.step.decided_refusal = true;
                false
            }
        }
    }

    fn finish_lane(&mut self, lane: usize, fin: Fin) {
        let op = self.lanes[lane]
            .running
            .take()
            .expect("a running operation");
        let Waiting {
            src,
            msg_id,
            req,
            copies,
            ..
        } = op.waiting;
        let pred = finish(&mut self.world, &req, &op.decided, msg_id, fin);
        self.answered.insert((src, msg_id), (req, pred.clone()));
        for _ in 0..copies {
            self.reply(src, msg_id, pred.clone(), true);
        }
        while self.lanes[lane].running.is_none() {
            let Some(next) = self.lanes[lane].queue.pop_front() else {
                break;
            };
            self.decide_head(lane, next);
        }
    }

    fn commit(&mut self) {
        self.durable = Durable {
            world: self.world.clone(),
            seq: self.seq,
            answered: self.answered.clone(),
            interrupted: self.interrupted.clone(),
            running: (0..3)
                .filter_map(|lane| Some((lane, self.lanes[lane].running.clone()?)))
                .collect(),
        };
    }

    /// A crash and a restart: back to what was committed; the operations running then are
    /// interrupted (answered 13, never run again), in the order they were decided.
    fn crash(&mut self, commit_first: bool) {
        if commit_first {
            self.commit();
        }
        let durable = self.durable.clone();
        self.world = durable.world;
        self.seq = durable.seq;
        self.answered = durable.answered;
        self.interrupted = durable.interrupted;
        self.lanes = Default::default();
        let mut running = durable.running;
        running.sort_by_key(|(_, op)| op.seq);
        for (lane, op) in running {
            // The simulated executor finds what the node believes.
            let found = match lane {
                0 => json!({"schema_version": self.world.schema}),
                1 => json!({"live_environment": self.world.live.name()}),
                _ => json!({"flags": self.world.flags}),
            };
            let w = &op.waiting;
            self.answered
                .insert((w.src, w.msg_id), (w.req.clone(), Pred::Interrupted));
            self.interrupted
                .push(json!({"type": w.req.type_name(), "msg_id": w.msg_id,
                                         "src": w.src, "seq": op.seq, "found": found}));
        }
        self.commit();
    }
}

// ---------------------------------------------------------------------------------------------
// Actions and their generators.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Action {
    Send {
        src: &'static str,
        msg_id: u64,
        req: Req,
        dry_run: bool,
    },
    Complete {
        lane: usize,
        seconds: u64,
        rows: Option<u64>,
    },
    Fail {
        lane: usize,
        completed: usize,
        part_way: bool,
    },
    Progress {
        lane: usize,
        done: u64,
        total: u64,
    },
    Commit,
    Crash {
        commit_first: bool,
    },
}

fn request() -> BoxedStrategy<Req> {
    let env = || select(vec![Env::Blue, Env::Green]);
    prop_oneof![
        5 => (1u64..=4).prop_map(Req::Rollback),
        4 => (1u64..=4).prop_map(Req::Migrate),
        4 => select(vec![FLAG, FLAG, FLAG, "ghost"]).prop_map(Req::Disable),
        3 => select(vec![FLAG, FLAG, FLAG, "ghost"]).prop_map(Req::Enable),
        3 => (env(), env()).prop_map(|(from, to)| Req::Switch(from, to)),
        3 => select(vec![BACKUP, BACKUP, BACKUP, "nope"]).prop_map(Req::Restore),
        2 => Just(Req::Status),
    ]
    .boxed()
}

fn dry_run() -> impl Strategy<Value = bool> {
    prop::bool::weighted(0.08)
}

fn send(src: &'static str, msg_id: u64, req: Req, dry_run: bool) -> Action {
    Action::Send {
        src,
        msg_id,
        req,
        dry_run,
    }
}

struct Reference;

impl ReferenceStateMachine for Reference {
    type State = Model;
    type Transition = Action;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::new()).boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Action> {
        let fresh = state.next_id;
        let mut options: Vec<(u32, BoxedStrategy<Action>)> = vec![
            (
                12,
                (select(SENDERS.to_vec()), request(), dry_run())
                    .prop_map(move |(src, req, dry)| send(src, fresh, req, dry))
                    .boxed(),
            ),
            // A small msg_id, which other senders and earlier requests may have used.
            (
                2,
                (select(SENDERS.to_vec()), 1u64..4, request(), dry_run())
                    .prop_map(|(src, id, req, dry)| send(src, id, req, dry))
                    .boxed(),
            ),
            (4, Just(Action::Commit).boxed()),
            (
                1,
                any::<bool>()
                    .prop_map(|commit_first| Action::Crash { commit_first })
                    .boxed(),
            ),
        ];
        if !state.sent.is_empty() {
            // A retry: the same request again.
            options.push((
                5,
                select(state.sent.clone())
                    .prop_map(|(src, id, req)| send(src, id, req, false))
                    .boxed(),
            ));
            // The same msg_id for another request.
            options.push((
                2,
                (select(state.sent.clone()), request())
                    .prop_map(|((src, id, _), req)| send(src, id, req, false))
                    .boxed(),
            ));
        }
        let performable: Vec<(usize, usize)> = (0..3)
            .filter_map(|lane| Some((lane, state.performable(lane)?.decided.effects.len())))
            .collect();
        if !performable.is_empty() {
            let lanes: Vec<usize> = performable.iter().map(|(lane, _)| *lane).collect();
            options.push((
                8,
                (
                    select(lanes.clone()),
                    0u64..100,
                    select(vec![None, Some(7), Some(BACKUP_ROWS)]),
                )
                    .prop_map(|(lane, seconds, rows)| Action::Complete {
                        lane,
                        seconds,
                        rows,
                    })
                    .boxed(),
            ));
            options.push((
                4,
                (
                    select(performable),
                    any::<prop::sample::Index>(),
                    any::<bool>(),
                )
                    .prop_map(|((lane, effects), at, part_way)| Action::Fail {
                        lane,
                        completed: at.index(effects),
                        part_way,
                    })
                    .boxed(),
            ));
            options.push((
                2,
                (select(lanes), 0u64..10)
                    .prop_map(|(lane, done)| Action::Progress {
                        lane,
                        done,
                        total: 10,
                    })
                    .boxed(),
            ));
        }
        Union::new_weighted(options).boxed()
    }

    fn preconditions(state: &Model, action: &Action) -> bool {
        match action {
            Action::Complete { lane, .. } | Action::Progress { lane, .. } => {
                state.performable(*lane).is_some()
            }
            Action::Fail {
                lane, completed, ..
            } => state
                .performable(*lane)
                .is_some_and(|op| *completed < op.decided.effects.len()),
            Action::Send { .. } | Action::Commit | Action::Crash { .. } => true,
        }
    }

    fn apply(mut state: Model, action: &Action) -> Model {
        state.step = Step::default();
        state.next_id += 1;
        match action {
            Action::Send {
                src,
                msg_id,
                req,
                dry_run,
            } => state.send(src, *msg_id, req.clone(), *dry_run),
            Action::Complete {
                lane,
                seconds,
                rows,
            } => state.finish_lane(
                *lane,
                Fin::Done {
                    seconds: *seconds,
                    rows: *rows,
                },
            ),
            Action::Fail {
                lane,
                completed,
                part_way,
            } => state.finish_lane(
                *lane,
                Fin::Failed {
                    completed: *completed,
                    part_way: *part_way,
                },
            ),
            Action::Progress { lane, done, total } => {
                if let Some(op) = &mut state.lanes[*lane].running {
                    op.progress = Some(json!({"done": done, "total": total, "unit": "rows"}));
                }
            }
            Action::Commit => state.commit(),
            Action::Crash { commit_first } => state.crash(*commit_first),
        }
        state
    }
}

// ---------------------------------------------------------------------------------------------
// The real node.
// ---------------------------------------------------------------------------------------------

fn estate() -> Estate {
    Estate::example()
}

fn manual_session(machine: Machine, store: MemoryStore) -> Session<MemoryStore> {
    let estate = estate();
    let executors = Simulated::new(estate.costs, &estate.state, 0.0).executors();
    Session::new(machine, executors, store).performing(Performing::Manual)
}

/// A crash and a restart: what was recorded since the last commit is lost; a new session is
/// rebuilt from the committed entries, reconciles the operations the crash interrupted, commits.
fn crash_and_restart(session: &mut Session<MemoryStore>) {
    let mut store = std::mem::replace(session.store_mut(), MemoryStore::durable());
    store.crash();
    let mut machine = Machine::new(estate().state);
    let open = replay::rebuild(&mut machine, store.entries())
        .unwrap_or_else(|e| panic!("replay_yields_same_state: the journal does not replay: {e}"));
    let mut restarted = manual_session(machine, store);
    restarted.reconcile(open);
    restarted.commit().expect("the memory store commits");
    *session = restarted;
}

fn line(src: &str, msg_id: u64, req: &Req, dry_run: bool) -> String {
    let mut body = req.body();
    body["msg_id"] = json!(msg_id);
    if dry_run {
        body["dry_run"] = json!(true);
    }
    json!({"src": src, "dest": NODE, "body": body}).to_string()
}

fn lane_of(index: usize) -> Lane {
    Lane::ALL[index]
}

fn failure(completed: usize, part_way: bool) -> Completion {
    Completion::Failed(Failure {
        completed,
        kind: if part_way {
            FailureKind::PartWay
        } else {
            FailureKind::NothingChanged
        },
        error: ExecError::failed(
            "running the step",
            Some("line 4".into()),
            "connection reset",
        ),
        now: None,
    })
}

fn done(seconds: u64, rows: Option<u64>) -> Completion {
    Completion::Done(Done {
        duration: Seconds::Modelled(seconds),
        rows,
        ..Done::default()
    })
}

/// What the node looked like before or after a step.
#[derive(Clone, Debug, PartialEq)]
struct Snap {
    state: State,
    seq: u64,
    in_flight: Vec<InFlightView>,
    /// The remembered answer to the request the step sent, if any.
    answer: Option<String>,
}

fn snap(session: &Session<MemoryStore>, key: Option<(&str, u64)>) -> Snap {
    let machine = session.machine();
    Snap {
        state: machine.state().clone(),
        seq: machine.seq(),
        in_flight: machine.in_flight(),
        answer: key.and_then(|(src, id)| Some(machine.answered().get(src, id)?.body.clone())),
    }
}

/// The last step, as observed.
struct Observed {
    action: Action,
    before: Snap,
    after: Snap,
    /// The reply bodies the step wrote, with their addressees.
    replies: Vec<(String, Value)>,
    /// A fresh flags request sent while the flags lane was free.
    fresh_flags: Option<(String, u64)>,
}

struct Node {
    session: Session<MemoryStore>,
    /// The first body each remembered answer got, and whether it was committed (sent).
    seen: HashMap<(String, u64), (String, bool)>,
    /// How many times the effects of each (src, msg_id) were performed (intent committed).
    performed: HashMap<(String, u64), u32>,
    /// The sequence number whose start was counted, per lane.
    counted: [Option<u64>; 3],
    last: Option<Observed>,
}

impl Node {
    fn commit(&mut self) {
        self.session.commit().expect("the memory store commits");
        for (_, acknowledged) in self.seen.values_mut() {
            *acknowledged = true;
        }
        // The runtime starts an operation's effects once its intent is committed.
        let in_flight = self.session.machine().in_flight();
        for (index, lane) in Lane::ALL.into_iter().enumerate() {
            let Some((seq, _)) = self.session.machine().running(lane) else {
                self.counted[index] = None;
                continue;
            };
            if self.counted[index] == Some(seq) {
                continue;
            }
            self.counted[index] = Some(seq);
            let view = in_flight
                .iter()
                .find(|v| v.lane == LANES[index] && v.state == "running")
                .expect("at_most_one_operation_per_lane: status lists the running operation");
            *self
                .performed
                .entry((view.src.clone(), view.msg_id))
                .or_default() += 1;
        }
    }
}

/// A reply line with its body as written.
#[derive(serde::Deserialize)]
struct Envelope {
    body: Box<serde_json::value::RawValue>,
}

fn check_pred(context: &str, body: &Value, expect: &Expect) {
    assert_eq!(body["in_reply_to"], json!(expect.in_reply_to), "{context}");
    match &expect.pred {
        Pred::Body(want) => assert_eq!(body, want, "{context}"),
        Pred::Code(code) => {
            assert_eq!(body["type"], "error", "{context}");
            assert_eq!(body["code"], json!(code), "{context}");
            assert!(
                body["text"].as_str().is_some_and(|t| !t.is_empty()),
                "{context}: an error needs a text"
            );
        }
        Pred::Interrupted => {
            assert_eq!(body["type"], "error", "{context}");
            assert_eq!(body["code"], 13, "{context}");
            assert!(
                body["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("was interrupted by a restart")),
                "{context}: the text must say a restart interrupted it"
            );
        }
    }
}

struct LanesTest;

impl StateMachineTest for LanesTest {
    type SystemUnderTest = Node;
    type Reference = Reference;

    fn init_test(_model: &Model) -> Node {
        let mut session = manual_session(Machine::new(estate().state), MemoryStore::durable());
        session.commit().expect("the memory store commits");
        Node {
            session,
            seen: HashMap::new(),
            performed: HashMap::new(),
            counted: [None; 3],
            last: None,
        }
    }

    fn apply(mut node: Node, model: &Model, action: Action) -> Node {
        let key = match &action {
            Action::Send { src, msg_id, .. } => Some((*src, *msg_id)),
            _ => None,
        };
        let before = snap(&node.session, key);
        let fresh_flags = match &action {
            Action::Send {
                src,
                msg_id,
                req,
                dry_run: false,
            } if req.lane() == Some(2)
                && before.answer.is_none()
                && !before.in_flight.iter().any(|v| v.lane == "flags")
                && !before
                    .in_flight
                    .iter()
                    .any(|v| v.src == *src && v.msg_id == *msg_id) =>
            {
                Some((src.to_string(), *msg_id))
            }
            _ => None,
        };
        let mut out = Vec::new();
        let running_seq = |node: &Node, lane: usize| {
            node.session
                .machine()
                .running(lane_of(lane))
                .map(|(seq, _)| seq)
                .expect("the model says an operation runs in this lane")
        };
        match &action {
            Action::Send {
                src,
                msg_id,
                req,
                dry_run,
            } => {
                let text = line(src, *msg_id, req, *dry_run);
                let diagnostic = node.session.handle_line(text.as_bytes(), &mut out);
                assert_eq!(diagnostic, None, "replies_match_model: {text}");
            }
            Action::Complete {
                lane,
                seconds,
                rows,
            } => {
                let seq = running_seq(&node, *lane);
                node.session
                    .complete(lane_of(*lane), seq, done(*seconds, *rows), &mut out);
            }
            Action::Fail {
                lane,
                completed,
                part_way,
            } => {
                let seq = running_seq(&node, *lane);
                node.session.complete(
                    lane_of(*lane),
                    seq,
                    failure(*completed, *part_way),
                    &mut out,
                );
            }
            Action::Progress { lane, done, total } => {
                let seq = running_seq(&node, *lane);
                let progress = Progress {
                    done: *done,
                    total: *total,
                    unit: "rows".into(),
                };
                node.session.progress(lane_of(*lane), seq, progress);
            }
            Action::Commit => node.commit(),
            Action::Crash { commit_first } => {
                if *commit_first {
                    node.commit();
                }
                crash_and_restart(&mut node.session);
                // What was not committed was never sent: forget it.
                node.seen.retain(|_, (_, acknowledged)| *acknowledged);
                node.counted = [None; 3];
            }
        }

        // The operations that started, against the model's.
        let in_flight = node.session.machine().in_flight();
        let starts: Vec<(usize, u64, String, u64)> = node
            .session
            .take_starts()
            .into_iter()
            .map(|(lane, seq, _)| {
                let view = in_flight
                    .iter()
                    .find(|v| v.lane == LANES[lane.index()] && v.state == "running")
                    .expect("starts_match_model: a started operation is listed as running");
                (lane.index(), seq, view.src.clone(), view.msg_id)
            })
            .collect();
        let want: Vec<(usize, u64, String, u64)> = model
            .step
            .starts
            .iter()
            .map(|(lane, seq, src, id)| (*lane, *seq, src.to_string(), *id))
            .collect();
        assert_eq!(starts, want, "starts_match_model: after {action:?}");

        // The replies, against the model's.
        let text = String::from_utf8(out).expect("replies are UTF-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            model.step.replies.len(),
            "replies_match_model: after {action:?} got {text} expected {:?}",
            model.step.replies
        );
        let mut replies = Vec::new();
        for (reply, expect) in lines.iter().zip(&model.step.replies) {
            let context = format!(
                "replies_match_model: after {action:?}\n  got      {reply}\n  expected {expect:?}"
            );
            let raw: Envelope = serde_json::from_str(reply).expect("a reply is JSON");
            let reply: Value = serde_json::from_str(reply).expect("a reply is JSON");
            assert_eq!(reply["src"], NODE, "{context}");
            assert_eq!(reply["dest"], expect.to, "{context}");
            let body = &reply["body"];
            check_pred(&context, body, expect);
            if let Some((src, id)) = expect.remembered {
                let body_text = raw.body.get().to_owned();
                match node.seen.get(&(src.to_owned(), id)) {
                    Some((first, _)) => assert_eq!(
                        &body_text, first,
                        "acknowledged_change_survives_crash: {src}/{id} was answered differently before ({context})"
                    ),
                    None => {
                        node.seen
                            .insert((src.to_owned(), id), (body_text, false));
                    }
                }
            }
            replies.push((expect.to.to_owned(), body.clone()));
        }

        let after = snap(&node.session, key);
        node.last = Some(Observed {
            action,
            before,
            after,
            replies,
            fresh_flags,
        });
        node
    }

    fn check_invariants(node: &Node, model: &Model) {
        let machine = node.session.machine();

        // The state, the sequence and the answers, against the model's.
        let state = machine.state();
        let world = World {
            schema: state.schema_version,
            flags: state.flags.clone(),
            live: match state.traffic.live {
                rollback_node::Environment::Blue => Env::Blue,
                rollback_node::Environment::Green => Env::Green,
            },
            last_restore: state
                .last_restore
                .as_ref()
                .map(|r| (r.backup.clone(), r.restored_rows, r.schema_version)),
        };
        assert_eq!(world, model.world, "model_equals_real_state: the estate");
        assert_eq!(machine.seq(), model.seq, "model_equals_real_state: seq");
        for ((src, id), (_, pred)) in &model.answered {
            let answer = machine.answered().get(src, *id).unwrap_or_else(|| {
                panic!("acknowledged_change_survives_crash: {src}/{id} is not remembered")
            });
            let body: Value = serde_json::from_str(&answer.body).unwrap();
            let expect = Expect {
                to: src,
                in_reply_to: *id,
                pred: pred.clone(),
                remembered: None,
            };
            check_pred(
                &format!("acknowledged_change_survives_crash: the answer to {src}/{id}"),
                &body,
                &expect,
            );
        }
        let interrupted: Vec<Value> = machine
            .interrupted()
            .iter()
            .map(|i| serde_json::to_value(i).unwrap())
            .collect();
        assert_eq!(
            interrupted, model.interrupted,
            "model_equals_real_state: interrupted"
        );

        // at_most_one_operation_per_lane: one running at most, the queue in arrival order.
        let in_flight: Vec<Value> = machine
            .in_flight()
            .iter()
            .map(|v| serde_json::to_value(v).unwrap())
            .collect();
        for (index, lane) in Lane::ALL.into_iter().enumerate() {
            let listed: Vec<&Value> = in_flight
                .iter()
                .filter(|v| v["lane"] == LANES[index])
                .collect();
            let running = listed.iter().filter(|v| v["state"] == "running").count();
            assert!(
                running <= 1,
                "at_most_one_operation_per_lane: {running} running in {lane}"
            );
            assert_eq!(
                machine.running(lane).map(|(seq, _)| seq),
                model.lanes[index].running.as_ref().map(|op| op.seq),
                "at_most_one_operation_per_lane: the operation running in {lane}"
            );
            assert!(
                running == 1 || listed.is_empty(),
                "at_most_one_operation_per_lane: {lane} has a queue but nothing runs"
            );
            assert_eq!(machine.queued(lane), model.lanes[index].queue.len());
        }
        assert_eq!(
            in_flight,
            model.in_flight(),
            "at_most_one_operation_per_lane: the lanes, running then queued in arrival order"
        );

        // nothing_applied_twice: the effects of one (src, msg_id) are performed once at most.
        for ((src, id), count) in &node.performed {
            assert!(
                *count <= 1,
                "nothing_applied_twice: {src}/{id} was performed {count} times"
            );
        }

        // acknowledged_change_survives_crash: every answer sent is what a retry gets.
        for ((src, id), (body, acknowledged)) in &node.seen {
            let remembered = machine.answered().get(src, *id).map(|a| &a.body);
            if *acknowledged {
                assert_eq!(
                    remembered,
                    Some(body),
                    "acknowledged_change_survives_crash: {src}/{id}"
                );
            }
        }

        // replay_yields_same_state: a fresh machine rebuilt from the committed journal.
        let mut store = node.session.store().clone();
        store.commit(machine).expect("the memory store commits");
        let mut rebuilt = Machine::new(estate().state);
        let open = replay::rebuild(&mut rebuilt, store.entries())
            .unwrap_or_else(|e| panic!("replay_yields_same_state: {e}"));
        assert_eq!(
            rebuilt.state(),
            machine.state(),
            "replay_yields_same_state: state"
        );
        assert_eq!(
            rebuilt.seq(),
            machine.seq(),
            "replay_yields_same_state: seq"
        );
        let mut open_seqs: Vec<u64> = open.iter().map(|o| o.seq).collect();
        let mut running = machine.running_seqs();
        open_seqs.sort_unstable();
        running.sort_unstable();
        assert_eq!(
            open_seqs, running,
            "replay_yields_same_state: the open intents are the running operations"
        );
        assert_eq!(
            rebuilt.interrupted(),
            machine.interrupted(),
            "replay_yields_same_state: interrupted"
        );
        for (src, id, answer) in machine.answered().entries() {
            assert_eq!(
                rebuilt.answered().get(src, id).map(|a| &a.body),
                Some(&answer.body),
                "replay_yields_same_state: the answer to {src}/{id}"
            );
        }
        assert_eq!(
            rebuilt.answered().len(),
            machine.answered().len(),
            "replay_yields_same_state: as many answers"
        );

        let Some(last) = &node.last else { return };

        // flags_never_wait: a flags request whose lane is free is decided in the same step.
        if let Some((src, id)) = &last.fresh_flags {
            let answered = last
                .replies
                .iter()
                .any(|(to, body)| to == src && body["in_reply_to"] == json!(id));
            let running = machine.in_flight().iter().any(|v| {
                v.lane == "flags" && v.state == "running" && &v.src == src && v.msg_id == *id
            });
            assert!(
                answered || running,
                "flags_never_wait: {src}/{id} neither answered nor running after {:?}",
                last.action
            );
        }

        // refusal_changes_nothing: an error reply to a request leaves everything as it was,
        // except that a refusal decided at once takes a sequence number and is remembered.
        if let Action::Send { dry_run, .. } = &last.action {
            let refused = last.replies.len() == 1 && last.replies[0].1["type"] == "error";
            if refused {
                let (before, after) = (&last.before, &last.after);
                assert_eq!(after.state, before.state, "refusal_changes_nothing: state");
                assert_eq!(
                    after.in_flight, before.in_flight,
                    "refusal_changes_nothing: lanes"
                );
                if model.step.decided_refusal {
                    assert_eq!(
                        after.seq,
                        before.seq + 1,
                        "refusal_changes_nothing: a decided refusal takes one seq"
                    );
                    assert!(
                        !dry_run && after.answer.is_some(),
                        "refusal_changes_nothing: a decided refusal is remembered"
                    );
                } else {
                    assert_eq!(after.seq, before.seq, "refusal_changes_nothing: seq");
                    assert_eq!(
                        after.answer, before.answer,
                        "refusal_changes_nothing: retry memory"
                    );
                }
            }
        }
        if let Action::Fail {
            completed: 0,
            part_way: false,
            ..
        } = &last.action
        {
            assert_eq!(
                last.after.state, last.before.state,
                "refusal_changes_nothing: a failure before any change (14) keeps the state"
            );
        }
    }
}

/// The case count, and failures saved where `cargo test` runs (the package root).
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(CASES),
        max_shrink_iters: 4096,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/test_model_lanes.txt",
        ))),
        ..ProptestConfig::default()
    }
}

prop_state_machine! {
    #![proptest_config(config())]

    #[test]
    fn lanes_follow_the_model(sequential 1..MAX_STEPS => LanesTest);
}

// ---------------------------------------------------------------------------------------------
// One hand-written sequence per property.
// ---------------------------------------------------------------------------------------------

/// A node performing nothing by itself over a durable memory store, driven by hand.
struct Driver {
    session: Session<MemoryStore>,
}

impl Driver {
    fn manual() -> Self {
        let mut session = manual_session(Machine::new(estate().state), MemoryStore::durable());
        session.commit().unwrap();
        Driver { session }
    }

    /// The reply bodies a line got, as written.
    fn send(&mut self, src: &str, msg_id: u64, req: &Req) -> Vec<String> {
        let mut out = Vec::new();
        let text = line(src, msg_id, req, false);
        assert_eq!(self.session.handle_line(text.as_bytes(), &mut out), None);
        bodies(out)
    }

    fn running(&self, lane: Lane) -> u64 {
        self.session.machine().running(lane).expect("running").0
    }

    fn complete(&mut self, lane: Lane, completion: Completion) -> Vec<String> {
        let mut out = Vec::new();
        let seq = self.running(lane);
        self.session.complete(lane, seq, completion, &mut out);
        bodies(out)
    }

    /// The sequence numbers started since last asked.
    fn starts(&mut self) -> Vec<(Lane, u64)> {
        let starts = self.session.take_starts();
        starts
            .into_iter()
            .map(|(lane, seq, _)| (lane, seq))
            .collect()
    }

    fn commit(&mut self) {
        self.session.commit().unwrap();
    }

    fn crash(&mut self) {
        crash_and_restart(&mut self.session);
    }

    fn status(&mut self) -> Value {
        let replies = self.send("observer", 9_999, &Req::Status);
        parse(&replies[0])
    }
}

fn bodies(out: Vec<u8>) -> Vec<String> {
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let envelope: Envelope = serde_json::from_str(l).unwrap();
            envelope.body.get().to_owned()
        })
        .collect()
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap()
}

fn code(body: &str) -> Option<u64> {
    parse(body)["code"].as_u64()
}

#[test]
fn flags_never_wait_even_behind_a_paced_restore() {
    // Schema operations take wall time (pace 1): they are left for a lane worker. Flags are
    // instant and performed inline.
    let estate = estate();
    let executors = Simulated::new(estate.costs.clone(), &estate.state, 1.0).executors();
    let mut session = Session::new(
        Machine::new(estate.state),
        executors,
        MemoryStore::durable(),
    );
    let mut out = Vec::new();
    let restore = line("alice", 1, &Req::Restore(BACKUP), false);
    session.handle_line(restore.as_bytes(), &mut out);
    let rollback = line("alice", 2, &Req::Rollback(1), false);
    session.handle_line(rollback.as_bytes(), &mut out);
    assert!(out.is_empty(), "the restore runs, the rollback waits");
    let (seq, _) = session.machine().running(Lane::Schema).unwrap();
    let progress = Progress {
        done: 40_000,
        total: BACKUP_ROWS,
        unit: "rows".into(),
    };
    session.progress(Lane::Schema, seq, progress);
    let disable = line("bob", 1, &Req::Disable(FLAG), false);
    session.handle_line(disable.as_bytes(), &mut out);
    let replies = bodies(std::mem::take(&mut out));
    assert_eq!(
        replies,
        [
            r#"{"type":"feature_disabled","in_reply_to":1,"feature":"new_checkout","rolled_back_instant":true}"#
        ],
        "flags_never_wait: the kill switch is answered in the same step"
    );
    let status = line("bob", 2, &Req::Status, false);
    session.handle_line(status.as_bytes(), &mut out);
    let status = parse(&bodies(out)[0]);
    assert_eq!(status["flags"][FLAG], false, "flags_never_wait");
    assert_eq!(
        status["in_flight"],
        json!([
            {"type": "restore", "msg_id": 1, "src": "alice", "lane": "schema", "state": "running",
             "progress": {"done": 40_000, "total": BACKUP_ROWS, "unit": "rows"}},
            {"type": "rollback", "msg_id": 2, "src": "alice", "lane": "schema", "state": "queued"},
        ]),
        "flags_never_wait: the schema lane is still busy"
    );
}

#[test]
fn at_most_one_operation_per_lane_and_queues_serve_in_arrival_order() {
    let mut node = Driver::manual();
    assert!(node.send("alice", 1, &Req::Restore(BACKUP)).is_empty());
    assert!(node.send("bob", 1, &Req::Rollback(2)).is_empty());
    assert!(node.send("carol", 1, &Req::Migrate(3)).is_empty());
    assert!(node
        .send("alice", 2, &Req::Switch(Env::Green, Env::Blue))
        .is_empty());
    assert_eq!(
        node.starts(),
        [(Lane::Schema, 1), (Lane::Traffic, 2)],
        "at_most_one_operation_per_lane: one start per lane"
    );
    let queued: Vec<(String, u64, String)> = node
        .session
        .machine()
        .in_flight()
        .into_iter()
        .map(|v| (v.src, v.msg_id, v.state))
        .collect();
    let expected = [
        ("alice", 1, "running"),
        ("bob", 1, "queued"),
        ("carol", 1, "queued"),
        ("alice", 2, "running"),
    ]
    .map(|(s, i, st)| (s.to_owned(), i, st.to_owned()));
    assert_eq!(queued, expected, "at_most_one_operation_per_lane: FIFO");
    // The restore sets the schema to 2; the rollback is decided against that: 2 down to 1.
    let replies = node.complete(Lane::Schema, done(60, None));
    assert_eq!(parse(&replies[0])["type"], "restore_complete");
    assert_eq!(node.starts(), [(Lane::Schema, 3)]);
    assert_eq!(node.session.machine().queued(Lane::Schema), 1);
    let replies = node.complete(Lane::Schema, done(5, None));
    assert_eq!(
        replies,
        [
            r#"{"type":"rollback_complete","in_reply_to":1,"rolled_back_from":2,"rolled_back_to":1,"duration_seconds":5}"#
        ],
        "at_most_one_operation_per_lane: the rollback saw the state the restore left"
    );
    // Then the migrate, from 1 to 3.
    assert_eq!(node.starts(), [(Lane::Schema, 4)]);
    let replies = node.complete(Lane::Schema, done(10, None));
    assert_eq!(parse(&replies[0])["migrated_from"], 1);
    assert!(node.starts().is_empty());
    assert!(node.session.machine().running(Lane::Schema).is_none());
    assert!(node.session.machine().running(Lane::Traffic).is_some());
}

#[test]
fn refusal_changes_nothing_but_a_decided_refusal_takes_a_seq() {
    let mut node = Driver::manual();
    assert!(node.send("alice", 1, &Req::Restore(BACKUP)).is_empty());
    node.starts();
    let before = snap(&node.session, None);

    // Refused when decided (the flags lane is free): remembered, with a sequence number.
    let refused = node.send("bob", 1, &Req::Disable("ghost"));
    assert_eq!(code(&refused[0]), Some(20));
    let after = snap(&node.session, None);
    assert_eq!(after.state, before.state, "refusal_changes_nothing: state");
    assert_eq!(
        after.in_flight, before.in_flight,
        "refusal_changes_nothing: lanes"
    );
    assert_eq!(
        after.seq,
        before.seq + 1,
        "refusal_changes_nothing: one seq"
    );
    assert_eq!(node.send("bob", 1, &Req::Disable("ghost")), refused);

    // The same msg_id for another request: refused, not decided, not remembered.
    let reused = node.send("bob", 1, &Req::Enable(FLAG));
    assert_eq!(code(&reused[0]), Some(22));
    assert_eq!(snap(&node.session, None), after, "refusal_changes_nothing");
    assert_eq!(node.send("bob", 1, &Req::Disable("ghost")), refused);

    // A full queue: 11, nothing remembered, nothing queued.
    assert_eq!(QUEUE_LIMIT, rollback_node::core::machine::QUEUE_LIMIT);
    for id in 0..QUEUE_LIMIT as u64 {
        assert!(node.send("carol", id, &Req::Rollback(1)).is_empty());
    }
    let full = snap(&node.session, None);
    let over = QUEUE_LIMIT as u64;
    let refused = node.send("carol", over, &Req::Rollback(1));
    assert_eq!(code(&refused[0]), Some(11));
    assert_eq!(
        snap(&node.session, None),
        full,
        "refusal_changes_nothing: full queue"
    );
    assert!(node
        .session
        .machine()
        .answered()
        .get("carol", over)
        .is_none());

    // A failure before any change (14): the state is as it was.
    let replies = node.complete(Lane::Schema, failure(0, false));
    assert_eq!(code(&replies[0]), Some(14));
    assert_eq!(
        node.session.machine().state(),
        &full.state,
        "refusal_changes_nothing: 14 keeps the state"
    );
}

#[test]
fn acknowledged_change_survives_crash_and_interrupted_is_answered_not_run() {
    let mut node = Driver::manual();
    // The kill switch: started, committed, completed, committed (its reply is sent).
    assert!(node.send("alice", 1, &Req::Disable(FLAG)).is_empty());
    node.commit();
    let disabled = node.complete(Lane::Flags, done(0, None));
    node.commit();
    // A rollback whose reply is sent, then a restore whose outcome is recorded but not
    // committed when the node crashes: its reply never went out.
    assert!(node.send("alice", 2, &Req::Rollback(3)).is_empty());
    node.commit();
    let rolled_back = node.complete(Lane::Schema, failure(0, true));
    assert_eq!(code(&rolled_back[0]), Some(13));
    node.commit();
    assert!(node.send("alice", 3, &Req::Restore(BACKUP)).is_empty());
    node.commit();
    node.starts();
    let unsent = node.complete(Lane::Schema, done(60, None));
    assert_eq!(parse(&unsent[0])["type"], "restore_complete");
    for round in 0..3 {
        node.crash();
        assert_eq!(
            node.send("alice", 1, &Req::Disable(FLAG)),
            disabled,
            "acknowledged_change_survives_crash: round {round}"
        );
        assert_eq!(
            node.send("alice", 2, &Req::Rollback(3)),
            rolled_back,
            "acknowledged_change_survives_crash: round {round}"
        );
        let interrupted = node.send("alice", 3, &Req::Restore(BACKUP));
        assert_eq!(code(&interrupted[0]), Some(13));
        assert!(
            interrupted[0].contains("restore (journal entry 3) was interrupted by a restart"),
            "acknowledged_change_survives_crash: {interrupted:?}"
        );
        assert!(
            node.starts().is_empty(),
            "an interrupted restore is not run"
        );
        let status = node.status();
        assert_eq!(status["flags"][FLAG], false);
        assert_eq!(
            status["restore"],
            Value::Null,
            "the restore was not applied"
        );
        assert_eq!(
            status["interrupted"],
            json!([{"type": "restore", "msg_id": 3, "src": "alice", "seq": 3,
                    "found": {"schema_version": 3}}])
        );
    }
}

#[test]
fn nothing_applied_twice_a_retry_joins_and_is_answered_once_done() {
    let mut node = Driver::manual();
    assert!(node.send("alice", 1, &Req::Restore(BACKUP)).is_empty());
    assert!(node.send("bob", 7, &Req::Rollback(2)).is_empty());
    // Retries of the running and of the queued request join them.
    assert!(node.send("alice", 1, &Req::Restore(BACKUP)).is_empty());
    assert!(node.send("bob", 7, &Req::Rollback(2)).is_empty());
    assert_eq!(node.starts(), [(Lane::Schema, 1)], "nothing_applied_twice");
    assert_eq!(node.session.machine().queued(Lane::Schema), 1);
    let restored = node.complete(Lane::Schema, done(60, Some(99_999)));
    assert_eq!(restored.len(), 2, "both copies are answered");
    assert_eq!(restored[0], restored[1]);
    assert_eq!(
        restored[0],
        r#"{"type":"restore_complete","in_reply_to":1,"restored_rows":99999,"duration_seconds":60}"#
    );
    assert_eq!(node.starts(), [(Lane::Schema, 2)], "nothing_applied_twice");
    let rolled_back = node.complete(Lane::Schema, done(5, None));
    assert_eq!(rolled_back.len(), 2);
    assert_eq!(rolled_back[0], rolled_back[1]);
    // Answered: a retry gets the same body and starts nothing.
    assert_eq!(node.send("alice", 1, &Req::Restore(BACKUP)), &restored[..1]);
    assert!(node.starts().is_empty(), "nothing_applied_twice");
    // Interrupted by a crash: a retry is told, not run.
    assert!(node.send("carol", 1, &Req::Migrate(3)).is_empty());
    assert_eq!(node.starts(), [(Lane::Schema, 3)]);
    node.commit();
    node.crash();
    assert_eq!(code(&node.send("carol", 1, &Req::Migrate(3))[0]), Some(13));
    assert!(node.starts().is_empty(), "nothing_applied_twice");
    assert_eq!(node.session.machine().state().schema_version, 1);
}

#[test]
fn replay_yields_same_state_after_completions_in_any_order() {
    let mut node = Driver::manual();
    node.send("alice", 1, &Req::Rollback(1));
    node.send("bob", 1, &Req::Migrate(3)); // queued behind the rollback
    node.send("bob", 2, &Req::Migrate(1)); // refused when its turn comes
    node.send("carol", 1, &Req::Switch(Env::Green, Env::Blue));
    node.send("carol", 2, &Req::Disable(FLAG));
    node.send("carol", 3, &Req::Enable(FLAG)); // queued behind the disable
    node.commit();
    // Completions in another order than the requests came.
    node.complete(Lane::Flags, done(0, None));
    node.complete(Lane::Traffic, failure(1, false));
    node.complete(Lane::Schema, failure(2, false)); // two down()s of three: schema at 1
    node.complete(Lane::Schema, done(9, None)); // migrate 1 to 3, then migrate 1 is refused
    node.commit();
    let machine = node.session.machine();
    assert_eq!(machine.state().schema_version, 3);
    assert!(
        !machine.state().flags[FLAG],
        "disabled; the enable still runs"
    );
    assert!(machine.running(Lane::Flags).is_some());
    let mut rebuilt = Machine::new(estate().state);
    let open = replay::rebuild(&mut rebuilt, node.session.store().entries()).unwrap();
    assert_eq!(rebuilt.state(), machine.state(), "replay_yields_same_state");
    assert_eq!(
        rebuilt.seq(),
        machine.seq(),
        "replay_yields_same_state: seq"
    );
    assert_eq!(
        open.iter().map(|o| o.seq).collect::<Vec<_>>(),
        machine.running_seqs(),
        "replay_yields_same_state: the enable is open"
    );
    for (src, id, answer) in machine.answered().entries() {
        assert_eq!(
            rebuilt.answered().get(src, id).map(|a| &a.body),
            Some(&answer.body),
            "replay_yields_same_state: {src}/{id}"
        );
    }
    assert_eq!(rebuilt.answered().len(), 5);
}

// ---------------------------------------------------------------------------------------------
// Found while writing the model.
// ---------------------------------------------------------------------------------------------

/// `MemoryStore::crash` is documented to lose "what was recorded since the last commit", and
/// `MemoryStore::durable` to keep committed entries "as a journal would"; the SQLite journal
/// answers `history` from its committed rows. But `crash` also clears the audit window that
/// `history` reads, so a change committed (and acknowledged) before a crash is missing from
/// `history` after the restart, although its retry is still answered from the journal.
#[test]
fn history_keeps_committed_changes_after_a_crash() {
    let mut node = Driver::manual();
    assert!(node.send("alice", 1, &Req::Disable(FLAG)).is_empty());
    node.commit();
    let disabled = node.complete(Lane::Flags, done(0, None));
    node.commit();
    let ask = |node: &mut Driver, msg_id: u64| {
        let mut out = Vec::new();
        let line = json!({"src": "observer", "dest": NODE,
                          "body": {"type": "history", "msg_id": msg_id}})
        .to_string();
        node.session.handle_line(line.as_bytes(), &mut out);
        parse(&bodies(out)[0])["entries"].clone()
    };
    let before = ask(&mut node, 1);
    assert_eq!(before.as_array().map(Vec::len), Some(1), "{before}");
    node.crash();
    assert_eq!(node.send("alice", 1, &Req::Disable(FLAG)), disabled);
    let after = ask(&mut node, 2);
    assert_eq!(
        after, before,
        "acknowledged_change_survives_crash: history after a restart lists the committed change"
    );
}
