//! The migration engine on real SQLite files: golang-migrate directories that look like real
//! ones, failures that must leave the database clean, and the dirty cases that cannot.

use std::fs;
use std::path::PathBuf;

use rollback_node::exec::migrations::sqlite::SqliteDb;
use rollback_node::exec::migrations::{
    open, Catalogue, CatalogueError, Direction, Dirty, RunError, RunFailure, SchemaDb, SchemaError,
    Step, TxMode,
};
use rusqlite::Connection;
use tempfile::TempDir;

const USERS: u64 = 20250810144214;
const EMAIL_INDEX: u64 = 20250811090000;
const AUDIT: u64 = 20250901120000;
const COMPACT: u64 = 20250915080000;
const SEED: u64 = 20251002173000;
/// Every version of the standard set, in order.
const ALL: [u64; 5] = [USERS, EMAIL_INDEX, AUDIT, COMPACT, SEED];

/// The steps the executor hands the engine for these versions, in the order given. Which
/// versions a rollback or a migration runs is decided once, by the core (`State::rollback`,
/// `State::migrate`); here each test names them. Up ends at the version, down at the one before
/// it in the directory.
fn steps(c: &Catalogue, direction: Direction, versions: &[u64]) -> Vec<Step> {
    versions
        .iter()
        .map(|&version| Step::load(c, version, direction).expect("a file of the directory"))
        .collect()
}

fn up(c: &Catalogue, versions: &[u64]) -> Vec<Step> {
    steps(c, Direction::Up, versions)
}

fn down(c: &Catalogue, versions: &[u64]) -> Vec<Step> {
    steps(c, Direction::Down, versions)
}

/// The versions after `current` through `target`: what `migrate target` runs.
fn after_through(c: &Catalogue, current: u64, target: u64) -> Vec<u64> {
    c.versions()
        .filter(|v| *v > current && *v <= target)
        .collect()
}

/// A migrations directory and a database file in one temp dir.
struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::create_dir(f.migrations()).unwrap();
        f
    }

    /// The realistic set: timestamps, odd names, own BEGIN/COMMIT, a VACUUM, a missing down.
    fn standard() -> Fixture {
        let f = Fixture::new();
        f.write(
            &format!("{USERS}_create_users.up.sql"),
            "-- users of the app\nCREATE TABLE users (\n  id INTEGER PRIMARY KEY,\n  email TEXT NOT NULL,\n  note TEXT DEFAULT 'a;b'\n);\nINSERT INTO users (email) VALUES ('ada@example.com');\n",
        );
        f.write(
            &format!("{USERS}_create_users.down.sql"),
            "DROP TABLE users;\n",
        );
        f.write(
            &format!("{EMAIL_INDEX}_users..email-index.up.sql"),
            "CREATE UNIQUE INDEX users_email ON users (email);\n",
        );
        f.write(
            &format!("{EMAIL_INDEX}_users..email-index.down.sql"),
            "DROP INDEX users_email;\n",
        );
        f.write(
            &format!("{AUDIT}_audit-log.up.sql"),
            "BEGIN;\nCREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT);\nCREATE TRIGGER users_audit AFTER INSERT ON users BEGIN\n  INSERT INTO audit (what) VALUES ('user ' || NEW.email);\nEND;\nCOMMIT;\n",
        );
        f.write(
            &format!("{AUDIT}_audit-log.down.sql"),
            "BEGIN TRANSACTION;\nDROP TRIGGER users_audit;\nDROP TABLE audit;\nCOMMIT;\n",
        );
        f.write(
            &format!("{COMPACT}_compact.up.sql"),
            "CREATE TABLE settings (k TEXT PRIMARY KEY, v TEXT);\nVACUUM;\n",
        );
        f.write(
            &format!("{COMPACT}_compact.down.sql"),
            "DROP TABLE settings;\nVACUUM;\n",
        );
        // Irreversible: no down file.
        f.write(
            &format!("{SEED}_seed_settings.up.sql"),
            "INSERT INTO settings (k, v) VALUES ('theme', 'dark');\n",
        );
        // Not migrations.
        f.write("README.md", "not a migration");
        f.write(&format!("{USERS}_create_users.up.sql.orig"), "garbage");
        f.write("notes_1.up.sql", "garbage");
        f
    }

    fn migrations(&self) -> PathBuf {
        self.dir.path().join("migrations")
    }

    fn write(&self, name: &str, text: &str) {
        fs::write(self.migrations().join(name), text).unwrap();
    }

    fn db_path(&self) -> PathBuf {
        self.dir.path().join("app.db")
    }

    fn url(&self) -> String {
        format!("sqlite:{}", self.db_path().display())
    }

    fn open(&self) -> Box<dyn SchemaDb> {
        open(&self.url()).unwrap()
    }

    fn catalogue(&self) -> Catalogue {
        Catalogue::read(self.migrations()).unwrap()
    }

    fn conn(&self) -> Connection {
        Connection::open(self.db_path()).unwrap()
    }

    /// The user tables, triggers and indexes, as SQLite describes them.
    fn schema(&self) -> Vec<(String, String)> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' \
                 AND name NOT LIKE 'rollback_node_%' AND name NOT IN ('schema_migrations', 'version_unique') ORDER BY type, name",
            )
            .unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows
    }

    fn version_row(&self) -> Option<(i64, bool)> {
        self.conn()
            .query_row("SELECT version, dirty FROM schema_migrations", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .ok()
    }

    /// Migrates to `target` through the engine.
    fn migrate(&self, db: &mut dyn SchemaDb, target: u64) {
        let catalogue = self.catalogue();
        let current = db.observe(&catalogue).unwrap().version;
        let steps = up(&catalogue, &after_through(&catalogue, current, target));
        db.run(&steps, &mut |_, _| {}).unwrap();
    }
}

