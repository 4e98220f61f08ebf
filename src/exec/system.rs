//! What a real system declares to be one the estate can name ([`System`]), and what it gets and
//! gives when the node connects to it ([`Connecting`], [`Connected`]). The list of systems is
//! [`crate::exec::systems::SYSTEMS`].

use crate::core::effects::Found;
use crate::core::state::{LayerKind, State};
use crate::exec::database::Database;
use crate::exec::{Executor, Reader};
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// The lease epoch this node leads under, when it is one of several sharing a store: the
    /// schema system fences its PostgreSQL transactions at it (see
    /// [`crate::exec::migrations::postgres`]). `None`: a node alone, unfenced.
    pub fence: Option<u64>,
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

    /// Its content as `T`, from the value already parsed; an error names the line and key, on
    /// one line.
    ///
    /// # Errors
    /// A missing, unknown or mistyped key.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        match self.value.clone().try_into() {
            Ok(parsed) => Ok(parsed),
            Err(_) => self.parse_spanned(),
        }
    }

    /// The error of [`Section::parse`], with its line: the text is read again, with spans (only
    /// when the section is wrong).
    fn parse_spanned<T: DeserializeOwned>(&self) -> Result<T, String> {
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
        let deserializer =
            toml::Deserializer::parse(self.text).map_err(|e| one_line(&e, self.text))?;
        Only::<T>(self.key, std::marker::PhantomData)
            .deserialize(deserializer)
            .map_err(|e| one_line(&e, self.text))?
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

/// A TOML error on one line: `line L (the line's text): what was wrong`, with type names said
/// in words.
pub fn one_line(error: &toml::de::Error, text: &str) -> String {
    let message = in_words(error.message());
    match error.span() {
        Some(span) => format!("{}: {message}", line_at(text, span.start)),
        None => message,
    }
}

/// A TOML error's message on one line, with type names said in words.
pub fn in_words(message: &str) -> String {
    let mut message = message.trim().replace('\n', " ");
    for (name, words) in [
        ("u64", "a whole number from 0 to 18446744073709551615"),
        ("u32", "a whole number from 0 to 4294967295"),
        ("a boolean", "true or false"),
    ] {
        message = message.replace(&format!("expected {name}"), &format!("expected {words}"));
    }
    message
}

/// `line L (the line's text)` for the byte `offset` of `text`.
pub fn line_at(text: &str, offset: usize) -> String {
    let start = offset.min(text.len());
    let line = text.as_bytes()[..start]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1;
    let line_text = text.lines().nth(line - 1).unwrap_or_default().trim();
    format!("line {line} ({})", crate::protocol::quote(line_text))
}
