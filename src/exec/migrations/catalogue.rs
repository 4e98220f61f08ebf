//! The catalogue of a golang-migrate directory: which versions exist, with their up and down
//! files, sorted by version.
//!
//! A file counts when its name matches golang-migrate's pattern
//! `^([0-9]+)_(.*)\.(down|up)\.(.*)$` and its extension is `sql`; other files are ignored. The
//! title is everything between the first `_` and the last `.up.`/`.down.`, so it may contain
//! dots and dashes.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use std::fmt;

/// One version of the directory: its up file and, when the version is reversible, its down file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The version, the leading digits of the file name (e.g. `20250810144214`).
    pub version: u64,
    /// The title between the version and the direction (may be empty).
    pub title: String,
    /// The `.up.sql` file, if there is one.
    pub up: Option<PathBuf>,
    /// The `.down.sql` file; `None` makes the version irreversible.
    pub down: Option<PathBuf>,
}

impl Migration {
    /// The file for a direction, if the directory has one.
    pub fn file(&self, direction: Direction) -> Option<&Path> {
        match direction {
            Direction::Up => self.up.as_deref(),
            Direction::Down => self.down.as_deref(),
        }
    }
}

/// The migrations of one directory, sorted by version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalogue {
    /// The directory the catalogue was read from.
    pub dir: PathBuf,
    /// The versions found, ascending.
    pub migrations: Vec<Migration>,
}

/// Why a migrations directory could not be read. Each message is one line: the path, what was
/// wrong, and what would be right.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    /// The directory does not exist or is not a directory.
    #[error("{}: {problem}; expected a directory of {{version}}_{{title}}.up.sql / .down.sql files", path.display())]
    MissingDirectory {
        /// The path that was given.
        path: PathBuf,
        /// What is there instead.
        problem: String,
    },
    /// The directory or one of its entries could not be read.
    #[error("{}: cannot be read ({source}); expected a readable file or directory", path.display())]
    Unreadable {
        /// The path that could not be read.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Two files for the same version and direction.
    #[error("{} and {}: both are the {direction} file of version {version}; expected exactly one per version and direction", first.display(), second.display())]
    Duplicate {
        /// The version.
        version: u64,
        /// The direction both files claim.
        direction: Direction,
        /// The first file, in name order.
        first: PathBuf,
        /// The second file.
        second: PathBuf,
    },
    /// A version that does not fit in 64 bits, or is 0 (which means "nothing applied").
    #[error("{}: version {digits} is not usable; expected a version from 1 to {}", path.display(), u64::MAX)]
    BadVersion {
        /// The file.
        path: PathBuf,
        /// The version digits as written.
        digits: String,
    },
}

/// The parts of a file name that matches golang-migrate's pattern: digits, title, direction,
/// extension.
pub fn parse_file_name(name: &str) -> Option<(&str, &str, Direction, &str)> {
    let digits_end = name.find(|c: char| !c.is_ascii_digit())?;
    if digits_end == 0 || !name[digits_end..].starts_with('_') {
        return None;
    }
    let digits = &name[..digits_end];
    let rest = &name[digits_end + 1..];
    // The title is greedy: the direction is the last `.up.` or `.down.` in the rest.
    let up = rest.rfind(".up.").map(|i| (i, Direction::Up, 4));
    let down = rest.rfind(".down.").map(|i| (i, Direction::Down, 6));
    let (at, direction, len) = match (up, down) {
        (Some(u), Some(d)) => {
            if u.0 > d.0 {
                u
            } else {
                d
            }
        }
        (Some(u), None) => u,
        (None, Some(d)) => d,
        (None, None) => return None,
    };
    if rest.contains('\n') {
        return None;
    }
    Some((digits, &rest[..at], direction, &rest[at + len..]))
}

