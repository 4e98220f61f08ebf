//! The escalation ladder live: the real binary with `--listen` and tokens, a real Prometheus
//! (one for the binary, scraping every second) and the test application, whose error ratio is
//! high while a condition on the node holds. Each scenario asserts where the ladder stopped
//! (`status.ladder`) and what it took (history: the requests sender `ladder` sent, each with
//! its pinned `why`):
//! - a condition the kill switch fixes stops at rung 0; one traffic fixes at rung 1; one the
//!   schema fixes at rung 2, pre-authorised or approved by an admin (a viewer's or an
//!   operator's approval is refused);
//! - no data (Prometheus stopped) pauses the ladder while the signal is bad, and it resumes
//!   when Prometheus is back;
//! - a node killed with SIGKILL while a rung awaits approval resumes awaiting it, nothing taken
//!   twice;
//! - `max_runs` runs, then `exhausted`; a ladder on a cluster store is refused at start.
//!
//! Every ladder samples every second, bad after 2 samples, with a 4 s verify window.

#[path = "support/ladder.rs"]
mod ladder;
#[path = "../examples/ladder_app.rs"]
#[allow(dead_code)]
mod ladder_app;
#[path = "support/pg.rs"]
mod pg;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/service.rs"]
mod service;

use ladder::{check_entries, holds, three_rungs, Expected, Rig, Spec, ABOVE, SIGNAL};
use serde_json::{json, Value};
use std::time::Duration;

/// The longest any step may take: a fresh target is scraped within ~2 s, a rung needs 2
/// samples to turn bad and a 4 s window to be passed over.
const WITHIN: Duration = Duration::from_secs(40);
/// How long a stopped ladder is watched staying where it stopped: several sample rounds.
const HOLD: Duration = Duration::from_secs(2);
/// `bad_samples` in every ladder here.
const BAD_SAMPLES: usize = 2;

fn last_value(ladder: &Value) -> f64 {
    ladder["signals"][SIGNAL]
        .as_f64()
        .unwrap_or_else(|| panic!("no value of {SIGNAL}: {ladder}"))
}

#[test]
fn a_condition_the_kill_switch_fixes_stops_the_ladder_at_rung_0() {
    let prom = prometheus::shared();
    let spec = Spec::new(&prom.base(), &three_rungs(false));
    let rig = Rig::start("a-flag", &spec, "flag:new_checkout", prom);
    let ladder = rig.wait_state(WITHIN, "cleared", Some(0));
    assert_eq!(ladder["runs"], 1, "{ladder}");
    assert!(last_value(&ladder) <= ABOVE, "{ladder}");
    holds(&rig, HOLD, "cleared", Some(0), 1);
    check_entries(
        &rig.ladder_entries(),
        &[Expected::new("disable_feature", "feature_disabled", 1, 0)],
        BAD_SAMPLES,
    );
    // The event stream's replay of that entry carries the same why.
    let mut events =
        service::Events::open(rig.node.addr, service::VIEWER, &[("Last-Event-ID", "0")]);
    let entry: Value = serde_json::from_str(&events.next_of("entry").data).unwrap();
    assert_eq!(
        entry,
        rig.ladder_entries()[0],
        "the entry event is history's entry"
    );
    let status = rig.status();
    assert_eq!(status["flags"]["new_checkout"], false, "{status}");
    assert_eq!(status["live_environment"], "green", "nothing else taken");
    assert_eq!(status["schema_version"], 3, "nothing else taken");
    // The notes on stderr: the run started, then cleared, nothing in between but the rung.
    let events: Vec<Value> = rig.notes().iter().map(|n| n["event"].clone()).collect();
    let started = events.iter().position(|e| e == "run_started");
    let cleared = events.iter().position(|e| e == "cleared");
    assert!(
        matches!((started, cleared), (Some(s), Some(c)) if s < c),
        "{events:?}\n{}",
        rig.log()
    );
}

