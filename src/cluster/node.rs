//! One node of a cluster: its front (every stdin line, answered here or forwarded through the
//! store's inbox), the kill switch (applied here, serialised by the store), and, while it holds
//! the lease, the leader's term: the machine rebuilt from the store, reconciled, fed the inbox.
//!
//! The owner thread does everything but keeping the lease (the [`Keeper`]'s thread), reading
//! stdin and performing slow effects (one worker per lane, as in the single node). It waits at
//! most [`TICK`] for input, so an answer written to the inbox by another node's leader reaches
//! its client within a tick of the commit.

use super::lease::{claim, Deadline, Keeper, Timing};
use super::store::{self, Db, DbError, FlagChange, Inboxed, PgJournal};
use crate::core::effects::{Effect, Found, Lane, Operation, Plan};
use crate::core::machine::Machine;
use crate::core::transitions::Request;
use crate::exec::connect::connect;
use crate::exec::estate::{Estate, EXAMPLE_ESTATE};
use crate::exec::LaneExecutor;
use crate::node::{config, Failure};
use crate::protocol::encode::{body_string, write_reply_raw};
use crate::protocol::replies::HistoryOk;
use crate::protocol::Refusal;
use crate::runtime::flags::FlagsView;
use crate::runtime::serve::{spawn_worker, Audience, Call, Event, Job, Link};
use crate::runtime::session::{Session, Unanswerable, Waiter, DEFAULT_NODE_ID};
use crate::service::ofrep::OfrepServer;
use crate::store::{replay, Entry, MemoryStore};
use crate::wire::lines::{LineSplitter, Piece};
use crate::wire::MAX_LINE_BYTES;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest the owner thread waits for input before it looks at the store again.
const TICK: Duration = Duration::from_millis(10);
/// How often the flags in the store are looked at (a change made on another node reaches this
/// node's flag file and OFREP within this).
const FLAGS_EVERY: Duration = Duration::from_millis(100);
/// The least time between two statuses told to the event streams.
const STATUS_EVERY: Duration = Duration::from_millis(100);
/// How long a stopping node waits for its forwarded requests and running operations.
const STOP_WITHIN: Duration = Duration::from_secs(7);
/// How far below the highest history number told the event streams' look goes.
const LOOK_BACK: u64 = 256;
/// How often a leader looks at the inbox for requests other nodes accepted.
const INBOX_EVERY: Duration = Duration::from_millis(10);

/// How to run a node of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The store: `postgres://USER@/DB?host=SOCKETDIR`.
    pub store: String,
    /// This node's id.
    pub node_id: String,
    /// The estate file (the built-in example without one).
    pub estate: Option<PathBuf>,
    /// Simulated effects take `pace` × their modelled seconds.
    pub pace: f64,
    /// Where to serve OFREP, if anywhere.
    pub ofrep: Option<SocketAddr>,
    /// Where to serve the HTTP service, if anywhere.
    pub listen: Option<SocketAddr>,
}

/// The store URL without its password, for messages.
fn shown(url: &str) -> String {
    crate::exec::database::redact(url)
}

