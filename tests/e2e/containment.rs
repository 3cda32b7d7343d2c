//! Containment: nothing a guest returns or calls through the host can stall,
//! exhaust or crash weir, and a run that cannot go on exits promptly.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Weir, finish_within, hostile_pipeline, pipeline_file, read_json};

/// Run `pipeline` to the end within `within`, with the report in `dir`:
/// (stderr, report).
fn drain(weir: &Weir, pipeline: &std::path::Path, dir: &std::path::Path, within: Duration) -> (String, serde_json::Value) {
    let report = dir.join("report.json");
    let child = weir
        .cmd(&["run", pipeline.to_str().unwrap(), "--drain", "--report", report.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish_within(child, within);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "weir run failed: {}\n{}", out.status, tail(&stderr));
    (stderr, read_json(&report))
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The dead letters of `h.dlq` as (payload prefix, error kind, reason).
fn dead_letters(weir: &Weir) -> Vec<(String, String, String)> {
    weir.consume_json("h.dlq")
        .iter()
        .map(|d| {
            let h = &d["headers"];
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            (text(&d["payload"]).chars().take(24).collect(), text(&h["weir.error-kind"]), text(&h["weir.reason"]))
        })
        .collect()
}

const MIB: u64 = 1 << 20;

#[test]
fn attacks_through_the_host_are_dead_lettered_or_dropped_and_the_rest_flow_in_bounded_memory() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    // One message per call, so that a call failed by one attack does not
    // replay its neighbours' side effects (logs, counters).
    let p = hostile_pipeline(dir.path(), "batch_size = 1");
    let attacks = [
        // (payload, what must happen: an error kind, or "flows")
        ("key:1000000", "output"),         // a 1 MB key: max_output_key_bytes
        ("headers:70000", "output"),       // more headers than the queue stores: max_output_headers
        ("header:2000000", "output"),      // a 2 MB header value: max_output_header_bytes
        ("reason:20000000", "guest"),      // a 20 MB rejection reason: cut to 1 KiB
        ("state:1000:1048576", "state"),   // 1 GB of state in one call: max_state_write_bytes
        ("state:1:2000000", "state"),      // one 2 MB value: max_state_value_bytes
        ("state-key:100000", "state"),     // a 100 kB key: max_state_key_bytes
        ("log-line:10000000", "flows"),    // one 10 MB log line: cut
        ("log:200000", "flows"),           // 200,000 log lines: rate-limited
        ("counters:200000", "flows"),      // 200,000 counters: max_counters
        ("counter-name:1000000", "flows"), // a 1 MB counter name: max_counter_name_bytes
    ];
    let mut input = Vec::new();
    for (i, (attack, _)) in attacks.iter().enumerate() {
        input.push(format!("ok-{i}"));
        input.push(attack.to_string());
    }
    input.push("ok-last".into());
    weir.produce("in", &input.iter().map(String::as_str).collect::<Vec<_>>());

    let (stderr, report) = drain(&weir, &p, dir.path(), Duration::from_secs(120));

    // Every well-behaved message came out, in order, and so did the
    // outputs of the attacks that are dropped rather than failed.
    let flowing = |a: &&(&str, &str)| a.1 == "flows";
    let want_flowing = ["logged", "logged", "counted", "counted"];
    let out = weir.consume_all("out");
    let oks: Vec<&String> = out.iter().filter(|l| l.starts_with("ok-")).collect();
    let want_oks: Vec<String> = (0..attacks.len()).map(|i| format!("ok-{i}")).chain(["ok-last".to_string()]).collect();
    assert_eq!(oks, want_oks.iter().collect::<Vec<_>>());
    let others: Vec<&String> = out.iter().filter(|l| !l.starts_with("ok-")).collect();
    assert_eq!(others, want_flowing, "{} attacks flow", attacks.iter().filter(flowing).count());

    // Every failing attack is dead-lettered once, with its kind (retried
    // ones after the others).
    let dead = dead_letters(&weir);
    let mut got: Vec<(&str, &str)> = dead.iter().map(|(p, k, _)| (p.as_str(), k.as_str())).collect();
    let mut want: Vec<(&str, &str)> = attacks.iter().filter(|a| !flowing(a)).map(|(a, k)| (&a[..a.len().min(24)], *k)).collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "{dead:#?}");
    for (payload, kind, reason) in &dead {
        assert!(reason.len() < 2048, "{payload}: the reason is bounded ({} bytes)", reason.len());
        match kind.as_str() {
            "output" => assert!(reason.contains("max_output_"), "{payload}: {reason}"),
            "state" => assert!(reason.contains("max_state_"), "{payload}: {reason}"),
            _ => assert!(reason.contains("cut from 20000000 bytes"), "{payload}: {reason}"),
        }
    }

    // Counted where an operator looks.
    let stage = &report["stages"][0];
    assert!(stage["errors"]["output"].as_u64().unwrap() >= 3, "{stage:#}");
    assert!(stage["errors"]["state"].as_u64().unwrap() >= 3, "{stage:#}");
    assert_eq!(stage["limited"]["counter_names"], 200_000 - 100 + 1, "{stage:#}");
    assert!(stage["limited"]["log_lines"].as_u64().unwrap() >= 190_000, "{stage:#}");
    assert_eq!(stage["limited"]["log_lines_cut"], 1, "{stage:#}");
    assert_eq!(stage["custom"].as_object().unwrap().len(), 100, "max_counters");

    // The log stayed readable: the burst, the summaries, the rest.
    let lines = stderr.lines().count();
    assert!(lines < 1_500, "{lines} lines on stderr:\n{}", tail(&stderr));
    assert!(stderr.contains("log lines suppressed"), "{}", tail(&stderr));
    assert!(stderr.contains("counter not created"), "{}", tail(&stderr));
    let longest = stderr.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 8_192, "a log line of {longest} bytes");

    // And weir's memory stayed bounded: without the limits, the state attack
    // alone holds a gigabyte.
    let peak = report["peak_rss_bytes"].as_u64().unwrap();
    eprintln!("peak RSS with default limits under attack: {} MiB", peak / MIB);
    assert!(peak < 400 * MIB, "peak RSS {} MiB", peak / MIB);
}

