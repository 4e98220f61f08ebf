//! The boundary between deciding and doing. Transitions decide what must happen and call an
//! [`Executor`] to make it happen; the executor answers how long it took. [`Simulated`] answers
//! from the estate's cost model and touches nothing, so every run is deterministic. Executors
//! that drive real databases, flag files and load balancers implement the same trait.

use crate::state::{Backup, Environment, Migration};

/// A duration in whole seconds.
pub type Seconds = u64;

/// What a restore did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Rows written back.
    pub rows: u64,
    /// How long it took.
    pub seconds: Seconds,
}

/// An executor could not carry out an effect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExecError(pub String);

/// Performs the effects the transitions decide on. Each call is one effect; a call that fails
/// has not happened (an executor must make each effect all-or-nothing, or report what it did).
pub trait Executor {
    /// Runs `migration`'s down().
    ///
    /// # Errors
    /// The executor's failure; the migration stays applied.
    fn run_down(&mut self, migration: &Migration) -> Result<Seconds, ExecError>;

    /// Runs `migration`'s up().
    ///
    /// # Errors
    /// The executor's failure; the migration stays unapplied.
    fn run_up(&mut self, migration: &Migration) -> Result<Seconds, ExecError>;

    /// Sets a feature flag.
    ///
    /// # Errors
    /// The executor's failure; the flag keeps its value.
    fn set_flag(&mut self, flag: &str, enabled: bool) -> Result<(), ExecError>;

    /// Moves traffic from `from` to `to`; returns the downtime.
    ///
    /// # Errors
    /// The executor's failure; traffic stays on `from`.
    fn switch_traffic(&mut self, from: Environment, to: Environment) -> Result<Seconds, ExecError>;

    /// Restores `backup`.
    ///
    /// # Errors
    /// The executor's failure; the database is as it was.
    fn restore(&mut self, backup: &Backup) -> Result<Restored, ExecError>;
}

/// The deterministic executor: every effect succeeds and costs what the estate says.
/// A blue-green switch is atomic in this model: zero downtime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Simulated;

impl Executor for Simulated {
    fn run_down(&mut self, migration: &Migration) -> Result<Seconds, ExecError> {
        Ok(migration.down_seconds)
    }

    fn run_up(&mut self, migration: &Migration) -> Result<Seconds, ExecError> {
        Ok(migration.up_seconds)
    }

    fn set_flag(&mut self, _flag: &str, _enabled: bool) -> Result<(), ExecError> {
        Ok(())
    }

    fn switch_traffic(
        &mut self,
        _from: Environment,
        _to: Environment,
    ) -> Result<Seconds, ExecError> {
        Ok(0)
    }

    fn restore(&mut self, backup: &Backup) -> Result<Restored, ExecError> {
        Ok(Restored {
            rows: backup.rows,
            seconds: backup.restore_seconds,
        })
    }
}
