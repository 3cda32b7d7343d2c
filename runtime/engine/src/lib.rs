//! weir's pipeline engine: loads pipeline files and runs them on the
//! embedded queue with WebAssembly stages.
//!
//! ```no_run
//! use std::path::Path;
//! use weir_engine::{Engine, RunOptions};
//!
//! # fn main() -> Result<(), weir_engine::Error> {
//! let pipeline = weir_engine::config::load(Path::new("examples/pipelines/hello.toml"))?;
//! let queue = weir_queue::Queue::open(".weir")?;
//! let engine = Engine::new()?;
//! let stats = engine.run(&pipeline, &queue, &RunOptions { drain: true, ..RunOptions::default() })?;
//! println!("{} messages in", stats.received());
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod batch;
pub mod config;
mod feed;
pub mod nats;
mod run;
mod stats;

pub use config::{ConfigError, ConfigErrors, Pipeline};
pub use run::RunOptions;
pub use stats::{Latency, LatencySummary, PipelineStats, Report, SinkReport, SourceReport, StageReport, StageStats, resident_memory};

use weir_host::{Message, Runtime};

/// Errors from the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The pipeline file is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] weir_queue::Error),
    /// A component could not be loaded or initialised.
    #[error(transparent)]
    Host(#[from] weir_host::Error),
    /// A sink could not write.
    #[error("sink {sink}")]
    Sink {
        /// Which sink (its name, file or subject).
        sink: String,
        /// Why.
        #[source]
        cause: BoxError,
    },
    /// A source could not be opened, or cannot run as asked.
    #[error("source {name}")]
    Source {
        /// The source.
        name: String,
        /// Why.
        #[source]
        cause: BoxError,
    },
    /// NATS could not be reached or refused a request.
    #[error("NATS: {context}")]
    Nats {
        /// What weir was doing.
        context: String,
        /// The client's error, if the failure came from one.
        #[source]
        cause: Option<BoxError>,
    },
}

/// The cause of an [`Error`]: kept, so that callers see the whole chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl Error {
    pub(crate) fn sink(sink: impl Into<String>, cause: impl Into<BoxError>) -> Self {
        Error::Sink { sink: sink.into(), cause: cause.into() }
    }

    pub(crate) fn source(name: impl Into<String>, cause: impl Into<BoxError>) -> Self {
        Error::Source { name: name.into(), cause: cause.into() }
    }

    /// NATS failed doing `context`, with the client's error.
    pub(crate) fn nats(context: impl Into<String>, cause: impl Into<BoxError>) -> Self {
        Error::Nats { context: context.into(), cause: Some(cause.into()) }
    }

    /// NATS cannot be used as asked; `context` says why.
    pub(crate) fn nats_refused(context: impl Into<String>) -> Self {
        Error::Nats { context: context.into(), cause: None }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs pipelines; holds the WebAssembly runtime.
pub struct Engine {
    runtime: Runtime,
}

impl Engine {
    /// Create the WebAssembly runtime, caching compiled components in
    /// [`weir_host::default_cache_dir`] (when there is a home directory).
    ///
    /// # Errors
    /// If wasmtime cannot be set up on this machine.
    pub fn new() -> Result<Self> {
        Self::with_fuel(false)
    }

    /// An engine fit for `pipeline`: it meters fuel only if a stage sets
    /// `max_fuel` (metering slows every stage a little).
    ///
    /// # Errors
    /// If wasmtime cannot be set up on this machine.
    pub fn for_pipeline(pipeline: &Pipeline) -> Result<Self> {
        Self::with_fuel(pipeline.stages.iter().any(|s| s.limits.max_fuel.is_some()))
    }

    fn with_fuel(fuel: bool) -> Result<Self> {
        let options = weir_host::RuntimeOptions { cache_dir: weir_host::default_cache_dir(), fuel };
        Ok(Engine { runtime: Runtime::with_options(&options)? })
    }

    /// Check that every stage's component loads and implements the stage world.
    /// Errors name the stage, its module and where it is configured.
    ///
    /// # Errors
    /// One [`ConfigError`] per stage whose component is refused.
    ///
    /// Also refuses a stage that writes state behind a JetStream source that
    /// several processes may share: each process keeps its own state, so it
    /// would not be exactly-once across them (`single_process = true` is the
    /// operator's word that one process at a time runs the consumer).
    pub fn check_components(&self, pipeline: &Pipeline) -> Result<(), ConfigErrors> {
        let shared = match &pipeline.source {
            config::Source::Nats(config::NatsSource::JetStream(js)) => !js.single_process,
            _ => false,
        };
        let errors: Vec<ConfigError> = pipeline
            .stages
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let message = match self.runtime.load(&s.module) {
                    Err(e) => e.to_string(),
                    Ok(stage) if shared && stage.writes_state() => format!(
                        "stage `{}` keeps state (its component imports state-put or state-delete), and a JetStream consumer \
                         may be shared by several weir processes, each with its own state: it would not be exactly-once \
                         across them. Use a queue source, or set `single_process = true` in [source] if one process at a \
                         time runs this consumer",
                        s.name
                    ),
                    Ok(_) => return None,
                };
                Some(ConfigError { file: pipeline.file.clone(), location: s.module_at, path: format!("stage[{i}].module"), message })
            })
            .collect();
        if errors.is_empty() { Ok(()) } else { Err(ConfigErrors(errors)) }
    }

    /// Run `pipeline` on `queue` until `options.stop` is set or, with
    /// `options.drain`, until the source is exhausted and everything settled.
    ///
    /// # Errors
    /// A component that fails to load or initialise (before any message is
    /// pulled), or a queue or sink failure (nothing unwritten is acknowledged).
    pub fn run(&self, pipeline: &Pipeline, queue: &weir_queue::Queue, options: &RunOptions) -> Result<std::sync::Arc<PipelineStats>> {
        let prepared = run::prepare(pipeline, queue, &self.runtime)?;
        run::run(pipeline, queue, prepared, options)
    }
}

