//! Consumer groups: durable committed offsets and per-message acknowledgement.
//!
//! A consumer tracks, per partition, the *ack frontier* (every offset below it
//! is acknowledged), the next offset to fetch, the acknowledged offsets above
//! the frontier, and the messages waiting to be redelivered. The committed
//! offset written to disk is the frontier, so a restart redelivers exactly the
//! messages that were not acknowledged (at-least-once).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::record::StoredRecord;
use crate::topic::Topic;
use crate::{Error, Queue, Result, validate_name, write_atomic};

/// Where a group with no committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The oldest retained record.
    #[default]
    Earliest,
    /// Only records published after the consumer is created.
    Latest,
}

/// Settings of a consumer.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Where to start when the group has no committed offset.
    pub start: StartFrom,
    /// At most this many delivered but unsettled messages.
    pub max_ack_pending: usize,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions { start: StartFrom::Earliest, max_ack_pending: 10_000 }
    }
}

/// Identifies a delivered message for acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryId {
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
}

/// A message delivered to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The stored record.
    pub record: StoredRecord,
    /// 1 on first delivery, then one more on each redelivery.
    pub attempt: u32,
}

impl Delivery {
    /// The id to acknowledge this delivery with.
    pub fn id(&self) -> DeliveryId {
        DeliveryId { partition: self.record.partition, offset: self.record.offset }
    }
}

#[derive(Default)]
struct PartState {
    /// Every offset below this is acknowledged.
    frontier: u64,
    /// Frontier as last written to disk.
    committed: u64,
    /// Next never-delivered offset.
    next: u64,
    /// Acknowledged offsets at or above the frontier.
    acked: BTreeSet<u64>,
    /// Delivered, not yet settled: offset → attempt.
    in_flight: HashMap<u64, u32>,
    /// Negatively acknowledged: offset → (not before, attempt of the next delivery).
    redeliver: BTreeMap<u64, (Instant, u32)>,
}

#[derive(Serialize, Deserialize)]
struct GroupFile {
    /// Committed offset per partition.
    committed: Vec<u64>,
}

/// Reads a topic on behalf of a consumer group.
///
/// Obtain with [`Queue::consumer`]. Messages are fetched with
/// [`Consumer::fetch`], settled with [`Consumer::ack`] or [`Consumer::nak`],
/// and progress is made durable with [`Consumer::commit`].
pub struct Consumer {
    queue: Queue,
    topic: Arc<Topic>,
    group: String,
    path: PathBuf,
    options: ConsumerOptions,
    parts: Vec<PartState>,
    /// Partition to fetch new records from first, rotating for fairness.
    cursor: usize,
}

