//! Estate files (TOML, see `estates/example.toml`): what an estate is made of and what its
//! changes cost in the simulated world. [`Estate::from_toml`] reads and validates one and splits
//! it into the formal [`State`] and the [`CostModel`] that only the simulated executor reads.

use crate::core::state::{Backup, Health, Layers, Migration, SchemaHealth, State, Traffic};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The built-in example estate, embedded at compile time.
pub const EXAMPLE_ESTATE: &str = include_str!("../../estates/example.toml");

/// What the simulated executor charges for each change, in whole seconds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CostModel {
    /// up() seconds by version.
    pub up: BTreeMap<u64, u64>,
    /// down() seconds by version.
    pub down: BTreeMap<u64, u64>,
    /// Restore seconds by backup name.
    pub restore: BTreeMap<String, u64>,
}

impl CostModel {
    /// What up() of `version` costs.
    pub fn up_seconds(&self, version: u64) -> u64 {
        self.up.get(&version).copied().unwrap_or(0)
    }

    /// What down() of `version` costs.
    pub fn down_seconds(&self, version: u64) -> u64 {
        self.down.get(&version).copied().unwrap_or(0)
    }

    /// What restoring `backup` costs.
    pub fn restore_seconds(&self, backup: &str) -> u64 {
        self.restore.get(backup).copied().unwrap_or(0)
    }
}

/// The real systems an estate names (paths as written: relative to the estate file).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Systems {
    /// `[schema]`: a real database and its golang-migrate directory.
    pub schema: Option<SchemaSystem>,
    /// `[backups] dir`: a directory of real backups.
    pub backups: Option<String>,
    /// `[backups] keep`: how many of the backups the node takes are kept.
    pub keep_backups: Option<usize>,
    /// `[flagd] file`: a flagd flag-definition file.
    pub flagd: Option<String>,
    /// `[haproxy]`: a load balancer's runtime API.
    pub haproxy: Option<HaproxySystem>,
}

/// `[schema]`: `database = "sqlite:PATH"` or `"postgres://USER@/DB?host=SOCKETDIR"`, and
/// `migrations = DIR`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaSystem {
    /// The database URL.
    pub database: String,
    /// The golang-migrate directory.
    pub migrations: String,
}

/// `[haproxy]`: `socket = PATH` (the admin socket), `backend = NAME` (with servers `blue` and
/// `green`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaproxySystem {
    /// The admin socket.
    pub socket: String,
    /// The backend holding the `blue` and `green` servers.
    pub backend: String,
}

/// A whole estate: its state, its cost model and the real systems it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Estate {
    /// The formal state it starts from (for a real layer, what the system says replaces it at
    /// start).
    pub state: State,
    /// What changes cost in the simulated world.
    pub costs: CostModel,
    /// The real systems.
    pub systems: Systems,
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
    schema_version: Option<u64>,
    #[serde(default)]
    migrations: Vec<FileMigration>,
    flags: Option<BTreeMap<String, bool>>,
    traffic: Option<Traffic>,
    backups: Option<FileBackups>,
    #[serde(default)]
    permissions: BTreeMap<String, Vec<String>>,
    schema: Option<SchemaSystem>,
    flagd: Option<FlagdSystem>,
    haproxy: Option<HaproxySystem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagdSystem {
    file: String,
}

/// `[[backups]]` (simulated backups) or `[backups] dir = DIR` (real ones).
enum FileBackups {
    Simulated(Vec<FileBackup>),
    Real(RealBackups),
}

