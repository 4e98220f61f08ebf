//! Restart benchmark: time to the first reply after a restart, and peak RSS, against the
//! length of the journal.
//!
//! ```sh
//! cargo bench --bench restart                       # N = 10k, 100k, 1M (about 15 s)
//! cargo bench --bench restart -- --n 300000 --rounds 9
//! ```
//!
//! For each N it builds a state directory by piping `init` and N state-changing requests (the
//! throughput workload: `disable_feature new_checkout`, `switch_traffic green->blue`,
//! `switch_traffic blue->green`, unique msg_ids), generated on the fly, into
//! `rollback-node --state-dir DIR`, and reads every reply. Then, several rounds:
//!
//! - **restart**: spawn `rollback-node --state-dir DIR`, write one `status` request at once, and
//!   time from the spawn until its reply line arrives (the first reply after a restart); then
//!   close stdin and wait for the exit.
//! - **CLI**: `rollback-node status --state-dir DIR`, timed from the spawn until its output line
//!   arrives, and until it exits.
//!
//! Each is timed in a bare run and, separately, run under GNU time (`/usr/bin/time -f %M`) for
//! its peak RSS (so the timing does not include GNU time's own start). The status line is
//! checked against the workload (flag disabled, the right environment live). Min and median
//! over the rounds are printed, with the state directory's size on disk and its snapshot file.
//!
//! Run without `--bench` (as `cargo test --benches` does), it is a quick smoke run.

mod common;

use common::*;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The snapshot file of a state directory (`src/store/snapshot.rs`).
const SNAPSHOT_FILE: &str = "snapshot.json";
const STATUS: &str = r#"{"src":"c1","dest":"n1","body":{"type":"status","msg_id":1}}"#;
/// Goals at the largest N.
const FIRST_REPLY_GOAL: Duration = Duration::from_millis(100);
const RSS_GOAL_BYTES: u64 = 30_000_000;
/// "Flat": the highest median over N at most this many times the lowest.
const FLAT_RATIO: f64 = 1.5;

fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("restart: {e}");
            eprintln!("usage: cargo bench --bench restart [-- --rounds K] [-- --n N ...]");
            return ExitCode::from(2);
        }
    };
    match bench(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("restart: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Building a state directory.

/// What building took, and what it left.
struct Built {
    elapsed: Duration,
    files: Vec<(String, u64, u64)>,
    /// The sequence number the snapshot was taken at, if there is a readable one.
    snapshot_seq: Option<u64>,
}

impl Built {
    fn disk_bytes(&self) -> u64 {
        self.files.iter().map(|(_, _, disk)| disk).sum()
    }

    fn snapshot(&self) -> Option<u64> {
        self.files
            .iter()
            .find(|(name, _, _)| name == SNAPSHOT_FILE)
            .map(|(_, len, _)| *len)
    }
}

/// Pipes `init` and N workload requests into a durable node on `dir`, reading every reply.
fn build(dir: &Path, n: u64, scratch: &Path) -> io::Result<Built> {
    let stderr_file = scratch.join("build-stderr");
    let start = Instant::now();
    let mut child = Command::new(NODE)
        .arg("--state-dir")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(File::create(&stderr_file)?)
        .spawn()?;
    let stdin = child.stdin.take().expect("piped");
    let feeder = std::thread::spawn(move || -> io::Result<()> {
        let mut stdin = BufWriter::with_capacity(1 << 16, stdin);
        writeln!(stdin, "{INIT}")?;
        for i in 1..=n {
            writeln!(stdin, "{}", workload_request(i))?;
        }
        stdin.flush()
    });
    let mut stdout = BufReader::with_capacity(1 << 16, child.stdout.take().expect("piped"));
    let mut line = Vec::new();
    let mut lines = 0u64;
    let mut errors = 0u64;
    loop {
        line.clear();
        if stdout.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        lines += 1;
        if memchr::memmem::find(&line, b"\"type\":\"error\"").is_some() {
            errors += 1;
        }
    }
    let status = child.wait()?;
    let elapsed = start.elapsed();
    feeder
        .join()
        .map_err(|_| other("the feeder thread panicked"))??;
    let stderr = fs::read_to_string(&stderr_file).unwrap_or_default();
    if !status.success() || lines != n + 1 || errors > 0 {
        return Err(other(format!(
            "building N = {n}: exit {status}, {lines} replies for {} messages, {errors} errors; \
             stderr: {}",
            n + 1,
            stderr.trim()
        )));
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() {
            files.push((
                entry.file_name().to_string_lossy().into_owned(),
                meta.len(),
                meta.blocks() * 512,
            ));
        }
    }
    files.sort();
    Ok(Built {
        elapsed,
        files,
        snapshot_seq: snapshot_seq(dir),
    })
}

/// The `seq` of `DIR/snapshot.json` (a checksum line, then JSON).
fn snapshot_seq(dir: &Path) -> Option<u64> {
    let bytes = fs::read(dir.join(SNAPSHOT_FILE)).ok()?;
    let newline = memchr::memchr(b'\n', &bytes)?;
    let value: serde_json::Value = serde_json::from_slice(&bytes[newline + 1..]).ok()?;
    value.get("seq")?.as_u64()
}

/// The last journal entry a restart reports on stderr (`… after N journal entries …`).
fn resumed_after(stderr: &str) -> Option<u64> {
    let (_, rest) = stderr.split_once(" after ")?;
    let (number, _) = rest.split_once(" journal entries")?;
    number.trim().parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Restarting.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    /// `rollback-node --state-dir DIR`, sent one `status`.
    Restart,
    /// `rollback-node status --state-dir DIR`.
    Cli,
}

impl Program {
    const ALL: [Program; 2] = [Program::Restart, Program::Cli];

    fn label(self) -> &'static str {
        match self {
            Program::Restart => "restart: rollback-node --state-dir, one status",
            Program::Cli => "CLI: rollback-node status --state-dir",
        }
    }

    fn command(self, dir: &Path) -> Command {
        let mut command = Command::new(NODE);
        if self == Program::Cli {
            command.arg("status");
        }
        command.arg("--state-dir").arg(dir);
        command
    }
}

/// One restart's figures.
struct Sample {
    first_reply: Duration,
    exit: Duration,
    rss_kib: Option<u64>,
    /// The journal's last entry, as a restart reports it.
    last_seq: Option<u64>,
}

/// What the status line must say after N workload requests.
fn expected_live(n: u64) -> &'static str {
    if n % 3 == 2 {
        "\"live_environment\":\"blue\""
    } else {
        "\"live_environment\":\"green\""
    }
}

