//! The host against real components: the examples and a hostile fixture.

use std::time::{Duration, Instant};

use weir_e2e::component;
use weir_host::{DirGrant, Error, ErrorKind, Failure, Grants, Limits, Message, MessageError, Runtime, RuntimeOptions, StageContext};

fn msg(payload: &str) -> Message {
    Message {
        topic: "t".into(),
        partition: 0,
        offset: 7,
        key: Some("k".into()),
        payload: payload.as_bytes().to_vec().into(),
        headers: vec![("h".into(), b"v".to_vec())],
        timestamp_us: 1,
        event_time_ms: 0,
        attempt: 1,
    }
}

fn ctx(config: &[(&str, &str)], limits: Limits) -> StageContext {
    let config = config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    StageContext::new("test", "s", config, limits)
}

/// A state store on disk, which a context made with it reads.
struct Store {
    _dir: tempfile::TempDir,
    store: weir_queue::StateStore,
}

impl Store {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = weir_queue::Queue::open(dir.path()).unwrap().state_store("g", "t").unwrap();
        Store { _dir: dir, store }
    }

    fn ctx(&self, config: &[(&str, &str)], limits: Limits) -> StageContext {
        ctx(config, limits).with_state(self.store.reader())
    }

    /// Commit a call's writes as the engine does: to the store, then to the stage.
    fn commit(&mut self, w: &weir_host::PendingWrites) {
        self.store.commit(&w.store_writes("s"), &[]).unwrap();
        w.committed();
    }
}

#[test]
fn uppercase_handles_a_batch_in_order() {
    let rt = Runtime::new().unwrap();
    let stage = rt.load(&component("uppercase")).unwrap();
    let mut inst = stage.instantiate(&ctx(&[], Limits::default())).unwrap();
    let batch: Vec<Message> = (0..100).map(|i| msg(&format!("hello {i}"))).collect();
    let out = inst.handle_batch(&batch).unwrap();
    assert_eq!(out.len(), 100);
    for (i, r) in out.iter().enumerate() {
        let o = &r.as_ref().unwrap()[0];
        assert_eq!(o.payload, format!("HELLO {i}").as_bytes());
        assert_eq!(o.key.as_deref(), Some(&b"k"[..]), "key kept");
        assert_eq!(o.headers, vec![("h".to_string(), b"v".to_vec())], "headers kept");
    }
    let bad = inst.handle_batch(&[Message { payload: vec![0xff].into(), ..msg("") }]).unwrap();
    assert!(matches!(&bad[0], Err(MessageError::Guest(Failure::Reject(r))) if r.contains("UTF-8")));
}

#[test]
fn the_guest_sees_every_field_of_a_message_as_sent() {
    let rt = Runtime::new().unwrap();
    let stage = rt.load(&component("hostile")).unwrap();
    let mut inst = stage.instantiate(&ctx(&[], Limits::default())).unwrap();
    let shared = bytes::Bytes::from_static(b"describe");
    let sent = Message {
        topic: "orders".into(),
        partition: 3,
        offset: 1 << 40,
        key: Some(shared.slice(0..3)),
        payload: shared,
        headers: vec![("h1".into(), b"v1".to_vec()), ("h2".into(), vec![])],
        timestamp_us: 1_700_000_000_123_456,
        event_time_ms: 1_700_000_000_123,
        attempt: 5,
    };
    let out = inst.handle_batch(&[sent.clone(), Message { key: None, headers: vec![], ..sent }]).unwrap();
    assert_eq!(
        texts(out),
        [
            r#"topic=orders partition=3 offset=1099511627776 key=Some("des") headers=["h1:v1", "h2:"] timestamp_ms=1700000000123 attempt=5"#,
            r#"topic=orders partition=3 offset=1099511627776 key=None headers=[] timestamp_ms=1700000000123 attempt=5"#,
        ]
    );
}

