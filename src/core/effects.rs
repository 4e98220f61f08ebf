//! Decisions as data. A transition returns a [`Decision`]: a reply at once, a [`Lookup`] in the
//! audit trail, or an accepted [`Operation`] — its [`Plan`] (what the state becomes and how the
//! reply is built once it completes) and the [`Effect`]s an executor must perform, in order.
//! What an executor reports back is a [`Completion`]: success with measurements, or a
//! [`Failure`] saying how many effects completed and what went wrong ([`ExecError`]).
//!
//! Everything here is plain, serializable data: the journal records operations and completions
//! as they are, and `dry_run` shows the effects without performing them.

pub use crate::core::state::LayerKind;
use crate::core::state::{Backup, Health, Migration, SchemaHealth, State};
use crate::protocol::values::{Environment, Seconds};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Where an operation is decided and performed. One operation runs per lane at a time; lanes do
/// not wait for one another.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumIter,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Lane {
    /// rollback, migrate, restore: the database.
    Schema,
    /// switch_traffic: the load balancer.
    Traffic,
    /// disable_feature, enable_feature: the flag store.
    Flags,
}

impl Lane {
    /// Every lane.
    pub const ALL: [Lane; 3] = [Lane::Schema, Lane::Traffic, Lane::Flags];

    /// Its position in [`Lane::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a transition decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision<R> {
    /// Answered at once; nothing changes.
    Reply(R),
    /// Accepted: performed by effects, answered when they complete.
    Accept(Operation),
    /// Answered from the audit trail.
    Lookup(Lookup),
}

impl<R> Decision<R> {
    /// Maps the immediate reply.
    pub fn map<S>(self, f: impl FnOnce(R) -> S) -> Decision<S> {
        match self {
            Decision::Reply(reply) => Decision::Reply(f(reply)),
            Decision::Accept(operation) => Decision::Accept(operation),
            Decision::Lookup(lookup) => Decision::Lookup(lookup),
        }
    }
}

/// A question for the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The last `limit` changes of the audit trail, oldest first.
    History {
        /// How many.
        limit: u32,
        /// Only entries with a higher sequence number (paging on), oldest first.
        after: Option<u64>,
    },
    /// The backups, newest first.
    Backups,
    /// An approval of the ladder's rung awaiting one, for the ladder to answer.
    ApproveRung {
        /// The rung's index.
        rung: u64,
    },
}

/// An accepted state-changing request: what it will make of the state and the effects that
/// make it so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// What the state becomes and how the reply is built.
    pub plan: Plan,
    /// What an executor must do, in order.
    pub effects: Vec<Effect>,
}

/// The state change of an operation, applied when it completes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "plan", rename_all = "snake_case")]
pub enum Plan {
    /// The schema goes down from `from` to `to`, one down() per effect.
    Rollback {
        /// The version before.
        from: u64,
        /// The version after.
        to: u64,
    },
    /// The schema goes up from `from` to `to`, one up() per effect.
    Migrate {
        /// The version before.
        from: u64,
        /// The version after.
        to: u64,
    },
    /// A flag is set.
    SetFlag {
        /// The flag.
        feature: String,
        /// Its new value.
        enabled: bool,
    },
    /// Traffic moves from one environment to the other.
    SwitchTraffic {
        /// The live environment before.
        from: Environment,
        /// The live environment after.
        to: Environment,
    },
    /// The recorded schema version is set without running anything: a person resolved a dirty
    /// database.
    ForceVersion {
        /// The version before.
        from: u64,
        /// The version after.
        to: u64,
        /// Why the database was dirty, if it was.
        evidence: Option<String>,
    },
    /// A backup is restored: the schema follows it.
    Restore {
        /// The backup.
        backup: String,
        /// Its schema version.
        schema_version: u64,
        /// The rows the catalogue says it holds.
        rows: u64,
    },
}

/// One thing an executor does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// Run the down() of a migration.
    RunDown {
        /// Its version.
        version: u64,
        /// Its file (or catalogue name in the simulated world).
        file: String,
    },
    /// Run the up() of a migration.
    RunUp {
        /// Its version.
        version: u64,
        /// Its file (or catalogue name in the simulated world).
        file: String,
    },
    /// Write a flag's value to the flag store.
    WriteFlags {
        /// The flag.
        flag: String,
        /// Its new value.
        enabled: bool,
    },
    /// Set a load-balancer server's state.
    SetServerState {
        /// The server (environment).
        server: Environment,
        /// Its new state.
        state: ServerState,
    },
    /// Restore a backup into the live database.
    Restore {
        /// The backup.
        backup: String,
    },
    /// Take a backup of the live database first (before a migration), with its manifest.
    TakeBackup {
        /// Why, for its manifest.
        why: String,
        /// The schema version it is taken at.
        #[serde(default)]
        from: u64,
        /// The version the migration after it goes to (for its name).
        #[serde(default)]
        to: u64,
    },
    /// Set the database's recorded version and clear its dirty flag, running nothing.
    ForceVersion {
        /// The version.
        version: u64,
    },
    /// Refuse, changing nothing, unless the load balancer's own health checks call `server`
    /// healthy now (a real load balancer: its checks may have changed since the node read them).
    CheckHealthy {
        /// The server (environment).
        server: Environment,
    },
}

