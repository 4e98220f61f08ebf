//! The node itself (the built binary) against real systems: a SQLite database migrated and
//! rolled back from the example directory, a PostgreSQL database on a throwaway server, a flagd
//! file, HAProxy, OFREP; and a `kill -9` in the middle of a paced operation, reconciled at the
//! next start and never run again.

#[path = "support/haproxy.rs"]
mod haproxy;
#[path = "support/pg.rs"]
mod pg;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const NODE: &str = env!("CARGO_BIN_EXE_rollback-node");

/// A running node, talked to line by line.
struct Node {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    next: u64,
}

impl Node {
    fn start(args: &[&str], cwd: &Path) -> Node {
        let mut child = Command::new(NODE)
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the node starts");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Node {
            child,
            stdin,
            stdout,
            next: 0,
        }
    }

    /// Sends a body (without msg_id), returns the reply body.
    fn ask(&mut self, body: Value) -> Value {
        self.next += 1;
        let id = self.next;
        self.send(id, body);
        self.read(id)
    }

    fn send(&mut self, id: u64, mut body: Value) {
        body["msg_id"] = id.into();
        let line = serde_json::json!({"src": "oncall", "dest": "n1", "body": body});
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// The reply to `id` (replies to other lanes may come first; they are skipped).
    fn read(&mut self, id: u64) -> Value {
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line).unwrap() == 0 {
                let mut stderr = String::new();
                let _ = self
                    .child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr);
                panic!("the node ended before replying to {id}; stderr: {stderr}");
            }
            let reply: Value = serde_json::from_str(&line).unwrap();
            if reply["body"]["in_reply_to"] == id {
                return reply["body"].clone();
            }
        }
    }

    /// Closes stdin and waits: the node finishes what runs, then exits 0. Returns stderr.
    fn finish(mut self) -> String {
        drop(self.stdin.take());
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(self.child.wait().unwrap().success(), "{stderr}");
        stderr
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn example(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name),
        dir.path(),
    );
    dir
}

fn sqlite_version(db: &Path) -> (i64, bool) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT version, dirty FROM schema_migrations", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .unwrap()
}

#[test]
fn sqlite_example_migrates_and_rolls_back_a_real_file() {
    let dir = example("sqlite");
    let mut node = Node::start(&["--estate", "estate.toml"], dir.path());
    let status = node.ask(serde_json::json!({"type": "status"}));
    assert_eq!(status["schema_version"], 0);
    assert_eq!(status["database"]["dirty"], false);
    let done = node.ask(serde_json::json!({"type": "migrate", "version": 20250902101500u64}));
    assert_eq!(done["type"], "migrate_complete", "{done}");
    assert_eq!(done["migrated_to"], 20250902101500u64);
    assert!(done["duration_seconds"].is_f64(), "measured: {done}");
    assert_eq!(
        sqlite_version(&dir.path().join("app.db")),
        (20250902101500, false)
    );
    // A dry run lists the down() files in order and changes nothing.
    let plan = node.ask(
        serde_json::json!({"type": "rollback", "version": 20250811090000u64, "dry_run": true}),
    );
    assert_eq!(plan["type"], "plan_ok", "{plan}");
    let files: Vec<&str> = plan["effects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["file"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            "20250902101500_add_display_name.down.sql",
            "20250811090000_users_email_index.down.sql"
        ]
    );
    assert_eq!(plan["state_after"]["schema_version"], 20250810144214u64);
    assert_eq!(sqlite_version(&dir.path().join("app.db")).0, 20250902101500);
    let done = node.ask(serde_json::json!({"type": "rollback", "version": 20250811090000u64}));
    assert_eq!(done["rolled_back_to"], 20250810144214u64, "{done}");
    assert_eq!(
        sqlite_version(&dir.path().join("app.db")),
        (20250810144214, false)
    );
    // The last migration has no down file: it is irreversible.
    node.ask(serde_json::json!({"type": "migrate", "version": 20250915080000u64}));
    let refused = node.ask(serde_json::json!({"type": "rollback", "version": 20250915080000u64}));
    assert_eq!(refused["code"], 22, "{refused}");
    assert!(refused["text"].as_str().unwrap().contains("has no down()"));
    node.finish();
}

