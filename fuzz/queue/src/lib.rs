//! What weir-queue's fuzz targets run: each takes arbitrary bytes as one
//! kind of file the queue reads from disk (or, `http_body`, as the body of an
//! HTTP publish), opens the queue over it and uses
//! it. Errors are expected; a panic, a hang or an unbounded allocation is a
//! finding. Where the queue accepts the files, it must then work: a publish
//! after a successful open is read back, a state commit after a successful
//! open survives a reopen.
//!
//! Shared by the cargo-fuzz targets (`fuzz_targets/`) and by the replay of
//! the corpus in the main test suite (`runtime/queue/tests/fuzz_corpus.rs`).

use std::fs;
use std::path::{Path, PathBuf};

use weir_queue::{ConsumerOptions, Queue, Record, StateWrite, encode_legacy_transaction};

const TOPIC_JSON: &str = r#"{"partitions":1,"fsync":"never","segment_bytes":4096}"#;

/// A scratch data directory, in memory where the machine has /dev/shm.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = tempfile::Builder::new().prefix("weir-fuzz-").to_owned();
    if shm.is_dir() { builder.tempdir_in(shm) } else { builder.tempdir() }.expect("scratch directory")
}

/// Split `data` into a part of at most the length in its first two bytes, and the rest.
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data {
        [a, b, rest @ ..] => rest.split_at((u16::from_le_bytes([*a, *b]) as usize).min(rest.len())),
        _ => (data, &[]),
    }
}

