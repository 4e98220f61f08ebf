//! The escalation ladder on the incident page, in a real browser (Debian's headless Chromium
//! over WebDriver), against the binary started with `--listen` and an estate whose `[ladder]`
//! reads a fake Prometheus run by the test: the page follows the ladder up to a rollback that
//! waits for approval, an operator's page has no approval button, an admin approves by typing
//! the rung (a wrong value sends nothing), and the page follows the rollback and the ladder
//! clearing; no data shows as such; an estate without `[ladder]` shows no ladder. Also writes
//! screenshots of the ladder awaiting approval (`target/ladder-page.png`,
//! `target/ladder-approve.png`).

#[path = "support/browser.rs"]
mod browser;
#[path = "support/service.rs"]
mod service;

use browser::{attribute_of, click, log_in, testid, text_of, type_into, until, until_within};
use fantoccini::{Client, Locator};
use serde_json::Value;
use service::{tokens_toml, Node, ADMIN, OPERATOR, VIEWER};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A fake Prometheus: every `/api/v1/query` is answered with one series whose value is the
/// one set (or, while none is, an empty vector: no data); one request per connection.
struct FakeProm {
    addr: SocketAddr,
    value: Arc<Mutex<Option<String>>>,
    queries: Arc<AtomicUsize>,
}

