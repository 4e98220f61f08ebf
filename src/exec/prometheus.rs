//! Sampling health signals from Prometheus: PromQL instant queries against its HTTP API
//! (`GET {base}/api/v1/query?query=…`), each answer one number or [`NoData`] saying why not.
//!
//! [`Prometheus`] asks one query at a time; [`Sampler`] asks every signal once an interval on its
//! own thread and hands each round ([`Samples`]) to a callback or a channel. Both use plain types
//! only (names, queries, numbers), so that the ladder's pure core decides what a sample means.
//!
//! What counts as no data (never a value): an empty vector, NaN, several series, a matrix or a
//! string, an HTTP status other than 2xx, a query error (`"status":"error"`), no answer within the
//! time-out, a connection that cannot be made, a body that is not the API's JSON, and a body over
//! [`MAX_BODY`] (read bounded: a larger one is cut off, never loaded). A scalar result is a value,
//! as is an infinity (it compares above any threshold).
//!
//! The client speaks plain HTTP (no TLS, no compression) straight to the base URL (no proxy from
//! the environment) and follows no redirects: Prometheus is reached inside the estate's network.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The largest answer read; a larger one is [`NoData::TooLarge`].
pub const MAX_BODY: usize = 64 * 1024;

/// The longest a query is given by default ([`default_timeout`]).
pub const MAX_DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest text of Prometheus's (or a body's) kept in a [`NoData`] reason.
const MAX_REASON: usize = 200;

/// What a query is given unless told: the interval, at most [`MAX_DEFAULT_TIMEOUT`].
pub fn default_timeout(interval: Duration) -> Duration {
    interval.min(MAX_DEFAULT_TIMEOUT)
}

/// Why a query gave no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoData {
    /// The query matched no series (an empty vector).
    Empty,
    /// The value is NaN.
    NaN,
    /// The query matched this many series; a signal is one.
    Several(usize),
    /// The result is of a type that is not one number: `matrix`, `string`, a histogram.
    ResultType(String),
    /// A sample's value is not a number.
    BadValue(String),
    /// Prometheus refused the query (`"status":"error"`), whatever the HTTP status.
    QueryError {
        /// Its `errorType`, such as `bad_data` or `timeout`.
        error_type: String,
        /// Its `error` text.
        error: String,
    },
    /// An HTTP status other than 2xx, without an API error in the body.
    Status(u16),
    /// No whole answer within this time-out.
    Timeout(Duration),
    /// No connection (refused, unknown host, reset…); the text says what.
    Unreachable(String),
    /// The body is larger than this many bytes.
    TooLarge(usize),
    /// The body is not the API's JSON; the text says what it is.
    NotJson(String),
}

impl NoData {
    /// A short fixed tag for the reason: `empty`, `nan`, `several_series`, `result_type`,
    /// `bad_value`, `query_error`, `http_status`, `timeout`, `unreachable`, `too_large`,
    /// `not_json`.
    pub fn kind(&self) -> &'static str {
        match self {
            NoData::Empty => "empty",
            NoData::NaN => "nan",
            NoData::Several(_) => "several_series",
            NoData::ResultType(_) => "result_type",
            NoData::BadValue(_) => "bad_value",
            NoData::QueryError { .. } => "query_error",
            NoData::Status(_) => "http_status",
            NoData::Timeout(_) => "timeout",
            NoData::Unreachable(_) => "unreachable",
            NoData::TooLarge(_) => "too_large",
            NoData::NotJson(_) => "not_json",
        }
    }
}

impl fmt::Display for NoData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoData::Empty => write!(f, "the query matched no series (an empty vector)"),
            NoData::NaN => write!(f, "the value is NaN"),
            NoData::Several(n) => write!(
                f,
                "the query matched {n} series, a signal must be one (aggregate it, e.g. with sum)"
            ),
            NoData::ResultType(t) => write!(f, "the result is a {t}, not one number"),
            NoData::BadValue(v) => write!(f, "the value {v:?} is not a number"),
            NoData::QueryError { error_type, error } => {
                write!(f, "the query failed: {error_type}: {error}")
            }
            NoData::Status(code) => write!(f, "Prometheus answered HTTP {code}"),
            NoData::Timeout(after) => {
                write!(
                    f,
                    "Prometheus did not answer within {} ms",
                    after.as_millis()
                )
            }
            NoData::Unreachable(why) => write!(f, "Prometheus is unreachable: {why}"),
            NoData::TooLarge(limit) => {
                write!(f, "the answer is larger than {} KiB", limit / 1024)
            }
            NoData::NotJson(what) => write!(f, "the answer is not Prometheus API JSON: {what}"),
        }
    }
}

