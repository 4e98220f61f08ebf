//! Model-based test of the cluster protocol: three nodes sharing one store, the lease and its
//! epoch, the fenced commit, the inbox, the leaderless kill switch and the fence in the target.
//!
//! The store is simulated here, in memory, exactly as the design of record describes the
//! PostgreSQL store mode: one lease row (holder, an epoch that only grows, an expiry on the STORE
//! clock), acquired by one statement and renewed by another; the committed journal, one row per
//! sequence number, upserted; every leader commit one transaction that first checks the lease
//! (epoch, holder, expiry against the store clock) and aborts otherwise; the inbox (every schema
//! and traffic request, with its reply written by the leader in a fenced commit); and the flags
//! log (one row per kill-switch request, written by whichever node received it, no lease). The
//! target is simulated too: its schema version, each node's flag file, the live environment, and
//! the fence row that every schema write advances first (`WHERE epoch <= E`, aborting when no row
//! matched).
//!
//! Each node has a local clock whose rate may drift from the store's (within what the lease
//! margin covers) and keeps its own deadline: the local instant its last renewal was sent, plus
//! the lease, minus the margin. A node's leader term drives the REAL `Session` and `Machine`
//! (`Performing::Manual`, over a `MemoryStore::durable()` that stages the term's records): at
//! takeover it advances the target's fence, rebuilds the machine from the store's committed
//! entries (`replay::rebuild`), reconciles every open intent with executors that observe the
//! simulated target (`Session::reconcile`: recorded as interrupted, never run again), then feeds
//! every unanswered inbox row in seq order with `Session::handle_message`. The waiters' reply
//! bodies become inbox replies in the next fenced commit, with the journal rows that justify them.
//! The test takes an operation's start (`take_starts`) only after a successful fenced commit, and
//! begins it (as a lane worker would, a tick later: a pause may come in between) only while the
//! node's local deadline holds; then it applies the effects to the target.
//!
//! Steps: a client sends a request (or retries an earlier one, to any node; or reuses a msg_id);
//! a node ticks (polls the flags and its accepted inbox rows, renews or acquires the lease,
//! retries a commit that lost its connection, begins what started, feeds the inbox, works on its
//! running schema operations, commits, takes what started); store time advances; a node's clock
//! drifts; a node crashes (losing everything not committed) and restarts; a node pauses (keeping
//! its belief that it leads while time passes) and resumes (and may act on that stale belief: the
//! store's fence and the target's must stop it), or stalls past its lease while the others go on;
//! a node's store connection is cut at its next commit (which fails, perhaps after the store
//! applied it, and is retried with the same statements) and healed. At the end of each case
//! everything heals, one node leads and runs until idle, and the target is compared with what was
//! acknowledged.
//!
//! Two timing assumptions of the design are modelled, not tested: a node's clock drifts no more
//! than the margin covers (rates 80 %..120 % against a margin of 30 % of the lease), and a traffic
//! effect (a load-balancer command) is performed in the same instant as the deadline check that
//! allowed it; only schema effects (migrations, restores) take long enough to be paused in the
//! middle, and those the target's fence guards.
//!
//! The named properties are checked after every step: `two_nodes_never_apply_the_same_effect`,
//! `a_stale_epochs_write_is_refused`, `an_acknowledged_change_survives_any_crash`,
//! `the_kill_switch_is_answered_with_no_leader`, `one_leader_per_epoch`,
//! `a_retry_is_answered_like_its_original` and `every_operation_is_one_history_entry`; once idle,
//! also what the target shows, that every inbox row is answered, and that the store's journal
//! replays to the leader's state. A run of the full case count also fails when its cases never
//! reached a takeover, a reconciliation, a refused stale commit, a refused target write, a lost
//! acknowledgement, a retried commit or a leaderless kill switch.
//!
//! One thing the leader here does that the design does not say: it holds back an inbox row whose
//! (src, msg_id) clashes with a fed row still waiting for its reply (see `Cluster::feed`), because
//! `Session` hands such replies to the wrong waiter.

use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::Union;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use rollback_node::core::effects::{
    Completion, Done, Effect, ExecError, Failure, Found, Lane, LayerKind, Operation, ServerState,
};
use rollback_node::core::machine::Record;
use rollback_node::exec::{Executor, Executors, LaneExecutor, Report};
use rollback_node::protocol::values::Seconds;
use rollback_node::runtime::session::{Performing, Unanswerable, Waiter};
use rollback_node::store::{replay, Entry, MemoryStore, Store};
use rollback_node::{Environment, Estate, Machine, Session, State};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// Test cases of the state-machine test (`PROPTEST_CASES` overrides).
const CASES: u32 = 512;
/// Steps per test case (exclusive upper bound).
const MAX_STEPS: usize = 72;

// ---------------------------------------------------------------------------------------------
// The example estate and the cluster's constants.
// ---------------------------------------------------------------------------------------------

const NODES: usize = 3;
/// The lease, in store milliseconds.
const LEASE: u64 = 1_000;
/// What a leader's deadline keeps back from the lease, in local milliseconds.
const MARGIN: u64 = 300;
/// Local clock rates, in percent of the store clock's: (LEASE - MARGIN) / 0.8 < LEASE.
const RATES: [u64; 5] = [80, 90, 100, 110, 120];
/// How many of its leader's ticks one schema effect (a migration file, a restore) takes.
const SCHEMA_TICKS: u64 = 2;
const FLAG: &str = "new_checkout";
const BACKUP: &str = "users_backup_20240115";
const BACKUP_SCHEMA: u64 = 2;
const SENDERS: [&str; 3] = ["alice", "bob", "carol"];

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

/// A client's request.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Req {
    Rollback(u64),
    Migrate(u64),
    Restore(&'static str),
    Switch(Env, Env),
    Disable(&'static str),
    Enable(&'static str),
}

impl Req {
    fn type_name(&self) -> &'static str {
        match self {
            Req::Rollback(_) => "rollback",
            Req::Migrate(_) => "migrate",
            Req::Restore(_) => "restore",
            Req::Switch(..) => "switch_traffic",
            Req::Disable(_) => "disable_feature",
            Req::Enable(_) => "enable_feature",
        }
    }

    /// A kill-switch request: handled by the receiving node through the flags log.
    fn is_flag(&self) -> bool {
        matches!(self, Req::Disable(_) | Req::Enable(_))
    }

    /// The request's own fields, as the journal records it (no `msg_id`, no `dry_run`).
    fn fields(&self) -> Value {
        let mut body = json!({"type": self.type_name()});
        match self {
            Req::Rollback(v) | Req::Migrate(v) => body["version"] = json!(v),
            Req::Restore(b) => body["backup"] = json!(b),
            Req::Switch(from, to) => {
                body["from"] = json!(from.name());
                body["to"] = json!(to.name());
            }
            Req::Disable(f) | Req::Enable(f) => body["feature"] = json!(f),
        }
        body
    }

    /// The body a client sends.
    fn body(&self, msg_id: u64, dry_run: bool) -> String {
        let mut body = self.fields();
        body["msg_id"] = json!(msg_id);
        if dry_run {
            body["dry_run"] = json!(true);
        }
        body.to_string()
    }
}

fn estate() -> Estate {
    Estate::example()
}

/// Lane names, as `in_flight` lists them, by [`Lane::index`].
const LANES: [&str; 3] = ["schema", "traffic", "flags"];

/// A reply line with its body as written.
#[derive(serde::Deserialize)]
struct Envelope {
    body: Box<serde_json::value::RawValue>,
}

/// The receiving node validates a kill-switch request as a node decides it (the flag exists):
/// the reply body a fresh machine gives, flags performed at once.
fn validate_flag(src: &str, msg_id: u64, req: &Req) -> String {
    let mut session = Session::example();
    let line = json!({"src": src, "dest": "n", "body": parse(&req.body(msg_id, false))});
    let mut out = Vec::new();
    let diagnostic = session.handle_line(line.to_string().as_bytes(), &mut out);
    assert_eq!(diagnostic, None, "a kill-switch request is answered");
    let text = String::from_utf8(out).expect("replies are UTF-8");
    let first = text
        .lines()
        .next()
        .expect("a kill switch is answered at once");
    let envelope: Envelope = serde_json::from_str(first).expect("a reply is JSON");
    envelope.body.get().to_owned()
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("a reply body is JSON ({e}): {body}"))
}

/// The error code of a reply body, if it is an error.
fn code(body: &str) -> Option<u64> {
    let body = parse(body);
    (body["type"] == "error").then(|| body["code"].as_u64().unwrap_or(0))
}