impl Effect {
    /// Whether performing it may change its system (a check does not).
    pub fn changes_something(&self) -> bool {
        !matches!(self, Effect::CheckHealthy { .. })
    }

    /// The layer whose executor performs it.
    pub fn layer(&self) -> LayerKind {
        match self {
            Effect::RunDown { .. } | Effect::RunUp { .. } | Effect::ForceVersion { .. } => {
                LayerKind::Schema
            }
            Effect::Restore { .. } | Effect::TakeBackup { .. } => LayerKind::Backups,
            Effect::WriteFlags { .. } => LayerKind::Flags,
            Effect::SetServerState { .. } | Effect::CheckHealthy { .. } => LayerKind::Traffic,
        }
    }
}

/// A load-balancer server state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::Display)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum ServerState {
    /// Takes new connections.
    Ready,
    /// Finishes its open connections and takes no new ones.
    Drain,
}

/// What an executor reports for an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Completion {
    /// Every effect was performed.
    Done(Done),
    /// An effect failed.
    Failed(Failure),
}

/// Measurements of a completed operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// How long it took: modelled or measured.
    pub duration: Seconds,
    /// Rows restored, when the operation restored a backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// The files a real database ran, in order, with their checksums and times.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ran: Vec<Ran>,
    /// When it finished, in milliseconds since the Unix epoch (real executors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
    /// The schema version the database is at after a restore, as read from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<u64>,
    /// Where a restore kept the database it replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<String>,
    /// The verified backups after it, when it took one (oldest first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<Vec<Backup>>,
}

impl Default for Done {
    fn default() -> Self {
        Done::took(Seconds::ZERO)
    }
}

impl Done {
    /// Two runs of one operation's effects, one after the other: durations add up, files run
    /// are listed in order, and what the later one reports wins.
    pub fn then(mut self, later: Done) -> Done {
        self.duration = self.duration.plus(later.duration);
        self.ran.extend(later.ran);
        take(&mut self.rows, later.rows);
        take(&mut self.at, later.at);
        take(&mut self.schema_version, later.schema_version);
        take(&mut self.kept, later.kept);
        take(&mut self.backups, later.backups);
        self
    }

    /// A completion that took `duration` and reports nothing else.
    pub fn took(duration: Seconds) -> Self {
        Done {
            duration,
            rows: None,
            ran: Vec::new(),
            at: None,
            schema_version: None,
            kept: None,
            backups: None,
        }
    }
}

/// One statement a file would run, as a dry run lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementView {
    /// The file.
    pub file: String,
    /// Its 1-based line.
    pub line: u64,
    /// The statement.
    pub statement: String,
}

/// One file a real database ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ran {
    /// The file.
    pub file: String,
    /// Its SHA-384, hex.
    pub checksum: String,
    /// How long it took, in milliseconds.
    pub millis: u64,
    /// The protocol it ran under and why (one transaction, with pragmas around it, or
    /// golang-migrate's dirty protocol); empty in rows written before it was recorded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
}

/// Puts `from` into `into` when it holds something: what a later report says wins.
fn take<T>(into: &mut Option<T>, from: Option<T>) {
    if from.is_some() {
        *into = from;
    }
}

/// How a failed effect left its system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// What it names does not exist (an unknown backup, say): nothing changed (20).
    Missing,
    /// The system refused it on a precondition it checks itself (an unhealthy target, say):
    /// nothing changed (22).
    Refused,
    /// It failed and changed nothing (14, or 13 when effects before it completed).
    NothingChanged,
    /// It may have changed something part-way (13).
    PartWay,
}

/// A failed operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// How many effects completed before the failure.
    pub completed: usize,
    /// How the failed effect left its system.
    pub kind: FailureKind,
    /// What went wrong.
    pub error: ExecError,
    /// What the executor found true after the failure, when it could tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now: Option<Box<Found>>,
}

/// A failure as journals have recorded it: `kind`, or the three booleans of earlier versions.
#[derive(Deserialize)]
struct FailureRecord {
    completed: usize,
    kind: Option<FailureKind>,
    #[serde(default)]
    part_way: bool,
    #[serde(default)]
    refused: bool,
    #[serde(default)]
    missing: bool,
    error: ExecError,
    #[serde(default)]
    now: Option<Box<Found>>,
}

