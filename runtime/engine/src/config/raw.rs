//! Phase one: the pipeline file exactly as written, checked only for shape.
//! Every table denies unknown fields so a typo is an error, not a default.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    pub pipeline: RawPipeline,
    pub source: RawSource,
    #[serde(default, deserialize_with = "one_or_many")]
    pub stage: Vec<RawStage>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub sink: Vec<RawSink>,
    pub dead_letter: Option<RawDeadLetter>,
    #[serde(default)]
    pub topic: Vec<RawTopic>,
    pub nats: Option<RawNats>,
    pub watermark: Option<RawWatermark>,
    pub event_time: Option<RawEventTime>,
}

/// `[event_time]`: where each message's event time comes from.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEventTime {
    pub header: Option<String>,
    pub json: Option<String>,
    pub unit: Option<RawTimeUnit>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub(crate) enum RawTimeUnit {
    #[serde(rename = "s")]
    Seconds,
    #[serde(rename = "ms")]
    Millis,
    #[serde(rename = "us")]
    Micros,
    #[serde(rename = "ns")]
    Nanos,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RawLate {
    Process,
    Drop,
    DeadLetter,
}

/// `[watermark]`: how event time advances at the source.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWatermark {
    pub max_out_of_orderness_ms: Option<i64>,
    pub idle_timeout_ms: Option<i64>,
}

/// `[[sink]]` tables, or a single `[sink]` table as the natural way to
/// write one (the same for stages). Dispatches on the TOML shape rather than
/// trying each (as an untagged enum would), so an error inside the table
/// keeps its own message and place.
fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct OneOrMany<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for OneOrMany<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a table, or an array of tables")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Vec<T>, A::Error> {
            Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Vec<T>, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(|one| vec![one])
        }
    }
    d.deserialize_any(OneOrMany(std::marker::PhantomData))
}

/// `[nats]`: how to reach NATS, shared by every NATS source and sink.
/// Secrets are named by environment variable or file, never written here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNats {
    pub url: Option<String>,
    pub urls: Option<Vec<String>>,
    pub name: Option<String>,
    pub creds_file: Option<String>,
    pub nkey_seed_file: Option<String>,
    pub token_env: Option<String>,
    pub user: Option<String>,
    pub password_env: Option<String>,
    pub tls_ca_file: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    #[serde(default)]
    pub tls_required: bool,
    pub connect_timeout_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPipeline {
    pub name: String,
    pub data_dir: Option<String>,
    pub state_cache_bytes: Option<i64>,
    pub stage_threads: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum RawSource {
    /// A topic of the embedded queue, read by a consumer group.
    Queue { topic: String, group: Option<String>, start: Option<RawStart>, max_ack_pending: Option<i64>, commit_interval_ms: Option<i64> },
    /// Lines (or JSON lines) from standard input.
    Stdin { format: Option<RawFormat> },
    /// Lines (or JSON lines) from a file.
    File { path: String, format: Option<RawFormat> },
    /// Synthetic messages.
    Generator { count: Option<i64>, size: Option<i64>, rate: Option<i64>, keys: Option<i64>, key_size: Option<i64> },
    /// A JetStream stream through a durable pull consumer, or a core NATS
    /// subject with a queue group.
    Nats {
        stream: Option<String>,
        subjects: Option<Vec<String>>,
        consumer: Option<String>,
        start: Option<RawStart>,
        ack_wait_ms: Option<i64>,
        max_attempts: Option<i64>,
        backoff_ms: Option<Vec<i64>>,
        max_ack_pending: Option<i64>,
        single_process: Option<bool>,
        subject: Option<String>,
        queue_group: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawStart {
    Earliest,
    Latest,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStage {
    pub name: String,
    pub module: String,
    pub concurrency: Option<i64>,
    pub batch_size: Option<i64>,
    pub batch_timeout_ms: Option<i64>,
    pub max_timers_per_batch: Option<i64>,
    pub timeout_ms: Option<i64>,
    pub max_memory_bytes: Option<i64>,
    pub max_output_bytes: Option<i64>,
    pub max_batch_output_bytes: Option<i64>,
    pub max_output_key_bytes: Option<i64>,
    pub max_output_headers: Option<i64>,
    pub max_output_header_bytes: Option<i64>,
    pub max_state_key_bytes: Option<i64>,
    pub max_state_value_bytes: Option<i64>,
    pub max_state_write_bytes: Option<i64>,
    pub max_state_bytes: Option<i64>,
    pub max_timers: Option<i64>,
    pub log_lines_per_second: Option<i64>,
    pub log_burst_lines: Option<i64>,
    pub max_log_line_bytes: Option<i64>,
    pub max_counters: Option<i64>,
    pub max_counter_name_bytes: Option<i64>,
    pub max_attempts: Option<i64>,
    pub retry_backoff_ms: Option<i64>,
    pub max_fuel: Option<i64>,
    pub late: Option<RawLate>,
    pub allowed_lateness_ms: Option<i64>,
    #[serde(default)]
    pub tag_outputs: bool,
    #[serde(default)]
    pub grants: RawGrants,
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGrants {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub dirs: Vec<RawDir>,
    #[serde(default)]
    pub stderr: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDir {
    pub host: String,
    pub guest: String,
    #[serde(default)]
    pub writable: bool,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum RawSink {
    /// Publish to a topic of the embedded queue.
    Queue { name: Option<String>, from: Option<String>, topic: String },
    /// Print each message's payload as a line on standard output.
    Stdout { name: Option<String>, from: Option<String>, format: Option<RawFormat> },
    /// Append each message as a line to a file.
    File { name: Option<String>, from: Option<String>, path: String, format: Option<RawFormat> },
    /// Publish to a NATS subject: JetStream (awaiting the publish ack) or core.
    Nats { name: Option<String>, from: Option<String>, subject: String, stream: Option<String>, core: Option<bool> },
}

impl RawSink {
    pub(crate) fn name_and_from(&self) -> (&Option<String>, &Option<String>) {
        match self {
            RawSink::Queue { name, from, .. }
            | RawSink::Stdout { name, from, .. }
            | RawSink::File { name, from, .. }
            | RawSink::Nats { name, from, .. } => (name, from),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawFormat {
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDeadLetter {
    pub topic: Option<String>,
    pub subject: Option<String>,
    pub stream: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTopic {
    pub name: String,
    pub partitions: Option<i64>,
    pub fsync: Option<RawFsync>,
    pub fsync_interval_ms: Option<i64>,
    pub group_commit_us: Option<i64>,
    pub segment_bytes: Option<i64>,
    pub dedupe_window_ms: Option<i64>,
    pub max_age_ms: Option<i64>,
    pub max_bytes: Option<i64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RawFsync {
    Always,
    Interval,
    Never,
}
