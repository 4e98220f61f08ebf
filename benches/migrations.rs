//! `cargo bench --bench migrations`: the migration engine against the databases' own command-line
//! tools running the same files.
//!
//! 120 generated migration pairs (create a table, insert 50 rows in 5 statements, create an
//! index; the downs drop them) are applied all-up then all-down:
//! - SQLite: the engine (one `run` for all 120 steps, and one `run` per step as golang-migrate
//!   does) against `sqlite3 DB < FILE` per file and against one `sqlite3` process reading all
//!   files in order;
//! - PostgreSQL (the test harness's throwaway server, fsync off): the engine against
//!   `psql -f FILE` per file and one `psql` with every file as `-f`.
//!
//! The engine and the tool it is held against run in alternate rounds (so a disk that slows down
//! for a while slows both), and the best round of each is shown with the ratio and the goal
//! (≤ 1.1× the tool in one process with the same transactions, and < 2 ms a file over it) as met
//! or NOT met. It asserts nothing about time. `MIGRATIONS_BENCH_N` and `MIGRATIONS_BENCH_ROUNDS`
//! change the size and the number of alternate rounds (7); the lines for one tool process per
//! file and for the files as written are context, best of 2.

#[path = "../tests/support/pg.rs"]
mod pg;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rollback_node::exec::migrations::{open, Catalogue, Direction, SchemaDb, Step};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const BASE: u64 = 20250101000000;

/// Writes `n` migration pairs; returns the up files and down files in the order they run.
fn generate(dir: &Path, n: usize) -> (Vec<PathBuf>, Vec<PathBuf>) {
    fs::create_dir_all(dir).unwrap();
    let mut ups = Vec::new();
    let mut downs = Vec::new();
    for i in 0..n {
        let version = BASE + i as u64 * 100;
        let mut up = format!(
            "-- migration {i}\nCREATE TABLE bench_{i} (\n  id integer PRIMARY KEY,\n  name text NOT NULL,\n  n integer NOT NULL\n);\n"
        );
        for batch in 0..5 {
            let rows: Vec<String> = (0..10)
                .map(|r| {
                    let id = batch * 10 + r;
                    format!("({id}, 'row {id}; of {i}', {})", (id * 7) % 13)
                })
                .collect();
            up.push_str(&format!(
                "INSERT INTO bench_{i} (id, name, n) VALUES {};\n",
                rows.join(", ")
            ));
        }
        up.push_str(&format!("CREATE INDEX bench_{i}_n ON bench_{i} (n);\n"));
        let down = format!("DROP INDEX bench_{i}_n;\nDROP TABLE bench_{i};\n");
        let up_path = dir.join(format!("{version}_bench-table_{i}.up.sql"));
        let down_path = dir.join(format!("{version}_bench-table_{i}.down.sql"));
        fs::write(&up_path, up).unwrap();
        fs::write(&down_path, down).unwrap();
        ups.push(up_path);
        downs.push(down_path);
    }
    downs.reverse();
    (ups, downs)
}

/// Every up file in order, or every down file in reverse: the steps the executor gets for
/// `migrate` to the last version and `rollback` of the first.
fn all_steps(catalogue: &Catalogue, direction: Direction) -> Vec<Step> {
    let mut steps: Vec<Step> = catalogue
        .migrations
        .iter()
        .map(|m| Step::load(catalogue, m.version, direction).unwrap())
        .collect();
    if direction == Direction::Down {
        steps.reverse();
    }
    steps
}

/// All up then all down through the engine; `per_step` runs each step in its own `run`.
fn engine(db: &mut dyn SchemaDb, catalogue: &Catalogue, per_step: bool) -> Duration {
    let t = Instant::now();
    let steps = all_steps(catalogue, Direction::Up);
    if per_step {
        for s in steps.chunks(1) {
            db.run(s, &mut |_, _| {}).unwrap();
        }
    } else {
        db.run(&steps, &mut |_, _| {}).unwrap();
    }
    let steps = all_steps(catalogue, Direction::Down);
    if per_step {
        for s in steps.chunks(1) {
            db.run(s, &mut |_, _| {}).unwrap();
        }
    } else {
        db.run(&steps, &mut |_, _| {}).unwrap();
    }
    t.elapsed()
}

fn check(status: std::process::ExitStatus, what: &str) {
    assert!(status.success(), "{what} failed: {status}");
}

fn sqlite_per_file(db: &Path, files: &[PathBuf]) -> Duration {
    let t = Instant::now();
    for f in files {
        let status = sqlite3(db)
            .stdin(fs::File::open(f).unwrap())
            .status()
            .unwrap();
        check(status, "sqlite3");
    }
    t.elapsed()
}

/// How the files are wrapped when one process reads them all.
#[derive(Clone, Copy)]
enum Wrap {
    /// As written: every statement commits on its own.
    None,
    /// Each file in its own BEGIN/COMMIT (the engine with one run per step).
    EachFile,
    /// All files in one BEGIN/COMMIT (the engine with one run for all steps).
    All,
}