impl FakeProm {
    fn start(value: Option<&str>) -> FakeProm {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the fake Prometheus");
        let addr = listener.local_addr().unwrap();
        let value = Arc::new(Mutex::new(value.map(str::to_owned)));
        let queries = Arc::new(AtomicUsize::new(0));
        let (shared, counted) = (Arc::clone(&value), Arc::clone(&queries));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (value, counted) = (Arc::clone(&shared), Arc::clone(&counted));
                std::thread::spawn(move || answer(stream, &value, &counted));
            }
        });
        FakeProm {
            addr,
            value,
            queries,
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on every query gives `value` (`None`: an empty vector).
    fn set(&self, value: Option<&str>) {
        *self.value.lock().unwrap() = value.map(str::to_owned);
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

fn answer(stream: TcpStream, value: &Mutex<Option<String>>, queries: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    let target = first.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if target.starts_with("/api/v1/query?") {
        queries.fetch_add(1, Ordering::SeqCst);
        let result = match value.lock().unwrap().as_deref() {
            Some(v) => format!(r#"[{{"metric":{{"app":"shop"}},"value":[1700000000.1,"{v}"]}}]"#),
            None => "[]".to_owned(),
        };
        (
            "200 OK",
            format!(r#"{{"status":"success","data":{{"resultType":"vector","result":{result}}}}}"#),
        )
    } else {
        ("404 Not Found", "not here".to_owned())
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// The example estate with the three tokens and a ladder on `prometheus`: `error_rate` above
/// 0.05 is bad after 2 samples a second apart; rung 0 kills `new_checkout`, rung 1 rolls back
/// version 3 once an admin approves; each rung gets 3 s to clear the signal.
fn ladder_estate(dir: &Path, prometheus: &str) -> PathBuf {
    let path = dir.join("estate.toml");
    let ladder = format!(
        r#"
[ladder]
prometheus = "{prometheus}"
interval_seconds = 1
bad_samples = 2
verify_seconds = 3

[[ladder.signals]]
name = "error_rate"
query = 'sum(rate(http_requests_total{{code=~"5.."}}[1m])) / sum(rate(http_requests_total[1m]))'
above = 0.05

[[ladder.rungs]]
action = {{type = "disable_feature", feature = "new_checkout"}}

[[ladder.rungs]]
action = {{type = "rollback", version = 3}}
approval = true
"#
    );
    std::fs::write(
        &path,
        format!("{}{}{ladder}", rollback_node::EXAMPLE_ESTATE, tokens_toml()),
    )
    .unwrap();
    path
}

/// The node on a ladder estate reading `prom`.
fn ladder_node(prom: &FakeProm) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let estate = ladder_estate(dir.path(), &prom.base());
    Node::start_with(dir, &estate, &[])
}

fn base(node: &Node) -> String {
    format!("http://{}/", node.addr)
}

/// Waits (up to `seconds`) until the element with this test id reads exactly `expected`.
async fn wait_text_for(client: &Client, id: &str, expected: &str, seconds: u64) {
    until_within(
        &format!("{id} to read {expected:?}"),
        Duration::from_secs(seconds),
        || async { (text_of(client, id).await.as_deref() == Some(expected)).then_some(()) },
    )
    .await;
}

/// How many elements have this test id.
async fn count(client: &Client, id: &str) -> usize {
    client
        .find_all(Locator::Css(&testid(id)))
        .await
        .map(|found| found.len())
        .unwrap_or(0)
}

/// The trimmed text of the history row of entry `seq`, once it is there.
async fn history_row(client: &Client, seq: u64) -> String {
    until(&format!("the history row of entry {seq}"), || async {
        let row = client
            .find(Locator::Css(&format!(
                "{} [data-seq=\"{seq}\"]",
                testid("history")
            )))
            .await
            .ok()?;
        Some(row.text().await.ok()?.trim().to_owned())
    })
    .await
}

/// Makes the page record the body of every request it POSTs to `/v1/messages`.
async fn record_posts(client: &Client) {
    client
        .execute(
            "window.__posts = []; var f = window.fetch;
             window.fetch = function (url, opt) {
               if (opt && opt.method === 'POST' && String(url).indexOf('/v1/messages') === 0) window.__posts.push(opt.body);
               return f.apply(this, arguments);
             };
             return true;",
            vec![],
        )
        .await
        .unwrap();
}

/// The bodies the page POSTed to `/v1/messages` since [`record_posts`].
async fn posts(client: &Client) -> Vec<Value> {
    let posted = client
        .execute("return window.__posts;", vec![])
        .await
        .unwrap();
    posted
        .as_array()
        .expect("the page records its requests")
        .iter()
        .map(|body| serde_json::from_str(body.as_str().unwrap()).unwrap())
        .collect()
}

fn target_dir() -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    target
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_approves_the_waiting_rollback_by_typing_its_rung_and_the_pages_follow() {
    let prom = FakeProm::start(Some("0.5"));
    let node = ladder_node(&prom);
    let operator = browser::browser().await;
    log_in(&operator, &base(&node), OPERATOR).await;
    let admin = browser::browser().await;
    log_in(&admin, &base(&node), ADMIN).await;
    // Two bad samples start a run: the kill switch, 3 s without clearing, then the rollback,
    // which waits. Both pages follow it without a reload.
    for page in [&operator, &admin] {
        wait_text_for(page, "ladder-state", "awaiting_approval", 40).await;
        assert_eq!(text_of(page, "ladder-rung").await.as_deref(), Some("1"));
        assert_eq!(text_of(page, "ladder-runs").await.as_deref(), Some("1"));
        assert_eq!(
            text_of(page, "ladder-signal-error_rate").await.as_deref(),
            Some("0.5")
        );
        assert_eq!(
            attribute_of(page, "ladder-signal-error_rate", "data-state")
                .await
                .as_deref(),
            Some("bad"),
            "0.5 is above the threshold 0.05"
        );
        assert_eq!(
            attribute_of(page, "flag-new_checkout", "data-state")
                .await
                .as_deref(),
            Some("off"),
            "rung 0 killed the flag"
        );
        assert_eq!(text_of(page, "schema-version").await.as_deref(), Some("3"));
        // The kill switch's history row says why the ladder took it.
        let row = history_row(page, 1).await;
        assert!(
            row.contains("ladder run 1 rung 0: error_rate 0.5, 0.5"),
            "{row}"
        );
    }
    assert!(prom.queries() >= 4, "the node sampled the fake Prometheus");
    assert_eq!(
        count(&operator, "approve-rung").await,
        0,
        "an operator's page has no approval button"
    );
    assert_eq!(count(&admin, "approve-rung").await, 1);
    let png = admin.screenshot().await.unwrap();
    std::fs::write(target_dir().join("ladder-page.png"), png).unwrap();

    // A wrong rung typed into the dialog sends nothing, and the dialog stays.
    record_posts(&admin).await;
    click(&admin, "approve-rung").await;
    type_into(&admin, "confirm-input", "0").await;
    let png = admin.screenshot().await.unwrap();
    std::fs::write(target_dir().join("ladder-approve.png"), png).unwrap();
    click(&admin, "confirm-button").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(posts(&admin).await, Vec::<Value>::new(), "nothing was sent");
    assert_eq!(
        count(&admin, "confirm-input").await,
        1,
        "the dialog is still open"
    );
    let status = node.call("GET", "/v1/status", Some(VIEWER), "").json();
    assert_eq!(status["ladder"]["state"], "awaiting_approval");
    assert_eq!(status["schema_version"], 3);
    assert_eq!(
        text_of(&admin, "ladder-state").await.as_deref(),
        Some("awaiting_approval")
    );

    // The rung typed: approved, the rollback runs, and with the signal good again it clears.
    type_into(&admin, "confirm-input", "1").await;
    click(&admin, "confirm-button").await;
    for page in [&admin, &operator] {
        wait_text_for(page, "schema-version", "2", 15).await;
    }
    prom.set(Some("0.01"));
    let sent = posts(&admin).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["type"], "approve_rung");
    assert_eq!(sent[0]["rung"], 1);
    assert!(sent[0]["msg_id"].is_u64(), "{sent:?}");
    for page in [&admin, &operator] {
        until_within(
            "the ladder to leave awaiting_approval",
            Duration::from_secs(15),
            || async {
                let state = text_of(page, "ladder-state").await?;
                (state != "awaiting_approval").then_some(())
            },
        )
        .await;
        wait_text_for(page, "ladder-state", "cleared", 15).await;
        wait_text_for(page, "ladder-signal-error_rate", "0.01", 5).await;
        assert_eq!(
            attribute_of(page, "ladder-signal-error_rate", "data-state")
                .await
                .as_deref(),
            Some("ok")
        );
        let row = history_row(page, 2).await;
        assert!(row.contains("ladder run 1 rung 1: error_rate"), "{row}");
        assert!(row.contains("approved by ada"), "{row}");
        assert_eq!(count(page, "approve-rung").await, 0, "nothing waits now");
    }
    let history = node.call("GET", "/v1/history", Some(VIEWER), "").json();
    let rollback = &history["entries"][1];
    assert_eq!(rollback["src"], "ladder");
    assert_eq!(rollback["request"]["type"], "rollback");
    assert_eq!(rollback["why"]["approved_by"], "ada");
    let status = node.call("GET", "/v1/status", Some(VIEWER), "").json();
    assert_eq!(status["ladder"]["state"], "cleared");
    operator.close().await.unwrap();
    admin.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_data_shows_as_no_data_and_a_value_as_good_against_its_threshold() {
    let prom = FakeProm::start(None);
    let node = ladder_node(&prom);
    // whoami tells the page the thresholds and the rungs (not where Prometheus is).
    let me = node.call("GET", "/v1/whoami", Some(VIEWER), "").json();
    assert_eq!(me["ladder"]["signals"][0]["name"], "error_rate");
    assert_eq!(me["ladder"]["signals"][0]["above"], 0.05);
    assert_eq!(me["ladder"]["rungs"][1]["action"]["type"], "rollback");
    assert_eq!(me["ladder"]["rungs"][1]["approval"], true);
    assert_eq!(me["ladder"]["rungs"][0]["approval"], false);
    assert!(me["ladder"].get("prometheus").is_none(), "{me}");
    let viewer = browser::browser().await;
    log_in(&viewer, &base(&node), VIEWER).await;
    wait_text_for(&viewer, "ladder-state", "paused_no_data", 20).await;
    assert_eq!(
        text_of(&viewer, "ladder-signal-error_rate")
            .await
            .as_deref(),
        Some("no data")
    );
    assert_eq!(
        attribute_of(&viewer, "ladder-signal-error_rate", "data-state")
            .await
            .as_deref(),
        Some("no-data")
    );
    assert_eq!(text_of(&viewer, "ladder-rung").await.as_deref(), Some(""));
    assert_eq!(text_of(&viewer, "ladder-runs").await.as_deref(), Some("0"));
    prom.set(Some("0.01"));
    wait_text_for(&viewer, "ladder-state", "watching", 20).await;
    wait_text_for(&viewer, "ladder-signal-error_rate", "0.01", 5).await;
    assert_eq!(
        attribute_of(&viewer, "ladder-signal-error_rate", "data-state")
            .await
            .as_deref(),
        Some("ok")
    );
    assert_eq!(count(&viewer, "approve-rung").await, 0);
    viewer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_estate_without_a_ladder_shows_none() {
    let node = Node::start(&[]);
    let admin = browser::browser().await;
    log_in(&admin, &base(&node), ADMIN).await;
    wait_text_for(&admin, "schema-version", "3", 10).await;
    // The status has arrived (and with it, any ladder there would be).
    let status = node.call("GET", "/v1/status", Some(VIEWER), "").json();
    assert!(status.get("ladder").is_none(), "{status}");
    for id in ["ladder", "ladder-state", "approve-rung"] {
        assert_eq!(count(&admin, id).await, 0, "{id}");
    }
    let me = node.call("GET", "/v1/whoami", Some(VIEWER), "").json();
    assert!(me.get("ladder").is_none(), "{me}");
    admin.close().await.unwrap();
}
