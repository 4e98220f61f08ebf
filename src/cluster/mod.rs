//! Several nodes on one PostgreSQL store (`--store postgres://…`): any node accepts any request;
//! one holds the lease and runs schema and traffic operations; the kill switch needs no leader.
//!
//! - [`sql`]: the store's schema, created and versioned at first start.
//! - [`store`]: the connection, the leader's fenced journal (the second [`crate::store::Store`]),
//!   and the reads every node makes.
//! - [`lease`]: the lease with its epoch and the heartbeats, by the store's clock.
//! - [`deadline`]: the leader's local deadline, past which it starts nothing.
//! - [`node`]: one node: its front, the kill switch, the leader's term.
//!
//! What the cluster promises and what it does not is in the README ("Several nodes").

pub mod deadline;
pub mod lease;
pub mod node;
pub mod sql;
pub mod store;

use crate::exec::estate::Estate;
use std::path::Path;

/// Advances the fence of the target that has one (a PostgreSQL schema database) to `epoch`:
/// after it, a migration transaction of an earlier epoch cannot commit there.
///
/// # Errors
/// A newer epoch has been there, or the target cannot be reached.
pub fn advance_fences(estate: &Estate, base: &Path, epoch: u64) -> Result<(), String> {
    let databases = estate
        .systems
        .iter()
        .filter_map(|c| c.config().database(base));
    for (database, _) in databases {
        let url = database.url();
        if crate::exec::migrations::fences(&url) {
            crate::exec::migrations::advance_fence(&url, epoch)?;
        }
    }
    Ok(())
}
