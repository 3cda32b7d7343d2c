//! Multi-stage pipelines, poison messages, hostile guests, signals and locking.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::{Weir, pipeline_file};

#[test]
fn three_stages_with_a_filter_and_a_dead_letter() {
    let weir = Weir::new();
    let input: Vec<String> = (0..500).map(|i| if i % 10 == 3 { format!("DEBUG {i}") } else { format!("line {i}") }).collect();
    let mut bytes = input.join("\n").into_bytes();
    bytes.extend_from_slice(b"\n\xff\xfe not utf-8\n");
    weir.ok(&["produce", "logs"], &bytes);
    let stdout = weir.ok(&["run", "examples/pipelines/filter.toml", "--drain"], b"");

    let want: Vec<String> = input.iter().filter(|l| !l.contains("DEBUG")).map(|l| l.to_uppercase()).collect();
    assert_eq!(weir.consume_all("logs-clean"), want, "exact output, in order");
    assert_eq!(stdout.lines().collect::<Vec<_>>(), want);

    let dead = weir.consume_json("logs.dlq");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let h = &dead[0]["headers"];
    assert_eq!(h["weir.stage"], "shout");
    assert_eq!(h["weir.error-kind"], "guest");
    assert_eq!(h["weir.source.topic"], "logs");
    assert_eq!(h["weir.source.offset"], "500");
    assert!(h["weir.reason"].as_str().unwrap().contains("not UTF-8"));
}

#[test]
fn hostile_messages_are_contained_and_the_rest_flow() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    // The timeout must leave `alloc` and `big` time to reach their limits
    // on a loaded CI machine, or they are counted as timeouts (at 300 ms one
    // CI run counted no "memory" or no "output": only `loop` may time out).
    let p = crate::hostile_pipeline(dir.path(), "timeout_ms = 1500\nmax_memory_bytes = 33554432\nmax_output_bytes = 1048576");
    weir.produce("in", &["ok-1", "loop", "ok-2", "trap", "alloc", "recurse", "big", "big:104857600", "retry", "reject", "ok-3"]);
    let started = Instant::now();
    let report = dir.path().join("report.json");
    weir.ok(&["run", p.to_str().unwrap(), "--drain", "--report", report.to_str().unwrap()], b"");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(weir.consume_all("out"), ["ok-1", "ok-2", "ok-3"]);
    let r = crate::read_json(&report);
    let stage = &r["stages"][0];
    assert_eq!(stage["instances"], 1);
    // Five messages kill their instance, twice each (two attempts).
    assert!(stage["instances_replaced"].as_u64().unwrap() >= 10, "{stage:#}");
    for kind in ["timeout", "trap", "memory", "output"] {
        assert!(stage["errors"][kind].as_u64().is_some_and(|n| n > 0), "{kind} not counted: {stage:#}");
    }

    let dead = weir.consume_json("h.dlq");
    let mut kinds: Vec<(String, String, String)> = dead
        .iter()
        .map(|d| {
            let h = &d["headers"];
            let payload = d["payload"].as_str().unwrap().to_owned();
            (payload, h["weir.error-kind"].as_str().unwrap().to_owned(), h["weir.attempts"].as_str().unwrap().to_owned())
        })
        .collect();
    kinds.sort();
    let want = [
        ("alloc", "memory", "2"),
        ("big", "output", "1"),
        ("big:104857600", "memory", "2"),
        ("loop", "timeout", "2"),
        ("recurse", "trap", "2"),
        ("reject", "guest", "1"),
        ("retry", "guest", "2"),
        ("trap", "trap", "2"),
    ];
    let want: Vec<(String, String, String)> = want.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect();
    assert_eq!(kinds, want);
}

