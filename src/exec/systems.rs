//! The real systems an estate can name, and connecting to them. Each system is one file under
//! `exec/` that declares a [`System`] — its estate section, its layer, how to read the section
//! and connect — and one line in [`SYSTEMS`]. [`crate::exec::connect`] gives every layer its
//! executor: the real system the estate names for it, else the simulated world.
//!
//! To add one (say Envoy for traffic, or a flag service's API): write `exec/envoy.rs` with a
//! config type, an [`Executor`] for its layer's effects and `pub const SYSTEM: System`, then add
//! `envoy::SYSTEM` below. Nothing in the core changes.

use crate::exec::system::System;

/// Every real system the node knows, in the order they connect.
pub const SYSTEMS: &[System] = &[
    crate::exec::migrations::executor::SYSTEM,
    crate::exec::backups::executor::SYSTEM,
    crate::exec::flagd::SYSTEM,
    crate::exec::haproxy::SYSTEM,
];
