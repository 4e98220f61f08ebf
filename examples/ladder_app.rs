//! A tiny application for the ladder to watch: it serves `/metrics` in Prometheus's text format,
//! and its error ratio is high while a condition on the node holds, low otherwise.
//!
//! ```sh
//! cargo run --example ladder_app -- --listen 127.0.0.1:9300 \
//!     --node http://127.0.0.1:8080 --bad-while flag:new_checkout \
//!     --error-ratio-bad 0.5 --error-ratio-good 0.01
//! ```
//!
//! It prints `ladder_app listening on http://ADDR` on stdout once it serves (`--listen` port 0
//! picks a free one), then runs until killed. Conditions (`--bad-while`):
//! - `flag:NAME`: the flag is on, read through OFREP
//!   (`POST {ofrep}/ofrep/v1/evaluate/flags/NAME`; `--ofrep` defaults to `--node`);
//! - `live:ENV`: the node's live environment is ENV;
//! - `schema_above:N`: the node's schema version is above N;
//! - `always`, `never`.
//!
//! The last two are read from `GET {node}/v1/status` with a viewer token, taken from the
//! environment variable `--token-env` names (`LADDER_APP_TOKEN` by default). The node is read
//! every `--poll-ms`; when it cannot be read, the last known condition holds (none at first:
//! good) and `app_condition_known` is 0. Metrics:
//! - `app_error_ratio` (gauge): the share of requests answered 500 now;
//! - `app_requests_total{code="200"|"500"}` (counters): simulated traffic of `--rps` requests a
//!   second, split by that ratio;
//! - `app_bad_condition` (gauge): 1 while the condition holds;
//! - `app_condition_known` (gauge): 1 when the last read of the node succeeded.

use clap::Parser;
use serde::Deserialize;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What makes the application fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The flag is on.
    Flag(String),
    /// The live environment is this one.
    Live(String),
    /// The schema version is above this.
    SchemaAbove(i64),
    /// Always bad.
    Always,
    /// Never bad.
    Never,
}

impl std::str::FromStr for Condition {
    type Err = String;

    fn from_str(text: &str) -> Result<Condition, String> {
        match text.split_once(':') {
            Some(("flag", name)) if !name.is_empty() => Ok(Condition::Flag(name.to_owned())),
            Some(("live", env)) if !env.is_empty() => Ok(Condition::Live(env.to_owned())),
            Some(("schema_above", n)) => n
                .parse()
                .map(Condition::SchemaAbove)
                .map_err(|_| format!("schema_above:{n}: not a whole number")),
            None if text == "always" => Ok(Condition::Always),
            None if text == "never" => Ok(Condition::Never),
            _ => Err(format!(
                "{text:?}: expected flag:NAME, live:ENV, schema_above:N, always or never"
            )),
        }
    }
}

/// The command line.
#[derive(Debug, Clone, Parser)]
#[command(about = "An application whose error ratio follows a condition on the rollback node")]
pub struct Args {
    /// Where to serve `/metrics` (port 0 picks one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The node's HTTP base URL (its `--listen`), for `/v1/status` and, by default, OFREP.
    #[arg(long)]
    pub node: Option<String>,
    /// The OFREP base URL, when it is not the node's (`--ofrep ADDR` on the node).
    #[arg(long)]
    pub ofrep: Option<String>,
    /// What makes the application fail: flag:NAME, live:ENV, schema_above:N, always, never.
    #[arg(long)]
    pub bad_while: Condition,
    /// The error ratio while the condition holds.
    #[arg(long, default_value_t = 0.5)]
    pub error_ratio_bad: f64,
    /// The error ratio otherwise.
    #[arg(long, default_value_t = 0.01)]
    pub error_ratio_good: f64,
    /// Simulated requests a second.
    #[arg(long, default_value_t = 100.0)]
    pub rps: f64,
    /// How often the node is read, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub poll_ms: u64,
    /// The environment variable holding a viewer token for `/v1/status`.
    #[arg(long, default_value = "LADDER_APP_TOKEN")]
    pub token_env: String,
    /// The token itself (not on the command line: from `--token-env`, or set by a caller).
    #[arg(skip)]
    pub token: Option<String>,
}

