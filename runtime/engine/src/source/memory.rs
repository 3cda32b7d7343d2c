//! The feed behind every ephemeral source: a reader thread (standard input,
//! a file, the generator, a core NATS subject) sends what it reads into a
//! bounded channel; this side numbers the messages, keeps those delivered
//! until they are settled, and redelivers retried and released ones.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::time::{Duration, Instant};

use weir_queue::{Delivery, DeliveryId, Queue, Record, StoredRecord};

use super::Feed;
use crate::Result;
use crate::batch::{DeadLetter, Fetched};

/// Messages buffered between a reader thread and the pipeline.
const READ_AHEAD: usize = 4096;

/// Run a reader on a thread of its own, sending into a bounded channel;
/// the receiving end is what [`MemoryFeed`] takes from. Detached: a reader
/// blocked on standard input must not hold up exit.
pub(super) fn spawn_reader(name: &str, f: impl FnOnce(SyncSender<Read>) + Send + 'static) -> Receiver<Read> {
    let (tx, rx) = sync_channel(READ_AHEAD);
    std::thread::Builder::new().name(name.into()).spawn(move || f(tx)).expect("spawn a reader thread");
    rx
}

/// What a reader thread sends: a message, or a line it could not parse.
pub(super) enum Read {
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
    /// Take what `rx` reads; lines that are not messages go to `dead_letter`.
    pub(super) fn new(name: String, rx: Receiver<Read>, max_in_flight: usize, dead_letter: Option<(Queue, String)>) -> MemoryFeed {
        MemoryFeed {
            name,
            rx,
            exhausted: false,
            next: 0,
            in_flight: HashMap::new(),
            redeliver: BTreeMap::new(),
            max_in_flight,
            dead_letter,
        }
    }

    fn again(&mut self, id: DeliveryId, delay: Duration, extra_attempt: u32) {
        if let Some((attempt, record)) = self.in_flight.remove(&id.offset) {
            self.redeliver.insert(id.offset, (Instant::now() + delay, attempt + extra_attempt, record));
        }
    }

    fn take(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
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

impl Feed for MemoryFeed {
    fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Fetched>> {
        Ok(self.take(max, wait)?.into_iter().map(|d| Fetched::from_delivery(&self.name, d)).collect())
    }

    fn ack(&mut self, id: DeliveryId) {
        self.in_flight.remove(&id.offset);
    }

    fn nak(&mut self, id: DeliveryId, delay: Duration) {
        self.again(id, delay, 1);
    }

    fn release(&mut self, id: DeliveryId) {
        self.again(id, Duration::ZERO, 0);
    }

    fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn is_settled(&mut self) -> bool {
        self.exhausted && self.in_flight.is_empty() && self.redeliver.is_empty()
    }
}