/// Whether a reply body is one the journal cannot justify: a msg_id used for another request
/// (22, remembered nowhere) or a full queue (11).
fn unjournaled(body: &str) -> bool {
    let value = parse(body);
    value["type"] == "error"
        && (value["code"] == 11
            || (value["code"] == 22
                && value["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("already answered a different request"))))
}

// ---------------------------------------------------------------------------------------------
// The target: what the effects change, with its fence.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Target {
    schema: u64,
    live: Environment,
    /// The `rollback_node_fence` row: the newest epoch that took the target over.
    fence: u64,
    /// Each node's flag file.
    flag_files: [BTreeMap<String, bool>; NODES],
}

type Shared<T> = Arc<Mutex<T>>;

/// An executor that only observes the simulated target: what a leader's reconciliation asks.
/// Its session performs nothing itself (`Performing::Manual`); the test applies the effects.
struct Observer {
    layer: LayerKind,
    target: Shared<Target>,
}

impl Executor for Observer {
    fn perform(&mut self, _effects: &[Effect], _report: Report<'_>) -> Completion {
        panic!("a leader's session performs nothing itself: the test applies its effects")
    }

    fn observe(&mut self, believed: &State) -> Found {
        let target = self.target.lock().expect("the target lock");
        match self.layer {
            LayerKind::Schema | LayerKind::Backups => Found {
                schema_version: Some(target.schema),
                ..Found::default()
            },
            LayerKind::Traffic => Found {
                live_environment: Some(target.live),
                ..Found::default()
            },
            LayerKind::Flags => Found {
                flags: Some(believed.flags.clone()),
                ..Found::default()
            },
        }
    }
}

fn leader_session(machine: Machine, store: MemoryStore, target: &Shared<Target>) -> Session {
    let lane = |layers: &[LayerKind]| {
        LaneExecutor::new(
            layers
                .iter()
                .map(|layer| {
                    let observer = Observer {
                        layer: *layer,
                        target: Arc::clone(target),
                    };
                    (*layer, Box::new(observer) as Box<dyn Executor>)
                })
                .collect(),
        )
    };
    let executors = Executors::new(
        lane(&[LayerKind::Schema, LayerKind::Backups]),
        lane(&[LayerKind::Traffic]),
        lane(&[LayerKind::Flags]),
    );
    Session::new(machine, executors, store).performing(Performing::Manual)
}

// ---------------------------------------------------------------------------------------------
// The store, as the design of record describes it.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Lease {
    holder: Option<usize>,
    epoch: u64,
    expires_at: u64,
}

#[derive(Debug, Clone)]
struct Row {
    entry: Entry,
    /// The epoch of the commit that wrote it last.
    epoch: u64,
}

#[derive(Debug, Clone)]
struct InboxRow {
    seq: u64,
    node: usize,
    src: &'static str,
    msg_id: u64,
    req: Req,
    dry_run: bool,
    body: String,
    reply: Option<String>,
}

#[derive(Debug, Clone)]
struct FlagRow {
    hseq: u64,
    src: &'static str,
    msg_id: u64,
    flag: String,
    enabled: bool,
    reply: String,
}

/// What one fenced commit writes: journal rows (upserted by seq) and inbox replies.
#[derive(Debug, Clone, Default)]
struct Batch {
    rows: Vec<Entry>,
    replies: Vec<(u64, String)>,
}

#[derive(Debug, Clone)]
struct Db {
    now: u64,
    lease: Lease,
    journal: BTreeMap<u64, Row>,
    inbox: Vec<InboxRow>,
    flags: Vec<FlagRow>,
    /// The flags as the estate starts them.
    initial_flags: BTreeMap<String, bool>,
}

impl Db {
    fn new(initial_flags: BTreeMap<String, bool>) -> Self {
        Db {
            now: 0,
            lease: Lease {
                holder: None,
                epoch: 0,
                expires_at: 0,
            },
            journal: BTreeMap::new(),
            inbox: Vec::new(),
            flags: Vec::new(),
            initial_flags,
        }
    }

    /// `UPDATE lease SET holder = me, epoch = epoch + 1, expires_at = now() + L
    ///  WHERE holder IS NULL OR expires_at <= now() RETURNING epoch`
    fn acquire(&mut self, node: usize) -> Option<u64> {
        if self.lease.holder.is_some() && self.lease.expires_at > self.now {
            return None;
        }
        self.lease = Lease {
            holder: Some(node),
            epoch: self.lease.epoch + 1,
            expires_at: self.now + LEASE,
        };
        Some(self.lease.epoch)
    }

    /// `UPDATE lease SET expires_at = now() + L WHERE holder = me AND epoch = E AND
    ///  expires_at > now()`; no row: the lease is lost.
    fn renew(&mut self, node: usize, epoch: u64) -> bool {
        if !self.holds(node, epoch) {
            return false;
        }
        self.lease.expires_at = self.now + LEASE;
        true
    }

    /// The fence every leader commit checks first: `lease.epoch = E AND holder = me AND
    /// expires_at > now()`.
    fn holds(&self, node: usize, epoch: u64) -> bool {
        self.lease.epoch == epoch
            && self.lease.holder == Some(node)
            && self.lease.expires_at > self.now
    }

    /// No node holds the lease now (by the store's clock).
    fn leaderless(&self) -> bool {
        self.lease.holder.is_none() || self.lease.expires_at <= self.now
    }

    /// One transaction: the fence check, then the journal rows (upserted by seq) and the inbox
    /// replies. Returns whether it committed.
    fn fenced_commit(&mut self, node: usize, epoch: u64, batch: &Batch) -> bool {
        if !self.holds(node, epoch) {
            return false;
        }
        for entry in &batch.rows {
            self.journal.insert(
                entry.seq,
                Row {
                    entry: entry.clone(),
                    epoch,
                },
            );
        }
        for (seq, body) in &batch.replies {
            self.inbox[inbox_index(*seq)].reply = Some(body.clone());
        }
        true
    }

    /// The flag state: the last row per flag in hseq order.
    fn flag_state(&self) -> BTreeMap<String, bool> {
        let mut flags = self.initial_flags.clone();
        for row in &self.flags {
            flags.insert(row.flag.clone(), row.enabled);
        }
        flags
    }

    /// The journal row of `(src, msg_id)`, if any.
    fn row_of(&self, src: &str, msg_id: u64) -> Option<&Row> {
        self.journal
            .values()
            .find(|r| r.entry.src == src && r.entry.msg_id == msg_id)
    }
}

/// Inbox seqs start at 1.
fn inbox_index(seq: u64) -> usize {
    usize::try_from(seq - 1).expect("an inbox seq fits")
}

// ---------------------------------------------------------------------------------------------
// What happened, as an observer outside the system saw it.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Event {
    /// A node began to believe it leads with `epoch` (it acquired the lease).
    Leads { node: usize, epoch: u64 },
    /// A takeover advanced the target's fence to `epoch`.
    Fenced { epoch: u64 },
    /// A fenced commit committed these journal rows.
    Committed {
        node: usize,
        epoch: u64,
        seqs: Vec<u64>,
    },
    /// An effect changed the target.
    Applied(Applied),
}

#[derive(Debug, Clone)]
struct Applied {
    node: usize,
    epoch: u64,
    seq: u64,
    src: String,
    msg_id: u64,
    index: usize,
    effect: Effect,
    /// The operation the node performed, as JSON.
    operation: String,
    /// The committed journal row of `seq` when the effect was applied: sender, msg_id, operation.
    row: Option<(String, u64, Option<String>)>,
}

/// How often the cases reached the situations the properties are about.
#[derive(Debug, Clone, Copy, Default)]
struct Coverage {
    takeovers: u64,
    reconciled: u64,
    stale_commits_refused: u64,
    target_writes_refused: u64,
    lost_acks: u64,
    retried_commits: u64,
    leaderless_kill_switches: u64,
    acknowledged: u64,
}

static COVERAGE: Mutex<Coverage> = Mutex::new(Coverage {
    takeovers: 0,
    reconciled: 0,
    stale_commits_refused: 0,
    target_writes_refused: 0,
    lost_acks: 0,
    retried_commits: 0,
    leaderless_kill_switches: 0,
    acknowledged: 0,
});

/// A reply a client received.
#[derive(Debug, Clone)]
struct Receipt {
    src: &'static str,
    msg_id: u64,
    req: Req,
    dry_run: bool,
    body: String,
    via: Via,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// The reply of this inbox row.
    Inbox(u64),
    /// The reply of this flags row; none for a request refused before any row was written.
    Flags(Option<u64>),
}

/// A kill-switch request as it was sent: whether it reached a live node while no node held the
/// lease, and whether it was answered.
#[derive(Debug, Clone)]
struct KillSwitch {
    node: usize,
    src: &'static str,
    msg_id: u64,
    live: bool,
    leaderless: bool,
    answered: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The nodes.
// ---------------------------------------------------------------------------------------------

/// An operation whose effects are being applied.
#[derive(Debug, Clone)]
struct InProgress {
    lane: Lane,
    seq: u64,
    src: String,
    msg_id: u64,
    operation: Operation,
    /// The effect it is at.
    next: usize,
    /// Ticks of work on that effect so far: a schema effect's transaction (which advances the
    /// target's fence first) commits at the end of its [`SCHEMA_TICKS`]th tick.
    worked: u64,
}

/// A node's leader term: what it believes while it believes it leads.
struct Term {
    epoch: u64,
    /// Local instant past which it starts nothing more.
    deadline: u64,
    session: Session,
    /// The journal rows as this term knows the store holds them.
    acked: BTreeMap<u64, Entry>,
    /// The inbox rows fed to the machine.
    fed: BTreeSet<u64>,
    /// The rows fed whose waiter has not been handed a reply yet.
    waiting: BTreeMap<u64, InboxRow>,
    /// Where the waiters put the reply bodies (inbox seq, body).
    delivered: Shared<Vec<(u64, Result<String, Unanswerable>)>>,
    /// Reply bodies handed over and not yet written by a fenced commit.
    replies: Vec<(u64, String)>,
    /// A commit that failed for a lost connection: retried with the same statements.
    batch: Option<Batch>,
    /// Started operations (their intents committed) not yet begun: the deadline had passed.
    unstarted: Vec<(Lane, u64, Operation)>,
    /// Schema operations whose effects are being applied.
    running: Vec<InProgress>,
}

struct Node {
    up: bool,
    paused: bool,
    connected: bool,
    /// A cut of the store connection that takes effect at the node's next commit; `true`: that
    /// commit reaches the store, but its acknowledgement is lost.
    cut: Option<bool>,
    /// The next commit reaches the store, but its acknowledgement is lost.
    lose_ack: bool,
    /// The local monotonic clock, in local milliseconds, and its rate in percent.
    local: u64,
    rate: u64,
    carry: u64,
    term: Option<Term>,
    /// The inbox rows this node accepted and polls for their replies.
    awaiting: Vec<u64>,
}

impl Node {
    fn new() -> Self {
        Node {
            up: true,
            paused: false,
            connected: true,
            cut: None,
            lose_ack: false,
            local: 0,
            rate: 100,
            carry: 0,
            term: None,
            awaiting: Vec::new(),
        }
    }