fn names(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn catalogue_reads_a_real_directory() {
    let f = Fixture::standard();
    let c = f.catalogue();
    assert_eq!(
        c.versions().collect::<Vec<_>>(),
        vec![USERS, EMAIL_INDEX, AUDIT, COMPACT, SEED]
    );
    let index = c.get(EMAIL_INDEX).unwrap();
    assert_eq!(index.title, "users..email-index");
    assert!(index.down.is_some());
    assert!(c.get(SEED).unwrap().down.is_none());
    assert_eq!(c.previous(AUDIT), EMAIL_INDEX);
    assert_eq!(c.previous(USERS), 0);
    assert_eq!(c.latest(), Some(SEED));
}

#[test]
fn catalogue_errors_name_the_paths() {
    let f = Fixture::standard();
    f.write(&format!("{USERS}_users_again.up.sql"), "SELECT 1;");
    let err = Catalogue::read(f.migrations()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(
        err,
        CatalogueError::Duplicate { version: USERS, .. }
    ));
    assert!(
        msg.contains(&format!("{USERS}_create_users.up.sql")),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("{USERS}_users_again.up.sql")),
        "{msg}"
    );
    assert_eq!(msg.lines().count(), 1);

    let missing = f.dir.path().join("no-such-dir");
    let err = Catalogue::read(&missing).unwrap_err();
    assert!(matches!(err, CatalogueError::MissingDirectory { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("no-such-dir") && msg.contains("does not exist"),
        "{msg}"
    );
}

#[test]
fn modes_of_the_standard_files() {
    let f = Fixture::standard();
    let c = f.catalogue();
    let steps = up(&c, &ALL);
    let modes: Vec<_> = steps.iter().map(|s| s.file.mode.clone()).collect();
    assert_eq!(modes[0], TxMode::Transactional);
    assert_eq!(modes[2], TxMode::OwnTransaction);
    assert!(!modes[3].in_transaction(), "{:?}", modes[3]);
    // The trigger body's semicolons do not split it.
    assert_eq!(steps[2].file.body().len(), 2);
    assert_eq!(steps[0].file.statements[0].line, 2);
}

#[test]
fn up_and_down_everything_with_golang_migrate_layout() {
    let f = Fixture::standard();
    let c = f.catalogue();
    let mut db = f.open();
    assert_eq!(db.observe(&c).unwrap().version, 0);
    let steps = up(&c, &ALL);
    assert_eq!(steps.len(), 5);
    let mut seen = Vec::new();
    let report = db.run(&steps, &mut |d, t| seen.push((d, t))).unwrap();
    assert_eq!((report.from, report.to), (0, SEED));
    assert_eq!(report.steps.len(), 5);
    assert_eq!(seen.first(), Some(&(0, 8)));
    assert_eq!(seen.last(), Some(&(8, 8)));
    assert_eq!(report.steps[0].checksum, steps[0].file.checksum);
    assert_eq!(f.version_row(), Some((SEED as i64, false)));

    // Exactly golang-migrate's sqlite3 table and index.
    let conn = f.conn();
    let table: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'schema_migrations'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        table,
        "CREATE TABLE schema_migrations (version uint64,dirty bool)"
    );
    let index: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'version_unique'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        index,
        "CREATE UNIQUE INDEX version_unique ON schema_migrations (version)"
    );
    // The trigger from the own-transaction file works.
    conn.execute("INSERT INTO users (email) VALUES ('bob@example.com')", [])
        .unwrap();
    let audited: i64 = conn
        .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
        .unwrap();
    assert_eq!(audited, 1);
    drop(conn);

    let state = db.observe(&c).unwrap();
    assert_eq!(state.version, SEED);
    assert!(state.dirty.is_none() && state.drift.is_empty());

    // Forget the seed by hand (golang-migrate's force), then roll everything back.
    db.force(COMPACT).unwrap();
    let steps = down(&c, &[COMPACT, AUDIT, EMAIL_INDEX, USERS]);
    assert_eq!(
        steps
            .iter()
            .map(|s| (s.version, s.version_after))
            .collect::<Vec<_>>(),
        vec![
            (COMPACT, AUDIT),
            (AUDIT, EMAIL_INDEX),
            (EMAIL_INDEX, USERS),
            (USERS, 0)
        ]
    );
    let report = db.run(&steps, &mut |_, _| {}).unwrap();
    assert_eq!(report.to, 0);
    assert_eq!(f.version_row(), None);
    assert_eq!(f.schema(), Vec::<(String, String)>::new());
    assert!(report.duration >= report.steps.iter().map(|s| s.duration).sum());
}

