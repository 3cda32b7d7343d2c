//! The feed behind every ephemeral source: a reader thread (standard input,
//! a file, the generator, a core NATS subject) sends what it reads into a
//! bounded channel, in chunks; this side numbers the messages, keeps those
//! delivered until they are settled, and redelivers retried and released
//! ones.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::time::{Duration, Instant};

use weir_queue::{DeliveryId, Message, Queue, Record};

use super::Feed;
use crate::Result;
use crate::batch::{DeadLetter, Fetched};
use crate::stats::PipelineStats;

/// Messages buffered between a reader thread and the pipeline, at most.
const READ_AHEAD: usize = 4096;
/// Reads per chunk: one channel operation (and at most one wake-up of the
/// other side) per this many messages, not per message.
const CHUNK: usize = 64;

/// Run a reader on a thread of its own, sending into a bounded channel;
/// the receiving end is what [`MemoryFeed`] takes from. Detached: a reader
/// blocked on standard input must not hold up exit.
pub(super) fn spawn_reader(name: &str, f: impl FnOnce(&mut Reads) + Send + 'static) -> Receiver<Vec<Read>> {
    let (tx, rx) = sync_channel(READ_AHEAD / CHUNK);
    let run = move || {
        let mut reads = Reads { tx, chunk: Vec::with_capacity(CHUNK) };
        f(&mut reads);
        reads.flush();
    };
    std::thread::Builder::new().name(name.into()).spawn(run).expect("spawn a reader thread");
    rx
}

/// A reader thread's sending end. Reads are gathered into chunks; a reader
/// calls [`Reads::flush`] before it may block (waiting for input or for its
/// rate), so nothing it has read waits for a chunk to fill.
pub(super) struct Reads {
    tx: SyncSender<Vec<Read>>,
    chunk: Vec<Read>,
}

impl Reads {
    /// Add `read`, sending the chunk when it is full. False once the
    /// pipeline has stopped taking reads: the reader should end.
    pub(super) fn send(&mut self, read: Read) -> bool {
        self.chunk.push(read);
        self.chunk.len() < CHUNK || self.flush()
    }

    /// Send what is gathered. False once the pipeline has stopped taking reads.
    pub(super) fn flush(&mut self) -> bool {
        if self.chunk.is_empty() {
            return true;
        }
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
        self.tx.send(chunk).is_ok()
    }
}

/// What a reader thread sends: a message, or a line it could not parse.
pub(super) enum Read {
    Record(Record),
    Bad { line: Vec<u8>, reason: String },
}

pub(crate) struct MemoryFeed {
    name: Arc<str>,
    rx: Receiver<Vec<Read>>,
    /// Received, not yet delivered (the rest of a chunk).
    ahead: VecDeque<Read>,
    exhausted: bool,
    /// Offset of the next new message (its line number from 0).
    next: u64,
    /// Delivered, not yet settled: offset → the message (a cheap clone of
    /// what was handed out: shared payload and key).
    in_flight: InFlight,
    /// offset → (due, the message to deliver again).
    redeliver: BTreeMap<u64, (Instant, Fetched)>,
    max_in_flight: usize,
    dead_letter: Option<(Queue, String)>,
    stats: Arc<PipelineStats>,
}

/// Delivered, unsettled messages by offset. Offsets are handed out in
/// order and mostly settled in order, so a deque from the lowest unsettled
/// offset does it without hashing or rehashing (a map of a million
/// deliveries was 6 % of a pipeline's time).
#[derive(Default)]
struct InFlight {
    /// Offset of `slots[0]`.
    base: u64,
    slots: VecDeque<Option<Fetched>>,
    len: usize,
}

