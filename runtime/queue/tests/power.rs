//! Power loss. `kill -9` keeps the page cache, so it cannot tell an fsync
//! from none; these tests cut the power instead (the fault injector's power
//! model): afterwards the data directory holds only what completed fsyncs
//! covered. A publish / consume / state / commit workload runs with power
//! cuts at random moments, round after round, and after each the queue must
//! hold every acknowledged publish at its offset, committed offsets must not
//! go backwards, and stage state must count every message exactly once.
//! Telling the injector to skip the fsyncs of one site makes the same check
//! fail, which shows it can.
//!
//! `WEIR_POWER_CUT_ROUNDS` (default 40) and `WEIR_POWER_CUT_SEED` (default:
//! the time; printed) set how many rounds run and which.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_queue::{Consumer, ConsumerOptions, FaultInjector, Fsync, Queue, Record, StateStore, StateWrite, SyncSite, TopicConfig};

const TOPIC: &str = "t";
const GROUP: &str = "g";
const STAGE: &str = "count";
const PARTITIONS: u32 = 2;

fn config(fsync: Fsync) -> TopicConfig {
    TopicConfig { partitions: PARTITIONS, fsync, segment_bytes: 4096, ..TopicConfig::default() }
}

/// A small deterministic random source (xorshift), so a failing round can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What the workload was told succeeded: the truth a restored queue must match.
struct Oracle {
    /// Per partition, offset → payload of every acknowledged publish.
    acked: Vec<BTreeMap<u64, Vec<u8>>>,
    /// Per partition, the highest offset a successful group commit reported.
    committed: Vec<u64>,
}

impl Oracle {
    fn new() -> Self {
        Oracle { acked: vec![BTreeMap::new(); PARTITIONS as usize], committed: vec![0; PARTITIONS as usize] }
    }
}

/// Per partition, how many messages stage state has counted and the sum of
/// their offsets: together they tell a message counted twice or not at all.
fn counted(store: &StateStore) -> Vec<(u64, u64)> {
    let map = store.stage(STAGE).expect("state reads");
    let get = |key: String| map.get(key.as_bytes()).map_or(0, |v| u64::from_le_bytes(v[..8].try_into().unwrap()));
    (0..PARTITIONS).map(|p| (get(format!("n{p}")), get(format!("s{p}")))).collect()
}

/// Count a batch once, as the engine does: skip what state already holds,
/// commit the counts with the ids in one transaction, then acknowledge.
fn count_batch(consumer: &mut Consumer, store: &mut StateStore, max: usize, wait: Duration) -> weir_queue::Result<usize> {
    let batch = consumer.fetch(max, wait)?;
    let mut counts = counted(store);
    let mut ids = Vec::new();
    for d in &batch {
        let id = d.id();
        if !store.applied().contains(&(id.partition, id.offset)) {
            let (n, s) = &mut counts[id.partition as usize];
            *n += 1;
            *s += id.offset;
            ids.push((id.partition, id.offset));
        }
    }
    if !ids.is_empty() {
        let writes: Vec<StateWrite> = counts
            .iter()
            .enumerate()
            .flat_map(|(p, (n, s))| {
                [(format!("n{p}"), *n), (format!("s{p}"), *s)].map(|(key, v)| StateWrite {
                    stage: STAGE.into(),
                    key: key.into_bytes(),
                    value: Some(v.to_le_bytes().to_vec()),
                })
            })
            .collect();
        store.commit(&writes, &ids)?;
    }
    for d in &batch {
        consumer.ack(d.id());
    }
    Ok(batch.len())
}

fn options() -> ConsumerOptions {
    ConsumerOptions { ack_wait: Duration::from_secs(3600), ..ConsumerOptions::default() }
}

