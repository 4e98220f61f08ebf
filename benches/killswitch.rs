//! Kill-switch benchmark: the round trip of a flag change while a paced restore is in flight.
//!
//! ```sh
//! cargo bench --bench killswitch
//! cargo bench --bench killswitch -- --min 5000    # at least 5,000 round trips per run
//! ```
//!
//! The node runs with `--pace 0.05`: the example estate's restore (modelled at 60 s) then takes
//! 3 s of wall time in the schema lane. The benchmark sends `init`, a `restore` of
//! `users_backup_20240115`, and then, while it runs, `disable_feature` / `enable_feature` of
//! `new_checkout` in turn, one at a time: write one line, wait for its reply line, repeat (every
//! msg_id unique). It goes on until the first restore's reply has arrived and at least `--min`
//! round trips (2,000) are done; when a restore ends before that, another one is sent at once,
//! so the schema lane is busy for every measured round trip. Every 250 ms a `status` (not
//! counted) shows the restore's `in_flight` progress.
//!
//! Next to it, the same round trip with nothing in flight (same node, same flags, no restore)
//! and the round trip of a floor: this executable re-executed with `ROLLBACK_NODE_BENCH_ECHO`
//! set, a bare serde_json envelope parse that writes a reply line of the node's reply size (the
//! approach of `benches/throughput.rs`). Then the same two node runs with `--state-dir` on a
//! fresh temporary directory, where every flag change waits for its journal commit (fsync).
//!
//! Run without `--bench` (as `cargo test --benches` does), it is a quick smoke run.

mod common;

use common::*;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Set (to the pad offsets) to make this executable the floor echo.
const ECHO_ENV: &str = "ROLLBACK_NODE_BENCH_ECHO";
const FEATURE: &str = "new_checkout";
const BACKUP: &str = "users_backup_20240115";
/// How often a `status` is sent during the in-flight runs.
const STATUS_EVERY: Duration = Duration::from_millis(250);

fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(ECHO_ENV) {
        return match common::floor(&spec) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("echo: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("killswitch: {e}");
            eprintln!("usage: cargo bench --bench killswitch [-- --min N] [-- --pace F]");
            return ExitCode::from(2);
        }
    };
    match bench(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("killswitch: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The messages.

/// The flag change with msg_id `id`: odd ids disable, even ids enable.
fn flag_request(id: u64) -> String {
    let kind = if id % 2 == 1 {
        "disable_feature"
    } else {
        "enable_feature"
    };
    format!(
        r#"{{"src":"c1","dest":"n1","body":{{"type":"{kind}","msg_id":{id},"feature":"{FEATURE}"}}}}"#
    )
}

/// The node's reply to [`flag_request`]`(id)`.
fn flag_reply(id: u64) -> String {
    let head = r#"{"src":"n1","dest":"c1","body":{"type":"#;
    if id % 2 == 1 {
        format!(
            r#"{head}"feature_disabled","in_reply_to":{id},"feature":"{FEATURE}","rolled_back_instant":true}}}}"#
        )
    } else {
        format!(r#"{head}"feature_enabled","in_reply_to":{id},"feature":"{FEATURE}"}}}}"#)
    }
}

fn restore_request(id: u64) -> String {
    format!(
        r#"{{"src":"c1","dest":"n1","body":{{"type":"restore","msg_id":{id},"backup":"{BACKUP}"}}}}"#
    )
}

fn status_request(id: u64) -> String {
    format!(r#"{{"src":"c1","dest":"n1","body":{{"type":"status","msg_id":{id}}}}}"#)
}

/// The echo's pad offsets: the node's reply length minus the request length, per type.
fn echo_spec() -> String {
    let delta = |id: u64| flag_reply(id).len() as isize - flag_request(id).len() as isize;
    format!(
        "init={},disable_feature={},enable_feature={}",
        INIT_OK.len() as isize - INIT.len() as isize,
        delta(1),
        delta(2)
    )
}

// ---------------------------------------------------------------------------------------------
// Driving a program.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    Floor,
    Node,
    Durable,
}

impl Program {
    fn label(self) -> &'static str {
        match self {
            Program::Floor => "floor (serde_json envelope + same-size reply)",
            Program::Node => "rollback-node (in memory)",
            Program::Durable => "rollback-node --state-dir",
        }
    }

    fn command(self, pace: f64, state_dir: &Path) -> io::Result<Command> {
        Ok(match self {
            Program::Floor => {
                let mut command = Command::new(std::env::current_exe()?);
                command.env(ECHO_ENV, echo_spec());
                command
            }
            Program::Node | Program::Durable => {
                let mut command = Command::new(NODE);
                command.arg("--pace").arg(pace.to_string());
                if self == Program::Durable {
                    command.arg("--state-dir").arg(state_dir);
                }
                command
            }
        })
    }
}

/// A running program: one line in, reply lines out.
struct Peer {
    child: Child,
    stdin: Option<BufWriter<ChildStdin>>,
    stdout: BufReader<ChildStdout>,
    line: Vec<u8>,
    label: &'static str,
    stderr: PathBuf,
}

impl Peer {
    /// Spawns `command`; its stderr goes to the file `stderr` (shown if it fails).
    fn spawn(mut command: Command, label: &'static str, stderr: PathBuf) -> io::Result<Peer> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr)?)
            .spawn()?;
        let stdin = BufWriter::new(child.stdin.take().expect("piped"));
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Peer {
            child,
            stdin: Some(stdin),
            stdout,
            line: Vec::with_capacity(1024),
            label,
            stderr,
        })
    }

    /// Writes one line (one `write` call).
    fn send(&mut self, line: &str) -> io::Result<()> {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes())?;
        stdin.write_all(b"\n")?;
        stdin.flush()
    }

    /// Reads one reply line (without its `\n`).
    fn receive(&mut self) -> io::Result<&[u8]> {
        self.line.clear();
        if self.stdout.read_until(b'\n', &mut self.line)? == 0 {
            return Err(other(format!(
                "{} closed its output; stderr: {}",
                self.label,
                self.stderr_text()
            )));
        }
        if self.line.last() == Some(&b'\n') {
            self.line.pop();
        }
        Ok(&self.line)
    }

    /// Closes stdin, reads the remaining lines, waits for the exit.
    fn finish(mut self) -> io::Result<Vec<String>> {
        drop(self.stdin.take());
        let mut rest = Vec::new();
        loop {
            self.line.clear();
            if self.stdout.read_until(b'\n', &mut self.line)? == 0 {
                break;
            }
            rest.push(String::from_utf8_lossy(&self.line).trim_end().to_owned());
        }
        let status = self.child.wait()?;
        if !status.success() {
            return Err(other(format!(
                "{} exited with {status}; stderr: {}",
                self.label,
                self.stderr_text()
            )));
        }
        Ok(rest)
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr)
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}

