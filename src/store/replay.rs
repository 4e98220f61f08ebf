//! Rebuilding a machine from recorded entries: a refusal is remembered again, a completed
//! operation's recorded completion is applied again (no executor is called, so a measured
//! duration replays as measured), an interruption is applied again as it was reconciled, and an
//! intent without an outcome is handed back as [`Open`]: an operation a crash interrupted, for
//! the runtime to reconcile with its executor. Each entry must replay to the reply it recorded.

use crate::core::effects::{Decision, Lane, Operation};
use crate::core::machine::Machine;
use crate::core::retries::Answer;
use crate::core::transitions::Request;
use crate::store::{Entry, Outcome};

/// An intent with no outcome: an operation a crash interrupted.
#[derive(Debug, Clone, PartialEq)]
pub struct Open {
    /// Its sequence number.
    pub seq: u64,
    /// Its sender.
    pub src: String,
    /// Its msg_id.
    pub msg_id: u64,
    /// The request.
    pub request: Request,
    /// The decided operation.
    pub operation: Operation,
    /// Its lane.
    pub lane: Lane,
}

/// An entry that does not replay, with why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("journal entry {seq}: {problem}")]
pub struct ReplayError {
    /// The entry.
    pub seq: u64,
    /// What is wrong with it.
    pub problem: String,
}

/// Applies one entry to `machine`. An intent without an outcome is pushed to `open`; a later
/// entry for the same sequence number (its outcome) takes it out again.
///
/// # Errors
/// The entry does not decode, or replays to another reply than it recorded.
pub fn apply(
    machine: &mut Machine,
    entry: &Entry,
    open: &mut Vec<Open>,
) -> Result<(), ReplayError> {
    let error = |problem: String| ReplayError {
        seq: entry.seq,
        problem,
    };
    let request: Request = serde_json::from_str(&entry.request)
        .map_err(|e| error(format!("its request does not decode ({e})")))?;
    open.retain(|o| o.seq != entry.seq);
    let operation = match &entry.operation {
        Some(text) => Some(
            serde_json::from_str::<Operation>(text)
                .map_err(|e| error(format!("its operation does not decode ({e})")))?,
        ),
        None => None,
    };
    let outcome = match &entry.outcome {
        Some(text) => Some(
            serde_json::from_str::<Outcome>(text)
                .map_err(|e| error(format!("its outcome does not decode ({e})")))?,
        ),
        None => None,
    };
    let answer = match (operation, outcome, &entry.reply) {
        (None, None, Some(reply)) => {
            machine.replay_refused(
                entry.seq,
                &entry.src,
                entry.msg_id,
                Answer::new(request, reply.clone(), entry.accepted),
            );
            return Ok(());
        }
        (Some(operation), None, None) => {
            let lane = request
                .lane()
                .ok_or_else(|| error(format!("{} has no lane", request.type_name())))?;
            machine.replay_intent(entry.seq);
            open.push(Open {
                seq: entry.seq,
                src: entry.src.clone(),
                msg_id: entry.msg_id,
                request,
                operation,
                lane,
            });
            return Ok(());
        }
        (operation, Some(Outcome::Completion(completion)), Some(_)) => {
            // An instant operation's row holds no operation: deciding is pure, so it is decided
            // again, against the state its lane had then.
            let operation = match operation {
                Some(operation) => operation,
                None => match machine.check(&entry.src, &request) {
                    Ok(Decision::Accept(operation)) => operation,
                    other => {
                        return Err(error(format!(
                            "it recorded an operation's outcome, but the request now decides to {other:?}"
                        )))
                    }
                },
            };
            machine.replay_outcome(
                entry.seq,
                &entry.src,
                entry.msg_id,
                request,
                &operation,
                &completion,
            )
        }
        (Some(_), Some(Outcome::Interrupted(found)), Some(_)) => {
            machine.interrupt(entry.seq, &entry.src, entry.msg_id, request, found)
        }
        _ => return Err(error("its fields do not fit together".to_owned())),
    };
    let recorded = entry.reply.as_deref().unwrap_or_default();
    if answer.body != recorded || answer.accepted != entry.accepted {
        return Err(error(format!(
            "it recorded the reply {recorded} but replays to {}",
            answer.body
        )));
    }
    Ok(())
}

/// Rebuilds a machine from `start` (a fresh estate, or a snapshot) and the entries after it, in
/// order. Returns the operations still open.
///
/// # Errors
/// The first entry that does not replay.
pub fn rebuild(
    machine: &mut Machine,
    entries: impl IntoIterator<Item = Entry>,
) -> Result<Vec<Open>, ReplayError> {
    let mut open = Vec::new();
    for entry in entries {
        apply(machine, &entry, &mut open)?;
    }
    Ok(open)
}
