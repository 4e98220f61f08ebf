//! The wire: request lines in. [`lines`] splits input into capped lines; [`decode`] turns one
//! into an [`Incoming`] request (a [`single_pass`] for well-formed lines, read by a plain JSON [`scan`]ner, the full decoder for
//! everything else and every error). Replies go out through the one encoder in
//! [`crate::protocol::encode`].

pub mod decode;
pub mod incoming;
pub mod lines;
mod scan;
mod single_pass;

pub use decode::{decode, decode_in_full, decode_single_pass, encode_request, MAX_LINE_BYTES};
pub use incoming::Incoming;