/// One run's figures.
struct RunResult {
    program: Program,
    in_flight: bool,
    /// Sorted round trips.
    times: Vec<Duration>,
    restores: u64,
    /// Wall time from sending the first restore to its reply.
    first_restore: Option<Duration>,
    /// `(seconds since the first restore, in_flight progress)` from each status.
    progress: Vec<(f64, String)>,
}

/// What a `status` reply says about the restore in flight: `done/total unit` or `queued`, or
/// `none in flight`.
fn progress_of(status: &[u8]) -> io::Result<String> {
    let value: serde_json::Value = serde_json::from_slice(status)
        .map_err(|e| other(format!("status reply is not JSON: {e}")))?;
    let body = &value["body"];
    if body["type"] != "status_ok" {
        return Err(other(format!(
            "unexpected status reply {}",
            String::from_utf8_lossy(status)
        )));
    }
    let in_flight = body["in_flight"].as_array().cloned().unwrap_or_default();
    let Some(restore) = in_flight.iter().find(|op| op["type"] == "restore") else {
        return Ok("none in flight".to_owned());
    };
    let progress = &restore["progress"];
    Ok(if progress.is_object() {
        format!(
            "{}/{} {}",
            progress["done"],
            progress["total"],
            progress["unit"].as_str().unwrap_or("")
        )
    } else {
        restore["state"].as_str().unwrap_or("?").to_owned()
    })
}

/// Handles `line` if it is the reply to the restore in flight; `false` if it is not.
fn restore_reply(
    program: Program,
    line: &[u8],
    outstanding: &mut Option<(u64, Instant)>,
    restores_done: &mut u64,
    first_restore: &mut Option<Duration>,
) -> io::Result<bool> {
    let Some((id, sent)) = *outstanding else {
        return Ok(false);
    };
    if in_reply_to(line) != Some(id) {
        return Ok(false);
    }
    if memchr::memmem::find(line, b"\"type\":\"restore_complete\"").is_none() {
        return Err(other(format!(
            "{}: unexpected restore reply {}",
            program.label(),
            String::from_utf8_lossy(line)
        )));
    }
    if *restores_done == 0 {
        *first_restore = Some(sent.elapsed());
    }
    *restores_done += 1;
    *outstanding = None;
    Ok(true)
}