#[test]
fn filter_gets_its_config_and_counts() {
    let rt = Runtime::new().unwrap();
    let stage = rt.load(&component("filter")).unwrap();
    let c = ctx(&[("drop_if_contains", "debug")], Limits::default());
    let mut inst = stage.instantiate(&c).unwrap();
    let out = inst.handle_batch(&[msg("keep"), msg("debug: drop")]).unwrap();
    assert_eq!(out[0].as_ref().unwrap().len(), 1);
    assert!(out[1].as_ref().unwrap().is_empty());
    assert_eq!(c.counters().snapshot().get("dropped"), Some(&1));
}

#[test]
fn init_errors_carry_the_guest_message() {
    let rt = Runtime::new().unwrap();
    let stage = rt.load(&component("filter")).unwrap();
    match stage.instantiate(&ctx(&[], Limits::default())) {
        Err(Error::Init { reason, .. }) => {
            assert_eq!(reason, "missing config key `drop_if_contains`")
        }
        other => panic!("expected init error, got {:?}", other.err()),
    }
}

#[test]
fn an_init_that_never_returns_times_out() {
    let rt = Runtime::new().unwrap();
    let stage = rt.load(&component("hostile")).unwrap();
    let limits = Limits { timeout: Duration::from_millis(100), ..Limits::default() };
    match stage.instantiate(&ctx(&[("init", "loop")], limits)) {
        Err(Error::Init { reason, .. }) => assert!(reason.starts_with("timeout"), "{reason}"),
        other => panic!("expected init timeout, got {:?}", other.err()),
    }
}

#[test]
fn hostile_calls_are_classified_and_the_stage_recovers() {
    let rt = Runtime::new().unwrap();
    let stage = rt.load(&component("hostile")).unwrap();
    let limits = Limits {
        timeout: Duration::from_millis(200),
        max_memory_bytes: 32 << 20,
        output: weir_host::OutputLimits { max_bytes: 1 << 20, ..Default::default() },
        ..Limits::default()
    };
    let c = ctx(&[], limits.clone());
    for (payload, want) in
        [("loop", ErrorKind::Timeout), ("trap", ErrorKind::Trap), ("alloc", ErrorKind::Memory), ("recurse", ErrorKind::Trap)]
    {
        let mut inst = stage.instantiate(&c).unwrap();
        let started = Instant::now();
        match inst.handle_batch(&[msg("fine"), msg(payload)]) {
            Err(Error::Call { kind, .. }) => assert_eq!(kind, want, "{payload}"),
            other => panic!("{payload}: expected a {want} error, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{payload} was not stopped");
        assert!(inst.is_poisoned());
        // A fresh instance of the same stage works.
        let mut fresh = stage.instantiate(&c).unwrap();
        assert_eq!(fresh.handle_batch(&[msg("fine")]).unwrap()[0].as_ref().unwrap()[0].payload, &b"fine"[..]);
    }
    // Copying an 8 MiB output out of the guest is not a hang: no deadline
    // meant for the loop above (a loaded machine took over 200 ms for it).
    let c = ctx(&[], Limits { timeout: Duration::from_secs(60), ..limits });
    let mut inst = stage.instantiate(&c).unwrap();
    let out = inst.handle_batch(&[msg("big"), msg("retry"), msg("reject"), msg("ok")]).unwrap();
    assert!(matches!(&out[0], Err(MessageError::OutputLimit { limit: "max_output_bytes", value, max: 1048576 }) if *value == 8 << 20));
    assert!(matches!(&out[1], Err(MessageError::Guest(Failure::Retry(_)))));
    assert!(matches!(&out[2], Err(MessageError::Guest(Failure::Reject(_)))));
    assert!(out[3].is_ok());
    assert!(!inst.is_poisoned());
}

#[test]
fn files_that_are_not_stages_are_refused_clearly() {
    let rt = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], &str); 4] = [
        ("text.wasm", b"hello, not wasm", "not a WebAssembly file"),
        ("core.wasm", b"\0asm\x01\0\0\0", "core WebAssembly module"),
        ("empty-component.wasm", &wat::parse_str("(component)").unwrap(), "does not implement weir:pipeline/stage"),
        (
            "foreign-import.wasm",
            &wat::parse_str(r#"(component (import "acme:db/query" (instance (export "run" (func)))))"#).unwrap(),
            "acme:db/query",
        ),
    ];
    for (name, bytes, want) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        match rt.load(&path) {
            Err(e @ Error::NotAStage { .. }) => {
                let text = e.to_string();
                assert!(text.contains(want), "{name}: {text}");
                assert!(text.contains(name), "{name}: error names the file: {text}");
            }
            other => panic!("{name}: expected NotAStage, got {other:?}"),
        }
    }
    assert!(matches!(rt.load(&dir.path().join("missing.wasm")), Err(Error::Read { .. })));
}

