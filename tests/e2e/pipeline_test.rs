//! `weir test`: a pipeline run over given input in a scratch directory, its
//! outputs, routed outputs and dead letters compared with expectation files.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use crate::{Weir, finish_within, pipeline_file, repo_root};

fn run(weir: &Weir, args: &[&str]) -> (bool, String) {
    let out = weir.output(&[&["test"], args].concat(), b"");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() || out.status.code() == Some(1), "weir test crashed: {out:?}");
    (out.status.success(), stdout)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn weir_test_passes_on_the_expected_outputs_and_shows_a_diff_and_unexpected_dead_letters_otherwise() {
    let weir = Weir::new();
    let root = repo_root();
    let pipeline = root.join("examples/pipelines/filter.toml");
    let tests = root.join("examples/tests/filter");
    let input = tests.join("input.jsonl");
    let (expected, dead) = (tests.join("expected.txt"), tests.join("dead.jsonl"));
    let common = [path(&pipeline), "--input", path(&input)];

    let (ok, out) = run(&weir, &[&common[..], &["--expect", path(&expected), "--expect-dead", path(&dead)]].concat());
    assert!(ok, "{out}");
    assert!(out.contains("ok    outputs: 2 as expected") && out.contains("ok    dead letters: 1 as expected"), "{out}");
    assert!(out.contains(": passed (4 in, 4 out, 1 dead-lettered in"), "{out}");

    // One output different, one missing: a unified diff, exit 1.
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.txt");
    std::fs::write(&wrong, "HELLO\nBYE!\nMORE\n").unwrap();
    let (ok, out) = run(&weir, &[&common[..], &["--expect", path(&wrong), "--expect-dead", path(&dead)]].concat());
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL  outputs: 2, not as expected"), "{out}");
    assert!(out.contains("@@ -1,3 +1,2 @@\n HELLO\n-BYE!\n-MORE\n+BYE\n"), "{out}");
    assert!(out.contains("FAILED: 1 of 2 checks"), "{out}");

    // Without --expect-dead, a dead letter fails the test, saying why it was dead-lettered.
    let (ok, out) = run(&weir, &[&common[..], &["--expect", path(&expected)]].concat());
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL  dead letters: 1, expected none"), "{out}");
    assert!(out.contains("shout: guest: bye\u{fffd}  (payload is not UTF-8"), "{out}");

    // A JSON expectation compares the fields it names: a different header value fails.
    let other = dir.path().join("dead.jsonl");
    std::fs::write(&other, std::fs::read_to_string(&dead).unwrap().replace("\"guest\"", "\"trap\"")).unwrap();
    let (ok, out) = run(&weir, &[&common[..], &["--expect", path(&expected), "--expect-dead", path(&other)]].concat());
    assert!(!ok && out.contains("-{\"headers\":{\"weir.error-kind\":\"trap\""), "{out}");
}

#[test]
fn weir_test_update_writes_the_files_and_unordered_ignores_order() {
    let weir = Weir::new();
    let root = repo_root();
    let pipeline = root.join("examples/pipelines/filter.toml");
    let input = root.join("examples/tests/filter/input.jsonl");
    let dir = tempfile::tempdir().unwrap();
    let (text, json, dead) = (dir.path().join("out.txt"), dir.path().join("out.jsonl"), dir.path().join("dead.txt"));
    // An existing JSON file keeps its fields: here the payload and the key.
    std::fs::write(&json, "{\"payload\":\"x\",\"key\":\"k\"}\n").unwrap();
    let common = [path(&pipeline), "--input", path(&input)];
    let expect = ["--expect", path(&text), "--expect-dead", path(&dead)];

    let (ok, out) = run(&weir, &[&common[..], &expect, &["--update"]].concat());
    assert!(ok && out.contains("wrote outputs: 2 to"), "{out}");
    assert_eq!(std::fs::read_to_string(&text).unwrap(), "HELLO\nBYE\n");
    assert_eq!(std::fs::read_to_string(&dead).unwrap(), "shout: guest: bye\u{fffd}\n");
    let (ok, out) = run(&weir, &[&common[..], &["--expect", path(&json), "--update"]].concat());
    assert!(ok, "{out}");
    assert_eq!(std::fs::read_to_string(&json).unwrap(), "{\"key\":\"user-1\",\"payload\":\"HELLO\"}\n{\"payload\":\"BYE\"}\n");
    // What --update wrote passes (the dead letters, unexpected here, fail).
    let (ok, out) = run(&weir, &[&common[..], &["--expect", path(&json)]].concat());
    assert!(!ok && out.contains("ok    outputs: 2 as expected") && out.contains("FAILED: 1 of 2 checks"), "{out}");

    std::fs::write(&text, "BYE\nHELLO\n").unwrap();
    let (ok, out) = run(&weir, &[&common[..], &expect].concat());
    assert!(!ok, "the order differs: {out}");
    let (ok, out) = run(&weir, &[&common[..], &expect, &["--unordered"]].concat());
    assert!(ok, "{out}");
}