/// The message a stage sees for a stored record of `topic`.
pub fn message_from_record(topic: &str, r: weir_queue::StoredRecord, attempt: u32) -> Message {
    Message {
        topic: topic.to_owned(),
        partition: r.partition,
        offset: r.offset,
        key: r.key,
        payload: r.payload,
        headers: r.headers,
        timestamp_ms: r.timestamp_ms,
        attempt,
    }
}

/// One JSON object for a message: topic, partition, offset, timestamp, key,
/// headers and payload (text when UTF-8, else base64-free byte array).
pub fn json_line(msg: &Message) -> String {
    json_value(msg).to_string()
}

/// Bytes as JSON: a string when UTF-8, else an array of bytes.
fn bytes_json(b: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(b) {
        Ok(s) => serde_json::Value::String(s.to_owned()),
        Err(_) => serde_json::Value::from(b.to_vec()),
    }
}

fn headers_json(headers: &[(String, Vec<u8>)]) -> serde_json::Value {
    headers.iter().map(|(k, v)| (k.clone(), bytes_json(v))).collect::<serde_json::Map<_, _>>().into()
}

/// [`json_line`]'s object, to add to before writing.
pub fn json_value(msg: &Message) -> serde_json::Value {
    serde_json::json!({
        "topic": msg.topic,
        "partition": msg.partition,
        "offset": msg.offset,
        "timestamp_ms": msg.timestamp_ms,
        "key": msg.key.as_deref().map(bytes_json),
        "headers": headers_json(&msg.headers),
        "payload": bytes_json(&msg.payload),
    })
}

/// A record to publish, as the JSON [`record_from_json`] reads back.
pub fn record_json(r: &weir_queue::Record) -> serde_json::Value {
    let mut v = serde_json::json!({ "payload": bytes_json(&r.payload), "headers": headers_json(&r.headers) });
    if let Some(key) = &r.key {
        v["key"] = bytes_json(key);
    }
    if let Some(t) = r.timestamp_ms {
        v["timestamp_ms"] = t.into();
    }
    if let Some(id) = &r.id {
        v["id"] = id.clone().into();
    }
    v
}

