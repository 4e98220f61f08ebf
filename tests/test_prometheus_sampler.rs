//! The Prometheus sampler against a fake HTTP server (every no-data case: slow, HTML, huge,
//! several series, empty, NaN, a query error, 500, refused), the sampler worker's rounds and its
//! stop, and against a real Prometheus scraping the ladder's test application, whose error
//! ratio follows the node's state.

#[path = "../examples/ladder_app.rs"]
#[allow(dead_code)]
mod ladder_app;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/service.rs"]
mod service;

use rollback_node::exec::prometheus::{NoData, Prometheus, Sampler, SamplerConfig, MAX_BODY};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the fake server does with a request.
enum Reply {
    /// A whole answer.
    Full {
        status: u16,
        content_type: &'static str,
        body: Vec<u8>,
    },
    /// Waits, then answers.
    After(Duration, Box<Reply>),
    /// Headers at once, then one byte of the body every 100 ms.
    Trickle,
    /// A 200 with a body of this many bytes, streamed until the client goes away.
    Huge(usize),
}

fn json(body: &str) -> Reply {
    Reply::Full {
        status: 200,
        content_type: "application/json",
        body: body.as_bytes().to_vec(),
    }
}

fn vector(values: &[&str]) -> String {
    let series: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!(r#"{{"metric":{{"pod":"p{i}"}},"value":[1700000000.1,"{v}"]}}"#))
        .collect();
    format!(
        r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
        series.join(",")
    )
}

/// A fake Prometheus: one thread per connection, one request each; it records each request's
/// target and counts the body bytes it wrote.
struct Fake {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    written: Arc<AtomicUsize>,
}

impl Fake {
    fn start(reply: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let written = Arc::new(AtomicUsize::new(0));
        let reply = Arc::new(reply);
        let (seen, count) = (Arc::clone(&requests), Arc::clone(&written));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (reply, seen, count) =
                    (Arc::clone(&reply), Arc::clone(&seen), Arc::clone(&count));
                std::thread::spawn(move || serve(stream, &*reply, &seen, &count));
            }
        });
        Fake {
            addr,
            requests,
            written,
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(
    stream: TcpStream,
    reply: &(dyn Fn(&str) -> Reply + Send + Sync),
    seen: &Mutex<Vec<String>>,
    written: &AtomicUsize,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => {}
        }
    }
    let target = first.split_whitespace().nth(1).unwrap_or("").to_owned();
    seen.lock().unwrap().push(target.clone());
    let query = target
        .split_once("query=")
        .map(|(_, q)| q.split('&').next().unwrap_or("").to_owned())
        .unwrap_or_default();
    answer(stream, reply(&query), written);
}

