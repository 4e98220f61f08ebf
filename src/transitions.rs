//! The state machine: [`Machine`] holds the estate's [`State`], the memory of answered requests
//! and an [`Executor`]. Each `#[transition]` method below is one message type; `#[protocol]`
//! derives [`Request`], [`Reply`] and the dispatcher [`Machine::apply`] from them.
//!
//! A transition first checks everything that could refuse the request, touching nothing, then
//! asks the executor to act and records the outcome. So a refused request leaves the state
//! exactly as it was. Transitions read no clock and do no I/O of their own: with the
//! [`Simulated`] executor every run is deterministic and replayable.

use crate::answered::{Answer, Answered};
use crate::executor::{ExecError, Executor, Simulated};
use crate::protocol;
use crate::refusal::Refusal;
use crate::replies::*;
use crate::state::{join, Environment, Health, RestoreRecord, State};
use std::collections::VecDeque;
use std::sync::Arc;

/// How many accepted changes the `history` message can return.
pub const HISTORY_WINDOW: usize = 1_000;

/// The state machine of one estate.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine<E = Simulated> {
    state: State,
    answered: Answered,
    /// How many state-changing requests were answered (accepted or refused): the sequence
    /// number of the last one, the same number its journal entry gets.
    seq: u64,
    /// The last [`HISTORY_WINDOW`] accepted changes, oldest first.
    recent: VecDeque<Recent>,
    executor: E,
}

/// One accepted change in the audit trail: the answer is shared with the retry memory, and
/// copied out only when `history` asks for it.
#[derive(Debug, Clone, PartialEq)]
struct Recent {
    seq: u64,
    src: Arc<str>,
    msg_id: u64,
    answer: Arc<Answer>,
}

impl Recent {
    fn entry(&self) -> HistoryEntry {
        HistoryEntry {
            seq: self.seq,
            src: self.src.to_string(),
            msg_id: self.msg_id,
            request: self.answer.request.clone(),
            reply: self.answer.reply.clone(),
        }
    }
}

/// How [`Machine::handle_traced`] answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answering {
    /// A query, or a request refused before it was remembered: nothing to record.
    Unrecorded,
    /// A state-changing request answered for the first time, with its sequence number.
    Fresh(u64),
    /// A retry, answered from memory.
    Retry,
}

/// What [`Machine::handle_shared`] answered: a reply computed for this request alone, or the
/// remembered answer of a state-changing request (fresh or a retry), as the memory holds it.
#[derive(Debug)]
pub(crate) enum Outcome<'a> {
    /// A query's reply, or a refusal that is not remembered.
    Computed(Result<Reply, Refusal>),
    /// The remembered answer.
    Remembered(&'a Answer),
}

impl Outcome<'_> {
    /// The reply or refusal.
    pub(crate) fn reply(&self) -> &Result<Reply, Refusal> {
        match self {
            Outcome::Computed(reply) => reply,
            Outcome::Remembered(answer) => &answer.reply,
        }
    }

    fn into_reply(self) -> Result<Reply, Refusal> {
        match self {
            Outcome::Computed(reply) => reply,
            Outcome::Remembered(answer) => answer.reply.clone(),
        }
    }
}

impl Machine<Simulated> {
    /// A machine over the built-in example estate with the simulated executor.
    pub fn example() -> Self {
        Machine::new(State::example(), Simulated)
    }
}

impl<E: Executor> Machine<E> {
    /// A machine starting from `state`, acting through `executor`.
    pub fn new(state: State, executor: E) -> Self {
        Machine {
            state,
            answered: Answered::default(),
            seq: 0,
            recent: VecDeque::new(),
            executor,
        }
    }

    /// The estate's current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The memory of answered state-changing requests.
    pub fn answered(&self) -> &Answered {
        &self.answered
    }

    /// The sequence number of the last answered state-changing request (0 before any).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Handles a request from `src` with retry semantics: a state-changing request whose
    /// `(src, msg_id)` was already answered gets the remembered reply again and changes nothing.
    ///
    /// # Errors
    /// As [`Machine::handle_traced`].
    pub fn handle(
        &mut self,
        src: &str,
        msg_id: Option<u64>,
        request: Request,
    ) -> Result<Reply, Refusal> {
        self.handle_traced(src, msg_id, request).0
    }

