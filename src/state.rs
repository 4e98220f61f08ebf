//! The formal state of an estate: the schema (current version and the catalogue of migrations
//! with their costs), the feature flags, the blue-green traffic position and the last restore.
//!
//! The same types are the estate file's format (TOML, see `estates/example.toml`); [`State::from_toml`]
//! reads and validates one. Nothing here performs anything: `transitions` decides, an
//! [`Executor`](crate::Executor) does.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use strum::{Display, EnumIter, EnumString, IntoStaticStr, VariantNames};

/// The built-in example estate, embedded at compile time.
pub const EXAMPLE_ESTATE: &str = include_str!("../estates/example.toml");

/// One of the two blue-green environments.
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
    Display,
    EnumString,
    EnumIter,
    IntoStaticStr,
    VariantNames,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Environment {
    /// The blue environment.
    Blue,
    /// The green environment.
    Green,
}

impl Environment {
    /// The other environment.
    pub fn other(self) -> Self {
        match self {
            Environment::Blue => Environment::Green,
            Environment::Green => Environment::Blue,
        }
    }
}

/// Whether an environment can take traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Display)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Health {
    /// Ready to take traffic.
    Healthy,
    /// Must not be switched to.
    Unhealthy,
}

/// One migration of the catalogue, with its cost model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Migration {
    /// Its version: migrations are numbered 1, 2, 3, ... in order.
    pub version: u32,
    /// A human name, used in messages.
    pub name: String,
    /// What up() costs, in seconds.
    pub up_seconds: u64,
    /// What down() costs, in seconds.
    pub down_seconds: u64,
    /// Whether it has a down() at all.
    #[serde(default = "yes")]
    pub reversible: bool,
}

fn yes() -> bool {
    true
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
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// Its name, as `restore` requests give it.
    pub name: String,
    /// How many rows it holds.
    pub rows: u64,
    /// The schema version it was taken at; restoring it sets the schema to this version.
    pub schema_version: u32,
    /// What a restore costs, in seconds.
    pub restore_seconds: u64,
}

/// The last restore performed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRecord {
    /// The backup restored.
    pub backup: String,
    /// How many rows it restored.
    pub restored_rows: u64,
    /// The schema version it set.
    pub schema_version: u32,
}

/// An estate's whole state. Loaded from an estate file, then changed only by transitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The version of the last applied migration; 0 when none is applied.
    pub schema_version: u32,
    /// The catalogue, versions 1, 2, 3, ... in order.
    #[serde(default)]
    pub migrations: Vec<Migration>,
    /// Feature flags: name to enabled.
    #[serde(default)]
    pub flags: BTreeMap<String, bool>,
    /// The blue-green position.
    pub traffic: Traffic,
    /// The backups that can be restored.
    #[serde(default)]
    pub backups: Vec<Backup>,
    /// Guard rails: message type to the senders allowed to send it. A type not listed is open
    /// to every sender.
    #[serde(default)]
    pub permissions: BTreeMap<String, Vec<String>>,
    /// The last restore, if any; never read from an estate file.
    #[serde(skip)]
    pub last_restore: Option<RestoreRecord>,
}

/// Why an estate description was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {problem}")]
pub struct EstateError {
    /// Where the description came from (a file name).
    pub origin: String,
    /// What is wrong, naming the field.
    pub problem: String,
}

impl State {
    /// The built-in example estate (`estates/example.toml`).
    pub fn example() -> Self {
        Self::from_toml(EXAMPLE_ESTATE, "estates/example.toml")
            .expect("the embedded example estate is valid (checked by a unit test)")
    }

