//! The schema database: what it says ([`DbState`]), how steps run on it ([`SchemaDb::run`]), how
//! a person clears a dirty state ([`SchemaDb::force`]), and [`plan`], which turns "rollback V" or
//! "migrate V" into steps.
//!
//! The version lives in golang-migrate's own table, `schema_migrations(version, dirty)`, laid
//! out exactly as golang-migrate lays it out, so either tool can take over from the other. Two
//! tables of ours sit beside it: `rollback_node_schema_checksums` (the checksum of each applied
//! up file) and `rollback_node_schema_evidence` (what went wrong when a run left the database
//! dirty).
//!
//! The rules: a transactional file runs in one transaction together with the version update, so
//! a failure changes nothing; consecutive transactional steps share that transaction, so a
//! multi-step run fails all-or-nothing; only a file that cannot run in a transaction uses
//! golang-migrate's dirty protocol, and when it fails the evidence is kept.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::catalogue::Catalogue;
pub use super::catalogue::Direction;
use super::sql::{SqlFile, SqlFileError, TxMode};

/// The version table golang-migrate uses.
pub const VERSION_TABLE: &str = "schema_migrations";
/// Our table of checksums of applied up files.
pub const CHECKSUM_TABLE: &str = "rollback_node_schema_checksums";
/// Our table of evidence of a dirty state.
pub const EVIDENCE_TABLE: &str = "rollback_node_schema_evidence";

/// One file to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The version of the file.
    pub version: u64,
    /// Up or down.
    pub direction: Direction,
    /// The loaded file.
    pub file: SqlFile,
    /// The version the database is at once the step is done (0: nothing applied).
    pub version_after: u64,
}

/// Evidence of a dirty state, recorded by us when a file run outside a transaction failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The version of the file that failed.
    pub version: u64,
    /// Its direction.
    pub direction: Direction,
    /// The file.
    pub file: PathBuf,
    /// The 1-based line of the failing statement.
    pub line: u64,
    /// The first ~80 characters of the statement.
    pub statement: String,
    /// What the database said.
    pub database_said: String,
    /// When, as the database's clock said (UTC).
    pub recorded_at: String,
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of version {} failed at {}:{} `{}`: {} (recorded {})",
            self.direction,
            self.version,
            self.file.display(),
            self.line,
            self.statement,
            self.database_said,
            self.recorded_at
        )
    }
}

/// Why the database is dirty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dirty {
    /// We left it dirty; here is what failed.
    Recorded(Evidence),
    /// `dirty = true` with no evidence of ours: golang-migrate (or a person) left it so.
    LeftByAnotherTool,
}

impl fmt::Display for Dirty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dirty::Recorded(e) => write!(f, "{e}"),
            Dirty::LeftByAnotherTool => {
                f.write_str("left dirty by another tool (no evidence recorded by rollback-node)")
            }
        }
    }
}

/// An applied version whose up file changed since it was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// The version.
    pub version: u64,
    /// The checksum recorded when it was applied.
    pub recorded: String,
    /// The checksum of the up file now; `None` when the directory no longer has it.
    pub current: Option<String>,
    /// The up file, when the directory has it.
    pub path: Option<PathBuf>,
}

/// The database's version is not in the migrations directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version {version} is recorded in the database but {} has no {version}_*.up.sql; expected the directory the database was migrated from", directory.display())]
pub struct NotInDirectory {
    /// The version.
    pub version: u64,
    /// The directory searched.
    pub directory: PathBuf,
}

/// What the database says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbState {
    /// The version in `schema_migrations`; 0 when no migration is applied.
    pub version: u64,
    /// `Some` when `dirty = true`.
    pub dirty: Option<Dirty>,
    /// Applied versions whose up file changed since.
    pub drift: Vec<Drift>,
    /// Set when the version is not in the directory.
    pub not_in_directory: Option<NotInDirectory>,
}

/// One step that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReport {
    /// The version.
    pub version: u64,
    /// Up or down.
    pub direction: Direction,
    /// The file.
    pub path: PathBuf,
    /// Its SHA-384, hex.
    pub checksum: String,
    /// How it ran.
    pub mode: TxMode,
    /// Statements executed.
    pub statements: u64,
    /// Time spent in its statements and bookkeeping.
    pub duration: Duration,
    /// The version after it.
    pub version_after: u64,
}