#[test]
fn a_guest_whose_packed_results_lie_is_failed_for_those_messages_and_the_rest_flow() {
    // The packed export hands the host lengths and counts to trust no more
    // than a canonical-ABI list: each lie fails its call (kind `contract`),
    // the batch is redone one by one, and only the liar is dead-lettered.
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let p = crate::one_stage_pipeline(dir.path(), "bad_packed", "");
    weir.produce("in", &["ok-1", "bad-length", "ok-2", "bad-utf8", "ok-3", "bad-count", "bad-outcome", "ok-4"]);
    let report = dir.path().join("report.json");
    weir.ok(&["run", p.to_str().unwrap(), "--drain", "--report", report.to_str().unwrap()], b"");
    assert_eq!(weir.consume_all("out"), ["ok-1", "ok-2", "ok-3", "ok-4"]);
    let stage = &crate::read_json(&report)["stages"][0];
    assert!(stage["errors"]["contract"].as_u64().unwrap() >= 8, "each lie, twice: {stage:#}");
    let mut dead: Vec<(String, String, String)> = weir
        .consume_json("h.dlq")
        .iter()
        .map(|d| {
            let h = &d["headers"];
            (
                d["payload"].as_str().unwrap().to_owned(),
                h["weir.error-kind"].as_str().unwrap().to_owned(),
                h["weir.attempts"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    dead.sort();
    let want: Vec<(String, String, String)> = ["bad-count", "bad-length", "bad-outcome", "bad-utf8"]
        .iter()
        .map(|p| (p.to_string(), "contract".to_owned(), "2".to_owned()))
        .collect();
    assert_eq!(dead, want);
}

#[test]
fn stages_sharing_a_thread_or_not_give_the_same_outputs_and_dead_letters() {
    // Three stages: hostile (traps on every tenth message, fans one out) → uppercase
    // (rejects a payload that is not UTF-8) → hostile again. On one thread
    // a batch goes through all three with no hand-off; on two, the first
    // two share one; on three, each has its own; on none, the stages and
    // the sink run on the source's thread. A failure in a stage must
    // end its origin's descendants in the stages after it, whichever thread
    // they are on, and the rest must come out in order.
    let mut input: Vec<Vec<u8>> = (0..300).map(|i| if i % 10 == 9 { b"trap".to_vec() } else { format!("ok-{i}").into_bytes() }).collect();
    input.insert(150, b"\xff\xfe".to_vec());
    // One message fans out to three, which go on, in order, where it was.
    input.insert(100, b"copies:3".to_vec());
    let mut want: Vec<String> = (0..300).filter(|i| i % 10 != 9).map(|i| format!("OK-{i}")).collect();
    let at = want.iter().position(|w| w == "OK-100").unwrap();
    want.splice(at..at, ["COPIES:3#0", "COPIES:3#1", "COPIES:3#2"].map(String::from));
    for threads in [0, 1, 2, 3] {
        let weir = Weir::new();
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline_file(
            dir.path(),
            "p.toml",
            &format!(
                r#"[pipeline]
name = "t"
stage_threads = {threads}

[source]
type = "queue"
topic = "in"

[[stage]]
name = "first"
module = "{{component:hostile}}"
max_attempts = 2
retry_backoff_ms = 0

[[stage]]
name = "shout"
module = "{{component:uppercase}}"

[[stage]]
name = "last"
module = "{{component:hostile}}"

[[sink]]
type = "queue"
topic = "out"
"#
            ),
        );
        let mut bytes = input.join(&b'\n');
        bytes.push(b'\n');
        weir.ok(&["produce", "in"], &bytes);
        let mut run = weir.cmd(&["run", p.to_str().unwrap(), "--drain"]);
        run.env("WEIR_LOG", "warn,weir=info");
        let out = Weir::output_of(run, b"");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains(&format!("stage_threads={threads}")), "{stderr}");
        assert_eq!(weir.consume_all("out"), want, "on {threads} thread(s): every good message, in order");
        let mut dead: Vec<(String, String)> = weir
            .consume_json("t.dlq")
            .iter()
            .map(|d| {
                (d["headers"]["weir.stage"].as_str().unwrap().to_owned(), d["headers"]["weir.error-kind"].as_str().unwrap().to_owned())
            })
            .collect();
        assert_eq!(dead.len(), 31, "on {threads} thread(s): 30 traps and one payload not UTF-8");
        dead.sort();
        dead.dedup();
        assert_eq!(dead, [("first".to_owned(), "trap".to_owned()), ("shout".to_owned(), "guest".to_owned())], "on {threads} thread(s)");
    }
}

#[test]
fn an_idle_pipeline_does_not_hold_a_message_back_to_fill_a_batch() {
    // batch_timeout_ms bounds how long the source waits to fill a batch
    // while earlier ones are still in the pipeline; with none in it, what
    // came goes on at once. Ten minutes here: a message held for it would
    // fail the test.
    for threads in ["", "stage_threads = 0"] {
        let weir = Weir::new();
        let dir = tempfile::tempdir().unwrap();
        let p = pipeline_file(
            dir.path(),
            "p.toml",
            &format!(
                r#"[pipeline]
name = "t"
{threads}

[source]
type = "queue"
topic = "in"

[[stage]]
name = "up"
module = "{{component:uppercase}}"
batch_timeout_ms = 600000

[[sink]]
type = "stdout"
"#
            ),
        );
        weir.produce("in", &["one"]);
        let mut run = spawn_run(&weir, p.to_str().unwrap());
        let stdout = run.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(BufReader::new(stdout).lines().next().map(Result::unwrap));
        });
        let line = rx.recv_timeout(Duration::from_secs(60));
        run.kill().unwrap();
        run.wait().unwrap();
        assert_eq!(line, Ok(Some("ONE".to_owned())), "{threads:?}: the message was held back while the source waited to fill a batch");
    }
}

fn spawn_run(weir: &Weir, pipeline: &str) -> std::process::Child {
    weir.cmd(&["run", pipeline]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// The group's committed offsets, as the data directory holds them
/// (`groups/GROUP/TOPIC@ID.json`).
fn committed(weir: &Weir, group: &str) -> Vec<u64> {
    let dir = weir.data.path().join("groups").join(group);
    let Some(file) = std::fs::read_dir(&dir).ok().and_then(|mut d| d.next()).map(|e| e.unwrap().path()) else { return Vec::new() };
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap_or_default();
    v["committed"].as_array().map(|a| a.iter().map(|o| o.as_u64().unwrap()).collect()).unwrap_or_default()
}

#[test]
fn an_idle_pipeline_commits_what_it_finished_so_kill_9_redoes_nothing() {
    // Offsets are committed every `commit_interval_ms` while batches flow,
    // and at once when the pipeline goes idle: a crash after that repeats
    // nothing, however long the interval.
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"[pipeline]
name = "hello"

[source]
type = "queue"
topic = "hello"
commit_interval_ms = 60000

[[stage]]
name = "uppercase"
module = "{component:uppercase}"

[[sink]]
type = "stdout"
"#;
    let p = pipeline_file(dir.path(), "slow-commits.toml", toml);
    weir.produce("hello", &["one", "two"]);
    let mut run = spawn_run(&weir, p.to_str().unwrap());
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    assert_eq!((lines.next().unwrap().unwrap(), lines.next().unwrap().unwrap()), ("ONE".into(), "TWO".into()));
    let started = Instant::now();
    while committed(&weir, "hello") != [2] {
        assert!(started.elapsed() < Duration::from_secs(20), "not committed while idle: {:?}", committed(&weir, "hello"));
        std::thread::sleep(Duration::from_millis(20));
    }
    run.kill().unwrap(); // SIGKILL
    run.wait().unwrap();
    weir.produce("hello", &["three"]);
    assert_eq!(weir.ok(&["run", p.to_str().unwrap(), "--drain"], b""), "THREE\n");
}

#[test]
fn a_running_pipeline_locks_writers_out_readers_follow_and_sigint_drains() {
    let weir = Weir::new();
    weir.produce("hello", &["one"]);
    let mut run = spawn_run(&weir, "examples/pipelines/hello.toml");
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ONE");

    // A second writer is refused with a clear message; nothing changes.
    let err = weir.fails(&["produce", "hello"], b"two\n");
    assert!(err.contains("in use by another weir process") && err.contains("pid"), "{err}");
    // Readers without a group work alongside the running pipeline.
    assert_eq!(weir.ok(&["consume", "hello-out"], b""), "ONE\n");

    let status = std::process::Command::new("kill").args(["-INT", &run.id().to_string()]).status().unwrap();
    assert!(status.success());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = run.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "weir run did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "SIGINT exits 0 after draining: {status}");
    // The data dir is free again and the committed offset holds.
    weir.produce("hello", &["two"]);
    assert_eq!(weir.ok(&["run", "examples/pipelines/hello.toml", "--drain"], b""), "TWO\n");
}

#[test]
fn kill_9_mid_stream_loses_nothing() {
    // With the sink on its own thread, and on the source's, where it
    // appends without waiting and another thread settles once durable.
    for threads in ["", "stage_threads = 0"] {
        kill_9_mid_stream(threads);
    }
}

fn kill_9_mid_stream(threads: &str) {
    let weir = Weir::new();
    let n = 20_000;
    let input: Vec<String> = (0..n).map(|i| format!("message {i:05}")).collect();
    let mut bytes = input.join("\n").into_bytes();
    bytes.push(b'\n');
    weir.ok(&["produce", "hello"], &bytes);

    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_file(
        dir.path(),
        "p.toml",
        &format!(
            r#"[pipeline]
name = "k"
{threads}

[source]
type = "queue"
topic = "hello"

[[stage]]
name = "uppercase"
module = "{{component:uppercase}}"
batch_size = 32

[[sink]]
type = "queue"
topic = "out"
"#
        ),
    );
    let p = p.to_str().unwrap();
    let mut run = weir.cmd(&["run", p]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // Kill it once some, but not all, output is durable.
    let started = Instant::now();
    let at_kill = loop {
        // Until the pipeline has created the topic, describe fails: nothing yet.
        let done = weir.topic_len("out");
        if done > 0 {
            break done;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no output appeared");
        std::thread::sleep(Duration::from_millis(5));
    };
    run.kill().unwrap(); // SIGKILL
    assert!(at_kill < n as u64, "killed mid-stream ({at_kill} of {n} written)");
    run.wait().unwrap();

    weir.ok(&["run", p, "--drain"], b"");
    let out = weir.consume_all("out");
    let distinct: std::collections::BTreeSet<&String> = out.iter().collect();
    let want: std::collections::BTreeSet<String> = input.iter().map(|l| l.to_uppercase()).collect();
    assert_eq!(distinct.into_iter().cloned().collect::<std::collections::BTreeSet<_>>(), want, "{threads:?}: every input reflected");
    assert!(out.len() >= n, "{threads:?}: at least once: {} outputs for {n} inputs", out.len());
}

#[test]
fn a_guest_trapping_on_every_tenth_message_costs_only_those_messages() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_file(
        dir.path(),
        "p.toml",
        r#"[pipeline]
name = "t10"

[source]
type = "queue"
topic = "in"

[[stage]]
name = "hostile"
module = "{component:hostile}"
batch_size = 64
max_attempts = 2
retry_backoff_ms = 0

[[sink]]
type = "queue"
topic = "out"
"#,
    );
    let input: Vec<String> = (0..300).map(|i| if i % 10 == 9 { "trap".to_string() } else { format!("ok-{i}") }).collect();
    weir.produce("in", &input.iter().map(String::as_str).collect::<Vec<_>>());
    weir.ok(&["run", p.to_str().unwrap(), "--drain"], b"");
    let want: Vec<&String> = input.iter().filter(|m| *m != "trap").collect();
    assert_eq!(weir.consume_all("out").iter().collect::<Vec<_>>(), want, "all good messages, in order");
    let dead = weir.consume_json("t10.dlq");
    assert_eq!(dead.len(), 30);
    assert!(dead.iter().all(|d| d["headers"]["weir.error-kind"] == "trap" && d["payload"] == "trap"));
}

#[test]
fn outputs_fan_out_to_declared_topics_and_undeclared_ones_are_dead_lettered_with_content() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_file(
        dir.path(),
        "p.toml",
        r#"[pipeline]
name = "fan"

[source]
type = "queue"
topic = "in"

[[stage]]
name = "router"
module = "{component:hostile}"

[[sink]]
type = "queue"
topic = "out"

[[topic]]
name = "side"
"#,
    );
    weir.produce("in", &["plain", "route:side", "route:nowhere", "plain-2"]);
    weir.ok(&["run", p.to_str().unwrap(), "--drain"], b"");
    assert_eq!(weir.consume_all("out"), ["plain", "route:side", "plain-2"], "the undeclared one's outputs are all withheld");
    assert_eq!(weir.consume_all("side"), ["route:side"]);
    let dead = weir.consume_json("fan.dlq");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["payload"], "route:nowhere", "the dead letter carries the undeliverable output");
    assert_eq!(dead[0]["headers"]["weir.error-kind"], "routing");
    assert!(dead[0]["headers"]["weir.reason"].as_str().unwrap().contains("\"nowhere\""));
    assert_eq!(dead[0]["headers"]["weir.source.offset"], "2");
}

#[test]
fn stage_grants_in_toml_open_only_what_they_name() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("lookup")).unwrap();
    std::fs::write(dir.path().join("lookup/table.txt"), "granted").unwrap();
    let p = pipeline_file(
        dir.path(),
        "grants.toml",
        r#"[pipeline]
name = "g"

[source]
type = "queue"
topic = "in"

[[stage]]
name = "hostile"
module = "{component:hostile}"

[stage.grants]
env = ["WEIR_TEST_GRANT"]
dirs = [{ host = "lookup", guest = "/lookup" }]

[[sink]]
type = "queue"
topic = "out"
"#,
    );
    weir.produce("in", &["read:/lookup/table.txt", "env:WEIR_TEST_GRANT", "read:/etc/passwd", "env:HOME", "connect"]);
    let out = weir.cmd(&["run", p.to_str().unwrap(), "--drain"]).env("WEIR_TEST_GRANT", "yes").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = weir.consume_all("out");
    assert_eq!(got[..2], ["READ granted", "READ yes"]);
    assert!(got[2..].iter().all(|l| l.starts_with("denied")), "{got:?}");
}

