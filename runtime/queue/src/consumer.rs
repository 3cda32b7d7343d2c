//! Consumer groups: durable committed offsets and per-message acknowledgement.
//!
//! A consumer tracks, per partition, the *ack frontier* (every offset below it
//! is acknowledged), the next offset to fetch, the acknowledged offsets above
//! the frontier, and the messages waiting to be redelivered. The committed
//! offset written to disk is the frontier, so a restart redelivers exactly the
//! messages that were not acknowledged (at-least-once).

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::dead_letter::{dead_letter_topic, dlq_headers};
use crate::offsets::{group_file, read_committed, write_committed};
use crate::record::{Record, StoredRecord};
use crate::topic::Topic;
use crate::{Error, Queue, Result, TopicConfig, validate_name};

/// Where a group with no committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The oldest retained record.
    #[default]
    Earliest,
    /// Only records published after the consumer is created.
    Latest,
    /// The first record of each partition appended at or after this time
    /// (ms since the Unix epoch), found with the time index: a replay.
    Time(u64),
    /// This offset in every partition (clamped to what is retained).
    Offset(u64),
}

/// Settings of a consumer.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Where to start when the group has no committed offset.
    pub start: StartFrom,
    /// At most this many delivered but unsettled messages.
    pub max_ack_pending: usize,
    /// A delivery not settled within this time is delivered again
    /// ([`Consumer::in_progress`] extends it).
    pub ack_wait: Duration,
    /// A message delivered this many times without an ack is dead-lettered
    /// instead of being delivered again.
    pub max_attempts: u32,
    /// Delay before a delivery whose lease ran out is delivered again
    /// ([`Consumer::nak`] gives its own delay).
    pub retry_backoff: Duration,
    /// The dead-letter topic; `None` means [`crate::dead_letter_topic`] of the
    /// topic read. Created when first needed.
    pub dead_letter: Option<String>,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            start: StartFrom::Earliest,
            max_ack_pending: 10_000,
            ack_wait: Duration::from_secs(30),
            max_attempts: 5,
            retry_backoff: Duration::from_secs(1),
            dead_letter: None,
        }
    }
}

/// A position to [`Consumer::seek`] to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seek {
    /// This offset (clamped to what is retained).
    Offset(u64),
    /// The first record appended at or after this time (ms since the Unix epoch).
    Time(u64),
    /// The oldest retained record.
    First,
    /// The end: only records published from now on.
    Last,
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

struct InFlight {
    attempt: u32,
    deadline: Instant,
}

#[derive(Default)]
struct PartState {
    /// The ack frontier, and the settled offsets above it.
    acks: Settled,
    /// Frontier as last written to disk.
    committed: u64,
    /// Next never-delivered offset.
    next: u64,
    /// Delivered, not yet settled. (Offsets are the keys: Fx hashing, not
    /// SipHash, as no client chooses them; this map is touched on every
    /// delivery and every ack.)
    in_flight: FxHashMap<u64, InFlight>,
    /// To deliver again: offset → (not before, attempt of that delivery).
    redeliver: BTreeMap<u64, (Instant, u32)>,
}

/// The ack frontier of a partition (every offset below it is settled) and
/// the settled offsets above it, one bit each. Settling in order, as almost
/// every ack does, sets the frontier's own bit and moves it on without a
/// search; a message that stays in flight while the rest are acknowledged
/// holds the frontier back at a cost of one bit per offset settled past it.
#[derive(Debug, Default)]
struct Settled {
    frontier: u64,
    /// The offset of the first bit of `words[0]`: a multiple of 64, at or
    /// below the frontier, within 64 of it.
    base: u64,
    words: VecDeque<u64>,
}

impl Settled {
    fn at(frontier: u64) -> Self {
        Settled { frontier, base: frontier & !63, words: VecDeque::new() }
    }

    fn frontier(&self) -> u64 {
        self.frontier
    }