    /// Reads and validates an estate description; `origin` names it in errors.
    ///
    /// # Errors
    /// An [`EstateError`] naming the origin, the field and what is wrong: a TOML or type error, a
    /// catalogue not numbered 1, 2, 3, ..., a schema version or backup beyond the catalogue, a
    /// duplicate or empty name.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, EstateError> {
        let error = |problem: String| EstateError {
            origin: origin.to_owned(),
            problem,
        };
        let state: State = toml::from_str(text).map_err(|e| error(e.to_string()))?;
        state.validate().map_err(error)?;
        Ok(state)
    }

    fn validate(&self) -> Result<(), String> {
        for (index, migration) in self.migrations.iter().enumerate() {
            let expected = index + 1;
            if migration.version as usize != expected {
                return Err(format!(
                    "migrations[{index}] has version {}, expected {expected}: versions run 1, 2, 3, ... in order",
                    migration.version
                ));
            }
            if migration.name.is_empty() {
                return Err(format!("migrations[{index}] has an empty name"));
            }
        }
        let last = self.last_version();
        if self.schema_version > last {
            return Err(format!(
                "schema_version {} is beyond the last migration ({last})",
                self.schema_version
            ));
        }
        if self.flags.keys().any(String::is_empty) {
            return Err("flags: a flag name is empty".to_owned());
        }
        for (kind, senders) in &self.permissions {
            if !crate::Request::TYPES.contains(&kind.as_str()) {
                return Err(format!(
                    "permissions.{kind}: there is no message type \"{kind}\"; known types: {}",
                    crate::Request::TYPES.join(", ")
                ));
            }
            if senders.iter().any(String::is_empty) {
                return Err(format!("permissions.{kind}: a sender name is empty"));
            }
        }
        for (index, backup) in self.backups.iter().enumerate() {
            if backup.name.is_empty() {
                return Err(format!("backups[{index}] has an empty name"));
            }
            if self.backups[..index].iter().any(|b| b.name == backup.name) {
                return Err(format!(
                    "backups[{index}]: the name \"{}\" is used twice",
                    backup.name
                ));
            }
            if backup.schema_version > last {
                return Err(format!(
                    "backups[{index}] (\"{}\") is at schema_version {}, beyond the last migration ({last})",
                    backup.name, backup.schema_version
                ));
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_estate_is_the_task_world() {
        let state = State::example();
        assert_eq!(state.schema_version, 3);
        assert_eq!(state.last_version(), 3);
        assert!(state
            .migrations
            .iter()
            .all(|m| m.up_seconds == 5 && m.down_seconds == 5 && m.reversible));
        assert_eq!(state.flags.get("new_checkout"), Some(&true));
        assert_eq!(state.traffic.live, Environment::Green);
        assert_eq!(state.traffic.health(Environment::Blue), Health::Healthy);
        let backup = state.backup("users_backup_20240115").unwrap();
        assert_eq!(
            (backup.rows, backup.schema_version, backup.restore_seconds),
            (100_000, 2, 60)
        );
        assert_eq!(state.last_restore, None);
    }

    fn with(replace: &str, by: &str) -> Result<State, EstateError> {
        assert!(EXAMPLE_ESTATE.contains(replace), "{replace}");
        State::from_toml(&EXAMPLE_ESTATE.replacen(replace, by, 1), "test.toml")
    }

    #[test]
    fn rejects_versions_out_of_order() {
        let error = with("version = 2\n", "version = 5\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "test.toml: migrations[1] has version 5, expected 2: versions run 1, 2, 3, ... in order"
        );
    }

    #[test]
    fn rejects_schema_version_beyond_catalogue() {
        let error = with("schema_version = 3", "schema_version = 4").unwrap_err();
        assert_eq!(
            error.to_string(),
            "test.toml: schema_version 4 is beyond the last migration (3)"
        );
    }

    #[test]
    fn rejects_backup_beyond_catalogue() {
        let error = with("schema_version = 2\nrestore", "schema_version = 9\nrestore").unwrap_err();
        assert!(
            error.to_string().contains("beyond the last migration (3)"),
            "{error}"
        );
    }

    #[test]
    fn rejects_unknown_environment_and_unknown_keys() {
        let error = with("live = \"green\"", "live = \"purple\"").unwrap_err();
        assert!(
            error.to_string().contains("unknown variant `purple`"),
            "{error}"
        );
        let error = with("[flags]", "colour = 1\n[flags]").unwrap_err();
        assert!(
            error.to_string().contains("unknown field `colour`"),
            "{error}"
        );
    }

    #[test]
    fn restore_hint_picks_newest_backup_at_or_below() {
        let state = State::example();
        assert_eq!(
            state.backup_at_or_below(2).map(|b| b.schema_version),
            Some(2)
        );
        assert_eq!(state.backup_at_or_below(1), None);
    }
}
