//! The escalation ladder, pure: it watches health signals and decides, one input at a time,
//! when to take the next rung of an ordered list of requests, least disruptive first (a kill
//! switch, a traffic switch, a rollback, a restore).
//!
//! [`Ladder::step`] takes an [`Input`] — samples of the signals ([`Input::Samples`]), time
//! passing ([`Input::Tick`]), how a rung's request ended ([`Input::RungDone`]) or a person's
//! approval ([`Input::Approve`]) — and returns a [`LadderDecision`]: the requests to send
//! ([`Action::Take`]), the decisions to journal ([`Action::Journal`]) and, for an approval,
//! its answer. It performs nothing, reads no clock (every input carries its time, [`Millis`])
//! and holds no randomness, so the same inputs always give the same decisions.
//!
//! # The rules
//! - A signal is **bad** after `bad_samples` consecutive samples above its threshold (`above`),
//!   **good** after `bad_samples` consecutive samples at or below it.
//! - A **run** is one pass up the rungs from rung 0. It starts when a signal is bad while the
//!   state is `watching` or `cleared`, if fewer than `max_runs` runs have started (else the
//!   ladder is `exhausted`).
//! - Each rung's request is taken (`acting`); a rung that needs approval waits in
//!   `awaiting_approval` until [`Input::Approve`]. Once its request completed, the ladder is
//!   `verifying` for `verify_seconds`: if every signal is good within that window (only samples
//!   inside the window count), the state is `cleared`. Bad samples inside the window never
//!   escalate; a window that ends without clearing takes the next rung. A window that ends
//!   without a sample of some signal is no data for it (a time-out), not a reason to escalate.
//! - A rung whose request is refused is skipped at once; one that fails (13 or 14) ends the
//!   ladder in `exhausted`. After the last rung, a new run starts at rung 0 while fewer than
//!   `max_runs` runs have started, else the ladder is `exhausted`: nothing more happens until
//!   [`Ladder::rearm`] (the node restarts).
//! - **No data** ([`Sample::NoData`], or a value that is not a finite number) for any signal
//!   makes the state `paused_no_data` at once, whatever it was (but `exhausted`), and that
//!   signal's value null. Nothing is taken while paused. When every signal has data again the
//!   ladder resumes where it paused; a verify window starts afresh, and consecutive samples are
//!   counted afresh.
//!
//! # Crashes and replay
//! A [`Ladder`] is plain serializable data (serde): a snapshot can hold it. It can also be
//! rebuilt by replaying its journaled inputs ([`Ladder::replay`]); replay is deterministic and
//! its actions are dropped, because they were acted on before the crash. Either way, a
//! restored ladder never emits a Take it already emitted: Takes come only from new inputs. The
//! one Take a crash can leave unsent is the one the ladder is acting on; [`Ladder::outstanding`]
//! returns it, with the same `msg_id`, for the machine to send again: a request from sender
//! [`SENDER`] with a msg_id the machine already saw is answered from its retry memory, never
//! run twice. So the rule for whoever wires it in is: restore (or replay), send
//! [`Ladder::outstanding`] if any, then [`Ladder::rearm`] at start.

use crate::core::effects::Lane;
use crate::core::state::{join, Layer, State};
use crate::core::transitions::Request;
use crate::protocol::Refusal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;

/// A point in time: milliseconds since the Unix epoch, as the machine journals its inputs. The
/// ladder's clock is the latest time an input carried; it never goes back.
pub type Millis = u64;

/// The sender of every request the ladder takes (also when a person approved it).
pub const SENDER: &str = "ladder";

/// The most samples of one signal a [`Why`] or a [`Note`] lists: the most recent ones.
pub const WHY_SAMPLES: usize = 64;

/// Message types a rung may not be: recording a version without running anything is for a
/// person who checked the database.
const NOT_RUNGS: [&str; 1] = ["force_version"];

/// Request keys the ladder sets itself, never the estate.
const OWN_REQUEST_KEYS: [&str; 3] = ["type", "msg_id", "dry_run"];

// ---------------------------------------------------------------------------------------------
// Configuration

/// The estate's `[ladder]`: where the signals come from, how they are judged, and the rungs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LadderConfig {
    /// The Prometheus base URL (plain `http://`); the sampler appends `/api/v1/query`.
    pub prometheus: String,
    /// How often the sampler queries each signal (default 5).
    pub interval_seconds: u64,
    /// Consecutive samples that make a signal bad (above) or good (at or below) (default 2).
    pub bad_samples: u32,
    /// How long a rung has to clear the signals once its request completed (default 60).
    pub verify_seconds: u64,
    /// How many runs may start until the node restarts (default 1).
    pub max_runs: u32,
    /// The health signals, at least one.
    pub signals: Vec<Signal>,
    /// The rungs, least disruptive first, at least one.
    pub rungs: Vec<Rung>,
}

/// One `[[ladder.signals]]`: a PromQL query and its threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// Its name, unique in the ladder; how samples, `status` and `why` name it.
    pub name: String,
    /// The PromQL query; it must give exactly one series.
    pub query: String,
    /// The threshold: a sample above it is bad, at or below it good.
    pub above: f64,
}

/// One `[[ladder.rungs]]`: a request body without `msg_id`, and whether a person must approve
/// it first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rung {
    /// The request body, such as `{"type": "disable_feature", "feature": "new_checkout"}`.
    pub action: Value,
    /// Whether it waits in `awaiting_approval` until an admin approves it.
    pub approval: bool,
}

impl Rung {
    /// A rung with the default approval of its type ([`Rung::needs_approval_by_default`]).
    pub fn new(action: Value) -> Self {
        let approval = action
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(Rung::needs_approval_by_default);
        Rung { action, approval }
    }

