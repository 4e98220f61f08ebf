//! Allocations on the per-message path, counted by a counting global allocator.
//!
//! The session of the stdio binary (the built-in estate, in memory) is driven in this process
//! with the throughput workload's messages, past the point where the retry memory is full and
//! every answer makes it forget its oldest; then each kind of message is counted on its own.
//! The counts are exact figures of today's path: a change that allocates more per message fails
//! here, and one that allocates less lowers the bound.

use rollback_node::core::retries::PER_SENDER;
use rollback_node::runtime::Session;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

/// The system allocator, counting allocations (and reallocations, which may move).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const INIT: &str = r#"{"src":"c1","dest":"n1","body":{"type":"init","msg_id":0,"node_id":"n1","node_ids":["n1"]}}"#;

fn disable(i: u64) -> String {
    format!(
        r#"{{"src":"c1","dest":"n1","body":{{"type":"disable_feature","msg_id":{i},"feature":"new_checkout"}}}}"#
    )
}

fn switch(i: u64, from: &str, to: &str) -> String {
    format!(
        r#"{{"src":"c1","dest":"n1","body":{{"type":"switch_traffic","msg_id":{i},"from":"{from}","to":"{to}"}}}}"#
    )
}

/// Message `i` of the throughput workload.
fn workload(i: u64) -> String {
    match (i - 1) % 3 {
        0 => disable(i),
        1 => switch(i, "green", "blue"),
        _ => switch(i, "blue", "green"),
    }
}

/// Allocations made while `session` handles `lines` (built beforehand), each reply checked to be
/// a reply to its request; the output buffer is reused, as the binary's is.
fn count(session: &mut Session<impl rollback_node::store::Store>, lines: &[String]) -> u64 {
    let mut out = Vec::with_capacity(1 << 16);
    let mut replies = 0;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for line in lines {
        out.clear();
        assert!(session.handle_line(line.as_bytes(), &mut out).is_none());
        replies += out.iter().filter(|&&b| b == b'\n').count();
    }
    let made = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(replies, lines.len(), "one reply a message");
    made
}

#[test]
fn a_steady_stream_allocates_only_what_its_requests_own() {
    let mut session = Session::example();
    let mut out = Vec::new();
    session.handle_line(INIT.as_bytes(), &mut out);
    assert!(String::from_utf8_lossy(&out).contains("init_ok"));

    // Past the point where the sender's window is full.
    let warm = PER_SENDER as u64 + 3_000;
    let lines: Vec<String> = (1..=warm).map(workload).collect();
    count(&mut session, &lines);

    let n = 3_000;
    let mut next = warm;
    let mut ids = |k: u64| {
        let start = next + 1;
        next += k;
        start..=next
    };
    // The estate's traffic is on green after a whole number of workload cycles; a switch pair
    // leaves it there.
    let switches: Vec<String> = ids(2 * n)
        .collect::<Vec<_>>()
        .chunks(2)
        .flat_map(|pair| {
            [
                switch(pair[0], "green", "blue"),
                switch(pair[1], "blue", "green"),
            ]
        })
        .collect();
    let flags: Vec<String> = ids(n).map(disable).collect();

    let by_switches = count(&mut session, &switches);
    let by_flags = count(&mut session, &flags);
    let per_switch = by_switches as f64 / switches.len() as f64;
    let per_flag = by_flags as f64 / flags.len() as f64;
    eprintln!(
        "allocations a message: switch_traffic {per_switch:.3}, disable_feature {per_flag:.3}"
    );
    // switch_traffic: the operation's effect list. The answer, its body, the operation and the
    // reply line reuse what the message before left.
    assert!(
        by_switches <= switches.len() as u64,
        "{per_switch:.3} a switch_traffic"
    );
    // disable_feature: the flag's name as decoded, its copies in the decision, the effect and the
    // reply, and the effect list.
    assert!(
        by_flags <= 5 * flags.len() as u64,
        "{per_flag:.3} a disable_feature"
    );
}
