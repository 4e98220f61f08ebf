//! Executors: what performs the effects the core decides. One small trait per capability —
//! [`Schema`] (run migrations), [`Backups`] (restore), [`Flags`] (write flags), [`Traffic`]
//! (move the load balancer) — each with the [`simulated`] implementation that owns the estate's
//! cost model. An executor reports a [`Completion`] (measurements, or a structured failure) and,
//! for long effects, [`Progress`]; at start it says what is true now ([`Found`]) so that an
//! operation a crash interrupted can be reconciled.
//!
//! [`LaneExecutor`] groups the capabilities one lane needs; the runtime gives each lane's to its
//! worker, or runs it inline when it is instant.

pub mod backups;
pub mod connect;
pub mod flagd;
pub mod haproxy;
pub mod migrations;
pub mod simulated;

use crate::core::effects::Found;
use crate::core::effects::{
    Completion, Effect, ExecError, Failure, Lane, Operation, Plan, StatementView,
};
use crate::core::state::State;
use crate::protocol::values::{BackupView, Environment, Progress};

/// Reports progress of a long effect.
pub type Report<'a> = &'a mut dyn FnMut(Progress);

/// Runs migrations.
pub trait Schema: Send {
    /// Runs the `RunDown`/`RunUp` effects in order.
    fn run(&mut self, steps: &[Effect], report: Report<'_>) -> Completion;
    /// Records `version` and clears the dirty flag, running nothing.
    fn force(&mut self, version: u64) -> Completion;
    /// The statements the `RunDown`/`RunUp` effects would run, in order (for a dry run); none
    /// where there are no files.
    fn statements(&mut self, _steps: &[Effect]) -> Vec<StatementView> {
        Vec::new()
    }
    /// The database was replaced under it (a restore): connect again.
    fn after_restore(&mut self) {}
    /// The schema version the database is at.
    fn observe(&mut self, believed: &State) -> Found;
    /// Whether it completes at once without touching anything outside the node (so it may run
    /// inline, its intent and outcome committed together).
    fn is_instant(&self) -> bool {
        false
    }
}

/// Restores backups.
pub trait Backups: Send {
    /// Restores `backup` into the live database.
    fn restore(&mut self, backup: &str, report: Report<'_>) -> Completion;
    /// The verified backups with a known schema version, oldest first (a real directory, read
    /// now); `None` where the state's own list is the truth.
    fn verified(&mut self) -> Option<Vec<crate::core::state::Backup>> {
        None
    }
    /// Takes a backup of the live database before a migration from `from` to `to`.
    ///
    /// # Errors
    /// The backup could not be taken: the migration must not run.
    fn take(&mut self, _why: &str, _from: u64, _to: u64) -> Result<(), ExecError> {
        Ok(())
    }

    /// The schema version the live database is at.
    fn observe(&mut self, believed: &State) -> Found;
    /// As [`Schema::is_instant`].
    fn is_instant(&self) -> bool {
        false
    }
}

/// Writes feature flags.
pub trait Flags: Send {
    /// Sets `flag` to `enabled` in the flag store, durably.
    fn set(&mut self, flag: &str, enabled: bool) -> Completion;
    /// The flags as the flag store holds them.
    fn observe(&mut self, believed: &State) -> Found;
    /// As [`Schema::is_instant`].
    fn is_instant(&self) -> bool {
        false
    }
}

/// Moves traffic between the blue and green environments.
pub trait Traffic: Send {
    /// Makes `to` ready, then drains `from`, and verifies.
    fn switch(&mut self, from: Environment, to: Environment) -> Completion;
    /// The live environment as the load balancer says.
    fn observe(&mut self, believed: &State) -> Found;
    /// As [`Schema::is_instant`].
    fn is_instant(&self) -> bool {
        false
    }
}

/// The capabilities one lane needs.
pub enum LaneExecutor {
    /// rollback, migrate, restore.
    Schema {
        /// Migrations.
        schema: Box<dyn Schema>,
        /// Restores.
        backups: Box<dyn Backups>,
    },
    /// switch_traffic.
    Traffic(Box<dyn Traffic>),
    /// disable_feature, enable_feature.
    Flags(Box<dyn Flags>),
}

impl LaneExecutor {
    /// Performs an operation's effects.
    pub fn perform(&mut self, operation: &Operation, report: Report<'_>) -> Completion {
        match (self, &operation.plan) {
            (LaneExecutor::Schema { schema, backups }, Plan::Migrate { from, to }) => {
                let mut effects = operation.effects.as_slice();
                let mut taken = 0;
                if let Some(Effect::TakeBackup { why }) = effects.first() {
                    if let Err(error) = backups.take(why, *from, *to) {
                        return Completion::Failed(Failure::nothing_changed(error));
                    }
                    effects = &effects[1..];
                    taken = 1;
                }
                match schema.run(effects, report) {
                    Completion::Failed(mut failure) => {
                        failure.completed += taken;
                        Completion::Failed(failure)
                    }
                    Completion::Done(mut done) => {
                        if taken == 1 {
                            done.backups = backups.verified();
                        }
                        Completion::Done(done)
                    }
                }
            }
            (LaneExecutor::Schema { schema, .. }, Plan::Rollback { .. }) => {
                schema.run(&operation.effects, report)
            }
            (LaneExecutor::Schema { schema, backups }, Plan::Restore { backup, .. }) => {
                let completion = backups.restore(backup, report);
                schema.after_restore();
                completion
            }
            (LaneExecutor::Schema { schema, .. }, Plan::ForceVersion { to, .. }) => {
                schema.force(*to)
            }
            (LaneExecutor::Traffic(traffic), Plan::SwitchTraffic { from, to }) => {
                traffic.switch(*from, *to)
            }
            (LaneExecutor::Flags(flags), Plan::SetFlag { feature, enabled }) => {
                flags.set(feature, *enabled)
            }
            (_, plan) => Completion::Failed(Failure::nothing_changed(ExecError::failed(
                "routing an operation",
                None,
                format!("no executor of this lane performs {plan:?}"),
            ))),
        }
    }

