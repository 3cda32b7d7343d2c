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

/// Run `pipeline` with `--drain`, writing `chunks` to its standard input
/// with a pause between them (so each arrives in batches after the ones
/// before have moved the watermark); its standard output.
fn run_paced(weir: &Weir, pipeline: &std::path::Path, extra: &[&str], chunks: &[&str]) -> String {
    let mut child = weir
        .cmd(&[&["run", pipeline.to_str().unwrap(), "--drain"], extra].concat())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for (i, chunk) in chunks.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(500));
        }
        std::io::Write::write_all(&mut stdin, chunk.as_bytes()).unwrap();
        std::io::Write::flush(&mut stdin).unwrap();
    }
    drop(stdin);
    let out = crate::finish_within(child, Duration::from_secs(60));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn late_messages_are_processed_dropped_or_dead_lettered_as_the_stage_says_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let line = |p: &str, t: u64| format!("{{\"payload\":\"{p}\",\"timestamp_ms\":{t}}}\n");
    // The watermark reaches 20000 with the first chunk; "late" is 19 s behind it.
    let chunks = [line("a", 10_000) + &line("b", 20_000), line("late", 1_000) + &line("c", 30_000)];
    let chunks: Vec<&str> = chunks.iter().map(String::as_str).collect();
    for (policy, lateness, want_out, want_late, want_dropped, want_dead) in [
        ("process", 0, "A\nB\nLATE\nC\n", 1, 0, 0),
        ("drop", 0, "A\nB\nC\n", 1, 1, 0),
        ("dead-letter", 0, "A\nB\nC\n", 1, 0, 1),
        ("drop", 19_000, "A\nB\nLATE\nC\n", 0, 0, 0),
    ] {
        let weir = Weir::new();
        let p = pipeline_file(
            dir.path(),
            "late.toml",
            &format!(
                "[pipeline]\nname = \"late\"\n[source]\ntype = \"stdin\"\nformat = \"json\"\n\
                 [[stage]]\nname = \"up\"\nmodule = \"{{component:uppercase}}\"\nlate = \"{policy}\"\nallowed_lateness_ms = {lateness}\n\
                 [[sink]]\ntype = \"stdout\"\n[dead_letter]\ntopic = \"late.dlq\"\n"
            ),
        );
        let report = dir.path().join("report.json");
        let out = run_paced(&weir, &p, &["--report", report.to_str().unwrap()], &chunks);
        let case = format!("late = {policy}, allowed_lateness_ms = {lateness}");
        assert_eq!(out, want_out, "{case}");
        let stage = &crate::read_json(&report)["stages"][0];
        assert_eq!((stage["late"].as_u64(), stage["late_dropped"].as_u64()), (Some(want_late), Some(want_dropped)), "{case}: {stage}");
        let n = |k: &str| stage[k].as_u64().unwrap();
        let parts = ["ok", "retried", "dead_lettered", "abandoned", "deferred", "late_dropped"].map(n).iter().sum::<u64>();
        assert_eq!((n("received"), parts), (4, 4), "{case}: every message received is accounted for once: {stage}");
        let dead = if want_dead > 0 { weir.consume_json("late.dlq") } else { Vec::new() };
        assert_eq!(dead.len() as u64, want_dead, "{case}");
        if let Some(d) = dead.first() {
            assert_eq!(d["payload"], "late");
            assert_eq!(d["headers"]["weir.error-kind"], "late");
            assert_eq!(d["headers"]["weir.reason"], "late: event time 1000 is 19000 ms behind the watermark 20000 (allowed lateness 0 ms)");
        }
    }
}

