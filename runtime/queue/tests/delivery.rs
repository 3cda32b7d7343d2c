//! Leases, redelivery, dead-lettering and idempotent publish.

use std::time::Duration;

use weir_queue::{ConsumerOptions, Delivery, Queue, Record, TopicConfig, dlq_headers};

fn setup(n: usize) -> (tempfile::TempDir, Queue) {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    q.create_topic("t", &TopicConfig::default()).unwrap();
    let recs: Vec<Record> = (0..n).map(|i| Record::new(format!("m{i}"))).collect();
    q.publish("t", &recs).unwrap();
    (dir, q)
}

fn header<'a>(r: &'a weir_queue::StoredRecord, name: &str) -> &'a str {
    let v = &r.headers.iter().find(|(k, _)| k == name).unwrap_or_else(|| panic!("no header {name}")).1;
    std::str::from_utf8(v).unwrap()
}

fn fetch_all(c: &mut weir_queue::Consumer, wait: Duration) -> Vec<Delivery> {
    c.fetch(100, wait).unwrap()
}

#[test]
fn an_unacked_delivery_is_redelivered_after_ack_wait() {
    let (_dir, q) = setup(2);
    let opts = ConsumerOptions { ack_wait: Duration::from_millis(50), retry_backoff: Duration::from_millis(100), ..Default::default() };
    let mut c = q.consumer("t", "g", opts).unwrap();
    let started = std::time::Instant::now();
    let first = fetch_all(&mut c, Duration::ZERO);
    assert_eq!(first.len(), 2);
    c.ack(first[1].id());
    assert!(fetch_all(&mut c, Duration::ZERO).is_empty(), "not before the lease ends");
    let again = fetch_all(&mut c, Duration::from_secs(5));
    assert!(started.elapsed() >= Duration::from_millis(150), "lease, then backoff");
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].record.offset, again[0].attempt), (0, 2));
    c.ack(again[0].id());
    assert!(c.is_settled());
}

#[test]
fn in_progress_extends_the_lease() {
    let (_dir, q) = setup(1);
    let opts = ConsumerOptions { ack_wait: Duration::from_millis(200), retry_backoff: Duration::ZERO, ..Default::default() };
    let mut c = q.consumer("t", "g", opts).unwrap();
    let d = fetch_all(&mut c, Duration::ZERO);
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(100));
        c.in_progress(d[0].id());
        assert!(fetch_all(&mut c, Duration::ZERO).is_empty(), "lease was extended");
    }
    assert_eq!(fetch_all(&mut c, Duration::from_secs(5))[0].attempt, 2, "and expires when no longer extended");
}

#[test]
fn reject_dead_letters_with_headers_then_acknowledges() {
    let (dir, q) = setup(3);
    let mut c = q.consumer("t", "g", ConsumerOptions::default()).unwrap();
    let d = fetch_all(&mut c, Duration::ZERO);
    c.ack(d[0].id());
    c.reject(d[1].id(), "bad input").unwrap();
    c.ack(d[2].id());
    c.commit().unwrap();
    let dead = q.read("t.dlq", 0, 0, 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, b"m1");
    assert_eq!(header(&dead[0], dlq_headers::REASON), "bad input");
    assert_eq!(header(&dead[0], dlq_headers::SOURCE_TOPIC), "t");
    assert_eq!(header(&dead[0], dlq_headers::SOURCE_PARTITION), "0");
    assert_eq!(header(&dead[0], dlq_headers::SOURCE_OFFSET), "1");
    assert_eq!(header(&dead[0], dlq_headers::ATTEMPTS), "1");
    drop(c);
    drop(q);
    let q = Queue::open(dir.path()).unwrap();
    let mut c = q.consumer("t", "g", ConsumerOptions::default()).unwrap();
    assert!(fetch_all(&mut c, Duration::ZERO).is_empty(), "the rejected message was acknowledged");
}

