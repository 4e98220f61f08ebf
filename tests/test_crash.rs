//! Durability under `kill -9`: the node is killed with SIGKILL at random points while it works
//! through a sequence of changes, restarted on the same state directory, and sent again every
//! change it had not acknowledged (same msg_id). Every reply ever read must be the reply an
//! uninterrupted in-memory node gives to the same sequence: an acknowledged change is never
//! lost, and no change is applied twice (applying any of these twice would change a reply).

use rollback_node::Session;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const ROUNDS: u64 = 150;

/// A cycle of changes in which a second application of any step would be refused or would
/// answer differently.
const CYCLE: &[&str] = &[
    r#"{"type":"switch_traffic","from":"green","to":"blue"}"#,
    r#"{"type":"rollback","version":3}"#,
    r#"{"type":"disable_feature","feature":"new_checkout"}"#,
    r#"{"type":"switch_traffic","from":"blue","to":"green"}"#,
    r#"{"type":"rollback","version":2}"#,
    r#"{"type":"migrate","version":3}"#,
    r#"{"type":"enable_feature","feature":"new_checkout"}"#,
    r#"{"type":"restore","backup":"users_backup_20240115"}"#,
    r#"{"type":"migrate","version":3}"#,
];

fn workload(len: usize) -> Vec<String> {
    (0..len)
        .map(|i| {
            let body = CYCLE[i % CYCLE.len()];
            let body = body.replacen('{', &format!(r#"{{"msg_id":{},"#, i + 1), 1);
            format!(r#"{{"src":"pipeline","dest":"n1","body":{body}}}"#)
        })
        .collect()
}

/// The replies of an uninterrupted in-memory node.
fn reference(lines: &[String]) -> Vec<String> {
    let mut node = Session::example();
    lines
        .iter()
        .map(|line| {
            let mut out = Vec::new();
            assert!(node.handle_line(line.as_bytes(), &mut out).is_none());
            String::from_utf8(out).unwrap().trim_end().to_owned()
        })
        .collect()
}

/// A small deterministic generator, so a failing round can be rerun.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn start(dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rollback-node"))
        .arg("--state-dir")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the node starts")
}

/// The msg_id a reply answers.
fn in_reply_to(reply: &str) -> usize {
    let value: serde_json::Value = serde_json::from_str(reply).unwrap();
    value["body"]["in_reply_to"].as_u64().unwrap() as usize
}

#[test]
fn kill_9_at_random_points_loses_nothing_acknowledged_and_applies_nothing_twice() {
    let lines = workload(1_500);
    let expected = reference(&lines);
    let dir = std::env::temp_dir().join(format!("rollback-node-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    // The first change not yet acknowledged.
    let mut next = 0usize;
    let mut kills_mid_stream = 0;
    for round in 0..=ROUNDS {
        let mut child = start(&dir);
        let mut stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let pending: Vec<String> = lines[next..].to_vec();
        let last_round = round == ROUNDS;
        // Feed the rest in chunks with short pauses, so that kills land mid-stream.
        let writer = std::thread::spawn(move || {
            for chunk in pending.chunks(7) {
                for line in chunk {
                    if writeln!(stdin, "{line}").is_err() {
                        return;
                    }
                }
                let _ = stdin.flush();
                std::thread::sleep(Duration::from_micros(300));
            }
        });
        let remaining = (lines.len() - next) as u64;
        let read_before_kill = if last_round {
            remaining
        } else {
            // Spread the kills over the whole workload.
            rng.below(2 * remaining / (ROUNDS - round + 1) + 2)
        };
        let mut replies = stdout.lines();
        let mut read = 0;
        while read < read_before_kill {
            let Some(Ok(reply)) = replies.next() else {
                break;
            };
            let id = in_reply_to(&reply);
            assert_eq!(id, next + 1, "round {round}: replies come in order");
            assert_eq!(reply, expected[next], "round {round}: reply to msg_id {id}");
            next += 1;
            read += 1;
        }
        if last_round {
            assert_eq!(next, lines.len(), "every change answered in the end");
            writer.join().unwrap();
            assert!(child.wait().unwrap().success());
        } else {
            child.kill().unwrap();
            child.wait().unwrap();
            writer.join().unwrap();
            if read > 0 && next < lines.len() {
                kills_mid_stream += 1;
            }
        }
    }
    assert!(
        kills_mid_stream >= ROUNDS / 2,
        "only {kills_mid_stream} kills landed mid-stream"
    );

    // The journal replays to the state of the uninterrupted run.
    let status = Command::new(env!("CARGO_BIN_EXE_rollback-node"))
        .args(["status", "--state-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(status.status.success());
    let mut node = Session::example();
    let mut out = Vec::new();
    for line in &lines {
        node.handle_line(line.as_bytes(), &mut out);
    }
    out.clear();
    node.handle_line(
        br#"{"src":"x","dest":"n1","body":{"type":"status","msg_id":1}}"#,
        &mut out,
    );
    let reference_status: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let mut cli_status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    cli_status["in_reply_to"] = 1.into();
    let mut reference_body = reference_status["body"].clone();
    // Field order is not compared here; the values are.
    reference_body["in_reply_to"] = 1.into();
    assert_eq!(cli_status, reference_body);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A journal that can no longer grow (the file-size limit of `ulimit -f`, with SIGXFSZ ignored
/// so that the write fails instead of killing the node): the node stops with the journal's
/// error, and every reply it had sent before is recorded — the replies of what it could not
/// record never go out. A node started again on the directory continues from exactly there.
#[test]
fn a_journal_that_cannot_grow_stops_the_node_and_sends_no_unrecorded_reply() {
    let lines = workload(20_000);
    let expected = reference(&lines);
    let dir = std::env::temp_dir().join(format!("rollback-node-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut input = lines.join("\n");
    input.push('\n');
    // 1,024 blocks of 1 KiB: the first few thousand rows fit, twenty thousand do not.
    let mut child = Command::new("bash")
        .arg("-c")
        .arg("ulimit -f 1024 && trap '' XFSZ && exec \"$0\" --state-dir \"$1\"")
        .arg(env!("CARGO_BIN_EXE_rollback-node"))
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash starts the node");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "the node stops with an error; stderr: {stderr}"
    );
    assert!(
        stderr.contains("cannot write the journal")
            && stderr.contains("stopping without sending the unrecorded replies"),
        "stderr says why: {stderr}"
    );
    let replies: Vec<&str> = std::str::from_utf8(&output.stdout)
        .unwrap()
        .lines()
        .collect();
    assert!(
        !replies.is_empty() && replies.len() < lines.len(),
        "{} replies of {}: the limit must be reached part-way",
        replies.len(),
        lines.len()
    );
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(*reply, expected[i], "reply {} before the failure", i + 1);
    }

    // Started again without the limit and sent everything not acknowledged: had any of the
    // acknowledged changes not been recorded, the next replies would differ.
    let acknowledged = replies.len();
    let mut child = start(&dir);
    let mut stdin = child.stdin.take().unwrap();
    let rest = lines[acknowledged..].to_vec();
    let writer = std::thread::spawn(move || {
        for line in rest {
            writeln!(stdin, "{line}").unwrap();
        }
    });
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let again: Vec<String> = stdout.lines().map(Result::unwrap).collect();
    writer.join().unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(again.len(), lines.len() - acknowledged);
    for (i, reply) in again.iter().enumerate() {
        assert_eq!(
            *reply,
            expected[acknowledged + i],
            "reply {} after the restart",
            acknowledged + i + 1
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