#[test]
fn three_json_stages_on_100k_messages_from_stdin() {
    let weir = Weir::new();
    let n = 100_000;
    let mut input = String::new();
    let mut want = Vec::new();
    let mut bad = 0;
    for i in 0..n {
        if i % 97 == 5 {
            input.push_str(&format!("not json {i}\n"));
            bad += 1;
            continue;
        }
        let level = if i % 10 == 3 { "debug" } else { "info" };
        input.push_str(&format!("{{\"i\":{i},\"level\":\"{level}\"}}\n"));
        if level != "debug" {
            want.push(i);
        }
    }
    let out = weir.output(&["run", "examples/pipelines/events.toml", "--drain"], input.as_bytes());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = weir.consume_all("events-clean");
    assert_eq!(got.len(), want.len(), "exact output count");
    for (line, i) in got.iter().zip(&want) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(
            (v["i"].as_u64(), v["level"].as_str(), v["region"].as_str()),
            (Some(*i as u64), Some("info"), Some("eu-west")),
            "{line}"
        );
    }
    let dead = weir.consume_json("events.dlq");
    assert_eq!(dead.len(), bad);
    assert!(
        dead.iter().all(|d| d["headers"]["weir.stage"] == "parse" && d["headers"]["weir.reason"].as_str().unwrap().contains("not JSON"))
    );
}

