//! The escalation ladder end to end, for the tests and the benchmark: an estate whose
//! `[ladder]` watches the test application's error ratio in a real Prometheus, the node (the
//! real binary) started on it with `--listen` and tokens, the application whose condition
//! follows that node, scraped by the Prometheus, and reads of the node's status and history.
//!
//! It needs the modules `service` (tests/support/service.rs), `prometheus`
//! (tests/support/prometheus.rs) and `ladder_app` (examples/ladder_app.rs) beside it, at the
//! crate root.

#![allow(dead_code)]

use crate::{ladder_app, prometheus, service};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The name of the signal every ladder here watches.
pub const SIGNAL: &str = "error_ratio";
/// Its threshold: the application's error ratio is 0.5 while its condition holds, 0.01 else.
pub const ABOVE: f64 = 0.1;

/// The rung that turns the flag `new_checkout` off.
pub const KILL_SWITCH: &str =
    "[[ladder.rungs]]\naction = {type = \"disable_feature\", feature = \"new_checkout\"}\n";
/// The rung that turns the flag `new_checkout` on (for a ladder that runs more than once).
pub const FLAG_ON: &str =
    "[[ladder.rungs]]\naction = {type = \"enable_feature\", feature = \"new_checkout\"}\n";
/// The rung that moves the traffic from green to blue.
pub const TRAFFIC: &str =
    "[[ladder.rungs]]\naction = {type = \"switch_traffic\", from = \"green\", to = \"blue\"}\n";

/// The rung that rolls migration 3 back (the schema goes from 3 to 2), pre-authorised or not.
pub fn rollback(approval: bool) -> String {
    format!(
        "[[ladder.rungs]]\naction = {{type = \"rollback\", version = 3}}\napproval = {approval}\n"
    )
}

/// The three rungs, least disruptive first: the kill switch, traffic, the rollback.
pub fn three_rungs(approval: bool) -> String {
    format!("{KILL_SWITCH}{TRAFFIC}{}", rollback(approval))
}

/// A ladder's settings.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Prometheus's base URL.
    pub prometheus: String,
    /// `interval_seconds`.
    pub interval: u64,
    /// `bad_samples`.
    pub bad_samples: u32,
    /// `verify_seconds`.
    pub verify: u64,
    /// `max_runs`.
    pub max_runs: u32,
    /// `(name, query, above)` of each signal; [`APP`] in a query stands for the application's
    /// `app` label.
    pub signals: Vec<(String, String, f64)>,
    /// The `[[ladder.rungs]]` tables.
    pub rungs: String,
    /// Whether the flag `new_checkout` is on at first.
    pub flag_on: bool,
}

impl Spec {
    /// One signal, the application's error ratio above [`ABOVE`], sampled every second, bad
    /// after 2 samples, 4 s to clear, one run.
    pub fn new(prometheus: &str, rungs: &str) -> Spec {
        Spec {
            prometheus: prometheus.to_owned(),
            interval: 1,
            bad_samples: 2,
            verify: 4,
            max_runs: 1,
            signals: vec![(SIGNAL.to_owned(), query(APP), ABOVE)],
            rungs: rungs.to_owned(),
            flag_on: true,
        }
    }

    /// The estate: simulated layers (the schema at version 3 of 3, the flag, green live, a
    /// backup), the ladder watching the application labelled `app`, and the three tokens of
    /// [`service::tokens_toml`].
    pub fn estate(&self, app: &str) -> String {
        let signals: String = self
            .signals
            .iter()
            .map(|(name, query, above)| {
                format!(
                    "[[ladder.signals]]\nname = {}\nquery = {}\nabove = {above:?}\n\n",
                    toml_string(name),
                    toml_string(&query.replace(APP, app))
                )
            })
            .collect();
        format!(
            "{}\n[ladder]\nprometheus = {}\ninterval_seconds = {}\nbad_samples = {}\nverify_seconds = {}\nmax_runs = {}\n\n{signals}{}{}",
            layers(self.flag_on),
            toml_string(&self.prometheus),
            self.interval,
            self.bad_samples,
            self.verify,
            self.max_runs,
            self.rungs,
            service::tokens_toml()
        )
    }
}

/// What stands for the application's `app` label in a [`Spec`]'s queries.
pub const APP: &str = "$APP";

