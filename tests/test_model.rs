//! Model-based test of the node, line in, line out.
//!
//! The reference model below is written from the protocol's semantics alone: it shares no code
//! and no types with the library (no `State`, no `Request`, no encoder). Input lines are built with
//! `serde_json` from a plain description of a message; the real node gets them through
//! `Session::handle_line`, its real decoder and dispatcher, and every reply line is compared with
//! the envelope the model expects.

use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::Union;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence};
use proptest_state_machine::{prop_state_machine, ReferenceStateMachine, StateMachineTest};
use rollback_node::{Environment, Session, State};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// Test cases of the state-machine test and of the determinism test (`PROPTEST_CASES` overrides).
const CASES: u32 = 4096;
/// Input lines per test case (exclusive upper bound).
const MAX_TRANSITIONS: usize = 40;

/// A second estate, to reach what the example cannot: an irreversible migration, other costs, a
/// schema not at the last version, an unhealthy environment, two backups, a disabled flag, and
/// guard rails restricting three change types to some of the generated senders (`force_version`
/// is refused from everyone unless the estate names who may send it, as the example does not).
const VARIANT_TOML: &str = r#"
schema_version = 1

[[migrations]]
version = 1
name = "alpha"
up_seconds = 2
down_seconds = 3

[[migrations]]
version = 2
name = "bravo"
up_seconds = 7
down_seconds = 11
reversible = false

[[migrations]]
version = 3
name = "charlie"
up_seconds = 13
down_seconds = 17

[[migrations]]
version = 4
name = "delta"
up_seconds = 19
down_seconds = 23

[flags]
new_checkout = false
dark_mode = true

[traffic]
live = "blue"
blue = "healthy"
green = "unhealthy"

[permissions]
restore = ["c1"]
migrate = ["c2", "c3"]
force_version = ["c2"]

[[backups]]
name = "nightly"
rows = 42
schema_version = 0
restore_seconds = 9

[[backups]]
name = "weekly"
rows = 7
schema_version = 3
restore_seconds = 30
"#;

const UNKNOWN_NAMES: [&str; 3] = ["ghost", "", "NEW_CHECKOUT"];

/// How many accepted changes `history` can list at most, and its default.
const HISTORY_MAX: u64 = 1_000;
const HISTORY_DEFAULT: u64 = 20;

// ---------------------------------------------------------------------------------------------
// Inputs: a plain description of one line, and its JSON text.
// ---------------------------------------------------------------------------------------------

/// The body of a message: its `type` and fields. `None` = the field is left out.
#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Rollback(Option<Value>),
    Migrate(Option<Value>),
    DisableFeature(Option<Value>),
    EnableFeature(Option<Value>),
    SwitchTraffic(Option<Value>, Option<Value>),
    Restore(Option<Value>),
    ForceVersion(Option<Value>),
    Backups,
    Status,
    History(Option<Value>),
    Init(Option<Value>, Option<Value>),
    Unknown(String),
    NoType,
    TypeNotString(Value),
}

/// One message line.
#[derive(Clone, Debug, PartialEq)]
struct Msg {
    src: Option<String>,
    dest: Option<String>,
    /// `None` = no `msg_id` key.
    msg_id: Option<Value>,
    kind: Kind,
    /// An extra body field, which the node must refuse (12, naming it) unless the type is
    /// unknown (10).
    extra: bool,
    /// A trailing `\r`, which the node must ignore.
    crlf: bool,
}

/// A line that is not a message the node can answer.
#[derive(Clone, PartialEq)]
struct Garbage(Vec<u8>);

impl fmt::Debug for Garbage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Garbage({:?})", String::from_utf8_lossy(&self.0))
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Input {
    Msg(Msg),
    Garbage(Garbage),
}

fn put(map: &mut Map<String, Value>, key: &str, value: &Option<Value>) {
    if let Some(value) = value {
        map.insert(key.to_owned(), value.clone());
    }
}

impl Msg {
    fn line(&self) -> Vec<u8> {
        let mut body = Map::new();
        let mut kind = |t: &str| {
            body.insert("type".to_owned(), json!(t));
        };
        match &self.kind {
            Kind::Rollback(_) => kind("rollback"),
            Kind::Migrate(_) => kind("migrate"),
            Kind::DisableFeature(_) => kind("disable_feature"),
            Kind::EnableFeature(_) => kind("enable_feature"),
            Kind::SwitchTraffic(..) => kind("switch_traffic"),
            Kind::Restore(_) => kind("restore"),
            Kind::ForceVersion(_) => kind("force_version"),
            Kind::Backups => kind("backups"),
            Kind::Status => kind("status"),
            Kind::History(_) => kind("history"),
            Kind::Init(..) => kind("init"),
            Kind::Unknown(t) => kind(t),
            Kind::NoType => {}
            Kind::TypeNotString(v) => {
                body.insert("type".to_owned(), v.clone());
            }
        }
        match &self.kind {
            Kind::Rollback(v) | Kind::Migrate(v) | Kind::ForceVersion(v) => {
                put(&mut body, "version", v)
            }
            Kind::DisableFeature(v) | Kind::EnableFeature(v) => put(&mut body, "feature", v),
            Kind::SwitchTraffic(from, to) => {
                put(&mut body, "from", from);
                put(&mut body, "to", to);
            }
            Kind::Restore(v) => put(&mut body, "backup", v),
            Kind::History(v) => put(&mut body, "limit", v),
            Kind::Init(id, ids) => {
                put(&mut body, "node_id", id);
                put(&mut body, "node_ids", ids);
            }
            _ => {}
        }
        put(&mut body, "msg_id", &self.msg_id);
        if self.extra {
            body.insert("trace_id".to_owned(), json!("t-1"));
        }
        let mut envelope = Map::new();
        put(&mut envelope, "src", &self.src.as_ref().map(|s| json!(s)));
        put(&mut envelope, "dest", &self.dest.as_ref().map(|s| json!(s)));
        envelope.insert("body".to_owned(), Value::Object(body));
        let mut text = serde_json::to_string(&Value::Object(envelope)).unwrap();
        if self.crlf {
            text.push('\r');
        }
        text.into_bytes()
    }
}

