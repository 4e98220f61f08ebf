//! The ladder as the session drives it, with its inputs handed over directly (no sampler, no
//! Prometheus): its rungs reach the machine as requests from sender `ladder`, their replies come
//! back as the rung's outcome, `approve_rung` is answered (a retry with the same msg_id alike),
//! `status` and `history` show it, and a request sent under the ladder's own name is refused.

use rollback_node::core::ladder::{Input, Sample};
use rollback_node::runtime::ladder::Watch;
use rollback_node::{Estate, Session, EXAMPLE_ESTATE};
use serde_json::{json, Value};

const LADDER: &str = r#"
[ladder]
prometheus = "http://127.0.0.1:9"
interval_seconds = 1
bad_samples = 2
verify_seconds = 2

[[ladder.signals]]
name = "error_rate"
query = "app_error_ratio"
above = 0.05

[[ladder.rungs]]
action = {type = "disable_feature", feature = "new_checkout"}

[[ladder.rungs]]
action = {type = "rollback", version = 3}
"#;

fn session() -> Session {
    let text = format!("{EXAMPLE_ESTATE}\n{LADDER}");
    let estate = Estate::from_toml(&text, "test").unwrap();
    let config = estate.ladder.clone().unwrap();
    Session::simulated(estate).with_ladder(Watch::new(&config, None).unwrap())
}

/// A round of samples `at` ms after the test began (the session stamps the ladder's other
/// inputs, a rung's end and an approval, with the wall clock, as the sampler stamps its rounds).
fn sample(session: &mut Session, at: u64, value: f64) -> Vec<Value> {
    static BEGAN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let at = *BEGAN.get_or_init(rollback_node::runtime::ladder::now_millis) + at;
    let mut out = Vec::new();
    let input = Input::Samples {
        at,
        values: vec![("error_rate".to_owned(), Sample::Value(value))],
    };
    session.ladder_input(&input, &mut out);
    session.ladder_input(&Input::Tick { at }, &mut out);
    lines(&out)
}

fn send(session: &mut Session, src: &str, body: Value) -> Vec<Value> {
    let line = json!({"src": src, "dest": "n1", "body": body}).to_string();
    let mut out = Vec::new();
    assert_eq!(session.handle_line(line.as_bytes(), &mut out), None);
    lines(&out)
}

fn lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8(out.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ladder_status(session: &mut Session) -> Value {
    send(session, "c", json!({"type": "status", "msg_id": 900}))[0]["body"]["ladder"].clone()
}

#[test]
fn rungs_run_as_ladder_requests_and_an_approval_is_answered_once_for_its_msg_id() {
    let mut s = session();
    // The ladder's replies go to the ladder, never to stdout.
    assert_eq!(sample(&mut s, 1_000, 0.5), Vec::<Value>::new());
    assert_eq!(sample(&mut s, 2_000, 0.5), Vec::<Value>::new());
    assert!(!s.machine().state().flags["new_checkout"]);
    assert_eq!(
        ladder_status(&mut s),
        json!({"state": "verifying", "rung": 0, "runs": 1, "signals": {"error_rate": 0.5}})
    );
    // The window ends without clearing: the rollback waits for approval.
    for at in [3_000, 4_000, 5_000] {
        sample(&mut s, at, 0.5);
    }
    assert_eq!(ladder_status(&mut s)["state"], "awaiting_approval");
    assert_eq!(
        s.machine().state().schema_version,
        3,
        "nothing ran unapproved"
    );
    // The wrong rung is refused and changes nothing.
    let wrong = send(
        &mut s,
        "admin",
        json!({"type": "approve_rung", "msg_id": 1, "rung": 0}),
    );
    assert_eq!(wrong[0]["body"]["code"], 22, "{wrong:?}");
    assert_eq!(ladder_status(&mut s)["state"], "awaiting_approval");
    let approved = send(
        &mut s,
        "admin",
        json!({"type": "approve_rung", "msg_id": 2, "rung": 1}),
    );
    assert_eq!(
        approved[0]["body"],
        json!({"type": "rung_approved", "in_reply_to": 2, "rung": 1})
    );
    assert_eq!(s.machine().state().schema_version, 2);
    // A retry of the approval gets the same answer; the same msg_id for another rung does not.
    let retry = send(
        &mut s,
        "admin",
        json!({"type": "approve_rung", "msg_id": 2, "rung": 1}),
    );
    assert_eq!(retry[0]["body"], approved[0]["body"]);
    let other = send(
        &mut s,
        "admin",
        json!({"type": "approve_rung", "msg_id": 2, "rung": 0}),
    );
    assert_eq!(other[0]["body"]["code"], 22, "{other:?}");
    // Good samples inside the window clear it.
    sample(&mut s, 5_500, 0.01);
    sample(&mut s, 6_000, 0.01);
    assert_eq!(
        ladder_status(&mut s),
        json!({"state": "cleared", "rung": 1, "runs": 1, "signals": {"error_rate": 0.01}})
    );
    // History: one entry per rung, from sender ladder, with its why.
    let history = send(&mut s, "c", json!({"type": "history", "msg_id": 901}));
    let entries = history[0]["body"]["entries"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0]["src"], "ladder");
    assert_eq!(
        entries[0]["why"],
        json!({"signals": {"error_rate": [0.5, 0.5]}, "run": 1, "rung": 0})
    );
    assert_eq!(
        entries[1]["request"],
        json!({"type": "rollback", "version": 3})
    );
    assert_eq!(entries[1]["why"]["approved_by"], "admin");
    assert_eq!(entries[1]["why"]["rung"], 1);
    // The decisions without an operation are kept with the ladder's state, with their samples.
    let watch = s.ladder().unwrap();
    let events: Vec<&str> = watch
        .notes()
        .map(|n| n["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "run_started",
            "not_cleared",
            "awaiting_approval",
            "approved",
            "cleared"
        ]
    );
    let cleared = watch.notes().last().unwrap();
    assert_eq!(cleared["samples"], json!({"error_rate": [0.01, 0.01]}));
}

#[test]
fn the_ladders_own_sender_name_is_refused_and_a_node_without_a_ladder_refuses_approvals() {
    let mut s = session();
    let spoof = send(
        &mut s,
        "ladder",
        json!({"type": "disable_feature", "msg_id": 1, "feature": "new_checkout"}),
    );
    assert_eq!(spoof[0]["body"]["code"], 12, "{spoof:?}");
    assert!(s.machine().state().flags["new_checkout"]);

    let mut plain = Session::example();
    let refused = send(
        &mut plain,
        "admin",
        json!({"type": "approve_rung", "msg_id": 1, "rung": 0}),
    );
    assert_eq!(refused[0]["body"]["code"], 22);
    assert!(refused[0]["body"]["text"]
        .as_str()
        .unwrap()
        .contains("no escalation ladder"));
    let status = send(&mut plain, "c", json!({"type": "status", "msg_id": 2}));
    assert!(status[0]["body"].get("ladder").is_none());
}
