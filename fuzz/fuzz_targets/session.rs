//! Arbitrary input through the runtime's own path — `LineSplitter` (chunked as the reader thread
//! chunks, with a small cap so the too-long path runs) into `Session::handle_line` — with the
//! operations' completions interleaved between lines as the concurrent runtime interleaves them:
//! the session performs nothing by itself; after each line, bytes of the input decide which
//! running lane completes next, and whether it succeeds, fails before any change or fails
//! part-way, and some progress is reported.
//!
//! Checks: no panic; the splitter splits as a plain split on `\n` would; every output line is a
//! JSON object whose `body` is an object with a string `type`; a line that gets no reply and is
//! not blank gets a diagnostic, or was queued behind a running operation; replies are bounded by
//! the input that produced them; the retry memory and the queues stay bounded; once everything
//! completes, nothing is left running or queued.
//!
//! Cost: the session is the library's own synchronous one (`Session::simulated`, performing
//! nothing by itself, an in-memory store): no thread, channel, directory or wait. The example
//! estate is parsed from its TOML once per process and cloned per input (`Session::example()`
//! per input re-parsed it — about a quarter of each execution); every input still starts from a
//! fresh session, store and machine. Replies are checked by reading each one into the shapes the
//! checks ask about ([`Envelope`]) instead of building a `serde_json::Value` per reply (that was
//! a third of the target's time on the whole seed files under AddressSanitizer; reading shapes
//! takes 14% off each such input). What is left per input is
//! the work on its lines, so input length sets the rate: `fuzz/seed.sh` seeds runs of eight lines
//! and `fuzz/smoke.sh` runs this target without a sanitizer (both say why).
#![no_main]

use std::fmt;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rollback_node::core::effects::{Completion, Done, ExecError, Failure, FailureKind, Lane};
use rollback_node::core::machine::QUEUE_LIMIT;
use rollback_node::core::retries::{PER_SENDER, SENDERS};
use rollback_node::protocol::values::{Progress, Seconds};
use rollback_node::runtime::{Performing, Session};
use rollback_node::wire::lines::{LineSplitter, Piece};
use rollback_node::Estate;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// The example estate, parsed once; each input gets a clone, as `Session::example()` would build.
fn example_estate() -> Estate {
    static ESTATE: OnceLock<Estate> = OnceLock::new();
    ESTATE.get_or_init(Estate::example).clone()
}

/// The line cap for the fuzzer; the binary uses `MAX_LINE_BYTES` (1 MiB).
const CAP: usize = 4096;

/// What one JSON value is, as far as [`check_output`] asks: a string, an object (with whether
/// its `type` member is a string), or anything else.
enum Kind {
    Str,
    Object { typed: bool },
    Other,
}

/// A reply's `src`, `dest` and `body` as [`check_output`] asks about them; `None` when the reply
/// is not an object. Read straight from the bytes through the same `deserialize_any` calls that
/// build a `serde_json::Value` (so the same JSON syntax, string escapes, numbers and nesting
/// limit; the last of duplicate members counts), without building the value.
struct Envelope(Option<[Option<Kind>; 3]>);

