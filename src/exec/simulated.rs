//! The simulated world: every effect succeeds and costs what the estate's [`CostModel`] says,
//! in whole modelled seconds, which is what replies report at any pace. With a pace of 0 (the
//! default) nothing waits and every run is deterministic; with `--pace F` each effect takes F ×
//! its modelled seconds of wall time, reporting progress as it goes. A blue-green switch is
//! atomic here: zero downtime.
//!
//! It touches nothing outside the node, so what is "true now" at reconciliation is what the node
//! believes.

use crate::core::effects::Found;
use crate::core::effects::{Completion, Done, Effect};
use crate::core::estate::CostModel;
use crate::core::state::State;
use crate::exec::{Backups, Executors, Flags, LaneExecutor, Report, Schema, Traffic};
use crate::protocol::values::{Environment, Progress, Seconds};
use std::sync::Arc;
use std::time::Duration;

/// How many progress reports a paced effect gives.
const STEPS: u64 = 10;

/// The simulated executor of every capability, sharing one cost model.
#[derive(Debug, Clone)]
pub struct Simulated {
    costs: Arc<CostModel>,
    pace: f64,
    backup_rows: Arc<std::collections::BTreeMap<String, u64>>,
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
        }
    }

    /// One executor per lane, all simulated.
    pub fn executors(&self) -> Executors {
        Executors::new(
            LaneExecutor::Schema {
                schema: Box::new(self.clone()),
                backups: Box::new(self.clone()),
            },
            LaneExecutor::Traffic(Box::new(self.clone())),
            LaneExecutor::Flags(Box::new(self.clone())),
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

impl Schema for Simulated {
    fn run(&mut self, steps: &[Effect], report: Report<'_>) -> Completion {
        let mut total = Seconds::ZERO;
        let count = steps.len() as u64;
        for (i, step) in steps.iter().enumerate() {
            let seconds = match step {
                Effect::RunDown { version, .. } => self.costs.down_seconds(*version),
                Effect::RunUp { version, .. } => self.costs.up_seconds(*version),
                _ => 0,
            };
            self.wait(seconds, "seconds", seconds, &mut |_| {});
            total = total.plus(Seconds::Modelled(seconds));
            if self.pace > 0.0 {
                report(Progress {
                    done: i as u64 + 1,
                    total: count,
                    unit: "migrations".to_owned(),
                });
            }
        }
        Completion::Done(Done {
            duration: total,
            rows: None,
            ..Done::default()
        })
    }

    fn force(&mut self, _version: u64) -> Completion {
        Completion::Done(Done::default())
    }

    fn observe(&mut self, believed: &State) -> Found {
        Found {
            schema_version: Some(believed.schema_version),
            ..Found::default()
        }
    }

    fn is_instant(&self) -> bool {
        self.pace == 0.0
    }
}

impl Backups for Simulated {
    fn restore(&mut self, backup: &str, report: Report<'_>) -> Completion {
        let seconds = self.costs.restore_seconds(backup);
        let rows = self.backup_rows.get(backup).copied().unwrap_or(0);
        self.wait(seconds, "rows", rows, report);
        Completion::Done(Done {
            duration: Seconds::Modelled(seconds),
            rows: Some(rows),
            ..Done::default()
        })
    }

    fn observe(&mut self, believed: &State) -> Found {
        Schema::observe(self, believed)
    }

    fn is_instant(&self) -> bool {
        self.pace == 0.0
    }
}

impl Flags for Simulated {
    fn set(&mut self, _flag: &str, _enabled: bool) -> Completion {
        Completion::Done(Done {
            duration: Seconds::ZERO,
            rows: None,
            ..Done::default()
        })
    }

    fn observe(&mut self, believed: &State) -> Found {
        Found {
            flags: Some(believed.flags.clone()),
            ..Found::default()
        }
    }

    fn is_instant(&self) -> bool {
        true
    }
}

impl Traffic for Simulated {
    fn switch(&mut self, _from: Environment, _to: Environment) -> Completion {
        Completion::Done(Done {
            duration: Seconds::ZERO,
            rows: None,
            ..Done::default()
        })
    }

    fn observe(&mut self, believed: &State) -> Found {
        Found {
            live_environment: Some(believed.traffic.live),
            ..Found::default()
        }
    }

    fn is_instant(&self) -> bool {
        true
    }
}