impl Input {
    fn line(&self) -> Vec<u8> {
        match self {
            Input::Msg(msg) => msg.line(),
            Input::Garbage(Garbage(bytes)) => bytes.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The reference model.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Estate {
    Example,
    Variant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Env {
    Blue,
    Green,
}

impl Env {
    fn name(self) -> &'static str {
        match self {
            Env::Blue => "blue",
            Env::Green => "green",
        }
    }
    fn other(self) -> Env {
        match self {
            Env::Blue => Env::Green,
            Env::Green => Env::Blue,
        }
    }
}

#[derive(Clone, Debug)]
struct Migration {
    up: u64,
    down: u64,
    reversible: bool,
}

#[derive(Clone, Debug)]
struct Backup {
    name: &'static str,
    rows: u64,
    schema: u64,
    seconds: u64,
}

/// A request as the model understands it once decoded; two bodies are "the same request" when
/// these are equal.
#[derive(Clone, Debug, PartialEq)]
enum Req {
    Rollback(u64),
    Migrate(u64),
    Disable(String),
    Enable(String),
    Switch(Env, Env),
    Restore(String),
    ForceVersion(u64),
    Backups,
    Status,
    /// The limit as sent (decoded as a u32), range-checked when answered.
    History(u64),
    Init(String, Vec<String>),
}

impl Req {
    fn changes_state(&self) -> bool {
        !matches!(
            self,
            Req::Backups | Req::Status | Req::History(_) | Req::Init(..)
        )
    }

    /// The `type` on the wire.
    fn type_name(&self) -> &'static str {
        match self {
            Req::Rollback(_) => "rollback",
            Req::Migrate(_) => "migrate",
            Req::Disable(_) => "disable_feature",
            Req::Enable(_) => "enable_feature",
            Req::Switch(..) => "switch_traffic",
            Req::Restore(_) => "restore",
            Req::ForceVersion(_) => "force_version",
            Req::Backups => "backups",
            Req::Status => "status",
            Req::History(_) => "history",
            Req::Init(..) => "init",
        }
    }

    /// The request as `history` lists it: `type`, then the fields in declaration order.
    fn wire_text(&self) -> String {
        let fields: Vec<(&str, Value)> = match self {
            Req::Rollback(v) | Req::Migrate(v) | Req::ForceVersion(v) => {
                vec![("version", json!(v))]
            }
            Req::Disable(f) | Req::Enable(f) => vec![("feature", json!(f))],
            Req::Switch(from, to) => vec![("from", json!(from.name())), ("to", json!(to.name()))],
            Req::Restore(b) => vec![("backup", json!(b))],
            Req::Backups | Req::Status | Req::History(_) | Req::Init(..) => {
                unreachable!("only accepted changes are listed")
            }
        };
        let mut all = vec![("type", json!(self.type_name()).to_string())];
        all.extend(fields.into_iter().map(|(k, v)| (k, v.to_string())));
        ordered(&all)
    }
}

/// A JSON object with its keys in the given order; the values are JSON texts.
fn ordered(fields: &[(&str, String)]) -> String {
    let items: Vec<String> = fields
        .iter()
        .map(|(key, value)| format!("{}:{value}", json!(key)))
        .collect();
    format!("{{{}}}", items.join(","))
}

/// A success body as the node writes it: `type`, `in_reply_to`, then the reply's fields in
/// declaration order.
fn reply_text(body: &Value, in_reply_to: u64) -> String {
    let kind = body["type"].as_str().expect("a success body has a type");
    let order: &[&str] = match kind {
        "rollback_complete" => &["rolled_back_from", "rolled_back_to", "duration_seconds"],
        "migrate_complete" => &["migrated_from", "migrated_to", "duration_seconds"],
        "feature_disabled" => &["feature", "rolled_back_instant"],
        "feature_enabled" => &["feature"],
        "traffic_switched" => &["current_environment", "downtime_seconds"],
        "restore_complete" => &["restored_rows", "duration_seconds"],
        "version_forced" => &["previous_version", "version", "was_dirty"],
        other => unreachable!("{other} is not the reply to a change"),
    };
    assert_eq!(body.as_object().unwrap().len(), order.len() + 1, "{body}");
    let mut fields = vec![
        ("type", json!(kind).to_string()),
        ("in_reply_to", in_reply_to.to_string()),
    ];
    fields.extend(order.iter().map(|key| (*key, body[*key].to_string())));
    ordered(&fields)
}

/// One accepted change, as the model remembers it for `history`.
#[derive(Clone, Debug)]
struct Accepted {
    seq: u64,
    src: String,
    msg_id: u64,
    req: Req,
    /// The success body, without `in_reply_to`.
    body: Value,
}

impl Accepted {
    fn wire_text(&self) -> String {
        ordered(&[
            ("seq", self.seq.to_string()),
            ("src", json!(self.src).to_string()),
            ("msg_id", self.msg_id.to_string()),
            ("request", self.req.wire_text()),
            ("reply", reply_text(&self.body, self.msg_id)),
        ])
    }
}

/// A reply body as the model predicts it: a success body (without `in_reply_to`) or an error
/// code (the error text is free prose; only a retry must repeat it word for word).
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Ok(Value),
    Err(u64),
}

#[derive(Clone, Debug)]
struct ExpectedReply {
    src: String,
    dest: String,
    in_reply_to: u64,
    outcome: Outcome,
    /// The body's exact text, where the model predicts the wire shape (`history_ok`).
    exact: Option<String>,
}

/// What the model predicts for the last line.
#[derive(Clone, Debug, Default)]
struct Step {
    reply: Option<ExpectedReply>,
    /// A retry of an answered change: the reply must be the remembered one.
    duplicate_of: Option<(String, u64)>,
    /// A change answered for the first time: the real reply is remembered by the test.
    first_answer: Option<(String, u64)>,
    /// The `version` of a rollback that completed.
    rollback_version: Option<u64>,
}

#[derive(Clone, Debug)]
struct Model {
    estate: Estate,
    migrations: Vec<Migration>,
    backups: Vec<Backup>,
    blue_healthy: bool,
    green_healthy: bool,
    schema: u64,
    flags: BTreeMap<String, bool>,
    live: Env,
    last_restore: Option<(String, u64, u64)>,
    node_id: Option<String>,
    answered: BTreeMap<(String, u64), (Req, Outcome)>,
    /// Guard rails: a type listed here is accepted only from these senders.
    permissions: BTreeMap<&'static str, Vec<&'static str>>,
    /// How many changes were answered fresh (accepted or refused), as their sequence numbers.
    seq: u64,
    /// The accepted changes, oldest first, at most [`HISTORY_MAX`].
    recent: Vec<Accepted>,
    /// Earlier messages with a sender and a valid msg_id, to resend or to reuse the id of.
    sent: Vec<Msg>,
    next_id: u64,
    step: Step,
}

fn example_model() -> Model {
    let migration = Migration {
        up: 5,
        down: 5,
        reversible: true,
    };
    Model {
        estate: Estate::Example,
        migrations: vec![migration.clone(), migration.clone(), migration],
        backups: vec![Backup {
            name: "users_backup_20240115",
            rows: 100_000,
            schema: 2,
            seconds: 60,
        }],
        blue_healthy: true,
        green_healthy: true,
        schema: 3,
        flags: BTreeMap::from([("new_checkout".to_owned(), true)]),
        live: Env::Green,
        last_restore: None,
        node_id: None,
        answered: BTreeMap::new(),
        permissions: BTreeMap::new(),
        seq: 0,
        recent: Vec::new(),
        sent: Vec::new(),
        next_id: 100,
        step: Step::default(),
    }
}

fn variant_model() -> Model {
    let m = |up, down, reversible| Migration {
        up,
        down,
        reversible,
    };
    Model {
        estate: Estate::Variant,
        migrations: vec![
            m(2, 3, true),
            m(7, 11, false),
            m(13, 17, true),
            m(19, 23, true),
        ],
        backups: vec![
            Backup {
                name: "nightly",
                rows: 42,
                schema: 0,
                seconds: 9,
            },
            Backup {
                name: "weekly",
                rows: 7,
                schema: 3,
                seconds: 30,
            },
        ],
        blue_healthy: true,
        green_healthy: false,
        schema: 1,
        flags: BTreeMap::from([
            ("new_checkout".to_owned(), false),
            ("dark_mode".to_owned(), true),
        ]),
        live: Env::Blue,
        permissions: BTreeMap::from([
            ("restore", vec!["c1"]),
            ("migrate", vec!["c2", "c3"]),
            ("force_version", vec!["c2"]),
        ]),
        ..example_model()
    }
}

fn decode_version(v: &Option<Value>) -> Result<u64, u64> {
    match v.as_ref().and_then(Value::as_u64) {
        Some(n) if n >= 1 => Ok(n),
        _ => Err(12),
    }
}

fn decode_string(v: &Option<Value>) -> Result<String, u64> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(12),
    }
}

