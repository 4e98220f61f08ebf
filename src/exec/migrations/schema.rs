//! The schema database: what it says ([`DbState`]), how steps run on it ([`SchemaDb::run`]), and
//! how a person clears a dirty state ([`SchemaDb::force`]). Which steps a rollback or a migration
//! runs is decided once, by the core (`State::rollback` and `State::migrate` in
//! `core/transitions.rs`); the executor turns their effects into [`Step`]s.
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
//!
//! A file in SQLite's table-change shape ([`TxMode::Wrapped`]: `PRAGMA foreign_keys=OFF`,
//! `BEGIN`, body, `COMMIT`, `PRAGMA foreign_keys=ON`) runs in one transaction too: its leading
//! pragmas are applied before the transaction, its trailing ones after it ends, committed or
//! rolled back. A pragma cannot be applied in the middle of a transaction, so such a file shares
//! the run's transaction only with neighbours that have the same pragmas around them
//! ([`TxMode::can_share_transaction_with`]); elsewhere the run commits before it and after it, and
//! a later failure is then part-way (13) but never dirty. Each [`StepReport`] says, in
//! `protocol`, how its file ran and why.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::catalogue::Catalogue;
pub use super::catalogue::Direction;
use super::sql::{SqlFile, Statement, TxMode};

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

/// Why a step could not be loaded from its directory.
#[derive(Debug)]
pub enum StepError {
    /// The directory has no file of that version and direction.
    Missing,
    /// Its file could not be read.
    Unreadable(PathBuf, super::sql::SqlFileError),
}

impl Step {
    /// The step of `version` in `direction`, its file loaded from `catalogue`: up ends at the
    /// version, down at the one before it in the directory.
    ///
    /// # Errors
    /// The directory has no such file, or it cannot be read.
    pub fn load(
        catalogue: &Catalogue,
        version: u64,
        direction: Direction,
    ) -> Result<Step, StepError> {
        let path = catalogue
            .get(version)
            .and_then(|m| m.file(direction))
            .ok_or(StepError::Missing)?;
        let file = SqlFile::load(path).map_err(|e| StepError::Unreadable(path.to_owned(), e))?;
        Ok(Step {
            version,
            direction,
            file,
            version_after: match direction {
                Direction::Up => version,
                Direction::Down => catalogue.previous(version),
            },
        })
    }
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
    /// The protocol it ran under and why, in words: `one transaction`, `one transaction; PRAGMA
    /// foreign_keys=OFF applied before it and PRAGMA foreign_keys=ON after`, `dirty protocol:
    /// line 3: VACUUM cannot run inside a transaction`, with whether its transaction was shared.
    pub protocol: String,
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
    #[error("{} line {line}: {direction} of version {version} failed at `{statement}`: {database_said} (protocol: {protocol})", file.display())]
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
        /// The protocol the file ran under and why (as in [`StepReport::protocol`]).
        protocol: String,
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
    /// Opens a transaction that takes the write lock at once (on a fenced database, its first
    /// statements check the fence; refused, no transaction is left open).
    fn begin(&mut self) -> Result<(), DbFailure>;
    /// Checks the fence as a statement of its own, before a file that runs outside our
    /// transactions; a database without one has nothing to check.
    fn fence(&mut self) -> Result<(), DbFailure> {
        Ok(())
    }
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

