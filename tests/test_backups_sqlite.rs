//! Backups on real SQLite files: restores that check before they touch, readers that never see
//! an error or a half, listing, taking and retention.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rollback_node::core::effects::{Completion, Failure};
use rollback_node::core::FailureKind;
use rollback_node::exec::backups::{
    check_dir, list, retain, take, take_named, Database, RealBackups,
};
use rollback_node::exec::Executor;
use rollback_node::protocol::values::Progress;
use rusqlite::Connection;
use tempfile::TempDir;

/// A live database, a backups directory and a migrations directory in one temp dir.
struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::create_dir(f.backups()).unwrap();
        fs::create_dir(f.migrations()).unwrap();
        for v in [1, 2] {
            fs::write(
                f.migrations().join(format!("{v}_step.up.sql")),
                format!("CREATE TABLE t{v} (id INTEGER);"),
            )
            .unwrap();
            fs::write(
                f.migrations().join(format!("{v}_step.down.sql")),
                format!("DROP TABLE t{v};"),
            )
            .unwrap();
        }
        make_db(&f.live(), 10, 2, true);
        f
    }
    fn live(&self) -> PathBuf {
        self.dir.path().join("app.db")
    }
    fn url(&self) -> String {
        format!("sqlite:{}", self.live().display())
    }
    fn backups(&self) -> PathBuf {
        self.dir.path().join("backups")
    }
    fn migrations(&self) -> PathBuf {
        self.dir.path().join("migrations")
    }
    fn executor(&self) -> RealBackups {
        RealBackups::open(&self.backups(), &self.url(), Some(&self.migrations())).unwrap()
    }
    /// A backup with a manifest, as the node takes them, of a database of `rows` rows at
    /// `version`.
    fn backup(&self, name: &str, rows: u64, version: u64) -> PathBuf {
        let source = self.dir.path().join(format!("source_{name}.db"));
        make_db(&source, rows, version, false);
        take_named(&self.backups(), &Database::Sqlite(source), name, "test").unwrap();
        self.backups().join(format!("{name}.db"))
    }
}

/// A database with `rows` rows in `items`, `schema_migrations` at `version`, and a row in the
/// node's own checksum table (not counted as the application's).
fn make_db(path: &Path, rows: u64, version: u64, wal: bool) {
    let conn = Connection::open(path).unwrap();
    if wal {
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
    conn.execute_batch(
        "BEGIN;
         CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, payload TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS schema_migrations (version uint64, dirty bool);
         CREATE UNIQUE INDEX IF NOT EXISTS version_unique ON schema_migrations (version);
         CREATE TABLE IF NOT EXISTS rollback_node_schema_checksums (
             version INTEGER PRIMARY KEY, checksum TEXT NOT NULL, applied_at TEXT NOT NULL);
         DELETE FROM items; DELETE FROM schema_migrations; DELETE FROM rollback_node_schema_checksums;",
    )
    .unwrap();
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO items (id, payload) SELECT i, printf('row %d of the items table', i) FROM n",
        [rows as i64],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO schema_migrations (version, dirty) VALUES (?1, false)",
        [version as i64],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO rollback_node_schema_checksums VALUES (?1, 'abc', 'now')",
        [version as i64],
    )
    .unwrap();
    conn.execute_batch("COMMIT").unwrap();
}

fn count(path: &Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .unwrap()
}

fn version(path: &Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("SELECT version FROM schema_migrations", [], |r| r.get(0))
        .unwrap()
}

fn failure(completion: Completion) -> Failure {
    match completion {
        Completion::Failed(f) => f,
        Completion::Done(d) => panic!("expected a failure, got {d:?}"),
    }
}

fn flip(path: &Path, at: u64, len: usize) {
    let mut bytes = fs::read(path).unwrap();
    for b in &mut bytes[at as usize..at as usize + len] {
        *b ^= 0xA5;
    }
    fs::write(path, bytes).unwrap();
}

#[test]
fn a_good_restore_replaces_the_rows_and_sets_the_backups_version_with_progress() {
    let f = Fixture::new();
    f.backup("nightly", 5_000, 1);
    let mut backups = f.executor().with_pages_per_step(8);
    let mut progress: Vec<Progress> = Vec::new();
    let completion = backups.restore("nightly", &mut |p| progress.push(p));
    let Completion::Done(done) = completion else {
        panic!("{completion:?}")
    };
    assert_eq!(
        done.rows,
        Some(5_000),
        "schema_migrations and rollback_node_* not counted"
    );
    assert_eq!(count(&f.live()), 5_000);
    assert_eq!(version(&f.live()), 1);
    assert!(progress.len() > 3, "{progress:?}");
    assert!(progress
        .iter()
        .all(|p| p.unit == "pages" && p.done <= p.total));
    assert!(progress.windows(2).all(|w| w[0].done <= w[1].done));
    let last = progress.last().unwrap();
    assert_eq!(last.done, last.total);
    let found = backups.observe(&rollback_node::Estate::example().state);
    assert_eq!(found.schema_version, Some(1));
    assert!(found.catalogue.is_some(), "{found:?}");
    let mode: String = Connection::open(f.live())
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal", "the live database stays in WAL mode");
    let last = backups.last_restore().unwrap();
    assert_eq!(
        (last.backup.as_str(), last.rows, last.schema_version),
        ("nightly", 5_000, 1)
    );
    assert_eq!(last.kept, None);
}