fn answer(mut stream: TcpStream, reply: Reply, written: &AtomicUsize) {
    match reply {
        Reply::Full {
            status,
            content_type,
            body,
        } => {
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
        Reply::After(wait, then) => {
            std::thread::sleep(wait);
            answer(stream, *then, written);
        }
        Reply::Trickle => {
            let body = vector(&["1"]);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            for byte in body.as_bytes() {
                if stream.write_all(&[*byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Reply::Huge(size) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes());
            // A JSON prefix, then a string that goes on and on.
            let mut chunk = vec![b'a'; 64 * 1024];
            let prefix = br#"{"status":"success","data":{"resultType":"string","result":[1,""#;
            chunk[..prefix.len()].copy_from_slice(prefix);
            let mut left = size;
            while left > 0 {
                let n = left.min(chunk.len());
                if stream.write_all(&chunk[..n]).is_err() {
                    return;
                }
                written.fetch_add(n, Ordering::SeqCst);
                left -= n;
                chunk[..prefix.len()].fill(b'a');
            }
        }
    }
}

fn client(base: &str, timeout_ms: u64) -> Prometheus {
    Prometheus::new(base, Duration::from_millis(timeout_ms)).unwrap()
}

/// The answer to `query` and how long it took.
fn timed(p: &Prometheus, query: &str) -> (Result<f64, NoData>, Duration) {
    let started = Instant::now();
    let got = p.query(query);
    (got, started.elapsed())
}

#[test]
fn one_series_is_a_value_and_the_query_arrives_percent_encoded() {
    let fake = Fake::start(|_| json(&vector(&["0.125"])));
    let p = client(&fake.base(), 1000);
    let query =
        r#"sum(rate(app_requests_total{code="500"}[5s])) / sum(rate(app_requests_total[5s]))"#;
    assert_eq!(p.query(query), Ok(0.125));
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let target = &requests[0];
    assert!(target.starts_with("/api/v1/query?query="), "{target}");
    let encoded = target["/api/v1/query?query=".len()..]
        .split('&')
        .next()
        .unwrap();
    assert!(
        !encoded.contains(['{', '}', '"', '[', ']', ' ', '/', '(', ')', '=']),
        "{encoded}"
    );
    let decoded = percent_decode(encoded);
    assert_eq!(decoded, query);
    assert!(target.ends_with("&timeout=1000ms"), "{target}");
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn empty_nan_several_series_are_no_data() {
    let fake = Fake::start(|query| match query {
        "empty" => json(&vector(&[])),
        "nan" => json(&vector(&["NaN"])),
        "several" => json(&vector(&["0.1", "0.2"])),
        "scalar" => {
            json(r#"{"status":"success","data":{"resultType":"scalar","result":[1,"3.5"]}}"#)
        }
        _ => json(&vector(&["+Inf"])),
    });
    let p = client(&fake.base(), 1000);
    assert_eq!(p.query("empty"), Err(NoData::Empty));
    assert_eq!(p.query("nan"), Err(NoData::NaN));
    assert_eq!(p.query("several"), Err(NoData::Several(2)));
    assert_eq!(p.query("scalar"), Ok(3.5));
    assert_eq!(p.query("inf"), Ok(f64::INFINITY));
}

#[test]
fn a_query_error_and_a_500_are_no_data_with_prometheus_reason() {
    let fake = Fake::start(|query| {
        match query {
        "bad" => Reply::Full {
            status: 400,
            content_type: "application/json",
            body: br#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:4: parse error: unexpected end of input"}"#.to_vec(),
        },
        _ => Reply::Full {
            status: 500,
            content_type: "text/plain",
            body: b"internal server error".to_vec(),
        },
    }
    });
    let p = client(&fake.base(), 1000);
    let error = p.query("bad").unwrap_err();
    assert_eq!(
        error,
        NoData::QueryError {
            error_type: "bad_data".into(),
            error: "invalid parameter \"query\": 1:4: parse error: unexpected end of input".into()
        }
    );
    assert!(
        error.to_string().starts_with("the query failed: bad_data:"),
        "{error}"
    );
    assert_eq!(p.query("other"), Err(NoData::Status(500)));
    assert_eq!(
        NoData::Status(500).to_string(),
        "Prometheus answered HTTP 500"
    );
}

#[test]
fn an_html_page_is_no_data_that_says_what_came() {
    let fake = Fake::start(|_| Reply::Full {
        status: 200,
        content_type: "text/html",
        body: b"<!DOCTYPE html><html><head><title>Sign in</title></head></html>".to_vec(),
    });
    let got = client(&fake.base(), 1000).query("up").unwrap_err();
    assert_eq!(got.kind(), "not_json");
    assert!(got.to_string().contains("<!DOCTYPE html>"), "{got}");
}

#[test]
fn a_slow_answer_is_a_timeout_within_the_bound() {
    let fake = Fake::start(|query| match query {
        "trickle" => Reply::Trickle,
        _ => Reply::After(Duration::from_secs(5), Box::new(json(&vector(&["1"])))),
    });
    let p = client(&fake.base(), 300);
    for query in ["slow", "trickle"] {
        let (got, took) = timed(&p, query);
        assert_eq!(
            got,
            Err(NoData::Timeout(Duration::from_millis(300))),
            "{query}"
        );
        assert!(took >= Duration::from_millis(290), "{query}: {took:?}");
        assert!(took < Duration::from_millis(1000), "{query}: {took:?}");
    }
    assert_eq!(
        NoData::Timeout(Duration::from_millis(300)).to_string(),
        "Prometheus did not answer within 300 ms"
    );
}

#[test]
fn a_huge_body_is_cut_off_at_the_bound_quickly() {
    let size = 50 * 1024 * 1024;
    let fake = Fake::start(move |_| Reply::Huge(size));
    let p = client(&fake.base(), 10_000);
    let (got, took) = timed(&p, "huge");
    assert_eq!(got, Err(NoData::TooLarge(MAX_BODY)));
    assert_eq!(
        got.unwrap_err().to_string(),
        "the answer is larger than 64 KiB"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    // The client stopped reading and hung up: the server could not write the 50 MB (what it
    // wrote is at most the bound plus what the sockets' buffers took).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = usize::MAX;
    while Instant::now() < deadline {
        let now = fake.written.load(Ordering::SeqCst);
        if now == last {
            break;
        }
        last = now;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(last < 16 * 1024 * 1024, "the server wrote {last} bytes");
}

#[test]
fn a_refused_connection_is_unreachable_at_once() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let p = client(&format!("http://127.0.0.1:{port}"), 2000);
    let (got, took) = timed(&p, "up");
    assert_eq!(got, Err(NoData::Unreachable("connection refused".into())));
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert_eq!(
        got.unwrap_err().to_string(),
        "Prometheus is unreachable: connection refused"
    );
}

#[test]
fn the_sampler_delivers_every_signal_each_interval_in_order_and_stops() {
    let fake = Fake::start(|query| match query {
        "fast" => json(&vector(&["0.5"])),
        "empty" => json(&vector(&[])),
        _ => Reply::After(Duration::from_secs(3), Box::new(json(&vector(&["1"])))),
    });
    let config = SamplerConfig {
        base: fake.base(),
        signals: vec![
            ("errors".into(), "fast".into()),
            ("latency".into(), "slow".into()),
            ("gone".into(), "empty".into()),
        ],
        interval: Duration::from_millis(400),
        timeout: Some(Duration::from_millis(250)),
    };
    let started = Instant::now();
    let (sampler, rounds) = Sampler::channel(config).unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            rounds
                .recv_timeout(Duration::from_secs(3))
                .expect("a round"),
        );
    }
    let took = started.elapsed();
    sampler.stop();
    // Three rounds: at 0, 400 and 800 ms, each about one time-out long.
    assert!(took >= Duration::from_millis(800), "{took:?}");
    assert!(took < Duration::from_millis(1600), "{took:?}");
    for round in &got {
        let names: Vec<&str> = round.values.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["errors", "latency", "gone"]);
        assert_eq!(round.values[0].1, Ok(0.5));
        assert_eq!(
            round.values[1].1,
            Err(NoData::Timeout(Duration::from_millis(250)))
        );
        assert_eq!(round.values[2].1, Err(NoData::Empty));
    }
    let gaps: Vec<u64> = got
        .windows(2)
        .map(|w| w[1].at_millis - w[0].at_millis)
        .collect();
    for gap in gaps {
        assert!((300..=600).contains(&gap), "{gap} ms between rounds");
    }
    // Stopped: nothing more arrives, the channel is closed.
    let before = fake.requests().len();
    assert!(rounds.recv_timeout(Duration::from_millis(900)).is_err());
    assert_eq!(fake.requests().len(), before, "no query after stop");
}

#[test]
fn the_sampler_stops_when_its_receiver_or_itself_is_dropped_and_refuses_a_bad_start() {
    let fake = Fake::start(|_| json(&vector(&["1"])));
    let config = |interval| SamplerConfig {
        base: fake.base(),
        signals: vec![("one".into(), "q".into())],
        interval,
        timeout: None,
    };
    // The receiver dropped: the worker ends after its next round.
    let (sampler, rounds) = Sampler::channel(config(Duration::from_millis(100))).unwrap();
    rounds.recv_timeout(Duration::from_secs(2)).unwrap();
    drop(rounds);
    std::thread::sleep(Duration::from_millis(400));
    let settled = fake.requests().len();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(fake.requests().len(), settled);
    drop(sampler);

    // The sampler dropped: nothing more is delivered.
    let (sampler, rounds) = Sampler::channel(config(Duration::from_millis(100))).unwrap();
    rounds.recv_timeout(Duration::from_secs(2)).unwrap();
    drop(sampler);
    let late: Vec<_> =
        std::iter::from_fn(|| rounds.recv_timeout(Duration::from_millis(500)).ok()).collect();
    assert!(late.len() <= 1, "{} rounds after the drop", late.len());

    assert!(Sampler::channel(config(Duration::ZERO)).is_err());
    let mut bad = config(Duration::from_secs(1));
    bad.base = "https://prometheus:9090".into();
    let error = Sampler::channel(bad).unwrap_err().to_string();
    assert!(error.contains("https is not supported"), "{error}");
}

#[test]
fn a_sampler_against_nothing_delivers_no_data_and_keeps_going() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = SamplerConfig {
        base: format!("http://127.0.0.1:{port}"),
        signals: vec![("a".into(), "up".into()), ("b".into(), "up".into())],
        interval: Duration::from_millis(100),
        timeout: None,
    };
    let (sampler, rounds) = Sampler::channel(config).unwrap();
    for _ in 0..3 {
        let round = rounds.recv_timeout(Duration::from_secs(2)).unwrap();
        for (_, value) in &round.values {
            assert_eq!(value.as_ref().unwrap_err().kind(), "unreachable");
        }
    }
    sampler.stop();
}

// ---- The test application, and a real Prometheus scraping it ----

/// The application with these arguments (after the program name), a viewer token set.
fn app(args: &[&str]) -> ladder_app::Running {
    app_with(args, Some(service::VIEWER))
}

/// The application with these arguments and `token` (else the one `--token-env` names).
fn app_with(args: &[&str], token: Option<&str>) -> ladder_app::Running {
    let mut argv = vec!["ladder_app", "--listen", "127.0.0.1:0", "--poll-ms", "100"];
    argv.extend_from_slice(args);
    let mut args = <ladder_app::Args as clap::Parser>::try_parse_from(argv).unwrap();
    args.token = token.map(str::to_owned);
    ladder_app::start(args).unwrap()
}

/// One metric's value in the application's own `/metrics`.
fn scraped(app: &ladder_app::Running, metric: &str) -> f64 {
    let (status, body) = prometheus::get(app.addr(), "/metrics").expect("the app answers");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("{metric} ")))
        .unwrap_or_else(|| panic!("no {metric} in:\n{body}"))
        .parse()
        .unwrap()
}

