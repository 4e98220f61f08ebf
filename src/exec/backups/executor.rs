//! Real backups as the node's [`Backups`] executor: restore by name from the backups directory
//! into the estate's live database, measured, with progress; the live database's version after.

use super::{find, list, BackupInfo, Database, Manifest, RestoreError, Restored};
use crate::core::effects::LayerKind;
use crate::core::effects::{Completion, Done, Effect, ExecError, Failure, FailureKind, Found};
use crate::core::state::{Backup, State};
use crate::exec::migrations::executor::Migrations;
use crate::exec::system::{Config, Connected, Connecting, System};
use crate::exec::{Executor, Reader, Report};
use crate::protocol::values::{BackupView, Progress, Seconds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `[backups]` as a table: a directory of real backups of the `[schema]` database.
pub const SYSTEM: System = System {
    section: "backups",
    layer: LayerKind::Backups,
    applies: toml::Value::is_table,
    conflict: None,
    needs: Some((
        LayerKind::Schema,
        "[backups] dir needs a real database ([schema] database = ...) to restore into",
    )),
    read: |section| Ok(Box::new(section.parse::<BackupsConfig>()?)),
};

/// `[backups]`: `dir = DIR` and, optionally, `keep = N` (how many of the backups the node takes
/// are kept).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupsConfig {
    /// The directory.
    pub dir: String,
    /// How many taken backups are kept.
    pub keep: Option<usize>,
}

impl Config for BackupsConfig {
    fn describe(&self) -> String {
        self.dir.clone()
    }

    fn connect(&self, with: &Connecting<'_>) -> Result<Connected, String> {
        let Some((database, migrations)) = &with.database else {
            return Err(
                "[backups] dir needs a real database ([schema] database = ...) to restore into"
                    .to_owned(),
            );
        };
        let backups =
            RealBackups::open(&with.resolve(&self.dir), &database.url(), Some(migrations))?
                .keeping(self.keep);
        let found = Found {
            backups: backups.observe_backups(),
            ..Found::default()
        };
        let reader = Arc::new(DirectoryReader {
            dir: backups.dir.clone(),
        });
        Ok(Connected {
            executor: Box::new(backups),
            found,
            reader: Some(reader),
        })
    }
}

/// Lists a backups directory for `backups`, apart from the executor (so the listing, which
/// hashes files, runs off the owner thread and never waits for a restore).
struct DirectoryReader {
    dir: PathBuf,
}

impl Reader for DirectoryReader {
    fn backups(&self) -> Result<Vec<BackupView>, String> {
        Ok(list(&self.dir).into_iter().map(view).collect())
    }

    fn lists_backups(&self) -> bool {
        true
    }
}

/// A backups directory and the live database its backups restore into.
pub struct RealBackups {
    dir: PathBuf,
    database: Database,
    url: String,
    migrations: Option<PathBuf>,
    pages_per_step: i32,
    last: Option<Restored>,
    keep: Option<usize>,
}

impl RealBackups {
    /// The backups in `dir` for the database at `url` (as `[schema] database`, resolved), and
    /// the migrations directory, if any, whose catalogue [`Backups::observe`] reports with the
    /// version.
    ///
    /// # Errors
    /// One line: the directory is missing or cannot be written, or the URL is not a database's.
    pub fn open(dir: &Path, url: &str, migrations: Option<&Path>) -> Result<Self, String> {
        super::check_dir(dir)?;
        Ok(RealBackups {
            dir: dir.to_owned(),
            database: Database::from_url(url)?,
            url: url.to_owned(),
            migrations: migrations.map(Path::to_owned),
            pages_per_step: super::sqlite::PAGES_PER_STEP,
            last: None,
            keep: None,
        })
    }

    /// The verified backups with a known schema version, oldest first, as the state holds them.
    pub fn observe_backups(&self) -> Option<Vec<Backup>> {
        Some(
            RealBackups::list(self)
                .into_iter()
                .filter(|b| b.verified)
                .filter_map(|b| {
                    Some(Backup {
                        schema_version: b.schema_version?,
                        rows: b.rows.unwrap_or(0),
                        name: b.name,
                    })
                })
                .rev()
                .collect(),
        )
    }

    /// Keeps only the newest `keep` backups the node took (after each one it takes).
    pub fn keeping(mut self, keep: Option<usize>) -> Self {
        self.keep = keep;
        self
    }

    /// SQLite: copies `pages` pages per step between progress reports (negative: all at once).
    pub fn with_pages_per_step(mut self, pages: i32) -> Self {
        self.pages_per_step = pages;
        self
    }

    /// The backups directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every backup in the directory, read now, newest first.
    pub fn list(&self) -> Vec<BackupInfo> {
        list(&self.dir)
    }

    /// The newest verified backup whose schema version is at or below `version`: the one to
    /// name when a rollback to `version` is irreversible.
    pub fn newest_at_or_below(&self, version: u64) -> Option<BackupInfo> {
        self.list()
            .into_iter()
            .find(|b| b.verified && b.schema_version.is_some_and(|v| v <= version))
    }

    /// Takes a pre-migration backup (see [`super::take`]) and keeps the newest `keep` the node
    /// took, if given.
    ///
    /// # Errors
    /// As [`super::take`] and [`super::retain`].
    pub fn take(
        &self,
        why: &str,
        versions: (u64, u64),
        keep: Option<usize>,
    ) -> Result<Manifest, String> {
        let manifest = super::take(&self.dir, &self.url, why, versions)?;
        if let Some(keep) = keep {
            super::retain(&self.dir, keep.max(1))?;
        }
        Ok(manifest)
    }

    /// The last restore this executor completed (PostgreSQL: with the database the old one was
    /// kept as, for `status`).
    pub fn last_restore(&self) -> Option<&Restored> {
        self.last.as_ref()
    }

