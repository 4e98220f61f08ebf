//! The state directory: resuming, the `status` and `history` subcommands, and damage that must
//! stop the start with an error naming what is wrong (never silently skipped).

use rusqlite::Connection;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("rollback-node-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn node(args: &[&str], dir: &Path, input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rollback-node"))
        .args(args)
        .arg("--state-dir")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

const CHANGES: &str = concat!(
    r#"{"src":"oncall","dest":"n1","body":{"type":"switch_traffic","msg_id":1,"from":"green","to":"blue"}}"#,
    "\n",
    r#"{"src":"oncall","dest":"n1","body":{"type":"rollback","msg_id":2,"version":3}}"#,
    "\n",
    r#"{"src":"oncall","dest":"n1","body":{"type":"rollback","msg_id":3,"version":3}}"#,
    "\n",
    r#"{"src":"oncall","dest":"n1","body":{"type":"disable_feature","msg_id":4,"feature":"new_checkout"}}"#,
    "\n",
);

/// A state directory holding the four changes above (three accepted, one refused).
fn populated(name: &str) -> TempDir {
    let dir = TempDir::new(name);
    let output = node(&[], &dir.0, CHANGES);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout).lines().count(), 4);
    dir
}

fn sql(dir: &Path, statement: &str) {
    let conn = Connection::open(dir.join("journal.sqlite3")).unwrap();
    conn.execute_batch(statement).unwrap();
}

