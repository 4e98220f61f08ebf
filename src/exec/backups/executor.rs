//! Real backups as the node's [`Backups`] executor: restore by name from the backups directory
//! into the estate's live database, measured, with progress; the live database's version after.

use super::{find, list, BackupInfo, Database, Manifest, RestoreError, Restored};
use crate::core::effects::{Completion, Done, ExecError, Failure, Found};
use crate::core::state::{Backup, State};
use crate::exec::migrations::executor::Migrations;
use crate::exec::{Backups, Report};
use crate::protocol::values::{BackupView, Progress, Seconds};
use std::path::{Path, PathBuf};

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

    /// A lister of this directory for the owner thread (the `backups` message), while this
    /// executor works in the schema lane's worker.
    pub fn lister(&self) -> crate::exec::BackupsLister {
        let dir = self.dir.clone();
        Box::new(move |_state| list(&dir).into_iter().map(view).collect())
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

impl Backups for RealBackups {
    fn take(&mut self, why: &str, from: u64, to: u64) -> Result<(), ExecError> {
        RealBackups::take(self, why, (from, to), self.keep)
            .map(|_| ())
            .map_err(|e| {
                ExecError::failed(
                    "taking a backup before the migration",
                    Some(self.dir.display().to_string()),
                    e,
                )
            })
    }

    fn restore(&mut self, backup: &str, report: Report<'_>) -> Completion {
        let known = find(&self.dir, &self.database, backup).is_some();
        match self.restore_named(backup, report) {
            Ok(restored) => Completion::Done(Done {
                duration: Seconds::measured(restored.duration),
                rows: Some(restored.rows),
                schema_version: Some(restored.schema_version),
                kept: restored.kept.clone(),
                ..Done::default()
            }),
            Err(RestoreError::Refused(said)) if !known => Completion::Failed(Failure {
                missing: true,
                ..Failure::nothing_changed(ExecError::failed(
                    "restoring a backup",
                    Some(self.dir.display().to_string()),
                    said,
                ))
            }),
            Err(e @ (RestoreError::Refused(_) | RestoreError::NothingChanged(_))) => {
                Completion::Failed(Failure::nothing_changed(ExecError::failed(
                    format!("restoring {backup}"),
                    None,
                    e,
                )))
            }
            Err(e @ RestoreError::PartWay(_)) => Completion::Failed(Failure {
                completed: 0,
                part_way: true,
                refused: false,
                missing: false,
                error: ExecError::failed(format!("restoring {backup}"), None, e),
                now: self.read().ok().map(Box::new),
            }),
        }
    }

    fn verified(&mut self) -> Option<Vec<Backup>> {
        self.observe_backups()
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
