//! The migration engine on a real PostgreSQL 15 server (one per test binary, one database per
//! test): the same promises as on SQLite, with dollar quoting, CREATE INDEX CONCURRENTLY,
//! golang-migrate's table layout and advisory lock.

#[path = "support/pg.rs"]
mod pg;

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rollback_node::core::effects::{Completion, Effect, FailureKind, Lane, Operation, Plan};
use rollback_node::exec::connect::connect_fenced;
use rollback_node::exec::migrations::postgres::{advisory_lock_id, FENCE_IDLE_TIMEOUT};
use rollback_node::exec::migrations::{
    advance_fence, fences, open, Catalogue, Direction, Dirty, RunError, RunFailure, SchemaDb,
    SchemaError, Step, TxMode,
};
use rollback_node::exec::LaneExecutor;
use rollback_node::Estate;
use tempfile::TempDir;

const ACCOUNTS: u64 = 20250810144214;
const STATUS: u64 = 20250811090000;
const TOUCH: u64 = 20250901120000;
const EMAIL_INDEX: u64 = 20250915080000;
const BACKFILL: u64 = 20251002173000;

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
        fs::create_dir(f.migrations()).unwrap();
        f
    }

    fn standard(test: &str) -> Fixture {
        let f = Fixture::new(test);
        f.write(
            &format!("{ACCOUNTS}_create_accounts.up.sql"),
            "-- accounts\nCREATE TABLE accounts (\n  id bigserial PRIMARY KEY,\n  email text NOT NULL,\n  note text DEFAULT 'a;b'\n);\nINSERT INTO accounts (email) VALUES ('ada@example.com'), ('bob@example.com');\n",
        );
        f.write(
            &format!("{ACCOUNTS}_create_accounts.down.sql"),
            "DROP TABLE accounts;\n",
        );
        f.write(
            &format!("{STATUS}_account..status-enum.up.sql"),
            "BEGIN;\nCREATE TYPE account_status AS ENUM ('active', 'closed');\nALTER TABLE accounts ADD COLUMN status account_status NOT NULL DEFAULT 'active';\nCOMMIT;\n",
        );
        f.write(
            &format!("{STATUS}_account..status-enum.down.sql"),
            "BEGIN;\nALTER TABLE accounts DROP COLUMN status;\nDROP TYPE account_status;\nCOMMIT;\n",
        );
        f.write(
            &format!("{TOUCH}_touch-trigger.up.sql"),
            "ALTER TABLE accounts ADD COLUMN updated_at timestamptz;\n\nCREATE FUNCTION touch() RETURNS trigger AS $body$\nBEGIN\n  NEW.updated_at := now(); -- a semicolon inside\n  RETURN NEW;\nEND;\n$body$ LANGUAGE plpgsql;\n\nCREATE TRIGGER accounts_touch BEFORE UPDATE ON accounts\n  FOR EACH ROW EXECUTE FUNCTION touch();\n",
        );
        f.write(
            &format!("{TOUCH}_touch-trigger.down.sql"),
            "DROP TRIGGER accounts_touch ON accounts;\nDROP FUNCTION touch();\nALTER TABLE accounts DROP COLUMN updated_at;\n",
        );
        f.write(
            &format!("{EMAIL_INDEX}_accounts_email_idx.up.sql"),
            "CREATE UNIQUE INDEX CONCURRENTLY accounts_email_idx ON accounts (email);\n",
        );
        f.write(
            &format!("{EMAIL_INDEX}_accounts_email_idx.down.sql"),
            "DROP INDEX CONCURRENTLY accounts_email_idx;\n",
        );
        // Irreversible.
        f.write(
            &format!("{BACKFILL}_backfill.up.sql"),
            "UPDATE accounts SET note = $$backfilled; done$$;\n",
        );
        f.write("README.md", "not a migration");
        f
    }

    fn migrations(&self) -> PathBuf {
        self.dir.path().join("migrations")
    }

    fn write(&self, name: &str, text: &str) {
        fs::write(self.migrations().join(name), text).unwrap();
    }

    fn catalogue(&self) -> Catalogue {
        Catalogue::read(self.migrations()).unwrap()
    }

    fn open(&self) -> Box<dyn SchemaDb> {
        open(&self.url).unwrap()
    }

    fn client(&self) -> postgres::Client {
        pg::server().connect(&self.name)
    }

    /// Tables, columns, types, functions and indexes of `public`, outside our bookkeeping.
    fn schema(&self) -> Vec<String> {
        let mut c = self.client();
        let rows = c
            .query(
                "SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type
                   FROM information_schema.columns WHERE table_schema = 'public'
                   AND table_name NOT IN ('schema_migrations') AND table_name NOT LIKE 'rollback_node_%'
                 UNION ALL SELECT 'index ' || indexname FROM pg_indexes WHERE schemaname = 'public'
                   AND tablename NOT IN ('schema_migrations') AND tablename NOT LIKE 'rollback_node_%'
                 UNION ALL SELECT 'type ' || typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                   WHERE n.nspname = 'public' AND t.typtype = 'e'
                 UNION ALL SELECT 'function ' || proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                   WHERE n.nspname = 'public'
                 ORDER BY 1",
                &[],
            )
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }

    fn version_row(&self) -> Option<(i64, bool)> {
        self.client()
            .query_opt("SELECT version, dirty FROM schema_migrations", &[])
            .unwrap()
            .map(|r| (r.get(0), r.get(1)))
    }

    fn migrate(&self, db: &mut dyn SchemaDb, target: u64) {
        let c = self.catalogue();
        let current = db.observe(&c).unwrap().version;
        let steps = up(&c, &after_through(&c, current, target));
        db.run(&steps, &mut |_, _| {}).unwrap();
    }
}