#[test]
fn a_condition_traffic_fixes_passes_over_the_kill_switch_and_stops_at_rung_1() {
    let prom = prometheus::shared();
    let spec = Spec::new(&prom.base(), &three_rungs(false));
    let rig = Rig::start("b-live", &spec, "live:green", prom);
    // Rung 0 is taken and does not clear it.
    rig.wait_ladder(WITHIN, "verifying rung 0", |l| {
        l["state"] == "verifying" && l["rung"] == 0
    });
    let ladder = rig.wait_state(WITHIN, "cleared", Some(1));
    assert_eq!(ladder["runs"], 1, "{ladder}");
    assert!(last_value(&ladder) <= ABOVE, "{ladder}");
    holds(&rig, HOLD, "cleared", Some(1), 2);
    check_entries(
        &rig.ladder_entries(),
        &[
            Expected::new("disable_feature", "feature_disabled", 1, 0),
            Expected::new("switch_traffic", "traffic_switched", 1, 1),
        ],
        BAD_SAMPLES,
    );
    let status = rig.status();
    assert_eq!(status["flags"]["new_checkout"], false, "{status}");
    assert_eq!(status["live_environment"], "blue", "{status}");
    assert_eq!(status["schema_version"], 3, "the rollback was not taken");
    let not_cleared = rig
        .notes()
        .iter()
        .filter(|n| n["event"] == "not_cleared")
        .count();
    assert_eq!(not_cleared, 1, "{}", rig.log());
}

#[test]
fn a_condition_the_schema_fixes_clears_at_a_pre_authorised_rollback_on_rung_2() {
    let prom = prometheus::shared();
    let spec = Spec::new(&prom.base(), &three_rungs(false));
    let rig = Rig::start("c-schema", &spec, "schema_above:2", prom);
    let ladder = rig.wait_state(WITHIN, "cleared", Some(2));
    assert_eq!(ladder["runs"], 1, "{ladder}");
    holds(&rig, HOLD, "cleared", Some(2), 3);
    check_entries(
        &rig.ladder_entries(),
        &[
            Expected::new("disable_feature", "feature_disabled", 1, 0),
            Expected::new("switch_traffic", "traffic_switched", 1, 1),
            Expected::new("rollback", "rollback_complete", 1, 2),
        ],
        BAD_SAMPLES,
    );
    assert_eq!(rig.status()["schema_version"], 2);
    let approvals = rig
        .notes()
        .iter()
        .filter(|n| n["event"] == "awaiting_approval")
        .count();
    assert_eq!(approvals, 0, "pre-authorised: {}", rig.log());
}

/// An `approve_rung` body.
fn approve(msg_id: u64, rung: u64) -> Value {
    json!({"type": "approve_rung", "msg_id": msg_id, "rung": rung})
}

#[test]
fn a_rollback_that_needs_approval_waits_for_an_admin_and_a_viewer_or_operator_cannot_give_it() {
    let prom = prometheus::shared();
    let spec = Spec::new(&prom.base(), &three_rungs(true));
    let rig = Rig::start("c-approve", &spec, "schema_above:2", prom);
    let ladder = rig.wait_state(WITHIN, "awaiting_approval", Some(2));
    assert_eq!(ladder["runs"], 1, "{ladder}");
    // It waits: no rollback without approval, whatever the samples say.
    holds(&rig, HOLD, "awaiting_approval", Some(2), 2);
    assert_eq!(rig.status()["schema_version"], 3);

    for (secret, who) in [(service::VIEWER, "viewer"), (service::OPERATOR, "operator")] {
        let refused = rig.post(secret, &approve(10, 2));
        assert_eq!(refused.status, 403, "{who}: {}", refused.body);
        assert!(refused.body.contains("admin"), "{who}: {}", refused.body);
    }
    let ladder = rig.ladder();
    assert_eq!(
        (&ladder["state"], &ladder["rung"]),
        (&json!("awaiting_approval"), &json!(2)),
        "refused approvals change nothing: {ladder}"
    );
    // An admin approving a rung that does not wait: 22, nothing changes.
    let wrong = rig.post(service::ADMIN, &approve(11, 1));
    assert_eq!(wrong.status, 200, "{}", wrong.body);
    let wrong = wrong.json();
    assert_eq!(
        (&wrong["type"], &wrong["code"]),
        (&json!("error"), &json!(22)),
        "{wrong}"
    );
    assert_eq!(rig.ladder()["state"], "awaiting_approval");

    let approved = rig.post(service::ADMIN, &approve(12, 2));
    assert_eq!(approved.status, 200, "{}", approved.body);
    assert_eq!(
        approved.json(),
        json!({"type": "rung_approved", "in_reply_to": 12, "rung": 2})
    );
    let ladder = rig.wait_state(WITHIN, "cleared", Some(2));
    assert_eq!(ladder["runs"], 1, "{ladder}");
    holds(&rig, HOLD, "cleared", Some(2), 3);
    check_entries(
        &rig.ladder_entries(),
        &[
            Expected::new("disable_feature", "feature_disabled", 1, 0),
            Expected::new("switch_traffic", "traffic_switched", 1, 1),
            Expected::new("rollback", "rollback_complete", 1, 2).approved_by("ada"),
        ],
        BAD_SAMPLES,
    );
    assert_eq!(rig.status()["schema_version"], 2);
    // Nothing awaits any more: approving again is 22.
    let again = rig.post(service::ADMIN, &approve(13, 2)).json();
    assert_eq!(again["code"], 22, "{again}");
}