    /// Up, running and connected to the store.
    fn live(&self) -> bool {
        self.up && !self.paused && self.connected
    }
}

enum Commit {
    /// Nothing to write.
    Nothing,
    Committed,
    /// The connection was lost; the batch waits to be retried.
    Lost,
    /// The fence refused it: the lease is lost, and the term with it.
    Refused,
}

// ---------------------------------------------------------------------------------------------
// The cluster.
// ---------------------------------------------------------------------------------------------

struct Cluster {
    db: Db,
    target: Shared<Target>,
    nodes: Vec<Node>,
    events: Vec<Event>,
    receipts: Vec<Receipt>,
    /// The kill-switch request of the last step, if it sent one.
    kill_switch: Option<KillSwitch>,
    initial: State,
    coverage: Coverage,
}

impl Cluster {
    fn new() -> Self {
        let initial = estate().state;
        let flags = initial.flags.clone();
        let target = Target {
            schema: initial.schema_version,
            live: initial.traffic.live,
            fence: 0,
            flag_files: std::array::from_fn(|_| flags.clone()),
        };
        Cluster {
            db: Db::new(flags),
            target: Arc::new(Mutex::new(target)),
            nodes: (0..NODES).map(|_| Node::new()).collect(),
            events: Vec::new(),
            receipts: Vec::new(),
            kill_switch: None,
            initial,
            coverage: Coverage::default(),
        }
    }

    fn target(&self) -> std::sync::MutexGuard<'_, Target> {
        self.target.lock().expect("the target lock")
    }

    // --- Time ---

    fn advance(&mut self, ms: u64) {
        self.db.now += ms;
        for node in &mut self.nodes {
            let total = ms * node.rate + node.carry;
            node.local += total / 100;
            node.carry = total % 100;
        }
    }

    fn deadline_holds(&self, node: usize) -> bool {
        let n = &self.nodes[node];
        n.term.as_ref().is_some_and(|t| n.local < t.deadline)
    }

    // --- Clients ---

    fn send(&mut self, node: usize, src: &'static str, msg_id: u64, req: Req, dry_run: bool) {
        let live = self.nodes[node].live();
        if req.is_flag() {
            let leaderless = self.db.leaderless();
            let answered = live.then(|| self.kill_switch(node, src, msg_id, &req));
            if leaderless && answered.is_some() {
                self.coverage.leaderless_kill_switches += 1;
            }
            self.kill_switch = Some(KillSwitch {
                node,
                src,
                msg_id,
                live,
                leaderless,
                answered,
            });
            return;
        }
        if !live {
            // Down, paused or cut off: the client's connection times out.
            return;
        }
        let seq = self.db.inbox.len() as u64 + 1;
        self.db.inbox.push(InboxRow {
            seq,
            node,
            src,
            msg_id,
            body: req.body(msg_id, dry_run),
            req,
            dry_run,
            reply: None,
        });
        self.nodes[node].awaiting.push(seq);
    }

    /// The leaderless kill switch at the receiving node: validate, insert one flags row (or find
    /// the earlier one of a retry), set the node's flag file to the store's flag state, reply.
    fn kill_switch(&mut self, node: usize, src: &'static str, msg_id: u64, req: &Req) -> String {
        let (flag, enabled) = match req {
            Req::Disable(f) => (*f, false),
            Req::Enable(f) => (*f, true),
            _ => unreachable!("only flag requests"),
        };
        let earlier = self
            .db
            .flags
            .iter()
            .find(|r| r.src == src && r.msg_id == msg_id)
            .cloned();
        let (body, via) = match earlier {
            Some(row) if row.flag == flag && row.enabled == enabled => {
                (row.reply.clone(), Via::Flags(Some(row.hseq)))
            }
            Some(_) => (
                json!({"type": "error", "in_reply_to": msg_id, "code": 22,
                       "text": format!("msg_id {msg_id} from {src} already answered a different request; send this {} with a new msg_id", req.type_name())})
                .to_string(),
                Via::Flags(None),
            ),
            None => {
                let body = validate_flag(src, msg_id, req);
                if code(&body).is_none() {
                    let hseq = self.db.flags.len() as u64 + 1;
                    self.db.flags.push(FlagRow {
                        hseq,
                        src,
                        msg_id,
                        flag: flag.to_owned(),
                        enabled,
                        reply: body.clone(),
                    });
                    (body, Via::Flags(Some(hseq)))
                } else {
                    (body, Via::Flags(None))
                }
            }
        };
        self.sync_flag_file(node);
        self.receipts.push(Receipt {
            src,
            msg_id,
            req: req.clone(),
            dry_run: false,
            body: body.clone(),
            via,
        });
        body
    }

    /// Sets the node's flag file to the store's flag state (idempotent, re-read before writing).
    fn sync_flag_file(&mut self, node: usize) {
        let state = self.db.flag_state();
        let mut target = self.target();
        if target.flag_files[node] != state {
            target.flag_files[node] = state;
        }
    }

    /// A node polls: the flags table (its flag file follows), and its accepted inbox rows (a
    /// reply set is handed to its client).
    fn poll(&mut self, node: usize) {
        if !self.nodes[node].live() {
            return;
        }
        self.sync_flag_file(node);
        let awaiting = std::mem::take(&mut self.nodes[node].awaiting);
        for seq in awaiting {
            let row = &self.db.inbox[inbox_index(seq)];
            assert_eq!(row.node, node, "a node polls the inbox rows it accepted");
            match &row.reply {
                Some(reply) => {
                    self.coverage.acknowledged += 1;
                    self.receipts.push(Receipt {
                        src: row.src,
                        msg_id: row.msg_id,
                        req: row.req.clone(),
                        dry_run: row.dry_run,
                        body: reply.clone(),
                        via: Via::Inbox(seq),
                    });
                }
                None => self.nodes[node].awaiting.push(seq),
            }
        }
    }

    // --- Nodes ---

    fn crash(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.up = false;
        n.paused = false;
        n.term = None;
        n.awaiting.clear();
    }

    fn restart(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.up = true;
        n.paused = false;
        n.connected = true;
        n.cut = None;
        n.lose_ack = false;
    }

    /// Whether the node reaches the store for a commit: a cut takes effect now.
    fn reach(&mut self, node: usize) -> bool {
        let n = &mut self.nodes[node];
        if let Some(lose_ack) = n.cut.take() {
            n.connected = false;
            n.lose_ack = lose_ack;
        }
        n.connected
    }

    /// One tick of a node: poll; renew (or acquire) the lease when asked; lead if it believes
    /// it does; poll again. `fail`: the first effect it applies fails, changing nothing.
    fn tick(&mut self, node: usize, renew: bool, fail: bool) {
        let n = &self.nodes[node];
        if !n.up || n.paused {
            return;
        }
        self.poll(node);
        if renew && self.nodes[node].connected {
            let local = self.nodes[node].local;
            match &self.nodes[node].term {
                Some(term) => {
                    let epoch = term.epoch;
                    if self.db.renew(node, epoch) {
                        let term = self.nodes[node].term.as_mut().expect("a term");
                        term.deadline = local + LEASE - MARGIN;
                    } else {
                        self.nodes[node].term = None;
                    }
                }
                None => {
                    if let Some(epoch) = self.db.acquire(node) {
                        self.take_over(node, epoch, local + LEASE - MARGIN);
                    }
                }
            }
        }
        if self.nodes[node].term.is_some() {
            self.lead(node, fail);
        }
        self.poll(node);
    }

    /// Takeover at `epoch`: advance the target's fence, rebuild the machine from the committed
    /// journal, reconcile every open intent (recorded as interrupted, never run again).
    fn take_over(&mut self, node: usize, epoch: u64, deadline: u64) {
        self.coverage.takeovers += 1;
        self.events.push(Event::Leads { node, epoch });
        {
            let mut target = self.target();
            if target.fence <= epoch {
                target.fence = epoch;
            }
        }
        self.events.push(Event::Fenced { epoch });
        let entries: Vec<Entry> = self.db.journal.values().map(|r| r.entry.clone()).collect();
        let mut machine = Machine::new(self.initial.clone());
        let open = replay::rebuild(&mut machine, entries).unwrap_or_else(|e| {
            panic!("replay_yields_same_state: the store's journal does not replay: {e}")
        });
        // The term's store starts with the open intents, so that their interruptions (recorded
        // against the intent) are staged like any other record.
        let mut store = MemoryStore::durable();
        for o in &open {
            let operation = Arc::new(o.operation.clone());
            store.record(Record::Intent {
                seq: o.seq,
                src: &o.src,
                msg_id: o.msg_id,
                request: &o.request,
                operation: &operation,
            });
        }
        store.commit(&machine).expect("the memory store commits");
        for staged in store.entries() {
            assert_eq!(
                Some(&staged),
                self.db.journal.get(&staged.seq).map(|r| &r.entry),
                "replay_yields_same_state: an open intent is staged as the store holds it"
            );
        }
        let acked = self
            .db
            .journal
            .iter()
            .map(|(seq, row)| (*seq, row.entry.clone()))
            .collect();
        let mut session = leader_session(machine, store, &self.target);
        self.coverage.reconciled += open.len() as u64;
        session.reconcile(open);
        self.nodes[node].term = Some(Term {
            epoch,
            deadline,
            session,
            acked,
            fed: BTreeSet::new(),
            waiting: BTreeMap::new(),
            delivered: Arc::new(Mutex::new(Vec::new())),
            replies: Vec::new(),
            batch: None,
            unstarted: Vec::new(),
            running: Vec::new(),
        });
    }

