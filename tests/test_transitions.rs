//! Each transition and each refusal, through the library API: the reply, the state after, and
//! that a refused request leaves the state exactly as it was.

mod common;

use common::estate_with;
use rollback_node::executor::{ExecError, Restored, Seconds};
use rollback_node::replies::*;
use rollback_node::state::{Backup, Migration};
use rollback_node::transitions::Reply;
use rollback_node::{Environment, Executor, Machine, Refusal, Request, Simulated, State};

fn v(version: u32) -> rollback_node::Version {
    rollback_node::Version::new(version).unwrap()
}

fn machine() -> Machine {
    Machine::example()
}

/// Applies `request`, which must be refused with `code`; the state must not change.
fn refused<E: Executor + Clone + PartialEq + std::fmt::Debug>(
    machine: &mut Machine<E>,
    request: Request,
    code: u32,
) -> String {
    let before = machine.state().clone();
    let refusal = machine.apply(&request).expect_err("refused");
    assert_eq!(refusal.code(), code, "{refusal}");
    assert_eq!(
        machine.state(),
        &before,
        "a refused request changed the state"
    );
    refusal.text().to_owned()
}

#[test]
fn rollback_runs_down_to_the_target() {
    let mut m = machine();
    let reply = m.apply(&Request::Rollback { version: v(2) }).unwrap();
    assert_eq!(
        reply,
        Reply::RollbackComplete(RollbackComplete {
            rolled_back_from: 3,
            rolled_back_to: 1,
            duration_seconds: 10
        })
    );
    assert_eq!(m.state().schema_version, 1);
    refused(&mut m, Request::Rollback { version: v(2) }, 22);
    refused(&mut m, Request::Rollback { version: v(4) }, 20);
    m.apply(&Request::Rollback { version: v(1) }).unwrap();
    assert_eq!(m.state().schema_version, 0);
    let text = refused(&mut m, Request::Rollback { version: v(1) }, 22);
    assert!(text.contains("nothing to roll back"), "{text}");
}

#[test]
fn rollback_refuses_whole_request_when_a_migration_is_irreversible() {
    let mut m = Machine::new(
        estate_with("reversible = true", "reversible = false"),
        Simulated,
    );
    let text = refused(&mut m, Request::Rollback { version: v(1) }, 22);
    assert!(
        text.contains("migration 3 (add_checkout_columns) has no down()"),
        "{text}"
    );
}

#[test]
fn migrate_runs_up_to_the_target() {
    let mut m = machine();
    refused(&mut m, Request::Migrate { version: v(3) }, 22);
    refused(&mut m, Request::Migrate { version: v(4) }, 20);
    m.apply(&Request::Rollback { version: v(1) }).unwrap();
    let reply = m.apply(&Request::Migrate { version: v(2) }).unwrap();
    assert_eq!(
        reply,
        Reply::MigrateComplete(MigrateComplete {
            migrated_from: 0,
            migrated_to: 2,
            duration_seconds: 10
        })
    );
    assert_eq!(m.state().schema_version, 2);
}