fn decode_env(v: &Option<Value>) -> Result<Env, u64> {
    match v.as_ref().and_then(Value::as_str) {
        Some("blue") => Ok(Env::Blue),
        Some("green") => Ok(Env::Green),
        _ => Err(12),
    }
}

fn decode_limit(v: &Option<Value>) -> Result<u64, u64> {
    match v {
        None | Some(Value::Null) => Ok(HISTORY_DEFAULT),
        Some(v) => match v.as_u64() {
            Some(n) if n <= u64::from(u32::MAX) => Ok(n),
            _ => Err(12),
        },
    }
}

fn decode_strings(v: &Option<Value>) -> Result<Vec<String>, u64> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned).ok_or(12))
            .collect(),
        _ => Err(12),
    }
}

/// The request in a body, or the error code its decoding earns.
fn decode(kind: &Kind) -> Result<Req, u64> {
    Ok(match kind {
        Kind::Rollback(v) => Req::Rollback(decode_version(v)?),
        Kind::Migrate(v) => Req::Migrate(decode_version(v)?),
        Kind::DisableFeature(f) => Req::Disable(decode_string(f)?),
        Kind::EnableFeature(f) => Req::Enable(decode_string(f)?),
        Kind::SwitchTraffic(from, to) => Req::Switch(decode_env(from)?, decode_env(to)?),
        Kind::Restore(b) => Req::Restore(decode_string(b)?),
        Kind::ForceVersion(v) => Req::ForceVersion(decode_version(v)?),
        Kind::Backups => Req::Backups,
        Kind::Status => Req::Status,
        Kind::History(limit) => Req::History(decode_limit(limit)?),
        Kind::Init(id, ids) => Req::Init(decode_string(id)?, decode_strings(ids)?),
        Kind::Unknown(_) => return Err(10),
        Kind::NoType | Kind::TypeNotString(_) => return Err(12),
    })
}

impl Model {
    fn last(&self) -> u64 {
        self.migrations.len() as u64
    }

    fn migration(&self, version: u64) -> &Migration {
        &self.migrations[version as usize - 1]
    }

    /// Whether the estate's guard rails let `src` send this type.
    fn permitted(&self, src: &str, req: &Req) -> bool {
        self.permissions
            .get(req.type_name())
            .is_none_or(|allowed| allowed.contains(&src))
    }

    /// The exact `history_ok` body answering msg_id `in_reply_to`, or the error code.
    fn history(&self, limit: u64, in_reply_to: u64) -> Result<String, u64> {
        if limit == 0 || limit > HISTORY_MAX {
            return Err(12);
        }
        let skip = self.recent.len().saturating_sub(limit as usize);
        let entries: Vec<String> = self.recent[skip..]
            .iter()
            .map(Accepted::wire_text)
            .collect();
        Ok(ordered(&[
            ("type", json!("history_ok").to_string()),
            ("in_reply_to", in_reply_to.to_string()),
            ("entries", format!("[{}]", entries.join(","))),
        ]))
    }

