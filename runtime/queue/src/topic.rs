//! Topics: named sets of partitions with shared settings.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::faults::{Faults, SyncSite};
use crate::partition::Partition;
use crate::record::{MSG_ID_HEADER, Record};
use crate::{Error, Result, now_ms, sync_dir, validate_name, write_atomic};

pub(crate) const META_FILE: &str = "topic.json";
/// Holds a topic's incarnation id, written before [`META_FILE`].
const ID_FILE: &str = "topic.id";

/// A new incarnation id: 128 bits from the process's random hasher keys,
/// the time and a counter, as hex.
fn new_incarnation() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut out = String::new();
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        out += &format!("{:016x}", h.finish());
    }
    out
}

/// When appended records are made durable with fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    /// Before a publish returns: an acknowledged publish survives power loss.
    #[default]
    Always,
    /// At most every `ms` milliseconds: a crash of the machine (not of the
    /// process) can lose up to that much acknowledged data.
    Interval {
        /// The interval in milliseconds.
        ms: u64,
    },
    /// Never explicitly; the OS writes back when it chooses.
    Never,
}

/// Settings of a topic, fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicConfig {
    /// Number of partitions (≥ 1).
    pub partitions: u32,
    /// Durability policy.
    pub fsync: Fsync,
    /// Under `fsync = "always"`, how long the publisher leading a group commit
    /// waits for more appends before its fsync (0: fsync at once; publishes
    /// that arrive during an fsync are still grouped into the next one).
    pub group_commit_us: u64,
    /// A segment file is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// How long a [`Record::id`] is remembered for idempotent publish.
    pub dedupe_window_ms: u64,
    /// Delete a partition's oldest segments once all their records are older
    /// than this. `None`: keep forever.
    pub max_age_ms: Option<u64>,
    /// Delete a partition's oldest segments while it is larger than this.
    /// `None`: no limit. The active segment is never deleted.
    pub max_bytes: Option<u64>,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            partitions: 1,
            fsync: Fsync::Always,
            group_commit_us: 0,
            segment_bytes: 64 * 1024 * 1024,
            dedupe_window_ms: 120_000,
            max_age_ms: None,
            max_bytes: None,
        }
    }
}

/// The bounds every topic is held to, however it is made (a pipeline file,
/// the HTTP API, the command line): [`TopicConfig::validate`] checks them,
/// and the pipeline-file compiler reports them at their line.
pub mod bounds {
    use std::ops::RangeInclusive;

    /// `partitions`.
    pub const PARTITIONS: RangeInclusive<u64> = 1..=4096;
    /// `fsync_interval_ms`.
    pub const FSYNC_INTERVAL_MS: RangeInclusive<u64> = 1..=3_600_000;
    /// `group_commit_us`.
    pub const GROUP_COMMIT_US: RangeInclusive<u64> = 0..=1_000_000;
    /// `segment_bytes`.
    pub const SEGMENT_BYTES: RangeInclusive<u64> = 4096..=1 << 40;
    /// `dedupe_window_ms`.
    pub const DEDUPE_WINDOW_MS: RangeInclusive<u64> = 0..=86_400_000;
    /// `max_age_ms`, when set.
    pub const MAX_AGE_MS: RangeInclusive<u64> = 1..=u64::MAX;
    /// `max_bytes`, when set.
    pub const MAX_BYTES: RangeInclusive<u64> = 4096..=u64::MAX;
}

impl TopicConfig {
    fn group_commit(&self) -> Duration {
        Duration::from_micros(self.group_commit_us)
    }

    /// Check every setting against its [`bounds`].
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the first setting out of bounds.
    pub fn validate(&self) -> Result<()> {
        let check = |what: &'static str, value: u64, range: std::ops::RangeInclusive<u64>| {
            if range.contains(&value) {
                return Ok(());
            }
            let reason = match *range.end() {
                u64::MAX => format!("must be at least {}", range.start()),
                end => format!("must be between {} and {end}", range.start()),
            };
            Err(Error::Invalid { what, value: value.to_string(), reason })
        };
        check("partitions", u64::from(self.partitions), bounds::PARTITIONS)?;
        if let Fsync::Interval { ms } = self.fsync {
            check("fsync_interval_ms", ms, bounds::FSYNC_INTERVAL_MS)?;
        }
        check("group_commit_us", self.group_commit_us, bounds::GROUP_COMMIT_US)?;
        check("segment_bytes", self.segment_bytes, bounds::SEGMENT_BYTES)?;
        check("dedupe_window_ms", self.dedupe_window_ms, bounds::DEDUPE_WINDOW_MS)?;
        if let Some(ms) = self.max_age_ms {
            check("max_age_ms", ms, bounds::MAX_AGE_MS)?;
        }
        if let Some(bytes) = self.max_bytes {
            check("max_bytes", bytes, bounds::MAX_BYTES)?;
        }
        Ok(())
    }
}