#[test]
fn a_failing_down_changes_nothing_and_names_file_and_line() {
    let dir = example("sqlite");
    std::fs::write(
        dir.path()
            .join("migrations/20250902101500_add_display_name.down.sql"),
        "ALTER TABLE users DROP COLUMN display_name;\nDROP TABLE no_such_table;\n",
    )
    .unwrap();
    let mut node = Node::start(&["--estate", "estate.toml"], dir.path());
    node.ask(serde_json::json!({"type": "migrate", "version": 20250902101500u64}));
    let failed = node.ask(serde_json::json!({"type": "rollback", "version": 20250902101500u64}));
    assert_eq!(failed["code"], 14, "{failed}");
    let text = failed["text"].as_str().unwrap();
    assert!(
        text.contains("20250902101500_add_display_name.down.sql line 2"),
        "{text}"
    );
    assert!(text.contains("no such table"), "{text}");
    assert_eq!(
        sqlite_version(&dir.path().join("app.db")),
        (20250902101500, false)
    );
    let status = node.ask(serde_json::json!({"type": "status"}));
    assert_eq!(status["schema_version"], 20250902101500u64);
    node.finish();
}

#[test]
fn the_database_is_the_truth_at_restart() {
    let dir = example("sqlite");
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap();
    let mut node = Node::start(
        &["--estate", "estate.toml", "--state-dir", state_arg],
        dir.path(),
    );
    node.ask(serde_json::json!({"type": "migrate", "version": 20250811090000u64}));
    node.finish();
    // Someone rolls the database back by hand while the node is stopped.
    let conn = rusqlite::Connection::open(dir.path().join("app.db")).unwrap();
    conn.execute_batch(
        "DROP INDEX users_email; UPDATE schema_migrations SET version = 20250810144214;",
    )
    .unwrap();
    drop(conn);
    let mut node = Node::start(&["--state-dir", state_arg], dir.path());
    let status = node.ask(serde_json::json!({"type": "status"}));
    assert_eq!(status["schema_version"], 20250810144214u64, "{status}");
    let stderr = node.finish();
    assert!(stderr.contains("the systems are the truth"), "{stderr}");
}

#[test]
fn postgres_migrations_through_the_node() {
    let server = pg::server();
    let (url, name) = server.create_database("node");
    let dir = tempfile::tempdir().unwrap();
    let migrations = dir.path().join("migrations");
    std::fs::create_dir(&migrations).unwrap();
    for (name, text) in [
        (
            "20250810144214_create_users.up.sql",
            "CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL);",
        ),
        ("20250810144214_create_users.down.sql", "DROP TABLE users;"),
        (
            "20250811090000_users_email_index.up.sql",
            "CREATE INDEX users_email ON users (email);",
        ),
        (
            "20250811090000_users_email_index.down.sql",
            "DROP INDEX users_email;",
        ),
        (
            "20250902101500_add_display_name.up.sql",
            "BEGIN;\nALTER TABLE users ADD COLUMN display_name text;\nCOMMIT;",
        ),
        (
            "20250902101500_add_display_name.down.sql",
            "ALTER TABLE users DROP COLUMN display_name;",
        ),
    ] {
        std::fs::write(migrations.join(name), text).unwrap();
    }
    std::fs::write(
        dir.path().join("estate.toml"),
        format!("[schema]\ndatabase = \"{url}\"\nmigrations = \"migrations\"\n"),
    )
    .unwrap();
    let mut node = Node::start(&["--estate", "estate.toml"], dir.path());
    let done = node.ask(serde_json::json!({"type": "migrate", "version": 20250902101500u64}));
    assert_eq!(done["type"], "migrate_complete", "{done}");
    let done = node.ask(serde_json::json!({"type": "rollback", "version": 20250811090000u64}));
    assert_eq!(done["rolled_back_to"], 20250810144214u64, "{done}");
    node.finish();
    let row = server
        .connect(&name)
        .query_one("SELECT version, dirty FROM schema_migrations", &[])
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, bool>(1)),
        (20250810144214, false)
    );
}

