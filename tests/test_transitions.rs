//! The pure core through its own API: each transition's decision (effects as data) and refusal,
//! the second pure function (`State::finish`) for completions and failures, and the lanes —
//! queues, retries that join a running request, completions in any order, a full queue — with a
//! test sink standing in for the runtime and completions handed in by hand.

mod common;

use common::estate_with;
use rollback_node::core::effects::{
    Completion, Decision, Done, Effect, ExecError, Failure, FailureKind, Lane, Operation, Plan,
    ServerState,
};
use rollback_node::core::machine::{Inbound, Record, Sink, QUEUE_LIMIT};
use rollback_node::core::transitions::Reply;
use rollback_node::protocol::replies::*;
use rollback_node::protocol::values::Progress;
use rollback_node::{Environment, Estate, Machine, Refusal, Request, State};
use serde_json::Value;

fn v(version: u64) -> rollback_node::Version {
    rollback_node::Version::new(version).unwrap()
}

/// Decides `request`, which must be refused with `code`; returns the text.
fn refused(machine: &Machine, request: Request, code: u32) -> String {
    let refusal = machine.decide(&request).expect_err("refused");
    assert_eq!(refusal.code(), code, "{refusal}");
    refusal.text().to_owned()
}

/// Decides `request`, which must be accepted; returns the operation.
fn accepted(machine: &Machine, request: &Request) -> Operation {
    match machine.decide(request) {
        Ok(Decision::Accept(operation)) => operation,
        other => panic!("expected an operation, got {other:?}"),
    }
}

fn done(seconds: u64) -> Completion {
    Completion::Done(Done {
        duration: Seconds::Modelled(seconds),
        rows: None,
        ..Done::default()
    })
}

#[test]
fn rollback_decides_one_down_per_version_and_finish_moves_the_schema() {
    let machine = Machine::new(rollback_node::Estate::example().state);
    let operation = accepted(&machine, &Request::Rollback { version: v(2) });
    assert_eq!(
        operation.effects,
        [
            Effect::RunDown {
                version: 3,
                file: "add_checkout_columns".into()
            },
            Effect::RunDown {
                version: 2,
                file: "add_users_email_index".into()
            },
        ]
    );
    assert_eq!(operation.plan, Plan::Rollback { from: 3, to: 1 });
    assert_eq!(
        machine.state().schema_version,
        3,
        "deciding changes nothing"
    );
    let mut state = machine.state().clone();
    let reply = state.finish(&operation, &done(10)).unwrap();
    assert_eq!(
        reply,
        Reply::RollbackComplete(RollbackComplete {
            rolled_back_from: 3,
            rolled_back_to: 1,
            duration_seconds: Seconds::Modelled(10)
        })
    );
    assert_eq!(state.schema_version, 1);
    refused(&machine, Request::Rollback { version: v(4) }, 20);
    let at_zero = Machine::new(State {
        schema_version: 0,
        ..Estate::example().state
    });
    let text = refused(&at_zero, Request::Rollback { version: v(1) }, 22);
    assert!(text.contains("nothing to roll back"), "{text}");
}

#[test]
fn rollback_refuses_whole_request_when_a_migration_is_irreversible() {
    let machine = Machine::new(estate_with("reversible = true", "reversible = false").state);
    let text = refused(&machine, Request::Rollback { version: v(1) }, 22);
    assert!(
        text.contains("migration 3 (add_checkout_columns) has no down()"),
        "{text}"
    );
}

#[test]
fn migrate_decides_one_up_per_version() {
    let machine = Machine::new(rollback_node::Estate::example().state);
    refused(&machine, Request::Migrate { version: v(3) }, 22);
    refused(&machine, Request::Migrate { version: v(4) }, 20);
    let low = Machine::new(State {
        schema_version: 0,
        ..Estate::example().state
    });
    let operation = accepted(&low, &Request::Migrate { version: v(2) });
    assert_eq!(operation.effects.len(), 2);
    let mut state = low.state().clone();
    let reply = state.finish(&operation, &done(10)).unwrap();
    assert_eq!(
        reply,
        Reply::MigrateComplete(MigrateComplete {
            migrated_from: 0,
            migrated_to: 2,
            duration_seconds: Seconds::Modelled(10)
        })
    );
    assert_eq!(state.schema_version, 2);
}