#[test]
fn a_backup_with_flipped_bytes_is_refused_by_its_checksum_and_the_live_db_is_untouched() {
    let f = Fixture::new();
    let path = f.backup("nightly", 5_000, 1);
    let size = fs::metadata(&path).unwrap().len();
    flip(&path, size / 2, 16);
    let before = fs::read(f.live()).unwrap();
    let failure = failure(f.executor().restore("nightly", &mut |_| {}));
    assert!(failure.kind == FailureKind::NothingChanged && failure.completed == 0);
    let text = failure.error.to_string();
    assert!(text.contains("nightly.db"), "{text}");
    assert!(text.contains("SHA-256"), "{text}");
    assert!(text.contains("not touched"), "{text}");
    assert_eq!(fs::read(f.live()).unwrap(), before);
    assert_eq!((count(&f.live()), version(&f.live())), (10, 2));
}

/// The backup's checks run while it is copied: a large backup that fails them has had most of
/// its pages copied (spilled into the live file's journal or log) when it is refused, and the
/// copy is rolled back, in WAL mode and with a rollback journal alike.
#[test]
fn a_large_backup_refused_while_it_is_copied_leaves_the_live_db_as_it_was_in_either_journal_mode() {
    for wal in [true, false] {
        let f = Fixture::new();
        if !wal {
            let mode: String = Connection::open(f.live())
                .unwrap()
                .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "delete");
        }
        let path = f.backup("big", 200_000, 1);
        let size = fs::metadata(&path).unwrap().len();
        // Past the middle, in the pages copied last.
        flip(&path, size - size / 8, 16);
        let before = fs::read(f.live()).unwrap();
        let mut reports = 0;
        let failure = failure(
            f.executor()
                .with_pages_per_step(64)
                .restore("big", &mut |_| reports += 1),
        );
        assert!(
            failure.kind == FailureKind::NothingChanged && failure.completed == 0,
            "{failure:?}"
        );
        let text = failure.error.to_string();
        assert!(text.contains("SHA-256"), "{text}");
        assert!(text.contains("not touched"), "{text}");
        assert!(
            reports > 10,
            "the copy ran beside the checks: {reports} reports"
        );
        assert_eq!(fs::read(f.live()).unwrap(), before, "wal {wal}");
        assert_eq!((count(&f.live()), version(&f.live())), (10, 2));
    }
}

/// A live file that does not exist yet is not created for a backup that fails its checks.
#[test]
fn a_refused_restore_into_a_missing_live_file_creates_nothing() {
    let f = Fixture::new();
    let path = f.backup("nightly", 5_000, 1);
    let size = fs::metadata(&path).unwrap().len();
    flip(&path, size / 2, 16);
    let manifest = rollback_node::exec::backups::Manifest::read(&f.backups(), "nightly")
        .unwrap()
        .unwrap();
    let missing = f.dir.path().join("not_yet.db");
    let refused = rollback_node::exec::backups::sqlite::restore(
        &path,
        Some(&manifest),
        &missing,
        64,
        &mut |_, _| {},
    );
    assert!(
        matches!(
            refused,
            Err(rollback_node::exec::backups::RestoreError::Refused(_))
        ),
        "{refused:?}"
    );
    assert!(!missing.exists());
}

#[test]
fn a_damaged_backup_without_a_manifest_fails_quick_check_and_is_refused() {
    let f = Fixture::new();
    let path = f.backups().join("by_hand.db");
    make_db(&path, 5_000, 1, false);
    // Wreck the b-tree pages past the first.
    flip(&path, 4096, 3 * 4096);
    let failure = failure(f.executor().restore("by_hand", &mut |_| {}));
    let text = failure.error.to_string();
    assert!(failure.kind == FailureKind::NothingChanged, "{failure:?}");
    assert!(text.contains("by_hand.db"), "{text}");
    assert!(
        text.contains("quick_check") || text.contains("malformed"),
        "{text}"
    );
    assert_eq!((count(&f.live()), version(&f.live())), (10, 2));
}

