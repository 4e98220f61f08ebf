//! Durable, atomic replacement of a file: the new contents go to a temporary file in the target's
//! directory, the temporary file is fsynced, renamed over the target, and the directory is
//! fsynced, so that a crash leaves either the old file or the new one, never half of one, and a
//! replacement that returned `Ok` survives a power cut. Every step's error is returned; on any
//! failure the temporary file is removed and the target is left as it was.
//!
//! The module depends on nothing else in the crate, so the store and the executors may both use
//! it.
//!
//! - [`write`] replaces a file with bytes held in memory.
//! - [`replace_with`] replaces a file with one another writer makes at the temporary path (an
//!   SQLite backup, `pg_dump -f`).
//! - [`Temporary`] is the guard both are built on, for a writer that needs a step of its own
//!   between writing and renaming (such as checking that the target did not change meanwhile).
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let target = dir.path().join("state.json");
//! rollback_node::durable::write(rollback_node::durable::Temporary::unique(&target), b"{}").unwrap();
//! assert_eq!(std::fs::read(&target).unwrap(), b"{}");
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The step of a replacement that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Creating the temporary file.
    Create,
    /// Writing the new contents into the temporary file.
    Write,
    /// Fsyncing the temporary file.
    Sync,
    /// Renaming the temporary file over the target.
    Rename,
    /// Fsyncing the directory, so the rename is durable.
    SyncDirectory,
}

impl Step {
    fn doing(self) -> &'static str {
        match self {
            Step::Create => "create the temporary file",
            Step::Write => "write the temporary file",
            Step::Sync => "fsync the temporary file",
            Step::Rename => "rename the new version over",
            Step::SyncDirectory => "fsync the directory",
        }
    }
}

/// A replacement that failed: the step, the path it was done on (the temporary file for
/// [`Step::Create`], [`Step::Write`] and [`Step::Sync`], the target for [`Step::Rename`], the
/// directory for [`Step::SyncDirectory`]) and what the operating system said.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot {}: {source}", .path.display(), .step.doing())]
pub struct Error {
    /// The step that failed.
    pub step: Step,
    /// The path it was done on.
    pub path: PathBuf,
    /// What the operating system said.
    #[source]
    pub source: io::Error,
}

/// The directory a file is in (`.` for a bare file name).
pub fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Fsyncs a directory, so that a rename or removal in it is durable.
///
/// # Errors
/// The directory cannot be opened or fsynced ([`Step::SyncDirectory`]).
pub fn sync_directory(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error {
            step: Step::SyncDirectory,
            path: dir.to_path_buf(),
            source,
        })
}

/// A temporary file beside a target, removed when dropped unless it was installed over the
/// target. Creating the guard touches nothing on disk.
#[derive(Debug)]
pub struct Temporary {
    path: PathBuf,
    target: PathBuf,
    dir: PathBuf,
    /// Whether [`Temporary::create`] insists that the file is new.
    exclusive: bool,
    /// Set once renamed over the target: nothing is left to remove.
    installed: bool,
}

