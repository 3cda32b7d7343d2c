//! Where a run's messages come from: a consumer group of the embedded queue,
//! or an ephemeral feed (standard input, a file, the generator).
//!
//! An ephemeral feed is read by its own thread into a bounded channel, so a
//! slow pipeline slows the reader and memory stays flat. It keeps what it
//! delivered until it is settled and redelivers retried and released
//! messages itself, like a consumer group, but nothing of it survives the
//! run: a restart reads the input again. Use a queue topic (`weir produce`)
//! for input that must be resumable.
//!
//! A NATS source is a JetStream durable consumer (see [`crate::nats`]), or a
//! core subject read like an ephemeral feed.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;

use weir_queue::{Consumer, Delivery, DeliveryId, Queue, Record, StoredRecord};

use crate::Result;
use crate::batch::{DeadLetter, Fetched};
use crate::config::{Generator, NatsSource, Source};
use crate::nats::{JetStreamFeed, Nats};
use crate::stats::now_ms;

/// Lines buffered between an ephemeral feed's reader thread and the pipeline.
const READ_AHEAD: usize = 4096;

pub(crate) enum Feed {
    Queue(Consumer),
    Memory(MemoryFeed),
    JetStream(Box<JetStreamFeed>),
}

impl Feed {
    /// Open an ephemeral feed for a non-queue `source`: standard input, a
    /// file, the generator or a core NATS subject. `dead_letter` takes input
    /// lines that are not messages.
    pub(crate) fn ephemeral(
        source: &Source,
        max_in_flight: usize,
        dead_letter: Option<(Queue, String)>,
        nats: Option<&Arc<Nats>>,
    ) -> Result<Feed> {
        let (tx, rx) = sync_channel(READ_AHEAD);
        let name = source.name();
        let opened = |e: std::io::Error| crate::Error::source_failed(name.clone(), e);
        match source {
            Source::Queue { .. } | Source::Nats(NatsSource::JetStream(_)) => unreachable!("durable sources have a consumer"),
            Source::Nats(NatsSource::Core { subject, queue_group }) => {
                let nats = nats.expect("a NATS source has a connection").clone();
                let mut sub = nats.subscribe(subject, queue_group.as_deref())?;
                spawn_reader("weir-nats-sub", move || {
                    while let Some(m) = nats.next(&mut sub) {
                        let (key, headers) = crate::nats::from_nats_headers(m.headers.as_ref());
                        let record = Record { key, headers, payload: m.payload.to_vec(), timestamp_ms: Some(now_ms()), id: None };
                        if tx.send(Read::Record(record)).is_err() {
                            return;
                        }
                    }
                });
            }
            Source::Stdin { json } => {
                let json = *json;
                spawn_reader("weir-stdin", move || read_lines(std::io::stdin().lock(), json, &tx));
            }
            Source::File { path, json } => {
                let file = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(path).map_err(opened)?);
                let json = *json;
                spawn_reader("weir-file", move || read_lines(file, json, &tx));
            }
            Source::Generator(g) => {
                let g = g.clone();
                spawn_reader("weir-generator", move || generate(&g, &tx));
            }
        }
        Ok(Feed::Memory(MemoryFeed {
            name,
            rx,
            exhausted: false,
            next: 0,
            in_flight: HashMap::new(),
            redeliver: BTreeMap::new(),
            max_in_flight,
            dead_letter,
        }))
    }

    /// Whether delivery ids name the same message after a restart (so the
    /// state store's applied set can be trusted).
    pub(crate) fn has_durable_ids(&self) -> bool {
        matches!(self, Feed::Queue(_) | Feed::JetStream(_))
    }

    pub(crate) fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Fetched>> {
        match self {
            Feed::Queue(c) => {
                let topic = c.topic().to_owned();
                Ok(c.fetch(max, wait)?.into_iter().map(|d| Fetched::from_delivery(&topic, d)).collect())
            }
            Feed::Memory(m) => Ok(m.fetch(max, wait)?.into_iter().map(|d| Fetched::from_delivery(&m.name, d)).collect()),
            Feed::JetStream(j) => j.fetch(max, wait),
        }
    }

    pub(crate) fn ack(&mut self, id: DeliveryId) {
        match self {
            Feed::Queue(c) => c.ack(id),
            Feed::Memory(m) => {
                m.in_flight.remove(&id.offset);
            }
            Feed::JetStream(j) => j.settle(id, AckKind::Ack),
        }
    }

    /// Settled as a dead letter (already published to the dead-letter
    /// destination): no more deliveries.
    pub(crate) fn term(&mut self, id: DeliveryId) {
        match self {
            Feed::JetStream(j) => j.settle(id, AckKind::Term),
            _ => self.ack(id),
        }
    }

    pub(crate) fn nak(&mut self, id: DeliveryId, delay: Duration) {
        match self {
            Feed::Queue(c) => c.nak(id, delay),
            Feed::Memory(m) => m.again(id, delay, 1),
            Feed::JetStream(j) => j.settle(id, AckKind::Nak((!delay.is_zero()).then_some(delay))),
        }
    }

    /// Deliver again without charging an attempt (JetStream counts one anyway).
    pub(crate) fn release(&mut self, id: DeliveryId) {
        match self {
            Feed::Queue(c) => c.release(id),
            Feed::Memory(m) => m.again(id, Duration::ZERO, 0),
            Feed::JetStream(j) => j.settle(id, AckKind::Nak(None)),
        }
    }

    pub(crate) fn commit(&mut self) -> Result<()> {
        match self {
            Feed::Queue(c) => Ok(c.commit()?),
            Feed::Memory(_) => Ok(()),
            Feed::JetStream(j) => {
                j.commit();
                Ok(())
            }
        }
    }

    /// After the last commit: make sure what was committed reached the source.
    pub(crate) fn close(&mut self) {
        if let Feed::JetStream(j) = self {
            j.flush();
        }
    }

    /// Per partition, messages not yet consumed (JetStream: not yet
    /// delivered); `None` for ephemeral feeds.
    pub(crate) fn lag(&mut self) -> Option<Vec<u64>> {
        match self {
            Feed::Queue(c) => Some(c.committed_lag()),
            Feed::Memory(_) => None,
            Feed::JetStream(j) => j.lag(),
        }
    }

    /// Per partition, the offset below which the source never delivers again:
    /// the group's committed offsets, or the JetStream consumer's
    /// acknowledgement floor + 1 (as of its last info, at most a second old).
    pub(crate) fn floor(&mut self) -> Option<Vec<u64>> {
        match self {
            Feed::Queue(c) => Some(c.committed()),
            Feed::Memory(_) => None,
            Feed::JetStream(j) => j.floor(),
        }
    }

    /// Delivered and not yet settled.
    pub(crate) fn in_flight(&self) -> usize {
        match self {
            Feed::Queue(c) => c.in_flight(),
            Feed::Memory(m) => m.in_flight.len(),
            Feed::JetStream(j) => j.in_flight(),
        }
    }

    /// Nothing more to read and nothing unsettled.
    pub(crate) fn is_settled(&mut self) -> bool {
        match self {
            Feed::Queue(c) => c.is_settled(),
            Feed::Memory(m) => m.exhausted && m.in_flight.is_empty() && m.redeliver.is_empty(),
            Feed::JetStream(j) => j.is_settled(),
        }
    }
}

