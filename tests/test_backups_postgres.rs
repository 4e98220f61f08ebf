//! Backups on a real PostgreSQL 15 server (one per test binary, databases per test): `pg_dump
//! -Fc` files restored into a fresh database, verified, and swapped in by renaming, the old one
//! kept; damaged dumps refused before anything changes.

#[path = "support/pg.rs"]
mod pg;

use std::fs;
use std::path::{Path, PathBuf};

use rollback_node::core::effects::{Completion, Failure};
use rollback_node::core::FailureKind;
use rollback_node::exec::backups::{list, retain, take, take_named, Database, RealBackups};
use rollback_node::exec::Executor;
use rollback_node::protocol::values::Progress;
use tempfile::TempDir;

struct Fixture {
    dir: TempDir,
    url: String,
    name: String,
}

impl Fixture {
    fn new(test: &str) -> Fixture {
        let (url, name) = pg::server().create_database(test);
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
            url,
            name,
        };
        fs::create_dir(f.backups()).unwrap();
        fill(&f.name, 10, 2);
        f
    }
    fn backups(&self) -> PathBuf {
        self.dir.path().join("backups")
    }
    fn executor(&self) -> RealBackups {
        RealBackups::open(&self.backups(), &self.url, None).unwrap()
    }
    /// A backup with a manifest of a database of `rows` rows at `version`.
    fn backup(&self, name: &str, rows: i64, version: i64) -> PathBuf {
        let (url, db) = pg::server().create_database(&format!("src_{name}"));
        fill(&db, rows, version);
        take_named(&self.backups(), &Database::Postgres(url), name, "test").unwrap();
        self.backups().join(format!("{name}.dump"))
    }
}

/// `items` with `rows` rows, golang-migrate's `schema_migrations` at `version`, a row in the
/// node's own checksum table.
fn fill(db: &str, rows: i64, version: i64) {
    let mut client = pg::server().connect(db);
    client
        .batch_execute(
            "DROP TABLE IF EXISTS items, schema_migrations, rollback_node_schema_checksums;
             CREATE TABLE items (id bigint PRIMARY KEY, payload text NOT NULL);
             CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL);
             CREATE TABLE rollback_node_schema_checksums (version bigint PRIMARY KEY, checksum text NOT NULL, applied_at text NOT NULL);",
        )
        .unwrap();
    client
        .execute(
            "INSERT INTO items SELECT i, 'row ' || i FROM generate_series(1, $1::bigint) i",
            &[&rows],
        )
        .unwrap();
    client
        .execute(
            "INSERT INTO schema_migrations VALUES ($1, false)",
            &[&version],
        )
        .unwrap();
    client
        .execute(
            "INSERT INTO rollback_node_schema_checksums VALUES ($1, 'abc', 'now')",
            &[&version],
        )
        .unwrap();
}

fn count(db: &str) -> i64 {
    pg::server()
        .connect(db)
        .query_one("SELECT count(*) FROM items", &[])
        .unwrap()
        .get(0)
}

fn version(db: &str) -> i64 {
    pg::server()
        .connect(db)
        .query_one("SELECT version FROM schema_migrations", &[])
        .unwrap()
        .get(0)
}

