//! The lease, the epoch and the heartbeats, kept by a thread of their own over their own
//! connection ([`Keeper`]), by the store's clock: a node claims its id ([`claim`]), every node
//! renews its heartbeat row, the leader renews its lease, and a follower takes the lease when
//! it has ended, with an epoch one higher. The leader's local [`Deadline`] is counted from the
//! moment each renewal was *sent*, so it ends before the store's lease does: past it the leader
//! starts nothing more, even before it learns that it lost.

pub use super::deadline::Deadline;
use super::sql::{lit, SCHEMA};
use super::store::{Db, DbError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often a follower looks at the lease (to take it soon after it ends).
const FOLLOWER_TICK: Duration = Duration::from_millis(200);
/// A clock further than this off the store's is warned about (it is never used for the lease).
const CLOCK_WARN: f64 = 1.0;

/// What this node knows of the cluster, as `status` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Who holds an unexpired lease, if anyone.
    pub leader: Option<String>,
    /// The highest epoch seen (never lower).
    pub epoch: Option<u64>,
    /// The ids seen alive (heartbeat within one lease), this node included.
    pub nodes: Vec<String>,
    /// The epoch this node leads at, while it does.
    pub leading: Option<u64>,
    /// Why the store cannot be reached now, if it cannot.
    pub cut_off: Option<String>,
    /// Another node took this node's id (it was paused past a lease): it must stop.
    pub usurped: bool,
}

/// The lease settings, in whole seconds.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a lease lasts after a renewal.
    pub lease: Duration,
    /// How often it is renewed.
    pub renew: Duration,
}

impl Timing {
    /// The margin the local deadline keeps before the store's lease ends: a tenth of the lease.
    fn margin(&self) -> Duration {
        self.lease / 10
    }

    fn interval(&self) -> String {
        format!("interval '{} milliseconds'", self.lease.as_millis())
    }
}

/// The thread that keeps the lease and the heartbeat.
#[derive(Debug)]
pub struct Keeper {
    view: Arc<Mutex<View>>,
    deadline: Arc<Deadline>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

/// A fresh incarnation: what tells this process's claim of a node id from any other's.
pub fn incarnation() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    )
}