    /// Mark `offset` settled; the frontier moves past every settled offset
    /// it now reaches.
    fn settle(&mut self, offset: u64) {
        if offset < self.frontier {
            return;
        }
        if offset == self.frontier && self.words.is_empty() {
            // In order, with nothing settled above: no bits at all.
            self.frontier += 1;
            self.base = self.frontier & !63;
            return;
        }
        let word = ((offset - self.base) / 64) as usize;
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << ((offset - self.base) % 64);
        self.advance();
    }

    /// Everything below `start` counts as settled (retention removed it).
    fn skip_to(&mut self, start: u64) {
        if start > self.frontier {
            self.frontier = start;
            self.advance();
        }
    }

    /// Move the frontier over set bits; drop the words wholly below it.
    fn advance(&mut self) {
        loop {
            let bit = self.frontier - self.base;
            let Some(&w) = self.words.get((bit / 64) as usize) else { break };
            // The settled run from the frontier's bit up, within this word.
            let run = u64::from((!(w >> (bit % 64))).trailing_zeros()).min(64 - bit % 64);
            self.frontier += run;
            if !(self.frontier - self.base).is_multiple_of(64) || run == 0 {
                break;
            }
        }
        while !self.words.is_empty() && self.base + 64 <= self.frontier {
            self.words.pop_front();
            self.base += 64;
        }
        // A last word with nothing settled above the frontier goes too
        // (a later word always holds the bit that made it).
        if self.words.len() == 1 && self.words[0] >> (self.frontier - self.base) == 0 {
            self.words.clear();
        }
        if self.words.is_empty() {
            self.base = self.frontier & !63;
        }
    }
}

/// Reads a topic on behalf of a consumer group.
///
/// Obtain with [`Queue::consumer`]. Messages are fetched with
/// [`Consumer::fetch`] and settled with [`Consumer::ack`], [`Consumer::nak`]
/// or [`Consumer::reject`]; progress is made durable with [`Consumer::commit`].
/// A delivery not settled within `ack_wait` is delivered again; after
/// `max_attempts` deliveries, or on `reject`, the message is copied to the
/// dead-letter topic (durably) and only then acknowledged.
pub struct Consumer {
    queue: Queue,
    topic: Arc<Topic>,
    group: String,
    path: PathBuf,
    options: ConsumerOptions,
    parts: Vec<PartState>,
    /// Lease deadlines in the order they were set: (deadline, partition, offset).
    /// Entries whose delivery was settled or extended are skipped when popped.
    leases: VecDeque<(Instant, u32, u64)>,
    /// Partition to fetch new records from first, rotating for fairness.
    cursor: usize,
    /// Set when writing the offsets failed: no commit is tried again.
    failed: Option<String>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.queue.consumer_closed(&self.topic.name, &self.group);
    }
}

impl Consumer {
    pub(crate) fn new(queue: Queue, topic: Arc<Topic>, group: &str, options: ConsumerOptions) -> Result<Self> {
        validate_name("consumer group", group)?;
        if let Some(dlq) = &options.dead_letter {
            validate_name("dead-letter topic", dlq)?;
        }
        let path = group_file(queue.dir(), group, &topic.key());
        let saved = read_committed(&path)?;
        let parts = (0..topic.partition_count())
            .map(|p| {
                let start = match (&saved, options.start) {
                    (Some(c), _) if (p as usize) < c.len() => c[p as usize],
                    (_, StartFrom::Earliest) => topic.start_offset(p),
                    (_, StartFrom::Latest) => topic.visible_end(p),
                    (_, StartFrom::Time(ms)) => topic.offset_for_time(p, ms)?,
                    (_, StartFrom::Offset(o)) => o.min(topic.visible_end(p)),
                };
                let start = start.max(topic.start_offset(p));
                Ok(PartState { acks: Settled::at(start), committed: start, next: start, ..PartState::default() })
            })
            .collect::<Result<_>>()?;
        Ok(Consumer { queue, topic, group: group.to_owned(), path, options, parts, leases: VecDeque::new(), cursor: 0, failed: None })
    }

    /// The group this consumer belongs to.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The topic it reads.
    pub fn topic(&self) -> &str {
        &self.topic.name
    }

