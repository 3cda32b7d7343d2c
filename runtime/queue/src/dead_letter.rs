//! Dead letters: where they go by default and the headers that say why.
//! The queue's consumer writes them (attempts used up, rejections), and so
//! does the engine (stage failures, routing, outputs a sink refuses), the
//! same way.

/// weir's one rule for default dead-letter topics: `OWNER.dlq`, where the
/// owner is what reads — a pipeline (its name), or a consumer group outside
/// a pipeline (the topic it reads). On NATS, a pipeline's dead letters go to
/// the subject `weir.dlq.PIPELINE` instead (subjects nest by dots).
pub fn dead_letter_topic(owner: &str) -> String {
    format!("{owner}.dlq")
}

/// Header names on dead-lettered records.
pub mod dlq_headers {
    /// Why the message was dead-lettered.
    pub const REASON: &str = "weir.reason";
    /// The topic it was read from.
    pub const SOURCE_TOPIC: &str = "weir.source.topic";
    /// Its partition there.
    pub const SOURCE_PARTITION: &str = "weir.source.partition";
    /// Its offset there.
    pub const SOURCE_OFFSET: &str = "weir.source.offset";
    /// How many times it was delivered.
    pub const ATTEMPTS: &str = "weir.attempts";
    /// The kind of failure (set by the engine: guest, trap, timeout, ...).
    pub const ERROR_KIND: &str = "weir.error-kind";
    /// Where it failed (set by the engine: a stage name, `routing`, `source`).
    pub const STAGE: &str = "weir.stage";
    /// Set when the dead letter was too large to store whole: the payload
    /// length that was dropped.
    pub const PAYLOAD_DROPPED: &str = "weir.payload-dropped";
    /// The SHA-256 of the component version of the stage that failed it.
    pub const MODULE: &str = "weir.module";
    /// Every header above: what a redrive takes off.
    pub const ALL: [&str; 9] =
        [REASON, SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET, ATTEMPTS, ERROR_KIND, STAGE, PAYLOAD_DROPPED, MODULE];
}