#[test]
fn flags_write_the_flag_store_and_unknown_flags_are_refused() {
    let machine = Machine::new(rollback_node::Estate::example().state);
    let operation = accepted(
        &machine,
        &Request::DisableFeature {
            feature: "new_checkout".into(),
        },
    );
    assert_eq!(
        operation.effects,
        [Effect::WriteFlags {
            flag: "new_checkout".into(),
            enabled: false
        }]
    );
    let mut state = machine.state().clone();
    state.finish(&operation, &done(0)).unwrap();
    assert!(!state.flags["new_checkout"]);
    let text = refused(
        &machine,
        Request::DisableFeature {
            feature: "new_chekout".into(),
        },
        20,
    );
    assert_eq!(
        text,
        "flag \"new_chekout\" does not exist; known flags: new_checkout"
    );
}

#[test]
fn switch_traffic_readies_the_target_then_drains_the_live_one() {
    let machine = Machine::new(rollback_node::Estate::example().state);
    let (blue, green) = (Environment::Blue, Environment::Green);
    refused(
        &machine,
        Request::SwitchTraffic {
            from: green,
            to: green,
        },
        12,
    );
    let text = refused(
        &machine,
        Request::SwitchTraffic {
            from: blue,
            to: green,
        },
        22,
    );
    assert_eq!(
        text,
        "blue is not live (green is); switch_traffic needs from = the live environment"
    );
    let operation = accepted(
        &machine,
        &Request::SwitchTraffic {
            from: green,
            to: blue,
        },
    );
    assert_eq!(
        operation.effects,
        [
            Effect::SetServerState {
                server: blue,
                state: ServerState::Ready
            },
            Effect::SetServerState {
                server: green,
                state: ServerState::Drain
            },
        ]
    );
    let sick = Machine::new(estate_with("blue = \"healthy\"", "blue = \"unhealthy\"").state);
    refused(
        &sick,
        Request::SwitchTraffic {
            from: green,
            to: blue,
        },
        22,
    );
}

#[test]
fn restore_reports_the_rows_the_executor_restored() {
    let machine = Machine::new(rollback_node::Estate::example().state);
    refused(
        &machine,
        Request::Restore {
            backup: "nope".into(),
        },
        20,
    );
    let operation = accepted(
        &machine,
        &Request::Restore {
            backup: "users_backup_20240115".into(),
        },
    );
    let mut state = machine.state().clone();
    let completion = Completion::Done(Done {
        duration: Seconds::Measured(61_234),
        rows: Some(99_999),
        ..Done::default()
    });
    let reply = state.finish(&operation, &completion).unwrap();
    assert_eq!(
        reply,
        Reply::RestoreComplete(RestoreComplete {
            restored_rows: 99_999,
            duration_seconds: Seconds::Measured(61_234)
        })
    );
    assert_eq!(state.schema_version, 2);
    assert_eq!(state.last_restore.unwrap().restored_rows, 99_999);
}

fn failure(completed: usize, part_way: bool) -> Completion {
    Completion::Failed(Failure {
        completed,
        kind: if part_way {
            FailureKind::PartWay
        } else {
            FailureKind::NothingChanged
        },
        error: ExecError::failed(
            "running 2_add_users_email_index.down.sql",
            Some("line 4".into()),
            "connection reset",
        ),
        now: None,
    })
}

#[test]
fn a_failure_before_any_change_is_an_abort_that_changes_nothing() {
    let machine = Machine::new(rollback_node::Estate::example().state);
    for request in [
        Request::Rollback { version: v(3) },
        Request::DisableFeature {
            feature: "new_checkout".into(),
        },
        Request::SwitchTraffic {
            from: Environment::Green,
            to: Environment::Blue,
        },
        Request::Restore {
            backup: "users_backup_20240115".into(),
        },
    ] {
        let operation = accepted(&machine, &request);
        let mut state = machine.state().clone();
        let refusal = state.finish(&operation, &failure(0, false)).unwrap_err();
        assert_eq!(refusal.code(), 14, "{refusal}");
        assert!(
            refusal.text().contains(
                "running 2_add_users_email_index.down.sql failed at line 4: connection reset; nothing changed"
            ),
            "{refusal}"
        );
        assert_eq!(&state, machine.state());
    }
}