#[test]
fn rollback_to_a_middle_version_leaves_the_one_before() {
    let f = Fixture::standard();
    let c = f.catalogue();
    let mut db = f.open();
    f.migrate(db.as_mut(), AUDIT);
    let steps = down(&c, &[AUDIT, EMAIL_INDEX]);
    let report = db.run(&steps, &mut |_, _| {}).unwrap();
    assert_eq!(report.to, USERS);
    assert_eq!(f.schema(), names(&[("table", "users")]));
}

#[test]
fn a_down_that_fails_halfway_changes_nothing() {
    let f = Fixture::standard();
    f.write(
        &format!("{EMAIL_INDEX}_users..email-index.down.sql"),
        "DROP INDEX users_email;\n\n-- the next one is wrong\nDELETE FROM no_such_table;\n",
    );
    let c = f.catalogue();
    let mut db = f.open();
    f.migrate(db.as_mut(), EMAIL_INDEX);
    let before = f.schema();
    let steps = down(&c, &[EMAIL_INDEX]);
    let failure = db.run(&steps, &mut |_, _| {}).unwrap_err();
    assert_eq!(failure.code(), 14);
    assert_eq!(failure.at(), EMAIL_INDEX);
    let msg = failure.to_string();
    assert!(msg.contains("users..email-index.down.sql line 4"), "{msg}");
    assert!(msg.contains("DELETE FROM no_such_table"), "{msg}");
    assert!(msg.contains("no such table: no_such_table"), "{msg}");
    match failure.cause() {
        RunError::Statement { line, .. } => assert_eq!(*line, 4),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.schema(), before);
    assert_eq!(f.version_row(), Some((EMAIL_INDEX as i64, false)));
    assert!(db.observe(&c).unwrap().dirty.is_none());
}

#[test]
fn a_multi_step_rollback_failing_in_its_last_step_is_all_or_nothing() {
    let f = Fixture::standard();
    f.write(
        &format!("{USERS}_create_users.down.sql"),
        "DROP TABLE users;\nSELECT no_such_function();\n",
    );
    let c = f.catalogue();
    let mut db = f.open();
    f.migrate(db.as_mut(), AUDIT);
    let before = f.schema();
    let steps = down(&c, &[AUDIT, EMAIL_INDEX, USERS]);
    assert_eq!(steps.len(), 3);
    let failure = db.run(&steps, &mut |_, _| {}).unwrap_err();
    assert!(
        matches!(failure, RunFailure::NothingChanged { at: AUDIT, .. }),
        "{failure}"
    );
    assert!(failure.to_string().contains("create_users.down.sql line 2"));
    assert_eq!(f.schema(), before);
    assert_eq!(f.version_row(), Some((AUDIT as i64, false)));
}

#[test]
fn an_own_transaction_file_failing_changes_nothing() {
    let f = Fixture::standard();
    f.write(
        &format!("{AUDIT}_audit-log.up.sql"),
        "BEGIN;\nCREATE TABLE audit (id INTEGER PRIMARY KEY);\nINSERT INTO audit (nope) VALUES (1);\nCOMMIT;\n",
    );
    let c = f.catalogue();
    let mut db = f.open();
    f.migrate(db.as_mut(), EMAIL_INDEX);
    let steps = up(&c, &[AUDIT]);
    let failure = db.run(&steps, &mut |_, _| {}).unwrap_err();
    assert_eq!(failure.code(), 14, "{failure}");
    assert!(failure.to_string().contains("line 3"));
    assert!(!f.schema().iter().any(|(_, n)| n == "audit"));
    assert_eq!(f.version_row(), Some((EMAIL_INDEX as i64, false)));
}