/// Open the queue restored at `dir` and list every way it differs from what
/// `oracle` says was acknowledged; then count what is left, as a restarted
/// pipeline would, and check that state then counts every message once.
fn check(dir: &Path, oracle: &mut Oracle) -> Vec<String> {
    let mut wrong = Vec::new();
    let q = match Queue::open(dir) {
        Ok(q) => q,
        Err(e) => return vec![format!("the queue does not open: {e}")],
    };
    let mut logs = Vec::new();
    for p in 0..PARTITIONS {
        let log: BTreeMap<u64, Vec<u8>> = match q.read(TOPIC, p, 0, usize::MAX) {
            Ok(records) => records.into_iter().map(|r| (r.offset, r.payload)).collect(),
            Err(e) => return vec![format!("partition {p} cannot be read: {e}")],
        };
        let lost: Vec<u64> = oracle.acked[p as usize].iter().filter(|(o, v)| log.get(o) != Some(v)).map(|(o, _)| *o).collect();
        if !lost.is_empty() {
            wrong.push(format!("partition {p}: {} acknowledged publishes lost or changed, first at offset {}", lost.len(), lost[0]));
        }
        // What survives beyond the acknowledged (it reached the disk unacknowledged) becomes the truth.
        oracle.acked[p as usize] = log.clone();
        logs.push(log);
    }
    let key = q.topic_key(TOPIC).unwrap();
    let (mut consumer, mut store) = match (q.consumer(TOPIC, GROUP, options()), q.state_store(GROUP, &key)) {
        (Ok(c), Ok(s)) => (c, s),
        (c, s) => return vec![format!("the group does not open: {:?} / {:?}", c.err(), s.err())],
    };
    for (p, at) in consumer.committed().into_iter().enumerate() {
        if at < oracle.committed[p] {
            wrong.push(format!("partition {p}: committed offset went back from {} to {at}", oracle.committed[p]));
        }
        // Everything below the committed offset was counted; above it, what the applied set says.
        let applied = store.applied().iter().filter(|&&(q, o)| q as usize == p && o >= at).map(|&(_, o)| o);
        let expected = (0..at).chain(applied).fold((0, 0), |(n, s), o| (n + 1, s + o));
        if counted(&store)[p] != expected {
            wrong.push(format!(
                "partition {p}: state counts (n, Σoffset) {:?}, its committed offset and applied ids say {expected:?}",
                counted(&store)[p]
            ));
        }
    }
    // Restart: count the rest. Every message in the log is then counted once.
    loop {
        match count_batch(&mut consumer, &mut store, 500, Duration::ZERO) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return vec![format!("counting after the restart failed: {e}")],
        }
    }
    consumer.commit().unwrap();
    for (p, log) in logs.iter().enumerate() {
        let all = log.keys().fold((0, 0), |(n, s), o| (n + 1, s + o));
        if counted(&store)[p] != all {
            wrong.push(format!("partition {p}: after the restart state counts {:?}, the log holds {all:?}", counted(&store)[p]));
        }
        oracle.committed[p] = consumer.committed()[p];
    }
    wrong
}

/// A data directory that survives power cuts: each round runs on the
/// directory the last one restored.
struct Disk {
    base: tempfile::TempDir,
    round: usize,
}

impl Disk {
    fn new() -> Self {
        let base = tempfile::tempdir().unwrap();
        std::fs::create_dir(base.path().join("data-0")).unwrap();
        Disk { base, round: 0 }
    }

    fn data(&self) -> PathBuf {
        self.base.path().join(format!("data-{}", self.round))
    }

    /// An injector recording what this round makes durable.
    fn injector(&self) -> Arc<FaultInjector> {
        let shadow = self.base.path().join(format!("shadow-{}", self.round));
        std::fs::create_dir(&shadow).unwrap();
        Arc::new(FaultInjector::with_power_model(&self.data(), shadow).unwrap())
    }

