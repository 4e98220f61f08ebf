//! The simulated world: every effect succeeds and costs what the estate's [`CostModel`] says,
//! in whole modelled seconds, which is what replies report at any pace. With a pace of 0 (the
//! default) nothing waits and every run is deterministic; with `--pace F` each effect takes F ×
//! its modelled seconds of wall time, reporting progress as it goes. A blue-green switch is
//! atomic here: zero downtime.
//!
//! It touches nothing outside the node, so what is "true now" at reconciliation is what the node
//! believes.

use crate::core::effects::{Completion, Done, Effect, Found, LayerKind};
use crate::core::state::State;
use crate::exec::{Executor, Executors, LaneExecutor, Report};
use crate::protocol::values::{Progress, Seconds};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How many progress reports a paced effect gives.
const STEPS: u64 = 10;

/// What the simulated executor charges for each change, in whole seconds (from the estate's
/// `up_seconds`, `down_seconds` and `restore_seconds`).
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

/// The simulated executor of one layer, sharing one cost model with the others.
#[derive(Debug, Clone)]
pub struct Simulated {
    costs: Arc<CostModel>,
    pace: f64,
    backup_rows: Arc<BTreeMap<String, u64>>,
    layer: LayerKind,
}

impl Simulated {
    /// A simulated world over `costs`; effects take `pace` × their modelled seconds (0: instant).
    /// `state` gives the backups' row counts.
    pub fn new(costs: CostModel, state: &State, pace: f64) -> Self {
        Simulated {
            costs: Arc::new(costs),
            pace: if pace.is_finite() && pace > 0.0 {
                pace
            } else {
                0.0
            },
            backup_rows: Arc::new(
                state
                    .backups
                    .iter()
                    .map(|b| (b.name.clone(), b.rows))
                    .collect(),
            ),
            layer: LayerKind::Schema,
        }
    }

    /// The simulated executor of `layer`.
    pub fn of(&self, layer: LayerKind) -> Box<dyn Executor> {
        Box::new(Simulated {
            layer,
            ..self.clone()
        })
    }

    /// One executor per lane, all simulated.
    pub fn executors(&self) -> Executors {
        let lane = |layers: &[LayerKind]| {
            LaneExecutor::new(layers.iter().map(|l| (*l, self.of(*l))).collect())
        };
        Executors::new(
            lane(&[LayerKind::Schema, LayerKind::Backups]),
            lane(&[LayerKind::Traffic]),
            lane(&[LayerKind::Flags]),
        )
    }

    /// Waits `seconds` × pace of wall time in [`STEPS`] steps, reporting each.
    fn wait(&self, seconds: u64, unit: &str, total: u64, report: Report<'_>) {
        if self.pace == 0.0 || seconds == 0 {
            return;
        }
        let step = Duration::from_secs_f64(seconds as f64 * self.pace / STEPS as f64);
        for i in 1..=STEPS {
            std::thread::sleep(step);
            report(Progress {
                done: total * i / STEPS,
                total,
                unit: unit.to_owned(),
            });
        }
    }
}

impl Executor for Simulated {
    fn perform(&mut self, effects: &[Effect], report: Report<'_>) -> Completion {
        let migrations = effects
            .iter()
            .filter(|e| matches!(e, Effect::RunDown { .. } | Effect::RunUp { .. }))
            .count() as u64;
        let mut seconds_total = 0u64;
        let mut rows = None;
        let mut migrated = 0;
        for effect in effects {
            let seconds = match effect {
                Effect::RunDown { version, .. } => self.costs.down_seconds(*version),
                Effect::RunUp { version, .. } => self.costs.up_seconds(*version),
                Effect::Restore { backup } => {
                    let seconds = self.costs.restore_seconds(backup);
                    let restored = self.backup_rows.get(backup).copied().unwrap_or(0);
                    self.wait(seconds, "rows", restored, report);
                    rows = Some(restored);
                    seconds_total = seconds_total.saturating_add(seconds);
                    continue;
                }
                Effect::ForceVersion { .. }
                | Effect::TakeBackup { .. }
                | Effect::WriteFlags { .. }
                | Effect::SetServerState { .. }
                | Effect::CheckHealthy { .. } => continue,
            };
            self.wait(seconds, "seconds", seconds, &mut |_| {});
            seconds_total = seconds_total.saturating_add(seconds);
            migrated += 1;
            if self.pace > 0.0 {
                report(Progress {
                    done: migrated,
                    total: migrations,
                    unit: "migrations".to_owned(),
                });
            }
        }
        Completion::Done(Done {
            rows,
            ..Done::took(Seconds::Modelled(seconds_total))
        })
    }

    fn observe(&mut self, believed: &State) -> Found {
        match self.layer {
            LayerKind::Schema | LayerKind::Backups => Found {
                schema_version: Some(believed.schema_version),
                ..Found::default()
            },
            LayerKind::Flags => Found {
                flags: Some(believed.flags.clone()),
                ..Found::default()
            },
            LayerKind::Traffic => Found {
                live_environment: Some(believed.traffic.live),
                ..Found::default()
            },
        }
    }

    fn is_instant(&self) -> bool {
        match self.layer {
            LayerKind::Schema | LayerKind::Backups => self.pace == 0.0,
            LayerKind::Flags | LayerKind::Traffic => true,
        }
    }
}
