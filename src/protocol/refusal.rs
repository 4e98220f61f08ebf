//! Why a request was not carried out: one variant per Maelstrom error code this node uses.
//! A refusal is sent as an `error` reply `{"type":"error","in_reply_to":N,"code":C,"text":"..."}`.

use crate::protocol::encode::ReplyBody;

/// The most characters of a value a refusal quotes.
pub const QUOTED: usize = 64;
/// The longest refusal text sent; a longer one keeps its start and end.
pub const MAX_TEXT: usize = 1024;

/// A value echoed in an error text: at most [`QUOTED`] characters of it, then how long it was.
pub fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTED) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}… ({} bytes in all)", &text[..cut], text.len()),
    }
}

/// `text`, or if it is longer than [`MAX_TEXT`] bytes its start and end around a note of how
/// long it was: what was wrong usually leads and what would be right ends it.
fn bounded(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_TEXT {
        return std::borrow::Cow::Borrowed(text);
    }
    let keep = MAX_TEXT / 2 - 32;
    let mut head = keep;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - keep;
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    std::borrow::Cow::Owned(format!(
        "{} … ({} bytes in all) … {}",
        &text[..head],
        text.len(),
        &text[tail..]
    ))
}
use serde::ser::SerializeMap;

/// A refused or failed request. Every code used here is *definite*: the request did not happen
/// (except [`Refusal::Crash`], which says it may have happened in part).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 10 not-supported: the message type is unknown.
    #[error("{0}")]
    NotSupported(String),
    /// 11 temporarily-unavailable: nothing was done (its lane's queue is full); the same request
    /// may succeed later.
    #[error("{0}")]
    TemporarilyUnavailable(String),
    /// 12 malformed-request: a missing or ill-typed field, or a value no state could accept.
    #[error("{0}")]
    MalformedRequest(String),
    /// 13 crash: an executor failed part-way, or a restart interrupted the operation; the text
    /// says where things stand.
    #[error("{0}")]
    Crash(String),
    /// 14 abort: an executor failed before changing anything; the text names what failed.
    #[error("{0}")]
    Abort(String),
    /// 20 key-does-not-exist: an unknown flag, backup or catalogue version.
    #[error("{0}")]
    KeyDoesNotExist(String),
    /// 22 precondition-failed: the current state forbids the request.
    #[error("{0}")]
    PreconditionFailed(String),
}

impl Refusal {
    /// The Maelstrom error code.
    pub fn code(&self) -> u32 {
        match self {
            Refusal::NotSupported(_) => 10,
            Refusal::TemporarilyUnavailable(_) => 11,
            Refusal::MalformedRequest(_) => 12,
            Refusal::Crash(_) => 13,
            Refusal::Abort(_) => 14,
            Refusal::KeyDoesNotExist(_) => 20,
            Refusal::PreconditionFailed(_) => 22,
        }
    }

    /// The human-readable text: what was wrong and what would be right.
    pub fn text(&self) -> &str {
        match self {
            Refusal::NotSupported(text)
            | Refusal::TemporarilyUnavailable(text)
            | Refusal::MalformedRequest(text)
            | Refusal::Crash(text)
            | Refusal::Abort(text)
            | Refusal::KeyDoesNotExist(text)
            | Refusal::PreconditionFailed(text) => text,
        }
    }
}

impl ReplyBody for Refusal {
    fn type_name(&self) -> &'static str {
        "error"
    }

    fn serialize_fields<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        map.serialize_entry("code", &self.code())?;
        map.serialize_entry("text", &bounded(self.text()))
    }
}