#[test]
fn a_failure_part_way_is_a_crash_that_says_where_the_schema_is() {
    let machine = Machine::new(rollback_node::Estate::example().state);
    let operation = accepted(&machine, &Request::Rollback { version: v(1) });
    let mut state = machine.state().clone();
    let refusal = state.finish(&operation, &failure(1, false)).unwrap_err();
    assert_eq!(refusal.code(), 13);
    assert_eq!(
        refusal.text(),
        "down() of migration 2 failed: running 2_add_users_email_index.down.sql failed at line 4: connection reset; the schema is now at version 2 (it was at 3)"
    );
    assert_eq!(state.schema_version, 2, "the down() that ran is kept");
}

#[test]
fn queries_and_init_decide_at_once() {
    let machine = Machine::new(rollback_node::Estate::example().state);
    let Ok(Decision::Reply(Reply::StatusOk(status))) = machine.decide(&Request::Status {}) else {
        panic!("status_ok expected")
    };
    assert_eq!(
        (status.schema_version, status.live_environment),
        (3, Some(Environment::Green))
    );
    assert!(status.in_flight.is_empty() && status.interrupted.is_empty());
    refused(
        &machine,
        Request::Init {
            node_id: "n3".into(),
            node_ids: vec!["n1".into()],
        },
        12,
    );
    assert_eq!(
        refused(
            &machine,
            Request::History {
                limit: Some(0),
                after: None
            },
            12
        ),
        "history limit 0 is out of range; ask for 1 to 1000 entries"
    );
}

#[test]
fn request_types_lanes_and_fields() {
    assert_eq!(
        Request::TYPES,
        [
            "init",
            "rollback",
            "migrate",
            "disable_feature",
            "enable_feature",
            "switch_traffic",
            "restore",
            "force_version",
            "backups",
            "approve_rung",
            "history",
            "status"
        ]
    );
    assert_eq!(Request::Status {}.lane(), None);
    assert_eq!(
        Request::Restore { backup: "b".into() }.lane(),
        Some(Lane::Schema)
    );
    assert_eq!(
        Request::DisableFeature {
            feature: "f".into()
        }
        .lane(),
        Some(Lane::Flags)
    );
    assert!(Request::Restore { backup: "b".into() }.changes_state());
    assert!(!Request::History {
        limit: None,
        after: None
    }
    .changes_state());
    assert_eq!(Request::fields("switch_traffic"), Some(&["from", "to"][..]));
    assert_eq!(Request::fields("nope"), None);
    assert_eq!(Refusal::Abort(String::new()).code(), 14);
}

// --- Lanes, through `receive` and `complete` with a test sink ---

/// Collects what the machine sends out.
#[derive(Default)]
struct Collect {
    replies: Vec<Value>,
    starts: Vec<(Lane, u64)>,
    intents: Vec<u64>,
    outcomes: Vec<u64>,
}

impl Sink for Collect {
    fn reply(&mut self, _to: &str, _addressed: Option<&str>, _msg_id: u64, body: &str) {
        self.replies.push(serde_json::from_str(body).unwrap());
    }
    fn record(&mut self, record: Record<'_>) {
        match record {
            Record::Intent { seq, .. } => self.intents.push(seq),
            Record::Outcome { seq, .. } => self.outcomes.push(seq),
            _ => {}
        }
    }
    fn start(&mut self, lane: Lane, seq: u64) {
        self.starts.push((lane, seq));
    }
    fn history(&mut self, _limit: u32) -> Result<Vec<HistoryEntry>, String> {
        Ok(Vec::new())
    }
}

fn send(machine: &mut Machine, sink: &mut Collect, msg_id: u64, request: Request) {
    send_as(machine, sink, "admin", msg_id, request, false);
}

