//! Decoding request lines. A well-formed request whose body starts with `type` (after an
//! optional `msg_id`) is decoded in a single pass ([`super::single_pass`]): the envelope's keys
//! are read in order, and once the body's `type` is known the rest of the body goes straight into
//! the fields of that one message type ([`Request::decode_fields`]), with `msg_id` and `dry_run`
//! picked out on the way. Anything else — another key order, a missing, unknown or ill-typed
//! field, an unknown type, a duplicate key, bad JSON — gives that up, and the line is decoded
//! again by the full decoder here: the envelope with the body kept as raw JSON, then the body's
//! `type`, `msg_id` and `dry_run`, then its keys against the fields the type accepts, then the
//! fields, and on failure once more to name the offending field. Both produce the same result for
//! every line the single pass accepts; every error comes from the full decoder.

use super::incoming::Incoming;
use crate::core::transitions::Request;
use crate::protocol::{quote, Refusal};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// The longest input line accepted, in bytes (1 MiB). Longer lines are skipped with a diagnostic.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// The body keys every request may carry besides its type's fields.
pub const COMMON_FIELDS: [&str; 3] = ["type", "msg_id", "dry_run"];

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
    #[serde(borrow)]
    dry_run: Option<&'a RawValue>,
}

/// Decodes one line (without its line ending).
///
/// # Errors
/// A one-line description when the line is not a JSON object with string `src`/`dest`: nothing
/// can be answered then.
pub fn decode(line: &str) -> Result<Incoming<'_>, String> {
    if let Some(incoming) = super::single_pass::decode(line) {
        return Ok(incoming);
    }
    decode_in_full(line)
}

/// The single pass alone: `None` where it gives up. For the fuzzer, which checks that it agrees
/// with [`decode_in_full`] wherever it accepts a line.
#[doc(hidden)]
pub fn decode_single_pass(line: &str) -> Option<Incoming<'_>> {
    super::single_pass::decode(line)
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
        dry_run: false,
        request: Err(Refusal::MalformedRequest(String::new())),
    };
    incoming.request = match envelope.body {
        None => Err(malformed(
            "the envelope has no \"body\"; send {\"src\":…,\"dest\":…,\"body\":{\"type\":…,\"msg_id\":…}}"
                .to_owned(),
        )),
        Some(body) => decode_body(body.get(), &mut incoming.msg_id, &mut incoming.dry_run),
    };
    if incoming.src.is_none() && incoming.request.is_ok() {
        incoming.request = Err(malformed(
            "the envelope has no \"src\", so there is no one to reply to".to_owned(),
        ));
    }
    Ok(incoming)
}

fn decode_body(
    body: &str,
    msg_id: &mut Option<u64>,
    dry_run: &mut bool,
) -> Result<Request, Refusal> {
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
                quote(raw.get())
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
            quote(kind.get()),
            Request::TYPES.join(", ")
        ))
    })?;
    let Some(fields) = Request::fields(&kind) else {
        return Err(Refusal::NotSupported(format!(
            "unknown message type \"{}\"; supported types: {}",
            quote(&kind),
            Request::TYPES.join(", ")
        )));
    };
    if let Some(raw) = head.dry_run {
        *dry_run = serde_json::from_str::<bool>(raw.get()).map_err(|_| {
            malformed(format!(
                "dry_run must be true or false, not {}",
                quote(raw.get())
            ))
        })?;
    }
    let keys: BTreeMap<Cow<'_, str>, IgnoredAny> = serde_json::from_str(body).map_err(|e| {
        malformed(format!(
            "the body must be a JSON object: {}",
            without_position(&e)
        ))
    })?;
    if let Some(unknown) = keys
        .keys()
        .find(|k| !COMMON_FIELDS.contains(&k.as_ref()) && !fields.contains(&k.as_ref()))
    {
        let mut accepted: Vec<&str> = fields.to_vec();
        accepted.extend(["msg_id", "dry_run"]);
        return Err(malformed(format!(
            "unknown field \"{}\" in a {kind} request; {kind} accepts {}",
            quote(unknown),
            accepted.join(", ")
        )));
    }
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

#[cfg(test)]
mod tests {
    use super::super::single_pass;
    use super::*;
    use proptest::prelude::*;

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
        assert_eq!(fast.dry_run, full.dry_run, "dry_run of {line:?}");
        assert_eq!(fast.request, full.request, "request of {line:?}");
        true
    }

    #[test]
    fn single_pass_agrees_with_the_full_decoder_on_the_seeds() {
        let seeds = concat!(
            include_str!("../../examples/task.jsonl"),
            include_str!("../../fuzz/seeds.jsonl")
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
        let request = Request::History {
            limit: Some(3),
            after: None,
        };
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
            "type", "msg_id", "feature", "from", "version", "limit", "junk", "dry_run",
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
}