fn script(files: &[PathBuf], wrap: Wrap) -> String {
    let mut all = String::new();
    if let Wrap::All = wrap {
        all.push_str("BEGIN;\n");
    }
    for f in files {
        if let Wrap::EachFile = wrap {
            all.push_str("BEGIN;\n");
        }
        all.push_str(&fs::read_to_string(f).unwrap());
        if let Wrap::EachFile = wrap {
            all.push_str("COMMIT;\n");
        }
    }
    if let Wrap::All = wrap {
        all.push_str("COMMIT;\n");
    }
    all
}

/// Runs a tool once with `text` on its standard input.
fn feed(mut cmd: Command, text: &str) -> Duration {
    use std::io::Write;
    let t = Instant::now();
    let mut child = cmd.stdin(Stdio::piped()).spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    check(child.wait().unwrap(), "the tool");
    t.elapsed()
}

fn sqlite3(db: &Path) -> Command {
    let mut c = Command::new("sqlite3");
    c.arg("-bail").arg(db).stdout(Stdio::null());
    c
}

fn psql(url: &str) -> Command {
    let mut c = Command::new("psql");
    c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url])
        .stdout(Stdio::null());
    c
}

fn psql_per_file(url: &str, files: &[PathBuf]) -> Duration {
    let t = Instant::now();
    for f in files {
        let status = psql(url).arg("-f").arg(f).status().unwrap();
        check(status, "psql");
    }
    t.elapsed()
}

fn psql_one_process(url: &str, files: &[PathBuf]) -> Duration {
    let t = Instant::now();
    let mut c = psql(url);
    for f in files {
        c.arg("-f").arg(f);
    }
    check(c.status().unwrap(), "psql");
    t.elapsed()
}

/// Creates (or recreates) a database and returns its URL.
fn fresh_pg(admin: &mut postgres::Client, server: &pg::PgServer, name: &str) -> String {
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    server.url(name)
}

fn best(rounds: usize, mut f: impl FnMut(usize) -> Duration) -> Duration {
    (0..rounds).map(&mut f).min().unwrap()
}

/// The goal: at most this many times the tool's time.
const GOAL_RATIO: f64 = 1.1;
/// The goal: at most this much more than the tool, a file.
const GOAL_OVERHEAD_MS: f64 = 2.0;

/// Best of `rounds` for each of two runs, taken in alternate rounds.
fn best_pair(
    rounds: usize,
    mut a: impl FnMut(usize) -> Duration,
    mut b: impl FnMut(usize) -> Duration,
) -> (Duration, Duration) {
    let (mut best_a, mut best_b) = (Duration::MAX, Duration::MAX);
    for r in 0..rounds {
        best_a = best_a.min(a(r));
        best_b = best_b.min(b(r));
    }
    (best_a, best_b)
}

/// The goal's verdict for an engine figure against its tool's.
fn verdict(label: &str, engine: Duration, tool: Duration, files: usize) {
    let ratio = engine.as_secs_f64() / tool.as_secs_f64();
    let overhead = (engine.as_secs_f64() - tool.as_secs_f64()) * 1e3 / files as f64;
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "  goal {label}: {ratio:.2}x (<= {GOAL_RATIO}x: {}), {overhead:+.3} ms a file (< {GOAL_OVERHEAD_MS} ms: {})",
        met(ratio <= GOAL_RATIO),
        met(overhead < GOAL_OVERHEAD_MS)
    );
}

fn line(label: &str, d: Duration, files: usize, reference: Option<Duration>) {
    let ms = d.as_secs_f64() * 1e3;
    let per = ms / files as f64;
    match reference {
        Some(r) => {
            let rms = r.as_secs_f64() * 1e3;
            println!(
                "  {label:<52} {ms:>9.1} ms  {per:>7.3} ms/file  overhead {:>+7.3} ms/file  ratio {:>5.2}x",
                (ms - rms) / files as f64,
                ms / rms
            );
        }
        None => println!("  {label:<52} {ms:>9.1} ms  {per:>7.3} ms/file"),
    }
}