    /// Runs the steps, segment by segment; the lock is held and the tables may not exist yet.
    fn run_locked(
        &mut self,
        steps: &[Step],
        progress: &mut dyn FnMut(u64, u64),
        started: Instant,
    ) -> Result<RunReport, RunFailure> {
        self.backend.ensure_tables().map_err(|f| {
            let e = self.query_error("creating the schema tables", f);
            RunFailure::NothingChanged {
                at: 0,
                cause: e.into(),
            }
        })?;
        let total: u64 = steps.iter().map(|s| s.file.body().len() as u64).sum();
        progress(0, total);
        if steps.is_empty() {
            return self.empty_run(started);
        }
        let mut run = Run {
            from: None,
            at: 0,
            completed: Vec::new(),
            done: 0,
            total,
            progress,
        };
        for segment in segments(steps) {
            let part = &steps[segment.start..segment.end];
            if segment.transaction {
                self.run_transaction(part, &segment, &mut run)?;
            } else {
                self.run_dirty(&part[0], &segment, &mut run)?;
            }
        }
        Ok(RunReport {
            from: run.from.unwrap_or(0),
            to: run.at,
            steps: run.completed,
            duration: started.elapsed(),
        })
    }

    /// A run of no steps: the database's version, unchanged.
    fn empty_run(&mut self, started: Instant) -> Result<RunReport, RunFailure> {
        let (raw, _) = self.backend.read_version().map_err(|f| {
            let e = self.query_error("reading schema_migrations", f);
            RunFailure::NothingChanged {
                at: 0,
                cause: e.into(),
            }
        })?;
        let v = version_of(raw);
        Ok(RunReport {
            from: v,
            to: v,
            steps: Vec::new(),
            duration: started.elapsed(),
        })
    }

    /// A failure that left the database clean where the run stands (read from the database if
    /// the run had not started yet).
    fn stop(&mut self, run: &mut Run<'_>, cause: RunError) -> RunFailure {
        if run.from.is_none() {
            run.at = self.best_version();
        }
        run.fail(run.at, false, cause)
    }

    /// Opens a transaction and checks the database is clean and where `step` starts; the first
    /// time, records where the run starts.
    fn begin_checked(&mut self, step: &Step, run: &mut Run<'_>) -> Result<(), RunFailure> {
        if let Err(f) = self.backend.begin() {
            let e = self.query_error("starting a transaction", f);
            return Err(self.stop(run, e.into()));
        }
        match self.check_start(step) {
            Ok(v) => {
                if run.from.is_none() {
                    run.from = Some(v);
                    run.at = v;
                }
                Ok(())
            }
            Err(e) => {
                self.rollback();
                Err(self.stop(run, e))
            }
        }
    }

    /// Executes statements in order, counting progress; the first that fails and what the
    /// database said.
    fn exec_statements<'s>(
        &mut self,
        statements: &[&'s Statement],
        run: &mut Run<'_>,
    ) -> Result<(), (&'s Statement, String)> {
        for s in statements {
            self.backend.exec(&s.text).map_err(|f| (*s, f.said))?;
            run.step_done();
        }
        Ok(())
    }

    /// Applies a wrapped file's pragmas outside any transaction.
    fn apply_pragmas(
        &mut self,
        step: &Step,
        pragmas: &[Statement],
        protocol: &str,
    ) -> Result<(), RunError> {
        for s in pragmas {
            if let Err(f) = self.backend.exec(&s.text) {
                return Err(statement_error(step, s, f.said, protocol));
            }
        }
        Ok(())
    }