#[test]
fn compiled_components_are_cached_and_a_damaged_artifact_is_recompiled() {
    let cache = tempfile::tempdir().unwrap();
    let artifacts = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(cache.path()).map_or_else(|_| Vec::new(), |d| d.map(|e| e.unwrap().path()).collect())
    };
    let rt = Runtime::with_cache(cache.path()).unwrap();
    rt.load(&component("uppercase")).unwrap();
    let files = artifacts();
    assert_eq!(files.len(), 1, "one artifact: {files:?}");
    let written = std::fs::metadata(&files[0]).unwrap().modified().unwrap();

    // A new runtime (as after a restart) loads the artifact instead of compiling.
    let rt = Runtime::with_cache(cache.path()).unwrap();
    let stage = rt.load(&component("uppercase")).unwrap();
    assert_eq!(std::fs::metadata(&files[0]).unwrap().modified().unwrap(), written, "not rewritten");
    let mut inst = stage.instantiate(&ctx(&[], Limits::default())).unwrap();
    assert_eq!(inst.handle_batch(&[msg("a")]).unwrap()[0].as_ref().unwrap()[0].payload, &b"A"[..]);

    // A damaged artifact is ignored and replaced.
    let whole = std::fs::read(&files[0]).unwrap();
    std::fs::write(&files[0], b"\0asm but not really a compiled artifact").unwrap();
    let rt = Runtime::with_cache(cache.path()).unwrap();
    let stage = rt.load(&component("uppercase")).unwrap();
    let mut inst = stage.instantiate(&ctx(&[], Limits::default())).unwrap();
    assert_eq!(inst.handle_batch(&[msg("b")]).unwrap()[0].as_ref().unwrap()[0].payload, &b"B"[..]);
    assert_eq!(std::fs::read(&files[0]).unwrap(), whole, "rewritten with a real artifact");
    // So is a truncated one, and one with a flipped byte deep inside (code
    // wasmtime's own header check would not read): the checksum catches both.
    let truncate = |b: &mut Vec<u8>| b.truncate(b.len() / 2);
    let flip = |b: &mut Vec<u8>| {
        let at = b.len() * 3 / 4;
        b[at] ^= 0x40;
    };
    for damage in [&truncate as &dyn Fn(&mut Vec<u8>), &flip] {
        let mut bytes = whole.clone();
        damage(&mut bytes);
        std::fs::write(&files[0], &bytes).unwrap();
        let rt = Runtime::with_cache(cache.path()).unwrap();
        let mut inst = rt.load(&component("uppercase")).unwrap().instantiate(&ctx(&[], Limits::default())).unwrap();
        assert_eq!(inst.handle_batch(&[msg("c")]).unwrap()[0].as_ref().unwrap()[0].payload, &b"C"[..]);
        assert_eq!(std::fs::read(&files[0]).unwrap(), whole, "deleted and compiled again");
    }
    // A different component gets its own artifact.
    rt.load(&component("filter")).unwrap();
    assert_eq!(artifacts().len(), 2);
}