#[test]
fn max_attempts_dead_letters_after_naks_and_after_expired_leases() {
    let (_dir, q) = setup(2);
    let opts = ConsumerOptions {
        ack_wait: Duration::from_millis(20),
        retry_backoff: Duration::ZERO,
        max_attempts: 3,
        dead_letter: Some("poison".into()),
        ..Default::default()
    };
    let mut c = q.consumer("t", "g", opts).unwrap();
    let mut attempts = Vec::new();
    for _ in 0..20 {
        for d in fetch_all(&mut c, Duration::from_millis(50)) {
            attempts.push((d.record.offset, d.attempt));
            if d.record.offset == 0 {
                c.nak(d.id(), Duration::ZERO);
            } // offset 1 is never settled: its lease runs out
        }
        if c.is_settled() {
            break;
        }
    }
    assert!(c.is_settled(), "both were dead-lettered: {attempts:?}");
    attempts.sort();
    assert_eq!(attempts, [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]);
    let dead = q.read("poison", 0, 0, 10).unwrap();
    assert_eq!(dead.len(), 2);
    for r in &dead {
        assert_eq!(header(r, dlq_headers::ATTEMPTS), "3");
        assert!(header(r, dlq_headers::REASON).contains("max_attempts 3"));
    }
}

#[test]
fn a_crash_between_the_dead_letter_write_and_the_ack_does_not_duplicate_it() {
    let (dir, q) = setup(1);
    let mut c = q.consumer("t", "g", ConsumerOptions::default()).unwrap();
    let d = fetch_all(&mut c, Duration::ZERO);
    c.reject(d[0].id(), "poison").unwrap();
    // Crash: the dead letter is durable but the ack was never committed.
    drop(c);
    drop(q);
    let q = Queue::open(dir.path()).unwrap();
    let mut c = q.consumer("t", "g", ConsumerOptions::default()).unwrap();
    let again = fetch_all(&mut c, Duration::ZERO);
    assert_eq!(again.len(), 1, "redelivered: the ack was lost with the crash");
    c.reject(again[0].id(), "poison").unwrap();
    c.commit().unwrap();
    assert_eq!(q.read("t.dlq", 0, 0, 10).unwrap().len(), 1, "one dead letter, not two");
}

#[test]
fn a_retried_publish_returns_the_original_offset_even_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rec = |id: &str, body: &str| Record { id: Some(id.into()), ..Record::new(body) };
    {
        let q = Queue::open(dir.path()).unwrap();
        q.create_topic("t", &TopicConfig { partitions: 3, ..Default::default() }).unwrap();
        let first = q.publish("t", &[rec("a", "1"), rec("b", "2")]).unwrap();
        let retry = q.publish("t", &[rec("b", "2"), rec("a", "1"), rec("c", "3"), rec("c", "3")]).unwrap();
        assert_eq!(&retry[..2], &[first[1], first[0]]);
        assert_eq!(retry[2], retry[3], "a repeated id within one batch is written once");
        assert_eq!(q.topic_info("t").unwrap().len(), 3);
    }
    let q = Queue::open(dir.path()).unwrap();
    let before = q.topic_info("t").unwrap().len();
    q.publish("t", &[rec("a", "1")]).unwrap();
    assert_eq!(q.topic_info("t").unwrap().len(), before, "the window survives a restart");
    let stored = q.read("t", q.publish("t", &[rec("a", "1")]).unwrap()[0].0, 0, 10).unwrap();
    assert!(stored.iter().any(|r| { r.headers.iter().any(|(k, v)| k == weir_queue::MSG_ID_HEADER && v == b"a") }));
}

#[test]
fn ids_expire_with_the_dedupe_window() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    q.create_topic("t", &TopicConfig { dedupe_window_ms: 50, ..Default::default() }).unwrap();
    let rec = Record { id: Some("x".into()), ..Record::new("1") };
    let a = q.publish("t", std::slice::from_ref(&rec)).unwrap();
    std::thread::sleep(Duration::from_millis(80));
    let b = q.publish("t", &[rec]).unwrap();
    assert_ne!(a, b, "outside the window the id is new again");
}

#[test]
fn one_consumer_per_group_and_topic_in_a_process() {
    let (_dir, q) = setup(1);
    let c = q.consumer("t", "g", ConsumerOptions::default()).unwrap();
    let again = q.consumer("t", "g", ConsumerOptions::default()).err().expect("a second consumer of the group is refused");
    assert!(matches!(again, weir_queue::Error::GroupInUse { .. }), "{again}");
    q.consumer("t", "other", ConsumerOptions::default()).expect("another group may read the topic");
    drop(c);
    q.consumer("t", "g", ConsumerOptions::default()).expect("the group may reopen once its consumer is gone");
}

