//! The exact reply line of every message type and every error class, as named snapshots in
//! `snapshots/`. Review changes with `cargo insta review`; CI never writes snapshots.

mod common;

use common::{estate_with, line, reply, session, snapshot_settings};
use rollback_node::{Estate, Session};

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
    ];
    for (name, setup, body) in cases {
        check(name, example(), setup, body);
    }
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