    /// The dead-letter topic.
    pub fn dead_letter_topic(&self) -> String {
        self.options.dead_letter.clone().unwrap_or_else(|| dead_letter_topic(&self.topic.name))
    }

    /// The committed offset of each partition (as last written by [`Consumer::commit`]).
    pub fn committed(&self) -> Vec<u64> {
        self.parts.iter().map(|p| p.committed).collect()
    }

    /// Number of delivered, unsettled messages.
    pub fn in_flight(&self) -> usize {
        self.parts.iter().map(|p| p.in_flight.len()).sum()
    }

    /// Messages not yet acknowledged: the visible log end minus the ack
    /// frontier, summed over partitions.
    pub fn lag(&self) -> u64 {
        (0..self.parts.len()).map(|p| self.topic.visible_end(p as u32).saturating_sub(self.parts[p].acks.frontier())).sum()
    }

    /// Per partition: the visible log end minus the group's committed offset
    /// (what a restart would deliver again or for the first time).
    pub fn committed_lag(&self) -> Vec<u64> {
        (0..self.parts.len()).map(|p| self.topic.visible_end(p as u32).saturating_sub(self.parts[p].committed)).collect()
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
    /// I/O or corruption while reading; a failure writing a dead letter.
    pub fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let deadline = Instant::now() + wait;
        loop {
            let seen = self.queue.publish_count();
            let out = self.try_fetch(max)?;
            let now = Instant::now();
            if !out.is_empty() || now >= deadline {
                return Ok(out);
            }
            let until = self.next_due().map_or(deadline, |due| due.min(deadline));
            let nap = until.saturating_duration_since(now).max(Duration::from_millis(1));
            if self.queue.is_read_only() {
                // Another process writes: poll.
                std::thread::sleep(nap.min(Duration::from_millis(50)));
            } else {
                self.queue.wait_for_publish(seen, nap);
            }
        }
    }

    /// When a delivery this consumer holds next comes due again without a
    /// publish (a retry after its backoff, or a lease running out), if any.
    pub fn next_due(&self) -> Option<Instant> {
        let next_retry = self.parts.iter().filter_map(|p| p.redeliver.values().map(|(t, _)| *t).min()).min();
        let next_lease = self.leases.front().map(|(t, ..)| *t);
        next_retry.into_iter().chain(next_lease).min()
    }

    /// Move deliveries whose lease ran out to the redelivery set, and drop
    /// the leases of settled deliveries from the front of the queue (most are
    /// settled in delivery order, so it stays about as long as what is in
    /// flight instead of holding every delivery of the last `ack_wait`).
    fn expire_leases(&mut self, now: Instant) {
        while let Some(&(deadline, p, offset)) = self.leases.front() {
            let part = &mut self.parts[p as usize];
            let live = part.in_flight.get(&offset).filter(|f| f.deadline == deadline).map(|f| f.attempt);
            match live {
                None => {}
                Some(_) if deadline > now => break,
                Some(attempt) => {
                    part.in_flight.remove(&offset);
                    part.redeliver.insert(offset, (now + self.options.retry_backoff, attempt + 1));
                }
            }
            self.leases.pop_front();
        }
    }

    fn budget(&self, max: usize, taken: usize) -> usize {
        max.saturating_sub(taken).min(self.options.max_ack_pending.saturating_sub(self.in_flight()))
    }

    fn deliver(&mut self, record: StoredRecord, attempt: u32, now: Instant, out: &mut Vec<Delivery>) {
        let deadline = now + self.options.ack_wait;
        self.parts[record.partition as usize].in_flight.insert(record.offset, InFlight { attempt, deadline });
        self.leases.push_back((deadline, record.partition, record.offset));
        out.push(Delivery { record, attempt });
    }

