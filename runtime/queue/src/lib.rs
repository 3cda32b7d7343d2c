//! weir's embedded durable queue.
//!
//! A [`Queue`] owns a data directory of topics. Each topic has a fixed number
//! of partitions; each partition is an append-only log of CRC-checked records
//! in segment files, with dense offsets that are never reused. Consumer groups
//! keep a durable committed offset per partition and track in-flight
//! deliveries so that a message is acknowledged, retried or dead-lettered
//! individually.
//!
//! ```no_run
//! use std::time::Duration;
//! use weir_queue::{ConsumerOptions, Queue, Record, TopicConfig};
//!
//! # fn main() -> Result<(), weir_queue::Error> {
//! let queue = Queue::open("./.weir")?;
//! queue.ensure_topic("hello", &TopicConfig::default())?;
//! queue.publish("hello", &[Record::new("Hello World!")])?;
//!
//! let mut consumer = queue.consumer("hello", "printer", ConsumerOptions::default())?;
//! for delivery in consumer.fetch(100, Duration::from_millis(100))? {
//!     println!("{}", String::from_utf8_lossy(&delivery.record.payload));
//!     consumer.ack(delivery.id());
//! }
//! consumer.commit()?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod consumer;
mod dead_letter;
mod faults;
mod files;
pub mod json;
mod log;
mod message;
mod offsets;
mod partition;
#[cfg(feature = "fault-injection")]
mod power;
mod record;
mod redrive;
mod segment;
mod state;
mod topic;

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use consumer::{Consumer, ConsumerOptions, Delivery, DeliveryId, Seek, StartFrom};
pub use dead_letter::{dead_letter_topic, dlq_headers};
#[cfg(feature = "fault-injection")]
pub use faults::FaultInjector;
pub use faults::SyncSite;
use files::lock_dir;
pub(crate) use files::{create_dir_durable, sync_dir, write_atomic};
pub use log::{Truncation, ZERO_AHEAD};
pub use message::Message;
pub use record::{MAX_RECORD_BYTES, MIN_FRAME, MSG_ID_HEADER, Record, StoredRecord, check_parts};
pub use redrive::{DeadLetter, Group, REDRIVEN_FROM, REDRIVEN_REASON, Redrive, Selection, Summary};
pub use state::{
    DEFAULT_CACHE_BYTES as DEFAULT_STATE_CACHE_BYTES, StageMap, StateReader, StateStore, StateWrite, Totals, encode_legacy_transaction,
};
pub use topic::{Fsync, FsyncError, TopicConfig, TopicInfo, bounds};

use topic::Topic;

