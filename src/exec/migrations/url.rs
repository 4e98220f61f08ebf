//! Opening a schema database from the URL an estate gives: `sqlite:PATH` or `postgres://...`.

use super::schema::{SchemaDb, SchemaError};

/// Opens a schema database from a URL: `sqlite:PATH` (also `sqlite://PATH`, `sqlite3://PATH`)
/// or `postgres://...` / `postgresql://...` (TCP, or a Unix socket directory with `?host=DIR`).
pub fn open(url: &str) -> Result<Box<dyn SchemaDb>, SchemaError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Box::new(super::postgres::PostgresDb::open(url)?))
    } else if let Some(path) = ["sqlite3://", "sqlite://", "sqlite3:", "sqlite:"]
        .iter()
        .find_map(|p| url.strip_prefix(p))
    {
        if path.is_empty() {
            return Err(SchemaError::BadUrl {
                url: url.to_owned(),
                problem: "no file path".into(),
            });
        }
        Ok(Box::new(super::sqlite::SqliteDb::open(path)?))
    } else {
        Err(SchemaError::BadUrl {
            url: super::postgres::redact(url),
            problem: "unknown scheme".into(),
        })
    }
}