    /// The exact `backups_ok` body answering msg_id `in_reply_to`: the estate's backups, newest
    /// (listed last) first; a simulated backup has no time or size and is verified.
    fn backups_text(&self, in_reply_to: u64) -> String {
        let backups: Vec<String> = self
            .backups
            .iter()
            .rev()
            .map(|b| {
                ordered(&[
                    ("name", json!(b.name).to_string()),
                    ("taken_at", "null".to_owned()),
                    ("schema_version", b.schema.to_string()),
                    ("rows", b.rows.to_string()),
                    ("size", "null".to_owned()),
                    ("verified", "true".to_owned()),
                ])
            })
            .collect();
        ordered(&[
            ("type", json!("backups_ok").to_string()),
            ("in_reply_to", in_reply_to.to_string()),
            ("backups", format!("[{}]", backups.join(","))),
        ])
    }

    fn healthy(&self, env: Env) -> bool {
        match env {
            Env::Blue => self.blue_healthy,
            Env::Green => self.green_healthy,
        }
    }

    /// Carries out a decoded request.
    fn perform(&mut self, req: &Req) -> Outcome {
        match req {
            Req::Rollback(v) => {
                let v = *v;
                let current = self.schema;
                if v > self.last() {
                    return Outcome::Err(20);
                }
                if v > current {
                    return Outcome::Err(22);
                }
                if (v..=current).any(|x| !self.migration(x).reversible) {
                    return Outcome::Err(22);
                }
                let seconds: u64 = (v..=current).map(|x| self.migration(x).down).sum();
                self.schema = v - 1;
                Outcome::Ok(json!({
                    "type": "rollback_complete",
                    "rolled_back_from": current,
                    "rolled_back_to": v - 1,
                    "duration_seconds": seconds,
                }))
            }
            Req::Migrate(v) => {
                let v = *v;
                let current = self.schema;
                if v > self.last() {
                    return Outcome::Err(20);
                }
                if v <= current {
                    return Outcome::Err(22);
                }
                let seconds: u64 = (current + 1..=v).map(|x| self.migration(x).up).sum();
                self.schema = v;
                Outcome::Ok(json!({
                    "type": "migrate_complete",
                    "migrated_from": current,
                    "migrated_to": v,
                    "duration_seconds": seconds,
                }))
            }
            Req::Disable(flag) | Req::Enable(flag) => {
                let enable = matches!(req, Req::Enable(_));
                let Some(value) = self.flags.get_mut(flag) else {
                    return Outcome::Err(20);
                };
                *value = enable;
                Outcome::Ok(if enable {
                    json!({"type": "feature_enabled", "feature": flag})
                } else {
                    json!({"type": "feature_disabled", "feature": flag, "rolled_back_instant": true})
                })
            }
            Req::Switch(from, to) => {
                if from == to {
                    return Outcome::Err(12);
                }
                if *from != self.live {
                    return Outcome::Err(22);
                }
                if !self.healthy(*to) {
                    return Outcome::Err(22);
                }
                self.live = *to;
                Outcome::Ok(json!({
                    "type": "traffic_switched",
                    "current_environment": to.name(),
                    "downtime_seconds": 0,
                }))
            }
            Req::Restore(name) => {
                let Some(backup) = self.backups.iter().find(|b| b.name == name) else {
                    return Outcome::Err(20);
                };
                let (rows, schema, seconds) = (backup.rows, backup.schema, backup.seconds);
                self.schema = schema;
                self.last_restore = Some((name.clone(), rows, schema));
                Outcome::Ok(json!({
                    "type": "restore_complete",
                    "restored_rows": rows,
                    "duration_seconds": seconds,
                }))
            }
            Req::ForceVersion(v) => {
                let v = *v;
                if !self.permissions.contains_key("force_version") {
                    return Outcome::Err(22);
                }
                if v > self.last() {
                    return Outcome::Err(20);
                }
                let current = self.schema;
                self.schema = v;
                Outcome::Ok(json!({
                    "type": "version_forced",
                    "previous_version": current,
                    "version": v,
                    "was_dirty": null,
                }))
            }
            Req::Backups => unreachable!("answered by Model::backups_text"),
            Req::Status => Outcome::Ok(json!({
                "type": "status_ok",
                "schema_version": self.schema,
                "live_environment": self.live.name(),
                "flags": self.flags,
                "restore": self.last_restore.as_ref().map(|(backup, rows, schema)| json!({
                    "backup": backup,
                    "restored_rows": rows,
                    "schema_version": schema,
                })),
            })),
            Req::History(_) => unreachable!("answered by Model::history"),
            Req::Init(id, ids) => {
                if id.is_empty() || (!ids.is_empty() && !ids.contains(id)) {
                    return Outcome::Err(12);
                }
                self.node_id = Some(id.clone());
                Outcome::Ok(json!({"type": "init_ok"}))
            }
        }
    }

