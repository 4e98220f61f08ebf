//! Assembling and running a node from its command line: read and validate the estate, connect
//! its real systems, open (only then) the state directory, rebuild the machine from the journal,
//! reconcile what a crash interrupted, and serve stdin/stdout (and OFREP). Also the read-only
//! look-ups of a state directory (`status`, `history`). The binary is the command line only.

use crate::core::effects::Found;
use crate::core::machine::Machine;
use crate::exec::connect::connect;
use crate::exec::estate::Token;
use crate::exec::estate::{Estate, EXAMPLE_ESTATE};
use crate::protocol::encode::body_string;
use crate::protocol::values::InFlightView;
use crate::runtime::flags::FlagsView;
use crate::runtime::serve::Link;
use crate::runtime::session::Session;
use crate::service::hub::Hub;
use crate::service::ofrep::OfrepServer;
use crate::service::{Config, Service};
use crate::store::journal::{Journal, FILE_NAME, LOCK_NAME};
use crate::store::replay::{self, Open};
use crate::store::{MemoryStore, Store};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// How to run a node.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The estate file (the built-in example without one).
    pub estate: Option<PathBuf>,
    /// The state directory (in memory without one).
    pub state_dir: Option<PathBuf>,
    /// Simulated effects take `pace` × their modelled seconds.
    pub pace: f64,
    /// Where to serve OFREP, if anywhere.
    pub ofrep: Option<SocketAddr>,
    /// Where to serve the HTTP service (API, events, page, OFREP), if anywhere.
    pub listen: Option<SocketAddr>,
}

/// What the HTTP service needs from the estate: where, who, what each layer is, and the
/// escalation ladder's rungs and thresholds.
pub(crate) struct Listening {
    pub(crate) addr: SocketAddr,
    pub(crate) tokens: Vec<Token>,
    pub(crate) systems: serde_json::Value,
    pub(crate) ladder: Option<serde_json::Value>,
}

impl Listening {
    /// Starts the HTTP service, serving `flags` over OFREP; the node's loop hears it through
    /// the link.
    ///
    /// # Errors
    /// The address cannot be listened at.
    pub(crate) fn start(self, flags: FlagsView) -> Result<(Service, Link), Failure> {
        let hub = Hub::new();
        let link = Link::new(hub.audience());
        let addr = self.addr;
        let service = Service::start(
            Config {
                addr,
                tokens: self.tokens,
                systems: self.systems,
                ladder: self.ladder,
            },
            link.calls(),
            hub,
            flags,
        )
        .map_err(|e| {
            config(format!(
                "cannot listen at {addr}: {e}; give --listen a free address such as 127.0.0.1:8080"
            ))
        })?;
        eprintln!(
            "rollback-node: listening on http://{}",
            service.local_addr()
        );
        Ok((service, link))
    }
}

/// The service's view of the estate, refused when it has no tokens (a listener never starts
/// open to anyone).
pub(crate) fn listening(
    addr: Option<SocketAddr>,
    estate: &Estate,
    origin: &str,
) -> Result<Option<Listening>, Failure> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    if estate.tokens.is_empty() {
        return Err(config(format!(
            "--listen needs at least one token, and {origin} has no [[tokens]]; create one with `rollback-node new-token NAME ROLE` and paste the lines it prints into the estate"
        )));
    }
    let layers = &estate.state.layers;
    let describe = |layer: &crate::core::state::Layer| match layer {
        crate::core::state::Layer::Absent => "absent".to_owned(),
        crate::core::state::Layer::Simulated => "simulated".to_owned(),
        crate::core::state::Layer::Real(place) => place.clone(),
    };
    Ok(Some(Listening {
        addr,
        tokens: estate.tokens.clone(),
        systems: serde_json::json!({
            "schema": describe(&layers.schema),
            "backups": describe(&layers.backups),
            "flags": describe(&layers.flags),
            "traffic": describe(&layers.traffic),
        }),
        ladder: estate.ladder.as_ref().map(ladder_summary),
    }))
}

