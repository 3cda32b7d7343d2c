//! Pipeline files: parse (phase one, [`raw`]) then compile to a validated
//! [`Pipeline`] (phase two), reporting every error with file, line, column
//! and TOML path.

mod compile;
mod raw;
mod span;

pub use compile::{compile, load};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use weir_host::{Grants, Limits};
use weir_queue::{StartFrom, TopicConfig};

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub location: Option<(usize, usize)>,
    /// TOML path such as `stage[1].timeout_ms`, empty for the whole file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.location {
            write!(f, ":{line}:{col}")?;
        }
        if self.path.is_empty() { write!(f, ": {}", self.message) } else { write!(f, ": {}: {}", self.path, self.message) }
    }
}

/// Every problem found in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Its name.
    pub name: String,
    /// The file it was loaded from.
    pub file: PathBuf,
    /// `[pipeline] data_dir`, resolved against the file's directory.
    pub data_dir: Option<PathBuf>,
    /// `[pipeline] state_cache_bytes`: memory for stage state read from disk.
    pub state_cache_bytes: usize,
    /// `[pipeline] stage_threads`: threads the stages run on, `None` for
    /// one per stage, 0 for the source's (see [`Pipeline::stage_threads`]).
    pub stage_threads: Option<usize>,
    /// Where messages come from.
    pub source: Source,
    /// The stages, in order.
    pub stages: Vec<StageSpec>,
    /// Where the last stage's outputs, and routed outputs, go.
    pub sinks: Vec<SinkSpec>,
    /// Where dead-lettered messages go.
    pub dead_letter: DeadLetterTo,
    /// Topics the pipeline creates if absent, with their settings.
    pub topics: BTreeMap<String, TopicConfig>,
    /// `[nats]`: set when a source, sink or the dead letters use NATS.
    pub nats: Option<NatsConnection>,
    /// `[watermark]`: how event time advances.
    pub watermark: Watermark,
    /// `[event_time]`: where a message's event time is read from.
    pub event_time: EventTime,
}

/// Where the source reads each message's event time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EventTime {
    /// The producer's timestamp (the default).
    #[default]
    Producer,
    /// A header's value.
    Header {
        /// The header's name.
        name: String,
        /// The unit of a number.
        unit: TimeUnit,
    },
    /// A field of the JSON payload.
    Json {
        /// A JSON pointer (RFC 6901), like `/ts`.
        pointer: String,
        /// The unit of a number.
        unit: TimeUnit,
    },
}

/// The unit of an event time given as a number (a string may also be an
/// RFC 3339 time, which says its own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TimeUnit {
    /// `s`.
    Seconds,
    /// `ms` (the default).
    #[default]
    Millis,
    /// `us`.
    Micros,
    /// `ns`.
    Nanos,
}

/// What a stage does with a late message: one whose event time is behind
/// the stage's watermark by more than `allowed_lateness_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Late {
    /// What is done with a late message.
    pub action: LateAction,
    /// How far behind the watermark a message may be without being late, ms.
    pub allowed_lateness_ms: u64,
}

/// `late = "process" | "drop" | "dead-letter"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LateAction {
    /// Handle it like any message (counted as late).
    #[default]
    Process,
    /// Settle it without calling the stage (counted).
    Drop,
    /// Dead-letter it, error kind `late`.
    DeadLetter,
}

/// How the source turns event times into a watermark: per partition, the
/// latest event time seen minus `max_out_of_orderness`; the pipeline's is
/// the least of its partitions', leaving out a partition quiet for
/// `idle_timeout` (when set).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watermark {
    /// How far behind the latest event time a message may still arrive
    /// without being late, ms.
    pub max_out_of_orderness_ms: u64,
    /// A partition without messages for this long no longer holds the
    /// watermark back; `None`: never.
    pub idle_timeout: Option<Duration>,
}

impl Pipeline {
    /// Whether any part of the pipeline talks to NATS.
    pub fn uses_nats(&self) -> bool {
        matches!(self.source, Source::Nats(_))
            || matches!(self.dead_letter, DeadLetterTo::Nats { .. })
            || self.sinks.iter().any(|s| matches!(s.kind, Sink::Nats { .. }))
    }

