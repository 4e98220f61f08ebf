//! The wire: Maelstrom envelopes in, reply lines out.
//!
//! Decoding borrows from the line wherever it can: the envelope is read once with the body kept
//! as raw JSON, the body's `type` and `msg_id` are picked out, and then only the fields of that
//! one message type are decoded ([`Request::decode_fields`]). A failed decode is run again on the
//! error path only, to name the offending field.
//!
//! Every reply goes through [`write_reply`]: `{"src":…,"dest":…,"body":{"type":…,"in_reply_to":…,…}}`
//! with `type` first and `in_reply_to` second, written straight into the output buffer.

use crate::refusal::Refusal;
use crate::transitions::Request;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The longest input line accepted, in bytes (1 MiB). Longer lines are skipped with a diagnostic.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// A reply body: its wire `type` and its fields, in order.
///
/// Implement it with `#[derive(Reply)]` on a struct with named fields; the `type` is the struct's
/// name in snake_case.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a reply body",
    label = "a transition's Ok type must be a reply body",
    note = "add #[derive(Reply)] to the struct `{Self}`"
)]
pub trait ReplyBody {
    /// The `type` written first in the body.
    fn type_name(&self) -> &'static str;

    /// Writes the fields that follow `type` and `in_reply_to`, in order.
    ///
    /// # Errors
    /// The serializer's error.
    fn serialize_fields<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error>;
}

/// Appends one reply line (envelope plus `\n`) to `out`.
pub fn write_reply<B: ReplyBody + ?Sized>(
    out: &mut Vec<u8>,
    src: &str,
    dest: &str,
    in_reply_to: Option<u64>,
    body: &B,
) {
    let envelope = EnvelopeOut {
        src,
        dest,
        body: BodyOut { in_reply_to, body },
    };
    // Writing to a Vec cannot fail, and every value here serializes (string keys, no floats).
    if serde_json::to_writer(&mut *out, &envelope).is_ok() {
        out.push(b'\n');
    }
}

#[derive(Serialize)]
#[serde(bound = "")]
struct EnvelopeOut<'a, B: ReplyBody + ?Sized> {
    src: &'a str,
    dest: &'a str,
    body: BodyOut<'a, B>,
}

/// A reply body as it goes on the wire: `type`, `in_reply_to`, then the body's fields.
pub struct BodyOut<'a, B: ReplyBody + ?Sized> {
    in_reply_to: Option<u64>,
    body: &'a B,
}

impl<'a, B: ReplyBody + ?Sized> BodyOut<'a, B> {
    /// The body of a reply to `in_reply_to`.
    pub fn new(in_reply_to: Option<u64>, body: &'a B) -> Self {
        BodyOut { in_reply_to, body }
    }
}

impl<B: ReplyBody + ?Sized> Serialize for BodyOut<'_, B> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("type", self.body.type_name())?;
        if let Some(id) = self.in_reply_to {
            map.serialize_entry("in_reply_to", &id)?;
        }
        self.body.serialize_fields(&mut map)?;
        map.end()
    }
}

/// What could be read from one input line.
#[derive(Debug)]
pub struct Incoming<'a> {
    /// The sender, the reply's `dest`.
    pub src: Option<Cow<'a, str>>,
    /// Whom the message was addressed to.
    pub dest: Option<Cow<'a, str>>,
    /// The body's `msg_id`, when present and a non-negative integer.
    pub msg_id: Option<u64>,
    /// The request, or why it cannot be carried out.
    pub request: Result<Request, Refusal>,
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow)]
    src: Option<Cow<'a, str>>,
    #[serde(borrow)]
    dest: Option<Cow<'a, str>>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawHead<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    msg_id: Option<&'a RawValue>,
}

/// Decodes one line (without its line ending).
///
/// # Errors
/// A one-line description when the line is not a JSON object with string `src`/`dest`: nothing
/// can be answered then.
pub fn decode(line: &str) -> Result<Incoming<'_>, String> {
    if !is_object(line) {
        return Err(
            "not a Maelstrom envelope: expected a JSON object {\"src\":…,\"dest\":…,\"body\":…}"
                .to_owned(),
        );
    }
    let envelope: RawEnvelope = serde_json::from_str(line)
        .map_err(|e| format!("not a Maelstrom envelope: {}", without_position(&e)))?;
    let mut incoming = Incoming {
        src: envelope.src,
        dest: envelope.dest,
        msg_id: None,
        request: Err(Refusal::MalformedRequest(String::new())),
    };
    incoming.request = match envelope.body {
        None => Err(malformed(
            "the envelope has no \"body\"; send {\"src\":…,\"dest\":…,\"body\":{\"type\":…,\"msg_id\":…}}"
                .to_owned(),
        )),
        Some(body) => decode_body(body.get(), &mut incoming.msg_id),
    };
    if incoming.src.is_none() && incoming.request.is_ok() {
        incoming.request = Err(malformed(
            "the envelope has no \"src\", so there is no one to reply to".to_owned(),
        ));
    }
    Ok(incoming)
}

