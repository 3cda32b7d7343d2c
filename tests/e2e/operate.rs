//! Operating a pipeline: replay from a point with a new group, redrive
//! dead letters, upgrade a stage while it runs.

use std::time::Duration;

use crate::{Weir, pipeline_file};

/// Pipeline `ops`: topic `in` → uppercase → the file `OUT`.
fn uppercase_to(dir: &std::path::Path, out: &str) -> std::path::PathBuf {
    pipeline_file(
        dir,
        &format!("{out}.toml"),
        &format!(
            "[pipeline]\nname = \"ops\"\n[source]\ntype = \"queue\"\ntopic = \"in\"\n\
             [[stage]]\nname = \"up\"\nmodule = \"{{component:uppercase}}\"\n\
             [[sink]]\ntype = \"file\"\npath = \"{out}\"\n"
        ),
    )
}

#[test]
fn a_new_group_replays_from_a_time_into_exactly_the_later_outputs() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let before: Vec<String> = (0..50).map(|i| format!("before-{i}")).collect();
    let after: Vec<String> = (0..50).map(|i| format!("after-{i}")).collect();
    weir.produce("in", &before.iter().map(String::as_str).collect::<Vec<_>>());
    std::thread::sleep(Duration::from_millis(1100));
    let from = jiff::Timestamp::now();
    std::thread::sleep(Duration::from_millis(1100));
    weir.produce("in", &after.iter().map(String::as_str).collect::<Vec<_>>());

    // The pipeline's own group processes everything.
    let main = uppercase_to(dir.path(), "main.txt");
    weir.ok(&["run", main.to_str().unwrap(), "--drain"], b"");
    assert_eq!(std::fs::read_to_string(dir.path().join("main.txt")).unwrap().lines().count(), 100);

    // A new group from the time between the two batches: the later batch only.
    let replay = uppercase_to(dir.path(), "replay.txt");
    let from = from.to_string();
    weir.ok(&["run", replay.to_str().unwrap(), "--drain", "--group", "replay", "--from", &from], b"");
    let replayed = std::fs::read_to_string(dir.path().join("replay.txt")).unwrap();
    let want: Vec<String> = after.iter().map(|s| s.to_uppercase()).collect();
    assert_eq!(replayed.lines().collect::<Vec<_>>(), want, "exactly the messages from {from} on");

    // The pipeline's group was not moved: run again, nothing more.
    weir.ok(&["run", main.to_str().unwrap(), "--drain"], b"");
    assert_eq!(std::fs::read_to_string(dir.path().join("main.txt")).unwrap().lines().count(), 100);
    // An existing group resumes where it was, whatever --from says.
    weir.ok(&["run", replay.to_str().unwrap(), "--drain", "--group", "replay", "--from", "beginning"], b"");
    assert_eq!(std::fs::read_to_string(dir.path().join("replay.txt")).unwrap().lines().count(), 50);
    // From an offset, and from the beginning, with other new groups.
    let offset = uppercase_to(dir.path(), "offset.txt");
    weir.ok(&["run", offset.to_str().unwrap(), "--drain", "--group", "at-90", "--from", "90"], b"");
    assert_eq!(std::fs::read_to_string(dir.path().join("offset.txt")).unwrap().lines().next(), Some("AFTER-40"));
    let err = weir.fails(&["run", offset.to_str().unwrap(), "--group", "x", "--from", "yesterday"], b"");
    assert!(err.contains("--from \"yesterday\": give `beginning`, `end`, a time"), "{err}");
}

/// Pipeline `fix`: topic `in` → `gate` (GATE) → `count` → the file counts.txt.
fn gated_count(dir: &std::path::Path, file: &str, gate: &str) -> std::path::PathBuf {
    pipeline_file(
        dir,
        file,
        &format!(
            "[pipeline]\nname = \"fix\"\n[source]\ntype = \"queue\"\ntopic = \"in\"\n\
             [[stage]]\nname = \"gate\"\nmodule = \"{{component:{gate}}}\"\nmax_attempts = 1\n\
             [[stage]]\nname = \"count\"\nmodule = \"{{component:count}}\"\n\
             [[sink]]\ntype = \"file\"\npath = \"counts.txt\"\n"
        ),
    )
}

