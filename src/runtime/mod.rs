//! The runtime drives the pure core: [`session`] turns lines into the machine's inputs and its
//! outputs into reply lines, performing instant operations inline; [`serve`] is the concurrent
//! event loop with its reader thread and lane workers. The binary's stdio lives in `main.rs`
//! only: [`serve::serve`] takes any reader and writer.

pub mod flags;
pub mod ladder;
pub mod serve;
pub mod session;

pub use serve::serve;
pub use session::{Diagnostic, Performing, Session};