    /// What a node that believes it leads does in one tick.
    fn lead(&mut self, node: usize, fail: bool) {
        let mut fail = fail;
        // A commit that lost its connection is retried first, with the same statements, until it
        // succeeds or the deadline passes.
        if self.nodes[node]
            .term
            .as_ref()
            .is_some_and(|t| t.batch.is_some())
        {
            if !self.deadline_holds(node) {
                self.nodes[node].term = None;
                return;
            }
            self.coverage.retried_commits += 1;
            match self.commit(node) {
                Commit::Committed | Commit::Nothing => self.take_started(node),
                Commit::Lost | Commit::Refused => return,
            }
        }
        // The lane workers begin what started after an earlier commit: a pause may have come
        // in between, so each checks the deadline first.
        self.begin(node, &mut fail);
        self.feed(node);
        self.perform_schema(node, &mut fail);
        match self.commit(node) {
            Commit::Committed | Commit::Nothing => self.take_started(node),
            Commit::Lost | Commit::Refused => {}
        }
    }

    /// Feeds the machine every inbox row whose reply is NULL and that this term has not fed, in
    /// seq order.
    ///
    /// Held back (fed in a later tick): a row whose (src, msg_id) has a fed row still waiting
    /// for its reply, unless both are the same request (a retry that joins). `Session` routes
    /// replies to waiters first-come-first-served per (src, msg_id), while a msg_id reused for
    /// another request (or a dry run beside the request) is answered out of that order: fed
    /// together, each would get the other's reply (see `Session::handle_message`).
    fn feed(&mut self, node: usize) {
        if !self.nodes[node].connected {
            return;
        }
        let rows: Vec<InboxRow> = {
            let term = self.nodes[node].term.as_ref().expect("a term");
            self.db
                .inbox
                .iter()
                .filter(|r| r.reply.is_none() && !term.fed.contains(&r.seq))
                .cloned()
                .collect()
        };
        for row in rows {
            let term = term_of(&mut self.nodes[node]);
            let joins = |other: &InboxRow| !other.dry_run && !row.dry_run && other.req == row.req;
            let clashes = term
                .waiting
                .values()
                .any(|w| w.src == row.src && w.msg_id == row.msg_id && !joins(w));
            if clashes {
                continue;
            }
            term.fed.insert(row.seq);
            let delivered = Arc::clone(&term.delivered);
            let seq = row.seq;
            let waiter = Waiter::new(move |body| {
                delivered
                    .lock()
                    .expect("the waiters' lock")
                    .push((seq, body));
            });
            let mut out = Vec::new();
            term.session
                .handle_message(row.src, row.body.as_bytes(), waiter, &mut out);
            assert!(
                out.is_empty(),
                "every reply goes to its inbox row's waiter, none to stdout: {}",
                String::from_utf8_lossy(&out)
            );
            term.waiting.insert(row.seq, row);
            collect(term);
        }
    }

    /// Commits what the term staged: one fenced transaction with the journal rows that changed
    /// and the inbox replies the waiters were handed.
    fn commit(&mut self, node: usize) -> Commit {
        let term = self.nodes[node].term.as_mut().expect("a term");
        if term.batch.is_none() {
            collect(term);
            let replies = std::mem::take(&mut term.replies);
            let rows: Vec<Entry> = term
                .session
                .store()
                .entries()
                .into_iter()
                .filter(|e| term.acked.get(&e.seq) != Some(e))
                .collect();
            if rows.is_empty() && replies.is_empty() {
                return Commit::Nothing;
            }
            term.batch = Some(Batch { rows, replies });
        }
        let epoch = term.epoch;
        let batch = term.batch.clone().expect("a batch");
        let seqs: Vec<u64> = batch.rows.iter().map(|e| e.seq).collect();
        let reached = self.reach(node);
        let n = &mut self.nodes[node];
        if !reached {
            if n.lose_ack {
                // The transaction reached the store; its acknowledgement never came back.
                n.lose_ack = false;
                if self.db.fenced_commit(node, epoch, &batch) {
                    self.coverage.lost_acks += 1;
                    self.events.push(Event::Committed { node, epoch, seqs });
                }
            }
            return Commit::Lost;
        }
        if self.db.fenced_commit(node, epoch, &batch) {
            self.events.push(Event::Committed { node, epoch, seqs });
            let term = self.nodes[node].term.as_mut().expect("a term");
            for entry in batch.rows {
                term.acked.insert(entry.seq, entry);
            }
            term.batch = None;
            Commit::Committed
        } else {
            self.coverage.stale_commits_refused += 1;
            self.nodes[node].term = None;
            Commit::Refused
        }
    }

    /// Takes the operations that started: their intents are committed now.
    fn take_started(&mut self, node: usize) {
        let term = term_of(&mut self.nodes[node]);
        let taken = term.session.take_starts();
        term.unstarted.extend(taken);
    }

    /// Begins the started operations while the deadline holds: a traffic operation is performed
    /// at once (in the instant of the check), a schema operation one effect per [`SCHEMA_TICKS`] ticks.
    fn begin(&mut self, node: usize, fail: &mut bool) {
        if !self.deadline_holds(node) {
            return;
        }
        let term = term_of(&mut self.nodes[node]);
        if term.unstarted.is_empty() {
            return;
        }
        let in_flight = term.session.machine().in_flight();
        let begun: Vec<InProgress> = std::mem::take(&mut term.unstarted)
            .into_iter()
            .map(|(lane, seq, operation)| {
                let view = in_flight
                    .iter()
                    .find(|v| v.lane == LANES[lane.index()] && v.state == "running")
                    .expect("a started operation is listed as running");
                InProgress {
                    lane,
                    seq,
                    src: view.src.clone(),
                    msg_id: view.msg_id,
                    operation,
                    next: 0,
                    worked: 0,
                }
            })
            .collect();
        for op in begun {
            if op.lane == Lane::Schema {
                // Its first tick of work is this one (see `perform_schema`, which follows).
                term_of(&mut self.nodes[node]).running.push(op);
            } else {
                // Performed in the instant the deadline was checked.
                let mut op = op;
                let completion = loop {
                    match self.apply_next(node, &mut op, fail) {
                        Some(completion) => break completion,
                        None => continue,
                    }
                };
                self.complete(node, &op, completion);
            }
        }
    }

    /// Works one tick on every running schema operation, applying an effect at the end of its
    /// last tick; completes those that end.
    fn perform_schema(&mut self, node: usize, fail: &mut bool) {
        let running = std::mem::take(&mut term_of(&mut self.nodes[node]).running);
        for mut op in running {
            op.worked += 1;
            if op.worked < SCHEMA_TICKS {
                term_of(&mut self.nodes[node]).running.push(op);
                continue;
            }
            op.worked = 0;
            match self.apply_next(node, &mut op, fail) {
                Some(completion) => self.complete(node, &op, completion),
                None => term_of(&mut self.nodes[node]).running.push(op),
            }
        }
    }

    fn complete(&mut self, node: usize, op: &InProgress, completion: Completion) {
        let term = term_of(&mut self.nodes[node]);
        let mut out = Vec::new();
        term.session.complete(op.lane, op.seq, completion, &mut out);
        assert!(
            out.is_empty(),
            "every reply goes to its inbox row's waiter, none to stdout: {}",
            String::from_utf8_lossy(&out)
        );
        collect(term);
    }

