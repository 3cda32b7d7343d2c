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

use std::collections::{BTreeMap, BTreeSet};
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
            && (self.ids.is_empty() || self.ids.contains(&(d.partition, d.offset)))
    }
}

/// What a redrive did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Redrive {
    /// Each dead letter sent: (its partition, its offset, target topic,
    /// target partition, target offset).
    pub sent: Vec<(u32, u64, String, u32, u64)>,
    /// Selected, but redriven before: not sent again.
    pub already: usize,
    /// Selected, but stored without their payload (too large): not sent.
    pub payload_dropped: usize,
}

#[derive(Serialize, Deserialize, Default)]
struct Marks {
    /// (partition, offset) of every dead letter redriven.
    redriven: BTreeSet<(u32, u64)>,
}

fn header(r: &StoredRecord, name: &str) -> Option<String> {
    r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
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

    /// The dead letters of `topic` that `selection` picks, oldest first
    /// per partition.
    ///
    /// # Errors
    /// Unknown topic; I/O errors.
    pub fn dead_letters(&self, topic: &str, selection: &Selection) -> Result<Vec<DeadLetter>> {
        let marks = self.marks(topic)?;
        let info = self.topic_info(topic)?;
        let mut out = Vec::new();
        for (p, &(start, end)) in info.offsets.iter().enumerate() {
            let p = p as u32;
            let mut at = start;
            while at < end {
                let records = self.read(topic, p, at, 1024)?;
                let Some(last) = records.last() else { break };
                at = last.offset + 1;
                for r in records {
                    let source = header(&r, dlq_headers::SOURCE_TOPIC).map(|t| {
                        let num = |h| header(&r, h).and_then(|v| v.parse().ok()).unwrap_or(0);
                        (t, num(dlq_headers::SOURCE_PARTITION) as u32, num(dlq_headers::SOURCE_OFFSET))
                    });
                    let d = DeadLetter {
                        topic: topic.to_owned(),
                        partition: p,
                        offset: r.offset,
                        stage: header(&r, dlq_headers::STAGE).unwrap_or_default(),
                        kind: header(&r, dlq_headers::ERROR_KIND).unwrap_or_default(),
                        reason: header(&r, dlq_headers::REASON).unwrap_or_default(),
                        attempts: header(&r, dlq_headers::ATTEMPTS).and_then(|a| a.parse().ok()),
                        source,
                        redriven: marks.redriven.contains(&(p, r.offset)),
                        record: r,
                    };
                    if selection.holds(&d) {
                        out.push(d);
                    }
                }
            }
        }
        Ok(out)
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
        let mut by_target: BTreeMap<String, Vec<(DeadLetter, Record)>> = BTreeMap::new();
        for d in self.dead_letters(topic, selection)? {
            if d.redriven {
                report.already += 1;
                continue;
            }
            if header(&d.record, dlq_headers::PAYLOAD_DROPPED).is_some() {
                report.payload_dropped += 1;
                continue;
            }
            let target = match (to, &d.source) {
                (Some(t), _) => t.to_owned(),
                (None, Some((t, _, _))) => t.clone(),
                (None, None) => {
                    return Err(Error::Invalid {
                        what: "dead letter",
                        value: format!("{topic}/{}@{}", d.partition, d.offset),
                        reason: "it does not say where it came from: name a topic to send it to".into(),
                    });
                }
            };
            if self.topic_info(&target).is_err() {
                return Err(Error::Invalid {
                    what: "redrive target",
                    value: target,
                    reason: "is not a topic of this queue (the source was a file, stdin or NATS?): name a topic to send it to".into(),
                });
            }
            let from = format!("{topic}/{}@{}", d.partition, d.offset);
            let mut headers: Vec<(String, Vec<u8>)> =
                d.record.headers.iter().filter(|(k, _)| k != MSG_ID_HEADER && !dlq_headers::ALL.contains(&k.as_str())).cloned().collect();
            headers.push((REDRIVEN_FROM.into(), from.clone().into_bytes()));
            headers.push((REDRIVEN_REASON.into(), d.reason.clone().into_bytes()));
            let record = Record {
                key: d.record.key.clone(),
                headers,
                payload: d.record.payload.clone(),
                timestamp_us: Some(d.record.timestamp_us),
                id: Some(format!("redrive/{key}/{}/{}", d.partition, d.offset)),
            };
            by_target.entry(target).or_default().push((d, record));
        }
        if dry_run {
            report.sent =
                by_target.iter().flat_map(|(t, v)| v.iter().map(move |(d, _)| (d.partition, d.offset, t.clone(), 0, 0))).collect();
            return Ok(report);
        }
        let mut marks = self.marks(topic)?;
        for (target, items) in by_target {
            let records: Vec<Record> = items.iter().map(|(_, r)| r.clone()).collect();
            let positions = self.publish(&target, &records)?;
            for ((d, _), (tp, to)) in items.iter().zip(positions) {
                report.sent.push((d.partition, d.offset, target.clone(), tp, to));
                marks.redriven.insert((d.partition, d.offset));
            }
        }
        if !report.sent.is_empty() {
            let path = self.marks_path(topic)?;
            create_dir_durable(path.parent().expect("in a folder"), &self.inner.faults)?;
            let bytes = serde_json::to_vec(&marks).expect("marks serialise");
            write_atomic(&path, &bytes, SyncSite::Offsets, &self.inner.faults)?;
        }
        Ok(report)
    }
}