/// What the application knows now.
#[derive(Debug, Default)]
struct Now {
    bad: bool,
    known: bool,
    ok: f64,
    errors: f64,
    problem: Option<String>,
}

/// A running application. Dropping it stops it.
pub struct Running {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    /// Where it serves `/metrics`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving, polling and counting, and waits for its threads.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Starts the application: binds `--listen`, reads the node every `--poll-ms`, counts traffic.
///
/// # Errors
/// The address cannot be bound, or a condition needs a URL that was not given.
pub fn start(args: Args) -> io::Result<Running> {
    let needs_node = matches!(
        args.bad_while,
        Condition::Live(_) | Condition::SchemaAbove(_)
    );
    let needs_ofrep = matches!(args.bad_while, Condition::Flag(_));
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
    if needs_node && args.node.is_none() {
        return Err(invalid("--bad-while live:/schema_above: needs --node URL"));
    }
    if needs_ofrep && args.node.is_none() && args.ofrep.is_none() {
        return Err(invalid("--bad-while flag: needs --node URL or --ofrep URL"));
    }
    for ratio in [args.error_ratio_bad, args.error_ratio_good] {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(invalid("an error ratio is between 0 and 1"));
        }
    }
    let listener = TcpListener::bind(args.listen)?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let now = Arc::new(Mutex::new(Now {
        known: matches!(args.bad_while, Condition::Always | Condition::Never),
        bad: args.bad_while == Condition::Always,
        ..Now::default()
    }));
    let args = Arc::new(args);
    let mut threads = Vec::new();

    let (n, s, a) = (Arc::clone(&now), Arc::clone(&stop), Arc::clone(&args));
    threads.push(std::thread::spawn(move || poll(&a, &n, &s)));
    let (n, s, a) = (Arc::clone(&now), Arc::clone(&stop), Arc::clone(&args));
    threads.push(std::thread::spawn(move || traffic(&a, &n, &s)));
    let (n, s, a) = (Arc::clone(&now), Arc::clone(&stop), Arc::clone(&args));
    threads.push(std::thread::spawn(move || {
        for stream in listener.incoming() {
            if s.load(Ordering::SeqCst) {
                return;
            }
            let Ok(stream) = stream else { continue };
            let (n, a) = (Arc::clone(&n), Arc::clone(&a));
            std::thread::spawn(move || {
                let _ = serve(stream, &a, &n);
            });
        }
    }));
    Ok(Running {
        addr,
        stop,
        threads,
    })
}

/// The error ratio now.
fn ratio(args: &Args, now: &Now) -> f64 {
    if now.bad {
        args.error_ratio_bad
    } else {
        args.error_ratio_good
    }
}

/// Adds the simulated requests every 100 ms.
fn traffic(args: &Args, now: &Mutex<Now>, stop: &AtomicBool) {
    let mut last = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        let elapsed = last.elapsed().as_secs_f64();
        last = Instant::now();
        let Ok(mut now) = now.lock() else { return };
        let requests = args.rps * elapsed;
        let share = ratio(args, &now);
        now.errors += requests * share;
        now.ok += requests * (1.0 - share);
    }
}