/// The member names [`check_output`] looks at.
enum Key {
    Src,
    Dest,
    Body,
    Type,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "src" => Key::Src,
                    "dest" => Key::Dest,
                    "body" => Key::Body,
                    "type" => Key::Type,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// Reads any value into its [`Kind`]; `deep` also reads an object's `type` member.
struct KindOf {
    deep: bool,
}

impl<'de> DeserializeSeed<'de> for KindOf {
    type Value = Kind;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KindOf {
    type Value = Kind;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Kind, E> {
        Ok(Kind::Other)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Kind, E> {
        Ok(Kind::Other)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Kind, E> {
        Ok(Kind::Other)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Kind, E> {
        Ok(Kind::Other)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Kind, E> {
        Ok(Kind::Str)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Other)
    }
    fn visit_none<E: de::Error>(self) -> Result<Kind, E> {
        Ok(Kind::Other)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
        while seq.next_element_seed(KindOf { deep: false })?.is_some() {}
        Ok(Kind::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        let mut typed = false;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Type if self.deep => {
                    typed = matches!(map.next_value_seed(KindOf { deep: false })?, Kind::Str);
                }
                _ => {
                    map.next_value_seed(KindOf { deep: false })?;
                }
            }
        }
        Ok(Kind::Object { typed })
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Envelope;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
                let mut members: [Option<Kind>; 3] = [None, None, None];
                while let Some(key) = map.next_key::<Key>()? {
                    let (slot, deep) = match key {
                        Key::Src => (0, false),
                        Key::Dest => (1, false),
                        Key::Body => (2, true),
                        Key::Type | Key::Other => {
                            map.next_value_seed(KindOf { deep: false })?;
                            continue;
                        }
                    };
                    members[slot] = Some(map.next_value_seed(KindOf { deep })?);
                }
                Ok(Envelope(Some(members)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Envelope, A::Error> {
                KindOf { deep: false }
                    .visit_seq(seq)
                    .map(|_| Envelope(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Envelope, E> {
                Ok(Envelope(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Envelope, E> {
                Ok(Envelope(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Envelope, E> {
                Ok(Envelope(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Envelope, E> {
                Ok(Envelope(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Envelope, E> {
                Ok(Envelope(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Envelope, E> {
                Ok(Envelope(None))
            }
        }
        d.deserialize_any(V)
    }
}

fn check_output(out: &[u8], line_len: usize) {
    for reply in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let bound = 16 * line_len + 64 * 1024;
        assert!(reply.len() <= bound, "reply of {} bytes", reply.len());
        let text = || String::from_utf8_lossy(reply);
        let Envelope(members) = serde_json::from_slice(reply)
            .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {:?}", text()));
        let [src, dest, body] =
            members.unwrap_or_else(|| panic!("reply has no object body: {}", text()));
        match body {
            Some(Kind::Object { typed }) => {
                assert!(typed, "reply body has no string type: {}", text());
            }
            _ => panic!("reply has no object body: {}", text()),
        }
        assert!(matches!(src, Some(Kind::Str)), "no src: {}", text());
        assert!(matches!(dest, Some(Kind::Str)), "no dest: {}", text());
    }
    assert!(
        out.is_empty() || out.ends_with(b"\n"),
        "output ends mid-line"
    );
}

/// Delivers what `choice` says to one running lane, if any runs.
fn interleave(session: &mut Session, choice: u8, out: &mut Vec<u8>) {
    let lanes: Vec<(Lane, u64)> = Lane::ALL
        .into_iter()
        .filter_map(|lane| session.machine().running(lane).map(|(seq, _)| (lane, seq)))
        .collect();
    if lanes.is_empty() {
        return;
    }
    let (lane, seq) = lanes[usize::from(choice) % lanes.len()];
    let completion = match choice / 16 {
        0..=9 => Completion::Done(Done {
            duration: Seconds::Measured(u64::from(choice)),
            rows: Some(u64::from(choice)),
            ..Done::default()
        }),
        10..=12 => Completion::Failed(Failure::new(
            if choice.is_multiple_of(2) {
                FailureKind::Refused
            } else {
                FailureKind::NothingChanged
            },
            ExecError::failed("fuzzing", None, "refused"),
        )),
        13..=14 => Completion::Failed(Failure {
            completed: usize::from(choice % 3),
            ..Failure::new(
                FailureKind::PartWay,
                ExecError::failed("fuzzing", Some("line 1".into()), "crashed"),
            )
        }),
        _ => {
            session.progress(
                lane,
                seq,
                Progress {
                    done: u64::from(choice),
                    total: 255,
                    unit: "rows".into(),
                },
            );
            return;
        }
    };
    session.complete(lane, seq, completion, out);
}

fuzz_target!(|data: &[u8]| {
    let (control, input) = data.split_at(data.len().min(8));
    let chunk = usize::from(control.first().copied().unwrap_or(7)).max(1);
    let mut choices = control.iter().cycle().copied();

    let mut expected: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
    if input.is_empty() || input.ends_with(b"\n") {
        expected.pop();
    }

    let mut session = Session::simulated(example_estate()).performing(Performing::Manual);
    let mut splitter = LineSplitter::new(CAP);
    let mut index = 0usize;
    let mut out = Vec::new();
    let mut handle = |piece: Piece<'_>, session: &mut Session| {
        let want = expected
            .get(index)
            .unwrap_or_else(|| panic!("splitter produced line {index}, past the input's lines"));
        index += 1;
        out.clear();
        let queued_before: usize = Lane::ALL.iter().map(|l| session.machine().queued(*l)).sum();
        let running_before = session.machine().running_seqs().len();
        let diagnostic = match piece {
            Piece::Line(line) => {
                assert_eq!(line, *want, "splitter split line {index} wrongly");
                session.handle_line(line, &mut out)
            }
            Piece::TooLong(bytes) => {
                assert!(
                    want.len() > CAP,
                    "line {index} of {} bytes called too long",
                    want.len()
                );
                assert_eq!(bytes, want.len(), "too-long line {index} misreported");
                Some(session.too_long(bytes))
            }
        };
        let queued_after: usize = Lane::ALL.iter().map(|l| session.machine().queued(*l)).sum();
        let running_after = session.machine().running_seqs().len();
        let waiting = queued_after > queued_before || running_after > running_before;
        let text = want.strip_suffix(b"\r").unwrap_or(want);
        let blank = text.iter().all(u8::is_ascii_whitespace);
        if diagnostic.is_some() {
            assert!(out.is_empty(), "line {index} got a diagnostic and a reply");
        } else if !blank && out.is_empty() && !waiting {
            // A retry that joined a running or queued request is answered when it completes.
            assert!(
                running_after > 0 || queued_after > 0,
                "line {index} got neither a reply nor a diagnostic, and nothing waits"
            );
        }
        check_output(&out, want.len());
        let choice = choices.next().unwrap_or(0);
        let mut completed = Vec::new();
        interleave(session, choice, &mut completed);
        check_output(&completed, 4096);
    };
    for part in input.chunks(chunk) {
        splitter.push(part, |piece| handle(piece, &mut session));
    }
    splitter.finish(|piece| handle(piece, &mut session));
    assert_eq!(index, expected.len(), "splitter dropped lines");
    for lane in Lane::ALL {
        assert!(session.machine().queued(lane) <= QUEUE_LIMIT);
    }
    // Drain: complete everything still running, successfully.
    let mut rounds = 0;
    while !session.machine().is_idle() {
        rounds += 1;
        assert!(rounds <= 4 * (QUEUE_LIMIT + 1), "the lanes do not drain");
        let mut drained = Vec::new();
        interleave(&mut session, 0, &mut drained);
        check_output(&drained, 4096);
    }
    assert!(session.machine().answered().len() <= PER_SENDER * SENDERS);
});
