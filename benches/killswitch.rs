//! Kill-switch benchmark: the round trip of a flag change while a paced restore is in flight.
//!
//! ```sh
//! cargo bench --bench killswitch
//! cargo bench --bench killswitch -- --min 5000    # at least 5,000 round trips per run
//! cargo bench --bench killswitch -- --backup-mib 128   # backups of 128 MiB to list
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
//! Third, the same round trip while `backups` lists large files: a node with `--estate` on a
//! temporary estate (a real SQLite schema `app.db` with the migrations of `examples/sqlite`, a
//! real `[backups] dir` holding 4 SQLite backups of about 94 MiB each (`--backup-mib`, 96 by
//! default: that many thousand rows of 1,000 random bytes) without manifests, so that each
//! listing runs `quick_check` and counts the rows of every file, and simulated `[flags]`). One
//! `backups` request alone is timed first (not counted); then a `backups` request is kept
//! outstanding all the time (a new one is sent as soon as the previous reply arrives) while the
//! flag round trips are measured, until at least `--min` of them and 3 listings are done (or
//! 60 s have passed: a run with no `backups` reply is reported as invalid). Next to it, the same
//! estate with nothing in flight. The listing is answered off the thread that owns the state
//! machine, so the kill switch should not wait behind it.
//!
//! Run without `--bench` (as `cargo test --benches` does), it is a quick smoke run (backups of
//! 4 MiB, 50 round trips, one listing).

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
/// How many backup files the listing scenario lists (one built, the others copies of it).
const BACKUP_FILES: usize = 4;
/// The estate of the listing scenario: a real schema and backups directory, simulated flags.
const LISTING_ESTATE: &str = r#"[schema]
database = "sqlite:app.db"
migrations = "migrations"
[backups]
dir = "backups"
[flags]
new_checkout = true
"#;

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
            eprintln!(
                "usage: cargo bench --bench killswitch [-- --min N] [-- --pace F] [-- --backup-mib N]"
            );
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

fn backups_request(id: u64) -> String {
    format!(r#"{{"src":"c1","dest":"n1","body":{{"type":"backups","msg_id":{id}}}}}"#)
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
    /// The node on the listing estate: real SQLite schema and backups directory.
    Estate,
    Durable,
}

impl Program {
    fn label(self) -> &'static str {
        match self {
            Program::Floor => "floor (serde_json envelope + same-size reply)",
            Program::Node => "rollback-node (in memory)",
            Program::Estate => "rollback-node --estate (SQLite + backups dir)",
            Program::Durable => "rollback-node --state-dir",
        }
    }

    /// The run whose round-trip count an idle run of this program takes.
    fn busy_partner(self) -> Program {
        match self {
            Program::Floor => Program::Node,
            other => other,
        }
    }

    /// `scratch` holds the state directory (`state`) and the listing estate (`estate`).
    fn command(self, pace: f64, scratch: &Path) -> io::Result<Command> {
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
                    command.arg("--state-dir").arg(scratch.join("state"));
                }
                command
            }
            Program::Estate => {
                let mut command = Command::new(NODE);
                command
                    .arg("--estate")
                    .arg("estate.toml")
                    .current_dir(scratch.join("estate"));
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

/// The slow request kept in flight while the flag round trips are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slow {
    /// A paced restore of [`BACKUP`] in the schema lane.
    Restore,
    /// A `backups` listing of the large files.
    Listing,
}

impl Slow {
    fn of(program: Program) -> Slow {
        if program == Program::Estate {
            Slow::Listing
        } else {
            Slow::Restore
        }
    }

    fn request(self, id: u64) -> String {
        match self {
            Slow::Restore => restore_request(id),
            Slow::Listing => backups_request(id),
        }
    }

    /// The type of its reply.
    fn reply_type(self) -> &'static str {
        match self {
            Slow::Restore => "restore_complete",
            Slow::Listing => "backups_ok",
        }
    }
}