#[test]
fn the_kill_switch_writes_the_flagd_file_and_ofrep_serves_it() {
    let dir = example("flagd");
    let port = haproxy::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut node = Node::start(&["--estate", "estate.toml", "--ofrep", &addr], dir.path());
    let evaluate = || -> Value {
        let started = Instant::now();
        let mut stream = loop {
            match std::net::TcpStream::connect(&addr) {
                Ok(stream) => break stream,
                Err(e) if started.elapsed() < Duration::from_secs(5) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("OFREP at {addr} does not answer: {e}"),
            }
        };
        write!(
            stream,
            "POST /ofrep/v1/evaluate/flags/new_checkout HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut length = 0;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            if header.trim().is_empty() {
                break;
            }
            if let Some(value) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        serde_json::from_slice(&body).unwrap()
    };
    assert_eq!(evaluate()["value"], true);
    let done = node.ask(serde_json::json!({"type": "disable_feature", "feature": "new_checkout"}));
    assert_eq!(done["type"], "feature_disabled", "{done}");
    // The next evaluation after the reply sees it, and so does the file.
    assert_eq!(evaluate()["value"], false);
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("flags.json")).unwrap())
            .unwrap();
    let flag = &file["flags"]["new_checkout"];
    assert_eq!(
        flag["variants"][flag["defaultVariant"].as_str().unwrap()],
        false
    );
    assert_eq!(
        flag["metadata"]["owner"], "payments",
        "hand-written metadata kept"
    );
    node.ask(serde_json::json!({"type": "enable_feature", "feature": "new_checkout"}));
    assert_eq!(evaluate()["value"], true);
    let after: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("flags.json")).unwrap())
            .unwrap();
    let original: Value =
        serde_json::from_str(include_str!("../examples/flagd/flags.json")).unwrap();
    assert_eq!(after, original, "enable restores exactly what was there");
    node.finish();
}

#[test]
fn switch_traffic_moves_a_real_haproxy() {
    let blue = haproxy::ColourServer::start("blue");
    let green = haproxy::ColourServer::start("green");
    let proxy = haproxy::HaproxyProc::start(blue.port, green.port);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("estate.toml"),
        format!(
            "[haproxy]\nsocket = \"{}\"\nbackend = \"app\"\n",
            proxy.admin.display()
        ),
    )
    .unwrap();
    let mut node = Node::start(&["--estate", "estate.toml"], dir.path());
    let status = node.ask(serde_json::json!({"type": "status"}));
    assert_eq!(
        status["live_environment"], "blue",
        "read from HAProxy: {status}"
    );
    let done =
        node.ask(serde_json::json!({"type": "switch_traffic", "from": "blue", "to": "green"}));
    assert_eq!(done["type"], "traffic_switched", "{done}");
    assert_eq!(done["downtime_seconds"], 0);
    assert_eq!(haproxy::get_once(proxy.frontend).unwrap().1, "green");
    let refused =
        node.ask(serde_json::json!({"type": "switch_traffic", "from": "blue", "to": "green"}));
    assert_eq!(refused["code"], 22);
    node.finish();
}

#[test]
fn a_kill_mid_operation_is_reconciled_at_start_and_never_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap();
    // A paced restore takes 3 s; kill the node while it runs.
    let mut node = Node::start(&["--state-dir", state_arg, "--pace", "0.05"], dir.path());
    node.send(
        7,
        serde_json::json!({"type": "restore", "backup": "users_backup_20240115"}),
    );
    let started = Instant::now();
    loop {
        let status = node.ask(serde_json::json!({"type": "status"}));
        if status["in_flight"][0]["state"] == "running" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{status}");
    }
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    let mut node = Node::start(&["--state-dir", state_arg], dir.path());
    let status = node.ask(serde_json::json!({"type": "status"}));
    let interrupted = &status["interrupted"][0];
    assert_eq!(interrupted["type"], "restore", "{status}");
    assert_eq!(interrupted["msg_id"], 7);
    assert_eq!(interrupted["src"], "oncall");
    assert_eq!(interrupted["found"]["schema_version"], 3);
    assert!(
        status.get("in_flight").is_none(),
        "the lane is free: {status}"
    );
    // A retry is answered with the interruption, not run.
    node.send(
        7,
        serde_json::json!({"type": "restore", "backup": "users_backup_20240115"}),
    );
    let retry = node.read(7);
    assert_eq!(retry["code"], 13, "{retry}");
    assert!(retry["text"].as_str().unwrap().contains("interrupted"));
    let history = node.ask(serde_json::json!({"type": "history"}));
    let entries = history["entries"].as_array().unwrap();
    assert!(
        entries[0]["reply"]["text"]
            .as_str()
            .unwrap()
            .contains("interrupted"),
        "{history}"
    );
    let stderr = node.finish();
    assert!(stderr.contains("was interrupted by a restart"), "{stderr}");
}