/// Errors from the queue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the data directory.
    #[error(
        "data directory {} is in use by another weir process{}",
        dir.display(),
        owner.as_deref().map(|o| format!(" ({o})")).unwrap_or_default()
    )]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// What the lock file says about its owner.
        owner: Option<String>,
    },
    /// Stored data failed validation where it cannot be a torn write.
    #[error("corrupt data in {} at byte {position}: {reason}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte position of the damage.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// A partition stopped accepting writes after a write or fsync failure.
    #[error("partition {} stopped accepting writes: {reason}", partition_dir.display())]
    Failed {
        /// The partition directory.
        partition_dir: PathBuf,
        /// The failure that stopped it.
        reason: String,
    },
    /// A store stopped after a failed fsync (fail-stop: what it was making
    /// durable may be lost, and a retry could falsely succeed); a restart
    /// re-validates it from disk.
    #[error("{} stopped after a failed fsync: {reason}; restart to re-validate it", path.display())]
    Stopped {
        /// The file or directory of the store.
        path: PathBuf,
        /// The failure that stopped it.
        reason: String,
    },
    /// The stage-state database failed (other than by I/O).
    #[error("{}: {reason}", path.display())]
    Store {
        /// The database file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The topic does not exist.
    #[error("unknown topic `{0}`")]
    UnknownTopic(String),
    /// Two consumers of one group on one topic in one process would deliver
    /// every message twice and overwrite each other's offsets.
    #[error("consumer group `{group}` is already reading topic `{topic}` in this process")]
    GroupInUse {
        /// The group.
        group: String,
        /// The topic.
        topic: String,
    },
    /// The topic cannot be deleted while a consumer of this process reads it.
    #[error("topic `{name}` is being consumed; stop its consumers first")]
    TopicInUse {
        /// The topic.
        name: String,
    },
    /// A topic of that name already exists.
    #[error("topic `{name}` already exists (with {partitions} partition(s))")]
    TopicExists {
        /// The topic.
        name: String,
        /// Its partition count.
        partitions: u32,
    },
    /// A name or value was rejected.
    #[error("invalid {what} `{value}`: {reason}")]
    Invalid {
        /// What kind of thing.
        what: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// The queue was opened read-only.
    #[error("the queue was opened read-only")]
    ReadOnly,
    /// Metadata could not be (de)serialised.
    #[error("{}: {source}", path.display())]
    Metadata {
        /// The metadata file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_owned(), source }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn now_ms() -> u64 {
    now_us() / 1000
}

/// Microseconds since the Unix epoch: the clock of producer timestamps.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Whether `crc` is the CRC32C of `bytes`. Builds for fuzzing (`--cfg
/// fuzzing`, set by cargo-fuzz) accept any CRC, so that the fuzzer reaches
/// the parsing behind it: a crafted file can carry valid CRCs.
pub(crate) fn crc_matches(bytes: &[u8], crc: u32) -> bool {
    cfg!(fuzzing) || crc32c::crc32c(bytes) == crc
}

/// Check a topic or group name: 1–200 of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn validate_name(what: &'static str, name: &str) -> Result<()> {
    let reason = if name.is_empty() || name.len() > 200 {
        Some("must be 1 to 200 characters")
    } else if name.starts_with('.') {
        Some("must not start with `.`")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        Some("may contain only letters, digits, `.`, `_` and `-`")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::Invalid { what, value: name.to_owned(), reason: reason.into() }),
        None => Ok(()),
    }
}

struct Inner {
    dir: PathBuf,
    read_only: bool,
    faults: faults::Faults,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// (topic, group) of every open consumer.
    consuming: Mutex<std::collections::HashSet<(String, String)>>,
    /// Bumped on every publish; consumers wait on it.
    published: Mutex<u64>,
    wakeup: Condvar,
    on_publish: RwLock<Vec<PublishHook>>,
    /// Held while a redrive reads and replaces its marks.
    redriving: Mutex<()>,
}

type PublishHook = Arc<dyn Fn() + Send + Sync>;

/// Records [`Queue::append`] appended, and how far each partition they
/// went to must be durable before they count as written.
#[must_use = "appended records are not durable until waited for with Queue::wait_durable"]
pub struct Appended {
    topic: Arc<Topic>,
    /// (partition, end offset) still to be made durable.
    ends: Vec<(u32, u64)>,
}

/// A handle to an open data directory. Cheap to clone; thread-safe.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
    /// The directory lock, held by the handles only (not by background
    /// threads), so it is released the moment the last handle is dropped.
    _lock: Option<Arc<File>>,
}