#[test]
fn up_and_down_everything_with_golang_migrate_layout() {
    let f = Fixture::standard("up_and_down");
    let c = f.catalogue();
    let mut db = f.open();
    assert_eq!(db.observe(&c).unwrap().version, 0);

    // Exactly golang-migrate's table.
    let cols: Vec<(String, String, String)> = f
        .client()
        .query(
            "SELECT column_name::text, data_type::text, is_nullable::text FROM information_schema.columns
             WHERE table_name = 'schema_migrations' ORDER BY ordinal_position",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        cols,
        vec![
            ("version".into(), "bigint".into(), "NO".into()),
            ("dirty".into(), "boolean".into(), "NO".into())
        ]
    );
    let pk: String = f
        .client()
        .query_one(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
             WHERE i.indrelid = 'schema_migrations'::regclass AND i.indisprimary",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(pk, "version");

    let steps = up(&c, &[ACCOUNTS, STATUS, TOUCH, EMAIL_INDEX, BACKFILL]);
    assert_eq!(steps[1].file.mode, TxMode::OwnTransaction);
    assert_eq!(steps[2].file.statements.len(), 3);
    assert!(!steps[3].file.mode.in_transaction());
    let mut last = (0, 0);
    let report = db.run(&steps, &mut |d, t| last = (d, t)).unwrap();
    assert_eq!((report.from, report.to), (0, BACKFILL));
    assert_eq!(last, (9, 9));
    let protocols: Vec<&str> = report.steps.iter().map(|s| s.protocol.as_str()).collect();
    assert_eq!(
        protocols,
        vec![
            "one transaction; the transaction is shared with 2 other files of this run",
            "one transaction (the file's own BEGIN/COMMIT run as ours); the transaction is shared with 2 other files of this run",
            "one transaction; the transaction is shared with 2 other files of this run",
            "dirty protocol: line 1: CREATE INDEX CONCURRENTLY cannot run inside a transaction",
            "one transaction",
        ]
    );
    assert_eq!(f.version_row(), Some((BACKFILL as i64, false)));
    let note: String = f
        .client()
        .query_one("SELECT note FROM accounts LIMIT 1", &[])
        .unwrap()
        .get(0);
    assert_eq!(note, "backfilled; done");
    let state = db.observe(&c).unwrap();
    assert!(state.dirty.is_none() && state.drift.is_empty() && state.not_in_directory.is_none());

    db.force(EMAIL_INDEX).unwrap();
    let steps = down(&c, &[EMAIL_INDEX, TOUCH, STATUS, ACCOUNTS]);
    let report = db.run(&steps, &mut |_, _| {}).unwrap();
    assert_eq!(report.to, 0);
    assert_eq!(report.steps.len(), 4);
    assert_eq!(f.version_row(), None);
    assert_eq!(f.schema(), Vec::<String>::new());
}

#[test]
fn a_down_that_fails_halfway_changes_nothing() {
    let f = Fixture::standard("down_fails_halfway");
    f.write(
        &format!("{TOUCH}_touch-trigger.down.sql"),
        "DROP TRIGGER accounts_touch ON accounts;\nDROP FUNCTION touch();\n\nALTER TABLE accounts\n  DROP COLUMN no_such_column;\n",
    );
    let c = f.catalogue();
    let mut db = f.open();
    f.migrate(db.as_mut(), TOUCH);
    let before = f.schema();
    let steps = down(&c, &[TOUCH]);
    let failure = db.run(&steps, &mut |_, _| {}).unwrap_err();
    assert_eq!(failure.code(), 14);
    assert_eq!(failure.at(), TOUCH);
    let msg = failure.to_string();
    assert!(msg.contains("touch-trigger.down.sql line 4"), "{msg}");
    assert!(
        msg.contains("ALTER TABLE accounts DROP COLUMN no_such_column"),
        "{msg}"
    );
    assert!(
        msg.contains("column \"no_such_column\" of relation \"accounts\" does not exist"),
        "{msg}"
    );
    assert_eq!(f.schema(), before);
    assert_eq!(f.version_row(), Some((TOUCH as i64, false)));
}

#[test]
fn a_multi_step_rollback_failing_in_its_last_step_is_all_or_nothing() {
    let f = Fixture::standard("multi_step_rollback");
    f.write(
        &format!("{ACCOUNTS}_create_accounts.down.sql"),
        "DROP TABLE accounts;\nSELECT 1 / 0;\n",
    );
    let c = f.catalogue();
    let mut db = f.open();
    f.migrate(db.as_mut(), TOUCH);
    let before = f.schema();
    let steps = down(&c, &[TOUCH, STATUS, ACCOUNTS]);
    assert_eq!(steps.len(), 3);
    let failure = db.run(&steps, &mut |_, _| {}).unwrap_err();
    assert!(
        matches!(failure, RunFailure::NothingChanged { at: TOUCH, .. }),
        "{failure}"
    );
    let msg = failure.to_string();
    assert!(msg.contains("create_accounts.down.sql line 2"), "{msg}");
    assert!(msg.contains("division by zero"), "{msg}");
    assert_eq!(f.schema(), before);
    assert_eq!(f.version_row(), Some((TOUCH as i64, false)));
}

#[test]
fn a_failing_concurrent_index_leaves_evidence_and_force_clears_it() {
    let f = Fixture::standard("concurrent_index_fails");
    let c = f.catalogue();
    let mut db = f.open();
    f.migrate(db.as_mut(), TOUCH);
    // Duplicate emails: the unique index cannot be built.
    f.client()
        .batch_execute("INSERT INTO accounts (email) VALUES ('ada@example.com')")
        .unwrap();
    let steps = up(&c, &[EMAIL_INDEX]);
    let failure = db.run(&steps, &mut |_, _| {}).unwrap_err();
    assert!(
        matches!(
            failure,
            RunFailure::PartWay {
                at: EMAIL_INDEX,
                dirty: true,
                ..
            }
        ),
        "{failure}"
    );
    assert_eq!(failure.code(), 13);
    assert_eq!(f.version_row(), Some((EMAIL_INDEX as i64, true)));
    let state = db.observe(&c).unwrap();
    let Some(Dirty::Recorded(evidence)) = state.dirty else {
        panic!("{:?}", state.dirty)
    };
    assert_eq!((evidence.version, evidence.line), (EMAIL_INDEX, 1));
    assert!(evidence
        .statement
        .starts_with("CREATE UNIQUE INDEX CONCURRENTLY"));
    assert!(
        evidence.database_said.contains("23505"),
        "{}",
        evidence.database_said
    );
    assert!(!evidence.recorded_at.is_empty());

    let steps = up(&c, &[BACKFILL]);
    let refused = db.run(&steps, &mut |_, _| {}).unwrap_err();
    let msg = refused.to_string();
    assert!(msg.contains("dirty") && msg.contains("force"), "{msg}");
    assert!(msg.contains("accounts_email_idx.up.sql:1"), "{msg}");

    // A person cleans up (the failed build left an invalid index) and forces.
    f.client()
        .batch_execute("DROP INDEX accounts_email_idx; DELETE FROM accounts WHERE id = 3;")
        .unwrap();
    let forced = db.force(TOUCH).unwrap();
    assert_eq!(forced.was_dirty, Some(Dirty::Recorded(evidence)));
    assert!(db.observe(&c).unwrap().dirty.is_none());
    f.migrate(db.as_mut(), BACKFILL);
    assert_eq!(f.version_row(), Some((BACKFILL as i64, false)));
}

#[test]
fn an_edited_file_is_reported_as_drift() {
    let f = Fixture::standard("drift");
    let c = f.catalogue();
    let mut db = f.open();
    f.migrate(db.as_mut(), STATUS);
    assert!(db.observe(&c).unwrap().drift.is_empty());
    f.write(
        &format!("{STATUS}_account..status-enum.up.sql"),
        "CREATE TYPE account_status AS ENUM ('active', 'closed', 'banned');\n",
    );
    let state = db.observe(&c).unwrap();
    assert_eq!(state.drift.len(), 1);
    assert_eq!(state.drift[0].version, STATUS);
    assert!(state.drift[0]
        .path
        .as_ref()
        .unwrap()
        .ends_with(format!("{STATUS}_account..status-enum.up.sql")));
}

#[test]
fn a_database_golang_migrate_left_dirty() {
    let f = Fixture::standard("left_dirty");
    f.client()
        .batch_execute(&format!(
            "CREATE TABLE schema_migrations (version bigint not null primary key, dirty boolean not null);
             CREATE TABLE accounts (id bigserial PRIMARY KEY, email text NOT NULL);
             INSERT INTO schema_migrations VALUES ({STATUS}, true);"
        ))
        .unwrap();
    let c = f.catalogue();
    let mut db = f.open();
    let state = db.observe(&c).unwrap();
    assert_eq!(state.version, STATUS);
    assert_eq!(state.dirty, Some(Dirty::LeftByAnotherTool));
    let steps = down(&c, &[STATUS]);
    let refused = db.run(&steps, &mut |_, _| {}).unwrap_err();
    assert!(refused.to_string().contains("left dirty by another tool"));
    assert_eq!(f.version_row(), Some((STATUS as i64, true)));
    db.force(ACCOUNTS).unwrap();
    assert_eq!(f.version_row(), Some((ACCOUNTS as i64, false)));
}

#[test]
fn a_version_in_the_database_but_not_in_the_directory() {
    let f = Fixture::standard("not_in_directory");
    let c = f.catalogue();
    let mut db = f.open();
    f.migrate(db.as_mut(), ACCOUNTS);
    db.force(20260101000000).unwrap();
    let state = db.observe(&c).unwrap();
    let missing = state.not_in_directory.expect("flagged");
    assert_eq!(missing.version, 20260101000000);
    assert!(missing.to_string().contains(&c.dir.display().to_string()));
}

#[test]
fn the_migration_lock_is_golang_migrates() {
    let f = Fixture::standard("lock");
    let c = f.catalogue();
    let mut db = f.open();
    db.observe(&c).unwrap();
    let mut holder = f.client();
    let id = advisory_lock_id(&f.name, "public", "schema_migrations");
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&id])
        .unwrap();
    let steps = up(&c, &[ACCOUNTS]);
    let failure = db.run(&steps, &mut |_, _| {}).unwrap_err();
    assert_eq!(failure.code(), 14);
    match failure.cause() {
        RunError::Database(SchemaError::Locked { url, .. }) => {
            assert!(url.contains(&f.name), "{url}")
        }
        other => panic!("{other:?}"),
    }
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&id])
        .unwrap();
    db.run(&steps, &mut |_, _| {}).unwrap();
}

