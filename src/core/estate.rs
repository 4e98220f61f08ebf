//! Estate files (TOML, see `estates/example.toml`): what an estate is made of and what its
//! changes cost in the simulated world. [`Estate::from_toml`] reads and validates one and splits
//! it into the formal [`State`] and the [`CostModel`] that only the simulated executor reads.

use crate::core::state::{Backup, Migration, State, Traffic};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The built-in example estate, embedded at compile time.
pub const EXAMPLE_ESTATE: &str = include_str!("../../estates/example.toml");

/// What the simulated executor charges for each change, in whole seconds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CostModel {
    /// up() seconds by version (index 0 is version 1).
    pub up: Vec<u64>,
    /// down() seconds by version (index 0 is version 1).
    pub down: Vec<u64>,
    /// Restore seconds by backup name.
    pub restore: BTreeMap<String, u64>,
}

impl CostModel {
    /// What up() of `version` costs.
    pub fn up_seconds(&self, version: u32) -> u64 {
        self.cost(&self.up, version)
    }

    /// What down() of `version` costs.
    pub fn down_seconds(&self, version: u32) -> u64 {
        self.cost(&self.down, version)
    }

    /// What restoring `backup` costs.
    pub fn restore_seconds(&self, backup: &str) -> u64 {
        self.restore.get(backup).copied().unwrap_or(0)
    }

    fn cost(&self, costs: &[u64], version: u32) -> u64 {
        (version as usize)
            .checked_sub(1)
            .and_then(|i| costs.get(i))
            .copied()
            .unwrap_or(0)
    }
}

/// A whole estate: its state and its cost model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Estate {
    /// The formal state it starts from.
    pub state: State,
    /// What changes cost in the simulated world.
    pub costs: CostModel,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    schema_version: u32,
    #[serde(default)]
    migrations: Vec<FileMigration>,
    #[serde(default)]
    flags: BTreeMap<String, bool>,
    traffic: Traffic,
    #[serde(default)]
    backups: Vec<FileBackup>,
    #[serde(default)]
    permissions: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMigration {
    version: u32,
    name: String,
    up_seconds: u64,
    down_seconds: u64,
    #[serde(default = "yes")]
    reversible: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBackup {
    name: String,
    rows: u64,
    schema_version: u32,
    restore_seconds: u64,
}

impl Estate {
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
    /// duplicate or empty name, a permission for an unknown message type.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, EstateError> {
        let error = |problem: String| EstateError {
            origin: origin.to_owned(),
            problem,
        };
        let file: File = toml::from_str(text).map_err(|e| error(e.to_string()))?;
        file.validate().map_err(error)?;
        let costs = CostModel {
            up: file.migrations.iter().map(|m| m.up_seconds).collect(),
            down: file.migrations.iter().map(|m| m.down_seconds).collect(),
            restore: file
                .backups
                .iter()
                .map(|b| (b.name.clone(), b.restore_seconds))
                .collect(),
        };
        let state = State {
            schema_version: file.schema_version,
            migrations: file
                .migrations
                .into_iter()
                .map(|m| Migration {
                    version: m.version,
                    name: m.name,
                    reversible: m.reversible,
                })
                .collect(),
            flags: file.flags,
            traffic: file.traffic,
            backups: file
                .backups
                .into_iter()
                .map(|b| Backup {
                    name: b.name,
                    rows: b.rows,
                    schema_version: b.schema_version,
                })
                .collect(),
            permissions: file.permissions,
            last_restore: None,
        };
        Ok(Estate { state, costs })
    }
}

impl File {
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
        let last = self.migrations.len() as u32;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::state::Health;
    use crate::protocol::Environment;

    #[test]
    fn example_estate_is_the_task_world() {
        let Estate { state, costs } = Estate::example();
        assert_eq!(state.schema_version, 3);
        assert_eq!(state.last_version(), 3);
        assert!(state.migrations.iter().all(|m| m.reversible));
        assert!((1..=3).all(|v| costs.up_seconds(v) == 5 && costs.down_seconds(v) == 5));
        assert_eq!(state.flags.get("new_checkout"), Some(&true));
        assert_eq!(state.traffic.live, Environment::Green);
        assert_eq!(state.traffic.health(Environment::Blue), Health::Healthy);
        let backup = state.backup("users_backup_20240115").unwrap();
        assert_eq!((backup.rows, backup.schema_version), (100_000, 2));
        assert_eq!(costs.restore_seconds("users_backup_20240115"), 60);
        assert_eq!(state.last_restore, None);
    }

    fn with(replace: &str, by: &str) -> Result<Estate, EstateError> {
        assert!(EXAMPLE_ESTATE.contains(replace), "{replace}");
        Estate::from_toml(&EXAMPLE_ESTATE.replacen(replace, by, 1), "test.toml")
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
