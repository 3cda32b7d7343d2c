//! Dead letters read back, and sent again ("redriven") once their cause is
//! fixed: to the topic they came from (their `weir.source.topic`) or
//! another, with their key, payload and headers, the dead-letter headers
//! replaced by provenance ([`REDRIVEN_FROM`], [`REDRIVEN_REASON`]).
//!
//! Exactly once: each dead letter redriven is marked, in one small file
//! per dead-letter topic (`redriven/TOPIC@ID.json`, replaced atomically
//! after the publishes are durable), and a marked one is not sent again.
//! Each publish carries an id naming the dead letter, so a redrive
//! repeated after a crash between the publish and the mark is dropped by
//! the target topic's dedupe window (`dedupe_window_ms`, 2 minutes by
//! default) — past the window, that one message could be stored twice.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::dead_letter::dlq_headers;
use crate::files::{create_dir_durable, write_atomic};
use crate::{Error, MSG_ID_HEADER, Queue, Record, Result, StoredRecord, SyncSite};

/// Header of a redriven message: the dead letter it came from, `TOPIC/P@O`.
pub const REDRIVEN_FROM: &str = "weir.redriven-from";
/// Header of a redriven message: why it had been dead-lettered.
pub const REDRIVEN_REASON: &str = "weir.redriven-reason";

/// A dead letter as stored, with what its headers say.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The dead-letter topic.
    pub topic: String,
    /// Its partition there.
    pub partition: u32,
    /// Its offset there.
    pub offset: u64,
    /// Where it failed (`weir.stage`; empty if not said).
    pub stage: String,
    /// The kind of failure (`weir.error-kind`).
    pub kind: String,
    /// Why (`weir.reason`).
    pub reason: String,
    /// Deliveries it had (`weir.attempts`).
    pub attempts: Option<u32>,
    /// Where it was read from: topic, partition, offset (`weir.source.*`).
    pub source: Option<(String, u32, u64)>,
    /// Whether it was redriven already.
    pub redriven: bool,
    /// Whether it was stored without its payload (too large to keep):
    /// such a dead letter cannot be redriven.
    pub payload_dropped: bool,
    /// The record itself.
    pub record: StoredRecord,
}

/// Which dead letters: every condition given must hold.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Failed at this stage.
    pub stage: Option<String>,
    /// With this error kind.
    pub kind: Option<String>,
    /// Dead-lettered at or after this time, ms since the Unix epoch.
    pub since_ms: Option<u64>,
    /// Dead-lettered before this time.
    pub until_ms: Option<u64>,
    /// Only these (partition, offset); empty: any.
    pub ids: Vec<(u32, u64)>,
}

impl Selection {
    fn holds(&self, d: &DeadLetter) -> bool {
        let ms = d.record.append_timestamp_ms;
        self.stage.as_ref().is_none_or(|s| *s == d.stage)
            && self.kind.as_ref().is_none_or(|k| *k == d.kind)
            && self.since_ms.is_none_or(|t| ms >= t)
            && self.until_ms.is_none_or(|t| ms < t)
    }

    /// Whether the dead letter at (`partition`, `offset`) may be picked:
    /// asked before it is read into a [`DeadLetter`].
    fn may_pick(&self, partition: u32, offset: u64) -> bool {
        self.ids.is_empty() || self.ids.contains(&(partition, offset))
    }
}

/// What a redrive did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Redrive {
    /// Dead letters sent.
    pub sent: usize,
    /// How many went to each topic.
    pub to: BTreeMap<String, usize>,
    /// Selected, but redriven before: not sent again.
    pub already: usize,
    /// Selected, but stored without their payload (too large): not sent.
    pub payload_dropped: usize,
}

/// The dead letters redriven: per partition, ranges of offsets
/// `[start, end)`, sorted and merged (a redrive usually takes a run of
/// them), so the file stays small however many were sent.
#[derive(Clone, Serialize, Deserialize, Default)]
struct Marks {
    redriven: BTreeMap<u32, Vec<(u64, u64)>>,
}

