//! Hostile-input benchmark: the node's peak memory when every request carries a huge unknown
//! flag name.
//!
//! ```sh
//! cargo bench --bench hostile
//! cargo bench --bench hostile -- --count 500 --count 5000
//! ```
//!
//! One sender sends `init`, then `disable_feature` requests (unique msg_ids) whose `feature` is
//! an unknown flag name of 512 KiB (`unknown-<i>-xxxx…`): 2,000 of them are 1 GiB of input. The
//! lines are generated on the fly by a writer thread straight into the node's stdin (one 512
//! KiB filler buffer, reused). Every reply is read and checked: `init_ok`, then one error reply
//! with code 20 (key-does-not-exist) per request, in order. The node (in memory) runs under GNU
//! time (`/usr/bin/time -f %M`) for its peak RSS. The same is done with 200 and 20 such requests
//! (memory should not depend on how many came), and with a normal workload of 2,000 requests
//! (`disable_feature new_checkout`, `switch_traffic green->blue`, `switch_traffic blue->green`).
//!
//! Run without `--bench` (as `cargo test --benches` does), it is a quick smoke run.

mod common;

use common::*;
use serde::Deserialize;
use std::borrow::Cow;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The size of each unknown flag name.
const NAME_BYTES: usize = 512 * 1024;
/// Goal: the node's peak RSS under this on the largest hostile run.
const RSS_GOAL_BYTES: u64 = 50_000_000;
/// "Flat": peak RSS on the largest hostile run at most this many times the smallest's.
const FLAT_RATIO: f64 = 1.25;

fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("hostile: {e}");
            eprintln!("usage: cargo bench --bench hostile [-- --count N ...]");
            return ExitCode::from(2);
        }
    };
    match bench(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostile: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// `count` requests with a 512 KiB unknown flag name each.
    Hostile(u64),
    /// `count` requests of the throughput workload.
    Normal(u64),
}

impl Workload {
    fn count(self) -> u64 {
        match self {
            Workload::Hostile(n) | Workload::Normal(n) => n,
        }
    }

    fn label(self) -> String {
        match self {
            Workload::Hostile(n) => format!(
                "{} × disable_feature, {} KiB unknown flag name",
                grouped(n),
                NAME_BYTES / 1024
            ),
            Workload::Normal(n) => format!("{} × normal workload", grouped(n)),
        }
    }

    /// Writes `init` and the requests into `out`, generating them as it goes.
    fn write(self, out: impl Write) -> io::Result<u64> {
        let mut out = BufWriter::with_capacity(1 << 16, out);
        let mut written = 0u64;
        let mut put = |out: &mut BufWriter<_>, bytes: &[u8]| -> io::Result<()> {
            written += bytes.len() as u64;
            out.write_all(bytes)
        };
        put(&mut out, INIT.as_bytes())?;
        put(&mut out, b"\n")?;
        match self {
            Workload::Hostile(n) => {
                let filler = vec![b'x'; NAME_BYTES];
                for i in 1..=n {
                    let head = format!(
                        r#"{{"src":"c1","dest":"n1","body":{{"type":"disable_feature","msg_id":{i},"feature":""#
                    );
                    let prefix = format!("unknown-{i}-");
                    put(&mut out, head.as_bytes())?;
                    put(&mut out, prefix.as_bytes())?;
                    put(&mut out, &filler[prefix.len()..])?;
                    put(&mut out, b"\"}}\n")?;
                }
            }
            Workload::Normal(n) => {
                for i in 1..=n {
                    put(&mut out, workload_request(i).as_bytes())?;
                    put(&mut out, b"\n")?;
                }
            }
        }
        out.flush()?;
        Ok(written)
    }
}

#[derive(Deserialize)]
struct ReplyEnvelope<'a> {
    #[serde(borrow)]
    body: ReplyBody<'a>,
}

#[derive(Deserialize)]
struct ReplyBody<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    in_reply_to: u64,
    code: Option<u64>,
}

/// One run's figures.
struct Run {
    workload: Workload,
    input_bytes: u64,
    output_bytes: u64,
    largest_reply: usize,
    stderr_bytes: u64,
    elapsed: Duration,
    peak_rss_kib: Option<u64>,
}

