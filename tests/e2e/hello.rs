//! The seed's example, end to end.

use crate::{Weir, component};

#[test]
fn hello_world_is_uppercased_and_not_processed_twice() {
    component("uppercase");
    let weir = Weir::new();
    let out = weir.ok(&["produce", "hello"], b"Hello World!\n");
    assert_eq!(out.trim(), "published 1 message to hello: partition 0 offset 0");

    let out = weir.ok(&["run", "examples/pipelines/hello.toml", "--drain"], b"");
    assert_eq!(out, "HELLO WORLD!\n", "the stdout sink prints the result");
    let out = weir.ok(&["consume", "hello-out", "--count", "1"], b"");
    assert_eq!(out, "HELLO WORLD!\n");

    // A restart resumes from the committed offset: nothing is processed twice.
    let out = weir.ok(&["run", "examples/pipelines/hello.toml", "--drain"], b"");
    assert_eq!(out, "");
    assert_eq!(weir.consume_all("hello-out"), ["HELLO WORLD!"]);

    // New messages are picked up by the next run, and only they.
    weir.produce("hello", &["second"]);
    assert_eq!(weir.ok(&["run", "examples/pipelines/hello.toml", "--drain"], b""), "SECOND\n");
    assert_eq!(weir.consume_all("hello-out"), ["HELLO WORLD!", "SECOND"]);
}

#[test]
fn produce_reports_offsets_and_keeps_keys_and_headers() {
    let weir = Weir::new();
    let out = weir.ok(&["produce", "t", "--key", "user-1", "--header", "source=test", "--header", "v=2"], b"a\nb\nc\n");
    assert_eq!(out.trim(), "published 3 messages to t: partition 0 offsets 0..=2 (3)");
    let msgs = weir.consume_json("t");
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[2]["offset"], 2);
    assert_eq!(msgs[2]["payload"], "c");
    assert_eq!(msgs[0]["key"], "user-1");
    assert_eq!(msgs[0]["headers"]["source"], "test");
    assert_eq!(msgs[0]["headers"]["v"], "2");
    assert!(msgs[0]["timestamp_ms"].as_u64().unwrap() > 1_600_000_000_000);
}

#[test]
fn consume_with_a_group_commits_and_resumes() {
    let weir = Weir::new();
    weir.produce("t", &["1", "2", "3", "4", "5"]);
    assert_eq!(weir.ok(&["consume", "t", "--group", "g", "--start", "earliest", "--count", "2"], b""), "1\n2\n");
    assert_eq!(weir.ok(&["consume", "t", "--group", "g", "--start", "earliest"], b""), "3\n4\n5\n");
    assert_eq!(weir.ok(&["consume", "t", "--group", "g"], b""), "", "the group is caught up");
    assert_eq!(weir.ok(&["consume", "t", "--group", "other", "--start", "earliest", "--count", "1"], b""), "1\n");
}

#[test]
fn consume_shows_what_is_there_and_follow_tails_what_comes() {
    let weir = Weir::new();
    weir.produce("t", &["one", "two"]);
    // Not following: from the oldest message, as kcat -C and rpk do.
    assert_eq!(weir.ok(&["consume", "t"], b""), "one\ntwo\n");
    assert_eq!(weir.ok(&["consume", "t", "--count", "1"], b""), "one\n");
    assert_eq!(weir.ok(&["consume", "t", "--start", "latest"], b""), "");
    // The old spelling still works, and says what it is now.
    let out = weir.output(&["consume", "t", "--from-beginning"], b"");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--start earliest"), "{}", String::from_utf8_lossy(&out.stderr));

    // Following: from the end, waiting for --count messages.
    let mut tail = weir.cmd(&["consume", "t", "--follow", "--count", "1"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let reader = std::thread::spawn({
        let mut stdout = tail.stdout.take().unwrap();
        move || {
            use std::io::Read;
            let mut s = String::new();
            stdout.read_to_string(&mut s).unwrap();
            s
        }
    });
    // Publish until the tail has started and taken one (it starts at the end,
    // so what was published before it started is not what it prints).
    let started = std::time::Instant::now();
    while tail.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "consume --follow --count 1 never ended");
        weir.produce("t", &["three"]);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(reader.join().unwrap(), "three\n");
}

#[test]
fn data_dir_comes_from_the_environment_when_no_flag_is_given() {
    let weir = Weir::new();
    let out = std::process::Command::new(Weir::bin())
        .args(["produce", "envtopic"])
        .env("WEIR_DATA_DIR", weir.data.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    // No input: nothing is published, but the data dir named by the env var is used.
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no lines on standard input"));
    assert!(weir.data.path().join("topics/envtopic/topic.json").exists());
}

/// Regression: with two stdout sinks the format of one was applied to both.
#[test]
fn each_stdout_sink_keeps_its_own_format() {
    let weir = Weir::new();
    weir.produce("in", &["one"]);
    let dir = tempfile::tempdir().unwrap();
    let p = crate::pipeline_file(
        dir.path(),
        "p.toml",
        "[pipeline]\nname = \"p\"\n[source]\ntype = \"queue\"\ntopic = \"in\"\n\
         [[stage]]\nname = \"u\"\nmodule = \"{component:uppercase}\"\n\
         [[sink]]\ntype = \"stdout\"\n[[sink]]\ntype = \"stdout\"\nformat = \"json\"\n",
    );
    let out = weir.ok(&["run", p.to_str().unwrap(), "--drain"], b"");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines.contains(&"ONE"), "{out}");
    let json = lines.iter().find(|l| l.starts_with('{')).expect("a JSON line");
    assert_eq!(serde_json::from_str::<serde_json::Value>(json).unwrap()["payload"], "ONE");
}
