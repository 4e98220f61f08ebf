//! The formal state of an estate: the schema (current version and the catalogue of migrations),
//! the feature flags, the blue-green position, the backups and the last restore. What things
//! cost is not here: that belongs to the executors ([`crate::exec::simulated`] models it).
//!
//! Nothing here performs anything; [`crate::core::transitions`] decides and the operations it
//! accepts change the state only when they complete.

use crate::protocol::values::{Environment, RestoreRecord};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Whether an environment can take traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::Display)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Health {
    /// Ready to take traffic.
    Healthy,
    /// Must not be switched to.
    Unhealthy,
}

/// One migration of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    /// Its version. Versions ascend but need not be consecutive (timestamps, say).
    pub version: u64,
    /// A human name, used in messages and effects.
    pub name: String,
    /// Whether it has a down() at all.
    pub reversible: bool,
    /// Its up() file's name, for a real database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_file: Option<String>,
    /// Its down() file's name, for a real database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_file: Option<String>,
}

/// The blue-green position: which environment is live and the health of each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    /// The environment that takes traffic now.
    pub live: Environment,
    /// The health of blue.
    pub blue: Health,
    /// The health of green.
    pub green: Health,
}

impl Traffic {
    /// The health of `environment`.
    pub fn health(&self, environment: Environment) -> Health {
        match environment {
            Environment::Blue => self.blue,
            Environment::Green => self.green,
        }
    }
}

/// A backup that can be restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// Its name, as `restore` requests give it.
    pub name: String,
    /// How many rows it holds.
    pub rows: u64,
    /// The schema version it was taken at; restoring it sets the schema to this version.
    pub schema_version: u64,
}

/// The four layers of an estate, each performed by one executor.
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
pub enum LayerKind {
    /// Migrations: `RunDown`, `RunUp`, `ForceVersion`.
    Schema,
    /// Backups: `TakeBackup`, `Restore`.
    Backups,
    /// Feature flags: `WriteFlags`.
    Flags,
    /// Blue-green traffic: `CheckHealthy`, `SetServerState`.
    Traffic,
}

impl LayerKind {
    /// Every layer.
    pub const ALL: [LayerKind; 4] = [
        LayerKind::Schema,
        LayerKind::Backups,
        LayerKind::Flags,
        LayerKind::Traffic,
    ];

    /// Its position in [`LayerKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// How the node manages one layer of the estate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Layer {
    /// The estate does not describe it: requests for it are refused.
    #[default]
    Absent,
    /// The simulated world performs it (the estate's cost model).
    Simulated,
    /// A real system performs it; the text says which and where (a database URL with its
    /// password hidden, a flag file, a load balancer's socket and backend).
    Real(String),
}

impl Layer {
    /// Whether the estate describes it.
    pub fn is_present(&self) -> bool {
        !matches!(self, Layer::Absent)
    }

    /// Whether a real system performs it.
    pub fn is_real(&self) -> bool {
        matches!(self, Layer::Real(_))
    }

    /// The real system, if any.
    pub fn real(&self) -> Option<&str> {
        match self {
            Layer::Real(place) => Some(place),
            _ => None,
        }
    }
}

/// Written as snapshots have always held it: `null`, `"simulated"` or the real system's text.
impl Serialize for Layer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Layer::Absent => serializer.serialize_none(),
            Layer::Simulated => serializer.serialize_str(SIMULATED),
            Layer::Real(place) => serializer.serialize_str(place),
        }
    }
}

impl<'de> Deserialize<'de> for Layer {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Option::<String>::deserialize(deserializer)? {
            None => Layer::Absent,
            Some(text) if text == SIMULATED => Layer::Simulated,
            Some(place) => Layer::Real(place),
        })
    }
}

const SIMULATED: &str = "simulated";

/// Which layers of the estate the node manages, and how: a request for a layer the estate does
/// not describe is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layers {
    /// Migrations (rollback, migrate, force_version).
    #[serde(default)]
    pub schema: Layer,
    /// Restores and backups.
    #[serde(default)]
    pub backups: Layer,
    /// Feature flags.
    #[serde(default)]
    pub flags: Layer,
    /// Blue-green traffic.
    #[serde(default)]
    pub traffic: Layer,
}

impl Default for Layers {
    fn default() -> Self {
        Layers {
            schema: Layer::Simulated,
            backups: Layer::Simulated,
            flags: Layer::Simulated,
            traffic: Layer::Simulated,
        }
    }
}