impl Temporary {
    /// A temporary file for `target` named `.NAME.PID.N.tmp` in its directory, unique within
    /// this process and apart from other processes: concurrent writers do not meet.
    pub fn unique(target: &Path) -> Temporary {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = directory_of(target);
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = dir.join(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        Temporary {
            path,
            target: target.to_path_buf(),
            dir,
            exclusive: true,
            installed: false,
        }
    }

    /// A temporary file for `target` with the given name in its directory (for a writer that
    /// looks for its own leftovers by name); [`Temporary::create`] replaces a leftover of that
    /// name.
    pub fn named(target: &Path, name: &str) -> Temporary {
        let dir = directory_of(target);
        Temporary {
            path: dir.join(name),
            target: target.to_path_buf(),
            dir,
            exclusive: false,
            installed: false,
        }
    }

    /// The temporary file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file it will replace.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The directory both are in.
    pub fn directory(&self) -> &Path {
        &self.dir
    }

    fn error(&self, step: Step, path: &Path, source: io::Error) -> Error {
        Error {
            step,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Creates the temporary file, open for writing.
    ///
    /// # Errors
    /// [`Step::Create`]: the directory cannot be written (or, for a [`Temporary::unique`] one,
    /// the name is taken).
    pub fn create(&self) -> Result<File, Error> {
        let mut options = OpenOptions::new();
        options.write(true);
        if self.exclusive {
            options.create_new(true);
        } else {
            options.create(true).truncate(true);
        }
        options
            .open(&self.path)
            .map_err(|e| self.error(Step::Create, &self.path, e))
    }

    /// Fsyncs the temporary file, whoever wrote it.
    ///
    /// # Errors
    /// [`Step::Sync`]: it cannot be opened or fsynced.
    pub fn sync(&self) -> Result<(), Error> {
        File::open(&self.path)
            .and_then(|f| f.sync_all())
            .map_err(|e| self.error(Step::Sync, &self.path, e))
    }

    /// Fsyncs the temporary file through `file`, a handle [`Temporary::create`] returned.
    ///
    /// # Errors
    /// [`Step::Sync`]: the fsync failed.
    pub fn sync_file(&self, file: &File) -> Result<(), Error> {
        file.sync_all()
            .map_err(|e| self.error(Step::Sync, &self.path, e))
    }

    /// Renames the temporary file over the target and fsyncs the directory. Call it once the
    /// temporary file is complete and fsynced ([`Temporary::sync`]).
    ///
    /// # Errors
    /// [`Step::Rename`] (the temporary file is then removed, the target is as it was) or
    /// [`Step::SyncDirectory`] (the new version is in place but its durability is not known).
    pub fn install(mut self) -> Result<(), Error> {
        fs::rename(&self.path, &self.target)
            .map_err(|e| self.error(Step::Rename, &self.target, e))?;
        self.installed = true;
        sync_directory(&self.dir)
    }

    /// Removes the temporary file now (a file that is not there is fine).
    ///
    /// # Errors
    /// It exists and cannot be removed.
    pub fn discard(mut self) -> io::Result<()> {
        self.installed = true;
        remove(&self.path)
    }
}

impl Drop for Temporary {
    /// Removes a temporary file that was not installed. This runs on the way out of a failure,
    /// whose error is the one returned; a removal that fails as well leaves a dot-file that
    /// [`Temporary::named`] writers replace and readers of the directory skip.
    fn drop(&mut self) {
        if !self.installed {
            let _ = remove(&self.path);
        }
    }
}

fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Replaces `temporary`'s target with `bytes`: create, write, fsync, rename, fsync the directory.
///
/// # Errors
/// The step that failed; the target is then as it was (unless the directory fsync failed, after
/// the rename) and the temporary file is removed.
pub fn write(temporary: Temporary, bytes: &[u8]) -> Result<(), Error> {
    let mut file = temporary.create()?;
    file.write_all(bytes)
        .map_err(|e| temporary.error(Step::Write, &temporary.path, e))?;
    temporary.sync_file(&file)?;
    drop(file);
    temporary.install()
}

/// Replaces `temporary`'s target with the file `fill` makes at the temporary path (it creates
/// and writes it, and returns what it learnt), then fsyncs, renames and fsyncs the directory;
/// `said` turns a failure of those steps into the caller's error.
///
/// # Errors
/// What `fill` returned, or the step that failed afterwards; the temporary file is removed and
/// the target is as it was (unless the directory fsync failed, after the rename).
pub fn replace_with<T, E>(
    temporary: Temporary,
    fill: impl FnOnce(&Path) -> Result<T, E>,
    said: impl FnOnce(Error) -> E,
) -> Result<T, E> {
    let made = fill(&temporary.path)?;
    temporary
        .sync()
        .and_then(|()| temporary.install())
        .map_err(said)?;
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn writes_a_new_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a.json");
        write(Temporary::unique(&target), b"one").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"one");
        assert_eq!(entries(dir.path()), ["a.json"]);
    }

    #[test]
    fn replaces_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a.json");
        fs::write(&target, b"old contents, longer").unwrap();
        write(Temporary::named(&target, "a.json.tmp"), b"new").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(entries(dir.path()), ["a.json"]);
    }