fn decode_body(body: &str, msg_id: &mut Option<u64>) -> Result<Request, Refusal> {
    if !is_object(body) {
        return Err(malformed(format!(
            "the body must be a JSON object with a string \"type\", not {}",
            body.chars().take(40).collect::<String>()
        )));
    }
    let head: RawHead = serde_json::from_str(body).map_err(|e| {
        malformed(format!(
            "the body must be a JSON object with a string \"type\": {}",
            without_position(&e)
        ))
    })?;
    if let Some(raw) = head.msg_id {
        *msg_id = Some(serde_json::from_str::<u64>(raw.get()).map_err(|_| {
            malformed(format!(
                "msg_id must be a non-negative integer, not {}",
                raw.get()
            ))
        })?);
    }
    let Some(kind) = head.kind else {
        return Err(malformed(format!(
            "the body has no \"type\"; supported types: {}",
            Request::TYPES.join(", ")
        )));
    };
    let kind = string_value(kind).ok_or_else(|| {
        malformed(format!(
            "\"type\" must be a string, not {}; supported types: {}",
            kind.get(),
            Request::TYPES.join(", ")
        ))
    })?;
    let mut deserializer = serde_json::Deserializer::from_str(body);
    match Request::decode_fields(&kind, &mut deserializer) {
        None => Err(Refusal::NotSupported(format!(
            "unknown message type \"{kind}\"; supported types: {}",
            Request::TYPES.join(", ")
        ))),
        Some(Ok(request)) => Ok(request),
        Some(Err(_)) => Err(malformed(explain_fields_error(&kind, body))),
    }
}

/// Whether JSON text is an object. serde's derived structs also accept arrays, which on this
/// wire would only hide a sender's mistake.
fn is_object(json: &str) -> bool {
    json.trim_start().starts_with('{')
}

/// The text of a JSON string value, borrowed when it has no escapes.
fn string_value(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Some(Cow::Borrowed(inner)),
        _ => serde_json::from_str::<String>(text).ok().map(Cow::Owned),
    }
}

/// Decodes the fields again, tracking the path, to say which field is wrong and why.
fn explain_fields_error(kind: &str, body: &str) -> String {
    let mut deserializer = serde_json::Deserializer::from_str(body);
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(&mut deserializer, &mut track);
    let detail = match Request::decode_fields(kind, tracked) {
        Some(Err(error)) => {
            let path = track.path().to_string();
            let inner = without_position(&error);
            if path == "." || path.is_empty() {
                inner
            } else {
                format!("{path}: {inner}")
            }
        }
        _ => "the fields do not decode".to_owned(),
    };
    format!("malformed {kind} request: {detail}")
}

/// A serde_json error without its " at line 1 column N" suffix: positions inside the body would
/// not match the line the sender wrote.
fn without_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) if error.line() > 0 => text[..at].to_owned(),
        _ => text,
    }
}

fn malformed(text: String) -> Refusal {
    Refusal::MalformedRequest(text)
}

/// Encodes a request as one envelope line (no `\n`): the inverse of [`decode`], for tests, tools
/// and fuzzing.
pub fn encode_request(src: &str, dest: &str, msg_id: Option<u64>, request: &Request) -> String {
    #[derive(Serialize)]
    struct Out<'a> {
        src: &'a str,
        dest: &'a str,
        body: Body<'a>,
    }
    #[derive(Serialize)]
    struct Body<'a> {
        #[serde(flatten)]
        request: &'a Request,
        #[serde(skip_serializing_if = "Option::is_none")]
        msg_id: Option<u64>,
    }
    let out = Out {
        src,
        dest,
        body: Body { request, msg_id },
    };
    serde_json::to_string(&out).expect("requests always serialize")
}