    fn try_fetch(&mut self, max: usize) -> Result<Vec<Delivery>> {
        let now = Instant::now();
        self.expire_leases(now);
        let mut out = Vec::new();
        for p in 0..self.parts.len() {
            let due: Vec<(u64, u32)> = self.parts[p]
                .redeliver
                .iter()
                .filter(|(_, (t, _))| *t <= now)
                .map(|(o, (_, a))| (*o, *a))
                .take(self.budget(max, out.len()))
                .collect();
            for (offset, attempt) in due {
                self.parts[p].redeliver.remove(&offset);
                let rec = self.queue.read(&self.topic.name, p as u32, offset, 1)?;
                match rec.into_iter().next().filter(|r| r.offset == offset) {
                    Some(record) if attempt > self.options.max_attempts => {
                        let reason =
                            format!("not acknowledged after {} deliveries (max_attempts {})", attempt - 1, self.options.max_attempts);
                        self.dead_letter(record, attempt - 1, &reason)?;
                        Self::settle(&mut self.parts[p], offset);
                    }
                    Some(record) => self.deliver(record, attempt, now, &mut out),
                    // Deleted by retention meanwhile: nothing left to deliver.
                    None => Self::settle(&mut self.parts[p], offset),
                }
            }
        }
        let n = self.parts.len();
        for i in 0..n {
            let p = (self.cursor + i) % n;
            let want = self.budget(max, out.len());
            if want == 0 {
                break;
            }
            if self.queue.is_read_only() {
                self.topic.refresh(p as u32)?;
            }
            // Retention may have deleted what the group had not read: skip it.
            let start = self.topic.start_offset(p as u32);
            let part = &mut self.parts[p];
            part.acks.skip_to(start);
            part.next = part.next.max(start);
            if part.next >= self.topic.visible_end(p as u32) {
                continue;
            }
            let recs = self.queue.read(&self.topic.name, p as u32, self.parts[p].next, want)?;
            for record in recs {
                let part = &mut self.parts[p];
                // Records removed by retention before we read them count as settled.
                while part.next < record.offset {
                    let gone = part.next;
                    Self::settle(part, gone);
                    part.next += 1;
                }
                part.next = record.offset + 1;
                self.deliver(record, 1, now, &mut out);
            }
        }
        self.cursor = (self.cursor + 1) % n.max(1);
        Ok(out)
    }

    /// Copy `record` to the dead-letter topic with headers saying why and
    /// where from; returns once the copy is durable.
    fn dead_letter(&mut self, record: StoredRecord, attempts: u32, reason: &str) -> Result<()> {
        let topic = self.dead_letter_topic();
        self.queue.ensure_topic(&topic, &TopicConfig::default())?;
        let mut headers = record.headers;
        for (name, value) in [
            (dlq_headers::REASON, reason.to_owned()),
            (dlq_headers::SOURCE_TOPIC, self.topic.name.clone()),
            (dlq_headers::SOURCE_PARTITION, record.partition.to_string()),
            (dlq_headers::SOURCE_OFFSET, record.offset.to_string()),
            (dlq_headers::ATTEMPTS, attempts.to_string()),
        ] {
            headers.push((name.to_owned(), value.into_bytes()));
        }
        // A fixed id per source message: if we crash after this write but
        // before the ack is committed, the redelivered message's dead letter
        // deduplicates against this one instead of landing twice.
        let id = format!("dlq/{}/{}/{}/{}", self.group, self.topic.key(), record.partition, record.offset);
        let copy = Record { key: record.key, headers, payload: record.payload, timestamp_us: Some(record.timestamp_us), id: Some(id) };
        self.queue.publish(&topic, &[copy])?;
        tracing::warn!(
            topic = %self.topic.name, partition = record.partition, offset = record.offset,
            dead_letter = %topic, reason, "message dead-lettered"
        );
        Ok(())
    }

    fn settle(part: &mut PartState, offset: u64) {
        part.in_flight.remove(&offset);
        part.acks.settle(offset);
    }

    fn in_flight_mut(&mut self, id: DeliveryId) -> Option<(&mut PartState, u32)> {
        let part = self.parts.get_mut(id.partition as usize)?;
        let attempt = part.in_flight.get(&id.offset)?.attempt;
        Some((part, attempt))
    }