/// Feeds `workload` to the node and reads and checks every reply.
fn run(workload: Workload, scratch: &Path, gnu_time: bool) -> io::Result<Run> {
    let rss_file = scratch.join("rss");
    let stderr_file = scratch.join("stderr");
    let _ = fs::remove_file(&rss_file);
    let inner = Command::new(NODE);
    let mut command = if gnu_time {
        under_gnu_time(&inner, &rss_file)
    } else {
        inner
    };
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(File::create(&stderr_file)?);
    let start = Instant::now();
    let mut child = command.spawn()?;
    let stdin = child.stdin.take().expect("piped");
    let feeder = std::thread::spawn(move || workload.write(stdin));
    let mut stdout = BufReader::with_capacity(1 << 16, child.stdout.take().expect("piped"));
    let mut line = Vec::new();
    let mut replies = 0u64;
    let mut output_bytes = 0u64;
    let mut largest_reply = 0;
    let mut problem = None;
    loop {
        line.clear();
        let read = stdout.read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        output_bytes += read as u64;
        largest_reply = largest_reply.max(read);
        let expected_id = replies;
        replies += 1;
        if problem.is_some() {
            continue;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let body = match serde_json::from_slice::<ReplyEnvelope>(text) {
            Ok(envelope) => envelope.body,
            Err(e) => {
                problem = Some(format!("reply {replies} is not a reply ({e})"));
                continue;
            }
        };
        let right = if expected_id == 0 {
            body.kind == "init_ok" && body.in_reply_to == 0
        } else {
            body.in_reply_to == expected_id
                && match workload {
                    Workload::Hostile(_) => body.kind == "error" && body.code == Some(20),
                    Workload::Normal(_) => body.kind != "error",
                }
        };
        if !right {
            let shown = String::from_utf8_lossy(&text[..text.len().min(300)]).into_owned();
            problem = Some(format!("reply {replies} is not the one expected: {shown}…"));
        }
    }
    let status = child.wait()?;
    let elapsed = start.elapsed();
    let written = feeder
        .join()
        .map_err(|_| other("the writer thread panicked"))?;
    let stderr_bytes = fs::metadata(&stderr_file).map_or(0, |m| m.len());
    let stderr_head = || {
        let text = fs::read_to_string(&stderr_file).unwrap_or_default();
        text.chars().take(500).collect::<String>()
    };
    if !status.success() {
        return Err(other(format!(
            "{}: the node exited with {status}; stderr: {}",
            workload.label(),
            stderr_head()
        )));
    }
    let input_bytes =
        written.map_err(|e| other(format!("{}: writing its input: {e}", workload.label())))?;
    if let Some(problem) = problem {
        return Err(other(format!("{}: {problem}", workload.label())));
    }
    if replies != workload.count() + 1 {
        return Err(other(format!(
            "{}: {replies} replies for {} messages; stderr: {}",
            workload.label(),
            workload.count() + 1,
            stderr_head()
        )));
    }
    Ok(Run {
        workload,
        input_bytes,
        output_bytes,
        largest_reply,
        stderr_bytes,
        elapsed,
        peak_rss_kib: if gnu_time { read_rss(&rss_file) } else { None },
    })
}

struct Options {
    counts: Vec<u64>,
    normal: u64,
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
        let mut bench = false;
        let mut counts = Vec::new();
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--bench" => bench = true,
                "--count" => counts.push(
                    args.next()
                        .and_then(|v| v.replace('_', "").parse::<u64>().ok())
                        .filter(|&n| n > 0)
                        .ok_or("--count needs a positive number")?,
                ),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        if counts.is_empty() {
            counts = if bench {
                vec![20, 200, 2_000]
            } else {
                // `cargo test --benches`: a smoke run.
                vec![2, 20]
            };
        }
        counts.sort_unstable();
        counts.dedup();
        let normal = *counts.last().expect("a count");
        Ok(Options { counts, normal })
    }
}

fn bench(options: &Options) -> io::Result<()> {
    let scratch = Scratch::new("hostile")?;
    println!("rollback-node under hostile input: {}", machine_line());
    println!(
        "one sender: init, then disable_feature requests with unique msg_ids whose unknown flag \
         names are {} KiB each, generated on the fly into the node's stdin (rollback-node, in \
         memory); every reply read and checked (error, code 20, in order); peak RSS of the node \
         from GNU time. Compared across request counts and with a normal workload.",
        NAME_BYTES / 1024
    );
    let gnu_time = has_gnu_time();
    if !gnu_time {
        println!("(no {GNU_TIME}: peak RSS is not measured; apt-get install time)");
    }
    println!();

    let mut workloads: Vec<Workload> = options
        .counts
        .iter()
        .map(|&n| Workload::Hostile(n))
        .collect();
    workloads.push(Workload::Normal(options.normal));
    let mut runs = Vec::new();
    for workload in workloads {
        eprint!("\r{}...                    ", workload.label());
        runs.push(run(workload, scratch.path(), gnu_time)?);
    }
    eprint!("\r{:100}\r", "");

    println!("| workload | input | replies out | largest reply | stderr | wall time | peak RSS |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for run in &runs {
        println!(
            "| {} | {} | {} | {:.1} KiB | {} B | {:.2} s | {} |",
            run.workload.label(),
            mib_bytes(run.input_bytes),
            mib_bytes(run.output_bytes),
            run.largest_reply as f64 / 1024.0,
            grouped(run.stderr_bytes),
            run.elapsed.as_secs_f64(),
            mib(run.peak_rss_kib)
        );
    }
    println!();
    let hostile: Vec<&Run> = runs
        .iter()
        .filter(|r| matches!(r.workload, Workload::Hostile(_)))
        .collect();
    let (Some(smallest), Some(largest)) = (hostile.first(), hostile.last()) else {
        return Ok(());
    };
    let normal = runs.last().expect("the normal run");
    println!(
        "every hostile request got an error reply with code 20, in order ({} replies read)",
        grouped(hostile.iter().map(|r| r.workload.count()).sum())
    );
    match (smallest.peak_rss_kib, largest.peak_rss_kib) {
        (Some(small), Some(large)) => {
            let ratio = large as f64 / small as f64;
            println!(
                "goal: peak RSS under 50 MB ({:.1} MiB) with {}: {} ({}; a normal workload of \
                 {} requests: {})",
                RSS_GOAL_BYTES as f64 / (1024.0 * 1024.0),
                largest.workload.label(),
                met(large * 1024 < RSS_GOAL_BYTES),
                mib(Some(large)),
                grouped(normal.workload.count()),
                mib(normal.peak_rss_kib)
            );
            println!(
                "goal: flat from {} to {} hostile requests (at most ×{FLAT_RATIO}): {} ({} -> \
                 {}, ×{ratio:.2})",
                grouped(smallest.workload.count()),
                grouped(largest.workload.count()),
                met(ratio <= FLAT_RATIO),
                mib(Some(small)),
                mib(Some(large))
            );
        }
        _ => println!("goals: not judged (peak RSS not measured)"),
    }
    Ok(())
}