/// Routed outputs are checked by topic, whether a sink takes the topic or
/// it is only declared; nothing reaches the pipeline's own files, data
/// directory or NATS.
#[test]
fn weir_test_checks_routed_outputs_and_touches_nothing_of_the_real_pipeline() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_file(
        dir.path(),
        "route.toml",
        r#"[pipeline]
name = "route"

[source]
type = "nats"
stream = "WEIR_TEST_NEVER"
subjects = ["never.>"]
single_process = true

[[stage]]
name = "hostile"
module = "{component:hostile}"

[[sink]]
type = "queue"
topic = "out"

[[sink]]
name = "alerts"
type = "file"
path = "alerts.txt"
from = "alerts"

[[topic]]
name = "audit"

[nats]
urls = ["nats://127.0.0.1:1"]
"#,
    );
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "plain\nroute:alerts\nroute:audit\nroute:nowhere\n").unwrap();
    let files = [("out.txt", "plain\nroute:alerts\nroute:audit\n"), ("alerts.txt", "route:alerts\n"), ("audit.txt", "route:audit\n")];
    for (name, text) in files {
        std::fs::write(dir.path().join(name).with_extension("want"), text).unwrap();
    }
    std::fs::write(dir.path().join("dead.want"), "routing: routing: route:nowhere\n").unwrap();
    let want = |name: &str| path(&dir.path().join(name)).to_owned();
    let args = [
        path(&p).to_owned(),
        "--input".into(),
        path(&input).into(),
        "--expect".into(),
        want("out.want"),
        "--expect".into(),
        format!("alerts={}", want("alerts.want")),
        "--expect".into(),
        format!("audit={}", want("audit.want")),
        "--expect-dead".into(),
        want("dead.want"),
    ];
    let child = weir.cmd(&["test"]).args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let Output { status, stdout, stderr } = finish_within(child, Duration::from_secs(120));
    let out = String::from_utf8_lossy(&stdout);
    assert!(status.success(), "{out}\n{}", String::from_utf8_lossy(&stderr));
    for line in [
        "ok    outputs: 3 as expected",
        "ok    outputs routed to `alerts`: 1 as expected",
        "ok    outputs routed to `audit`: 1 as expected",
        "ok    dead letters: 1 as expected",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    assert!(!dir.path().join("alerts.txt").exists(), "the real file sink was written");
    assert!(std::fs::read_dir(weir.data.path()).unwrap().next().is_none(), "the real data directory was written");

    // Not expected: not checked, and said so. An unknown topic is refused.
    let (ok, out) = run(&weir, &[path(&p), "--input", path(&input), "--expect-dead", &want("dead.want")]);
    assert!(ok && out.contains("--    outputs routed to `alerts`: 1, not checked (--expect alerts=FILE checks them)"), "{out}");
    let err = weir.fails(&["test", path(&p), "--input", path(&input), "--expect", "nowhere=x.txt"], b"");
    assert!(err.contains("`nowhere` is not a topic the stages can route to (they are `alerts`, `audit`"), "{err}");
}

#[test]
fn weir_test_fails_promptly_when_the_pipeline_never_drains() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_file(
        dir.path(),
        "stuck.toml",
        r#"[pipeline]
name = "stuck"

[source]
type = "stdin"

[[stage]]
name = "hostile"
module = "{component:hostile}"
max_attempts = 1000000
retry_backoff_ms = 10

[[sink]]
type = "stdout"
"#,
    );
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "retry\n").unwrap();
    let child = weir
        .cmd(&["test", path(&p), "--input", path(&input), "--timeout", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish_within(child, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAILED: not drained after 2 s"), "{stdout}");
}
