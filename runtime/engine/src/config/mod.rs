//! Pipeline files: parse (phase one, [`raw`]) then compile to a validated
//! [`Pipeline`] (phase two), reporting every error with file, line, column
//! and TOML path.

mod raw;
mod span;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use weir_host::{DirGrant, Grants, Limits};
use weir_queue::{Fsync, StartFrom, TopicConfig};

use raw::{RawFile, RawFormat, RawFsync, RawGrants, RawSink, RawSource, RawStart};
use span::{Locator, TomlPath};

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
    /// Where messages come from.
    pub source: Source,
    /// The stages, in order.
    pub stages: Vec<StageSpec>,
    /// Where the last stage's outputs, and routed outputs, go.
    pub sinks: Vec<SinkSpec>,
    /// Topic that receives dead-lettered messages.
    pub dead_letter_topic: String,
    /// Topics the pipeline creates if absent, with their settings.
    pub topics: BTreeMap<String, TopicConfig>,
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
    /// Longest wait to fill a batch.
    pub batch_timeout: Duration,
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
}

/// Defaults, shared with the reference documentation.
pub mod defaults {
    /// `stage.concurrency`.
    pub const CONCURRENCY: i64 = 1;
    /// `stage.batch_size`.
    pub const BATCH_SIZE: i64 = 64;
    /// `stage.batch_timeout_ms`.
    pub const BATCH_TIMEOUT_MS: i64 = 5;
    /// `stage.timeout_ms`.
    pub const TIMEOUT_MS: i64 = 10_000;
    /// `stage.max_memory_bytes`.
    pub const MAX_MEMORY_BYTES: i64 = 64 << 20;
    /// `stage.max_output_bytes`.
    pub const MAX_OUTPUT_BYTES: i64 = 4 << 20;
    /// `stage.max_attempts`.
    pub const MAX_ATTEMPTS: i64 = 5;
    /// `stage.retry_backoff_ms`.
    pub const RETRY_BACKOFF_MS: i64 = 1_000;
    /// `source.max_ack_pending`.
    pub const MAX_ACK_PENDING: i64 = 10_000;
}

struct Compiler<'a> {
    file: PathBuf,
    locator: Locator<'a>,
    errors: Vec<ConfigError>,
}

impl Compiler<'_> {
    fn error(&mut self, path: &TomlPath, message: impl Into<String>) {
        let location = self.locator.span(path).map(|s| self.locator.line_col(s.start));
        self.errors.push(ConfigError { file: self.file.clone(), location, path: path.to_string(), message: message.into() });
    }

    fn name(&mut self, path: &TomlPath, what: &'static str, value: &str) {
        if let Err(e) = weir_queue::validate_name(what, value) {
            let weir_queue::Error::Invalid { reason, .. } = e else { unreachable!() };
            self.error(path, format!("{what} {value:?} {reason}"));
        }
    }

    /// An integer option within `min..=max`, else `default`.
    fn int(&mut self, path: &TomlPath, value: Option<i64>, default: i64, min: i64, max: i64, unit: &str) -> i64 {
        let v = value.unwrap_or(default);
        if v < min || v > max {
            let range = if max == i64::MAX { format!("at least {min}") } else { format!("between {min} and {max}") };
            self.error(path, format!("must be {range}{unit}, got {v}"));
            return default;
        }
        v
    }
}

impl Compiler<'_> {
    /// `[stage.grants]`: environment values are read now; directories are
    /// relative to the pipeline file and must exist.
    fn grants(&mut self, path: &TomlPath, raw: &RawGrants, base: &Path) -> Grants {
        let mut env = Vec::new();
        for (i, name) in raw.env.iter().enumerate() {
            if name.is_empty() || name.contains('=') {
                self.error(&path.key("env").index(i), format!("{name:?} is not an environment variable name"));
            } else if let Ok(value) = std::env::var(name) {
                env.push((name.clone(), value));
            }
        }
        let mut dirs = Vec::new();
        for (i, d) in raw.dirs.iter().enumerate() {
            let dp = path.key("dirs").index(i);
            let host = base.join(&d.host);
            if !host.is_dir() {
                self.error(&dp.key("host"), format!("directory {} does not exist", host.display()));
            }
            if !d.guest.starts_with('/') {
                self.error(&dp.key("guest"), format!("must be an absolute guest path like \"/data\", got {:?}", d.guest));
            }
            dirs.push(DirGrant { host, guest: d.guest.clone(), writable: d.writable });
        }
        Grants { env, dirs, stderr: raw.stderr }
    }
}