/// Why [`Fsync::parse`] refused a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsyncError {
    /// Not one of the three policies.
    #[error("fsync must be \"always\", \"interval\" or \"never\", got {0:?}")]
    UnknownPolicy(String),
    /// An interval given for a policy other than `interval`.
    #[error("fsync_interval_ms is only valid with fsync = \"interval\"")]
    IntervalWithoutInterval,
}

impl Fsync {
    /// The interval of `fsync = "interval"` when none is given.
    pub const DEFAULT_INTERVAL_MS: u64 = 100;

    /// The policy as a pipeline file, an HTTP request and the command line
    /// all write it: `"always"` (also when none is given), `"never"`, or
    /// `"interval"` with `interval_ms` (default
    /// [`Fsync::DEFAULT_INTERVAL_MS`]; its bounds are checked by
    /// [`TopicConfig::validate`]).
    ///
    /// # Errors
    /// An unknown policy; an interval with another policy.
    pub fn parse(policy: Option<&str>, interval_ms: Option<u64>) -> Result<Fsync, FsyncError> {
        match (policy, interval_ms) {
            (Some("interval"), ms) => Ok(Fsync::Interval { ms: ms.unwrap_or(Self::DEFAULT_INTERVAL_MS) }),
            (None | Some("always"), None) => Ok(Fsync::Always),
            (Some("never"), None) => Ok(Fsync::Never),
            (None | Some("always" | "never"), Some(_)) => Err(FsyncError::IntervalWithoutInterval),
            (Some(other), _) => Err(FsyncError::UnknownPolicy(other.to_owned())),
        }
    }

    /// The policy's name, as [`Fsync::parse`] reads it.
    pub fn policy(&self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::Interval { .. } => "interval",
            Fsync::Never => "never",
        }
    }

    /// The interval of `interval`.
    pub fn interval_ms(&self) -> Option<u64> {
        match *self {
            Fsync::Interval { ms } => Some(ms),
            _ => None,
        }
    }
}

/// `always`, `interval (100 ms)`, `never`.
impl std::fmt::Display for Fsync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.interval_ms() {
            Some(ms) => write!(f, "interval ({ms} ms)"),
            None => f.write_str(self.policy()),
        }
    }
}

/// A description of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicInfo {
    /// Its name.
    pub name: String,
    /// Its settings.
    pub config: TopicConfig,
    /// Per partition: (oldest retained offset, end of the deliverable log).
    pub offsets: Vec<(u64, u64)>,
    /// Group-commit fsyncs run since the queue was opened.
    pub fsyncs: u64,
}

impl TopicInfo {
    /// Number of records stored across partitions.
    pub fn len(&self) -> u64 {
        self.offsets.iter().map(|(s, e)| e - s).sum()
    }

    /// Whether no partition holds a record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub(crate) struct Topic {
    pub(crate) name: String,
    /// Set when the topic was created, so a topic deleted and created again
    /// under the same name is another topic; `None` for topics made before
    /// weir had ids.
    pub(crate) id: Option<String>,
    pub(crate) config: TopicConfig,
    partitions: Vec<Partition>,
    next_keyless: AtomicU32,
    dedupe: Mutex<Dedupe>,
}

/// Message ids published within the dedupe window, with their positions,
/// and the ids of publishes still being appended.
#[derive(Default)]
struct Dedupe {
    ids: HashMap<String, Slot>,
    /// (append time in ms, id) of stored ids, oldest first.
    order: VecDeque<(u64, String)>,
}

enum Slot {
    Stored((u32, u64)),
    /// Being appended by another publish; wait for where it lands.
    Landing(Arc<Landing>),
}

/// Where a publish in progress stored its records: `None` until it is done,
/// then where each of its ids landed, or why it failed.
#[derive(Default)]
struct Landing {
    done: Mutex<Option<Landed>>,
    landed: Condvar,
}

/// Where each id of a finished publish landed, or why it failed.
type Landed = std::result::Result<HashMap<String, (u32, u64)>, String>;

impl Landing {
    fn finish(&self, result: Landed) {
        *self.done.lock().unwrap() = Some(result);
        self.landed.notify_all();
    }

