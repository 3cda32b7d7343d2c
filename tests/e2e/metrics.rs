//! The run report: it names the slow stage, and every count reconciles.

use crate::{Weir, pipeline_file};

#[test]
fn the_report_names_the_slow_stage_and_counts_reconcile() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_file(
        dir.path(),
        "slow.toml",
        r#"[pipeline]
name = "slow"

[source]
type = "stdin"

[[stage]]
name = "slow"
module = "{component:hostile}"
batch_size = 16
max_attempts = 2
retry_backoff_ms = 0

[[stage]]
name = "fast"
module = "{component:uppercase}"

[[sink]]
type = "queue"
topic = "out"
"#,
    );
    let mut input = String::new();
    for i in 0..300 {
        input.push_str("spin:1\n");
        if i % 60 == 0 {
            input.push_str("reject\nretry\n");
        }
    }
    let report = dir.path().join("report.json");
    weir.ok(&["run", p.to_str().unwrap(), "--drain", "--report", report.to_str().unwrap()], input.as_bytes());
    let r: serde_json::Value = crate::read_json(&report);
    assert_eq!(r["bottleneck"], "slow", "{r:#}");

    let n = |v: &serde_json::Value| v.as_u64().unwrap();
    let (slow, fast, source) = (&r["stages"][0], &r["stages"][1], &r["source"]);
    // 300 spins, 5 rejects, 5 retries that fail twice.
    assert_eq!((n(&slow["received"]), n(&slow["ok"]), n(&slow["retried"]), n(&slow["dead_lettered"])), (315, 300, 5, 10));
    assert_eq!(n(&slow["rejected"]), 5);
    assert_eq!((n(&fast["received"]), n(&fast["ok"])), (300, 300));
    for s in [slow, fast] {
        let parts = n(&s["ok"]) + n(&s["retried"]) + n(&s["dead_lettered"]) + n(&s["abandoned"]);
        assert_eq!(n(&s["received"]), parts, "stage {}", s["name"]);
    }
    assert_eq!(n(&source["received"]), n(&source["acked"]) + n(&source["retried"]) + n(&source["released"]));
    assert_eq!((n(&source["received"]), n(&source["acked"])), (315, 310));
    assert_eq!((n(&r["sink"]["written"]), n(&r["sink"]["dead_lettered"])), (300, 10));

    // Latencies: the slow stage spends about 1 ms per message.
    let p50 = n(&slow["per_message"]["p50_us"]);
    assert!(p50 >= 900, "slow stage p50 {p50} µs");
    assert!(n(&fast["per_message"]["p50_us"]) < p50);
    assert_eq!(n(&slow["per_message"]["count"]), n(&slow["received"]), "one sample per message handled");
}

/// `weir run --drain` of a generator (`source` lines) into one uppercase
/// stage, on a pseudo-terminal (`script`), as a user at a shell would run
/// it; what the terminal got.
fn run_on_a_terminal(source: &str) -> String {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[pipeline]\nname = \"live\"\n[source]\ntype = \"generator\"\n{source}\n\
         [[stage]]\nname = \"up\"\nmodule = \"{{component:uppercase}}\"\n[[sink]]\ntype = \"file\"\npath = \"out.txt\"\n"
    );
    let p = pipeline_file(dir.path(), "live.toml", &toml);
    let cmd = format!("{} run {} --drain --data-dir {}", Weir::bin().display(), p.display(), weir.data.path().display());
    let out = std::process::Command::new("script").args(["-qec", &cmd, "/dev/null"]).env("WEIR_LOG", "warn").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_terminal_gets_a_live_table_with_progress() {
    // About four seconds, so several redraws whatever the machine's load.
    let screen = run_on_a_terminal("count = 4000\nrate = 1000");
    assert!(screen.contains("/4000 ("), "a progress bar against the generator's count:\n{screen}");
    assert!(screen.contains("\x1b[3F"), "the table is redrawn in place:\n{screen}");
    assert!(screen.contains("weir: 4000 in, 4000 out"), "{screen}");
}

