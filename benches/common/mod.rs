//! Helpers shared by the `killswitch`, `restart` and `hostile` benchmarks (`throughput` keeps
//! its own). Each benchmark uses a part of them.

#![allow(dead_code)]

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The release node binary, built by cargo for the benchmark that includes this module.
pub const NODE: &str = env!("CARGO_BIN_EXE_rollback-node");
/// GNU time, for the peak RSS of a child.
pub const GNU_TIME: &str = "/usr/bin/time";

pub const INIT: &str = r#"{"src":"c1","dest":"n1","body":{"type":"init","msg_id":0,"node_id":"n1","node_ids":["n1"]}}"#;
pub const INIT_OK: &str = r#"{"src":"n1","dest":"c1","body":{"type":"init_ok","in_reply_to":0}}"#;

/// Message `i` (from 1) of the throughput workload, with msg_id `i`: `disable_feature
/// new_checkout`, `switch_traffic green->blue`, `switch_traffic blue->green`, in turn.
pub fn workload_request(i: u64) -> String {
    let head = r#"{"src":"c1","dest":"n1","body":{"type":"#;
    match (i - 1) % 3 {
        0 => format!(r#"{head}"disable_feature","msg_id":{i},"feature":"new_checkout"}}}}"#),
        1 => format!(r#"{head}"switch_traffic","msg_id":{i},"from":"green","to":"blue"}}}}"#),
        _ => format!(r#"{head}"switch_traffic","msg_id":{i},"from":"blue","to":"green"}}}}"#),
    }
}

pub fn other(message: impl Into<String>) -> io::Error {
    io::Error::other(message.into())
}

/// Whether GNU time is there to measure peak RSS.
pub fn has_gnu_time() -> bool {
    Path::new(GNU_TIME).exists()
}

/// `inner` run under GNU time, which writes the child's peak RSS (KiB) to `rss_file`.
pub fn under_gnu_time(inner: &Command, rss_file: &Path) -> Command {
    let mut command = Command::new(GNU_TIME);
    command
        .args(["-f", "%M", "-o"])
        .arg(rss_file)
        .arg(inner.get_program())
        .args(inner.get_args());
    for (key, value) in inner.get_envs() {
        if let Some(value) = value {
            command.env(key, value);
        }
    }
    command
}

/// The peak RSS in KiB that GNU time wrote to `rss_file`.
pub fn read_rss(rss_file: &Path) -> Option<u64> {
    fs::read_to_string(rss_file)
        .ok()
        .and_then(|text| text.lines().last()?.trim().parse().ok())
}

/// A temporary directory removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> io::Result<Scratch> {
        let path =
            std::env::temp_dir().join(format!("rollback-node-bench-{name}-{}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
        fs::create_dir_all(&path)?;
        Ok(Scratch(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `1234567` as `1,234,567`.
pub fn grouped(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// KiB as MiB with one decimal.
pub fn mib(kib: Option<u64>) -> String {
    kib.map_or("n/a".to_owned(), |kib| {
        format!("{:.1} MiB", kib as f64 / 1024.0)
    })
}

/// Bytes as MiB with one decimal.
pub fn mib_bytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The `p`th percentile (nearest rank) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median (lower middle) of unsorted values.
pub fn median<T: Copy + PartialOrd>(values: &[T]) -> Option<T> {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    sorted.get(sorted.len().saturating_sub(1) / 2).copied()
}

pub fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

pub fn millis(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

pub fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// One line naming the machine and the node binary.
pub fn machine_line() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{} ({cpus} CPUs); node {NODE}", cpu_model())
}

/// The number after `"in_reply_to":` in a reply line, if any.
pub fn in_reply_to(line: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"in_reply_to\":";
    let at = memchr::memmem::find(line, KEY)? + KEY.len();
    let digits = line[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(None, |n: Option<u64>, &b| {
            Some(n.unwrap_or(0) * 10 + u64::from(b - b'0'))
        });
    digits
}

// ---------------------------------------------------------------------------------------------
// The floor: a minimal serde_json envelope parse and a same-size reply, nothing else; what the
// node is measured against (`throughput`, `killswitch`).

#[derive(Deserialize)]
struct FloorEnvelope<'a> {
    #[serde(borrow)]
    src: Cow<'a, str>,
    #[serde(borrow)]
    dest: Cow<'a, str>,
    #[serde(borrow)]
    body: FloorBody<'a>,
}

#[derive(Deserialize)]
struct FloorBody<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    msg_id: u64,
}

#[derive(Serialize)]
struct FloorReply<'a> {
    src: &'a str,
    dest: &'a str,
    body: FloorReplyBody<'a>,
}

#[derive(Serialize)]
struct FloorReplyBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    in_reply_to: u64,
    pad: &'a str,
}

/// The floor's main loop. `spec` is `type=offset,…`: a reply to a line of that type is padded to
/// the line's length plus the offset, the size of the node's reply.
pub fn floor(spec: &str) -> io::Result<()> {
    let offsets: Vec<(&str, isize)> = spec
        .split(',')
        .filter_map(|pair| {
            let (kind, offset) = pair.split_once('=')?;
            Some((kind, offset.parse().ok()?))
        })
        .collect();
    let mut reader = BufReader::with_capacity(1 << 16, io::stdin().lock());
    let mut stdout = io::stdout().lock();
    let mut line = Vec::with_capacity(1024);
    let mut out = Vec::with_capacity(1 << 17);
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if let Ok(envelope) = serde_json::from_slice::<FloorEnvelope>(text) {
            let start = out.len();
            let reply = FloorReply {
                src: &envelope.dest,
                dest: &envelope.src,
                body: FloorReplyBody {
                    kind: &envelope.body.kind,
                    in_reply_to: envelope.body.msg_id,
                    pad: "",
                },
            };
            serde_json::to_writer(&mut out, &reply)?;
            let offset = offsets
                .iter()
                .find(|(kind, _)| *kind == envelope.body.kind)
                .map_or(0, |(_, offset)| *offset);
            let target = text.len() as isize + offset;
            let missing = target - (out.len() - start) as isize;
            if missing > 0 {
                // `…"pad":""}}` becomes `…"pad":"xxxx"}}`.
                out.truncate(out.len() - 3);
                out.resize(out.len() + missing as usize, b'x');
                out.extend_from_slice(b"\"}}");
            }
            out.push(b'\n');
        }
        if read == 0 || out.len() >= 1 << 16 || reader.buffer().is_empty() {
            stdout.write_all(&out)?;
            stdout.flush()?;
            out.clear();
        }
        if read == 0 {
            return Ok(());
        }
    }
}