    /// Where `id` landed, once the publish that holds it is done.
    fn wait(&self, id: &str) -> std::result::Result<(u32, u64), String> {
        let mut done = self.done.lock().unwrap();
        loop {
            match &*done {
                Some(Ok(positions)) => return Ok(positions[id]),
                Some(Err(e)) => return Err(e.clone()),
                None => done = self.landed.wait(done).unwrap(),
            }
        }
    }
}

impl Dedupe {
    fn prune(&mut self, cutoff_ms: u64) {
        while let Some((ts, _)) = self.order.front() {
            if *ts >= cutoff_ms {
                break;
            }
            let (_, id) = self.order.pop_front().unwrap();
            if matches!(self.ids.get(&id), Some(Slot::Stored(_))) {
                self.ids.remove(&id);
            }
        }
    }

    fn insert(&mut self, id: String, pos: (u32, u64), ts: u64) {
        self.ids.insert(id.clone(), Slot::Stored(pos));
        self.order.push_back((ts, id));
    }
}

impl Topic {
    pub(crate) fn create(topics_dir: &Path, name: &str, config: &TopicConfig, faults: &Faults) -> Result<Topic> {
        validate_name("topic name", name)?;
        config.validate()?;
        let dir = topics_dir.join(name);
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let meta = serde_json::to_vec_pretty(config).expect("topic config serialises");
        // The partitions and the id exist before the metadata that makes the topic visible.
        write_atomic(&dir.join(ID_FILE), new_incarnation().as_bytes(), SyncSite::TopicMeta, faults)?;
        for p in 0..config.partitions {
            let dir = dir.join(p.to_string());
            Partition::open(p, &dir, config.fsync, config.segment_bytes, config.group_commit(), false, faults.clone())?;
        }
        sync_dir(&dir, faults)?;
        write_atomic(&dir.join(META_FILE), &meta, SyncSite::TopicMeta, faults)?;
        sync_dir(topics_dir, faults)?;
        Topic::open(&dir, false, faults)
    }

    pub(crate) fn open(dir: &Path, read_only: bool, faults: &Faults) -> Result<Topic> {
        let meta_path = dir.join(META_FILE);
        let bytes = fs::read(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
        let config: TopicConfig = serde_json::from_slice(&bytes).map_err(|source| Error::Metadata { path: meta_path.clone(), source })?;
        // A damaged file can parse and still be impossible (no partitions:
        // every publish would divide by zero).
        config.validate().map_err(|e| Error::Invalid {
            what: "topic metadata",
            value: meta_path.display().to_string(),
            reason: e.to_string(),
        })?;
        let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let id = match fs::read_to_string(dir.join(ID_FILE)) {
            Ok(id) => Some(id.trim().to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&dir.join(ID_FILE), e)),
        };
        let mut partitions = Vec::with_capacity(config.partitions as usize);
        for p in 0..config.partitions {
            let (part, _truncated) = Partition::open(
                p,
                &dir.join(p.to_string()),
                config.fsync,
                config.segment_bytes,
                config.group_commit(),
                read_only,
                faults.clone(),
            )?;
            partitions.push(part);
        }
        let dedupe = if read_only { Dedupe::default() } else { Self::recent_ids(&partitions, config.dedupe_window_ms)? };
        Ok(Topic { name, id, config, partitions, next_keyless: AtomicU32::new(0), dedupe: Mutex::new(dedupe) })
    }

    /// What a consumer group's offsets, stage state and dead-letter ids are
    /// keyed by: `NAME@ID` (a topic made again under its name is another
    /// topic), or the name alone for a topic made before ids.
    pub(crate) fn key(&self) -> String {
        match &self.id {
            Some(id) => format!("{}@{id}", self.name),
            None => self.name.clone(),
        }
    }

    /// Rebuild the dedupe table from the records appended within the window.
    fn recent_ids(partitions: &[Partition], window_ms: u64) -> Result<Dedupe> {
        let cutoff = now_ms().saturating_sub(window_ms);
        let mut found = Vec::new();
        for (p, part) in partitions.iter().enumerate() {
            let log = part.log();
            for (mut from, end) in log.id_ranges_since(cutoff) {
                while from < end {
                    let recs = log.read(from, 10_000)?;
                    let Some(last) = recs.last() else { break };
                    from = last.offset + 1;
                    for r in recs {
                        if r.append_timestamp_ms < cutoff {
                            continue;
                        }
                        if let Some((_, id)) = r.headers.into_iter().find(|(k, _)| k == MSG_ID_HEADER) {
                            found.push((r.append_timestamp_ms, String::from_utf8_lossy(&id).into_owned(), (p as u32, r.offset)));
                        }
                    }
                }
            }
        }
        found.sort_by_key(|(ts, ..)| *ts);
        let mut dedupe = Dedupe::default();
        for (ts, id, pos) in found {
            dedupe.insert(id, pos, ts);
        }
        Ok(dedupe)
    }