#[test]
fn state_over_its_total_fails_the_writing_messages_and_keeps_the_rest() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let p = hostile_pipeline(dir.path(), "max_state_bytes = 10000000");
    // Each message stores 3 MB: the first three fit in 10 MB, the rest do not.
    let input: Vec<String> = (0..6).map(|_| "state:3:1000000".to_string()).chain(["ok".to_string()]).collect();
    weir.produce("in", &input.iter().map(String::as_str).collect::<Vec<_>>());
    let (_, report) = drain(&weir, &p, dir.path(), Duration::from_secs(60));
    assert_eq!(weir.consume_all("out"), ["stored", "stored", "stored", "ok"]);
    let dead = dead_letters(&weir);
    assert_eq!(dead.len(), 3, "{dead:#?}");
    assert!(dead.iter().all(|(_, kind, reason)| kind == "state" && reason.contains("max_state_bytes")), "{dead:#?}");
    assert_eq!(report["stages"][0]["dead_lettered"], 3);
}

#[test]
fn a_fatal_sink_error_exits_promptly_with_the_cause() {
    // With the sink on its own thread, and on the source's (stage_threads = 0).
    for threads in ["", "stage_threads = 0"] {
        a_fatal_sink_error_exits_promptly(threads);
    }
}

fn a_fatal_sink_error_exits_promptly(threads: &str) {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_file(
        dir.path(),
        "full.toml",
        &format!(
            r#"[pipeline]
name = "full"
{threads}

[source]
type = "queue"
topic = "in"

[[stage]]
name = "up"
module = "{{component:uppercase}}"

[[sink]]
type = "file"
path = "/dev/full"
"#
        ),
    );
    weir.produce("in", &["a", "b", "c"]);
    for drain in [true, false] {
        let mut args = vec!["run", p.to_str().unwrap()];
        if drain {
            args.push("--drain");
        }
        let child = weir.cmd(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let out = finish_within(child, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{threads:?} drain {drain}: {stderr}");
        assert!(stderr.contains("/dev/full") && stderr.contains("No space left on device"), "{threads:?} drain {drain}: {stderr}");
    }
    assert_eq!(weir.consume_all("in").len(), 3, "{threads:?}: nothing was lost");
}

#[test]
fn a_data_directory_removed_under_a_running_pipeline_stops_it() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let p = hostile_pipeline(dir.path(), "");
    weir.produce("in", &["one"]);
    let child = weir.cmd(&["run", p.to_str().unwrap()]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while weir.topic_len("out") == 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "the pipeline never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::remove_dir_all(weir.data.path()).unwrap();
    let out = finish_within(child, Duration::from_secs(15));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the data directory is gone"), "{stderr}");
}

#[test]
fn concurrency_beyond_the_instance_pool_is_refused_by_validate() {
    let dir = tempfile::tempdir().unwrap();
    let stage = |name: &str| format!("[[stage]]\nname = \"{name}\"\nmodule = \"{{component:uppercase}}\"\nconcurrency = 600\n\n");
    let p = pipeline_file(
        dir.path(),
        "wide.toml",
        &format!("[pipeline]\nname = \"wide\"\n\n[source]\ntype = \"stdin\"\n\n{}{}[[sink]]\ntype = \"stdout\"\n", stage("a"), stage("b")),
    );
    let out = Command::new(Weir::bin()).args(["validate", p.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stage[1].concurrency") && stderr.contains("1202") && stderr.contains("at most 1000"), "{stderr}");
}

#[test]
fn validate_lists_every_limit_and_the_reference_documents_each() {
    let dir = tempfile::tempdir().unwrap();
    let p = hostile_pipeline(dir.path(), "max_state_bytes = 1000");
    let out = Command::new(Weir::bin()).args(["validate", p.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = String::from_utf8(out.stdout).unwrap();
    let reference = std::fs::read_to_string(crate::repo_root().join("docs/pipeline.md")).unwrap();
    let keys: Vec<&str> = listed.lines().filter_map(|l| l.strip_prefix("  ")?.split_whitespace().next()).collect();
    assert!(keys.len() >= 15, "{listed}");
    for key in keys {
        assert!(reference.contains(&format!("\n{key} = ")), "docs/pipeline.md does not document {key}");
    }
    assert!(listed.contains("max_state_bytes                    1000 bytes  (default 67108864)"), "{listed}");
    assert!(listed.contains("max_counters                        100 counters\n"), "a default is listed as it is: {listed}");
}

#[test]
fn a_batch_whose_outputs_fill_the_budget_defers_its_rest_and_loses_nothing() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    // 1 MB out per message, 3 MB a batch: most of each batch comes back later.
    let p = hostile_pipeline(dir.path(), "batch_size = 1\nmax_batch_output_bytes = 3000000");
    let input: Vec<String> = (0..40).map(|i| format!("big:{}", 1_000_000 + i)).collect();
    weir.produce("in", &input.iter().map(String::as_str).collect::<Vec<_>>());
    let (_, report) = drain(&weir, &p, dir.path(), Duration::from_secs(120));
    let stage = &report["stages"][0];
    let mut sizes: Vec<usize> = weir.consume_all("out").iter().map(String::len).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, (0..40).map(|i| 1_000_000 + i).collect::<Vec<_>>(), "every output, once");
    assert!(stage["deferred"].as_u64().unwrap() > 0, "{stage:#}");
    assert_eq!(stage["dead_lettered"], 0, "{stage:#}");
    let counted = ["ok", "retried", "dead_lettered", "abandoned", "deferred"].map(|k| stage[k].as_u64().unwrap()).iter().sum::<u64>();
    assert_eq!(stage["received"].as_u64().unwrap(), counted, "received = ok + retried + dead + abandoned + deferred");
    assert_eq!(report["source"]["released"], stage["deferred"], "deferred messages are released, not charged");
}