/// Every key's counts, in the order they came: `a=1`, `a=2`, ...
fn counts(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u64>> {
    let mut by_key: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for line in std::fs::read_to_string(dir.join("counts.txt")).unwrap_or_default().lines() {
        let (k, n) = line.rsplit_once('=').unwrap();
        by_key.entry(k.to_owned()).or_default().push(n.parse().unwrap());
    }
    by_key
}

#[test]
fn dead_letters_redriven_after_a_fix_are_processed_once_and_a_second_redrive_adds_nothing() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<&str> = (0..70).map(|i| ["a", "b", "a", "b", "a", "b", "reject"][i % 7]).collect();
    weir.produce("in", &lines);
    // The buggy gate rejects `reject`; the rest is counted.
    let v1 = gated_count(dir.path(), "v1.toml", "hostile");
    weir.ok(&["run", v1.to_str().unwrap(), "--drain"], b"");
    let first = counts(dir.path());
    assert_eq!((first["a"].len(), first["b"].len(), first.get("reject")), (30, 30, None));

    let list = weir.ok(&["dlq", "list", "fix.dlq"], b"");
    assert!(list.starts_with("fix.dlq: 10 dead letters, 0 redriven\n"), "{list}");
    assert!(list.lines().any(|l| l.split_whitespace().take(3).collect::<Vec<_>>() == ["gate", "guest", "10"]), "{list}");
    let show = weir.ok(&["dlq", "show", "fix.dlq", "0@0"], b"");
    assert!(show.contains("stage gate, kind guest, attempts 1") && show.contains("reason: asked to reject"), "{show}");
    assert!(show.contains("weir.source.offset: 6") && show.ends_with("payload (6 bytes):\nreject\n"), "{show}");
    let hex = weir.ok(&["dlq", "show", "fix.dlq", "0@0", "--hex"], b"");
    assert!(hex.contains("00000000  72 65 6a 65 63 74"), "{hex}");

    // The fix: another gate. Redrive what `gate` dead-lettered, then run the fixed pipeline.
    let v2 = gated_count(dir.path(), "v2.toml", "hello");
    let dry = weir.ok(&["dlq", "redrive", "fix.dlq", "--stage", "gate", "--dry-run"], b"");
    assert_eq!(dry.trim(), "would redrive 10 dead letters of fix.dlq: 10 to in");
    let redrove = weir.ok(&["dlq", "redrive", "fix.dlq", "--stage", "gate"], b"");
    assert_eq!(redrove.trim(), "redrove 10 dead letters of fix.dlq: 10 to in");
    weir.ok(&["run", v2.to_str().unwrap(), "--drain"], b"");
    let fixed = counts(dir.path());
    for (key, n) in [("a", 30), ("b", 30), ("reject", 10)] {
        assert_eq!(fixed[key], (1..=n).collect::<Vec<u64>>(), "{key}: each message counted once, in order");
    }
    let redriven = weir.consume_json("in");
    assert_eq!(redriven.len(), 80);
    assert_eq!(redriven[70]["headers"]["weir.redriven-from"], "fix.dlq/0@0");
    assert_eq!(redriven[70]["headers"]["weir.redriven-reason"], "asked to reject");

    // Again: nothing is sent, nothing more is counted.
    let again = weir.ok(&["dlq", "redrive", "fix.dlq"], b"");
    assert_eq!(again.trim(), "redrove 0 dead letters of fix.dlq; 10 redriven before, not sent again");
    weir.ok(&["run", v2.to_str().unwrap(), "--drain"], b"");
    assert_eq!(counts(dir.path()), fixed);
    assert_eq!(weir.topic_len("in"), 80);
    assert!(weir.ok(&["dlq", "list", "fix.dlq"], b"").starts_with("fix.dlq: 10 dead letters, 10 redriven\n"));

    // The same through the HTTP API of the process that owns the directory.
    let (serve, _) = crate::http::start(&weir, &["serve", "--listen", "127.0.0.1:0"]);
    assert!(weir.ok(&["dlq", "list", "fix.dlq", "--kind", "guest"], b"").starts_with("fix.dlq: 10 dead letters, 10 redriven\n"));
    assert!(weir.ok(&["dlq", "show", "fix.dlq", "0@3"], b"").contains("reason: asked to reject"));
    let over_http = weir.ok(&["dlq", "redrive", "fix.dlq", "--ids", "0@1,0@2"], b"");
    assert_eq!(over_http.trim(), "redrove 0 dead letters of fix.dlq; 2 redriven before, not sent again");
    let err = weir.fails(&["dlq", "redrive", "fix.dlq", "--ids", "3"], b"");
    assert!(err.contains("write a dead letter as PARTITION@OFFSET"), "{err}");
    crate::http::stop(serve);
}