#[test]
fn unreachable_servers_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://nobody@/postgres?host={}", dir.path().display());
    let err = open(&url).err().expect("no server there");
    assert!(matches!(err, SchemaError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&url), "{err}");

    let err = open("postgres://app:secret@127.0.0.1:1/app")
        .err()
        .expect("nothing listens on port 1");
    let msg = err.to_string();
    assert!(msg.contains("postgres://app:***@127.0.0.1:1/app"), "{msg}");
    assert!(!msg.contains("secret"), "{msg}");
}

// The fence: several controller nodes share one store; the leader's lease epoch is recorded in
// the target (`rollback_node_fence`), and a fenced executor's transactions check it first.

/// The fence's epochs, in row order.
fn fence_rows(f: &Fixture) -> Vec<i64> {
    f.client()
        .query("SELECT epoch FROM rollback_node_fence", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// An estate whose `[schema]` is the fixture's database and directory.
fn schema_estate(f: &Fixture) -> Estate {
    let text = format!(
        "[schema]\ndatabase = \"{}\"\nmigrations = \"{}\"\n",
        f.url,
        f.migrations().display()
    );
    Estate::from_toml(&text, "estate.toml").unwrap()
}

/// The schema lane of a node fenced at `epoch`, and the version it read at start.
fn fenced_lane(f: &Fixture, epoch: u64) -> (LaneExecutor, Option<u64>) {
    let (mut executors, found) =
        connect_fenced(&schema_estate(f), f.dir.path(), 1.0, Some(epoch)).unwrap();
    (executors.take(Lane::Schema).unwrap(), found.schema_version)
}

fn run_down(lane: &mut LaneExecutor, from: u64, to: u64) -> Completion {
    perform(
        lane,
        Plan::Rollback { from, to },
        vec![Effect::RunDown {
            version: from,
            file: String::new(),
        }],
    )
}

fn run_up(lane: &mut LaneExecutor, from: u64, versions: &[u64]) -> Completion {
    let to = *versions.last().unwrap();
    perform(
        lane,
        Plan::Migrate { from, to },
        versions
            .iter()
            .map(|&version| Effect::RunUp {
                version,
                file: String::new(),
            })
            .collect(),
    )
}

fn perform(lane: &mut LaneExecutor, plan: Plan, effects: Vec<Effect>) -> Completion {
    lane.perform(&Operation { plan, effects }, &mut |_| {})
}

/// A failure the core answers 14 (abort) for: nothing changed, nothing completed before it.
fn assert_abort(completion: Completion, effects: &[Effect]) -> String {
    let Completion::Failed(failure) = completion else {
        panic!("expected a failure, got {completion:?}")
    };
    assert_eq!(failure.kind, FailureKind::NothingChanged, "{failure:?}");
    assert_eq!(failure.completed, 0, "{failure:?}");
    assert!(!failure.is_part_way(effects), "{failure:?}");
    failure.error.to_string()
}

fn assert_lease_lost(msg: &str, held: u64, ours: u64) {
    assert!(
        msg.contains(&format!(
            "rollback_node_fence holds epoch {held}, newer than this node's epoch {ours}"
        )),
        "{msg}"
    );
    assert!(msg.contains("this node's lease was lost"), "{msg}");
}

#[test]
fn advance_fence_creates_the_table_and_its_row() {
    let f = Fixture::new("fence_creates");
    let exists = |f: &Fixture| -> bool {
        f.client()
            .query_one(
                "SELECT to_regclass('public.rollback_node_fence') IS NOT NULL",
                &[],
            )
            .unwrap()
            .get(0)
    };
    assert!(!exists(&f));
    assert!(fences(&f.url));
    advance_fence(&f.url, 1).unwrap();
    assert!(exists(&f));
    let cols: Vec<(String, String, String)> = f
        .client()
        .query(
            "SELECT column_name::text, data_type::text, is_nullable::text FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name = 'rollback_node_fence' ORDER BY ordinal_position",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(cols, vec![("epoch".into(), "bigint".into(), "NO".into())]);
    assert_eq!(fence_rows(&f), vec![1]);
    // The same epoch again is this node's own: accepted.
    advance_fence(&f.url, 1).unwrap();
    advance_fence(&f.url, 4).unwrap();
    assert_eq!(fence_rows(&f), vec![4]);
}

#[test]
fn advance_fence_refuses_an_older_epoch_and_names_the_newer() {
    let f = Fixture::new("fence_older");
    advance_fence(&f.url, 2).unwrap();
    let err = advance_fence(&f.url, 1).unwrap_err();
    assert!(
        err.contains("rollback_node_fence holds epoch 2, newer than epoch 1"),
        "{err}"
    );
    assert!(err.contains("must not lead"), "{err}");
    assert!(err.contains(&f.name), "{err}");
    assert_eq!(fence_rows(&f), vec![2]);
}

#[test]
fn an_sqlite_target_has_no_fence() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("app.db").display());
    assert!(!fences(&url));
    advance_fence(&url, 3).unwrap();
    assert!(!dir.path().join("app.db").exists());
    assert!(advance_fence("mysql://u@h/d", 1).is_err());
}

#[test]
fn a_fenced_node_stops_once_a_newer_leader_advanced_the_fence() {
    let f = Fixture::standard("fence_stops");
    advance_fence(&f.url, 1).unwrap();
    let (mut lane, at_start) = fenced_lane(&f, 1);
    assert_eq!(at_start, Some(0));
    let done = run_up(&mut lane, 0, &[ACCOUNTS, STATUS, TOUCH]);
    assert!(matches!(done, Completion::Done(_)), "{done:?}");
    let done = run_down(&mut lane, TOUCH, STATUS);
    assert!(matches!(done, Completion::Done(_)), "{done:?}");
    assert_eq!(f.version_row(), Some((STATUS as i64, false)));
    assert_eq!(fence_rows(&f), vec![1]);
    let before = f.schema();

    // A newer leader takes over.
    advance_fence(&f.url, 2).unwrap();
    let effects = [Effect::RunDown {
        version: STATUS,
        file: String::new(),
    }];
    let msg = assert_abort(run_down(&mut lane, STATUS, ACCOUNTS), &effects);
    assert_lease_lost(&msg, 2, 1);
    assert_eq!(f.version_row(), Some((STATUS as i64, false)));
    assert_eq!(f.schema(), before);
    assert_eq!(fence_rows(&f), vec![2]);

    // A file outside a transaction is refused before its dirty mark; forcing is refused too.
    let effects = [Effect::RunUp {
        version: EMAIL_INDEX,
        file: String::new(),
    }];
    let msg = assert_abort(run_up(&mut lane, STATUS, &[TOUCH, EMAIL_INDEX]), &effects);
    assert_lease_lost(&msg, 2, 1);
    let forced = perform(
        &mut lane,
        Plan::ForceVersion {
            from: STATUS,
            to: ACCOUNTS,
            evidence: None,
        },
        vec![Effect::ForceVersion { version: ACCOUNTS }],
    );
    let msg = assert_abort(forced, &[Effect::ForceVersion { version: ACCOUNTS }]);
    assert_lease_lost(&msg, 2, 1);
    assert_eq!(f.version_row(), Some((STATUS as i64, false)));
    assert_eq!(f.schema(), before);

    // The new leader's node runs.
    let (mut leader, at_start) = fenced_lane(&f, 2);
    assert_eq!(at_start, Some(STATUS));
    let done = run_down(&mut leader, STATUS, ACCOUNTS);
    assert!(matches!(done, Completion::Done(_)), "{done:?}");
    assert_eq!(f.version_row(), Some((ACCOUNTS as i64, false)));
}

#[test]
fn a_fenced_run_without_the_fence_table_is_refused() {
    let f = Fixture::standard("fence_missing");
    let (mut lane, _) = fenced_lane(&f, 1);
    let effects = [Effect::RunUp {
        version: ACCOUNTS,
        file: String::new(),
    }];
    let msg = assert_abort(run_up(&mut lane, 0, &[ACCOUNTS]), &effects);
    assert!(msg.contains("rollback_node_fence does not exist"), "{msg}");
    assert!(msg.contains("lease (epoch 1) was lost"), "{msg}");
    assert_eq!(f.version_row(), None);
    assert_eq!(f.schema(), Vec::<String>::new());
}

#[test]
fn every_fenced_transaction_checks_the_fence_first() {
    let f = Fixture::standard("fence_first");
    advance_fence(&f.url, 1).unwrap();
    // Each write to the fence and to schema_migrations, in order, with its transaction and the
    // idle timeout it ran under.
    f.client()
        .batch_execute(
            "CREATE TABLE fence_log (n bigserial PRIMARY KEY, what text, xid text, idle text);
             CREATE FUNCTION log_write() RETURNS trigger AS $$
             BEGIN
               INSERT INTO fence_log (what, xid, idle) VALUES (TG_TABLE_NAME,
                 pg_current_xact_id()::text, current_setting('idle_in_transaction_session_timeout'));
               RETURN NULL;
             END $$ LANGUAGE plpgsql;
             CREATE TRIGGER fence_log AFTER UPDATE ON rollback_node_fence
               FOR EACH STATEMENT EXECUTE FUNCTION log_write();
             CREATE TABLE schema_migrations (version bigint not null primary key, dirty boolean not null);
             CREATE TRIGGER fence_log AFTER INSERT OR DELETE ON schema_migrations
               FOR EACH STATEMENT EXECUTE FUNCTION log_write();",
        )
        .unwrap();
    let (mut lane, _) = fenced_lane(&f, 1);
    let done = run_up(&mut lane, 0, &[ACCOUNTS, STATUS, TOUCH, EMAIL_INDEX]);
    assert!(matches!(done, Completion::Done(_)), "{done:?}");
    assert_eq!(f.version_row(), Some((EMAIL_INDEX as i64, false)));
    let log: Vec<(String, String, String)> = f
        .client()
        .query("SELECT what, xid, idle FROM fence_log ORDER BY n", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    // Transactions in the order they began: the three shared files, the dirty mark, the check
    // on its own before CREATE INDEX CONCURRENTLY, the mark cleared.
    let mut transactions: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for (what, xid, idle) in log {
        match transactions.last_mut() {
            Some((x, writes)) if *x == xid => writes.push((what, idle)),
            _ => transactions.push((xid, vec![(what, idle)])),
        }
    }
    let shapes: Vec<Vec<(&str, &str)>> = transactions
        .iter()
        .map(|(_, writes)| {
            writes
                .iter()
                .map(|(w, i)| (w.as_str(), i.as_str()))
                .collect()
        })
        .collect();
    let fence = ("rollback_node_fence", "3s");
    let version = ("schema_migrations", "3s");
    assert_eq!(
        shapes,
        vec![
            // Three steps in one transaction: DELETE and INSERT per step.
            vec![fence, version, version, version, version, version, version],
            vec![fence, version, version],
            vec![("rollback_node_fence", "0")],
            vec![fence, version, version],
        ]
    );
}

#[test]
fn advance_fence_waits_for_a_transaction_holding_the_row() {
    let f = Fixture::new("fence_waits");
    advance_fence(&f.url, 1).unwrap();
    let mut holder = f.client();
    let mut tx = holder.transaction().unwrap();
    tx.query("SELECT epoch FROM rollback_node_fence FOR UPDATE", &[])
        .unwrap();
    let url = f.url.clone();
    let started = Instant::now();
    let advancing = std::thread::spawn(move || {
        let result = advance_fence(&url, 2);
        (result, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(400));
    assert!(!advancing.is_finished(), "advance_fence did not wait");
    let committed = Instant::now();
    tx.commit().unwrap();
    let (result, finished) = advancing.join().unwrap();
    result.unwrap();
    assert!(
        finished >= committed,
        "finished before the holder committed"
    );
    assert!(finished - started >= Duration::from_millis(400));
    assert_eq!(fence_rows(&f), vec![2]);
}

#[test]
fn a_paused_fenced_holder_blocks_the_next_leader_only_for_the_idle_timeout() {
    let f = Fixture::standard("fence_paused");
    advance_fence(&f.url, 1).unwrap();
    let (mut lane, _) = fenced_lane(&f, 1);
    let (advanced_tx, advanced_rx) = std::sync::mpsc::channel::<Duration>();
    let url = f.url.clone();
    let mut next_leader = None;
    let mut waited = None;
    let effects = vec![Effect::RunUp {
        version: ACCOUNTS,
        file: String::new(),
    }];
    // The node pauses after its first statement, inside its fenced transaction, until the next
    // leader got the fence (or 10 s).
    let completion = lane.perform(
        &Operation {
            plan: Plan::Migrate {
                from: 0,
                to: ACCOUNTS,
            },
            effects: effects.clone(),
        },
        &mut |progress| {
            if progress.done == 1 && next_leader.is_none() {
                let url = url.clone();
                let tx = advanced_tx.clone();
                next_leader = Some(std::thread::spawn(move || {
                    let t = Instant::now();
                    let result = advance_fence(&url, 2);
                    tx.send(t.elapsed()).unwrap();
                    result
                }));
                waited = Some(advanced_rx.recv_timeout(Duration::from_secs(10)).unwrap());
            }
        },
    );
    next_leader.unwrap().join().unwrap().unwrap();
    // The server ended the paused session after FENCE_IDLE_TIMEOUT (3 s), not at the pause's end.
    let waited = waited.expect("the run paused after its first statement");
    assert!(
        waited >= FENCE_IDLE_TIMEOUT - Duration::from_millis(500)
            && waited < Duration::from_secs(8),
        "{waited:?}"
    );
    let Completion::Failed(failure) = &completion else {
        panic!("{completion:?}")
    };
    // What the node read after the failure, on a connection opened again.
    let now = failure.now.as_ref().expect("read after the failure");
    assert_eq!(now.schema_version, Some(0));
    let msg = assert_abort(completion, &effects);
    assert!(msg.contains("create_accounts.up.sql"), "{msg}");
    assert!(msg.contains("idle-in-transaction timeout"), "{msg}");
    assert_eq!(f.version_row(), None);
    assert_eq!(f.schema(), Vec::<String>::new());
    assert_eq!(fence_rows(&f), vec![2]);

    // Its next run, on a new connection, meets the fence.
    let msg = assert_abort(run_up(&mut lane, 0, &[ACCOUNTS]), &effects);
    assert_lease_lost(&msg, 2, 1);
    assert_eq!(f.version_row(), None);
}

#[test]
fn two_nodes_advancing_a_fresh_fence_at_once_leave_one_row() {
    for round in 0..3 {
        let f = Fixture::new(&format!("fence_race_{round}"));
        let start = std::sync::Arc::new(std::sync::Barrier::new(2));
        let racers: Vec<_> = [5, 5]
            .into_iter()
            .map(|epoch| {
                let (url, start) = (f.url.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    advance_fence(&url, epoch)
                })
            })
            .collect();
        for racer in racers {
            racer.join().unwrap().unwrap();
        }
        assert_eq!(fence_rows(&f), vec![5]);
    }
}
