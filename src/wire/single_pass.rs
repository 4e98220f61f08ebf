//! The single pass over a well-formed request line (see [`super::decode`]), read by the plain
//! JSON [`Scanner`]. It returns `None` as soon as anything is unusual; it never produces an
//! error of its own.

use super::incoming::Incoming;
use super::scan::{text_seed, Scanner};
use crate::core::transitions::Request;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// Decodes `line` in one pass, or `None` to leave it to the full decoder.
pub(crate) fn decode(line: &str) -> Option<Incoming<'_>> {
    let mut scanner = Scanner::new(line);
    let incoming = (&mut scanner).deserialize_map(Envelope).ok()?;
    scanner.end().ok()?;
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

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
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
        let (Some(src), Some((msg_id, dry_run, request))) = (src, body) else {
            return Err(give_up());
        };
        Ok(Incoming {
            src: Some(src),
            dest,
            msg_id,
            dry_run: dry_run.unwrap_or(false),
            request: Ok(request),
        })
    }
}

/// `{"type": string, …}` or `{"msg_id": integer, "type": string, …}`: once the type is known,
/// the rest of the body is that type's fields (with `msg_id` and `dry_run` anywhere among them).
struct Body;

/// The body's `msg_id`, `dry_run` and request.
type BodyValue = (Option<u64>, Option<bool>, Request);

impl<'de> DeserializeSeed<'de> for Body {
    type Value = BodyValue;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Body {
    type Value = BodyValue;

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
        let allowed = Request::fields(&kind).ok_or_else(give_up::<A::Error>)?;
        let mut dry_run = None;
        let fields = Fields {
            map: &mut map,
            msg_id: &mut msg_id,
            dry_run: &mut dry_run,
            allowed,
        };
        let request = Request::decode_fields(&kind, fields).ok_or_else(give_up::<A::Error>)??;
        Ok((msg_id, dry_run, request))
    }
}

/// The rest of a body, after its `type`, as a map of the type's fields: `msg_id` and `dry_run`
/// are taken out on the way; a second `type`, `msg_id` or `dry_run`, or a key the type does not
/// accept, gives up.
struct Fields<'m, A> {
    map: &'m mut A,
    msg_id: &'m mut Option<u64>,
    dry_run: &'m mut Option<bool>,
    allowed: &'static [&'static str],
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
                "dry_run" if self.dry_run.is_none() => {
                    *self.dry_run = Some(self.map.next_value::<bool>()?);
                }
                "msg_id" | "type" | "dry_run" => return Err(give_up()),
                other if !self.allowed.contains(&other) => return Err(give_up()),
                _ => return text_seed(seed, key).map(Some),
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}
