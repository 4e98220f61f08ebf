//! The real systems an estate can name, and connecting to them. Each system is one file under
//! `exec/` that declares a [`System`] — its estate section, its layer, how to read the section
//! and connect — and one line in [`SYSTEMS`]. [`connect`] gives every layer its executor: the
//! real system the estate names for it, else the simulated world.
//!
//! To add one (say Envoy for traffic, or a flag service's API): write `exec/envoy.rs` with a
//! config type, an [`Executor`] for its layer's effects and `pub const SYSTEM: System`, then add
//! `envoy::SYSTEM` below. Nothing in the core changes.

use crate::core::effects::{Found, LayerKind};
use crate::core::state::State;
use crate::exec::database::Database;
use crate::exec::estate::Estate;
use crate::exec::simulated::Simulated;
use crate::exec::{Executor, Executors, LaneExecutor, Reader};
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Every real system the node knows, in the order they connect.
pub const SYSTEMS: &[System] = &[
    crate::exec::migrations::executor::SYSTEM,
    crate::exec::backups::executor::SYSTEM,
    crate::exec::flagd::SYSTEM,
    crate::exec::haproxy::SYSTEM,
];

/// A kind of real system an estate section names.
pub struct System {
    /// Its top-level estate key, such as `haproxy`.
    pub section: &'static str,
    /// The layer it performs.
    pub layer: LayerKind,
    /// Whether a value under that key is this system's (`[backups]` as a table is; the
    /// `[[backups]]` array of the simulated world is not).
    pub applies: fn(&toml::Value) -> bool,
    /// Refusal when the estate also describes its layer in the simulated world, unless the two
    /// go together.
    pub conflict: Option<&'static str>,
    /// A layer that must be real too, and the refusal when it is not.
    pub needs: Option<(LayerKind, &'static str)>,
    /// Reads and checks its section (errors name the line).
    pub read: fn(&Section<'_>) -> Result<Box<dyn Config>, String>,
}

/// Any table.
pub fn any_value(_: &toml::Value) -> bool {
    true
}

/// A system's section, read.
pub trait Config: fmt::Debug + Send + Sync {
    /// How status and errors name it (a password is never shown).
    fn describe(&self) -> String;

    /// Connects, reading what is true at start.
    ///
    /// # Errors
    /// One line naming what cannot be used and what would be right.
    fn connect(&self, with: &Connecting<'_>) -> Result<Connected, String>;

    /// The live database and migrations directory, for a schema system (paths relative to
    /// `base`).
    fn database(&self, _base: &Path) -> Option<(Database, PathBuf)> {
        None
    }
}

/// What a system connects with.
pub struct Connecting<'a> {
    /// The directory relative paths are relative to (the estate file's).
    pub base: &'a Path,
    /// The state the estate describes.
    pub state: &'a State,
    /// The schema system's live database and migrations directory, if it names one.
    pub database: Option<(Database, PathBuf)>,
}

impl Connecting<'_> {
    /// `path` as written in the estate: relative paths are relative to its file.
    pub fn resolve(&self, path: &str) -> PathBuf {
        resolve(self.base, path)
    }
}

/// A connected system.
pub struct Connected {
    /// Its executor.
    pub executor: Box<dyn Executor>,
    /// What it says is true at start.
    pub found: Found,
    /// Its reader of look-ups, if it serves any.
    pub reader: Option<Arc<dyn Reader>>,
}

/// A system and its section, read.
#[derive(Clone)]
pub struct Configured {
    system: &'static System,
    config: Arc<dyn Config>,
}

impl fmt::Debug for Configured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {:?}", self.system.section, self.config)
    }
}

impl Configured {
    /// `system` with its section read.
    pub fn new(system: &'static System, config: Box<dyn Config>) -> Self {
        Configured {
            system,
            config: Arc::from(config),
        }
    }

    /// The system.
    pub fn system(&self) -> &'static System {
        self.system
    }

    /// Its section, read.
    pub fn config(&self) -> &dyn Config {
        &*self.config
    }
}

/// One top-level section of an estate file.
pub struct Section<'a> {
    text: &'a str,
    key: &'a str,
    value: &'a toml::Value,
}

impl<'a> Section<'a> {
    /// The section `key` of the estate `text`, whose value is `value`.
    pub fn new(text: &'a str, key: &'a str, value: &'a toml::Value) -> Self {
        Section { text, key, value }
    }