/// The application's own value of `metric` (its `/metrics`).
fn app_metric(rig: &Rig, metric: &str) -> f64 {
    let app = rig.app.as_ref().expect("the application runs");
    let (status, body) = prometheus::get(app.addr(), "/metrics").expect("the app answers");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("{metric} ")))
        .unwrap_or_else(|| panic!("no {metric} in:\n{body}"))
        .parse()
        .unwrap()
}

#[test]
fn no_data_pauses_the_ladder_while_the_signal_is_bad_and_it_resumes_when_data_returns() {
    // A Prometheus of its own, to stop.
    let mut prom = prometheus::PromServer::start();
    let mut spec = Spec::new(&prom.base(), &three_rungs(false));
    spec.flag_on = false;
    let rig = Rig::start("d-nodata", &spec, "flag:new_checkout", &prom);
    let ladder = rig.wait_ladder(WITHIN, "watching a good signal", |l| {
        l["state"] == "watching" && l["signals"][SIGNAL].as_f64().is_some_and(|v| v <= ABOVE)
    });
    assert_eq!(
        (&ladder["rung"], &ladder["runs"]),
        (&Value::Null, &json!(0))
    );

    prom.stop();
    let ladder = rig.wait_ladder(WITHIN, "paused", |l| l["state"] == "paused_no_data");
    assert_eq!(ladder["signals"][SIGNAL], Value::Null, "{ladder}");
    // The application turns bad while Prometheus is away.
    let on = rig.post(
        service::OPERATOR,
        &json!({"type": "enable_feature", "msg_id": 1, "feature": "new_checkout"}),
    );
    assert_eq!(on.json()["type"], "feature_enabled", "{}", on.body);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while app_metric(&rig, "app_error_ratio") <= ABOVE {
        assert!(std::time::Instant::now() < deadline, "the app stays good");
        std::thread::sleep(Duration::from_millis(50));
    }
    // No data never escalates: several rounds later, still paused, nothing taken.
    let ladder = holds(&rig, Duration::from_secs(4), "paused_no_data", None, 0);
    assert_eq!(ladder["runs"], 0, "{ladder}");
    assert_eq!(ladder["signals"][SIGNAL], Value::Null, "{ladder}");
    // The last pause (the first was at start, before the first scrape).
    let paused = rig
        .notes()
        .into_iter()
        .rev()
        .find(|n| n["event"] == "paused")
        .unwrap_or_else(|| panic!("no pause note: {}", rig.log()));
    let why = paused["no_data"][SIGNAL].as_str().unwrap_or_default();
    assert!(why.contains("unreachable"), "{paused}");

    // Data back: the ladder resumes, sees the bad signal, and the kill switch clears it.
    prom.restart();
    let ladder = rig.wait_state(WITHIN, "cleared", Some(0));
    assert_eq!(ladder["runs"], 1, "{ladder}");
    check_entries(
        &rig.ladder_entries(),
        &[Expected::new("disable_feature", "feature_disabled", 1, 0)],
        BAD_SAMPLES,
    );
    let events: Vec<Value> = rig.notes().iter().map(|n| n["event"].clone()).collect();
    let resumed = events.iter().position(|e| e == "resumed");
    let started = events.iter().position(|e| e == "run_started");
    assert!(
        matches!((resumed, started), (Some(r), Some(s)) if r < s),
        "{events:?}"
    );
}