#[test]
fn a_run_shorter_than_a_redraw_still_leaves_its_final_table_on_a_terminal() {
    // A hundred messages take far less than the table's one-second period.
    let screen = run_on_a_terminal("count = 100");
    let table_at = screen.find("100/100 (100%)").unwrap_or_else(|| panic!("no final table:\n{screen}"));
    let summary_at = screen.find("weir: 100 in, 100 out").unwrap_or_else(|| panic!("no summary:\n{screen}"));
    assert!(table_at < summary_at, "the summary follows the final table:\n{screen}");
}

/// GET `path` from `addr`; the body, if it answered with success.
fn http_get(addr: &str, path: &str) -> Option<String> {
    ureq::get(format!("http://{addr}{path}")).call().ok()?.body_mut().read_to_string().ok()
}

#[test]
fn prometheus_metrics_are_served_while_running() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_file(
        dir.path(),
        "prom.toml",
        r#"[pipeline]
name = "prom"

[source]
type = "generator"
count = 6000
rate = 2000

[[stage]]
name = "up"
module = "{component:uppercase}"

[[sink]]
type = "file"
path = "out.txt"
"#,
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut run = weir
        .cmd(&["run", p.to_str().unwrap(), "--drain", "--metrics-addr", &addr])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let body = loop {
        let received = |b: &String| {
            let line = b.lines().find(|l| l.starts_with("weir_stage_received_total{pipeline=\"prom\",stage=\"up\"} "))?;
            line.rsplit_once(' ')?.1.parse::<u64>().ok()
        };
        if let Some(b) = http_get(&addr, "/metrics").filter(|b| received(b).is_some_and(|n| n > 0)) {
            break b;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "no metrics from {addr}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(run.wait().unwrap().success());
    // Every sample line is `name{labels} number`; the exposition ends with # EOF.
    let mut names = std::collections::BTreeSet::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        names.insert(series.split('{').next().unwrap().to_owned());
    }
    assert_eq!(body.lines().last(), Some("# EOF"));
    for want in ["weir_source_received_total", "weir_stage_ok_total", "weir_stage_message_seconds_bucket", "weir_sink_written_total"] {
        assert!(names.contains(want), "{want} missing from {names:?}");
    }
    assert!(
        body.lines()
            .any(|l| l.starts_with("weir_stage_message_seconds_bucket{") && l.contains("le=\"+Inf\"") && l.contains("stage=\"up\"")),
        "{body}"
    );
    // Every metric the README's table names is exposed (described, if it
    // has no sample in this run), so the table cannot drift.
    let described: std::collections::BTreeSet<&str> =
        body.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    let readme = std::fs::read_to_string(crate::repo_root().join("README.md")).unwrap();
    let mut checked = 0;
    for row in readme.lines().filter(|l| l.starts_with("| `weir_")) {
        let cell = row.split(" | ").next().unwrap();
        let mut prefix = String::new();
        for name in cell.split('`').skip(1).step_by(2) {
            let name = name.split('{').next().unwrap();
            let full = if let Some(rest) = name.strip_prefix('_') {
                format!("{prefix}{rest}")
            } else {
                prefix = name.splitn(3, '_').take(2).collect::<Vec<_>>().join("_") + "_";
                name.to_owned()
            };
            let family = full.strip_suffix("_total").unwrap_or(&full);
            assert!(described.contains(family) || names.contains(&full), "the README names {full}, which /metrics does not expose");
            checked += 1;
        }
    }
    assert!(checked > 30, "the README's metrics table was not found ({checked} names)");
}

#[test]
fn a_queue_source_reports_its_lag_per_partition() {
    let weir = Weir::new();
    weir.ok(&["topics", "create", "hello", "--partitions", "3"], b"");
    weir.produce("hello", &["a", "b", "c", "d", "e"]);
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    weir.ok(&["run", "examples/pipelines/hello.toml", "--drain", "--report", report.to_str().unwrap()], b"");
    let r: serde_json::Value = crate::read_json(&report);
    assert_eq!(r["source"]["received"], 5);
    assert_eq!(r["source"]["lag"].as_array().unwrap().len(), 3, "one figure per partition: {r:#}");
    assert_eq!(r["source"]["in_flight"], 0);
}