/// Runs a node of the cluster on `options.store` until its input ends and its forwarded
/// requests are answered.
///
/// # Errors
/// A refused estate or node id, an unreachable store at start, or a failure while serving.
pub fn run(options: ClusterOptions) -> Result<(), Failure> {
    if options.node_id.trim().is_empty() || options.node_id.contains('\0') {
        return Err(config(
            "--node-id needs a name, such as n1: each node of a store has its own",
        ));
    }
    let (text, origin, base) = match &options.estate {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| config(format!("cannot read estate file {}: {e}", path.display())))?,
            path.display().to_string(),
            crate::node::estate_dir(path),
        ),
        None => (
            EXAMPLE_ESTATE.to_owned(),
            "the built-in example estate".to_owned(),
            std::env::current_dir().unwrap_or_default(),
        ),
    };
    let estate = Estate::from_toml(&text, &origin).map_err(config)?;
    if estate.ladder.is_some() {
        return Err(config(format!(
            "{origin}: [ladder] runs on a single node for now (--state-dir, or in memory), not on a cluster store; remove [ladder] or run without --store"
        )));
    }
    let listening = crate::node::listening(options.listen, &estate, &origin)?;
    let url = &options.store;
    let mut db = Db::connect(url)
        .map_err(|e| config(format!("cannot reach the store {}: {e}", shown(url))))?;
    starting(&mut db, store::prepare).map_err(|e| config(format!("{}: {e}", shown(url))))?;
    let stored = starting(&mut db, |db| store::adopt(db, "estate", &text))
        .map_err(|e| config(e.to_string()))?;
    let first = format!("{origin}, given to node {}", options.node_id);
    let stored_origin = starting(&mut db, |db| store::adopt(db, "estate_origin", &first))
        .map_err(|e| config(e.to_string()))?;
    if stored != text {
        return Err(config(format!(
            "the store {} holds another estate ({stored_origin}) than this node's ({origin}); every node of one store runs the same estate",
            shown(url)
        )));
    }
    let timing = Timing {
        lease: Duration::from_secs(estate.cluster.lease_seconds),
        renew: Duration::from_secs(estate.cluster.renew_seconds),
    };
    let incarnation = crate::cluster::lease::incarnation();
    starting(&mut db, |db| {
        claim(db, &options.node_id, &incarnation, timing)
    })
    .map_err(config)?;
    let (mut executors, found) = connect(&estate, &base, options.pace).map_err(config)?;
    let flags_executor = executors.take(Lane::Flags);
    let mut machine = Machine::new(estate.state.clone());
    machine.observe(&found);
    let view = Session::new(machine, executors, MemoryStore::new());
    let keeper_db = reconnect(url)
        .map_err(|e| config(format!("cannot reach the store {}: {e}", shown(url))))?;
    let keeper = Keeper::start(keeper_db, options.node_id.clone(), incarnation, timing);
    let flags_view = FlagsView::new(view.machine().state().flags.clone());
    let _ofrep = match options.ofrep {
        Some(addr) => Some(OfrepServer::start(addr, flags_view.clone()).map_err(|e| {
            config(format!(
                "cannot serve OFREP at {addr}: {e}; give --ofrep a free address such as 127.0.0.1:8016"
            ))
        })?),
        None => None,
    };
    eprintln!(
        "rollback-node: {} joined the cluster on {}",
        options.node_id,
        shown(url)
    );
    let mut node = Node {
        me: options.node_id.clone(),
        url: url.clone(),
        db,
        estate,
        base,
        pace: options.pace,
        view,
        flags_executor,
        flags_view,
        store_flags: None,
        flags_looked: None,
        waiting: HashMap::new(),
        flag_batch: Vec::new(),
        keeper,
        term: None,
        taking_over: None,
        epoch_seen: None,
    };
    let served = match listening {
        None => node.serve(io::stdin(), &mut io::stdout().lock(), None),
        Some(listening) => {
            let (service, link) = listening.start(node.flags_view.clone())?;
            let served = node.serve(io::stdin(), &mut io::stdout().lock(), Some(link));
            service.stop();
            served
        }
    };
    let Node { keeper, .. } = node;
    keeper.stop();
    served
}

/// Where an HTTP caller's reply body goes.
type Answer = tokio::sync::oneshot::Sender<Result<String, Unanswerable>>;

/// Where one reply goes: a stdout line, or an HTTP caller.
enum To {
    Line { from: String, to: String },
    Http(Answer),
}

impl To {
    fn send(self, out: &mut Vec<u8>, body: &str) {
        match self {
            To::Line { from, to } => write_reply_raw(out, &from, &to, body.as_bytes()),
            To::Http(answer) => {
                let _ = answer.send(Ok(body.to_owned()));
            }
        }
    }
}

/// A waiter handing a session's reply to an HTTP caller.
fn waiter(answer: Answer) -> Waiter {
    Waiter::new(move |body| {
        let _ = answer.send(body);
    })
}

/// What a takeover needs, apart from the node.
struct TakeOver {
    me: String,
    url: String,
    estate: Estate,
    base: PathBuf,
    pace: f64,
    flags: Option<BTreeMap<String, bool>>,
    deadline: Arc<Deadline>,
}

impl TakeOver {
    /// Takes over at `epoch`: fence the target, rebuild from the store, reconcile what the last
    /// leader left open. The unanswered requests are fed again by the term's first round.
    fn run(self, epoch: u64) -> Result<Term, String> {
        let deadline = self.deadline;
        super::advance_fences(&self.estate, &self.base, epoch)?;
        let mut db = Db::connect(&self.url)?;
        let (snapshot, entries) = store::load(&mut db)?;
        let open_entries: Vec<Entry> = entries
            .iter()
            .filter(|e| e.operation.is_some() && e.outcome.is_none())
            .cloned()
            .collect();
        let (executors, found) =
            crate::exec::connect::connect_fenced(&self.estate, &self.base, self.pace, Some(epoch))?;
        let mut machine = match snapshot {
            Some(snapshot) => Machine::from_snapshot(snapshot),
            None => Machine::new(self.estate.state.clone()),
        };
        machine.observe(&Found {
            catalogue: found.catalogue.clone(),
            ..Found::default()
        });
        let open = replay::rebuild(&mut machine, entries).map_err(|e| e.to_string())?;
        machine.observe(&found);
        if let Some(flags) = self.flags {
            machine.observe(&Found {
                flags: Some(flags),
                ..Found::default()
            });
        }
        let journal = PgJournal::new(db, &self.me, epoch, open_entries, deadline.clone());
        let mut session = Session::new(machine, executors, journal);
        for note in session.reconcile(open) {
            eprintln!("rollback-node: {note}");
        }
        session.commit().map_err(|e| e.to_string())?;
        let (sender, events) = mpsc::sync_channel::<Event>(4096);
        let mut workers: [Option<Sender<Job>>; 3] = Default::default();
        for (lane, executor) in session.take_slow_executors() {
            workers[lane.index()] = Some(spawn_worker(lane, executor, sender.clone()));
        }
        let status = session.status_body();
        session
            .store_mut()
            .answer(&[], &status)
            .map_err(|e| e.to_string())?;
        Ok(Term {
            epoch,
            session,
            deadline,
            workers,
            events,
            fed: HashSet::new(),
            looked: None,
            answers: Arc::new(Mutex::new(Vec::new())),
            status,
        })
    }
}