#[test]
fn a_cache_directory_others_can_write_to_or_own_is_not_used() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let root = tempfile::tempdir().unwrap();
    // Made by weir: private.
    let made = root.path().join("made");
    Runtime::with_cache(&made).unwrap().load(&component("uppercase")).unwrap();
    assert_eq!(std::fs::metadata(&made).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::read_dir(&made).unwrap().count(), 1);
    // Writable by others: compiled in memory, nothing read or written there.
    let open = root.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let stage = Runtime::with_cache(&open).unwrap().load(&component("uppercase")).unwrap();
    assert_eq!(
        stage.instantiate(&ctx(&[], Limits::default())).unwrap().handle_batch(&[msg("x")]).unwrap()[0].as_ref().unwrap()[0].payload,
        &b"X"[..]
    );
    assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0, "nothing cached in a world-writable directory");
    // Owned by another user (root can arrange that; others cannot, and then
    // it is their own directory, which is fine).
    if std::fs::metadata("/proc/self").unwrap().uid() == 0 {
        let theirs = root.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
        Runtime::with_cache(&theirs).unwrap().load(&component("uppercase")).unwrap();
        assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0, "nothing cached in another user's directory");
    }
}

#[test]
fn guests_get_no_files_environment_arguments_or_sockets() {
    let rt = Runtime::new().unwrap();
    let stage = rt.load(&component("hostile")).unwrap();
    let mut inst = stage.instantiate(&ctx(&[], Limits::default())).unwrap();
    let batch = [msg("read-file"), msg("env"), msg("connect"), msg("args")];
    let out: Vec<String> =
        inst.handle_batch(&batch).unwrap().into_iter().map(|r| String::from_utf8(r.unwrap().remove(0).payload.to_vec()).unwrap()).collect();
    assert!(out[0].starts_with("denied"), "file read: {}", out[0]);
    assert!(out[1].starts_with("denied"), "env var: {}", out[1]);
    assert!(out[2].starts_with("denied"), "socket: {}", out[2]);
    assert_eq!(out[3], "args: 0");
    assert!(!inst.is_poisoned(), "a denied call is an error for the guest, not a trap");
}

fn texts(results: Vec<weir_host::MessageResult>) -> Vec<String> {
    results.into_iter().map(|r| String::from_utf8(r.unwrap().remove(0).payload.to_vec()).unwrap()).collect()
}

#[test]
fn grants_open_exactly_what_they_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "granted").unwrap();
    let rt = Runtime::new().unwrap();
    let stage = rt.load(&component("hostile")).unwrap();
    let grants = Grants {
        env: vec![("GIVEN".into(), "yes".into())],
        dirs: vec![DirGrant { host: dir.path().to_owned(), guest: "/data".into(), writable: false }],
        stderr: false,
    };
    let mut inst = stage.instantiate(&ctx(&[], Limits::default()).with_grants(grants)).unwrap();
    let batch = [msg("read:/data/hello.txt"), msg("env:GIVEN"), msg("read:/etc/passwd"), msg("env:HOME"), msg("connect")];
    let out = texts(inst.handle_batch(&batch).unwrap());
    assert_eq!(out[..2], ["READ granted", "READ yes"]);
    for denied in &out[2..] {
        assert!(denied.starts_with("denied"), "{out:?}");
    }
}

#[test]
fn fuel_stops_a_busy_guest_and_needs_a_metering_runtime() {
    let limits = Limits { max_fuel: Some(50_000_000), ..Limits::default() };
    let rt = Runtime::with_options(&RuntimeOptions { fuel: true, ..RuntimeOptions::default() }).unwrap();
    let stage = rt.load(&component("hostile")).unwrap();
    let mut inst = stage.instantiate(&ctx(&[], limits.clone())).unwrap();
    assert_eq!(texts(inst.handle_batch(&[msg("fine")]).unwrap()), ["fine"]);
    match inst.handle_batch(&[msg("loop")]) {
        Err(Error::Call { kind, reason, .. }) => {
            assert_eq!(kind, ErrorKind::Fuel);
            assert!(reason.contains("50000000"), "{reason}");
        }
        other => panic!("expected a fuel error, got {other:?}"),
    }
    // Each call gets a full tank again.
    let mut inst = stage.instantiate(&ctx(&[], limits.clone())).unwrap();
    for _ in 0..100 {
        inst.handle_batch(&[msg("fine")]).unwrap();
    }
    let plain = Runtime::new().unwrap().load(&component("hostile")).unwrap();
    match plain.instantiate(&ctx(&[], limits)) {
        Err(Error::Instantiate { reason, .. }) => assert!(reason.contains("does not meter fuel"), "{reason}"),
        other => panic!("expected a refusal, got {:?}", other.err()),
    }
}

