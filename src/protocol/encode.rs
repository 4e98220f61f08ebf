//! The one reply encoder. Every reply body — on the wire, in the journal, in the retry memory and
//! in the audit trail — is written by [`write_body`], and every reply line by [`write_reply`]:
//! `{"src":…,"dest":…,"body":{"type":…,"in_reply_to":…,…}}`, `type` first and `in_reply_to`
//! second, byte for byte what serde_json writes for the same envelope. The envelope's fixed keys
//! are literals, strings are escaped only when they need it, and the body's fields go through
//! serde_json.

use serde::ser::{SerializeMap, Serializer};

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

/// Appends one reply line whose body is already encoded (by [`write_body`]): the envelope plus
/// `\n`.
pub fn write_reply_raw(out: &mut Vec<u8>, src: &str, dest: &str, body: &[u8]) {
    out.extend_from_slice(b"{\"src\":");
    write_str(out, src);
    out.extend_from_slice(b",\"dest\":");
    write_str(out, dest);
    out.extend_from_slice(b",\"body\":");
    out.extend_from_slice(body);
    out.extend_from_slice(b"}\n");
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

/// Appends a reply body `{"type":…,"in_reply_to":…,…}`: the bytes serde_json writes for a
/// map of `type`, `in_reply_to` and the body's fields. Returns `false`, having written part of it, if a field failed to serialize
/// (which cannot happen for the reply types here: string keys, finite numbers).
pub fn write_body<B: ReplyBody + ?Sized>(
    out: &mut Vec<u8>,
    in_reply_to: Option<u64>,
    body: &B,
) -> bool {
    out.extend_from_slice(b"{\"type\":");
    write_str(out, body.type_name());
    if let Some(id) = in_reply_to {
        out.extend_from_slice(b",\"in_reply_to\":");
        out.extend_from_slice(Decimal::new(id).as_bytes());
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

/// A reply body encoded by [`write_body`], as a string.
pub fn body_string<B: ReplyBody + ?Sized>(in_reply_to: Option<u64>, body: &B) -> String {
    let mut out = Vec::with_capacity(128);
    let written = write_body(&mut out, in_reply_to, body);
    debug_assert!(written, "reply bodies always serialize");
    String::from_utf8(out).unwrap_or_default()
}

/// Writes a JSON string as serde_json does: quoted, escaping `"`, `\\` and control characters.
pub fn write_str(out: &mut Vec<u8>, text: &str) {
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

/// An integer's decimal digits, formatted on the stack.
pub struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    /// The digits of `value`.
    pub fn new(mut value: u64) -> Self {
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
    pub fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::replies::*;
    use crate::protocol::{Environment, Refusal, RestoreRecord};
    use serde::Serialize;
    use std::collections::BTreeMap;

    /// A reply body as it goes on the wire: `type`, `in_reply_to`, then the body's fields. The
    /// serde view of what [`write_body`] writes.
    struct BodyOut<'a, B: ReplyBody + ?Sized> {
        in_reply_to: Option<u64>,
        body: &'a B,
    }

    impl<'a, B: ReplyBody + ?Sized> BodyOut<'a, B> {
        /// The body of a reply to `in_reply_to`.
        fn new(in_reply_to: Option<u64>, body: &'a B) -> Self {
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

    /// The whole reply envelope for serde_json: what [`write_reply`] must write byte for byte.
    #[derive(Serialize)]
    #[serde(bound = "")]
    struct EnvelopeOut<'a, B: ReplyBody + ?Sized> {
        src: &'a str,
        dest: &'a str,
        body: BodyOut<'a, B>,
    }

    fn check<B: ReplyBody>(body: &B) {
        for (src, dest) in [("n1", "c1"), ("n\"1\\", "c\u{0}1\u{7f}é"), ("", "")] {
            for in_reply_to in [None, Some(0), Some(42), Some(u64::MAX)] {
                let mut out = b"previous line\n".to_vec();
                write_reply(&mut out, src, dest, in_reply_to, body);
                let envelope = EnvelopeOut {
                    src,
                    dest,
                    body: BodyOut::new(in_reply_to, body),
                };
                let want = serde_json::to_vec(&envelope).unwrap();
                let line = out.strip_prefix(b"previous line\n").unwrap();
                assert_eq!(
                    String::from_utf8_lossy(line),
                    format!("{}\n", String::from_utf8_lossy(&want))
                );
                let encoded = body_string(in_reply_to, body);
                assert_eq!(
                    encoded.as_bytes(),
                    serde_json::to_vec(&BodyOut::new(in_reply_to, body)).unwrap()
                );
                let mut raw = Vec::new();
                write_reply_raw(&mut raw, src, dest, encoded.as_bytes());
                assert_eq!(raw, line);
            }
        }
    }

    #[test]
    fn write_reply_writes_what_serde_json_writes() {
        let mut flags = BTreeMap::new();
        flags.insert("new_checkout".to_owned(), false);
        flags.insert("we\"ird\\flag\u{1}é".to_owned(), true);
        check(&InitOk);
        check(&FeatureDisabled {
            feature: "new_checkout".to_owned(),
            rolled_back_instant: true,
        });
        check(&TrafficSwitched {
            current_environment: Environment::Green,
            downtime_seconds: 0,
        });
        check(&RollbackComplete {
            rolled_back_from: 3,
            rolled_back_to: 2,
            duration_seconds: Seconds::Modelled(u64::MAX),
        });
        check(&RestoreComplete {
            restored_rows: 1,
            duration_seconds: Seconds::Measured(1234),
        });
        check(&StatusOk::new(
            2,
            Environment::Blue,
            flags.clone(),
            Some(RestoreRecord {
                backup: "b\n".to_owned(),
                restored_rows: 1,
                schema_version: 2,
                kept: Some("app_before_restore_1".to_owned()),
            }),
        ));
        check(&StatusOk::new(2, Environment::Blue, flags, None));
        check(&HistoryOk { entries: vec![] });
        check(&Refusal::MalformedRequest(
            "quotes \" and \\ and \u{7}\u{1f} control, tab\t, é ✓".to_owned(),
        ));
        check(&Refusal::PreconditionFailed(String::new()));
    }

    #[test]
    fn decimal_digits() {
        for value in [0, 1, 9, 10, 99, 100, 12345, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(Decimal::new(value).as_bytes(), value.to_string().as_bytes());
        }
    }
}
