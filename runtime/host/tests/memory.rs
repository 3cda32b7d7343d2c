//! Memory taken by hostile guests is given back. Alone in its own test
//! binary, so no other test's allocations move the process's RSS.

use std::time::Duration;

use weir_e2e::component;
use weir_host::{Error, ErrorKind, Limits, Message, Runtime, StageContext};

/// Resident set size of this process, in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn memory_returns_to_baseline_after_memory_bombs() {
    let rt = Runtime::new().unwrap();
    let stage = rt.load(&component("hostile")).unwrap();
    let limits = Limits { timeout: Duration::from_secs(5), max_memory_bytes: 48 << 20, ..Limits::default() };
    let ctx = StageContext::new("test", "bomb", Vec::new(), limits);
    let bomb = Message {
        topic: "t".into(),
        partition: 0,
        offset: 0,
        key: None,
        payload: "alloc".into(),
        headers: Vec::new(),
        timestamp_us: 0,
        event_time_ms: 0,
        attempt: 1,
    };
    let explode = || {
        let mut inst = stage.instantiate(&ctx).unwrap();
        match inst.handle_batch(std::slice::from_ref(&bomb)) {
            Err(Error::Call { kind: ErrorKind::Memory, .. }) => {}
            other => panic!("expected a memory error, got {other:?}"),
        }
    };
    // Warm up (code, pools, allocator arenas), then measure.
    explode();
    let baseline = rss();
    for _ in 0..40 {
        explode();
    }
    let grown = rss().saturating_sub(baseline);
    // 40 bombs of 48 MiB each would be ~1.9 GiB if nothing were returned;
    // allow one bomb's worth of slack for allocator noise.
    assert!(grown < 48 << 20, "RSS grew by {} MiB over 40 memory bombs", grown >> 20);
}