impl Queue {
    /// Open (creating if needed) the data directory `dir` for reading and
    /// writing, recovering every partition. Only one process may do so at a time.
    ///
    /// # Errors
    /// [`Error::Locked`] if another process has it open; I/O and corruption errors.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_mode(dir.as_ref(), false, faults::Faults::default())
    }

    /// Open `dir` like [`Queue::open`], with storage faults injected on demand.
    ///
    /// # Errors
    /// As [`Queue::open`].
    #[cfg(feature = "fault-injection")]
    pub fn open_with_faults(dir: impl AsRef<Path>, injector: Arc<FaultInjector>) -> Result<Self> {
        Self::open_mode(dir.as_ref(), false, faults::Faults { injector: Some(injector) })
    }

    /// Open `dir` read-only, without the lock: for inspecting a queue that
    /// another process may be writing. Nothing is modified on disk.
    ///
    /// # Errors
    /// I/O and corruption errors; a directory that holds no queue.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_mode(dir.as_ref(), true, faults::Faults::default())
    }

    fn open_mode(dir: &Path, read_only: bool, faults: faults::Faults) -> Result<Self> {
        let lock = if read_only {
            if !dir.join("topics").is_dir() {
                return Err(Error::io(&dir.join("topics"), std::io::ErrorKind::NotFound.into()));
            }
            None
        } else {
            create_dir_durable(&dir.join("topics"), &faults)?;
            create_dir_durable(&dir.join("groups"), &faults)?;
            let lock = lock_dir(dir)?;
            // Topics deleted by a process that died before cleaning up.
            fs::remove_dir_all(dir.join("trash")).ok();
            Some(lock)
        };
        let mut topics = HashMap::new();
        let topics_dir = dir.join("topics");
        for entry in fs::read_dir(&topics_dir).map_err(|e| Error::io(&topics_dir, e))? {
            let entry = entry.map_err(|e| Error::io(&topics_dir, e))?;
            if !entry.path().join(topic::META_FILE).is_file() {
                continue;
            }
            let topic = Topic::open(&entry.path(), read_only, &faults)?;
            topics.insert(topic.name.clone(), Arc::new(topic));
        }
        let queue = Queue {
            _lock: lock.map(Arc::new),
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                read_only,
                faults,
                topics: RwLock::new(topics),
                consuming: Mutex::default(),
                published: Mutex::new(0),
                wakeup: Condvar::new(),
                on_publish: RwLock::default(),
                redriving: Mutex::default(),
            }),
        };
        if !read_only {
            spawn_flusher(Arc::downgrade(&queue.inner));
        }
        Ok(queue)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Whether this handle was opened with [`Queue::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    /// Create a topic.
    ///
    /// # Errors
    /// An invalid name or config, an existing topic, or an I/O error.
    pub fn create_topic(&self, name: &str, config: &TopicConfig) -> Result<TopicInfo> {
        if self.inner.read_only {
            return Err(Error::ReadOnly);
        }
        let mut topics = self.inner.topics.write().unwrap();
        if let Some(t) = topics.get(name) {
            return Err(Error::TopicExists { name: name.into(), partitions: t.config.partitions });
        }
        let topic = Topic::create(&self.inner.dir.join("topics"), name, config, &self.inner.faults)?;
        let info = topic.info();
        topics.insert(name.to_owned(), Arc::new(topic));
        Ok(info)
    }

    /// Create the topic with `config` unless it exists; an existing topic is
    /// kept as it is.
    ///
    /// # Errors
    /// As [`Queue::create_topic`].
    pub fn ensure_topic(&self, name: &str, config: &TopicConfig) -> Result<TopicInfo> {
        if let Ok(t) = self.topic(name) {
            return Ok(t.info());
        }
        self.create_topic(name, config)
    }

    /// Delete a topic: its messages and every group's offsets for it. A
    /// crash midway leaves it either whole or gone.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`]; [`Error::Invalid`] while a consumer (of a
    /// running pipeline, say) holds it; I/O errors.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        if self.inner.read_only {
            return Err(Error::ReadOnly);
        }
        let mut topics = self.inner.topics.write().unwrap();
        let topic = topics.get(name).ok_or_else(|| Error::UnknownTopic(name.to_owned()))?;
        // Only the map holds it, unless a consumer does too.
        if Arc::strong_count(topic) > 1 {
            return Err(Error::TopicInUse { name: name.to_owned() });
        }
        // Offsets and state first: a crash after them leaves the topic, read
        // again from the start. (A topic made again gets another key, so
        // this is cleanup, not what keeps it from inheriting them.)
        let key = topic.key();
        if let Ok(groups) = fs::read_dir(self.inner.dir.join("groups")) {
            for g in groups.flatten() {
                let offsets = g.path().join(format!("{key}.json"));
                if offsets.is_file() {
                    fs::remove_file(&offsets).map_err(|e| Error::io(&offsets, e))?;
                }
            }
        }
        if let Ok(groups) = fs::read_dir(self.inner.dir.join("state")) {
            for g in groups.flatten() {
                let state = g.path().join(&key);
                if state.is_dir() {
                    fs::remove_dir_all(&state).map_err(|e| Error::io(&state, e))?;
                }
            }
        }
        let topics_dir = self.inner.dir.join("topics");
        let trash = self.inner.dir.join("trash");
        fs::create_dir_all(&trash).map_err(|e| Error::io(&trash, e))?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let doomed = trash.join(format!("{name}-{nanos}"));
        // The rename is the deletion; what follows is cleanup.
        fs::rename(topics_dir.join(name), &doomed).map_err(|e| Error::io(&topics_dir.join(name), e))?;
        sync_dir(&topics_dir, &self.inner.faults)?;
        topics.remove(name);
        drop(topics);
        fs::remove_dir_all(&doomed).map_err(|e| Error::io(&doomed, e))
    }

    pub(crate) fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        let topics = self.inner.topics.read().unwrap();
        topics.get(name).cloned().ok_or_else(|| Error::UnknownTopic(name.to_owned()))
    }

    /// Describe a topic: partitions, settings, start and end offsets.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`].
    pub fn topic_info(&self, name: &str) -> Result<TopicInfo> {
        Ok(self.topic(name)?.info())
    }

    /// How long each fsync that made `name`'s appends durable (group
    /// commit under `fsync = "always"`, the flusher under `"interval"`)
    /// took since the queue was opened, µs: the disk as the topic saw it.
    ///
    /// # Errors
    /// If there is no such topic.
    pub fn fsync_times(&self, name: &str) -> Result<hdrhistogram::Histogram<u64>> {
        Ok(self.topic(name)?.sync_times())
    }

    /// All topics, by name.
    pub fn topics(&self) -> Vec<TopicInfo> {
        let mut v: Vec<_> = self.inner.topics.read().unwrap().values().map(|t| t.info()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The consumer groups that have committed offsets of `topic`, each with
    /// its committed offset per partition, by group name.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`]; an unreadable group file.
    pub fn groups(&self, topic: &str) -> Result<Vec<(String, Vec<u64>)>> {
        let key = self.topic(topic)?.key();
        let mut out = Vec::new();
        if let Ok(dirs) = fs::read_dir(self.inner.dir.join("groups")) {
            for g in dirs.flatten() {
                let Ok(name) = g.file_name().into_string() else { continue };
                if let Some(committed) = offsets::read_committed(&offsets::group_file(&self.inner.dir, &name, &key))? {
                    out.push((name, committed));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Bytes the files of `topic` take on disk (segments and indexes).
    ///
    /// # Errors
    /// [`Error::UnknownTopic`].
    pub fn topic_bytes(&self, topic: &str) -> Result<u64> {
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = fs::read_dir(dir) else { return 0 };
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        let t = self.topic(topic)?;
        Ok(walk(&self.inner.dir.join("topics").join(&t.name)))
    }

    /// Publish records to a topic. Records with a key go to the partition its
    /// hash selects; records without one go together to the next partition in
    /// turn. Returns each record's (partition, offset), in order. Returns once
    /// the records are durable per the topic's fsync policy.
    ///
    /// # Errors
    /// Unknown topic, invalid record, or a storage error (then none of the
    /// records of the failing partition are visible).
    pub fn publish(&self, topic: &str, records: &[Record]) -> Result<Vec<(u32, u64)>> {
        let t = self.topic(topic)?;
        let out = t.publish(records)?;
        self.published();
        Ok(out)
    }

    /// Append records as [`Queue::publish`] does, but to a topic with
    /// `fsync = "always"` without waiting for the fsync: what returns is
    /// to be passed to [`Queue::wait_durable`]. Meanwhile the writer can
    /// append more, and the next fsync covers all of it: a writer that
    /// waited instead would leave the disk idle while it gathered the
    /// next records, and every record would wait for a whole fsync more.
    /// Consumers see the records once they are durable, as ever. Records
    /// with ids (an idempotent publish), and records to topics that do not
    /// sync each write, are published and durable per the policy when this
    /// returns.
    ///
    /// # Errors
    /// As [`Queue::publish`]'s.
    pub fn append(&self, topic: &str, records: &[Record]) -> Result<Appended> {
        let t = self.topic(topic)?;
        let ends = t.append_deferred(records)?;
        if ends.is_empty() {
            self.published();
        }
        Ok(Appended { topic: t, ends })
    }

    /// Wait until what [`Queue::append`] appended is durable.
    ///
    /// # Errors
    /// [`Error::Failed`] when the fsync failed (the partition then stops
    /// accepting writes).
    pub fn wait_durable(&self, appended: Appended) -> Result<()> {
        if appended.ends.is_empty() {
            return Ok(());
        }
        appended.topic.durable_to(&appended.ends)?;
        self.published();
        Ok(())
    }

    /// Wake whoever waits for records.
    fn published(&self) {
        *self.inner.published.lock().unwrap() += 1;
        self.inner.wakeup.notify_all();
        for hook in self.inner.on_publish.read().unwrap().iter() {
            hook();
        }
    }

    /// Whether the data directory is still there: an error once it was
    /// removed or moved away under the running process (which then holds
    /// files nobody else can see, and a lock that no longer guards it).
    ///
    /// # Errors
    /// [`Error::Io`] naming the directory.
    pub fn check_present(&self) -> Result<()> {
        let topics = self.inner.dir.join("topics");
        match fs::metadata(&topics) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(Error::io(&topics, std::io::ErrorKind::NotADirectory.into())),
            Err(e) => Err(Error::io(&topics, std::io::Error::new(e.kind(), format!("the data directory is gone: {e}")))),
        }
    }

    /// Call `hook` after every publish (from the publishing thread; keep it
    /// short), for waiters that cannot block on [`Consumer::fetch`], such as
    /// async long-polls.
    pub fn on_publish(&self, hook: Arc<dyn Fn() + Send + Sync>) {
        self.inner.on_publish.write().unwrap().push(hook);
    }

    /// Read up to `max` stored records of one partition from `offset`
    /// (clamped to the oldest retained). Does not involve any consumer group.
    ///
    /// # Errors
    /// Unknown topic or partition, I/O or corruption errors.
    pub fn read(&self, topic: &str, partition: u32, offset: u64, max: usize) -> Result<Vec<StoredRecord>> {
        self.topic(topic)?.partition(partition)?.read(offset, max)
    }

    /// A consumer of `topic` for consumer group `group`, resuming from the
    /// group's committed offsets.
    ///
    /// # Errors
    /// Unknown topic, invalid group name, unreadable group state.
    pub fn consumer(&self, topic: &str, group: &str, options: ConsumerOptions) -> Result<Consumer> {
        let t = self.topic(topic)?;
        if !self.inner.consuming.lock().unwrap().insert((topic.to_owned(), group.to_owned())) {
            return Err(Error::GroupInUse { group: group.to_owned(), topic: topic.to_owned() });
        }
        Consumer::new(self.clone(), t, group, options).inspect_err(|_| self.consumer_closed(topic, group))
    }

    pub(crate) fn consumer_closed(&self, topic: &str, group: &str) {
        self.inner.consuming.lock().unwrap().remove(&(topic.to_owned(), group.to_owned()));
    }

    /// The durable stage state of consumer group `group` reading the source
    /// `source`: a topic's [`Queue::topic_key`], or the name of another
    /// kind of source (see [`StateStore`]). Only one may be open at a time
    /// per (group, source).
    ///
    /// # Errors
    /// [`Error::ReadOnly`]; an invalid group name; I/O and corruption errors.
    pub fn state_store(&self, group: &str, source: &str) -> Result<StateStore> {
        self.state_store_with_cache(group, source, DEFAULT_STATE_CACHE_BYTES)
    }

    /// [`Queue::state_store`], caching at most `cache_bytes` of the state in memory.
    ///
    /// # Errors
    /// As [`Queue::state_store`].
    pub fn state_store_with_cache(&self, group: &str, source: &str, cache_bytes: usize) -> Result<StateStore> {
        if self.is_read_only() {
            return Err(Error::ReadOnly);
        }
        StateStore::open(self.dir(), group, source, cache_bytes, self.inner.faults.clone())
    }

    /// What a topic's consumer groups key their offsets, state and
    /// dead-letter ids by: `NAME@ID`, where the id is new each time a topic
    /// of that name is created, so a topic deleted and made again inherits
    /// nothing; the name alone for topics made before weir had ids.
    ///
    /// # Errors
    /// [`Error::UnknownTopic`].
    pub fn topic_key(&self, name: &str) -> Result<String> {
        Ok(self.topic(name)?.key())
    }

    /// Apply every topic's retention limits now (a background thread also
    /// does so every second). Returns how many records were deleted.
    ///
    /// # Errors
    /// An I/O error deleting a segment.
    pub fn apply_retention(&self) -> Result<u64> {
        let topics: Vec<Arc<Topic>> = self.inner.topics.read().unwrap().values().cloned().collect();
        topics.iter().map(|t| t.apply_retention()).sum()
    }

    /// The first offset of a partition appended at or after `timestamp_ms`
    /// (ms since the Unix epoch), or its end if none is.
    ///
    /// # Errors
    /// Unknown topic or partition; I/O errors.
    pub fn offset_for_time(&self, topic: &str, partition: u32, timestamp_ms: u64) -> Result<u64> {
        self.topic(topic)?.offset_for_time(partition, timestamp_ms)
    }

    /// Make every partition's appended data durable now, whatever its policy.
    ///
    /// # Errors
    /// A failed fsync (the partition then refuses writes).
    pub fn sync(&self) -> Result<()> {
        for t in self.inner.topics.read().unwrap().values() {
            t.sync()?;
        }
        Ok(())
    }

    /// Wait until something is published or `timeout` passes.
    pub(crate) fn wait_for_publish(&self, seen: u64, timeout: Duration) -> u64 {
        let guard = self.inner.published.lock().unwrap();
        let (guard, _) = self.inner.wakeup.wait_timeout_while(guard, timeout, |n| *n == seen).unwrap();
        *guard
    }

    pub(crate) fn publish_count(&self) -> u64 {
        *self.inner.published.lock().unwrap()
    }
}

/// How often the background flusher looks for `fsync = "interval"` work.
const FLUSH_TICK: Duration = Duration::from_millis(5);

/// How often retention limits are applied.
const RETENTION_TICK: Duration = Duration::from_secs(1);

/// Sync `interval` topics on time even when nobody publishes, and apply
/// retention. Exits when the queue is dropped.
fn spawn_flusher(inner: std::sync::Weak<Inner>) {
    let spawned = std::thread::Builder::new().name("weir-queue-flush".into()).spawn(move || {
        let mut last_retention = std::time::Instant::now();
        while let Some(inner) = inner.upgrade() {
            let topics: Vec<Arc<Topic>> = inner.topics.read().unwrap().values().cloned().collect();
            drop(inner);
            let retention_due = last_retention.elapsed() >= RETENTION_TICK;
            for t in topics {
                // A failure is fail-stop inside the partition and reported to publishers.
                let _ = t.sync_due();
                if retention_due && let Err(e) = t.apply_retention() {
                    tracing::error!(topic = %t.name, error = %e, "retention failed");
                }
            }
            if retention_due {
                last_retention = std::time::Instant::now();
            }
            std::thread::sleep(FLUSH_TICK);
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the fsync interval thread; interval topics sync on publish only");
    }
}
