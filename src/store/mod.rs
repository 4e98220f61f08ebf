//! Where decisions and outcomes are kept: the [`Store`] trait the runtime records through, the
//! in-memory [`MemoryStore`] (the default, and a crash-simulating journal for tests), the
//! durable SQLite [`journal`] with its snapshots, and [`replay`], which rebuilds a machine from
//! recorded entries without calling any executor.
//!
//! An entry is one decided change: its request, and then either a refusal, or an operation (the
//! intent) followed later by its outcome and reply. An intent without an outcome is an operation
//! a crash interrupted.

pub mod journal;
pub mod replay;
pub mod snapshot;
mod writer;

use crate::core::effects::Completion;
use crate::core::effects::Found;
use crate::core::machine::{Machine, Record};
use crate::core::retries::Answer;
use crate::protocol::replies::HistoryEntry;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::VecDeque;
use std::sync::Arc;

/// How an operation ended, as an entry stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The executor reported it.
    Completion(Completion),
    /// A crash cut it short; this is what was found at start.
    Interrupted(Found),
}

/// One decided change as stored: JSON texts, so that the store needs no knowledge of the types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Sequence number, from 1.
    pub seq: u64,
    /// Sender.
    pub src: String,
    /// The request's msg_id.
    pub msg_id: u64,
    /// Whether it was carried out.
    pub accepted: bool,
    /// The request body.
    pub request: String,
    /// The accepted operation; `None` for a refusal, and for an instant operation recorded in
    /// one row with its outcome (replay decides it again: deciding is pure).
    pub operation: Option<String>,
    /// How the operation ended ([`Outcome`]); `None` for a refusal or an intent still open.
    pub outcome: Option<String>,
    /// The reply body; `None` while the operation has no outcome.
    pub reply: Option<String>,
}

impl Entry {
    /// Whether `history` lists it: an operation that ended (accepted, failed or interrupted).
    pub fn is_history(&self) -> bool {
        self.outcome.is_some()
    }

    /// As `history` lists it, with the files a real database ran and when, if it did; `None`
    /// for what `history` does not list (a refusal, an intent still open).
    pub fn history_entry(&self) -> Option<HistoryEntry> {
        if !self.is_history() {
            return None;
        }
        let done = match self.outcome.as_deref().map(serde_json::from_str::<Outcome>) {
            Some(Ok(Outcome::Completion(Completion::Done(done)))) => Some(done),
            _ => None,
        };
        entry_of(
            self.seq,
            self.src.clone(),
            self.msg_id,
            self.request.clone(),
            self.reply.clone()?,
            done.as_ref(),
        )
    }
}

/// The history entry of an operation that ended, from its journal record (an outcome or an
/// interruption); `None` for a record that is not one. The same entry the store serves later.
pub fn ended_entry(record: &Record<'_>) -> Option<HistoryEntry> {
    let (seq, src, msg_id, answer, done) = match *record {
        Record::Outcome {
            seq,
            src,
            msg_id,
            completion,
            answer,
        } => {
            let done = match completion {
                Completion::Done(done) => Some(done),
                Completion::Failed(_) => None,
            };
            (seq, src, msg_id, answer, done)
        }
        Record::Interrupted {
            seq,
            src,
            msg_id,
            answer,
            ..
        } => (seq, src, msg_id, answer, None),
        Record::Refused { .. } | Record::Intent { .. } => return None,
    };
    entry_of(
        seq,
        src.to_string(),
        msg_id,
        json(&answer.request),
        answer.body.to_string(),
        done,
    )
}

/// A history entry from its parts: the files a real database ran, when and how long, only when
/// a real executor measured them.
fn entry_of(
    seq: u64,
    src: String,
    msg_id: u64,
    request: String,
    reply: String,
    done: Option<&crate::core::effects::Done>,
) -> Option<HistoryEntry> {
    let ran = done
        .filter(|d| !d.ran.is_empty())
        .and_then(|d| serde_json::value::to_raw_value(&d.ran).ok());
    Some(HistoryEntry {
        seq,
        src,
        msg_id,
        request: RawValue::from_string(request).ok()?,
        reply: RawValue::from_string(reply).ok()?,
        ran,
        at: done.and_then(|d| d.at),
        took_seconds: done
            .map(|d| d.duration)
            .filter(|d| matches!(d, crate::protocol::values::Seconds::Measured(_))),
        why: None,
    })
}

