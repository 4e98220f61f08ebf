//! The wire: Maelstrom envelopes in, reply lines out.
//!
//! Decoding borrows from the line wherever it can. A well-formed request whose body starts with
//! `type` (after an optional `msg_id`) is decoded in a single pass: the envelope's keys are read
//! in order, and once the body's `type` is known the rest of the body goes straight into the
//! fields of that one message type ([`Request::decode_fields`]), with `msg_id` picked out on the
//! way. Anything else — another key order, a missing or ill-typed field, an unknown type, a
//! duplicate key, bad JSON — gives that up, and the line is decoded again by the full decoder:
//! the envelope with the body kept as raw JSON, then the body's `type` and `msg_id`, then the
//! fields, and on failure once more to name the offending field. Both produce the same result
//! for every line the single pass accepts; every error comes from the full decoder.
//!
//! Every reply goes through [`write_reply`]: `{"src":…,"dest":…,"body":{"type":…,"in_reply_to":…,…}}`
//! with `type` first and `in_reply_to` second, written straight into the output buffer: the
//! envelope's fixed keys as literals, strings escaped only when they need it, and the body's
//! fields through serde_json, byte for byte what serde_json writes for the whole envelope.

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
    let start = out.len();
    out.extend_from_slice(b"{\"src\":");
    write_str(out, src);
    out.extend_from_slice(b",\"dest\":");
    write_str(out, dest);
    out.extend_from_slice(b",\"body\":");
    if write_body(out, in_reply_to, body) {
        out.extend_from_slice(b"}\n");
    } else {
        out.truncate(start);
    }
}

/// Appends a reply body `{"type":…,"in_reply_to":…,…}`: the bytes serde_json writes for
/// [`BodyOut`]. Returns `false`, having written part of it, if a field failed to serialize
/// (which cannot happen for the reply types here: string keys, no floats).
pub(crate) fn write_body<B: ReplyBody + ?Sized>(
    out: &mut Vec<u8>,
    in_reply_to: Option<u64>,
    body: &B,
) -> bool {
    out.extend_from_slice(b"{\"type\":");
    write_str(out, body.type_name());
    if let Some(id) = in_reply_to {
        out.extend_from_slice(b",\"in_reply_to\":");
        write_u64(out, id);
    }
    // The fields, as serde_json writes a map of them: `{"a":1,"b":2}` continues and closes the
    // body as `,"a":1,"b":2}`, and `{}` just closes it.
    let fields = out.len();
    let mut serializer = serde_json::Serializer::new(&mut *out);
    let written = serializer.serialize_map(None).and_then(|mut map| {
        body.serialize_fields(&mut map)?;
        map.end()
    });
    if written.is_err() {
        return false;
    }
    if out.len() == fields + 2 {
        out.truncate(fields);
        out.push(b'}');
    } else {
        out[fields] = b',';
    }
    true
}

/// Writes a JSON string as serde_json does: quoted, escaping `"`, `\\` and control characters.
fn write_str(out: &mut Vec<u8>, text: &str) {
    let plain = text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
    if plain {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        // Writing a string to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    }
}

/// Writes an integer in decimal, as serde_json does.
fn write_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(Decimal::new(value).as_bytes());
}

/// An integer's decimal digits, formatted on the stack.
pub(crate) struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    /// The digits of `value`.
    pub(crate) fn new(mut value: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        Decimal { digits, start }
    }

    /// The digits, as ASCII.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }
}

/// The whole reply envelope for serde_json: what [`write_reply`] must write byte for byte.
#[cfg(test)]
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
    if let Some(incoming) = single_pass::decode(line) {
        return Ok(incoming);
    }
    decode_in_full(line)
}

/// The single pass alone: `None` where it gives up. For the fuzzer, which checks that it agrees
/// with [`decode_in_full`] wherever it accepts a line.
#[doc(hidden)]
pub fn decode_single_pass(line: &str) -> Option<Incoming<'_>> {
    single_pass::decode(line)
}

/// The full decoder: every line the single pass gives up on, and every error message. Public for
/// the fuzzer only; [`decode`] is the entry point.
#[doc(hidden)]
pub fn decode_in_full(line: &str) -> Result<Incoming<'_>, String> {
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

/// The single pass over a well-formed request line (see the module documentation). It returns
/// `None` as soon as anything is unusual; it never produces an error of its own.
mod single_pass {
    use super::Incoming;
    use crate::transitions::Request;
    use serde::de::value::{BorrowedStrDeserializer, StringDeserializer};
    use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
    use std::borrow::Cow;
    use std::fmt;