/// A run that succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// The version before.
    pub from: u64,
    /// The version after.
    pub to: u64,
    /// Each step.
    pub steps: Vec<StepReport>,
    /// The whole run, commits and locking included.
    pub duration: Duration,
}

/// What `force` changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForceReport {
    /// The version before.
    pub previous_version: u64,
    /// Why it was dirty, if it was.
    pub was_dirty: Option<Dirty>,
    /// The version now (clean).
    pub version: u64,
}

/// A database could not be reached or queried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The URL is not one we understand.
    #[error("{url}: {problem}; expected sqlite:PATH or postgres://USER@HOST/DB (or postgres://USER@/DB?host=SOCKETDIR)")]
    BadUrl {
        /// The URL (password hidden).
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The database could not be reached or opened.
    #[error("{url}: unreachable: {reason}")]
    Unreachable {
        /// The URL (password hidden).
        url: String,
        /// What the driver said.
        reason: String,
    },
    /// Another process holds the database.
    #[error("{url}: locked by another process: {reason}; retry once it is done")]
    Locked {
        /// The URL (password hidden).
        url: String,
        /// What the database said.
        reason: String,
    },
    /// A query of ours failed.
    #[error("{url}: {doing} failed: {database_said}")]
    Query {
        /// The URL (password hidden).
        url: String,
        /// What we were doing.
        doing: String,
        /// What the database said.
        database_said: String,
    },
}

/// Why a run stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// A statement of a migration file failed.
    #[error("{} line {line}: {direction} of version {version} failed at `{statement}`: {database_said}", file.display())]
    Statement {
        /// The version.
        version: u64,
        /// Its direction.
        direction: Direction,
        /// The file.
        file: PathBuf,
        /// The 1-based line the statement starts on.
        line: u64,
        /// Its first ~80 characters.
        statement: String,
        /// What the database said.
        database_said: String,
    },
    /// The database is dirty; nothing runs until a person resolves it.
    #[error("the database is dirty at version {version}: {why}; inspect the schema, then `force` the version it is really at")]
    Dirty {
        /// The dirty version.
        version: u64,
        /// Why.
        why: Dirty,
    },
    /// The database is not where the steps start.
    #[error("the database is at version {database}, but the steps start with {direction} of version {step}; plan again from the current version")]
    NotAtStart {
        /// The database's version.
        database: u64,
        /// The first step's version.
        step: u64,
        /// Its direction.
        direction: Direction,
    },
    /// The database itself failed (connection, lock, our bookkeeping).
    #[error(transparent)]
    Database(#[from] SchemaError),
}

/// A run that did not finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunFailure {
    /// Everything was rolled back (or nothing started): the database is as it was, clean.
    #[error("nothing changed, the database is still at version {at}: {cause}")]
    NothingChanged {
        /// The version the database is at.
        at: u64,
        /// Why.
        cause: RunError,
    },
    /// Some steps were committed before the failure, or a file run outside a transaction failed
    /// (`dirty`).
    #[error("stopped part-way, the database is at version {at}{}: {cause}", if *dirty { " and dirty" } else { "" })]
    PartWay {
        /// The version the database is at.
        at: u64,
        /// Whether `dirty = true` was left (with evidence recorded).
        dirty: bool,
        /// The steps that were committed.
        completed: Vec<StepReport>,
        /// Why.
        cause: RunError,
    },
}

impl RunFailure {
    /// The protocol code: 14 when nothing changed, 13 when the database changed part-way.
    pub fn code(&self) -> u16 {
        match self {
            RunFailure::NothingChanged { .. } => 14,
            RunFailure::PartWay { .. } => 13,
        }
    }

    /// The version the database is at now.
    pub fn at(&self) -> u64 {
        match self {
            RunFailure::NothingChanged { at, .. } | RunFailure::PartWay { at, .. } => *at,
        }
    }