    /// Applies the next effect of `op` to the target; returns its completion once it ended.
    fn apply_next(
        &mut self,
        node: usize,
        op: &mut InProgress,
        fail: &mut bool,
    ) -> Option<Completion> {
        let Some(effect) = op.operation.effects.get(op.next).cloned() else {
            return Some(Completion::Done(Done::took(Seconds::Modelled(0))));
        };
        let epoch = term_of(&mut self.nodes[node]).epoch;
        if std::mem::take(fail) {
            return Some(Completion::Failed(Failure {
                completed: op.next,
                ..Failure::nothing_changed(ExecError::failed(
                    "running the step",
                    None,
                    "connection reset",
                ))
            }));
        }
        let row = self.db.journal.get(&op.seq).map(|r| {
            (
                r.entry.src.clone(),
                r.entry.msg_id,
                r.entry.operation.clone(),
            )
        });
        let applied = {
            let mut target = self.target();
            match &effect {
                Effect::RunDown { .. }
                | Effect::RunUp { .. }
                | Effect::Restore { .. }
                | Effect::TakeBackup { .. }
                | Effect::ForceVersion { .. } => {
                    // The migration's own transaction: advance the fence WHERE epoch <= E first,
                    // abort when no row matched.
                    if target.fence > epoch {
                        false
                    } else {
                        target.fence = epoch;
                        match &effect {
                            Effect::RunDown { version, .. } => target.schema = version - 1,
                            Effect::RunUp { version, .. } => target.schema = *version,
                            Effect::Restore { backup } => {
                                assert_eq!(backup, BACKUP, "only the known backup is restored");
                                target.schema = BACKUP_SCHEMA;
                            }
                            Effect::ForceVersion { version } => target.schema = *version,
                            _ => {}
                        }
                        true
                    }
                }
                Effect::SetServerState { server, state } => {
                    if *state == ServerState::Ready {
                        target.live = *server;
                    }
                    true
                }
                Effect::WriteFlags { flag, enabled } => {
                    target.flag_files[node].insert(flag.clone(), *enabled);
                    true
                }
                Effect::CheckHealthy { .. } => true,
            }
        };
        if !applied {
            self.coverage.target_writes_refused += 1;
            return Some(Completion::Failed(Failure {
                completed: op.next,
                ..Failure::nothing_changed(ExecError::failed(
                    "advancing the fence",
                    None,
                    "a newer leader took the target over",
                ))
            }));
        }
        if effect.changes_something() {
            self.events.push(Event::Applied(Applied {
                node,
                epoch,
                seq: op.seq,
                src: op.src.clone(),
                msg_id: op.msg_id,
                index: op.next,
                effect,
                operation: serde_json::to_string(&op.operation).expect("an operation is JSON"),
                row,
            }));
        }
        op.next += 1;
        (op.next == op.operation.effects.len())
            .then(|| Completion::Done(Done::took(Seconds::Modelled(0))))
    }

    /// The node stalls past its lease while the others tick, then acts on its stale belief.
    fn stall(&mut self, node: usize) {
        self.nodes[node].paused = true;
        self.advance(LEASE + 200);
        for other in (0..NODES).filter(|n| *n != node) {
            self.tick(other, true, false);
        }
        self.nodes[node].paused = false;
        self.tick(node, false, false);
        self.tick(node, false, false);
    }

    // --- The end of a case ---

    /// Heals everything, lets node 0 lead and runs until idle.
    fn quiesce(&mut self) {
        for node in 0..NODES {
            if !self.nodes[node].up {
                self.restart(node);
            }
            let n = &mut self.nodes[node];
            n.paused = false;
            n.connected = true;
            n.cut = None;
            n.lose_ack = false;
            n.rate = 100;
        }
        // Every lease expires; node 0 takes over, then the others learn they do not lead.
        self.advance(2 * LEASE);
        for _ in 0..400 {
            self.tick(0, true, false);
            if self.nodes[0].term.is_some() {
                for node in 1..NODES {
                    self.tick(node, true, false);
                }
            }
            self.check_step();
            if self.idle() {
                return;
            }
            self.advance(100);
        }
        panic!(
            "quiescence: the cluster did not become idle; leader term: {:?}; unanswered inbox rows: {:?}",
            self.nodes[0].term.as_ref().map(|t| (t.epoch, t.session.machine().in_flight())),
            self.db.inbox.iter().filter(|r| r.reply.is_none()).collect::<Vec<_>>()
        );
    }

    fn idle(&self) -> bool {
        let Some(term) = &self.nodes[0].term else {
            return false;
        };
        let staged_all = term
            .session
            .store()
            .entries()
            .iter()
            .all(|e| term.acked.get(&e.seq) == Some(e));
        term.batch.is_none()
            && term.unstarted.is_empty()
            && term.running.is_empty()
            && term.session.starts().is_empty()
            && term.session.machine().is_idle()
            && term.session.holding() == 0
            && staged_all
            && self.db.inbox.iter().all(|r| r.reply.is_some())
            && self.nodes.iter().all(|n| n.awaiting.is_empty())
    }

    // --- The properties ---

    fn check_step(&self) {
        two_nodes_never_apply_the_same_effect(self);
        a_stale_epochs_write_is_refused(self);
        an_acknowledged_change_survives_any_crash(self);
        the_kill_switch_is_answered_with_no_leader(self);
        one_leader_per_epoch(self);
        a_retry_is_answered_like_its_original(self);
        every_operation_is_one_history_entry(self);
    }

    fn check_quiescent(&self) {
        self.check_step();
        an_acknowledged_change_is_what_the_target_shows(self);
        every_request_is_answered_once_idle(self);
        replay_yields_the_leaders_state(self);
    }
}

/// Stages what the session recorded and hands the held reply bodies to their waiters (they are
/// written to the inbox only by the next fenced commit, with the rows that justify them).
fn collect(term: &mut Term) {
    term.session.commit().expect("the memory store commits");
    term.session.deliver();
    let delivered = std::mem::take(&mut *term.delivered.lock().expect("the waiters' lock"));
    for (seq, body) in delivered {
        let body = body.unwrap_or_else(|Unanswerable(why)| {
            panic!("inbox row {seq}'s request got no reply: {why}")
        });
        term.waiting.remove(&seq);
        term.replies.push((seq, body));
    }
}

fn term_of(node: &mut Node) -> &mut Term {
    node.term.as_mut().expect("the node leads")
}

// ---------------------------------------------------------------------------------------------
// The named properties.
// ---------------------------------------------------------------------------------------------

/// Every effect applied to the target belongs to one committed journal row (the intent of the
/// operation performed, committed before the effect began), and each effect of each operation is
/// applied at most once, across all nodes and epochs.
fn two_nodes_never_apply_the_same_effect(c: &Cluster) {
    let mut by_seq: BTreeMap<(u64, usize), &Applied> = BTreeMap::new();
    let mut by_request: BTreeMap<(&str, u64, usize), &Applied> = BTreeMap::new();
    for event in &c.events {
        let Event::Applied(applied) = event else {
            continue;
        };
        let Some((src, msg_id, operation)) = &applied.row else {
            panic!(
                "two_nodes_never_apply_the_same_effect: node {} (epoch {}) applied {:?} of seq {} with no committed journal row",
                applied.node, applied.epoch, applied.effect, applied.seq
            );
        };
        assert!(
            *src == applied.src && *msg_id == applied.msg_id,
            "two_nodes_never_apply_the_same_effect: node {} applied seq {} for {}/{} but the journal row of seq {} is {src}/{msg_id}",
            applied.node, applied.seq, applied.src, applied.msg_id, applied.seq
        );
        assert_eq!(
            operation.as_deref(),
            Some(applied.operation.as_str()),
            "two_nodes_never_apply_the_same_effect: node {} applied an operation of seq {} that is not the committed intent",
            applied.node,
            applied.seq
        );
        if let Some(earlier) = by_seq.insert((applied.seq, applied.index), applied) {
            panic!(
                "two_nodes_never_apply_the_same_effect: effect {} of seq {} ({:?}) applied by node {} (epoch {}) and again by node {} (epoch {})",
                applied.index, applied.seq, applied.effect, earlier.node, earlier.epoch, applied.node, applied.epoch
            );
        }
        let key = (applied.src.as_str(), applied.msg_id, applied.index);
        if let Some(earlier) = by_request.insert(key, applied) {
            panic!(
                "two_nodes_never_apply_the_same_effect: effect {} of {}/{} ({:?}) applied as seq {} by node {} (epoch {}) and again as seq {} by node {} (epoch {})",
                applied.index, applied.src, applied.msg_id, applied.effect, earlier.seq, earlier.node, earlier.epoch, applied.seq, applied.node, applied.epoch
            );
        }
    }
}

/// No journal commit and no target write carries an epoch lower than one that had already
/// committed or taken the target over before it; a traffic write (unfenced in the target, guarded
/// by the deadline) comes only from the newest epoch.
fn a_stale_epochs_write_is_refused(c: &Cluster) {
    let mut newest_fenced = 0;
    let mut newest_committed = 0;
    let mut newest_lease = 0;
    for event in &c.events {
        match event {
            Event::Leads { epoch, .. } => newest_lease = newest_lease.max(*epoch),
            Event::Fenced { epoch } => newest_fenced = newest_fenced.max(*epoch),
            Event::Committed { node, epoch, seqs } => {
                assert!(
                    *epoch >= newest_committed && *epoch >= newest_lease,
                    "a_stale_epochs_write_is_refused: node {node} committed seqs {seqs:?} with epoch {epoch} after epoch {} had committed and epoch {newest_lease} had taken the lease",
                    newest_committed
                );
                newest_committed = *epoch;
            }
            Event::Applied(applied) => {
                let schema = matches!(
                    applied.effect.layer(),
                    LayerKind::Schema | LayerKind::Backups
                );
                if schema {
                    assert!(
                        applied.epoch >= newest_fenced,
                        "a_stale_epochs_write_is_refused: node {} wrote {:?} (seq {}) to the target with epoch {} after epoch {newest_fenced} had advanced the fence",
                        applied.node, applied.effect, applied.seq, applied.epoch
                    );
                    newest_fenced = applied.epoch;
                } else {
                    assert!(
                        applied.epoch == newest_lease,
                        "a_stale_epochs_write_is_refused: node {} performed {:?} (seq {}) with epoch {} after epoch {newest_lease} had taken the lease",
                        applied.node, applied.effect, applied.seq, applied.epoch
                    );
                }
            }
        }
    }
    for row in c.db.journal.values() {
        assert!(
            row.epoch <= c.db.lease.epoch,
            "a_stale_epochs_write_is_refused: journal row {} carries epoch {} beyond the lease's {}",
            row.entry.seq,
            row.epoch,
            c.db.lease.epoch
        );
    }
}