/// By shape: an array of tables or one table, so that an error inside either is reported as
/// it is.
impl<'de> Deserialize<'de> for FileBackups {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
        struct Shape;
        impl<'de> serde::de::Visitor<'de> for Shape {
            type Value = FileBackups;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("[[backups]] tables (simulated backups) or a [backups] table with dir")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<FileBackups, A::Error> {
                Vec::deserialize(SeqAccessDeserializer::new(seq)).map(FileBackups::Simulated)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<FileBackups, A::Error> {
                RealBackups::deserialize(MapAccessDeserializer::new(map)).map(FileBackups::Real)
            }
        }
        deserializer.deserialize_any(Shape)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RealBackups {
    dir: String,
    keep: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMigration {
    version: u64,
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
    schema_version: u64,
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
    /// Each layer is simulated (`schema_version` and `[[migrations]]`; `[[backups]]`; `[flags]`;
    /// `[traffic]`), real (`[schema]`; `[backups] dir`; `[flagd]`; `[haproxy]`) or absent.
    ///
    /// # Errors
    /// An [`EstateError`] naming the origin, the field and what is wrong: a TOML or type error, a
    /// catalogue not numbered 1, 2, 3, ..., a schema version or backup beyond the catalogue, a
    /// duplicate or empty name, a permission for an unknown message type, a layer described
    /// both ways.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, EstateError> {
        let error = |problem: String| EstateError {
            origin: origin.to_owned(),
            problem,
        };
        let file: File = toml::from_str(text).map_err(|e| error(one_line(&e, text)))?;
        file.validate().map_err(error)?;
        let simulated_backups = match &file.backups {
            Some(FileBackups::Simulated(backups)) => backups.as_slice(),
            _ => &[],
        };
        let costs = CostModel {
            up: file
                .migrations
                .iter()
                .map(|m| (m.version, m.up_seconds))
                .collect(),
            down: file
                .migrations
                .iter()
                .map(|m| (m.version, m.down_seconds))
                .collect(),
            restore: simulated_backups
                .iter()
                .map(|b| (b.name.clone(), b.restore_seconds))
                .collect(),
        };
        let simulated = |present: bool| present.then(|| "simulated".to_owned());
        let layers = Layers {
            schema: match &file.schema {
                Some(system) => Some(system.database.clone()),
                None => simulated(file.schema_version.is_some() || !file.migrations.is_empty()),
            },
            backups: match &file.backups {
                Some(FileBackups::Real(real)) => Some(real.dir.clone()),
                Some(FileBackups::Simulated(_)) => simulated(true),
                None => None,
            },
            flags: match &file.flagd {
                Some(flagd) => Some(flagd.file.clone()),
                None => simulated(file.flags.is_some()),
            },
            traffic: match &file.haproxy {
                Some(haproxy) => Some(format!(
                    "haproxy {} backend {}",
                    haproxy.socket, haproxy.backend
                )),
                None => simulated(file.traffic.is_some()),
            },
        };
        let systems = Systems {
            schema: file.schema.clone(),
            backups: match &file.backups {
                Some(FileBackups::Real(real)) => Some(real.dir.clone()),
                _ => None,
            },
            keep_backups: match &file.backups {
                Some(FileBackups::Real(real)) => real.keep,
                _ => None,
            },
            flagd: file.flagd.as_ref().map(|f| f.file.clone()),
            haproxy: file.haproxy.clone(),
        };
        let state = State {
            schema_version: file.schema_version.unwrap_or(0),
            migrations: file
                .migrations
                .iter()
                .map(|m| Migration {
                    version: m.version,
                    name: m.name.clone(),
                    reversible: m.reversible,
                    up_file: None,
                    down_file: None,
                })
                .collect(),
            flags: file.flags.clone().unwrap_or_default(),
            traffic: file.traffic.clone().unwrap_or(Traffic {
                live: crate::protocol::Environment::Green,
                blue: Health::Healthy,
                green: Health::Healthy,
            }),
            backups: simulated_backups
                .iter()
                .map(|b| Backup {
                    name: b.name.clone(),
                    rows: b.rows,
                    schema_version: b.schema_version,
                })
                .collect(),
            permissions: file.permissions,
            last_restore: None,
            layers,
            schema_health: SchemaHealth::default(),
        };
        Ok(Estate {
            state,
            costs,
            systems,
        })
    }
}

/// A TOML error on one line: `line L (the line's text): what was wrong`, with type names said
/// in words.
fn one_line(error: &toml::de::Error, text: &str) -> String {
    let mut message = error.message().trim().replace('\n', " ");
    for (name, words) in [
        ("u64", "a whole number from 0 to 18446744073709551615"),
        ("u32", "a whole number from 0 to 4294967295"),
        ("a boolean", "true or false"),
    ] {
        message = message.replace(&format!("expected {name}"), &format!("expected {words}"));
    }
    match error.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line = text[..start].matches('\n').count() + 1;
            let line_text = text.lines().nth(line - 1).unwrap_or_default().trim();
            format!(
                "line {line} ({}): {message}",
                crate::protocol::quote(line_text)
            )
        }
        None => message,
    }
}

