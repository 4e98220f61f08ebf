//! A database as the estate's `[schema] database` names it — `sqlite:PATH` (also `sqlite://`,
//! `sqlite3:`, `sqlite3://`) or `postgres://…` / `postgresql://…` — parsed here and nowhere
//! else: the migration engine, the backups and the estate all take a [`Database`].

pub use crate::exec::migrations::postgres::redact;
use std::fmt;
use std::path::{Path, PathBuf};

/// A live database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, by URL (TCP, or a Unix socket directory with `?host=DIR`).
    Postgres(String),
}

impl Database {
    /// From a URL; a relative SQLite path is taken as it is (relative to the working directory).
    ///
    /// # Errors
    /// An unknown scheme or an empty path, in one line (a password is never shown).
    pub fn from_url(url: &str) -> Result<Database, String> {
        Database::parse(url, None)
    }

    /// From a URL as written in an estate file in `base`: a relative SQLite path is relative to
    /// the file.
    ///
    /// # Errors
    /// As [`Database::from_url`].
    pub fn in_estate(url: &str, base: &Path) -> Result<Database, String> {
        Database::parse(url, Some(base))
    }

    fn parse(url: &str, base: Option<&Path>) -> Result<Database, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Database::Postgres(url.to_owned()));
        }
        match ["sqlite3://", "sqlite://", "sqlite3:", "sqlite:"]
            .iter()
            .find_map(|p| url.strip_prefix(p))
        {
            Some("") => Err(format!(
                "{url}: no file path; expected sqlite:PATH or postgres://USER@HOST/DB (or postgres://USER@/DB?host=SOCKETDIR)"
            )),
            Some(path) => {
                let path = Path::new(path);
                Ok(Database::Sqlite(match base {
                    Some(base) if path.is_relative() => base.join(path),
                    _ => path.to_owned(),
                }))
            }
            None => Err(format!(
                "{}: unknown scheme; expected sqlite:PATH or postgres://USER@HOST/DB (or postgres://USER@/DB?host=SOCKETDIR)",
                redact(url)
            )),
        }
    }

    /// Its URL, as the engines open it (a PostgreSQL password included).
    pub fn url(&self) -> String {
        match self {
            Database::Sqlite(path) => format!("sqlite:{}", path.display()),
            Database::Postgres(url) => url.clone(),
        }
    }

    /// The extension of its backups: `db` or `dump`.
    pub fn extension(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "db",
            Database::Postgres(_) => "dump",
        }
    }
}

/// Its URL with any password hidden, for status and messages.
impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.url()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme_once() {
        assert_eq!(
            Database::in_estate("sqlite:app.db", Path::new("/e")),
            Ok(Database::Sqlite("/e/app.db".into()))
        );
        assert_eq!(
            Database::in_estate("sqlite:/abs.db", Path::new("/e")),
            Ok(Database::Sqlite("/abs.db".into()))
        );
        assert_eq!(
            Database::from_url("sqlite3://x.db"),
            Ok(Database::Sqlite("x.db".into()))
        );
        assert!(matches!(
            Database::from_url("postgresql://u@/d?host=/s"),
            Ok(Database::Postgres(_))
        ));
        assert!(Database::from_url("sqlite:")
            .unwrap_err()
            .contains("no file path"));
        let e = Database::from_url("mysql://u:pw@h/d").unwrap_err();
        assert!(e.contains("unknown scheme") && !e.contains("pw"), "{e}");
    }

    #[test]
    fn shows_a_postgres_database_without_its_password() {
        assert_eq!(
            Database::Postgres("postgres://u:pw@h/d".into()).to_string(),
            "postgres://u:***@h/d"
        );
    }
}
