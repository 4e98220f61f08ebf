//! The protocol's vocabulary: the reply bodies ([`replies`]), the values they carry
//! ([`values`]), why a request is refused ([`Refusal`], one variant per error code) and the one
//! reply encoder ([`encode`]). The request enum itself is derived by `#[protocol]` from the
//! transitions in [`crate::core::transitions`].
//!
//! Depends on nothing else in the crate; everything else depends on it.

pub mod encode;
pub mod refusal;
pub mod replies;
pub mod values;

pub use encode::ReplyBody;
pub use refusal::{quote, Refusal};
pub use values::{
    BackupView, Environment, InFlightView, InterruptedView, Progress, RestoreRecord, Seconds,
    Version,
};
