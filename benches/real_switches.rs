//! `cargo bench --bench real_switches`: the real executors, measured (no assertions on time).
//!
//! - a flag change made durable in the flagd file (p50/p99 over 200 changes);
//! - how long until a real client sees it: the Python flagd provider in file mode, and the Python
//!   OFREP provider against the node's OFREP server;
//! - switch_traffic round trips against a real HAProxy under keep-alive load (p50/p99 over 50
//!   switches, in each of `REAL_SWITCHES_RUNS` runs, 5 by default), with the requests served and
//!   failed meanwhile, beside five bare runtime-API commands as the floor; the worst run's p99
//!   against the 5 ms goal. `REAL_SWITCHES_ONLY=haproxy` runs this part alone.
//!
//! Needs python3 (a venv with the OpenFeature packages is built under the target directory) and
//! haproxy (installed with apt-get when missing and running as root).

#[path = "../tests/support/haproxy.rs"]
mod haproxy_support;
#[path = "../tests/support/pyclient.rs"]
mod pyclient;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rollback_node::core::effects::Completion;
use rollback_node::exec::flagd::FlagFile;
use rollback_node::exec::haproxy::Haproxy;
use rollback_node::runtime::flags::FlagsView;
use rollback_node::service::ofrep::OfrepServer;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name:<48} n={:<4} p50={:>9.3} ms  p99={:>9.3} ms  max={:>9.3} ms",
        samples.len(),
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3,
    );
}

fn flag_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flags.json");
    let initial: BTreeMap<String, bool> = (0..20).map(|i| (format!("flag_{i}"), true)).collect();
    let file = FlagFile::open(&path, &initial).unwrap();
    let samples = (0..200)
        .map(|i| file.set("flag_7", i % 2 == 1).unwrap().duration)
        .collect();
    summary("flag change -> durable flagd file", samples);

    let client =
        pyclient::PyClient::spawn("flagd-file", path.to_str().unwrap(), "flag_7", "watch", 10);
    let mut samples = Vec::new();
    for i in 0..10 {
        let enabled = i % 2 == 1;
        let start = Instant::now();
        file.set("flag_7", enabled).unwrap();
        let (value, _) = client.change(Duration::from_secs(10));
        assert_eq!(value, enabled);
        samples.push(start.elapsed());
    }
    summary("flag change -> Python flagd file-mode client", samples);
    println!("  (the provider polls the file's mtime every 10 ms here; its default is 500 ms)");
}

fn ofrep() {
    let view = FlagsView::new(BTreeMap::from([("new_checkout".to_owned(), true)]));
    let server = OfrepServer::start("127.0.0.1:0".parse().unwrap(), view.clone()).unwrap();
    let url = format!("http://{}", server.local_addr());
    let mut client = pyclient::PyClient::spawn("ofrep", &url, "new_checkout", "step", 0);
    let mut samples = Vec::new();
    for i in 0..20 {
        let enabled = i % 2 == 1;
        let start = Instant::now();
        view.publish(BTreeMap::from([("new_checkout".to_owned(), enabled)]));
        let (value, _, _) = client.step();
        assert_eq!(value, enabled, "the next evaluation sees the publish");
        samples.push(start.elapsed());
    }
    summary("publish -> Python OFREP client's next evaluation", samples);
}

/// `REAL_SWITCHES_ONLY=haproxy` runs the HAProxy part alone.
const ONLY_ENV: &str = "REAL_SWITCHES_ONLY";

/// How many times the HAProxy part runs (`REAL_SWITCHES_RUNS`, 5 by default), each with a fresh
/// HAProxy and load.
const RUNS_ENV: &str = "REAL_SWITCHES_RUNS";

/// The goal for a switch's p99.
const SWITCH_GOAL: Duration = Duration::from_millis(5);

/// One run: 50 switches under keep-alive load, then, as the floor, 50 times five bare
/// `show servers state` commands (what a switch sends, in number, read to HAProxy's close).
/// Returns the switches' and the floor's samples.
fn haproxy_run() -> (Vec<Duration>, Vec<Duration>) {
    let blue = haproxy_support::ColourServer::start("blue");
    let green = haproxy_support::ColourServer::start("green");
    let proc = haproxy_support::HaproxyProc::start(blue.port, green.port);
    let mut hx = Haproxy::connect(&proc.admin, "app").unwrap();
    let load = haproxy_support::Load::start(
        proc.frontend,
        4,
        200_000,
        Duration::from_secs(60),
        Duration::from_micros(200),
    );
    std::thread::sleep(Duration::from_millis(200));
    let mut from = hx.live().unwrap();
    let mut samples = Vec::new();
    for _ in 0..50 {
        let to = from.other();
        let start = Instant::now();
        match haproxy_support::switch(&mut hx, from, to) {
            Completion::Done(_) => samples.push(start.elapsed()),
            Completion::Failed(failure) => {
                panic!("switch {from} -> {to} failed: {}", failure.error)
            }
        }
        std::thread::sleep(Duration::from_millis(20));
        from = to;
    }
    let mut floor = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        for _ in 0..5 {
            proc.raw("show servers state app").unwrap();
        }
        floor.push(start.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    let requests = load.finish();
    let failed = requests.iter().filter(|r| r.status != 200).count();
    println!(
        "  requests during the switches: {} served, {failed} failed or not 200",
        requests.len()
    );
    assert_eq!(failed, 0, "a request failed during the switches");
    assert_eq!(hx.live().unwrap(), from);
    (samples, floor)
}

fn haproxy() {
    let runs = std::env::var(RUNS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5usize)
        .max(1);
    let mut worst = Duration::ZERO;
    let mut all = Vec::new();
    for run in 1..=runs {
        println!("HAProxy run {run}/{runs}:");
        let (mut samples, floor) = haproxy_run();
        summary("switch_traffic round trip (real HAProxy)", samples.clone());
        summary("floor: 5 bare `show servers state` commands", floor);
        samples.sort();
        worst = worst.max(percentile(&samples, 0.99));
        all.extend(samples);
    }
    summary("switch_traffic, all runs", all);
    println!(
        "switch_traffic worst run's p99 {:.3} ms (goal < {} ms in every run): {}",
        worst.as_secs_f64() * 1e3,
        SWITCH_GOAL.as_millis(),
        if worst < SWITCH_GOAL {
            "met"
        } else {
            "NOT met"
        }
    );
}

fn main() {
    // `cargo test --benches` runs this too: keep it to the cheap part there.
    if std::env::args().any(|a| a == "--bench") {
        if std::env::var(ONLY_ENV).as_deref() != Ok("haproxy") {
            flag_file();
            ofrep();
        }
        haproxy();
    } else {
        println!("real_switches: run with `cargo bench --bench real_switches`");
    }
}
