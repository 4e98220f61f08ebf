//! The pure core: the estate's [`state`], the
//! [`transitions`] that decide each message, the decisions and effects as data ([`effects`]),
//! the retry memory ([`retries`]), the sans-I/O [`machine`] that holds lanes and queues, and the
//! escalation [`ladder`] that decides from health signals which rung to take.
//!
//! Nothing in here performs I/O, reads a clock or calls an executor. It depends only on
//! [`crate::protocol`].

pub mod effects;
pub mod ladder;
pub mod machine;
pub mod retries;
pub mod state;
pub mod transitions;

pub use effects::{
    Completion, Decision, Done, Effect, ExecError, Failure, FailureKind, Found, Lane, LayerKind,
    Lookup, Operation, Plan,
};
pub use ladder::{Ladder, LadderConfig, LadderDecision, LadderState, LadderStatus};
pub use machine::{Inbound, Machine, Record, Sink, Snapshot};
pub use transitions::{Reply, Request};
