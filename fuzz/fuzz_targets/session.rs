//! Arbitrary input through the same path as the binary: `LineReader` (with a small cap, so the
//! too-long path runs) into `Session::handle_line` / `Session::too_long`.
//!
//! Checks: no panic; the reader splits lines as a plain split on `\n` would; each input line
//! yields at most one output line, which is a JSON object whose `body` is an object with a string
//! `type`; a line gets a diagnostic exactly when it gets no reply (blank lines get neither);
//! reply size is bounded by the input that produced it; the retry memory stays bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollback_node::answered::{PER_SENDER, SENDERS};
use rollback_node::lines::{Line, LineReader};
use rollback_node::Session;

/// The line cap for the fuzzer; the binary uses `MAX_LINE_BYTES` (1 MiB).
const CAP: usize = 4096;
/// A tiny read buffer, so lines straddle many refills.
const BUFFER: usize = 7;

fuzz_target!(|data: &[u8]| {
    // Reference split: what the reader must produce.
    let mut expected: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    if data.is_empty() || data.ends_with(b"\n") {
        expected.pop();
    }

    let mut reader = LineReader::with_buffer(data, CAP, BUFFER);
    let mut session = Session::example();
    let mut line = Vec::new();
    let mut out = Vec::new();
    let mut index = 0;
    while let Some(kind) = reader.next_line(&mut line).expect("reading a slice cannot fail") {
        let want = expected
            .get(index)
            .unwrap_or_else(|| panic!("reader produced line {index}, past the input's lines"));
        index += 1;
        out.clear();
        let id_before = session.node_id().map_or(0, str::len);
        let diagnostic = match kind {
            Line::Complete => {
                assert_eq!(line.as_slice(), *want, "reader split line {index} wrongly");
                session.handle_line(&line, &mut out)
            }
            Line::TooLong(bytes) => {
                assert!(want.len() > CAP, "line {index} of {} bytes called too long", want.len());
                assert_eq!(bytes, want.len(), "too-long line {index} misreported");
                Some(session.too_long(bytes))
            }
        };
        let id_after = session.node_id().map_or(0, str::len);

        let blank = kind == Line::Complete && {
            let text = line.strip_suffix(b"\r").unwrap_or(&line);
            text.iter().all(u8::is_ascii_whitespace)
        };
        if blank {
            assert!(out.is_empty() && diagnostic.is_none(), "blank line {index} answered");
            continue;
        }
        assert_eq!(
            out.is_empty(),
            diagnostic.is_some(),
            "line {index}: a line must get a reply or a diagnostic, not both or neither \
             (diagnostic: {diagnostic:?}, output: {:?})",
            String::from_utf8_lossy(&out)
        );
        if out.is_empty() {
            continue;
        }

        // Exactly one line, newline-terminated.
        let reply = out.strip_suffix(b"\n").expect("reply line ends with \\n");
        assert!(!reply.contains(&b'\n'), "more than one output line for input line {index}");

        // Bounded: the reply echoes at most a few copies of the line (src, dest, a bad value),
        // each escaped at worst 6x, plus the node id and a fixed amount of prose and state.
        let bound = 16 * (want.len() + id_before.max(id_after)) + 4096;
        assert!(reply.len() <= bound, "reply of {} bytes to a {}-byte line", reply.len(), want.len());

        // Valid JSON with an object body carrying a string type.
        let value: serde_json::Value = serde_json::from_slice(reply).unwrap_or_else(|e| {
            panic!("reply is not JSON ({e}): {:?}", String::from_utf8_lossy(reply))
        });
        let body = value
            .get("body")
            .and_then(serde_json::Value::as_object)
            .unwrap_or_else(|| panic!("reply has no object body: {value}"));
        assert!(
            body.get("type").is_some_and(serde_json::Value::is_string),
            "reply body has no string type: {value}"
        );
        assert!(value.get("src").is_some_and(serde_json::Value::is_string), "no src: {value}");
        assert!(value.get("dest").is_some_and(serde_json::Value::is_string), "no dest: {value}");
    }
    assert_eq!(index, expected.len(), "reader dropped lines");
    assert!(session.machine().answered().len() <= PER_SENDER * SENDERS);
});