#[test]
fn a_failing_no_transaction_file_leaves_evidence_and_force_clears_it() {
    let f = Fixture::standard();
    f.write(
        &format!("{COMPACT}_compact.up.sql"),
        "CREATE TABLE settings (k TEXT PRIMARY KEY, v TEXT);\nVACUUM;\nINSERT INTO settings (nope) VALUES (1);\n",
    );
    let c = f.catalogue();
    let mut db = f.open();
    f.migrate(db.as_mut(), AUDIT);
    // One transactional step, then the no-transaction one that fails.
    db.force(EMAIL_INDEX).unwrap();
    f.conn()
        .execute_batch("DROP TRIGGER users_audit; DROP TABLE audit;")
        .unwrap();
    let steps = up(&c, &[AUDIT, COMPACT]);
    let failure = db.run(&steps, &mut |_, _| {}).unwrap_err();
    match &failure {
        RunFailure::PartWay {
            at,
            dirty,
            completed,
            ..
        } => {
            assert_eq!((*at, *dirty), (COMPACT, true));
            assert_eq!(completed.len(), 1);
        }
        other => panic!("{other}"),
    }
    assert_eq!(failure.code(), 13);
    assert_eq!(f.version_row(), Some((COMPACT as i64, true)));

    let state = db.observe(&c).unwrap();
    let Some(Dirty::Recorded(evidence)) = &state.dirty else {
        panic!("{:?}", state.dirty)
    };
    assert_eq!(evidence.version, COMPACT);
    assert_eq!(evidence.line, 3);
    assert!(evidence.file.ends_with(format!("{COMPACT}_compact.up.sql")));
    assert!(evidence.statement.starts_with("INSERT INTO settings"));
    assert!(evidence.database_said.contains("nope"), "{evidence:?}");

    // Further runs are refused, naming the evidence and `force`.
    let steps = up(&c, &[SEED]);
    let refused = db.run(&steps, &mut |_, _| {}).unwrap_err();
    assert_eq!(refused.code(), 14);
    let msg = refused.to_string();
    assert!(msg.contains("dirty") && msg.contains("force"), "{msg}");
    assert!(msg.contains("compact.up.sql:3"), "{msg}");

    // A person fixes it by hand and forces the version.
    f.conn()
        .execute_batch("INSERT INTO settings (k, v) VALUES ('x', 'y');")
        .unwrap();
    let forced = db.force(COMPACT).unwrap();
    assert_eq!(forced.was_dirty, Some(Dirty::Recorded(evidence.clone())));
    assert_eq!(forced.previous_version, COMPACT);
    let state = db.observe(&c).unwrap();
    assert!(state.dirty.is_none());
    assert_eq!(f.version_row(), Some((COMPACT as i64, false)));
}

#[test]
fn a_no_transaction_file_that_succeeds_is_clean() {
    let f = Fixture::standard();
    let c = f.catalogue();
    let mut db = f.open();
    f.migrate(db.as_mut(), COMPACT);
    assert_eq!(f.version_row(), Some((COMPACT as i64, false)));
    let steps = down(&c, &[COMPACT]);
    let report = db.run(&steps, &mut |_, _| {}).unwrap();
    assert_eq!(report.to, AUDIT);
    assert!(!report.steps[0].mode.in_transaction());
    assert_eq!(
        report.steps[0].protocol,
        "dirty protocol: line 2: VACUUM cannot run inside a transaction"
    );
    assert!(db.observe(&c).unwrap().dirty.is_none());
}

#[test]
fn a_mixed_run_failing_after_a_committed_segment_is_part_way_but_clean() {
    let f = Fixture::standard();
    f.write(
        &format!("{SEED}_seed_settings.up.sql"),
        "INSERT INTO settings (k, v) VALUES ('theme', 'dark');\nINSERT INTO nowhere VALUES (1);\n",
    );
    let c = f.catalogue();
    let mut db = f.open();
    let steps = up(&c, &ALL);
    let failure = db.run(&steps, &mut |_, _| {}).unwrap_err();
    match &failure {
        RunFailure::PartWay { at, dirty, .. } => assert_eq!((*at, *dirty), (COMPACT, false)),
        other => panic!("{other}"),
    }
    assert_eq!(failure.code(), 13);
    assert_eq!(f.version_row(), Some((COMPACT as i64, false)));
    let n: i64 = f
        .conn()
        .query_row("SELECT count(*) FROM settings", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
}

#[test]
fn an_edited_file_is_reported_as_drift() {
    let f = Fixture::standard();
    let c = f.catalogue();
    let mut db = f.open();
    f.migrate(db.as_mut(), EMAIL_INDEX);
    assert!(db.observe(&c).unwrap().drift.is_empty());
    f.write(
        &format!("{USERS}_create_users.up.sql"),
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL, name TEXT);\n",
    );
    let state = db.observe(&c).unwrap();
    assert_eq!(state.drift.len(), 1);
    assert_eq!(state.drift[0].version, USERS);
    assert_ne!(
        Some(state.drift[0].recorded.clone()),
        state.drift[0].current
    );
    // A version not applied yet is not drift when edited.
    f.write(&format!("{AUDIT}_audit-log.up.sql"), "SELECT 2;");
    assert_eq!(db.observe(&c).unwrap().drift.len(), 1);
}

