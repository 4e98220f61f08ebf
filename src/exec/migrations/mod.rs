//! Schema migrations, golang-migrate–compatible, that do not leave databases dirty.
//!
//! - [`catalogue`]: read a golang-migrate directory (`{version}_{title}.up.sql` / `.down.sql`).
//! - [`sql`]: one file: text, SHA-384 checksum, statements with their lines, transaction mode.
//! - [`schema`]: the [`SchemaDb`] trait, what a database says ([`DbState`]), runs and their
//!   reports and failures, [`plan`] and [`open`].
//! - [`sqlite`] and [`postgres`]: the two databases.
//!
//! ```
//! use rollback_node::exec::migrations::{open, plan, Catalogue, Direction};
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
//! let steps = plan(&catalogue, state.version, Direction::Up, 20250101000000).unwrap();
//! let report = db.run(&steps, &mut |_, _| {}).unwrap();
//! assert_eq!(report.to, 20250101000000);
//!
//! let steps = plan(&catalogue, report.to, Direction::Down, 20250101000000).unwrap();
//! assert_eq!(db.run(&steps, &mut |_, _| {}).unwrap().to, 0);
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
pub use schema::{
    plan, DbState, Direction, Dirty, Drift, Evidence, ForceReport, NotInDirectory, PlanError,
    RunError, RunFailure, RunReport, SchemaDb, SchemaError, Step, StepReport,
};
pub use sql::{SqlFile, SqlFileError, Statement, TxMode};
pub use url::open;