fn send_as(
    machine: &mut Machine,
    sink: &mut Collect,
    src: &str,
    msg_id: u64,
    request: Request,
    dry_run: bool,
) {
    let inbound = Inbound {
        src,
        addressed: Some("n1"),
        msg_id,
        dry_run,
        size: 64,
    };
    machine.receive(inbound, request, sink);
}

fn restore() -> Request {
    Request::Restore {
        backup: "users_backup_20240115".into(),
    }
}

fn disable() -> Request {
    Request::DisableFeature {
        feature: "new_checkout".into(),
    }
}

#[test]
fn a_busy_lane_queues_and_other_lanes_do_not_wait() {
    let mut machine = Machine::new(rollback_node::Estate::example().state);
    let mut sink = Collect::default();
    send(&mut machine, &mut sink, 1, restore());
    send(
        &mut machine,
        &mut sink,
        2,
        Request::Rollback { version: v(2) },
    );
    send(&mut machine, &mut sink, 3, disable());
    assert_eq!(sink.starts, [(Lane::Schema, 1), (Lane::Flags, 2)]);
    assert_eq!(
        sink.intents,
        [1, 2],
        "an intent is recorded before its start"
    );
    assert_eq!(machine.queued(Lane::Schema), 1);
    assert!(sink.replies.is_empty(), "nothing completed yet");
    // The flag completes first, though it was sent last.
    machine.complete(Lane::Flags, 2, done(0), &mut sink);
    assert_eq!(sink.replies[0]["type"], "feature_disabled");
    assert_eq!(sink.replies[0]["in_reply_to"], 3);
    // Progress shows in status.
    machine.progress(
        Lane::Schema,
        1,
        Progress {
            done: 5,
            total: 10,
            unit: "rows".into(),
        },
    );
    let in_flight = machine.in_flight();
    assert_eq!(in_flight.len(), 2);
    assert_eq!(
        (in_flight[0].kind.as_str(), in_flight[0].state.as_str()),
        ("restore", "running")
    );
    assert_eq!(in_flight[0].progress.as_ref().unwrap().done, 5);
    assert_eq!(in_flight[1].state, "queued");
    // A stale completion is ignored.
    machine.complete(Lane::Schema, 99, done(1), &mut sink);
    assert_eq!(sink.replies.len(), 1);
    // The restore completes; the rollback is decided against the restored schema (2) and starts.
    machine.complete(Lane::Schema, 1, done(60), &mut sink);
    assert_eq!(sink.replies[1]["type"], "restore_complete");
    assert_eq!(sink.starts.last(), Some(&(Lane::Schema, 3)));
    let (_, operation) = machine.running(Lane::Schema).unwrap();
    assert_eq!(operation.plan, Plan::Rollback { from: 2, to: 1 });
    machine.complete(Lane::Schema, 3, done(5), &mut sink);
    assert_eq!(sink.replies[2]["rolled_back_from"], 2);
    assert!(machine.is_idle());
    assert_eq!(sink.outcomes, [2, 1, 3]);
}

#[test]
fn a_retry_of_a_running_request_joins_it_and_runs_once() {
    let mut machine = Machine::new(rollback_node::Estate::example().state);
    let mut sink = Collect::default();
    send(&mut machine, &mut sink, 1, restore());
    send(&mut machine, &mut sink, 1, restore());
    send(&mut machine, &mut sink, 1, disable());
    assert_eq!(
        sink.starts.len(),
        1,
        "the retry did not start a second restore"
    );
    assert_eq!(sink.replies.len(), 1);
    assert_eq!(
        sink.replies[0]["code"], 22,
        "msg_id reused for another request"
    );
    machine.complete(Lane::Schema, 1, done(60), &mut sink);
    assert_eq!(sink.replies.len(), 3, "both copies are answered");
    assert_eq!(sink.replies[1], sink.replies[2]);
    // A later retry is answered from memory.
    send(&mut machine, &mut sink, 1, restore());
    assert_eq!(sink.replies[3], sink.replies[1]);
    assert_eq!(sink.starts.len(), 1);
}