impl Layers {
    /// The layer of `kind`.
    pub fn get(&self, kind: LayerKind) -> &Layer {
        use LayerKind;
        match kind {
            LayerKind::Schema => &self.schema,
            LayerKind::Backups => &self.backups,
            LayerKind::Flags => &self.flags,
            LayerKind::Traffic => &self.traffic,
        }
    }

    /// The layer of `kind`, to set.
    pub fn get_mut(&mut self, kind: LayerKind) -> &mut Layer {
        use LayerKind;
        match kind {
            LayerKind::Schema => &mut self.schema,
            LayerKind::Backups => &mut self.backups,
            LayerKind::Flags => &mut self.flags,
            LayerKind::Traffic => &mut self.traffic,
        }
    }
}

/// What a real database says about its schema beyond its version.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SchemaHealth {
    /// Dirty: a change outside a transaction failed part-way, with the evidence (file,
    /// statement, what the database said), or "left dirty by another tool".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty: Option<String>,
    /// Applied files whose content changed since they were applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
}

/// An estate's whole state. Loaded from an estate file, then changed only by completed
/// operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The version of the last applied migration; 0 when none is applied.
    pub schema_version: u64,
    /// The catalogue, in ascending version order.
    pub migrations: Vec<Migration>,
    /// Feature flags: name to enabled.
    pub flags: BTreeMap<String, bool>,
    /// The blue-green position.
    pub traffic: Traffic,
    /// The backups that can be restored.
    pub backups: Vec<Backup>,
    /// Guard rails: message type to the senders allowed to send it. A type not listed is open
    /// to every sender.
    pub permissions: BTreeMap<String, Vec<String>>,
    /// The last restore, if any.
    pub last_restore: Option<RestoreRecord>,
    /// The layers the estate describes, and what manages each.
    #[serde(default)]
    pub layers: Layers,
    /// A real database's dirty flag and drift.
    #[serde(default)]
    pub schema_health: SchemaHealth,
}

impl State {
    /// The last catalogued version (0 for an empty catalogue).
    pub fn last_version(&self) -> u64 {
        self.migrations.last().map_or(0, |m| m.version)
    }

    /// The migration with this version, if catalogued.
    pub fn migration(&self, version: u64) -> Option<&Migration> {
        let at = self
            .migrations
            .binary_search_by_key(&version, |m| m.version)
            .ok()?;
        self.migrations.get(at)
    }

    /// The catalogued version before `version` (0 when there is none).
    pub fn previous_version(&self, version: u64) -> u64 {
        let at = self.migrations.partition_point(|m| m.version < version);
        at.checked_sub(1)
            .and_then(|i| self.migrations.get(i))
            .map_or(0, |m| m.version)
    }

    /// The catalogued migrations with versions in `low..=high`, ascending.
    pub fn migrations_between(&self, low: u64, high: u64) -> &[Migration] {
        let from = self.migrations.partition_point(|m| m.version < low);
        let to = self.migrations.partition_point(|m| m.version <= high);
        &self.migrations[from..to.max(from)]
    }

    /// The backup with this name, if any.
    pub fn backup(&self, name: &str) -> Option<&Backup> {
        self.backups.iter().find(|b| b.name == name)
    }

    /// The backup to restore instead of rolling back to `target`: the newest one at or below it.
    pub fn backup_at_or_below(&self, target: u64) -> Option<&Backup> {
        self.backups
            .iter()
            .filter(|b| b.schema_version <= target)
            .max_by_key(|b| b.schema_version)
    }

    /// The flag names, comma-separated, for error texts.
    pub fn flag_names(&self) -> String {
        join(self.flags.keys())
    }

    /// The backup names, comma-separated, for error texts.
    pub fn backup_names(&self) -> String {
        join(self.backups.iter().map(|b| &b.name))
    }
}

/// `a, b, c`, or `(none)`.
pub(crate) fn join<I, S>(items: I) -> String
where
    I: IntoIterator<Item = S>,
    S: std::fmt::Display,
{
    let mut joined = String::new();
    for item in items {
        if !joined.is_empty() {
            joined.push_str(", ");
        }
        let _ = write!(joined, "{item}");
    }
    if joined.is_empty() {
        joined.push_str("(none)");
    }
    joined
}