    /// Why the run stopped.
    pub fn cause(&self) -> &RunError {
        match self {
            RunFailure::NothingChanged { cause, .. } | RunFailure::PartWay { cause, .. } => cause,
        }
    }
}

/// A schema database: golang-migrate's version table plus our checksums and evidence.
pub trait SchemaDb: Send {
    /// The URL it was opened with (password hidden).
    fn url(&self) -> &str;

    /// What the database says now, checked against a directory: version, dirty state and its
    /// evidence, drift of applied files, a version the directory lacks. Creates the tables if
    /// absent.
    fn observe(&mut self, catalogue: &Catalogue) -> Result<DbState, SchemaError>;

    /// Runs steps in order, calling `progress(statements_done, statements_total)` as it goes.
    /// Refused while the database is dirty.
    fn run(
        &mut self,
        steps: &[Step],
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<RunReport, RunFailure>;

    /// Sets the version and clears `dirty` and our evidence: a person resolved a dirty database.
    fn force(&mut self, version: u64) -> Result<ForceReport, SchemaError>;
}

/// Why steps could not be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The target is not in the directory.
    #[error("version {version} is not in {}; expected one of the versions of its *.up.sql files", dir.display())]
    UnknownTarget {
        /// The target.
        version: u64,
        /// The directory.
        dir: PathBuf,
    },
    /// The database's version is not in the directory.
    #[error(transparent)]
    CurrentNotInDirectory(#[from] NotInDirectory),
    /// A rollback past a version without a down file.
    #[error("version {version} is irreversible: {} has no {version}_*.down.sql; expected a down file for every version rolled back", dir.display())]
    Irreversible {
        /// The version.
        version: u64,
        /// The directory.
        dir: PathBuf,
    },
    /// A migration to a version without an up file.
    #[error("version {version} has no up file in {}; expected {version}_*.up.sql", dir.display())]
    NoUpFile {
        /// The version.
        version: u64,
        /// The directory.
        dir: PathBuf,
    },
    /// Rolling back a version that is not applied.
    #[error("version {version} is not applied (the database is at {current}); expected a version at or below the current one")]
    NotApplied {
        /// The target.
        version: u64,
        /// The current version.
        current: u64,
    },
    /// Migrating to a version below the current one.
    #[error("version {version} is below the current version {current}; expected a rollback, not a migration")]
    Behind {
        /// The target.
        version: u64,
        /// The current version.
        current: u64,
    },
    /// A file could not be loaded.
    #[error(transparent)]
    File(#[from] SqlFileError),
}

/// The steps that take a database at `current` to `target`.
///
/// - [`Direction::Down`] (rollback `target`): the down files from `current` through `target`, in
///   descending order; the database ends at the version before `target` in the directory (0 if
///   none). Refused if any of them has no down file.
/// - [`Direction::Up`] (migrate `target`): the up files after `current` through `target`, in
///   ascending order; the database ends at `target`.
pub fn plan(
    catalogue: &Catalogue,
    current: u64,
    direction: Direction,
    target: u64,
) -> Result<Vec<Step>, PlanError> {
    let dir = || catalogue.dir.clone();
    if current != 0 && catalogue.get(current).is_none() {
        return Err(NotInDirectory {
            version: current,
            directory: dir(),
        }
        .into());
    }
    if catalogue.get(target).is_none() {
        return Err(PlanError::UnknownTarget {
            version: target,
            dir: dir(),
        });
    }
    let mut steps = Vec::new();
    match direction {
        Direction::Down => {
            if target > current {
                return Err(PlanError::NotApplied {
                    version: target,
                    current,
                });
            }
            let chosen: Vec<_> = catalogue
                .migrations
                .iter()
                .rev()
                .filter(|m| m.version <= current && m.version >= target)
                .collect();
            if let Some(m) = chosen.iter().find(|m| m.down.is_none()) {
                return Err(PlanError::Irreversible {
                    version: m.version,
                    dir: dir(),
                });
            }
            for m in chosen {
                let path = m.down.as_ref().expect("checked above");
                steps.push(Step {
                    version: m.version,
                    direction,
                    file: SqlFile::load(path)?,
                    version_after: catalogue.previous(m.version),
                });
            }
        }
        Direction::Up => {
            if target < current {
                return Err(PlanError::Behind {
                    version: target,
                    current,
                });
            }
            for m in catalogue
                .migrations
                .iter()
                .filter(|m| m.version > current && m.version <= target)
            {
                let Some(path) = &m.up else {
                    return Err(PlanError::NoUpFile {
                        version: m.version,
                        dir: dir(),
                    });
                };
                steps.push(Step {
                    version: m.version,
                    direction,
                    file: SqlFile::load(path)?,
                    version_after: m.version,
                });
            }
        }
    }
    Ok(steps)
}

/// What a statement failure looked like to a backend.
pub(crate) struct DbFailure {
    /// What the database said.
    pub said: String,
    /// Busy or locked (SQLite) / lock not available.
    pub locked: bool,
}

/// The primitive operations of one database kind; [`Engine`] builds the rules on them.
pub(crate) trait Backend: Send {
    /// The URL (password hidden).
    fn url(&self) -> &str;
    /// Takes the migration lock (held until `unlock`).
    fn lock(&mut self) -> Result<(), SchemaError>;
    /// Releases it.
    fn unlock(&mut self);
    /// Creates the three tables if absent.
    fn ensure_tables(&mut self) -> Result<(), DbFailure>;
    /// Runs SQL text as written (one statement, or our own batch).
    fn exec(&mut self, sql: &str) -> Result<(), DbFailure>;
    /// Opens a transaction that takes the write lock at once.
    fn begin(&mut self) -> Result<(), DbFailure>;
    /// Whether a transaction is open.
    fn in_transaction(&mut self) -> bool;
    /// `schema_migrations`: version (negative or absent: none) and dirty.
    fn read_version(&mut self) -> Result<(i64, bool), DbFailure>;
    /// Applied checksums.
    fn read_checksums(&mut self) -> Result<Vec<(u64, String)>, DbFailure>;
    /// Our evidence row.
    fn read_evidence(&mut self) -> Result<Option<Evidence>, DbFailure>;
    /// Replaces our evidence row.
    fn write_evidence(&mut self, evidence: &Evidence) -> Result<(), DbFailure>;
    /// The SQL to write the clock into `applied_at`.
    fn now_sql(&self) -> &'static str;
}

/// golang-migrate's `SetVersion`: the row is replaced; version 0 ("none") clean means no row,
/// dirty means the row `-1, true`, as golang-migrate writes its nil version.
fn set_version_sql(version: u64, dirty: bool) -> String {
    let dirty_sql = if dirty { "TRUE" } else { "FALSE" };
    if version == 0 && !dirty {
        format!("DELETE FROM {VERSION_TABLE};")
    } else {
        let v = if version == 0 { -1 } else { version as i64 };
        format!(
            "DELETE FROM {VERSION_TABLE}; INSERT INTO {VERSION_TABLE} (version, dirty) VALUES ({v}, {dirty_sql});"
        )
    }
}

fn version_of(raw: i64) -> u64 {
    u64::try_from(raw).unwrap_or(0)
}

/// The rules of [`SchemaDb`] on top of a [`Backend`].
pub(crate) struct Engine<B: Backend> {
    pub backend: B,
}

impl<B: Backend> Engine<B> {
    fn query_error(&self, doing: &str, failure: DbFailure) -> SchemaError {
        if failure.locked {
            SchemaError::Locked {
                url: self.backend.url().to_owned(),
                reason: failure.said,
            }
        } else {
            SchemaError::Query {
                url: self.backend.url().to_owned(),
                doing: doing.to_owned(),
                database_said: failure.said,
            }
        }
    }

    fn bookkeeping_sql(&self, step: &Step, dirty: bool) -> String {
        let mut sql = set_version_sql(step.version_after, dirty);
        if !dirty {
            match step.direction {
                Direction::Up => sql.push_str(&format!(
                    " DELETE FROM {CHECKSUM_TABLE} WHERE version = {v}; INSERT INTO {CHECKSUM_TABLE} (version, checksum, applied_at) VALUES ({v}, '{c}', {now});",
                    v = step.version as i64,
                    c = step.file.checksum,
                    now = self.backend.now_sql()
                )),
                Direction::Down => sql.push_str(&format!(
                    " DELETE FROM {CHECKSUM_TABLE} WHERE version = {};",
                    step.version as i64
                )),
            }
            sql.push_str(&format!(" DELETE FROM {EVIDENCE_TABLE};"));
        }
        sql
    }

    /// The version, when it can be read at all (for messages about a run that did not start).
    fn best_version(&mut self) -> u64 {
        self.backend
            .read_version()
            .map(|(raw, _)| version_of(raw))
            .unwrap_or(0)
    }

    fn rollback(&mut self) {
        if self.backend.in_transaction() {
            let _ = self.backend.exec("ROLLBACK");
        }
    }

    /// Checks the database is clean and where the steps start; returns its version.
    fn check_start(&mut self, first: &Step) -> Result<u64, RunError> {
        let (raw, dirty) = self
            .backend
            .read_version()
            .map_err(|f| self.query_error("reading schema_migrations", f))?;
        let version = version_of(raw);
        if dirty {
            let why = match self
                .backend
                .read_evidence()
                .map_err(|f| self.query_error("reading the evidence table", f))?
            {
                Some(e) => Dirty::Recorded(e),
                None => Dirty::LeftByAnotherTool,
            };
            return Err(RunError::Dirty { version, why });
        }
        let fits = match first.direction {
            Direction::Up => version < first.version,
            Direction::Down => version == first.version,
        };
        if !fits {
            return Err(RunError::NotAtStart {
                database: version,
                step: first.version,
                direction: first.direction,
            });
        }
        Ok(version)
    }

    fn statement_error(step: &Step, line: usize, excerpt: String, said: String) -> RunError {
        RunError::Statement {
            version: step.version,
            direction: step.direction,
            file: step.file.path.clone(),
            line: line as u64,
            statement: excerpt,
            database_said: said,
        }
    }

    fn run_locked(
        &mut self,
        steps: &[Step],
        progress: &mut dyn FnMut(u64, u64),
        started: Instant,
    ) -> Result<RunReport, RunFailure> {
        let nothing = |at, cause| RunFailure::NothingChanged { at, cause };
        self.backend.ensure_tables().map_err(|f| {
            let e = self.query_error("creating the schema tables", f);
            nothing(0, e.into())
        })?;
        let total: u64 = steps.iter().map(|s| s.file.body().len() as u64).sum();
        let mut done = 0u64;
        progress(0, total);
        let Some(first) = steps.first() else {
            let (raw, _) = self.backend.read_version().map_err(|f| {
                let e = self.query_error("reading schema_migrations", f);
                nothing(0, e.into())
            })?;
            let v = version_of(raw);
            return Ok(RunReport {
                from: v,
                to: v,
                steps: Vec::new(),
                duration: started.elapsed(),
            });
        };
        let mut completed: Vec<StepReport> = Vec::new();
        let mut from = None;
        let mut at = 0u64;
        let mut i = 0usize;
        while i < steps.len() {
            // A segment: consecutive steps run in one transaction, or one step without.
            let in_tx = steps[i].file.mode.in_transaction();
            let end = if in_tx {
                i + steps[i..]
                    .iter()
                    .take_while(|s| s.file.mode.in_transaction())
                    .count()
            } else {
                i + 1
            };
            let fail = |at: u64, dirty: bool, completed: &[StepReport], cause: RunError| {
                if completed.is_empty() && !dirty {
                    RunFailure::NothingChanged { at, cause }
                } else {
                    RunFailure::PartWay {
                        at,
                        dirty,
                        completed: completed.to_vec(),
                        cause,
                    }
                }
            };
            if let Err(f) = self.backend.begin() {
                let e = self.query_error("starting a transaction", f);
                if from.is_none() {
                    at = self.best_version();
                }
                return Err(fail(at, false, &completed, e.into()));
            }
            let start = if from.is_none() {
                self.check_start(first)
            } else {
                self.check_start(&steps[i])
            };
            match start {
                Ok(v) => {
                    if from.is_none() {
                        from = Some(v);
                        at = v;
                    }
                }
                Err(e) => {
                    self.rollback();
                    if from.is_none() {
                        at = self.best_version();
                    }
                    return Err(fail(at, false, &completed, e));
                }
            }
            if in_tx {
                let mut reports = Vec::new();
                for step in &steps[i..end] {
                    let t = Instant::now();
                    let body = step.file.body();
                    for s in &body {
                        if let Err(f) = self.backend.exec(&s.text) {
                            self.rollback();
                            let e = Self::statement_error(step, s.line, s.excerpt(), f.said);
                            return Err(fail(at, false, &completed, e));
                        }
                        done += 1;
                        progress(done, total);
                    }
                    let mut sql = self.bookkeeping_sql(step, false);
                    let last = std::ptr::eq(step, &steps[end - 1]);
                    if last {
                        // The commit rides with the last bookkeeping: one round trip less.
                        sql.push_str(" COMMIT");
                    }
                    if let Err(f) = self.backend.exec(&sql) {
                        self.rollback();
                        let doing = if last {
                            "updating schema_migrations and committing"
                        } else {
                            "updating schema_migrations"
                        };
                        let e = self.query_error(doing, f);
                        return Err(fail(at, false, &completed, e.into()));
                    }
                    reports.push(StepReport {
                        version: step.version,
                        direction: step.direction,
                        path: step.file.path.clone(),
                        checksum: step.file.checksum.clone(),
                        mode: step.file.mode.clone(),
                        statements: body.len() as u64,
                        duration: t.elapsed(),
                        version_after: step.version_after,
                    });
                }
                at = steps[end - 1].version_after;
                completed.extend(reports);
            } else {
                // golang-migrate's protocol: dirty first, run, then clean.
                let step = &steps[i];
                let t = Instant::now();
                let mark = self.bookkeeping_sql(step, true);
                let marked = self
                    .backend
                    .exec(&mark)
                    .and_then(|_| self.backend.exec("COMMIT"));
                if let Err(f) = marked {
                    self.rollback();
                    let e = self.query_error("marking schema_migrations dirty", f);
                    return Err(fail(at, false, &completed, e.into()));
                }
                let body = step.file.body();
                for s in &body {
                    if let Err(f) = self.backend.exec(&s.text) {
                        self.rollback();
                        let evidence = Evidence {
                            version: step.version,
                            direction: step.direction,
                            file: step.file.path.clone(),
                            line: s.line as u64,
                            statement: s.excerpt(),
                            database_said: f.said.clone(),
                            recorded_at: String::new(),
                        };
                        // Best effort: the dirty flag is already set whatever happens here.
                        let _ = self.backend.write_evidence(&evidence);
                        let e = Self::statement_error(step, s.line, s.excerpt(), f.said);
                        return Err(fail(step.version_after, true, &completed, e));
                    }
                    done += 1;
                    progress(done, total);
                }
                let clean = self.bookkeeping_sql(step, false);
                let cleaned = self
                    .backend
                    .begin()
                    .and_then(|_| self.backend.exec(&clean))
                    .and_then(|_| self.backend.exec("COMMIT"));
                if let Err(f) = cleaned {
                    self.rollback();
                    let e = self.query_error("clearing the dirty flag", f);
                    return Err(fail(step.version_after, true, &completed, e.into()));
                }
                at = step.version_after;
                completed.push(StepReport {
                    version: step.version,
                    direction: step.direction,
                    path: step.file.path.clone(),
                    checksum: step.file.checksum.clone(),
                    mode: step.file.mode.clone(),
                    statements: body.len() as u64,
                    duration: t.elapsed(),
                    version_after: step.version_after,
                });
            }
            i = end;
        }
        Ok(RunReport {
            from: from.unwrap_or(0),
            to: at,
            steps: completed,
            duration: started.elapsed(),
        })
    }
}

impl<B: Backend> SchemaDb for Engine<B> {
    fn url(&self) -> &str {
        self.backend.url()
    }

    fn observe(&mut self, catalogue: &Catalogue) -> Result<DbState, SchemaError> {
        self.backend
            .ensure_tables()
            .map_err(|f| self.query_error("creating the schema tables", f))?;
        let (raw, dirty) = self
            .backend
            .read_version()
            .map_err(|f| self.query_error("reading schema_migrations", f))?;
        let version = version_of(raw);
        let dirty = if dirty {
            let evidence = self
                .backend
                .read_evidence()
                .map_err(|f| self.query_error("reading the evidence table", f))?;
            Some(match evidence {
                Some(e) => Dirty::Recorded(e),
                None => Dirty::LeftByAnotherTool,
            })
        } else {
            None
        };
        let not_in_directory =
            (version != 0 && catalogue.get(version).is_none()).then(|| NotInDirectory {
                version,
                directory: catalogue.dir.clone(),
            });
        let mut drift = Vec::new();
        let checksums = self
            .backend
            .read_checksums()
            .map_err(|f| self.query_error("reading the checksum table", f))?;
        for (v, recorded) in checksums {
            if v > version {
                continue;
            }
            let up = catalogue.get(v).and_then(|m| m.up.clone());
            // An unreadable file counts as changed: it no longer says what was applied.
            let current = up.as_ref().map(|path| {
                std::fs::read(path)
                    .map(|b| super::sql::checksum(&b))
                    .unwrap_or_default()
            });
            if current.as_deref() != Some(recorded.as_str()) {
                drift.push(Drift {
                    version: v,
                    recorded,
                    current,
                    path: up,
                });
            }
        }
        Ok(DbState {
            version,
            dirty,
            drift,
            not_in_directory,
        })
    }

    fn run(
        &mut self,
        steps: &[Step],
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<RunReport, RunFailure> {
        let started = Instant::now();
        self.backend
            .lock()
            .map_err(|e| RunFailure::NothingChanged {
                at: 0,
                cause: e.into(),
            })?;
        let result = self.run_locked(steps, progress, started);
        self.rollback();
        self.backend.unlock();
        result
    }

    fn force(&mut self, version: u64) -> Result<ForceReport, SchemaError> {
        self.backend.lock()?;
        let result = (|| {
            self.backend
                .ensure_tables()
                .map_err(|f| self.query_error("creating the schema tables", f))?;
            self.backend
                .begin()
                .map_err(|f| self.query_error("starting a transaction", f))?;
            let (raw, dirty) = self
                .backend
                .read_version()
                .map_err(|f| self.query_error("reading schema_migrations", f))?;
            let evidence = self
                .backend
                .read_evidence()
                .map_err(|f| self.query_error("reading the evidence table", f))?;
            let was_dirty = dirty.then_some(match evidence {
                Some(e) => Dirty::Recorded(e),
                None => Dirty::LeftByAnotherTool,
            });
            let sql = format!(
                "{} DELETE FROM {EVIDENCE_TABLE};",
                set_version_sql(version, false)
            );
            self.backend
                .exec(&sql)
                .and_then(|_| self.backend.exec("COMMIT"))
                .map_err(|f| self.query_error("forcing the version", f))?;
            Ok(ForceReport {
                previous_version: version_of(raw),
                was_dirty,
                version,
            })
        })();
        self.rollback();
        self.backend.unlock();
        result
    }
}

/// Implements [`SchemaDb`] for a newtype around an [`Engine`].
macro_rules! delegate_schema_db {
    ($t:ty) => {
        impl SchemaDb for $t {
            fn url(&self) -> &str {
                self.0.url()
            }
            fn observe(
                &mut self,
                catalogue: &super::catalogue::Catalogue,
            ) -> Result<super::schema::DbState, SchemaError> {
                self.0.observe(catalogue)
            }
            fn run(
                &mut self,
                steps: &[super::schema::Step],
                progress: &mut dyn FnMut(u64, u64),
            ) -> Result<super::schema::RunReport, super::schema::RunFailure> {
                self.0.run(steps, progress)
            }
            fn force(&mut self, version: u64) -> Result<super::schema::ForceReport, SchemaError> {
                self.0.force(version)
            }
        }
    };
}
pub(crate) use delegate_schema_db;