impl Consumer {
    pub(crate) fn new(queue: Queue, topic: Arc<Topic>, group: &str, options: ConsumerOptions) -> Result<Self> {
        validate_name("consumer group", group)?;
        let path = queue.dir().join("groups").join(group).join(format!("{}.json", topic.name));
        let saved: Option<GroupFile> = match std::fs::read(&path) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|source| Error::Metadata { path: path.clone(), source })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&path, e)),
        };
        let parts = (0..topic.partition_count())
            .map(|p| {
                let start = match (&saved, options.start) {
                    (Some(f), _) if (p as usize) < f.committed.len() => f.committed[p as usize],
                    (_, StartFrom::Earliest) => topic.start_offset(p),
                    (_, StartFrom::Latest) => topic.visible_end(p),
                };
                let start = start.max(topic.start_offset(p));
                PartState { frontier: start, committed: start, next: start, ..PartState::default() }
            })
            .collect();
        Ok(Consumer { queue, topic, group: group.to_owned(), path, options, parts, cursor: 0 })
    }

    /// The group this consumer belongs to.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The topic it reads.
    pub fn topic(&self) -> &str {
        &self.topic.name
    }

    /// Number of delivered, unsettled messages.
    pub fn in_flight(&self) -> usize {
        self.parts.iter().map(|p| p.in_flight.len()).sum()
    }

    /// Messages not yet acknowledged: the visible log end minus the ack
    /// frontier, summed over partitions.
    pub fn lag(&self) -> u64 {
        (0..self.parts.len())
            .map(|p| self.topic.visible_end(p as u32).saturating_sub(self.parts[p].frontier))
            .sum()
    }

    /// True when every stored message has been acknowledged and nothing is in
    /// flight or waiting for redelivery.
    pub fn is_settled(&self) -> bool {
        self.lag() == 0 && self.parts.iter().all(|p| p.in_flight.is_empty() && p.redeliver.is_empty())
    }

    /// Fetch up to `max` messages, waiting up to `wait` for the first one.
    /// Due redeliveries come first, then new messages, rotating over partitions.
    ///
    /// # Errors
    /// I/O or corruption while reading.
    pub fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let deadline = Instant::now() + wait;
        loop {
            let seen = self.queue.publish_count();
            let out = self.try_fetch(max)?;
            let now = Instant::now();
            if !out.is_empty() || now >= deadline {
                return Ok(out);
            }
            let next_retry = self.parts.iter().filter_map(|p| p.redeliver.values().map(|(t, _)| *t).min()).min();
            let until = next_retry.map_or(deadline, |t| t.min(deadline));
            let nap = until.saturating_duration_since(now).max(Duration::from_millis(1));
            if self.queue.is_read_only() {
                // Another process writes: poll.
                std::thread::sleep(nap.min(Duration::from_millis(50)));
            } else {
                self.queue.wait_for_publish(seen, nap);
            }
        }
    }

    fn try_fetch(&mut self, max: usize) -> Result<Vec<Delivery>> {
        let mut out = Vec::new();
        let budget = |out: &Vec<Delivery>, parts: &[PartState], opts: &ConsumerOptions| {
            let pending: usize = parts.iter().map(|p| p.in_flight.len()).sum();
            max.saturating_sub(out.len()).min(opts.max_ack_pending.saturating_sub(pending))
        };
        let now = Instant::now();
        for p in 0..self.parts.len() {
            let due: Vec<(u64, u32)> = self.parts[p]
                .redeliver
                .iter()
                .filter(|(_, (t, _))| *t <= now)
                .map(|(o, (_, a))| (*o, *a))
                .take(budget(&out, &self.parts, &self.options))
                .collect();
            for (offset, attempt) in due {
                let rec = self.queue.read(&self.topic.name, p as u32, offset, 1)?;
                let part = &mut self.parts[p];
                part.redeliver.remove(&offset);
                match rec.into_iter().next().filter(|r| r.offset == offset) {
                    Some(record) => {
                        part.in_flight.insert(offset, attempt);
                        out.push(Delivery { record, attempt });
                    }
                    // Deleted by retention meanwhile: nothing left to deliver.
                    None => Self::settle(part, offset),
                }
            }
        }
        let n = self.parts.len();
        for i in 0..n {
            let p = (self.cursor + i) % n;
            let want = budget(&out, &self.parts, &self.options);
            if want == 0 {
                break;
            }
            if self.queue.is_read_only() {
                self.topic.refresh(p as u32)?;
            }
            if self.parts[p].next >= self.topic.visible_end(p as u32) {
                continue;
            }
            let recs = self.queue.read(&self.topic.name, p as u32, self.parts[p].next, want)?;
            let part = &mut self.parts[p];
            for record in recs {
                // Records removed by retention before we read them count as settled.
                while part.next < record.offset {
                    Self::settle(part, part.next);
                    part.next += 1;
                }
                part.next = record.offset + 1;
                part.in_flight.insert(record.offset, 1);
                out.push(Delivery { record, attempt: 1 });
            }
        }
        self.cursor = (self.cursor + 1) % n.max(1);
        Ok(out)
    }

    fn settle(part: &mut PartState, offset: u64) {
        part.in_flight.remove(&offset);
        if offset >= part.frontier {
            part.acked.insert(offset);
        }
        while part.acked.remove(&part.frontier) {
            part.frontier += 1;
        }
    }

    fn part(&mut self, id: DeliveryId) -> Option<&mut PartState> {
        self.parts.get_mut(id.partition as usize).filter(|p| p.in_flight.contains_key(&id.offset))
    }

    /// Acknowledge a delivered message: it will not be delivered again to this
    /// group once committed. Unknown or already settled ids are ignored.
    pub fn ack(&mut self, id: DeliveryId) {
        if let Some(part) = self.part(id) {
            Self::settle(part, id.offset);
        }
    }

    /// Negatively acknowledge: deliver the message again after `delay`, with
    /// its attempt count incremented. Unknown or already settled ids are ignored.
    pub fn nak(&mut self, id: DeliveryId, delay: Duration) {
        if let Some(part) = self.part(id) {
            let attempt = part.in_flight.remove(&id.offset).unwrap_or(1);
            part.redeliver.insert(id.offset, (Instant::now() + delay, attempt + 1));
        }
    }

    /// Write the group's progress (the ack frontier of each partition) durably.
    /// Does nothing if it has not moved since the last commit.
    ///
    /// # Errors
    /// An I/O error writing the group file.
    pub fn commit(&mut self) -> Result<()> {
        if self.parts.iter().all(|p| p.frontier == p.committed) {
            return Ok(());
        }
        if self.queue.is_read_only() {
            return Err(Error::ReadOnly);
        }
        let dir = self.path.parent().unwrap();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let file = GroupFile { committed: self.parts.iter().map(|p| p.frontier).collect() };
        write_atomic(&self.path, &serde_json::to_vec(&file).expect("group file serialises"))?;
        for p in &mut self.parts {
            p.committed = p.frontier;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Record, TopicConfig};

    fn queue_with(n: usize, partitions: u32) -> (tempfile::TempDir, Queue) {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        q.create_topic("t", &TopicConfig { partitions, ..TopicConfig::default() }).unwrap();
        let recs: Vec<Record> = (0..n).map(|i| Record::new(format!("m{i}")).with_key(format!("k{i}"))).collect();
        q.publish("t", &recs).unwrap();
        (dir, q)
    }

    #[test]
    fn out_of_order_acks_commit_only_the_contiguous_prefix() {
        let (dir, q) = queue_with(5, 1);
        let mut c = q.consumer("t", "g", ConsumerOptions::default()).unwrap();
        let d = c.fetch(10, Duration::ZERO).unwrap();
        assert_eq!(d.len(), 5);
        c.ack(d[0].id());
        c.ack(d[2].id());
        c.ack(d[3].id());
        c.commit().unwrap();
        drop(c);
        drop(q);
        let q = Queue::open(dir.path()).unwrap();
        let mut c = q.consumer("t", "g", ConsumerOptions::default()).unwrap();
        let again: Vec<u64> = c.fetch(10, Duration::ZERO).unwrap().iter().map(|d| d.record.offset).collect();
        assert_eq!(again, vec![1, 2, 3, 4], "offset 1 was never acked, so 1.. is redelivered");
    }

    #[test]
    fn nak_redelivers_with_next_attempt() {
        let (_dir, q) = queue_with(2, 1);
        let mut c = q.consumer("t", "g", ConsumerOptions::default()).unwrap();
        let d = c.fetch(10, Duration::ZERO).unwrap();
        c.ack(d[1].id());
        c.nak(d[0].id(), Duration::ZERO);
        let again = c.fetch(10, Duration::ZERO).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].record.offset, again[0].attempt), (0, 2));
        assert!(!c.is_settled());
        c.ack(again[0].id());
        assert!(c.is_settled());
    }

    #[test]
    fn max_ack_pending_bounds_in_flight() {
        let (_dir, q) = queue_with(10, 3);
        let mut c = q.consumer("t", "g", ConsumerOptions { max_ack_pending: 4, ..Default::default() }).unwrap();
        assert_eq!(c.fetch(100, Duration::ZERO).unwrap().len(), 4);
        assert_eq!(c.fetch(100, Duration::ZERO).unwrap().len(), 0);
    }

    #[test]
    fn groups_are_independent_and_every_partition_is_read() {
        let (_dir, q) = queue_with(50, 4);
        for g in ["a", "b"] {
            let mut c = q.consumer("t", g, ConsumerOptions::default()).unwrap();
            let mut seen = Vec::new();
            loop {
                let d = c.fetch(7, Duration::ZERO).unwrap();
                if d.is_empty() {
                    break;
                }
                for x in d {
                    seen.push(String::from_utf8(x.record.payload.clone()).unwrap());
                    c.ack(x.id());
                }
            }
            seen.sort();
            let mut want: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
            want.sort();
            assert_eq!(seen, want);
            assert!(c.is_settled());
        }
    }
}
