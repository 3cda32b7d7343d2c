//! Public-API tests of the on-disk log: persistence, recovery, locking.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use weir_queue::{Error, Fsync, FsyncError, Queue, Record, TopicConfig};

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
        let rec = Record { timestamp_us: Some(1234), ..Record::new("a").with_key("k").with_header("h", "v") };
        assert_eq!(q.publish("t", &[rec, Record::new("b")]).unwrap(), vec![(0, 0), (0, 1)]);
    }
    let q = Queue::open(dir.path()).unwrap();
    let recs = q.read("t", 0, 0, 10).unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].key.as_deref(), Some(&b"k"[..]));
    assert_eq!(recs[0].headers, vec![("h".to_string(), b"v".to_vec())]);
    assert_eq!(recs[0].timestamp_us, 1234);
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
    let good_len = data_len(&seg);
    // A torn write where the next record goes (over the zero-fill, if any):
    // the start of a third record's header and some body.
    OpenOptions::new().write(true).open(&seg).unwrap().write_all_at(&[40, 0, 0, 0, 1, 2, 3, 4, 9, 9], good_len).unwrap();

    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(fs::metadata(&seg).unwrap().len(), good_len, "the torn tail was cut");
    assert_eq!(payloads(&q, "t", 0), ["one", "two"]);
    assert_eq!(q.publish("t", &[Record::new("three")]).unwrap(), vec![(0, 2)]);
    drop(q);
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(payloads(&q, "t", 0), ["one", "two", "three"]);
}

/// Where the data of a segment file ends (zeros may follow).
fn data_len(seg: &Path) -> u64 {
    let bytes = fs::read(seg).unwrap();
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i as u64 + 1)
}

#[test]
fn an_always_topic_fills_zeros_ahead_of_its_appends_and_recovery_cuts_them() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path()).unwrap();
        q.create_topic("t", &TopicConfig { fsync: Fsync::Always, ..TopicConfig::default() }).unwrap();
        q.publish("t", &[Record::new("one")]).unwrap();
        q.publish("t", &[Record::new("two")]).unwrap();
    }
    let seg = segments(dir.path(), "t").pop().unwrap();
    let (len, data) = (fs::metadata(&seg).unwrap().len(), data_len(&seg));
    assert!(len >= data + 4096, "zeros filled ahead: {len} bytes, {data} of data");
    // A closed partition keeps its zeros (a kill -9 does too); opening cuts them.
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(fs::metadata(&seg).unwrap().len(), data, "the zeros were cut");
    assert_eq!(payloads(&q, "t", 0), ["one", "two"]);
    assert_eq!(q.publish("t", &[Record::new("three")]).unwrap(), vec![(0, 2)]);
    drop(q);
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(payloads(&q, "t", 0), ["one", "two", "three"]);
    // Other policies write no zeros.
    q.create_topic("i", &TopicConfig { fsync: Fsync::Interval { ms: 50 }, ..TopicConfig::default() }).unwrap();
    q.publish("i", &[Record::new("one")]).unwrap();
    let seg = segments(dir.path(), "i").pop().unwrap();
    assert_eq!(fs::metadata(&seg).unwrap().len(), data_len(&seg));
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

/// Found by fuzzing: a sealed segment (not scanned on open: its index is
/// trusted) holding a valid record with an offset far ahead made a
/// consumer settle every offset in the gap, one at a time: a hang that ate
/// memory. Offsets are dense, so a read now calls such a record corrupt.
#[test]
fn a_record_whose_offset_jumps_ahead_in_a_sealed_segment_is_corruption_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let segs = rolled(dir.path());
    let mut bytes = fs::read(&segs[0]).unwrap();
    // The second record: frame = length (u32), CRC32C of the body (u32), body = offset (u64), ...
    let first = 8 + u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    let len = u32::from_le_bytes(bytes[first..first + 4].try_into().unwrap()) as usize;
    let body = first + 8..first + 8 + len;
    bytes[body.start..body.start + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let crc = crc32c::crc32c(&bytes[body]);
    bytes[first + 4..first + 8].copy_from_slice(&crc.to_le_bytes());
    fs::write(&segs[0], bytes).unwrap();

    let q = Queue::open(dir.path()).unwrap();
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut c = q.consumer("t", "g", weir_queue::ConsumerOptions::default()).unwrap();
        let _ = done.send(c.fetch(10, std::time::Duration::ZERO).map(|d| d.len()));
    });
    match outcome.recv_timeout(std::time::Duration::from_secs(60)).expect("the fetch returns") {
        Err(Error::Corrupt { reason, .. }) => assert!(reason.contains("offset 1099511627776 where 1 was expected"), "{reason}"),
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

/// Found by fuzzing: an index file (CRC intact) whose entry count times the
/// entry size wraps around to its real length made the open panic on a
/// vector of 2^61 entries. Such an index is damaged: the log is scanned.
#[test]
fn an_index_whose_entry_count_overflows_is_rebuilt_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let segs = rolled(dir.path());
    let index = segs[0].with_extension("index");
    let real = fs::read(&index).unwrap();
    // magic, base, length, next, latest time, has-ids, entry count: 24 × 2^61 wraps to 0 entries' worth.
    let mut forged = real[..48].to_vec();
    forged.extend_from_slice(&(1u64 << 61).to_le_bytes());
    let crc = crc32c::crc32c(&forged);
    forged.extend_from_slice(&crc.to_le_bytes());
    fs::write(&index, forged).unwrap();
    let q = Queue::open(dir.path()).unwrap();
    all_payloads_ok(&q);
}