/// Read and compile a pipeline file.
///
/// # Errors
/// Every problem found, each with its location; an unreadable file is one error.
pub fn load(file: &Path) -> Result<Pipeline, ConfigErrors> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.to_owned(),
            location: None,
            path: String::new(),
            message: format!("cannot read pipeline file: {e}"),
        }])
    })?;
    compile(file, &text)
}

/// Compile the text of a pipeline file; `file` is used for messages and to
/// resolve relative paths.
///
/// # Errors
/// Every problem found, each with its location.
pub fn compile(file: &Path, text: &str) -> Result<Pipeline, ConfigErrors> {
    let mut c = Compiler { file: file.to_owned(), locator: Locator::new(text), errors: Vec::new() };
    let raw: RawFile = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let message = e.message().trim_end().replace("expected i64", "expected an integer");
            let mut at = e.span().map(|s| s.start);
            // serde reports an unknown field at its table; point at the field itself.
            if let (Some(span), Some(field)) = (e.span(), message.strip_prefix("unknown field `").and_then(|m| m.split('`').next())) {
                at = c.locator.find_key_line(span, field).or(at);
            }
            let path = at.map(|o| c.locator.path_at(o).to_string()).unwrap_or_default();
            let location = at.map(|o| c.locator.line_col(o));
            return Err(ConfigErrors(vec![ConfigError { file: file.to_owned(), location, path, message }]));
        }
    };
    let base = file.parent().unwrap_or(Path::new("."));
    let root = TomlPath::default();

    let p = root.key("pipeline");
    c.name(&p.key("name"), "pipeline name", &raw.pipeline.name);
    let data_dir = raw.pipeline.data_dir.as_ref().map(|d| base.join(d));

    let mut topics: BTreeMap<String, TopicConfig> = BTreeMap::new();
    for (i, t) in raw.topic.iter().enumerate() {
        let tp = root.key("topic").index(i);
        c.name(&tp.key("name"), "topic name", &t.name);
        let partitions = c.int(&tp.key("partitions"), t.partitions, 1, 1, 4096, "") as u32;
        let fsync = match (t.fsync, t.fsync_interval_ms) {
            (Some(RawFsync::Always) | None, None) => Fsync::Always,
            (Some(RawFsync::Never), None) => Fsync::Never,
            (Some(RawFsync::Interval), ms) => {
                Fsync::Interval { ms: c.int(&tp.key("fsync_interval_ms"), ms, 100, 1, 3_600_000, " ms") as u64 }
            }
            (_, Some(_)) => {
                c.error(&tp.key("fsync_interval_ms"), "only valid with fsync = \"interval\"");
                Fsync::Always
            }
        };
        let d = TopicConfig::default();
        let group_commit_us = c.int(&tp.key("group_commit_us"), t.group_commit_us, 0, 0, 1_000_000, " µs") as u64;
        let segment_bytes = c.int(&tp.key("segment_bytes"), t.segment_bytes, d.segment_bytes as i64, 4096, 1 << 40, " bytes") as u64;
        let dedupe_window_ms =
            c.int(&tp.key("dedupe_window_ms"), t.dedupe_window_ms, d.dedupe_window_ms as i64, 0, 86_400_000, " ms") as u64;
        let max_age_ms = t.max_age_ms.map(|v| c.int(&tp.key("max_age_ms"), Some(v), 1, 1, i64::MAX, " ms") as u64);
        let max_bytes = t.max_bytes.map(|v| c.int(&tp.key("max_bytes"), Some(v), 4096, 4096, i64::MAX, " bytes") as u64);
        let config = TopicConfig { partitions, fsync, group_commit_us, segment_bytes, dedupe_window_ms, max_age_ms, max_bytes };
        if topics.insert(t.name.clone(), config).is_some() {
            c.error(&tp.key("name"), format!("topic {:?} is defined twice", t.name));
        }
    }

    let s = root.key("source");
    let source = match &raw.source {
        RawSource::Queue { topic, group, start, max_ack_pending } => {
            c.name(&s.key("topic"), "topic name", topic);
            if let Some(g) = group {
                c.name(&s.key("group"), "consumer group", g);
            }
            let group = group.clone().unwrap_or_else(|| raw.pipeline.name.clone());
            let max_ack_pending = c.int(&s.key("max_ack_pending"), *max_ack_pending, defaults::MAX_ACK_PENDING, 1, 10_000_000, "");
            Source::Queue {
                topic: topic.clone(),
                group,
                start: match start {
                    Some(RawStart::Latest) => StartFrom::Latest,
                    Some(RawStart::Earliest) | None => StartFrom::Earliest,
                },
                max_ack_pending: max_ack_pending as usize,
            }
        }
        RawSource::Stdin { format } => Source::Stdin { json: matches!(format, Some(RawFormat::Json)) },
        RawSource::File { path, format } => {
            let path = base.join(path);
            if !path.is_file() {
                c.error(&s.key("path"), format!("input file {} does not exist", path.display()));
            }
            Source::File { path, json: matches!(format, Some(RawFormat::Json)) }
        }
        RawSource::Generator { count, size, rate, keys } => Source::Generator(Generator {
            count: count.map(|n| c.int(&s.key("count"), Some(n), 1, 1, i64::MAX, "") as u64),
            size: c.int(&s.key("size"), *size, 100, 0, 64 << 20, " bytes") as usize,
            rate: rate.map(|r| c.int(&s.key("rate"), Some(r), 1, 1, i64::MAX, " messages/s") as u64),
            keys: c.int(&s.key("keys"), *keys, 0, 0, i64::MAX, "") as u64,
        }),
    };

    let mut stages = Vec::new();
    let mut names = HashSet::new();
    for (i, st) in raw.stage.iter().enumerate() {
        let sp = root.key("stage").index(i);
        c.name(&sp.key("name"), "stage name", &st.name);
        if !names.insert(st.name.clone()) {
            c.error(&sp.key("name"), format!("duplicate stage name {:?}", st.name));
        }
        let module = base.join(&st.module);
        if !module.is_file() {
            c.error(&sp.key("module"), format!("component file {} does not exist", module.display()));
        }
        let concurrency = c.int(&sp.key("concurrency"), st.concurrency, defaults::CONCURRENCY, 1, 1024, "");
        let batch_size = c.int(&sp.key("batch_size"), st.batch_size, defaults::BATCH_SIZE, 1, 100_000, "");
        let batch_timeout_ms = c.int(&sp.key("batch_timeout_ms"), st.batch_timeout_ms, defaults::BATCH_TIMEOUT_MS, 0, 3_600_000, " ms");
        let timeout_ms = c.int(&sp.key("timeout_ms"), st.timeout_ms, defaults::TIMEOUT_MS, 1, 3_600_000, " ms");
        let max_memory_bytes =
            c.int(&sp.key("max_memory_bytes"), st.max_memory_bytes, defaults::MAX_MEMORY_BYTES, 1 << 20, 4 << 30, " bytes");
        let max_output_bytes = c.int(&sp.key("max_output_bytes"), st.max_output_bytes, defaults::MAX_OUTPUT_BYTES, 1, 64 << 20, " bytes");
        let max_attempts = c.int(&sp.key("max_attempts"), st.max_attempts, defaults::MAX_ATTEMPTS, 1, 1_000_000, "");
        let retry_backoff_ms = c.int(&sp.key("retry_backoff_ms"), st.retry_backoff_ms, defaults::RETRY_BACKOFF_MS, 0, 86_400_000, " ms");
        let max_fuel = st.max_fuel.map(|f| c.int(&sp.key("max_fuel"), Some(f), 1, 1, i64::MAX, "") as u64);
        let grants = c.grants(&sp.key("grants"), &st.grants, base);
        let mut config = Vec::new();
        for (k, v) in &st.config {
            let value = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(x) => x.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Datetime(d) => d.to_string(),
                toml::Value::Array(_) | toml::Value::Table(_) => {
                    c.error(&sp.key("config").key(k), "must be a string, number, boolean or date");
                    continue;
                }
            };
            config.push((k.clone(), value));
        }
        stages.push(StageSpec {
            name: st.name.clone(),
            module,
            concurrency: concurrency as usize,
            batch_size: batch_size as usize,
            batch_timeout: Duration::from_millis(batch_timeout_ms as u64),
            limits: Limits {
                timeout: Duration::from_millis(timeout_ms as u64),
                max_memory_bytes: max_memory_bytes as usize,
                max_output_bytes: max_output_bytes as usize,
                max_fuel,
            },
            max_attempts: max_attempts as u32,
            retry_backoff: Duration::from_millis(retry_backoff_ms as u64),
            config,
            grants,
            module_at: c.locator.span(&sp.key("module")).map(|s| c.locator.line_col(s.start)),
        });
    }

    let mut sinks = Vec::new();
    if raw.sink.is_empty() {
        c.error(&root, "a pipeline needs at least one [[sink]]");
    }
    let mut sink_names = HashSet::new();
    for (i, sink) in raw.sink.iter().enumerate() {
        let kp = root.key("sink").index(i);
        let kind = match sink {
            RawSink::Queue { topic, .. } => {
                c.name(&kp.key("topic"), "topic name", topic);
                topics.entry(topic.clone()).or_default();
                Sink::Queue { topic: topic.clone() }
            }
            RawSink::Stdout { format, .. } => Sink::Stdout { json: matches!(format, Some(RawFormat::Json)) },
            RawSink::File { path, format, .. } => {
                let path = base.join(path);
                if !path.parent().is_some_and(Path::is_dir) {
                    c.error(&kp.key("path"), format!("the directory of {} does not exist", path.display()));
                }
                Sink::File { path, json: matches!(format, Some(RawFormat::Json)) }
            }
        };
        let (name, from) = sink.name_and_from();
        let name = name.clone().unwrap_or_else(|| format!("sink[{i}]"));
        if !sink_names.insert(name.clone()) {
            c.error(&kp.key("name"), format!("duplicate sink name {name:?}"));
        }
        if let Some(f) = from {
            c.name(&kp.key("from"), "topic name", f);
            if matches!(&source, Source::Queue { topic, .. } if topic == f) {
                c.error(&kp.key("from"), format!("topic {f:?} is the source: outputs routed to it go back into the pipeline"));
            }
        }
        sinks.push(SinkSpec { name, from: from.clone(), kind });
    }
    if !raw.sink.is_empty() && sinks.iter().all(|k| k.from.is_some()) {
        c.error(&root.key("sink"), "every sink has `from`: nothing takes the last stage's outputs");
    }
    if let Source::Queue { topic, .. } = &source {
        if sinks.iter().any(|k| matches!(&k.kind, Sink::Queue { topic: t } if t == topic)) {
            c.error(&s.key("topic"), format!("topic {topic:?} is both the source and a sink: the pipeline would feed itself"));
        }
        topics.entry(topic.clone()).or_default();
    }

    let dead_letter_topic = match &raw.dead_letter {
        Some(d) => {
            c.name(&root.key("dead_letter").key("topic"), "topic name", &d.topic);
            d.topic.clone()
        }
        None => format!("{}.dlq", raw.pipeline.name),
    };
    topics.entry(dead_letter_topic.clone()).or_default();

    c.errors.sort_by_key(|e| e.location);
    if c.errors.is_empty() {
        Ok(Pipeline { name: raw.pipeline.name, file: file.to_owned(), data_dir, source, stages, sinks, dead_letter_topic, topics })
    } else {
        Err(ConfigErrors(c.errors))
    }
}
