//! The transitions: one `#[transition]` method per message type, each a pure decision over the
//! estate's [`State`]. `#[protocol]` derives [`Request`], [`Reply`] and the dispatcher
//! [`State::decide`] from them; [`State::finish`] is the second pure function, which applies a
//! completed (or failed) operation to the state and builds its reply. What the lanes hold
//! (`status`'s `in_flight`, `interrupted`) is added by [`crate::core::machine`].
//!
//! A transition checks everything that could refuse the request and, if it accepts it, returns
//! the operation as data: its [`Plan`] and its [`Effect`]s. It changes nothing, calls no
//! executor, reads no clock and touches no file, so a refusal changes nothing by construction
//! and `dry_run` is the same decision with nothing performed.

use crate::core::effects::{
    Completion, Decision, Done, Effect, Failure, FailureKind, Lane, Lookup, Operation, Plan,
    ServerState,
};
use crate::core::state::{join, Health, Layer, State};
use crate::protocol;
use crate::protocol::replies::*;
use crate::protocol::values::{DatabaseView, Environment, RestoreRecord, Version};
use crate::protocol::{quote, Refusal};

/// How many changes the `history` message can return.
pub const HISTORY_WINDOW: usize = 1_000;

#[protocol]
impl State {
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
                "node_id {} is not among node_ids ({}); init needs node_ids to include the node itself",
                quote(&node_id),
                quote(&join(&node_ids))
            )));
        }
        Ok(InitOk)
    }

    /// Runs down() for the current version and each below it, down to `version`; the schema ends
    /// at `version - 1`.
    #[transition(lane = Lane::Schema)]
    pub fn rollback(&self, version: Version) -> Result<Decision<RollbackComplete>, Refusal> {
        let state = self;
        let target = version.get();
        let current = state.schema_version;
        check_schema(state, "rollback")?;
        check_catalogued(state, target)?;
        if target > current {
            return Err(Refusal::PreconditionFailed(if current == 0 {
                format!("migration {target} is not applied: no migration is applied, so there is nothing to roll back")
            } else {
                format!("migration {target} is not applied (the schema is at version {current}); rollback needs {}", versions(state, 0, current))
            }));
        }
        let below = state.previous_version(target);
        let steps = state.migrations_between(target, current);
        if let Some(stuck) = steps.iter().rev().find(|m| !m.reversible) {
            let instead = match state.backup_at_or_below(below) {
                Some(b) => format!(
                    "restore backup {} (schema version {}) instead",
                    b.name, b.schema_version
                ),
                None => format!("no backup is at or below version {below}"),
            };
            return Err(Refusal::PreconditionFailed(format!(
                "migration {} ({}) has no down(), so the schema cannot be rolled back to version {below}; nothing was rolled back; {instead}",
                stuck.version,
                stuck.name,
            )));
        }
        let effects = steps
            .iter()
            .rev()
            .map(|m| Effect::RunDown {
                version: m.version,
                file: m.down_file.clone().unwrap_or_else(|| m.name.clone()),
            })
            .collect();
        Ok(Decision::Accept(Operation {
            plan: Plan::Rollback {
                from: current,
                to: below,
            },
            effects,
        }))
    }

    /// Runs up() for each version above the current one, up to `version`.
    #[transition(lane = Lane::Schema)]
    pub fn migrate(&self, version: Version) -> Result<Decision<MigrateComplete>, Refusal> {
        let state = self;
        let target = version.get();
        let current = state.schema_version;
        let last = state.last_version();
        check_schema(state, "migrate")?;
        check_catalogued(state, target)?;
        if target <= current {
            return Err(Refusal::PreconditionFailed(if current == last {
                format!("migration {target} is already applied and the schema is at the last version ({last}); there is nothing to migrate")
            } else {
                format!("migration {target} is already applied (the schema is at version {current}); migrate needs {}", versions(state, current, last))
            }));
        }
        let backup_first = state.layers.backups.is_real().then(|| Effect::TakeBackup {
            why: format!("before migrate from {current} to {target}"),
            from: current,
            to: target,
        });
        let effects = backup_first
            .into_iter()
            .chain(
                state
                    .migrations_between(current.saturating_add(1), target)
                    .iter()
                    .map(|m| Effect::RunUp {
                        version: m.version,
                        file: m.up_file.clone().unwrap_or_else(|| m.name.clone()),
                    }),
            )
            .collect();
        Ok(Decision::Accept(Operation {
            plan: Plan::Migrate {
                from: current,
                to: target,
            },
            effects,
        }))
    }

    /// The kill switch: disables a flag. Disabling a disabled flag succeeds again (and writes
    /// the flag store again: someone may have changed it by hand).
    #[transition(lane = Lane::Flags)]
    pub fn disable_feature(&self, feature: String) -> Result<Decision<FeatureDisabled>, Refusal> {
        layer(
            &self.layers.flags,
            "disable_feature",
            "feature flags",
            "[flags] or [flagd] file = PATH",
        )?;
        set_flag(self, feature, false)
    }

    /// Enables a flag again.
    #[transition(lane = Lane::Flags)]
    pub fn enable_feature(&self, feature: String) -> Result<Decision<FeatureEnabled>, Refusal> {
        layer(
            &self.layers.flags,
            "enable_feature",
            "feature flags",
            "[flags] or [flagd] file = PATH",
        )?;
        set_flag(self, feature, true)
    }

    /// Moves traffic from the live environment to the other, healthy one: the target is made
    /// ready, then the old one drained.
    #[transition(lane = Lane::Traffic)]
    pub fn switch_traffic(
        &self,
        from: Environment,
        to: Environment,
    ) -> Result<Decision<TrafficSwitched>, Refusal> {
        layer(
            &self.layers.traffic,
            "switch_traffic",
            "blue-green traffic",
            "[traffic] or [haproxy] socket = PATH, backend = NAME",
        )?;
        let traffic = &self.traffic;
        let live = traffic.live;
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
        if traffic.health(to) != Health::Healthy {
            return Err(Refusal::PreconditionFailed(format!(
                "{to} is unhealthy; switch_traffic needs a healthy target, so traffic stays on {from}"
            )));
        }
        // A real load balancer's checks may have changed since the node read them: it checks
        // the target again, changing nothing if it is not healthy now.
        let mut effects = Vec::with_capacity(3);
        if self.layers.traffic.is_real() {
            effects.push(Effect::CheckHealthy { server: to });
        }
        effects.push(Effect::SetServerState {
            server: to,
            state: ServerState::Ready,
        });
        effects.push(Effect::SetServerState {
            server: from,
            state: ServerState::Drain,
        });
        Ok(Decision::Accept(Operation {
            plan: Plan::SwitchTraffic { from, to },
            effects,
        }))
    }

    /// The last resort: restores a backup, which sets the schema to the backup's version.
    #[transition(lane = Lane::Schema)]
    pub fn restore(&self, backup: String) -> Result<Decision<RestoreComplete>, Refusal> {
        let state = self;
        layer(
            &state.layers.backups,
            "restore",
            "backups",
            "[[backups]], or [backups] dir = DIR",
        )?;
        let real = state.layers.backups.is_real();
        let (schema_version, rows) = match state.backup(&backup) {
            Some(found) => (found.schema_version, found.rows),
            // A real backups directory is read when the restore runs: a file put there since
            // the node last looked counts, and an unknown name is refused then (20).
            None if real => (state.schema_version, 0),
            None => {
                return Err(Refusal::KeyDoesNotExist(format!(
                    "backup \"{}\" does not exist; known backups: {}",
                    quote(&backup),
                    state.backup_names()
                )))
            }
        };
        Ok(Decision::Accept(Operation {
            plan: Plan::Restore {
                backup: backup.clone(),
                schema_version,
                rows,
            },
            effects: vec![Effect::Restore { backup }],
        }))
    }

    /// Sets the database's recorded version and clears its dirty flag, running nothing: for a
    /// person who checked a database left dirty and knows the version it is really at (what
    /// golang-migrate calls `force`). Allowed only to the senders the estate names for it.
    #[transition(lane = Lane::Schema)]
    pub fn force_version(&self, version: Version) -> Result<Decision<VersionForced>, Refusal> {
        let state = self;
        layer(
            &state.layers.schema,
            "force_version",
            "a schema",
            "[schema] database = URL, migrations = DIR",
        )?;
        if !state.permissions.contains_key("force_version") {
            return Err(Refusal::PreconditionFailed(
                "force_version records a version without running anything, so the estate must name who may send it: add [permissions] force_version = [\"oncall\"]; nothing changed".to_owned(),
            ));
        }
        let target = version.get();
        check_catalogued(state, target)?;
        Ok(Decision::Accept(Operation {
            plan: Plan::ForceVersion {
                from: state.schema_version,
                to: target,
                evidence: state.schema_health.dirty.clone(),
            },
            effects: vec![Effect::ForceVersion { version: target }],
        }))
    }

    /// The backups that can be restored, newest first (for a real backups directory, as it is
    /// now). Changes nothing.
    #[transition]
    pub fn backups(&self) -> Result<Decision<BackupsOk>, Refusal> {
        layer(
            &self.layers.backups,
            "backups",
            "backups",
            "[[backups]], or [backups] dir = DIR",
        )?;
        Ok(Decision::Lookup(Lookup::Backups))
    }

    /// Lets the escalation ladder's rung `rung`, awaiting approval (a rollback or a restore),
    /// run. Answered by the ladder; a node without one refuses it (22).
    #[transition]
    pub fn approve_rung(&self, rung: u64) -> Result<Decision<RungApproved>, Refusal> {
        Ok(Decision::Lookup(Lookup::ApproveRung { rung }))
    }

    /// The audit trail: the last `limit` changes (default 20, at most 1000), oldest first, read
    /// from the store; with `after: SEQ`, the first `limit` entries with a higher sequence
    /// number (to page through a long trail). Changes nothing.
    #[transition]
    pub fn history(
        &self,
        limit: Option<u32>,
        after: Option<u64>,
    ) -> Result<Decision<HistoryOk>, Refusal> {
        let limit = limit.unwrap_or(20);
        if limit == 0 || limit as usize > HISTORY_WINDOW {
            return Err(Refusal::MalformedRequest(format!(
                "history limit {limit} is out of range; ask for 1 to {HISTORY_WINDOW} entries"
            )));
        }
        Ok(Decision::Lookup(Lookup::History { limit, after }))
    }

    /// Where the estate stands, with what is running or queued and what a crash interrupted.
    /// Changes nothing.
    #[transition]
    pub fn status(&self) -> Result<StatusOk, Refusal> {
        Ok(status_of(self))
    }
}

