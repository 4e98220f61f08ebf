//! One arbitrary line through `wire::decode`: it must never panic; wherever its single-pass
//! fast path accepts a line, the full decoder must read exactly the same from it; and every
//! request it accepts must survive `encode_request` -> `decode` unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollback_node::wire::{decode, decode_in_full, decode_single_pass, encode_request};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(fast) = decode_single_pass(line) {
        let full = decode_in_full(line).unwrap_or_else(|e| {
            panic!("the single pass accepts what the full decoder refuses: {e}")
        });
        assert_eq!(fast.src, full.src, "src differs");
        assert_eq!(fast.dest, full.dest, "dest differs");
        assert_eq!(fast.msg_id, full.msg_id, "msg_id differs");
        assert_eq!(fast.dry_run, full.dry_run, "dry_run differs");
        assert_eq!(fast.request, full.request, "request differs");
    }
    let Ok(incoming) = decode(line) else {
        return;
    };
    let (Some(src), Ok(request)) = (incoming.src.as_deref(), &incoming.request) else {
        return;
    };
    let dest = incoming.dest.as_deref().unwrap_or("n1");
    let encoded = encode_request(src, dest, incoming.msg_id, request);
    let again = decode(&encoded)
        .unwrap_or_else(|e| panic!("re-encoded line does not decode: {e}\nline: {encoded}"));
    assert_eq!(
        again.src.as_deref(),
        Some(src),
        "src changed; line: {encoded}"
    );
    assert_eq!(
        again.dest.as_deref(),
        Some(dest),
        "dest changed; line: {encoded}"
    );
    assert_eq!(
        again.msg_id, incoming.msg_id,
        "msg_id changed; line: {encoded}"
    );
    match &again.request {
        Ok(decoded) => assert_eq!(decoded, request, "request changed; line: {encoded}"),
        Err(refusal) => panic!("re-encoded request refused: {refusal:?}\nline: {encoded}"),
    }
});
