//! The one reply encoder. Every reply body — on the wire, in the journal, in the retry memory and
//! in the audit trail — is written by [`write_body`], and every reply line by [`write_reply`]:
//! `{"src":…,"dest":…,"body":{"type":…,"in_reply_to":…,…}}`, `type` first and `in_reply_to`
//! second, byte for byte what serde_json writes for the same envelope. The envelope's fixed keys
//! are literals, strings are escaped only when they need it, and the body's fields go through a
//! plain serializer that writes what serde_json's compact format writes for strings, integers,
//! booleans and structures of them (anything else is written by serde_json itself).

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
/// map of `type`, `in_reply_to` and the body's fields. Returns `false`, having written part of
/// it, if a field failed to serialize (which cannot happen for the reply types here: string
/// keys, finite numbers).
pub fn write_body<B: ReplyBody + ?Sized>(
    out: &mut Vec<u8>,
    in_reply_to: Option<u64>,
    body: &B,
) -> bool {
    write_body_to(out, in_reply_to, body)
}

/// A reply body encoded by [`write_body`], as a string.
pub fn body_string<B: ReplyBody + ?Sized>(in_reply_to: Option<u64>, body: &B) -> String {
    let mut out = String::with_capacity(128);
    body_into(&mut out, in_reply_to, body);
    out
}

/// [`body_string`] appended to `out` (a string kept for reuse, say).
pub fn body_into<B: ReplyBody + ?Sized>(out: &mut String, in_reply_to: Option<u64>, body: &B) {
    let written = write_body_to(out, in_reply_to, body);
    debug_assert!(written, "reply bodies always serialize");
}

/// [`write_body`] into bytes or a string. The fields go through the [`plain`] serializer; a
/// field it does not write (a float, say) has the whole body written again through serde_json.
fn write_body_to<O: Output, B: ReplyBody + ?Sized>(
    out: &mut O,
    in_reply_to: Option<u64>,
    body: &B,
) -> bool {
    let start = out.len();
    out.put("{\"type\":");
    write_str_to(out, body.type_name());
    if let Some(id) = in_reply_to {
        out.put(",\"in_reply_to\":");
        out.put(itoa::Buffer::new().format(id));
    }
    let head = out.len();
    if body.serialize_fields(&mut plain::Map::new(out)).is_ok() {
        out.put("}");
        return true;
    }
    out.truncate(head);
    // The fields, as serde_json writes a map of them: `{"a":1,"b":2}` continues and closes the
    // body as `,"a":1,"b":2}`, and `{}` just closes it.
    let mut fields = Vec::new();
    let mut serializer = serde_json::Serializer::new(&mut fields);
    let written = serializer.serialize_map(None).and_then(|mut map| {
        body.serialize_fields(&mut map)?;
        map.end()
    });
    let Ok(fields) = (match written {
        Ok(()) => String::from_utf8(fields).map_err(|_| ()),
        Err(_) => Err(()),
    }) else {
        out.truncate(start);
        return false;
    };
    match fields.strip_prefix('{') {
        Some("}") | None => out.put("}"),
        Some(rest) => {
            out.put(",");
            out.put(rest);
        }
    }
    true
}

/// `value` as JSON appended to `out`: the text serde_json writes for it, through the plain
/// serializer, or serde_json itself for what that one declines (a float, say).
pub fn json_into<T: serde::Serialize + ?Sized>(out: &mut String, value: &T) {
    let start = out.len();
    if value.serialize(plain::Value::new(out)).is_err() {
        out.truncate(start);
        if let Ok(text) = serde_json::to_string(value) {
            out.push_str(&text);
        }
    }
}

/// Writes a JSON string as serde_json does: quoted, escaping `"`, `\\` and control characters.
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    write_str_to(out, text);
}

/// [`write_str`] into bytes or a string.
fn write_str_to<O: Output>(out: &mut O, text: &str) {
    if first_special(text.as_bytes()).is_none() {
        out.put("\"");
        out.put(text);
        out.put("\"");
    } else {
        // Writing a string cannot fail.
        out.put(&serde_json::to_string(text).unwrap_or_default());
    }
}

