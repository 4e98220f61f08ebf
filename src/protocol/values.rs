//! Values that travel in requests and replies: [`Environment`], [`Version`], [`Seconds`],
//! [`RestoreRecord`] and the views of running and interrupted operations that `status` shows.

use serde::de::{self, Unexpected, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use strum::{Display, EnumIter, EnumString, IntoStaticStr, VariantNames};

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

/// A migration version named in a request: an integer from 1 to 18446744073709551615, such as
/// a golang-migrate timestamp version (20250810144214).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Version(u64);

impl Version {
    /// `Some` for 1 and up; 0 is not a version a request can name.
    pub fn new(version: u64) -> Option<Self> {
        (version > 0).then_some(Version(version))
    }

    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct VersionVisitor;

        impl Visitor<'_> for VersionVisitor {
            type Value = Version;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a migration version: an integer from 1 to 18446744073709551615")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Version, E> {
                Version::new(v).ok_or_else(|| E::invalid_value(Unexpected::Unsigned(v), &self))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Version, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
                }
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Version, E> {
                if v.fract() == 0.0 && v >= u64::MAX as f64 {
                    return Err(E::custom(
                        "the number is too large: a migration version is an integer from 1 to 18446744073709551615",
                    ));
                }
                Err(E::invalid_type(Unexpected::Float(v), &self))
            }
        }

        deserializer.deserialize_u64(VersionVisitor)
    }
}

/// A duration in a reply: the simulated executor's modelled whole seconds (written as an
/// integer), or a real executor's measured time (written in seconds with millisecond precision).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Seconds {
    /// Whole seconds from the cost model.
    Modelled(u64),
    /// Measured milliseconds.
    Measured(u64),
}

impl Seconds {
    /// Zero, modelled.
    pub const ZERO: Seconds = Seconds::Modelled(0);

    /// The sum of two durations; measured if either is.
    pub fn plus(self, other: Seconds) -> Seconds {
        match (self, other) {
            (Seconds::Modelled(a), Seconds::Modelled(b)) => Seconds::Modelled(a.saturating_add(b)),
            (a, b) => Seconds::Measured(a.millis().saturating_add(b.millis())),
        }
    }

    /// In milliseconds.
    pub fn millis(self) -> u64 {
        match self {
            Seconds::Modelled(s) => s.saturating_mul(1000),
            Seconds::Measured(ms) => ms,
        }
    }

    /// A measured duration, rounded to the millisecond.
    pub fn measured(elapsed: std::time::Duration) -> Seconds {
        Seconds::Measured(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
    }
}

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            Seconds::Modelled(s) => serializer.serialize_u64(s),
            Seconds::Measured(ms) => serializer.serialize_f64(ms as f64 / 1000.0),
        }
    }
}

/// An integer is modelled seconds, a number with a fraction measured ones: what
/// [`Seconds`]'s `Serialize` writes reads back as the same value.
impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecondsVisitor;

        impl Visitor<'_> for SecondsVisitor {
            type Value = Seconds;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration in seconds")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
                Ok(Seconds::Modelled(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
                u64::try_from(v)
                    .map(Seconds::Modelled)
                    .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Seconds, E> {
                if v.is_finite() && v >= 0.0 {
                    Ok(Seconds::Measured((v * 1000.0).round() as u64))
                } else {
                    Err(E::invalid_value(Unexpected::Float(v), &self))
                }
            }
        }

        deserializer.deserialize_any(SecondsVisitor)
    }
}

/// The last restore performed, as `status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRecord {
    /// The backup restored.
    pub backup: String,
    /// How many rows it restored.
    pub restored_rows: u64,
    /// The schema version it set.
    pub schema_version: u64,
    /// Where the database it replaced was kept (PostgreSQL: a dated database), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<String>,
}

/// One backup as the `backups` message lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupView {
    /// Its name, as `restore` requests give it.
    pub name: String,
    /// When it was taken, in seconds since the Unix epoch (`null` for a simulated backup).
    pub taken_at: Option<u64>,
    /// The schema version it holds, when known.
    pub schema_version: Option<u64>,
    /// Rows in its application tables, when known.
    pub rows: Option<u64>,
    /// Its size in bytes (`null` for a simulated backup).
    pub size: Option<u64>,
    /// Whether it passed its checks.
    pub verified: bool,
    /// Why it did not, or what could not be said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// How far a long effect has come: `{"done": N, "total": M, "unit": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all.
    pub total: u64,
    /// What is counted: `rows`, `statements`, `pages`, `seconds`.
    pub unit: String,
}

/// A real database as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseView {
    /// Its URL.
    pub url: String,
    /// Whether it is dirty (a change outside a transaction failed part-way).
    pub dirty: bool,
    /// If dirty: the file, statement and what the database said, or who left it dirty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// Applied files whose content changed since they were applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
}

/// A state-changing request that is running or waiting for its lane, as `status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlightView {
    /// The request's type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its msg_id.
    pub msg_id: u64,
    /// Its sender.
    pub src: String,
    /// Its lane: `schema`, `traffic` or `flags`.
    pub lane: String,
    /// `running`, or `queued` behind the running one.
    pub state: String,
    /// How far it has come, once its executor has said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// An operation a crash cut short, as reconciled at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterruptedView {
    /// The request's type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its msg_id.
    pub msg_id: u64,
    /// Its sender.
    pub src: String,
    /// Its journal sequence number.
    pub seq: u64,
    /// What the executor said was true at start.
    pub found: serde_json::Value,
}