    /// Steps that share one transaction, with the pragmas of wrapped files applied before it and
    /// after it; the trailing pragmas also when it fails, so the connection is restored.
    fn run_transaction(
        &mut self,
        steps: &[Step],
        segment: &Segment,
        run: &mut Run<'_>,
    ) -> Result<(), RunFailure> {
        let (first, last) = (&steps[0], &steps[steps.len() - 1]);
        let (before, _) = first.file.mode.wrap().unwrap_or((&[], &[]));
        let (_, after) = last.file.mode.wrap().unwrap_or((&[], &[]));
        let result = match self.apply_pragmas(first, before, &protocol(first, segment)) {
            Ok(()) => self.run_in_transaction(steps, segment, run),
            Err(e) => Err(self.stop(run, e)),
        };
        if after.is_empty() {
            return result;
        }
        // Our transaction is over (committed, or rolled back by the failure).
        self.rollback();
        let restored = self.apply_pragmas(last, after, &protocol(last, segment));
        match (result, restored) {
            (Err(failure), _) => Err(failure),
            // Committed: the steps are done, the connection is not restored.
            (Ok(()), Err(e)) => Err(self.stop(run, e)),
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    /// Opens the transaction, runs each step's body and bookkeeping in it, and commits with the
    /// last bookkeeping.
    fn run_in_transaction(
        &mut self,
        steps: &[Step],
        segment: &Segment,
        run: &mut Run<'_>,
    ) -> Result<(), RunFailure> {
        self.begin_checked(&steps[0], run)?;
        let mut reports = Vec::with_capacity(steps.len());
        for (k, step) in steps.iter().enumerate() {
            let last = k + 1 == steps.len();
            match self.run_step_in_transaction(step, segment, last, run) {
                Ok(report) => reports.push(report),
                Err(e) => {
                    self.rollback();
                    return Err(self.stop(run, e));
                }
            }
        }
        run.at = steps[steps.len() - 1].version_after;
        run.completed.extend(reports);
        Ok(())
    }

    /// One step inside the open transaction: its body, then its bookkeeping (with the commit
    /// when it is the transaction's last step). The caller rolls back on failure.
    fn run_step_in_transaction(
        &mut self,
        step: &Step,
        segment: &Segment,
        last: bool,
        run: &mut Run<'_>,
    ) -> Result<StepReport, RunError> {
        let t = Instant::now();
        let protocol = protocol(step, segment);
        let body = step.file.body();
        if let Err((s, said)) = self.exec_statements(&body, run) {
            return Err(statement_error(step, s, said, &protocol));
        }
        let mut sql = self.bookkeeping_sql(step, false);
        if last {
            // The commit rides with the last bookkeeping: one round trip less.
            sql.push_str(" COMMIT");
        }
        if let Err(f) = self.backend.exec(&sql) {
            let doing = if last {
                "updating schema_migrations and committing"
            } else {
                "updating schema_migrations"
            };
            return Err(self.query_error(doing, f).into());
        }
        Ok(StepReport::of(step, protocol, body.len(), t))
    }

    /// golang-migrate's protocol for a file that cannot run in a transaction: mark the version
    /// dirty, run the file as written, then clear the mark; a failure of the file keeps the mark
    /// and records the evidence. On a fenced database the fence is checked again, as a
    /// statement of its own, right before the file.
    fn run_dirty(
        &mut self,
        step: &Step,
        segment: &Segment,
        run: &mut Run<'_>,
    ) -> Result<(), RunFailure> {
        self.begin_checked(step, run)?;
        let t = Instant::now();
        let protocol = protocol(step, segment);
        let mark = self.bookkeeping_sql(step, true);
        let marked = self
            .backend
            .exec(&mark)
            .and_then(|_| self.backend.exec("COMMIT"));
        if let Err(f) = marked {
            self.rollback();
            let e = self.query_error("marking schema_migrations dirty", f);
            return Err(self.stop(run, e.into()));
        }
        if let Err(f) = self.backend.fence() {
            // The mark is committed; a node the fence refuses writes nothing more, not even
            // evidence, so the database stays dirty for the leader to resolve.
            let e = self.query_error(
                "checking the fence before running a file outside a transaction",
                f,
            );
            return Err(run.fail(step.version_after, true, e.into()));
        }
        let body = step.file.body();
        if let Err((s, said)) = self.exec_statements(&body, run) {
            self.rollback();
            self.record_evidence(step, s, &said);
            let e = statement_error(step, s, said, &protocol);
            return Err(run.fail(step.version_after, true, e));
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
            return Err(run.fail(step.version_after, true, e.into()));
        }
        run.at = step.version_after;
        run.completed
            .push(StepReport::of(step, protocol, body.len(), t));
        Ok(())
    }

    /// Best effort: the dirty flag is already set whatever happens here.
    fn record_evidence(&mut self, step: &Step, s: &Statement, said: &str) {
        let evidence = Evidence {
            version: step.version,
            direction: step.direction,
            file: step.file.path.clone(),
            line: s.line as u64,
            statement: s.excerpt(),
            database_said: said.to_owned(),
            recorded_at: String::new(),
        };
        let _ = self.backend.write_evidence(&evidence);
    }
}

/// A run under way: where the database stands and what has been committed.
struct Run<'p> {
    /// The version at the start, once checked.
    from: Option<u64>,
    /// The version the database is at, as committed.
    at: u64,
    /// The steps committed.
    completed: Vec<StepReport>,
    /// Statements executed so far.
    done: u64,
    /// Statements in the run.
    total: u64,
    /// Told `(done, total)` after each statement.
    progress: &'p mut dyn FnMut(u64, u64),
}

impl Run<'_> {
    fn step_done(&mut self) {
        self.done += 1;
        (self.progress)(self.done, self.total);
    }