/// Every reply a client received stays true: the journal row that justifies it (or the flags
/// row) stays committed with that reply, and its inbox row keeps it.
fn an_acknowledged_change_survives_any_crash(c: &Cluster) {
    for r in &c.receipts {
        match r.via {
            Via::Inbox(seq) => {
                let row = &c.db.inbox[inbox_index(seq)];
                assert_eq!(
                    row.reply.as_deref(),
                    Some(r.body.as_str()),
                    "an_acknowledged_change_survives_any_crash: inbox row {seq} ({}/{}) no longer holds the reply its client received",
                    r.src,
                    r.msg_id
                );
                if r.dry_run || unjournaled(&r.body) {
                    continue;
                }
                let Some(journal) = c.db.row_of(r.src, r.msg_id) else {
                    panic!(
                        "an_acknowledged_change_survives_any_crash: {}/{} was answered {} but the journal has no row for it",
                        r.src, r.msg_id, r.body
                    );
                };
                assert_eq!(
                    journal.entry.reply.as_deref(),
                    Some(r.body.as_str()),
                    "an_acknowledged_change_survives_any_crash: {}/{} (journal seq {}) was answered otherwise than the journal holds",
                    r.src,
                    r.msg_id,
                    journal.entry.seq
                );
                let recorded: Value = serde_json::from_str(&journal.entry.request)
                    .expect("a journal request is JSON");
                assert_eq!(
                    recorded,
                    r.req.fields(),
                    "an_acknowledged_change_survives_any_crash: {}/{} got the reply of another request (journal seq {})",
                    r.src,
                    r.msg_id,
                    journal.entry.seq
                );
            }
            Via::Flags(Some(hseq)) => {
                let row = c.db.flags.get(usize::try_from(hseq - 1).expect("fits"));
                assert!(
                    row.is_some_and(|row| row.reply == r.body
                        && row.src == r.src
                        && row.msg_id == r.msg_id),
                    "an_acknowledged_change_survives_any_crash: the flags row {hseq} of {}/{} is gone or changed",
                    r.src,
                    r.msg_id
                );
            }
            Via::Flags(None) => {}
        }
    }
}

/// After quiescence the target shows what the journal says, and the latest acknowledged change of
/// each layer when nothing changed that layer after it.
fn an_acknowledged_change_is_what_the_target_shows(c: &Cluster) {
    let target = c.target();
    let term = c.nodes[0].term.as_ref().expect("node 0 leads");
    let state = term.session.machine().state();
    assert_eq!(
        target.schema, state.schema_version,
        "an_acknowledged_change_survives_any_crash: the target's schema is not what the journal says"
    );
    assert_eq!(
        target.live, state.traffic.live,
        "an_acknowledged_change_survives_any_crash: the live environment is not what the journal says"
    );
    // The latest acknowledged change per layer.
    let mut latest: BTreeMap<&str, (u64, Value)> = BTreeMap::new();
    for r in &c.receipts {
        if r.dry_run || !matches!(r.via, Via::Inbox(_)) {
            continue;
        }
        let body = parse(&r.body);
        let (layer, value) = match body["type"].as_str() {
            Some("rollback_complete") => ("schema", body["rolled_back_to"].clone()),
            Some("migrate_complete") => ("schema", body["migrated_to"].clone()),
            Some("restore_complete") => ("schema", json!(BACKUP_SCHEMA)),
            Some("traffic_switched") => ("traffic", body["current_environment"].clone()),
            _ => continue,
        };
        let seq =
            c.db.row_of(r.src, r.msg_id)
                .expect("an acknowledged change has its journal row")
                .entry
                .seq;
        if latest.get(layer).is_none_or(|(s, _)| *s < seq) {
            latest.insert(layer, (seq, value));
        }
    }
    let lane_of = |entry: &Entry| match serde_json::from_str::<Value>(&entry.request)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_owned))
        .as_deref()
    {
        Some("switch_traffic") => "traffic",
        _ => "schema",
    };
    for (layer, (seq, value)) in latest {
        let changed_later = c.db.journal.values().any(|r| {
            r.entry.seq > seq && r.entry.operation.is_some() && lane_of(&r.entry) == layer
        });
        if changed_later {
            continue;
        }
        let shown = match layer {
            "schema" => json!(target.schema),
            _ => json!(match target.live {
                Environment::Blue => "blue",
                Environment::Green => "green",
            }),
        };
        assert_eq!(
            shown, value,
            "an_acknowledged_change_survives_any_crash: the latest acknowledged {layer} change (seq {seq}) is not what the target shows"
        );
    }
    // Flags: every flag file follows the store; the latest acknowledged row per flag, unless a
    // later row set that flag again.
    let state = c.db.flag_state();
    for (node, file) in target.flag_files.iter().enumerate() {
        assert_eq!(
            file, &state,
            "an_acknowledged_change_survives_any_crash: node {node}'s flag file is not the store's flag state"
        );
    }
    for r in &c.receipts {
        let Via::Flags(Some(hseq)) = r.via else {
            continue;
        };
        let row = &c.db.flags[usize::try_from(hseq - 1).expect("fits")];
        let later =
            c.db.flags
                .iter()
                .any(|o| o.hseq > hseq && o.flag == row.flag);
        if !later {
            assert_eq!(
                state.get(&row.flag),
                Some(&row.enabled),
                "an_acknowledged_change_survives_any_crash: the acknowledged flags row {hseq} is not the flag's state"
            );
        }
    }
}

/// A kill-switch request sent to a live node while no node holds the lease is answered, in the
/// same step.
fn the_kill_switch_is_answered_with_no_leader(c: &Cluster) {
    let Some(k) = &c.kill_switch else { return };
    if k.live && k.leaderless {
        let Some(body) = &k.answered else {
            panic!(
                "the_kill_switch_is_answered_with_no_leader: {}/{} sent to node {} got no answer while no node held the lease",
                k.src, k.msg_id, k.node
            );
        };
        let value = parse(body);
        assert_eq!(
            value["in_reply_to"],
            json!(k.msg_id),
            "the_kill_switch_is_answered_with_no_leader: {body}"
        );
        assert_eq!(
            c.target().flag_files[k.node],
            c.db.flag_state(),
            "the_kill_switch_is_answered_with_no_leader: node {}'s flag file follows the store before the reply",
            k.node
        );
    }
}

/// Two nodes never believe they lead with the same epoch.
fn one_leader_per_epoch(c: &Cluster) {
    let mut leaders: BTreeMap<u64, usize> = BTreeMap::new();
    for event in &c.events {
        if let Event::Leads { node, epoch } = event {
            if let Some(other) = leaders.insert(*epoch, *node) {
                if other == *node {
                    panic!("one_leader_per_epoch: node {node} took epoch {epoch} twice");
                }
                panic!("one_leader_per_epoch: nodes {other} and {node} both took epoch {epoch}");
            }
        }
    }
    let mut believed: BTreeMap<u64, usize> = BTreeMap::new();
    for (node, n) in c.nodes.iter().enumerate() {
        if let Some(term) = &n.term {
            if let Some(other) = believed.insert(term.epoch, node) {
                panic!(
                    "one_leader_per_epoch: nodes {other} and {node} both believe they lead with epoch {}",
                    term.epoch
                );
            }
        }
    }
}

/// Each retry (same sender, msg_id and request) is answered exactly like its original.
fn a_retry_is_answered_like_its_original(c: &Cluster) {
    let mut first: BTreeMap<(&str, u64, String), &Receipt> = BTreeMap::new();
    for r in &c.receipts {
        if r.dry_run || unjournaled(&r.body) {
            continue;
        }
        let key = (r.src, r.msg_id, r.req.fields().to_string());
        match first.get(&key) {
            Some(original) => assert_eq!(
                original.body, r.body,
                "a_retry_is_answered_like_its_original: {}/{} ({:?}) via {:?} and via {:?}",
                r.src, r.msg_id, r.req, original.via, r.via
            ),
            None => {
                first.insert(key, r);
            }
        }
    }
}

/// Every operation is one history entry: one journal row per (sender, msg_id), however often it
/// was retried or its commit repeated.
fn every_operation_is_one_history_entry(c: &Cluster) {
    let mut seen: BTreeMap<(&str, u64), u64> = BTreeMap::new();
    for (seq, row) in &c.db.journal {
        assert_eq!(
            *seq, row.entry.seq,
            "every_operation_is_one_history_entry: row {seq} holds entry {}",
            row.entry.seq
        );
        if let Some(other) = seen.insert((row.entry.src.as_str(), row.entry.msg_id), *seq) {
            panic!(
                "every_operation_is_one_history_entry: {}/{} has journal rows {other} and {seq}",
                row.entry.src, row.entry.msg_id
            );
        }
    }
    let mut flags: BTreeSet<(&str, u64)> = BTreeSet::new();
    for row in &c.db.flags {
        assert!(
            flags.insert((row.src, row.msg_id)),
            "every_operation_is_one_history_entry: {}/{} has two flags rows",
            row.src,
            row.msg_id
        );
    }
}

/// Once idle, every inbox row is answered, and every request answered from the journal has its
/// row there.
fn every_request_is_answered_once_idle(c: &Cluster) {
    for row in &c.db.inbox {
        let Some(reply) = &row.reply else {
            panic!(
                "every_operation_is_one_history_entry: inbox row {} ({}/{}) is unanswered once idle",
                row.seq, row.src, row.msg_id
            );
        };
        if !row.dry_run && !unjournaled(reply) {
            assert!(
                c.db.row_of(row.src, row.msg_id).is_some(),
                "every_operation_is_one_history_entry: {}/{} was answered {reply} with no journal row",
                row.src,
                row.msg_id
            );
        }
    }
}