    /// After the cut (and every handle dropped): what the disk holds now.
    fn power_on(&mut self, injector: &FaultInjector) -> PathBuf {
        let (old, shadow) = (self.data(), self.base.path().join(format!("shadow-{}", self.round)));
        self.round += 1;
        injector.restore_after_power_cut(&old, &self.data()).unwrap();
        std::fs::remove_dir_all(old).unwrap();
        std::fs::remove_dir_all(shadow).unwrap();
        self.data()
    }
}

/// One round: producers and a counting consumer run until the power is cut
/// after `cut_after`. Returns the directory as the disk then holds it.
fn round(disk: &mut Disk, oracle: &Arc<Mutex<Oracle>>, cut_after: Duration, seed: u64, skip: Option<SyncSite>) -> PathBuf {
    let injector = disk.injector();
    if let Some(site) = skip {
        injector.skip_syncs(site);
    }
    let q = Queue::open_with_faults(disk.data(), injector.clone()).unwrap();
    q.ensure_topic(TOPIC, &config(Fsync::Always)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for w in 0..2u64 {
        let (q, oracle, stop) = (q.clone(), oracle.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng(seed ^ (w + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            for seq in 0.. {
                let batch: Vec<Record> = (0..1 + rng.below(8))
                    .map(|i| Record::new(format!("{seed:x} w{w} {seq}.{i} {}", "x".repeat(rng.below(300) as usize))))
                    .collect();
                let Ok(at) = q.publish(TOPIC, &batch) else { return };
                let mut oracle = oracle.lock().unwrap();
                for ((p, o), r) in at.into_iter().zip(batch) {
                    oracle.acked[p as usize].insert(o, r.payload);
                }
                if stop.load(Ordering::SeqCst) {
                    return;
                }
            }
        }));
    }
    {
        let (q, oracle, stop) = (q.clone(), oracle.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let key = q.topic_key(TOPIC).unwrap();
            let (Ok(mut consumer), Ok(mut store)) = (q.consumer(TOPIC, GROUP, options()), q.state_store(GROUP, &key)) else { return };
            for batch in 1.. {
                if stop.load(Ordering::SeqCst) || count_batch(&mut consumer, &mut store, 50, Duration::from_millis(5)).is_err() {
                    return;
                }
                if batch % 3 == 0 {
                    if consumer.commit().is_err() {
                        return;
                    }
                    oracle.lock().unwrap().committed = consumer.committed();
                }
                if batch % 17 == 0 {
                    store.set_floor(consumer.committed());
                    if store.prune().is_err() {
                        return;
                    }
                }
            }
        }));
    }
    std::thread::sleep(cut_after);
    injector.cut_power();
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    drop(q);
    disk.power_on(&injector)
}

/// Run `rounds` rounds of the workload with power cuts at random moments,
/// skipping the fsyncs of `skip`, if any. Returns the first round's
/// violations, if a round had any, and how many messages the log ended with.
fn random_power_cuts(rounds: usize, seed: u64, skip: Option<SyncSite>) -> Result<usize, (usize, Vec<String>)> {
    let mut rng = Rng(seed);
    let mut disk = Disk::new();
    let oracle = Arc::new(Mutex::new(Oracle::new()));
    let mut published = 0;
    for r in 0..rounds {
        let cut_after = Duration::from_millis(1 + rng.below(80));
        let dir = round(&mut disk, &oracle, cut_after, rng.below(u64::MAX), skip);
        let mut oracle = oracle.lock().unwrap();
        let wrong = check(&dir, &mut oracle);
        if !wrong.is_empty() {
            return Err((r, wrong));
        }
        published = oracle.acked.iter().map(BTreeMap::len).sum::<usize>();
        if (r + 1) % 50 == 0 {
            eprintln!("power cuts: {} of {rounds} rounds passed, {published} messages in the log", r + 1);
        }
    }
    Ok(published)
}