    /// Whether a rung of this type waits for approval unless the estate says otherwise: the
    /// rungs that destroy, `rollback` and `restore`.
    pub fn needs_approval_by_default(kind: &str) -> bool {
        matches!(kind, "rollback" | "restore")
    }

    /// Its request type (`action.type`), if it has one.
    pub fn kind(&self) -> Option<&str> {
        self.action.get("type").and_then(Value::as_str)
    }
}

impl LadderConfig {
    /// `interval_seconds` when the estate does not say.
    pub const DEFAULT_INTERVAL_SECONDS: u64 = 5;
    /// `bad_samples` when the estate does not say.
    pub const DEFAULT_BAD_SAMPLES: u32 = 2;
    /// `verify_seconds` when the estate does not say.
    pub const DEFAULT_VERIFY_SECONDS: u64 = 60;
    /// `max_runs` when the estate does not say.
    pub const DEFAULT_MAX_RUNS: u32 = 1;

    /// A ladder with the default settings.
    pub fn new(prometheus: impl Into<String>, signals: Vec<Signal>, rungs: Vec<Rung>) -> Self {
        LadderConfig {
            prometheus: prometheus.into(),
            interval_seconds: Self::DEFAULT_INTERVAL_SECONDS,
            bad_samples: Self::DEFAULT_BAD_SAMPLES,
            verify_seconds: Self::DEFAULT_VERIFY_SECONDS,
            max_runs: Self::DEFAULT_MAX_RUNS,
            signals,
            rungs,
        }
    }

    /// Checks the ladder on its own: the URL, the numbers, the signals and each rung's request
    /// (a state-changing type the node knows, its fields well-typed, no `msg_id`).
    ///
    /// # Errors
    /// The first key that is wrong, and why.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.plan().map(|_| ())
    }

    /// Checks the ladder against the estate it belongs to: every rung acts on a layer the
    /// estate describes, and, where the estate itself holds that layer (simulated), on a flag,
    /// a catalogued migration or a backup the estate has. A real layer's flags, catalogue and
    /// backups are read when the node runs; a rung they lack is refused then, and skipped.
    ///
    /// # Errors
    /// The first key that is wrong, and why.
    pub fn check_against(&self, state: &State) -> Result<(), ConfigError> {
        for (index, planned) in self.plan()?.iter().enumerate() {
            check_rung_against(state, index, &planned.request)?;
        }
        Ok(())
    }

    /// Each rung's request, decoded.
    fn plan(&self) -> Result<Vec<Planned>, ConfigError> {
        let ladder = |key: &'static str, problem: String| ConfigError {
            key: Key::Ladder(key),
            problem,
        };
        check_url(&self.prometheus).map_err(|p| ladder("prometheus", p))?;
        if self.interval_seconds == 0 {
            return Err(ladder(
                "interval_seconds",
                "is 0; the sampler needs at least 1 second between queries".to_owned(),
            ));
        }
        if self.bad_samples == 0 {
            return Err(ladder(
                "bad_samples",
                "is 0; a signal is bad after at least 1 sample above its threshold".to_owned(),
            ));
        }
        if self.verify_seconds == 0 {
            return Err(ladder(
                "verify_seconds",
                "is 0; a rung needs time to clear the signals".to_owned(),
            ));
        }
        let needed = u64::from(self.bad_samples).saturating_mul(self.interval_seconds);
        if self.verify_seconds < needed {
            return Err(ladder(
                "verify_seconds",
                format!(
                    "is {} s, shorter than bad_samples ({}) samples every interval_seconds ({} s), so no rung could ever clear the signals; make it at least {needed}",
                    self.verify_seconds, self.bad_samples, self.interval_seconds
                ),
            ));
        }
        if self.max_runs == 0 {
            return Err(ladder(
                "max_runs",
                "is 0, so the ladder could never act; make it at least 1, or remove [ladder]"
                    .to_owned(),
            ));
        }
        if self.signals.is_empty() {
            return Err(ladder(
                "signals",
                "there is no [[ladder.signals]]; the ladder needs at least one signal to watch"
                    .to_owned(),
            ));
        }
        for (index, signal) in self.signals.iter().enumerate() {
            let error = |key: &'static str, problem: String| ConfigError {
                key: Key::Signal(index, key),
                problem,
            };
            if signal.name.is_empty() {
                return Err(error("name", "is empty".to_owned()));
            }
            if self.signals[..index].iter().any(|s| s.name == signal.name) {
                return Err(error(
                    "name",
                    format!(
                        "\"{}\" is used twice; each signal needs its own name",
                        crate::protocol::quote(&signal.name)
                    ),
                ));
            }
            if signal.query.trim().is_empty() {
                return Err(error("query", "is empty; give a PromQL query".to_owned()));
            }
            if !signal.above.is_finite() {
                return Err(error(
                    "above",
                    format!("({}) is not a finite number", signal.above),
                ));
            }
        }
        if self.rungs.is_empty() {
            return Err(ladder(
                "rungs",
                "there is no [[ladder.rungs]]; the ladder needs at least one rung to take"
                    .to_owned(),
            ));
        }
        self.rungs
            .iter()
            .enumerate()
            .map(|(index, rung)| plan_rung(index, rung))
            .collect()
    }
}

