//! Where a run's messages come from, one file per kind, each behind
//! [`Feed`]:
//!
//! | kind | file | ids survive a restart |
//! | --- | --- | --- |
//! | a consumer group of the embedded queue | `queue.rs` | yes |
//! | a JetStream durable consumer, or a core NATS subject | `nats.rs` | JetStream: yes; core: no |
//! | standard input, a file | `lines.rs` | no |
//! | the generator | `generator.rs` | no |
//!
//! The kinds without durable ids are *ephemeral*: a reader thread of their
//! own fills a bounded channel that [`memory::MemoryFeed`] takes from, so a
//! slow pipeline slows the reader and memory stays flat. It keeps what it
//! delivered until it is settled and redelivers retried and released
//! messages itself, like a consumer group, but nothing of it survives the
//! run: a restart reads the input again. Use a queue topic (`weir produce`)
//! for input that must be resumable.

use std::sync::Arc;
use std::time::Duration;

use weir_queue::{DeliveryId, Queue};

use crate::batch::Fetched;
use crate::config::{DeadLetterTo, NatsSource, Pipeline, Source};
use crate::nats::Nats;
use crate::{Error, Result};

mod generator;
mod lines;
mod memory;
mod nats;
mod queue;

/// A source as the source worker drives it: fetch deliveries, settle each
/// one, commit progress.
pub(crate) trait Feed {
    /// Up to `max` deliveries, waiting up to `wait` for the first.
    fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Fetched>>;

    /// Done with: never delivered again.
    fn ack(&mut self, id: DeliveryId);

    /// Settled as a dead letter (already published to the dead-letter
    /// destination): no more deliveries.
    fn term(&mut self, id: DeliveryId) {
        self.ack(id);
    }

    /// Deliver again after `delay`, charging an attempt.
    fn nak(&mut self, id: DeliveryId, delay: Duration);

    /// Deliver again without charging an attempt (JetStream counts one anyway).
    fn release(&mut self, id: DeliveryId);

    /// Make the settlements so far durable where the source keeps them.
    fn commit(&mut self) -> Result<()> {
        Ok(())
    }

    /// How long settlements may wait for [`Feed::commit`] while batches are
    /// in flight (they are committed at once when the pipeline is idle, and
    /// always before the run ends). Zero: after every settlement.
    fn commit_interval(&self) -> Duration {
        Duration::ZERO
    }

    /// After the last commit: make sure what was committed reached the source.
    fn close(&mut self) {}

    /// Per partition, messages not yet consumed (JetStream: not yet
    /// delivered); `None` for ephemeral feeds.
    fn lag(&mut self) -> Option<Vec<u64>> {
        None
    }

    /// Per partition, the offset below which the source never delivers
    /// again; `None` for ephemeral feeds.
    fn floor(&mut self) -> Option<Vec<u64>> {
        None
    }

    /// Delivered and not yet settled.
    fn in_flight(&self) -> usize;

    /// Nothing more to read and nothing unsettled.
    fn is_settled(&mut self) -> bool;

    /// Whether delivery ids name the same message after a restart (so the
    /// state store's applied set can be trusted).
    fn has_durable_ids(&self) -> bool {
        false
    }
}

/// What [`open`] needs besides the pipeline.
pub(crate) struct OpenOptions<'a> {
    pub(crate) queue: &'a Queue,
    pub(crate) nats: Option<&'a Arc<Nats>>,
    /// The run ends once the source is drained: refused for sources without an end.
    pub(crate) drain: bool,
    /// Messages the source worker asks for per fetch.
    pub(crate) fetch_size: usize,
    /// The run's counters: input lines that are not messages count as
    /// received and dead-lettered.
    pub(crate) stats: Arc<crate::stats::PipelineStats>,
}

/// Open `pipeline`'s source.
pub(crate) fn open(pipeline: &Pipeline, o: OpenOptions<'_>) -> Result<Box<dyn Feed>> {
    let max_attempts = pipeline.stages.iter().map(|s| s.max_attempts).max().unwrap_or(5);
    let source = &pipeline.source;
    let connection = || o.nats.expect("a NATS source has a connection");
    // Ephemeral kinds: a reader thread feeding memory.
    let rx = match source {
        Source::Queue { .. } => return Ok(Box::new(queue::open(pipeline, o.queue, max_attempts)?)),
        Source::Nats(NatsSource::JetStream(js)) => {
            let attempts = js.max_attempts.unwrap_or(max_attempts);
            return Ok(Box::new(nats::JetStreamFeed::open(connection(), js, attempts, o.fetch_size)?));
        }
        Source::Nats(NatsSource::Core { .. }) if o.drain => {
            return Err(Error::source_failed(
                source.name(),
                "a core NATS subject has no end to drain to; use a JetStream source (`stream`) or stop with Ctrl-C",
            ));
        }
        Source::Nats(NatsSource::Core { subject, queue_group }) => nats::read_core(connection(), subject, queue_group.as_deref())?,
        Source::Stdin { json } => lines::read_stdin(*json),
        Source::File { path, json } => lines::read_file(path, *json).map_err(|e| Error::source_failed(source.name(), e))?,
        Source::Generator(g) => generator::spawn(g.clone()),
    };
    // Lines that are not messages go to the dead-letter topic at once.
    let dead_letter = match &pipeline.dead_letter {
        DeadLetterTo::Topic(t) => Some((o.queue.clone(), t.clone())),
        DeadLetterTo::Nats { .. } => None,
    };
    let max_in_flight = crate::config::defaults::MAX_ACK_PENDING as usize;
    Ok(Box::new(memory::MemoryFeed::new(source.name(), rx, max_in_flight, dead_letter, o.stats)))
}