#[test]
fn flags_disable_idempotently_and_enable() {
    let mut m = machine();
    let disable = Request::DisableFeature {
        feature: "new_checkout".into(),
    };
    for _ in 0..2 {
        let reply = m.apply(&disable).unwrap();
        assert_eq!(
            reply,
            Reply::FeatureDisabled(FeatureDisabled {
                feature: "new_checkout".into(),
                rolled_back_instant: true
            })
        );
        assert!(!m.state().flags["new_checkout"]);
    }
    m.apply(&Request::EnableFeature {
        feature: "new_checkout".into(),
    })
    .unwrap();
    assert!(m.state().flags["new_checkout"]);
    let text = refused(
        &mut m,
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
fn switch_traffic_needs_live_from_and_healthy_to() {
    let mut m = machine();
    let (blue, green) = (Environment::Blue, Environment::Green);
    refused(
        &mut m,
        Request::SwitchTraffic {
            from: green,
            to: green,
        },
        12,
    );
    let text = refused(
        &mut m,
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
    let reply = m
        .apply(&Request::SwitchTraffic {
            from: green,
            to: blue,
        })
        .unwrap();
    assert_eq!(
        reply,
        Reply::TrafficSwitched(TrafficSwitched {
            current_environment: blue,
            downtime_seconds: 0
        })
    );
    assert_eq!(m.state().traffic.live, blue);

    let mut sick = Machine::new(
        estate_with("blue = \"healthy\"", "blue = \"unhealthy\""),
        Simulated,
    );
    refused(
        &mut sick,
        Request::SwitchTraffic {
            from: green,
            to: blue,
        },
        22,
    );
}

#[test]
fn restore_sets_schema_and_records_it() {
    let mut m = machine();
    refused(
        &mut m,
        Request::Restore {
            backup: "nope".into(),
        },
        20,
    );
    let reply = m
        .apply(&Request::Restore {
            backup: "users_backup_20240115".into(),
        })
        .unwrap();
    assert_eq!(
        reply,
        Reply::RestoreComplete(RestoreComplete {
            restored_rows: 100_000,
            duration_seconds: 60
        })
    );
    assert_eq!(m.state().schema_version, 2);
    let record = m.state().last_restore.clone().unwrap();
    assert_eq!(
        (
            record.backup.as_str(),
            record.restored_rows,
            record.schema_version
        ),
        ("users_backup_20240115", 100_000, 2)
    );
}

#[test]
fn status_and_init_change_nothing() {
    let mut m = machine();
    let before = m.clone();
    let Reply::StatusOk(status) = m.apply(&Request::Status {}).unwrap() else {
        panic!("status_ok expected")
    };
    assert_eq!(
        (status.schema_version, status.live_environment),
        (3, Environment::Green)
    );
    m.apply(&Request::Init {
        node_id: "n1".into(),
        node_ids: vec!["n1".into()],
    })
    .unwrap();
    refused(
        &mut m,
        Request::Init {
            node_id: "n3".into(),
            node_ids: vec!["n1".into()],
        },
        12,
    );
    assert_eq!(m, before);
}

#[test]
fn retries_are_answered_from_memory() {
    let mut m = machine();
    let rollback = Request::Rollback { version: v(3) };
    let first = m.handle("admin", Some(1), rollback.clone());
    let state = m.state().clone();
    assert_eq!(m.handle("admin", Some(1), rollback.clone()), first);
    assert_eq!(m.state(), &state, "a retry changed the state");
    // Another sender's msg_id 1 is a different request.
    assert!(m.handle("pipeline", Some(1), rollback.clone()).is_err());
    // Refusals are remembered too: the retry is not re-evaluated.
    let refusal = m.handle("admin", Some(2), Request::Rollback { version: v(3) });
    m.handle("admin", Some(3), Request::Migrate { version: v(3) })
        .unwrap();
    assert_eq!(
        m.handle("admin", Some(2), Request::Rollback { version: v(3) }),
        refusal
    );
    // Reusing a msg_id for another request is refused and changes nothing.
    let err = m.handle("admin", Some(1), Request::Status {});
    assert!(err.is_ok(), "queries are not remembered");
    let err = m
        .handle("admin", Some(1), Request::Migrate { version: v(3) })
        .unwrap_err();
    assert_eq!(err.code(), 22);
    // A change without msg_id is refused.
    let err = m
        .handle(
            "admin",
            None,
            Request::DisableFeature {
                feature: "new_checkout".into(),
            },
        )
        .unwrap_err();
    assert_eq!(err.code(), 12);
    assert!(m.state().flags["new_checkout"]);
}

/// An executor whose effects fail from the `fail_at`-th call on.
#[derive(Debug, Clone, PartialEq)]
struct Flaky {
    calls: u32,
    fail_at: u32,
}

impl Flaky {
    fn step(&mut self) -> Result<(), ExecError> {
        self.calls += 1;
        if self.calls >= self.fail_at {
            Err(ExecError("connection reset".into()))
        } else {
            Ok(())
        }
    }
}

impl Executor for Flaky {
    fn run_down(&mut self, m: &Migration) -> Result<Seconds, ExecError> {
        self.step().map(|()| m.down_seconds)
    }
    fn run_up(&mut self, m: &Migration) -> Result<Seconds, ExecError> {
        self.step().map(|()| m.up_seconds)
    }
    fn set_flag(&mut self, _: &str, _: bool) -> Result<(), ExecError> {
        self.step()
    }
    fn switch_traffic(&mut self, _: Environment, _: Environment) -> Result<Seconds, ExecError> {
        self.step().map(|()| 0)
    }
    fn restore(&mut self, b: &Backup) -> Result<Restored, ExecError> {
        self.step().map(|()| Restored {
            rows: b.rows,
            seconds: b.restore_seconds,
        })
    }
}

#[test]
fn executor_failure_before_any_effect_is_temporarily_unavailable() {
    let mut m = Machine::new(
        State::example(),
        Flaky {
            calls: 0,
            fail_at: 1,
        },
    );
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
        let before = m.state().clone();
        let refusal = m.apply(&request).unwrap_err();
        assert_eq!(refusal.code(), 11, "{refusal}");
        assert!(
            refusal
                .text()
                .ends_with("connection reset; nothing changed"),
            "{refusal}"
        );
        assert_eq!(m.state(), &before);
    }
}

#[test]
fn executor_failure_mid_rollback_is_a_crash_that_says_where_the_schema_is() {
    let mut m = Machine::new(
        State::example(),
        Flaky {
            calls: 0,
            fail_at: 2,
        },
    );
    let refusal = m.apply(&Request::Rollback { version: v(1) }).unwrap_err();
    assert_eq!(refusal.code(), 13);
    assert_eq!(
        refusal.text(),
        "down() of migration 2 failed: connection reset; the schema is now at version 2 (it was at 3)"
    );
    assert_eq!(
        m.state().schema_version,
        2,
        "the down() that ran is recorded"
    );
}

#[test]
fn request_types_and_kinds() {
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
            "history",
            "status"
        ]
    );
    assert!(!Request::Status {}.changes_state());
    assert!(!Request::Init {
        node_id: "n".into(),
        node_ids: vec![]
    }
    .changes_state());
    assert!(Request::Restore { backup: "b".into() }.changes_state());
    let _: fn(&State) -> u32 = State::last_version;
    assert_eq!(Refusal::Abort(String::new()).code(), 14);
}