/// What the event streams were last told.
struct Publishing {
    audience: Box<dyn Audience>,
    status: String,
    /// The highest history number told.
    seq: u64,
    /// The numbers told within [`LOOK_BACK`] of it.
    told: HashSet<u64>,
    at: Option<Instant>,
}

/// The leader's term: the machine, its journal on the store, its lane workers.
struct Term {
    epoch: u64,
    session: Session<PgJournal>,
    deadline: Arc<Deadline>,
    workers: [Option<Sender<Job>>; 3],
    events: Receiver<Event>,
    /// The inbox rows fed to the machine in this term and not yet answered.
    fed: HashSet<u64>,
    looked: Option<Instant>,
    /// Replies to inbox rows, handed over by the waiters after a commit.
    answers: Arc<Mutex<Vec<(u64, String)>>>,
    status: String,
}

struct Node {
    me: String,
    url: String,
    db: Db,
    estate: Estate,
    base: PathBuf,
    pace: f64,
    /// The node's own session: init, look-ups, dry runs of flags, anything refused.
    view: Session<MemoryStore>,
    flags_executor: Option<LaneExecutor>,
    flags_view: FlagsView,
    /// The flags as the store holds them, once read.
    store_flags: Option<BTreeMap<String, bool>>,
    flags_looked: Option<Instant>,
    waiting: HashMap<u64, To>,
    /// Kill-switch changes decided and not yet recorded, in the order they came.
    flag_batch: Vec<(To, Result<FlagChange, String>)>,
    keeper: Keeper,
    term: Option<Term>,
    /// A takeover under way on its own thread: its epoch and where its term comes.
    taking_over: Option<(u64, Receiver<Result<Term, String>>)>,
    epoch_seen: Option<u64>,
}

impl Node {
    fn serve(
        &mut self,
        input: impl Read + Send + 'static,
        output: &mut impl Write,
        link: Option<Link>,
    ) -> Result<(), Failure> {
        let (inbox, events, audience) = match link {
            Some(link) => {
                let (inbox, events, audience) = link.into_parts();
                (inbox, events, Some(audience))
            }
            None => {
                let (events, inbox) = mpsc::sync_channel::<Event>(64);
                (inbox, events, None)
            }
        };
        spawn_reader(input, events);
        let linked = audience.is_some();
        let mut publishing = audience.map(|audience| Publishing {
            audience,
            status: String::new(),
            seq: self.last_history_seq(),
            told: HashSet::new(),
            at: None,
        });
        let mut splitter = LineSplitter::new(MAX_LINE_BYTES);
        let mut out = Vec::new();
        let mut ended = false;
        let mut stopping: Option<Instant> = None;
        self.sync_flags();
        loop {
            match inbox.recv_timeout(TICK) {
                Ok(Event::Input(chunk)) => {
                    splitter.push(&chunk, |piece| self.handle(piece, &mut out));
                    self.flush_flags(&mut out);
                }
                Ok(Event::End) | Err(RecvTimeoutError::Disconnected) => {
                    if !ended {
                        splitter.finish(|piece| self.handle(piece, &mut out));
                        self.flush_flags(&mut out);
                    }
                    ended = true;
                }
                Ok(Event::ReadFailed(e)) => {
                    return Err(Failure(1, format!("reading stdin failed: {e}")));
                }
                Ok(Event::Call(call)) => self.call(call, &mut out, &mut stopping),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            }
            self.step(&mut out);
            if !out.is_empty() {
                let written = output.write_all(&out).and_then(|()| output.flush());
                match written {
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
                    other => other.map_err(|e| Failure(1, e.to_string()))?,
                }
                out.clear();
            }
            if let Some(publishing) = publishing.as_mut() {
                self.publish(publishing);
            }
            if self.keeper.view().usurped {
                return Err(Failure(
                    1,
                    format!(
                        "another node took over the id {} (this one was stopped longer than a lease); stopping",
                        self.me
                    ),
                ));
            }
            let busy = self
                .term
                .as_ref()
                .is_some_and(|t| !t.session.machine().is_idle());
            let done = self.waiting.is_empty() && !busy;
            match stopping {
                Some(since) if done || since.elapsed() >= STOP_WITHIN => return Ok(()),
                None if ended && !linked && done => return Ok(()),
                _ => {}
            }
        }
    }