/// A message written as JSON, in the form [`json_line`] writes: `payload` (a
/// string or an array of bytes), optional `key` (the same) and `headers` (an
/// object of the same), optional `timestamp_ms` (0 or absent: none) and `id`
/// (a publish with an id seen in the topic's dedupe window is dropped); other
/// fields are ignored.
///
/// # Errors
/// What is wrong with it, for the one who sent it.
pub fn record_from_json(v: &serde_json::Value) -> std::result::Result<weir_queue::Record, String> {
    let bytes = |v: &serde_json::Value| -> Option<Vec<u8>> {
        match v {
            serde_json::Value::String(s) => Some(s.clone().into_bytes()),
            serde_json::Value::Array(a) => a.iter().map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok())).collect(),
            _ => None,
        }
    };
    let Some(obj) = v.as_object() else { return Err("not a JSON object".into()) };
    let Some(payload) = obj.get("payload").and_then(bytes) else {
        return Err("needs a `payload`: a string or an array of bytes".into());
    };
    let key = match obj.get("key") {
        None | Some(serde_json::Value::Null) => None,
        Some(k) => Some(bytes(k).ok_or("`key` must be a string or an array of bytes")?),
    };
    let mut headers = Vec::new();
    if let Some(h) = obj.get("headers") {
        let h = h.as_object().ok_or("`headers` must be an object")?;
        for (k, v) in h {
            headers.push((k.clone(), bytes(v).ok_or_else(|| format!("header {k:?} must be a string or an array of bytes"))?));
        }
    }
    let timestamp_ms = obj.get("timestamp_ms").and_then(serde_json::Value::as_u64).filter(|&t| t > 0);
    let id = match obj.get("id") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("`id` must be a string".into()),
    };
    Ok(weir_queue::Record { key, headers, payload, timestamp_ms, id })
}

/// The records of an HTTP publish body, by its content type: a JSON message
/// or an array of them (`application/json`), one message per line
/// (`application/x-ndjson`, `application/jsonl`), or (any other type) the
/// raw body as one payload, with its key, id and headers taken from the
/// HTTP headers `Weir-Key`, `Weir-Id` and `Weir-Header-NAME` (`headers`:
/// lower-case names and values).
///
/// # Errors
/// What is wrong and where (`message [2]: ...`, `line 3: ...`).
pub fn records_from_body<'a>(
    content_type: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    body: &[u8],
) -> std::result::Result<Vec<weir_queue::Record>, String> {
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let message = |v: &serde_json::Value, at: String| record_from_json(v).map_err(|e| format!("{at}: {e}"));
    match mime.as_str() {
        "application/json" => {
            let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
            match &v {
                serde_json::Value::Array(items) => items.iter().enumerate().map(|(i, m)| message(m, format!("message [{i}]"))).collect(),
                _ => Ok(vec![message(&v, "message".into())?]),
            }
        }
        "application/x-ndjson" | "application/jsonl" => body
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
            .map(|(i, line)| {
                let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| format!("line {}: malformed JSON: {e}", i + 1))?;
                message(&v, format!("line {}", i + 1))
            })
            .collect(),
        _ => {
            let mut r = weir_queue::Record::new(body.to_vec());
            for (name, value) in headers {
                if name == "weir-key" {
                    r.key = Some(value.to_vec());
                } else if name == "weir-id" {
                    r.id = Some(String::from_utf8_lossy(value).into_owned());
                } else if let Some(h) = name.strip_prefix("weir-header-") {
                    r.headers.push((h.to_owned(), value.to_vec()));
                }
            }
            Ok(vec![r])
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_record_survives_json_both_ways() {
        let r = weir_queue::Record {
            key: Some(b"k".to_vec()),
            headers: vec![("h".into(), vec![0xff, 1]), ("t".into(), b"text".to_vec())],
            payload: vec![0, 159, 146, 150],
            timestamp_ms: Some(7),
            id: Some("id-1".into()),
        };
        let back = super::record_from_json(&super::record_json(&r)).unwrap();
        assert_eq!((back.key, back.headers, back.payload, back.timestamp_ms, back.id), (r.key, r.headers, r.payload, r.timestamp_ms, r.id));
    }
}