/// The status fields of a state alone (nothing in flight): also `plan_ok`'s `state_after`.
pub fn status_of(state: &State) -> StatusOk {
    let mut status = StatusOk::new(
        state.schema_version,
        state.traffic.live,
        state.flags.clone(),
        state.last_restore.clone(),
    );
    if !state.layers.traffic.is_present() {
        status.live_environment = None;
    }
    if let Some(managed) = state.layers.schema.real() {
        status.database = Some(DatabaseView {
            url: managed.to_owned(),
            dirty: state.schema_health.dirty.is_some(),
            evidence: state.schema_health.dirty.clone(),
            drift: state.schema_health.drift.clone(),
        });
    }
    status
}

impl State {
    /// Applies a completed or failed operation to the state and builds its reply: the second
    /// pure function. A failure keeps what the completed effects did and says where things stand:
    /// [`Refusal::Abort`] (14) when nothing changed, [`Refusal::Crash`] (13) when the system
    /// may be part-way.
    ///
    /// # Errors
    /// The failure's refusal.
    pub fn finish(
        &mut self,
        operation: &Operation,
        completion: &Completion,
    ) -> Result<Reply, Refusal> {
        if let Completion::Done(Done {
            backups: Some(backups),
            ..
        }) = completion
        {
            self.backups.clone_from(backups);
        }
        let failure = match completion {
            Completion::Done(_) => None,
            Completion::Failed(failure) => Some(failure),
        };
        match &operation.plan {
            Plan::Rollback { from, .. } | Plan::Migrate { from, .. } => {
                self.finish_migrations(operation, completion, *from)
            }
            Plan::ForceVersion { from, to, evidence } => match failure {
                None => {
                    self.schema_version = *to;
                    self.schema_health.dirty = None;
                    Ok(Reply::VersionForced(VersionForced {
                        previous_version: *from,
                        version: *to,
                        was_dirty: evidence.clone(),
                    }))
                }
                Some(failure) => Err(failed(
                    &format!("forcing version {to}"),
                    operation,
                    failure,
                    format!("the recorded version stays {}", self.schema_version),
                )),
            },
            Plan::SetFlag { feature, enabled } => {
                self.finish_flag(operation, failure, feature, *enabled)
            }
            Plan::SwitchTraffic { from, to } => self.finish_switch(operation, failure, *from, *to),
            Plan::Restore {
                backup,
                schema_version,
                rows,
            } => match completion {
                Completion::Done(done) => {
                    let restored_rows = done.rows.unwrap_or(*rows);
                    let schema_version = done.schema_version.unwrap_or(*schema_version);
                    self.schema_version = schema_version;
                    self.last_restore = Some(RestoreRecord {
                        backup: backup.clone(),
                        restored_rows,
                        schema_version,
                        kept: done.kept.clone(),
                    });
                    Ok(Reply::RestoreComplete(RestoreComplete {
                        restored_rows,
                        duration_seconds: done.duration,
                    }))
                }
                Completion::Failed(failure) => Err(failed(
                    &format!("restoring {backup}"),
                    operation,
                    failure,
                    format!("the schema is at version {} as before", self.schema_version),
                )),
            },
        }
    }