#[test]
fn generator_source_and_file_sinks_including_one_fed_by_routing() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_file(
        dir.path(),
        "gen.toml",
        r#"[pipeline]
name = "gen"

[source]
type = "generator"
count = 1000
size = 24
keys = 4

[[stage]]
name = "up"
module = "{component:uppercase}"

[[sink]]
type = "file"
path = "out.jsonl"
format = "json"
"#,
    );
    weir.ok(&["run", p.to_str().unwrap(), "--drain"], b"");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1000);
    assert_eq!(lines[5]["key"], "k1");
    assert_eq!(lines[5]["topic"], "generator");
    assert!(lines.iter().enumerate().all(|(i, l)| l["payload"].as_str().unwrap().starts_with(&format!("{i:012}"))), "in order");

    let p = routing_pipeline(dir.path(), "route", "");
    weir.ok(&["run", p.to_str().unwrap(), "--drain"], b"plain\nroute:alerts\nroute:nowhere\n");
    assert_eq!(std::fs::read_to_string(dir.path().join("alerts.txt")).unwrap(), "route:alerts\n", "the routed output only");
    assert_eq!(weir.consume_all("out"), ["plain", "route:alerts"]);
    assert_eq!(weir.consume_json("route.dlq")[0]["headers"]["weir.error-kind"], "routing");
}

