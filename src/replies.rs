//! The typed values of the protocol: [`Version`], the one field type with rules of its own, and
//! one reply body per message. Each body's fields are written in declaration order after `type`
//! and `in_reply_to`; the field order here *is* the wire contract.

use crate::executor::Seconds;
use crate::refusal::Refusal;
use crate::state::{Environment, RestoreRecord};
use crate::transitions::{Reply as AnyReply, Request};
use crate::wire::BodyOut;
use crate::Reply;
use serde::de::{self, Unexpected, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// A migration version named in a request: an integer from 1 to 4294967295.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Version(u32);

impl Version {
    /// `Some` for 1 and up; 0 is not a version a request can name.
    pub fn new(version: u32) -> Option<Self> {
        (version > 0).then_some(Version(version))
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct VersionVisitor;

        impl Visitor<'_> for VersionVisitor {
            type Value = Version;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a migration version: an integer from 1 to 4294967295")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Version, E> {
                u32::try_from(v)
                    .ok()
                    .and_then(Version::new)
                    .ok_or_else(|| E::invalid_value(Unexpected::Unsigned(v), &self))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Version, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
                }
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Version, E> {
                Err(E::invalid_type(Unexpected::Float(v), &self))
            }
        }

        deserializer.deserialize_u64(VersionVisitor)
    }
}

/// `init_ok`: the node has taken its id.
#[derive(Debug, Clone, PartialEq, Eq, Reply)]
pub struct InitOk;

/// `rollback_complete`: the down() migrations ran.
#[derive(Debug, Clone, PartialEq, Eq, Reply)]
pub struct RollbackComplete {
    /// The schema version before.
    pub rolled_back_from: u32,
    /// The schema version now.
    pub rolled_back_to: u32,
    /// The sum of the down() costs run.
    pub duration_seconds: Seconds,
}

/// `migrate_complete`: the up() migrations ran.
#[derive(Debug, Clone, PartialEq, Eq, Reply)]
pub struct MigrateComplete {
    /// The schema version before.
    pub migrated_from: u32,
    /// The schema version now.
    pub migrated_to: u32,
    /// The sum of the up() costs run.
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
    pub downtime_seconds: Seconds,
}

/// `restore_complete`: the backup is restored.
#[derive(Debug, Clone, PartialEq, Eq, Reply)]
pub struct RestoreComplete {
    /// Rows restored.
    pub restored_rows: u64,
    /// How long it took.
    pub duration_seconds: Seconds,
}

/// `status_ok`: where the estate stands.
#[derive(Debug, Clone, PartialEq, Eq, Reply)]
pub struct StatusOk {
    /// The current schema version.
    pub schema_version: u32,
    /// The live environment.
    pub live_environment: Environment,
    /// Every flag and whether it is enabled.
    pub flags: BTreeMap<String, bool>,
    /// The last restore, or `null`.
    pub restore: Option<RestoreRecord>,
}

/// `history_ok`: the recent accepted changes, oldest first.
#[derive(Debug, Clone, PartialEq, Reply)]
pub struct HistoryOk {
    /// The entries.
    pub entries: Vec<HistoryEntry>,
}

/// One accepted change in the audit trail.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    /// Its sequence number among the answered changes (the journal's too).
    pub seq: u64,
    /// Who sent it.
    pub src: String,
    /// Its msg_id.
    pub msg_id: u64,
    /// The request.
    pub request: Request,
    /// The reply it got.
    pub reply: Result<AnyReply, Refusal>,
}

impl Serialize for HistoryEntry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut entry = serializer.serialize_struct("HistoryEntry", 5)?;
        entry.serialize_field("seq", &self.seq)?;
        entry.serialize_field("src", &self.src)?;
        entry.serialize_field("msg_id", &self.msg_id)?;
        entry.serialize_field("request", &self.request)?;
        match &self.reply {
            Ok(reply) => entry.serialize_field("reply", &BodyOut::new(Some(self.msg_id), reply))?,
            Err(refusal) => {
                entry.serialize_field("reply", &BodyOut::new(Some(self.msg_id), refusal))?
            }
        }
        entry.end()
    }
}