impl std::error::Error for NoData {}

/// The API's answer to a query.
#[derive(Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum Answer {
    Success {
        data: Data,
    },
    Error {
        #[serde(rename = "errorType", default)]
        error_type: String,
        #[serde(default)]
        error: String,
    },
}

/// A query's result, by `resultType`.
#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum Data {
    Vector(Vec<Series>),
    Scalar(Point),
    Matrix(IgnoredAny),
    String(IgnoredAny),
}

/// One series of a vector (its labels are not read).
#[derive(Deserialize)]
struct Series {
    #[serde(default)]
    value: Option<Point>,
}

/// `[unix seconds, "value"]`.
#[derive(Deserialize)]
struct Point(#[allow(dead_code)] f64, String);

/// A text cut to [`MAX_REASON`] characters, on one line.
fn short(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let one_line = one_line.trim();
    match one_line.char_indices().nth(MAX_REASON) {
        Some((at, _)) => format!("{}…", &one_line[..at]),
        None => one_line.to_owned(),
    }
}

/// A number from a sample's value text (`"0.5"`, `"NaN"`, `"+Inf"`).
fn number(text: &str) -> Result<f64, NoData> {
    match text.parse::<f64>() {
        Ok(v) if v.is_nan() => Err(NoData::NaN),
        Ok(v) => Ok(v),
        Err(_) => Err(NoData::BadValue(short(text))),
    }
}

/// What an answer — its HTTP status and body — says: the query's one number, or why there is
/// none. Pure: the whole decision of what counts as a value.
pub fn interpret(status: u16, body: &[u8]) -> Result<f64, NoData> {
    let parsed = serde_json::from_slice::<Answer>(body);
    match parsed {
        Ok(Answer::Error { error_type, error }) => Err(NoData::QueryError {
            error_type: short(&error_type),
            error: short(&error),
        }),
        _ if !(200..300).contains(&status) => Err(NoData::Status(status)),
        Ok(Answer::Success { data }) => match data {
            Data::Scalar(Point(_, v)) => number(&v),
            Data::Vector(series) => match series.as_slice() {
                [] => Err(NoData::Empty),
                [one] => match &one.value {
                    Some(Point(_, v)) => number(v),
                    None => Err(NoData::ResultType("histogram".into())),
                },
                many => Err(NoData::Several(many.len())),
            },
            Data::Matrix(_) => Err(NoData::ResultType("matrix".into())),
            Data::String(_) => Err(NoData::ResultType("string".into())),
        },
        Err(e) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(MAX_REASON)]);
            let text = short(&text);
            Err(NoData::NotJson(if text.is_empty() {
                "an empty body".to_owned()
            } else if e.is_syntax() || e.is_eof() {
                format!("it begins {text:?}")
            } else {
                format!("{} (it begins {text:?})", short(&e.to_string()))
            }))
        }
    }
}

/// Characters a query parameter's value keeps as they are (RFC 3986 unreserved); every other byte
/// is percent-encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Checks a base URL (`http://host:port`, optionally with a path prefix) and returns it without
/// trailing slashes.
///
/// # Errors
/// It is not an `http://` URL with a host, or it has a query or a fragment; the text says why.
pub fn check_base(base: &str) -> Result<String, String> {
    let trimmed = base.trim_end_matches('/');
    let lower = trimmed.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(format!(
            "{base:?}: https is not supported; give Prometheus's plain http:// address"
        ));
    }
    if !lower.starts_with("http://") {
        return Err(format!(
            "{base:?} is not an http:// URL (such as http://127.0.0.1:9090)"
        ));
    }
    if trimmed.contains(['?', '#']) {
        return Err(format!(
            "{base:?} has a query or a fragment; give the base URL alone"
        ));
    }
    let uri: ureq::http::Uri = trimmed
        .parse()
        .map_err(|e| format!("{base:?} is not a URL: {e}"))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{base:?} has no host"));
    }
    Ok(trimmed.to_owned())
}