    /// Acknowledge a delivered message: it will not be delivered again to this
    /// group once committed. Unknown or already settled ids are ignored.
    pub fn ack(&mut self, id: DeliveryId) {
        if let Some((part, _)) = self.in_flight_mut(id) {
            Self::settle(part, id.offset);
        }
    }

    /// Negatively acknowledge: deliver the message again after `delay`, or
    /// dead-letter it if it has had `max_attempts` deliveries. Unknown or
    /// already settled ids are ignored.
    pub fn nak(&mut self, id: DeliveryId, delay: Duration) {
        if let Some((part, attempt)) = self.in_flight_mut(id) {
            part.in_flight.remove(&id.offset);
            part.redeliver.insert(id.offset, (Instant::now() + delay, attempt + 1));
        }
    }

    /// Hand a delivered message back unprocessed: it is delivered again at
    /// once, and this delivery does not count as an attempt. For work the
    /// caller abandoned for its own reasons (the message did not fail).
    /// Unknown or already settled ids are ignored.
    pub fn release(&mut self, id: DeliveryId) {
        if let Some((part, attempt)) = self.in_flight_mut(id) {
            part.in_flight.remove(&id.offset);
            part.redeliver.insert(id.offset, (Instant::now(), attempt));
        }
    }

    /// Still working on it: restart the delivery's `ack_wait` lease.
    pub fn in_progress(&mut self, id: DeliveryId) {
        let deadline = Instant::now() + self.options.ack_wait;
        if let Some(part) = self.parts.get_mut(id.partition as usize)
            && let Some(f) = part.in_flight.get_mut(&id.offset)
        {
            f.deadline = deadline;
            self.leases.push_back((deadline, id.partition, id.offset));
        }
    }

    /// Reject a delivered message as one that can never be handled: copy it to
    /// the dead-letter topic with `reason`, then acknowledge it. Unknown or
    /// already settled ids are ignored.
    ///
    /// # Errors
    /// A failure reading the message or writing the dead letter; the message
    /// then stays in flight (and is redelivered after `ack_wait`).
    pub fn reject(&mut self, id: DeliveryId, reason: &str) -> Result<()> {
        let Some((_, attempt)) = self.in_flight_mut(id) else {
            return Ok(());
        };
        let record = self.queue.read(&self.topic.name, id.partition, id.offset, 1)?;
        if let Some(record) = record.into_iter().next().filter(|r| r.offset == id.offset) {
            self.dead_letter(record, attempt, reason)?;
        }
        Self::settle(&mut self.parts[id.partition as usize], id.offset);
        Ok(())
    }

    /// Move partition `partition` to `to`: deliveries of it in flight or
    /// waiting for redelivery are forgotten, and the next fetch starts there.
    /// The group's committed offset follows at the next [`Consumer::commit`].
    ///
    /// # Errors
    /// Unknown partition; I/O errors looking up a time.
    pub fn seek(&mut self, partition: u32, to: Seek) -> Result<()> {
        let p = partition as usize;
        if p >= self.parts.len() {
            return Err(Error::Invalid { what: "partition", value: partition.to_string(), reason: "no such partition".into() });
        }
        let start = self.topic.start_offset(partition);
        let end = self.topic.visible_end(partition);
        let offset = match to {
            Seek::Offset(o) => o.clamp(start, end),
            Seek::Time(ts) => self.topic.offset_for_time(partition, ts)?.clamp(start, end),
            Seek::First => start,
            Seek::Last => end,
        };
        let part = &mut self.parts[p];
        part.acks = Settled::at(offset);
        part.next = offset;
        part.in_flight.clear();
        part.redeliver.clear();
        Ok(())
    }