    /// Predicts the node's answer to one line and moves the model along.
    fn process(&mut self, input: &Input) -> Step {
        let mut step = Step::default();
        let Input::Msg(msg) = input else {
            return step; // unreadable: no reply
        };
        let (Some(src), Some(Value::Number(id))) = (&msg.src, &msg.msg_id) else {
            return step; // no sender or no msg_id: no reply
        };
        let Some(msg_id) = id.as_u64() else {
            return step; // a msg_id that is not a non-negative integer: no reply
        };
        self.sent.push(msg.clone());
        if self.sent.len() > 16 {
            self.sent.remove(0);
        }
        let mut exact = None;
        let decoded = match decode(&msg.kind) {
            Err(10) => Err(10),
            _ if msg.extra => Err(12),
            other => other,
        };
        let outcome = match decoded {
            Err(code) => Outcome::Err(code),
            Ok(req) if !self.permitted(src, &req) && !req.changes_state() => Outcome::Err(22),
            Ok(Req::History(limit)) => match self.history(limit, msg_id) {
                Ok(text) => {
                    let mut body: Value = serde_json::from_str(&text).unwrap();
                    body.as_object_mut().unwrap().remove("in_reply_to");
                    exact = Some(text);
                    Outcome::Ok(body)
                }
                Err(code) => Outcome::Err(code),
            },
            Ok(Req::Backups) => {
                let text = self.backups_text(msg_id);
                let mut body: Value = serde_json::from_str(&text).unwrap();
                body.as_object_mut().unwrap().remove("in_reply_to");
                exact = Some(text);
                Outcome::Ok(body)
            }
            Ok(req) if !req.changes_state() => self.perform(&req),
            Ok(req) => {
                let key = (src.clone(), msg_id);
                match self.answered.get(&key) {
                    Some((earlier, outcome)) if *earlier == req => {
                        step.duplicate_of = Some(key);
                        outcome.clone()
                    }
                    Some(_) => Outcome::Err(22),
                    None => {
                        self.seq += 1;
                        let outcome = if self.permitted(src, &req) {
                            self.perform(&req)
                        } else {
                            Outcome::Err(22)
                        };
                        if let (Req::Rollback(v), Outcome::Ok(_)) = (&req, &outcome) {
                            step.rollback_version = Some(*v);
                        }
                        if let Outcome::Ok(body) = &outcome {
                            if self.recent.len() as u64 >= HISTORY_MAX {
                                self.recent.remove(0);
                            }
                            self.recent.push(Accepted {
                                seq: self.seq,
                                src: src.clone(),
                                msg_id,
                                req: req.clone(),
                                body: body.clone(),
                            });
                        }
                        self.answered.insert(key.clone(), (req, outcome.clone()));
                        step.first_answer = Some(key);
                        outcome
                    }
                }
            }
        };
        let from = self
            .node_id
            .clone()
            .or_else(|| msg.dest.clone())
            .unwrap_or_else(|| "rollback-node".to_owned());
        step.reply = Some(ExpectedReply {
            src: from,
            dest: src.clone(),
            in_reply_to: msg_id,
            outcome,
            exact,
        });
        step
    }
}

// ---------------------------------------------------------------------------------------------
// Generators.
// ---------------------------------------------------------------------------------------------

fn version_arg() -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        12 => (1u64..=3).prop_map(|v| Some(json!(v))),
        3 => Just(Some(json!(4))),
        2 => Just(Some(json!(0))),
        1 => Just(Some(json!(5))),
        1 => Just(Some(json!(u32::MAX))),
        1 => Just(Some(json!(u64::from(u32::MAX) + 1))),
        1 => Just(Some(json!(u64::MAX))),
        1 => Just(Some(json!(-1))),
        1 => Just(Some(json!(2.5))),
        1 => Just(Some(json!(3.0))),
        1 => Just(Some(json!(1e20))),
        1 => Just(Some(json!("2"))),
        1 => Just(Some(Value::Null)),
        1 => Just(None),
    ]
    .boxed()
}

fn name_arg(known: Vec<String>) -> BoxedStrategy<Option<Value>> {
    let unknown: Vec<String> = UNKNOWN_NAMES.iter().map(|s| s.to_string()).collect();
    prop_oneof![
        8 => select(known).prop_map(|s| Some(json!(s))),
        3 => select(unknown).prop_map(|s| Some(json!(s))),
        1 => Just(Some(json!(5))),
        1 => Just(Some(Value::Null)),
        1 => Just(None),
    ]
    .boxed()
}

fn env_arg() -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        10 => select(vec!["blue", "green"]).prop_map(|s| Some(json!(s))),
        1 => Just(Some(json!("Blue"))),
        1 => Just(Some(json!("purple"))),
        1 => Just(Some(json!(1))),
        1 => Just(None),
    ]
    .boxed()
}

/// The names a generator picks from: flags, backups and (when known) the live environment.
#[derive(Clone)]
struct Names {
    flags: Vec<String>,
    backups: Vec<String>,
    live: Option<Env>,
}

impl Names {
    fn of(model: &Model) -> Self {
        Names {
            flags: model.flags.keys().cloned().collect(),
            backups: model.backups.iter().map(|b| b.name.to_owned()).collect(),
            live: Some(model.live),
        }
    }

    /// Every name of both estates, for generators that know no state.
    fn all() -> Self {
        let mut names = Names::of(&variant_model());
        let example = Names::of(&example_model());
        names.backups.extend(example.backups);
        names.live = None;
        names
    }
}

fn change_kind(names: &Names) -> BoxedStrategy<Kind> {
    let switch_ok: BoxedStrategy<Kind> = match names.live {
        Some(live) => Just(Kind::SwitchTraffic(
            Some(json!(live.name())),
            Some(json!(live.other().name())),
        ))
        .boxed(),
        None => Just(Kind::SwitchTraffic(
            Some(json!("green")),
            Some(json!("blue")),
        ))
        .boxed(),
    };
    prop_oneof![
        6 => version_arg().prop_map(Kind::Rollback),
        5 => version_arg().prop_map(Kind::Migrate),
        3 => name_arg(names.flags.clone()).prop_map(Kind::DisableFeature),
        3 => name_arg(names.flags.clone()).prop_map(Kind::EnableFeature),
        3 => (env_arg(), env_arg()).prop_map(|(a, b)| Kind::SwitchTraffic(a, b)),
        2 => switch_ok,
        3 => name_arg(names.backups.clone()).prop_map(Kind::Restore),
        2 => version_arg().prop_map(Kind::ForceVersion),
    ]
    .boxed()
}

fn any_kind(names: &Names) -> BoxedStrategy<Kind> {
    let node_id = prop_oneof![
        6 => select(vec!["n1", "n2"]).prop_map(|s| Some(json!(s))),
        1 => Just(Some(json!(""))),
        1 => Just(Some(json!(3))),
        1 => Just(None),
    ];
    let node_ids = prop_oneof![
        4 => Just(Some(json!(["n1", "n2"]))),
        2 => Just(Some(json!([]))),
        2 => Just(Some(json!(["n2"]))),
        1 => Just(Some(json!([1]))),
        1 => Just(Some(json!("n1"))),
        1 => Just(None),
    ];
    prop_oneof![
        12 => change_kind(names),
        3 => Just(Kind::Status),
        1 => Just(Kind::Backups),
        2 => (node_id, node_ids).prop_map(|(a, b)| Kind::Init(a, b)),
        1 => select(vec!["echo", "Rollback", "rollback_complete", ""])
            .prop_map(|t| Kind::Unknown(t.to_owned())),
        1 => Just(Kind::NoType),
        1 => select(vec![json!(1), json!(null), json!(["status"])]).prop_map(Kind::TypeNotString),
    ]
    .boxed()
}