    /// Decodes `line` in one pass, or `None` to leave it to the full decoder.
    pub(super) fn decode(line: &str) -> Option<Incoming<'_>> {
        let mut deserializer = serde_json::Deserializer::from_str(line);
        let incoming = (&mut deserializer).deserialize_map(Envelope).ok()?;
        deserializer.end().ok()?;
        Some(incoming)
    }

    /// The error that ends the single pass; its text is never shown.
    fn give_up<E: de::Error>() -> E {
        E::custom("left to the full decoder")
    }

    /// A string, borrowed from the line when it has no escapes.
    struct Text;

    impl<'de> DeserializeSeed<'de> for Text {
        type Value = Cow<'de, str>;

        fn deserialize<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for Text {
        type Value = Cow<'de, str>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }

        fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(text))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(text.to_owned()))
        }

        fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
            Ok(Cow::Owned(text))
        }
    }

    /// `{"src": string, "dest": string, "body": {…}, …}`, keys in any order, each at most once;
    /// other keys are skipped, as the full decoder skips them.
    struct Envelope;

    impl<'de> Visitor<'de> for Envelope {
        type Value = Incoming<'de>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an envelope")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Incoming<'de>, A::Error> {
            let mut src = None;
            let mut dest = None;
            let mut body = None;
            while let Some(key) = map.next_key_seed(Text)? {
                let slot = match &*key {
                    "src" => &mut src,
                    "dest" => &mut dest,
                    "body" => {
                        if body.is_some() {
                            return Err(give_up());
                        }
                        body = Some(map.next_value_seed(Body)?);
                        continue;
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                };
                if slot.is_some() {
                    return Err(give_up());
                }
                *slot = Some(map.next_value_seed(Text)?);
            }
            let (Some(src), Some((msg_id, request))) = (src, body) else {
                return Err(give_up());
            };
            Ok(Incoming {
                src: Some(src),
                dest,
                msg_id,
                request: Ok(request),
            })
        }
    }

    /// `{"type": string, …}` or `{"msg_id": integer, "type": string, …}`: once the type is known,
    /// the rest of the body is that type's fields (with `msg_id` anywhere among them).
    struct Body;

    impl<'de> DeserializeSeed<'de> for Body {
        type Value = (Option<u64>, Request);

        fn deserialize<D: Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for Body {
        type Value = (Option<u64>, Request);

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a request body")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut msg_id = None;
            let kind = loop {
                let key = map.next_key_seed(Text)?.ok_or_else(give_up::<A::Error>)?;
                match &*key {
                    "type" => break map.next_value_seed(Text)?,
                    "msg_id" if msg_id.is_none() => msg_id = Some(map.next_value::<u64>()?),
                    _ => return Err(give_up()),
                }
            };
            let fields = Fields {
                map: &mut map,
                msg_id: &mut msg_id,
            };
            let request =
                Request::decode_fields(&kind, fields).ok_or_else(give_up::<A::Error>)??;
            Ok((msg_id, request))
        }
    }

    /// The rest of a body, after its `type`, as a map of the type's fields: `msg_id` is taken
    /// out on the way, a second `type` or `msg_id` gives up.
    struct Fields<'m, A> {
        map: &'m mut A,
        msg_id: &'m mut Option<u64>,
    }

    impl<'de, A: MapAccess<'de>> Deserializer<'de> for Fields<'_, A> {
        type Error = A::Error;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
            visitor.visit_map(self)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
            identifier ignored_any
        }
    }

    impl<'de, A: MapAccess<'de>> MapAccess<'de> for Fields<'_, A> {
        type Error = A::Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, A::Error> {
            loop {
                let Some(key) = self.map.next_key_seed(Text)? else {
                    return Ok(None);
                };
                match &*key {
                    "msg_id" if self.msg_id.is_none() => {
                        *self.msg_id = Some(self.map.next_value::<u64>()?);
                    }
                    "msg_id" | "type" => return Err(give_up()),
                    _ => {
                        return match key {
                            Cow::Borrowed(key) => seed
                                .deserialize(BorrowedStrDeserializer::new(key))
                                .map(Some),
                            Cow::Owned(key) => {
                                seed.deserialize(StringDeserializer::new(key)).map(Some)
                            }
                        }
                    }
                }
            }
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(
            &mut self,
            seed: V,
        ) -> Result<V::Value, A::Error> {
            self.map.next_value_seed(seed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replies::*;
    use crate::state::{Environment, RestoreRecord};
    use crate::transitions::Reply;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Whenever the single pass accepts a line, the full decoder reads exactly the same from it.
    /// Returns whether the single pass accepted it.
    fn single_pass_agrees(line: &str) -> bool {
        let Some(fast) = single_pass::decode(line) else {
            return false;
        };
        let full = decode_in_full(line)
            .unwrap_or_else(|e| panic!("the full decoder refuses {line:?}: {e}"));
        assert_eq!(fast.src, full.src, "src of {line:?}");
        assert_eq!(fast.dest, full.dest, "dest of {line:?}");
        assert_eq!(fast.msg_id, full.msg_id, "msg_id of {line:?}");
        assert_eq!(fast.request, full.request, "request of {line:?}");
        true
    }

    #[test]
    fn single_pass_agrees_with_the_full_decoder_on_the_seeds() {
        let seeds = concat!(
            include_str!("../examples/task.jsonl"),
            include_str!("../fuzz/seeds.jsonl")
        );
        let accepted = seeds.lines().filter(|l| single_pass_agrees(l)).count();
        assert!(
            accepted >= 20,
            "only {accepted} seed lines took the single pass"
        );
        // What the fuzzer found, when its corpus is around (it is not checked in).
        let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/decode");
        if let Ok(entries) = std::fs::read_dir(corpus) {
            for entry in entries.flatten() {
                let bytes = std::fs::read(entry.path()).unwrap_or_default();
                if let Ok(line) = std::str::from_utf8(&bytes) {
                    single_pass_agrees(line);
                }
            }
        }
    }

    #[test]
    fn single_pass_takes_the_usual_shapes() {
        for line in [
            r#"{"src":"c1","dest":"n1","body":{"type":"disable_feature","msg_id":1,"feature":"new_checkout"}}"#,
            r#"{"dest":"n1","body":{"msg_id":2,"type":"switch_traffic","from":"green","to":"blue"},"src":"c1"}"#,
            r#" { "src" : "c\u0031" , "body" : { "type" : "status" } , "id" : [ 1 , { } ] } "#,
            r#"{"src":"c1","dest":"n1","body":{"type":"init","msg_id":0,"node_id":"n1","node_ids":["n1"]}}"#,
        ] {
            assert!(single_pass_agrees(line), "{line}");
        }
        let request = Request::History { limit: Some(3) };
        assert!(single_pass_agrees(&encode_request(
            "a",
            "b",
            Some(7),
            &request
        )));
        // Given up: `type` after another field, a duplicate, an unknown type, bad values.
        for line in [
            r#"{"src":"c1","body":{"feature":"f","type":"disable_feature","msg_id":1}}"#,
            r#"{"src":"c1","src":"c2","body":{"type":"status","msg_id":1}}"#,
            r#"{"src":"c1","body":{"type":"status","msg_id":1,"type":"status"}}"#,
            r#"{"src":"c1","body":{"type":"nope","msg_id":1}}"#,
            r#"{"src":"c1","body":{"type":"rollback","msg_id":1,"version":0}}"#,
            r#"{"src":"c1","body":{"type":"status","msg_id":-1}}"#,
            r#"{"src":null,"body":{"type":"status","msg_id":1}}"#,
            r#"{"src":"c1","body":{"type":"status","msg_id":1}} x"#,
        ] {
            assert!(single_pass::decode(line).is_none(), "{line}");
        }
    }

    /// JSON values of many types, some of them what a field expects.
    fn value() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            r#""disable_feature""#,
            r#""switch_traffic""#,
            r#""status""#,
            r#""init""#,
            r#""history""#,
            r#""rollback""#,
            r#""restore""#,
            r#""new_checkout""#,
            r#""green""#,
            r#""blue""#,
            r#""n1""#,
            r#""c\"1""#,
            r#""disable\u005ffeature""#,
            r#""""#,
            "0",
            "1",
            "3",
            "-1",
            "1.5",
            "1e3",
            "4294967296",
            "18446744073709551616",
            "null",
            "true",
            "[]",
            r#"["n1"]"#,
            r#"["n1",2]"#,
            "{}",
            r#"{"a":[1,{"b":null}]}"#,
        ])
        .prop_map(str::to_owned)
    }

    /// A well-formed request body, as (key, JSON value) pairs with `type` first.
    fn valid_body() -> impl Strategy<Value = Vec<(String, String)>> {
        let fields: Vec<(&str, Vec<(&str, &str)>)> = vec![
            (
                "init",
                vec![("node_id", r#""n1""#), ("node_ids", r#"["n1","n2"]"#)],
            ),
            ("rollback", vec![("version", "2")]),
            ("migrate", vec![("version", "3")]),
            ("disable_feature", vec![("feature", r#""new_checkout""#)]),
            ("enable_feature", vec![("feature", r#""new_checkout""#)]),
            (
                "switch_traffic",
                vec![("from", r#""green""#), ("to", r#""blue""#)],
            ),
            ("restore", vec![("backup", r#""users_backup_20240115""#)]),
            ("history", vec![("limit", "3")]),
            ("history", vec![]),
            ("status", vec![]),
        ];
        (prop::sample::select(fields), 0u64..5, any::<bool>()).prop_map(
            |((kind, fields), id, with_id)| {
                let mut body = vec![("type".to_owned(), format!("\"{kind}\""))];
                if with_id {
                    body.push(("msg_id".to_owned(), id.to_string()));
                }
                body.extend(
                    fields
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned())),
                );
                body
            },
        )
    }

    /// One change to an object's entries.
    #[derive(Debug, Clone)]
    enum Mutation {
        Swap(prop::sample::Index, prop::sample::Index),
        Duplicate(prop::sample::Index),
        Remove(prop::sample::Index),
        Revalue(prop::sample::Index, String),
        Insert(prop::sample::Index, &'static str, String),
        EscapeKey(prop::sample::Index),
    }

    fn mutation(keys: Vec<&'static str>) -> impl Strategy<Value = Mutation> {
        let index = any::<prop::sample::Index>;
        prop_oneof![
            (index(), index()).prop_map(|(a, b)| Mutation::Swap(a, b)),
            index().prop_map(Mutation::Duplicate),
            index().prop_map(Mutation::Remove),
            (index(), value()).prop_map(|(a, v)| Mutation::Revalue(a, v)),
            (index(), prop::sample::select(keys), value())
                .prop_map(|(a, k, v)| Mutation::Insert(a, k, v)),
            index().prop_map(Mutation::EscapeKey),
        ]
    }

    fn mutate(entries: &mut Vec<(String, String)>, mutations: Vec<Mutation>) {
        for mutation in mutations {
            if entries.is_empty() {
                if let Mutation::Insert(_, key, value) = mutation {
                    entries.push((key.to_owned(), value));
                }
                continue;
            }
            let len = entries.len();
            match mutation {
                Mutation::Swap(a, b) => entries.swap(a.index(len), b.index(len)),
                Mutation::Duplicate(a) => {
                    let entry = entries[a.index(len)].clone();
                    entries.push(entry);
                }
                Mutation::Remove(a) => {
                    entries.remove(a.index(len));
                }
                Mutation::Revalue(a, value) => entries[a.index(len)].1 = value,
                Mutation::Insert(a, key, value) => {
                    entries.insert(a.index(len + 1), (key.to_owned(), value))
                }
                Mutation::EscapeKey(a) => {
                    let key = &mut entries[a.index(len)].0;
                    if let Some(first) = key.chars().next().filter(char::is_ascii_alphabetic) {
                        *key = format!("\\u{:04x}{}", u32::from(first), &key[1..]);
                    }
                }
            }
        }
    }

    fn render(entries: &[(String, String)], spaced: bool) -> String {
        let parts: Vec<String> = entries
            .iter()
            .map(|(key, value)| format!("\"{key}\":{value}"))
            .collect();
        format!("{{{}}}", parts.join(if spaced { " , " } else { "," }))
    }

    /// Request lines: mostly well-formed, with a few mutations in the body and the envelope.
    fn line() -> impl Strategy<Value = String> {
        let body_keys = vec![
            "type", "msg_id", "feature", "from", "version", "limit", "junk",
        ];
        let envelope_keys = vec!["src", "dest", "body", "id"];
        (
            valid_body(),
            prop::collection::vec(mutation(body_keys), 0..3),
            prop::collection::vec(mutation(envelope_keys), 0..2),
            any::<bool>(),
        )
            .prop_map(|(mut body, body_mutations, envelope_mutations, spaced)| {
                mutate(&mut body, body_mutations);
                let mut envelope = vec![
                    ("src".to_owned(), r#""c1""#.to_owned()),
                    ("dest".to_owned(), r#""n1""#.to_owned()),
                    ("body".to_owned(), render(&body, spaced)),
                ];
                mutate(&mut envelope, envelope_mutations);
                render(&envelope, spaced)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        #[test]
        fn single_pass_agrees_with_the_full_decoder(line in line()) {
            single_pass_agrees(&line);
        }
    }

    fn reply_cases() -> Vec<Result<Reply, Refusal>> {
        let mut flags = BTreeMap::new();
        flags.insert("new_checkout".to_owned(), false);
        flags.insert("we\"ird\\flag\u{1}é".to_owned(), true);
        let status = |restore| {
            Ok(Reply::StatusOk(StatusOk {
                schema_version: 2,
                live_environment: Environment::Blue,
                flags: flags.clone(),
                restore,
            }))
        };
        let disabled = FeatureDisabled {
            feature: "new_checkout".to_owned(),
            rolled_back_instant: true,
        };
        vec![
            Ok(Reply::InitOk(InitOk)),
            Ok(Reply::FeatureDisabled(disabled.clone())),
            Ok(Reply::TrafficSwitched(TrafficSwitched {
                current_environment: Environment::Green,
                downtime_seconds: 0,
            })),
            Ok(Reply::RollbackComplete(RollbackComplete {
                rolled_back_from: 3,
                rolled_back_to: 2,
                duration_seconds: u64::MAX,
            })),
            status(None),
            status(Some(RestoreRecord {
                backup: "b\n".to_owned(),
                restored_rows: 1,
                schema_version: 2,
            })),
            Ok(Reply::HistoryOk(HistoryOk { entries: vec![] })),
            Ok(Reply::HistoryOk(HistoryOk {
                entries: vec![HistoryEntry {
                    seq: 1,
                    src: "a\"b".to_owned(),
                    msg_id: 9,
                    request: Request::DisableFeature {
                        feature: "new_checkout".to_owned(),
                    },
                    reply: Ok(Reply::FeatureDisabled(disabled)),
                }],
            })),
            Err(Refusal::MalformedRequest(
                "quotes \" and \\ and \u{7}\u{1f} control, tab\t, é ✓".to_owned(),
            )),
            Err(Refusal::PreconditionFailed(String::new())),
        ]
    }

    #[test]
    fn write_reply_writes_what_serde_json_writes() {
        for reply in reply_cases() {
            for (src, dest) in [("n1", "c1"), ("n\"1\\", "c\u{0}1\u{7f}é"), ("", "")] {
                for in_reply_to in [None, Some(0), Some(42), Some(u64::MAX)] {
                    let mut out = b"previous line\n".to_vec();
                    let (want, body) = match &reply {
                        Ok(reply) => {
                            write_reply(&mut out, src, dest, in_reply_to, reply);
                            let envelope = EnvelopeOut {
                                src,
                                dest,
                                body: BodyOut::new(in_reply_to, reply),
                            };
                            let body = serde_json::to_vec(&BodyOut::new(in_reply_to, reply));
                            (serde_json::to_vec(&envelope).unwrap(), body.unwrap())
                        }
                        Err(refusal) => {
                            write_reply(&mut out, src, dest, in_reply_to, refusal);
                            let envelope = EnvelopeOut {
                                src,
                                dest,
                                body: BodyOut::new(in_reply_to, refusal),
                            };
                            let body = serde_json::to_vec(&BodyOut::new(in_reply_to, refusal));
                            (serde_json::to_vec(&envelope).unwrap(), body.unwrap())
                        }
                    };
                    let line = out.strip_prefix(b"previous line\n").unwrap();
                    assert_eq!(
                        String::from_utf8_lossy(line),
                        format!("{}\n", String::from_utf8_lossy(&want))
                    );
                    let mut written = Vec::new();
                    match &reply {
                        Ok(reply) => assert!(write_body(&mut written, in_reply_to, reply)),
                        Err(refusal) => assert!(write_body(&mut written, in_reply_to, refusal)),
                    }
                    assert_eq!(written, body);
                }
            }
        }
    }

    #[test]
    fn decimal_digits() {
        for value in [0, 1, 9, 10, 99, 100, 12345, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(Decimal::new(value).as_bytes(), value.to_string().as_bytes());
        }
    }
}