    /// How many threads the stages run on: `stage_threads` if set (at
    /// most one per stage), else one per stage. Consecutive stages share a
    /// thread: a batch goes through them in turn, with no hand-off. 0: the
    /// stages and the sinks run on the source's thread.
    pub fn stage_threads(&self) -> usize {
        match self.stage_threads {
            Some(0) => 0,
            n => n.unwrap_or(self.stages.len()).clamp(1, self.stages.len().max(1)),
        }
    }
}

/// Where dead letters go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterTo {
    /// A topic of the embedded queue.
    Topic(String),
    /// A NATS subject, published through JetStream.
    Nats {
        /// The subject.
        subject: String,
        /// Created with `subjects` if no stream captures `subject`.
        stream: Option<StreamSpec>,
    },
}

impl std::fmt::Display for DeadLetterTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeadLetterTo::Topic(t) => write!(f, "topic `{t}`"),
            DeadLetterTo::Nats { subject, .. } => write!(f, "NATS subject `{subject}`"),
        }
    }
}

/// A JetStream stream to create if absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// Its name.
    pub name: String,
    /// The subjects it captures.
    pub subjects: Vec<String>,
}

/// `[nats]`: how to reach the NATS servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConnection {
    /// Server URLs, tried in turn (and on reconnect).
    pub urls: Vec<String>,
    /// Client name shown by the server (`nats server report connections`).
    pub name: Option<String>,
    /// A `.creds` file (JWT and NKey seed).
    pub creds_file: Option<PathBuf>,
    /// A file holding an NKey seed.
    pub nkey_seed_file: Option<PathBuf>,
    /// A token, read from the environment variable `token_env` at load.
    pub token: Option<String>,
    /// User and password (the password read from `password_env` at load).
    pub user_password: Option<(String, String)>,
    /// A CA certificate (PEM) to trust.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Refuse to connect without TLS.
    pub tls_required: bool,
    /// How long to wait for a server to answer when connecting.
    pub connect_timeout: Duration,
}

impl NatsConnection {
    /// Plain connection to `urls` (comma-separated), defaults for the rest.
    pub fn to(urls: &str) -> Self {
        NatsConnection {
            urls: urls.split(',').map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect(),
            name: None,
            creds_file: None,
            nkey_seed_file: None,
            token: None,
            user_password: None,
            tls_ca_file: None,
            tls_client: None,
            tls_required: false,
            connect_timeout: Duration::from_millis(defaults::NATS_CONNECT_TIMEOUT_MS as u64),
        }
    }
}

/// `[source] type = "nats"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsSource {
    /// A stream read through a durable pull consumer: at-least-once.
    JetStream(JetStreamSource),
    /// A core NATS subject: fire and forget, shared by a queue group.
    Core {
        /// The subject (wildcards allowed).
        subject: String,
        /// Processes in the same queue group share the messages.
        queue_group: Option<String>,
    },
}

/// A JetStream source: the stream and the durable consumer's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamSource {
    /// The stream; created with `subjects` if absent.
    pub stream: String,
    /// Subjects of a stream created here; also the consumer's filter.
    pub subjects: Vec<String>,
    /// Durable consumer name, shared by every process of the pipeline.
    pub consumer: String,
    /// Where a new consumer starts.
    pub start: StartFrom,
    /// Redelivery after this long without an ack (kept alive by progress acks
    /// while a message is in the pipeline).
    pub ack_wait: Duration,
    /// The consumer's MaxDeliver; `None`: the stages' largest `max_attempts`.
    pub max_attempts: Option<u32>,
    /// Redelivery delays after ack-wait expiries (the consumer's BackOff).
    pub backoff: Vec<Duration>,
    /// Bound on delivered, unacknowledged messages across all processes.
    pub max_ack_pending: usize,
    /// The operator's word that one process at a time runs this consumer,
    /// which stages that keep state need (their state lives in each
    /// process's data directory).
    pub single_process: bool,
}

