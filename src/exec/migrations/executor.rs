//! The migration engine as the node's [`Schema`] executor: each `RunDown`/`RunUp` effect becomes
//! a step of one run against the real database, measured; a failure says how many steps were
//! committed, whether the database may be part-way (dirty), and what the database says now.

use super::catalogue::Catalogue;
use super::schema::{DbState, Direction, Dirty, RunFailure, SchemaDb, Step, StepError};
use super::sql::SqlFile;
use super::url::open;
use crate::core::effects::LayerKind;
use crate::core::effects::{
    Completion, Done, Effect, ExecError, Failure, FailureKind, Found, Ran, StatementView,
};
use crate::core::state::{Migration, SchemaHealth, State};
use crate::exec::database::Database;
use crate::exec::system::{Config, Connected, Connecting, System};
use crate::exec::{Executor, Reader, Report};
use crate::protocol::values::{Progress, Seconds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `[schema]`: a real database and its golang-migrate directory.
pub const SYSTEM: System = System {
    section: "schema",
    layer: LayerKind::Schema,
    applies: crate::exec::system::any_value,
    conflict: Some("[schema] names a real database, so schema_version and [[migrations]] must not be given too: the database and its migrations directory are the truth"),
    needs: None,
    read: |section| Ok(Box::new(section.parse::<SchemaConfig>()?)),
};

/// `[schema]`: `database = "sqlite:PATH"` or `"postgres://USER@/DB?host=SOCKETDIR"`, and
/// `migrations = DIR` (paths relative to the estate file).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    /// The database URL.
    pub database: String,
    /// The golang-migrate directory.
    pub migrations: String,
}

impl Config for SchemaConfig {
    fn describe(&self) -> String {
        crate::exec::database::redact(&self.database)
    }

    fn connect(&self, with: &Connecting<'_>) -> Result<Connected, String> {
        let (database, directory) = self
            .database(with.base)
            .ok_or_else(|| Database::in_estate(&self.database, with.base).unwrap_err())?;
        let (migrations, found) = Migrations::open_fenced(&database.url(), &directory, with.fence)?;
        Ok(Connected {
            executor: Box::new(migrations),
            found,
            reader: Some(Arc::new(MigrationFiles { directory })),
        })
    }

    fn database(&self, base: &Path) -> Option<(Database, PathBuf)> {
        let database = Database::in_estate(&self.database, base).ok()?;
        Some((
            database,
            crate::exec::system::resolve(base, &self.migrations),
        ))
    }
}

/// Reads a migrations directory's files for dry runs, apart from the executor.
struct MigrationFiles {
    directory: PathBuf,
}

impl Reader for MigrationFiles {
    fn statements(&self, steps: &[Effect]) -> Vec<StatementView> {
        let Ok(catalogue) = Catalogue::read(&self.directory) else {
            return Vec::new();
        };
        let mut statements = Vec::new();
        for step in steps {
            let (version, direction) = match step {
                Effect::RunDown { version, .. } => (*version, Direction::Down),
                Effect::RunUp { version, .. } => (*version, Direction::Up),
                _ => continue,
            };
            let Some(path) = catalogue.get(version).and_then(|m| m.file(direction)) else {
                continue;
            };
            let Ok(file) = SqlFile::load(path) else {
                continue;
            };
            statements.extend(file.statements.iter().map(|s| StatementView {
                file: file_name(path),
                line: s.line as u64,
                statement: s.text.clone(),
            }));
        }
        statements
    }
}

/// A real database and its golang-migrate directory.
pub struct Migrations {
    db: Box<dyn SchemaDb>,
    url: String,
    directory: PathBuf,
    /// The lease epoch its transactions are fenced at (PostgreSQL only).
    fence: Option<u64>,
}