/// Waits until the application's own `metric` is `value` (it reads the node every 100 ms).
fn app_shows(app: &ladder_app::Running, metric: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while scraped(app, metric) != value {
        assert!(
            Instant::now() < deadline,
            "{metric} is {}, not {value}",
            scraped(app, metric)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is(value: f64) -> impl Fn(&Result<f64, NoData>) -> bool {
    move |got| *got == Ok(value)
}

const SCRAPED: Duration = Duration::from_secs(20);

#[test]
fn the_app_reads_each_condition_from_the_node_and_says_when_it_cannot() {
    let node = service::Node::start(&[]);
    let url = format!("http://{}", node.addr);
    let flag = app(&["--node", &url, "--bad-while", "flag:new_checkout"]);
    let live = app(&[
        "--node",
        &url,
        "--bad-while",
        "live:green",
        "--error-ratio-bad",
        "0.9",
    ]);
    let schema = app(&["--node", &url, "--bad-while", "schema_above:2"]);
    let blind = app_with(
        &[
            "--node",
            &url,
            "--bad-while",
            "live:green",
            "--token-env",
            "NO_SUCH_VAR",
        ],
        None,
    );
    for running in [&flag, &live, &schema] {
        app_shows(running, "app_condition_known", 1.0);
        app_shows(running, "app_bad_condition", 1.0);
    }
    assert_eq!(scraped(&flag, "app_error_ratio"), 0.5);
    assert_eq!(scraped(&live, "app_error_ratio"), 0.9);

    let reply = node.post(
        service::OPERATOR,
        r#"{"type":"disable_feature","msg_id":1,"feature":"new_checkout"}"#,
    );
    assert!(reply.body.contains("feature_disabled"), "{}", reply.body);
    app_shows(&flag, "app_bad_condition", 0.0);
    assert_eq!(scraped(&flag, "app_error_ratio"), 0.01);
    assert_eq!(
        scraped(&live, "app_bad_condition"),
        1.0,
        "another condition"
    );

    let reply = node.post(
        service::OPERATOR,
        r#"{"type":"switch_traffic","msg_id":2,"from":"green","to":"blue"}"#,
    );
    assert!(reply.body.contains("traffic_switched"), "{}", reply.body);
    app_shows(&live, "app_bad_condition", 0.0);
    assert_eq!(scraped(&schema, "app_bad_condition"), 1.0);

    let reply = node.post(
        service::ADMIN,
        r#"{"type":"rollback","msg_id":3,"version":2}"#,
    );
    assert!(reply.body.contains("rollback_complete"), "{}", reply.body);
    app_shows(&schema, "app_bad_condition", 0.0);
    assert_eq!(scraped(&schema, "app_error_ratio"), 0.01);

    // Without a token the status is 401: the condition is unknown, the ratio the good one.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(scraped(&blind, "app_condition_known"), 0.0);
    assert_eq!(scraped(&blind, "app_error_ratio"), 0.01);
    // The node gone: unknown, the last known condition holds.
    drop(node);
    app_shows(&flag, "app_condition_known", 0.0);
    assert_eq!(scraped(&flag, "app_bad_condition"), 0.0);
    // The counters count: about 100 requests a second, split by the ratio.
    let total = scraped(&flag, "app_requests_total{code=\"200\"}")
        + scraped(&flag, "app_requests_total{code=\"500\"}");
    assert!(total > 50.0, "{total}");
    assert!(scraped(&flag, "app_requests_total{code=\"500\"}") > 0.0);
}

#[test]
fn a_real_prometheus_sees_the_error_ratio_follow_the_flag() {
    let node = service::Node::start(&[]);
    let url = format!("http://{}", node.addr);
    let running = app(&["--node", &url, "--bad-while", "flag:new_checkout"]);
    let prom = prometheus::shared();
    prom.add_target(running.addr(), "flag");
    let gauge = r#"app_error_ratio{app="flag"}"#;
    let rate = r#"sum(rate(app_requests_total{app="flag",code="500"}[5s])) / sum(rate(app_requests_total{app="flag"}[5s]))"#;
    prom.wait_for(gauge, SCRAPED, is(0.5));
    prom.wait_for(
        rate,
        SCRAPED,
        |got| matches!(got, Ok(v) if (v - 0.5).abs() < 0.05),
    );

    // The sampler, against the real API: a value, and each kind of no data.
    let config = SamplerConfig {
        base: prom.base(),
        signals: vec![
            ("ratio".into(), gauge.into()),
            (
                "nothing".into(),
                r#"app_error_ratio{app="no-such-app"}"#.into(),
            ),
            ("two".into(), r#"app_requests_total{app="flag"}"#.into()),
            ("nan".into(), "vector(0) / 0".into()),
            ("broken".into(), "sum(".into()),
            ("scalar".into(), "scalar(vector(3))".into()),
        ],
        interval: Duration::from_millis(500),
        timeout: None,
    };
    let (sampler, rounds) = Sampler::channel(config).unwrap();
    let round = rounds.recv_timeout(Duration::from_secs(5)).unwrap();
    sampler.stop();
    let value = |name: &str| {
        round
            .values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(value("ratio"), Ok(0.5));
    assert_eq!(value("nothing"), Err(NoData::Empty));
    assert_eq!(value("two"), Err(NoData::Several(2)));
    assert_eq!(value("nan"), Err(NoData::NaN));
    let broken = value("broken").unwrap_err();
    assert!(
        matches!(&broken, NoData::QueryError { error_type, .. } if error_type == "bad_data"),
        "{broken:?}"
    );
    assert_eq!(value("scalar"), Ok(3.0));

    // The kill switch: the ratio falls to the good one, in the gauge and in the rate.
    let reply = node.post(
        service::OPERATOR,
        r#"{"type":"disable_feature","msg_id":1,"feature":"new_checkout"}"#,
    );
    assert!(reply.body.contains("feature_disabled"), "{}", reply.body);
    prom.wait_for(gauge, SCRAPED, is(0.01));
    prom.wait_for(
        rate,
        SCRAPED,
        |got| matches!(got, Ok(v) if (v - 0.01).abs() < 0.005),
    );
    // And back.
    let reply = node.post(
        service::OPERATOR,
        r#"{"type":"enable_feature","msg_id":2,"feature":"new_checkout"}"#,
    );
    assert!(reply.body.contains("feature_enabled"), "{}", reply.body);
    prom.wait_for(gauge, SCRAPED, is(0.5));

    // The application gone: its series go stale, the query has no data.
    running.stop();
    prom.wait_for(gauge, SCRAPED, |got| *got == Err(NoData::Empty));
}

#[test]
fn a_real_prometheus_follows_live_and_schema_and_a_stopped_one_is_unreachable() {
    let node = service::Node::start(&[]);
    let url = format!("http://{}", node.addr);
    let live = app(&[
        "--node",
        &url,
        "--bad-while",
        "live:green",
        "--error-ratio-bad",
        "0.3",
    ]);
    let schema = app(&[
        "--node",
        &url,
        "--bad-while",
        "schema_above:2",
        "--error-ratio-good",
        "0",
    ]);
    let mut prom = prometheus::PromServer::start();
    prom.add_target(live.addr(), "live");
    prom.add_target(schema.addr(), "schema");
    let live_q = r#"app_error_ratio{app="live"}"#;
    let schema_q = r#"app_error_ratio{app="schema"}"#;
    prom.wait_for(live_q, SCRAPED, is(0.3));
    prom.wait_for(schema_q, SCRAPED, is(0.5));
    prom.wait_for("max(app_error_ratio)", SCRAPED, is(0.5));

    let reply = node.post(
        service::OPERATOR,
        r#"{"type":"switch_traffic","msg_id":1,"from":"green","to":"blue"}"#,
    );
    assert!(reply.body.contains("traffic_switched"), "{}", reply.body);
    prom.wait_for(live_q, SCRAPED, is(0.01));
    assert_eq!(prom.client().query(schema_q), Ok(0.5));
    let reply = node.post(
        service::ADMIN,
        r#"{"type":"rollback","msg_id":2,"version":2}"#,
    );
    assert!(reply.body.contains("rollback_complete"), "{}", reply.body);
    prom.wait_for(schema_q, SCRAPED, is(0.0));

    // Prometheus killed: the same query is unreachable, at once.
    let client = prom.client();
    prom.stop();
    let started = Instant::now();
    assert_eq!(
        client.query(live_q),
        Err(NoData::Unreachable("connection refused".into()))
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}
