//! Event time, watermarks and timers through `weir run`: the window-count
//! example over out-of-order input, with and without kill -9.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::{Weir, pipeline_file};

const KEYS: u64 = 5;
const WINDOW_MS: u64 = 1000;
const T0: u64 = 1_700_000_000_000;

/// `n` events in arrival order: event times 10 ms apart, each moved back
/// by up to 2 s (a fixed pseudo-random jitter), so arrival order is not
/// event-time order; with `max_out_of_orderness_ms = 3000`, none is late.
fn events(n: u64) -> Vec<(String, u64)> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (format!("k{}", x % KEYS), T0 + 2000 + i * 10 - x % 2000)
        })
        .collect()
}

/// Each (key, window start)'s count, computed here from the events alone.
fn expected(events: &[(String, u64)]) -> BTreeMap<(String, u64), u64> {
    let mut counts = BTreeMap::new();
    for (k, t) in events {
        *counts.entry((k.clone(), t - t % WINDOW_MS)).or_default() += 1;
    }
    counts
}

/// Load the events into topic `events` with their event times as
/// producer timestamps (a pipeline from JSON lines on standard input).
fn load(weir: &Weir, dir: &std::path::Path, events: &[(String, u64)]) {
    let loader = pipeline_file(
        dir,
        "load.toml",
        "[pipeline]\nname = \"load\"\n[source]\ntype = \"stdin\"\nformat = \"json\"\n\
         [[sink]]\ntype = \"queue\"\ntopic = \"events\"\n[dead_letter]\ntopic = \"load.dlq\"\n",
    );
    let input: String = events.iter().map(|(k, t)| format!("{{\"payload\":\"e\",\"key\":\"{k}\",\"timestamp_ms\":{t}}}\n")).collect();
    weir.ok(&["run", loader.to_str().unwrap(), "--drain"], input.as_bytes());
    assert_eq!(weir.topic_len("events"), events.len() as u64);
}

fn windowed(dir: &std::path::Path) -> std::path::PathBuf {
    pipeline_file(
        dir,
        "windows.toml",
        &format!(
            "[pipeline]\nname = \"windows\"\n[source]\ntype = \"queue\"\ntopic = \"events\"\n\
             [watermark]\nmax_out_of_orderness_ms = 3000\n\
             [[stage]]\nname = \"count\"\nmodule = \"{{component:window_count}}\"\nbatch_size = 64\n\
             [stage.config]\nwindow_ms = \"{WINDOW_MS}\"\n\
             [[sink]]\ntype = \"queue\"\ntopic = \"windows\"\n"
        ),
    )
}

/// The emitted windows: each (key, start) with its counts as emitted
/// (more than one only if emitted again after a crash).
fn emitted(weir: &Weir) -> BTreeMap<(String, u64), Vec<u64>> {
    let mut out: BTreeMap<(String, u64), Vec<u64>> = BTreeMap::new();
    for line in weir.consume_all("windows") {
        let mut f = line.split(' ');
        let (k, start, count) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        out.entry((k.to_owned(), start.parse().unwrap())).or_default().push(count.parse().unwrap());
    }
    out
}

#[test]
fn tumbling_windows_over_out_of_order_input_each_close_once_with_the_exact_count() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let events = events(3000);
    load(&weir, dir.path(), &events);
    let p = windowed(dir.path());
    weir.ok(&["run", p.to_str().unwrap(), "--drain"], b"");
    let want = expected(&events);
    let got = emitted(&weir);
    assert_eq!(got.len(), want.len(), "every window is emitted, the open ones when the source ends");
    for (w, counts) in &got {
        assert_eq!(counts, &[want[w]], "window {w:?}: emitted once, with the count computed from the input");
    }
    // The windows closed as the watermark passed them, not all at the end:
    // the first window's result comes before the last window's.
    let order: Vec<u64> = weir.consume_all("windows").iter().map(|l| l.split(' ').nth(1).unwrap().parse().unwrap()).collect();
    assert!(order.first() < order.last());
}

#[test]
fn windows_are_exact_after_kill_9_at_any_point() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let events = events(20_000);
    load(&weir, dir.path(), &events);
    let p = windowed(dir.path());
    let p = p.to_str().unwrap();
    let want = expected(&events);
    for round in 1..=3u64 {
        let mut run = weir.cmd(&["run", p]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let started = Instant::now();
        let at_kill = loop {
            let done = weir.topic_len("windows");
            if done >= round * want.len() as u64 / 5 {
                break done;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "round {round}: no progress");
            std::thread::sleep(Duration::from_millis(2));
        };
        run.kill().unwrap(); // SIGKILL
        run.wait().unwrap();
        eprintln!("round {round}: killed at {at_kill} windows emitted");
    }
    weir.ok(&["run", p, "--drain"], b"");
    let got = emitted(&weir);
    assert_eq!(got.len(), want.len(), "no window lost");
    for (w, counts) in &got {
        assert!(
            counts.iter().all(|c| *c == want[w]),
            "window {w:?}: emitted {counts:?}, expected {} (outputs may repeat, never differ)",
            want[w]
        );
    }
}

#[test]
fn a_failing_timer_is_retried_then_dead_lettered_with_its_kind_and_the_rest_fire() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_file(
        dir.path(),
        "timers.toml",
        "[pipeline]\nname = \"timers\"\n[source]\ntype = \"stdin\"\n\
         [[stage]]\nname = \"t\"\nmodule = \"{component:timer_fail}\"\nmax_attempts = 2\nretry_backoff_ms = 0\n\
         [[sink]]\ntype = \"stdout\"\n[dead_letter]\ntopic = \"timers.dlq\"\n",
    );
    let out = weir.ok(&["run", p.to_str().unwrap(), "--drain"], b"trap\nreject\nretry\nok\n");
    assert_eq!(out, "fired ok\n", "the timers that did not fail fired once");
    let dead = weir.ok(&["consume", "timers.dlq", "--format", "json"], b"");
    let dead: Vec<serde_json::Value> = dead.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let header = |d: &serde_json::Value, h: &str| d["headers"][h].as_str().unwrap_or_default().to_owned();
    let mut got: Vec<(String, String, String)> = dead
        .iter()
        .map(|d| (d["key"].as_str().unwrap().to_owned(), header(d, "weir.error-kind"), header(d, "weir.timer.domain")))
        .collect();
    got.sort();
    let want = [("reject", "guest"), ("retry", "guest"), ("trap", "trap")].map(|(k, kind)| (k.into(), kind.into(), "event-time".into()));
    assert_eq!(got, want, "{dead:#?}");
    let retry = dead.iter().find(|d| d["key"] == "retry").unwrap();
    assert!(header(retry, "weir.reason").contains("gave up after 2 attempts"), "{retry}");
}
