//! Opening a schema database from the URL an estate gives: `sqlite:PATH` or `postgres://...`.

use super::schema::{SchemaDb, SchemaError};
use crate::exec::database::Database;

/// Opens a schema database from a URL: `sqlite:PATH` (also `sqlite://PATH`, `sqlite3://PATH`)
/// or `postgres://...` / `postgresql://...` (TCP, or a Unix socket directory with `?host=DIR`).
pub fn open(url: &str) -> Result<Box<dyn SchemaDb>, SchemaError> {
    let bad = |problem: String| SchemaError::BadUrl {
        url: super::postgres::redact(url),
        problem,
    };
    match Database::from_url(url).map_err(|e| {
        bad(e.split_once(": ").map_or(e.clone(), |(_, why)| {
            why.split(';').next().unwrap_or(why).to_owned()
        }))
    })? {
        Database::Postgres(url) => Ok(Box::new(super::postgres::PostgresDb::open(&url)?)),
        Database::Sqlite(path) => Ok(Box::new(super::sqlite::SqliteDb::open(path)?)),
    }
}
