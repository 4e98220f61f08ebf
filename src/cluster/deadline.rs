//! The leader's local deadline, shared by the lease keeper that sets it and the journal that
//! checks it before each commit.

use std::sync::Mutex;
use std::time::Instant;

/// Until when this node may start effects as the leader.
#[derive(Debug, Default)]
pub struct Deadline(Mutex<Option<Instant>>);

impl Deadline {
    /// A deadline at `at` (a leader's term as a test holds it).
    pub fn until(at: Instant) -> Self {
        Deadline(Mutex::new(Some(at)))
    }

    /// Whether the lease still holds by the local clock.
    pub fn holds(&self) -> bool {
        self.0
            .lock()
            .map(|d| d.is_some_and(|d| Instant::now() < d))
            .unwrap_or(false)
    }

    /// Sets it (`None`: this node does not lead).
    pub(crate) fn set(&self, until: Option<Instant>) {
        if let Ok(mut d) = self.0.lock() {
            *d = until;
        }
    }
}