    /// As [`Machine::handle`], also saying whether the answer is fresh (to be journaled) or a
    /// retry. A fresh answer is remembered and can be read back with [`Machine::answered`].
    ///
    /// The first element is the reply or refusal: the transition's refusal;
    /// [`Refusal::MalformedRequest`] for a state-changing request without a `msg_id` (it could
    /// not be told apart from its retries); [`Refusal::PreconditionFailed`] when a `msg_id`
    /// already answered a different request or the estate's permissions do not allow `src` to
    /// send this type.
    pub fn handle_traced(
        &mut self,
        src: &str,
        msg_id: Option<u64>,
        request: Request,
    ) -> (Result<Reply, Refusal>, Answering) {
        let (outcome, answering) = self.handle_shared(src, msg_id, request);
        (outcome.into_reply(), answering)
    }

    /// As [`Machine::handle_traced`], without copying a remembered answer: a fresh or retried
    /// change comes back as the answer the memory holds.
    pub(crate) fn handle_shared(
        &mut self,
        src: &str,
        msg_id: Option<u64>,
        request: Request,
    ) -> (Outcome<'_>, Answering) {
        if !request.changes_state() {
            let reply = self
                .permit(src, &request)
                .and_then(|()| self.apply(&request));
            return (Outcome::Computed(reply), Answering::Unrecorded);
        }
        let Some(msg_id) = msg_id else {
            let refusal = Refusal::MalformedRequest(format!(
                "{} changes the estate and needs a msg_id, so that a retry cannot apply it twice; nothing changed",
                request.type_name()
            ));
            return (Outcome::Computed(Err(refusal)), Answering::Unrecorded);
        };
        let seen = self
            .answered
            .get(src, msg_id)
            .map(|answer| (answer.request == request, answer.request.type_name()));
        match seen {
            Some((true, _)) => {
                let answer = self.answered.get(src, msg_id).expect("just found");
                return (Outcome::Remembered(answer), Answering::Retry);
            }
            Some((false, earlier)) => {
                let refusal = Refusal::PreconditionFailed(format!(
                    "msg_id {msg_id} from {src} already answered a different request ({earlier}); send this {} with a new msg_id",
                    request.type_name()
                ));
                return (Outcome::Computed(Err(refusal)), Answering::Unrecorded);
            }
            None => {}
        }
        let reply = self
            .permit(src, &request)
            .and_then(|()| self.apply(&request));
        self.seq += 1;
        let answer = Arc::new(Answer { request, reply });
        let shared = answer.reply.is_ok().then(|| Arc::clone(&answer));
        let (src, answer) = self.answered.insert_shared(src, msg_id, answer);
        if let Some(shared) = shared {
            if self.recent.len() >= HISTORY_WINDOW {
                self.recent.pop_front();
            }
            self.recent.push_back(Recent {
                seq: self.seq,
                src: Arc::clone(src),
                msg_id,
                answer: shared,
            });
        }
        (Outcome::Remembered(answer), Answering::Fresh(self.seq))
    }

    /// The estate's guard rail: whether `src` may send this type of request.
    fn permit(&self, src: &str, request: &Request) -> Result<(), Refusal> {
        let kind = request.type_name();
        match self.state.permissions.get(kind) {
            Some(allowed) if !allowed.iter().any(|s| s == src) => {
                Err(Refusal::PreconditionFailed(format!(
                    "sender {src} may not send {kind}: the estate allows it only from {} (rule permissions.{kind}); nothing changed",
                    join(allowed)
                )))
            }
            _ => Ok(()),
        }
    }
}

#[protocol]
impl<E: Executor> Machine<E> {
    /// Maelstrom's handshake: the node learns its id. Changes nothing in the estate.
    #[transition]
    pub fn init(&self, node_id: String, node_ids: Vec<String>) -> Result<InitOk, Refusal> {
        if node_id.is_empty() {
            return Err(Refusal::MalformedRequest(
                "init needs a non-empty node_id".to_owned(),
            ));
        }
        if !node_ids.is_empty() && !node_ids.contains(&node_id) {
            return Err(Refusal::MalformedRequest(format!(
                "node_id {node_id} is not among node_ids ({}); init needs node_ids to include the node itself",
                join(&node_ids)
            )));
        }
        Ok(InitOk)
    }