/// One process: `init`, optionally a restore, then flag round trips.
fn run(
    program: Program,
    in_flight: bool,
    min: u64,
    pace: f64,
    scratch: &Path,
) -> io::Result<RunResult> {
    let state_dir = scratch.join("state");
    if state_dir.exists() {
        std::fs::remove_dir_all(&state_dir)?;
    }
    let mut peer = Peer::spawn(
        program.command(pace, &state_dir)?,
        program.label(),
        scratch.join("stderr"),
    )?;
    peer.send(INIT)?;
    let reply = peer.receive()?;
    if program != Program::Floor && reply != INIT_OK.as_bytes() {
        return Err(other(format!(
            "{}: unexpected init reply {}",
            program.label(),
            String::from_utf8_lossy(reply)
        )));
    }

    let mut next_id = 1u64;
    let mut restores = 0u64;
    let mut restores_done = 0u64;
    // (msg_id, sent at) of the restore in flight.
    let mut outstanding: Option<(u64, Instant)> = None;
    let mut first_restore = None;
    let mut progress = Vec::new();
    let began = Instant::now();
    let mut last_status = began;
    let mut times = Vec::with_capacity(min as usize * 4);

    loop {
        if in_flight && outstanding.is_none() && (restores_done == 0 || times.len() < min as usize)
        {
            let id = next_id;
            next_id += 1;
            peer.send(&restore_request(id))?;
            restores += 1;
            outstanding = Some((id, Instant::now()));
        }
        if times.len() >= min as usize && (!in_flight || restores_done > 0) {
            break;
        }
        if in_flight && last_status.elapsed() >= STATUS_EVERY {
            last_status = Instant::now();
            let id = next_id;
            next_id += 1;
            peer.send(&status_request(id))?;
            loop {
                let line = peer.receive()?;
                if in_reply_to(line) == Some(id) {
                    progress.push((began.elapsed().as_secs_f64(), progress_of(line)?));
                    break;
                }
                if !restore_reply(
                    program,
                    line,
                    &mut outstanding,
                    &mut restores_done,
                    &mut first_restore,
                )? {
                    return Err(other(format!(
                        "{}: unexpected line {}",
                        program.label(),
                        String::from_utf8_lossy(line)
                    )));
                }
            }
            continue;
        }

        let id = next_id;
        next_id += 1;
        let request = flag_request(id);
        let start = Instant::now();
        peer.send(&request)?;
        loop {
            let line = peer.receive()?;
            if in_reply_to(line) == Some(id) {
                times.push(start.elapsed());
                if program != Program::Floor && line != flag_reply(id).as_bytes() {
                    return Err(other(format!(
                        "{}: unexpected reply {}",
                        program.label(),
                        String::from_utf8_lossy(line)
                    )));
                }
                break;
            }
            if !restore_reply(
                program,
                line,
                &mut outstanding,
                &mut restores_done,
                &mut first_restore,
            )? {
                return Err(other(format!(
                    "{}: unexpected line {}",
                    program.label(),
                    String::from_utf8_lossy(line)
                )));
            }
        }
    }

    // The node ends once the restore still running has completed: its reply comes last.
    let rest = peer.finish()?;
    if let Some((id, _)) = outstanding {
        let found = rest.iter().any(|line| {
            in_reply_to(line.as_bytes()) == Some(id) && line.contains("restore_complete")
        });
        if !found {
            return Err(other(format!(
                "{}: no reply to the last restore (msg_id {id}) at the end: {rest:?}",
                program.label()
            )));
        }
    }
    if state_dir.exists() {
        std::fs::remove_dir_all(&state_dir)?;
    }
    times.sort();
    Ok(RunResult {
        program,
        in_flight,
        times,
        restores,
        first_restore,
        progress,
    })
}

// ---------------------------------------------------------------------------------------------
// Options and the report.