/// A Prometheus HTTP API: instant queries, each bounded by one time-out.
#[derive(Clone)]
pub struct Prometheus {
    base: String,
    timeout: Duration,
    agent: ureq::Agent,
}

impl fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prometheus")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Prometheus {
    /// The API at `base` ([`check_base`]); each query is given `timeout` in all, from connecting
    /// to the body's last byte.
    ///
    /// # Errors
    /// The base URL is not usable, or the time-out is zero; the text says why.
    pub fn new(base: &str, timeout: Duration) -> Result<Prometheus, String> {
        let base = check_base(base)?;
        if timeout.is_zero() {
            return Err("the query time-out is zero".into());
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout))
            .user_agent(concat!("rollback-node/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Prometheus {
            base,
            timeout,
            agent: ureq::Agent::new_with_config(config),
        })
    }

    /// The base URL, without trailing slashes.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The time-out of each query.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The URL that asks `promql`: `{base}/api/v1/query?query=…&timeout=…ms`, the query
    /// percent-encoded (Prometheus is also told the time-out, so that it gives up as well).
    pub fn query_url(&self, promql: &str) -> String {
        format!(
            "{}/api/v1/query?query={}&timeout={}ms",
            self.base,
            utf8_percent_encode(promql, QUERY_VALUE),
            self.timeout.as_millis().max(1)
        )
    }

    /// Asks `promql` now: its one number, or why there is none. Never panics, never waits much
    /// longer than the time-out, never reads more than [`MAX_BODY`] (+1) bytes of the body.
    pub fn query(&self, promql: &str) -> Result<f64, NoData> {
        let mut response = self
            .agent
            .get(self.query_url(promql))
            .header("Accept", "application/json")
            .call()
            .map_err(|e| self.no_data(e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY as u64)
            .read_to_vec()
            .map_err(|e| self.no_data(e))?;
        interpret(status, &body)
    }

    /// What a transport error means.
    fn no_data(&self, error: ureq::Error) -> NoData {
        match error {
            ureq::Error::Timeout(_) => NoData::Timeout(self.timeout),
            ureq::Error::BodyExceedsLimit(_) => NoData::TooLarge(MAX_BODY),
            ureq::Error::Io(e) => match e.kind() {
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                    NoData::Timeout(self.timeout)
                }
                io::ErrorKind::ConnectionRefused => {
                    NoData::Unreachable("connection refused".into())
                }
                _ => NoData::Unreachable(short(&e.to_string())),
            },
            ureq::Error::HostNotFound => NoData::Unreachable("host not found".into()),
            ureq::Error::LargeResponseHeader(..) => {
                NoData::NotJson("its headers are too large".into())
            }
            ureq::Error::Protocol(e) => {
                NoData::NotJson(format!("not HTTP: {}", short(&e.to_string())))
            }
            other => NoData::Unreachable(short(&other.to_string())),
        }
    }
}

/// What a [`Sampler`] samples.
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    /// Prometheus's base URL (the sampler appends `/api/v1/query`).
    pub base: String,
    /// The signals, `(name, PromQL query)`, in the order their values are delivered.
    pub signals: Vec<(String, String)>,
    /// How often every signal is asked.
    pub interval: Duration,
    /// Each query's time-out; `None`: [`default_timeout`] of the interval.
    pub timeout: Option<Duration>,
}

/// One round of samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    /// When the round began, in milliseconds since the Unix epoch.
    pub at_millis: u64,
    /// Each signal's value or why there is none, in the configured order.
    pub values: Vec<(String, Result<f64, NoData>)>,
}

/// Why a sampler did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The base URL or the time-out is not usable.
    #[error("prometheus: {0}")]
    Config(String),
    /// The interval is zero.
    #[error("the sampling interval is zero")]
    ZeroInterval,
    /// Its thread could not be started.
    #[error("cannot start the sampler's thread: {0}")]
    Spawn(io::Error),
}