/// What `GET /v1/whoami` says of the escalation ladder, for the page to explain its status:
/// its settings, each signal's name, query and threshold, each rung's action and whether it
/// waits for approval (not where Prometheus is).
fn ladder_summary(ladder: &crate::core::ladder::LadderConfig) -> serde_json::Value {
    serde_json::json!({
        "interval_seconds": ladder.interval_seconds,
        "bad_samples": ladder.bad_samples,
        "verify_seconds": ladder.verify_seconds,
        "max_runs": ladder.max_runs,
        "signals": ladder.signals.iter().map(|s| serde_json::json!({
            "name": s.name,
            "query": s.query,
            "above": s.above,
        })).collect::<Vec<_>>(),
        "rungs": ladder.rungs.iter().map(|r| serde_json::json!({
            "action": r.action,
            "approval": r.approval,
        })).collect::<Vec<_>>(),
    })
}

/// Why a node stopped or would not start: the exit code (2 for a refused configuration, 1 for
/// a failure while running) and one line for stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(pub u8, pub String);

/// Runs a node until its input ends and everything it started has completed.
///
/// # Errors
/// A refused estate, state directory or real system (nothing adopted), or a failure while
/// serving.
pub fn run(options: Options) -> Result<(), Failure> {
    serve(options)
}

pub(crate) fn config(message: impl ToString) -> Failure {
    Failure(2, message.to_string())
}

fn read_estate(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| config(format!("cannot read estate file {}: {e}", path.display())))
}

fn serve(args: Options) -> Result<(), Failure> {
    let given = match &args.estate {
        Some(path) => Some((read_estate(path)?, path.display().to_string())),
        None => None,
    };
    let given_dir = match &args.estate {
        Some(path) => estate_dir(path),
        None => std::env::current_dir().unwrap_or_default(),
    };
    let Some(dir) = &args.state_dir else {
        let (estate, origin) = match &given {
            Some((text, origin)) => (
                Estate::from_toml(text, origin).map_err(config)?,
                origin.clone(),
            ),
            None => (Estate::example(), "the built-in example estate".to_owned()),
        };
        let listening = listening(args.listen, &estate, &origin)?;
        let (executors, found) = connect(&estate, &given_dir, args.pace).map_err(config)?;
        let ladder = estate.ladder.clone();
        let mut machine = Machine::new(estate.state);
        machine.observe(&found);
        let session = with_ladder(
            Session::new(machine, executors, MemoryStore::new()),
            ladder.as_ref(),
        )?;
        return serve_session(session, args.ofrep, listening);
    };
    // Everything that can refuse the estate comes before the directory is adopted: a refused
    // start leaves it exactly as it was.
    let given_text = given.as_ref().map(|(t, o)| (t.as_str(), o.as_str()));
    let stored = Journal::stored(dir, given_text).map_err(config)?;
    let origin = match &given {
        Some((_, origin)) => origin.clone(),
        None => format!("{} (stored estate)", dir.join(FILE_NAME).display()),
    };
    let text = match (&stored, &given) {
        (Some(stored), _) => stored.estate.clone(),
        (None, Some((text, _))) => text.clone(),
        (None, None) => EXAMPLE_ESTATE.to_owned(),
    };
    let estate = Estate::from_toml(&text, &origin).map_err(config)?;
    let listening = listening(args.listen, &estate, &origin)?;
    let base = stored
        .and_then(|s| s.estate_dir)
        .unwrap_or_else(|| given_dir.clone());
    let (executors, found) = connect(&estate, &base, args.pace).map_err(config)?;
    let (journal, loaded) =
        Journal::open(dir, given_text, EXAMPLE_ESTATE, &given_dir).map_err(config)?;
    if loaded.estate != text {
        return Err(config(format!(
            "{}: another node adopted this state directory while this one was starting; start again",
            dir.display()
        )));
    }
    if loaded.created && given.is_none() {
        eprintln!(
            "rollback-node: {} is new and no --estate was given: adopting the built-in example estate (see `rollback-node example-estate`); to manage your own, start with a new --state-dir and --estate FILE",
            dir.display()
        );
    }
    if let Some(warning) = &loaded.warning {
        eprintln!("rollback-node: {warning}");
    }
    let (mut machine, open) = rebuild(
        estate.state,
        loaded.snapshot,
        loaded.entries,
        &journal,
        &found,
    )?;
    let replayed = machine.seq();
    let believed = machine.state().clone();
    machine.observe(&found);
    let mut session = with_ladder(
        Session::new(machine, executors, journal),
        estate.ladder.as_ref(),
    )?;
    for note in session.reconcile(open) {
        eprintln!("rollback-node: {note}");
    }
    session.commit().map_err(|e| Failure(1, e.to_string()))?;
    let state = session.machine().state();
    if replayed > 0 {
        eprintln!(
            "rollback-node: resumed {} after {replayed} journal entries: schema at version {}, {} live",
            dir.display(),
            state.schema_version,
            state.traffic.live
        );
        if believed != *state {
            eprintln!(
                "rollback-node: the real systems differ from what the journal says (they were changed while the node was stopped); the systems are the truth"
            );
        }
    }
    serve_session(session, args.ofrep, listening)
}