#[test]
fn a_dirty_database_is_reported_refused_and_resolved_by_force_version() {
    let dir = example("sqlite");
    std::fs::write(
        dir.path().join("migrations/20250920000000_rebuild.up.sql"),
        "-- no-transaction\nCREATE TABLE rebuilt (id INTEGER);\nINSERT INTO no_such_table VALUES (1);\n",
    )
    .unwrap();
    let mut node = Node::start(&["--estate", "estate.toml"], dir.path());
    let failed = node.ask(serde_json::json!({"type": "migrate", "version": 20250920000000u64}));
    assert_eq!(failed["code"], 13, "{failed}");
    let status = node.ask(serde_json::json!({"type": "status"}));
    assert_eq!(status["database"]["dirty"], true, "{status}");
    let evidence = status["database"]["evidence"].as_str().unwrap().to_owned();
    assert!(
        evidence.contains("20250920000000_rebuild.up.sql"),
        "{evidence}"
    );
    let refused = node.ask(serde_json::json!({"type": "rollback", "version": 20250915080000u64}));
    assert_eq!(refused["code"], 22);
    assert!(
        refused["text"].as_str().unwrap().contains("force_version"),
        "{refused}"
    );
    let unguarded =
        node.ask(serde_json::json!({"type": "force_version", "version": 20250915080000u64}));
    assert_eq!(unguarded["code"], 22, "{unguarded}");
    assert!(unguarded["text"]
        .as_str()
        .unwrap()
        .contains("[permissions] force_version"));
    node.finish();
    // With a guard rail naming who may, a person resolves it, and the evidence is in the reply.
    let estate = std::fs::read_to_string(dir.path().join("estate.toml")).unwrap();
    std::fs::write(
        dir.path().join("estate.toml"),
        format!("{estate}\n[permissions]\nforce_version = [\"oncall\"]\n"),
    )
    .unwrap();
    let mut node = Node::start(&["--estate", "estate.toml"], dir.path());
    let forced =
        node.ask(serde_json::json!({"type": "force_version", "version": 20250915080000u64}));
    assert_eq!(forced["type"], "version_forced", "{forced}");
    assert_eq!(forced["version"], 20250915080000u64);
    assert_eq!(forced["was_dirty"].as_str().unwrap(), evidence);
    let status = node.ask(serde_json::json!({"type": "status"}));
    assert_eq!(status["database"]["dirty"], false, "{status}");
    node.finish();
    assert_eq!(
        sqlite_version(&dir.path().join("app.db")),
        (20250915080000, false)
    );
}

#[test]
fn history_says_which_files_ran_with_their_checksums() {
    let dir = example("sqlite");
    let state = dir.path().join("state");
    let mut node = Node::start(
        &[
            "--estate",
            "estate.toml",
            "--state-dir",
            state.to_str().unwrap(),
        ],
        dir.path(),
    );
    node.ask(serde_json::json!({"type": "migrate", "version": 20250811090000u64}));
    let history = node.ask(serde_json::json!({"type": "history"}));
    node.finish();
    let entry = &history["entries"][0];
    assert_eq!(entry["src"], "oncall", "{history}");
    let ran = entry["ran"].as_array().unwrap();
    let files: Vec<&str> = ran.iter().map(|r| r["file"].as_str().unwrap()).collect();
    assert_eq!(
        files,
        [
            "20250810144214_create_users.up.sql",
            "20250811090000_users_email_index.up.sql"
        ]
    );
    assert_eq!(
        ran[0]["checksum"].as_str().unwrap().len(),
        96,
        "SHA-384 in hex"
    );
    assert!(entry["at"].as_u64().unwrap() > 1_700_000_000_000, "{entry}");
}