#[test]
fn a_database_golang_migrate_left_dirty() {
    let f = Fixture::standard();
    let conn = f.conn();
    conn.execute_batch(
        "CREATE TABLE schema_migrations (version uint64,dirty bool);
         CREATE UNIQUE INDEX version_unique ON schema_migrations (version);
         CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL);
         INSERT INTO schema_migrations (version, dirty) VALUES (20250811090000, 1);",
    )
    .unwrap();
    let c = f.catalogue();
    let mut db = f.open();
    let state = db.observe(&c).unwrap();
    assert_eq!(state.version, EMAIL_INDEX);
    assert_eq!(state.dirty, Some(Dirty::LeftByAnotherTool));
    assert!(state
        .dirty
        .unwrap()
        .to_string()
        .contains("left dirty by another tool"));
    let steps = down(&c, &[EMAIL_INDEX]);
    let refused = db.run(&steps, &mut |_, _| {}).unwrap_err();
    assert!(matches!(
        refused.cause(),
        RunError::Dirty {
            why: Dirty::LeftByAnotherTool,
            ..
        }
    ));
    let forced = db.force(USERS).unwrap();
    assert_eq!(forced.was_dirty, Some(Dirty::LeftByAnotherTool));
    assert_eq!(db.observe(&c).unwrap().version, USERS);
}

#[test]
fn a_version_in_the_database_but_not_in_the_directory() {
    let f = Fixture::standard();
    let c = f.catalogue();
    let mut db = f.open();
    f.migrate(db.as_mut(), USERS);
    db.force(20260101000000).unwrap();
    let state = db.observe(&c).unwrap();
    let missing = state.not_in_directory.expect("flagged");
    assert_eq!(missing.version, 20260101000000);
    let msg = missing.to_string();
    assert!(
        msg.contains("20260101000000") && msg.contains("migrations"),
        "{msg}"
    );
}

#[test]
fn a_locked_database_is_an_error_naming_the_file() {
    let f = Fixture::standard();
    let c = f.catalogue();
    let mut db = f.open();
    db.observe(&c).unwrap();
    let holder = f.conn();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let steps = up(&c, &[USERS]);
    let failure = db.run(&steps, &mut |_, _| {}).unwrap_err();
    assert_eq!(failure.code(), 14);
    match failure.cause() {
        RunError::Database(SchemaError::Locked { url, .. }) => {
            assert!(url.contains("app.db"), "{url}")
        }
        other => panic!("{other:?}"),
    }
    holder.execute_batch("ROLLBACK").unwrap();
    db.run(&steps, &mut |_, _| {}).unwrap();
}

#[test]
fn steps_from_a_stale_plan_are_refused() {
    let f = Fixture::standard();
    let c = f.catalogue();
    let mut db = f.open();
    let steps = up(&c, &[USERS]);
    db.run(&steps, &mut |_, _| {}).unwrap();
    let failure = db.run(&steps, &mut |_, _| {}).unwrap_err();
    assert!(
        matches!(failure.cause(), RunError::NotAtStart { .. }),
        "{failure}"
    );
    assert_eq!(failure.at(), USERS);
}

#[test]
fn bad_urls_and_paths() {
    assert!(matches!(
        open("mysql://x").err().unwrap(),
        SchemaError::BadUrl { .. }
    ));
    let err = open("sqlite:/no/such/dir/app.db").err().unwrap();
    assert!(matches!(err, SchemaError::Unreachable { .. }));
    assert!(err.to_string().contains("/no/such/dir/app.db"));
}

#[test]
fn the_example_estate_migrates_and_rolls_back() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/sqlite");
    let estate: toml::Value =
        toml::from_str(&fs::read_to_string(root.join("estate.toml")).unwrap()).unwrap();
    assert_eq!(estate["schema"]["database"].as_str(), Some("sqlite:app.db"));
    let c = Catalogue::read(root.join(estate["schema"]["migrations"].as_str().unwrap())).unwrap();
    assert_eq!(c.migrations.len(), 4);
    assert!(c.migrations[3].down.is_none());

    let tmp = tempfile::tempdir().unwrap();
    let mut db = open(&format!("sqlite:{}", tmp.path().join("app.db").display())).unwrap();
    let latest = c.latest().unwrap();
    let versions: Vec<u64> = c.versions().collect();
    let report = db.run(&up(&c, &versions), &mut |_, _| {}).unwrap();
    assert_eq!(report.to, latest);
    let previous = c.previous(latest);
    db.force(previous).unwrap();
    let report = db
        .run(
            &down(
                &c,
                &after_through(&c, 0, previous)
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>(),
            ),
            &mut |_, _| {},
        )
        .unwrap();
    assert_eq!(report.to, 0);
}

