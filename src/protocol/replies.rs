//! One reply body per message. Each body's fields are written in declaration order after `type`
//! and `in_reply_to`; the field order here *is* the wire contract.

use crate::protocol::encode::ReplyBody;
pub use crate::protocol::values::Seconds;
use crate::protocol::values::{
    BackupView, DatabaseView, Environment, InFlightView, InterruptedView, RestoreRecord,
};
use rollback_node_macros::Reply;
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// `init_ok`: the node has taken its id.
#[derive(Debug, Clone, PartialEq, Eq, Reply)]
pub struct InitOk;

/// `rollback_complete`: the down() migrations ran.
#[derive(Debug, Clone, PartialEq, Eq, Reply)]
pub struct RollbackComplete {
    /// The schema version before.
    pub rolled_back_from: u64,
    /// The schema version now.
    pub rolled_back_to: u64,
    /// How long the down() migrations took.
    pub duration_seconds: Seconds,
}

/// `migrate_complete`: the up() migrations ran.
#[derive(Debug, Clone, PartialEq, Eq, Reply)]
pub struct MigrateComplete {
    /// The schema version before.
    pub migrated_from: u64,
    /// The schema version now.
    pub migrated_to: u64,
    /// How long the up() migrations took.
    pub duration_seconds: Seconds,
}

/// `feature_disabled`: the kill switch is off, with no deployment.
#[derive(Debug, Clone, PartialEq, Eq, Reply)]
pub struct FeatureDisabled {
    /// The flag.
    pub feature: String,
    /// Always `true`: a flag flip takes effect at once.
    pub rolled_back_instant: bool,
}

/// `rung_approved`: the ladder's rung awaiting approval may run.
#[derive(Debug, Clone, PartialEq, Eq, Reply)]
pub struct RungApproved {
    /// The rung's index.
    pub rung: u64,
}

/// `feature_enabled`: the flag is on again.
#[derive(Debug, Clone, PartialEq, Eq, Reply)]
pub struct FeatureEnabled {
    /// The flag.
    pub feature: String,
}

/// `traffic_switched`: traffic now goes to `current_environment`.
#[derive(Debug, Clone, PartialEq, Eq, Reply)]
pub struct TrafficSwitched {
    /// The live environment now.
    pub current_environment: Environment,
    /// How long no environment took traffic.
    pub downtime_seconds: u64,
}

/// `restore_complete`: the backup is restored.
#[derive(Debug, Clone, PartialEq, Eq, Reply)]
pub struct RestoreComplete {
    /// Rows restored.
    pub restored_rows: u64,
    /// How long it took.
    pub duration_seconds: Seconds,
}

/// `version_forced`: the database's recorded version was set and its dirty flag cleared,
/// running nothing.
#[derive(Debug, Clone, PartialEq, Eq, Reply)]
pub struct VersionForced {
    /// The version recorded before.
    pub previous_version: u64,
    /// The version recorded now.
    pub version: u64,
    /// Why it was dirty (the file, statement and what the database said), or `null`.
    pub was_dirty: Option<String>,
}

/// `backups_ok`: the backups, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Reply)]
pub struct BackupsOk {
    /// The backups.
    pub backups: Vec<BackupView>,
}

/// `status_ok`: where the estate stands. `in_flight` and `interrupted` are written only when
/// they are not empty, so an idle node's reply is exactly the four fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusOk {
    /// The current schema version.
    pub schema_version: u64,
    /// The live environment (`null` when the estate describes no traffic).
    pub live_environment: Option<Environment>,
    /// Every flag and whether it is enabled.
    pub flags: BTreeMap<String, bool>,
    /// The last restore, or `null`.
    pub restore: Option<RestoreRecord>,
    /// A real database's URL, dirty flag and drift (absent for a simulated schema).
    pub database: Option<DatabaseView>,
    /// Operations running or queued in their lanes.
    pub in_flight: Vec<InFlightView>,
    /// Operations a crash cut short, reconciled at start.
    pub interrupted: Vec<InterruptedView>,
    /// The escalation ladder, when the estate configures one: `{"state", "rung", "runs",
    /// "signals"}`.
    pub ladder: Option<serde_json::Value>,
}