    pub(crate) fn partition(&self, p: u32) -> Result<&Partition> {
        self.partitions.get(p as usize).ok_or_else(|| Error::Invalid {
            what: "partition",
            value: format!("{}/{p}", self.name),
            reason: "no such partition".into(),
        })
    }

    pub(crate) fn partition_count(&self) -> u32 {
        self.config.partitions
    }

    pub(crate) fn info(&self) -> TopicInfo {
        let offsets = self.partitions.iter().map(|p| (p.start_offset(), p.visible_end())).collect();
        let fsyncs = self.partitions.iter().map(Partition::fsyncs).sum();
        TopicInfo { name: self.name.clone(), config: self.config.clone(), offsets, fsyncs }
    }

    /// How long each group-commit fsync of its partitions took, µs.
    pub(crate) fn sync_times(&self) -> hdrhistogram::Histogram<u64> {
        let mut all = hdrhistogram::Histogram::new(2).expect("valid histogram precision");
        for p in &self.partitions {
            p.add_sync_times(&mut all);
        }
        all
    }

    /// Offsets below this may be delivered (see [`Partition::visible_end`]).
    pub(crate) fn visible_end(&self, p: u32) -> u64 {
        self.partitions[p as usize].visible_end()
    }

    pub(crate) fn start_offset(&self, p: u32) -> u64 {
        self.partitions[p as usize].start_offset()
    }

    pub(crate) fn refresh(&self, p: u32) -> Result<()> {
        self.partitions[p as usize].refresh()
    }

    fn partition_for(&self, key: Option<&[u8]>, keyless: u32) -> u32 {
        let n = self.config.partitions;
        match key {
            Some(k) => crc32c::crc32c(k) % n,
            None => keyless % n,
        }
    }

    pub(crate) fn publish(&self, records: &[Record]) -> Result<Vec<(u32, u64)>> {
        validate(records)?;
        if records.iter().all(|r| r.id.is_none()) {
            return self.append(&records.iter().collect::<Vec<_>>());
        }
        // Idempotent publish. Its new ids are claimed under the dedupe lock,
        // so two concurrent publishes of one id cannot both append it; the
        // append and its fsync run without the lock, so publishes with ids
        // are grouped into one fsync like any others. A publish that finds
        // an id claimed by another waits for where that one lands.
        let mut out: Vec<Option<(u32, u64)>> = vec![None; records.len()];
        let mut first_in_batch: HashMap<&str, usize> = HashMap::new();
        let mut fresh = Vec::new();
        let mut elsewhere: Vec<(usize, Arc<Landing>)> = Vec::new();
        let landing = Arc::new(Landing::default());
        {
            let mut dedupe = self.dedupe.lock().unwrap();
            dedupe.prune(now_ms().saturating_sub(self.config.dedupe_window_ms));
            for (i, r) in records.iter().enumerate() {
                if let Some(id) = &r.id {
                    match dedupe.ids.get(id) {
                        Some(Slot::Stored(pos)) => {
                            out[i] = Some(*pos);
                            continue;
                        }
                        Some(Slot::Landing(other)) if !Arc::ptr_eq(other, &landing) => {
                            elsewhere.push((i, other.clone()));
                            continue;
                        }
                        Some(Slot::Landing(_)) => continue, // repeated in this batch: filled in below
                        None => {
                            dedupe.ids.insert(id.clone(), Slot::Landing(landing.clone()));
                            first_in_batch.insert(id, i);
                        }
                    }
                }
                fresh.push(i);
            }
        }
        let appended = self.append(&fresh.iter().map(|&i| &records[i]).collect::<Vec<_>>());
        {
            let mut dedupe = self.dedupe.lock().unwrap();
            let now = now_ms();
            match &appended {
                Ok(positions) => {
                    let mut landed = HashMap::new();
                    for (&i, &pos) in fresh.iter().zip(positions) {
                        out[i] = Some(pos);
                        if let Some(id) = &records[i].id {
                            dedupe.insert(id.clone(), pos, now);
                            landed.insert(id.clone(), pos);
                        }
                    }
                    landing.finish(Ok(landed));
                }
                Err(e) => {
                    for id in first_in_batch.keys() {
                        dedupe.ids.remove(*id);
                    }
                    landing.finish(Err(e.to_string()));
                }
            }
        }
        appended?;
        for (i, other) in elsewhere {
            let id = records[i].id.as_deref().expect("only records with an id wait");
            let pos = other.wait(id).map_err(|reason| Error::Failed {
                partition_dir: self.name.clone().into(),
                reason: format!("a concurrent publish of id {id:?} failed: {reason}"),
            })?;
            out[i] = Some(pos);
        }
        // A repeated id within the batch gets the position of its first occurrence.
        Ok((0..records.len())
            .map(|i| {
                out[i].unwrap_or_else(|| {
                    let id = records[i].id.as_deref().expect("only records with an id are skipped");
                    out[first_in_batch[id]].expect("first occurrence was appended")
                })
            })
            .collect())
    }