impl<'de> Deserialize<'de> for Failure {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let record = FailureRecord::deserialize(deserializer)?;
        let kind = record.kind.unwrap_or(if record.missing {
            FailureKind::Missing
        } else if record.refused {
            FailureKind::Refused
        } else if record.part_way {
            FailureKind::PartWay
        } else {
            FailureKind::NothingChanged
        });
        Ok(Failure {
            completed: record.completed,
            kind,
            error: record.error,
            now: record.now,
        })
    }
}

impl Failure {
    /// A failure of the first effect, before anything changed.
    pub fn nothing_changed(error: ExecError) -> Self {
        Failure::new(FailureKind::NothingChanged, error)
    }

    /// A failure of the first effect that left its system as `kind` says.
    pub fn new(kind: FailureKind, error: ExecError) -> Self {
        Failure {
            completed: 0,
            kind,
            error,
            now: None,
        }
    }

    /// With what the executor found true after it.
    pub fn found(mut self, now: Option<Found>) -> Self {
        self.now = now.map(Box::new);
        self
    }

    /// Whether the system may be part-way: the failed effect changed something, or effects of
    /// `effects` (the operation's) that change something completed before it.
    pub fn is_part_way(&self, effects: &[Effect]) -> bool {
        self.kind == FailureKind::PartWay
            || effects
                .iter()
                .take(self.completed)
                .any(Effect::changes_something)
    }
}

/// What an executor says is true now, when the node reconciles an interrupted operation.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Found {
    /// The schema version the database is at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<u64>,
    /// The database's dirty flag and drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_health: Option<SchemaHealth>,
    /// The catalogue read from the migrations directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalogue: Option<Vec<Migration>>,
    /// The flags as the flag store holds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<BTreeMap<String, bool>>,
    /// The live environment as the load balancer says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_environment: Option<Environment>,
    /// The health of blue and green as the load balancer's checks say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<(Health, Health)>,
    /// The verified backups in the backups directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<Vec<Backup>>,
    /// Why the executor could not say, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
}

impl Found {
    /// What both say, `later` winning where both say something.
    pub fn merge(mut self, later: Found) -> Found {
        take(&mut self.schema_version, later.schema_version);
        take(&mut self.schema_health, later.schema_health);
        take(&mut self.catalogue, later.catalogue);
        take(&mut self.flags, later.flags);
        take(&mut self.live_environment, later.live_environment);
        take(&mut self.health, later.health);
        take(&mut self.backups, later.backups);
        take(&mut self.unknown, later.unknown);
        self
    }

    /// Makes `state` agree with what was found.
    pub fn apply(&self, state: &mut State) {
        if let Some(catalogue) = &self.catalogue {
            state.migrations.clone_from(catalogue);
        }
        if let Some(version) = self.schema_version {
            state.schema_version = version;
        }
        if let Some(health) = &self.schema_health {
            state.schema_health = health.clone();
        }
        if let Some(backups) = &self.backups {
            state.backups.clone_from(backups);
        }
        if let Some((blue, green)) = self.health {
            state.traffic.blue = blue;
            state.traffic.green = green;
        }
        if let Some(flags) = &self.flags {
            state.flags.clone_from(flags);
        }
        if let Some(live) = self.live_environment {
            state.traffic.live = live;
        }
    }
}

/// What went wrong in an effect: which capability, what it was doing, where, and what the system
/// said. Rendered once, into the reply's text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExecError {
    /// The system could not be reached (a socket, a database, a file).
    #[error("{system} could not be reached at {place}: {said}")]
    Unreachable {
        /// The system.
        system: String,
        /// Where it was looked for.
        place: String,
        /// What was said.
        said: String,
    },
    /// The system refused or failed an action.
    #[error("{action} failed{}: {said}", at(place))]
    Failed {
        /// What was being done.
        action: String,
        /// Where: a file and line, a statement, a server.
        place: Option<String>,
        /// What the system said.
        said: String,
    },
}

fn at(place: &Option<String>) -> String {
    match place {
        Some(place) => format!(" at {place}"),
        None => String::new(),
    }
}

impl ExecError {
    /// The error as it follows "WHAT failed" in a reply: `: ` and the whole error, or, when its
    /// action is `what` itself, only where and what the system said (so nothing is said twice).
    pub fn after(&self, what: &str) -> String {
        match self {
            ExecError::Failed {
                action,
                place,
                said,
            } if action == what => format!("{}: {said}", at(place)),
            other => format!(": {other}"),
        }
    }

    /// A failed action.
    pub fn failed(
        action: impl Into<String>,
        place: Option<String>,
        said: impl fmt::Display,
    ) -> Self {
        ExecError::Failed {
            action: action.into(),
            place,
            said: said.to_string(),
        }
    }
}

impl Operation {
    /// The completion a dry run assumes: every effect succeeds, the catalogue's row counts hold.
    pub fn expected_completion(&self) -> Completion {
        Completion::Done(Done {
            rows: match &self.plan {
                Plan::Restore { rows, .. } => Some(*rows),
                _ => None,
            },
            ..Done::took(Seconds::ZERO)
        })
    }
}
