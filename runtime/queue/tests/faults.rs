//! Storage faults: a full disk, and a failing fsync at each place the queue
//! syncs ([`SyncSite`]): what was syncing stops for good (fail-stop), and
//! after a restart exactly what was acknowledged is there.

use std::sync::Arc;

use weir_queue::{ConsumerOptions, Error, FaultInjector, Queue, Record, StateWrite, SyncSite, TopicConfig};

/// A queue with a fault injector and a topic `t` made with `config`.
fn faulty_queue(config: &TopicConfig) -> (tempfile::TempDir, Arc<FaultInjector>, Queue) {
    let dir = tempfile::tempdir().unwrap();
    let faults = Arc::new(FaultInjector::default());
    let q = Queue::open_with_faults(dir.path(), faults.clone()).unwrap();
    q.create_topic("t", config).unwrap();
    (dir, faults, q)
}

fn payloads(q: &Queue) -> Vec<String> {
    q.read("t", 0, 0, usize::MAX).unwrap().into_iter().map(|r| String::from_utf8(r.payload).unwrap()).collect()
}

/// Where the data of the first segment ends: past it, zeros filled ahead
/// of appends (`fsync = "always"`) or nothing.
fn segment_data_len(dir: &std::path::Path) -> usize {
    let bytes = std::fs::read(dir.join("topics/t/0/00000000000000000000.log")).unwrap();
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

#[test]
fn a_full_disk_fails_the_publish_leaves_no_partial_record_and_recovers_when_freed() {
    let (dir, faults, q) = faulty_queue(&TopicConfig::default());
    q.publish("t", &[Record::new("before")]).unwrap();
    let len = segment_data_len(dir.path());

    faults.set_disk_full(true);
    let batch: Vec<Record> = (0..10).map(|i| Record::new(format!("lost {i}"))).collect();
    match q.publish("t", &batch) {
        Err(Error::Io { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(28), "ENOSPC: {source}")
        }
        other => panic!("expected ENOSPC, got {other:?}"),
    }
    assert_eq!(segment_data_len(dir.path()), len, "the half-written batch was rolled back");
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
    let (dir, faults, q) = faulty_queue(&TopicConfig::default());
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

    // A restart re-validates the log from disk and accepts writes again. The
    // unacknowledged record reached the file (only its fsync failed) and
    // is valid, so it is there: an unacknowledged publish may or may not be.
    let q = Queue::open(dir.path()).unwrap();
    q.publish("t", &[Record::new("after restart")]).unwrap();
    assert_eq!(payloads(&q), ["acknowledged", "not acknowledged", "after restart"]);
}

/// Publish one record at a time into 4 KiB segments until the fault armed
/// at `site` stops the partition; then every later publish fails too, and
/// after a restart the log holds exactly the acknowledged records.
fn partition_stops_at(site: SyncSite) {
    let (dir, faults, q) = faulty_queue(&TopicConfig { segment_bytes: 4096, ..TopicConfig::default() });
    let mut acked = Vec::new();
    for i in 0..20 {
        let payload = format!("{i:03}-{}", "x".repeat(300));
        q.publish("t", &[Record::new(payload.clone())]).unwrap();
        acked.push(payload);
    }
    faults.fail_next_sync(site);
    let mut failed = None;
    for i in 20..200 {
        let payload = format!("{i:03}-{}", "x".repeat(300));
        match q.publish("t", &[Record::new(payload.clone())]) {
            Ok(_) => acked.push(payload),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let err = failed.unwrap_or_else(|| panic!("{site:?}: no publish failed"));
    assert!(matches!(err, Error::Failed { .. }), "{site:?}: {err}");
    let again = q.publish("t", &[Record::new("later")]).unwrap_err();
    assert!(again.to_string().contains("stopped accepting writes"), "{site:?}: never retried: {again}");
    assert_eq!(payloads(&q), acked, "{site:?}: readers still see what was acknowledged");
    drop(q);
    let q = Queue::open(dir.path()).unwrap();
    assert_eq!(payloads(&q), acked, "{site:?}: after a restart, exactly what was acknowledged");
    q.publish("t", &[Record::new("after restart")]).unwrap();
}

#[test]
fn a_failed_fsync_when_sealing_a_segment_stops_the_partition() {
    partition_stops_at(SyncSite::SegmentRoll);
}

#[test]
fn a_failed_fsync_of_a_segment_index_stops_the_partition() {
    partition_stops_at(SyncSite::Index);
}

#[test]
fn a_failed_directory_fsync_for_a_new_segment_stops_the_partition() {
    partition_stops_at(SyncSite::Directory);
}

#[test]
fn a_failed_fsync_of_committed_offsets_stops_the_group_at_its_last_durable_offsets() {
    let (dir, faults, q) = faulty_queue(&TopicConfig::default());
    q.publish("t", &(0..6).map(|i| Record::new(format!("m{i}"))).collect::<Vec<_>>()).unwrap();
    let mut c = q.consumer("t", "g", ConsumerOptions::default()).unwrap();
    let take = |c: &mut weir_queue::Consumer, n: usize| {
        let got = c.fetch(n, std::time::Duration::ZERO).unwrap();
        got.iter().for_each(|d| c.ack(d.id()));
        got.len()
    };
    assert_eq!(take(&mut c, 2), 2);
    c.commit().unwrap();
    assert_eq!(take(&mut c, 2), 2);
    faults.fail_next_sync(SyncSite::Offsets);
    let err = c.commit().unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_eq!(take(&mut c, 2), 2);
    let again = c.commit().unwrap_err();
    assert!(matches!(again, Error::Stopped { .. }), "never retried: {again}");
    drop(c);
    drop(q);
    let q = Queue::open(dir.path()).unwrap();
    let mut c = q.consumer("t", "g", ConsumerOptions::default()).unwrap();
    let redelivered: Vec<String> =
        c.fetch(10, std::time::Duration::ZERO).unwrap().into_iter().map(|d| String::from_utf8(d.record.payload).unwrap()).collect();
    assert_eq!(redelivered, ["m2", "m3", "m4", "m5"], "the group resumes from its last durable offsets");
}

#[test]
fn a_failed_fsync_of_the_state_store_stops_it() {
    // Directory: the first commit makes the store's directory and file.
    for site in [SyncSite::State, SyncSite::Directory] {
        let (_dir, faults, q) = faulty_queue(&TopicConfig::default());
        let put = |k: &str, v: &str| StateWrite { stage: "s".into(), key: k.into(), value: Some(v.into()) };
        let mut state = q.state_store("g", "t").unwrap();
        if site == SyncSite::State {
            state.commit(&[put("a", "1")], &[(0, 0)]).unwrap();
        }
        faults.fail_next_sync(site);
        assert!(state.commit(&[put("a", "2")], &[(0, 1)]).is_err(), "{site:?}");
        let again = state.commit(&[put("a", "3")], &[(0, 2)]).unwrap_err();
        assert!(matches!(again, Error::Stopped { .. }), "{site:?}: never retried: {again}");
        drop(state);
        let state = q.state_store("g", "t").unwrap();
        let a = state.stage("s").unwrap().get(b"a".as_slice()).cloned();
        // The failed commit reached the file, only its fsync failed: it
        // may be there or not; the refused one after it never is.
        let before = (site == SyncSite::State).then(|| b"1".to_vec());
        assert!(a == before || a == Some(b"2".to_vec()), "{site:?}: {a:?}");
    }
}

#[test]
fn an_append_is_delivered_only_once_durable_and_a_failed_fsync_surfaces_from_its_wait() {
    let (_dir, faults, q) = faulty_queue(&TopicConfig::default());
    let first = q.append("t", &[Record::new("one")]).unwrap();
    let second = q.append("t", &[Record::new("two")]).unwrap();
    assert_eq!(payloads(&q), Vec::<String>::new(), "nothing is delivered before its fsync");
    q.wait_durable(first).unwrap();
    assert_eq!(payloads(&q), ["one", "two"], "one fsync covers everything appended before it ran");
    q.wait_durable(second).unwrap();

    let third = q.append("t", &[Record::new("three")]).unwrap();
    faults.fail_next_fsync();
    let err = q.wait_durable(third).unwrap_err();
    assert!(matches!(err, Error::Failed { .. }) && err.to_string().contains("fsync failed"), "{err}");
    assert_eq!(payloads(&q), ["one", "two"], "what failed to sync is never delivered");
    let again = q.append("t", &[Record::new("later")]).err().expect("the partition stopped");
    assert!(again.to_string().contains("stopped accepting writes"), "{again}");
}

#[test]
fn an_append_with_ids_or_to_a_topic_that_does_not_sync_each_write_is_done_when_it_returns() {
    let (_dir, _faults, q) = faulty_queue(&TopicConfig::default());
    let with_id = Record { id: Some("id-1".into()), ..Record::new("once") };
    let appended = q.append("t", std::slice::from_ref(&with_id)).unwrap();
    assert_eq!(payloads(&q), ["once"], "an id counts as stored only once durable: waited for in append");
    q.wait_durable(appended).unwrap();
    q.wait_durable(q.append("t", &[with_id]).unwrap()).unwrap();
    assert_eq!(payloads(&q), ["once"], "the id deduplicates as in publish");

    q.create_topic("n", &TopicConfig { fsync: weir_queue::Fsync::Never, ..TopicConfig::default() }).unwrap();
    let appended = q.append("n", &[Record::new("at once")]).unwrap();
    assert_eq!(q.read("n", 0, 0, 10).unwrap().len(), 1);
    q.wait_durable(appended).unwrap();
}