/// Found by fuzzing: an index (CRC intact) claiming its segment ends near
/// offset 2^64 made the next publish land at an offset that could not be
/// read back. An index claiming more records than its segment can hold is
/// damage, and a segment named beyond 2^63 - 1 is refused.
#[test]
fn offsets_near_the_end_of_the_range_are_refused_not_wrapped() {
    let dir = tempfile::tempdir().unwrap();
    let segs = rolled(dir.path());
    let index = segs[0].with_extension("index");
    let mut forged = fs::read(&index).unwrap();
    let body = forged.len() - 4;
    forged[24..32].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
    let crc = crc32c::crc32c(&forged[..body]);
    forged[body..].copy_from_slice(&crc.to_le_bytes());
    fs::write(&index, forged).unwrap();
    let q = Queue::open(dir.path()).unwrap();
    all_payloads_ok(&q);
    let (p, o) = q.publish("t", &[Record::new("after")]).unwrap()[0];
    assert_eq!((p, o), (0, 200));
    assert_eq!(q.read("t", p, o, 1).unwrap()[0].payload, b"after");
    drop(q);

    fs::write(segs[0].with_file_name(format!("{}.log", u64::MAX)), b"").unwrap();
    match Queue::open(dir.path()) {
        Err(Error::Corrupt { reason, .. }) => assert!(reason.contains("beyond 2^63 - 1"), "{reason}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a segment named beyond the offset range was accepted"),
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

/// One rule for topic settings, whoever makes the topic: a pipeline file,
/// the HTTP API and the command line all end here.
#[test]
fn topic_settings_out_of_bounds_are_refused_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    let cases = [
        (TopicConfig { partitions: 0, ..TopicConfig::default() }, "invalid partitions `0`: must be between 1 and 4096"),
        (
            TopicConfig { fsync: Fsync::Interval { ms: 0 }, ..TopicConfig::default() },
            "invalid fsync_interval_ms `0`: must be between 1 and 3600000",
        ),
        (
            TopicConfig { segment_bytes: 100, ..TopicConfig::default() },
            "invalid segment_bytes `100`: must be between 4096 and 1099511627776",
        ),
        (TopicConfig { max_bytes: Some(1), ..TopicConfig::default() }, "invalid max_bytes `1`: must be at least 4096"),
    ];
    for (config, message) in cases {
        assert_eq!(q.create_topic("t", &config).unwrap_err().to_string(), message);
    }
    assert!(q.topics().is_empty(), "nothing was made");
}

#[test]
fn fsync_policies_parse_and_display_one_way() {
    assert_eq!(Fsync::parse(None, None), Ok(Fsync::Always));
    assert_eq!(Fsync::parse(Some("interval"), None), Ok(Fsync::Interval { ms: Fsync::DEFAULT_INTERVAL_MS }));
    assert_eq!(Fsync::parse(Some("interval"), Some(5)), Ok(Fsync::Interval { ms: 5 }));
    assert_eq!(Fsync::parse(Some("never"), Some(5)), Err(FsyncError::IntervalWithoutInterval));
    assert_eq!(
        Fsync::parse(Some("sometimes"), None).unwrap_err().to_string(),
        r#"fsync must be "always", "interval" or "never", got "sometimes""#
    );
    for f in [Fsync::Always, Fsync::Interval { ms: 7 }, Fsync::Never] {
        assert_eq!(Fsync::parse(Some(f.policy()), f.interval_ms()), Ok(f), "round trip of {f}");
    }
    assert_eq!(Fsync::Interval { ms: 100 }.to_string(), "interval (100 ms)");
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

/// Found by fuzzing: a partition directory without a segment file (as a
/// damaged or foreign data directory may hold) made a read-only reader panic.
#[test]
fn a_reader_of_a_partition_without_segments_sees_it_empty() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    q.create_topic("t", &TopicConfig::default()).unwrap();
    drop(q);
    std::fs::remove_file(dir.path().join("topics/t/0/00000000000000000000.log")).unwrap();
    let r = Queue::open_read_only(dir.path()).unwrap();
    assert_eq!(payloads(&r, "t", 0), Vec::<String>::new());
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

#[test]
fn each_fsync_that_makes_appends_durable_is_timed() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    q.create_topic("always", &TopicConfig { fsync: Fsync::Always, ..TopicConfig::default() }).unwrap();
    q.create_topic("never", &TopicConfig { fsync: Fsync::Never, ..TopicConfig::default() }).unwrap();
    for i in 0..5 {
        q.publish("always", &[Record::new(format!("a{i}"))]).unwrap();
        q.publish("never", &[Record::new(format!("n{i}"))]).unwrap();
    }
    let times = q.fsync_times("always").unwrap();
    // One publisher, one at a time: an fsync each.
    assert_eq!((times.len(), q.topic_info("always").unwrap().fsyncs), (5, 5));
    assert!(times.min() >= 1, "each is at least a microsecond");
    assert_eq!(q.fsync_times("never").unwrap().len(), 0);
    assert!(matches!(q.fsync_times("nope"), Err(Error::UnknownTopic(_))));
}