#[test]
fn a_100_mb_output_is_stopped_by_the_memory_cap_or_the_output_cap() {
    let rt = Runtime::new().unwrap();
    let stage = rt.load(&component("hostile")).unwrap();
    let hundred_mb = msg(&format!("big:{}", 100 << 20));
    // Default limits: the guest cannot even build it.
    let mut inst = stage.instantiate(&ctx(&[], Limits::default())).unwrap();
    match inst.handle_batch(std::slice::from_ref(&hundred_mb)) {
        Err(Error::Call { kind, .. }) => assert_eq!(kind, ErrorKind::Memory),
        other => panic!("expected a memory error, got {other:?}"),
    }
    // Room to build it: the output cap rejects the message, the instance lives on.
    let roomy = Limits { max_memory_bytes: 256 << 20, ..Limits::default() };
    let mut inst = stage.instantiate(&ctx(&[], roomy)).unwrap();
    let out = inst.handle_batch(&[hundred_mb, msg("fine")]).unwrap();
    assert!(matches!(&out[0], Err(MessageError::OutputLimit { value, .. }) if *value == 100 << 20), "{:?}", out[0].as_ref().err());
    assert!(out[1].is_ok());
}

#[test]
fn state_writes_over_a_limit_fail_the_call_as_state_and_write_nothing() {
    let rt = Runtime::new().unwrap();
    let stage = rt.load(&component("hostile")).unwrap();
    let limits = Limits {
        state: weir_host::StateLimits { max_key_bytes: 100, max_value_bytes: 1000, max_write_bytes: 5000, max_bytes: 8000, max_timers: 10 },
        ..Limits::default()
    };
    let mut store = Store::new();
    let c = store.ctx(&[], limits);
    for (payload, limit) in
        [("state-key:101", "max_state_key_bytes"), ("state:1:1001", "max_state_value_bytes"), ("state:6:999", "max_state_write_bytes")]
    {
        let mut inst = stage.instantiate(&c).unwrap();
        match inst.handle_batch(&[msg(payload)]) {
            Err(Error::Call { kind: ErrorKind::State, reason, .. }) => assert!(reason.contains(limit), "{payload}: {reason}"),
            other => panic!("{payload}: expected a state error, got {other:?}"),
        }
        assert!(inst.is_poisoned(), "{payload}");
        assert_eq!(c.state().bytes(), 0, "{payload}: the failed call's writes are discarded");
    }
    // The total counts committed and pending state: 4 × ~1 kB pass twice, not a third time.
    let mut inst = stage.instantiate(&c).unwrap();
    // (Its keys are named after the message's offset.)
    for round in 0..2 {
        let out = inst.handle_batch(&[Message { offset: round, ..msg("state:4:990") }]).unwrap();
        assert!(out[0].is_ok(), "round {round}");
        store.commit(&inst.take_writes().unwrap());
    }
    assert!(c.state().bytes() > 7_000);
    match inst.handle_batch(&[Message { offset: 2, ..msg("state:4:990") }]) {
        Err(Error::Call { kind: ErrorKind::State, reason, .. }) => assert!(reason.contains("max_state_bytes"), "{reason}"),
        other => panic!("expected max_state_bytes, got {other:?}"),
    }
}