/// The query of the application `app`'s error ratio (its gauge, as Prometheus scraped it).
pub fn query(app: &str) -> String {
    format!("app_error_ratio{{app=\"{app}\"}}")
}

/// A TOML basic string: JSON's escapes are TOML's.
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// The estate's simulated layers.
pub fn layers(flag_on: bool) -> String {
    format!(
        r#"schema_version = 3

[[migrations]]
version = 1
name = "create_users"
up_seconds = 5
down_seconds = 5

[[migrations]]
version = 2
name = "add_users_email_index"
up_seconds = 5
down_seconds = 5

[[migrations]]
version = 3
name = "add_checkout_columns"
up_seconds = 5
down_seconds = 5

[flags]
new_checkout = {flag_on}

[traffic]
live = "green"
blue = "healthy"
green = "healthy"

[[backups]]
name = "users_backup_20240115"
rows = 100000
schema_version = 2
restore_seconds = 60
"#
    )
}

/// The application on `listen` with these arguments (after the program name), reading the
/// node with a viewer token, every `poll_ms`.
pub fn app(listen: &str, args: &[&str], poll_ms: u64) -> std::io::Result<ladder_app::Running> {
    let poll = poll_ms.to_string();
    let mut argv = vec!["ladder_app", "--listen", listen, "--poll-ms", &poll];
    argv.extend_from_slice(args);
    let mut args = <ladder_app::Args as clap::Parser>::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("the application's arguments: {e}"));
    args.token = Some(service::VIEWER.to_owned());
    ladder_app::start(args)
}

/// The application bad while `condition` holds, reading the node at `node` every `poll_ms`,
/// scraped by `prom`: on a target it registered ahead if it has one free, else on a new one
/// (discovered within about 5 s). Returns it and its `app` label.
pub fn scraped_app(
    prom: &prometheus::PromServer,
    name: &str,
    node: &str,
    condition: &str,
    poll_ms: u64,
) -> (ladder_app::Running, String) {
    let args = ["--node", node, "--bad-while", condition];
    if let Some((addr, label)) = prom.take_target() {
        if let Ok(app) = app(&addr.to_string(), &args, poll_ms) {
            return (app, label);
        }
    }
    let app = app("127.0.0.1:0", &args, poll_ms)
        .unwrap_or_else(|e| panic!("the application does not start: {e}"));
    prom.add_target(app.addr(), name);
    (app, name.to_owned())
}

/// A node with a ladder, the application it watches and what the node said on stderr.
pub struct Rig {
    /// The node.
    pub node: service::Node,
    /// The application (`None` once stopped).
    pub app: Option<ladder_app::Running>,
    /// The scenario's name.
    pub name: String,
    /// The application's `app` label in Prometheus.
    pub label: String,
    /// The estate file's and the state directory's temp dir.
    pub dir: tempfile::TempDir,
    /// The estate file.
    pub estate: PathBuf,
    args: Vec<String>,
    log: RefCell<Vec<String>>,
}

impl Rig {
    /// Writes `spec`'s estate, starts the node on it (in memory), then the application bad
    /// while `condition` holds (`flag:NAME`, `live:ENV`, `schema_above:N`, `always`,
    /// `never`), reading the node every 100 ms, and has `prom` scrape it as `name`.
    pub fn start(name: &str, spec: &Spec, condition: &str, prom: &prometheus::PromServer) -> Rig {
        Rig::start_with(name, spec, condition, prom, false, 100, &[])
    }