/// The sampler's rule for the base URL: plain `http://` with a host, no query or fragment (it
/// speaks no TLS), and not the query endpoint itself.
fn check_url(url: &str) -> Result<(), String> {
    let quoted = crate::protocol::quote(url);
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(format!(
            "\"{quoted}\": https is not supported; give Prometheus's plain http:// address"
        ));
    }
    let Some(rest) = lower.strip_prefix("http://") else {
        return Err(format!(
            "\"{quoted}\" is not an http:// URL (such as http://127.0.0.1:9090)"
        ));
    };
    if rest.is_empty() || rest.starts_with(['/', ':']) || url.chars().any(char::is_whitespace) {
        return Err(format!("\"{quoted}\" names no host"));
    }
    if url.contains(['?', '#']) {
        return Err(format!(
            "\"{quoted}\" has a query or a fragment; give the base URL alone"
        ));
    }
    if lower.trim_end_matches('/').ends_with("/api/v1/query") {
        return Err(format!(
            "\"{quoted}\" ends with /api/v1/query; give the base URL, the node appends it"
        ));
    }
    Ok(())
}

/// A rung's request, decoded once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Planned {
    request: Request,
    lane: Lane,
    body: Value,
    approval: bool,
}

fn plan_rung(index: usize, rung: &Rung) -> Result<Planned, ConfigError> {
    let error = |key: &'static str, problem: String| ConfigError {
        key: Key::Rung(index, key),
        problem,
    };
    let Some(fields) = rung.action.as_object() else {
        return Err(error(
            "action",
            "is not a table; write it as {type = \"disable_feature\", feature = \"NAME\"}"
                .to_owned(),
        ));
    };
    let rung_types = || {
        Request::TYPES
            .iter()
            .filter(|t| is_rung_type(t))
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    };
    let kind = match fields.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(_) => {
            return Err(error(
                "action",
                format!("type is not a string; rung types: {}", rung_types()),
            ))
        }
        None => {
            return Err(error(
                "action",
                format!("has no type; rung types: {}", rung_types()),
            ))
        }
    };
    if !Request::TYPES.contains(&kind) {
        return Err(error(
            "action",
            format!(
                "unknown action type \"{}\"; rung types: {}",
                crate::protocol::quote(kind),
                rung_types()
            ),
        ));
    }
    if !is_rung_type(kind) {
        return Err(error(
            "action",
            format!(
                "{kind} changes nothing, so it cannot be a rung; rung types: {}",
                rung_types()
            ),
        ));
    }
    let known = Request::fields(kind).unwrap_or(&[]);
    for key in fields.keys() {
        if key == "msg_id" {
            return Err(error(
                "action",
                "has msg_id; the ladder numbers its requests itself, leave it out".to_owned(),
            ));
        }
        if key == "dry_run" {
            return Err(error(
                "action",
                "has dry_run; a rung is carried out, leave it out".to_owned(),
            ));
        }
        if !OWN_REQUEST_KEYS.contains(&key.as_str()) && !known.contains(&key.as_str()) {
            return Err(error(
                "action",
                format!(
                    "{kind} has no field \"{}\"; its fields: {}",
                    crate::protocol::quote(key),
                    join(known)
                ),
            ));
        }
    }
    let request = match Request::decode_fields(kind, &rung.action) {
        Some(Ok(request)) => request,
        Some(Err(e)) => return Err(error("action", format!("{kind}: {e}"))),
        None => {
            return Err(error(
                "action",
                format!("unknown action type \"{}\"", crate::protocol::quote(kind)),
            ))
        }
    };
    let Some(lane) = request.lane() else {
        return Err(error(
            "action",
            format!("{kind} changes nothing, so it cannot be a rung"),
        ));
    };
    Ok(Planned {
        request,
        lane,
        body: rung.action.clone(),
        approval: rung.approval,
    })
}

/// A state-changing type a rung may be.
fn is_rung_type(kind: &str) -> bool {
    !NOT_RUNGS.contains(&kind) && Request::lane_of(kind).is_some()
}