fn databases_like(pattern: &str) -> Vec<String> {
    pg::server()
        .connect("postgres")
        .query(
            "SELECT datname::text FROM pg_database WHERE datname LIKE $1 ORDER BY 1",
            &[&pattern],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn failure(completion: Completion) -> Failure {
    match completion {
        Completion::Failed(f) => f,
        Completion::Done(d) => panic!("expected a failure, got {d:?}"),
    }
}

fn truncate(from: &Path, to: &Path) {
    let bytes = fs::read(from).unwrap();
    fs::write(to, &bytes[..bytes.len() * 2 / 3]).unwrap();
}

#[test]
fn a_good_restore_swaps_in_a_verified_copy_and_keeps_the_old_database() {
    let f = Fixture::new("good_restore");
    f.backup("nightly", 5_000, 1);
    // An application session on the live database: closed by the swap.
    let mut session = pg::server().connect(&f.name);
    let mut backups = f.executor();
    let mut progress: Vec<Progress> = Vec::new();
    let completion = backups.restore("nightly", &mut |p| progress.push(p));
    let Completion::Done(done) = completion else {
        panic!("{completion:?}")
    };
    assert_eq!(done.rows, Some(5_000));
    assert_eq!(count(&f.name), 5_000);
    assert_eq!(version(&f.name), 1);
    assert!(progress.iter().all(|p| p.unit == "tables"), "{progress:?}");
    let last = progress.last().unwrap();
    assert_eq!((last.done, last.total), (3, 3), "{progress:?}");
    let restored = backups.last_restore().unwrap();
    let kept = restored.kept.clone().unwrap();
    assert!(
        kept.starts_with(&format!("{}_before_restore_", f.name)),
        "{kept}"
    );
    assert_eq!(count(&kept), 10, "the old database is kept as it was");
    assert_eq!(version(&kept), 2);
    assert!(databases_like(&format!("{}_restore_%", f.name)).is_empty());
    assert!(
        session.simple_query("SELECT 1").is_err(),
        "old sessions closed"
    );
    assert_eq!(
        backups
            .observe(&rollback_node::Estate::example().state)
            .schema_version,
        Some(1)
    );
}

#[test]
fn a_truncated_or_foreign_dump_is_refused_before_anything_changes() {
    let f = Fixture::new("truncated");
    let good = f.backup("nightly", 2_000, 1);
    // Without a manifest: read whole, the truncation found.
    truncate(&good, &f.backups().join("cut.dump"));
    let failure_cut = failure(f.executor().restore("cut", &mut |_| {}));
    assert!(failure_cut.kind == FailureKind::NothingChanged);
    let text = failure_cut.error.to_string();
    assert!(text.contains("cut.dump"), "{text}");
    assert!(text.contains("not touched"), "{text}");
    // With a manifest: its size and checksum.
    truncate(&good.clone(), &good);
    let text = failure(f.executor().restore("nightly", &mut |_| {}))
        .error
        .to_string();
    assert!(
        text.contains("nightly.dump") && text.contains("truncated"),
        "{text}"
    );
    // Not a dump at all.
    fs::write(f.backups().join("notes.dump"), "SELECT 1;\n").unwrap();
    let text = failure(f.executor().restore("notes", &mut |_| {}))
        .error
        .to_string();
    assert!(text.contains("notes.dump"), "{text}");
    assert_eq!((count(&f.name), version(&f.name)), (10, 2));
    assert!(databases_like(&format!("{}_%restore%", f.name)).is_empty());
}

#[test]
fn a_dump_without_a_manifest_at_an_unknown_version_restores_and_says_its_version() {
    let f = Fixture::new("unknown_version");
    let taken = f.backup("tmp", 321, 20240101000000);
    fs::copy(&taken, f.backups().join("by_hand.dump")).unwrap();
    let mut backups = f.executor();
    let Completion::Done(done) = backups.restore("by_hand", &mut |_| {}) else {
        panic!()
    };
    assert_eq!(done.rows, Some(321));
    assert_eq!(version(&f.name), 20240101000000);
    assert_eq!(
        backups
            .observe(&rollback_node::Estate::example().state)
            .schema_version,
        Some(20240101000000)
    );
}

#[test]
fn an_unknown_dump_is_refused_naming_the_known_ones() {
    let f = Fixture::new("unknown_dump");
    f.backup("nightly", 1, 1);
    let failure = failure(f.executor().restore("weekly", &mut |_| {}));
    assert!(
        failure.kind == FailureKind::Missing,
        "an unknown backup is missing (20), not refused"
    );
    assert!(failure.error.to_string().contains("nightly"));
}

#[test]
fn dumps_are_listed_newest_first_damaged_ones_not_verified() {
    let f = Fixture::new("listing");
    let taken = f.backup("nightly", 50, 1);
    fs::copy(&taken, f.backups().join("by_hand.dump")).unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(86400);
    fs::File::options()
        .write(true)
        .open(f.backups().join("by_hand.dump"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    truncate(&taken, &f.backups().join("cut.dump"));
    let older = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86400);
    fs::File::options()
        .write(true)
        .open(f.backups().join("cut.dump"))
        .unwrap()
        .set_modified(older)
        .unwrap();
    let listed = list(&f.backups());
    let names: Vec<&str> = listed.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["nightly", "by_hand", "cut"]);
    assert!(listed[0].verified && listed[0].manifest);
    assert!(listed[1].verified && !listed[1].manifest);
    assert_eq!(
        (listed[1].schema_version, listed[1].rows),
        (Some(1), Some(50))
    );
    assert!(!listed[2].verified);
    assert!(listed[2].problem.as_deref().unwrap().contains("cut.dump"));
}

#[test]
fn take_and_retain_with_pg_dump() {
    let f = Fixture::new("take_retain");
    let mut names = Vec::new();
    for (from, to) in [(1, 2), (2, 3), (3, 4)] {
        let m = take(&f.backups(), &f.url, "pre-migrate", (from, to)).unwrap();
        assert_eq!((m.rows, m.schema_version), (10, 2));
        assert_eq!(m.tables["public.items"], 10);
        assert!(m.file.ends_with(".dump"));
        names.push(m.name);
    }
    assert_eq!(retain(&f.backups(), 1).unwrap().len(), 2);
    let left: Vec<String> = list(&f.backups()).into_iter().map(|b| b.name).collect();
    assert_eq!(left, [names[2].clone()]);
    // What was taken restores.
    fill(&f.name, 99, 3);
    let Completion::Done(done) = f.executor().restore(&names[2], &mut |_| {}) else {
        panic!()
    };
    assert_eq!(done.rows, Some(10));
    assert_eq!(version(&f.name), 2);
}
