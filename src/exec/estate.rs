//! Estate files (TOML, see `estates/example.toml`): what an estate is made of. [`Estate::from_toml`]
//! reads and validates one whole — the formal [`State`] the core decides over, the
//! [`CostModel`] only the simulated executor reads, and the sections of the real systems
//! ([`crate::exec::systems`]) — so that a start that refuses it has touched nothing.

use crate::core::effects::LayerKind;
use crate::core::ladder::LadderConfig;
use crate::core::state::{Backup, Health, Layer, Layers, Migration, SchemaHealth, State, Traffic};
use crate::exec::simulated::CostModel;
use crate::exec::system::{one_line, Configured, Section};
use crate::exec::systems::SYSTEMS;
use serde::Deserialize;
use std::collections::BTreeMap;

mod ladder;

/// The built-in example estate, embedded at compile time.
pub const EXAMPLE_ESTATE: &str = include_str!("../../estates/example.toml");

/// A whole estate: its state, its cost model and the real systems it names.
#[derive(Debug, Clone)]
pub struct Estate {
    /// The formal state it starts from (for a real layer, what the system says replaces it at
    /// start).
    pub state: State,
    /// What changes cost in the simulated world.
    pub costs: CostModel,
    /// The real systems, read from their sections, in the order of [`SYSTEMS`].
    pub systems: Vec<Configured>,
    /// Who may use the HTTP service (`[[tokens]]`): by name, role and the secret's hash.
    pub tokens: Vec<Token>,
    /// `[cluster]`: the lease of nodes sharing a PostgreSQL store.
    pub cluster: ClusterSettings,
    /// `[ladder]` with its `[[ladder.signals]]` and `[[ladder.rungs]]`: the escalation ladder,
    /// checked against the estate (see [`crate::core::ladder`]).
    pub ladder: Option<LadderConfig>,
}

/// `[cluster]`: how long a leader's lease lasts and how often it is renewed (whole seconds;
/// 3 and 1 by default). Used only with a PostgreSQL store (`--store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// How long a lease lasts after its last renewal, by the store's clock.
    #[serde(default = "ClusterSettings::default_lease")]
    pub lease_seconds: u64,
    /// How often the leader renews its lease and every node its heartbeat.
    #[serde(default = "ClusterSettings::default_renew")]
    pub renew_seconds: u64,
}

impl ClusterSettings {
    fn default_lease() -> u64 {
        3
    }

    fn default_renew() -> u64 {
        1
    }

    fn check(&self) -> Result<(), String> {
        if self.renew_seconds == 0 || self.renew_seconds >= self.lease_seconds {
            return Err(format!(
                "[cluster] renew_seconds ({}) must be at least 1 and below lease_seconds ({}), so that a leader renews before its lease ends",
                self.renew_seconds, self.lease_seconds
            ));
        }
        if self.lease_seconds > 3600 {
            return Err(format!(
                "[cluster] lease_seconds ({}) is over an hour; a failover would wait that long",
                self.lease_seconds
            ));
        }
        Ok(())
    }
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            lease_seconds: Self::default_lease(),
            renew_seconds: Self::default_renew(),
        }
    }
}

/// What a token may do over HTTP; each role may do what the one before it may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Deserialize,
    strum::Display,
    strum::EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Role {
    /// Reads: status, history, backups, the event stream, the page without buttons.
    Viewer,
    /// A viewer who may also change flags and traffic, and dry-run anything.
    Operator,
    /// An operator who may also roll back, migrate, restore, force a version and approve.
    Admin,
}

/// One `[[tokens]]` entry: a name (the sender of its requests), a role and the SHA-256 of the
/// secret (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    /// The name its requests are sent as.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Lowercase hex of the SHA-256 of the secret's bytes.
    pub sha256: String,
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

/// The sections the estate itself reads; any other top-level key must be a real system's.
const OWN_KEYS: [&str; 9] = [
    "schema_version",
    "migrations",
    "flags",
    "traffic",
    "backups",
    "permissions",
    "tokens",
    "cluster",
    "ladder",
];

#[derive(Deserialize)]
struct File {
    schema_version: Option<u64>,
    #[serde(default)]
    migrations: Vec<FileMigration>,
    flags: Option<BTreeMap<String, bool>>,
    traffic: Option<Traffic>,
    backups: Option<FileBackups>,
    #[serde(default)]
    permissions: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    tokens: Vec<Token>,
    cluster: Option<ClusterSettings>,
}