    /// Its value.
    pub fn value(&self) -> &toml::Value {
        self.value
    }

    /// Its content as `T`; an error names the line and key, on one line.
    ///
    /// # Errors
    /// A missing, unknown or mistyped key.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
        struct Only<'k, T>(&'k str, std::marker::PhantomData<T>);
        impl<'de, T: DeserializeOwned> Visitor<'de> for Only<'_, T> {
            type Value = Option<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an estate")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<T>, A::Error> {
                let mut found = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == self.0 {
                        found = Some(map.next_value::<T>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(found)
            }
        }
        impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for Only<'_, T> {
            type Value = Option<T>;
            fn deserialize<D: serde::Deserializer<'de>>(
                self,
                deserializer: D,
            ) -> Result<Option<T>, D::Error> {
                deserializer.deserialize_map(self)
            }
        }
        let deserializer = toml::Deserializer::parse(self.text)
            .map_err(|e| crate::exec::estate::one_line(&e, self.text))?;
        Only::<T>(self.key, std::marker::PhantomData)
            .deserialize(deserializer)
            .map_err(|e| crate::exec::estate::one_line(&e, self.text))?
            .ok_or_else(|| self.problem("missing"))
    }

    /// `problem` on one line naming the section's line.
    pub fn problem(&self, problem: &str) -> String {
        let key = self.key;
        let line = self.text.lines().position(|l| {
            let l = l.trim_start();
            l.starts_with(&format!("[{key}]"))
                || l.starts_with(&format!("[[{key}]]"))
                || l.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        match line {
            Some(i) => format!(
                "line {} ({}): {problem}",
                i + 1,
                crate::protocol::quote(self.text.lines().nth(i).unwrap_or_default().trim())
            ),
            None => format!("[{key}]: {problem}"),
        }
    }
}

/// `path` as written in an estate file in `base`: relative paths are relative to the file.
pub fn resolve(base: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

/// The executors of `estate` (paths relative to `base`, simulated effects at `pace`), and what
/// its real systems say at start.
///
/// # Errors
/// One line naming the system that cannot be used and what would be right.
pub fn connect(estate: &Estate, base: &Path, pace: f64) -> Result<(Executors, Found), String> {
    let simulated = Simulated::new(estate.costs.clone(), &estate.state, pace);
    let database = estate
        .systems
        .iter()
        .find_map(|c| c.config().database(base));
    let with = Connecting {
        base,
        state: &estate.state,
        database,
    };
    let mut found = Found::default();
    let mut readers: Vec<Arc<dyn Reader>> = Vec::new();
    let mut by_layer: Vec<(LayerKind, Box<dyn Executor>)> = Vec::new();
    for configured in &estate.systems {
        let connected = configured.config().connect(&with)?;
        found = found.merge(connected.found);
        readers.extend(connected.reader);
        by_layer.push((configured.system().layer, connected.executor));
    }
    let mut lane = |layers: &[LayerKind]| {
        LaneExecutor::new(
            layers
                .iter()
                .map(
                    |layer| match by_layer.iter().position(|(l, _)| l == layer) {
                        Some(at) => by_layer.swap_remove(at),
                        None => (*layer, simulated.of(*layer)),
                    },
                )
                .collect(),
        )
    };
    let schema = lane(&[LayerKind::Schema, LayerKind::Backups]);
    let traffic = lane(&[LayerKind::Traffic]);
    let flags = lane(&[LayerKind::Flags]);
    let mut executors = Executors::new(schema, traffic, flags);
    if !readers.is_empty() {
        executors = executors.with_reader(Arc::new(Readers(readers)));
    }
    Ok((executors, found))
}

/// The readers of several systems: backups from the first that lists any, statements from all.
struct Readers(Vec<Arc<dyn Reader>>);

impl Reader for Readers {
    fn backups(&self, state: &State) -> Result<Vec<BackupView>, String> {
        match self.0.iter().find(|r| r.lists_backups()) {
            Some(reader) => reader.backups(state),
            None => Ok(crate::core::machine::simulated_backups(state)),
        }
    }

    fn lists_backups(&self) -> bool {
        self.0.iter().any(|r| r.lists_backups())
    }

    fn statements(&self, effects: &[crate::core::effects::Effect]) -> Vec<StatementView> {
        self.0.iter().flat_map(|r| r.statements(effects)).collect()
    }
}

use crate::core::effects::StatementView;
use crate::protocol::values::BackupView;