#[test]
fn restore_from_a_real_backups_directory() {
    let dir = example("sqlite");
    std::fs::create_dir(dir.path().join("backups")).unwrap();
    let estate = std::fs::read_to_string(dir.path().join("estate.toml")).unwrap();
    std::fs::write(
        dir.path().join("estate.toml"),
        format!("{estate}\n[backups]\ndir = \"backups\"\nkeep = 5\n"),
    )
    .unwrap();
    let mut node = Node::start(&["--estate", "estate.toml"], dir.path());
    // migrate takes a backup first, with its manifest, then runs up().
    node.ask(serde_json::json!({"type": "migrate", "version": 20250810144214u64}));
    let conn = rusqlite::Connection::open(dir.path().join("app.db")).unwrap();
    conn.execute_batch("INSERT INTO users (email) VALUES ('a@example.com'), ('b@example.com');")
        .unwrap();
    let done = node.ask(serde_json::json!({"type": "migrate", "version": 20250915080000u64}));
    assert_eq!(done["type"], "migrate_complete", "{done}");
    let listed = node.ask(serde_json::json!({"type": "backups"}));
    let backups = listed["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 2, "{listed}");
    let newest = &backups[0];
    assert_eq!(
        newest["schema_version"], 20250810144214u64,
        "newest first: {listed}"
    );
    assert_eq!(newest["rows"], 2);
    assert_eq!(newest["verified"], true);
    let name = newest["name"].as_str().unwrap().to_owned();
    assert!(
        name.starts_with("pre_migrate_20250810144214_to_20250915080000"),
        "{name}"
    );
    // The last migration has no down(): the refusal names the backup to restore instead.
    let refused = node.ask(serde_json::json!({"type": "rollback", "version": 20250915080000u64}));
    assert_eq!(refused["code"], 22);
    assert!(
        refused["text"].as_str().unwrap().contains(&name),
        "{refused}"
    );
    // Someone deletes the users; the backup brings them back.
    conn.execute_batch("DELETE FROM users;").unwrap();
    let restored = node.ask(serde_json::json!({"type": "restore", "backup": name}));
    assert_eq!(restored["type"], "restore_complete", "{restored}");
    assert_eq!(restored["restored_rows"], 2);
    assert!(restored["duration_seconds"].is_f64());
    let count: i64 = conn
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 2);
    let status = node.ask(serde_json::json!({"type": "status"}));
    assert_eq!(status["schema_version"], 20250810144214u64, "{status}");
    assert_eq!(status["restore"]["backup"], name.as_str());
    // An unknown backup is 20; a damaged one is 14 and the live database is untouched.
    let unknown = node.ask(serde_json::json!({"type": "restore", "backup": "nope"}));
    assert_eq!(unknown["code"], 20, "{unknown}");
    let file = dir.path().join("backups").join(format!("{name}.db"));
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
    conn.execute_batch("INSERT INTO users (email) VALUES ('c@example.com');")
        .unwrap();
    let damaged = node.ask(serde_json::json!({"type": "restore", "backup": name}));
    assert_eq!(damaged["code"], 14, "{damaged}");
    let count: i64 = conn
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 3, "the live database is untouched");
    let listed = node.ask(serde_json::json!({"type": "backups"}));
    assert!(
        listed["backups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["name"] == name.as_str() && b["verified"] == false),
        "{listed}"
    );
    node.finish();
}

#[test]
fn a_kill_during_a_real_restore_leaves_the_old_or_the_new_database() {
    let dir = example("sqlite");
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let estate = std::fs::read_to_string(dir.path().join("estate.toml")).unwrap();
    std::fs::write(
        dir.path().join("estate.toml"),
        format!("{estate}\n[backups]\ndir = \"backups\"\n"),
    )
    .unwrap();
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap();
    // A live database at the first version with a few rows, and a large backup of it.
    let mut node = Node::start(
        &["--estate", "estate.toml", "--state-dir", state_arg],
        dir.path(),
    );
    node.ask(serde_json::json!({"type": "migrate", "version": 20250810144214u64}));
    node.finish();
    let live = dir.path().join("app.db");
    let conn = rusqlite::Connection::open(&live).unwrap();
    conn.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300000)
         INSERT INTO users (email) SELECT 'user' || i || '@example.com' FROM n;",
    )
    .unwrap();
    conn.execute("VACUUM INTO ?1", [backups.join("big.db").to_str().unwrap()])
        .unwrap();
    conn.execute_batch("DELETE FROM users WHERE id > 10;")
        .unwrap();
    let count = || -> i64 {
        rusqlite::Connection::open(&live)
            .unwrap()
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count(), 10);
    let mut node = Node::start(&["--state-dir", state_arg], dir.path());
    node.send(40, serde_json::json!({"type": "restore", "backup": "big"}));
    let started = Instant::now();
    loop {
        let status = node.ask(serde_json::json!({"type": "status"}));
        if status["in_flight"][0]["type"] == "restore" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{status}");
    }
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    let after = count();
    assert!(
        after == 10 || after == 300_000,
        "half a restore: {after} rows"
    );
    let mut node = Node::start(&["--state-dir", state_arg], dir.path());
    let status = node.ask(serde_json::json!({"type": "status"}));
    let interrupted = status["interrupted"].as_array();
    let restored = status["restore"]["backup"] == "big";
    assert!(
        interrupted.is_some_and(|i| i[0]["type"] == "restore" && i[0]["msg_id"] == 40) || restored,
        "the restore is reported as interrupted (or completed before the kill): {status}"
    );
    node.finish();
}