    #[test]
    fn a_named_temporary_replaces_a_leftover() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a.json");
        fs::write(dir.path().join("a.json.tmp"), b"half of a crashed write").unwrap();
        write(Temporary::named(&target, "a.json.tmp"), b"new").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(entries(dir.path()), ["a.json"]);
    }

    #[test]
    fn unique_temporaries_differ() {
        let target = Path::new("x/flags.json");
        let (a, b) = (Temporary::unique(target), Temporary::unique(target));
        assert_ne!(a.path(), b.path());
        assert_eq!(a.directory(), Path::new("x"));
        assert!(a
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".flags.json."));
        assert_eq!(
            Temporary::unique(Path::new("f")).directory(),
            Path::new(".")
        );
    }

    #[test]
    fn a_parent_that_is_a_file_fails_at_create_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        fs::write(&file, b"keep").unwrap();
        let error = write(Temporary::unique(&file.join("a.json")), b"new").unwrap_err();
        assert_eq!(error.step, Step::Create);
        assert!(error
            .to_string()
            .contains("cannot create the temporary file"));
        assert_eq!(fs::read(&file).unwrap(), b"keep");
        assert_eq!(entries(dir.path()), ["plain"]);
    }

    #[test]
    fn a_failed_rename_keeps_the_old_file_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty directory as the target: the rename over it fails, as any user.
        let target = dir.path().join("taken");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), b"keep").unwrap();
        let error = write(Temporary::unique(&target), b"new").unwrap_err();
        assert_eq!(error.step, Step::Rename);
        assert_eq!(error.path, target);
        assert_eq!(fs::read(target.join("inside")).unwrap(), b"keep");
        assert_eq!(entries(dir.path()), ["taken"]);
    }

    #[test]
    fn a_failing_fill_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("b.db");
        fs::write(&target, b"old").unwrap();
        let result: Result<(), String> = replace_with(
            Temporary::named(&target, ".b.db.tmp"),
            |tmp| {
                fs::write(tmp, b"half").unwrap();
                Err("the writer gave up".to_owned())
            },
            |e| e.to_string(),
        );
        assert_eq!(result, Err("the writer gave up".to_owned()));
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert_eq!(entries(dir.path()), ["b.db"]);
    }

    #[test]
    fn replace_with_installs_what_fill_made() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("b.db");
        fs::write(&target, b"old").unwrap();
        let made = replace_with(
            Temporary::named(&target, ".b.db.tmp"),
            |tmp| -> Result<u32, Error> {
                fs::write(tmp, b"made elsewhere").unwrap();
                Ok(14)
            },
            |e| e,
        )
        .unwrap();
        assert_eq!(made, 14);
        assert_eq!(fs::read(&target).unwrap(), b"made elsewhere");
        assert_eq!(entries(dir.path()), ["b.db"]);
    }

    #[test]
    fn a_fill_that_makes_nothing_fails_at_sync() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("b.db");
        fs::write(&target, b"old").unwrap();
        let error = replace_with(Temporary::unique(&target), |_| Ok(()), |e| e).unwrap_err();
        assert_eq!(error.step, Step::Sync);
        assert_eq!(fs::read(&target).unwrap(), b"old");
    }

    #[test]
    fn an_unwritable_directory_fails_and_changes_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a.json");
        fs::write(&target, b"old").unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o555)).unwrap();
        // Root writes anyway: then this only shows that the write succeeds.
        let probe = dir.path().join("probe");
        let root = fs::write(&probe, b"").is_ok();
        let _ = fs::remove_file(&probe);
        let result = write(Temporary::unique(&target), b"new");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        if root {
            result.unwrap();
            assert_eq!(fs::read(&target).unwrap(), b"new");
        } else {
            assert_eq!(result.unwrap_err().step, Step::Create);
            assert_eq!(fs::read(&target).unwrap(), b"old");
        }
        assert_eq!(entries(dir.path()), ["a.json"]);
    }

    #[test]
    fn dropping_an_uninstalled_temporary_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a.json");
        let temporary = Temporary::unique(&target);
        let path = temporary.path().to_path_buf();
        drop(temporary.create().unwrap());
        assert!(path.exists());
        drop(temporary);
        assert!(!path.exists());
        let again = Temporary::unique(&target);
        again.create().unwrap();
        again.discard().unwrap();
        assert!(entries(dir.path()).is_empty());
    }
}