// SQLite's documented procedure for table changes (https://www.sqlite.org/lang_altertable.html,
// "Making Other Kinds Of Table Schema Changes"): foreign keys off outside the transaction, the
// table rebuilt inside it, foreign keys on again after it.

const TEAMS: u64 = 20250101000000;
const REBUILD: u64 = 20250102000000;
const RENAME: u64 = 20250103000000;
const ORPHAN: u64 = 20250104000000;

/// The first file leaves foreign keys on (its trailing pragma), so a table change that did not
/// turn them off before its transaction would fail on `DROP TABLE teams`.
const TEAMS_UP: &str = "BEGIN;\nCREATE TABLE teams (id INTEGER PRIMARY KEY, name TEXT);\nCREATE TABLE members (\n  id INTEGER PRIMARY KEY,\n  team_id INTEGER NOT NULL REFERENCES teams (id),\n  email TEXT\n);\nINSERT INTO teams VALUES (1, 'core'), (2, 'web');\nINSERT INTO members VALUES (1, 1, 'ada@example.com'), (2, 2, 'bob@example.com');\nCOMMIT;\nPRAGMA foreign_keys=ON;\n";

/// Rebuilds the parent table `teams` with `name NOT NULL` and a new column, the documented way.
fn rebuild_up(select_name: &str) -> String {
    format!(
        "-- teams.name becomes NOT NULL; SQLite cannot ALTER that in place\nPRAGMA foreign_keys=OFF;\nBEGIN;\nCREATE TABLE new_teams (id INTEGER PRIMARY KEY, name TEXT NOT NULL, slug TEXT);\nINSERT INTO new_teams (id, name, slug) SELECT id, {select_name}, lower(name) FROM teams;\nDROP TABLE teams;\nALTER TABLE new_teams RENAME TO teams;\nPRAGMA foreign_key_check;\nCOMMIT;\nPRAGMA foreign_keys=ON;\n"
    )
}

const REBUILD_DOWN: &str = "PRAGMA foreign_keys=OFF;\nBEGIN;\nCREATE TABLE old_teams (id INTEGER PRIMARY KEY, name TEXT);\nINSERT INTO old_teams (id, name) SELECT id, name FROM teams;\nDROP TABLE teams;\nALTER TABLE old_teams RENAME TO teams;\nCOMMIT;\nPRAGMA foreign_keys=ON;\n";

const PROTOCOL_WRAPPED: &str =
    "one transaction; PRAGMA foreign_keys=OFF applied before it and PRAGMA foreign_keys=ON after";

impl Fixture {
    fn teams() -> Fixture {
        let f = Fixture::new();
        f.write(&format!("{TEAMS}_teams.up.sql"), TEAMS_UP);
        f.write(
            &format!("{TEAMS}_teams.down.sql"),
            "DROP TABLE members;\nDROP TABLE teams;\n",
        );
        f.write(
            &format!("{REBUILD}_teams_name_not_null.up.sql"),
            &rebuild_up("name"),
        );
        f.write(
            &format!("{REBUILD}_teams_name_not_null.down.sql"),
            REBUILD_DOWN,
        );
        f
    }

    /// The engine's own connection, to read its pragmas.
    fn sqlite(&self) -> SqliteDb {
        SqliteDb::open(self.db_path()).unwrap()
    }

    /// The columns of a table.
    fn columns(&self, table: &str) -> Vec<String> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .unwrap();
        let names = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        names
    }
}