/// A pipeline's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A topic of the embedded queue.
    Queue {
        /// The topic.
        topic: String,
        /// The consumer group (defaults to the pipeline name).
        group: String,
        /// Where a new group starts.
        start: StartFrom,
        /// Bound on delivered, unsettled messages.
        max_ack_pending: usize,
        /// How long settlements may wait to be committed to the group's
        /// offsets while batches are in flight.
        commit_interval: Duration,
    },
    /// Lines from standard input, read until it closes.
    Stdin {
        /// Each line is a payload, or a JSON message.
        json: bool,
    },
    /// Lines of a file, read once per run.
    File {
        /// The file, resolved against the pipeline file's directory.
        path: PathBuf,
        /// Each line is a payload, or a JSON message.
        json: bool,
    },
    /// Synthetic messages, for benchmarks and tests.
    Generator(Generator),
    /// NATS: a JetStream stream or a core subject.
    Nats(NatsSource),
}

impl Source {
    /// What the messages' `topic` field says, and what names the source's
    /// state and dead letters.
    pub fn name(&self) -> String {
        match self {
            Source::Queue { topic, .. } => topic.clone(),
            Source::Stdin { .. } => "stdin".into(),
            Source::File { path, .. } => path.file_name().map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned()),
            Source::Generator(_) => "generator".into(),
            Source::Nats(NatsSource::JetStream(js)) => js.stream.clone(),
            Source::Nats(NatsSource::Core { subject, .. }) => subject.clone(),
        }
    }
}

/// `[source] type = "generator"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generator {
    /// Messages to make; `None` for no end.
    pub count: Option<u64>,
    /// Payload bytes per message.
    pub size: usize,
    /// Messages per second; `None` for as fast as the pipeline takes them.
    pub rate: Option<u64>,
    /// Distinct keys (`k0`, `k1`, ...) cycled through; 0 for no key.
    pub keys: u64,
    /// Key length in bytes: the number is zero-padded after the `k` up to
    /// it (`k000…042`); 0 (or too short for the number) for no padding.
    pub key_size: usize,
    /// Messages to replay, cycled, instead of made-up ones (`weir bench
    /// --input`); `size` and `keys` do not apply to them.
    pub input: Option<Arc<Vec<weir_queue::Record>>>,
}

impl Generator {
    /// The `i`-th message: its index, then filler letters, `size` bytes in
    /// all (so payloads are distinct), keyed `k{i % keys}` (padded to `key_size`) if `keys` > 0;
    /// or, replaying an input, its `i % len`-th message.
    pub fn record(&self, i: u64) -> weir_queue::Record {
        if let Some(input) = self.input.as_deref().filter(|v| !v.is_empty()) {
            return input[(i % input.len() as u64) as usize].clone();
        }
        // The letter at byte j is 'a' + (i + j) % 26: runs of a doubled
        // alphabet, copied rather than made byte by byte (the generator is
        // what benchmarks measure pipelines against).
        const LETTERS: &[u8; 52] = b"abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz";
        let mut payload = Vec::with_capacity(self.size.max(20));
        // `{i:012}`, without the formatting machinery (a quarter of the
        // generator's time went to it).
        let mut digits = [b'0'; 20];
        let (mut n, mut at) = (i, digits.len());
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        payload.extend_from_slice(&digits[at.min(digits.len() - 12)..]);
        payload.truncate(self.size);
        while payload.len() < self.size {
            let from = (i as usize + payload.len()) % 26;
            let n = (self.size - payload.len()).min(26);
            payload.extend_from_slice(&LETTERS[from..from + n]);
        }
        let key = (self.keys > 0).then(|| format!("k{:0width$}", i % self.keys, width = self.key_size.saturating_sub(1)).into_bytes());
        weir_queue::Record { key, headers: Vec::new(), payload, timestamp_us: None, id: None }
    }
}

/// A pipeline's sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSpec {
    /// Its name (`sink[i]` unless set), for logs and metrics.
    pub name: String,
    /// `None`: the last stage's outputs. `Some(topic)`: the outputs routed to
    /// that topic instead.
    pub from: Option<String>,
    /// Where the messages go.
    pub kind: Sink,
}

/// Where a sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// Publish to a topic of the embedded queue.
    Queue {
        /// The topic.
        topic: String,
    },
    /// Print to standard output.
    Stdout {
        /// Payload as text, or one JSON object per message.
        json: bool,
    },
    /// Append to a file (created if absent), synced before acknowledging.
    File {
        /// The file, resolved against the pipeline file's directory.
        path: PathBuf,
        /// Payload as text, or one JSON object per message.
        json: bool,
    },
    /// Publish to a NATS subject.
    Nats {
        /// The subject (no wildcards).
        subject: String,
        /// Created capturing `subject` if no stream does.
        stream: Option<String>,
        /// Core publish: no stream, no ack, no dedupe.
        core: bool,
    },
}