#[test]
fn counters_past_their_limits_are_not_created_but_counted() {
    let rt = Runtime::new().unwrap();
    let stage = rt.load(&component("hostile")).unwrap();
    let limits = Limits { counters: weir_host::CounterLimits { max_names: 10, max_name_bytes: 20 }, ..Limits::default() };
    let c = ctx(&[], limits);
    let mut inst = stage.instantiate(&c).unwrap();
    let out = inst.handle_batch(&[msg("counters:25"), msg("counter-name:21"), msg("counters:5")]).unwrap();
    assert!(out.iter().all(Result::is_ok));
    let counters = c.counters().snapshot();
    assert_eq!(counters.len(), 10);
    assert_eq!(counters["hostile-0"], 2, "existing counters still count");
    assert_eq!(c.limited().snapshot()["counter_names"], 15 + 1);
}

#[test]
fn log_lines_past_the_rate_are_suppressed_counted_and_cut() {
    let rt = Runtime::new().unwrap();
    let stage = rt.load(&component("hostile")).unwrap();
    let limits = Limits { log: weir_host::LogLimits { lines_per_second: 1, burst_lines: 5, max_line_bytes: 64 }, ..Limits::default() };
    let c = ctx(&[], limits);
    let mut inst = stage.instantiate(&c).unwrap();
    // Lines count only where a subscriber would write them.
    let subscriber = tracing_subscriber::fmt().with_writer(std::io::sink).with_max_level(tracing::Level::WARN).finish();
    let out = tracing::subscriber::with_default(subscriber, || inst.handle_batch(&[msg("log-line:1000"), msg("log:100")]).unwrap());
    assert!(out.iter().all(Result::is_ok));
    let limited = c.limited().snapshot();
    assert_eq!(limited["log_lines_cut"], 1, "{limited:?}");
    assert!((95..=96).contains(&limited["log_lines"]), "a burst of 5 (and maybe one more), the rest suppressed: {limited:?}");
}

#[test]
fn the_pool_holds_as_many_instances_as_a_pipeline_may_run() {
    let rt = Runtime::new().unwrap();
    let stage = rt.load(&component("count")).unwrap();
    let c = ctx(&[], Limits::default());
    let started = Instant::now();
    let mut held: Vec<_> =
        (0..weir_host::MAX_INSTANCES).map(|i| stage.instantiate(&c).unwrap_or_else(|e| panic!("instance {i}: {e}"))).collect();
    eprintln!("{} instances in {:?}", held.len(), started.elapsed());
    // They all work.
    assert!(held.last_mut().unwrap().handle_batch(&[msg("k")]).unwrap()[0].is_ok());
}

#[test]
fn a_component_built_against_0_1_0_runs_unchanged_beside_0_2_0() {
    let rt = Runtime::new().unwrap();
    let old = rt.load(&component("uppercase_v0_1")).unwrap();
    let new = rt.load(&component("uppercase")).unwrap();
    assert_eq!((old.wit_version(), new.wit_version()), ("0.1.0", "0.2.1"));
    assert!(old.writes_state() && !old.uses_timers());
    let c = ctx(&[], Limits::default());
    let mut inst = old.instantiate(&c).unwrap();
    let out = inst.handle_batch(&[msg("old"), msg("guest")]).unwrap();
    let payloads: Vec<_> = out.iter().map(|r| r.as_ref().unwrap()[0].payload.clone()).collect();
    assert_eq!(payloads, [&b"OLD"[..], &b"GUEST"[..]]);
    let w = inst.take_writes().expect("it wrote state through the 0.1.0 import");
    assert_eq!(w.writes().get(&b"n"[..]), Some(&Some(2u64.to_le_bytes().to_vec())));
    assert_eq!(c.counters().snapshot().get("upper"), Some(&2));
    assert!(matches!(inst.on_timers(&[]), Err(Error::Call { .. })), "0.1.0 has no on-timers");
}