/// Reads the node every `--poll-ms`.
fn poll(args: &Args, now: &Mutex<Now>, stop: &AtomicBool) {
    if matches!(args.bad_while, Condition::Always | Condition::Never) {
        return;
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(1)))
        .build()
        .into();
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var(&args.token_env).ok());
    while !stop.load(Ordering::SeqCst) {
        let read = condition(&agent, args, token.as_deref());
        if let Ok(mut now) = now.lock() {
            match read {
                Ok(bad) => {
                    if now.problem.take().is_some() {
                        eprintln!("ladder_app: the node is read again");
                    }
                    now.bad = bad;
                    now.known = true;
                }
                Err(problem) => {
                    if now.problem.as_ref() != Some(&problem) {
                        eprintln!("ladder_app: cannot read the node: {problem}");
                    }
                    now.problem = Some(problem);
                    now.known = false;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(args.poll_ms.max(10)));
    }
}

/// An OFREP evaluation (the part read).
#[derive(Deserialize)]
struct Evaluation {
    value: bool,
}

/// A `status_ok` body (the part read).
#[derive(Deserialize)]
struct Status {
    schema_version: i64,
    live_environment: String,
}

/// Whether the condition holds now.
fn condition(agent: &ureq::Agent, args: &Args, token: Option<&str>) -> Result<bool, String> {
    let base = |url: &Option<String>| {
        url.as_deref()
            .unwrap_or("")
            .trim_end_matches('/')
            .to_owned()
    };
    match &args.bad_while {
        Condition::Always => Ok(true),
        Condition::Never => Ok(false),
        Condition::Flag(name) => {
            let ofrep = base(if args.ofrep.is_some() {
                &args.ofrep
            } else {
                &args.node
            });
            let key =
                percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
            let url = format!("{ofrep}/ofrep/v1/evaluate/flags/{key}");
            let evaluation: Evaluation = read_json(
                agent
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .send(r#"{"context":{}}"#),
            )?;
            Ok(evaluation.value)
        }
        Condition::Live(_) | Condition::SchemaAbove(_) => {
            let url = format!("{}/v1/status", base(&args.node));
            let mut request = agent.get(&url);
            if let Some(token) = token {
                request = request.header("Authorization", &format!("Bearer {token}"));
            }
            let status: Status = read_json(request.call())?;
            Ok(match &args.bad_while {
                Condition::Live(env) => status.live_environment == *env,
                Condition::SchemaAbove(n) => status.schema_version > *n,
                _ => false,
            })
        }
    }
}

/// A 200's JSON body as `T`.
fn read_json<T: serde::de::DeserializeOwned>(
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<T, String> {
    let mut response = response.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_vec()
        .map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("unexpected body: {e}"))
}

/// The metrics text.
fn metrics(args: &Args, now: &Now) -> String {
    let flag = |b: bool| u8::from(b);
    format!(
        "# HELP app_error_ratio The share of requests answered 500 now.\n\
         # TYPE app_error_ratio gauge\n\
         app_error_ratio {}\n\
         # HELP app_requests_total Requests answered, by status code.\n\
         # TYPE app_requests_total counter\n\
         app_requests_total{{code=\"200\"}} {}\n\
         app_requests_total{{code=\"500\"}} {}\n\
         # HELP app_bad_condition 1 while the condition that makes the application fail holds.\n\
         # TYPE app_bad_condition gauge\n\
         app_bad_condition {}\n\
         # HELP app_condition_known 1 when the last read of the node succeeded.\n\
         # TYPE app_condition_known gauge\n\
         app_condition_known {}\n",
        ratio(args, now),
        now.ok,
        now.errors,
        flag(now.bad),
        flag(now.known),
    )
}

/// Answers one request on a connection: `GET /metrics`, else 404.
fn serve(stream: TcpStream, args: &Args, now: &Mutex<Now>) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?).take(16 * 1024);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let path = first.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if path == "/metrics" || path.starts_with("/metrics?") {
        let text = now
            .lock()
            .map(|now| metrics(args, &now))
            .unwrap_or_default();
        ("200 OK", text)
    } else {
        (
            "404 Not Found",
            "not found; the metrics are at /metrics\n".to_owned(),
        )
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn main() {
    let args = Args::parse();
    match start(args) {
        Ok(running) => {
            println!("ladder_app listening on http://{}", running.addr());
            let _ = io::stdout().flush();
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("ladder_app: {e}");
            std::process::exit(2);
        }
    }
}
