//! `cargo bench --bench restore`: restoring a 1,000,000-row database, verification included,
//! against the databases' own tools doing the copy alone.
//!
//! - SQLite: the engine (checksum against the manifest, `quick_check` and row counts of the
//!   backup, the online backup API in steps of 1024 pages with progress, `quick_check` and row
//!   counts of the live copy) against `sqlite3 live.db ".restore NAME.db"`, and that followed by
//!   `sqlite3 live.db "PRAGMA quick_check; SELECT count(*) FROM items"` for a like-for-like check;
//!   then the progress overhead: the engine in steps of 1024 pages against one step.
//! - PostgreSQL (the test harness's throwaway server, fsync off): the engine (checksum,
//!   `pg_restore` into a fresh database, row counts, the swap by renaming) against
//!   `CREATE DATABASE` + `pg_restore -d` into a fresh database.
//!
//! The runs take turns in each round, and the best round of each is shown with the goals as met
//! or NOT met: the SQLite engine ≤ 1.1× `sqlite3 .restore` with the same checks, progress
//! overhead < 2%, the PostgreSQL engine ≤ 1.1× the tool. It asserts nothing about time.
//! `RESTORE_BENCH_ROWS` and `RESTORE_BENCH_ROUNDS` change the size and the rounds (5).

#[path = "../tests/support/pg.rs"]
mod pg;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rollback_node::exec::backups::{postgres, sqlite, take_named, Database};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The best of `rounds` for each run, the runs taking turns within each round (so a disk or a
/// neighbour that slows down for a while slows them all).
fn best_alternating<const N: usize>(
    rounds: usize,
    runs: &mut [&mut dyn FnMut() -> Duration; N],
) -> [Duration; N] {
    let mut best = [Duration::MAX; N];
    for _ in 0..rounds {
        for (b, run) in best.iter_mut().zip(runs.iter_mut()) {
            *b = (*b).min(run());
        }
    }
    best
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn sqlite_db(path: &Path, rows: usize, wal: bool) {
    let _ = fs::remove_file(path);
    let _ = fs::remove_file(path.with_extension("db-wal"));
    let _ = fs::remove_file(path.with_extension("db-shm"));
    let conn = rusqlite::Connection::open(path).unwrap();
    if wal {
        let _: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .unwrap();
    }
    conn.execute_batch(
        "BEGIN;
         CREATE TABLE items (id INTEGER PRIMARY KEY, payload TEXT NOT NULL, n INTEGER NOT NULL);
         CREATE INDEX items_n ON items (n);
         CREATE TABLE schema_migrations (version uint64, dirty bool);
         INSERT INTO schema_migrations VALUES (20250101000000, false);",
    )
    .unwrap();
    conn.execute(
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?1)
         INSERT INTO items SELECT i, printf('payload of row %d, some text', i), i % 977 FROM s",
        [rows as i64],
    )
    .unwrap();
    conn.execute_batch("COMMIT").unwrap();
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn bench_sqlite(rows: usize, rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    fs::create_dir(&backups).unwrap();
    let source = dir.path().join("source.db");
    sqlite_db(&source, rows, false);
    let manifest = take_named(&backups, &Database::Sqlite(source), "big", "bench").unwrap();
    let backup = backups.join("big.db");
    let live = dir.path().join("live.db");
    println!(
        "SQLite: {} rows, backup {:.1} MB, best of {rounds} alternate rounds",
        manifest.rows,
        manifest.size as f64 / 1e6
    );

    let engine = |pages: i32, reports: &mut u64| {
        sqlite_db(&live, 100, true);
        let start = Instant::now();
        let restored = sqlite::restore(&backup, Some(&manifest), &live, pages, &mut |_, _| {
            *reports += 1
        })
        .unwrap();
        let took = start.elapsed();
        assert_eq!(restored.rows, rows as u64);
        took
    };
    let tool = |checks: bool| {
        sqlite_db(&live, 100, true);
        let start = Instant::now();
        run(Command::new("sqlite3")
            .arg(&live)
            .arg(format!(".restore {}", backup.display())));
        if checks {
            run(Command::new("sqlite3")
                .arg(&live)
                .arg("PRAGMA quick_check; SELECT count(*) FROM items;"));
        }
        start.elapsed()
    };
    let mut reports = 0;
    let mut ignored = 0;
    let [stepped, one_step, bare, tool_checked] = best_alternating(
        rounds,
        &mut [
            &mut || engine(sqlite::PAGES_PER_STEP, &mut reports),
            &mut || engine(-1, &mut ignored),
            &mut || tool(false),
            &mut || tool(true),
        ],
    );
    let per_round = reports / rounds as u64;
    println!(
        "  engine, verified, steps of {} pages ({per_round} progress reports): {}",
        sqlite::PAGES_PER_STEP,
        secs(stepped)
    );
    println!(
        "  engine, verified, one step:                            {}",
        secs(one_step)
    );
    println!(
        "  sqlite3 .restore (no checks):                          {}",
        secs(bare)
    );
    println!(
        "  sqlite3 .restore + quick_check + count:                {}",
        secs(tool_checked)
    );
    let with_checks = ratio(stepped, tool_checked);
    println!(
        "  goal engine <= 1.1x sqlite3 .restore + the same checks: {with_checks:.2}x, {}",
        met(with_checks <= 1.1)
    );
    println!(
        "  engine / bare sqlite3 .restore (no checks): {:.2}x",
        ratio(stepped, bare)
    );
    let overhead = (ratio(stepped, one_step) - 1.0) * 100.0;
    println!(
        "  goal progress overhead < 2%: {overhead:+.1}%, {}",
        met(overhead < 2.0)
    );
}

fn bench_postgres(rows: usize, rounds: usize) {
    let server = pg::server();
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    fs::create_dir(&backups).unwrap();
    let (source_url, source) = server.create_database("bench_source");
    server
        .connect(&source)
        .batch_execute(&format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, payload text NOT NULL, n integer NOT NULL);
             INSERT INTO items SELECT i, 'payload of row ' || i || ', some text', i % 977
               FROM generate_series(1, {rows}) i;
             CREATE INDEX items_n ON items (n);
             CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL);
             INSERT INTO schema_migrations VALUES (20250101000000, false);"
        ))
        .unwrap();
    let manifest = take_named(&backups, &Database::Postgres(source_url), "big", "bench").unwrap();
    let dump = backups.join("big.dump");
    println!(
        "PostgreSQL: {} rows, dump {:.1} MB, best of {rounds} alternate rounds",
        manifest.rows,
        manifest.size as f64 / 1e6
    );
    let (live_url, live) = server.create_database("bench_live");
    let mut engine = || {
        let start = Instant::now();
        let restored =
            postgres::restore(&dump, Some(&manifest), &live_url, &mut |_, _| {}).unwrap();
        let took = start.elapsed();
        assert_eq!(restored.rows, rows as u64);
        server
            .connect("postgres")
            .batch_execute(&format!("DROP DATABASE {}", restored.kept.unwrap()))
            .unwrap();
        took
    };
    let mut n = 0;
    let mut tool = || {
        n += 1;
        let fresh = format!("{live}_tool_{n}");
        let start = Instant::now();
        server
            .connect("postgres")
            .batch_execute(&format!("CREATE DATABASE {fresh} TEMPLATE template0"))
            .unwrap();
        run(Command::new(postgres::tool("pg_restore"))
            .arg("-d")
            .arg(server.url(&fresh))
            .arg(&dump));
        let took = start.elapsed();
        server
            .connect("postgres")
            .batch_execute(&format!("DROP DATABASE {fresh}"))
            .unwrap();
        took
    };
    let [engine, tool] = best_alternating(rounds, &mut [&mut engine, &mut tool]);
    println!("  engine, verified and swapped:       {}", secs(engine));
    println!("  createdb + pg_restore -d (no checks): {}", secs(tool));
    let r = ratio(engine, tool);
    println!("  goal engine <= 1.1x the tool: {r:.2}x, {}", met(r <= 1.1));
}

fn main() {
    let rows = env_usize("RESTORE_BENCH_ROWS", 1_000_000);
    let rounds = env_usize("RESTORE_BENCH_ROUNDS", 5).max(1);
    bench_sqlite(rows, rounds);
    bench_postgres(rows, rounds);
}
