//! The source worker: pulls batches from the feed, hands them down, applies settlements, commits.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_queue::Queue;

use super::sink::SinkWorker;
use super::stage::Chain;
use super::{Finished, RunOptions};
use crate::batch::{Batch, Fate, Item, Origin, Settlement};
use crate::config::{EventTime, Watermark};
use crate::source::Feed;
use crate::stats::{PipelineStats, now_us, since};
use crate::{Error, Result};

pub(super) struct SourceWorker<'a> {
    pub(super) feed: Box<dyn Feed>,
    /// Ids whose state writes an earlier run committed (see [`StateStore::applied`]).
    pub(super) applied: HashSet<(u32, u64)>,
    pub(super) options: &'a RunOptions,
    pub(super) stats: &'a PipelineStats,
    pub(super) fetch_size: usize,
    pub(super) fill_wait: Duration,
    /// Batches sent down the pipeline and not yet settled.
    pub(super) in_pipeline: usize,
    pub(super) queue: &'a Queue,
    /// When the data directory was last seen to be there.
    pub(super) checked: Instant,
    /// Told to the sink's state store: below it, ids are never delivered again.
    pub(super) floor: &'a Mutex<Option<Vec<u64>>>,
    /// Settlements applied and not yet committed since this time.
    pub(super) uncommitted_since: Option<Instant>,
    /// The event-time watermark.
    pub(super) watermarks: Watermarks,
    /// Some stage sets timers: when no messages come, a batch without any
    /// is sent every [`TICK`] so its timers still fire, and a finite
    /// source's end is sent as a last batch at the end of time. Set later
    /// too, when a stage is upgraded to a version that sets timers.
    pub(super) uses_timers: Arc<AtomicBool>,
    /// Some stage uses the watermark (timers, or a late policy); set later
    /// like `uses_timers`.
    pub(super) tracks_watermark: Arc<AtomicBool>,
    /// Where each message's event time is read.
    pub(super) event_time: &'a EventTime,
    /// When the last batch was sent.
    pub(super) last_sent: Instant,
    /// The end of time has been sent (a drained source).
    pub(super) ended: bool,
    /// A stage had more due timers than it fires for one batch: a drained
    /// source sends the end of time again until none is left.
    pub(super) timers_left: bool,
}

/// Where the source's batches go.
pub(super) enum Downstream<'a> {
    /// The channel to the first stage thread (to the sink's, with no
    /// stages), the batches sent on it and those that thread has finished.
    Thread { tx: SyncSender<Batch>, sent: u64, first_finished: &'a Finished },
    /// `stage_threads = 0`: the stages and the sink run on the source's own
    /// thread, each batch written before the next is fetched. No message
    /// waits for another thread to be woken or scheduled (see the README's
    /// latency figures); nothing works side by side either.
    Inline { chain: Chain, sink: Box<SinkWorker<'a>>, failed: Option<Error> },
}

impl Downstream<'_> {
    /// Hand `batch` on; `false` if downstream stopped (a thread's error is
    /// reported by its join, the inline sink's by [`Downstream::close`]).
    fn send(&mut self, batch: Batch) -> bool {
        match self {
            Downstream::Thread { tx, sent, .. } => {
                *sent += 1;
                tx.send(batch).is_ok()
            }
            Downstream::Inline { chain, sink, failed } => {
                let batch = chain.process(batch);
                match sink.write_group(vec![batch]) {
                    Ok(listening) => listening,
                    Err(e) => {
                        *failed = Some(e);
                        false
                    }
                }
            }
        }
    }

    /// Whether a batch sent now would wait: the next thread has not
    /// finished what it was sent. Inline, the stages are idle whenever the
    /// source runs.
    pub(super) fn first_busy(&self) -> bool {
        match self {
            Downstream::Thread { sent, first_finished, .. } => *sent > first_finished.get(),
            Downstream::Inline { .. } => false,
        }
    }

    /// Between two batches (and while none come): inline stages take a
    /// new version here, as a stage thread does between its batches.
    fn between_batches(&mut self) {
        if let Downstream::Inline { chain, .. } = self {
            chain.between_batches();
        }
    }

    /// No more batches: what was sent is written; the inline sink's error.
    fn close(self) -> Result<()> {
        match self {
            Downstream::Thread { tx, .. } => {
                drop(tx);
                Ok(())
            }
            Downstream::Inline { chain, mut sink, failed } => {
                chain.finish();
                sink.finish();
                failed.map_or(Ok(()), Err)
            }
        }
    }
}

/// How long the source waits for more at a time while filling a batch, so
/// that it stops soon after the next thread becomes free.
const FILL_STEP: Duration = Duration::from_micros(100);

/// How often a pipeline with timers gets a batch when no messages come.
const TICK: Duration = Duration::from_millis(100);