    /// A call of the HTTP service.
    fn call(&mut self, call: Call, out: &mut Vec<u8>, stopping: &mut Option<Instant>) {
        match call {
            Call::Message {
                sender,
                body,
                reply,
            } if stopping.is_none() => self.message(&sender, &body, reply, out),
            Call::Message { .. } => {}
            Call::Status(reply) => {
                let _ = reply.send(self.status(None));
            }
            Call::History {
                limit,
                after,
                reply,
            } => {
                let _ = reply.send(self.history(limit, after, None));
            }
            Call::After {
                after,
                limit,
                reply,
            } => {
                let entries =
                    store::history(&mut self.db, Some(after), limit).map_err(|e| e.to_string());
                let _ = reply.send(entries);
            }
            Call::Backups(reply) => self.view.backups_body(Waiter::new(move |answer| {
                let _ = reply.send(answer.unwrap_or_else(|why| why.0));
            })),
            Call::Stop => {
                stopping.get_or_insert_with(Instant::now);
            }
        }
    }

    /// The sequence number of the cluster's last history entry (0 before any).
    fn last_history_seq(&mut self) -> u64 {
        store::history(&mut self.db, None, 1)
            .ok()
            .and_then(|entries| entries.last().map(|e| e.seq))
            .unwrap_or(0)
    }

    /// Tells the event streams, at most ten times a second, the status when it changed and the
    /// history entries the cluster committed since the last time.
    fn publish(&mut self, publishing: &mut Publishing) {
        if publishing.at.is_some_and(|at| at.elapsed() < STATUS_EVERY) {
            return;
        }
        publishing.at = Some(Instant::now());
        let status = self.status(None);
        if status != publishing.status {
            publishing.audience.status(status.clone());
            publishing.status = status;
        }
        // A history number is taken before its commit, so an entry can appear below one
        // already told: look a little way back, and tell only what was not told.
        let from = publishing.seq.saturating_sub(LOOK_BACK);
        if let Ok(mut entries) = store::history(&mut self.db, Some(from), 1_000) {
            entries.retain(|e| !publishing.told.contains(&e.seq));
            if let Some(last) = entries.iter().map(|e| e.seq).max() {
                publishing.seq = publishing.seq.max(last);
                publishing.told.extend(entries.iter().map(|e| e.seq));
                let floor = publishing.seq.saturating_sub(LOOK_BACK);
                publishing.told.retain(|&seq| seq > floor);
                publishing.audience.ended(entries);
            }
        }
    }

    /// Everything but input: the term begins or ends with the lease, the leader feeds the
    /// inbox and commits, forwarded requests get their replies, flags follow the store.
    fn step(&mut self, out: &mut Vec<u8>) {
        let view = self.keeper.view();
        self.epoch_seen = self.epoch_seen.max(view.epoch);
        self.took_over(view.leading);
        match (&self.term, view.leading) {
            (None, Some(epoch)) => self.begin_term(epoch),
            (Some(term), leading) if leading != Some(term.epoch) || !term.deadline.holds() => {
                self.end_term("its lease ended")
            }
            _ => {}
        }
        if self.term.is_some() {
            if let Err(why) = self.lead() {
                self.end_term(&why);
            }
        }
        self.collect(out);
        if self
            .flags_looked
            .is_none_or(|at| at.elapsed() >= FLAGS_EVERY)
        {
            self.sync_flags();
        }
    }

    fn handle(&mut self, piece: Piece<'_>, out: &mut Vec<u8>) {
        let line = match piece {
            Piece::Line(line) => line,
            Piece::TooLong(bytes) => {
                let d = self.view.too_long(bytes);
                eprintln!("rollback-node: {d}");
                return;
            }
        };
        let text = std::str::from_utf8(line).unwrap_or("");
        if !self.route(text, None, out) {
            self.flush_flags(out);
            if let Some(d) = self.view.handle_line(line, out) {
                eprintln!("rollback-node: {d}");
            }
        }
    }

