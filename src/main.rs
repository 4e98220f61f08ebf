//! The `rollback-node` binary: serves one estate over the Maelstrom protocol on stdin/stdout.
//! Every stdout line is a protocol reply; diagnostics go to stderr.

use clap::Parser;
use rollback_node::lines::{Line, LineReader};
use rollback_node::wire::MAX_LINE_BYTES;
use rollback_node::{Machine, Session, Simulated, State};
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// A rollback controller speaking the Maelstrom JSON-lines protocol on stdin/stdout.
///
/// Send it one message per line, such as
/// {"src":"admin","dest":"n1","body":{"type":"rollback","msg_id":1,"version":3}},
/// and it rolls back with the right strategy: disable_feature (instant kill switch),
/// switch_traffic (blue-green, zero downtime), rollback (a migration's down()) or restore
/// (from backup, last resort). status reports where the estate stands. Replies go to stdout,
/// diagnostics to stderr. Without --estate it manages the built-in example estate.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    /// Estate description (TOML) to manage instead of the built-in example
    /// (see estates/example.toml for the format).
    #[arg(long, value_name = "FILE")]
    estate: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let state = match &cli.estate {
        None => State::example(),
        Some(path) => match load_estate(path) {
            Ok(state) => state,
            Err(message) => {
                eprintln!("rollback-node: {message}");
                return ExitCode::from(2);
            }
        },
    };
    let session = Session::new(Machine::new(state, Simulated));
    match serve(session) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rollback-node: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load_estate(path: &PathBuf) -> Result<State, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read estate file {}: {e}", path.display()))?;
    State::from_toml(&text, &path.display().to_string()).map_err(|e| e.to_string())
}

/// The stdio loop: one line at a time; replies are flushed whenever no more input is buffered,
/// so an interactive caller sees each reply at once and a piped batch is written in chunks.
fn serve(mut session: Session) -> io::Result<()> {
    let stdin = io::stdin().lock();
    let mut reader = LineReader::new(stdin, MAX_LINE_BYTES);
    let mut stdout = io::stdout().lock();
    let mut stderr = io::stderr();
    let mut line = Vec::with_capacity(1024);
    let mut out = Vec::with_capacity(1 << 16);
    while let Some(kind) = reader.next_line(&mut line)? {
        let diagnostic = match kind {
            Line::Complete => session.handle_line(&line, &mut out),
            Line::TooLong(bytes) => Some(session.too_long(bytes)),
        };
        if let Some(diagnostic) = diagnostic {
            let _ = writeln!(stderr, "rollback-node: {diagnostic}");
        }
        if out.len() >= 1 << 16 || !reader.has_buffered() {
            stdout.write_all(&out)?;
            stdout.flush()?;
            out.clear();
        }
    }
    stdout.write_all(&out)?;
    stdout.flush()
}