/// Where the first byte a JSON string cannot carry as it is — `"`, `\\` or a control
/// character — is in `bytes`, looked for eight bytes at a time.
#[inline]
pub fn first_special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    /// The high bit of each byte of `v` below `n` (exact for the lowest such byte, which is all
    /// that is read: a borrow can only mark bytes above it).
    fn below(v: u64, n: u8) -> u64 {
        v.wrapping_sub(ONES * u64::from(n)) & !v & HIGHS
    }
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word);
        let found = below(v ^ (ONES * u64::from(b'"')), 1)
            | below(v ^ (ONES * u64::from(b'\\')), 1)
            | below(v, 0x20);
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    bytes[at..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|i| at + i)
}

/// Where the encoder writes: a byte buffer (a reply line) or a string (a body kept as text,
/// which then needs no UTF-8 check).
trait Output {
    /// Appends `text`.
    fn put(&mut self, text: &str);
    /// How many bytes are written.
    fn len(&self) -> usize;
    /// Cuts what was written back to `len` bytes (a length it had, so a char boundary).
    fn truncate(&mut self, len: usize);
}

impl Output for Vec<u8> {
    #[inline]
    fn put(&mut self, text: &str) {
        self.extend_from_slice(text.as_bytes());
    }
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn truncate(&mut self, len: usize) {
        Vec::truncate(self, len);
    }
}

impl Output for String {
    #[inline]
    fn put(&mut self, text: &str) {
        self.push_str(text);
    }
    fn len(&self) -> usize {
        String::len(self)
    }
    fn truncate(&mut self, len: usize) {
        String::truncate(self, len);
    }
}

/// A serde serializer for the plainest values — strings, integers, booleans, null, unit
/// variants, and structs, maps, sequences and variants of them — writing exactly what
/// serde_json's compact format writes. Anything else (a float, a non-string map key, bytes, a
/// 128-bit integer) is an error, and the body is written again through serde_json.
mod plain {
    use super::{write_str_to, Output};
    use serde::ser::{self, Serialize};
    use std::fmt;

    /// "Not plain: let serde_json write it."
    #[derive(Debug)]
    pub struct NotPlain;

