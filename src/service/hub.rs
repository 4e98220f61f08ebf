//! What the owner thread publishes for the event streams: the latest status (a watch: a slow
//! reader skips to the latest) and the entries that ended (a bounded broadcast).

use crate::protocol::replies::HistoryEntry;
use crate::runtime::serve::Audience;
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

/// Ended entries kept for streams between two of their reads.
const ENTRIES_KEPT: usize = 4_096;

/// An operation that ended: its sequence number and its history entry as JSON.
#[derive(Debug)]
pub struct Ended {
    /// Its sequence number.
    pub seq: u64,
    /// Its history entry, as JSON.
    pub json: String,
}

/// What the owner thread publishes, for every stream: the latest status, and the entries.
#[derive(Debug, Clone)]
pub struct Hub {
    status: watch::Sender<Arc<str>>,
    entries: broadcast::Sender<Arc<Ended>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Hub {
    /// A hub with no status yet.
    pub fn new() -> Self {
        let (status, _) = watch::channel(Arc::from(""));
        let (entries, _) = broadcast::channel(ENTRIES_KEPT);
        Hub { status, entries }
    }

    /// A new stream's view of the status: the latest, then each change.
    pub fn status(&self) -> watch::Receiver<Arc<str>> {
        self.status.subscribe()
    }

    /// A new stream's view of the entries that end from now on.
    pub fn entries(&self) -> broadcast::Receiver<Arc<Ended>> {
        self.entries.subscribe()
    }

    /// The owner thread's side: what it publishes reaches every stream.
    pub fn audience(&self) -> Box<dyn Audience> {
        Box::new(self.clone())
    }
}

impl Audience for Hub {
    fn status(&mut self, body: String) {
        self.status.send_replace(Arc::from(body));
    }

    fn ended(&mut self, entries: Vec<HistoryEntry>) {
        for entry in entries {
            let _ = self.entries.send(Arc::new(Ended {
                seq: entry.seq,
                json: entry.to_json_line(),
            }));
        }
    }
}