/// A store that could not record or commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// What waits for a commit (the replies it answers): called with the commit's result.
pub type Then = Box<dyn FnOnce(&Result<(), StoreError>) + Send>;

/// Where the runtime records what the machine decides, and reads the audit trail.
pub trait Store {
    /// Records one journal record. A failure is kept and reported by the next commit.
    fn record(&mut self, record: Record<'_>);

    /// Makes everything recorded so far durable (taking a snapshot of `machine` when one is
    /// due). Called before any reply goes out and before any recorded intent's effects start.
    ///
    /// # Errors
    /// A failed record or commit: the replies and effects since the last commit must not go out.
    fn commit(&mut self, machine: &Machine) -> Result<(), StoreError>;

    /// Like [`Store::commit`], without waiting for it: `then` is called with the commit's result
    /// once everything recorded so far is durable (or is known not to be). A store that commits
    /// on a thread of its own calls it there, after the `then`s of earlier commits, and in the
    /// meantime the caller may record what comes next. The default commits at once and calls
    /// `then` here.
    ///
    /// # Errors
    /// A failure known now (an earlier commit failed): `then` has been told it too.
    fn commit_then(&mut self, machine: &Machine, then: Then) -> Result<(), StoreError> {
        let result = self.commit(machine);
        then(&result);
        result
    }

    /// Waits until every commit started by [`Store::commit_then`] has ended and its `then` has
    /// run.
    ///
    /// # Errors
    /// One of them failed.
    fn settle(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The last `limit` operations that ended, oldest first.
    ///
    /// # Errors
    /// The store could not be read.
    fn history(&mut self, limit: u32) -> Result<Vec<HistoryEntry>, String>;

    /// Records the escalation ladder's state (JSON), made durable by the next commit with the
    /// requests it took. A store that keeps nothing across restarts ignores it.
    fn save_ladder(&mut self, _state: &str) {}

    /// The escalation ladder's state as last committed, if this store keeps one.
    fn saved_ladder(&self) -> Option<String> {
        None
    }

    /// The operations that ended with a sequence number above `after`, oldest first, at most
    /// `limit` of them (an event stream's resumption).
    ///
    /// # Errors
    /// The store could not be read.
    fn history_after(&mut self, after: u64, limit: u32) -> Result<Vec<HistoryEntry>, String> {
        let mut entries =
            self.history(u32::try_from(crate::core::machine::HISTORY_WINDOW).unwrap_or(u32::MAX))?;
        entries.retain(|e| e.seq > after);
        entries.truncate(limit as usize);
        Ok(entries)
    }
}

/// One operation that ended, in memory: shared with the retry memory.
#[derive(Debug, Clone)]
struct Ended {
    seq: u64,
    src: Arc<str>,
    msg_id: u64,
    answer: Arc<Answer>,
}

/// The in-memory store: the audit trail's last [`crate::core::machine::HISTORY_WINDOW`] entries.
/// With [`MemoryStore::durable`] it also keeps every committed entry, as a journal would, so a
/// test can crash the node at any point and rebuild it with [`replay`].
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    recent: VecDeque<Ended>,
    journal: Option<Journaled>,
}

#[derive(Debug, Clone, Default)]
struct Journaled {
    committed: Vec<Entry>,
    open: Vec<Entry>,
}

impl MemoryStore {
    /// A store that keeps only the audit window (the default node without `--state-dir`).
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// A store that keeps every committed entry, as a journal would.
    pub fn durable() -> Self {
        MemoryStore {
            recent: VecDeque::new(),
            journal: Some(Journaled::default()),
        }
    }

    /// The committed entries (empty unless [`MemoryStore::durable`]), each with its latest
    /// outcome.
    pub fn entries(&self) -> Vec<Entry> {
        self.journal
            .as_ref()
            .map(|j| j.committed.clone())
            .unwrap_or_default()
    }

    /// A crash: what was recorded since the last commit is lost.
    pub fn crash(&mut self) {
        if let Some(journal) = &mut self.journal {
            journal.open.clear();
        }
        self.recent.clear();
    }

