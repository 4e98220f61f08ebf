//! Connecting an estate: every layer gets its executor, the real system the estate names for it
//! (see [`crate::exec::systems::SYSTEMS`]) or else the simulated world, and what the real systems
//! say at start.

use crate::core::effects::{Effect, Found, StatementView};
use crate::core::state::LayerKind;
use crate::exec::estate::Estate;
use crate::exec::simulated::Simulated;
use crate::exec::system::Connecting;
use crate::exec::{Executor, Executors, LaneExecutor, Reader};
use crate::protocol::values::BackupView;
use std::path::Path;
use std::sync::Arc;

/// The executors of `estate` (paths relative to `base`, simulated effects at `pace`), and what
/// its real systems say at start: [`connect_fenced`] unfenced, for a node alone.
///
/// # Errors
/// One line naming the system that cannot be used and what would be right.
pub fn connect(estate: &Estate, base: &Path, pace: f64) -> Result<(Executors, Found), String> {
    connect_fenced(estate, base, pace, None)
}

/// As [`connect`], for a node that leads under a lease of epoch `fence` (`Some`): its migration
/// transactions on a PostgreSQL target check the target's fence at that epoch first, so once a
/// newer leader has advanced it, this node's next run fails changing nothing (14). The caller
/// advances the fence first ([`crate::exec::migrations::advance_fence`] on the URL of the
/// `[schema]` database), then connects, which reads the target. `None` is [`connect`].
///
/// # Errors
/// As [`connect`].
pub fn connect_fenced(
    estate: &Estate,
    base: &Path,
    pace: f64,
    fence: Option<u64>,
) -> Result<(Executors, Found), String> {
    let simulated = Simulated::new(estate.costs.clone(), &estate.state, pace);
    let database = estate
        .systems
        .iter()
        .find_map(|c| c.config().database(base));
    let with = Connecting {
        base,
        state: &estate.state,
        database,
        fence,
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
    fn backups(&self) -> Result<Vec<BackupView>, String> {
        match self.0.iter().find(|r| r.lists_backups()) {
            Some(reader) => reader.backups(),
            None => Ok(Vec::new()),
        }
    }

    fn lists_backups(&self) -> bool {
        self.0.iter().any(|r| r.lists_backups())
    }

    fn statements(&self, effects: &[Effect]) -> Vec<StatementView> {
        self.0.iter().flat_map(|r| r.statements(effects)).collect()
    }
}