impl InFlight {
    fn insert(&mut self, f: Fetched) {
        let offset = f.id.offset;
        if self.slots.is_empty() {
            self.base = offset;
        }
        // A redelivery of a message below the window.
        while offset < self.base {
            self.slots.push_front(None);
            self.base -= 1;
        }
        let i = (offset - self.base) as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        if self.slots[i].replace(f).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, offset: u64) -> Option<Fetched> {
        let i = usize::try_from(offset.checked_sub(self.base)?).ok()?;
        let f = self.slots.get_mut(i)?.take()?;
        self.len -= 1;
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
        Some(f)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl MemoryFeed {
    /// Take what `rx` reads; lines that are not messages go to `dead_letter`.
    pub(super) fn new(
        name: String,
        rx: Receiver<Vec<Read>>,
        max_in_flight: usize,
        dead_letter: Option<(Queue, String)>,
        stats: Arc<PipelineStats>,
    ) -> MemoryFeed {
        MemoryFeed {
            name: name.into(),
            rx,
            ahead: VecDeque::new(),
            exhausted: false,
            next: 0,
            in_flight: InFlight::default(),
            redeliver: BTreeMap::new(),
            max_in_flight,
            dead_letter,
            stats,
        }
    }

    fn again(&mut self, id: DeliveryId, delay: Duration, extra_attempt: u32) {
        if let Some(mut f) = self.in_flight.remove(id.offset) {
            f.msg.attempt += extra_attempt;
            self.redeliver.insert(id.offset, (Instant::now() + delay, f));
        }
    }

    /// Hand out `f`, keeping a copy until it is settled.
    fn deliver(&mut self, f: Fetched, out: &mut Vec<Fetched>) {
        self.in_flight.insert(f.clone());
        out.push(f);
    }

    /// A line that is not a message goes straight to the dead-letter topic.
    fn dead_letter_line(&self, offset: u64, line: Vec<u8>, reason: String) -> Result<()> {
        tracing::warn!(source = %self.name, line = offset + 1, %reason, "input line dead-lettered");
        let mut rec = Record::new(line);
        let id = DeliveryId { partition: 0, offset };
        DeadLetter { stage: "source", kind: "source", reason, source: &self.name, id, attempt: 1, module: None }.add_headers(&mut rec);
        let (queue, topic) = self.dead_letter.as_ref().expect("sources that parse lines have a dead-letter topic");
        queue.publish(topic, &[rec])?;
        // In, and out as a dead letter, like a message a stage rejects.
        self.stats.source_received(1, 0);
        self.stats.settled(1, 0, 0);
        self.stats.sink_written(0, 1);
        Ok(())
    }
}

impl Feed for MemoryFeed {
    fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Fetched>> {
        let now = Instant::now();
        let mut out = Vec::new();
        let due: Vec<u64> = self.redeliver.iter().filter(|(_, (t, _))| *t <= now).map(|(o, _)| *o).take(max).collect();
        for offset in due {
            let (_, f) = self.redeliver.remove(&offset).expect("listed above");
            self.deliver(f, &mut out);
        }
        let deadline = now + wait;
        while out.len() < max && self.in_flight.len() < self.max_in_flight {
            let Some(read) = self.ahead.pop_front() else {
                if self.exhausted {
                    break;
                }
                // Wait only while nothing is taken yet: a batch is never
                // held back to fill up.
                let chunk = if out.is_empty() {
                    match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(c) => c,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => {
                            self.exhausted = true;
                            break;
                        }
                    }
                } else {
                    match self.rx.try_recv() {
                        Ok(c) => c,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            self.exhausted = true;
                            break;
                        }
                    }
                };
                self.ahead.extend(chunk);
                continue;
            };
            let offset = self.next;
            self.next += 1;
            match read {
                Read::Record(r) => {
                    let msg = Message::from_record(self.name.clone(), offset, r);
                    let f = Fetched { id: DeliveryId { partition: 0, offset }, appended_us: msg.timestamp_us, msg };
                    self.deliver(f, &mut out);
                }
                Read::Bad { line, reason } => self.dead_letter_line(offset, line, reason)?,
            }
        }
        Ok(out)
    }

    fn ack(&mut self, id: DeliveryId) {
        self.in_flight.remove(id.offset);
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
        self.exhausted && self.ahead.is_empty() && self.in_flight.is_empty() && self.redeliver.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(offset: u64) -> Fetched {
        let msg = Message {
            topic: "t".into(),
            partition: 0,
            offset,
            key: None,
            payload: Vec::new().into(),
            headers: Vec::new(),
            timestamp_us: 0,
            event_time_ms: 0,
            attempt: 1,
        };
        Fetched { id: DeliveryId { partition: 0, offset }, appended_us: 0, msg }
    }

    #[test]
    fn in_flight_keeps_each_offset_until_removed_in_any_order() {
        let mut w = InFlight::default();
        for o in 10..20 {
            w.insert(fetched(o));
        }
        assert_eq!(w.len(), 10);
        assert_eq!(w.remove(15).map(|f| f.id.offset), Some(15));
        assert!(w.remove(15).is_none() && w.remove(9).is_none() && w.remove(20).is_none());
        for o in 10..15 {
            assert!(w.remove(o).is_some());
        }
        assert_eq!((w.base, w.len()), (16, 4), "the settled front is let go");
        // A redelivery below the window, then one within it.
        w.insert(fetched(12));
        w.insert(fetched(15));
        assert_eq!((w.base, w.len()), (12, 6));
        for o in [12, 15, 16, 17, 18, 19] {
            assert_eq!(w.remove(o).map(|f| f.id.offset), Some(o));
        }
        assert!(w.is_empty() && w.slots.is_empty());
    }
}