impl Marks {
    fn contains(&self, partition: u32, offset: u64) -> bool {
        let Some(ranges) = self.redriven.get(&partition) else { return false };
        let i = ranges.partition_point(|&(start, _)| start <= offset);
        i > 0 && offset < ranges[i - 1].1
    }

    fn insert(&mut self, partition: u32, offset: u64) {
        let ranges = self.redriven.entry(partition).or_default();
        let i = ranges.partition_point(|&(start, _)| start <= offset);
        if i > 0 && offset < ranges[i - 1].1 {
            return;
        }
        let joins_left = i > 0 && ranges[i - 1].1 == offset;
        let joins_right = i < ranges.len() && ranges[i].0 == offset + 1;
        match (joins_left, joins_right) {
            (true, true) => {
                ranges[i - 1].1 = ranges[i].1;
                ranges.remove(i);
            }
            (true, false) => ranges[i - 1].1 = offset + 1,
            (false, true) => ranges[i].0 = offset,
            (false, false) => ranges.insert(i, (offset, offset + 1)),
        }
    }
}

fn header(r: &StoredRecord, name: &str) -> Option<String> {
    r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// Dead letters published per chunk of a redrive.
const REDRIVE_CHUNK: usize = 1000;

/// A stored record of a dead-letter topic, with what its headers say.
fn dead_letter(topic: &str, partition: u32, r: StoredRecord, marks: &Marks) -> DeadLetter {
    let source = header(&r, dlq_headers::SOURCE_TOPIC).map(|t| {
        let num = |h| header(&r, h).and_then(|v| v.parse().ok()).unwrap_or(0);
        (t, num(dlq_headers::SOURCE_PARTITION) as u32, num(dlq_headers::SOURCE_OFFSET))
    });
    DeadLetter {
        topic: topic.to_owned(),
        partition,
        offset: r.offset,
        stage: header(&r, dlq_headers::STAGE).unwrap_or_default(),
        kind: header(&r, dlq_headers::ERROR_KIND).unwrap_or_default(),
        reason: header(&r, dlq_headers::REASON).unwrap_or_default(),
        attempts: header(&r, dlq_headers::ATTEMPTS).and_then(|a| a.parse().ok()),
        source,
        redriven: marks.contains(partition, r.offset),
        payload_dropped: header(&r, dlq_headers::PAYLOAD_DROPPED).is_some(),
        record: r,
    }
}

/// Where a dead letter goes: `to`, else the topic it came from.
fn target(topic: &str, d: &DeadLetter, to: Option<&str>) -> Result<String> {
    match (to, &d.source) {
        (Some(t), _) => Ok(t.to_owned()),
        (None, Some((t, _, _))) => Ok(t.clone()),
        (None, None) => Err(Error::Invalid {
            what: "dead letter",
            value: format!("{topic}/{}@{}", d.partition, d.offset),
            reason: "it does not say where it came from: name a topic to send it to".into(),
        }),
    }
}

/// A dead letter as it is sent again: its key, payload and headers, the
/// dead-letter headers replaced by provenance, an id naming it.
fn redriven_record(topic: &str, key: &str, d: &DeadLetter) -> Record {
    let mut headers: Vec<(String, Vec<u8>)> =
        d.record.headers.iter().filter(|(k, _)| k != MSG_ID_HEADER && !dlq_headers::ALL.contains(&k.as_str())).cloned().collect();
    headers.push((REDRIVEN_FROM.into(), format!("{topic}/{}@{}", d.partition, d.offset).into_bytes()));
    headers.push((REDRIVEN_REASON.into(), d.reason.clone().into_bytes()));
    Record {
        key: d.record.key.clone(),
        headers,
        payload: d.record.payload.clone(),
        timestamp_us: Some(d.record.timestamp_us),
        id: Some(format!("redrive/{key}/{}/{}", d.partition, d.offset)),
    }
}

/// Ordered by when it was dead-lettered, then where.
struct Newest(DeadLetter);

impl Newest {
    fn at(&self) -> (u64, u32, u64) {
        (self.0.record.append_timestamp_ms, self.0.partition, self.0.offset)
    }
}

impl PartialEq for Newest {
    fn eq(&self, other: &Self) -> bool {
        self.at() == other.at()
    }
}
impl Eq for Newest {}
impl PartialOrd for Newest {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Newest {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at().cmp(&other.at())
    }
}

/// Counts of one stage and error kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Group {
    /// Dead letters.
    pub count: usize,
    /// When the first was dead-lettered, ms since the Unix epoch.
    pub first_ms: u64,
    /// When the last was.
    pub last_ms: u64,
}

