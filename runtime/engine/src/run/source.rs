//! The source worker: pulls batches from the feed, hands them down, applies settlements, commits.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use weir_queue::Queue;

use super::RunOptions;
use crate::Result;
use crate::batch::{Batch, Fate, Item, Origin, Settlement};
use crate::source::Feed;
use crate::stats::{PipelineStats, now_us, since};

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
}

impl SourceWorker<'_> {
    pub(super) fn run(mut self, tx: SyncSender<Batch>, settlements: Receiver<Settlement>) -> Result<()> {
        let result = self.pull(&tx, &settlements);
        // Stop feeding; the stages and the sink finish what they hold, and
        // every settlement they send is applied before the final commit.
        drop(tx);
        while let Ok(s) = settlements.recv() {
            self.apply(s);
        }
        let committed = self.feed.commit();
        self.feed.close();
        result.and(committed)
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

    fn pull(&mut self, tx: &SyncSender<Batch>, settlements: &Receiver<Settlement>) -> Result<()> {
        loop {
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
                return Ok(());
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
                continue;
            }
            if deliveries.len() < self.fetch_size && !self.fill_wait.is_zero() {
                let more = self.feed.fetch(self.fetch_size - deliveries.len(), self.fill_wait)?;
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
            for (i, d) in deliveries.into_iter().enumerate() {
                origins.push(Origin { id: d.id, attempt: d.msg.attempt, fate: Fate::Ok });
                items.push(Item { origin: i, msg: d.msg });
            }
            self.in_pipeline += 1;
            if tx.send(Batch { origins, items, routed: Vec::new(), writes: Vec::new(), sent: Instant::now() }).is_err() {
                // A downstream thread stopped (its error is reported by the join).
                self.in_pipeline -= 1;
                return Ok(());
            }
        }
    }
}