/// A validated stage.
#[derive(Debug, Clone)]
pub struct StageSpec {
    /// Unique name within the pipeline.
    pub name: String,
    /// The component file, resolved against the pipeline file's directory.
    pub module: PathBuf,
    /// Instances run in parallel.
    pub concurrency: usize,
    /// Most messages per call.
    pub batch_size: usize,
    /// Output bytes the stage may return for one source batch before the
    /// rest of the batch is deferred to a later one.
    pub max_batch_output_bytes: usize,
    /// Longest wait to fill a batch.
    pub batch_timeout: Duration,
    /// Most timers fired per source batch; the rest fire with later ones.
    pub max_timers_per_batch: usize,
    /// Per-call limits.
    pub limits: Limits,
    /// Deliveries before a retried message is dead-lettered.
    pub max_attempts: u32,
    /// Delay before a retried message is delivered again.
    pub retry_backoff: Duration,
    /// `[stage.config]`, flattened to strings.
    pub config: Vec<(String, String)>,
    /// `[stage.grants]`: capabilities beyond the empty sandbox.
    pub grants: Grants,
    /// Line and column of `module`, for errors about the component.
    pub module_at: Option<(usize, usize)>,
    /// `late` and `allowed_lateness_ms`; `None` when neither is set.
    pub late: Option<Late>,
    /// `tag_outputs = true`: each output carries the header `weir.module`,
    /// the SHA-256 of the component version that produced it.
    pub tag_outputs: bool,
}

impl StageSpec {
    /// Every limit of the stage as `(key, value, default, unit)`, by its
    /// pipeline-file key, for `weir validate` to list.
    pub fn limit_table(&self) -> Vec<(&'static str, u64, u64, &'static str)> {
        use defaults as d;
        let l = &self.limits;
        let n = |v: usize| v as u64;
        let mut rows = vec![
            ("timeout_ms", l.timeout.as_millis() as u64, d::TIMEOUT_MS, "ms"),
            ("max_memory_bytes", n(l.max_memory_bytes), d::MAX_MEMORY_BYTES, "bytes"),
            ("max_output_bytes", n(l.output.max_bytes), d::MAX_OUTPUT_BYTES, "bytes"),
            ("max_batch_output_bytes", n(self.max_batch_output_bytes), d::MAX_BATCH_OUTPUT_BYTES, "bytes per source batch"),
            ("max_output_key_bytes", n(l.output.max_key_bytes), d::MAX_OUTPUT_KEY_BYTES, "bytes"),
            ("max_output_headers", n(l.output.max_headers), d::MAX_OUTPUT_HEADERS, "headers"),
            ("max_output_header_bytes", n(l.output.max_header_bytes), d::MAX_OUTPUT_HEADER_BYTES, "bytes"),
            ("max_state_key_bytes", n(l.state.max_key_bytes), d::MAX_STATE_KEY_BYTES, "bytes"),
            ("max_state_value_bytes", n(l.state.max_value_bytes), d::MAX_STATE_VALUE_BYTES, "bytes"),
            ("max_state_write_bytes", n(l.state.max_write_bytes), d::MAX_STATE_WRITE_BYTES, "bytes per call"),
            ("max_state_bytes", n(l.state.max_bytes), d::MAX_STATE_BYTES, "bytes"),
            ("max_timers", n(l.state.max_timers), d::MAX_TIMERS, "timers"),
            ("log_lines_per_second", u64::from(l.log.lines_per_second), d::LOG_LINES_PER_SECOND, "lines/s"),
            ("log_burst_lines", u64::from(l.log.burst_lines), d::LOG_BURST_LINES, "lines"),
            ("max_log_line_bytes", n(l.log.max_line_bytes), d::MAX_LOG_LINE_BYTES, "bytes"),
            ("max_counters", n(l.counters.max_names), d::MAX_COUNTERS, "counters"),
            ("max_counter_name_bytes", n(l.counters.max_name_bytes), d::MAX_COUNTER_NAME_BYTES, "bytes"),
        ]
        .into_iter()
        .map(|(k, v, default, unit)| (k, v, default as u64, unit))
        .collect::<Vec<_>>();
        if let Some(fuel) = l.max_fuel {
            rows.insert(2, ("max_fuel", fuel, 0, "instructions per call (default: unmetered)"));
        }
        rows
    }
}