    /// Runs down() for the current version and each below it, down to `version`; the schema ends
    /// at `version - 1`.
    #[transition]
    pub fn rollback(&mut self, version: Version) -> Result<RollbackComplete, Refusal> {
        let target = version.get();
        let current = self.state.schema_version;
        self.check_catalogued(target)?;
        if target > current {
            return Err(Refusal::PreconditionFailed(if current == 0 {
                format!("migration {target} is not applied: no migration is applied, so there is nothing to roll back")
            } else {
                format!("migration {target} is not applied (the schema is at version {current}); rollback needs {}", versions(1, current))
            }));
        }
        if let Some(stuck) = (target..=current)
            .rev()
            .filter_map(|v| self.state.migration(v))
            .find(|m| !m.reversible)
        {
            let instead = match self.state.backup_at_or_below(target - 1) {
                Some(b) => format!(
                    "restore backup {} (schema version {}) instead",
                    b.name, b.schema_version
                ),
                None => format!("no backup is at or below version {}", target - 1),
            };
            return Err(Refusal::PreconditionFailed(format!(
                "migration {} ({}) has no down(), so the schema cannot be rolled back to version {}; nothing was rolled back; {instead}",
                stuck.version,
                stuck.name,
                target - 1
            )));
        }
        let mut duration: u64 = 0;
        for v in (target..=current).rev() {
            let migration = self.state.migration(v).expect("checked: catalogued");
            match self.executor.run_down(migration) {
                Ok(seconds) => duration = duration.saturating_add(seconds),
                Err(error) => return Err(self.partial("down()", current, v, error)),
            }
            self.state.schema_version = v - 1;
        }
        Ok(RollbackComplete {
            rolled_back_from: current,
            rolled_back_to: target - 1,
            duration_seconds: duration,
        })
    }

    /// Runs up() for each version above the current one, up to `version`.
    #[transition]
    pub fn migrate(&mut self, version: Version) -> Result<MigrateComplete, Refusal> {
        let target = version.get();
        let current = self.state.schema_version;
        let last = self.state.last_version();
        self.check_catalogued(target)?;
        if target <= current {
            return Err(Refusal::PreconditionFailed(if current == last {
                format!("migration {target} is already applied and the schema is at the last version ({last}); there is nothing to migrate")
            } else {
                format!("migration {target} is already applied (the schema is at version {current}); migrate needs {}", versions(current + 1, last))
            }));
        }
        let mut duration: u64 = 0;
        for v in current + 1..=target {
            let migration = self.state.migration(v).expect("checked: catalogued");
            match self.executor.run_up(migration) {
                Ok(seconds) => duration = duration.saturating_add(seconds),
                Err(error) => return Err(self.partial("up()", current, v, error)),
            }
            self.state.schema_version = v;
        }
        Ok(MigrateComplete {
            migrated_from: current,
            migrated_to: target,
            duration_seconds: duration,
        })
    }

    /// The kill switch: disables a flag at once. Disabling a disabled flag succeeds again.
    #[transition]
    pub fn disable_feature(&mut self, feature: String) -> Result<FeatureDisabled, Refusal> {
        self.set_flag(&feature, false)?;
        Ok(FeatureDisabled {
            feature,
            rolled_back_instant: true,
        })
    }

    /// Enables a flag again.
    #[transition]
    pub fn enable_feature(&mut self, feature: String) -> Result<FeatureEnabled, Refusal> {
        self.set_flag(&feature, true)?;
        Ok(FeatureEnabled { feature })
    }

    /// Moves traffic from the live environment to the other, healthy one.
    #[transition]
    pub fn switch_traffic(
        &mut self,
        from: Environment,
        to: Environment,
    ) -> Result<TrafficSwitched, Refusal> {
        let live = self.state.traffic.live;
        if from == to {
            return Err(Refusal::MalformedRequest(format!(
                "from and to are both {from}; switch_traffic moves traffic from the live environment to the other one ({live} to {})",
                live.other()
            )));
        }
        if from != live {
            return Err(Refusal::PreconditionFailed(format!(
                "{from} is not live ({live} is); switch_traffic needs from = the live environment"
            )));
        }
        if self.state.traffic.health(to) != Health::Healthy {
            return Err(Refusal::PreconditionFailed(format!(
                "{to} is unhealthy; switch_traffic needs a healthy target, so traffic stays on {from}"
            )));
        }
        let downtime = self
            .executor
            .switch_traffic(from, to)
            .map_err(|e| nothing_changed("switching traffic", e))?;
        self.state.traffic.live = to;
        Ok(TrafficSwitched {
            current_environment: to,
            downtime_seconds: downtime,
        })
    }