    /// What is true now for the part of the estate `operation` touches.
    pub fn observe(&mut self, operation: &Operation, believed: &State) -> Found {
        match (self, &operation.plan) {
            (LaneExecutor::Schema { backups, .. }, Plan::Restore { .. }) => {
                backups.observe(believed)
            }
            (LaneExecutor::Schema { schema, .. }, _) => schema.observe(believed),
            (LaneExecutor::Traffic(traffic), _) => traffic.observe(believed),
            (LaneExecutor::Flags(flags), _) => flags.observe(believed),
        }
    }

    /// The statements an operation's effects would run (for a dry run).
    pub fn statements(&mut self, effects: &[Effect]) -> Vec<StatementView> {
        match self {
            LaneExecutor::Schema { schema, .. } => schema.statements(effects),
            _ => Vec::new(),
        }
    }

    /// Whether every capability of the lane is instant.
    pub fn is_instant(&self) -> bool {
        match self {
            LaneExecutor::Schema { schema, backups } => schema.is_instant() && backups.is_instant(),
            LaneExecutor::Traffic(traffic) => traffic.is_instant(),
            LaneExecutor::Flags(flags) => flags.is_instant(),
        }
    }
}

/// Lists backups from the owner thread while the schema lane's executor works elsewhere.
pub type BackupsLister = Box<dyn Fn(&State) -> Vec<BackupView> + Send>;

/// One executor per lane, indexed by [`Lane::index`]; a lane's may be taken out for a worker.
pub struct Executors {
    lanes: [Option<LaneExecutor>; 3],
    lister: Option<BackupsLister>,
}

impl Executors {
    /// Executors from one per lane.
    pub fn new(schema: LaneExecutor, traffic: LaneExecutor, flags: LaneExecutor) -> Self {
        Executors {
            lanes: [Some(schema), Some(traffic), Some(flags)],
            lister: None,
        }
    }

    /// Lists backups with `lister` (a real backups directory, read at each call).
    pub fn with_backups_lister(mut self, lister: BackupsLister) -> Self {
        self.lister = Some(lister);
        self
    }

    /// The backups, newest first: the directory as it is now, or the simulated ones.
    pub fn list_backups(&self, state: &State) -> Vec<BackupView> {
        match &self.lister {
            Some(lister) => lister(state),
            None => crate::core::machine::simulated_backups(state),
        }
    }

    /// The executor of `lane`, unless it was taken.
    pub fn lane(&mut self, lane: Lane) -> Option<&mut LaneExecutor> {
        self.lanes[lane.index()].as_mut()
    }

    /// Whether `lane`'s executor is here and instant: its operations may run inline.
    pub fn is_instant(&self, lane: Lane) -> bool {
        self.lanes[lane.index()]
            .as_ref()
            .is_some_and(LaneExecutor::is_instant)
    }

    /// Takes `lane`'s executor out, for a worker.
    pub fn take(&mut self, lane: Lane) -> Option<LaneExecutor> {
        self.lanes[lane.index()].take()
    }
}