    /// Append records (keyed ones to their key's partition, the others
    /// together to the next partition in turn), durable per the fsync policy.
    fn append(&self, records: &[&Record]) -> Result<Vec<(u32, u64)>> {
        let (out, ends) = self.append_unsynced(records)?;
        self.durable_to(&ends)?;
        Ok(out)
    }

    /// Append records as [`Topic::append`] does, without waiting for an
    /// fsync: their positions, and each partition's end after them (what
    /// [`Topic::durable_to`] waits for).
    fn append_unsynced(&self, records: &[&Record]) -> Result<(Positions, Positions)> {
        let keyless = self.next_keyless.fetch_add(1, Ordering::Relaxed);
        let mut by_part: Vec<Vec<(usize, &Record)>> = vec![Vec::new(); self.config.partitions as usize];
        for (i, r) in records.iter().enumerate() {
            by_part[self.partition_for(r.key.as_deref(), keyless) as usize].push((i, r));
        }
        let mut out = vec![(0, 0); records.len()];
        let mut ends = Vec::new();
        for (p, recs) in by_part.iter().enumerate() {
            if recs.is_empty() {
                continue;
            }
            let batch: Vec<&Record> = recs.iter().map(|(_, r)| *r).collect();
            let first = self.partitions[p].append(&batch)?;
            for (j, (i, _)) in recs.iter().enumerate() {
                out[*i] = (p as u32, first + j as u64);
            }
            ends.push((p as u32, first + batch.len() as u64));
        }
        Ok((out, ends))
    }

    /// Wait until each partition is durable to its end in `ends` (see
    /// [`Partition::durable_to`]).
    pub(crate) fn durable_to(&self, ends: &[(u32, u64)]) -> Result<()> {
        for &(p, end) in ends {
            self.partitions[p as usize].durable_to(end)?;
        }
        Ok(())
    }

    /// Append `records` for [`crate::Queue::append`]: validated, and without
    /// waiting for their fsync when that is all there is to wait for. A
    /// publish with ids waits here (an id is counted as stored only once it
    /// is durable, see [`Topic::publish`]); so does one to a topic that does
    /// not sync on every write. Returns what is left to wait for.
    pub(crate) fn append_deferred(&self, records: &[Record]) -> Result<Positions> {
        if !matches!(self.config.fsync, Fsync::Always) || records.iter().any(|r| r.id.is_some()) {
            self.publish(records)?;
            return Ok(Vec::new());
        }
        validate(records)?;
        Ok(self.append_unsynced(&records.iter().collect::<Vec<_>>())?.1)
    }

    pub(crate) fn sync(&self) -> Result<()> {
        for p in &self.partitions {
            p.sync()?;
        }
        Ok(())
    }

    /// Apply the retention limits to every partition.
    pub(crate) fn apply_retention(&self) -> Result<u64> {
        if self.config.max_age_ms.is_none() && self.config.max_bytes.is_none() {
            return Ok(0);
        }
        let now = now_ms();
        let mut removed = 0;
        for p in &self.partitions {
            removed += p.log().apply_retention(now, self.config.max_age_ms, self.config.max_bytes)?;
        }
        Ok(removed)
    }

    pub(crate) fn offset_for_time(&self, p: u32, ts_ms: u64) -> Result<u64> {
        self.partition(p)?.log().offset_for_time(ts_ms)
    }

    /// For `fsync = "interval"` topics: sync partitions whose last sync is older than the interval.
    pub(crate) fn sync_due(&self) -> Result<()> {
        if let Fsync::Interval { ms } = self.config.fsync {
            for p in &self.partitions {
                p.sync_if_older(Duration::from_millis(ms))?;
            }
        }
        Ok(())
    }
}

/// (partition, offset) pairs.
type Positions = Vec<(u32, u64)>;

/// Each record within the queue's limits.
fn validate(records: &[Record]) -> Result<()> {
    for r in records {
        r.validate().map_err(|reason| Error::Invalid {
            what: "record",
            value: format!("{} bytes", r.payload.len()),
            reason: reason.into(),
        })?;
    }
    Ok(())
}
