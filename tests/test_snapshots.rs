//! The exact reply line of every message type and every error class, as named snapshots in
//! `snapshots/`. Review changes with `cargo insta review`; CI never writes snapshots.
//!
//! Most cases are one session fed protocol lines. A few need more than lines: a lane kept busy
//! (operations performed by hand, `Performing::Manual`), an effect that fails (a completion
//! handed to the session), a store whose audit trail cannot be read, and an operation a restart
//! interrupted (the binary, killed mid-operation and started again on the same state directory).

mod common;

use common::{estate_with, line, reply, session, snapshot_settings};
use rollback_node::core::effects::{Completion, ExecError, Failure, Found};
use rollback_node::core::state::SchemaHealth;
use rollback_node::core::{Machine, Record};
use rollback_node::exec::simulated::Simulated;
use rollback_node::protocol::replies::HistoryEntry;
use rollback_node::runtime::Performing;
use rollback_node::store::{MemoryStore, Store, StoreError};
use rollback_node::{Estate, Session};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// One case: a fresh session over `state`, the `setup` lines fed first, then `body`.
fn check(name: &str, state: Estate, setup: &[&str], body: &str) {
    let mut node = session(state);
    for (i, body) in setup.iter().enumerate() {
        let answer = reply(&mut node, &line(body)).expect("setup lines are answered");
        assert!(
            !answer.contains(r#""type":"error""#),
            "setup {i} failed: {answer}"
        );
    }
    let answer = reply(&mut node, &line(body)).unwrap_or_else(|| panic!("{name}: no reply"));
    snapshot_settings().bind(|| insta::assert_snapshot!(name, answer));
}

fn example() -> Estate {
    Estate::example()
}

fn snapshot(name: &str, answer: &str) {
    snapshot_settings().bind(|| insta::assert_snapshot!(name, answer));
}

/// The example estate with a guard rail that lets `admin` (the sender of [`line`]) force a
/// version.
fn force_allowed() -> Estate {
    estate_with(
        "[[backups]]",
        "[permissions]\nforce_version = [\"admin\"]\n\n[[backups]]",
    )
}

/// The example estate with an older backup listed before the example's.
fn two_backups() -> Estate {
    estate_with(
        "[[backups]]",
        "[[backups]]\nname = \"users_backup_20231201\"\nrows = 80000\nschema_version = 1\nrestore_seconds = 45\n\n[[backups]]",
    )
}

#[test]
fn replies() {
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "init_ok",
            &[],
            r#"{"type":"init","msg_id":1,"node_id":"n1","node_ids":["n1","n2"]}"#,
        ),
        (
            "rollback_complete",
            &[],
            r#"{"type":"rollback","msg_id":1,"version":3}"#,
        ),
        (
            "rollback_complete_two_steps",
            &[],
            r#"{"type":"rollback","msg_id":1,"version":2}"#,
        ),
        (
            "migrate_complete",
            &[r#"{"type":"rollback","msg_id":1,"version":1}"#],
            r#"{"type":"migrate","msg_id":2,"version":3}"#,
        ),
        (
            "feature_disabled",
            &[],
            r#"{"type":"disable_feature","msg_id":1,"feature":"new_checkout"}"#,
        ),
        (
            "feature_disabled_again",
            &[r#"{"type":"disable_feature","msg_id":1,"feature":"new_checkout"}"#],
            r#"{"type":"disable_feature","msg_id":2,"feature":"new_checkout"}"#,
        ),
        (
            "feature_enabled",
            &[r#"{"type":"disable_feature","msg_id":1,"feature":"new_checkout"}"#],
            r#"{"type":"enable_feature","msg_id":2,"feature":"new_checkout"}"#,
        ),
        (
            "traffic_switched",
            &[],
            r#"{"type":"switch_traffic","msg_id":1,"from":"green","to":"blue"}"#,
        ),
        (
            "restore_complete",
            &[],
            r#"{"type":"restore","msg_id":1,"backup":"users_backup_20240115"}"#,
        ),
        ("status_ok", &[], r#"{"type":"status","msg_id":1}"#),
        (
            "status_ok_after_changes",
            &[
                r#"{"type":"restore","msg_id":1,"backup":"users_backup_20240115"}"#,
                r#"{"type":"switch_traffic","msg_id":2,"from":"green","to":"blue"}"#,
                r#"{"type":"disable_feature","msg_id":3,"feature":"new_checkout"}"#,
            ],
            r#"{"type":"status","msg_id":4}"#,
        ),
        (
            "history_ok",
            &[
                r#"{"type":"disable_feature","msg_id":1,"feature":"new_checkout"}"#,
                r#"{"type":"rollback","msg_id":2,"version":3}"#,
            ],
            r#"{"type":"history","msg_id":3,"limit":5}"#,
        ),
        (
            "retry_gets_identical_reply",
            &[r#"{"type":"rollback","msg_id":7,"version":2}"#],
            r#"{"type":"rollback","msg_id":7,"version":2}"#,
        ),
        (
            "plan_ok",
            &[],
            r#"{"type":"rollback","msg_id":1,"version":2,"dry_run":true}"#,
        ),
    ];
    for (name, setup, body) in cases {
        check(name, example(), setup, body);
    }
}

#[test]
fn replies_that_need_another_estate() {
    check(
        "version_forced",
        force_allowed(),
        &[],
        r#"{"type":"force_version","msg_id":1,"version":2}"#,
    );
    // A database another tool left dirty, as the schema executor reports it at start; the version
    // is forced to the one a person checked it is really at.
    let mut node = session(force_allowed());
    node.observe(&Found {
        schema_health: Some(SchemaHealth {
            dirty: Some(
                "left dirty by another tool (no evidence recorded by rollback-node)".to_owned(),
            ),
            drift: Vec::new(),
        }),
        ..Found::default()
    });
    let answer = reply(
        &mut node,
        &line(r#"{"type":"force_version","msg_id":1,"version":3}"#),
    )
    .unwrap();
    snapshot("version_forced_was_dirty", &answer);
    assert_eq!(node.machine().state().schema_health.dirty, None);
    check(
        "backups_ok",
        two_backups(),
        &[],
        r#"{"type":"backups","msg_id":1}"#,
    );
}

/// Feeds `body` as a line and checks that it got no reply yet and no diagnostic: it was
/// accepted and waits in its lane.
fn accepted(node: &mut Session<impl Store>, body: &str) {
    let mut out = Vec::new();
    let diagnostic = node.handle_line(line(body).as_bytes(), &mut out);
    assert_eq!(
        (String::from_utf8_lossy(&out), diagnostic),
        ("".into(), None),
        "{body} waits in its lane"
    );
}

/// A session over the example estate that performs nothing by itself.
fn manual() -> Session {
    session(example()).performing(Performing::Manual)
}

/// The only place these tests build a [`Failure`]: an operation whose effect number
/// `completed` (counted from 0) failed with `error` after the ones before it completed.
fn failed_after(completed: usize, error: ExecError) -> Completion {
    Completion::Failed(Failure {
        completed,
        ..Failure::nothing_changed(error)
    })
}

/// Starts a rollback to `version` in `node`, fails it with `completion` and returns the reply.
fn failed_rollback(node: &mut Session, version: u64, completion: Completion) -> String {
    accepted(
        node,
        &format!(r#"{{"type":"rollback","msg_id":1,"version":{version}}}"#),
    );
    let started = node.take_starts();
    let [(lane, seq, _)] = started.as_slice() else {
        panic!("one operation starts: {started:?}");
    };
    let mut out = Vec::new();
    node.complete(*lane, *seq, completion, &mut out);
    let text = String::from_utf8(out).unwrap();
    text.strip_suffix('\n')
        .unwrap_or_else(|| panic!("one reply line: {text:?}"))
        .to_owned()
}

#[test]
fn error_11_lane_queue_full() {
    let mut node = manual();
    // One rollback runs and is never completed; the schema lane's queue then fills up.
    accepted(&mut node, r#"{"type":"rollback","msg_id":1,"version":3}"#);
    let queue_limit = rollback_node::core::machine::QUEUE_LIMIT as u64;
    for msg_id in 2..=queue_limit + 1 {
        accepted(
            &mut node,
            &format!(r#"{{"type":"restore","msg_id":{msg_id},"backup":"users_backup_20240115"}}"#),
        );
    }
    let body = format!(
        r#"{{"type":"migrate","msg_id":{},"version":3}}"#,
        queue_limit + 2
    );
    let answer = reply(&mut node, &line(&body)).expect("a full queue answers at once");
    snapshot("error_11_lane_queue_full", &answer);
    // A query is still answered while the schema lane is full.
    let status = reply(&mut node, &line(r#"{"type":"status","msg_id":9999}"#)).unwrap();
    assert!(status.contains(r#""type":"status_ok""#), "{status}");
}

/// A store whose audit trail cannot be read, as a journal on a failing disk; it records and
/// commits like the memory store.
struct UnreadableTrail(MemoryStore);

impl Store for UnreadableTrail {
    fn record(&mut self, record: Record<'_>) {
        self.0.record(record);
    }

    fn commit(&mut self, machine: &Machine) -> Result<(), StoreError> {
        self.0.commit(machine)
    }

    fn history(&mut self, _limit: u32) -> Result<Vec<HistoryEntry>, String> {
        Err("journal.db: disk I/O error".to_owned())
    }
}

#[test]
fn error_11_audit_trail_unreadable() {
    let estate = example();
    let executors = Simulated::new(estate.costs, &estate.state, 0.0).executors();
    let mut node = Session::new(
        Machine::new(estate.state),
        executors,
        UnreadableTrail(MemoryStore::new()),
    );
    let mut out = Vec::new();
    assert_eq!(
        node.handle_line(
            line(r#"{"type":"history","msg_id":1,"limit":5}"#).as_bytes(),
            &mut out
        ),
        None
    );
    let answer = String::from_utf8(out).unwrap();
    snapshot(
        "error_11_audit_trail_unreadable",
        answer.strip_suffix('\n').expect("one reply line"),
    );
}

#[test]
fn error_13_failed_part_way() {
    let mut node = manual();
    // Rolling back to 2 runs down() of 3, then of 2; the second fails after the first completed.
    let error = ExecError::Failed {
        action: "running migrations".to_owned(),
        place: Some("add_users_email_index.down.sql line 1".to_owned()),
        said: "disk I/O error".to_owned(),
    };
    let answer = failed_rollback(&mut node, 2, failed_after(1, error));
    snapshot("error_13_failed_part_way", &answer);
    assert_eq!(node.machine().state().schema_version, 2, "where it stands");
}

#[test]
fn error_14_failed_nothing_changed() {
    let mut node = manual();
    let error = ExecError::Failed {
        action: "running migrations".to_owned(),
        place: Some("add_checkout_columns.down.sql line 1".to_owned()),
        said: "database is locked".to_owned(),
    };
    let answer = failed_rollback(&mut node, 3, failed_after(0, error));
    snapshot("error_14_failed_nothing_changed", &answer);
    assert_eq!(node.machine().state().schema_version, 3, "nothing changed");
}

/// The built node on a state directory, talked to line by line.
struct Node {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Node {
    fn start(args: &[&str]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rollback-node"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the node starts");
        Node {
            stdin: child.stdin.take().unwrap(),
            stdout: BufReader::new(child.stdout.take().unwrap()),
            child,
        }
    }

    /// Sends `body` as a line and returns the reply line to `msg_id` (without `\n`).
    fn ask(&mut self, msg_id: u64, body: &str) -> String {
        writeln!(self.stdin, "{}", line(body)).unwrap();
        self.stdin.flush().unwrap();
        let wanted = format!(r#""in_reply_to":{msg_id},"#);
        loop {
            let mut reply = String::new();
            let read = self.stdout.read_line(&mut reply).unwrap();
            assert!(read > 0, "the node ended before replying to {msg_id}");
            if reply.contains(&wanted) {
                return reply.trim_end_matches('\n').to_owned();
            }
        }
    }
}

#[test]
fn error_13_interrupted_by_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    let restore = r#"{"type":"restore","msg_id":7,"backup":"users_backup_20240115"}"#;
    // A paced restore takes 3 s: kill the node while it runs.
    let mut node = Node::start(&["--state-dir", state, "--pace", "0.05"]);
    writeln!(node.stdin, "{}", line(restore)).unwrap();
    node.stdin.flush().unwrap();
    let asked = Instant::now();
    for msg_id in 100.. {
        let status = node.ask(msg_id, &format!(r#"{{"type":"status","msg_id":{msg_id}}}"#));
        if status.contains(r#""state":"running""#) {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "the restore never ran: {status}"
        );
    }
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    // Started again, the node does not run the restore again: a retry gets the interruption.
    let mut node = Node::start(&["--state-dir", state]);
    let answer = node.ask(7, restore);
    snapshot("error_13_interrupted_by_restart", &answer);
    drop(node.stdin);
    assert!(node.child.wait().unwrap().success());
}

#[test]
fn errors() {
    let cases: &[(&str, &[&str], &str)] = &[
        // 10 not-supported
        (
            "error_10_unknown_type",
            &[],
            r#"{"type":"rollbak","msg_id":1,"version":3}"#,
        ),
        // 12 malformed-request
        (
            "error_12_version_zero",
            &[],
            r#"{"type":"rollback","msg_id":1,"version":0}"#,
        ),
        (
            "error_12_version_negative",
            &[],
            r#"{"type":"rollback","msg_id":1,"version":-2}"#,
        ),
        (
            "error_12_version_fractional",
            &[],
            r#"{"type":"rollback","msg_id":1,"version":2.5}"#,
        ),
        (
            "error_12_version_too_large",
            &[],
            r#"{"type":"migrate","msg_id":1,"version":18446744073709551616}"#,
        ),
        (
            "error_12_version_string",
            &[],
            r#"{"type":"rollback","msg_id":1,"version":"3"}"#,
        ),
        (
            "error_12_missing_field",
            &[],
            r#"{"type":"disable_feature","msg_id":1}"#,
        ),
        (
            "error_12_unknown_environment",
            &[],
            r#"{"type":"switch_traffic","msg_id":1,"from":"green","to":"purple"}"#,
        ),
        (
            "error_12_same_environment",
            &[],
            r#"{"type":"switch_traffic","msg_id":1,"from":"green","to":"green"}"#,
        ),
        ("error_12_missing_type", &[], r#"{"msg_id":1,"version":3}"#),
        (
            "error_12_type_not_a_string",
            &[],
            r#"{"type":7,"msg_id":1}"#,
        ),
        (
            "error_12_history_limit",
            &[],
            r#"{"type":"history","msg_id":1,"limit":0}"#,
        ),
        (
            "error_12_init_empty_node_id",
            &[],
            r#"{"type":"init","msg_id":1,"node_id":"","node_ids":[]}"#,
        ),
        // 20 key-does-not-exist
        (
            "error_20_unknown_flag",
            &[],
            r#"{"type":"disable_feature","msg_id":1,"feature":"new_chekout"}"#,
        ),
        (
            "error_20_unknown_flag_enable",
            &[],
            r#"{"type":"enable_feature","msg_id":1,"feature":"dark_mode"}"#,
        ),
        (
            "error_20_unknown_backup",
            &[],
            r#"{"type":"restore","msg_id":1,"backup":"users_backup_2024"}"#,
        ),
        (
            "error_20_rollback_version_not_in_catalogue",
            &[],
            r#"{"type":"rollback","msg_id":1,"version":4}"#,
        ),
        (
            "error_20_migrate_version_not_in_catalogue",
            &[],
            r#"{"type":"migrate","msg_id":1,"version":9}"#,
        ),
        // 22 precondition-failed
        (
            "error_22_rollback_not_applied",
            &[r#"{"type":"rollback","msg_id":1,"version":2}"#],
            r#"{"type":"rollback","msg_id":2,"version":3}"#,
        ),
        (
            "error_22_rollback_nothing_applied",
            &[r#"{"type":"rollback","msg_id":1,"version":1}"#],
            r#"{"type":"rollback","msg_id":2,"version":1}"#,
        ),
        (
            "error_22_migrate_already_applied",
            &[],
            r#"{"type":"migrate","msg_id":1,"version":3}"#,
        ),
        (
            "error_22_migrate_not_at_last",
            &[r#"{"type":"rollback","msg_id":1,"version":3}"#],
            r#"{"type":"migrate","msg_id":2,"version":1}"#,
        ),
        (
            "error_22_from_not_live",
            &[],
            r#"{"type":"switch_traffic","msg_id":1,"from":"blue","to":"green"}"#,
        ),
        (
            "error_22_msg_id_reused",
            &[r#"{"type":"disable_feature","msg_id":5,"feature":"new_checkout"}"#],
            r#"{"type":"enable_feature","msg_id":5,"feature":"new_checkout"}"#,
        ),
    ];
    for (name, setup, body) in cases {
        check(name, example(), setup, body);
    }
}

#[test]
fn errors_that_need_another_estate() {
    check(
        "error_22_target_unhealthy",
        estate_with("blue = \"healthy\"", "blue = \"unhealthy\""),
        &[],
        r#"{"type":"switch_traffic","msg_id":1,"from":"green","to":"blue"}"#,
    );
    check(
        "error_22_sender_not_permitted",
        estate_with(
            "[[backups]]",
            "[permissions]\nrestore = [\"oncall\", \"release-bot\"]\n\n[[backups]]",
        ),
        &[],
        r#"{"type":"restore","msg_id":1,"backup":"users_backup_20240115"}"#,
    );
    check(
        "error_22_irreversible_migration",
        estate_with("reversible = true", "reversible = false"),
        &[],
        r#"{"type":"rollback","msg_id":1,"version":3}"#,
    );
    check(
        "error_22_irreversible_migration_no_backup",
        estate_with("reversible = true", "reversible = false"),
        &[],
        r#"{"type":"rollback","msg_id":1,"version":2}"#,
    );
}

#[test]
fn envelope_src_follows_init() {
    let mut node = Session::example();
    let before = reply(&mut node, &line(r#"{"type":"status","msg_id":1}"#)).unwrap();
    assert!(
        before.starts_with(r#"{"src":"n1","dest":"admin""#),
        "{before}"
    );
    let other = r#"{"src":"c9","dest":"features","body":{"type":"status","msg_id":2}}"#;
    let before_init = reply(&mut node, other).unwrap();
    assert!(
        before_init.starts_with(r#"{"src":"features","dest":"c9""#),
        "{before_init}"
    );
    reply(
        &mut node,
        &line(r#"{"type":"init","msg_id":3,"node_id":"n7","node_ids":["n7"]}"#),
    )
    .unwrap();
    let after = reply(&mut node, other).unwrap();
    assert!(after.starts_with(r#"{"src":"n7","dest":"c9""#), "{after}");
}
