//! `cargo bench --bench real_switches`: the real executors, measured (no assertions on time).
//!
//! - a flag change made durable in the flagd file (p50/p99 over 200 changes);
//! - how long until a real client sees it: the Python flagd provider in file mode, and the Python
//!   OFREP provider against the node's OFREP server;
//! - switch_traffic round trips against a real HAProxy under keep-alive load (p50/p99 over 50
//!   switches), with the requests served and failed meanwhile.
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

fn haproxy() {
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
    let requests = load.finish();
    let failed = requests.iter().filter(|r| r.status != 200).count();
    summary("switch_traffic round trip (real HAProxy)", samples);
    println!(
        "  requests during the switches: {} served, {failed} failed or not 200",
        requests.len()
    );
    assert_eq!(hx.live().unwrap(), from);
}

fn main() {
    // `cargo test --benches` runs this too: keep it to the cheap part there.
    if std::env::args().any(|a| a == "--bench") {
        flag_file();
        ofrep();
        haproxy();
    } else {
        println!("real_switches: run with `cargo bench --bench real_switches`");
    }
}