/// Claims `node` for `incarnation`: free when its heartbeat is older than a lease, or already
/// this incarnation's (a claim tried again after a cut connection is the same claim). A recent
/// heartbeat is watched for up to a lease: if it is renewed meanwhile a live node holds the id
/// (refused); if not, the node that held it is gone (a restart after a crash) and the id is
/// taken.
///
/// # Errors
/// A live node holds the id, or the store cannot be written.
pub fn claim(db: &mut Db, node: &str, incarnation: &str, timing: Timing) -> Result<(), String> {
    let mut watched: Option<String> = None;
    let started = Instant::now();
    loop {
        let rows = db
            .simple(&format!(
                "INSERT INTO {SCHEMA}.nodes VALUES ({n}, {i}, clock_timestamp(), clock_timestamp())
                 ON CONFLICT (id) DO UPDATE SET incarnation = EXCLUDED.incarnation, started_at = EXCLUDED.started_at, seen_at = EXCLUDED.seen_at
                 WHERE nodes.seen_at <= clock_timestamp() - {lease} OR nodes.incarnation = EXCLUDED.incarnation
                 RETURNING id",
                n = lit(node),
                i = lit(incarnation),
                lease = timing.interval()
            ))
            .map_err(|e| e.to_string())?;
        if !rows.is_empty() {
            return Ok(());
        }
        let seen = db
            .simple(&format!(
                "SELECT seen_at::text, round(extract(epoch from clock_timestamp() - seen_at)::numeric, 1)::text FROM {SCHEMA}.nodes WHERE id = {}",
                lit(node)
            ))
            .map_err(|e| e.to_string())?;
        let (at, ago) = match seen.first() {
            Some(row) => (
                row.first().cloned().flatten().unwrap_or_default(),
                row.get(1).cloned().flatten().unwrap_or_default(),
            ),
            None => continue,
        };
        match &watched {
            None => {
                eprintln!(
                    "rollback-node: node id {node} renewed its heartbeat {ago} s ago; waiting up to {} s to see whether that node still runs (a node restarted after a crash waits out its old lease)",
                    timing.lease.as_secs()
                );
                watched = Some(at);
            }
            Some(first) if *first != at => {
                return Err(format!(
                    "node id {node} is held by a live node (its heartbeat was renewed {ago} s ago, while this one waited); give every node its own --node-id"
                ));
            }
            Some(_) => {}
        }
        if started.elapsed() > timing.lease * 4 {
            return Err(format!(
                "node id {node} could not be claimed within {} s",
                (timing.lease * 4).as_secs()
            ));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

impl Keeper {
    /// Starts keeping `node`'s heartbeat (as `incarnation`) and trying for the lease.
    pub fn start(mut db: Db, node: String, incarnation: String, timing: Timing) -> Keeper {
        let view = Arc::new(Mutex::new(View {
            nodes: vec![node.clone()],
            ..View::default()
        }));
        let deadline = Arc::new(Deadline::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (view, deadline, stop) = (view.clone(), deadline.clone(), stop.clone());
            thread::spawn(move || {
                let mut keeping = Keeping {
                    node,
                    incarnation,
                    timing,
                    leading: None,
                    warned_clock: false,
                    last_heartbeat: None,
                };
                while !stop.load(Ordering::SeqCst) {
                    let tick = keeping.tick(&mut db, &view, &deadline);
                    let mut slept = Duration::ZERO;
                    while slept < tick && !stop.load(Ordering::SeqCst) {
                        let step = Duration::from_millis(20).min(tick - slept);
                        thread::sleep(step);
                        slept += step;
                    }
                }
                keeping.release(&mut db, &deadline);
            })
        };
        Keeper {
            view,
            deadline,
            stop,
            thread: Some(thread),
        }
    }

    /// What this node knows of the cluster now.
    pub fn view(&self) -> View {
        self.view.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The leader's local deadline (shared with its journal).
    pub fn deadline(&self) -> Arc<Deadline> {
        self.deadline.clone()
    }

    /// Stops keeping: gives up the lease (a successor need not wait for it to run out) and
    /// frees the node id.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Keeping {
    node: String,
    incarnation: String,
    timing: Timing,
    /// The epoch this node leads at.
    leading: Option<u64>,
    warned_clock: bool,
    last_heartbeat: Option<Instant>,
}

impl Keeping {
    /// One round: heartbeat (every renew interval), renew or try for the lease, read the
    /// cluster. Returns how long to wait for the next.
    fn tick(&mut self, db: &mut Db, view: &Mutex<View>, deadline: &Deadline) -> Duration {
        let sent = Instant::now();
        let node = lit(&self.node);
        let lease = self.timing.interval();
        let heartbeat_due = self
            .last_heartbeat
            .is_none_or(|at| at.elapsed() >= self.timing.renew);
        let mut text = String::new();
        if heartbeat_due {
            text.push_str(&format!(
                "UPDATE {SCHEMA}.nodes SET seen_at = clock_timestamp() WHERE id = {node} AND incarnation = {inc} RETURNING 'heartbeat';",
                inc = lit(&self.incarnation)
            ));
        }
        match self.leading {
            Some(epoch) if heartbeat_due => text.push_str(&format!(
                "UPDATE {SCHEMA}.lease SET expires_at = clock_timestamp() + {lease} WHERE id = 1 AND holder = {node} AND epoch = {epoch} AND expires_at > clock_timestamp() RETURNING 'renewed', epoch::text;"
            )),
            Some(_) => {}
            None => text.push_str(&format!(
                "UPDATE {SCHEMA}.lease SET holder = {node}, epoch = epoch + 1, expires_at = clock_timestamp() + {lease} WHERE id = 1 AND (holder IS NULL OR expires_at <= clock_timestamp()) RETURNING 'acquired', epoch::text;"
            )),
        }
        text.push_str(&format!(
            "SELECT 'view', CASE WHEN expires_at > clock_timestamp() THEN holder END, epoch::text, (SELECT string_agg(id, ',' ORDER BY id) FROM {SCHEMA}.nodes WHERE seen_at > clock_timestamp() - {lease}), extract(epoch from clock_timestamp())::text FROM {SCHEMA}.lease WHERE id = 1;"
        ));
        let result = db.simple(&text);
        let rows = match result {
            Ok(rows) => rows,
            Err(e) => {
                if let Ok(mut v) = view.lock() {
                    v.cut_off = Some(e.to_string());
                    if !deadline.holds() {
                        v.leading = None;
                    }
                }
                if !deadline.holds() {
                    self.leading = None;
                }
                return Duration::from_millis(200);
            }
        };
        let mut heartbeat_ok = !heartbeat_due;
        let mut renewed = false;
        let mut next = view.lock().map(|v| v.clone()).unwrap_or_default();
        next.cut_off = None;
        for row in rows {
            let cell = |i: usize| row.get(i).cloned().flatten();
            match cell(0).as_deref() {
                Some("heartbeat") => heartbeat_ok = true,
                Some("renewed") => renewed = true,
                Some("acquired") => {
                    let epoch = cell(1).and_then(|e| e.parse().ok());
                    if let Some(epoch) = epoch {
                        self.leading = Some(epoch);
                        renewed = true;
                        eprintln!(
                            "rollback-node: {} leads the cluster at epoch {epoch}",
                            self.node
                        );
                    }
                }
                Some("view") => {
                    next.leader = cell(1);
                    let epoch: Option<u64> = cell(2).and_then(|e| e.parse().ok());
                    next.epoch = match (next.epoch, epoch) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b).filter(|&e| e > 0),
                    };
                    next.nodes = cell(3)
                        .map(|n| n.split(',').map(str::to_owned).collect())
                        .unwrap_or_default();
                    if !next.nodes.contains(&self.node) {
                        next.nodes.push(self.node.clone());
                        next.nodes.sort();
                    }
                    if let Some(store_now) = cell(4).and_then(|t| t.parse::<f64>().ok()) {
                        self.check_clock(store_now);
                    }
                }
                _ => {}
            }
        }
        if heartbeat_due {
            self.last_heartbeat = Some(sent);
        }
        if !heartbeat_ok {
            next.usurped = true;
        }
        if let Some(epoch) = self.leading {
            if renewed {
                deadline.set(Some(sent + self.timing.lease - self.timing.margin()));
            } else if heartbeat_due {
                eprintln!(
                    "rollback-node: {} lost the lease of epoch {epoch}; it starts nothing more",
                    self.node
                );
                self.leading = None;
                deadline.set(None);
            }
        }
        if !deadline.holds() && self.leading.is_some() {
            self.leading = None;
        }
        next.leading = self.leading;
        if let Ok(mut v) = view.lock() {
            *v = next;
        }
        match self.leading {
            Some(_) => self
                .timing
                .renew
                .saturating_sub(sent.elapsed())
                .min(self.timing.renew),
            None => FOLLOWER_TICK,
        }
    }

    fn check_clock(&mut self, store_now: f64) {
        let local = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let off = local - store_now;
        if off.abs() > CLOCK_WARN && !self.warned_clock {
            self.warned_clock = true;
            eprintln!(
                "rollback-node: this host's clock is {off:+.1} s off the store's; the lease is counted by the store's clock only"
            );
        }
    }

    fn release(&mut self, db: &mut Db, deadline: &Deadline) {
        deadline.set(None);
        let node = lit(&self.node);
        let mut text = format!(
            "UPDATE {SCHEMA}.nodes SET seen_at = '-infinity' WHERE id = {node} AND incarnation = {};",
            lit(&self.incarnation)
        );
        if let Some(epoch) = self.leading.take() {
            text.push_str(&format!(
                "UPDATE {SCHEMA}.lease SET expires_at = clock_timestamp() WHERE id = 1 AND holder = {node} AND epoch = {epoch};"
            ));
        }
        if let Err(DbError::Unreachable(e) | DbError::Refused(e) | DbError::LeaseLost(e)) =
            db.batch(&text)
        {
            eprintln!("rollback-node: could not give up the lease and node id on stopping: {e}");
        }
    }
}
