//! Throughput benchmark: the release `rollback-node` binary against a bare floor, side by side.
//!
//! ```sh
//! cargo bench --bench throughput              # N = 100k and 1M
//! cargo bench --bench throughput -- --long    # adds N = 10M
//! ```
//!
//! For each N it generates a workload file (`init`, then N messages cycling
//! `disable_feature new_checkout`, `switch_traffic green->blue`, `switch_traffic blue->green`,
//! every `msg_id` unique) and pipes it into three programs, alternately, several times:
//!
//! - **floor**: this benchmark executable re-executed with `ROLLBACK_NODE_BENCH_FLOOR` set. It
//!   parses each line's envelope (`src`, `dest`, `body.type`, `body.msg_id`; the other body fields
//!   are scanned and skipped) with serde_json and writes a reply line of the same size as the
//!   node's reply to that message, through serde_json, with the node's flushing policy. No state
//!   machine, no retry memory.
//! - **node**: `rollback-node` in memory.
//! - **node --state-dir**: `rollback-node` with a journal in a fresh temporary directory.
//!
//! The workload is written into the program's stdin through a pipe (by a thread, from the file)
//! and the reply stream is read through a pipe and its lines counted (the node's first and last
//! replies are also checked byte for byte). Throughput is N / wall-clock time from spawn to exit,
//! start-up included; the best run is reported. Peak RSS comes from GNU time (`/usr/bin/time`).
//! Then the interactive round trip: one process, one message, wait for its reply, repeat.
//!
//! Goals (printed as met / NOT met for each N): in memory at least 0.9 × the floor's msg/s;
//! with `--state-dir` at least 0.35 × the in-memory msg/s.
//!
//! Run without `--bench` (as `cargo test --benches` does), it is a quick smoke run. With
//! `--workload FILE` it only writes the workload (N = 100,000 unless `--n` says) into FILE, to
//! feed a profiler: `valgrind --tool=callgrind target/release/rollback-node < FILE`.

mod common;

use common::{
    cpu_model, grouped, mib, micros, other, percentile, workload_request, GNU_TIME, INIT, INIT_OK,
    NODE,
};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Set (to the pad offsets) to make this executable the floor program.
const FLOOR_ENV: &str = "ROLLBACK_NODE_BENCH_FLOOR";
/// The release node binary, built by cargo for this benchmark.
/// GNU time, for the peak RSS of a child.
/// Goal: the in-memory node's best msg/s at least this fraction of the floor's.
const IN_MEMORY_GOAL: f64 = 0.9;
/// Goal: the `--state-dir` node's best msg/s at least this fraction of the in-memory node's.
const DURABLE_GOAL: f64 = 0.35;

fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(FLOOR_ENV) {
        return match common::floor(&spec) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("floor: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("throughput: {e}");
            eprintln!(
                "usage: cargo bench --bench throughput [-- --long] [-- --runs K] [-- --n N ...] [-- --workload FILE]"
            );
            return ExitCode::from(2);
        }
    };
    if let Some(path) = &options.workload {
        let n = options.sizes.first().copied().unwrap_or(100_000);
        return match write_workload_to(path, n) {
            Ok(()) => {
                eprintln!(
                    "throughput: wrote the workload of N = {n} to {}",
                    path.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("throughput: cannot write {}: {e}", path.display());
                ExitCode::FAILURE
            }
        };
    }
    match bench(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("throughput: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The workload.

/// The node's reply to message `i`.
fn expected_reply(i: u64) -> String {
    let head = r#"{"src":"n1","dest":"c1","body":{"type":"#;
    match (i - 1) % 3 {
        0 => format!(
            r#"{head}"feature_disabled","in_reply_to":{i},"feature":"new_checkout","rolled_back_instant":true}}}}"#
        ),
        1 => format!(
            r#"{head}"traffic_switched","in_reply_to":{i},"current_environment":"blue","downtime_seconds":0}}}}"#
        ),
        _ => format!(
            r#"{head}"traffic_switched","in_reply_to":{i},"current_environment":"green","downtime_seconds":0}}}}"#
        ),
    }
}

/// The floor's pad offsets: reply length minus request length, per request type. The two
/// `switch_traffic` replies differ by one byte (`blue`/`green`); the floor takes the shorter.
fn floor_spec() -> String {
    let delta = |i: u64| expected_reply(i).len() as isize - workload_request(i).len() as isize;
    format!(
        "init={},disable_feature={},switch_traffic={}",
        INIT_OK.len() as isize - INIT.len() as isize,
        delta(1),
        delta(2).min(delta(3))
    )
}

struct Workload {
    path: PathBuf,
    n: u64,
}

fn write_workload(dir: &Path, n: u64) -> io::Result<Workload> {
    let path = dir.join(format!("workload-{n}.jsonl"));
    write_workload_to(&path, n)?;
    Ok(Workload { path, n })
}

fn write_workload_to(path: &Path, n: u64) -> io::Result<()> {
    let mut file = BufWriter::with_capacity(1 << 20, File::create(path)?);
    writeln!(file, "{INIT}")?;
    let mut line = String::new();
    for i in 1..=n {
        line.clear();
        line.push_str(&workload_request(i));
        line.push('\n');
        file.write_all(line.as_bytes())?;
    }
    file.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Running the programs.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    Floor,
    Node,
    Durable,
}

impl Program {
    const ALL: [Program; 3] = [Program::Floor, Program::Node, Program::Durable];

    fn label(self) -> &'static str {
        match self {
            Program::Floor => "floor (serde_json envelope + same-size reply)",
            Program::Node => "rollback-node (in memory)",
            Program::Durable => "rollback-node --state-dir",
        }
    }

    /// The command, with the state directory for a durable node.
    fn command(self, state_dir: &Path) -> io::Result<Command> {
        Ok(match self {
            Program::Floor => {
                let mut command = Command::new(std::env::current_exe()?);
                command.env(FLOOR_ENV, floor_spec());
                command
            }
            Program::Node => Command::new(NODE),
            Program::Durable => {
                let mut command = Command::new(NODE);
                command.arg("--state-dir").arg(state_dir);
                command
            }
        })
    }
}

/// One batch run.
struct Run {
    elapsed: Duration,
    peak_rss_kib: Option<u64>,
    out_bytes: u64,
}

/// Pipes the workload into `program` and reads its replies to the end.
fn run_batch(program: Program, workload: &Workload, scratch: &Path) -> io::Result<Run> {
    let state_dir = scratch.join("state");
    let rss_file = scratch.join("rss");
    let stderr_file = scratch.join("stderr");
    if state_dir.exists() {
        fs::remove_dir_all(&state_dir)?;
    }
    let inner = program.command(&state_dir)?;
    let gnu_time = Path::new(GNU_TIME).exists();
    let mut command = if gnu_time {
        let mut command = Command::new(GNU_TIME);
        command
            .args(["-f", "%M", "-o"])
            .arg(&rss_file)
            .arg(inner.get_program())
            .args(inner.get_args());
        for (key, value) in inner.get_envs() {
            if let Some(value) = value {
                command.env(key, value);
            }
        }
        command
    } else {
        inner
    };
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(File::create(&stderr_file)?);
    let mut input = File::open(&workload.path)?;

    let start = Instant::now();
    let mut child = command.spawn()?;
    // The workload goes in through a pipe, fed by a thread (`io::copy` splices file to pipe).
    let mut stdin = child.stdin.take().expect("piped");
    let feeder = std::thread::spawn(move || io::copy(&mut input, &mut stdin).map(drop));
    let mut stdout = child.stdout.take().expect("piped");
    let mut buffer = vec![0u8; 1 << 18];
    let mut lines = 0u64;
    let mut out_bytes = 0u64;
    let mut first = Vec::new();
    let mut last = Vec::new();
    loop {
        let read = match stdout.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buffer[..read];
        out_bytes += read as u64;
        let newlines = chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        if lines == 0 {
            let end = chunk.iter().position(|&b| b == b'\n').unwrap_or(read);
            if first.len() < 4096 {
                first.extend_from_slice(&chunk[..end]);
            }
        }
        // Keep the tail: the last complete line is in it.
        last.extend_from_slice(chunk);
        if last.len() > 8192 {
            last.drain(..last.len() - 4096);
        }
        lines += newlines;
    }
    let status = child.wait()?;
    let elapsed = start.elapsed();
    let fed = feeder
        .join()
        .map_err(|_| other("the feeder thread panicked".to_owned()))?;
    let stderr = fs::read_to_string(&stderr_file).unwrap_or_default();
    if !status.success() {
        return Err(other(format!(
            "{} exited with {status}: {}",
            program.label(),
            stderr.trim()
        )));
    }
    fed.map_err(|e| other(format!("{}: writing its input: {e}", program.label())))?;
    let expected_lines = workload.n + 1;
    if lines != expected_lines {
        return Err(other(format!(
            "{}: {lines} reply lines for {expected_lines} messages; stderr: {}",
            program.label(),
            stderr.trim()
        )));
    }
    if program != Program::Floor {
        let last_line = last
            .strip_suffix(b"\n")
            .and_then(|l| l.rsplit(|&b| b == b'\n').next())
            .unwrap_or_default();
        let want_last = expected_reply(workload.n);
        if first != INIT_OK.as_bytes() || last_line != want_last.as_bytes() {
            return Err(other(format!(
                "{}: unexpected replies: first {:?}, last {:?}",
                program.label(),
                String::from_utf8_lossy(&first),
                String::from_utf8_lossy(last_line)
            )));
        }
    }
    let peak_rss_kib = if gnu_time {
        fs::read_to_string(&rss_file)
            .ok()
            .and_then(|text| text.lines().last()?.trim().parse().ok())
    } else {
        None
    };
    if state_dir.exists() {
        fs::remove_dir_all(&state_dir)?;
    }
    Ok(Run {
        elapsed,
        peak_rss_kib,
        out_bytes,
    })
}

/// Interactive round trips: one process; write one message, wait for its reply, repeat.
fn round_trips(program: Program, count: u64, scratch: &Path) -> io::Result<Vec<Duration>> {
    let state_dir = scratch.join("state-rt");
    if state_dir.exists() {
        fs::remove_dir_all(&state_dir)?;
    }
    let mut child = program
        .command(&state_dir)?
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut reply = String::new();
    let mut exchange = |line: &str, reply: &mut String| -> io::Result<()> {
        let mut message = String::with_capacity(line.len() + 1);
        message.push_str(line);
        message.push('\n');
        stdin.write_all(message.as_bytes())?;
        reply.clear();
        if stdout.read_line(reply)? == 0 {
            return Err(other(format!("{} closed its output", program.label())));
        }
        Ok(())
    };
    exchange(INIT, &mut reply)?;
    let mut times = Vec::with_capacity(count as usize);
    for i in 1..=count {
        let line = workload_request(i);
        let start = Instant::now();
        exchange(&line, &mut reply)?;
        times.push(start.elapsed());
        if program != Program::Floor && reply.trim_end() != expected_reply(i) {
            return Err(other(format!(
                "{}: unexpected reply {reply:?}",
                program.label()
            )));
        }
    }
    drop(stdin);
    child.wait()?;
    if state_dir.exists() {
        fs::remove_dir_all(&state_dir)?;
    }
    times.sort();
    Ok(times)
}

// ---------------------------------------------------------------------------------------------
// Options and the report.

struct Options {
    /// `--workload PATH`: write the first size's workload there (for a profiler) and stop.
    workload: Option<PathBuf>,
    sizes: Vec<u64>,
    runs: Option<usize>,
    round_trips: (u64, u64),
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
        let mut bench = false;
        let mut long = false;
        let mut sizes = Vec::new();
        let mut runs = None;
        let mut workload = None;
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .and_then(|v| v.replace('_', "").parse::<u64>().ok())
                    .ok_or_else(|| format!("{name} needs a number"))
            };
            if arg == "--workload" {
                workload = Some(PathBuf::from(
                    args.next().ok_or("--workload needs a file name")?,
                ));
                continue;
            }
            match arg.as_str() {
                "--bench" => bench = true,
                "--long" => long = true,
                "--n" => sizes.push(value("--n")?),
                "--runs" => runs = Some(value("--runs")?.max(1) as usize),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        if sizes.is_empty() {
            sizes = if bench || long {
                vec![100_000, 1_000_000]
            } else {
                // `cargo test --benches`: a smoke run.
                vec![3_000]
            };
            if long {
                sizes.push(10_000_000);
            }
        }
        let round_trips = if bench || long {
            (10_000, 1_000)
        } else {
            (100, 10)
        };
        Ok(Options {
            workload,
            sizes,
            runs,
            round_trips,
        })
    }

    fn runs_for(&self, n: u64) -> usize {
        self.runs.unwrap_or(match n {
            0..=100_000 => 5,
            100_001..=1_000_000 => 3,
            _ => 1,
        })
    }
}

fn bench(options: &Options) -> io::Result<()> {
    let scratch = std::env::temp_dir().join(format!("rollback-node-bench-{}", std::process::id()));
    fs::create_dir_all(&scratch)?;
    let result = bench_in(options, &scratch);
    let _ = fs::remove_dir_all(&scratch);
    result
}

fn bench_in(options: &Options, scratch: &Path) -> io::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "rollback-node throughput: {} ({cpus} CPUs); node {NODE}",
        cpu_model()
    );
    if !Path::new(GNU_TIME).exists() {
        println!("(no {GNU_TIME}: peak RSS is not measured; apt-get install time)");
    }
    println!(
        "workload: init, then N messages cycling disable_feature / switch_traffic green->blue / \
         switch_traffic blue->green, unique msg_ids; fed through a pipe, replies read through a pipe"
    );
    println!();
    let mut table = String::new();
    table.push_str("| N | program | msg/s (best) | median | × floor | × in-memory | peak RSS | reply B/msg |\n");
    table.push_str("|---:|---|---:|---:|---:|---:|---:|---:|\n");
    let mut verdicts = Vec::new();
    let mut node_rss: Vec<(u64, Option<u64>)> = Vec::new();
    for &n in &options.sizes {
        let workload = write_workload(scratch, n)?;
        let runs = options.runs_for(n);
        let mut results: Vec<Vec<Run>> = vec![Vec::new(), Vec::new(), Vec::new()];
        for round in 0..runs {
            for (index, program) in Program::ALL.into_iter().enumerate() {
                eprint!(
                    "\rN = {n}: run {}/{runs}, {}                ",
                    round + 1,
                    program.label()
                );
                results[index].push(run_batch(program, &workload, scratch)?);
            }
        }
        eprint!("\r{:100}\r", "");
        let rate = |run: &Run| n as f64 / run.elapsed.as_secs_f64();
        let summary: Vec<(f64, f64, Option<u64>, f64)> = results
            .iter()
            .map(|runs| {
                let mut rates: Vec<f64> = runs.iter().map(rate).collect();
                rates.sort_by(f64::total_cmp);
                let best = *rates.last().expect("at least one run");
                let median = rates[rates.len() / 2];
                let rss = runs.iter().filter_map(|r| r.peak_rss_kib).max();
                let bytes = runs[0].out_bytes as f64 / (n + 1) as f64;
                (best, median, rss, bytes)
            })
            .collect();
        let floor = summary[0].0;
        let memory = summary[1].0;
        for (program, (best, median, rss, bytes)) in Program::ALL.iter().zip(&summary) {
            let vs_memory = if *program == Program::Durable {
                format!("{:.2}", best / memory)
            } else {
                String::new()
            };
            let _ = writeln!(
                table,
                "| {} | {} | {} | {} | {:.2} | {vs_memory} | {} | {bytes:.1} |",
                grouped(n),
                program.label(),
                grouped(*best as u64),
                grouped(*median as u64),
                best / floor,
                mib(*rss)
            );
        }
        node_rss.push((n, summary[1].2));
        let met = |ok: bool| if ok { "met" } else { "NOT met" };
        verdicts.push(format!(
            "N = {}: in-memory ≥ {IN_MEMORY_GOAL} × floor: {} ({:.2}); \
             --state-dir ≥ {DURABLE_GOAL} × in-memory: {} ({:.2})",
            grouped(n),
            met(memory >= floor * IN_MEMORY_GOAL),
            memory / floor,
            met(summary[2].0 >= memory * DURABLE_GOAL),
            summary[2].0 / memory
        ));
        fs::remove_file(&workload.path)?;
    }
    print!("{table}");
    println!();
    for verdict in &verdicts {
        println!("{verdict}");
    }
    if let (Some((n0, Some(r0))), Some((n1, Some(r1)))) = (node_rss.first(), node_rss.last()) {
        if n1 > n0 {
            let growth = *r1 as f64 / *r0 as f64;
            println!(
                "in-memory peak RSS from N = {} to N = {}: {} -> {} (×{growth:.2}): {}",
                grouped(*n0),
                grouped(*n1),
                mib(Some(*r0)),
                mib(Some(*r1)),
                if growth <= 1.10 { "flat" } else { "GROWS" }
            );
        }
    }

    println!();
    println!("| interactive round trip | messages | p50 µs | p99 µs | max µs |");
    println!("|---|---:|---:|---:|---:|");
    let (in_memory, durable) = options.round_trips;
    for (program, count) in [
        (Program::Floor, in_memory),
        (Program::Node, in_memory),
        (Program::Durable, durable),
    ] {
        eprint!("\rround trips: {}          ", program.label());
        let times = round_trips(program, count, scratch)?;
        eprint!("\r{:100}\r", "");
        println!(
            "| {} | {} | {} | {} | {} |",
            program.label(),
            grouped(count),
            micros(percentile(&times, 50.0)),
            micros(percentile(&times, 99.0)),
            micros(*times.last().unwrap_or(&Duration::ZERO))
        );
    }
    Ok(())
}