    /// A rollback or migration from `from`: each completed down() or up() moves the version,
    /// and a failure takes what the database says now.
    fn finish_migrations(
        &mut self,
        operation: &Operation,
        completion: &Completion,
        from: u64,
    ) -> Result<Reply, Refusal> {
        let done = match completion {
            Completion::Done(_) => operation.effects.len(),
            Completion::Failed(failure) => failure.completed.min(operation.effects.len()),
        };
        for effect in &operation.effects[..done] {
            match effect {
                Effect::RunDown { version, .. } => {
                    self.schema_version = self.previous_version(*version)
                }
                Effect::RunUp { version, .. } => self.schema_version = *version,
                _ => {}
            }
        }
        match (completion, &operation.plan) {
            (Completion::Done(Done { duration, .. }), Plan::Rollback { to, .. }) => {
                Ok(Reply::RollbackComplete(RollbackComplete {
                    rolled_back_from: from,
                    rolled_back_to: *to,
                    duration_seconds: *duration,
                }))
            }
            (Completion::Done(Done { duration, .. }), _) => {
                Ok(Reply::MigrateComplete(MigrateComplete {
                    migrated_from: from,
                    migrated_to: match operation.plan {
                        Plan::Migrate { to, .. } => to,
                        _ => self.schema_version,
                    },
                    duration_seconds: *duration,
                }))
            }
            (Completion::Failed(failure), _) => {
                if let Some(now) = &failure.now {
                    now.apply(self);
                }
                Err(schema_failure(self, operation, from, Some(failure)))
            }
        }
    }