impl File {
    fn validate(&self) -> Result<(), String> {
        if self.schema.is_some() && (self.schema_version.is_some() || !self.migrations.is_empty()) {
            return Err("[schema] names a real database, so schema_version and [[migrations]] must not be given too: the database and its migrations directory are the truth".to_owned());
        }
        if self.flagd.is_some() && self.flags.is_some() {
            // [flags] then gives the flags a new flag file starts with.
        }
        if self.haproxy.is_some() && self.traffic.is_some() {
            return Err("[haproxy] names a real load balancer, so [traffic] must not be given too: HAProxy's server states are the truth".to_owned());
        }
        if let Some(FileBackups::Real(_)) = &self.backups {
            if self.schema.is_none() {
                return Err(
                    "[backups] dir needs a real database ([schema] database = ...) to restore into"
                        .to_owned(),
                );
            }
        }
        for (index, migration) in self.migrations.iter().enumerate() {
            let expected = index as u64 + 1;
            if migration.version != expected {
                return Err(format!(
                    "migrations[{index}] has version {}, expected {expected}: versions run 1, 2, 3, ... in order",
                    migration.version
                ));
            }
            if migration.name.is_empty() {
                return Err(format!("migrations[{index}] has an empty name"));
            }
        }
        let last = self.migrations.len() as u64;
        let schema_version = self.schema_version.unwrap_or(0);
        if schema_version > last {
            return Err(format!(
                "schema_version {schema_version} is beyond the last migration ({last})"
            ));
        }
        if self
            .flags
            .as_ref()
            .is_some_and(|f| f.keys().any(String::is_empty))
        {
            return Err("flags: a flag name is empty".to_owned());
        }
        for (kind, senders) in &self.permissions {
            if !crate::core::transitions::Request::TYPES.contains(&kind.as_str()) {
                return Err(format!(
                    "permissions.{kind}: there is no message type \"{kind}\"; known types: {}",
                    crate::core::transitions::Request::TYPES.join(", ")
                ));
            }
            if senders.iter().any(String::is_empty) {
                return Err(format!("permissions.{kind}: a sender name is empty"));
            }
        }
        let backups = match &self.backups {
            Some(FileBackups::Simulated(backups)) => backups.as_slice(),
            _ => &[],
        };
        for (index, backup) in backups.iter().enumerate() {
            if backup.name.is_empty() {
                return Err(format!("backups[{index}] has an empty name"));
            }
            if backups[..index].iter().any(|b| b.name == backup.name) {
                return Err(format!(
                    "backups[{index}]: the name \"{}\" is used twice",
                    backup.name
                ));
            }
            if self.schema.is_none() && backup.schema_version > last {
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
    use crate::protocol::Environment;

    #[test]
    fn example_estate_is_the_task_world() {
        let Estate { state, costs, .. } = Estate::example();
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
    fn type_errors_are_one_line_naming_the_line_and_the_range_in_words() {
        let error = with("rows = 100000", "rows = -5").unwrap_err().to_string();
        assert!(!error.contains('\n'), "{error}");
        assert!(error.starts_with("test.toml: line "), "{error}");
        assert!(error.contains("(rows = -5)"), "{error}");
        assert!(
            error.contains("expected a whole number from 0 to 18446744073709551615"),
            "{error}"
        );
        let error = with("new_checkout = true", "new_checkout = 1")
            .unwrap_err()
            .to_string();
        assert!(error.contains("expected true or false"), "{error}");
    }

    #[test]
    fn restore_hint_picks_newest_backup_at_or_below() {
        let state = Estate::example().state;
        assert_eq!(
            state.backup_at_or_below(2).map(|b| b.schema_version),
            Some(2)
        );
        assert_eq!(state.backup_at_or_below(1), None);
    }
}
