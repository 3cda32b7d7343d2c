//! What travels down a running pipeline and back: a batch of source
//! deliveries (their origins and fates), the messages derived from them,
//! their state writes, the settlements the sink hands back to the source,
//! the dead letter's headers, and a delivery as a feed hands it over.
//! Shared by the runner, the feeds and NATS, which import nothing of each
//! other for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_host::{Output, PendingWrites};
use weir_queue::{Delivery, DeliveryId, Message, Record, dlq_headers};

/// What happened to a source message.
pub(crate) enum Fate {
    Ok,
    Retry {
        delay: Duration,
    },
    Dead {
        stage: String,
        kind: &'static str,
        reason: String,
        msg: Message,
        /// The stage's component version, when a stage failed it.
        module: Option<Arc<str>>,
    },
    /// Abandoned because state it depended on was aborted: redo it, without
    /// charging an attempt.
    Release,
    /// Its state writes were already committed (it is a redelivery): acknowledge only.
    Applied,
}

impl Fate {
    /// Whether the message is settled without being redone.
    pub(crate) fn is_final(&self) -> bool {
        matches!(self, Fate::Ok | Fate::Dead { .. } | Fate::Applied)
    }
}

pub(crate) struct Origin {
    pub(crate) id: DeliveryId,
    pub(crate) attempt: u32,
    pub(crate) fate: Fate,
    /// Not a source delivery but a timer that fired in a stage: nothing to
    /// settle at the source; its fate decides only whether the firing's
    /// state writes (the timer's delete among them) stand.
    pub(crate) timer: bool,
}

impl Origin {
    /// A delivery from the source.
    pub(crate) fn delivery(id: DeliveryId, attempt: u32) -> Origin {
        Origin { id, attempt, fate: Fate::Ok, timer: false }
    }
}

pub(crate) struct Item {
    pub(crate) origin: usize,
    pub(crate) msg: Message,
}

/// A stage is called with its items as they are: each lends its message.
impl std::borrow::Borrow<Message> for Item {
    fn borrow(&self) -> &Message {
        &self.msg
    }
}

pub(crate) struct Batch {
    pub(crate) origins: Vec<Origin>,
    /// Messages flowing to the next stage (or the sinks after the last).
    pub(crate) items: Vec<Item>,
    /// Outputs that named a topic: published there directly.
    pub(crate) routed: Vec<(usize, String, Output)>,
    /// State writes of the stateful calls made for this batch.
    pub(crate) writes: Vec<StateDelta>,
    /// The source's event-time watermark when it sent the batch, ms
    /// (`u64::MAX` once a finite source has ended).
    pub(crate) watermark: Option<u64>,
    /// When it was last handed to a channel (for queue-wait times).
    pub(crate) sent: Instant,
    /// A stage stopped firing its due timers after its most rounds for
    /// one batch: more batches are needed to fire the rest.
    pub(crate) timers_left: bool,
}

/// The state writes of one call and the origins of the messages it handled.
pub(crate) struct StateDelta {
    pub(crate) stage: usize,
    pub(crate) writes: Arc<PendingWrites>,
    pub(crate) origins: Vec<usize>,
}

pub(crate) struct Settlement {
    pub(crate) acks: Vec<DeliveryId>,
    /// Dead-lettered: published to the dead-letter destination, never again.
    pub(crate) dead: Vec<DeliveryId>,
    pub(crate) naks: Vec<(DeliveryId, Duration)>,
    pub(crate) releases: Vec<DeliveryId>,
    /// The batch's [`Batch::timers_left`].
    pub(crate) timers_left: bool,
}

/// Where and why a message was dead-lettered.
pub(crate) struct DeadLetter<'a> {
    pub(crate) stage: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) reason: String,
    /// The source's name (its topic, or `stdin`, ...).
    pub(crate) source: &'a str,
    pub(crate) id: DeliveryId,
    pub(crate) attempt: u32,
    /// The digest of the stage's component that failed it.
    pub(crate) module: Option<&'a str>,
}

impl DeadLetter<'_> {
    /// Say it in `rec`'s headers, the same way for every dead letter.
    pub(crate) fn add_headers(self, rec: &mut Record) {
        for (k, v) in [
            (dlq_headers::REASON, self.reason),
            (dlq_headers::ERROR_KIND, self.kind.to_owned()),
            (dlq_headers::STAGE, self.stage.to_owned()),
            (dlq_headers::SOURCE_TOPIC, self.source.to_owned()),
            (dlq_headers::SOURCE_PARTITION, self.id.partition.to_string()),
            (dlq_headers::SOURCE_OFFSET, self.id.offset.to_string()),
            (dlq_headers::ATTEMPTS, self.attempt.to_string()),
        ] {
            rec.headers.push((k.to_owned(), v.into_bytes()));
        }
        if let Some(m) = self.module {
            rec.headers.push((dlq_headers::MODULE.to_owned(), m.as_bytes().to_vec()));
        }
    }
}

/// A delivery as the pipeline takes it (its attempt is `msg.attempt`).
#[derive(Clone)]
pub(crate) struct Fetched {
    pub(crate) id: DeliveryId,
    /// When the source stored it (for the source-wait histogram).
    pub(crate) appended_us: u64,
    pub(crate) msg: Message,
}

impl Fetched {
    pub(crate) fn from_delivery(topic: &Arc<str>, d: Delivery) -> Fetched {
        Fetched {
            id: d.id(),
            appended_us: d.record.append_timestamp_ms.saturating_mul(1000),
            msg: Message::from_stored(topic.clone(), d.record, d.attempt),
        }
    }
}
