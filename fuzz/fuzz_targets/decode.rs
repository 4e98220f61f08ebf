//! One arbitrary line through `wire::decode`: it must never panic, and every request it accepts
//! must survive `encode_request` -> `decode` unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollback_node::wire::{decode, encode_request};

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
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
    assert_eq!(again.src.as_deref(), Some(src), "src changed; line: {encoded}");
    assert_eq!(again.dest.as_deref(), Some(dest), "dest changed; line: {encoded}");
    assert_eq!(again.msg_id, incoming.msg_id, "msg_id changed; line: {encoded}");
    match &again.request {
        Ok(decoded) => assert_eq!(decoded, request, "request changed; line: {encoded}"),
        Err(refusal) => panic!("re-encoded request refused: {refusal:?}\nline: {encoded}"),
    }
});
