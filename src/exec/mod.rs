//! Executors: what performs the effects the core decides. The contract is the effects
//! themselves: an [`Executor`] is given a run of its layer's effects, performs them in order and
//! reports what happened (a [`Completion`]: measurements, or a structured [`Failure`] saying
//! how many completed) and, for long effects, [`Progress`]. It decides nothing — which effects,
//! in which order, under which preconditions, is the transition's — and at start it says what
//! is true now ([`Found`]) so that an operation a crash interrupted can be reconciled.
//!
//! Each layer (schema, backups, flags, traffic) has one executor: the [`simulated`] world with
//! the estate's cost model, or a real system chosen from the estate by [`connect`]. A lane's
//! [`LaneExecutor`] holds the executors of its layers and walks an operation's effects,
//! handing each consecutive run to the executor of its layer, stopping at the first failure.
//!
//! Beside them, [`prometheus`] samples the ladder's health signals (PromQL instant queries).
//!
//! Adding a real system is one file (its estate section, how it connects, its [`Executor`])
//! plus one line in [`systems::SYSTEMS`].

pub mod backups;
pub mod connect;
pub mod database;
pub mod estate;
pub mod flagd;
pub mod haproxy;
pub mod migrations;
pub mod prometheus;
pub mod simulated;
pub mod system;
pub mod systems;

use crate::core::effects::{
    Completion, Done, Effect, ExecError, Failure, Found, Lane, LayerKind, Operation, StatementView,
};
use crate::core::state::State;
use crate::protocol::values::{BackupView, Progress};

/// Reports progress of a long effect.
pub type Report<'a> = &'a mut dyn FnMut(Progress);

/// Performs one layer's effects.
pub trait Executor: Send {
    /// Performs `effects` — consecutive effects of its layer from one operation — in order,
    /// stopping at the first that fails, and reports what happened. A [`Failure`]'s
    /// `completed` counts within `effects`.
    fn perform(&mut self, effects: &[Effect], report: Report<'_>) -> Completion;

    /// What is true now in its system (at start, and to reconcile an interrupted operation).
    fn observe(&mut self, believed: &State) -> Found;

    /// Whether it completes at once without touching anything outside the node (so its lane
    /// may run inline, an operation's intent and outcome committed together).
    fn is_instant(&self) -> bool {
        false
    }

    /// Another executor of its lane performed `effects` (say, a restore replaced the database
    /// under it): it may have to connect again.
    fn notice(&mut self, _effects: &[Effect]) {}
}

/// Lists what an executor's system holds without the executor (which may be busy on its lane's
/// worker): backups, and the statements migration files would run. Serves look-ups off the
/// owner thread.
pub trait Reader: Send + Sync {
    /// The backups, newest first, as the system holds them now (asked only of a reader that
    /// [`Reader::lists_backups`]).
    ///
    /// # Errors
    /// They could not be read; the text says why.
    fn backups(&self) -> Result<Vec<BackupView>, String> {
        Ok(Vec::new())
    }

    /// Whether it lists backups (a real backups directory); otherwise the state's are listed.
    fn lists_backups(&self) -> bool {
        false
    }

    /// The statements `effects` would run, in order, for a dry run; none where there are no
    /// files.
    fn statements(&self, _effects: &[Effect]) -> Vec<StatementView> {
        Vec::new()
    }
}

/// The executors of one lane's layers.
pub struct LaneExecutor {
    layers: Vec<(LayerKind, Box<dyn Executor>)>,
}

impl LaneExecutor {
    /// A lane performed by these executors, one per layer.
    pub fn new(layers: Vec<(LayerKind, Box<dyn Executor>)>) -> Self {
        LaneExecutor { layers }
    }

    fn executor(&mut self, layer: LayerKind) -> Option<&mut Box<dyn Executor>> {
        self.layers
            .iter_mut()
            .find(|(l, _)| *l == layer)
            .map(|(_, e)| e)
    }

    /// Performs an operation's effects in order: each consecutive run of one layer's effects
    /// goes to that layer's executor; the first failure ends the operation, counting every
    /// effect completed before it.
    pub fn perform(&mut self, operation: &Operation, report: Report<'_>) -> Completion {
        // Most operations are one run of one layer (a flag, a switch, a rollback): its
        // completion is the operation's as it is, with nothing to add up.
        let mut done: Option<Done> = None;
        let mut completed = 0;
        for run in operation.effects.chunk_by(|a, b| a.layer() == b.layer()) {
            let layer = run[0].layer();
            let Some(executor) = self.executor(layer) else {
                return Completion::Failed(Failure {
                    completed,
                    ..Failure::nothing_changed(ExecError::failed(
                        format!("performing {layer} effects"),
                        None,
                        "no executor of this lane performs them",
                    ))
                });
            };
            match executor.perform(run, report) {
                Completion::Done(more) => {
                    done = Some(match done {
                        Some(before) => before.then(more),
                        None => more,
                    })
                }
                Completion::Failed(mut failure) => {
                    failure.completed += completed;
                    return Completion::Failed(failure);
                }
            }
            completed += run.len();
            for (other, executor) in &mut self.layers {
                if *other != layer {
                    executor.notice(run);
                }
            }
        }
        Completion::Done(done.unwrap_or_default())
    }

    /// What is true now for the layers `operation` touches.
    pub fn observe(&mut self, operation: &Operation, believed: &State) -> Found {
        let mut found = Found::default();
        for (layer, executor) in &mut self.layers {
            if operation.effects.iter().any(|e| e.layer() == *layer) || operation.effects.is_empty()
            {
                found = found.merge(executor.observe(believed));
            }
        }
        found
    }

    /// Whether every executor of the lane is instant.
    pub fn is_instant(&self) -> bool {
        self.layers.iter().all(|(_, e)| e.is_instant())
    }
}

/// One executor per lane, indexed by [`Lane::index`] (a lane's may be taken out for a worker),
/// and the [`Reader`] of look-ups.
pub struct Executors {
    lanes: [Option<LaneExecutor>; 3],
    reader: Option<std::sync::Arc<dyn Reader>>,
}

impl Executors {
    /// Executors from one per lane.
    pub fn new(schema: LaneExecutor, traffic: LaneExecutor, flags: LaneExecutor) -> Self {
        Executors {
            lanes: [Some(schema), Some(traffic), Some(flags)],
            reader: None,
        }
    }

    /// With a reader of the real systems' look-ups (a real backups directory, migration files).
    pub fn with_reader(mut self, reader: std::sync::Arc<dyn Reader>) -> Self {
        self.reader = Some(reader);
        self
    }

    /// The reader of look-ups, when a real system has one.
    pub fn reader(&self) -> Option<&std::sync::Arc<dyn Reader>> {
        self.reader.as_ref()
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