impl Catalogue {
    /// Reads a golang-migrate directory.
    pub fn read(dir: impl AsRef<Path>) -> Result<Catalogue, CatalogueError> {
        let dir = dir.as_ref();
        match fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(CatalogueError::MissingDirectory {
                    path: dir.to_path_buf(),
                    problem: "is a file, not a directory".into(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CatalogueError::MissingDirectory {
                    path: dir.to_path_buf(),
                    problem: "does not exist".into(),
                })
            }
            Err(source) => {
                return Err(CatalogueError::Unreadable {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        }
        let unreadable = |source| CatalogueError::Unreadable {
            path: dir.to_path_buf(),
            source,
        };
        let mut names = Vec::new();
        for entry in fs::read_dir(dir).map_err(unreadable)? {
            let entry = entry.map_err(unreadable)?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let is_file = fs::metadata(&path)
                .map_err(|source| CatalogueError::Unreadable {
                    path: path.clone(),
                    source,
                })?
                .is_file();
            if is_file {
                names.push(name);
            }
        }
        names.sort();
        let mut by_version: BTreeMap<u64, Migration> = BTreeMap::new();
        for name in names {
            let Some((digits, title, direction, ext)) = parse_file_name(&name) else {
                continue;
            };
            if ext != "sql" {
                continue;
            }
            let path = dir.join(&name);
            let version = match digits.parse::<u64>() {
                Ok(v) if v > 0 => v,
                _ => {
                    return Err(CatalogueError::BadVersion {
                        path,
                        digits: digits.to_owned(),
                    })
                }
            };
            let entry = by_version.entry(version).or_insert_with(|| Migration {
                version,
                title: title.to_owned(),
                up: None,
                down: None,
            });
            let slot = match direction {
                Direction::Up => &mut entry.up,
                Direction::Down => &mut entry.down,
            };
            if let Some(first) = slot {
                return Err(CatalogueError::Duplicate {
                    version,
                    direction,
                    first: first.clone(),
                    second: path,
                });
            }
            *slot = Some(path);
        }
        Ok(Catalogue {
            dir: dir.to_path_buf(),
            migrations: by_version.into_values().collect(),
        })
    }

    /// The migration of a version, if the directory has it.
    pub fn get(&self, version: u64) -> Option<&Migration> {
        self.migrations
            .binary_search_by_key(&version, |m| m.version)
            .ok()
            .map(|i| &self.migrations[i])
    }

    /// The versions, ascending.
    pub fn versions(&self) -> impl Iterator<Item = u64> + '_ {
        self.migrations.iter().map(|m| m.version)
    }

    /// The highest version, if any.
    pub fn latest(&self) -> Option<u64> {
        self.migrations.last().map(|m| m.version)
    }

    /// The version just before `version` in the directory, 0 when there is none.
    pub fn previous(&self, version: u64) -> u64 {
        let i = self.migrations.partition_point(|m| m.version < version);
        if i == 0 {
            0
        } else {
            self.migrations[i - 1].version
        }
    }
}

/// Which way a step goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Apply (`.up.sql`).
    Up,
    /// Revert (`.down.sql`).
    Down,
}

impl Direction {
    /// `up` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            parse_file_name("20250810144214_add..users-table.up.sql"),
            Some(("20250810144214", "add..users-table", Direction::Up, "sql"))
        );
        assert_eq!(
            parse_file_name("1_a.up.b.down.sql"),
            Some(("1", "a.up.b", Direction::Down, "sql"))
        );
        assert_eq!(
            parse_file_name("1_.up.sql"),
            Some(("1", "", Direction::Up, "sql"))
        );
        assert_eq!(parse_file_name("x1_a.up.sql"), None);
        assert_eq!(parse_file_name("1-a.up.sql"), None);
        assert_eq!(parse_file_name("1_a.sql"), None);
        assert_eq!(
            parse_file_name("1_a.up.sql.bak"),
            Some(("1", "a", Direction::Up, "sql.bak"))
        );
    }
}
