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
//! Cost: the example estate is parsed from its TOML once per process and cloned per input
//! (`Session::example()` per input re-parsed it — about a quarter of each execution); every
//! input still starts from a fresh session, store and machine.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rollback_node::core::effects::{Completion, Done, ExecError, Failure, FailureKind, Lane};
use rollback_node::core::machine::QUEUE_LIMIT;
use rollback_node::core::retries::{PER_SENDER, SENDERS};
use rollback_node::protocol::values::{Progress, Seconds};
use rollback_node::runtime::{Performing, Session};
use rollback_node::wire::lines::{LineSplitter, Piece};
use rollback_node::Estate;

/// The example estate, parsed once; each input gets a clone, as `Session::example()` would build.
fn example_estate() -> Estate {
    static ESTATE: OnceLock<Estate> = OnceLock::new();
    ESTATE.get_or_init(Estate::example).clone()
}

/// The line cap for the fuzzer; the binary uses `MAX_LINE_BYTES` (1 MiB).
const CAP: usize = 4096;

fn check_output(out: &[u8], line_len: usize) {
    for reply in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let bound = 16 * line_len + 64 * 1024;
        assert!(reply.len() <= bound, "reply of {} bytes", reply.len());
        let value: serde_json::Value = serde_json::from_slice(reply).unwrap_or_else(|e| {
            panic!(
                "reply is not JSON ({e}): {:?}",
                String::from_utf8_lossy(reply)
            )
        });
        let body = value
            .get("body")
            .and_then(serde_json::Value::as_object)
            .unwrap_or_else(|| panic!("reply has no object body: {value}"));
        assert!(
            body.get("type").is_some_and(serde_json::Value::is_string),
            "reply body has no string type: {value}"
        );
        assert!(
            value.get("src").is_some_and(serde_json::Value::is_string),
            "no src: {value}"
        );
        assert!(
            value.get("dest").is_some_and(serde_json::Value::is_string),
            "no dest: {value}"
        );
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
            if choice % 2 == 0 {
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
