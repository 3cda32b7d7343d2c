//! Public-API tests of the on-disk log: persistence, recovery, locking.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use weir_queue::{Error, Queue, Record, TopicConfig};

fn payloads(q: &Queue, topic: &str, partition: u32) -> Vec<String> {
    q.read(topic, partition, 0, usize::MAX).unwrap().into_iter().map(|r| String::from_utf8(r.payload).unwrap()).collect()
}

fn segments(dir: &Path, topic: &str) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir.join("topics").join(topic).join("0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

#[test]
fn records_survive_reopen_with_keys_headers_and_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path()).unwrap();
        q.create_topic("t", &TopicConfig::default()).unwrap();
        let rec = Record { timestamp_ms: Some(1234), ..Record::new("a").with_key("k").with_header("h", "v") };
        assert_eq!(q.publish("t", &[rec, Record::new("b")]).unwrap(), vec![(0, 0), (0, 1)]);
    }
    let q = Queue::open(dir.path()).unwrap();
    let recs = q.read("t", 0, 0, 10).unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].key.as_deref(), Some(&b"k"[..]));
    assert_eq!(recs[0].headers, vec![("h".to_string(), b"v".to_vec())]);
    assert_eq!(recs[0].timestamp_ms, 1234);
    assert!(recs[1].append_timestamp_ms >= recs[0].append_timestamp_ms);
    assert_eq!(q.publish("t", &[Record::new("c")]).unwrap(), vec![(0, 2)], "offsets continue after reopen");
}

#[test]
fn torn_tail_is_truncated_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path()).unwrap();
        q.create_topic("t", &TopicConfig::default()).unwrap();
        q.publish("t", &[Record::new("one"), Record::new("two")]).unwrap();
    }
    let seg = segments(dir.path(), "t").pop().unwrap();
    let good_len = fs::metadata(&seg).unwrap().len();
    // A torn write: the start of a third record's header and some body.
    OpenOptions::new().append(true).open(&seg).unwrap().write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();

    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(fs::metadata(&seg).unwrap().len(), good_len, "the torn tail was cut");
    assert_eq!(payloads(&q, "t", 0), ["one", "two"]);
    assert_eq!(q.publish("t", &[Record::new("three")]).unwrap(), vec![(0, 2)]);
    drop(q);
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(payloads(&q, "t", 0), ["one", "two", "three"]);
}

#[test]
fn garbage_at_tail_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path()).unwrap();
        q.create_topic("t", &TopicConfig::default()).unwrap();
        q.publish("t", &[Record::new("one")]).unwrap();
    }
    let seg = segments(dir.path(), "t").pop().unwrap();
    OpenOptions::new().append(true).open(&seg).unwrap().write_all(&[0xff; 100]).unwrap();
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(payloads(&q, "t", 0), ["one"]);
}

/// 200 records over several 4 KiB segments; returns the segment files.
fn rolled(dir: &Path) -> Vec<PathBuf> {
    let q = Queue::open(dir).unwrap();
    q.create_topic("t", &TopicConfig { segment_bytes: 4096, ..TopicConfig::default() }).unwrap();
    for i in 0..200 {
        q.publish("t", &[Record::new(format!("message {i:04} {}", "x".repeat(50)))]).unwrap();
    }
    drop(q);
    let segs = segments(dir, "t");
    assert!(segs.len() > 2, "segments rolled: {segs:?}");
    segs
}

fn all_payloads_ok(q: &Queue) {
    let recs = q.read("t", 0, 0, usize::MAX).unwrap();
    assert_eq!(recs.len(), 200);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.payload, format!("message {i:04} {}", "x".repeat(50)).as_bytes());
    }
}