/// What a reader thread sends: a message, or a line it could not parse.
enum Read {
    Record(Record),
    Bad { line: Vec<u8>, reason: String },
}

pub(crate) struct MemoryFeed {
    name: String,
    rx: Receiver<Read>,
    exhausted: bool,
    /// Offset of the next new message (its line number from 0).
    next: u64,
    in_flight: HashMap<u64, (u32, StoredRecord)>,
    /// offset → (due, attempt, record).
    redeliver: BTreeMap<u64, (Instant, u32, StoredRecord)>,
    max_in_flight: usize,
    dead_letter: Option<(Queue, String)>,
}

impl MemoryFeed {
    fn again(&mut self, id: DeliveryId, delay: Duration, extra_attempt: u32) {
        if let Some((attempt, record)) = self.in_flight.remove(&id.offset) {
            self.redeliver.insert(id.offset, (Instant::now() + delay, attempt + extra_attempt, record));
        }
    }

    fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let now = Instant::now();
        let mut out = Vec::new();
        let due: Vec<u64> = self.redeliver.iter().filter(|(_, (t, ..))| *t <= now).map(|(o, _)| *o).take(max).collect();
        for offset in due {
            let (_, attempt, record) = self.redeliver.remove(&offset).expect("listed above");
            self.in_flight.insert(offset, (attempt, record.clone()));
            out.push(Delivery { record, attempt });
        }
        let deadline = now + wait;
        while out.len() < max && self.in_flight.len() < self.max_in_flight && !self.exhausted {
            let read = if out.is_empty() {
                match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(r) => r,
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        self.exhausted = true;
                        break;
                    }
                }
            } else {
                match self.rx.try_recv() {
                    Ok(r) => r,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.exhausted = true;
                        break;
                    }
                }
            };
            let offset = self.next;
            self.next += 1;
            match read {
                Read::Record(r) => {
                    let record = StoredRecord {
                        partition: 0,
                        offset,
                        append_timestamp_ms: r.timestamp_ms.unwrap_or(0),
                        timestamp_ms: r.timestamp_ms.unwrap_or(0),
                        key: r.key,
                        headers: r.headers,
                        payload: r.payload,
                    };
                    self.in_flight.insert(offset, (1, record.clone()));
                    out.push(Delivery { record, attempt: 1 });
                }
                Read::Bad { line, reason } => self.dead_letter_line(offset, line, reason)?,
            }
        }
        Ok(out)
    }

    /// A line that is not a message goes straight to the dead-letter topic.
    fn dead_letter_line(&self, offset: u64, line: Vec<u8>, reason: String) -> Result<()> {
        tracing::warn!(source = %self.name, line = offset + 1, %reason, "input line dead-lettered");
        let mut rec = Record::new(line);
        let id = DeliveryId { partition: 0, offset };
        DeadLetter { stage: "source", kind: "source", reason, source: &self.name, id, attempt: 1 }.add_headers(&mut rec);
        let (queue, topic) = self.dead_letter.as_ref().expect("sources that parse lines have a dead-letter topic");
        queue.publish(topic, &[rec])?;
        Ok(())
    }
}