#[test]
fn a_backup_with_a_manifest_whose_rows_differ_is_refused() {
    let f = Fixture::new();
    let path = f.backup("nightly", 100, 1);
    // The file changed after it was taken, and its manifest's checksum updated to match: the
    // row counts still catch it.
    Connection::open(&path)
        .unwrap()
        .execute("DELETE FROM items WHERE id <= 3", [])
        .unwrap();
    let manifest_path = f.backups().join("nightly.manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest["sha256"] = rollback_node::exec::backups::manifest::sha256_file(&path)
        .unwrap()
        .into();
    manifest["size"] = fs::metadata(&path).unwrap().len().into();
    fs::write(&manifest_path, manifest.to_string()).unwrap();
    let text = failure(f.executor().restore("nightly", &mut |_| {}))
        .error
        .to_string();
    assert!(text.contains("items has 97 rows, expected 100"), "{text}");
    assert_eq!(count(&f.live()), 10);
}

#[test]
fn an_unknown_backup_is_refused_naming_the_known_ones() {
    let f = Fixture::new();
    f.backup("nightly", 10, 1);
    let failure = failure(f.executor().restore("weekly", &mut |_| {}));
    assert!(
        failure.kind == FailureKind::Missing,
        "an unknown backup is missing (20), not refused"
    );
    let text = failure.error.to_string();
    assert!(text.contains("no backup weekly"), "{text}");
    assert!(text.contains("nightly"), "{text}");
}

#[test]
fn a_backup_at_a_version_the_directory_does_not_know_restores_and_says_its_version() {
    let f = Fixture::new();
    f.backup("old_world", 300, 20240101000000);
    let mut backups = f.executor();
    let Completion::Done(done) = backups.restore("old_world", &mut |_| {}) else {
        panic!()
    };
    assert_eq!(done.rows, Some(300));
    assert_eq!(version(&f.live()), 20240101000000);
    let found = backups.observe(&rollback_node::Estate::example().state);
    assert_eq!(found.schema_version, Some(20240101000000));
}

#[test]
fn readers_of_the_live_db_see_the_old_or_the_new_rows_and_never_an_error() {
    let f = Fixture::new();
    make_db(&f.live(), 1_000, 2, true);
    f.backup("big", 200_000, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            let live = f.live();
            std::thread::spawn(move || {
                let conn = Connection::open(&live).unwrap();
                let mut seen = BTreeSet::new();
                let mut reads = 0u64;
                let mut errors = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match conn.query_row("SELECT count(*) FROM items", [], |r| r.get::<_, i64>(0)) {
                        Ok(n) => {
                            seen.insert(n);
                        }
                        Err(e) => errors.push(e.to_string()),
                    }
                    reads += 1;
                }
                // One more after the restore has finished.
                seen.insert(
                    conn.query_row("SELECT count(*) FROM items", [], |r| r.get::<_, i64>(0))
                        .unwrap(),
                );
                (seen, reads, errors)
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let mut backups = f.executor().with_pages_per_step(64);
    let mut steps = 0;
    let completion = backups.restore("big", &mut |_| steps += 1);
    stop.store(true, Ordering::SeqCst);
    assert!(matches!(completion, Completion::Done(_)), "{completion:?}");
    assert!(steps > 10, "{steps} progress reports");
    for reader in readers {
        let (seen, reads, errors) = reader.join().unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert!(reads > 10, "{reads} reads");
        assert!(
            seen.is_subset(&BTreeSet::from([1_000, 200_000])),
            "{seen:?}"
        );
        assert!(seen.contains(&200_000), "{seen:?}");
    }
    assert_eq!(count(&f.live()), 200_000);
}

#[test]
fn listing_is_newest_first_lists_damaged_files_and_reads_the_directory_each_time() {
    let f = Fixture::new();
    // By hand, no manifest, from "last year".
    let by_hand = f.backups().join("by_hand.db");
    make_db(&by_hand, 42, 1, false);
    let year_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(365 * 86400);
    fs::File::options()
        .write(true)
        .open(&by_hand)
        .unwrap()
        .set_modified(year_ago)
        .unwrap();
    // Not a database at all, from "a month ago".
    let damaged = f.backups().join("damaged.db");
    fs::write(&damaged, b"this is not a database, just text pretending").unwrap();
    let month_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(30 * 86400);
    fs::File::options()
        .write(true)
        .open(&damaged)
        .unwrap()
        .set_modified(month_ago)
        .unwrap();
    // Taken by the node now.
    let manifest = take(&f.backups(), &f.url(), "before migrate", (2, 3)).unwrap();
    fs::write(f.backups().join("notes.txt"), "ignored").unwrap();

    let listed = f.executor().list();
    let names: Vec<&str> = listed.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, [manifest.name.as_str(), "damaged", "by_hand"]);
    let taken = &listed[0];
    assert!(taken.verified && taken.manifest && taken.problem.is_none());
    assert_eq!((taken.schema_version, taken.rows), (Some(2), Some(10)));
    assert_eq!(taken.why.as_deref(), Some("before migrate"));
    assert!(
        manifest.name.starts_with("pre_migrate_2_to_3_"),
        "{}",
        manifest.name
    );
    assert_eq!(
        taken.size,
        fs::metadata(f.backups().join(&taken.file)).unwrap().len()
    );
    let bad = &listed[1];
    assert!(!bad.verified);
    assert!(
        bad.problem.as_deref().unwrap().contains("damaged.db"),
        "{bad:?}"
    );
    let hand = &listed[2];
    assert!(hand.verified && !hand.manifest);
    assert_eq!((hand.schema_version, hand.rows), (Some(1), Some(42)));

    // A file added while the node runs counts, and can be restored.
    make_db(&f.backups().join("later.db"), 7, 1, false);
    let listed = list(&f.backups());
    assert_eq!(listed.len(), 4);
    assert_eq!(listed[0].name, "later");
    let Completion::Done(done) = f.executor().restore("later", &mut |_| {}) else {
        panic!()
    };
    assert_eq!(done.rows, Some(7));

    // A damaged file with a manifest: listed, not verified, the checksum named.
    let path = f.backups().join(&manifest.file);
    flip(&path, 200, 4);
    let listed = list(&f.backups());
    let taken = listed.iter().find(|b| b.name == manifest.name).unwrap();
    assert!(!taken.verified);
    assert!(
        taken.problem.as_deref().unwrap().contains("SHA-256"),
        "{taken:?}"
    );
}

#[test]
fn the_newest_backup_at_or_below_a_version_is_found() {
    let f = Fixture::new();
    f.backup("at_one", 1, 1);
    f.backup("at_two", 2, 2);
    let backups = f.executor();
    assert_eq!(backups.newest_at_or_below(1).unwrap().name, "at_one");
    let at_two = backups.newest_at_or_below(5).unwrap().name;
    assert!(at_two == "at_two" || at_two == "at_one", "{at_two}");
    assert!(backups.newest_at_or_below(0).is_none());
}

#[test]
fn take_and_retain_keep_the_newest_taken_and_never_delete_backups_put_there_by_hand() {
    let f = Fixture::new();
    make_db(&f.backups().join("by_hand.db"), 3, 1, false);
    let mut names = Vec::new();
    for (from, to) in [(1, 2), (2, 3), (3, 4)] {
        let m = take(&f.backups(), &f.url(), "pre-migrate", (from, to)).unwrap();
        assert_eq!(m.rows, 10);
        assert_eq!(m.schema_version, 2);
        assert_eq!(m.tables["items"], 10);
        assert_eq!(m.tables["schema_migrations"], 1);
        names.push(m.name);
    }
    // Same second, same versions: a distinct name.
    let again = take(&f.backups(), &f.url(), "pre-migrate", (3, 4)).unwrap();
    assert_ne!(again.name, names[2]);
    fs::remove_file(f.backups().join(format!("{}.db", again.name))).unwrap();
    fs::remove_file(f.backups().join(format!("{}.manifest.json", again.name))).unwrap();

    let deleted = retain(&f.backups(), 2).unwrap();
    assert_eq!(deleted, [names[0].clone()]);
    let left: BTreeSet<String> = list(&f.backups()).into_iter().map(|b| b.name).collect();
    let expected: BTreeSet<String> = [names[1].clone(), names[2].clone(), "by_hand".to_owned()]
        .into_iter()
        .collect();
    assert_eq!(left, expected);
    assert!(!f
        .backups()
        .join(format!("{}.manifest.json", names[0]))
        .exists());
    assert!(list(&f.backups()).iter().all(|b| b.verified));
    // A taken backup is a valid SQLite file on its own (no WAL beside it).
    let conn = Connection::open(f.backups().join(format!("{}.db", names[2]))).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
}

#[test]
fn a_missing_or_unusable_backups_dir_is_one_line_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    let e = check_dir(&missing).unwrap_err();
    assert!(e.contains("nowhere") && !e.contains('\n'), "{e}");
    let file = dir.path().join("file");
    fs::write(&file, "").unwrap();
    let e = check_dir(&file).unwrap_err();
    assert!(e.contains("not a directory"), "{e}");
    let url = format!("sqlite:{}", dir.path().join("app.db").display());
    assert!(RealBackups::open(&missing, &url, None).is_err());
    assert!(check_dir(dir.path()).is_ok());
    assert!(list(&missing).is_empty());
}