#[test]
fn a_dry_run_through_the_binary_lists_every_statement_its_files_would_run() {
    let dir = example("sqlite");
    let mut node = Node::start(&["--estate", "estate.toml"], dir.path());
    let plan = node
        .ask(serde_json::json!({"type": "migrate", "version": 20250811090000u64, "dry_run": true}));
    assert_eq!(plan["type"], "plan_ok", "{plan}");
    let statements = plan["statements"]
        .as_array()
        .expect("statements are listed");
    let up = |name: &str| {
        let text = std::fs::read_to_string(dir.path().join("migrations").join(name)).unwrap();
        text.matches(';').count()
    };
    assert_eq!(
        statements.len(),
        up("20250810144214_create_users.up.sql") + up("20250811090000_users_email_index.up.sql"),
        "one entry per statement of both up files: {plan}"
    );
    assert_eq!(statements[0]["file"], "20250810144214_create_users.up.sql");
    assert_eq!(
        statements.last().unwrap()["file"],
        "20250811090000_users_email_index.up.sql"
    );
    assert!(statements
        .iter()
        .all(|s| s["line"].as_u64().unwrap() >= 1 && !s["statement"].as_str().unwrap().is_empty()));
    // Nothing ran.
    let status = node.ask(serde_json::json!({"type": "status"}));
    assert_eq!(status["schema_version"], 0, "{status}");
    node.finish();
}

#[test]
fn a_dry_run_behind_queued_work_is_decided_against_the_state_its_predecessors_leave() {
    let dir = example("sqlite");
    let mut node = Node::start(&["--estate", "estate.toml"], dir.path());
    // Pipelined: the migrate is still running when the dry run arrives.
    node.send(
        1,
        serde_json::json!({"type": "migrate", "version": 20250902101500u64}),
    );
    node.send(
        2,
        serde_json::json!({"type": "rollback", "version": 20250811090000u64, "dry_run": true}),
    );
    node.next = 2;
    // The migrate's reply comes first: the dry run waited for it.
    let done = node.read(1);
    assert_eq!(done["type"], "migrate_complete", "{done}");
    let plan = node.read(2);
    assert_eq!(
        plan["type"], "plan_ok",
        "decided after the migrate, not before it: {plan}"
    );
    assert_eq!(plan["state_after"]["schema_version"], 20250810144214u64);
    assert_eq!(plan["effects"].as_array().unwrap().len(), 2, "{plan}");
    // The dry run did not hold the lane or change anything.
    assert_eq!(
        sqlite_version(&dir.path().join("app.db")),
        (20250902101500, false)
    );
    node.finish();
}

/// A SQLite file of about `mib` MiB with one table of random rows.
fn large_sqlite(path: &Path, mib: usize) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;
         CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {})
         INSERT INTO blobs (data) SELECT randomblob(1000) FROM n;",
        mib * 1024
    ))
    .unwrap();
}