    impl fmt::Display for NotPlain {
        fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("left to serde_json")
        }
    }

    impl std::error::Error for NotPlain {}

    impl ser::Error for NotPlain {
        fn custom<T: fmt::Display>(_: T) -> Self {
            NotPlain
        }
    }

    /// The body's fields: each entry is written as `,"key":value` (`type` always comes before).
    pub struct Map<'o, O> {
        out: &'o mut O,
    }

    impl<'o, O: Output> Map<'o, O> {
        /// Fields appended to `out`.
        pub fn new(out: &'o mut O) -> Self {
            Map { out }
        }
    }

    impl<O: Output> ser::SerializeMap for Map<'_, O> {
        type Ok = ();
        type Error = NotPlain;

        fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), NotPlain> {
            self.out.put(",");
            key.serialize(Key { out: self.out })
        }

        fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotPlain> {
            self.out.put(":");
            value.serialize(Value { out: self.out })
        }

        fn end(self) -> Result<(), NotPlain> {
            Ok(())
        }
    }

    /// A value.
    pub struct Value<'o, O> {
        out: &'o mut O,
    }

    impl<'o, O: Output> Value<'o, O> {
        /// A value appended to `out`.
        pub fn new(out: &'o mut O) -> Self {
            Value { out }
        }
    }

    /// An object or array being written: whether its first element is still to come.
    pub struct Compound<'o, O> {
        out: &'o mut O,
        first: bool,
        /// What closes it: `}`, `]`, or `]}` / `}}` for a variant's array or object.
        close: &'static str,
    }

    impl<'o, O: Output> Compound<'o, O> {
        fn open(out: &'o mut O, variant: Option<&str>, open: &str, close: &'static str) -> Self {
            if let Some(variant) = variant {
                out.put("{");
                write_str_to(out, variant);
                out.put(":");
            }
            out.put(open);
            Compound {
                out,
                first: true,
                close,
            }
        }

        fn comma(&mut self) {
            if !self.first {
                self.out.put(",");
            }
            self.first = false;
        }

        fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotPlain> {
            self.comma();
            value.serialize(Value {
                out: &mut *self.out,
            })
        }

        fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), NotPlain> {
            self.comma();
            write_str_to(self.out, key);
            self.out.put(":");
            value.serialize(Value {
                out: &mut *self.out,
            })
        }

        fn close(self) -> Result<(), NotPlain> {
            self.out.put(self.close);
            Ok(())
        }
    }

    impl<'o, O: Output> ser::Serializer for Value<'o, O> {
        type Ok = ();
        type Error = NotPlain;
        type SerializeSeq = Compound<'o, O>;
        type SerializeTuple = Compound<'o, O>;
        type SerializeTupleStruct = Compound<'o, O>;
        type SerializeTupleVariant = Compound<'o, O>;
        type SerializeMap = Compound<'o, O>;
        type SerializeStruct = Compound<'o, O>;
        type SerializeStructVariant = Compound<'o, O>;

        fn serialize_bool(self, v: bool) -> Result<(), NotPlain> {
            self.out.put(if v { "true" } else { "false" });
            Ok(())
        }
        fn serialize_i8(self, v: i8) -> Result<(), NotPlain> {
            self.serialize_i64(i64::from(v))
        }
        fn serialize_i16(self, v: i16) -> Result<(), NotPlain> {
            self.serialize_i64(i64::from(v))
        }
        fn serialize_i32(self, v: i32) -> Result<(), NotPlain> {
            self.serialize_i64(i64::from(v))
        }
        fn serialize_i64(self, v: i64) -> Result<(), NotPlain> {
            self.out.put(itoa::Buffer::new().format(v));
            Ok(())
        }
        fn serialize_u8(self, v: u8) -> Result<(), NotPlain> {
            self.serialize_u64(u64::from(v))
        }
        fn serialize_u16(self, v: u16) -> Result<(), NotPlain> {
            self.serialize_u64(u64::from(v))
        }
        fn serialize_u32(self, v: u32) -> Result<(), NotPlain> {
            self.serialize_u64(u64::from(v))
        }
        fn serialize_u64(self, v: u64) -> Result<(), NotPlain> {
            self.out.put(itoa::Buffer::new().format(v));
            Ok(())
        }
        fn serialize_f32(self, _: f32) -> Result<(), NotPlain> {
            Err(NotPlain)
        }
        fn serialize_f64(self, _: f64) -> Result<(), NotPlain> {
            Err(NotPlain)
        }
        fn serialize_char(self, v: char) -> Result<(), NotPlain> {
            write_str_to(self.out, v.encode_utf8(&mut [0; 4]));
            Ok(())
        }
        fn serialize_str(self, v: &str) -> Result<(), NotPlain> {
            write_str_to(self.out, v);
            Ok(())
        }
        fn serialize_bytes(self, _: &[u8]) -> Result<(), NotPlain> {
            Err(NotPlain)
        }
        fn serialize_none(self) -> Result<(), NotPlain> {
            self.serialize_unit()
        }
        fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), NotPlain> {
            value.serialize(self)
        }
        fn serialize_unit(self) -> Result<(), NotPlain> {
            self.out.put("null");
            Ok(())
        }
        fn serialize_unit_struct(self, _: &'static str) -> Result<(), NotPlain> {
            self.serialize_unit()
        }
        fn serialize_unit_variant(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
        ) -> Result<(), NotPlain> {
            self.serialize_str(variant)
        }
        fn serialize_newtype_struct<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            value: &T,
        ) -> Result<(), NotPlain> {
            value.serialize(self)
        }
        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
            value: &T,
        ) -> Result<(), NotPlain> {
            self.out.put("{");
            write_str_to(self.out, variant);
            self.out.put(":");
            value.serialize(Value {
                out: &mut *self.out,
            })?;
            self.out.put("}");
            Ok(())
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Compound<'o, O>, NotPlain> {
            Ok(Compound::open(self.out, None, "[", "]"))
        }
        fn serialize_tuple(self, _: usize) -> Result<Compound<'o, O>, NotPlain> {
            Ok(Compound::open(self.out, None, "[", "]"))
        }
        fn serialize_tuple_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Compound<'o, O>, NotPlain> {
            Ok(Compound::open(self.out, None, "[", "]"))
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
            _: usize,
        ) -> Result<Compound<'o, O>, NotPlain> {
            Ok(Compound::open(self.out, Some(variant), "[", "]}"))
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Compound<'o, O>, NotPlain> {
            Ok(Compound::open(self.out, None, "{", "}"))
        }
        fn serialize_struct(
            self,
            name: &'static str,
            _: usize,
        ) -> Result<Compound<'o, O>, NotPlain> {
            // serde_json's own markers (a `RawValue`'s text, an arbitrary-precision number)
            // mean something only to serde_json.
            if name.starts_with("$serde_json::") {
                return Err(NotPlain);
            }
            Ok(Compound::open(self.out, None, "{", "}"))
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
            _: usize,
        ) -> Result<Compound<'o, O>, NotPlain> {
            Ok(Compound::open(self.out, Some(variant), "{", "}}"))
        }
    }

    /// The four ways serde writes an array's elements, each one [`Compound::element`].
    macro_rules! elements {
        ($($kind:ident::$method:ident),*) => {$(
            impl<O: Output> ser::$kind for Compound<'_, O> {
                type Ok = ();
                type Error = NotPlain;
                fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotPlain> {
                    self.element(value)
                }
                fn end(self) -> Result<(), NotPlain> {
                    self.close()
                }
            }
        )*};
    }

    elements!(
        SerializeSeq::serialize_element,
        SerializeTuple::serialize_element,
        SerializeTupleStruct::serialize_field,
        SerializeTupleVariant::serialize_field
    );

    impl<O: Output> ser::SerializeMap for Compound<'_, O> {
        type Ok = ();
        type Error = NotPlain;
        fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), NotPlain> {
            self.comma();
            key.serialize(Key {
                out: &mut *self.out,
            })
        }
        fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), NotPlain> {
            self.out.put(":");
            value.serialize(Value {
                out: &mut *self.out,
            })
        }
        fn end(self) -> Result<(), NotPlain> {
            self.close()
        }
    }

    /// Both ways serde writes an object's named fields, each one [`Compound::field`].
    macro_rules! fields {
        ($($kind:ident),*) => {$(
            impl<O: Output> ser::$kind for Compound<'_, O> {
                type Ok = ();
                type Error = NotPlain;
                fn serialize_field<T: Serialize + ?Sized>(
                    &mut self,
                    key: &'static str,
                    value: &T,
                ) -> Result<(), NotPlain> {
                    self.field(key, value)
                }
                fn end(self) -> Result<(), NotPlain> {
                    self.close()
                }
            }
        )*};
    }

    fields!(SerializeStruct, SerializeStructVariant);

    /// A map key: only a string (or what serializes as one) is plain.
    struct Key<'o, O> {
        out: &'o mut O,
    }

    impl<O: Output> ser::Serializer for Key<'_, O> {
        type Ok = ();
        type Error = NotPlain;
        type SerializeSeq = ser::Impossible<(), NotPlain>;
        type SerializeTuple = ser::Impossible<(), NotPlain>;
        type SerializeTupleStruct = ser::Impossible<(), NotPlain>;
        type SerializeTupleVariant = ser::Impossible<(), NotPlain>;
        type SerializeMap = ser::Impossible<(), NotPlain>;
        type SerializeStruct = ser::Impossible<(), NotPlain>;
        type SerializeStructVariant = ser::Impossible<(), NotPlain>;

        fn serialize_str(self, v: &str) -> Result<(), NotPlain> {
            write_str_to(self.out, v);
            Ok(())
        }
        fn serialize_unit_variant(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
        ) -> Result<(), NotPlain> {
            self.serialize_str(variant)
        }
        fn serialize_newtype_struct<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            value: &T,
        ) -> Result<(), NotPlain> {
            value.serialize(self)
        }
        fn serialize_bool(self, _: bool) -> Result<(), NotPlain> {
            Err(NotPlain)
        }
        fn serialize_i8(self, _: i8) -> Result<(), NotPlain> {
            Err(NotPlain)
        }
        fn serialize_i16(self, _: i16) -> Result<(), NotPlain> {
            Err(NotPlain)
        }
        fn serialize_i32(self, _: i32) -> Result<(), NotPlain> {
            Err(NotPlain)
        }
        fn serialize_i64(self, _: i64) -> Result<(), NotPlain> {
            Err(NotPlain)
        }
        fn serialize_u8(self, _: u8) -> Result<(), NotPlain> {
            Err(NotPlain)
        }
        fn serialize_u16(self, _: u16) -> Result<(), NotPlain> {
            Err(NotPlain)
        }
        fn serialize_u32(self, _: u32) -> Result<(), NotPlain> {
            Err(NotPlain)
        }
        fn serialize_u64(self, _: u64) -> Result<(), NotPlain> {
            Err(NotPlain)
        }
        fn serialize_f32(self, _: f32) -> Result<(), NotPlain> {
            Err(NotPlain)
        }
        fn serialize_f64(self, _: f64) -> Result<(), NotPlain> {
            Err(NotPlain)
        }
        fn serialize_char(self, _: char) -> Result<(), NotPlain> {
            Err(NotPlain)
        }
        fn serialize_bytes(self, _: &[u8]) -> Result<(), NotPlain> {
            Err(NotPlain)
        }
        fn serialize_none(self) -> Result<(), NotPlain> {
            Err(NotPlain)
        }
        fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), NotPlain> {
            Err(NotPlain)
        }
        fn serialize_unit(self) -> Result<(), NotPlain> {
            Err(NotPlain)
        }
        fn serialize_unit_struct(self, _: &'static str) -> Result<(), NotPlain> {
            Err(NotPlain)
        }
        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<(), NotPlain> {
            Err(NotPlain)
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, NotPlain> {
            Err(NotPlain)
        }
        fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, NotPlain> {
            Err(NotPlain)
        }
        fn serialize_tuple_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleStruct, NotPlain> {
            Err(NotPlain)
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant, NotPlain> {
            Err(NotPlain)
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, NotPlain> {
            Err(NotPlain)
        }
        fn serialize_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStruct, NotPlain> {
            Err(NotPlain)
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant, NotPlain> {
            Err(NotPlain)
        }
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
    fn the_end_of_a_string_is_its_first_quote_backslash_or_control_character() {
        let naive = |bytes: &[u8]| {
            bytes
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        };
        let alphabet = [
            b'a', b'"', b'\\', 0x00, 0x1f, 0x20, 0x7f, 0x80, 0xff, 0x21, 0x5b, 0x5d,
        ];
        let mut bytes = [b'a'; 40];
        for len in 0..bytes.len() {
            for at in 0..len {
                for &b in &alphabet {
                    for &before in &alphabet {
                        bytes.fill(b'a');
                        bytes[at] = b;
                        if at > 0 {
                            bytes[at - 1] = before;
                        }
                        assert_eq!(first_special(&bytes[..len]), naive(&bytes[..len]));
                    }
                }
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
        let raw = |text: &str| serde_json::value::RawValue::from_string(text.to_owned()).unwrap();
        check(&HistoryOk {
            entries: vec![HistoryEntry {
                seq: 1,
                src: "admin".to_owned(),
                msg_id: 7,
                request: raw(r#"{"type":"rollback","version":3}"#),
                reply: raw(r#"{"type":"rollback_complete","in_reply_to":7}"#),
                ran: Some(raw(r#"[{"file":"3_x.down.sql"}]"#)),
                at: Some(1_700_000_000_000),
                took_seconds: Some(Seconds::Measured(250)),
                why: None,
            }],
        });
        check(&Refusal::MalformedRequest(
            "quotes \" and \\ and \u{7}\u{1f} control, tab\t, é ✓".to_owned(),
        ));
        check(&Refusal::PreconditionFailed(String::new()));
    }

    #[test]
    fn json_into_writes_what_serde_json_writes() {
        // Arbitrary JSON (floats and nesting included) and every request of the task's examples
        // and the fuzz seeds, as the journal stores them.
        let values: Vec<serde_json::Value> = [
            r#"{"a":1,"b":[true,null,"x\"y\u0001"],"c":{"d":-2,"e":2.5,"f":"\u00e9\ud83d\ude00"}}"#,
            r#"[1e300,0,18446744073709551615,-9223372036854775808,"",{}, []]"#,
            r#""plain""#,
        ]
        .iter()
        .map(|text| serde_json::from_str(text).unwrap())
        .collect();
        for value in &values {
            let mut out = String::from("kept:");
            json_into(&mut out, value);
            assert_eq!(
                out,
                format!("kept:{}", serde_json::to_string(value).unwrap())
            );
        }
        let lines = include_str!("../../examples/task.jsonl")
            .lines()
            .chain(include_str!("../../fuzz/seeds.jsonl").lines());
        let mut requests = 0;
        for line in lines {
            let Ok(incoming) = crate::wire::decode::decode(line) else {
                continue;
            };
            let Ok(request) = incoming.request else {
                continue;
            };
            let mut out = String::new();
            json_into(&mut out, &request);
            assert_eq!(out, serde_json::to_string(&request).unwrap(), "{line}");
            requests += 1;
        }
        assert!(requests > 20, "{requests} requests checked");
    }
}
