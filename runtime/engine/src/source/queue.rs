//! A topic of the embedded queue, read through a consumer group: leases,
//! redelivery with backoff and the queue's own dead-letter backstop come
//! from [`weir_queue::Consumer`]; progress is the group's committed offsets.

use std::sync::Arc;
use std::time::Duration;

use weir_queue::{Consumer, ConsumerOptions, DeliveryId, Queue};

use super::Feed;
use crate::Result;
use crate::batch::Fetched;
use crate::config::{DeadLetterTo, Pipeline, Source};

/// Join the source's consumer group.
pub(super) fn open(pipeline: &Pipeline, queue: &Queue, max_attempts: u32) -> Result<QueueFeed> {
    let Source::Queue { topic, group, start, max_ack_pending, commit_interval } = &pipeline.source else { unreachable!("a queue source") };
    // Retries and dead letters are decided per stage; the queue's own limit only
    // backs them up. A lease must outlive the slowest batch: every stage may
    // replay a failed batch message by message, each up to its timeout.
    let slowest: Duration = pipeline.stages.iter().map(|s| s.limits.timeout * s.batch_size.min(64) as u32).sum();
    let options = ConsumerOptions {
        start: *start,
        max_ack_pending: *max_ack_pending,
        ack_wait: slowest.max(Duration::from_secs(60)),
        max_attempts,
        retry_backoff: pipeline.stages.iter().map(|s| s.retry_backoff).max().unwrap_or(Duration::from_secs(1)),
        // Dead letters to NATS are written by the pipeline; the queue's own
        // backstop keeps them in a topic.
        dead_letter: Some(match &pipeline.dead_letter {
            DeadLetterTo::Topic(t) => t.clone(),
            DeadLetterTo::Nats { .. } => weir_queue::dead_letter_topic(&pipeline.name),
        }),
    };
    Ok(QueueFeed { consumer: queue.consumer(topic, group, options)?, commit_interval: *commit_interval })
}

/// A consumer group of the embedded queue, as a feed.
pub(super) struct QueueFeed {
    consumer: Consumer,
    /// A commit replaces the group's offsets file durably (two fsyncs):
    /// once per settlement, it cost more than the pipeline's own work. A
    /// crash loses at most this much of committed progress; those messages
    /// are delivered again (outputs are at-least-once; stage state knows
    /// them by id and does not count them twice).
    commit_interval: Duration,
}

impl Feed for QueueFeed {
    fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Fetched>> {
        let deliveries = self.consumer.fetch(max, wait)?;
        let topic: Arc<str> = self.consumer.topic().into();
        Ok(deliveries.into_iter().map(|d| Fetched::from_delivery(&topic, d)).collect())
    }

    fn ack(&mut self, id: DeliveryId) {
        self.consumer.ack(id);
    }

    fn nak(&mut self, id: DeliveryId, delay: Duration) {
        self.consumer.nak(id, delay);
    }

    fn release(&mut self, id: DeliveryId) {
        self.consumer.release(id);
    }

    fn commit(&mut self) -> Result<()> {
        Ok(self.consumer.commit()?)
    }

    fn commit_interval(&self) -> Duration {
        self.commit_interval
    }

    fn lag(&mut self) -> Option<Vec<u64>> {
        Some(self.consumer.committed_lag())
    }

    /// The group's committed offsets.
    fn floor(&mut self) -> Option<Vec<u64>> {
        Some(self.consumer.committed())
    }

    fn in_flight(&self) -> usize {
        self.consumer.in_flight()
    }

    fn is_settled(&mut self) -> bool {
        self.consumer.is_settled()
    }

    fn has_durable_ids(&self) -> bool {
        true
    }
}
