//! Bad pipelines and components get one clear error naming the file, and
//! nothing already published is lost or changed.

use crate::{Weir, pipeline_file};

fn hello_pipeline(module: &str) -> String {
    format!(
        r#"[pipeline]
name = "hello"

[source]
type = "queue"
topic = "hello"

[[stage]]
name = "uppercase"
module = "{module}"

[[sink]]
type = "queue"
topic = "hello-out"
"#
    )
}

/// Run `weir run` and `weir validate` on a broken pipeline, check the error
/// mentions each of `want`, then check the published message is untouched and
/// still processed by a good run.
fn refused_without_loss(weir: &Weir, pipeline: &std::path::Path, want: &[&str]) {
    let p = pipeline.to_str().unwrap();
    for cmd in ["run", "validate"] {
        let err = weir.fails(&[cmd, p, "--drain"][..if cmd == "run" { 3 } else { 2 }], b"");
        for w in want {
            assert!(err.contains(w), "`weir {cmd}` error should mention {w:?}:\n{err}");
        }
        assert!(err.lines().count() <= 12, "the error fits on one screen:\n{err}");
    }
    assert_eq!(weir.consume_all("hello"), ["Hello World!"], "published data unchanged");
    let out = weir.ok(&["run", "examples/pipelines/hello.toml", "--drain"], b"");
    assert_eq!(out, "HELLO WORLD!\n", "the message was not consumed by the failed run");
}

#[test]
fn missing_pipeline_file() {
    let weir = Weir::new();
    weir.produce("hello", &["Hello World!"]);
    let missing = weir.data.path().join("nope.toml");
    refused_without_loss(&weir, &missing, &["nope.toml", "cannot read pipeline file"]);
}

#[test]
fn malformed_toml() {
    let weir = Weir::new();
    weir.produce("hello", &["Hello World!"]);
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_file(dir.path(), "bad.toml", "[pipeline]\nname = \"hello\"\n[source\ntype = \"queue\"\n");
    refused_without_loss(&weir, &p, &["bad.toml:3:", "expected `]`"]);
}

#[test]
fn missing_component_file() {
    let weir = Weir::new();
    weir.produce("hello", &["Hello World!"]);
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_file(dir.path(), "p.toml", &hello_pipeline("no-such.wasm"));
    refused_without_loss(&weir, &p, &["p.toml:10:1", "stage[0].module", "no-such.wasm", "does not exist"]);
}

#[test]
fn a_file_that_is_not_a_component() {
    let weir = Weir::new();
    weir.produce("hello", &["Hello World!"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("text.wasm"), "plain text").unwrap();
    std::fs::write(dir.path().join("core.wasm"), wat::parse_str("(module)").unwrap()).unwrap();
    let p = pipeline_file(dir.path(), "text.toml", &hello_pipeline("text.wasm"));
    refused_without_loss(&weir, &p, &["text.toml:10:1", "text.wasm", "not a WebAssembly file"]);
    let p = pipeline_file(dir.path(), "core.toml", &hello_pipeline("core.wasm"));
    let err = weir.fails(&["validate", p.to_str().unwrap()], b"");
    assert!(err.contains("core.wasm") && err.contains("core WebAssembly module"), "{err}");
}

#[test]
fn a_component_that_does_not_implement_the_stage_world() {
    let weir = Weir::new();
    weir.produce("hello", &["Hello World!"]);
    let dir = tempfile::tempdir().unwrap();
    let bytes = wat::parse_str(r#"(component (import "acme:db/query" (instance (export "run" (func)))))"#).unwrap();
    std::fs::write(dir.path().join("other.wasm"), bytes).unwrap();
    std::fs::write(dir.path().join("empty.wasm"), wat::parse_str("(component)").unwrap()).unwrap();
    let p = pipeline_file(dir.path(), "other.toml", &hello_pipeline("other.wasm"));
    refused_without_loss(&weir, &p, &["other.wasm", "weir:pipeline/stage", "acme:db/query"]);
    let p = pipeline_file(dir.path(), "empty.toml", &hello_pipeline("empty.wasm"));
    let err = weir.fails(&["validate", p.to_str().unwrap()], b"");
    assert!(err.contains("does not implement weir:pipeline/stage") && err.contains("weir:pipeline/consumer"), "{err}");
}

#[test]
fn a_stage_whose_init_fails_stops_the_pipeline_at_start() {
    let weir = Weir::new();
    weir.produce("hello", &["Hello World!"]);
    let dir = tempfile::tempdir().unwrap();
    let toml = hello_pipeline("{component:filter}").replace("[[sink]]", "[stage.config]\nignore_case = true\n\n[[sink]]");
    let p = pipeline_file(dir.path(), "p.toml", &toml);
    let err = weir.fails(&["run", p.to_str().unwrap(), "--drain"], b"");
    assert!(err.contains("init failed") && err.contains("missing config key `drop_if_contains`"), "{err}");
    assert_eq!(weir.consume_all("hello"), ["Hello World!"]);
    assert_eq!(weir.ok(&["run", "examples/pipelines/hello.toml", "--drain"], b""), "HELLO WORLD!\n");
}

#[test]
fn every_config_error_is_reported_at_once() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_file(
        dir.path(),
        "p.toml",
        r#"[pipeline]
name = "p"

[source]
type = "queue"
topic = "in"

[[stage]]
name = "a"
module = "{component:uppercase}"
timeout_ms = 0

[[stage]]
name = "a"
module = "{component:uppercase}"
batch_size = -1

[[sink]]
type = "stdout"
"#,
    );
    let err = weir.fails(&["validate", p.to_str().unwrap()], b"");
    assert!(err.contains("p.toml:11:1: stage[0].timeout_ms: must be between 1 and 3600000 ms, got 0"), "{err}");
    assert!(err.contains("p.toml:14:1: stage[1].name: duplicate stage name \"a\""), "{err}");
    assert!(err.contains("p.toml:16:1: stage[1].batch_size: must be between 1 and 100000, got -1"), "{err}");
    assert!(err.contains("3 errors"), "{err}");
}

#[test]
fn a_single_stage_or_sink_table_is_one_stage_or_sink_and_its_errors_say_where() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let one = |extra: &str| {
        crate::pipeline_file(
            dir.path(),
            "one.toml",
            &format!(
                "[pipeline]\nname = \"one\"\n\n[source]\ntype = \"stdin\"\n\n[stage]\nname = \"up\"\nmodule = \"{{component:uppercase}}\"\n\n[sink]\ntype = \"stdout\"\n{extra}"
            ),
        )
    };
    let p = one("");
    assert_eq!(weir.ok(&["run", p.to_str().unwrap(), "--drain"], b"hello\n"), "HELLO\n");
    let bad = one("format = \"yaml\"\n");
    let err = weir.fails(&["validate", bad.to_str().unwrap()], b"");
    assert!(err.contains("one.toml:11:1: sink: unknown variant `yaml`"), "{err}");
}

