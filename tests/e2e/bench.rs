//! `weir bench queue` runs end to end (figures are checked for shape, never
//! for speed: timings on shared machines are noise).

use crate::Weir;

#[test]
fn bench_queue_reports_both_systems_as_json() {
    let weir = Weir::new();
    // NATS runs on 127.0.0.1:4222 (scripts/test starts it when it is not running).
    let out =
        weir.ok(&["bench", "queue", "--messages", "20000", "--batch", "500", "--fsync", "always", "--compare", "nats", "--json"], b"");
    let results: serde_json::Value = serde_json::from_str(&out).unwrap();
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["system"], "weir");
    assert_eq!(results[1]["system"], "NATS JetStream");
    for r in results {
        assert_eq!(r["messages"], 20000);
        for k in ["publish_msgs_per_s", "consume_msgs_per_s", "publish_mb_per_s"] {
            assert!(r[k].as_f64().unwrap() > 0.0, "{k}: {r}");
        }
        assert!(r["publish_p50_us"].as_u64().unwrap() <= r["publish_p999_us"].as_u64().unwrap());
    }
    let per_fsync = results[0]["messages_per_fsync"].as_f64().unwrap();
    assert!(per_fsync >= 1.0, "fsync always reports messages per fsync: {per_fsync}");
}

#[test]
fn bench_queue_prints_a_table() {
    let weir = Weir::new();
    let out = weir.ok(&["bench", "queue", "--messages", "5000", "--partitions", "2"], b"");
    assert!(out.contains("publish msg/s") && out.lines().any(|l| l.starts_with("weir ")), "{out}");
}

#[test]
fn bench_host_compares_against_bare_wasmtime() {
    crate::component("uppercase");
    crate::component("hostile");
    let weir = Weir::new();
    let out = weir.ok(&["bench", "host", "--seconds", "0.2", "--batch", "16"], b"");
    for line in [
        "bare wasmtime, ns/message",
        "weir-host with limits, ns/message",
        "ratio weir-host / bare",
        "ratio beside hostile / alone",
        "instantiate (pooled), µs",
        "cold start, compile cache warm, ms",
    ] {
        let value = out.lines().find(|l| l.starts_with(line)).unwrap_or_else(|| panic!("missing {line:?}:\n{out}"));
        let n: f64 = value.split_whitespace().last().unwrap().parse().unwrap();
        assert!(n > 0.0, "{value}");
    }
}