/// Samples every signal once an interval on its own thread (the first round at once), the
/// signals of a round asked concurrently, so that a round takes at most about one time-out.
/// A round that ends after the next was due skips the missed ones (no burst). Stopped by
/// [`Sampler::stop`] (which waits for its thread) or by dropping it (which does not): either
/// way nothing is delivered once the stop is seen.
#[derive(Debug)]
pub struct Sampler {
    stop: Option<mpsc::Sender<()>>,
    stopped: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling; each round goes to `deliver`, which returns whether to go on.
    ///
    /// # Errors
    /// The configuration is not usable, or the thread cannot be started.
    pub fn start<F>(config: SamplerConfig, deliver: F) -> Result<Sampler, StartError>
    where
        F: FnMut(Samples) -> bool + Send + 'static,
    {
        if config.interval.is_zero() {
            return Err(StartError::ZeroInterval);
        }
        let timeout = config
            .timeout
            .unwrap_or_else(|| default_timeout(config.interval));
        let client = Prometheus::new(&config.base, timeout).map_err(StartError::Config)?;
        let (stop, stop_rx) = mpsc::channel();
        let stopped = Arc::new(AtomicBool::new(false));
        let seen = Arc::clone(&stopped);
        let worker = std::thread::Builder::new()
            .name("prometheus-sampler".into())
            .spawn(move || {
                run(
                    &client,
                    &config.signals,
                    config.interval,
                    &stop_rx,
                    &seen,
                    deliver,
                )
            })
            .map_err(StartError::Spawn)?;
        Ok(Sampler {
            stop: Some(stop),
            stopped,
            worker: Some(worker),
        })
    }

    /// Starts sampling into a channel; the sampler ends when the receiver is dropped.
    ///
    /// # Errors
    /// As [`Sampler::start`].
    pub fn channel(
        config: SamplerConfig,
    ) -> Result<(Sampler, mpsc::Receiver<Samples>), StartError> {
        let (tx, rx) = mpsc::channel();
        let sampler = Sampler::start(config, move |samples| tx.send(samples).is_ok())?;
        Ok((sampler, rx))
    }

    /// Stops sampling and waits for its thread (at most about one time-out, when a round is
    /// under way). Nothing is delivered after it returns.
    pub fn stop(mut self) {
        self.signal_stop();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }

    fn signal_stop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.stop.take();
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

/// Milliseconds since the Unix epoch.
fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The sampler's loop.
fn run<F>(
    client: &Prometheus,
    signals: &[(String, String)],
    interval: Duration,
    stop: &mpsc::Receiver<()>,
    stopped: &AtomicBool,
    mut deliver: F,
) where
    F: FnMut(Samples) -> bool,
{
    let mut next = Instant::now();
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match stop.recv_timeout(wait) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let at_millis = unix_millis();
        let values = sample_all(client, signals);
        if stopped.load(Ordering::SeqCst) || !deliver(Samples { at_millis, values }) {
            return;
        }
        next = next_due(next, interval, Instant::now());
    }
}

/// The next round after the one due at `due`: one interval on, or, when that has passed by
/// `now`, the first multiple of the interval after `now`.
fn next_due(due: Instant, interval: Duration, now: Instant) -> Instant {
    let next = due + interval;
    if next > now {
        return next;
    }
    let late = now.duration_since(next).as_nanos();
    let step = interval.as_nanos().max(1);
    let skip = u32::try_from(late / step + 1).unwrap_or(u32::MAX);
    interval
        .checked_mul(skip)
        .and_then(|d| next.checked_add(d))
        .unwrap_or(now + interval)
}