/// The store's journal, replayed on a fresh machine, is the leader's state.
fn replay_yields_the_leaders_state(c: &Cluster) {
    let term = c.nodes[0].term.as_ref().expect("node 0 leads");
    let mut rebuilt = Machine::new(c.initial.clone());
    let open = replay::rebuild(&mut rebuilt, c.db.journal.values().map(|r| r.entry.clone()))
        .unwrap_or_else(|e| panic!("replay_yields_same_state: {e}"));
    assert!(
        open.is_empty(),
        "replay_yields_same_state: open intents once idle: {open:?}"
    );
    let machine = term.session.machine();
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
}

// ---------------------------------------------------------------------------------------------
// The generated steps.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Action {
    Send {
        node: usize,
        src: &'static str,
        msg_id: u64,
        req: Req,
        dry_run: bool,
    },
    Tick {
        node: usize,
        renew: bool,
        fail: bool,
    },
    Advance {
        ms: u64,
    },
    Skew {
        node: usize,
        rate: u64,
    },
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
    Pause {
        node: usize,
    },
    /// `acts`: it goes on with what it was doing, on its stale belief, before it renews.
    Resume {
        node: usize,
        acts: bool,
    },
    /// The node's store connection is cut at its next commit (`lose_ack`: that commit reaches
    /// the store, its acknowledgement does not come back).
    Cut {
        node: usize,
        lose_ack: bool,
    },
    /// The node stalls past its lease while the others tick (one may take over), then goes on
    /// with what it was doing, on its stale belief.
    Stall {
        node: usize,
    },
    Heal {
        node: usize,
    },
}

/// What the generator needs to know: which nodes are up, paused, connected; what was sent. And
/// the rate each node's clock starts at.
#[derive(Clone, Debug)]
struct Shape {
    rates: [u64; NODES],
    up: [bool; NODES],
    paused: [bool; NODES],
    connected: [bool; NODES],
    sent: Vec<(&'static str, u64, Req)>,
    next_id: u64,
}

fn schema_or_traffic() -> BoxedStrategy<Req> {
    let env = || select(vec![Env::Blue, Env::Green]);
    prop_oneof![
        5 => (1u64..=4).prop_map(Req::Rollback),
        4 => (1u64..=4).prop_map(Req::Migrate),
        2 => select(vec![BACKUP, BACKUP, BACKUP, "nope"]).prop_map(Req::Restore),
        4 => (env(), env()).prop_map(|(from, to)| Req::Switch(from, to)),
    ]
    .boxed()
}

fn kill_switch() -> BoxedStrategy<Req> {
    prop_oneof![
        3 => select(vec![FLAG, FLAG, FLAG, "ghost"]).prop_map(Req::Disable),
        2 => select(vec![FLAG, FLAG, FLAG, "ghost"]).prop_map(Req::Enable),
    ]
    .boxed()
}

fn request() -> BoxedStrategy<(Req, bool)> {
    prop_oneof![
        4 => (schema_or_traffic(), prop::bool::weighted(0.06)),
        1 => kill_switch().prop_map(|r| (r, false)),
    ]
    .boxed()
}

fn nodes_where(flags: [bool; NODES]) -> Vec<usize> {
    (0..NODES).filter(|n| flags[*n]).collect()
}

struct Reference;

impl ReferenceStateMachine for Reference {
    type State = Shape;
    type Transition = Action;

    fn init_state() -> BoxedStrategy<Shape> {
        let rate = || select(RATES.to_vec());
        (rate(), rate(), rate())
            .prop_map(|(a, b, c)| Shape {
                rates: [a, b, c],
                up: [true; NODES],
                paused: [false; NODES],
                connected: [true; NODES],
                sent: Vec::new(),
                next_id: 1,
            })
            .boxed()
    }

    fn transitions(state: &Shape) -> BoxedStrategy<Action> {
        let fresh = state.next_id;
        let node = || 0..NODES;
        let mut options: Vec<(u32, BoxedStrategy<Action>)> = vec![
            (
                14,
                (node(), select(SENDERS.to_vec()), request())
                    .prop_map(move |(node, src, (req, dry_run))| Action::Send {
                        node,
                        src,
                        msg_id: fresh,
                        req,
                        dry_run,
                    })
                    .boxed(),
            ),
            (
                26,
                (
                    node(),
                    prop::bool::weighted(0.75),
                    prop::bool::weighted(0.06),
                )
                    .prop_map(|(node, renew, fail)| Action::Tick { node, renew, fail })
                    .boxed(),
            ),
            (
                9,
                select(vec![100u64, 300, 600, 1_200])
                    .prop_map(|ms| Action::Advance { ms })
                    .boxed(),
            ),
            (
                1,
                (node(), select(RATES.to_vec()))
                    .prop_map(|(node, rate)| Action::Skew { node, rate })
                    .boxed(),
            ),
        ];
        if !state.sent.is_empty() {
            // A retry of an earlier request, to any node.
            options.push((
                6,
                (node(), select(state.sent.clone()))
                    .prop_map(|(node, (src, msg_id, req))| Action::Send {
                        node,
                        src,
                        msg_id,
                        req,
                        dry_run: false,
                    })
                    .boxed(),
            ));
            // The same msg_id for another request of the same kind.
            options.push((
                1,
                (
                    node(),
                    select(state.sent.clone()),
                    schema_or_traffic(),
                    kill_switch(),
                )
                    .prop_map(|(node, (src, msg_id, earlier), other, flag)| Action::Send {
                        node,
                        src,
                        msg_id,
                        req: if earlier.is_flag() { flag } else { other },
                        dry_run: false,
                    })
                    .boxed(),
            ));
        }
        let up = nodes_where(state.up);
        let down: Vec<usize> = (0..NODES).filter(|n| !state.up[*n]).collect();
        let running: Vec<usize> = (0..NODES)
            .filter(|n| state.up[*n] && !state.paused[*n])
            .collect();
        let paused = nodes_where(state.paused);
        let connected: Vec<usize> = (0..NODES)
            .filter(|n| state.up[*n] && state.connected[*n])
            .collect();
        let cut: Vec<usize> = (0..NODES)
            .filter(|n| state.up[*n] && !state.connected[*n])
            .collect();
        if !up.is_empty() {
            options.push((
                2,
                select(up).prop_map(|node| Action::Crash { node }).boxed(),
            ));
        }
        if !down.is_empty() {
            options.push((
                4,
                select(down)
                    .prop_map(|node| Action::Restart { node })
                    .boxed(),
            ));
        }
        if !running.is_empty() {
            options.push((
                3,
                select(running.clone())
                    .prop_map(|node| Action::Pause { node })
                    .boxed(),
            ));
        }
        if !running.is_empty() {
            options.push((
                3,
                select(running)
                    .prop_map(|node| Action::Stall { node })
                    .boxed(),
            ));
        }
        if !paused.is_empty() {
            options.push((
                4,
                (select(paused), prop::bool::weighted(0.7))
                    .prop_map(|(node, acts)| Action::Resume { node, acts })
                    .boxed(),
            ));
        }
        if !connected.is_empty() {
            options.push((
                3,
                (select(connected), any::<bool>())
                    .prop_map(|(node, lose_ack)| Action::Cut { node, lose_ack })
                    .boxed(),
            ));
        }
        if !cut.is_empty() {
            options.push((
                4,
                select(cut).prop_map(|node| Action::Heal { node }).boxed(),
            ));
        }
        Union::new_weighted(options).boxed()
    }

    fn preconditions(state: &Shape, action: &Action) -> bool {
        match *action {
            Action::Crash { node } => state.up[node],
            Action::Restart { node } => !state.up[node],
            Action::Pause { node } | Action::Stall { node } => {
                state.up[node] && !state.paused[node]
            }
            Action::Resume { node, .. } => state.paused[node],
            Action::Cut { node, .. } => state.up[node] && state.connected[node],
            Action::Heal { node } => state.up[node] && !state.connected[node],
            Action::Send { .. } | Action::Tick { .. } | Action::Advance { .. } => true,
            Action::Skew { .. } => true,
        }
    }

    fn apply(mut state: Shape, action: &Action) -> Shape {
        state.next_id += 1;
        match action {
            Action::Send {
                src,
                msg_id,
                req,
                dry_run: false,
                ..
            } => {
                if !state
                    .sent
                    .iter()
                    .any(|(s, m, r)| s == src && m == msg_id && r == req)
                {
                    state.sent.push((src, *msg_id, req.clone()));
                    if state.sent.len() > 12 {
                        state.sent.remove(0);
                    }
                }
            }
            Action::Crash { node } => {
                state.up[*node] = false;
                state.paused[*node] = false;
            }
            Action::Restart { node } => {
                state.up[*node] = true;
                state.connected[*node] = true;
            }
            Action::Pause { node } => state.paused[*node] = true,
            Action::Resume { node, .. } => state.paused[*node] = false,
            Action::Cut { node, .. } => state.connected[*node] = false,
            Action::Heal { node } => state.connected[*node] = true,
            Action::Send { .. }
            | Action::Tick { .. }
            | Action::Advance { .. }
            | Action::Skew { .. }
            | Action::Stall { .. } => {}
        }
        state
    }
}

struct ClusterTest;

impl StateMachineTest for ClusterTest {
    type SystemUnderTest = Cluster;
    type Reference = Reference;

    fn init_test(shape: &Shape) -> Cluster {
        let mut cluster = Cluster::new();
        for (node, rate) in cluster.nodes.iter_mut().zip(shape.rates) {
            node.rate = rate;
        }
        cluster
    }