/// A `history` query: the limit left out, small, at the edges of its range, or ill-typed.
fn history_kind() -> BoxedStrategy<Kind> {
    prop_oneof![
        4 => Just(None),
        6 => (1u64..=4).prop_map(|n| Some(json!(n))),
        2 => Just(Some(json!(0))),
        1 => Just(Some(json!(HISTORY_MAX))),
        2 => select(vec![HISTORY_MAX + 1, u64::from(u32::MAX), u64::from(u32::MAX) + 1])
            .prop_map(|n| Some(json!(n))),
        1 => Just(Some(Value::Null)),
        3 => select(vec![json!(-1), json!(2.5), json!(3.0), json!("3"), json!([3]), json!(true)])
            .prop_map(Some),
    ]
    .prop_map(Kind::History)
    .boxed()
}

/// Any body the state-machine test sends. The determinism test leaves `history` out: its `seq`
/// counts refused changes too, which a replay of the accepted requests alone does not resend.
fn model_kind(names: &Names) -> BoxedStrategy<Kind> {
    prop_oneof![7 => any_kind(names), 1 => history_kind()].boxed()
}

fn sender() -> BoxedStrategy<String> {
    prop_oneof![3 => Just("c1"), 3 => Just("c2"), 1 => Just("c3")]
        .prop_map(str::to_owned)
        .boxed()
}

fn dest() -> BoxedStrategy<Option<String>> {
    prop_oneof![
        3 => Just(Some("n1".to_owned())),
        2 => Just(Some("migrations".to_owned())),
        1 => Just(None),
    ]
    .boxed()
}

fn msg(
    src: BoxedStrategy<Option<String>>,
    msg_id: BoxedStrategy<Option<Value>>,
    kind: BoxedStrategy<Kind>,
) -> BoxedStrategy<Msg> {
    (
        src,
        dest(),
        msg_id,
        kind,
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(src, dest, msg_id, kind, extra, crlf)| Msg {
            src,
            dest,
            msg_id,
            kind,
            extra,
            crlf,
        })
        .boxed()
}

/// A msg_id that is present but gets no reply, or none at all.
fn bad_msg_id() -> BoxedStrategy<Option<Value>> {
    select(vec![
        None,
        Some(Value::Null),
        Some(json!(-1)),
        Some(json!(1.5)),
        Some(json!("7")),
    ])
    .boxed()
}

fn garbage() -> BoxedStrategy<Garbage> {
    let lines: Vec<&[u8]> = vec![
        b"",
        b"   ",
        b"\r",
        b"not json",
        b"{",
        b"null",
        b"42",
        b"[]",
        br#"{"src":"c1","dest":"n1"}"#,
        br#"{"src":"c1","dest":"n1","body":null}"#,
        br#"{"src":"c1","dest":"n1","body":"status"}"#,
        br#"{"src":"c1","dest":"n1","body":5}"#,
        br#"{"src":7,"dest":"n1","body":{"type":"status","msg_id":1}}"#,
        br#"{"src":"c1","dest":["n1"],"body":{"type":"status","msg_id":1}}"#,
        br#"{"src":"c1","dest":"n1","body":{"type":"rollback","msg_id":1,"version":3}"#,
        br#"{"src":"c1","dest":"n1","body":{"type":"rollback","msg_id":1,"version":3}} x"#,
        b"\xff\xfe{\"src\":\"c1\"}",
    ];
    select(lines).prop_map(|l| Garbage(l.to_vec())).boxed()
}

// ---------------------------------------------------------------------------------------------
// The state machines.
// ---------------------------------------------------------------------------------------------

struct Reference;

impl ReferenceStateMachine for Reference {
    type State = Model;
    type Transition = Input;

    fn init_state() -> BoxedStrategy<Model> {
        prop_oneof![3 => Just(example_model()), 1 => Just(variant_model())].boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Input> {
        let names = Names::of(state);
        let fresh_id = prop_oneof![
            10 => Just(Some(json!(state.next_id))),
            2 => (0u64..4).prop_map(|id| Some(json!(id))),
            1 => Just(Some(json!(u64::MAX))),
        ]
        .boxed();
        let src = sender().prop_map(Some).boxed();
        let mut options: Vec<(u32, BoxedStrategy<Input>)> = vec![
            (
                16,
                msg(src.clone(), fresh_id, model_kind(&names))
                    .prop_map(Input::Msg)
                    .boxed(),
            ),
            // A change or query that cannot be answered: no msg_id, or no sender.
            (
                2,
                msg(src, bad_msg_id(), model_kind(&names))
                    .prop_map(Input::Msg)
                    .boxed(),
            ),
            (
                1,
                msg(
                    Just(None).boxed(),
                    Just(Some(json!(7))).boxed(),
                    model_kind(&names),
                )
                .prop_map(Input::Msg)
                .boxed(),
            ),
            (2, garbage().prop_map(Input::Garbage).boxed()),
        ];
        if !state.sent.is_empty() {
            // A retry: the very same line again.
            options.push((4, select(state.sent.clone()).prop_map(Input::Msg).boxed()));
            // The same (src, msg_id) with another body.
            options.push((
                3,
                (select(state.sent.clone()), change_kind(&names))
                    .prop_map(|(earlier, kind)| Input::Msg(Msg { kind, ..earlier }))
                    .boxed(),
            ));
        }
        Union::new_weighted(options).boxed()
    }

    fn apply(mut state: Model, transition: &Input) -> Model {
        state.next_id += 1;
        state.step = state.process(transition);
        state
    }
}

struct Observed {
    line: String,
    before: State,
    after: State,
    reply: Option<Value>,
}

struct Sut {
    session: Session,
    /// Flags a `feature_disabled` reply switched off and no `feature_enabled` reply switched on.
    disabled: BTreeSet<String>,
    /// The real body first answered to each (src, msg_id) of a change.
    first_bodies: HashMap<(String, u64), Value>,
    last: Option<Observed>,
}

fn env_name(env: Environment) -> &'static str {
    match env {
        Environment::Blue => "blue",
        Environment::Green => "green",
    }
}

