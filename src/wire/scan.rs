//! The single pass's reader: a serde [`Deserializer`] over the plainest JSON, borrowing every
//! string from the line that has no escapes. It knows objects, arrays, strings, non-negative
//! integers, `true`, `false` and `null`, with JSON's whitespace between them, nested at most
//! [`MAX_DEPTH`] deep. Anything else — a bad escape, a control character in a string, a negative,
//! fractional or too large number, bad JSON, deeper nesting — is an error whose text is never
//! shown: the single pass gives up and the full decoder (serde_json) reads the line again. So it
//! never has to agree with serde_json on an error, only on what a plain line means.

use crate::protocol::encode::first_special;
use serde::de::value::{BorrowedStrDeserializer, StringDeserializer};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// How deep objects and arrays may nest before the scanner gives up (serde_json allows 128).
pub const MAX_DEPTH: usize = 32;

/// The scanner's one error: "not plain JSON; leave it to the full decoder".
#[derive(Debug)]
pub struct GiveUp;

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("left to the full decoder")
    }
}

impl std::error::Error for GiveUp {}

impl de::Error for GiveUp {
    fn custom<T: fmt::Display>(_: T) -> Self {
        GiveUp
    }
}

/// The bytes that end a plain run inside a JSON string: a quote, a backslash, a control byte.
static SPECIAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Where the first special byte at or after `from` is. Most strings on the wire (keys, node
/// ids, types) end within a few bytes, so those are looked at one by one before the word-wise
/// scan takes over.
#[inline]
fn special_from(bytes: &[u8], from: usize) -> Option<usize> {
    let stop = bytes.len().min(from.saturating_add(8));
    let mut at = from;
    while at < stop {
        if SPECIAL[usize::from(bytes[at])] {
            return Some(at);
        }
        at += 1;
    }
    first_special(bytes.get(at..)?).map(|n| at + n)
}

/// Hands `text` to `seed` as a string, borrowed from the line when it is.
///
/// # Errors
/// What `seed` says of it.
pub(crate) fn text_seed<'de, S: DeserializeSeed<'de>, E: de::Error>(
    seed: S,
    text: Cow<'de, str>,
) -> Result<S::Value, E> {
    match text {
        Cow::Borrowed(text) => seed.deserialize(BorrowedStrDeserializer::new(text)),
        Cow::Owned(text) => seed.deserialize(StringDeserializer::new(text)),
    }
}

/// A position in one line of JSON text.
pub struct Scanner<'de> {
    bytes: &'de [u8],
    text: &'de str,
    at: usize,
    depth: usize,
}

impl<'de> Scanner<'de> {
    /// A scanner at the start of `text`.
    pub fn new(text: &'de str) -> Self {
        Scanner {
            bytes: text.as_bytes(),
            text,
            at: 0,
            depth: 0,
        }
    }

    /// Only whitespace is left.
    ///
    /// # Errors
    /// Something else follows the value.
    pub fn end(&mut self) -> Result<(), GiveUp> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(GiveUp),
        }
    }

    /// The next byte that is not whitespace, not consumed.
    #[inline]
    fn peek(&mut self) -> Option<u8> {
        while let Some(&b) = self.bytes.get(self.at) {
            if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                return Some(b);
            }
            self.at += 1;
        }
        None
    }

    /// Consumes `byte` after any whitespace.
    #[inline]
    fn expect(&mut self, byte: u8) -> Result<(), GiveUp> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(GiveUp)
        }
    }

    /// A string, the opening quote next: borrowed from the line when it has no escapes,
    /// unescaped by serde_json when it has (rare on the wire, so not worth a second unescaper).
    #[inline]
    fn string(&mut self) -> Result<Cow<'de, str>, GiveUp> {
        self.expect(b'"')?;
        let start = self.at;
        let mut end = start;
        let mut escaped = false;
        loop {
            end = special_from(self.bytes, end).ok_or(GiveUp)?;
            match self.bytes[end] {
                b'"' => break,
                // The escaped character is never the closing quote; `\u` digits are hex.
                b'\\' => {
                    escaped = true;
                    end += 2;
                }
                _ => return Err(GiveUp),
            }
        }
        self.at = end + 1;
        // Both ends are ASCII quotes, so these are char boundaries of the UTF-8 text.
        if escaped {
            let quoted = self.text.get(start - 1..end + 1).ok_or(GiveUp)?;
            serde_json::from_str(quoted)
                .map(Cow::Owned)
                .map_err(|_| GiveUp)
        } else {
            self.text.get(start..end).map(Cow::Borrowed).ok_or(GiveUp)
        }
    }

    /// A non-negative integer that fits in a u64, the first digit next.
    fn unsigned(&mut self) -> Result<u64, GiveUp> {
        let start = self.at;
        let mut value: u64 = 0;
        while let Some(&b) = self.bytes.get(self.at) {
            if !b.is_ascii_digit() {
                break;
            }
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(b - b'0')))
                .ok_or(GiveUp)?;
            self.at += 1;
        }
        let digits = self.at - start;
        // No digits, a leading zero, or a fraction or exponent: not this scanner's.
        if digits == 0
            || (digits > 1 && self.bytes[start] == b'0')
            || matches!(self.bytes.get(self.at), Some(b'.' | b'e' | b'E'))
        {
            return Err(GiveUp);
        }
        Ok(value)
    }

    /// Consumes the literal `word` (its first byte next).
    fn literal(&mut self, word: &[u8]) -> Result<(), GiveUp> {
        if self.bytes[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(())
        } else {
            Err(GiveUp)
        }
    }

    /// Enters an object or array.
    fn deeper(&mut self) -> Result<(), GiveUp> {
        if self.depth >= MAX_DEPTH {
            return Err(GiveUp);
        }
        self.depth += 1;
        self.at += 1;
        Ok(())
    }
}

