//! Topics: named sets of partitions with shared settings.

use std::fs;
use std::path::Path;
use std::time::Duration;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

use crate::partition::Partition;
use crate::record::Record;
use crate::{Error, Result, sync_dir, validate_name, write_atomic};

pub(crate) const META_FILE: &str = "topic.json";

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
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig { partitions: 1, fsync: Fsync::Always, group_commit_us: 0, segment_bytes: 64 * 1024 * 1024 }
    }
}

impl TopicConfig {
    fn group_commit(&self) -> Duration {
        Duration::from_micros(self.group_commit_us)
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
    pub(crate) config: TopicConfig,
    partitions: Vec<Partition>,
    next_keyless: AtomicU32,
}

impl Topic {
    pub(crate) fn create(topics_dir: &Path, name: &str, config: &TopicConfig) -> Result<Topic> {
        validate_name("topic name", name)?;
        if config.partitions == 0 || config.partitions > 4096 {
            return Err(Error::Invalid {
                what: "partition count",
                value: config.partitions.to_string(),
                reason: "must be between 1 and 4096",
            });
        }
        if config.segment_bytes < 4096 {
            return Err(Error::Invalid {
                what: "segment_bytes",
                value: config.segment_bytes.to_string(),
                reason: "must be at least 4096",
            });
        }
        let dir = topics_dir.join(name);
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let meta = serde_json::to_vec_pretty(config).expect("topic config serialises");
        // The partitions exist before the metadata that makes the topic visible.
        for p in 0..config.partitions {
            Partition::open(p, &dir.join(p.to_string()), config.fsync, config.segment_bytes, config.group_commit(), false)?;
        }
        sync_dir(&dir)?;
        write_atomic(&dir.join(META_FILE), &meta)?;
        sync_dir(topics_dir)?;
        Topic::open(&dir, false)
    }

    pub(crate) fn open(dir: &Path, read_only: bool) -> Result<Topic> {
        let meta_path = dir.join(META_FILE);
        let bytes = fs::read(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
        let config: TopicConfig =
            serde_json::from_slice(&bytes).map_err(|source| Error::Metadata { path: meta_path, source })?;
        let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let mut partitions = Vec::with_capacity(config.partitions as usize);
        for p in 0..config.partitions {
            let (part, _truncated) = Partition::open(
                p,
                &dir.join(p.to_string()),
                config.fsync,
                config.segment_bytes,
                config.group_commit(),
                read_only,
            )?;
            partitions.push(part);
        }
        Ok(Topic { name, config, partitions, next_keyless: AtomicU32::new(0) })
    }

    pub(crate) fn partition(&self, p: u32) -> Result<&Partition> {
        self.partitions.get(p as usize).ok_or_else(|| Error::Invalid {
            what: "partition",
            value: format!("{}/{p}", self.name),
            reason: "no such partition",
        })
    }

    pub(crate) fn partition_count(&self) -> u32 {
        self.config.partitions
    }

    pub(crate) fn info(&self) -> TopicInfo {
        let offsets = self
            .partitions
            .iter()
            .map(|p| (p.start_offset(), p.visible_end()))
            .collect();
        let fsyncs = self.partitions.iter().map(Partition::fsyncs).sum();
        TopicInfo { name: self.name.clone(), config: self.config.clone(), offsets, fsyncs }
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
        for r in records {
            r.validate().map_err(|reason| Error::Invalid {
                what: "record",
                value: format!("{} bytes", r.payload.len()),
                reason,
            })?;
        }
        let keyless = self.next_keyless.fetch_add(1, Ordering::Relaxed);
        let mut by_part: Vec<Vec<(usize, &Record)>> = vec![Vec::new(); self.config.partitions as usize];
        for (i, r) in records.iter().enumerate() {
            by_part[self.partition_for(r.key.as_deref(), keyless) as usize].push((i, r));
        }
        let mut out = vec![(0, 0); records.len()];
        for (p, recs) in by_part.iter().enumerate() {
            if recs.is_empty() {
                continue;
            }
            let batch: Vec<&Record> = recs.iter().map(|(_, r)| *r).collect();
            let first = self.partitions[p].publish(&batch)?;
            for (j, (i, _)) in recs.iter().enumerate() {
                out[*i] = (p as u32, first + j as u64);
            }
        }
        Ok(out)
    }

    pub(crate) fn sync(&self) -> Result<()> {
        for p in &self.partitions {
            p.sync()?;
        }
        Ok(())
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