fn main() {
    let n = env_usize("MIGRATIONS_BENCH_N", 120);
    let rounds = env_usize("MIGRATIONS_BENCH_ROUNDS", 7).max(1);
    let context_rounds = 2;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("migrations");
    let (ups, downs) = generate(&dir, n);
    let all: Vec<PathBuf> = ups.iter().chain(downs.iter()).cloned().collect();
    let files = all.len();
    let catalogue = Catalogue::read(&dir).unwrap();
    println!(
        "{n} migration pairs, all up then all down ({files} files, 8 statements per up, 2 per down); best of {rounds} alternate rounds ({context_rounds} for context)"
    );

    // SQLite.
    println!("SQLite ({}):", rusqlite::version());
    let fresh = |name: &str, round: usize| {
        let p = tmp.path().join(format!("{name}-{round}.db"));
        let _ = fs::remove_file(&p);
        p
    };
    let cli_each = best(context_rounds, |r| {
        sqlite_per_file(&fresh("cli-each", r), &all)
    });
    let plain = script(&all, Wrap::None);
    let each = script(&all, Wrap::EachFile);
    let one = script(&all, Wrap::All);
    let cli_one = best(context_rounds, |r| {
        feed(sqlite3(&fresh("cli-one", r)), &plain)
    });
    let engine_run = |per_step: bool, r: usize| {
        let path = fresh(if per_step { "engine-step" } else { "engine" }, r);
        let mut db = open(&format!("sqlite:{}", path.display())).unwrap();
        db.observe(&catalogue).unwrap();
        engine(db.as_mut(), &catalogue, per_step)
    };
    let (cli_each_tx, eng_step) = best_pair(
        rounds,
        |r| feed(sqlite3(&fresh("cli-each-tx", r)), &each),
        |r| engine_run(true, r),
    );
    let (cli_one_tx, eng_all) = best_pair(
        rounds,
        |r| feed(sqlite3(&fresh("cli-one-tx", r)), &one),
        |r| engine_run(false, r),
    );
    line(
        "sqlite3 DB < FILE, one process per file",
        cli_each,
        files,
        None,
    );
    line(
        "sqlite3, one process, files as written",
        cli_one,
        files,
        None,
    );
    line(
        "sqlite3, one process, BEGIN/COMMIT per file",
        cli_each_tx,
        files,
        None,
    );
    line(
        "sqlite3, one process, one BEGIN/COMMIT",
        cli_one_tx,
        files,
        None,
    );
    line(
        "engine, one run per step (vs BEGIN/COMMIT per file)",
        eng_step,
        files,
        Some(cli_each_tx),
    );
    line(
        "engine, one run per step (vs one process per file)",
        eng_step,
        files,
        Some(cli_each),
    );
    line(
        "engine, one run for all (vs one BEGIN/COMMIT)",
        eng_all,
        files,
        Some(cli_one_tx),
    );
    verdict(
        "one run per step vs BEGIN/COMMIT per file",
        eng_step,
        cli_each_tx,
        files,
    );
    verdict(
        "one run for all vs one BEGIN/COMMIT",
        eng_all,
        cli_one_tx,
        files,
    );

    // PostgreSQL.
    let server = pg::server();
    let mut admin = server.connect("postgres");
    let version: String = admin.query_one("SHOW server_version", &[]).unwrap().get(0);
    println!("PostgreSQL {version} (Unix socket, fsync=off):");
    let psql_stdin = |url: &str| {
        let mut c = psql(url);
        c.arg("-f").arg("-");
        c
    };
    let psql_each = best(context_rounds, |r| {
        psql_per_file(
            &fresh_pg(&mut admin, server, &format!("psql_each_{r}")),
            &all,
        )
    });
    let psql_one = best(context_rounds, |r| {
        psql_one_process(
            &fresh_pg(&mut admin, server, &format!("psql_one_{r}")),
            &all,
        )
    });
    // Both sides of a pair create their database through the one admin connection.
    let admin = std::cell::RefCell::new(admin);
    let psql_tx = |name: String, text: &str| {
        let url = fresh_pg(&mut admin.borrow_mut(), server, &name);
        feed(psql_stdin(&url), text)
    };
    let pg_engine = |per_step: bool, r: usize| {
        let name = format!("engine_{}_{r}", if per_step { "step" } else { "all" });
        let mut db = open(&fresh_pg(&mut admin.borrow_mut(), server, &name)).unwrap();
        db.observe(&catalogue).unwrap();
        engine(db.as_mut(), &catalogue, per_step)
    };
    let (psql_each_tx, pg_step) = best_pair(
        rounds,
        |r| psql_tx(format!("psql_each_tx_{r}"), &each),
        |r| pg_engine(true, r),
    );
    let (psql_one_tx, pg_all) = best_pair(
        rounds,
        |r| psql_tx(format!("psql_one_tx_{r}"), &one),
        |r| pg_engine(false, r),
    );
    line("psql -f FILE, one process per file", psql_each, files, None);
    line("psql -f ... -f ..., one process", psql_one, files, None);
    line(
        "psql, one process, BEGIN/COMMIT per file",
        psql_each_tx,
        files,
        None,
    );
    line(
        "psql, one process, one BEGIN/COMMIT",
        psql_one_tx,
        files,
        None,
    );
    line(
        "engine, one run per step (vs BEGIN/COMMIT per file)",
        pg_step,
        files,
        Some(psql_each_tx),
    );
    line(
        "engine, one run per step (vs one process per file)",
        pg_step,
        files,
        Some(psql_each),
    );
    line(
        "engine, one run for all (vs one BEGIN/COMMIT)",
        pg_all,
        files,
        Some(psql_one_tx),
    );
    verdict(
        "one run per step vs BEGIN/COMMIT per file",
        pg_step,
        psql_each_tx,
        files,
    );
    verdict(
        "one run for all vs one BEGIN/COMMIT",
        pg_all,
        psql_one_tx,
        files,
    );
}