impl<'de> de::Deserializer<'de> for &mut Scanner<'de> {
    type Error = GiveUp;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        match self.peek().ok_or(GiveUp)? {
            b'"' => match self.string()? {
                Cow::Borrowed(text) => visitor.visit_borrowed_str(text),
                Cow::Owned(text) => visitor.visit_string(text),
            },
            b'0'..=b'9' => visitor.visit_u64(self.unsigned()?),
            b't' => {
                self.literal(b"true")?;
                visitor.visit_bool(true)
            }
            b'f' => {
                self.literal(b"false")?;
                visitor.visit_bool(false)
            }
            b'n' => {
                self.literal(b"null")?;
                visitor.visit_unit()
            }
            b'{' => {
                self.deeper()?;
                let value = visitor.visit_map(Entries {
                    scanner: &mut *self,
                    first: true,
                })?;
                self.expect(b'}')?;
                self.depth -= 1;
                Ok(value)
            }
            b'[' => {
                self.deeper()?;
                let value = visitor.visit_seq(Entries {
                    scanner: &mut *self,
                    first: true,
                })?;
                self.expect(b']')?;
                self.depth -= 1;
                Ok(value)
            }
            _ => Err(GiveUp),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, GiveUp> {
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, GiveUp> {
        // Only the unit variants a plain string names.
        if self.peek() != Some(b'"') {
            return Err(GiveUp);
        }
        let name = self.string()?;
        match name {
            Cow::Borrowed(name) => visitor.visit_enum(BorrowedStrDeserializer::<GiveUp>::new(name)),
            Cow::Owned(name) => visitor.visit_enum(StringDeserializer::<GiveUp>::new(name)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, GiveUp> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

/// The entries of an object, or the elements of an array, the opening bracket consumed.
struct Entries<'s, 'de> {
    scanner: &'s mut Scanner<'de>,
    first: bool,
}

impl Entries<'_, '_> {
    /// Whether another entry follows (consuming its comma), before the closing `close`.
    fn more(&mut self, close: u8) -> Result<bool, GiveUp> {
        let next = self.scanner.peek().ok_or(GiveUp)?;
        if next == close {
            return Ok(false);
        }
        if self.first {
            self.first = false;
            return Ok(true);
        }
        if next != b',' {
            return Err(GiveUp);
        }
        self.scanner.at += 1;
        Ok(true)
    }
}

impl<'de> MapAccess<'de> for Entries<'_, 'de> {
    type Error = GiveUp;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, GiveUp> {
        if !self.more(b'}')? {
            return Ok(None);
        }
        let key = self.scanner.string()?;
        self.scanner.expect(b':')?;
        text_seed(seed, key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, GiveUp> {
        seed.deserialize(&mut *self.scanner)
    }
}

impl<'de> SeqAccess<'de> for Entries<'_, 'de> {
    type Error = GiveUp;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, GiveUp> {
        if !self.more(b']')? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.scanner).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::Value;

    fn scan(text: &str) -> Option<Value> {
        let mut scanner = Scanner::new(text);
        let value = Value::deserialize(&mut scanner).ok()?;
        scanner.end().ok()?;
        Some(value)
    }

    #[test]
    fn plain_json_reads_as_serde_json_reads_it() {
        for text in [
            r#"{"src":"c1","dest":"n1","body":{"type":"init","msg_id":0}}"#,
            " { \"a\" : [ 1 , true , false , null , \"é✓\" , [ ] , { } ] }\t\r\n",
            r#"{"":18446744073709551615,"b":0}"#,
            "[]",
            "\"plain\"",
            "0",
            r#"{"a":"\n","b\"":"\u00e9\\","\ud83d\ude00":"\/"}"#,
        ] {
            let want: Value = serde_json::from_str(text).unwrap();
            assert_eq!(scan(text), Some(want), "{text}");
        }
    }

    #[test]
    fn anything_else_gives_up() {
        for text in [
            "",
            " ",
            r#"{"a":"\x"}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\u12"}"#,
            r#""\"#,
            r#""a\""#,
            "\"\n\"",
            "{\"a\":\"tab\there\"}",
            r#"{"a":-1}"#,
            r#"{"a":1.5}"#,
            r#"{"a":1e3}"#,
            r#"{"a":01}"#,
            r#"{"a":18446744073709551616}"#,
            r#"{"a":1,}"#,
            r#"{,"a":1}"#,
            r#"{"a" 1}"#,
            r#"{"a":1"#,
            r#"{"a":1}}"#,
            r#"{"a":tru}"#,
            r#"{"a":nul}"#,
            "[1 2]",
            "[,]",
            r#"{"a":1} x"#,
        ] {
            assert_eq!(scan(text), None, "{text:?}");
        }
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(scan(&deep), None);
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(scan(&ok).is_some());
    }
}