/// What a selection of a dead-letter topic holds ([`Queue::dead_letter_summary`]).
#[derive(Debug, Default)]
pub struct Summary {
    /// Dead letters selected.
    pub total: usize,
    /// Of those, redriven already.
    pub redriven: usize,
    /// By (stage, error kind).
    pub groups: BTreeMap<(String, String), Group>,
    /// The most recent, newest first.
    pub newest: Vec<DeadLetter>,
}

impl Queue {
    fn marks_path(&self, topic: &str) -> Result<PathBuf> {
        Ok(self.dir().join("redriven").join(format!("{}.json", self.topic_key(topic)?)))
    }

    fn marks(&self, topic: &str) -> Result<Marks> {
        let path = self.marks_path(topic)?;
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::Metadata { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Marks::default()),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Call `visit` with each dead letter of `topic` that `selection`
    /// picks, oldest first per partition, reading a page at a time, until
    /// it returns false.
    fn scan(&self, topic: &str, selection: &Selection, marks: &Marks, mut visit: impl FnMut(DeadLetter) -> Result<bool>) -> Result<()> {
        let info = self.topic_info(topic)?;
        for (p, &(start, end)) in info.offsets.iter().enumerate() {
            let p = p as u32;
            let mut at = start;
            while at < end {
                let records = self.read(topic, p, at, 1024)?;
                let Some(last) = records.last() else { break };
                at = last.offset + 1;
                for r in records {
                    if !selection.may_pick(p, r.offset) {
                        continue;
                    }
                    let d = dead_letter(topic, p, r, marks);
                    if selection.holds(&d) && !visit(d)? {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// The dead letters of `topic` that `selection` picks, oldest first per
    /// partition (all of them: for a few, select them by id).
    ///
    /// # Errors
    /// Unknown topic; I/O errors.
    pub fn dead_letters(&self, topic: &str, selection: &Selection) -> Result<Vec<DeadLetter>> {
        let mut out = Vec::new();
        self.scan(topic, selection, &self.marks(topic)?, |d| {
            out.push(d);
            Ok(true)
        })?;
        Ok(out)
    }

    /// What `selection` picks of `topic`, in memory bounded by `newest`:
    /// counts by stage and kind, and the `newest` most recent.
    ///
    /// # Errors
    /// Unknown topic; I/O errors.
    pub fn dead_letter_summary(&self, topic: &str, selection: &Selection, newest: usize) -> Result<Summary> {
        let mut summary = Summary::default();
        // The newest, kept as a min-heap on (time, partition, offset).
        let mut kept: BinaryHeap<Reverse<Newest>> = BinaryHeap::new();
        self.scan(topic, selection, &self.marks(topic)?, |d| {
            summary.total += 1;
            summary.redriven += usize::from(d.redriven);
            let t = d.record.append_timestamp_ms;
            let g = summary.groups.entry((d.stage.clone(), d.kind.clone())).or_insert(Group { count: 0, first_ms: t, last_ms: t });
            *g = Group { count: g.count + 1, first_ms: g.first_ms.min(t), last_ms: g.last_ms.max(t) };
            kept.push(Reverse(Newest(d)));
            if kept.len() > newest {
                kept.pop();
            }
            Ok(true)
        })?;
        summary.newest = kept.into_sorted_vec().into_iter().map(|Reverse(Newest(d))| d).collect();
        Ok(summary)
    }

    /// Send the dead letters of `topic` that `selection` picks and that were
    /// not redriven before to `to`, or each to the topic it came from; then
    /// mark them. With `dry_run`, only say what would be sent. Checks every
    /// target first: nothing is sent if one is missing.
    ///
    /// # Errors
    /// Unknown topic; a dead letter whose source is not a topic of this
    /// queue (a file, stdin, NATS) without `to`; I/O errors.
    pub fn redrive(&self, topic: &str, selection: &Selection, to: Option<&str>, dry_run: bool) -> Result<Redrive> {
        // One redrive of a topic at a time: the marks are read, then replaced.
        let _one = self.inner.redriving.lock().unwrap();
        let key = self.topic_key(topic)?;
        let mut report = Redrive::default();
        let mut marks = self.marks(topic)?;
        // Every target first: nothing is sent if one is missing.
        let mut targets = BTreeSet::new();
        self.scan(topic, selection, &marks, |d| {
            if !d.redriven && !d.payload_dropped {
                targets.insert(target(topic, &d, to)?);
            }
            Ok(true)
        })?;
        for t in &targets {
            if self.topic_info(t).is_err() {
                return Err(Error::Invalid {
                    what: "redrive target",
                    value: t.clone(),
                    reason: "is not a topic of this queue (the source was a file, stdin or NATS?): name a topic to send it to".into(),
                });
            }
        }
        // Then in chunks, each published, then marked: memory stays bounded
        // however many are selected. (The scan reads the marks as they were
        // while the chunks add to them: it has passed what they add.)
        let before = marks.clone();
        let mut chunk: Vec<(DeadLetter, String)> = Vec::new();
        let flush = |chunk: &mut Vec<(DeadLetter, String)>, report: &mut Redrive, marks: &mut Marks| -> Result<()> {
            if chunk.is_empty() {
                return Ok(());
            }
            if dry_run {
                for (_, t) in chunk.drain(..) {
                    report.sent += 1;
                    *report.to.entry(t).or_default() += 1;
                }
                return Ok(());
            }
            let mut by_target: BTreeMap<String, Vec<DeadLetter>> = BTreeMap::new();
            for (d, t) in chunk.drain(..) {
                by_target.entry(t).or_default().push(d);
            }
            for (target, letters) in by_target {
                let records: Vec<Record> = letters.iter().map(|d| redriven_record(topic, &key, d)).collect();
                self.publish(&target, &records)?;
                for d in &letters {
                    marks.insert(d.partition, d.offset);
                }
                report.sent += letters.len();
                *report.to.entry(target).or_default() += letters.len();
            }
            let path = self.marks_path(topic)?;
            create_dir_durable(path.parent().expect("in a folder"), &self.inner.faults)?;
            let bytes = serde_json::to_vec(&*marks).expect("marks serialise");
            write_atomic(&path, &bytes, SyncSite::Offsets, &self.inner.faults)
        };
        self.scan(topic, selection, &before, |d| {
            if d.redriven {
                report.already += 1;
            } else if d.payload_dropped {
                report.payload_dropped += 1;
            } else {
                let t = target(topic, &d, to)?;
                chunk.push((d, t));
                if chunk.len() >= REDRIVE_CHUNK {
                    flush(&mut chunk, &mut report, &mut marks)?;
                }
            }
            Ok(true)
        })?;
        flush(&mut chunk, &mut report, &mut marks)?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::Marks;

    #[test]
    fn marks_keep_merged_ranges_and_know_each_offset() {
        let mut m = Marks::default();
        for o in [5, 3, 4, 9, 7, 8, 0] {
            m.insert(1, o);
        }
        assert_eq!(m.redriven[&1], [(0, 1), (3, 6), (7, 10)]);
        m.insert(1, 6);
        m.insert(1, 4);
        assert_eq!(m.redriven[&1], [(0, 1), (3, 10)]);
        for o in 0..12 {
            assert_eq!(m.contains(1, o), o == 0 || (3..10).contains(&o), "{o}");
        }
        assert!(!m.contains(0, 0));
    }
}
