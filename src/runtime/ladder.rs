//! The escalation ladder as a session drives it: the pure [`Ladder`] with what the session
//! needs around it — the `why` of every rung it took (for history), the replies to its
//! requests, the approvals it answered, and its saved form (a store keeps it beside the
//! journal, committed with the requests it took).

use crate::core::ladder::{Input, Ladder, LadderConfig, Millis, RungOutcome};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

/// The ladder, the `why` of each request it took, and the replies waiting to reach it.
#[derive(Debug)]
pub struct Watch {
    saved: Saved,
    /// Replies to the ladder's requests seen while the machine handled an input: (msg_id, the
    /// error code, if it was one).
    pub(crate) done: Vec<(u64, Option<u32>)>,
    /// Changed since it was last saved.
    pub(crate) dirty: bool,
}

/// What a store keeps of the ladder.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    ladder: Ladder,
    /// The `why` of each request the ladder took, by msg_id.
    whys: BTreeMap<u64, serde_json::Value>,
    /// The approvals it answered `rung_approved`, by sender and msg_id (the last
    /// [`APPROVALS_KEPT`]): a retry gets the same answer.
    #[serde(default)]
    approved: VecDeque<(String, u64, u64)>,
    /// The ladder's last [`NOTES_KEPT`] decisions (run started, paused, resumed, skipped, not
    /// cleared, cleared, exhausted), with the samples that caused them, oldest first.
    #[serde(default)]
    notes: VecDeque<serde_json::Value>,
}

/// How many of its decisions a ladder keeps in its saved state.
pub const NOTES_KEPT: usize = 100;

/// How many answered approvals a ladder remembers for retries.
pub const APPROVALS_KEPT: usize = 100;

impl Watch {
    /// A ladder watching afresh, or the one `saved` holds when it was saved for this same
    /// configuration (a ladder whose estate changed starts afresh, and says so on stderr).
    ///
    /// # Errors
    /// The configuration is one the ladder cannot use.
    pub fn new(config: &LadderConfig, saved: Option<&str>) -> Result<Watch, String> {
        let fresh = || -> Result<Saved, String> {
            Ok(Saved {
                ladder: Ladder::new(config).map_err(|e| e.to_string())?,
                whys: BTreeMap::new(),
                approved: VecDeque::new(),
                notes: VecDeque::new(),
            })
        };
        let saved = match saved.map(serde_json::from_str::<Saved>) {
            Some(Ok(saved)) if saved.ladder.config() == config => saved,
            Some(Ok(_)) => {
                eprintln!(
                    "rollback-node: the estate's [ladder] changed since the ladder was saved; it starts afresh"
                );
                fresh()?
            }
            Some(Err(e)) => {
                eprintln!("rollback-node: the saved ladder cannot be read ({e}); it starts afresh");
                fresh()?
            }
            None => fresh()?,
        };
        Ok(Watch {
            saved,
            done: Vec::new(),
            dirty: false,
        })
    }

    /// The ladder.
    pub fn ladder(&self) -> &Ladder {
        &self.saved.ladder
    }

    /// `status_ok.ladder`.
    pub fn status_json(&self) -> serde_json::Value {
        self.saved.ladder.status().to_json()
    }

    /// The ladder, to step it.
    pub(crate) fn ladder_mut(&mut self) -> &mut Ladder {
        self.dirty = true;
        &mut self.saved.ladder
    }

    /// Remembers why the ladder took the request `msg_id`.
    pub(crate) fn remember(&mut self, msg_id: u64, why: serde_json::Value) {
        self.saved.whys.insert(msg_id, why);
        self.dirty = true;
    }

    /// The rung an earlier `approve_rung` from `src` with this `msg_id` was answered
    /// `rung_approved` for, if it was.
    pub(crate) fn approved(&self, src: &str, msg_id: u64) -> Option<u64> {
        self.saved
            .approved
            .iter()
            .find(|(s, m, _)| s == src && *m == msg_id)
            .map(|&(_, _, rung)| rung)
    }

    /// Remembers that `approve_rung` from `src` with `msg_id` was answered for `rung`.
    pub(crate) fn remember_approval(&mut self, src: &str, msg_id: u64, rung: u64) {
        keep_last(
            &mut self.saved.approved,
            (src.to_owned(), msg_id, rung),
            APPROVALS_KEPT,
        );
        self.dirty = true;
    }

    /// Keeps a decision of the ladder's (committed with its state).
    pub(crate) fn remember_note(&mut self, note: serde_json::Value) {
        keep_last(&mut self.saved.notes, note, NOTES_KEPT);
        self.dirty = true;
    }

    /// The ladder's last decisions, oldest first, as its state keeps them.
    pub fn notes(&self) -> impl Iterator<Item = &serde_json::Value> {
        self.saved.notes.iter()
    }

    /// Why the ladder took the request `msg_id`, as history shows it.
    pub fn why(&self, msg_id: u64) -> Option<Box<RawValue>> {
        self.saved
            .whys
            .get(&msg_id)
            .and_then(|why| serde_json::value::to_raw_value(why).ok())
    }

    /// The ladder and the whys as a store keeps them.
    pub(crate) fn saved_json(&self) -> String {
        serde_json::to_string(&self.saved).unwrap_or_default()
    }

    /// The inputs the replies seen since the last call make: one `RungDone` each.
    pub(crate) fn take_done(&mut self, at: Millis) -> Vec<Input> {
        self.done
            .drain(..)
            .map(|(msg_id, code)| Input::RungDone {
                at,
                msg_id,
                outcome: RungOutcome::of_code(code),
            })
            .collect()
    }
}

/// Appends `item`, forgetting the oldest beyond `kept`.
fn keep_last<T>(queue: &mut VecDeque<T>, item: T, kept: usize) {
    if queue.len() >= kept {
        queue.pop_front();
    }
    queue.push_back(item);
}

/// Now, as the ladder's inputs carry time: milliseconds since the Unix epoch.
pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The error code of a reply body, if it is an error.
pub(crate) fn error_code(body: &str) -> Option<u32> {
    #[derive(Deserialize)]
    struct Reply<'a> {
        #[serde(borrow, rename = "type")]
        kind: &'a str,
        code: Option<u32>,
    }
    match serde_json::from_str::<Reply<'_>>(body) {
        Ok(reply) if reply.kind == "error" => Some(reply.code.unwrap_or(13)),
        Ok(_) => None,
        Err(_) => Some(13),
    }
}