    /// A request body from the HTTP service, from `sender`: answered as its stdin line would be.
    fn message(&mut self, sender: &str, body: &[u8], reply: Answer, out: &mut Vec<u8>) {
        let text = std::str::from_utf8(body).unwrap_or("");
        let line = format!(
            "{{\"src\":{},\"dest\":{},\"body\":{text}}}",
            serde_json::to_string(sender).unwrap_or_default(),
            serde_json::to_string(&self.me).unwrap_or_default(),
        );
        if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
            // Not JSON: the view says so, as a single node would.
            self.view.handle_message(sender, body, waiter(reply), out);
            return;
        }
        if let Err(reply) = self.route_http(&line, reply, out) {
            self.view.handle_message(sender, body, waiter(reply), out);
        }
        self.flush_flags(out);
    }

    fn route_http(&mut self, line: &str, reply: Answer, out: &mut Vec<u8>) -> Result<(), Answer> {
        let mut slot = Some(reply);
        let routed = self.route(line, Some(&mut slot), out);
        match slot {
            Some(reply) if !routed => Err(reply),
            _ => Ok(()),
        }
    }

    /// Answers or forwards one request line that this node routes itself: schema and traffic
    /// through the inbox, the kill switch, status and history. Returns false (leaving `http`
    /// as it was) for anything the view session answers.
    fn route(&mut self, text: &str, http: Option<&mut Option<Answer>>, out: &mut Vec<u8>) -> bool {
        let Ok(incoming) = crate::wire::decode(text) else {
            return false;
        };
        let (Some(src), Some(msg_id), Ok(request)) =
            (incoming.src.as_deref(), incoming.msg_id, &incoming.request)
        else {
            return false;
        };
        if src.contains('\0') {
            return false;
        }
        let routed = matches!(request.lane(), Some(Lane::Schema | Lane::Traffic))
            || (matches!(request.lane(), Some(Lane::Flags)) && !incoming.dry_run)
            || matches!(request, Request::Status {} | Request::History { .. });
        if !routed {
            return false;
        }
        let to = match http.and_then(Option::take) {
            Some(answer) => To::Http(answer),
            None => To::Line {
                from: self
                    .view
                    .node_id()
                    .or(incoming.dest.as_deref())
                    .unwrap_or(DEFAULT_NODE_ID)
                    .to_owned(),
                to: src.to_owned(),
            },
        };
        let (src, request) = (src.to_owned(), request.clone());
        match &request {
            Request::DisableFeature { feature } | Request::EnableFeature { feature } => {
                let enabled = matches!(request, Request::EnableFeature { .. });
                let change = self.flag_change(&request, &src, msg_id, feature, enabled);
                self.flag_batch.push((to, change));
                return true;
            }
            _ => self.flush_flags(out),
        }
        match &request {
            Request::Status {} => {
                let body = self.status(Some(msg_id));
                to.send(out, &body);
            }
            Request::History { limit, after } => {
                let body = self.history(*limit, *after, Some(msg_id));
                to.send(out, &body);
            }
            _ => self.forward(text, &src, msg_id, to, out),
        }
        true
    }

    /// Puts a schema or traffic request into the inbox; its reply comes when the leader wrote
    /// it.
    fn forward(&mut self, line: &str, src: &str, msg_id: u64, to: To, out: &mut Vec<u8>) {
        let Some(body) = body_of(line) else {
            return;
        };
        match store::enqueue(&mut self.db, &self.me, src, msg_id, &body) {
            Ok(seq) => {
                self.waiting.insert(seq, to);
            }
            Err(e) => {
                let refusal = Refusal::TemporarilyUnavailable(format!(
                    "{e}; the request may or may not have been recorded: retrying with the same msg_id is safe (a retry joins the original)"
                ));
                to.send(out, &body_string(Some(msg_id), &refusal));
            }
        }
    }

    /// Sends the replies the leader has written for forwarded requests.
    fn collect(&mut self, out: &mut Vec<u8>) {
        if self.waiting.is_empty() {
            return;
        }
        let seqs: Vec<u64> = self.waiting.keys().copied().collect();
        let Ok(replies) = store::replies(&mut self.db, &seqs) else {
            return;
        };
        for (seq, reply) in replies {
            if let Some(to) = self.waiting.remove(&seq) {
                to.send(out, &reply);
            }
        }
    }

    /// The kill switch, decided here: the change to record, or the refusal's body. Changes are
    /// recorded in batches ([`Node::flush_flags`]): the requests of one input chunk share one
    /// statement.
    fn flag_change(
        &mut self,
        request: &Request,
        src: &str,
        msg_id: u64,
        feature: &str,
        enabled: bool,
    ) -> Result<FlagChange, String> {
        if let Err(refusal) = self.view.machine().check(src, request) {
            return Err(body_string(Some(msg_id), &refusal));
        }
        Ok(FlagChange {
            src: src.to_owned(),
            msg_id,
            flag: feature.to_owned(),
            enabled,
        })
    }

    /// Records the kill-switch changes waiting (once per sender and msg_id: a retry gets the
    /// original's reply), sets this node's flag file and OFREP to the store's flags, then
    /// answers them in the order they came.
    fn flush_flags(&mut self, out: &mut Vec<u8>) {
        if self.flag_batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.flag_batch);
        let changes: Vec<FlagChange> = batch
            .iter()
            .filter_map(|(_, c)| c.as_ref().ok().cloned())
            .collect();
        let recorded = store::record_flags(&mut self.db, &self.me, &changes);
        // Once recorded, a change stands: if only the store's flags could not be read back,
        // its reply is the recorded one (this node's flag file follows at its next look).
        let synced = match &recorded {
            Ok(_) if !changes.is_empty() => match self.sync_flags_now() {
                Err(SyncFailure::Store(e)) => {
                    self.flags_looked = None;
                    eprintln!(
                        "rollback-node: the flag changes are recorded; reading the store's flags back failed ({e}), this node's flag file follows at its next look"
                    );
                    Ok(())
                }
                other => other,
            },
            _ => Ok(()),
        };
        let mut replies = recorded.as_ref().map(|r| r.iter());
        for (to, change) in batch {
            let body = match change {
                Err(refusal) => refusal,
                Ok(change) => match (&mut replies, &synced) {
                    (Ok(replies), Ok(())) => replies.next().cloned().unwrap_or_default(),
                    (Ok(_), Err(SyncFailure::File(e) | SyncFailure::Store(e))) => body_string(
                        Some(change.msg_id),
                        &Refusal::Crash(format!(
                            "the change is recorded in the store, but this node's flag file could not be set: {e}; every node keeps setting it to the store's flags"
                        )),
                    ),
                    (Err(e), _) => body_string(
                        Some(change.msg_id),
                        &Refusal::TemporarilyUnavailable(format!(
                            "{e}; the change may or may not have been recorded: retrying with the same msg_id is safe (a retry joins the original)"
                        )),
                    ),
                },
            };
            to.send(out, &body);
        }
    }

    /// Follows the store's flags. They are read whole each time (one index look-up per flag):
    /// a change's sequence number is taken before it commits, so "changes after the last one
    /// seen" could miss one that committed late.
    fn sync_flags(&mut self) {
        self.flags_looked = Some(Instant::now());
        if let Err(e) = self.sync_flags_now() {
            if self.db.is_connected() {
                eprintln!("rollback-node: the flag file could not follow the store: {e}");
            }
        }
    }

    /// Reads the store's flags and sets this node's flag file (read again first, one flag at a
    /// time, only where it differs), its machines and its OFREP to them.
    fn sync_flags_now(&mut self) -> Result<(), SyncFailure> {
        let names: Vec<String> = self.view.machine().state().flags.keys().cloned().collect();
        let changed =
            store::flags(&mut self.db, &names).map_err(|e| SyncFailure::Store(e.to_string()))?;
        let mut flags = self.view.machine().state().flags.clone();
        flags.extend(changed);
        if self.store_flags.as_ref() == Some(&flags) && self.flags_executor.is_none() {
            return Ok(());
        }
        if let Some(executor) = self.flags_executor.as_mut() {
            let probe = Operation {
                plan: Plan::SetFlag {
                    feature: String::new(),
                    enabled: false,
                },
                effects: Vec::new(),
            };
            let on_disk = executor
                .observe(&probe, self.view.machine().state())
                .flags
                .unwrap_or_else(|| self.view.machine().state().flags.clone());
            for (flag, &enabled) in &flags {
                if on_disk.get(flag) == Some(&enabled) {
                    continue;
                }
                let operation = Operation {
                    plan: Plan::SetFlag {
                        feature: flag.clone(),
                        enabled,
                    },
                    effects: vec![Effect::WriteFlags {
                        flag: flag.clone(),
                        enabled,
                    }],
                };
                if let crate::core::effects::Completion::Failed(failure) =
                    executor.perform(&operation, &mut |_| {})
                {
                    return Err(SyncFailure::File(
                        serde_json::to_string(&failure).unwrap_or_default(),
                    ));
                }
            }
        }
        if self.store_flags.as_ref() == Some(&flags) {
            return Ok(());
        }
        let found = Found {
            flags: Some(flags.clone()),
            ..Found::default()
        };
        self.view.observe(&found);
        if let Some(term) = self.term.as_mut() {
            term.session.observe(&found);
        }
        self.flags_view.publish(flags.clone());
        self.store_flags = Some(flags);
        Ok(())
    }

    /// `status_ok`: the leader's stored status (or, before any leader, this node's own), with
    /// the store's flags and the cluster as this node knows it.
    fn status(&mut self, msg_id: Option<u64>) -> String {
        let view = self.keeper.view();
        // Read from the store even on the leader: whether it answers is part of the status.
        let read = store::stored_status(&mut self.db);
        let reachable = read.as_ref().err().map(ToString::to_string);
        let stored = match &self.term {
            Some(term) => Some(term.status.clone()).filter(|s| !s.is_empty()),
            None => read.ok().flatten().map(|(_, b)| b),
        };
        let body = stored.unwrap_or_else(|| self.view.status_body());
        let mut value: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&body).unwrap_or_default();
        if let Some(flags) = &self.store_flags {
            value.insert("flags".to_owned(), serde_json::json!(flags));
        }
        let store_state = match reachable.or(view.cut_off) {
            None => "connected".to_owned(),
            Some(e) => format!("cut off: {e}"),
        };
        let cluster = serde_json::json!({
            "node": self.me,
            "leader": view.leader,
            "epoch": self.epoch_seen,
            "nodes": view.nodes,
            "store": store_state,
        });
        let mut text = "{\"type\":\"status_ok\"".to_owned();
        if let Some(msg_id) = msg_id {
            text.push_str(&format!(",\"in_reply_to\":{msg_id}"));
        }
        value.remove("type");
        value.remove("in_reply_to");
        value.insert("cluster".to_owned(), cluster);
        for (key, field) in value {
            text.push(',');
            text.push_str(&serde_json::to_string(&key).unwrap_or_default());
            text.push(':');
            text.push_str(&field.to_string());
        }
        text.push('}');
        text
    }

    /// `history_ok` from the store: the cluster's trail (`after: SEQ` pages through it).
    fn history(&mut self, limit: Option<u32>, after: Option<u64>, msg_id: Option<u64>) -> String {
        let decided = self.view.machine().state().history(limit, after);
        let limit = match decided {
            Ok(crate::core::effects::Decision::Lookup(crate::core::effects::Lookup::History {
                limit,
                ..
            })) => limit,
            Ok(_) => 20,
            Err(refusal) => return body_string(msg_id, &refusal),
        };
        match store::history(&mut self.db, after, limit) {
            Ok(entries) => body_string(msg_id, &HistoryOk { entries }),
            Err(e) => body_string(
                msg_id,
                &Refusal::TemporarilyUnavailable(format!("the audit trail cannot be read: {e}")),
            ),
        }
    }

    /// Starts taking over at `epoch` on a thread of its own (advancing the fence may wait for a
    /// transaction that holds it, for seconds): meanwhile this node keeps answering, the kill
    /// switch included.
    fn begin_term(&mut self, epoch: u64) {
        if self.taking_over.as_ref().is_some_and(|(e, _)| *e == epoch) {
            return;
        }
        let taking = TakeOver {
            me: self.me.clone(),
            url: self.url.clone(),
            estate: self.estate.clone(),
            base: self.base.clone(),
            pace: self.pace,
            flags: self.store_flags.clone(),
            deadline: self.keeper.deadline(),
        };
        let (done, result) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(taking.run(epoch));
        });
        self.taking_over = Some((epoch, result));
    }

    /// The takeover started by [`Node::begin_term`], once it has ended: the term, if the lease
    /// is still this node's.
    fn took_over(&mut self, leading: Option<u64>) {
        let Some((epoch, result)) = &self.taking_over else {
            return;
        };
        let epoch = *epoch;
        let outcome = match result.try_recv() {
            Ok(outcome) => outcome,
            Err(mpsc::TryRecvError::Empty) => return,
            Err(mpsc::TryRecvError::Disconnected) => Err("the takeover stopped".to_owned()),
        };
        self.taking_over = None;
        match outcome {
            Ok(mut term) if leading == Some(epoch) => {
                eprintln!(
                    "rollback-node: {} took over at epoch {epoch} after {} journal entries",
                    self.me,
                    term.session.machine().seq()
                );
                if let Some(flags) = &self.store_flags {
                    term.session.observe(&Found {
                        flags: Some(flags.clone()),
                        ..Found::default()
                    });
                }
                self.term = Some(term);
            }
            Ok(_) => eprintln!(
                "rollback-node: {} lost the lease of epoch {epoch} while taking over",
                self.me
            ),
            Err(e) => eprintln!("rollback-node: could not take over at epoch {epoch}: {e}"),
        }
    }

    fn end_term(&mut self, why: &str) {
        if let Some(term) = self.term.take() {
            eprintln!(
                "rollback-node: {} stops leading at epoch {}: {why}",
                self.me, term.epoch
            );
        }
    }

    /// One round of the leader: new inbox rows are fed, completions delivered, everything
    /// committed (fenced), replies written to the inbox, started operations handed to the
    /// workers while the lease holds.
    fn lead(&mut self) -> Result<(), String> {
        let Some(term) = self.term.as_mut() else {
            return Ok(());
        };
        let mut scratch = Vec::new();
        if term.looked.is_none_or(|at| at.elapsed() >= INBOX_EVERY) {
            term.looked = Some(Instant::now());
            let rows: Vec<Inboxed> = match store::unanswered(term.session.store_mut().db()) {
                Ok(rows) => rows,
                // Nothing is known about the inbox now: what was fed stays fed.
                Err(DbError::Unreachable(_)) => return Ok(()),
                Err(e) => return Err(e.to_string()),
            };
            let unanswered: HashSet<u64> = rows.iter().map(|r| r.seq).collect();
            term.fed.retain(|seq| unanswered.contains(seq));
            for row in rows {
                if !term.fed.insert(row.seq) {
                    continue;
                }
                let answers = term.answers.clone();
                let seq = row.seq;
                let waiter = Waiter::new(move |answer| {
                    let body = match answer {
                        Ok(body) => body,
                        Err(why) => body_string(None, &Refusal::MalformedRequest(why.0)),
                    };
                    if let Ok(mut a) = answers.lock() {
                        a.push((seq, body));
                    }
                });
                term.session
                    .handle_message(&row.src, row.body.as_bytes(), waiter, &mut scratch);
            }
        }
        loop {
            match term.events.try_recv() {
                Ok(Event::Completed(lane, seq, completion)) => {
                    term.session.complete(lane, seq, *completion, &mut scratch)
                }
                Ok(Event::Progress(lane, seq, progress)) => {
                    term.session.progress(lane, seq, progress)
                }
                Ok(_) => {}
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        term.session.commit().map_err(|e| e.to_string())?;
        term.session.deliver();
        let answers: Vec<(u64, String)> = term
            .answers
            .lock()
            .map(|mut a| std::mem::take(&mut *a))
            .unwrap_or_default();
        let status = term.session.status_body();
        if !answers.is_empty() || status != term.status {
            term.session
                .store_mut()
                .answer(&answers, &status)
                .map_err(|e| e.to_string())?;
            term.status = status;
        }
        if term.deadline.holds() {
            for (lane, seq, operation) in term.session.take_starts() {
                if let Some(worker) = &term.workers[lane.index()] {
                    let _ = worker.send((seq, operation));
                }
            }
        }
        Ok(())
    }
}

/// The `body` of a request line, as its JSON text.
fn body_of(line: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        body: &'a serde_json::value::RawValue,
    }
    serde_json::from_str::<Envelope<'_>>(line)
        .ok()
        .map(|e| e.body.get().to_owned())
}

