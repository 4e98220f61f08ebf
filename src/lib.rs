//! # rollback-node
//!
//! A rollback controller: when a release goes wrong in production, one message rolls it back with
//! the right strategy — a feature-flag kill switch (instant), a blue-green traffic switch (zero
//! downtime), a migration's down() (schema) or a restore from backup (last resort). It speaks the
//! Maelstrom JSON-lines protocol; the `rollback-node` binary serves it on stdin/stdout.
//!
//! # Layout
//! Dependencies run one way: `protocol` ← `core` ← {`wire`, `exec`, `store`} ← `runtime` ← the
//! binary, with [`durable`] below `exec` and `store`. `ARCHITECTURE.md` gives the bird's-eye view.
//! - [`protocol`]: reply bodies, the values they carry, [`Refusal`], the one reply encoder.
//! - [`core`]: the pure state machine — the estate's state, the transitions (one
//!   `#[transition]` method per message; [`macro@protocol`] derives [`Request`] and the
//!   dispatcher), decisions and effects as data, lanes and queues, the retry memory.
//! - [`wire`]: request lines in (capped line splitting, the single-pass and full decoders).
//! - [`exec`]: the executor contract (an [`exec::Executor`] performs its layer's effects), the
//!   estate file, the registry of real systems and connecting them, the simulated executor (the
//!   cost model) and the real ones.
//! - [`store`]: the journal of intents and outcomes with snapshots, and replay.
//! - [`runtime`]: the session (line in, replies out), the concurrent event loop, and assembling a
//!   node from its options.
//! - [`durable`]: writing a file atomically.
//!
//! ```
//! use rollback_node::Session;
//!
//! let mut node = Session::example();
//! let mut out = Vec::new();
//! let line = br#"{"src":"admin","dest":"migrations","body":{"type":"rollback","msg_id":1,"version":3}}"#;
//! assert!(node.handle_line(line, &mut out).is_none());
//! assert_eq!(
//!     String::from_utf8(out).unwrap(),
//!     concat!(
//!         r#"{"src":"migrations","dest":"admin","body":{"type":"rollback_complete","in_reply_to":1,"#,
//!         r#""rolled_back_from":3,"rolled_back_to":2,"duration_seconds":5}}"#,
//!         "\n"
//!     )
//! );
//! ```

#![warn(missing_docs)]

extern crate self as rollback_node;

pub mod cluster;
pub mod core;
pub mod durable;
pub mod exec;
pub mod node;
pub mod protocol;
pub mod runtime;
pub mod service;
pub mod store;
pub mod wire;

pub use crate::core::state::State;
pub use crate::core::{Machine, Request};
pub use crate::exec::estate::{Estate, EstateError, EXAMPLE_ESTATE};
pub use exec::simulated::Simulated;
pub use protocol::{Environment, Refusal, ReplyBody, Version};
pub use runtime::{Diagnostic, Session};

/// Derives a protocol from the transitions of a state machine.
///
/// Put `#[protocol]` on an `impl` block and mark each message's method `#[transition]` (a
/// query) or `#[transition(lane = Lane::Name)]` (a change decided and performed in that lane;
/// `rename = "wire_name"` renames either). For each marked method:
/// - its name is the message `type`, its arguments after `&self` are the request's fields;
/// - it only decides: it takes `&self` and returns `Result<R, Refusal>` (a reply at once) or
///   `Result<Decision<R>, Refusal>` (an operation to perform, or a lookup), where `R` is a
///   `#[derive(Reply)]` struct.
///
/// The macro emits, next to the impl block: `enum Request` (serde, tagged by `type`) with
/// `TYPES`, `type_name`, `changes_state`, `lane`, `lane_of`, `fields` and `decode_fields`; `enum Reply`
/// with one variant per reply type; and `fn decide(&self, &Request) -> Result<Decision<Reply>,
/// Refusal>`, the dispatcher. Mistakes (a missing reply type, a duplicate message, `&mut self`,
/// an argument pattern) are compile errors at the offending token.
///
/// ```
/// use rollback_node::core::Decision;
/// use rollback_node::{protocol, Refusal, Reply};
///
/// pub struct Counter {
///     total: u64,
/// }
///
/// #[derive(Debug, Clone, PartialEq, Reply)]
/// pub struct Total {
///     total: u64,
/// }
///
/// #[derive(Debug, Clone, PartialEq, Reply)]
/// pub struct Sum {
///     sum: u64,
/// }
///
/// #[protocol]
/// impl Counter {
///     /// Reads the total.
///     #[transition(rename = "read")]
///     fn total(&self) -> Result<Total, Refusal> {
///         Ok(Total { total: self.total })
///     }
///
///     /// What the total would be with `by` added; refuses an overflow.
///     #[transition]
///     fn sum(&self, by: u64) -> Result<Decision<Sum>, Refusal> {
///         let sum = self.total.checked_add(by).ok_or_else(|| {
///             Refusal::PreconditionFailed("the total would overflow".into())
///         })?;
///         Ok(Decision::Reply(Sum { sum }))
///     }
/// }
///
/// assert_eq!(Request::TYPES, ["read", "sum"]);
/// assert_eq!(Request::fields("sum"), Some(&["by"][..]));
/// let request: Request = serde_json::from_str(r#"{"type":"sum","by":2}"#).unwrap();
/// assert!(!request.changes_state());
/// let counter = Counter { total: 40 };
/// assert_eq!(counter.decide(&request), Ok(Decision::Reply(Reply::Sum(Sum { sum: 42 }))));
/// ```
pub use rollback_node_macros::protocol;

/// Makes a struct with named fields a reply body: see [`ReplyBody`].
pub use rollback_node_macros::Reply;

#[doc(hidden)]
pub mod __private {
    pub use serde;
}
