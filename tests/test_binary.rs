//! The built binary, driven as the grader and an operator drive it: a fresh process per run,
//! input on stdin then EOF, replies on stdout, diagnostics on stderr.

use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn run_with(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rollback-node"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

fn run(input: &str) -> (Vec<String>, String) {
    let output = run_with(&[], input.as_bytes());
    assert!(output.status.success(), "exit status {:?}", output.status);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    (stdout.lines().map(str::to_owned).collect(), stderr)
}

/// The body of a reply line, checking the line is one JSON object.
fn body(line: &str) -> Value {
    let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    value["body"].clone()
}

#[test]
fn task_sample_rollback_migration() {
    let (lines, stderr) = run(
        r#"{"src":"admin","dest":"migrations","body":{"type":"rollback","msg_id":1,"version":3}}"#,
    );
    assert_eq!(
        lines,
        [
            r#"{"src":"migrations","dest":"admin","body":{"type":"rollback_complete","in_reply_to":1,"rolled_back_from":3,"rolled_back_to":2,"duration_seconds":5}}"#
        ]
    );
    assert_eq!(stderr, "");
}

#[test]
fn task_sample_feature_flag_rollback() {
    let (lines, stderr) = run(
        r#"{"src":"admin","dest":"features","body":{"type":"disable_feature","msg_id":1,"feature":"new_checkout"}}"#,
    );
    assert_eq!(lines.len(), 1);
    assert_eq!(
        body(&lines[0]),
        json!({"type": "feature_disabled", "in_reply_to": 1, "feature": "new_checkout", "rolled_back_instant": true})
    );
    assert_eq!(
        lines[0],
        r#"{"src":"features","dest":"admin","body":{"type":"feature_disabled","in_reply_to":1,"feature":"new_checkout","rolled_back_instant":true}}"#
    );
    assert_eq!(stderr, "");
}

#[test]
fn statement_examples_in_one_session() {
    let input =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/task.jsonl"))
            .unwrap();
    let (lines, stderr) = run(&input);
    let bodies: Vec<Value> = lines.iter().map(|l| body(l)).collect();
    assert_eq!(
        bodies,
        [
            json!({"type": "rollback_complete", "in_reply_to": 1, "rolled_back_from": 3, "rolled_back_to": 2, "duration_seconds": 5}),
            json!({"type": "feature_disabled", "in_reply_to": 2, "feature": "new_checkout", "rolled_back_instant": true}),
            json!({"type": "traffic_switched", "in_reply_to": 3, "current_environment": "blue", "downtime_seconds": 0}),
            json!({"type": "restore_complete", "in_reply_to": 4, "restored_rows": 100000, "duration_seconds": 60}),
        ]
    );
    // Field order is part of the contract: type first, in_reply_to second, then as in the task.
    let keys: Vec<Vec<&str>> = lines
        .iter()
        .map(|l| {
            let body = &l[l.find(r#""body":"#).unwrap()..];
            [
                "type",
                "in_reply_to",
                "rolled_back_from",
                "rolled_back_to",
                "duration_seconds",
                "feature",
                "rolled_back_instant",
                "current_environment",
                "downtime_seconds",
                "restored_rows",
            ]
            .into_iter()
            .filter_map(|k| body.find(&format!("\"{k}\"")).map(|at| (at, k)))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_values()
            .collect()
        })
        .collect();
    assert_eq!(
        keys,
        [
            vec![
                "type",
                "in_reply_to",
                "rolled_back_from",
                "rolled_back_to",
                "duration_seconds"
            ],
            vec!["type", "in_reply_to", "feature", "rolled_back_instant"],
            vec![
                "type",
                "in_reply_to",
                "current_environment",
                "downtime_seconds"
            ],
            vec!["type", "in_reply_to", "restored_rows", "duration_seconds"],
        ]
    );
    assert_eq!(stderr, "");
}

#[test]
fn bad_lines_get_diagnostics_not_crashes_and_stdout_stays_protocol_only() {
    let mut input = Vec::new();
    input.extend_from_slice(b"not json\n");
    input.extend_from_slice(b"\n   \n");
    input.extend_from_slice(b"{}\n");
    input.extend_from_slice(b"\xff\xfe{\"src\":\"a\"}\n");
    input.extend_from_slice(format!("{}{}\n", "[".repeat(5000), "]".repeat(5000)).as_bytes());
    input.extend_from_slice(
        format!(
            r#"{{"src":"a","dest":"n","body":{{"type":"status","msg_id":1,"x":{}1{}}}}}"#,
            "[".repeat(500),
            "]".repeat(500)
        )
        .as_bytes(),
    );
    input.push(b'\n');
    input.extend_from_slice(
        format!(
            r#"{{"src":"a","dest":"n","body":{{"type":"status","msg_id":2,"pad":"{}"}}}}"#,
            "x".repeat(1 << 20)
        )
        .as_bytes(),
    );
    input.push(b'\n');
    input.extend_from_slice(b"{\"src\":\"a\",\"dest\":\"n\",\"body\":{\"type\":\"disable_feature\",\"feature\":\"new_checkout\"}}\r\n");
    input.extend_from_slice(
        b"{\"src\":\"a\",\"dest\":\"n\",\"body\":{\"type\":\"status\",\"msg_id\":3}}\r\n",
    );
    let output = run_with(&[], &input);
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    // Answered: the status whose deep nesting is in an ignored extra field (serde_json skips it
    // without recursing) and the last status. The flag kept its value: the unkeyed disable was
    // refused.
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(body(lines[0])["in_reply_to"], 1);
    assert_eq!(
        body(lines[1]),
        json!({"type": "status_ok", "in_reply_to": 3, "schema_version": 3, "live_environment": "green", "flags": {"new_checkout": true}, "restore": null})
    );
    let diagnostics: Vec<&str> = stderr.lines().collect();
    assert_eq!(diagnostics.len(), 6, "{stderr}");
    for (diagnostic, line) in diagnostics.iter().zip([1, 4, 5, 6, 8, 9]) {
        assert!(
            diagnostic.starts_with(&format!("rollback-node: line {line}: ")),
            "{diagnostic}"
        );
    }
    assert!(diagnostics[1].contains("no \"body\""), "{}", diagnostics[1]);
    assert!(diagnostics[2].contains("not UTF-8"), "{}", diagnostics[2]);
    assert!(
        diagnostics[3].contains("not a Maelstrom envelope"),
        "{}",
        diagnostics[3]
    );
    assert!(
        diagnostics[4].contains("over the 1048576-byte line limit"),
        "{}",
        diagnostics[4]
    );
    assert!(
        diagnostics[5].contains("disable_feature has no msg_id"),
        "{}",
        diagnostics[5]
    );
}

#[test]
fn a_readable_msg_id_gets_an_error_reply() {
    let (lines, _) = run(r#"{"src":"c","dest":"n","body":{"type":"nope","msg_id":9}}"#);
    assert_eq!(body(&lines[0])["code"], 10);
    assert_eq!(body(&lines[0])["in_reply_to"], 9);
}

#[test]
fn last_line_without_newline_is_answered() {
    let output = run_with(
        &[],
        br#"{"src":"c","dest":"n","body":{"type":"status","msg_id":1}}"#,
    );
    assert_eq!(String::from_utf8(output.stdout).unwrap().lines().count(), 1);
}

#[test]
fn estate_file_errors_are_one_line_and_exit_2() {
    let output = run_with(&["--estate", "/nonexistent/estate.toml"], b"");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("rollback-node: cannot read estate file /nonexistent/estate.toml"),
        "{stderr}"
    );

    let dir = std::env::temp_dir().join(format!("rollback-node-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "schema_version = 1\n[traffic]\nlive = \"green\"\nblue = \"healthy\"\ngreen = \"healthy\"\n").unwrap();
    let output = run_with(&["--estate", path.to_str().unwrap()], b"");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("bad.toml: schema_version 1 is beyond the last migration (0)"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn custom_estate_is_served() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/estates/example.toml");
    let output = run_with(
        &["--estate", path],
        br#"{"src":"c","dest":"n","body":{"type":"status","msg_id":1}}"#,
    );
    assert!(output.status.success());
    assert_eq!(
        body(String::from_utf8(output.stdout).unwrap().trim())["schema_version"],
        3
    );
}

#[test]
fn history_pages_with_after() {
    let lines: String = [
        r#"{"type":"disable_feature","msg_id":1,"feature":"new_checkout"}"#,
        r#"{"type":"enable_feature","msg_id":2,"feature":"new_checkout"}"#,
        r#"{"type":"disable_feature","msg_id":3,"feature":"new_checkout"}"#,
        r#"{"type":"history","msg_id":4}"#,
        r#"{"type":"history","msg_id":5,"after":1,"limit":1}"#,
        r#"{"type":"history","msg_id":6,"after":3}"#,
        r#"{"type":"history","msg_id":7,"after":"x"}"#,
    ]
    .iter()
    .map(|b| format!("{{\"src\":\"c\",\"dest\":\"n\",\"body\":{b}}}\n"))
    .collect();
    let (lines, _) = run(&lines);
    let all = body(&lines[3])["entries"].as_array().unwrap().clone();
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(body(&lines[4])["entries"], json!([all[1]]));
    assert_eq!(body(&lines[5])["entries"], json!([]));
    let refused = body(&lines[6]);
    assert_eq!(refused["code"], 12);
    assert!(
        refused["text"].as_str().unwrap().contains("after"),
        "{refused}"
    );
}

#[test]
fn help_explains_the_node() {
    let output = run_with(&["--help"], b"");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(
        help.contains("Maelstrom") && help.contains("--estate"),
        "{help}"
    );
}