#[test]
fn a_full_queue_refuses_with_11_and_remembers_nothing() {
    let mut machine = Machine::new(rollback_node::Estate::example().state);
    let mut sink = Collect::default();
    send(&mut machine, &mut sink, 0, restore());
    for id in 1..=QUEUE_LIMIT as u64 {
        send(&mut machine, &mut sink, id, restore());
    }
    assert!(sink.replies.is_empty());
    let over = QUEUE_LIMIT as u64 + 1;
    send(&mut machine, &mut sink, over, restore());
    assert_eq!(sink.replies[0]["code"], 11);
    assert_eq!(machine.queued(Lane::Schema), QUEUE_LIMIT);
    assert!(machine.answered().get("admin", over).is_none());
}

#[test]
fn a_dry_run_shows_the_plan_and_changes_nothing() {
    let mut machine = Machine::new(rollback_node::Estate::example().state);
    let before = machine.clone();
    let mut sink = Collect::default();
    send_as(&mut machine, &mut sink, "admin", 1, restore(), true);
    let plan = &sink.replies[0];
    assert_eq!(plan["type"], "plan_ok");
    assert_eq!(
        plan["effects"],
        serde_json::json!([{"effect": "restore", "backup": "users_backup_20240115"}])
    );
    assert_eq!(plan["state_after"]["schema_version"], 2);
    assert_eq!(plan["state_after"]["restore"]["restored_rows"], 100_000);
    assert!(sink.starts.is_empty() && sink.intents.is_empty());
    assert_eq!(machine, before, "a dry run changes nothing");
    send_as(
        &mut machine,
        &mut sink,
        "admin",
        2,
        Request::Status {},
        true,
    );
    assert_eq!(sink.replies[1]["code"], 12);
    send_as(
        &mut machine,
        &mut sink,
        "admin",
        3,
        Request::Rollback { version: v(9) },
        true,
    );
    assert_eq!(sink.replies[2]["code"], 20);
    assert_eq!(machine, before);
}

#[test]
fn an_interrupted_operation_is_answered_not_run() {
    let estate = Estate::example();
    let mut machine = Machine::new(estate.state);
    let found = rollback_node::core::Found {
        schema_version: Some(3),
        ..Default::default()
    };
    machine.interrupt(7, "admin", 4, restore(), found);
    let mut sink = Collect::default();
    send(&mut machine, &mut sink, 4, restore());
    assert_eq!(sink.replies[0]["code"], 13);
    assert!(
        sink.replies[0]["text"]
            .as_str()
            .unwrap()
            .contains("was interrupted by a restart"),
        "{}",
        sink.replies[0]
    );
    assert!(sink.starts.is_empty());
    assert_eq!(machine.interrupted().len(), 1);
    assert_eq!(machine.interrupted()[0].found["schema_version"], 3);
}

#[test]
fn a_failed_effect_is_said_once_in_the_reply() {
    let mut state = rollback_node::Estate::example().state;
    let operation = Operation {
        plan: Plan::Restore {
            backup: "bad".to_owned(),
            schema_version: 2,
            rows: 1,
        },
        effects: vec![Effect::Restore {
            backup: "bad".to_owned(),
        }],
    };
    let completion = Completion::Failed(Failure::nothing_changed(ExecError::failed(
        "restoring bad",
        Some("/backups".to_owned()),
        "bad.db fails its checksum",
    )));
    let refusal = state.finish(&operation, &completion).unwrap_err();
    assert_eq!(
        refusal.text(),
        "restoring bad failed at /backups: bad.db fails its checksum; nothing changed, the schema is at version 3 as before"
    );
    // An error of another action is quoted whole after the reply's own.
    let completion = Completion::Failed(Failure::nothing_changed(ExecError::failed(
        "reading the backups directory",
        None,
        "permission denied",
    )));
    let refusal = state.finish(&operation, &completion).unwrap_err();
    assert_eq!(
        refusal.text(),
        "restoring bad failed: reading the backups directory failed: permission denied; nothing changed, the schema is at version 3 as before"
    );
}