fn variant_session() -> Session {
    let estate = rollback_node::Estate::from_toml(VARIANT_TOML, "variant.toml")
        .expect("the variant estate is valid");
    Session::simulated(estate)
}

/// Checks a real reply line against the model's expectation; returns it parsed.
fn check_reply(line: &str, out: &[u8], expected: &Option<ExpectedReply>) -> Option<Value> {
    let out = String::from_utf8(out.to_vec()).expect("reply_matches_model: reply is UTF-8");
    let Some(expected) = expected else {
        assert!(
            out.is_empty(),
            "reply_matches_model: expected no reply to {line:?}, got {out:?}"
        );
        return None;
    };
    assert!(
        out.ends_with('\n') && out.matches('\n').count() == 1,
        "reply_matches_model: expected exactly one reply line to {line:?}, got {out:?}"
    );
    let reply: Value = serde_json::from_str(out.trim_end())
        .unwrap_or_else(|e| panic!("reply_matches_model: reply {out:?} is not JSON: {e}"));
    let context =
        format!("reply_matches_model: line {line:?}\n  got      {out}  expected {expected:?}");
    let object = reply.as_object().expect("reply is an object");
    assert_eq!(object.len(), 3, "{context}");
    assert_eq!(reply["src"], json!(expected.src), "{context}");
    assert_eq!(reply["dest"], json!(expected.dest), "{context}");
    assert!(
        out.contains(r#","body":{"type":"#) && out.contains(r#"","in_reply_to":"#),
        "{context}: the body must start with type, then in_reply_to"
    );
    if let Some(exact) = &expected.exact {
        assert!(
            out.trim_end().ends_with(&format!(r#","body":{exact}}}"#)),
            "{context}: the body must be exactly {exact}"
        );
    }
    let body = &reply["body"];
    match &expected.outcome {
        Outcome::Ok(fields) => {
            let mut want = fields.clone();
            want["in_reply_to"] = json!(expected.in_reply_to);
            assert_eq!(body, &want, "{context}");
        }
        Outcome::Err(code) => {
            assert_eq!(body["type"], json!("error"), "{context}");
            assert_eq!(
                body["in_reply_to"],
                json!(expected.in_reply_to),
                "{context}"
            );
            assert_eq!(body["code"], json!(code), "{context}");
            assert!(
                body["text"].as_str().is_some_and(|t| !t.is_empty()),
                "{context}: an error needs a text"
            );
            assert_eq!(body.as_object().unwrap().len(), 4, "{context}");
        }
    }
    Some(reply)
}

struct NodeTest;

impl StateMachineTest for NodeTest {
    type SystemUnderTest = Sut;
    type Reference = Reference;

    fn init_test(model: &Model) -> Sut {
        let session = match model.estate {
            Estate::Example => Session::example(),
            Estate::Variant => variant_session(),
        };
        Sut {
            session,
            disabled: BTreeSet::new(),
            first_bodies: HashMap::new(),
            last: None,
        }
    }

    fn apply(mut sut: Sut, model: &Model, input: Input) -> Sut {
        let bytes = input.line();
        let line = String::from_utf8_lossy(&bytes).into_owned();
        let before = sut.session.machine().state().clone();
        let node_before = sut.session.node_id().map(str::to_owned);
        let mut out = Vec::new();
        let diagnostic = sut.session.handle_line(&bytes, &mut out);
        let after = sut.session.machine().state().clone();

        let reply = check_reply(&line, &out, &model.step.reply);
        let blank = line.trim().is_empty();
        assert_eq!(
            diagnostic.is_some(),
            reply.is_none() && !blank,
            "diagnostic_exactly_when_no_reply: line {line:?} got diagnostic {diagnostic:?}"
        );

        let refused = reply.as_ref().is_none_or(|r| r["body"]["type"] == "error");
        if refused {
            assert_eq!(
                before, after,
                "refused_request_changes_nothing: line {line:?} got {reply:?}"
            );
            assert_eq!(
                node_before,
                sut.session.node_id().map(str::to_owned),
                "refused_request_changes_nothing: node id, line {line:?}"
            );
        }

        if let Some(reply) = &reply {
            let body = &reply["body"];
            let feature = body["feature"].as_str().map(str::to_owned);
            // A retry repeats an old answer and flips nothing: only first answers count.
            let first = model.step.duplicate_of.is_none();
            match (first, body["type"].as_str(), feature) {
                (true, Some("feature_disabled"), Some(f)) => {
                    sut.disabled.insert(f);
                }
                (true, Some("feature_enabled"), Some(f)) => {
                    sut.disabled.remove(&f);
                }
                _ => {}
            }
            if let Some(key) = &model.step.first_answer {
                sut.first_bodies.insert(key.clone(), body.clone());
            }
        }
        sut.last = Some(Observed {
            line,
            before,
            after,
            reply,
        });
        sut
    }

    fn check_invariants(sut: &Sut, model: &Model) {
        let state = sut.session.machine().state();
        let last = state.migrations.len() as u64;
        assert!(
            state.schema_version <= last && last == model.last(),
            "schema_version_in_catalogue: {} not in 0..={last}",
            state.schema_version
        );
        assert!(
            matches!(state.traffic.live, Environment::Blue | Environment::Green),
            "exactly_one_live_environment"
        );

        assert_eq!(
            state.schema_version, model.schema,
            "model_equals_real_state: schema_version"
        );
        assert_eq!(state.flags, model.flags, "model_equals_real_state: flags");
        assert_eq!(
            env_name(state.traffic.live),
            model.live.name(),
            "model_equals_real_state: live"
        );
        assert_eq!(
            state.last_restore.as_ref().map(|r| (
                r.backup.clone(),
                r.restored_rows,
                r.schema_version
            )),
            model.last_restore,
            "model_equals_real_state: last_restore"
        );
        assert_eq!(
            sut.session.node_id(),
            model.node_id.as_deref(),
            "model_equals_real_state: node_id"
        );
        assert_eq!(
            sut.session.machine().seq(),
            model.seq,
            "model_equals_real_state: seq"
        );

        for flag in &sut.disabled {
            assert_eq!(
                state.flags.get(flag),
                Some(&false),
                "disabled_flag_stays_disabled_until_enabled: {flag}"
            );
        }

        let Some(observed) = &sut.last else { return };
        let line = &observed.line;
        let body = observed.reply.as_ref().map(|r| &r["body"]);

        if let Some(status) = body.filter(|b| b["type"] == "status_ok") {
            assert_eq!(
                status["live_environment"],
                json!(env_name(state.traffic.live)),
                "exactly_one_live_environment: status reports the live one"
            );
        }

        if let Some(key) = &model.step.duplicate_of {
            assert_eq!(
                body,
                sut.first_bodies.get(key),
                "duplicate_gets_identical_reply_and_changes_nothing: line {line:?}"
            );
            assert_eq!(
                observed.before, observed.after,
                "duplicate_gets_identical_reply_and_changes_nothing: state changed, line {line:?}"
            );
        }

        if let Some(forced) = body.filter(|b| b["type"] == "version_forced") {
            if model.step.duplicate_of.is_none() {
                let (before, after) = (&observed.before, &observed.after);
                assert_eq!(
                    (
                        forced["previous_version"].as_u64(),
                        forced["version"].as_u64()
                    ),
                    (Some(before.schema_version), Some(after.schema_version)),
                    "force_version_records_the_version_and_runs_nothing: line {line:?}"
                );
                assert_eq!(
                    (&before.flags, before.traffic.live, &before.last_restore),
                    (&after.flags, after.traffic.live, &after.last_restore),
                    "force_version_records_the_version_and_runs_nothing: only the version moves, line {line:?}"
                );
            }
        }

        if let Some(done) = body.filter(|b| b["type"] == "rollback_complete") {
            let from = done["rolled_back_from"].as_u64().unwrap();
            let to = done["rolled_back_to"].as_u64().unwrap();
            let seconds = done["duration_seconds"].as_u64().unwrap();
            let costs: u64 = (to + 1..=from).map(|v| model.migration(v).down).sum();
            assert_eq!(
                seconds, costs,
                "rollback_duration_is_sum_of_down_costs: line {line:?}"
            );
            if let Some(version) = model.step.rollback_version {
                let undone = observed.before.schema_version - version + 1;
                assert_eq!(
                    (from, to, from - to),
                    (
                        observed.before.schema_version,
                        observed.after.schema_version,
                        undone
                    ),
                    "rolled_back_span_is_migrations_undone: line {line:?}"
                );
            }
        }
    }
}

/// The case count, and failures saved where `cargo test` runs (the package root): proptest cannot
/// place them next to a file under `tests/` by itself.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(CASES),
        max_shrink_iters: 8192,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/test_model.txt",
        ))),
        ..ProptestConfig::default()
    }
}