    fn remember(&mut self, seq: u64, src: &Arc<str>, msg_id: u64, answer: &Arc<Answer>) {
        if self.recent.len() >= crate::core::machine::HISTORY_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(Ended {
            seq,
            src: Arc::clone(src),
            msg_id,
            answer: Arc::clone(answer),
        });
    }
}

impl Store for MemoryStore {
    fn record(&mut self, record: Record<'_>) {
        match record {
            Record::Outcome {
                seq,
                src,
                msg_id,
                answer,
                ..
            }
            | Record::Interrupted {
                seq,
                src,
                msg_id,
                answer,
                ..
            } => self.remember(seq, src, msg_id, answer),
            Record::Refused { .. } | Record::Intent { .. } => {}
        }
        if let Some(journal) = &mut self.journal {
            journal.apply(record);
        }
    }

    fn commit(&mut self, _machine: &Machine) -> Result<(), StoreError> {
        if let Some(journal) = &mut self.journal {
            let open = std::mem::take(&mut journal.open);
            for entry in open {
                match journal.committed.iter_mut().find(|e| e.seq == entry.seq) {
                    Some(existing) => *existing = entry,
                    None => journal.committed.push(entry),
                }
            }
        }
        Ok(())
    }

    fn history(&mut self, limit: u32) -> Result<Vec<HistoryEntry>, String> {
        if let Some(journal) = &self.journal {
            // As a journal serves it: from what was recorded (the open entries are visible to
            // the node that wrote them, as in an open transaction).
            let mut entries: Vec<&Entry> = journal.committed.iter().collect();
            for open in &journal.open {
                entries.retain(|e| e.seq != open.seq);
                entries.push(open);
            }
            entries.sort_by_key(|e| e.seq);
            entries.retain(|e| e.is_history());
            let skip = entries.len().saturating_sub(limit as usize);
            return Ok(entries[skip..]
                .iter()
                .filter_map(|e| e.history_entry())
                .collect());
        }
        let mut ended: Vec<&Ended> = self.recent.iter().collect();
        ended.sort_by_key(|e| e.seq);
        let skip = ended.len().saturating_sub(limit as usize);
        ended[skip..]
            .iter()
            .map(|e| {
                let request =
                    serde_json::to_string(&e.answer.request).map_err(|e| e.to_string())?;
                Ok(HistoryEntry {
                    seq: e.seq,
                    src: e.src.to_string(),
                    msg_id: e.msg_id,
                    request: RawValue::from_string(request).map_err(|e| e.to_string())?,
                    reply: RawValue::from_string(e.answer.body.to_string())
                        .map_err(|e| e.to_string())?,
                    ran: None,
                    at: None,
                    took_seconds: None,
                    why: None,
                })
            })
            .collect()
    }
}

impl Journaled {
    /// The entry for `seq`, open or committed, as it stands.
    fn current(&self, seq: u64) -> Option<Entry> {
        self.open
            .iter()
            .rev()
            .chain(self.committed.iter().rev())
            .find(|e| e.seq == seq)
            .cloned()
    }

    fn apply(&mut self, record: Record<'_>) {
        if let Some(entry) = entry_of_record(&record, |seq| self.current(seq)) {
            self.open.retain(|e| e.seq != entry.seq);
            self.open.push(entry);
        }
    }
}

/// The entry a record makes: a refusal or an intent a new one, an outcome or an interruption
/// the `current` entry of its sequence number completed (`None` when there is none).
pub(crate) fn entry_of_record(
    record: &Record<'_>,
    current: impl FnOnce(u64) -> Option<Entry>,
) -> Option<Entry> {
    match *record {
        Record::Refused {
            seq,
            src,
            msg_id,
            answer,
        } => Some(Entry {
            seq,
            src: src.to_owned(),
            msg_id,
            accepted: false,
            request: json(&answer.request),
            operation: None,
            outcome: None,
            reply: Some(answer.body.to_string()),
        }),
        Record::Intent {
            seq,
            src,
            msg_id,
            request,
            operation,
        } => Some(Entry {
            seq,
            src: src.to_owned(),
            msg_id,
            accepted: false,
            request: json(request),
            operation: Some(json(&**operation)),
            outcome: None,
            reply: None,
        }),
        Record::Outcome {
            seq,
            completion,
            answer,
            ..
        } => current(seq).map(|mut e| {
            e.accepted = answer.accepted;
            e.outcome = Some(json(&Outcome::Completion(completion.clone())));
            e.reply = Some(answer.body.to_string());
            e
        }),
        Record::Interrupted {
            seq, found, answer, ..
        } => current(seq).map(|mut e| {
            e.outcome = Some(json(&Outcome::Interrupted(found.clone())));
            e.reply = Some(answer.body.to_string());
            e
        }),
    }
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}