impl StatusOk {
    /// A status with nothing in flight and nothing interrupted.
    pub fn new(
        schema_version: u64,
        live_environment: Environment,
        flags: BTreeMap<String, bool>,
        restore: Option<RestoreRecord>,
    ) -> Self {
        StatusOk {
            schema_version,
            live_environment: Some(live_environment),
            flags,
            restore,
            database: None,
            in_flight: Vec::new(),
            interrupted: Vec::new(),
            ladder: None,
        }
    }
}

impl ReplyBody for StatusOk {
    fn type_name(&self) -> &'static str {
        "status_ok"
    }

    fn serialize_fields<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        map.serialize_entry("schema_version", &self.schema_version)?;
        map.serialize_entry("live_environment", &self.live_environment)?;
        map.serialize_entry("flags", &self.flags)?;
        map.serialize_entry("restore", &self.restore)?;
        if let Some(database) = &self.database {
            map.serialize_entry("database", database)?;
        }
        if !self.in_flight.is_empty() {
            map.serialize_entry("in_flight", &self.in_flight)?;
        }
        if !self.interrupted.is_empty() {
            map.serialize_entry("interrupted", &self.interrupted)?;
        }
        if let Some(ladder) = &self.ladder {
            map.serialize_entry("ladder", ladder)?;
        }
        Ok(())
    }
}

/// The fields of `status_ok`, as a JSON object: the shape of `state_after` in `plan_ok`.
impl Serialize for StatusOk {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        self.serialize_fields(&mut map)?;
        map.end()
    }
}

/// `history_ok`: the recent changes, oldest first.
#[derive(Debug, Clone, PartialEq, Reply)]
pub struct HistoryOk {
    /// The entries.
    pub entries: Vec<HistoryEntry>,
}

/// One change in the audit trail, as the store holds it: the request and the reply as the JSON
/// they were recorded as.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    /// Its sequence number among the answered changes (the journal's too).
    pub seq: u64,
    /// Who sent it.
    pub src: String,
    /// Its msg_id.
    pub msg_id: u64,
    /// The request body, as JSON.
    pub request: Box<RawValue>,
    /// The reply body, as JSON.
    pub reply: Box<RawValue>,
    /// The files a real database ran, with their checksums and times (written only then).
    pub ran: Option<Box<RawValue>>,
    /// When a real executor finished, in milliseconds since the Unix epoch (written only then).
    pub at: Option<u64>,
    /// How long a real executor took, measured (written only then).
    pub took_seconds: Option<Seconds>,
    /// For an operation the escalation ladder took (sender `ladder`): the samples that caused
    /// it, its run and rung, and who approved it.
    pub why: Option<Box<RawValue>>,
}

impl PartialEq for HistoryEntry {
    fn eq(&self, other: &Self) -> bool {
        (
            self.seq,
            &self.src,
            self.msg_id,
            self.request.get(),
            self.reply.get(),
        ) == (
            other.seq,
            &other.src,
            other.msg_id,
            other.request.get(),
            other.reply.get(),
        )
    }
}

impl HistoryEntry {
    /// One JSON line: `{"seq":…,"src":…,"msg_id":…,"request":{…},"reply":{…}}`.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl Serialize for HistoryEntry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut entry = serializer.serialize_struct("HistoryEntry", 9)?;
        entry.serialize_field("seq", &self.seq)?;
        entry.serialize_field("src", &self.src)?;
        entry.serialize_field("msg_id", &self.msg_id)?;
        entry.serialize_field("request", &self.request)?;
        entry.serialize_field("reply", &self.reply)?;
        if let Some(ran) = &self.ran {
            entry.serialize_field("ran", ran)?;
        }
        if let Some(at) = self.at {
            entry.serialize_field("at", &at)?;
        }
        if let Some(took) = self.took_seconds {
            entry.serialize_field("took_seconds", &took)?;
        }
        if let Some(why) = &self.why {
            entry.serialize_field("why", why)?;
        }
        entry.end()
    }
}