#[test]
fn sessions_by_header_event_time_close_once_and_a_message_without_one_is_dead_lettered() {
    crate::component("sessionize");
    let weir = Weir::new();
    let views = std::fs::read(crate::repo_root().join("examples/data/views.jsonl")).unwrap();
    let out = weir.ok(&["run", "examples/pipelines/sessionize.toml", "--drain"], &views);
    // Computed from views.jsonl: ann's views at 09:00, 09:05 (twice, once
    // as an RFC 3339 time) and 11:00; bo's at 09:01, 09:23 and 11:01; a
    // session ends 30 minutes after its last view.
    let s = |user: &str, start: u64, last: u64, events: u64, pages: u64| {
        format!("{{\"user\":\"{user}\",\"start\":{}000,\"end\":{}000,\"events\":{events},\"pages\":{pages}}}\n", start, last + 1800)
    };
    let want = [
        s("ann", 1_796_115_600, 1_796_115_900, 3, 2),
        s("bo", 1_796_115_660, 1_796_117_000, 2, 2),
        s("ann", 1_796_122_800, 1_796_122_800, 1, 1),
        s("bo", 1_796_122_900, 1_796_122_900, 1, 1),
    ]
    .concat();
    assert_eq!(out, want);
    let dead = weir.consume_json("sessionize.dlq");
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["key"], "cy");
    assert_eq!(dead[0]["headers"]["weir.error-kind"], "event-time");
    assert_eq!(dead[0]["headers"]["weir.stage"], "source");
    assert_eq!(dead[0]["headers"]["weir.reason"], "event time: the message has no header \"ts\"");
}

#[test]
fn a_quiet_device_is_alerted_once_by_a_processing_time_timer_and_a_beating_one_never() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_file(
        dir.path(),
        "alert.toml",
        "[pipeline]\nname = \"alert\"\n[source]\ntype = \"stdin\"\nformat = \"json\"\n\
         [[stage]]\nname = \"alert\"\nmodule = \"{component:inactivity_alert}\"\n\
         [stage.config]\ntimeout_ms = \"400\"\n\
         [[sink]]\ntype = \"queue\"\ntopic = \"alerts\"\n",
    );
    // Without --drain: the run goes on after its input ends, as a service would.
    let mut child =
        weir.cmd(&["run", p.to_str().unwrap()]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let beat = |stdin: &mut std::process::ChildStdin, device: &str| {
        std::io::Write::write_all(stdin, format!("{{\"key\":\"{device}\",\"payload\":\"ok\"}}\n").as_bytes()).unwrap();
        std::io::Write::flush(stdin).unwrap();
    };
    let alerts = || -> Vec<serde_json::Value> { weir.consume_all("alerts").iter().map(|l| serde_json::from_str(l).unwrap()).collect() };
    beat(&mut stdin, "b");
    // "a" beats every 100 ms for 2 s: never 400 ms quiet.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        beat(&mut stdin, "a");
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = alerts();
    assert_eq!(seen.len(), 1, "only b went quiet: {seen:?}");
    assert_eq!(seen[0]["device"], "b");
    assert_eq!(seen[0]["timeout_ms"], 400);
    // Now "a" stops too.
    let stopped = Instant::now();
    while alerts().len() < 2 {
        assert!(stopped.elapsed() < Duration::from_secs(30), "a was never alerted");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let seen = alerts();
    assert_eq!(seen.iter().map(|a| a["device"].as_str().unwrap()).collect::<Vec<_>>(), ["b", "a"], "each alerted once");
    assert!(seen[1]["last_seen_ms"].as_u64() > seen[0]["last_seen_ms"].as_u64());
    drop(stdin);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_drained_run_fires_every_timer_even_more_than_a_batch_fires() {
    // A stage fires at most 64 timers per batch here, and the 300 windows
    // all close at the end of the input.
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_file(
        dir.path(),
        "many.toml",
        "[pipeline]\nname = \"many\"\n[source]\ntype = \"stdin\"\nformat = \"json\"\n\
         [[stage]]\nname = \"count\"\nmodule = \"{component:window_count}\"\nbatch_size = 1\nmax_timers_per_batch = 64\n\
         [stage.config]\nwindow_ms = \"60000\"\n[[sink]]\ntype = \"stdout\"\n[dead_letter]\ntopic = \"many.dlq\"\n",
    );
    let input: String = (0..600).map(|i| format!("{{\"payload\":\"e\",\"key\":\"k{}\",\"timestamp_ms\":{}}}\n", i % 300, T0 + i)).collect();
    let out = weir.ok(&["run", p.to_str().unwrap(), "--drain"], input.as_bytes());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 300, "every window is emitted");
    assert!(lines.iter().all(|l| l.ends_with(" 2")), "each with both of its events");
}