#[test]
fn bench_a_pipeline_writes_a_report_with_series_and_a_chart() {
    crate::component("uppercase");
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let (report, chart) = (dir.path().join("r.json"), dir.path().join("c.svg"));
    let args = ["bench", "examples/pipelines/hello.toml", "--messages", "3000", "--size", "50", "--fsync", "always", "--rate", "100000"];
    let out = weir.output(&[&args[..], &["--report", report.to_str().unwrap(), "--chart", chart.to_str().unwrap()]].concat(), b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "the pipeline's stdout sink writes to the scratch directory, not the terminal");
    // As the README quotes it: at a set rate under "always", end to end
    // against the disk before the run and in it.
    let disk = stderr.lines().find(|l| l.starts_with("disk in the run: hello-out fdatasync p50 ")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(disk.contains(" fsyncs); end to end p99 is ") && disk.ends_with("x in it"), "{disk}");
    assert!(stderr.lines().any(|l| l.starts_with("at the sink: outputs arrived p50 ")), "{stderr}");
    // And against a bare group commit on the same disk at the same rate:
    // as many records as the run's messages, each the size of one stored.
    let bare = stderr
        .lines()
        .find(|l| l.starts_with("disk at this rate: a bare group commit of 89-byte records "))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(bare.contains(" µs (3000 records, before the run), ") && bare.ends_with("x the bare group commit's"), "{bare}");
    let r: serde_json::Value = crate::read_json(&report);
    let probe = &r["bare_group_commit"];
    assert_eq!(probe["count"], 3000, "{probe}");
    assert!(probe["p50_us"].as_u64() > Some(0) && probe["p50_us"].as_u64() <= probe["p99_us"].as_u64(), "{probe}");
    // Its own fsyncs, each covering one or more records, against which
    // its records' p99 is put.
    let fsyncs = &probe["fsyncs"];
    assert!((1..=3000).contains(&fsyncs["count"].as_u64().unwrap()) && fsyncs["p50_us"].as_u64() > Some(0), "{fsyncs}");
    let own = format!("x the p99 of its own {} fdatasyncs ({} µs); ", fsyncs["count"], fsyncs["p99_us"]);
    assert!(bare.contains(&own), "{bare}");
    // How the machine's CPUs spent the run, the hypervisor's share apart.
    let machine = &r["machine_in_run"];
    let shares: Vec<f64> = ["busy_pct", "idle_pct", "steal_pct"].iter().map(|k| machine[k].as_f64().unwrap()).collect();
    assert!((shares.iter().sum::<f64>() - 100.0).abs() < 0.01 && shares[0] > 0.0, "{machine}");
    assert!(stderr.lines().any(|l| l.starts_with("machine in the run: the CPUs were busy ") && l.ends_with("% of the time")), "{stderr}");
    // And how late a thread sleeping a millisecond at a time woke in it.
    let stalls = &r["stalls_in_run"];
    let wakeups = stalls["late"]["count"].as_u64().unwrap();
    assert!(wakeups > 0 && stalls["over_1ms"].as_u64() <= Some(wakeups), "{stalls}");
    assert!(stalls["longest_us"].as_u64() >= stalls["late"]["p99_us"].as_u64().map(|p| p * 999 / 1000), "{stalls}");
    let line = format!("; {wakeups} wake-ups)");
    assert!(
        stderr.lines().any(|l| l.starts_with("stalls in the run: a thread sleeping 1 ms at a time woke late by ") && l.ends_with(&line)),
        "{stderr}"
    );
    // Each output reaches the sink before it is written: every quantile of
    // the one is at or below the other's.
    let (arrival, end_to_end) = (&r["sink"]["arrival"], &r["sink"]["end_to_end"]);
    assert_eq!((arrival["count"].as_u64(), end_to_end["count"].as_u64()), (Some(6000), Some(6000)), "two sinks");
    for q in ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
        assert!(arrival[q].as_u64() <= end_to_end[q].as_u64(), "{q}: {arrival} against {end_to_end}");
    }
    assert_eq!(r["stages"][0]["name"], "uppercase");
    assert_eq!(r["stages"][0]["received"], 3000);
    assert_eq!(r["sink"]["written"], 6000, "two sinks");
    // The queue sink's fsyncs in the run, each covering one or more batches.
    let fsyncs = r["sink_fdatasync"]["count"].as_u64().unwrap();
    assert!((1..=3000).contains(&fsyncs) && r["sink_fdatasync"]["p50_us"].as_u64() > Some(0), "{}", r["sink_fdatasync"]);
    // The longest of them too: every message arriving while it ran waited for it.
    let longest = format!(", longest {} µs ({fsyncs} fsyncs)", r["sink_fdatasync"]["max_us"]);
    assert!(disk.contains(&longest), "{disk}");
    let series = r["series"].as_array().unwrap();
    assert!(!series.is_empty());
    let seen: f64 = series.iter().map(|p| p["msgs_per_s"].as_f64().unwrap()).sum();
    assert!(seen > 0.0);
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("uppercase") && svg.contains("<polyline"), "{svg}");
    // The user's data directory is left alone: the run used a scratch one.
    assert!(weir.output(&["topics", "describe", "hello-out"], b"").stdout.is_empty());
}

#[test]
fn bench_runs_the_stages_on_the_threads_asked_for() {
    crate::component("uppercase");
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    for (threads, want) in [(None, 1), (Some("0"), 0)] {
        let mut args = vec!["bench", "examples/pipelines/hello.toml", "--messages", "2000", "--report", report.to_str().unwrap()];
        args.extend(threads.map(|t| ["--stage-threads", t]).into_iter().flatten());
        weir.ok(&args, b"");
        let r: serde_json::Value = crate::read_json(&report);
        assert_eq!(r["stage_threads"], want, "{threads:?}");
        assert_eq!(r["sink"]["written"], 4000, "{threads:?}: two sinks");
        assert!(r["bare_group_commit"].is_null(), "only at a set rate is there a rate to commit at");
    }
}