/// Runs `program` once on `dir` (under GNU time when `rss_file` is given).
fn run_once(
    program: Program,
    dir: &Path,
    n: u64,
    rss_file: Option<&Path>,
    scratch: &Path,
) -> io::Result<Sample> {
    let inner = program.command(dir);
    let mut command = match rss_file {
        Some(rss_file) => under_gnu_time(&inner, rss_file),
        None => inner,
    };
    let stderr_file = scratch.join("restart-stderr");
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(File::create(&stderr_file)?);
    let start = Instant::now();
    let mut child = command.spawn()?;
    let mut stdin = child.stdin.take().expect("piped");
    if program == Program::Restart {
        stdin.write_all(format!("{STATUS}\n").as_bytes())?;
    }
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    let first_reply = start.elapsed();
    drop(stdin);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest)?;
    let status = child.wait()?;
    let exit = start.elapsed();
    let stderr = || fs::read_to_string(&stderr_file).unwrap_or_default();
    if !status.success() {
        return Err(other(format!(
            "{} on N = {n}: exit {status}; stderr: {}",
            program.label(),
            stderr().trim()
        )));
    }
    let right = line.contains(expected_live(n))
        && line.contains(r#""flags":{"new_checkout":false}"#)
        && (program == Program::Cli || line.contains(r#""type":"status_ok","in_reply_to":1"#));
    if !right || !rest.trim().is_empty() {
        return Err(other(format!(
            "{} on N = {n}: unexpected output {:?} then {:?}; stderr: {}",
            program.label(),
            line.trim_end(),
            rest,
            stderr().trim()
        )));
    }
    Ok(Sample {
        first_reply,
        exit,
        rss_kib: rss_file.and_then(read_rss),
        last_seq: resumed_after(&stderr()),
    })
}

// ---------------------------------------------------------------------------------------------
// Options and the report.

struct Options {
    sizes: Vec<u64>,
    rounds: usize,
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
        let mut bench = false;
        let mut sizes = Vec::new();
        let mut rounds = None;
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .and_then(|v| v.replace('_', "").parse::<u64>().ok())
                    .ok_or_else(|| format!("{name} needs a number"))
            };
            match arg.as_str() {
                "--bench" => bench = true,
                "--n" => sizes.push(value("--n")?.max(1)),
                "--rounds" => rounds = Some(value("--rounds")?.max(1) as usize),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        if sizes.is_empty() {
            sizes = if bench {
                vec![10_000, 100_000, 1_000_000]
            } else {
                // `cargo test --benches`: a smoke run.
                vec![1_000]
            };
        }
        sizes.sort_unstable();
        sizes.dedup();
        Ok(Options {
            sizes,
            rounds: rounds.unwrap_or(if bench { 7 } else { 2 }),
        })
    }
}

fn bench(options: &Options) -> io::Result<()> {
    let scratch = Scratch::new("restart")?;
    println!("rollback-node restart: {}", machine_line());
    println!(
        "state directory: init, then N requests cycling disable_feature / switch_traffic \
         green->blue / blue->green (unique msg_ids) piped into rollback-node --state-dir DIR. \
         restart: spawn rollback-node --state-dir DIR, write one status, time until its reply \
         line; CLI: rollback-node status --state-dir DIR until its output line. {} rounds each, \
         timed bare; peak RSS from separate runs under GNU time.",
        options.rounds
    );
    let sizes: Vec<String> = options.sizes.iter().map(|&n| grouped(n)).collect();
    println!(
        "N = {} (1,000,000 is part of the default run: it takes about 10 s here; --n N picks \
         others)",
        sizes.join(", ")
    );
    let gnu_time = has_gnu_time();
    if !gnu_time {
        println!("(no {GNU_TIME}: peak RSS is not measured; apt-get install time)");
    }
    println!();

    let mut dirs = String::new();
    dirs.push_str(
        "| N | built in | build msg/s | files (bytes) | size on disk | snapshot.json | journal entries | replayed after the snapshot |\n",
    );
    dirs.push_str("|---:|---:|---:|---|---:|---|---:|---:|\n");
    let mut table = String::new();
    table.push_str("| N | program | first reply ms (min) | median | exit ms (median) | peak RSS (min) | median |\n");
    table.push_str("|---:|---|---:|---:|---:|---:|---:|\n");
    // (N, program, median first reply, median RSS KiB)
    let mut medians: Vec<(u64, Program, Duration, Option<u64>)> = Vec::new();
    for &n in &options.sizes {
        let dir = scratch.path().join(format!("state-{n}"));
        eprint!("\rN = {n}: building the state directory...          ");
        let built = build(&dir, n, scratch.path())?;

        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(), Vec::new()];
        let rss_file = scratch.path().join("rss");
        for round in 0..options.rounds {
            eprint!(
                "\rN = {n}: round {}/{}                       ",
                round + 1,
                options.rounds
            );
            for (index, program) in Program::ALL.into_iter().enumerate() {
                let mut sample = run_once(program, &dir, n, None, scratch.path())?;
                if gnu_time {
                    sample.rss_kib =
                        run_once(program, &dir, n, Some(&rss_file), scratch.path())?.rss_kib;
                }
                samples[index].push(sample);
            }
        }

        let files: Vec<String> = built
            .files
            .iter()
            .map(|(name, len, _)| format!("{name} ({})", grouped(*len)))
            .collect();
        let last_seq = samples[0].iter().find_map(|s| s.last_seq);
        let or_unknown = |value: Option<u64>| value.map_or("?".to_owned(), grouped);
        dirs.push_str(&format!(
            "| {} | {:.2} s | {} | {} | {} | {} | {} | {} |\n",
            grouped(n),
            built.elapsed.as_secs_f64(),
            grouped((n as f64 / built.elapsed.as_secs_f64()) as u64),
            files.join(", "),
            mib_bytes(built.disk_bytes()),
            match (built.snapshot(), built.snapshot_seq) {
                (None, _) => "absent".to_owned(),
                (Some(len), seq) => format!("{}, at entry {}", mib_bytes(len), or_unknown(seq)),
            },
            or_unknown(last_seq),
            or_unknown(last_seq.map(|last| last - built.snapshot_seq.unwrap_or(0).min(last))),
        ));
        for (program, samples) in Program::ALL.into_iter().zip(&samples) {
            let first: Vec<Duration> = samples.iter().map(|s| s.first_reply).collect();
            let exit: Vec<Duration> = samples.iter().map(|s| s.exit).collect();
            let rss: Vec<u64> = samples.iter().filter_map(|s| s.rss_kib).collect();
            let first_median = median(&first).unwrap_or_default();
            let rss_median = median(&rss);
            table.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                grouped(n),
                program.label(),
                millis(first.iter().min().copied().unwrap_or_default()),
                millis(first_median),
                millis(median(&exit).unwrap_or_default()),
                mib(rss.iter().min().copied()),
                mib(rss_median),
            ));
            medians.push((n, program, first_median, rss_median));
        }
        fs::remove_dir_all(&dir)?;
    }
    eprint!("\r{:100}\r", "");
    print!("{dirs}");
    println!();
    print!("{table}");
    println!();

    let largest = *options.sizes.last().expect("a size");
    if largest != 1_000_000 {
        println!(
            "(the goals are stated at N = 1,000,000; this run's largest N is {}: judged there)",
            grouped(largest)
        );
    }
    let rss_goal_kib = RSS_GOAL_BYTES / 1024;
    for program in Program::ALL {
        let mine: Vec<&(u64, Program, Duration, Option<u64>)> =
            medians.iter().filter(|m| m.1 == program).collect();
        let (_, _, time_large, rss_large) = **mine.last().expect("measured");
        println!(
            "{} at N = {}: first reply under 100 ms: {} ({} ms median); peak RSS under 30 MB \
             ({:.1} MiB): {} ({} median)",
            program.label(),
            grouped(largest),
            met(time_large < FIRST_REPLY_GOAL),
            millis(time_large),
            RSS_GOAL_BYTES as f64 / (1024.0 * 1024.0),
            rss_large.map_or("not measured", |rss| met(rss < rss_goal_kib)),
            mib(rss_large)
        );
        if mine.len() > 1 {
            // Flat: the highest median over N against the lowest.
            let spread = |values: Vec<f64>| {
                let low = values.iter().copied().fold(f64::INFINITY, f64::min);
                let high = values.iter().copied().fold(0.0, f64::max);
                high / low.max(1e-9)
            };
            let time_ratio = spread(mine.iter().map(|m| m.2.as_secs_f64()).collect());
            let rss: Vec<f64> = mine.iter().filter_map(|m| m.3).map(|r| r as f64).collect();
            let rss_flat = if rss.len() == mine.len() {
                let ratio = spread(rss);
                format!("{} (×{ratio:.2})", met(ratio <= FLAT_RATIO))
            } else {
                "not measured".to_owned()
            };
            println!(
                "    flat across N (highest median at most ×{FLAT_RATIO} the lowest): first \
                 reply {} (×{time_ratio:.2}); peak RSS {rss_flat}",
                met(time_ratio <= FLAT_RATIO),
            );
        }
    }
    Ok(())
}
