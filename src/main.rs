//! The `rollback-node` binary: serves one estate over the Maelstrom protocol on stdin/stdout,
//! optionally durable in a state directory; `status` and `history` read a state directory.
//! Every stdout line of the node is a protocol reply; diagnostics go to stderr.

use clap::{Args, Parser, Subcommand};
use rollback_node::journal::Journal;
use rollback_node::lines::{Line, LineReader};
use rollback_node::session::Recorder;
use rollback_node::state::EXAMPLE_ESTATE;
use rollback_node::wire::{BodyOut, MAX_LINE_BYTES};
use rollback_node::{Machine, Request, Session, Simulated, State};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A rollback controller speaking the Maelstrom JSON-lines protocol on stdin/stdout.
///
/// Send it one message per line, such as
/// {"src":"admin","dest":"n1","body":{"type":"rollback","msg_id":1,"version":3}},
/// and it rolls back with the right strategy: disable_feature (instant kill switch),
/// switch_traffic (blue-green, zero downtime), rollback (a migration's down()) or restore
/// (from backup, last resort); migrate, enable_feature, status and history complete the set.
/// Replies go to stdout, diagnostics to stderr.
///
/// Without --estate it manages the built-in example estate. Without --state-dir it keeps
/// everything in memory and starts fresh each run; with it, every change is journaled before
/// it is acknowledged, and a restart carries on where the node stopped.
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
    /// Estate description (TOML) to manage instead of the built-in example (format: see
    /// estates/example.toml). With --state-dir, only needed the first time.
    #[arg(long, value_name = "FILE")]
    estate: Option<PathBuf>,
    /// Directory for the durable journal (created if missing). The node replays it at start.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print where the estate of a state directory stands, as one JSON line (replays its
    /// journal; the node need not be running).
    Status {
        /// The state directory.
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
    },
    /// Print the audit trail of a state directory: accepted changes as JSON lines, oldest first.
    History {
        /// The state directory.
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        /// Print only the last N entries.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
}

/// A failure to report on stderr, with the exit code it ends with.
struct Failure(u8, String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve(cli.serve),
        Some(Command::Status { state_dir }) => status(&state_dir),
        Some(Command::History { state_dir, limit }) => history(&state_dir, limit),
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
    let Some(dir) = &args.state_dir else {
        let state = match &given {
            Some((text, origin)) => State::from_toml(text, origin).map_err(config)?,
            None => State::example(),
        };
        return run(Session::new(Machine::new(state, Simulated)));
    };
    let (journal, text) = Journal::open(
        dir,
        given.as_ref().map(|(t, o)| (t.as_str(), o.as_str())),
        EXAMPLE_ESTATE,
    )
    .map_err(config)?;
    let origin = match &given {
        Some((_, origin)) => origin.clone(),
        None => format!("{} (stored estate)", journal.path().display()),
    };
    let mut machine = Machine::new(State::from_toml(&text, &origin).map_err(config)?, Simulated);
    let replayed = journal.replay(&mut machine).map_err(config)?;
    if replayed > 0 {
        let state = machine.state();
        eprintln!(
            "rollback-node: resumed {} after {replayed} journal entries: schema at version {}, {} live",
            dir.display(),
            state.schema_version,
            state.traffic.live
        );
    }
    run(Session::with_recorder(machine, journal))
}

/// The stdio loop: one line at a time. Replies are flushed whenever no more input is buffered,
/// so an interactive caller sees each reply at once and a piped batch is written in chunks;
/// what the recorder holds is committed before any reply leaves.
fn run<R: Recorder>(mut session: Session<Simulated, R>) -> Result<(), Failure> {
    let io_failure = |e: io::Error| Failure(1, e.to_string());
    let mut reader = LineReader::new(io::stdin().lock(), MAX_LINE_BYTES);
    let mut stdout = io::stdout().lock();
    let mut stderr = io::stderr();
    let mut line = Vec::with_capacity(1024);
    let mut out = Vec::with_capacity(1 << 16);
    loop {
        let next = reader.next_line(&mut line).map_err(io_failure)?;
        if let Some(kind) = next {
            let diagnostic = match kind {
                Line::Complete => session.handle_line(&line, &mut out),
                Line::TooLong(bytes) => Some(session.too_long(bytes)),
            };
            if let Some(diagnostic) = diagnostic {
                let _ = writeln!(stderr, "rollback-node: {diagnostic}");
            }
        }
        if next.is_none() || out.len() >= 1 << 16 || !reader.has_buffered() {
            session.recorder_mut().commit().map_err(|e| {
                Failure(
                    1,
                    format!("{e}; stopping without sending the unrecorded replies"),
                )
            })?;
            let written = stdout.write_all(&out).and_then(|()| stdout.flush());
            match written {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                other => other.map_err(io_failure)?,
            }
            out.clear();
        }
        if next.is_none() {
            return Ok(());
        }
    }
}

/// Loads a state directory's estate and replays its journal.
fn resume(dir: &Path) -> Result<(Journal, Machine), Failure> {
    let (journal, text) = Journal::open_existing(dir).map_err(config)?;
    let origin = format!("{} (stored estate)", journal.path().display());
    let mut machine = Machine::new(State::from_toml(&text, &origin).map_err(config)?, Simulated);
    journal.replay(&mut machine).map_err(config)?;
    Ok((journal, machine))
}

fn status(dir: &Path) -> Result<(), Failure> {
    let (_, mut machine) = resume(dir)?;
    let reply = machine
        .apply(&Request::Status {})
        .map_err(|e| Failure(1, e.to_string()))?;
    let line = serde_json::to_string(&BodyOut::new(None, &reply))
        .map_err(|e| Failure(1, e.to_string()))?;
    print_lines([line])
}

fn history(dir: &Path, limit: Option<usize>) -> Result<(), Failure> {
    let (journal, _) = Journal::open_existing(dir).map_err(config)?;
    let rows = journal.history(limit).map_err(config)?;
    print_lines(rows.iter().map(|row| row.to_json_line()))
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