#[test]
fn a_component_built_against_0_2_0_runs_unchanged_beside_packed_0_2_1() {
    let rt = Runtime::new().unwrap();
    let old = rt.load(&component("uppercase_v0_2")).unwrap();
    let new = rt.load(&component("uppercase")).unwrap();
    assert_eq!((old.wit_version(), old.packed()), ("0.2.0", false));
    assert_eq!((new.wit_version(), new.packed()), ("0.2.1", true));
    let c = ctx(&[], Limits::default());
    let batch = [msg("old"), msg("guest")];
    let run = |stage: &weir_host::Stage| stage.instantiate(&c).unwrap().handle_batch(&batch).unwrap();
    let (a, b) = (run(&old), run(&new));
    // Same outputs, keys and headers through the list of messages and the packed batch.
    let outputs = |r: &[weir_host::MessageResult]| -> Vec<_> {
        r.iter()
            .map(|r| {
                r.as_ref()
                    .unwrap()
                    .iter()
                    .map(|o| (o.key.as_deref().map(<[u8]>::to_vec), o.payload.to_vec(), o.headers.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    assert_eq!(outputs(&a), outputs(&b));
    assert_eq!(outputs(&a)[1], [(Some(b"k".to_vec()), b"GUEST".to_vec(), vec![("h".to_owned(), b"v".to_vec())])]);
    assert_eq!(c.counters().snapshot().get("upper"), Some(&2), "its 0.2.0 host imports resolve to 0.2.1's");
}

#[test]
fn timers_set_by_a_call_fire_through_on_timers_and_are_deleted_by_the_firing_call() {
    use weir_host::{TimeDomain, Timer};
    let rt = Runtime::new().unwrap();
    let stage = rt.load(&component("window_count")).unwrap();
    assert!(stage.uses_timers() && stage.writes_state());
    let mut store = Store::new();
    let c = store.ctx(&[("window_ms", "1000")], Limits::default());
    let mut inst = stage.instantiate(&c).unwrap();
    let at = |ms| Message { event_time_ms: ms, ..msg("x") };
    inst.handle_batch(&[at(100), at(900), at(1100)]).unwrap();
    store.commit(&inst.take_writes().unwrap());
    let state = c.state();
    assert_eq!(state.timer_count(), 2);
    assert!(state.due_timers(TimeDomain::Event, 999, 10).is_empty());
    let due = state.due_timers(TimeDomain::Event, 1000, 10);
    assert_eq!(due, vec![Timer { domain: TimeDomain::Event, at_ms: 1000, key: [&b"weir.w/"[..], &0u64.to_be_bytes(), b"k"].concat() }]);
    let out = inst.on_timers(&due).unwrap();
    assert_eq!(out[0].as_ref().unwrap()[0].payload, &b"k 0 2"[..]);
    let fired = inst.take_writes().unwrap();
    assert_eq!(fired.timers().get(&due[0]), Some(&false), "the firing call deletes the timer");
    assert!(state.due_timers(TimeDomain::Event, 1000, 10).is_empty(), "not due again while its delete is pending");
    fired.abort();
    assert_eq!(state.due_timers(TimeDomain::Event, 1000, 10), due, "aborted: it fires again");
    // The watermark the guest reads.
    assert_eq!(c.watermark(), None);
    c.advance_watermark(5000);
    c.advance_watermark(10);
    assert_eq!(c.watermark(), Some(5000), "never goes back");
    inst.handle_batch(&[at(1200)]).unwrap();
    assert_eq!(c.counters().snapshot().get("late"), Some(&1), "window [1000, 2000) closed at watermark 5000");
}

#[test]
fn max_timers_refuses_a_call_that_would_hold_more() {
    let rt = Runtime::new().unwrap();
    let stage = rt.load(&component("window_count")).unwrap();
    let limits = Limits { state: weir_host::StateLimits { max_timers: 1, ..Default::default() }, ..Limits::default() };
    let mut inst = stage.instantiate(&ctx(&[("window_ms", "1000")], limits)).unwrap();
    let at = |ms| Message { event_time_ms: ms, ..msg("x") };
    inst.handle_batch(&[at(1)]).unwrap();
    match inst.handle_batch(&[at(1), at(1001)]) {
        Err(Error::Call { kind: ErrorKind::State, reason, .. }) => assert!(reason.contains("max_timers"), "{reason}"),
        other => panic!("expected a state error, got {other:?}"),
    }
}