fn check_rung_against(state: &State, index: usize, request: &Request) -> Result<(), ConfigError> {
    let error = |problem: String| ConfigError {
        key: Key::Rung(index, "action"),
        problem,
    };
    let kind = request.type_name();
    let need = |layer: &Layer, what: &str, keys: &str| {
        if layer.is_present() {
            Ok(())
        } else {
            Err(error(format!(
                "a {kind} rung acts on {what}, which this estate does not describe; describe them ({keys}) or remove the rung"
            )))
        }
    };
    match request {
        Request::DisableFeature { feature } | Request::EnableFeature { feature } => {
            need(
                &state.layers.flags,
                "feature flags",
                "[flags] or [flagd] file = PATH",
            )?;
            if state.layers.flags == Layer::Simulated && !state.flags.contains_key(feature) {
                return Err(error(format!(
                    "flag \"{}\" is not in the estate's [flags]; known flags: {}",
                    crate::protocol::quote(feature),
                    state.flag_names()
                )));
            }
        }
        Request::SwitchTraffic { from, to } => {
            need(
                &state.layers.traffic,
                "blue-green traffic",
                "[traffic] or [haproxy] socket = PATH, backend = NAME",
            )?;
            if from == to {
                return Err(error(format!(
                    "switch_traffic from {from} to {to}: from and to must differ"
                )));
            }
        }
        Request::Rollback { version } | Request::Migrate { version } => {
            need(
                &state.layers.schema,
                "a schema",
                "schema_version and [[migrations]], or [schema] database = URL, migrations = DIR",
            )?;
            if state.layers.schema == Layer::Simulated && state.migration(version.get()).is_none() {
                return Err(error(format!(
                    "migration {} is not in the estate's [[migrations]] (versions 1 to {})",
                    version.get(),
                    state.last_version()
                )));
            }
        }
        Request::Restore { backup } => {
            need(
                &state.layers.backups,
                "backups",
                "[[backups]], or [backups] dir = DIR",
            )?;
            if state.layers.backups == Layer::Simulated && state.backup(backup).is_none() {
                return Err(error(format!(
                    "backup \"{}\" is not in the estate's [[backups]]; known backups: {}",
                    crate::protocol::quote(backup),
                    state.backup_names()
                )));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Which key of `[ladder]` a [`ConfigError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// A key of `[ladder]` itself: `prometheus`, `interval_seconds`, `bad_samples`,
    /// `verify_seconds`, `max_runs`, or `signals` / `rungs` when there are none.
    Ladder(&'static str),
    /// A key of the `[[ladder.signals]]` at this index: `name`, `query` or `above`.
    Signal(usize, &'static str),
    /// A key of the `[[ladder.rungs]]` at this index: `action` or `approval`.
    Rung(usize, &'static str),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Ladder(key) => write!(f, "ladder.{key}"),
            Key::Signal(index, key) => write!(f, "ladder.signals[{index}].{key}"),
            Key::Rung(index, key) => write!(f, "ladder.rungs[{index}].{key}"),
        }
    }
}

/// Why a ladder cannot be used: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    /// The key.
    pub key: Key,
    /// What is wrong, in words.
    pub problem: String,
}

// ---------------------------------------------------------------------------------------------
// Inputs and outputs

/// One sample of a signal, as the sampler read it. Serialized `{"value": 0.01}` or
/// `{"no_data": "why"}`; a value that is not a finite number is written as the no data it
/// counts as (JSON has no NaN), so journaled inputs replay as they were decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "SampleRecord", from = "SampleRecord")]
pub enum Sample {
    /// The query's one series had this value. A value that is not a finite number (NaN, ±Inf)
    /// counts as no data.
    Value(f64),
    /// No usable value, and why: an empty vector, several series, NaN, an HTTP or query error,
    /// a time-out.
    NoData(String),
}

/// [`Sample`] as it is written.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SampleRecord {
    Value(f64),
    NoData(String),
}

impl From<Sample> for SampleRecord {
    fn from(sample: Sample) -> Self {
        match sample.normalized() {
            Sample::Value(value) => SampleRecord::Value(value),
            Sample::NoData(why) => SampleRecord::NoData(why),
        }
    }
}

impl From<SampleRecord> for Sample {
    fn from(record: SampleRecord) -> Self {
        match record {
            SampleRecord::Value(value) => Sample::Value(value),
            SampleRecord::NoData(why) => Sample::NoData(why),
        }
    }
}

impl Sample {
    /// The finite value, if it is one.
    pub fn value(&self) -> Option<f64> {
        match self {
            Sample::Value(v) if v.is_finite() => Some(*v),
            _ => None,
        }
    }

    /// The same sample with a value that is not a finite number turned into no data.
    pub fn normalized(&self) -> Sample {
        match self {
            Sample::Value(v) if !v.is_finite() => Sample::NoData(format!("the value is {v}")),
            other => other.clone(),
        }
    }
}

/// How a rung's request ended, as the machine tells the ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::Display)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum RungOutcome {
    /// It completed: the verify window starts.
    Completed,
    /// It was refused (already in effect, no longer possible, its lane's queue full): the
    /// rung is skipped.
    Refused,
    /// It failed (13 or 14): the ladder is exhausted.
    Failed,
}

impl RungOutcome {
    /// The outcome of a reply: `None` for a success, else its error code (13 and 14 fail,
    /// every other code refuses).
    pub fn of_code(code: Option<u32>) -> Self {
        match code {
            None => RungOutcome::Completed,
            Some(13 | 14) => RungOutcome::Failed,
            Some(_) => RungOutcome::Refused,
        }
    }
}

/// What the ladder is told. Every input carries the time it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "input", rename_all = "snake_case")]
pub enum Input {
    /// Samples of some or all signals, by name (a name the ladder does not have is ignored),
    /// in order.
    Samples {
        /// When they were taken.
        at: Millis,
        /// Each signal's sample.
        values: Vec<(String, Sample)>,
    },
    /// Time passes (ends verify windows).
    Tick {
        /// Now.
        at: Millis,
    },
    /// The request of the Take with this `msg_id` ended. Any other msg_id (a duplicate, a
    /// completion of an earlier rung) changes nothing.
    RungDone {
        /// When.
        at: Millis,
        /// The Take's msg_id.
        msg_id: u64,
        /// How it ended.
        outcome: RungOutcome,
    },
    /// A person approves the rung awaiting approval (`approve_rung {rung}`).
    Approve {
        /// When.
        at: Millis,
        /// The rung's index.
        rung: usize,
        /// Who approved it.
        by: String,
    },
}

impl Input {
    /// When it happened.
    pub fn at(&self) -> Millis {
        match self {
            Input::Samples { at, .. }
            | Input::Tick { at }
            | Input::RungDone { at, .. }
            | Input::Approve { at, .. } => *at,
        }
    }
}

/// The samples that caused a decision: each signal's, oldest first (at most [`WHY_SAMPLES`]).
pub type Samples = BTreeMap<String, Vec<f64>>;

/// Why the ladder took a rung; serialized exactly as a history entry's pinned `why`:
/// `{"signals": {NAME: [samples]}, "run": N, "rung": I}`, plus `"approved_by": NAME` when the
/// rung waited for approval.
///
/// `signals` holds the samples that caused it: for rung 0 of a run started by a signal turning
/// bad, the `bad_samples` samples above the threshold of each bad signal; for a rung taken
/// because the previous rung's verify window ended without clearing (or for rung 0 of a run
/// after the last rung), the window's samples of each signal that was not good; a rung taken
/// because the one before was refused keeps the samples that caused that one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Why {
    /// The samples that caused it, per signal.
    pub signals: Samples,
    /// The run, from 1.
    pub run: u32,
    /// The rung's index, from 0.
    pub rung: usize,
    /// Who approved it, when it waited for approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
}

impl Why {
    /// The pinned `why` object.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// A rung's request to send now: on lane `lane`, from sender [`SENDER`], with this msg_id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Take {
    /// The msg_id to send it with: 1 for the ladder's first Take, then one more for each (a
    /// ladder never reuses one, also across [`Ladder::rearm`]).
    pub msg_id: u64,
    /// The run, from 1.
    pub run: u32,
    /// The rung's index, from 0.
    pub rung: usize,
    /// Its lane.
    pub lane: Lane,
    /// The request, decoded.
    pub request: Request,
    /// The request body as the estate gives it (without `msg_id`).
    pub body: Value,
    /// Why: the history entry's `why`.
    pub why: Why,
}

impl Take {
    /// The request body as stdin would carry it: the estate's action with `msg_id`.
    pub fn body_with_msg_id(&self) -> Value {
        let mut body = self.body.clone();
        if let Value::Object(fields) = &mut body {
            fields.insert("msg_id".to_owned(), Value::from(self.msg_id));
        }
        body
    }
}

/// A decision without a request of its own, to journal and show in `status` (not history).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Note {
    /// When.
    pub at: Millis,
    /// What was decided.
    #[serde(flatten)]
    pub event: Event,
    /// The state after it.
    pub state: LadderState,
    /// The runs started.
    pub runs: u32,
    /// The rung it concerns (the `status` rung), if any.
    pub rung: Option<usize>,
    /// The samples that caused it.
    pub samples: Samples,
}

impl Note {
    /// The note as a JSON object: `{"at", "event", ..., "state", "runs", "rung", "samples"}`.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// What a [`Note`] records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A run started (rung 0 follows).
    RunStarted,
    /// A signal had no data: paused. `no_data` says why, per signal.
    Paused {
        /// Why each signal without data has none.
        no_data: BTreeMap<String, String>,
    },
    /// Every signal has data again: resumed where it paused.
    Resumed,
    /// The rung waits for approval.
    AwaitingApproval,
    /// A person approved the rung.
    Approved {
        /// Who.
        by: String,
    },
    /// The rung's request was refused: skipped.
    Skipped,
    /// The rung's verify window ended without clearing the signals.
    NotCleared,
    /// The rung cleared the signals.
    Cleared,
    /// Nothing more happens until the node restarts.
    Exhausted {
        /// Why.
        reason: String,
    },
    /// The node restarted: an exhausted ladder watches again, its runs counted from 0.
    Rearmed,
}

/// What the ladder does in answer to one input.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a rung's request.
    Take(Take),
    /// Journal a decision.
    Journal(Note),
}

/// What one input made the ladder decide, in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LadderDecision {
    /// The requests to send and decisions to journal, in the order they were decided.
    pub actions: Vec<Action>,
    /// For [`Input::Approve`]: the rung approved (`rung_approved {rung}`), or why not
    /// ([`Refusal::PreconditionFailed`], 22: nothing awaits that rung). `None` for other inputs.
    pub answer: Option<Result<usize, Refusal>>,
}

impl LadderDecision {
    /// The requests to send.
    pub fn takes(&self) -> impl Iterator<Item = &Take> {
        self.actions.iter().filter_map(|a| match a {
            Action::Take(take) => Some(take),
            Action::Journal(_) => None,
        })
    }

    /// The decisions to journal.
    pub fn notes(&self) -> impl Iterator<Item = &Note> {
        self.actions.iter().filter_map(|a| match a {
            Action::Journal(note) => Some(note),
            Action::Take(_) => None,
        })
    }
}

/// The pinned state names of `status_ok.ladder.state`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, strum::Display, strum::EnumIter,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum LadderState {
    /// No run has started, or the ladder was rearmed.
    Watching,
    /// A rung's request is being taken.
    Acting,
    /// A rung's request completed; its verify window is open.
    Verifying,
    /// A destructive rung waits for a person.
    AwaitingApproval,
    /// A signal has no data: nothing is taken until it has.
    PausedNoData,
    /// The last rung taken cleared the signals.
    Cleared,
    /// Nothing more happens until the node restarts.
    Exhausted,
}

/// `status_ok.ladder`, pinned: `{"state", "rung", "runs", "signals"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LadderStatus {
    /// Where the ladder stands.
    pub state: LadderState,
    /// The rung being taken, verified or awaiting approval, or the last one taken; `null`
    /// before any.
    pub rung: Option<usize>,
    /// The runs started (0 before any).
    pub runs: u32,
    /// Each signal's last value, `null` before any and while it has no data.
    pub signals: BTreeMap<String, Option<f64>>,
}

impl LadderStatus {
    /// The pinned object.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

// ---------------------------------------------------------------------------------------------
// The ladder

/// Where a ladder stands; see the module documentation. Serializable: a snapshot can hold it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ladder {
    config: LadderConfig,
    rungs: Vec<Planned>,
    phase: Phase,
    /// Some signal's last sample is no data.
    paused: bool,
    /// Runs started since the ladder was armed.
    runs: u32,
    /// Takes emitted in the ladder's whole life: the last msg_id.
    takes: u64,
    /// The latest time an input carried.
    now: Millis,
    /// The last rung taken.
    last_rung: Option<usize>,
    /// The samples that caused the rung being taken.
    cause: Samples,
    watched: Vec<Watched>,
}

/// The ladder's phase under a possible pause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
enum Phase {
    Watching,
    /// The rung is to be taken once nothing is paused and, if it needs approval, approved.
    Pending {
        rung: usize,
        approved_by: Option<String>,
    },
    Acting {
        take: Box<Take>,
    },
    Verifying {
        rung: usize,
        until: Millis,
    },
    Cleared {
        rung: usize,
    },
    Exhausted,
}

/// One signal, as watched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Watched {
    name: String,
    above: f64,
    /// The last sample, normalized; `None` before any.
    last: Option<Sample>,
    /// Consecutive samples above the threshold.
    bad: u32,
    /// Consecutive samples at or below it (within the verify window, while verifying).
    good: u32,
    /// The last `bad_samples` values (at most [`WHY_SAMPLES`]).
    recent: VecDeque<f64>,
    /// The values of the verify window, the last [`WHY_SAMPLES`].
    window: VecDeque<f64>,
    /// How many values the verify window has had.
    in_window: u64,
}

impl Watched {
    fn no_data(&self) -> Option<&str> {
        match &self.last {
            Some(Sample::NoData(reason)) => Some(reason),
            _ => None,
        }
    }

    /// Forgets consecutive samples: they are counted afresh.
    fn restart_streaks(&mut self) {
        self.bad = 0;
        self.good = 0;
        self.recent.clear();
    }

    /// Opens a verify window.
    fn open_window(&mut self) {
        self.good = 0;
        self.window.clear();
        self.in_window = 0;
    }

    fn count(&mut self, value: f64, keep: usize, verifying: bool) {
        if value > self.above {
            self.bad = self.bad.saturating_add(1);
            self.good = 0;
        } else {
            self.good = self.good.saturating_add(1);
            self.bad = 0;
        }
        push_bounded(&mut self.recent, value, keep);
        if verifying {
            push_bounded(&mut self.window, value, WHY_SAMPLES);
            self.in_window = self.in_window.saturating_add(1);
        }
    }
}

fn push_bounded(values: &mut VecDeque<f64>, value: f64, keep: usize) {
    values.push_back(value);
    while values.len() > keep {
        values.pop_front();
    }
}

impl Ladder {
    /// A ladder watching, no run started, from a configuration [`LadderConfig::check`] accepts.
    ///
    /// # Errors
    /// What [`LadderConfig::check`] finds wrong.
    pub fn new(config: &LadderConfig) -> Result<Self, ConfigError> {
        let rungs = config.plan()?;
        let watched = config
            .signals
            .iter()
            .map(|s| Watched {
                name: s.name.clone(),
                above: s.above,
                last: None,
                bad: 0,
                good: 0,
                recent: VecDeque::new(),
                window: VecDeque::new(),
                in_window: 0,
            })
            .collect();
        Ok(Ladder {
            config: config.clone(),
            rungs,
            phase: Phase::Watching,
            paused: false,
            runs: 0,
            takes: 0,
            now: 0,
            last_rung: None,
            cause: Samples::new(),
            watched,
        })
    }

    /// A ladder rebuilt by replaying `inputs` from [`Ladder::new`]; their actions are dropped
    /// (they were acted on when the inputs first came). Send [`Ladder::outstanding`] next.
    ///
    /// # Errors
    /// What [`LadderConfig::check`] finds wrong.
    pub fn replay<'a>(
        config: &LadderConfig,
        inputs: impl IntoIterator<Item = &'a Input>,
    ) -> Result<Self, ConfigError> {
        let mut ladder = Ladder::new(config)?;
        for input in inputs {
            ladder.step(input);
        }
        Ok(ladder)
    }

    /// Its configuration.
    pub fn config(&self) -> &LadderConfig {
        &self.config
    }

    /// Decides one input.
    pub fn step(&mut self, input: &Input) -> LadderDecision {
        let mut out = LadderDecision::default();
        self.now = self.now.max(input.at());
        match input {
            Input::Samples { values, .. } => self.samples(values, &mut out),
            Input::Tick { .. } => self.expire(&mut out),
            Input::RungDone {
                msg_id, outcome, ..
            } => self.done(*msg_id, *outcome, &mut out),
            Input::Approve { rung, by, .. } => {
                let answer = self.approve(*rung, by, &mut out);
                out.answer = Some(answer);
            }
        }
        out
    }

    /// The Take the ladder is acting on (its request sent, its end not yet known): what to send
    /// again, with the same msg_id, after a restart.
    pub fn outstanding(&self) -> Option<&Take> {
        match &self.phase {
            Phase::Acting { take } => Some(take),
            _ => None,
        }
    }

    /// The rung awaiting a person's approval, if any (also while paused).
    pub fn awaiting_approval(&self) -> Option<usize> {
        match &self.phase {
            Phase::Pending {
                rung,
                approved_by: None,
            } if self.needs_approval(*rung) => Some(*rung),
            _ => None,
        }
    }

    /// What the node does to its ladder when it starts: an exhausted ladder watches again,
    /// its runs counted from 0 (msg_ids keep counting); any other resumes as it was.
    pub fn rearm(&mut self, at: Millis) -> LadderDecision {
        let mut out = LadderDecision::default();
        self.now = self.now.max(at);
        if self.phase == Phase::Exhausted {
            self.phase = Phase::Watching;
            self.runs = 0;
            self.cause.clear();
            self.paused = self.watched.iter().any(|w| w.no_data().is_some());
            for watched in &mut self.watched {
                watched.restart_streaks();
            }
            self.note(&mut out, Event::Rearmed, Samples::new());
        }
        out
    }

    /// `status_ok.ladder`.
    pub fn status(&self) -> LadderStatus {
        LadderStatus {
            state: self.state(),
            rung: self.rung(),
            runs: self.runs,
            signals: self
                .watched
                .iter()
                .map(|w| (w.name.clone(), w.last.as_ref().and_then(Sample::value)))
                .collect(),
        }
    }

    /// The pinned state name.
    pub fn state(&self) -> LadderState {
        match &self.phase {
            Phase::Exhausted => LadderState::Exhausted,
            _ if self.paused => LadderState::PausedNoData,
            Phase::Watching => LadderState::Watching,
            Phase::Pending { rung, approved_by } => {
                if approved_by.is_none() && self.needs_approval(*rung) {
                    LadderState::AwaitingApproval
                } else {
                    LadderState::Acting
                }
            }
            Phase::Acting { .. } => LadderState::Acting,
            Phase::Verifying { .. } => LadderState::Verifying,
            Phase::Cleared { .. } => LadderState::Cleared,
        }
    }

    /// The rung being taken, verified or awaiting approval, or the last one taken.
    pub fn rung(&self) -> Option<usize> {
        match &self.phase {
            Phase::Pending { rung, .. }
            | Phase::Verifying { rung, .. }
            | Phase::Cleared { rung } => Some(*rung),
            Phase::Acting { take } => Some(take.rung),
            Phase::Watching | Phase::Exhausted => self.last_rung,
        }
    }

    /// The runs started since the ladder was armed.
    pub fn runs(&self) -> u32 {
        self.runs
    }

    /// The latest time an input carried.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// When the open verify window ends, if one is open (and not paused).
    pub fn verify_until(&self) -> Option<Millis> {
        match &self.phase {
            Phase::Verifying { until, .. } if !self.paused => Some(*until),
            _ => None,
        }
    }

    fn needs_approval(&self, rung: usize) -> bool {
        self.rungs.get(rung).is_none_or(|r| r.approval)
    }

    fn bad_samples(&self) -> u32 {
        self.config.bad_samples.max(1)
    }

    fn verify_millis(&self) -> Millis {
        self.config.verify_seconds.saturating_mul(1000)
    }

    fn note(&self, out: &mut LadderDecision, event: Event, samples: Samples) {
        out.actions.push(Action::Journal(Note {
            at: self.now,
            event,
            state: self.state(),
            runs: self.runs,
            rung: self.rung(),
            samples,
        }));
    }

    fn samples(&mut self, values: &[(String, Sample)], out: &mut LadderDecision) {
        let values: Vec<(usize, Sample)> = values
            .iter()
            .filter_map(|(name, sample)| {
                let index = self.watched.iter().position(|w| &w.name == name)?;
                Some((index, sample.normalized()))
            })
            .collect();
        // Time passed first: a window that ended before these samples ends now, unless they
        // bring no data (which pauses at once, and a paused window does not end).
        if !values.iter().any(|(_, s)| matches!(s, Sample::NoData(_))) {
            self.expire(out);
        }
        for (index, sample) in &values {
            if let Some(watched) = self.watched.get_mut(*index) {
                watched.last = Some(sample.clone());
            }
        }
        if self.phase == Phase::Exhausted {
            return;
        }
        if self.watched.iter().any(|w| w.no_data().is_some()) {
            self.pause(out);
            return;
        }
        if self.paused {
            self.resume(out);
        }
        let keep = (self.bad_samples() as usize).min(WHY_SAMPLES);
        let verifying = matches!(self.phase, Phase::Verifying { .. });
        for (index, sample) in values {
            if let (Some(watched), Some(value)) = (self.watched.get_mut(index), sample.value()) {
                watched.count(value, keep, verifying);
            }
        }
        self.judge(out);
    }

    /// Decides on the counted samples: a run starts, or the rung being verified clears.
    fn judge(&mut self, out: &mut LadderDecision) {
        let needed = self.bad_samples();
        match self.phase {
            Phase::Watching | Phase::Cleared { .. } => {
                let bad: Samples = self
                    .watched
                    .iter()
                    .filter(|w| w.bad >= needed)
                    .map(|w| (w.name.clone(), w.recent.iter().copied().collect()))
                    .collect();
                if bad.is_empty() {
                    return;
                }
                if self.runs >= self.config.max_runs {
                    self.phase = Phase::Exhausted;
                    let reason = format!(
                        "{} turned bad again after {} of {} runs (max_runs)",
                        join(bad.keys()),
                        self.runs,
                        self.config.max_runs
                    );
                    self.note(out, Event::Exhausted { reason }, bad);
                    return;
                }
                self.cause = bad;
                self.start_run(out);
            }
            Phase::Verifying { rung, .. } if self.watched.iter().all(|w| w.good >= needed) => {
                self.phase = Phase::Cleared { rung };
                let samples = self
                    .watched
                    .iter()
                    .map(|w| (w.name.clone(), w.recent.iter().copied().collect()))
                    .collect();
                self.note(out, Event::Cleared, samples);
            }
            _ => {}
        }
    }

    /// Ends the verify window if its time is up.
    fn expire(&mut self, out: &mut LadderDecision) {
        let Phase::Verifying { rung, until } = self.phase else {
            return;
        };
        if self.paused || self.now < until {
            return;
        }
        let verify = self.config.verify_seconds;
        let mut stale = false;
        for watched in &mut self.watched {
            if watched.in_window == 0 {
                watched.last = Some(Sample::NoData(format!(
                    "no sample within the {verify} s verify window"
                )));
                stale = true;
            }
        }
        if stale {
            self.pause(out);
            return;
        }
        let needed = self.bad_samples();
        let mut cause: Samples = self
            .watched
            .iter()
            .filter(|w| w.good < needed)
            .map(|w| (w.name.clone(), w.window.iter().copied().collect()))
            .collect();
        if cause.is_empty() {
            cause = self
                .watched
                .iter()
                .map(|w| (w.name.clone(), w.window.iter().copied().collect()))
                .collect();
        }
        self.note(out, Event::NotCleared, cause.clone());
        self.cause = cause;
        self.advance(rung.saturating_add(1), out);
    }

    fn pause(&mut self, out: &mut LadderDecision) {
        let no_data: BTreeMap<String, String> = self
            .watched
            .iter()
            .filter_map(|w| Some((w.name.clone(), w.no_data()?.to_owned())))
            .collect();
        for watched in &mut self.watched {
            watched.restart_streaks();
        }
        if self.paused || self.phase == Phase::Exhausted {
            return;
        }
        self.paused = true;
        self.note(out, Event::Paused { no_data }, Samples::new());
    }

    fn resume(&mut self, out: &mut LadderDecision) {
        self.paused = false;
        let until = self.now.saturating_add(self.verify_millis());
        for watched in &mut self.watched {
            watched.restart_streaks();
        }
        if let Phase::Verifying { until: end, .. } = &mut self.phase {
            *end = until;
            for watched in &mut self.watched {
                watched.open_window();
            }
        }
        self.note(out, Event::Resumed, Samples::new());
        self.settle(out);
    }

    /// A new run from rung 0.
    fn start_run(&mut self, out: &mut LadderDecision) {
        self.runs = self.runs.saturating_add(1);
        self.phase = Phase::Pending {
            rung: 0,
            approved_by: None,
        };
        self.note(out, Event::RunStarted, self.cause.clone());
        self.enter_pending(out);
    }

    /// Goes on to rung `next`: the next rung, or a new run, or exhausted.
    fn advance(&mut self, next: usize, out: &mut LadderDecision) {
        if next < self.rungs.len() {
            self.phase = Phase::Pending {
                rung: next,
                approved_by: None,
            };
            self.enter_pending(out);
        } else if self.runs < self.config.max_runs {
            self.start_run(out);
        } else {
            self.phase = Phase::Exhausted;
            let reason = format!(
                "the last rung ({}) did not clear the signals in run {} of {} (max_runs)",
                self.rungs.len().saturating_sub(1),
                self.runs,
                self.config.max_runs
            );
            self.note(out, Event::Exhausted { reason }, self.cause.clone());
        }
    }

    fn enter_pending(&mut self, out: &mut LadderDecision) {
        if let Phase::Pending { rung, .. } = self.phase {
            if self.needs_approval(rung) {
                self.note(out, Event::AwaitingApproval, self.cause.clone());
            }
        }
        self.settle(out);
    }

    /// Takes the pending rung if nothing stops it.
    fn settle(&mut self, out: &mut LadderDecision) {
        if self.paused {
            return;
        }
        let Phase::Pending { rung, approved_by } = &self.phase else {
            return;
        };
        let rung = *rung;
        if approved_by.is_none() && self.needs_approval(rung) {
            return;
        }
        let Some(planned) = self.rungs.get(rung) else {
            // Only a damaged snapshot could name a rung the ladder does not have.
            self.phase = Phase::Exhausted;
            self.note(
                out,
                Event::Exhausted {
                    reason: format!("rung {rung} does not exist"),
                },
                Samples::new(),
            );
            return;
        };
        self.takes = self.takes.saturating_add(1);
        let take = Take {
            msg_id: self.takes,
            run: self.runs,
            rung,
            lane: planned.lane,
            request: planned.request.clone(),
            body: planned.body.clone(),
            why: Why {
                signals: self.cause.clone(),
                run: self.runs,
                rung,
                approved_by: approved_by.clone(),
            },
        };
        self.last_rung = Some(rung);
        self.phase = Phase::Acting {
            take: Box::new(take.clone()),
        };
        out.actions.push(Action::Take(take));
    }

    fn done(&mut self, msg_id: u64, outcome: RungOutcome, out: &mut LadderDecision) {
        let Phase::Acting { take } = &self.phase else {
            return;
        };
        if take.msg_id != msg_id {
            return;
        }
        let rung = take.rung;
        match outcome {
            RungOutcome::Completed => {
                self.phase = Phase::Verifying {
                    rung,
                    until: self.now.saturating_add(self.verify_millis()),
                };
                for watched in &mut self.watched {
                    watched.open_window();
                }
            }
            RungOutcome::Refused => {
                self.note(out, Event::Skipped, self.cause.clone());
                self.advance(rung.saturating_add(1), out);
            }
            RungOutcome::Failed => {
                self.phase = Phase::Exhausted;
                let reason = format!("the request of rung {rung} failed");
                self.note(out, Event::Exhausted { reason }, self.cause.clone());
            }
        }
    }

    fn approve(
        &mut self,
        rung: usize,
        by: &str,
        out: &mut LadderDecision,
    ) -> Result<usize, Refusal> {
        if self.awaiting_approval() != Some(rung) {
            let now = match (self.state(), self.rung()) {
                (state, Some(at)) => format!("the ladder is {state} at rung {at}"),
                (state, None) => format!("the ladder is {state}"),
            };
            let what = if rung >= self.rungs.len() {
                format!(
                    "there is no rung {rung} (the ladder has rungs 0 to {})",
                    self.rungs.len().saturating_sub(1)
                )
            } else {
                format!("rung {rung} does not await approval")
            };
            return Err(Refusal::PreconditionFailed(format!(
                "{what}; {now}; nothing changed"
            )));
        }
        if let Phase::Pending { approved_by, .. } = &mut self.phase {
            *approved_by = Some(by.to_owned());
        }
        self.note(
            out,
            Event::Approved { by: by.to_owned() },
            self.cause.clone(),
        );
        self.settle(out);
        Ok(rung)
    }
}