/// Upgrade a stage several times under load — through `--watch` and over
/// HTTP, once to a file that is not a component (refused: the running
/// version runs on) — kill -9 in between, and check that every message was
/// counted exactly once and every output names the version that made it.
#[test]
fn a_stage_upgraded_under_load_counts_every_message_once_and_outputs_name_their_version() {
    use std::sync::atomic::{AtomicBool, Ordering};

    const KEYS: usize = 10;
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let stage = dir.path().join("stage.wasm");
    // Versions are put in place as a build would finish: written beside, then renamed.
    let put = |from: &std::path::Path| {
        let tmp = dir.path().join("stage.wasm.tmp");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, &stage).unwrap();
    };
    let (rust, python, js) = (crate::component("count"), crate::component("count-py"), crate::component("count-js"));
    put(&rust);
    let p = pipeline_file(
        dir.path(),
        "p.toml",
        "[pipeline]\nname = \"up\"\n[source]\ntype = \"queue\"\ntopic = \"words\"\n\
         [[stage]]\nname = \"count\"\nmodule = \"stage.wasm\"\ntag_outputs = true\n\
         [[sink]]\ntype = \"queue\"\ntopic = \"counts\"\n",
    );
    weir.ok(&["topics", "create", "words"], b"");
    let (run, base) = crate::http::start(&weir, &["run", p.to_str().unwrap(), "--watch", "--listen", "127.0.0.1:0"]);
    let api = crate::http::Api::new(base.clone(), None);
    let report = || api.get("/v1/pipeline").1["report"]["stages"][0].clone();
    let wait_for_upgrades = |n: u64| {
        let started = std::time::Instant::now();
        while report()["upgrades"].as_u64() != Some(n) || report()["module"].as_str().is_none_or(str::is_empty) {
            assert!(started.elapsed() < Duration::from_secs(120), "upgrade {n} did not happen: {}", report());
            std::thread::sleep(Duration::from_millis(50));
        }
        report()["module"].as_str().unwrap().to_owned()
    };
    let first = wait_for_upgrades(0); // the version it started with, once started

    // Load: batches of 100 words (10 of each key) every 50 ms until told to stop.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let publisher = {
        let (base, stop) = (base.clone(), stop.clone());
        std::thread::spawn(move || {
            let api = crate::http::Api::new(base, None);
            let mut sent = 0;
            while !stop.load(Ordering::SeqCst) {
                let body: String = (0..100).map(|i| format!("{{\"payload\":\"k{}\"}}\n", i % KEYS)).collect();
                let (status, v) = api.send("POST", "/v1/topics/words/messages", "application/x-ndjson", body.as_bytes(), &[]);
                assert_eq!(status, 200, "{v}");
                sent += 100;
                std::thread::sleep(Duration::from_millis(50));
            }
            sent
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    put(&python);
    let py = wait_for_upgrades(1);
    std::fs::write(dir.path().join("stage.wasm.tmp"), b"\0asm\x0d\0\x01\0 not a component").unwrap();
    std::fs::rename(dir.path().join("stage.wasm.tmp"), &stage).unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(
        (report()["upgrades"].as_u64(), report()["module"].as_str()),
        (Some(1), Some(py.as_str())),
        "the broken version was refused"
    );
    let (status, v) = api.post("/v1/pipeline/stages/count/upgrade", &serde_json::json!({"module": js}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["previous"], py);
    let js_digest = wait_for_upgrades(2);
    let (status, v) = api.post("/v1/pipeline/stages/count/upgrade", &serde_json::json!({"module": stage}));
    assert_eq!(status, 422, "not a component: {v}");
    assert!(v["error"].as_str().unwrap().contains("stage `count`"), "{v}");
    put(&rust);
    assert_eq!(wait_for_upgrades(3), first);
    stop.store(true, Ordering::SeqCst);
    let sent = publisher.join().unwrap();
    let mut run = run;
    run.kill().unwrap(); // SIGKILL, with messages in flight
    run.wait().unwrap();

    // After the crash: the rest, drained by the Rust version.
    let rest: Vec<String> = (0..1000).map(|i| format!("k{}", i % KEYS)).collect();
    weir.produce("words", &rest.iter().map(String::as_str).collect::<Vec<_>>());
    weir.ok(&["run", p.to_str().unwrap(), "--drain"], b"");

    let outputs = weir.consume_json("counts");
    let versions: std::collections::BTreeSet<String> =
        outputs.iter().map(|o| o["headers"]["weir.module"].as_str().expect("every output names its version").to_owned()).collect();
    assert_eq!(versions, [first.clone(), py, js_digest].into_iter().collect(), "outputs of each version that ran, and only those");
    let lines: Vec<String> = outputs.iter().map(|o| o["payload"].as_str().unwrap().to_owned()).collect();
    crate::state::check_count_lines_of(&lines, KEYS, (sent + 1000) / KEYS);
}
