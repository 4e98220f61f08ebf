//! The incident page in a real browser (Debian's headless Chromium over WebDriver), against the
//! binary started with `--listen`: log in, read each layer, the kill switch seen by a real OFREP
//! client, the typed confirmations, a viewer's page without buttons, and the page following
//! changes that come in over stdin without a reload. Also writes the README's screenshot
//! (`target/incident-page.png`).

#[path = "support/browser.rs"]
mod browser;
#[path = "support/pyclient.rs"]
mod pyclient;
#[path = "support/service.rs"]
mod service;

use browser::{attribute_of, click, log_in, testid, text_of, type_into, until, wait_text};
use fantoccini::Locator;
use serde_json::Value;
use service::{Node, ADMIN, OPERATOR, VIEWER};
use std::time::Duration;

/// Waits for the history row of entry `seq`.
async fn history_row(client: &fantoccini::Client, what: &str, seq: u64) {
    until(what, || async {
        client
            .find(Locator::Css(&format!(
                "{} [data-seq=\"{seq}\"]",
                testid("history")
            )))
            .await
            .ok()
    })
    .await;
}

fn base(node: &Node) -> String {
    format!("http://{}/", node.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_logs_in_reads_each_layer_and_kills_a_flag_a_real_client_sees() {
    let node = Node::start(&[]);
    let client = browser::browser().await;
    // Before login: only the login form.
    client.goto(&base(&node)).await.unwrap();
    until("the login form", || async {
        text_of(&client, "login").await
    })
    .await;
    type_into(&client, "token-input", "not-a-token").await;
    click(&client, "login").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        text_of(&client, "schema-version")
            .await
            .is_none_or(|t| t.is_empty()),
        "an unknown token does not log in"
    );
    log_in(&client, &base(&node), OPERATOR).await;
    wait_text(&client, "schema-version", "3").await;
    wait_text(&client, "live-environment", "green").await;
    let state = attribute_of(&client, "flag-new_checkout", "data-state").await;
    assert_eq!(state.as_deref(), Some("on"));
    // An operator has the flag and traffic buttons, not the schema's.
    for id in [
        "disable-new_checkout",
        "enable-new_checkout",
        "switch-traffic",
    ] {
        assert!(client.find(Locator::Css(&testid(id))).await.is_ok(), "{id}");
    }
    // The kill switch: one click, and an OpenFeature application's next evaluation is false.
    let url = format!("http://{}", node.addr);
    let mut app = pyclient::PyClient::spawn("ofrep", &url, "new_checkout", "step", 0);
    assert!(app.step().0);
    click(&client, "disable-new_checkout").await;
    until("the flag to show off", || async {
        (attribute_of(&client, "flag-new_checkout", "data-state")
            .await
            .as_deref()
            == Some("off"))
        .then_some(())
    })
    .await;
    assert_eq!(app.step(), (false, "off".into(), "STATIC".into()));
    let status = node.call("GET", "/v1/status", Some(VIEWER), "").json();
    assert_eq!(status["flags"]["new_checkout"], false);
    let history = node.call("GET", "/v1/history", Some(VIEWER), "").json();
    assert_eq!(
        history["entries"][0]["src"], "olga",
        "sent as the token's name"
    );
    // It is in the page's history too.
    history_row(&client, "a history row", 1).await;
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_confirmations_do_nothing_until_the_value_is_typed_exactly() {
    let node = Node::start(&[]);
    let client = browser::browser().await;
    log_in(&client, &base(&node), ADMIN).await;
    wait_text(&client, "schema-version", "3").await;
    // Traffic asks once.
    click(&client, "switch-traffic").await;
    click(&client, "confirm-button").await;
    wait_text(&client, "live-environment", "blue").await;
    // Rollback: a wrong value typed again does nothing.
    type_into(&client, "rollback-input", "3").await;
    click(&client, "rollback-button").await;
    type_into(&client, "confirm-input", "2").await;
    click(&client, "confirm-button").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        text_of(&client, "schema-version").await.as_deref(),
        Some("3")
    );
    let history = node.call("GET", "/v1/history", Some(VIEWER), "").json();
    assert_eq!(
        history["entries"].as_array().unwrap().len(),
        1,
        "only the switch ran"
    );
    type_into(&client, "confirm-input", "3").await;
    click(&client, "confirm-button").await;
    wait_text(&client, "schema-version", "2").await;
    // Restore: the backup's name, typed.
    click(&client, "restore-users_backup_20240115").await;
    type_into(&client, "confirm-input", "users_backup").await;
    click(&client, "confirm-button").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let history = node.call("GET", "/v1/history", Some(VIEWER), "").json();
    assert_eq!(
        history["entries"].as_array().unwrap().len(),
        2,
        "no restore yet"
    );
    type_into(&client, "confirm-input", "users_backup_20240115").await;
    click(&client, "confirm-button").await;
    until("the restore in history", || async {
        let history = node.call("GET", "/v1/history", Some(VIEWER), "").json();
        let last = history["entries"].as_array()?.last()?.clone();
        (last["reply"]["type"] == "restore_complete").then_some(())
    })
    .await;
    let status = node.call("GET", "/v1/status", Some(VIEWER), "").json();
    assert_eq!(status["restore"]["backup"], "users_backup_20240115");
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_every_layer_and_no_button() {
    let node = Node::start(&[]);
    let client = browser::browser().await;
    log_in(&client, &base(&node), VIEWER).await;
    wait_text(&client, "schema-version", "3").await;
    wait_text(&client, "live-environment", "green").await;
    assert_eq!(
        attribute_of(&client, "flag-new_checkout", "data-state")
            .await
            .as_deref(),
        Some("on")
    );
    let buttons = client
        .find_all(Locator::Css(
            "[data-testid^=\"disable-\"],[data-testid^=\"enable-\"],[data-testid^=\"switch-\"],[data-testid^=\"rollback-\"],[data-testid^=\"restore-\"]",
        ))
        .await
        .unwrap();
    assert!(
        buttons.is_empty(),
        "a viewer's page has {} buttons",
        buttons.len()
    );
    for id in ["in-flight", "interrupted", "history"] {
        assert!(client.find(Locator::Css(&testid(id))).await.is_ok(), "{id}");
    }
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_follows_changes_from_stdin_without_a_reload() {
    let mut node = Node::start(&["--pace", "0.05"]);
    let client = browser::browser().await;
    log_in(&client, &base(&node), OPERATOR).await;
    wait_text(&client, "live-environment", "green").await;
    client
        .execute("window.__notReloaded = 42; return true;", vec![])
        .await
        .unwrap();
    node.send_line(r#"{"src":"oncall","dest":"n1","body":{"type":"disable_feature","msg_id":1,"feature":"new_checkout"}}"#);
    node.send_line(r#"{"src":"oncall","dest":"n1","body":{"type":"switch_traffic","msg_id":2,"from":"green","to":"blue"}}"#);
    until("the flag to show off", || async {
        (attribute_of(&client, "flag-new_checkout", "data-state")
            .await
            .as_deref()
            == Some("off"))
        .then_some(())
    })
    .await;
    // A restore at this pace takes 3 s: its row shows progress while it runs.
    node.send_line(r#"{"src":"oncall","dest":"n1","body":{"type":"restore","msg_id":3,"backup":"users_backup_20240115"}}"#);
    let progress = until("the restore's progress", || async {
        let text = text_of(&client, "op-3").await?;
        text.contains("/100000").then_some(text)
    })
    .await;
    assert!(progress.contains("/100000"), "{progress}");
    wait_text(&client, "live-environment", "blue").await;
    // The README's screenshot: the page mid-restore.
    let png = client.screenshot().await.unwrap();
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("incident-page.png"), png).unwrap();
    wait_text(&client, "schema-version", "2").await;
    history_row(&client, "the restore's history row", 3).await;
    let kept: Value = client
        .execute("return window.__notReloaded === 42;", vec![])
        .await
        .unwrap();
    assert_eq!(kept, Value::Bool(true), "the page was reloaded");
    client.close().await.unwrap();
}
