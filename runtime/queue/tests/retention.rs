//! Retention by size and age, and seeking by offset, time, first and last.

use std::time::Duration;

use weir_queue::{ConsumerOptions, Queue, Record, Seek, TopicConfig};

fn fill(q: &Queue, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(10) {
        let recs: Vec<Record> = chunk.iter().map(|i| Record::new(format!("{i:06}-{}", "r".repeat(90)))).collect();
        q.publish("t", &recs).unwrap();
    }
}

#[test]
fn max_bytes_deletes_whole_old_segments_and_consumers_skip_them() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    let cfg = TopicConfig { segment_bytes: 8192, max_bytes: Some(32 * 1024), ..TopicConfig::default() };
    q.create_topic("t", &cfg).unwrap();
    let mut c = q.consumer("t", "slow", ConsumerOptions::default()).unwrap();
    fill(&q, 2000); // ~250 KB
    let removed = q.apply_retention().unwrap();
    let (start, end) = q.topic_info("t").unwrap().offsets[0];
    assert_eq!(end, 2000);
    assert_eq!(start, removed, "whole segments went, oldest first");
    assert!(start > 1000, "down to about max_bytes: start {start}");
    let bytes: u64 = std::fs::read_dir(dir.path().join("topics/t/0")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(bytes <= 32 * 1024 + 8192 + 200, "{bytes} bytes left");
    // A group that had read nothing resumes at the oldest retained record.
    let d = c.fetch(1, Duration::ZERO).unwrap();
    assert_eq!(d[0].record.offset, start);
    assert_eq!(q.read("t", 0, 0, 1).unwrap()[0].offset, start, "reads clamp to what is retained");
    drop(c);
    drop(q);
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(q.topic_info("t").unwrap().offsets[0], (start, 2000), "survives reopen");
    q.publish("t", &[Record::new("next")]).unwrap();
    assert_eq!(q.topic_info("t").unwrap().offsets[0].1, 2001, "offsets are never reused");
}

#[test]
fn max_age_deletes_old_segments_but_never_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    let cfg = TopicConfig { segment_bytes: 4096, max_age_ms: Some(100), ..TopicConfig::default() };
    q.create_topic("t", &cfg).unwrap();
    fill(&q, 300);
    assert_eq!(q.apply_retention().unwrap(), 0, "nothing is old yet");
    std::thread::sleep(Duration::from_millis(150));
    q.apply_retention().unwrap();
    let (start, end) = q.topic_info("t").unwrap().offsets[0];
    assert!(start > 0 && start < end, "old sealed segments went, the active one stayed: {start}..{end}");
}

#[test]
fn the_background_thread_applies_retention() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    q.create_topic("t", &TopicConfig { segment_bytes: 4096, max_bytes: Some(8192), ..TopicConfig::default() }).unwrap();
    fill(&q, 500);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while q.topic_info("t").unwrap().offsets[0].0 == 0 {
        assert!(std::time::Instant::now() < deadline, "retention never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn seek_by_offset_time_first_and_last() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    q.create_topic("t", &TopicConfig { segment_bytes: 4096, ..TopicConfig::default() }).unwrap();
    fill(&q, 100);
    std::thread::sleep(Duration::from_millis(20));
    let mid = weir_queue_now_ms();
    std::thread::sleep(Duration::from_millis(20));
    fill(&q, 100);
    let mut c = q.consumer("t", "g", ConsumerOptions::default()).unwrap();
    let first = |c: &mut weir_queue::Consumer| c.fetch(1, Duration::ZERO).unwrap().first().map(|d| d.record.offset);

    c.seek(0, Seek::Time(mid)).unwrap();
    assert_eq!(first(&mut c), Some(100), "the first record appended after `mid`");
    assert_eq!(q.offset_for_time("t", 0, mid).unwrap(), 100);
    c.seek(0, Seek::Offset(42)).unwrap();
    assert_eq!(first(&mut c), Some(42));
    c.seek(0, Seek::First).unwrap();
    assert_eq!(first(&mut c), Some(0));
    c.seek(0, Seek::Last).unwrap();
    assert_eq!(first(&mut c), None);
    q.publish("t", &[Record::new("new")]).unwrap();
    assert_eq!(first(&mut c), Some(200));
    c.seek(0, Seek::Offset(150)).unwrap();
    c.commit().unwrap();
    assert_eq!(c.committed(), vec![150]);
}

fn weir_queue_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}