/// `[[backups]]` (simulated backups) or a `[backups]` table (real ones: read by its system).
enum FileBackups {
    Simulated(Vec<FileBackup>),
    Real,
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
                serde::de::IgnoredAny::deserialize(MapAccessDeserializer::new(map))
                    .map(|_| FileBackups::Real)
            }
        }
        deserializer.deserialize_any(Shape)
    }
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
    /// both ways, a `[ladder]` the node cannot use (see [`LadderConfig::check_against`]).
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, EstateError> {
        let error = |problem: String| EstateError {
            origin: origin.to_owned(),
            problem,
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| error(one_line(&e, text)))?;
        // From the table parsed once; a mistake is read again from the text, for its line.
        let file: File = match toml::Value::Table(table.clone()).try_into() {
            Ok(file) => file,
            Err(_) => toml::from_str(text).map_err(|e| error(one_line(&e, text)))?,
        };
        let mut systems = Vec::new();
        let mut layers = Layers {
            schema: Layer::Absent,
            backups: Layer::Absent,
            flags: Layer::Absent,
            traffic: Layer::Absent,
        };
        for (key, value) in &table {
            let section = Section::new(text, key, value);
            let system = SYSTEMS
                .iter()
                .find(|s| s.section == key && (s.applies)(value));
            match system {
                Some(system) => {
                    let config = (system.read)(&section).map_err(error)?;
                    *layers.get_mut(system.layer) = Layer::Real(config.describe());
                    systems.push(Configured::new(system, config));
                }
                None if OWN_KEYS.contains(&key.as_str()) => {}
                None => {
                    let mut known: Vec<&str> = OWN_KEYS.to_vec();
                    known.extend(SYSTEMS.iter().map(|s| s.section));
                    known.sort_unstable();
                    known.dedup();
                    return Err(error(section.problem(&format!(
                        "unknown field `{key}`, expected one of {}",
                        known
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))));
                }
            }
        }
        systems.sort_by_key(|c| SYSTEMS.iter().position(|s| s.section == c.system().section));
        let simulated = file.simulated_layers();
        for configured in &systems {
            let system = configured.system();
            if let Some(conflict) = system.conflict {
                if simulated.contains(&system.layer) {
                    return Err(error(conflict.to_owned()));
                }
            }
            if let Some((layer, why)) = system.needs {
                if !layers.get(layer).is_real() {
                    return Err(error(why.to_owned()));
                }
            }
        }
        for layer in simulated {
            let slot = layers.get_mut(layer);
            if !slot.is_real() {
                *slot = Layer::Simulated;
            }
        }
        file.validate(layers.schema.is_real()).map_err(error)?;
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
        let cluster = file.cluster.unwrap_or_default();
        cluster.check().map_err(error)?;
        let ladder = ladder::read(text, &state).map_err(error)?;
        Ok(Estate {
            state,
            costs,
            systems,
            tokens: file.tokens,
            cluster,
            ladder,
        })
    }
}

impl File {
    /// The layers the file describes in the simulated world.
    fn simulated_layers(&self) -> Vec<LayerKind> {
        let mut layers = Vec::new();
        if self.schema_version.is_some() || !self.migrations.is_empty() {
            layers.push(LayerKind::Schema);
        }
        if let Some(FileBackups::Simulated(_)) = &self.backups {
            layers.push(LayerKind::Backups);
        }
        if self.flags.is_some() {
            layers.push(LayerKind::Flags);
        }
        if self.traffic.is_some() {
            layers.push(LayerKind::Traffic);
        }
        layers
    }

    fn validate(&self, real_schema: bool) -> Result<(), String> {
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
        for (index, token) in self.tokens.iter().enumerate() {
            if token.name.is_empty() {
                return Err(format!("tokens[{index}] has an empty name"));
            }
            if self.tokens[..index].iter().any(|t| t.name == token.name) {
                return Err(format!(
                    "tokens[{index}]: the name \"{}\" is used twice",
                    token.name
                ));
            }
            let hex = token.sha256.as_bytes();
            if hex.len() != 64 || !hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(format!(
                    "tokens[{index}] (\"{}\"): sha256 is not 64 lowercase hex digits; it is the SHA-256 of the secret, as `rollback-node new-token NAME ROLE` prints it",
                    token.name
                ));
            }
            if self.tokens[..index]
                .iter()
                .any(|t| t.sha256 == token.sha256)
            {
                return Err(format!(
                    "tokens[{index}] (\"{}\"): the same secret is already given to another token; give each its own (`rollback-node new-token`)",
                    token.name
                ));
            }
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
            if !real_schema && backup.schema_version > last {
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
    fn real_layers_are_typed_and_status_hides_a_password() {
        let estate = Estate::from_toml(
            "[schema]\ndatabase = \"postgres://app:secret@db/app\"\nmigrations = \"m\"\n[flags]\nx = true\n",
            "test.toml",
        )
        .unwrap();
        assert_eq!(
            estate.state.layers.schema,
            Layer::Real("postgres://app:***@db/app".to_owned())
        );
        assert_eq!(estate.state.layers.flags, Layer::Simulated);
        assert_eq!(estate.state.layers.traffic, Layer::Absent);
        let status = crate::core::transitions::status_of(&estate.state);
        assert_eq!(status.database.unwrap().url, "postgres://app:***@db/app");
        let error = Estate::from_toml("[envoy]\nx = 1\n", "test.toml").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("test.toml: line 1 ([envoy]): unknown field `envoy`"),
            "{error}"
        );
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