/// Starting must fail with exit code 2 and one stderr line containing `needle`.
fn refuses_to_start(dir: &Path, needle: &str) {
    let output = node(&[], dir, "");
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in {stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn durable_replies_equal_in_memory_replies() {
    let dir = TempDir::new("same");
    let durable = node(&[], &dir.0, CHANGES);
    let mut memory = Command::new(env!("CARGO_BIN_EXE_rollback-node"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    memory
        .stdin
        .take()
        .unwrap()
        .write_all(CHANGES.as_bytes())
        .unwrap();
    let memory = memory.wait_with_output().unwrap();
    assert_eq!(text(&durable.stdout), text(&memory.stdout));
}

#[test]
fn restart_resumes_and_answers_retries_identically() {
    let dir = populated("resume");
    let first = text(&node(&[], &dir.0, CHANGES).stdout);
    let again = node(&[], &dir.0, CHANGES);
    // Every line is a retry: identical replies, nothing applied twice.
    assert_eq!(text(&again.stdout), first);
    let status = Command::new(env!("CARGO_BIN_EXE_rollback-node"))
        .args(["status", "--state-dir"])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(status.status.success());
    assert_eq!(
        text(&status.stdout),
        "{\"type\":\"status_ok\",\"schema_version\":2,\"live_environment\":\"blue\",\"flags\":{\"new_checkout\":false},\"restore\":null}\n"
    );
}

#[test]
fn history_lists_accepted_changes_as_json_lines() {
    let dir = populated("history");
    let history = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_rollback-node"))
            .arg("history")
            .args(args)
            .arg("--state-dir")
            .arg(&dir.0)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", text(&output.stderr));
        text(&output.stdout)
    };
    let all = history(&[]);
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "the refused rollback is not an accepted change: {all}"
    );
    assert_eq!(
        lines[0],
        r#"{"seq":1,"src":"oncall","msg_id":1,"request":{"type":"switch_traffic","from":"green","to":"blue"},"reply":{"type":"traffic_switched","in_reply_to":1,"current_environment":"blue","downtime_seconds":0}}"#
    );
    assert!(
        lines[2].starts_with(r#"{"seq":4,"src":"oncall","msg_id":4,"#),
        "{}",
        lines[2]
    );
    assert_eq!(history(&["--limit", "1"]), format!("{}\n", lines[2]));
}

#[test]
fn an_altered_entry_fails_its_checksum() {
    let dir = populated("altered");
    sql(
        &dir.0,
        r#"UPDATE journal SET request = '{"type":"rollback","version":1}' WHERE seq = 2"#,
    );
    refuses_to_start(&dir.0, "journal entry 2 fails its checksum");
}

#[test]
fn a_missing_entry_is_named() {
    let dir = populated("missing");
    sql(&dir.0, "DELETE FROM journal WHERE seq = 2");
    refuses_to_start(&dir.0, "journal entry 2 is missing (the next one is 3)");
}

#[test]
fn a_truncated_database_is_damaged() {
    let dir = populated("truncated");
    let file = dir.0.join("journal.sqlite3");
    let len = std::fs::metadata(&file).unwrap().len();
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..(len / 2) as usize]).unwrap();
    refuses_to_start(
        &dir.0,
        "the journal database is damaged (database disk image is malformed); see README \"Recovering a damaged journal\"",
    );
}

#[test]
fn a_garbage_file_is_damaged() {
    let dir = populated("garbage");
    std::fs::write(
        dir.0.join("journal.sqlite3"),
        b"this is not a database, it is a note",
    )
    .unwrap();
    refuses_to_start(
        &dir.0,
        "the journal database is damaged (file is not a database)",
    );
}

#[test]
fn another_estate_is_refused() {
    let dir = populated("estate");
    let other = dir.0.join("other.toml");
    let estate =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/estates/example.toml"))
            .unwrap();
    std::fs::write(&other, estate.replace("rows = 100000", "rows = 7")).unwrap();
    let output = node(&["--estate", other.to_str().unwrap()], &dir.0, "");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("was created for another estate"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn reading_a_directory_without_journal_is_a_clear_error() {
    let dir = TempDir::new("empty");
    for sub in ["status", "history"] {
        let output = Command::new(env!("CARGO_BIN_EXE_rollback-node"))
            .args([sub, "--state-dir"])
            .arg(&dir.0)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        assert!(
            text(&output.stderr).contains("no journal here"),
            "{}",
            text(&output.stderr)
        );
        assert!(!dir.0.exists(), "{sub} must not create the directory");
    }
}

#[test]
fn permissions_guard_senders() {
    let dir = TempDir::new("permissions");
    std::fs::create_dir_all(&dir.0).unwrap();
    let estate =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/estates/example.toml"))
            .unwrap();
    let path = dir.0.join("guarded.toml");
    std::fs::write(
        &path,
        estate.replace(
            "[[backups]]",
            "[permissions]\nrestore = [\"admin\"]\n\n[[backups]]",
        ),
    )
    .unwrap();
    let input = concat!(
        r#"{"src":"ci","dest":"n1","body":{"type":"restore","msg_id":1,"backup":"users_backup_20240115"}}"#,
        "\n",
        r#"{"src":"admin","dest":"n1","body":{"type":"restore","msg_id":1,"backup":"users_backup_20240115"}}"#,
        "\n"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_rollback-node"))
        .arg("--estate")
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(input.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let stdout = text(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].contains(r#""code":22,"text":"sender ci may not send restore: the estate allows it only from admin (rule permissions.restore); nothing changed""#), "{}", lines[0]);
    assert!(lines[1].contains("restore_complete"), "{}", lines[1]);
}

/// The snapshot writer copies each remembered reply body as it is kept instead of parsing it
/// again: the bytes must be those the snapshot's `Serialize` gives, for answers accepted and
/// refused, and for a sender and a flag name with characters JSON escapes.
#[test]
fn a_snapshot_written_fast_is_the_snapshot_serialized() {
    let mut session = rollback_node::Session::example();
    let mut out = Vec::new();
    let lines = [
        r#"{"src":"c1","dest":"n1","body":{"type":"init","msg_id":0,"node_id":"n1","node_ids":["n1"]}}"#,
        r#"{"src":"c1","dest":"n1","body":{"type":"disable_feature","msg_id":1,"feature":"new_checkout"}}"#,
        r#"{"src":"q\"uote\u00e9","dest":"n1","body":{"type":"switch_traffic","msg_id":2,"from":"green","to":"blue"}}"#,
        r#"{"src":"c1","dest":"n1","body":{"type":"switch_traffic","msg_id":3,"from":"green","to":"blue"}}"#,
        r#"{"src":"c1","dest":"n1","body":{"type":"rollback","msg_id":4,"version":3}}"#,
        r#"{"src":"c1","dest":"n1","body":{"type":"enable_feature","msg_id":5,"feature":"tab\there"}}"#,
    ];
    for line in lines {
        session.handle_line(line.as_bytes(), &mut out);
    }
    let snapshot = session.machine().snapshot();
    assert!(snapshot.answers.len() >= 4, "{:?}", snapshot.answers.len());
    assert!(snapshot.answers.iter().any(|(_, _, a)| !a.accepted));
    assert_eq!(
        String::from_utf8(snapshot.to_json().unwrap()).unwrap(),
        serde_json::to_string(&snapshot).unwrap()
    );
}
