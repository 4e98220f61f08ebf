//! The `rollback-node` binary: serves one estate over the Maelstrom protocol on stdin/stdout,
//! optionally durable in a state directory; `status` and `history` read a state directory;
//! `example-estate` prints the built-in estate. Every stdout line of the node is a protocol
//! reply; diagnostics go to stderr. This file is the command line only.

use clap::{Args, Parser, Subcommand};
use rollback_node::core::effects::Found;
use rollback_node::core::machine::Machine;
use rollback_node::exec::systems::connect;
use rollback_node::protocol::encode::BodyOut;
use rollback_node::protocol::values::InFlightView;
use rollback_node::runtime::ofrep::{FlagsView, OfrepServer};
use rollback_node::store::journal::{Journal, FILE_NAME, LOCK_NAME};
use rollback_node::store::replay::{self, Open};
use rollback_node::store::{MemoryStore, Store};
use rollback_node::{Estate, Session, EXAMPLE_ESTATE};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A rollback controller speaking the Maelstrom JSON-lines protocol on stdin/stdout.
///
/// Send it one message per line, such as
/// {"src":"admin","dest":"n1","body":{"type":"rollback","msg_id":1,"version":3}},
/// and it rolls back with the right strategy: disable_feature (instant kill switch),
/// switch_traffic (blue-green, zero downtime), rollback (a migration's down()) or restore
/// (from backup, last resort); migrate, enable_feature, status and history complete the set.
/// Add "dry_run": true to any change to see its effects without performing them.
/// Replies go to stdout, diagnostics to stderr.
///
/// Without --estate it manages the built-in example estate (print it with
/// `rollback-node example-estate`). Without --state-dir it keeps everything in memory and starts
/// fresh each run; with it, every change is journaled before it is acted on and acknowledged, and
/// a restart carries on where the node stopped.
#[derive(Parser, Debug)]
#[command(version, about, long_about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Estate description (TOML) to manage instead of the built-in example (the format is what
    /// `rollback-node example-estate` prints). With --state-dir, only needed the first time.
    #[arg(long, value_name = "FILE")]
    estate: Option<PathBuf>,
    /// Directory for the durable journal (created if missing). The node resumes from it at start.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Simulated effects take F × their modelled seconds of wall time (0: instant, the default).
    /// Replies report the modelled seconds at any pace.
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = pace)]
    pace: f64,
    /// Also serve OpenFeature Remote Evaluation (OFREP) of the node's flags over HTTP at ADDR,
    /// such as 127.0.0.1:8016: a client's next evaluation after a reply sees the change.
    #[arg(long, value_name = "ADDR")]
    ofrep: Option<SocketAddr>,
}

fn pace(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() && f >= 0.0 => Ok(f),
        _ => Err(format!(
            "{text} is not a pace; give a number of at least 0, such as 0.05 (a 60 s restore then takes 3 s)"
        )),
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print where the estate of a state directory stands, as one JSON line (reads the
    /// snapshot and the journal; the node need not be running).
    Status {
        /// The state directory.
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
    },
    /// Print the audit trail of a state directory: operations that ended, as JSON lines, oldest
    /// first.
    History {
        /// The state directory.
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        /// Print only the last N entries.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
    /// Print the built-in example estate (TOML) on stdout: a starting point for your own.
    ExampleEstate,
}

/// A failure to report on stderr, with the exit code it ends with.
struct Failure(u8, String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve(cli.serve),
        Some(Command::Status { state_dir }) => status(&state_dir),
        Some(Command::History { state_dir, limit }) => history(&state_dir, limit),
        Some(Command::ExampleEstate) => print_lines([EXAMPLE_ESTATE.trim_end().to_owned()]),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("rollback-node: {message}");
            ExitCode::from(code)
        }
    }
}

fn config(message: impl ToString) -> Failure {
    Failure(2, message.to_string())
}

fn read_estate(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| config(format!("cannot read estate file {}: {e}", path.display())))
}

fn serve(args: ServeArgs) -> Result<(), Failure> {
    let given = match &args.estate {
        Some(path) => Some((read_estate(path)?, path.display().to_string())),
        None => None,
    };
    let given_dir = match &args.estate {
        Some(path) => estate_dir(path),
        None => std::env::current_dir().unwrap_or_default(),
    };
    let Some(dir) = &args.state_dir else {
        let estate = match &given {
            Some((text, origin)) => Estate::from_toml(text, origin).map_err(config)?,
            None => Estate::example(),
        };
        let (executors, found) = connect(&estate, &given_dir, args.pace).map_err(config)?;
        let mut machine = Machine::new(estate.state);
        machine.observe(&found);
        let session = Session::new(machine, executors, MemoryStore::new());
        return run(session, args.ofrep);
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
    let mut session = Session::new(machine, executors, journal);
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
    run(session, args.ofrep)
}

/// The directory an estate file is in (its relative paths are relative to it), absolute.
fn estate_dir(path: &Path) -> PathBuf {
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
    state: rollback_node::State,
    snapshot: Option<rollback_node::core::Snapshot>,
    entries: Vec<rollback_node::store::Entry>,
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

/// Serves stdin to stdout, and OFREP at `ofrep` if given.
fn run<S: Store>(mut session: Session<S>, ofrep: Option<SocketAddr>) -> Result<(), Failure> {
    let _server = match ofrep {
        Some(addr) => {
            let view = FlagsView::new(session.machine().state().flags.clone());
            let server = OfrepServer::start(addr, view.clone()).map_err(|e| {
                config(format!(
                    "cannot serve OFREP at {addr}: {e}; give --ofrep a free address such as 127.0.0.1:8016"
                ))
            })?;
            eprintln!(
                "rollback-node: serving OFREP flag evaluation at http://{}/ofrep/v1/evaluate/flags",
                server.local_addr()
            );
            session.publish_flags(view);
            Some(server)
        }
        None => None,
    };
    rollback_node::runtime::serve(session, io::stdin(), io::stdout().lock(), io::stderr())
        .map_err(|e| Failure(1, e.to_string()))
}

fn status(dir: &Path) -> Result<(), Failure> {
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
    let mut status = rollback_node::core::transitions::status_of(machine.state());
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
    let line = serde_json::to_string(&BodyOut::new(None, &status))
        .map_err(|e| Failure(1, e.to_string()))?;
    print_lines([line])
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
fn history(dir: &Path, limit: Option<u64>) -> Result<(), Failure> {
    let journal = Journal::open_existing(dir).map_err(config)?;
    let keep = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let mut kept = std::collections::VecDeque::new();
    let mut expected = 1;
    let scanned = journal.scan(0, |entry| {
        if entry.seq != expected {
            return Err(rollback_node::store::journal::JournalError(format!(
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
    print_lines(kept)?;
    scanned.map_err(config)
}

fn print_lines(lines: impl IntoIterator<Item = String>) -> Result<(), Failure> {
    let mut stdout = io::stdout().lock();
    for line in lines {
        match writeln!(stdout, "{line}") {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            other => other.map_err(|e| Failure(1, e.to_string()))?,
        }
    }
    Ok(())
}