/// One run's figures.
struct RunResult {
    program: Program,
    in_flight: bool,
    /// Sorted round trips.
    times: Vec<Duration>,
    /// Slow requests (restores or listings) sent, and replied to before the last round trip.
    slow_sent: u64,
    slow_done: u64,
    /// Wall time from sending the first slow request to its reply.
    first_slow: Option<Duration>,
    /// Round trips answered while a slow request sent before them was still unanswered (had
    /// it been performed on the thread that answers flags, there would be none).
    overtook: u64,
    /// The listing run: how long one `backups` took with nothing else in flight.
    lone_listing: Option<Duration>,
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

/// Checks a reply of type `slow.reply_type()`: a listing must list every backup file, each
/// verified (so the node did read them all).
fn check_slow_reply(program: Program, slow: Slow, line: &[u8]) -> io::Result<()> {
    let kind = format!("\"type\":\"{}\"", slow.reply_type());
    let verified = memchr::memmem::find_iter(line, b"\"verified\":true").count();
    if memchr::memmem::find(line, kind.as_bytes()).is_none()
        || (slow == Slow::Listing && verified != BACKUP_FILES)
    {
        return Err(other(format!(
            "{}: unexpected {} reply {}",
            program.label(),
            slow.reply_type(),
            String::from_utf8_lossy(line)
        )));
    }
    Ok(())
}

/// The slow request in flight and what its replies came to.
struct SlowState {
    slow: Slow,
    /// (msg_id, sent at) of the request in flight.
    outstanding: Option<(u64, Instant)>,
    sent: u64,
    done: u64,
    first: Option<Duration>,
    /// Flag replies that came before the reply to the slow request sent ahead of them.
    overtook: u64,
}

impl SlowState {
    /// Handles `line` if it is the reply to the slow request in flight; `false` if it is not.
    fn reply(&mut self, program: Program, line: &[u8]) -> io::Result<bool> {
        let Some((id, sent)) = self.outstanding else {
            return Ok(false);
        };
        if in_reply_to(line) != Some(id) {
            return Ok(false);
        }
        check_slow_reply(program, self.slow, line)?;
        if self.done == 0 {
            self.first = Some(sent.elapsed());
        }
        self.done += 1;
        self.outstanding = None;
        Ok(true)
    }
}

/// What a run goes on for.
#[derive(Clone, Copy)]
struct Goal {
    /// Round trips at least.
    min: u64,
    /// Listings replied to at least (the listing run).
    listings: u64,
    /// The listing run ends after this even with fewer listings (then it may be invalid).
    deadline: Duration,
}

/// One process: `init`, optionally a slow request kept in flight (a restore, or a `backups`
/// listing on the listing estate), then flag round trips.
fn run(
    program: Program,
    in_flight: bool,
    goal: Goal,
    pace: f64,
    scratch: &Path,
) -> io::Result<RunResult> {
    let state_dir = scratch.join("state");
    if state_dir.exists() {
        std::fs::remove_dir_all(&state_dir)?;
    }
    let mut peer = Peer::spawn(
        program.command(pace, scratch)?,
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

    let slow_kind = Slow::of(program);
    let mut next_id = 1u64;
    // One listing alone first, not counted: how long a `backups` takes to answer.
    let mut lone_listing = None;
    if in_flight && slow_kind == Slow::Listing {
        let id = next_id;
        next_id += 1;
        let start = Instant::now();
        peer.send(&backups_request(id))?;
        let line = peer.receive()?;
        lone_listing = Some(start.elapsed());
        if in_reply_to(line) != Some(id) {
            return Err(other(format!(
                "{}: unexpected line {}",
                program.label(),
                String::from_utf8_lossy(line)
            )));
        }
        check_slow_reply(program, slow_kind, line)?;
    }

    let mut slow = SlowState {
        slow: slow_kind,
        outstanding: None,
        sent: 0,
        done: 0,
        first: None,
        overtook: 0,
    };
    let needed = match (in_flight, slow_kind) {
        (false, _) => 0,
        (true, Slow::Restore) => 1,
        (true, Slow::Listing) => goal.listings,
    };
    let mut progress = Vec::new();
    let began = Instant::now();
    let mut last_status = began;
    let mut times = Vec::with_capacity(goal.min as usize * 4);

    loop {
        let enough = times.len() >= goal.min as usize
            && (slow.done >= needed
                || (slow_kind == Slow::Listing && began.elapsed() >= goal.deadline));
        if enough {
            break;
        }
        if in_flight && slow.outstanding.is_none() {
            let id = next_id;
            next_id += 1;
            peer.send(&slow_kind.request(id))?;
            slow.sent += 1;
            slow.outstanding = Some((id, Instant::now()));
        }
        if in_flight && slow_kind == Slow::Restore && last_status.elapsed() >= STATUS_EVERY {
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
                if !slow.reply(program, line)? {
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
                // The slow request in flight was sent before this flag change.
                if slow.outstanding.is_some() {
                    slow.overtook += 1;
                }
                if program != Program::Floor && line != flag_reply(id).as_bytes() {
                    return Err(other(format!(
                        "{}: unexpected reply {}",
                        program.label(),
                        String::from_utf8_lossy(line)
                    )));
                }
                break;
            }
            if !slow.reply(program, line)? {
                return Err(other(format!(
                    "{}: unexpected line {}",
                    program.label(),
                    String::from_utf8_lossy(line)
                )));
            }
        }
    }

    // The node ends once the slow request still running has been answered: its reply comes
    // last.
    let rest = peer.finish()?;
    if let Some((id, _)) = slow.outstanding {
        let found = rest.iter().any(|line| {
            in_reply_to(line.as_bytes()) == Some(id) && line.contains(slow_kind.reply_type())
        });
        if !found {
            return Err(other(format!(
                "{}: no reply to the last {} (msg_id {id}) at the end: {rest:?}",
                program.label(),
                slow_kind.request(id)
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
        slow_sent: slow.sent,
        slow_done: slow.done,
        first_slow: slow.first,
        overtook: slow.overtook,
        lone_listing,
        progress,
    })
}

// ---------------------------------------------------------------------------------------------
// The listing estate.

/// What [`prepare_estate`] built.
struct Listed {
    /// The size of each backup file.
    file_bytes: u64,
    /// How long building them took.
    built_in: Duration,
}

/// Builds the listing estate in `dir`: `estate.toml`, the example's `migrations`, and in
/// `backups/` [`BACKUP_FILES`] SQLite files of about `mib` MiB each (one table of 1,000-byte
/// random blobs, built once and copied), without manifests.
fn prepare_estate(dir: &Path, mib: u64) -> io::Result<Listed> {
    let began = Instant::now();
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("estate.toml"), LISTING_ESTATE)?;
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sqlite/migrations");
    let migrations = dir.join("migrations");
    std::fs::create_dir_all(&migrations)?;
    for entry in std::fs::read_dir(&from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), migrations.join(entry.file_name()))?;
        }
    }
    let backups = dir.join("backups");
    std::fs::create_dir_all(&backups)?;
    let first = backups.join("large_1.db");
    let sql = |e: rusqlite::Error| other(format!("building {}: {e}", first.display()));
    let conn = rusqlite::Connection::open(&first).map_err(sql)?;
    // About 1,030 bytes a row in 4 KiB pages: 1,000 rows make a little under 1 MiB.
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
         CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
         INSERT INTO blobs (data) SELECT randomblob(1000) FROM n;",
        rows = mib * 1000
    ))
    .map_err(sql)?;
    conn.close().map_err(|(_, e)| sql(e))?;
    for n in 2..=BACKUP_FILES {
        std::fs::copy(&first, backups.join(format!("large_{n}.db")))?;
    }
    Ok(Listed {
        file_bytes: std::fs::metadata(&first)?.len(),
        built_in: began.elapsed(),
    })
}