#[test]
fn acknowledged_publishes_commits_and_state_survive_random_power_cuts() {
    let rounds: usize = std::env::var("WEIR_POWER_CUT_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let seed: u64 = std::env::var("WEIR_POWER_CUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1);
    eprintln!("power cuts: {rounds} rounds, WEIR_POWER_CUT_SEED={seed}");
    let started = Instant::now();
    match random_power_cuts(rounds, seed, None) {
        Ok(published) => {
            eprintln!("power cuts: {rounds} rounds passed, {published} messages in the log at the end, {:?}", started.elapsed());
            assert!(published > rounds, "the workload published too little to test anything: {published}");
        }
        Err((r, wrong)) => panic!("round {r} (WEIR_POWER_CUT_SEED={seed}): {wrong:#?}"),
    }
}

/// One deterministic run that makes every kind of file the queue syncs:
/// a topic, several segments in one publish, index files, a group file,
/// state commits (one pruning applied ids). Then the power is cut.
fn every_site_once(skip: Option<SyncSite>) -> Vec<String> {
    let mut disk = Disk::new();
    let injector = disk.injector();
    if let Some(site) = skip {
        injector.skip_syncs(site);
    }
    let mut oracle = Oracle::new();
    let q = Queue::open_with_faults(disk.data(), injector.clone()).unwrap();
    // A group commit long enough that two publishes started together overlap.
    q.create_topic(TOPIC, &TopicConfig { group_commit_us: 300_000, ..config(Fsync::Always) }).unwrap();
    let batch = |tag: &str| -> Vec<Record> {
        (0..60).map(|i| Record::new(format!("{tag} {i:03} {}", "y".repeat(200))).with_key("one partition")).collect()
    };
    let mut published = vec![(batch("first"), q.publish(TOPIC, &batch("first")).unwrap())];
    // Each of these fills a segment. Whichever publish comes second rolls
    // the segment of the first while the first waits for its fsync, which
    // then syncs only the new segment: the roll's fsync is what makes the
    // first durable.
    let start = Arc::new(std::sync::Barrier::new(2));
    let racer = {
        let (q, start) = (q.clone(), start.clone());
        std::thread::spawn(move || {
            start.wait();
            (batch("racer"), q.publish(TOPIC, &batch("racer")).unwrap())
        })
    };
    start.wait();
    published.push((batch("main"), q.publish(TOPIC, &batch("main")).unwrap()));
    published.push(racer.join().unwrap());
    for (batch, at) in published {
        for ((p, o), r) in at.into_iter().zip(batch) {
            oracle.acked[p as usize].insert(o, r.payload);
        }
    }
    let key = q.topic_key(TOPIC).unwrap();
    let mut consumer = q.consumer(TOPIC, GROUP, options()).unwrap();
    let mut store = q.state_store(GROUP, &key).unwrap();
    count_batch(&mut consumer, &mut store, 7, Duration::ZERO).unwrap();
    consumer.commit().unwrap();
    store.set_floor(consumer.committed());
    store.prune().unwrap();
    while count_batch(&mut consumer, &mut store, 7, Duration::ZERO).unwrap() > 0 {}
    consumer.commit().unwrap();
    oracle.committed = consumer.committed();
    injector.cut_power();
    drop((consumer, store, q));
    let dir = disk.power_on(&injector);
    check(&dir, &mut oracle)
}

#[test]
fn the_run_that_syncs_at_every_site_checks_clean() {
    assert_eq!(every_site_once(None), Vec::<String>::new());
}

#[test]
fn the_power_cut_check_fails_when_any_durability_fsync_is_skipped() {
    for site in [SyncSite::Append, SyncSite::SegmentRoll, SyncSite::Directory, SyncSite::Offsets, SyncSite::State, SyncSite::TopicMeta] {
        // One run that syncs at every site; should it miss (the racing
        // publishes did not overlap: a stall of 300 ms), random rounds.
        let wrong = match every_site_once(Some(site)) {
            wrong if !wrong.is_empty() => wrong,
            _ => random_power_cuts(100, 1, Some(site)).err().map(|(_, wrong)| wrong).unwrap_or_default(),
        };
        eprintln!("skipping {site:?} fsyncs: {wrong:?}");
        assert!(!wrong.is_empty(), "with the {site:?} fsyncs skipped the power-cut check still passed");
    }
}