#[test]
fn the_kill_switch_is_answered_while_backups_lists_large_files() {
    let dir = example("sqlite");
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    large_sqlite(&backups.join("large_1.db"), 48);
    for i in 2..=3 {
        std::fs::copy(
            backups.join("large_1.db"),
            backups.join(format!("large_{i}.db")),
        )
        .unwrap();
    }
    std::fs::write(
        dir.path().join("estate.toml"),
        "[schema]\ndatabase = \"sqlite:app.db\"\nmigrations = \"migrations\"\n\
         [backups]\ndir = \"backups\"\n[flags]\nnew_checkout = true\n",
    )
    .unwrap();
    let mut node = Node::start(&["--estate", "estate.toml"], dir.path());
    // Listing reads every file whole (no manifests): it takes long. The flag change sent after
    // it is answered first, because the listing does not run on the thread that answers flags.
    node.send(1, serde_json::json!({"type": "backups"}));
    node.send(
        2,
        serde_json::json!({"type": "disable_feature", "feature": "new_checkout"}),
    );
    node.next = 2;
    let mut order = Vec::new();
    while order.len() < 2 {
        let mut line = String::new();
        assert!(
            node.stdout.read_line(&mut line).unwrap() > 0,
            "the node ended"
        );
        let reply: Value = serde_json::from_str(&line).unwrap();
        order.push((reply["body"]["in_reply_to"].clone(), reply["body"].clone()));
    }
    assert_eq!(order[0].0, 2, "the kill switch first: {order:?}");
    assert_eq!(order[0].1["type"], "feature_disabled");
    assert_eq!(order[1].1["type"], "backups_ok", "{order:?}");
    let listed = order[1].1["backups"].as_array().unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|b| b["verified"] == true), "{listed:?}");
    node.finish();
}

#[test]
fn a_failing_table_change_file_answers_14_and_leaves_the_database_clean() {
    let dir = tempfile::tempdir().unwrap();
    let migrations = dir.path().join("migrations");
    std::fs::create_dir(&migrations).unwrap();
    std::fs::write(
        migrations.join("1_teams.up.sql"),
        "CREATE TABLE teams (id INTEGER PRIMARY KEY, name TEXT);\n\
         CREATE TABLE users (id INTEGER PRIMARY KEY, team INTEGER REFERENCES teams(id));\n",
    )
    .unwrap();
    std::fs::write(
        migrations.join("1_teams.down.sql"),
        "DROP TABLE users;\nDROP TABLE teams;\n",
    )
    .unwrap();
    // SQLite's documented shape for a table change, whose body fails at its fourth statement.
    std::fs::write(
        migrations.join("2_rebuild_teams.up.sql"),
        "PRAGMA foreign_keys=OFF;\nBEGIN;\n\
         CREATE TABLE teams_new (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n\
         INSERT INTO teams_new SELECT id, name FROM teams;\n\
         DROP TABLE teams;\n\
         INSERT INTO no_such_table VALUES (1);\n\
         ALTER TABLE teams_new RENAME TO teams;\n\
         COMMIT;\nPRAGMA foreign_keys=ON;\n",
    )
    .unwrap();
    std::fs::write(migrations.join("2_rebuild_teams.down.sql"), "SELECT 1;\n").unwrap();
    std::fs::write(
        dir.path().join("estate.toml"),
        "[schema]\ndatabase = \"sqlite:app.db\"\nmigrations = \"migrations\"\n",
    )
    .unwrap();
    let mut node = Node::start(&["--estate", "estate.toml"], dir.path());
    let done = node.ask(serde_json::json!({"type": "migrate", "version": 1}));
    assert_eq!(done["type"], "migrate_complete", "{done}");
    let failed = node.ask(serde_json::json!({"type": "migrate", "version": 2}));
    assert_eq!(
        failed["code"], 14,
        "nothing changed, so 14, not 13: {failed}"
    );
    let text = failed["text"].as_str().unwrap();
    assert!(text.contains("2_rebuild_teams.up.sql"), "{text}");
    assert!(text.contains("no_such_table"), "{text}");
    assert!(
        text.contains("PRAGMA foreign_keys=OFF"),
        "the protocol is named: {text}"
    );
    let status = node.ask(serde_json::json!({"type": "status"}));
    assert_eq!(status["schema_version"], 1, "{status}");
    assert_eq!(status["database"]["dirty"], false, "{status}");
    node.finish();
    assert_eq!(sqlite_version(&dir.path().join("app.db")), (1, false));
    let conn = rusqlite::Connection::open(dir.path().join("app.db")).unwrap();
    let teams: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name IN ('teams', 'teams_new')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(teams, 1, "teams is as it was, teams_new rolled back");
}