#[test]
fn a_node_killed_while_a_rung_awaits_approval_resumes_awaiting_it_and_takes_nothing_twice() {
    let prom = prometheus::shared();
    let spec = Spec::new(&prom.base(), &three_rungs(true));
    let mut rig = Rig::start_with("e-crash", &spec, "schema_above:2", prom, true, 100, &[]);
    rig.wait_state(WITHIN, "awaiting_approval", Some(2));
    // Let the commit that holds the decision land.
    std::thread::sleep(Duration::from_millis(300));
    let before = rig.history();
    assert_eq!(rig.ladder_entries().len(), 2);

    rig.kill9_and_restart();
    let ladder = rig.ladder();
    assert_eq!(
        (&ladder["state"], &ladder["rung"], &ladder["runs"]),
        (&json!("awaiting_approval"), &json!(2), &json!(1)),
        "at once after the restart: {ladder}\n{}",
        rig.log()
    );
    assert_eq!(rig.history(), before, "the same history after the restart");
    // It keeps waiting, nothing taken again.
    holds(&rig, HOLD, "awaiting_approval", Some(2), 2);
    assert_eq!(rig.status()["schema_version"], 3);

    let approved = rig.post(service::ADMIN, &approve(1, 2));
    assert_eq!(
        approved.json()["type"],
        "rung_approved",
        "{}",
        approved.body
    );
    rig.wait_state(WITHIN, "cleared", Some(2));
    holds(&rig, HOLD, "cleared", Some(2), 3);
    let history = rig.history();
    check_entries(
        &rig.ladder_entries(),
        &[
            Expected::new("disable_feature", "feature_disabled", 1, 0),
            Expected::new("switch_traffic", "traffic_switched", 1, 1),
            Expected::new("rollback", "rollback_complete", 1, 2).approved_by("ada"),
        ],
        BAD_SAMPLES,
    );
    let mut seen = std::collections::BTreeSet::new();
    for entry in &history {
        let key = (entry["src"].to_string(), entry["msg_id"].to_string());
        assert!(seen.insert(key), "taken twice: {entry}");
    }
    assert_eq!(rig.status()["schema_version"], 2);
}

#[test]
fn a_condition_no_rung_fixes_runs_max_runs_times_then_the_ladder_is_exhausted() {
    let prom = prometheus::shared();
    let rungs = format!("{}{}", ladder::KILL_SWITCH, ladder::FLAG_ON);
    let mut spec = Spec::new(&prom.base(), &rungs);
    spec.max_runs = 2;
    spec.verify = 2;
    let rig = Rig::start("f-always", &spec, "always", prom);
    let ladder = rig.wait_state(WITHIN, "exhausted", Some(1));
    assert_eq!(ladder["runs"], 2, "{ladder}");
    holds(&rig, HOLD, "exhausted", Some(1), 4);
    check_entries(
        &rig.ladder_entries(),
        &[
            Expected::new("disable_feature", "feature_disabled", 1, 0),
            Expected::new("enable_feature", "feature_enabled", 1, 1),
            Expected::new("disable_feature", "feature_disabled", 2, 0),
            Expected::new("enable_feature", "feature_enabled", 2, 1),
        ],
        BAD_SAMPLES,
    );
    let exhausted = rig
        .notes()
        .into_iter()
        .find(|n| n["event"] == "exhausted")
        .unwrap_or_else(|| panic!("no exhausted note: {}", rig.log()));
    assert!(
        exhausted["reason"]
            .as_str()
            .is_some_and(|r| r.contains("max_runs")),
        "{exhausted}"
    );
}