    fn apply(mut cluster: Cluster, _shape: &Shape, action: Action) -> Cluster {
        cluster.kill_switch = None;
        match action {
            Action::Send {
                node,
                src,
                msg_id,
                req,
                dry_run,
            } => cluster.send(node, src, msg_id, req, dry_run),
            Action::Tick { node, renew, fail } => cluster.tick(node, renew, fail),
            Action::Advance { ms } => cluster.advance(ms),
            Action::Skew { node, rate } => cluster.nodes[node].rate = rate,
            Action::Crash { node } => cluster.crash(node),
            Action::Restart { node } => cluster.restart(node),
            Action::Pause { node } => cluster.nodes[node].paused = true,
            Action::Resume { node, acts } => {
                cluster.nodes[node].paused = false;
                if acts {
                    cluster.tick(node, false, false);
                }
            }
            Action::Cut { node, lose_ack } => cluster.nodes[node].cut = Some(lose_ack),
            Action::Heal { node } => {
                let n = &mut cluster.nodes[node];
                n.connected = true;
                n.cut = None;
                n.lose_ack = false;
            }
            Action::Stall { node } => cluster.stall(node),
        }
        cluster
    }

    fn check_invariants(cluster: &Cluster, _shape: &Shape) {
        cluster.check_step();
    }

    fn teardown(mut cluster: Cluster, _shape: Shape) {
        cluster.quiesce();
        cluster.check_quiescent();
        let mut total = COVERAGE.lock().expect("the coverage lock");
        let c = cluster.coverage;
        total.takeovers += c.takeovers;
        total.reconciled += c.reconciled;
        total.stale_commits_refused += c.stale_commits_refused;
        total.target_writes_refused += c.target_writes_refused;
        total.lost_acks += c.lost_acks;
        total.retried_commits += c.retried_commits;
        total.leaderless_kill_switches += c.leaderless_kill_switches;
        total.acknowledged += c.acknowledged;
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
            "proptest-regressions/test_model_cluster.txt",
        ))),
        ..ProptestConfig::default()
    }
}

/// The generated cases, then how often they reached the situations the properties are about:
/// a model whose cases never reach a stale leader proves nothing about one.
#[test]
fn the_cluster_keeps_its_properties() {
    let config = config();
    let mut runner = TestRunner::new(config.clone());
    let result = runner.run(
        &Reference::sequential_strategy(1..MAX_STEPS),
        |(initial, transitions, seen)| {
            ClusterTest::test_sequential(config.clone(), initial, transitions, seen);
            Ok(())
        },
    );
    if let Err(e) = result {
        panic!("{e}\n{runner}");
    }
    let coverage = *COVERAGE.lock().expect("the coverage lock");
    eprintln!(
        "cluster model coverage over {} cases: {coverage:?}",
        config.cases
    );
    if config.cases >= CASES {
        let reached = [
            ("takeovers", coverage.takeovers),
            ("reconciled interruptions", coverage.reconciled),
            ("stale commits refused", coverage.stale_commits_refused),
            ("target writes refused", coverage.target_writes_refused),
            ("lost acknowledgements", coverage.lost_acks),
            ("retried commits", coverage.retried_commits),
            (
                "leaderless kill switches",
                coverage.leaderless_kill_switches,
            ),
            ("acknowledged replies", coverage.acknowledged),
        ];
        for (what, count) in reached {
            assert!(
                count > 0,
                "the cases never reached {what}: the generator must reach it ({coverage:?})"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-written sequences: the situations the generated cases must reach, each once for sure.
// ---------------------------------------------------------------------------------------------

/// A leader pauses in the middle of a rollback; its successor takes over, fences the target and
/// reconciles; the old leader resumes on its stale belief: its next down() is refused by the
/// target's fence, its commit by the store's.
#[test]
fn a_paused_leader_is_stopped_by_both_fences() {
    let mut c = Cluster::new();
    c.tick(0, true, false);
    c.send(0, "alice", 1, Req::Rollback(1), false);
    c.tick(0, true, false); // fed, decided, intent committed
    c.tick(0, true, false); // begun: the down() of 3 in the works
    c.tick(0, true, false); // the down() of 3 commits in the target
    c.check_step();
    assert_eq!(c.target().schema, 2);
    c.nodes[0].paused = true;
    c.advance(1_200);
    c.send(2, "bob", 1, Req::Migrate(3), false);
    c.tick(1, true, false); // node 1 takes over: fence 2, the rollback is interrupted
    c.check_step();
    assert_eq!(c.target().fence, 2);
    c.nodes[0].paused = false;
    c.tick(0, false, false); // works on the down() of 2
    c.check_step();
    c.tick(0, false, false); // commits it
    c.check_step();
    assert_eq!(c.coverage.target_writes_refused, 1, "{:?}", c.coverage);
    assert_eq!(c.coverage.stale_commits_refused, 1, "{:?}", c.coverage);
    assert!(c.nodes[0].term.is_none(), "the old leader learnt it lost");
    assert_eq!(c.target().schema, 2, "the stale down() of 2 did not run");
    c.quiesce();
    c.check_quiescent();
}

/// A commit reaches the store but its acknowledgement is lost; the leader retries it with the
/// same statements once its connection is back: one journal row, one answer.
#[test]
fn a_lost_acknowledgement_is_retried_without_a_second_entry() {
    let mut c = Cluster::new();
    c.tick(0, true, false);
    c.nodes[0].cut = Some(true);
    c.send(1, "alice", 1, Req::Switch(Env::Green, Env::Blue), false);
    c.tick(0, true, false); // fed, decided; the commit reaches the store, its ack is lost
    c.check_step();
    assert_eq!(c.coverage.lost_acks, 1, "{:?}", c.coverage);
    assert_eq!(c.db.journal.len(), 1, "the intent is in the store");
    assert!(c.nodes[0].term.as_ref().is_some_and(|t| t.batch.is_some()));
    assert_eq!(c.target().live, Environment::Green, "nothing started");
    c.nodes[0].connected = true;
    c.tick(0, true, false); // the same statements again; then the switch, and its outcome
    c.tick(1, false, false); // node 1 hands the reply to its client
    c.check_step();
    assert_eq!(
        c.db.journal.len(),
        1,
        "every_operation_is_one_history_entry"
    );
    assert_eq!(c.target().live, Environment::Blue);
    let bodies: Vec<&str> = c.receipts.iter().map(|r| r.body.as_str()).collect();
    assert_eq!(
        bodies,
        [
            r#"{"type":"traffic_switched","in_reply_to":1,"current_environment":"blue","downtime_seconds":0}"#
        ]
    );
    c.quiesce();
    c.check_quiescent();
}

/// A leader crashes half-way through a rollback; its successor reconciles the open intent with
/// what the target shows and answers the retry (sent to another node) with the interruption,
/// never running the rollback again.
#[test]
fn a_crashed_leaders_operation_is_answered_as_interrupted_not_run_again() {
    let mut c = Cluster::new();
    c.tick(0, true, false);
    c.send(0, "alice", 1, Req::Rollback(2), false);
    for _ in 0..3 {
        c.tick(0, true, false); // intent committed, begun, the down() of 3 committed
    }
    c.check_step();
    assert_eq!(c.target().schema, 2);
    c.crash(0);
    c.advance(1_200);
    c.send(1, "alice", 1, Req::Rollback(2), false);
    c.tick(1, true, false); // takes over, reconciles, answers the retry from its memory
    c.tick(1, true, false);
    c.check_step();
    assert_eq!(c.coverage.reconciled, 1, "{:?}", c.coverage);
    let answer = &c.receipts.last().expect("the retry is answered").body;
    assert_eq!(code(answer), Some(13), "{answer}");
    assert!(answer.contains("was interrupted by a restart"), "{answer}");
    assert!(
        answer.contains(r#"found {\"schema_version\":2}"#),
        "{answer}"
    );
    assert_eq!(c.target().schema, 2, "the rollback was not run again");
    c.quiesce();
    c.check_quiescent();
    assert_eq!(c.target().schema, 2);
}

/// No node ever takes the lease: a kill switch sent to any live node is answered at once, its
/// flag file follows the store before the reply, a retry to another node gets the same body,
/// and every node's file follows once it polls.
#[test]
fn a_kill_switch_needs_no_leader() {
    let mut c = Cluster::new();
    c.send(2, "alice", 1, Req::Disable(FLAG), false);
    c.check_step();
    let disabled = r#"{"type":"feature_disabled","in_reply_to":1,"feature":"new_checkout","rolled_back_instant":true}"#;
    assert_eq!(c.receipts[0].body, disabled);
    assert!(!c.target().flag_files[2][FLAG]);
    assert!(c.target().flag_files[0][FLAG], "node 0 has not polled yet");
    c.send(1, "alice", 1, Req::Disable(FLAG), false);
    c.send(0, "bob", 1, Req::Enable("ghost"), false);
    c.check_step();
    assert_eq!(c.receipts[1].body, disabled, "a retry gets the row's reply");
    assert_eq!(
        code(&c.receipts[2].body),
        Some(20),
        "an unknown flag is refused"
    );
    assert_eq!(
        c.db.flags.len(),
        1,
        "one row per kill switch, none for a refusal"
    );
    c.tick(0, false, false);
    assert!(!c.target().flag_files[0][FLAG], "node 0 follows the store");
    assert!(c.db.leaderless() && c.events.is_empty(), "no node ever led");
}