#[test]
fn the_documented_table_change_runs_in_one_transaction_and_turns_foreign_keys_on_again() {
    let f = Fixture::teams();
    f.write(
        &format!("{ORPHAN}_orphan.up.sql"),
        "INSERT INTO members VALUES (3, 99, 'orphan@example.com');\n",
    );
    let c = f.catalogue();
    let mut db = f.sqlite();
    // (With foreign keys on, `DROP TABLE teams` inside the rebuild's transaction would fail:
    // `PRAGMA foreign_keys=OFF` does nothing there, so it must be applied before it.)
    let report = db.run(&up(&c, &[TEAMS]), &mut |_, _| {}).unwrap();
    assert_eq!(
        report.steps[0].protocol,
        "one transaction; PRAGMA foreign_keys=ON applied after it"
    );
    assert!(db.foreign_keys().unwrap());

    let steps = up(&c, &[REBUILD]);
    assert!(
        steps[0].file.mode.wrap().is_some(),
        "{:?}",
        steps[0].file.mode
    );
    let mut seen = Vec::new();
    let report = db.run(&steps, &mut |d, t| seen.push((d, t))).unwrap();
    assert_eq!(report.to, REBUILD);
    assert_eq!(report.steps[0].protocol, PROTOCOL_WRAPPED);
    // The body between BEGIN and COMMIT; the pragmas around it are not statements of the run.
    assert_eq!(report.steps[0].statements, 5);
    assert_eq!(seen.last(), Some(&(5, 5)));
    assert_eq!(f.version_row(), Some((REBUILD as i64, false)));
    assert_eq!(f.columns("teams"), vec!["id", "name", "slug"]);
    let slug: String = f
        .conn()
        .query_row("SELECT slug FROM teams WHERE id = 2", [], |r| r.get(0))
        .unwrap();
    assert_eq!(slug, "web");
    assert!(db.foreign_keys().unwrap(), "foreign keys are on again");
    // The connection enforces them: a file that breaks one fails, and changes nothing.
    let failure = db.run(&up(&c, &[ORPHAN]), &mut |_, _| {}).unwrap_err();
    assert!(
        matches!(failure, RunFailure::NothingChanged { at: REBUILD, .. }),
        "{failure}"
    );
    assert!(
        failure
            .to_string()
            .contains("FOREIGN KEY constraint failed"),
        "{failure}"
    );

    // And back: the down file has the same shape.
    let report = db.run(&down(&c, &[REBUILD]), &mut |_, _| {}).unwrap();
    assert_eq!(report.to, TEAMS);
    assert_eq!(report.steps[0].protocol, PROTOCOL_WRAPPED);
    assert_eq!(f.columns("teams"), vec!["id", "name"]);
    assert!(db.foreign_keys().unwrap());
    assert!(db.observe(&c).unwrap().dirty.is_none());
}

#[test]
fn a_table_change_whose_body_fails_changes_nothing_and_restores_foreign_keys() {
    let f = Fixture::teams();
    f.write(
        &format!("{REBUILD}_teams_name_not_null.up.sql"),
        &rebuild_up("no_such_column"),
    );
    let c = f.catalogue();
    let mut db = f.sqlite();
    db.run(&up(&c, &[TEAMS]), &mut |_, _| {}).unwrap();
    let before = f.schema();
    let failure = db.run(&up(&c, &[REBUILD]), &mut |_, _| {}).unwrap_err();
    assert!(
        matches!(failure, RunFailure::NothingChanged { at: TEAMS, .. }),
        "{failure}"
    );
    assert_eq!(failure.code(), 14);
    let msg = failure.to_string();
    assert!(msg.contains("teams_name_not_null.up.sql line 5"), "{msg}");
    assert!(msg.contains("no such column: no_such_column"), "{msg}");
    assert!(msg.contains(PROTOCOL_WRAPPED), "{msg}");
    match failure.cause() {
        RunError::Statement { protocol, line, .. } => {
            assert_eq!((protocol.as_str(), *line), (PROTOCOL_WRAPPED, 5))
        }
        other => panic!("{other:?}"),
    }
    // Not dirty, still at its version, the schema as it was, foreign keys on again.
    assert_eq!(f.version_row(), Some((TEAMS as i64, false)));
    let state = db.observe(&c).unwrap();
    assert_eq!((state.version, state.dirty), (TEAMS, None));
    assert_eq!(f.schema(), before);
    assert_eq!(f.columns("teams"), vec!["id", "name"]);
    assert!(db.foreign_keys().unwrap());

    // Once fixed, the same file runs.
    f.write(
        &format!("{REBUILD}_teams_name_not_null.up.sql"),
        &rebuild_up("name"),
    );
    let report = db.run(&up(&c, &[REBUILD]), &mut |_, _| {}).unwrap();
    assert_eq!(report.to, REBUILD);
}