#[test]
fn event_time_and_late_settings_are_checked_with_their_place() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let check = |extra: &str, stage_extra: &str| {
        let p = pipeline_file(
            dir.path(),
            "t.toml",
            &format!(
                "[pipeline]\nname = \"t\"\n[source]\ntype = \"stdin\"\n{extra}\n\
                 [[stage]]\nname = \"up\"\nmodule = \"{{component:uppercase}}\"\n{stage_extra}\n[[sink]]\ntype = \"stdout\"\n"
            ),
        );
        weir.fails(&["validate", p.to_str().unwrap()], b"")
    };
    let err = check("[event_time]\nheader = \"ts\"\njson = \"/ts\"", "");
    assert!(err.contains("t.toml:7:1: event_time.json: set either header or json, not both"), "{err}");
    let err = check("[event_time]\njson = \"ts\"", "");
    assert!(err.contains("event_time.json: must be a JSON pointer: empty (the whole payload) or starting with '/', like \"/ts\""), "{err}");
    let err = check("[event_time]\nunit = \"ms\"", "");
    assert!(err.contains("event_time: set header = \"NAME\" or json = \"/POINTER\""), "{err}");
    let err = check("[event_time]\nheader = \"ts\"\nunit = \"minutes\"", "");
    assert!(err.contains("unknown variant `minutes`, expected one of `s`, `ms`, `us`, `ns`"), "{err}");
    let err = check("", "late = \"ignore\"");
    assert!(err.contains("unknown variant `ignore`, expected one of `process`, `drop`, `dead-letter`"), "{err}");
    let err = check("", "allowed_lateness_ms = -1");
    assert!(err.contains("stage[0].allowed_lateness_ms: must be between 0 and 31536000000 ms, got -1"), "{err}");
}

#[test]
fn state_and_generator_settings_are_checked_with_their_place() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_file(
        dir.path(),
        "s.toml",
        "[pipeline]\nname = \"s\"\nstate_cache_bytes = 4096\n\n[source]\ntype = \"generator\"\nkey_size = -2\n\n\
         [[stage]]\nname = \"count\"\nmodule = \"{component:count}\"\nmax_timers_per_batch = 0\n\n[[sink]]\ntype = \"stdout\"\n",
    );
    let err = weir.fails(&["validate", p.to_str().unwrap()], b"");
    assert!(err.contains("s.toml:3:1: pipeline.state_cache_bytes: must be between 1048576 and 68719476736 bytes, got 4096"), "{err}");
    assert!(err.contains("s.toml:7:1: source.key_size: must be between 0 and 65536 bytes, got -2"), "{err}");
    assert!(err.contains("s.toml:12:1: stage[0].max_timers_per_batch: must be between 1 and 10000000 timers, got 0"), "{err}");
    assert!(err.contains("3 errors"), "{err}");
}

/// A Python stage's runtime starts with about 13 MiB of linear memory: a
/// smaller max_memory_bytes is refused at start, naming the setting.
#[test]
fn a_memory_limit_too_small_for_a_component_to_start_names_the_setting() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_file(
        dir.path(),
        "m.toml",
        "[pipeline]\nname = \"m\"\n[source]\ntype = \"stdin\"\n\
         [[stage]]\nname = \"count\"\nmodule = \"{component:count-py}\"\nmax_memory_bytes = 8388608\n[[sink]]\ntype = \"stdout\"\n",
    );
    let err = weir.fails(&["run", p.to_str().unwrap(), "--drain"], b"a\n");
    assert!(
        err.contains("stage `count`: cannot instantiate: it needs 13 MiB of linear memory to start, more than the stage's max_memory_bytes (8 MiB): raise max_memory_bytes to at least"),
        "{err}"
    );
}