// ---------------------------------------------------------------------------------------------
// Options and the report.

struct Options {
    min: u64,
    pace: f64,
    /// The size of each backup file of the listing scenario.
    backup_mib: u64,
    /// Listings the listing run waits for, and how long at most.
    listings: u64,
    deadline: Duration,
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
        let mut bench = false;
        let mut min = None;
        let mut pace = None;
        let mut backup_mib = None;
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
                "--backup-mib" => {
                    backup_mib = Some(
                        value("--backup-mib")?
                            .parse::<u64>()
                            .map_err(|_| "--backup-mib needs a number".to_owned())?
                            .max(1),
                    )
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        Ok(Options {
            // `cargo test --benches`: a smoke run (a 0.3 s restore, 50 round trips, backups of
            // 4 MiB listed once).
            min: min.unwrap_or(if bench { 2_000 } else { 50 }),
            pace: pace.unwrap_or(if bench { 0.05 } else { 0.005 }),
            backup_mib: backup_mib.unwrap_or(if bench { 96 } else { 4 }),
            listings: if bench { 3 } else { 1 },
            deadline: Duration::from_secs(if bench { 60 } else { 20 }),
        })
    }
}

fn row(result: &RunResult) -> String {
    let times = &result.times;
    let in_flight = match (result.in_flight, Slow::of(result.program)) {
        (false, _) => "nothing".to_owned(),
        (true, Slow::Restore) => format!("restore running ({} sent)", result.slow_sent),
        (true, Slow::Listing) => format!(
            "`backups` listing ({} sent, {} replied)",
            result.slow_sent, result.slow_done
        ),
    };
    format!(
        "| {} | {} | {} | {} | {} | {} | {} |",
        result.program.label(),
        in_flight,
        grouped(times.len() as u64),
        micros(percentile(times, 50.0)),
        micros(percentile(times, 99.0)),
        micros(*times.last().unwrap_or(&Duration::ZERO)),
        result
            .first_slow
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
    eprint!(
        "\rbuilding {BACKUP_FILES} backups of {} MiB...",
        options.backup_mib
    );
    let listed = prepare_estate(&scratch.path().join("estate"), options.backup_mib)?;
    println!(
        "--estate (real SQLite schema app.db + examples/sqlite/migrations, [backups] dir with \
         {BACKUP_FILES} SQLite backups of {} each and no manifests, simulated [flags]; built in \
         {:.1} s): one `backups` request alone is timed first, then a `backups` request is kept \
         outstanding (a new one sent as each reply arrives) while the same round trips are \
         measured, until at least {} round trips and {} listings are done (at most {} s).",
        mib_bytes(listed.file_bytes),
        listed.built_in.as_secs_f64(),
        grouped(options.min),
        options.listings,
        options.deadline.as_secs()
    );
    println!();

    let mut results: Vec<RunResult> = Vec::new();
    for (program, in_flight) in [
        (Program::Node, true),
        (Program::Node, false),
        (Program::Floor, false),
        (Program::Estate, true),
        (Program::Estate, false),
        (Program::Durable, true),
        (Program::Durable, false),
    ] {
        // Nothing-in-flight runs take as many round trips as the in-flight run of the same
        // program, so the percentiles have the same sample size.
        let min = if in_flight {
            options.min
        } else {
            results
                .iter()
                .filter(|r| r.in_flight && r.program == program.busy_partner())
                .map(|r| r.times.len() as u64)
                .max()
                .unwrap_or(options.min)
        };
        let goal = Goal {
            min,
            listings: options.listings,
            deadline: options.deadline,
        };
        eprint!(
            "\r{} ({})...                    ",
            program.label(),
            match (in_flight, Slow::of(program)) {
                (false, _) => "idle",
                (true, Slow::Restore) => "restore running",
                (true, Slow::Listing) => "backups listing",
            }
        );
        results.push(run(program, in_flight, goal, pace, scratch.path())?);
    }
    eprint!("\r{:100}\r", "");

    println!(
        "| program | in flight | round trips | p50 µs | p99 µs | max µs | first restore / listing replied after |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for result in &results {
        println!("{}", row(result));
    }
    println!();
    for result in results
        .iter()
        .filter(|r| r.in_flight && Slow::of(r.program) == Slow::Restore)
    {
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
    let find = |program: Program, in_flight: bool| {
        results
            .iter()
            .find(|r| r.program == program && r.in_flight == in_flight)
    };
    let p = |program: Program, in_flight: bool, p: f64| {
        find(program, in_flight).map_or(Duration::ZERO, |r| percentile(&r.times, p))
    };
    let p99 = |program: Program, in_flight: bool| p(program, in_flight, 99.0);
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
    if let Some(listing) = find(Program::Estate, true) {
        let lone = listing.lone_listing.unwrap_or_default();
        println!(
            "one `backups` alone ({BACKUP_FILES} files of {}, nothing else in flight) replied \
             after {} ms; {} `backups` replies came back during the measured run ({} sent); {} of \
             its {} round trips were answered while a `backups` sent before them was still \
             listing (none would be, were the listing done on the thread that answers flags)",
            mib_bytes(listed.file_bytes),
            millis(lone),
            listing.slow_done,
            listing.slow_sent,
            grouped(listing.overtook),
            grouped(listing.times.len() as u64)
        );
        let during = p99(Program::Estate, true);
        if listing.slow_done == 0 {
            println!(
                "goal: kill-switch p99 under 1 ms while `backups` lists {BACKUP_FILES} large \
                 files: scenario INVALID (no `backups` reply came back during the run; p99 {} µs)",
                micros(during)
            );
        } else {
            println!(
                "goal: kill-switch p99 under 1 ms while `backups` lists {BACKUP_FILES} large \
                 files: {} (p50 {} µs, p99 {} µs; same estate idle p50 {} µs, p99 {} µs; in \
                 memory idle p99 {} µs)",
                met(during < limit),
                micros(p(Program::Estate, true, 50.0)),
                micros(during),
                micros(p(Program::Estate, false, 50.0)),
                micros(p99(Program::Estate, false)),
                micros(p99(Program::Node, false))
            );
        }
    }
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
