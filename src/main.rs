//! The `rollback-node` binary: serves one estate over the Maelstrom protocol on stdin/stdout,
//! optionally durable in a state directory; `status` and `history` read a state directory;
//! `example-estate` prints the built-in estate. Every stdout line of the node is a protocol
//! reply; diagnostics go to stderr. This file is the command line only.

use clap::{Args, Parser, Subcommand};
use rollback_node::exec::estate::Role;
use rollback_node::node::{self, Failure, Options};
use rollback_node::EXAMPLE_ESTATE;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// Serve the HTTP API, the event stream, the incident page (at /) and OFREP at ADDR, such
    /// as 127.0.0.1:8080. Needs [[tokens]] in the estate (see `new-token`). stdin keeps working;
    /// its end no longer stops the node: SIGTERM or SIGINT does.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Share a PostgreSQL store with other nodes, instead of --state-dir:
    /// postgres://USER@/DB?host=SOCKETDIR (optionally &port=N). Every node started with the same
    /// store and estate is one controller: any of them accepts any request, one holds the lease
    /// and runs schema and traffic operations, and the kill switch needs no leader.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "state_dir",
        requires = "node_id"
    )]
    store: Option<String>,
    /// This node's id in the cluster (with --store), such as n1: each node has its own.
    #[arg(long, value_name = "NAME", requires = "store")]
    node_id: Option<String>,
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
    /// Make a token for --listen: prints a fresh secret (first line; shown only now), then the
    /// [[tokens]] lines to paste into the estate, which hold the secret's SHA-256, never the
    /// secret.
    NewToken {
        /// The token's name: requests made with it are sent as this name.
        name: String,
        /// viewer (reads), operator (flags, traffic, dry runs) or admin (rollback, migrate,
        /// restore too).
        #[arg(value_parser = role)]
        role: Role,
    },
}

fn role(text: &str) -> Result<Role, String> {
    text.parse::<Role>()
        .map_err(|_| format!("{text} is not a role; give viewer, operator or admin"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None if cli.serve.store.is_some() => serve_cluster(cli.serve),
        None => node::run(Options {
            estate: cli.serve.estate,
            state_dir: cli.serve.state_dir,
            pace: cli.serve.pace,
            ofrep: cli.serve.ofrep,
            listen: cli.serve.listen,
        }),
        Some(Command::Status { state_dir }) => {
            node::status(&state_dir).and_then(|line| print_lines([line]))
        }
        Some(Command::History { state_dir, limit }) => {
            let (lines, damage) = node::history(&state_dir, limit);
            print_lines(lines).and(damage)
        }
        Some(Command::ExampleEstate) => print_lines([EXAMPLE_ESTATE.trim_end().to_owned()]),
        Some(Command::NewToken { name, role }) => node::new_token(&name, role).and_then(|(secret, lines)| {
            eprintln!("rollback-node: the secret is on the first line and is shown only now; the estate keeps only its SHA-256");
            print_lines([secret, String::new(), lines])
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("rollback-node: {message}");
            ExitCode::from(code)
        }
    }
}

fn serve_cluster(args: ServeArgs) -> Result<(), Failure> {
    rollback_node::cluster::node::run(rollback_node::cluster::node::ClusterOptions {
        store: args.store.unwrap_or_default(),
        node_id: args.node_id.unwrap_or_default(),
        estate: args.estate,
        pace: args.pace,
        ofrep: args.ofrep,
        listen: args.listen,
    })
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