#[test]
fn corruption_in_a_sealed_segment_is_an_error_when_read_not_a_silent_skip() {
    let dir = tempfile::tempdir().unwrap();
    let segs = rolled(dir.path());
    let mut bytes = fs::read(&segs[0]).unwrap();
    bytes[100] ^= 0x40;
    fs::write(&segs[0], bytes).unwrap();

    // The sealed segment has an intact index, so open does not scan it...
    let q = Queue::open(dir.path()).unwrap();
    // ...but reading the damaged record fails loudly, naming file and place.
    match q.read("t", 0, 0, 10) {
        Err(Error::Corrupt { path, position, reason }) => {
            assert_eq!(path, segs[0]);
            assert!(position <= 100, "{position}");
            assert!(reason.contains("CRC"), "{reason}");
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    // Data in other segments is still served, and nothing was deleted.
    let later = q.read("t", 0, 150, 10).unwrap();
    assert_eq!(later[0].offset, 150);
    drop(q);
    assert!(segs[0].exists());

    // Without its index the segment is scanned at open: the damage stops the open.
    fs::remove_file(segs[0].with_extension("index")).unwrap();
    match Queue::open(dir.path()) {
        Err(Error::Corrupt { path, .. }) => assert_eq!(path, segs[0]),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("corruption in a sealed segment was accepted"),
    }
}

#[test]
fn damaged_index_files_are_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let segs = rolled(dir.path());
    let idx: Vec<PathBuf> = segs[..segs.len() - 1].iter().map(|s| s.with_extension("index")).collect();
    // Garbage appended, truncated, bit-flipped, missing.
    OpenOptions::new().append(true).open(&idx[0]).unwrap().write_all(b"garbage").unwrap();
    let len = fs::metadata(&idx[1]).unwrap().len();
    OpenOptions::new().write(true).open(&idx[1]).unwrap().set_len(len / 2).unwrap();
    let mut b = fs::read(&idx[2]).unwrap();
    b[60] ^= 1;
    fs::write(&idx[2], b).unwrap();
    if idx.len() > 3 {
        fs::remove_file(&idx[3]).unwrap();
    }
    let before: Vec<Vec<u8>> = idx.iter().take(3).map(|p| fs::read(p).unwrap()).collect();

    let q = Queue::open(dir.path()).unwrap();
    all_payloads_ok(&q);
    for (i, p) in idx.iter().enumerate() {
        assert!(p.exists(), "index {i} rebuilt");
        if i < 3 {
            assert_ne!(fs::read(p).unwrap(), before[i], "index {i} was rewritten");
        }
    }
    // Recover, append, recover again.
    q.publish("t", &[Record::new("after")]).unwrap();
    drop(q);
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(q.read("t", 0, 200, 1).unwrap()[0].payload, b"after");
    let mid: Vec<u64> = q.read("t", 0, 123, 3).unwrap().iter().map(|r| r.offset).collect();
    assert_eq!(mid, [123, 124, 125], "seeks through rebuilt indexes land right");
}

#[test]
fn reads_span_rolled_segments_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    q.create_topic("t", &TopicConfig { segment_bytes: 4096, ..TopicConfig::default() }).unwrap();
    let want: Vec<String> = (0..500).map(|i| format!("m{i}-{}", "y".repeat(i % 97))).collect();
    for chunk in want.chunks(7) {
        q.publish("t", &chunk.iter().map(|s| Record::new(s.as_str())).collect::<Vec<_>>()).unwrap();
    }
    assert_eq!(payloads(&q, "t", 0), want);
    let mid: Vec<u64> = q.read("t", 0, 333, 5).unwrap().iter().map(|r| r.offset).collect();
    assert_eq!(mid, [333, 334, 335, 336, 337]);
    drop(q);
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(payloads(&q, "t", 0), want);
}

#[test]
fn a_second_writer_is_refused_but_readers_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    q.create_topic("t", &TopicConfig::default()).unwrap();
    q.publish("t", &[Record::new("x")]).unwrap();
    match Queue::open(dir.path()) {
        Err(Error::Locked { owner, .. }) => assert!(owner.unwrap().contains("pid")),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("second writer allowed"),
    }
    let r = Queue::open_read_only(dir.path()).unwrap();
    assert_eq!(payloads(&r, "t", 0), ["x"]);
    q.publish("t", &[Record::new("y")]).unwrap();
    assert_eq!(payloads(&r, "t", 0), ["x", "y"], "a reader sees later appends");
}

#[test]
fn keys_pick_stable_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    q.create_topic("t", &TopicConfig { partitions: 4, ..TopicConfig::default() }).unwrap();
    let a = q.publish("t", &[Record::new("1").with_key("user-7")]).unwrap()[0].0;
    let b = q.publish("t", &[Record::new("2").with_key("user-7")]).unwrap()[0].0;
    assert_eq!(a, b);
    let info = q.topic_info("t").unwrap();
    assert_eq!(info.len(), 2);
}

#[test]
fn bad_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    for bad in ["", "../x", ".hidden", "a b", "a/b"] {
        assert!(matches!(q.create_topic(bad, &TopicConfig::default()), Err(Error::Invalid { .. })), "{bad:?}");
    }
    assert!(matches!(q.publish("nope", &[Record::new("x")]), Err(Error::UnknownTopic(_))));
}

/// Regression: the interval flusher briefly held the queue alive after the
/// last handle was dropped, so an immediate reopen found the directory locked.
#[test]
fn reopen_right_after_drop_is_not_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let config = TopicConfig { fsync: weir_queue::Fsync::Interval { ms: 1 }, ..TopicConfig::default() };
    for i in 0..2000 {
        let q = Queue::open(dir.path()).unwrap_or_else(|e| panic!("reopen {i}: {e}"));
        q.ensure_topic("t", &config).unwrap();
        q.publish("t", &[Record::new("x")]).unwrap();
    }
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(q.topic_info("t").unwrap().len(), 2000);
}