    /// The failure: nothing changed when nothing was committed and the database is clean.
    fn fail(&self, at: u64, dirty: bool, cause: RunError) -> RunFailure {
        if self.completed.is_empty() && !dirty {
            RunFailure::NothingChanged { at, cause }
        } else {
            RunFailure::PartWay {
                at,
                dirty,
                completed: self.completed.clone(),
                cause,
            }
        }
    }
}

/// Consecutive steps that commit together: in one transaction of ours, or (`transaction` false)
/// one step on the dirty protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    /// The first step's index.
    start: usize,
    /// Past the last step's index.
    end: usize,
    /// Whether the steps run in one transaction of ours.
    transaction: bool,
    /// A transaction committed apart from a neighbouring one, because the connection pragmas of
    /// their files differ.
    apart: bool,
}

/// Splits steps into segments: consecutive in-transaction steps share one transaction while
/// their modes allow it ([`TxMode::can_share_transaction_with`]); a dirty-protocol step stands
/// alone.
fn segments(steps: &[Step]) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let mode = &step.file.mode;
        if let Some(last) = out.last_mut() {
            if last.transaction
                && steps[last.end - 1]
                    .file
                    .mode
                    .can_share_transaction_with(mode)
            {
                last.end = i + 1;
                continue;
            }
        }
        out.push(Segment {
            start: i,
            end: i + 1,
            transaction: mode.in_transaction(),
            apart: false,
        });
    }
    for k in 1..out.len() {
        if out[k - 1].transaction && out[k].transaction {
            out[k - 1].apart = true;
            out[k].apart = true;
        }
    }
    out
}

/// The protocol a step runs under and why, in words (see [`StepReport::protocol`]).
fn protocol(step: &Step, segment: &Segment) -> String {
    let mut text = step.file.mode.to_string();
    let others = segment.end - segment.start - 1;
    if others > 0 {
        let s = if others == 1 { "" } else { "s" };
        text.push_str(&format!(
            "; the transaction is shared with {others} other file{s} of this run"
        ));
    }
    if segment.apart {
        text.push_str(
            "; committed apart from the neighbouring files of this run, as their connection pragmas differ and a pragma cannot be applied inside a transaction",
        );
    }
    text
}

fn statement_error(step: &Step, s: &Statement, said: String, protocol: &str) -> RunError {
    RunError::Statement {
        version: step.version,
        direction: step.direction,
        file: step.file.path.clone(),
        line: s.line as u64,
        statement: s.excerpt(),
        database_said: said,
        protocol: protocol.to_owned(),
    }
}

impl StepReport {
    fn of(step: &Step, protocol: String, statements: usize, started: Instant) -> StepReport {
        StepReport {
            version: step.version,
            direction: step.direction,
            path: step.file.path.clone(),
            checksum: step.file.checksum.clone(),
            mode: step.file.mode.clone(),
            protocol,
            statements: statements as u64,
            duration: started.elapsed(),
            version_after: step.version_after,
        }
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