#[test]
fn a_ladder_on_a_cluster_store_is_refused_at_start_with_one_line_and_the_store_untouched() {
    let spec = Spec::new("http://127.0.0.1:9", &three_rungs(true));
    let dir = tempfile::tempdir().unwrap();
    let estate = dir.path().join("estate.toml");
    std::fs::write(&estate, spec.estate("g-store")).unwrap();
    let (url, database) = pg::server().create_database("ladder_store");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rollback-node"))
        .arg("--estate")
        .arg(&estate)
        .args([
            "--store",
            &url,
            "--node-id",
            "n1",
            "--listen",
            "127.0.0.1:0",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("rollback-node: "), "{stderr}");
    assert!(stderr.contains("estate.toml"), "names the file: {stderr}");
    assert!(
        stderr.contains("[ladder]") && stderr.contains("--store"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
    let tables: i64 = pg::server()
        .connect(&database)
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "the store was not touched");
}

#[test]
fn a_node_killed_while_a_rungs_request_runs_does_not_run_it_again_and_the_ladder_says_it_failed() {
    // The rollback is rung 0 here, pre-authorised, and takes 3 s (5 modelled seconds at pace
    // 0.6): the node is killed while it runs.
    let prom = prometheus::shared();
    let spec = Spec::new(&prom.base(), &ladder::rollback(false));
    let mut rig = Rig::start_with(
        "e-acting",
        &spec,
        "schema_above:2",
        prom,
        true,
        100,
        &["--pace", "0.6"],
    );
    rig.wait_state(WITHIN, "acting", Some(0));
    let status = rig.status();
    assert_eq!(status["in_flight"][0]["src"], "ladder", "{status}");
    assert_eq!(status["in_flight"][0]["type"], "rollback", "{status}");
    rig.kill9_and_restart();
    // The request it was taking is sent again with its msg_id: answered from the journal as
    // interrupted (13), never run again, so the rung failed and the ladder is exhausted.
    let ladder = rig.wait_state(WITHIN, "exhausted", Some(0));
    assert_eq!(ladder["runs"], 1, "{ladder}");
    let status = rig.status();
    assert_eq!(
        status["schema_version"], 3,
        "not rolled back twice, nor half: {status}"
    );
    assert_eq!(status["interrupted"][0]["src"], "ladder", "{status}");
    assert_eq!(status["interrupted"][0]["msg_id"], 1, "{status}");
    let entries = rig.ladder_entries();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["request"]["type"], "rollback");
    assert_eq!(entries[0]["reply"]["code"], 13, "{}", entries[0]);
    assert_eq!(entries[0]["why"]["rung"], 0, "{}", entries[0]);
    holds(&rig, HOLD, "exhausted", Some(0), 1);
    let exhausted = rig
        .notes()
        .into_iter()
        .find(|n| n["event"] == "exhausted")
        .unwrap_or_else(|| panic!("no exhausted note: {}", rig.log()));
    assert!(
        exhausted["reason"]
            .as_str()
            .is_some_and(|r| r.contains("failed")),
        "{exhausted}"
    );
}

#[test]
fn a_stopping_node_takes_no_rung_and_the_ladder_acts_after_the_restart() {
    // A restore of 6 s (60 modelled seconds at pace 0.1) keeps the node draining after SIGTERM
    // while the signal turns bad.
    let prom = prometheus::shared();
    let mut spec = Spec::new(&prom.base(), ladder::KILL_SWITCH);
    spec.flag_on = false;
    let mut rig = Rig::start_with(
        "stopping",
        &spec,
        "flag:new_checkout",
        prom,
        true,
        100,
        &["--pace", "0.1"],
    );
    rig.wait_ladder(WITHIN, "watching a good signal", |l| {
        l["state"] == "watching" && l["signals"][SIGNAL].as_f64().is_some_and(|v| v <= ABOVE)
    });
    let restore = r#"{"type":"restore","msg_id":1,"backup":"users_backup_20240115"}"#;
    let running = rig.node.call(
        "POST",
        "/v1/messages?wait=0.2",
        Some(service::ADMIN),
        restore,
    );
    assert_eq!(running.status, 202, "{}", running.body);
    let on = rig.post(
        service::OPERATOR,
        &json!({"type": "enable_feature", "msg_id": 2, "feature": "new_checkout"}),
    );
    assert_eq!(on.json()["type"], "feature_enabled", "{}", on.body);
    let (status, took) = rig.node.terminate();
    assert!(status.success(), "{status}");
    assert!(
        took >= Duration::from_secs(4),
        "it drained the restore: {took:?}"
    );
    let log = rig.log();
    assert!(
        !log.contains("takes rung"),
        "a rung was taken while the node was stopping:\n{log}"
    );
    // The journal has the person's two requests, nothing from the ladder.
    let history = std::process::Command::new(env!("CARGO_BIN_EXE_rollback-node"))
        .args(["history", "--state-dir", &rig.state_dir()])
        .output()
        .unwrap();
    let history = String::from_utf8_lossy(&history.stdout);
    assert!(!history.contains(r#""src":"ladder""#), "{history}");
    assert_eq!(history.lines().count(), 2, "{history}");

    // Started again, the ladder sees the bad signal and takes the kill switch.
    rig.restart();
    rig.wait_state(WITHIN, "cleared", Some(0));
    check_entries(
        &rig.ladder_entries(),
        &[Expected::new("disable_feature", "feature_disabled", 1, 0)],
        BAD_SAMPLES,
    );
}