    /// Restores backup `name`, with the details the [`Completion`] leaves out.
    ///
    /// # Errors
    /// [`RestoreError::Refused`] also for a name with no backup, naming the known ones.
    pub fn restore_named(
        &mut self,
        name: &str,
        report: &mut dyn FnMut(Progress),
    ) -> Result<Restored, RestoreError> {
        let Some(path) = find(&self.dir, &self.database, name) else {
            return Err(RestoreError::Refused(self.unknown(name)));
        };
        let manifest = Manifest::read(&self.dir, name).map_err(RestoreError::Refused)?;
        let restored = match &self.database {
            Database::Sqlite(live) => super::sqlite::restore(
                &path,
                manifest.as_ref(),
                live,
                self.pages_per_step,
                &mut |done, total| {
                    report(Progress {
                        done,
                        total,
                        unit: "pages".to_owned(),
                    })
                },
            ),
            Database::Postgres(url) => {
                super::postgres::restore(&path, manifest.as_ref(), url, &mut |done, total| {
                    report(Progress {
                        done,
                        total,
                        unit: "tables".to_owned(),
                    })
                })
            }
        }?;
        self.last = Some(restored.clone());
        Ok(restored)
    }

    fn unknown(&self, name: &str) -> String {
        let ext = self.database.extension();
        let known: Vec<String> = self
            .list()
            .into_iter()
            .filter(|b| b.file.ends_with(&format!(".{ext}")))
            .map(|b| b.name)
            .collect();
        let shown: String = name.chars().take(64).collect();
        format!(
            "no backup {shown} in {}: expected {shown}.{ext}; the backups there are {}",
            self.dir.display(),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )
    }

    /// What the live database says now: its version and, with a migrations directory, the
    /// catalogue and the database's health as the migration engine reads them.
    fn read(&self) -> Result<Found, String> {
        if let Some(dir) = &self.migrations {
            if let Ok((_, found)) = Migrations::open(&self.url, dir) {
                return Ok(found);
            }
        }
        let version = match &self.database {
            Database::Sqlite(live) => super::sqlite::live_version(live)?,
            Database::Postgres(url) => super::postgres::live_version(url)?,
        };
        Ok(Found {
            schema_version: Some(version),
            ..Found::default()
        })
    }
}

/// A backup as `backups` lists it.
fn view(info: BackupInfo) -> BackupView {
    BackupView {
        name: info.name,
        taken_at: Some(info.taken_at),
        schema_version: info.schema_version,
        rows: info.rows,
        size: Some(info.size),
        verified: info.verified,
        problem: info.problem,
    }
}

/// The backups directory as the backups layer's [`Executor`]: `TakeBackup` (verified, with
/// its manifest, then retention) and `Restore`.
impl Executor for RealBackups {
    fn perform(&mut self, effects: &[Effect], report: Report<'_>) -> Completion {
        let mut done = Done::default();
        for (i, effect) in effects.iter().enumerate() {
            let completion = match effect {
                Effect::TakeBackup { why, from, to } => self.take_before(why, *from, *to),
                Effect::Restore { backup } => self.restore_effect(backup, report),
                other => Completion::Failed(Failure::nothing_changed(ExecError::failed(
                    "performing a backups effect",
                    None,
                    format!("{other:?} is not one"),
                ))),
            };
            match completion {
                Completion::Done(more) => done = done.then(more),
                Completion::Failed(mut failure) => {
                    failure.completed += i;
                    return Completion::Failed(failure);
                }
            }
        }
        Completion::Done(done)
    }

    fn observe(&mut self, _believed: &State) -> Found {
        let mut found = self.read().unwrap_or_else(|e| Found {
            unknown: Some(e),
            ..Found::default()
        });
        found.backups = self.observe_backups();
        found
    }
}

impl RealBackups {
    fn take_before(&mut self, why: &str, from: u64, to: u64) -> Completion {
        let started = std::time::Instant::now();
        match RealBackups::take(self, why, (from, to), self.keep) {
            Ok(_) => Completion::Done(Done {
                backups: self.observe_backups(),
                ..Done::took(Seconds::measured(started.elapsed()))
            }),
            Err(e) => Completion::Failed(Failure::nothing_changed(ExecError::failed(
                "taking a backup before the migration",
                Some(self.dir.display().to_string()),
                e,
            ))),
        }
    }

    /// Restores `backup` (the `Restore` effect): verified before and after, with progress.
    pub fn restore(&mut self, backup: &str, report: Report<'_>) -> Completion {
        self.restore_effect(backup, report)
    }

    fn restore_effect(&mut self, backup: &str, report: Report<'_>) -> Completion {
        let known = find(&self.dir, &self.database, backup).is_some();
        let action = format!("restoring {backup}");
        match self.restore_named(backup, report) {
            Ok(restored) => Completion::Done(Done {
                duration: Seconds::measured(restored.duration),
                rows: Some(restored.rows),
                schema_version: Some(restored.schema_version),
                kept: restored.kept.clone(),
                ..Done::default()
            }),
            Err(RestoreError::Refused(said)) if !known => Completion::Failed(Failure::new(
                FailureKind::Missing,
                ExecError::failed(action, Some(self.dir.display().to_string()), said),
            )),
            Err(e @ (RestoreError::Refused(_) | RestoreError::NothingChanged(_))) => {
                Completion::Failed(Failure::nothing_changed(ExecError::failed(action, None, e)))
            }
            Err(e @ RestoreError::PartWay(_)) => Completion::Failed(
                Failure::new(FailureKind::PartWay, ExecError::failed(action, None, e))
                    .found(self.read().ok()),
            ),
        }
    }
}