fn spawn_reader(name: &str, f: impl FnOnce() + Send + 'static) {
    // Detached: a reader blocked on standard input must not hold up exit.
    std::thread::Builder::new().name(name.into()).spawn(f).expect("spawn a reader thread");
}

fn read_lines(mut input: impl BufRead, json: bool, tx: &SyncSender<Read>) {
    let mut line = Vec::new();
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "reading the source failed; treating it as ended");
                return;
            }
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        let read =
            if json { parse_json(&line) } else { Read::Record(Record { timestamp_ms: Some(now_ms()), ..Record::new(line.clone()) }) };
        if tx.send(read).is_err() {
            return;
        }
    }
}

/// A JSON line in the form `weir consume --format json` writes (see
/// [`weir_queue::json::record_from_json`]).
fn parse_json(line: &[u8]) -> Read {
    let parsed = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}")).and_then(|v| weir_queue::json::record_from_json(&v));
    match parsed {
        Ok(r) => Read::Record(Record { timestamp_ms: r.timestamp_ms.or(Some(now_ms())), ..r }),
        Err(reason) => Read::Bad { line: line.to_vec(), reason },
    }
}

fn generate(g: &Generator, tx: &SyncSender<Read>) {
    let started = Instant::now();
    let mut i = 0u64;
    while g.count.is_none_or(|n| i < n) {
        if let Some(rate) = g.rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let read = Read::Record(Record { timestamp_ms: Some(now_ms()), ..g.record(i) });
        if tx.send(read).is_err() {
            return;
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_parse_like_weir_consume_writes_them() {
        let Read::Record(r) = parse_json(br#"{"payload":"hi","key":"k","headers":{"a":"b","c":[1,2]},"timestamp_ms":5}"#) else {
            panic!("should parse")
        };
        assert_eq!((r.payload.as_slice(), r.key.as_deref(), r.timestamp_ms), (&b"hi"[..], Some(&b"k"[..]), Some(5)));
        assert_eq!(r.headers, [("a".to_string(), b"b".to_vec()), ("c".to_string(), vec![1, 2])]);
        for (line, want) in [(&b"nope"[..], "not JSON"), (b"[1]", "not a JSON object"), (br#"{"key":"k"}"#, "needs a `payload`")] {
            match parse_json(line) {
                Read::Bad { reason, .. } => assert!(reason.contains(want), "{reason}"),
                Read::Record(_) => panic!("{} should be refused", String::from_utf8_lossy(line)),
            }
        }
    }

    #[test]
    fn the_generator_makes_distinct_sized_keyed_messages() {
        let (tx, rx) = sync_channel(100);
        generate(&Generator { count: Some(30), size: 20, rate: None, keys: 3 }, &tx);
        drop(tx);
        let recs: Vec<Record> = rx.iter().map(|r| if let Read::Record(r) = r { r } else { panic!() }).collect();
        assert_eq!(recs.len(), 30);
        assert!(recs.iter().all(|r| r.payload.len() == 20));
        assert_eq!(recs.iter().map(|r| &r.payload).collect::<std::collections::HashSet<_>>().len(), 30);
        assert_eq!(recs[4].key.as_deref(), Some(&b"k1"[..]));
    }
}