/// The session with the estate's escalation ladder, if it has one: the ladder the store saved
/// (for this same `[ladder]`), or a fresh one.
fn with_ladder<S: crate::store::Store>(
    session: Session<S>,
    ladder: Option<&crate::core::ladder::LadderConfig>,
) -> Result<Session<S>, Failure> {
    let Some(ladder) = ladder else {
        return Ok(session);
    };
    let saved = session.store().saved_ladder();
    let watch = crate::runtime::ladder::Watch::new(ladder, saved.as_deref()).map_err(config)?;
    eprintln!(
        "rollback-node: the ladder watches {} signal(s) on {} every {} s: {}",
        ladder.signals.len(),
        ladder.prometheus,
        ladder.interval_seconds,
        watch.ladder().status().to_json()
    );
    Ok(session.with_ladder(watch))
}

/// The directory an estate file is in (its relative paths are relative to it), absolute.
pub(crate) fn estate_dir(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new(""));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned())
}

/// A machine rebuilt from a snapshot (or the estate) and the journal entries after it; the
/// real systems' catalogue is taken first, so replay decides against it.
fn rebuild(
    state: crate::core::state::State,
    snapshot: Option<crate::core::Snapshot>,
    entries: Vec<crate::store::Entry>,
    journal: &Journal,
    found: &Found,
) -> Result<(Machine, Vec<Open>), Failure> {
    let mut machine = match snapshot {
        Some(snapshot) => Machine::from_snapshot(snapshot),
        None => Machine::new(state),
    };
    machine.observe(&Found {
        catalogue: found.catalogue.clone(),
        ..Found::default()
    });
    let open = replay::rebuild(&mut machine, entries).map_err(|e| {
        config(format!(
            "{}: {e}; see README \"Recovering a damaged journal\"",
            journal.path().display()
        ))
    })?;
    Ok((machine, open))
}

/// Serves stdin to stdout, OFREP at `ofrep` and the HTTP service at `listening` if given.
fn serve_session<S: Store>(
    mut session: Session<S>,
    ofrep: Option<SocketAddr>,
    listening: Option<Listening>,
) -> Result<(), Failure> {
    let view = FlagsView::new(session.machine().state().flags.clone());
    if ofrep.is_some() || listening.is_some() {
        session.publish_flags(view.clone());
    }
    let _server = match ofrep {
        Some(addr) => {
            let server = OfrepServer::start(addr, view.clone()).map_err(|e| {
                config(format!(
                    "cannot serve OFREP at {addr}: {e}; give --ofrep a free address such as 127.0.0.1:8016"
                ))
            })?;
            eprintln!(
                "rollback-node: serving OFREP flag evaluation at http://{}/ofrep/v1/evaluate/flags",
                server.local_addr()
            );
            Some(server)
        }
        None => None,
    };
    let Some(listening) = listening else {
        return crate::runtime::serve(session, io::stdin(), io::stdout(), io::stderr())
            .map_err(|e| Failure(1, e.to_string()));
    };
    let (service, link) = listening.start(view)?;
    let served = crate::runtime::serve::serve_linked(
        session,
        io::stdin(),
        io::stdout().lock(),
        io::stderr(),
        link,
    );
    service.stop();
    served.map_err(|e| Failure(1, e.to_string()))
}