struct Options {
    min: u64,
    pace: f64,
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
        let mut bench = false;
        let mut min = None;
        let mut pace = None;
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .map(|v| v.replace('_', ""))
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match arg.as_str() {
                "--bench" => bench = true,
                "--min" => {
                    min = Some(
                        value("--min")?
                            .parse::<u64>()
                            .map_err(|_| "--min needs a number".to_owned())?
                            .max(1),
                    )
                }
                "--pace" => {
                    pace = Some(
                        value("--pace")?
                            .parse::<f64>()
                            .ok()
                            .filter(|p| p.is_finite() && *p > 0.0)
                            .ok_or_else(|| "--pace needs a positive number".to_owned())?,
                    )
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        Ok(Options {
            // `cargo test --benches`: a smoke run (a 0.3 s restore, 50 round trips).
            min: min.unwrap_or(if bench { 2_000 } else { 50 }),
            pace: pace.unwrap_or(if bench { 0.05 } else { 0.005 }),
        })
    }
}

fn row(result: &RunResult) -> String {
    let times = &result.times;
    format!(
        "| {} | {} | {} | {} | {} | {} | {} |",
        result.program.label(),
        if result.in_flight {
            format!("restore running ({} sent)", result.restores)
        } else {
            "nothing".to_owned()
        },
        grouped(times.len() as u64),
        micros(percentile(times, 50.0)),
        micros(percentile(times, 99.0)),
        micros(*times.last().unwrap_or(&Duration::ZERO)),
        result
            .first_restore
            .map_or(String::new(), |d| format!("{:.2} s", d.as_secs_f64())),
    )
}

fn bench(options: &Options) -> io::Result<()> {
    let scratch = Scratch::new("killswitch")?;
    let pace = options.pace;
    println!("rollback-node kill-switch round trip: {}", machine_line());
    println!(
        "node with --pace {pace}: a restore of {BACKUP} (modelled 60 s) takes {:.1} s of wall time; \
         while it runs, disable_feature / enable_feature {FEATURE} one at a time (write a line, \
         wait for its reply), unique msg_ids, until the first restore has replied and at least \
         {} round trips are done (a new restore is sent whenever one ends before that); a status \
         every {} ms (not counted) shows the restore's progress. Compared with the same round \
         trip with nothing in flight and with a serde_json echo floor; then with --state-dir \
         (every change waits for its journal commit, fsync).",
        60.0 * pace,
        grouped(options.min),
        STATUS_EVERY.as_millis()
    );
    println!();

    let mut results = Vec::new();
    for (program, in_flight) in [
        (Program::Node, true),
        (Program::Node, false),
        (Program::Floor, false),
        (Program::Durable, true),
        (Program::Durable, false),
    ] {
        // Nothing-in-flight runs take as many round trips as the in-flight run of the same
        // storage, so the percentiles have the same sample size.
        let min = if in_flight {
            options.min
        } else {
            results
                .iter()
                .filter(|r: &&RunResult| {
                    r.in_flight && (r.program == Program::Durable) == (program == Program::Durable)
                })
                .map(|r| r.times.len() as u64)
                .max()
                .unwrap_or(options.min)
        };
        eprint!(
            "\r{} ({})...                    ",
            program.label(),
            if in_flight { "restore running" } else { "idle" }
        );
        results.push(run(program, in_flight, min, pace, scratch.path())?);
    }
    eprint!("\r{:100}\r", "");

    println!("| program | in flight | round trips | p50 µs | p99 µs | max µs | first restore replied after |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for result in &results {
        println!("{}", row(result));
    }
    println!();
    for result in results.iter().filter(|r| r.in_flight) {
        let trace: Vec<String> = result
            .progress
            .iter()
            .map(|(t, p)| format!("{t:.2} s: {p}"))
            .collect();
        println!(
            "status during the {} run: {}",
            result.program.label(),
            if trace.is_empty() {
                "(none sent)".to_owned()
            } else {
                trace.join("; ")
            }
        );
    }
    println!();
    let p99 = |program: Program, in_flight: bool| {
        results
            .iter()
            .find(|r| r.program == program && r.in_flight == in_flight)
            .map_or(Duration::ZERO, |r| percentile(&r.times, 99.0))
    };
    let limit = Duration::from_millis(1);
    let busy = p99(Program::Node, true);
    println!(
        "goal: kill-switch p99 under 1 ms while a restore runs (in memory): {} (p99 {} µs; \
         idle {} µs, floor {} µs)",
        met(busy < limit),
        micros(busy),
        micros(p99(Program::Node, false)),
        micros(p99(Program::Floor, false))
    );
    let durable = p99(Program::Durable, true);
    println!(
        "--state-dir (no goal; each change waits for its fsync): p99 {} µs while a restore runs, \
         {} µs idle{}",
        micros(durable),
        micros(p99(Program::Durable, false)),
        if durable < limit {
            " (under 1 ms too)"
        } else {
            " (over 1 ms)"
        }
    );
    Ok(())
}
