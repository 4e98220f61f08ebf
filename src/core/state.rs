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
    /// Its version: migrations are numbered 1, 2, 3, ... in order.
    pub version: u32,
    /// A human name, used in messages and effects.
    pub name: String,
    /// Whether it has a down() at all.
    pub reversible: bool,
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
    pub schema_version: u32,
}

/// An estate's whole state. Loaded from an estate file, then changed only by completed
/// operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The version of the last applied migration; 0 when none is applied.
    pub schema_version: u32,
    /// The catalogue, versions 1, 2, 3, ... in order.
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
}

impl State {
    /// The built-in example estate's state.
    pub fn example() -> Self {
        crate::core::estate::Estate::example().state
    }

    /// The last catalogued version (0 for an empty catalogue).
    pub fn last_version(&self) -> u32 {
        self.migrations.len() as u32
    }

    /// The migration with this version, if catalogued.
    pub fn migration(&self, version: u32) -> Option<&Migration> {
        let index = usize::try_from(version).ok()?.checked_sub(1)?;
        self.migrations.get(index)
    }

    /// The backup with this name, if any.
    pub fn backup(&self, name: &str) -> Option<&Backup> {
        self.backups.iter().find(|b| b.name == name)
    }

    /// The backup to restore instead of rolling back to `target`: the newest one at or below it.
    pub fn backup_at_or_below(&self, target: u32) -> Option<&Backup> {
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