    /// Write the group's progress (the ack frontier of each partition) durably.
    /// Does nothing if it has not moved since the last commit.
    ///
    /// # Errors
    /// An I/O error writing the group file.
    pub fn commit(&mut self) -> Result<()> {
        if self.parts.iter().all(|p| p.acks.frontier() == p.committed) {
            return Ok(());
        }
        if self.queue.is_read_only() {
            return Err(Error::ReadOnly);
        }
        if let Some(reason) = &self.failed {
            return Err(Error::Stopped { path: self.path.clone(), reason: reason.clone() });
        }
        let frontier: Vec<u64> = self.parts.iter().map(|p| p.acks.frontier()).collect();
        if let Err(e) = write_committed(&self.path, &frontier, &self.queue.inner.faults) {
            // Fail-stop: the offsets on disk are the last ones that were made durable.
            self.failed = Some(e.to_string());
            return Err(e);
        }
        for p in &mut self.parts {
            p.committed = p.acks.frontier();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `Settled` must do, the slow way: the frontier, and a set of
    /// the settled offsets above it.
    #[derive(Debug)]
    struct Model {
        frontier: u64,
        above: std::collections::BTreeSet<u64>,
    }

    impl Model {
        fn settle(&mut self, offset: u64) {
            if offset >= self.frontier {
                self.above.insert(offset);
            }
            while self.above.remove(&self.frontier) {
                self.frontier += 1;
            }
        }
        fn skip_to(&mut self, start: u64) {
            if start > self.frontier {
                self.frontier = start;
                self.above.retain(|&o| o >= start);
                while self.above.remove(&self.frontier) {
                    self.frontier += 1;
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn settled_offsets_move_the_frontier_as_a_set_of_them_would(
            start in 0u64..200,
            ops in proptest::collection::vec((0u8..10, 0u64..300), 0..400),
        ) {
            let (mut fast, mut model) = (Settled::at(start), Model { frontier: start, above: Default::default() });
            for (kind, n) in ops {
                if kind == 0 {
                    fast.skip_to(start + n);
                    model.skip_to(start + n);
                } else {
                    // Mostly near the frontier, as acks are.
                    let offset = model.frontier.saturating_sub(5) + n % (10 * u64::from(kind));
                    fast.settle(offset);
                    model.settle(offset);
                }
                proptest::prop_assert_eq!(fast.frontier(), model.frontier);
                proptest::prop_assert!(fast.base % 64 == 0 && fast.base <= fast.frontier && fast.frontier - fast.base < 64);
                // No word is kept that holds nothing above the frontier.
                proptest::prop_assert!(fast.words.len() as u64 <= model.above.last().map_or(0, |&o| (o - fast.base) / 64 + 1));
            }
        }
    }

    #[test]
    fn a_message_held_in_flight_costs_a_bit_per_offset_settled_past_it() {
        let mut s = Settled::at(0);
        for o in 1..=64_000 {
            s.settle(o);
        }
        assert_eq!(s.frontier(), 0, "offset 0 holds the frontier");
        assert_eq!(s.words.len(), 1001, "64,000 offsets past it: 1,001 words of 64 bits");
        s.settle(0);
        assert_eq!((s.frontier(), s.words.len()), (64_001, 0));
    }

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
    fn release_redelivers_at_once_without_spending_an_attempt() {
        let (_dir, q) = queue_with(1, 1);
        let opts = ConsumerOptions { retry_backoff: Duration::from_secs(3600), ..Default::default() };
        let mut c = q.consumer("t", "g", opts).unwrap();
        let d = c.fetch(10, Duration::ZERO).unwrap();
        c.release(d[0].id());
        let again = c.fetch(10, Duration::ZERO).unwrap();
        assert_eq!((again[0].record.offset, again[0].attempt), (0, 1));
        c.ack(again[0].id());
        assert!(c.is_settled());
    }

    #[test]
    fn leases_of_settled_messages_are_dropped() {
        let (_dir, q) = queue_with(5000, 1);
        let mut c = q.consumer("t", "g", ConsumerOptions::default()).unwrap();
        loop {
            let d = c.fetch(100, Duration::ZERO).unwrap();
            if d.is_empty() {
                break;
            }
            for x in &d {
                c.ack(x.id());
            }
        }
        assert!(c.leases.len() <= 100, "{} leases kept for 5000 acked messages", c.leases.len());
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