#[test]
fn a_deleted_topic_is_gone_with_its_offsets_but_not_while_consumed() {
    let (dir, q) = setup(3);
    let mut c = q.consumer("t", "g", ConsumerOptions::default()).unwrap();
    for d in fetch_all(&mut c, Duration::ZERO) {
        c.ack(d.id());
    }
    c.commit().unwrap();
    let refused = q.delete_topic("t").expect_err("a consumed topic is not deleted");
    assert!(matches!(&refused, weir_queue::Error::TopicInUse { name } if name == "t"), "{refused}");
    assert!(refused.to_string().contains("being consumed"), "{refused}");
    drop(c);
    q.delete_topic("t").unwrap();
    assert!(matches!(q.topic_info("t"), Err(weir_queue::Error::UnknownTopic(_))));
    assert!(matches!(q.delete_topic("t"), Err(weir_queue::Error::UnknownTopic(_))));
    drop(q);
    let q = Queue::open(dir.path()).unwrap();
    assert!(q.topics().is_empty(), "still gone after reopening");
    assert!(!dir.path().join("trash").exists(), "the trash is emptied");
    q.create_topic("t", &TopicConfig::default()).unwrap();
    q.publish("t", &[Record::new("new")]).unwrap();
    let mut c = q.consumer("t", "g", ConsumerOptions::default()).unwrap();
    let got = fetch_all(&mut c, Duration::ZERO);
    assert_eq!(got.len(), 1, "the group's old offsets went with the topic");
    assert_eq!(got[0].record.offset, 0);
}