    /// [`Rig::start`], the node durable in a state directory of its own when `durable` and
    /// given the `extra` arguments, the application reading the node every `poll_ms`.
    pub fn start_with(
        name: &str,
        spec: &Spec,
        condition: &str,
        prom: &prometheus::PromServer,
        durable: bool,
        poll_ms: u64,
        extra: &[&str],
    ) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let estate = dir.path().join("estate.toml");
        // The node's address first: the estate names the application's label, the
        // application the node's address.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let (app, label) = scraped_app(prom, name, &format!("http://{listen}"), condition, poll_ms);
        std::fs::write(&estate, spec.estate(&label)).unwrap();
        let mut args = Vec::new();
        if durable {
            args.push("--state-dir".to_owned());
            args.push(dir.path().join("state").display().to_string());
        }
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let node = Rig::node(&estate, &listen, &args);
        Rig {
            node,
            app: Some(app),
            name: name.to_owned(),
            label,
            dir,
            estate,
            args,
            log: RefCell::new(Vec::new()),
        }
    }

    fn node(estate: &std::path::Path, listen: &str, args: &[String]) -> service::Node {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        service::Node::start_listening(tempfile::tempdir().unwrap(), estate, listen, &args)
    }

    /// The node's pid.
    pub fn pid(&self) -> u32 {
        self.node.child.id()
    }

    /// The state directory (with `durable`).
    pub fn state_dir(&self) -> String {
        self.dir.path().join("state").display().to_string()
    }

    /// Starts the node again (after it exited) on the same estate, arguments and address.
    pub fn restart(&mut self) {
        self.drain();
        self.log.borrow_mut().push("---- restarted ----".into());
        let listen = self.node.addr.to_string();
        self.node = Rig::node(&self.estate, &listen, &self.args);
    }

    /// Kills the node with SIGKILL and starts it again on the same estate, arguments and
    /// address (the application reads it there).
    pub fn kill9_and_restart(&mut self) {
        let pid = self.node.child.id() as i32;
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let status = self.node.child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "{status}"
        );
        self.drain();
        self.log
            .borrow_mut()
            .push("---- killed (SIGKILL), restarted ----".into());
        let listen = self.node.addr.to_string();
        self.node = Rig::node(&self.estate, &listen, &self.args);
    }

    fn drain(&self) {
        self.log.borrow_mut().extend(self.node.stderr_lines());
    }

    /// Everything the node said on stderr so far.
    pub fn log(&self) -> String {
        self.drain();
        self.log.borrow().join("\n")
    }

    /// The ladder's notes on stderr so far (each a JSON object).
    pub fn notes(&self) -> Vec<Value> {
        self.drain();
        self.log
            .borrow()
            .iter()
            .filter_map(|line| line.strip_prefix("rollback-node: ladder: "))
            .filter_map(|note| serde_json::from_str(note).ok())
            .collect()
    }

    /// `GET /v1/status`.
    pub fn status(&self) -> Value {
        let response = self
            .node
            .call("GET", "/v1/status", Some(service::VIEWER), "");
        assert_eq!(response.status, 200, "{}", response.body);
        response.json()
    }

    /// `status.ladder`.
    pub fn ladder(&self) -> Value {
        self.status()["ladder"].clone()
    }

    /// Polls `status.ladder` every 50 ms until `ok` holds of it; panics after `within` with
    /// the last one and the node's stderr.
    pub fn wait_ladder(&self, within: Duration, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let ladder = self.ladder();
            if ok(&ladder) {
                return ladder;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: the ladder is not {what} after {within:?}: {ladder}\nhistory: {}\nthe node's stderr:\n{}",
                    self.name,
                    Value::Array(self.ladder_entries()),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the ladder is in `state` at `rung`.
    pub fn wait_state(&self, within: Duration, state: &str, rung: Option<u64>) -> Value {
        self.wait_ladder(within, &format!("{state} at rung {rung:?}"), |l| {
            l["state"] == state && l["rung"] == json!(rung)
        })
    }

    /// Every history entry (up to 1000), oldest first.
    pub fn history(&self) -> Vec<Value> {
        let response = self
            .node
            .call("GET", "/v1/history?limit=1000", Some(service::VIEWER), "");
        assert_eq!(response.status, 200, "{}", response.body);
        response.json()["entries"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("no entries: {}", response.body))
    }

    /// The history entries of the requests sender `ladder` sent.
    pub fn ladder_entries(&self) -> Vec<Value> {
        self.history()
            .into_iter()
            .filter(|e| e["src"] == "ladder")
            .collect()
    }

    /// `POST /v1/messages` as the token `secret`.
    pub fn post(&self, secret: &str, body: &Value) -> service::Response {
        self.node.post(secret, &body.to_string())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(app) = self.app.take() {
            app.stop();
        }
    }
}

/// What a ladder entry of history should be.
#[derive(Debug, Clone)]
pub struct Expected {
    /// The request's type.
    pub request: &'static str,
    /// The reply's type.
    pub reply: &'static str,
    /// The run, from 1.
    pub run: u64,
    /// The rung.
    pub rung: u64,
    /// Whether the rung started a run because the signal turned bad (its `why` then holds
    /// exactly `bad_samples` samples, each above the threshold); else the previous rung's
    /// verify window ended without clearing (its samples, some above the threshold).
    pub turned_bad: bool,
    /// Who approved it, when it waited.
    pub approved_by: Option<&'static str>,
}

impl Expected {
    /// An entry expected of rung `rung` in run `run`.
    pub fn new(request: &'static str, reply: &'static str, run: u64, rung: u64) -> Expected {
        Expected {
            request,
            reply,
            run,
            rung,
            turned_bad: rung == 0 && run == 1,
            approved_by: None,
        }
    }

    /// The same, approved by `by`.
    pub fn approved_by(mut self, by: &'static str) -> Expected {
        self.approved_by = Some(by);
        self
    }
}

/// Checks the ladder's history entries, one by one, against `expected` (as many, in order):
/// sender `ladder`, msg_ids 1, 2, …, the request and reply types, and the pinned `why`:
/// `{"signals": {NAME: [samples]}, "run": N, "rung": I}` plus `approved_by` when it waited.
pub fn check_entries(entries: &[Value], expected: &[Expected], bad_samples: usize) {
    let shown = Value::Array(entries.to_vec());
    assert_eq!(
        entries.len(),
        expected.len(),
        "ladder entries: {shown:#}\nexpected {expected:#?}"
    );
    for (index, (entry, want)) in entries.iter().zip(expected).enumerate() {
        let at = format!("entry {index}: {entry}");
        assert_eq!(entry["src"], "ladder", "{at}");
        assert_eq!(entry["msg_id"], json!(index + 1), "{at}");
        assert_eq!(entry["request"]["type"], want.request, "{at}");
        assert!(
            entry["request"]
                .get("msg_id")
                .is_none_or(|m| *m == entry["msg_id"]),
            "{at}"
        );
        assert_eq!(entry["reply"]["type"], want.reply, "{at}");
        let why = entry["why"]
            .as_object()
            .unwrap_or_else(|| panic!("no why object: {at}"));
        let mut keys: Vec<&str> = why.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut pinned = vec!["rung", "run", "signals"];
        if want.approved_by.is_some() {
            pinned.push("approved_by");
        }
        pinned.sort_unstable();
        assert_eq!(keys, pinned, "{at}");
        assert_eq!(why["run"], json!(want.run), "{at}");
        assert_eq!(why["rung"], json!(want.rung), "{at}");
        if let Some(by) = want.approved_by {
            assert_eq!(why["approved_by"], by, "{at}");
        }
        let signals = why["signals"]
            .as_object()
            .unwrap_or_else(|| panic!("why.signals is not an object: {at}"));
        assert_eq!(
            signals.keys().collect::<Vec<_>>(),
            [SIGNAL],
            "the bad signal, and only it: {at}"
        );
        let samples: Vec<f64> = signals[SIGNAL]
            .as_array()
            .unwrap_or_else(|| panic!("the samples are not an array: {at}"))
            .iter()
            .map(|v| {
                v.as_f64()
                    .unwrap_or_else(|| panic!("{v} is not a number: {at}"))
            })
            .collect();
        if want.turned_bad {
            assert_eq!(samples.len(), bad_samples, "{at}");
            assert!(samples.iter().all(|v| *v > ABOVE), "{at}");
        } else {
            assert!(!samples.is_empty(), "{at}");
            assert!(samples.iter().any(|v| *v > ABOVE), "{at}");
        }
    }
}

/// Checks that the ladder stays `state` at `rung` for `hold` (no rung taken meanwhile:
/// history keeps `entries` ladder entries), and returns its last status.
pub fn holds(rig: &Rig, hold: Duration, state: &str, rung: Option<u64>, entries: usize) -> Value {
    let until = Instant::now() + hold;
    let mut last;
    loop {
        last = rig.ladder();
        assert!(
            last["state"] == state && last["rung"] == json!(rung),
            "{}: the ladder left {state} at rung {rung:?}: {last}\nthe node's stderr:\n{}",
            rig.name,
            rig.log()
        );
        if Instant::now() >= until {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        rig.ladder_entries().len(),
        entries,
        "{}: no rung taken while {state}: {}",
        rig.name,
        rig.log()
    );
    last
}