/// Reads `input` in chunks for the owner thread.
fn spawn_reader(mut input: impl Read + Send + 'static, events: SyncSender<Event>) {
    std::thread::spawn(move || {
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            match input.read(&mut chunk) {
                Ok(0) => {
                    let _ = events.send(Event::End);
                    return;
                }
                Ok(n) => {
                    if events.send(Event::Input(chunk[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = events.send(Event::ReadFailed(e));
                    return;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::body_of;

    #[test]
    fn the_body_of_a_line_is_its_json_text() {
        assert_eq!(
            body_of(r#"{"src":"c","dest":"n1","body":{"type":"rollback","msg_id":1,"version":2}}"#)
                .as_deref(),
            Some(r#"{"type":"rollback","msg_id":1,"version":2}"#)
        );
        assert_eq!(body_of("not json"), None);
    }
}

/// How long a starting node waits out a store connection cut after it first reached the store.
const START_RETRY: Duration = Duration::from_secs(10);

/// Runs a start-up step against the store, again while its connection is found cut (for up to
/// [`START_RETRY`]): the store was reached, so a cut (a restarted pooler, a terminated
/// backend) is passing, and the node should not exit for it. Each step is safe to repeat.
fn starting<T, E: std::fmt::Display>(
    db: &mut Db,
    mut step: impl FnMut(&mut Db) -> Result<T, E>,
) -> Result<T, E> {
    let began = Instant::now();
    loop {
        match step(db) {
            Err(e) if !db.is_connected() && began.elapsed() < START_RETRY => {
                eprintln!("rollback-node: the store's connection was cut while starting ({e}); trying again");
                std::thread::sleep(Duration::from_millis(250));
            }
            done => return done,
        }
    }
}

/// A second connection to a store this node has just reached, tried again for up to
/// [`START_RETRY`].
fn reconnect(url: &str) -> Result<Db, String> {
    let began = Instant::now();
    loop {
        match Db::connect(url) {
            Err(e) if began.elapsed() < START_RETRY => {
                eprintln!(
                    "rollback-node: cannot open a second store connection yet ({e}); trying again"
                );
                std::thread::sleep(Duration::from_millis(250));
            }
            done => return done,
        }
    }
}

/// Why this node's flags could not follow the store's.
#[derive(Debug)]
enum SyncFailure {
    /// The store's flags could not be read.
    Store(String),
    /// This node's flag file could not be set.
    File(String),
}

impl std::fmt::Display for SyncFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Store(e) => write!(f, "the store's flags could not be read: {e}"),
            Self::File(e) => write!(f, "{e}"),
        }
    }
}