/// Asks every signal, concurrently (one thread each; a signal whose thread cannot be started is
/// asked on this one).
fn sample_all(
    client: &Prometheus,
    signals: &[(String, String)],
) -> Vec<(String, Result<f64, NoData>)> {
    if signals.len() <= 1 {
        return signals
            .iter()
            .map(|(name, query)| (name.clone(), client.query(query)))
            .collect();
    }
    std::thread::scope(|scope| {
        let asked: Vec<_> = signals
            .iter()
            .map(|(name, query)| {
                let handle = std::thread::Builder::new()
                    .name("prometheus-query".into())
                    .spawn_scoped(scope, move || client.query(query));
                (name, query, handle)
            })
            .collect();
        asked
            .into_iter()
            .map(|(name, query, handle)| {
                let value = match handle {
                    Ok(handle) => handle.join().unwrap_or_else(|_| {
                        Err(NoData::Unreachable("the query's thread failed".into()))
                    }),
                    Err(_) => client.query(query),
                };
                (name.clone(), value)
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(values: &[&str]) -> Vec<u8> {
        let series: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!(r#"{{"metric":{{"i":"{i}"}},"value":[1700000000.5,"{v}"]}}"#))
            .collect();
        format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
            series.join(",")
        )
        .into_bytes()
    }

    #[test]
    fn one_series_is_its_value_and_the_rest_is_no_data() {
        assert_eq!(interpret(200, &vector(&["0.25"])), Ok(0.25));
        assert_eq!(interpret(200, &vector(&["+Inf"])), Ok(f64::INFINITY));
        assert_eq!(interpret(200, &vector(&["-Inf"])), Ok(f64::NEG_INFINITY));
        assert_eq!(interpret(200, &vector(&[])), Err(NoData::Empty));
        assert_eq!(interpret(200, &vector(&["NaN"])), Err(NoData::NaN));
        assert_eq!(
            interpret(200, &vector(&["1", "2", "3"])),
            Err(NoData::Several(3))
        );
        assert_eq!(
            interpret(200, &vector(&["lots"])),
            Err(NoData::BadValue("lots".into()))
        );
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"7"]}}"#;
        assert_eq!(interpret(200, scalar), Ok(7.0));
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"]]}]}}"#;
        assert_eq!(
            interpret(200, matrix),
            Err(NoData::ResultType("matrix".into()))
        );
        let histogram = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"histogram":[1,{"count":"1"}]}]}}"#;
        assert_eq!(
            interpret(200, histogram),
            Err(NoData::ResultType("histogram".into()))
        );
        // A 2xx with warnings is still a value.
        let warned = br#"{"status":"success","warnings":["w"],"data":{"resultType":"vector","result":[{"metric":{},"value":[1,"2"]}]}}"#;
        assert_eq!(interpret(200, warned), Ok(2.0));
    }

    #[test]
    fn errors_statuses_and_other_bodies_are_no_data_with_a_reason() {
        let error = br#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected \"}\""}"#;
        let got = interpret(400, error).unwrap_err();
        assert_eq!(got.kind(), "query_error");
        assert!(
            got.to_string().contains("bad_data: 1:5: parse error"),
            "{got}"
        );
        assert_eq!(interpret(500, b"oops"), Err(NoData::Status(500)));
        assert_eq!(interpret(302, b""), Err(NoData::Status(302)));
        let html = interpret(200, b"<html><body>Sign in</body></html>").unwrap_err();
        assert_eq!(html.kind(), "not_json");
        assert!(html.to_string().contains("<html>"), "{html}");
        assert_eq!(
            interpret(200, b"").unwrap_err(),
            NoData::NotJson("an empty body".into())
        );
        let other_json = interpret(200, br#"{"hello":"world"}"#).unwrap_err();
        assert_eq!(other_json.kind(), "not_json");
        let long = "x".repeat(10_000);
        let reason = interpret(200, long.as_bytes()).unwrap_err().to_string();
        assert!(reason.len() < 400, "{reason}");
    }

    #[test]
    fn the_query_is_percent_encoded_and_the_base_checked() {
        let p =
            Prometheus::new("http://127.0.0.1:9090/prom/", Duration::from_millis(1500)).unwrap();
        assert_eq!(
            p.query_url(r#"sum(rate(x{code="500"}[1m])) / 2 + a&b"#),
            "http://127.0.0.1:9090/prom/api/v1/query?query=sum%28rate%28x%7Bcode%3D%22500%22%7D%5B1m%5D%29%29%20%2F%202%20%2B%20a%26b&timeout=1500ms"
        );
        assert_eq!(
            Prometheus::new("http://h:1", Duration::from_secs(1))
                .unwrap()
                .query_url("é"),
            "http://h:1/api/v1/query?query=%C3%A9&timeout=1000ms"
        );
        for bad in [
            "https://h:1",
            "ftp://h",
            "h:9090",
            "http://",
            "http://h/?x=1",
            "",
        ] {
            assert!(check_base(bad).is_err(), "{bad}");
        }
        assert!(Prometheus::new("http://h:1", Duration::ZERO).is_err());
    }

    #[test]
    fn a_late_round_skips_the_missed_ones() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(next_due(t0, s, t0 + Duration::from_millis(300)), t0 + s);
        assert_eq!(
            next_due(t0, s, t0 + Duration::from_millis(3500)),
            t0 + 4 * s
        );
        assert_eq!(next_due(t0, s, t0 + s), t0 + 2 * s);
    }
}