fn write(path: PathBuf, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

fn partition_dir(root: &Path) -> PathBuf {
    root.join("topics/t/0")
}

/// Read everything there is (bounded), read-only and then read-write, and
/// publish once: the record must come back where the publish said.
fn exercise(root: &Path) {
    if let Ok(q) = Queue::open_read_only(root) {
        let _ = q.read("t", 0, 0, 10_000);
    }
    let Ok(q) = Queue::open(root) else { return };
    let _ = q.read("t", 0, 0, 10_000);
    if let Ok(mut c) = q.consumer("t", "g", ConsumerOptions::default()) {
        for d in c.fetch(100, std::time::Duration::ZERO).unwrap_or_default() {
            c.ack(d.id());
        }
        let _ = c.commit();
    }
    if let Ok(at) = q.publish("t", &[Record::new("after")]) {
        let (p, o) = at[0];
        let back = q.read("t", p, o, 1).expect("a record just published reads back");
        assert_eq!(back.first().map(|r| r.payload.as_slice()), Some(&b"after"[..]), "published at {p}/{o}");
    }
}

/// Segment files. First byte 0: `data` is the partition's only (active)
/// segment. Otherwise a sealed segment (length-prefixed) and its index
/// file (the rest), then an empty active segment where the index says the
/// sealed one ends.
pub fn segment(data: &[u8]) {
    let Some((&mode, data)) = data.split_first() else { return };
    let dir = scratch();
    write(dir.path().join("topics/t/topic.json"), TOPIC_JSON.as_bytes());
    let part = partition_dir(dir.path());
    if mode == 0 {
        write(part.join("00000000000000000000.log"), data);
    } else {
        let (log, index) = split(data);
        write(part.join("00000000000000000000.log"), log);
        write(part.join("00000000000000000000.index"), index);
        let next = index.get(24..32).map_or(1, |b| u64::from_le_bytes(b.try_into().unwrap())).max(1);
        write(part.join(format!("{next:020}.log")), &[]);
    }
    exercise(dir.path());
}

/// The stage-state files of the format before redb, which a store imports
/// on open. First byte 0: `data` is the log; 1: the snapshot; otherwise a
/// snapshot (length-prefixed) and a log. A store that opens must take a
/// commit that survives a reopen.
pub fn state(data: &[u8]) {
    let Some((&mode, data)) = data.split_first() else { return };
    let dir = scratch();
    let state = dir.path().join("state/g/t");
    match mode {
        0 => write(state.join("state.log"), data),
        1 => write(state.join("state.snapshot"), data),
        _ => {
            let (snapshot, log) = split(data);
            write(state.join("state.snapshot"), snapshot);
            write(state.join("state.log"), log);
        }
    }
    let Ok(q) = Queue::open(dir.path()) else { return };
    let Ok(mut store) = q.state_store("g", "t") else { return };
    let _ = (store.stage("s").expect("an imported store reads").len(), store.applied().len());
    let write = StateWrite { stage: "s".into(), key: b"fuzz".to_vec(), value: Some(b"value".to_vec()) };
    store.commit(&[write], &[(0, u64::MAX)]).expect("a store that opened takes a commit");
    drop(store);
    let store = q.state_store("g", "t").expect("a store reopens after a commit");
    assert_eq!(store.stage("s").unwrap().get(&b"fuzz"[..]).map(Vec::as_slice), Some(&b"value"[..]));
    assert!(store.applied().contains(&(0, u64::MAX)));
}

/// Metadata files. First byte 0: `data` is the topic's `topic.json`; 1: a
/// consumer group's offsets file; otherwise the topic's id file.
pub fn metadata(data: &[u8]) {
    let Some((&mode, data)) = data.split_first() else { return };
    let dir = scratch();
    let topic = dir.path().join("topics/t");
    fs::create_dir_all(partition_dir(dir.path())).unwrap();
    match mode {
        0 => write(topic.join("topic.json"), data),
        1 => {
            write(topic.join("topic.json"), TOPIC_JSON.as_bytes());
            write(dir.path().join("groups/g/t.json"), data);
        }
        _ => {
            write(topic.join("topic.json"), TOPIC_JSON.as_bytes());
            write(topic.join("topic.id"), data);
        }
    }
    exercise(dir.path());
}

/// Seed inputs for each target, made by the queue itself: real segments
/// and index files with keys, headers, ids and timestamps, a state log and
/// snapshot of the old format, real metadata. Returns (target, input) pairs.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let dir = scratch();
    let q = Queue::open(dir.path()).unwrap();
    let config = weir_queue::TopicConfig { partitions: 1, fsync: weir_queue::Fsync::Never, segment_bytes: 4096, ..Default::default() };
    q.create_topic("t", &config).unwrap();
    for i in 0..60u32 {
        let mut r = Record::new(format!("payload {i} {}", "p".repeat(i as usize)))
            .with_key(format!("key {}", i % 3))
            .with_header("h", vec![i as u8]);
        r.id = (i % 2 == 0).then(|| format!("id-{i}"));
        r.timestamp_us = Some(1_700_000_000_000_000 + u64::from(i));
        q.publish("t", &[r]).unwrap();
    }
    let mut c = q.consumer("t", "g", ConsumerOptions::default()).unwrap();
    for d in c.fetch(10, std::time::Duration::ZERO).unwrap() {
        c.ack(d.id());
    }
    c.commit().unwrap();
    drop(c);
    let key = q.topic_key("t").unwrap();
    drop(q);
    let put = |k: &str, v: Option<&str>| StateWrite { stage: "s".into(), key: k.into(), value: v.map(Into::into) };
    let snapshot = encode_legacy_transaction(&[put("a", Some("1")), put("b", Some("2"))], &[(0, 0), (0, 1)]);
    let log = encode_legacy_transaction(&[put("a", None), put("c", Some("3"))], &[(0, 2)]);

    let read = |p: PathBuf| fs::read(p).unwrap();
    let part = partition_dir(dir.path());
    let mut logs: Vec<PathBuf> =
        fs::read_dir(&part).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "log")).collect();
    logs.sort();
    let with_mode = |mode: u8, parts: &[&[u8]]| {
        let mut out = vec![mode];
        if let [first, rest @ ..] = parts {
            if !rest.is_empty() {
                out.extend_from_slice(&(first.len() as u16).to_le_bytes());
            }
            out.extend_from_slice(first);
            for p in rest {
                out.extend_from_slice(p);
            }
        }
        out
    };
    let sealed = read(logs[0].clone());
    vec![
        ("segment", with_mode(0, &[&read(logs.last().unwrap().clone())])),
        ("segment", with_mode(1, &[&sealed, &read(logs[0].with_extension("index"))])),
        ("state", with_mode(0, &[&log])),
        ("state", with_mode(1, &[&snapshot])),
        ("state", with_mode(2, &[&snapshot, &log])),
        ("metadata", with_mode(0, &[&read(dir.path().join("topics/t/topic.json"))])),
        ("metadata", with_mode(1, &[&read(dir.path().join("groups/g").join(format!("{key}.json")))])),
        ("metadata", with_mode(2, &[&read(dir.path().join("topics/t/topic.id"))])),
        (
            "http_body",
            [&[0][..], br#"{"payload": "hello", "key": "k", "headers": {"h": [1, 2, 255]}, "timestamp_ms": 7, "id": "x"}"#].concat(),
        ),
        ("http_body", [&[0][..], br#"[{"payload": [104, 105]}, {"payload": "two", "key": null}]"#].concat()),
        ("http_body", [&[1][..], b"{\"payload\": \"a\"}\n\n{\"payload\": \"b\", \"id\": \"2\"}\n"].concat()),
        ("http_body", [&[2][..], b"raw bytes"].concat()),
    ]
}

/// An HTTP publish body (`weir_queue::json::records_from_body`). The first
/// byte picks the content type; what decodes must be records the queue can
/// be asked to store.
pub fn http_body(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else { return };
    let content_type = ["application/json", "application/x-ndjson", "application/octet-stream"][mode as usize % 3];
    let headers = [("weir-key", &b"k"[..]), ("weir-header-h", &b"v"[..])];
    if let Ok(records) = weir_queue::json::records_from_body(content_type, headers, body) {
        for r in records {
            let _ = r.validate();
        }
    }
}

/// Run `target` on `input`.
pub fn run(target: &str, input: &[u8]) {
    match target {
        "segment" => segment(input),
        "state" => state(input),
        "metadata" => metadata(input),
        "http_body" => http_body(input),
        other => panic!("no fuzz target {other}"),
    }
}