    /// A flag change: the flag takes its value, or keeps it.
    fn finish_flag(
        &mut self,
        operation: &Operation,
        failure: Option<&Failure>,
        feature: &str,
        enabled: bool,
    ) -> Result<Reply, Refusal> {
        let Some(failure) = failure else {
            if let Some(flag) = self.flags.get_mut(feature) {
                *flag = enabled;
            }
            return Ok(if enabled {
                Reply::FeatureEnabled(FeatureEnabled {
                    feature: feature.to_owned(),
                })
            } else {
                Reply::FeatureDisabled(FeatureDisabled {
                    feature: feature.to_owned(),
                    rolled_back_instant: true,
                })
            });
        };
        Err(failed(
            &format!("setting flag {feature}"),
            operation,
            failure,
            format!(
                "the flag keeps its value ({})",
                on_off(self.flags.get(feature).copied().unwrap_or(false))
            ),
        ))
    }

    /// A traffic switch: `to` is live, or where traffic stands as the load balancer says.
    fn finish_switch(
        &mut self,
        operation: &Operation,
        failure: Option<&Failure>,
        from: Environment,
        to: Environment,
    ) -> Result<Reply, Refusal> {
        let what = || format!("switching traffic from {from} to {to}");
        match failure {
            None => {
                self.traffic.live = to;
                Ok(Reply::TrafficSwitched(TrafficSwitched {
                    current_environment: to,
                    downtime_seconds: 0,
                }))
            }
            Some(failure) if failure.now.is_some() => {
                if let Some(now) = &failure.now {
                    now.apply(self);
                }
                Err(failed(
                    &what(),
                    operation,
                    failure,
                    format!(
                        "{} is live, as read back from the load balancer",
                        self.traffic.live
                    ),
                ))
            }
            Some(failure) => Err(failed(
                &what(),
                operation,
                failure,
                if !failure.is_part_way(&operation.effects) {
                    format!("traffic stays on {from}")
                } else {
                    format!("{to} was made ready but {from} may still take traffic; check the load balancer")
                },
            )),
        }
    }
}

fn on_off(enabled: bool) -> &'static str {
    if enabled {
        "enabled"
    } else {
        "disabled"
    }
}

fn set_flag<R>(state: &State, feature: String, enabled: bool) -> Result<Decision<R>, Refusal> {
    if !state.flags.contains_key(&feature) {
        return Err(Refusal::KeyDoesNotExist(format!(
            "flag \"{}\" does not exist; known flags: {}",
            quote(&feature),
            state.flag_names()
        )));
    }
    Ok(Decision::Accept(Operation {
        effects: vec![Effect::WriteFlags {
            flag: feature.clone(),
            enabled,
        }],
        plan: Plan::SetFlag { feature, enabled },
    }))
}

