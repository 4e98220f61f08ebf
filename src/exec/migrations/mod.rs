//! Schema migrations, golang-migrate–compatible, that do not leave databases dirty.
//!
//! - [`catalogue`]: read a golang-migrate directory (`{version}_{title}.up.sql` / `.down.sql`).
//! - [`sql`]: one file: text, SHA-384 checksum, statements with their lines, transaction mode.
//! - [`schema`]: the [`SchemaDb`] trait, what a database says ([`DbState`]), runs and their
//!   reports and failures, and [`open`]. Which steps run is the core's decision
//!   (`State::rollback`/`State::migrate`); the executor turns its effects into [`Step`]s.
//! - [`sqlite`] and [`postgres`]: the two databases; PostgreSQL's fence for several nodes sharing
//!   one store ([`advance_fence`], [`fences`]).
//!
//! ```
//! use rollback_node::exec::migrations::{open, Catalogue, Direction, SqlFile, Step};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let migrations = dir.path().join("migrations");
//! std::fs::create_dir(&migrations).unwrap();
//! std::fs::write(migrations.join("20250101000000_users.up.sql"), "CREATE TABLE users (id INTEGER);").unwrap();
//! std::fs::write(migrations.join("20250101000000_users.down.sql"), "DROP TABLE users;").unwrap();
//!
//! let catalogue = Catalogue::read(&migrations).unwrap();
//! let mut db = open(&format!("sqlite:{}", dir.path().join("app.db").display())).unwrap();
//! let state = db.observe(&catalogue).unwrap();
//! let users = catalogue.get(20250101000000).unwrap();
//! let up = Step {
//!     version: users.version,
//!     direction: Direction::Up,
//!     file: SqlFile::load(users.up.as_ref().unwrap()).unwrap(),
//!     version_after: users.version,
//! };
//! let report = db.run(&[up], &mut |_, _| {}).unwrap();
//! assert_eq!((state.version, report.to), (0, 20250101000000));
//! assert_eq!(report.steps[0].protocol, "one transaction");
//!
//! let down = Step {
//!     version: users.version,
//!     direction: Direction::Down,
//!     file: SqlFile::load(users.down.as_ref().unwrap()).unwrap(),
//!     version_after: catalogue.previous(users.version),
//! };
//! assert_eq!(db.run(&[down], &mut |_, _| {}).unwrap().to, 0);
//! ```

// Failures carry the file, statement and what the database said; they are returned once per run,
// so their size does not matter.
#![allow(clippy::result_large_err)]

pub mod catalogue;
pub mod executor;
pub mod postgres;
pub mod schema;
pub mod sql;
pub mod sqlite;
pub mod url;

pub use catalogue::{Catalogue, CatalogueError, Migration};
pub use postgres::{advance_fence, fences};
pub use schema::{
    DbState, Direction, Dirty, Drift, Evidence, ForceReport, NotInDirectory, RunError, RunFailure,
    RunReport, SchemaDb, SchemaError, Step, StepError, StepReport,
};
pub use sql::{SqlFile, SqlFileError, Statement, TxMode};
pub use url::open;