/// The source's event-time watermark (see [`Watermark`]).
pub(super) struct Watermarks {
    spec: Watermark,
    /// Per partition: the latest event time seen, and when.
    partitions: HashMap<u32, (u64, Instant)>,
    current: Option<u64>,
}

impl Watermarks {
    pub(super) fn new(spec: Watermark) -> Self {
        Watermarks { spec, partitions: HashMap::new(), current: None }
    }

    fn observe(&mut self, partition: u32, event_time_ms: u64) {
        let now = Instant::now();
        let p = self.partitions.entry(partition).or_insert((event_time_ms, now));
        p.0 = p.0.max(event_time_ms);
        p.1 = now;
    }

    /// The least of the partitions' watermarks, leaving out idle ones; it
    /// never goes back.
    fn current(&mut self) -> Option<u64> {
        let idle = self.spec.idle_timeout;
        let ooo = self.spec.max_out_of_orderness_ms;
        let least = self
            .partitions
            .values()
            .filter(|(_, seen)| idle.is_none_or(|idle| seen.elapsed() < idle))
            .map(|(latest, _)| latest.saturating_sub(ooo))
            .min();
        if let Some(w) = least {
            self.current = Some(self.current.map_or(w, |c| c.max(w)));
        }
        self.current
    }

    fn end(&mut self) -> Option<u64> {
        self.current = Some(u64::MAX);
        self.current
    }
}