#[test]
fn concurrent_publishes_of_the_same_ids_store_each_once_and_agree_on_where() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    q.create_topic("t", &TopicConfig { partitions: 2, group_commit_us: 500, ..Default::default() }).unwrap();
    // Eight producers publish overlapping batches of ids 0..400, in different orders.
    let answers: Vec<Vec<(String, (u32, u64))>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let q = q.clone();
                s.spawn(move || {
                    let mut ids: Vec<usize> = (0..400).collect();
                    ids.rotate_left(t * 50);
                    let mut got = Vec::new();
                    for chunk in ids.chunks(20) {
                        let recs: Vec<Record> =
                            chunk.iter().map(|i| Record { id: Some(format!("id-{i}")), ..Record::new(format!("m{i}")) }).collect();
                        let pos = q.publish("t", &recs).unwrap();
                        got.extend(recs.into_iter().map(|r| r.id.unwrap()).zip(pos));
                    }
                    got
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(q.topic_info("t").unwrap().len(), 400, "each id stored once");
    let mut first: std::collections::HashMap<String, (u32, u64)> = std::collections::HashMap::new();
    for (id, pos) in answers.into_iter().flatten() {
        assert_eq!(*first.entry(id.clone()).or_insert(pos), pos, "{id}: every publisher is told the same position");
    }
    for (id, (p, o)) in first {
        let rec = &q.read("t", p, o, 1).unwrap()[0];
        assert_eq!(format!("id-{}", &rec.payload[1..].iter().map(|&b| b as char).collect::<String>()), id);
    }
}

#[test]
fn groups_lists_each_group_with_its_committed_offsets_and_topic_bytes_counts_the_files() {
    let (_dir, q) = setup(3);
    assert_eq!(q.groups("t").unwrap(), []);
    let mut c = q.consumer("t", "billing", ConsumerOptions::default()).unwrap();
    let got = fetch_all(&mut c, Duration::ZERO);
    c.ack(got[0].id());
    c.ack(got[1].id());
    c.commit().unwrap();
    assert_eq!(q.groups("t").unwrap(), [("billing".to_owned(), vec![2])]);
    q.create_topic("u", &TopicConfig::default()).unwrap();
    assert_eq!(q.groups("u").unwrap(), [], "another topic's groups are not listed");
    let before = q.topic_bytes("t").unwrap();
    assert!(before > 0);
    // More than the zero-fill ahead of an `always` topic's appends (128 KiB),
    // which the files count too.
    let batch: Vec<Record> = (0..300).map(|_| Record::new(vec![b'x'; 4096])).collect();
    q.publish("t", &batch).unwrap();
    assert!(q.topic_bytes("t").unwrap() >= before + 300 * 4096);
    assert!(q.groups("nope").is_err() && q.topic_bytes("nope").is_err());
}

#[test]
fn redrive_sends_each_selected_dead_letter_back_once_with_provenance() {
    let (dir, q) = setup(4);
    let mut c = q.consumer("t", "g", ConsumerOptions::default()).unwrap();
    let got = fetch_all(&mut c, Duration::ZERO);
    for d in &got[..3] {
        c.reject(d.id(), "bad input").unwrap();
    }
    c.ack(got[3].id());
    c.commit().unwrap();
    drop(c);
    let dlq = "t.dlq";
    let all = weir_queue::Selection::default();
    assert_eq!(q.dead_letters(dlq, &all).unwrap().len(), 3);

    // A dry run sends nothing; a selection by id sends that one.
    let dry = q.redrive(dlq, &all, None, true).unwrap();
    assert_eq!((dry.sent, q.topic_info("t").unwrap().len()), (3, 4));
    let one = weir_queue::Selection { ids: vec![(0, 1)], ..Default::default() };
    let sent = q.redrive(dlq, &one, None, false).unwrap();
    assert_eq!((sent.sent, sent.to.get("t")), (1, Some(&1)));
    let back = q.read("t", 0, 4, 10).unwrap();
    assert_eq!(back[0].payload, b"m1");
    assert_eq!(header(&back[0], weir_queue::REDRIVEN_FROM), "t.dlq/0@1");
    assert_eq!(header(&back[0], weir_queue::REDRIVEN_REASON), "bad input");
    assert!(back[0].headers.iter().all(|(k, _)| k != dlq_headers::REASON), "dead-letter headers are taken off");

    // The rest, then again: the marked ones are not sent twice, even after reopening.
    assert_eq!(q.redrive(dlq, &all, None, false).unwrap().sent, 2);
    drop(q);
    let q = Queue::open(dir.path()).unwrap();
    let again = q.redrive(dlq, &all, None, false).unwrap();
    assert_eq!((again.sent, again.already), (0, 3));
    assert_eq!(q.topic_info("t").unwrap().len(), 7);
    assert!(q.dead_letters(dlq, &all).unwrap().iter().all(|d| d.redriven));
    assert!(q.redrive(dlq, &weir_queue::Selection::default(), Some("missing"), false).is_ok(), "nothing left to send anywhere");
}

#[test]
fn a_summary_counts_everything_selected_and_keeps_only_the_newest() {
    let (_dir, q) = setup(50);
    let mut c = q.consumer("t", "g", ConsumerOptions::default()).unwrap();
    for d in fetch_all(&mut c, Duration::ZERO) {
        c.reject(d.id(), "bad").unwrap();
    }
    let s = q.dead_letter_summary("t.dlq", &weir_queue::Selection::default(), 5).unwrap();
    assert_eq!((s.total, s.redriven, s.newest.len()), (50, 0, 5));
    assert_eq!(s.newest.iter().map(|d| d.offset).collect::<Vec<_>>(), [49, 48, 47, 46, 45], "newest first");
    assert_eq!(s.groups.values().map(|g| g.count).sum::<usize>(), 50);
}

#[test]
fn a_redrive_of_more_than_a_chunk_sends_each_once() {
    let (_dir, q) = setup(2500);
    let mut c = q.consumer("t", "g", ConsumerOptions { max_ack_pending: 10_000, ..Default::default() }).unwrap();
    loop {
        let got = c.fetch(1000, Duration::ZERO).unwrap();
        if got.is_empty() {
            break;
        }
        for d in got {
            c.reject(d.id(), "bad").unwrap();
        }
    }
    let all = weir_queue::Selection::default();
    let sent = q.redrive("t.dlq", &all, None, false).unwrap();
    assert_eq!(sent.sent, 2500);
    assert_eq!(q.topic_info("t").unwrap().len(), 5000);
    let again = q.redrive("t.dlq", &all, None, false).unwrap();
    assert_eq!((again.sent, again.already), (0, 2500));
}