#[test]
fn consecutive_table_changes_share_one_transaction_all_or_nothing() {
    let f = Fixture::teams();
    let rename = |column: &str| {
        format!("PRAGMA foreign_keys=OFF;\nBEGIN;\nCREATE TABLE new_members (id INTEGER PRIMARY KEY, team_id INTEGER NOT NULL REFERENCES teams (id), address TEXT);\nINSERT INTO new_members (id, team_id, address) SELECT id, team_id, {column} FROM members;\nDROP TABLE members;\nALTER TABLE new_members RENAME TO members;\nCOMMIT;\nPRAGMA foreign_keys=ON;\n")
    };
    f.write(&format!("{RENAME}_members_address.up.sql"), &rename("nope"));
    let c = f.catalogue();
    let mut db = f.sqlite();
    db.run(&up(&c, &[TEAMS]), &mut |_, _| {}).unwrap();
    let before = f.schema();
    // The rebuild succeeds, the next file fails: both are rolled back together.
    let failure = db
        .run(&up(&c, &[REBUILD, RENAME]), &mut |_, _| {})
        .unwrap_err();
    assert!(
        matches!(failure, RunFailure::NothingChanged { at: TEAMS, .. }),
        "{failure}"
    );
    assert!(
        failure.to_string().contains("shared with 1 other file"),
        "{failure}"
    );
    assert_eq!(f.version_row(), Some((TEAMS as i64, false)));
    assert_eq!(f.schema(), before);
    assert_eq!(f.columns("teams"), vec!["id", "name"]);
    assert!(db.foreign_keys().unwrap());

    f.write(
        &format!("{RENAME}_members_address.up.sql"),
        &rename("email"),
    );
    let report = db.run(&up(&c, &[REBUILD, RENAME]), &mut |_, _| {}).unwrap();
    assert_eq!(report.to, RENAME);
    for step in &report.steps {
        assert_eq!(
            step.protocol,
            format!("{PROTOCOL_WRAPPED}; the transaction is shared with 1 other file of this run")
        );
    }
    assert_eq!(f.columns("members"), vec!["id", "team_id", "address"]);
    assert!(db.foreign_keys().unwrap());
}

#[test]
fn a_plain_file_and_a_table_change_commit_apart_and_a_failure_is_part_way_but_clean() {
    let f = Fixture::teams();
    f.write(
        &format!("{REBUILD}_teams_name_not_null.up.sql"),
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);\n",
    );
    f.write(
        &format!("{RENAME}_teams_slug.up.sql"),
        &rebuild_up("no_such_column"),
    );
    let c = f.catalogue();
    let mut db = f.sqlite();
    db.run(&up(&c, &[TEAMS]), &mut |_, _| {}).unwrap();
    // Foreign keys off around the plain file would change what it does, so it is committed
    // before the table change starts.
    let failure = db
        .run(&up(&c, &[REBUILD, RENAME]), &mut |_, _| {})
        .unwrap_err();
    let RunFailure::PartWay {
        at,
        dirty,
        completed,
        ..
    } = &failure
    else {
        panic!("{failure}")
    };
    assert_eq!((*at, *dirty, completed.len()), (REBUILD, false, 1));
    assert_eq!(failure.code(), 13);
    assert!(
        completed[0]
            .protocol
            .starts_with("one transaction; committed apart"),
        "{}",
        completed[0].protocol
    );
    let msg = failure.to_string();
    assert!(msg.contains(PROTOCOL_WRAPPED), "{msg}");
    assert!(msg.contains("committed apart"), "{msg}");
    assert_eq!(f.version_row(), Some((REBUILD as i64, false)));
    assert!(db.observe(&c).unwrap().dirty.is_none());
    assert_eq!(f.columns("teams"), vec!["id", "name"]);
    assert!(f
        .schema()
        .contains(&("table".to_owned(), "notes".to_owned())));
    assert!(db.foreign_keys().unwrap());
}

#[test]
fn a_pragma_inside_the_body_still_uses_the_dirty_protocol() {
    let f = Fixture::teams();
    f.write(
        &format!("{REBUILD}_teams_name_not_null.up.sql"),
        "BEGIN;\nCREATE TABLE notes (id INTEGER PRIMARY KEY);\nPRAGMA foreign_keys=OFF;\nINSERT INTO nowhere VALUES (1);\nCOMMIT;\n",
    );
    let c = f.catalogue();
    let mut db = f.sqlite();
    db.run(&up(&c, &[TEAMS]), &mut |_, _| {}).unwrap();
    let steps = up(&c, &[REBUILD]);
    assert!(!steps[0].file.mode.in_transaction());
    let failure = db.run(&steps, &mut |_, _| {}).unwrap_err();
    assert!(
        matches!(
            failure,
            RunFailure::PartWay {
                at: REBUILD,
                dirty: true,
                ..
            }
        ),
        "{failure}"
    );
    assert_eq!(failure.code(), 13);
    let msg = failure.to_string();
    assert!(
        msg.contains("dirty protocol: line 3: PRAGMA foreign_keys cannot run inside a transaction"),
        "{msg}"
    );
    assert_eq!(f.version_row(), Some((REBUILD as i64, true)));
    let Some(Dirty::Recorded(evidence)) = db.observe(&c).unwrap().dirty else {
        panic!("no evidence")
    };
    assert_eq!(evidence.line, 4);
}