/// Pipeline `name` in `dir/NAME.toml`: stdin through the hostile fixture
/// (`route:T` sends its payload to topic T) to topic `out`, and a file sink
/// `alerts.txt` fed by what is routed to `alerts`; then `extra`.
fn routing_pipeline(dir: &std::path::Path, name: &str, extra: &str) -> std::path::PathBuf {
    let toml = format!(
        r#"[pipeline]
name = "{name}"

[source]
type = "stdin"

[[stage]]
name = "hostile"
module = "{{component:hostile}}"

[[sink]]
type = "queue"
topic = "out"

[[sink]]
name = "alerts"
type = "file"
path = "alerts.txt"
from = "alerts"
{extra}"#
    );
    pipeline_file(dir, &format!("{name}.toml"), &toml)
}

#[test]
fn a_routed_topic_that_is_declared_and_taken_by_a_sink_gets_each_output_in_both() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let p = routing_pipeline(dir.path(), "both", "\n[[topic]]\nname = \"alerts\"\n");
    weir.ok(&["run", p.to_str().unwrap(), "--drain"], b"plain\nroute:alerts\n");
    assert_eq!(std::fs::read_to_string(dir.path().join("alerts.txt")).unwrap(), "route:alerts\n", "the sink that takes the topic");
    assert_eq!(weir.consume_all("alerts"), ["route:alerts"], "the declared topic itself");
    assert_eq!(weir.consume_all("out"), ["plain", "route:alerts"]);
}

/// Lines typed into a terminal (or sent down a pipe that stays open) are
/// processed as they come: no source waits to fill a batch or a chunk while
/// a message is waiting.
#[test]
fn a_line_on_an_open_stdin_is_processed_before_the_next_one_comes() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_file(
        dir.path(),
        "live.toml",
        r#"[pipeline]
name = "live"

[source]
type = "stdin"

[[stage]]
name = "shout"
module = "{component:uppercase}"

[[sink]]
type = "stdout"
"#,
    );
    let mut child = weir
        .cmd(&["run", p.to_str().unwrap(), "--drain"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).try_for_each(|l| tx.send(l)));
    for word in ["first", "second"] {
        use std::io::Write;
        writeln!(input, "{word}").unwrap();
        input.flush().unwrap();
        // Generous: under load a line takes milliseconds; one held back
        // until end of input would never come.
        let got = rx.recv_timeout(Duration::from_secs(60)).expect("the line is processed while stdin stays open");
        assert_eq!(got, word.to_uppercase());
    }
    drop(input);
    assert!(child.wait().unwrap().success(), "ends at the end of its input");
}