/// Defaults, shared with the reference documentation.
pub mod defaults {
    /// `stage.concurrency`.
    pub const CONCURRENCY: i64 = 1;
    /// `stage.batch_size`.
    pub const BATCH_SIZE: i64 = 64;
    /// `stage.batch_timeout_ms`.
    pub const BATCH_TIMEOUT_MS: i64 = 5;
    /// `stage.max_timers_per_batch`.
    pub const MAX_TIMERS_PER_BATCH: i64 = 8_192;
    /// `source.commit_interval_ms` (queue sources).
    pub const COMMIT_INTERVAL_MS: i64 = 100;
    /// `watermark.max_out_of_orderness_ms`.
    pub const MAX_OUT_OF_ORDERNESS_MS: i64 = 0;
    /// `stage.allowed_lateness_ms`.
    pub const ALLOWED_LATENESS_MS: i64 = 0;
    /// `stage.timeout_ms`.
    pub const TIMEOUT_MS: i64 = 10_000;
    /// `stage.max_memory_bytes`.
    pub const MAX_MEMORY_BYTES: i64 = 64 << 20;
    /// `stage.max_output_bytes`.
    pub const MAX_OUTPUT_BYTES: i64 = 4 << 20;
    /// `stage.max_batch_output_bytes`.
    pub const MAX_BATCH_OUTPUT_BYTES: i64 = 64 << 20;
    /// `stage.max_output_key_bytes`.
    pub const MAX_OUTPUT_KEY_BYTES: i64 = 16 << 10;
    /// `stage.max_output_headers`.
    pub const MAX_OUTPUT_HEADERS: i64 = 64;
    /// `stage.max_output_header_bytes`.
    pub const MAX_OUTPUT_HEADER_BYTES: i64 = 16 << 10;
    /// `stage.max_state_key_bytes`.
    pub const MAX_STATE_KEY_BYTES: i64 = 4 << 10;
    /// `stage.max_state_value_bytes`.
    pub const MAX_STATE_VALUE_BYTES: i64 = 1 << 20;
    /// `stage.max_state_write_bytes`.
    pub const MAX_STATE_WRITE_BYTES: i64 = 8 << 20;
    /// `stage.max_state_bytes`.
    pub const MAX_STATE_BYTES: i64 = 64 << 20;
    /// `stage.max_timers`.
    pub const MAX_TIMERS: i64 = 1_000_000;
    /// `stage.log_lines_per_second`.
    pub const LOG_LINES_PER_SECOND: i64 = 100;
    /// `stage.log_burst_lines`.
    pub const LOG_BURST_LINES: i64 = 1_000;
    /// `stage.max_log_line_bytes`.
    pub const MAX_LOG_LINE_BYTES: i64 = 4 << 10;
    /// `stage.max_counters`.
    pub const MAX_COUNTERS: i64 = 100;
    /// `stage.max_counter_name_bytes`.
    pub const MAX_COUNTER_NAME_BYTES: i64 = 128;
    /// `stage.max_attempts`.
    pub const MAX_ATTEMPTS: i64 = 5;
    /// `stage.retry_backoff_ms`.
    pub const RETRY_BACKOFF_MS: i64 = 1_000;
    /// `source.max_ack_pending`.
    pub const MAX_ACK_PENDING: i64 = 10_000;
    /// `nats.url`.
    pub const NATS_URL: &str = "nats://127.0.0.1:4222";
    /// `nats.connect_timeout_ms`.
    pub const NATS_CONNECT_TIMEOUT_MS: i64 = 5_000;
    /// `source.ack_wait_ms` (NATS).
    pub const NATS_ACK_WAIT_MS: i64 = 30_000;
    /// Default dead-letter subject prefix and stream for NATS sources.
    pub const NATS_DLQ_PREFIX: &str = "weir.dlq";
    /// The stream created to hold `weir.dlq.>` if none does.
    pub const NATS_DLQ_STREAM: &str = "WEIR_DLQ";
}

/// Whether the subject `pattern` (with `*` and `>` wildcards) matches the literal `subject`.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}
