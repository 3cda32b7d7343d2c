//! Storage faults: a full disk and a failing fsync.

use std::sync::Arc;

use weir_queue::{ConsumerOptions, Error, FaultInjector, Queue, Record, TopicConfig};

fn payloads(q: &Queue) -> Vec<String> {
    q.read("t", 0, 0, usize::MAX).unwrap().into_iter().map(|r| String::from_utf8(r.payload).unwrap()).collect()
}

fn segment_len(dir: &std::path::Path) -> u64 {
    std::fs::metadata(dir.join("topics/t/0/00000000000000000000.log")).unwrap().len()
}

#[test]
fn a_full_disk_fails_the_publish_leaves_no_partial_record_and_recovers_when_freed() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(FaultInjector::default());
    let q = Queue::open_with_faults(dir.path(), faults.clone()).unwrap();
    q.create_topic("t", &TopicConfig::default()).unwrap();
    q.publish("t", &[Record::new("before")]).unwrap();
    let len = segment_len(dir.path());

    faults.set_disk_full(true);
    let batch: Vec<Record> = (0..10).map(|i| Record::new(format!("lost {i}"))).collect();
    match q.publish("t", &batch) {
        Err(Error::Io { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(28), "ENOSPC: {source}")
        }
        other => panic!("expected ENOSPC, got {other:?}"),
    }
    assert_eq!(segment_len(dir.path()), len, "the half-written batch was rolled back");
    assert_eq!(payloads(&q), ["before"]);

    faults.set_disk_full(false);
    assert_eq!(q.publish("t", &[Record::new("after")]).unwrap(), vec![(0, 1)], "offsets stay dense");
    assert_eq!(payloads(&q), ["before", "after"]);
    drop(q);
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(payloads(&q), ["before", "after"]);
}

#[test]
fn a_failed_fsync_stops_writes_and_says_so_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(FaultInjector::default());
    let q = Queue::open_with_faults(dir.path(), faults.clone()).unwrap();
    q.create_topic("t", &TopicConfig::default()).unwrap();
    q.publish("t", &[Record::new("acknowledged")]).unwrap();

    faults.fail_next_fsync();
    let err = q.publish("t", &[Record::new("not acknowledged")]).unwrap_err();
    assert!(matches!(err, Error::Failed { .. }), "{err}");
    assert!(err.to_string().contains("fsync failed"), "{err}");
    // Fail-stop: no retry that might falsely succeed.
    let again = q.publish("t", &[Record::new("later")]).unwrap_err();
    assert!(again.to_string().contains("stopped accepting writes"), "{again}");
    // What was acknowledged is still served; the unacknowledged record is never delivered.
    let mut c = q.consumer("t", "g", ConsumerOptions::default()).unwrap();
    let got: Vec<Vec<u8>> = c.fetch(10, std::time::Duration::ZERO).unwrap().into_iter().map(|d| d.record.payload).collect();
    assert_eq!(got, [b"acknowledged".to_vec()]);
    drop(c);
    drop(q);

    // A restart re-validates the log from disk and accepts writes again.
    let q = Queue::open(dir.path()).unwrap();
    q.publish("t", &[Record::new("after restart")]).unwrap();
    assert_eq!(payloads(&q).first().map(String::as_str), Some("acknowledged"));
    assert_eq!(payloads(&q).last().map(String::as_str), Some("after restart"));
}