prop_state_machine! {
    #![proptest_config(config())]

    #[test]
    fn node_follows_the_model(sequential 1..MAX_TRANSITIONS => NodeTest);
}

// ---------------------------------------------------------------------------------------------
// Determinism: replaying only the accepted requests reaches the same state with the same replies.
// ---------------------------------------------------------------------------------------------

fn any_input() -> BoxedStrategy<Input> {
    let names = Names::all();
    let id = prop_oneof![
        8 => (0u64..24).prop_map(|id| Some(json!(id))),
        1 => bad_msg_id(),
    ]
    .boxed();
    let src = prop_oneof![12 => sender().prop_map(Some), 1 => Just(None)].boxed();
    prop_oneof![
        12 => msg(src, id, any_kind(&names)).prop_map(Input::Msg),
        1 => garbage().prop_map(Input::Garbage),
    ]
    .boxed()
}

/// Lines, some of them copies of earlier ones (retries).
fn any_lines() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let estate_lines = prop::collection::vec(
        (
            any_input(),
            prop::option::weighted(0.2, any::<prop::sample::Index>()),
        ),
        1..MAX_TRANSITIONS,
    );
    estate_lines.prop_map(|items| {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        for (input, copy) in items {
            let line = match copy {
                Some(index) if !lines.is_empty() => lines[index.index(lines.len())].clone(),
                _ => input.line(),
            };
            lines.push(line);
        }
        lines
    })
}

fn run(session: &mut Session, lines: &[Vec<u8>]) -> Vec<String> {
    lines
        .iter()
        .map(|line| {
            let mut out = Vec::new();
            session.handle_line(line, &mut out);
            String::from_utf8(out).unwrap()
        })
        .collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn replaying_accepted_requests_is_deterministic(
        lines in any_lines(),
        variant in prop::bool::weighted(0.25),
    ) {
        let fresh = || if variant { variant_session() } else { Session::example() };
        let mut first = fresh();
        let replies = run(&mut first, &lines);
        let accepted: Vec<usize> = (0..lines.len())
            .filter(|&i| {
                !replies[i].is_empty()
                    && serde_json::from_str::<Value>(&replies[i]).unwrap()["body"]["type"] != "error"
            })
            .collect();
        let replay: Vec<Vec<u8>> = accepted.iter().map(|&i| lines[i].clone()).collect();
        let mut second = fresh();
        let replayed = run(&mut second, &replay);
        for (k, &i) in accepted.iter().enumerate() {
            prop_assert_eq!(
                &replayed[k],
                &replies[i],
                "replay_gives_identical_replies: line {:?}",
                String::from_utf8_lossy(&lines[i])
            );
        }
        prop_assert_eq!(
            second.machine().state(),
            first.machine().state(),
            "replay_reaches_the_same_state"
        );
        prop_assert_eq!(second.node_id(), first.node_id(), "replay_reaches_the_same_node_id");
    }
}
