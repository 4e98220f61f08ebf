//! # rollback-node
//!
//! A rollback controller: when a release goes wrong in production, one message rolls it back with
//! the right strategy — a feature-flag kill switch (instant), a blue-green traffic switch (zero
//! downtime), a migration's down() (schema) or a restore from backup (last resort). It speaks the
//! Maelstrom JSON-lines protocol; the `rollback-node` binary serves it on stdin/stdout.
//!
//! # Layout
//! - [`state`]: the formal state of an estate (schema, flags, traffic, last restore), which is also
//!   the estate file format.
//! - [`transitions`]: the state machine. One `#[transition]` method per message type;
//!   [`macro@protocol`] derives [`Request`], [`transitions::Reply`] and the dispatcher from them.
//! - [`executor`]: the boundary between deciding and doing; [`Simulated`] is the cost model.
//! - [`replies`]: the reply bodies and the [`Version`] field type.
//! - [`refusal`]: why a request was refused, one variant per Maelstrom error code.
//! - [`answered`]: the bounded memory that makes retries idempotent.
//! - [`journal`]: the durable, write-ahead journal of a state directory, and its replay.
//! - [`wire`]: envelopes in, reply lines out.
//! - [`lines`] and [`session`]: capped line splitting and the per-line entry point shared by the
//!   binary, the tests and the fuzzers. The stdio loop itself lives only in the binary.
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

pub mod answered;
pub mod executor;
pub mod journal;
pub mod lines;
pub mod refusal;
pub mod replies;
pub mod session;
pub mod state;
pub mod transitions;
pub mod wire;

pub use executor::{ExecError, Executor, Simulated};
pub use refusal::Refusal;
pub use replies::Version;
pub use session::{Diagnostic, Session};
pub use state::{Environment, State};
pub use transitions::{Machine, Request};
pub use wire::ReplyBody;

/// Derives a protocol from the transitions of a state machine.
///
/// Put `#[protocol]` on an `impl` block and mark each message's method `#[transition]` (or
/// `#[transition(rename = "wire_name")]`). For each marked method:
/// - its name is the message `type`, its arguments after the receiver are the request's fields;
/// - `&self` makes it a query, `&mut self` a change (changes are remembered for retries);
/// - it returns `Result<R, Refusal>` where `R` is a `#[derive(Reply)]` struct.
///
/// The macro emits, next to the impl block: `enum Request` (serde, tagged by `type`) with
/// `TYPES`, `type_name`, `changes_state` and `decode_fields`; `enum Reply` with one variant per
/// reply type; and `fn apply(&mut self, &Request) -> Result<Reply, Refusal>`, the dispatcher.
/// Mistakes (a missing reply type, a duplicate message, an argument pattern) are compile errors
/// at the offending token.
///
/// ```
/// use rollback_node::{protocol, Refusal, Reply};
///
/// pub struct Counter {
///     total: u64,
/// }
///
/// #[derive(Debug, Clone, PartialEq, Reply)]
/// pub struct Added {
///     total: u64,
/// }
///
/// #[derive(Debug, Clone, PartialEq, Reply)]
/// pub struct Total {
///     total: u64,
/// }
///
/// #[protocol]
/// impl Counter {
///     /// Adds `by` to the total.
///     #[transition]
///     fn add(&mut self, by: u64) -> Result<Added, Refusal> {
///         self.total = self.total.checked_add(by).ok_or_else(|| {
///             Refusal::PreconditionFailed("the total would overflow".into())
///         })?;
///         Ok(Added { total: self.total })
///     }
///
///     /// Reads the total.
///     #[transition(rename = "read")]
///     fn total(&self) -> Result<Total, Refusal> {
///         Ok(Total { total: self.total })
///     }
/// }
///
/// assert_eq!(Request::TYPES, ["add", "read"]);
/// let request: Request = serde_json::from_str(r#"{"type":"add","by":2}"#).unwrap();
/// assert!(request.changes_state());
/// let mut counter = Counter { total: 40 };
/// assert_eq!(counter.apply(&request), Ok(Reply::Added(Added { total: 42 })));
/// ```
pub use rollback_node_macros::protocol;

/// Makes a struct with named fields a reply body: see [`ReplyBody`].
pub use rollback_node_macros::Reply;

#[doc(hidden)]
pub mod __private {
    pub use serde;
}
