//! What the decoders read from one input line.

use crate::core::transitions::Request;
use crate::protocol::Refusal;
use std::borrow::Cow;

/// What could be read from one input line.
#[derive(Debug)]
pub struct Incoming<'a> {
    /// The sender, the reply's `dest`.
    pub src: Option<Cow<'a, str>>,
    /// Whom the message was addressed to.
    pub dest: Option<Cow<'a, str>>,
    /// The body's `msg_id`, when present and a non-negative integer.
    pub msg_id: Option<u64>,
    /// The body's `"dry_run": true`.
    pub dry_run: bool,
    /// The request, or why it cannot be carried out.
    pub request: Result<Request, Refusal>,
}