#[test]
fn a_lost_index_file_is_rebuilt_so_its_fsync_is_not_a_durability_point() {
    assert_eq!(every_site_once(Some(SyncSite::Index)), Vec::<String>::new());
}

#[test]
fn under_interval_a_power_cut_loses_only_what_the_last_interval_published() {
    let mut disk = Disk::new();
    let injector = disk.injector();
    let q = Queue::open_with_faults(disk.data(), injector.clone()).unwrap();
    q.create_topic(TOPIC, &config(Fsync::Interval { ms: 20 })).unwrap();
    let batch = |tag: &str| -> Vec<Record> { (0..50).map(|i| Record::new(format!("{tag} {i}"))).collect() };
    q.publish(TOPIC, &batch("old")).unwrap();
    // Keep publishing until the flusher has run several times on every
    // partition since: by then it has made the first batch durable.
    let fsyncs = || q.topic_info(TOPIC).unwrap().fsyncs;
    let before = fsyncs();
    let deadline = Instant::now() + Duration::from_secs(30);
    while fsyncs() < before + 3 * u64::from(PARTITIONS) {
        assert!(Instant::now() < deadline, "the interval flusher did not run");
        q.publish(TOPIC, &[Record::new("mid"), Record::new("mid")]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    q.publish(TOPIC, &batch("new")).unwrap();
    injector.cut_power();
    drop(q);
    let dir = disk.power_on(&injector);
    let q = Queue::open(&dir).unwrap();
    let mut old = 0;
    for p in 0..PARTITIONS {
        let records = q.read(TOPIC, p, 0, usize::MAX).unwrap();
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.offset, i as u64, "what survives is a prefix of the log");
        }
        let tags: Vec<String> = records.iter().map(|r| String::from_utf8_lossy(&r.payload).into_owned()).collect();
        assert!(tags.iter().skip_while(|t| t.starts_with("old")).all(|t| !t.starts_with("old")), "{tags:?}");
        old += tags.iter().filter(|t| t.starts_with("old")).count();
    }
    assert_eq!(old, 50, "everything published an interval before the cut survives");
}

/// Records appended without waiting ([`Queue::append`]), cut off by the
/// power: whether they survive.
fn append_then_cut(wait: bool, skip: Option<SyncSite>) -> Vec<Vec<u8>> {
    let mut disk = Disk::new();
    let injector = disk.injector();
    if let Some(site) = skip {
        injector.skip_syncs(site);
    }
    let q = Queue::open_with_faults(disk.data(), injector.clone()).unwrap();
    q.create_topic(TOPIC, &config(Fsync::Always)).unwrap();
    let appended = q.append(TOPIC, &[Record::new("a").with_key("k"), Record::new("b").with_key("k")]).unwrap();
    if wait {
        q.wait_durable(appended).unwrap();
    } else {
        drop(appended);
    }
    // Appended and never waited for: lost, though (under `always`) it only
    // overwrote zeros that an earlier fsync made durable.
    drop(q.append(TOPIC, &[Record::new("c").with_key("k")]).unwrap());
    injector.cut_power();
    drop(q);
    let dir = disk.power_on(&injector);
    let q = Queue::open(&dir).unwrap();
    (0..PARTITIONS).flat_map(|p| q.read(TOPIC, p, 0, usize::MAX).unwrap()).map(|r| r.payload).collect()
}

#[test]
fn an_append_survives_a_power_cut_once_waited_for_and_not_before() {
    assert_eq!(append_then_cut(true, None), [b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(append_then_cut(false, None), Vec::<Vec<u8>>::new(), "no fsync ran: the check tells an fsync from none");
    assert_eq!(append_then_cut(true, Some(SyncSite::Append)), Vec::<Vec<u8>>::new(), "the wait is what syncs");
}