/// A fresh token: a secret from the operating system's random source, and the estate lines
/// that hold its name, role and the SHA-256 of the secret (never the secret).
///
/// # Errors
/// An empty name, or the random source cannot be read.
pub fn new_token(name: &str, role: crate::exec::estate::Role) -> Result<(String, String), Failure> {
    if name.trim().is_empty() {
        return Err(config(
            "a token needs a name: its requests are sent as that name",
        ));
    }
    let secret = crate::service::auth::random_secret()
        .map_err(|e| Failure(1, format!("the random source cannot be read: {e}")))?;
    let hash = hex::encode(crate::service::auth::sha256(secret.as_bytes()));
    let name = toml::Value::String(name.to_owned());
    let lines = format!("[[tokens]]\nname = {name}\nrole = \"{role}\"\nsha256 = \"{hash}\"");
    Ok((secret, lines))
}

/// Where the estate of a state directory stands, as one JSON line.
///
/// # Errors
/// The directory cannot be read.
pub fn status(dir: &Path) -> Result<String, Failure> {
    let journal = Journal::open_existing(dir).map_err(config)?;
    let loaded = journal.load().map_err(config)?;
    let origin = format!("{} (stored estate)", journal.path().display());
    let estate = Estate::from_toml(&loaded.estate, &origin).map_err(config)?;
    let (machine, open) = rebuild(
        estate.state,
        loaded.snapshot,
        loaded.entries,
        &journal,
        &Found::default(),
    )?;
    let serving = is_served(dir);
    let mut status = crate::core::transitions::status_of(machine.state());
    status.interrupted = machine.interrupted();
    status.in_flight = open
        .iter()
        .map(|o| InFlightView {
            kind: o.request.type_name().to_owned(),
            msg_id: o.msg_id,
            src: o.src.clone(),
            lane: o.lane.to_string(),
            state: if serving {
                "running"
            } else {
                "interrupted (reconciled at the next start)"
            }
            .to_owned(),
            progress: None,
        })
        .collect();
    Ok(body_string(None, &status))
}

/// Whether a node holds the directory's lock.
fn is_served(dir: &Path) -> bool {
    let Ok(lock) = std::fs::File::open(dir.join(LOCK_NAME)) else {
        return false;
    };
    match lock.try_lock_shared() {
        Ok(()) => false,
        Err(std::fs::TryLockError::WouldBlock) => true,
        Err(std::fs::TryLockError::Error(_)) => false,
    }
}

/// Every operation that ended, oldest first (the last `limit`), read from the start of the
/// journal: on damage, what comes before it is printed, then the damaged entry is named.
/// The last `limit` history entries of a state directory as JSON lines, oldest first, and,
/// after them, the damage that stopped the reading, if any.
pub fn history(dir: &Path, limit: Option<u64>) -> (Vec<String>, Result<(), Failure>) {
    let journal = match Journal::open_existing(dir) {
        Ok(journal) => journal,
        Err(e) => return (Vec::new(), Err(config(e))),
    };
    let keep = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let mut kept = std::collections::VecDeque::new();
    let mut expected = 1;
    let scanned = journal.scan(0, |entry| {
        if entry.seq != expected {
            return Err(crate::store::journal::JournalError(format!(
                "{}: journal entry {expected} is missing (the next one is {}); see README \"Recovering a damaged journal\"",
                journal.path().display(),
                entry.seq
            )));
        }
        expected += 1;
        if let Some(line) = entry.history_entry().map(|e| e.to_json_line()) {
            if kept.len() == keep {
                kept.pop_front();
            }
            if keep > 0 {
                kept.push_back(line);
            }
        }
        Ok(true)
    });
    (kept.into(), scanned.map_err(config))
}