impl SourceWorker<'_> {
    pub(super) fn run(mut self, mut down: Downstream, settlements: Receiver<Settlement>) -> Result<()> {
        let result = self.pull(&mut down, &settlements);
        // Stop feeding; the stages and the sink finish what they hold, and
        // every settlement they send is applied before the final commit.
        let closed = down.close();
        while let Ok(s) = settlements.recv() {
            self.apply(s);
        }
        let committed = self.feed.commit();
        self.feed.close();
        result.and(closed).and(committed)
    }

    /// Commit what was settled once the pipeline is idle or the feed's
    /// commit interval has passed since the oldest settlement not committed.
    fn commit_due(&mut self) -> Result<()> {
        let Some(since) = self.uncommitted_since else { return Ok(()) };
        if self.in_pipeline == 0 || since.elapsed() >= self.feed.commit_interval() {
            self.feed.commit()?;
            self.uncommitted_since = None;
        }
        Ok(())
    }

    fn apply(&mut self, s: Settlement) {
        self.uncommitted_since.get_or_insert_with(Instant::now);
        self.timers_left |= s.timers_left;
        for id in s.acks {
            self.feed.ack(id);
        }
        for id in s.dead {
            self.feed.term(id);
        }
        for (id, delay) in s.naks {
            self.feed.nak(id, delay);
        }
        for id in s.releases {
            self.feed.release(id);
        }
        self.in_pipeline -= 1;
    }

    fn pull(&mut self, down: &mut Downstream, settlements: &Receiver<Settlement>) -> Result<()> {
        loop {
            down.between_batches();
            while let Ok(s) = settlements.try_recv() {
                self.apply(s);
            }
            self.commit_due()?;
            self.stats.set_source_state(self.feed.lag(), self.feed.in_flight());
            if self.checked.elapsed() >= Duration::from_secs(1) {
                self.queue.check_present()?;
                *self.floor.lock().unwrap() = self.feed.floor();
                self.checked = Instant::now();
            }
            if self.options.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if self.options.drain && self.in_pipeline == 0 && self.feed.is_settled() {
                if !self.uses_timers.load(Ordering::Relaxed) || (self.ended && !self.timers_left) {
                    return Ok(());
                }
                // Every event-time timer fires, and what that emits settles;
                // again while a stage had more due than it fires per batch.
                self.ended = true;
                self.timers_left = false;
                let end = self.watermarks.end();
                if !self.send(down, Vec::new(), Vec::new(), end) {
                    return Ok(());
                }
                continue;
            }
            // With batches in the pipeline, settlements are due too: the feed
            // is waited on for at most a millisecond, so that neither a new
            // message waits for a settlement nor a settlement for a message.
            let wait = Duration::from_millis(if self.in_pipeline > 0 { 1 } else { 50 });
            let fetch_started = Instant::now();
            let mut deliveries = self.feed.fetch(self.fetch_size, wait)?;
            if deliveries.is_empty() {
                if self.in_pipeline > 0 {
                    // Nothing new, or the feed is full (max_ack_pending) and
                    // returned at once: the rest of the wait is for settlements.
                    match settlements.recv_timeout(wait.saturating_sub(fetch_started.elapsed())) {
                        Ok(s) => {
                            self.apply(s);
                            self.commit_due()?;
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        // The sink stopped (its error is reported by the join):
                        // what is in flight will never settle.
                        Err(RecvTimeoutError::Disconnected) => return Ok(()),
                    }
                }
                if self.uses_timers.load(Ordering::Relaxed) && self.in_pipeline == 0 && self.last_sent.elapsed() >= TICK && !self.ended {
                    // Processing time moves on, and idle partitions may
                    // let the watermark move on too.
                    let watermark = self.watermarks.current();
                    if !self.send(down, Vec::new(), Vec::new(), watermark) {
                        return Ok(());
                    }
                }
                continue;
            }
            // Wait to fill the batch only while the next thread is still
            // busy with an earlier one: the batch would wait for it anyway.
            // Once it is free (or inline, where it always is), waiting would
            // only delay what came; batches waiting further down (for an
            // fsync, say) do not count.
            let fill_until = Instant::now() + self.fill_wait;
            while deliveries.len() < self.fetch_size && down.first_busy() {
                let step = fill_until.saturating_duration_since(Instant::now()).min(FILL_STEP);
                if step.is_zero() {
                    break;
                }
                let asked = Instant::now();
                let more = self.feed.fetch(self.fetch_size - deliveries.len(), step)?;
                if more.is_empty() && asked.elapsed() < step {
                    break; // the feed gives nothing more now (at its in-flight limit, or ended)
                }
                deliveries.extend(more);
            }
            if !self.applied.is_empty() {
                // Processed by an earlier run whose acknowledgement was lost with it.
                deliveries.retain(|d| {
                    let done = self.applied.contains(&(d.id.partition, d.id.offset));
                    if done {
                        self.feed.ack(d.id);
                    }
                    !done
                });
                if deliveries.is_empty() {
                    continue;
                }
            }
            let redelivered = deliveries.iter().filter(|d| d.msg.attempt > 1).count();
            self.stats.source_received(deliveries.len() as u64, redelivered as u64);
            let now = now_us();
            self.stats.source_wait.record_all(deliveries.iter().filter_map(|d| since(now, d.appended_us)));
            let mut origins = Vec::with_capacity(deliveries.len());
            let mut items = Vec::with_capacity(deliveries.len());
            let tracks_watermark = self.tracks_watermark.load(Ordering::Relaxed);
            for (i, mut d) in deliveries.into_iter().enumerate() {
                let mut origin = Origin::delivery(d.id, d.msg.attempt);
                if self.event_time.is_read() {
                    match self.event_time.read(&d.msg) {
                        Ok(t) => d.msg.event_time_ms = t,
                        Err(reason) => {
                            self.stats.add_event_time_error();
                            origin.fate =
                                Fate::Dead { stage: "source".into(), kind: crate::event_time::KIND, reason, msg: d.msg, module: None };
                            origins.push(origin);
                            continue;
                        }
                    }
                }
                if tracks_watermark {
                    self.watermarks.observe(d.id.partition, d.msg.event_time_ms);
                }
                origins.push(origin);
                items.push(Item { origin: i, msg: d.msg });
            }
            let watermark = if tracks_watermark { self.watermarks.current() } else { None };
            if !self.send(down, origins, items, watermark) {
                return Ok(());
            }
        }
    }

    /// Send a batch down; `false` if downstream stopped (see
    /// [`Downstream::send`]).
    fn send(&mut self, down: &mut Downstream, origins: Vec<Origin>, items: Vec<Item>, watermark: Option<u64>) -> bool {
        self.in_pipeline += 1;
        self.last_sent = Instant::now();
        let batch = Batch { origins, items, routed: Vec::new(), writes: Vec::new(), watermark, sent: self.last_sent, timers_left: false };
        if !down.send(batch) {
            self.in_pipeline -= 1;
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_is_the_least_partition_behind_by_the_out_of_orderness_and_never_goes_back() {
        let mut w = Watermarks::new(Watermark { max_out_of_orderness_ms: 100, idle_timeout: None });
        assert_eq!(w.current(), None, "nothing seen yet");
        w.observe(0, 1000);
        w.observe(0, 900);
        assert_eq!(w.current(), Some(900), "latest 1000, less 100");
        w.observe(1, 500);
        assert_eq!(w.current(), Some(900), "a partition behind does not take it back");
        w.observe(0, 5000);
        assert_eq!(w.current(), Some(900), "partition 1 holds it at 400, below what it was");
        w.observe(1, 3000);
        assert_eq!(w.current(), Some(2900));
        assert_eq!(w.end(), Some(u64::MAX));
    }

    #[test]
    fn an_idle_partition_stops_holding_the_watermark_back() {
        let mut w = Watermarks::new(Watermark { max_out_of_orderness_ms: 0, idle_timeout: Some(Duration::from_millis(30)) });
        w.observe(0, 100);
        w.observe(1, 10_000);
        assert_eq!(w.current(), Some(100));
        std::thread::sleep(Duration::from_millis(40));
        w.observe(1, 10_001);
        assert_eq!(w.current(), Some(10_001), "partition 0 has been quiet for longer than idle_timeout_ms");
    }
}