#[test]
fn bench_writes_nothing_into_the_current_directory_unasked() {
    crate::component("uppercase");
    let weir = Weir::new();
    let cwd = tempfile::tempdir().unwrap();
    let pipeline = crate::repo_root().join("examples/pipelines/hello.toml");
    let mut cmd = weir.cmd(&["bench", pipeline.to_str().unwrap(), "--messages", "500"]);
    cmd.current_dir(cwd.path());
    let out = Weir::output_of(cmd, b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0, "files written into the current directory");
    // The report and chart are in a directory of their own, named at the end.
    let line = stderr.lines().find_map(|l| l.strip_prefix("report: ")).unwrap_or_else(|| panic!("{stderr}"));
    let (report, chart) = line.split_once(", chart: ").unwrap();
    let (report, chart) = (std::path::Path::new(report), std::path::Path::new(chart));
    assert!(report.is_file() && chart.is_file() && report.parent() == chart.parent(), "{line}");
    assert_ne!(report.parent(), Some(cwd.path()));
    std::fs::remove_dir_all(report.parent().unwrap()).unwrap();
}

#[test]
fn bench_replays_an_input_file_and_says_when_it_measured_only_rejections() {
    crate::component("json_parse");
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let bench = |extra: &[&str]| {
        let args =
            [&["bench", "examples/pipelines/events.toml", "--messages", "4000", "--report", report.to_str().unwrap()], extra].concat();
        let out = weir.output(&args, b"");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        (stderr, crate::read_json(&report))
    };
    // Made-up payloads are not JSON: every one is dead-lettered, and the
    // bench says its rate is not the pipeline's.
    let (stderr, r) = bench(&[]);
    assert_eq!(r["sink"]["dead_lettered"], 4000);
    assert!(stderr.contains("note: 4000 of 4000 messages (100%) were dead-lettered (the first: payload is not JSON"), "{stderr}");
    assert!(stderr.contains("--input FILE"), "{stderr}");
    // The log shows the first five dead letters in full, then counts them.
    assert_eq!(stderr.matches("WARN message dead-lettered").count(), 5, "{stderr}");
    assert!(stderr.contains("more messages dead-lettered, by stage/kind: parse/guest 3995 (e.g. payload is not JSON"), "{stderr}");
    // The sample events, cycled twice: 14 broken lines, 202 debug events dropped.
    let (stderr, r) = bench(&["--input", "examples/data/events.jsonl"]);
    assert_eq!(r["stages"][0]["received"], 4000);
    assert_eq!(r["sink"]["dead_lettered"], 28);
    assert_eq!(r["stages"][2]["received"], 3568);
    assert!(!stderr.contains("note:"), "{stderr}");
    // Messages in weir's JSON form keep their keys and headers.
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"payload\":\"{\\\"level\\\":\\\"info\\\"}\",\"key\":\"k\"}\n").unwrap();
    let (_, r) = bench(&["--input", input.to_str().unwrap(), "--input-format", "json"]);
    assert_eq!((r["sink"]["written"].as_u64(), r["sink"]["dead_lettered"].as_u64()), (Some(4000), Some(0)));
    // Mostly what the filter drops: counted per stage, and said.
    let logs = dir.path().join("logs.txt");
    std::fs::write(&logs, "a debug line\nok line\nmore debug\ndebug\n").unwrap();
    let args = ["bench", "examples/pipelines/filter.toml", "--messages", "400", "--input", logs.to_str().unwrap(), "--report"];
    let out = weir.output(&[&args[..], &[report.to_str().unwrap()]].concat(), b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r = crate::read_json(&report);
    assert_eq!((r["stages"][1]["name"].as_str(), r["stages"][1]["filtered"].as_u64()), (Some("drop-debug"), Some(300)));
    assert!(stderr.contains("note: the stages dropped 300 of 400 messages (returned no output) and dead-lettered 0"), "{stderr}");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"payload\":\"a\"}\nnot json\n").unwrap();
    let err = weir.fails(&["bench", "examples/pipelines/events.toml", "--input", bad.to_str().unwrap(), "--input-format", "json"], b"");
    assert!(err.contains("bad.jsonl:2:"), "{err}");
}