/// Opens the schema database at `url`, fenced at `fence` when it is PostgreSQL (an SQLite
/// target has no fence).
fn open_db(url: &str, fence: Option<u64>) -> Result<Box<dyn SchemaDb>, String> {
    match fence {
        Some(epoch) if super::postgres::fences(url) => {
            match super::postgres::PostgresDb::open_fenced(url, Some(epoch)) {
                Ok(db) => Ok(Box::new(db)),
                Err(e) => Err(e.to_string()),
            }
        }
        _ => open(url).map_err(|e| e.to_string()),
    }
}

impl Migrations {
    /// Opens the database at `url` for the migrations in `directory`, and reads both once: a
    /// missing directory, an unreadable file, two files for one version, or a database that
    /// cannot be reached is an error here, at start.
    ///
    /// # Errors
    /// One line naming the path or URL and what would be right.
    pub fn open(url: &str, directory: &Path) -> Result<(Self, Found), String> {
        Migrations::open_fenced(url, directory, None)
    }

    /// As [`Migrations::open`]; with `Some(epoch)` and a PostgreSQL database, every transaction
    /// it opens checks the fence at that epoch first (see [`super::postgres`]), so a node that
    /// has lost its lease changes nothing. An SQLite database has no fence: `fence` is ignored.
    ///
    /// # Errors
    /// As [`Migrations::open`]; also an epoch beyond the fence's `bigint`.
    pub fn open_fenced(
        url: &str,
        directory: &Path,
        fence: Option<u64>,
    ) -> Result<(Self, Found), String> {
        if let Some(epoch) = fence.filter(|e| i64::try_from(*e).is_err()) {
            return Err(format!(
                "epoch {epoch} does not fit {}.epoch (bigint, at most {})",
                super::postgres::FENCE_TABLE,
                i64::MAX
            ));
        }
        let mut migrations = Migrations {
            db: open_db(url, fence)?,
            url: url.to_owned(),
            directory: directory.to_owned(),
            fence,
        };
        let found = migrations.read()?;
        Ok((migrations, found))
    }

    fn catalogue(&self) -> Result<Catalogue, String> {
        Catalogue::read(&self.directory).map_err(|e| e.to_string())
    }

    /// What the directory and the database say now.
    fn read(&mut self) -> Result<Found, String> {
        let catalogue = self.catalogue()?;
        let state = self.db.observe(&catalogue).map_err(|e| e.to_string())?;
        Ok(found(&catalogue, &state))
    }
}

/// The node's view of a catalogue and a database state.
fn found(catalogue: &Catalogue, state: &DbState) -> Found {
    let migrations = catalogue
        .migrations
        .iter()
        .map(|m| Migration {
            version: m.version,
            name: m.title.clone(),
            reversible: m.down.is_some(),
            up_file: m.up.as_deref().map(file_name),
            down_file: m.down.as_deref().map(file_name),
        })
        .collect();
    let dirty = state.dirty.as_ref().map(|dirty| match dirty {
        Dirty::Recorded(evidence) => evidence.to_string(),
        Dirty::LeftByAnotherTool => dirty.to_string(),
    });
    let drift = state
        .drift
        .iter()
        .map(|d| match &d.path {
            Some(path) => format!(
                "{} changed after it was applied (SHA-384 {} when applied, {} now)",
                path.display(),
                short(&d.recorded),
                d.current.as_deref().map_or("(none)".to_owned(), short)
            ),
            None => format!(
                "version {} was applied but its file is no longer in the directory",
                d.version
            ),
        })
        .collect();
    Found {
        schema_version: Some(state.version),
        schema_health: Some(SchemaHealth { dirty, drift }),
        catalogue: Some(migrations),
        ..Found::default()
    }
}

/// Now, in milliseconds since the Unix epoch: when a real run finished, for the audit trail.
fn now_millis() -> Option<u64> {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    u64::try_from(since.as_millis()).ok()
}