fn check_catalogued(state: &State, version: u64) -> Result<(), Refusal> {
    if state.migration(version).is_some() {
        return Ok(());
    }
    Err(Refusal::KeyDoesNotExist(
        match state.migrations.as_slice() {
            [] => format!("migration {version} is not in the catalogue, which is empty"),
            [first, .., last] if state.migrations.len() > 8 => format!(
                "migration {version} is not in the catalogue; known versions: {} from {} to {}",
                state.migrations.len(),
                first.version,
                last.version
            ),
            all if all.len() as u64 == all.last().map_or(0, |m| m.version) => format!(
                "migration {version} is not in the catalogue; known versions: 1 to {}",
                all.len()
            ),
            all => format!(
                "migration {version} is not in the catalogue; known versions: {}",
                join(all.iter().map(|m| m.version))
            ),
        },
    ))
}

/// Refuses a request for a layer the estate does not describe.
fn layer(managed: &Layer, kind: &str, what: &str, keys: &str) -> Result<(), Refusal> {
    match managed {
        Layer::Simulated | Layer::Real(_) => Ok(()),
        Layer::Absent => Err(Refusal::NotSupported(format!(
            "this estate does not describe {what}, so {kind} has nothing to act on; describe them in the estate file ({keys})"
        ))),
    }
}

/// The schema layer must exist and be clean, and its version must be in the catalogue.
fn check_schema(state: &State, kind: &str) -> Result<(), Refusal> {
    layer(
        &state.layers.schema,
        kind,
        "a schema",
        "schema_version and [[migrations]], or [schema] database = URL, migrations = DIR",
    )?;
    if let Some(evidence) = &state.schema_health.dirty {
        return Err(Refusal::PreconditionFailed(format!(
            "the database is dirty ({evidence}); {kind} is refused until a person checks the database and sends force_version with the version it is really at"
        )));
    }
    let current = state.schema_version;
    if current != 0 && state.migration(current).is_none() {
        return Err(Refusal::PreconditionFailed(format!(
            "the database is at version {current}, which the migrations directory does not have; put its files back, or force_version to a version it has"
        )));
    }
    Ok(())
}

/// A failure of a rollback or migration that started at `from`: where the schema stands now.
fn schema_failure(
    state: &State,
    operation: &Operation,
    from: u64,
    failure: Option<&Failure>,
) -> Refusal {
    let failure = failure.expect("a failed completion");
    let (step, at) = match operation.effects.get(failure.completed) {
        Some(Effect::RunDown { version, .. }) => ("down()", *version),
        Some(Effect::RunUp { version, .. }) => ("up()", *version),
        Some(Effect::TakeBackup { .. }) => ("the backup taken before", from),
        _ => ("a step", state.schema_version),
    };
    let now = state.schema_version;
    let standing = if now == from {
        format!("the schema is still at version {now}")
    } else {
        format!("the schema is now at version {now} (it was at {from})")
    };
    failed(
        &format!("{step} of migration {at}"),
        operation,
        failure,
        standing,
    )
}

/// The refusal for a failed effect: 22 when the system refused it on a precondition of its own,
/// 14 when nothing changed, 13 when the system may be part-way.
fn failed(what: &str, operation: &Operation, failure: &Failure, standing: String) -> Refusal {
    let error = failure.error.after(what);
    match failure.kind {
        FailureKind::Missing => {
            Refusal::KeyDoesNotExist(format!("{what} failed{error}; nothing changed"))
        }
        FailureKind::Refused => Refusal::PreconditionFailed(format!(
            "{what} was refused{error}; nothing changed, {standing}"
        )),
        _ if !failure.is_part_way(&operation.effects) => {
            Refusal::Abort(format!("{what} failed{error}; nothing changed, {standing}"))
        }
        _ => Refusal::Crash(format!("{what} failed{error}; {standing}")),
    }
}

/// The catalogued versions above `above` up to `high`: "version 3" or "a version from 1 to 3",
/// for error texts.
fn versions(state: &State, above: u64, high: u64) -> String {
    let range = state.migrations_between(above.saturating_add(1), high);
    match range {
        [only] => format!("version {}", only.version),
        [first, .., last] => format!("a version from {} to {}", first.version, last.version),
        [] => format!("version {high}"),
    }
}