    /// The last resort: restores a backup, which sets the schema to the backup's version.
    #[transition]
    pub fn restore(&mut self, backup: String) -> Result<RestoreComplete, Refusal> {
        let Some(found) = self.state.backup(&backup) else {
            return Err(Refusal::KeyDoesNotExist(format!(
                "backup \"{backup}\" does not exist; known backups: {}",
                self.state.backup_names()
            )));
        };
        let restored = self
            .executor
            .restore(found)
            .map_err(|e| nothing_changed("restoring", e))?;
        let schema_version = found.schema_version;
        self.state.schema_version = schema_version;
        self.state.last_restore = Some(RestoreRecord {
            backup,
            restored_rows: restored.rows,
            schema_version,
        });
        Ok(RestoreComplete {
            restored_rows: restored.rows,
            duration_seconds: restored.seconds,
        })
    }

    /// The audit trail: the last `limit` accepted changes (default 20, at most 1000), oldest
    /// first. Changes nothing.
    #[transition]
    pub fn history(&self, limit: Option<u32>) -> Result<HistoryOk, Refusal> {
        let limit = limit.unwrap_or(20);
        if limit == 0 || limit as usize > HISTORY_WINDOW {
            return Err(Refusal::MalformedRequest(format!(
                "history limit {limit} is out of range; ask for 1 to {HISTORY_WINDOW} entries"
            )));
        }
        let skip = self.recent.len().saturating_sub(limit as usize);
        Ok(HistoryOk {
            entries: self.recent.iter().skip(skip).map(Recent::entry).collect(),
        })
    }

    /// Where the estate stands. Changes nothing.
    #[transition]
    pub fn status(&self) -> Result<StatusOk, Refusal> {
        Ok(StatusOk {
            schema_version: self.state.schema_version,
            live_environment: self.state.traffic.live,
            flags: self.state.flags.clone(),
            restore: self.state.last_restore.clone(),
        })
    }
}

impl<E: Executor> Machine<E> {
    fn check_catalogued(&self, version: u32) -> Result<(), Refusal> {
        let last = self.state.last_version();
        if version <= last {
            return Ok(());
        }
        Err(Refusal::KeyDoesNotExist(if last == 0 {
            format!("migration {version} is not in the catalogue, which is empty")
        } else {
            format!("migration {version} is not in the catalogue; known versions: 1 to {last}")
        }))
    }

    fn set_flag(&mut self, feature: &str, enabled: bool) -> Result<(), Refusal> {
        let Some(flag) = self.state.flags.get_mut(feature) else {
            return Err(Refusal::KeyDoesNotExist(format!(
                "flag \"{feature}\" does not exist; known flags: {}",
                self.state.flag_names()
            )));
        };
        self.executor
            .set_flag(feature, enabled)
            .map_err(|e| nothing_changed("setting the flag", e))?;
        *flag = enabled;
        Ok(())
    }

    /// An executor failed at migration `at` of a run that started at version `from`: the state
    /// keeps the migrations that did run, and the refusal says where the schema stands.
    fn partial(&self, step: &str, from: u32, at: u32, error: ExecError) -> Refusal {
        let now = self.state.schema_version;
        if now == from {
            nothing_changed(&format!("{step} of migration {at}"), error)
        } else {
            Refusal::Crash(format!(
                "{step} of migration {at} failed: {error}; the schema is now at version {now} (it was at {from})"
            ))
        }
    }
}

/// "version 3" or "a version from 1 to 3", for error texts.
fn versions(low: u32, high: u32) -> String {
    if low == high {
        format!("version {low}")
    } else {
        format!("a version from {low} to {high}")
    }
}

fn nothing_changed(what: &str, error: ExecError) -> Refusal {
    Refusal::TemporarilyUnavailable(format!("{what} failed: {error}; nothing changed"))
}