fn short(checksum: &str) -> String {
    checksum.chars().take(12).collect()
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The database as the schema layer's [`Executor`]: consecutive `RunDown`/`RunUp` effects are
/// one all-or-nothing run; `ForceVersion` records a version running nothing.
impl Executor for Migrations {
    fn perform(&mut self, effects: &[Effect], report: Report<'_>) -> Completion {
        match effects {
            [Effect::ForceVersion { version }] => self.force(*version),
            steps => self.run(steps, report),
        }
    }

    fn notice(&mut self, effects: &[Effect]) {
        if effects.iter().any(|e| matches!(e, Effect::Restore { .. })) {
            // The database was replaced under it: connect again.
            if let Ok(db) = open_db(&self.url, self.fence) {
                self.db = db;
            }
        }
    }

    fn observe(&mut self, _believed: &State) -> Found {
        self.read().unwrap_or_else(|e| Found {
            unknown: Some(e),
            ..Found::default()
        })
    }
}

impl Migrations {
    fn run(&mut self, effects: &[Effect], report: Report<'_>) -> Completion {
        let catalogue = match self.catalogue() {
            Ok(catalogue) => catalogue,
            Err(e) => {
                return Completion::Failed(Failure::nothing_changed(ExecError::failed(
                    "reading the migrations directory",
                    Some(self.directory.display().to_string()),
                    e,
                )))
            }
        };
        let mut steps = Vec::with_capacity(effects.len());
        for effect in effects {
            let (version, direction) = match effect {
                Effect::RunDown { version, .. } => (*version, Direction::Down),
                Effect::RunUp { version, .. } => (*version, Direction::Up),
                other => {
                    return Completion::Failed(Failure::nothing_changed(ExecError::failed(
                        "running migrations",
                        None,
                        format!("{other:?} is not a migration"),
                    )))
                }
            };
            match Step::load(&catalogue, version, direction) {
                Ok(step) => steps.push(step),
                Err(StepError::Missing) => {
                    return Completion::Failed(Failure::nothing_changed(ExecError::failed(
                        format!("finding the {direction} file of version {version}"),
                        Some(self.directory.display().to_string()),
                        "the migrations directory no longer has it",
                    )))
                }
                Err(StepError::Unreadable(path, e)) => {
                    return Completion::Failed(Failure::nothing_changed(ExecError::failed(
                        "reading a migration",
                        Some(path.display().to_string()),
                        e,
                    )))
                }
            }
        }
        let result = self.db.run(&steps, &mut |done, total| {
            report(Progress {
                done,
                total,
                unit: "statements".to_owned(),
            })
        });
        match result {
            Ok(run) => Completion::Done(Done {
                duration: Seconds::measured(run.duration),
                rows: None,
                ran: run
                    .steps
                    .iter()
                    .map(|step| Ran {
                        file: file_name(&step.path),
                        checksum: step.checksum.clone(),
                        millis: u64::try_from(step.duration.as_millis()).unwrap_or(u64::MAX),
                        protocol: step.protocol.clone(),
                    })
                    .collect(),
                at: now_millis(),
                schema_version: None,
                kept: None,
                backups: None,
            }),
            Err(failure) => {
                let now = self.read().ok().map(Box::new);
                let error = ExecError::failed("running migrations", None, failure.cause());
                Completion::Failed(match failure {
                    RunFailure::NothingChanged { .. } => Failure {
                        now,
                        ..Failure::nothing_changed(error)
                    },
                    RunFailure::PartWay { completed, .. } => Failure {
                        completed: completed.len(),
                        kind: FailureKind::PartWay,
                        error,
                        now,
                    },
                })
            }
        }
    }

    fn force(&mut self, version: u64) -> Completion {
        let started = std::time::Instant::now();
        match self.db.force(version) {
            Ok(_) => Completion::Done(Done {
                duration: Seconds::measured(started.elapsed()),
                at: now_millis(),
                ..Done::default()
            }),
            Err(e) => Completion::Failed(Failure::nothing_changed(ExecError::failed(
                format!("forcing version {version}"),
                Some(self.db.url().to_owned()),
                e,
            ))),
        }
    }
}
