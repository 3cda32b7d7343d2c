//! Phase two of reading a pipeline file: the raw TOML structs compiled to a
//! validated [`Pipeline`], one method per section, every problem recorded
//! with its file, line, column and TOML path.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use weir_host::{DirGrant, Grants, Limits};
use weir_queue::{Fsync, StartFrom, TopicConfig, bounds};

use super::raw::{RawEventTime, RawFile, RawFormat, RawFsync, RawGrants, RawLate, RawSink, RawSource, RawStage, RawStart, RawTimeUnit};
use super::span::{Locator, TomlPath};
use super::{
    ConfigError, ConfigErrors, DeadLetterTo, EventTime, Generator, JetStreamSource, Late, LateAction, NatsConnection, NatsSource, Pipeline,
    Sink, SinkSpec, Source, StageSpec, StreamSpec, TimeUnit, Watermark, defaults, subject_matches,
};

mod nats;

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
    /// `[[topic]]`: settings of the topics the pipeline creates, within weir-queue's bounds.
    fn topics(&mut self, raw: &RawFile) -> BTreeMap<String, TopicConfig> {
        let root = TomlPath::default();
        let mut topics: BTreeMap<String, TopicConfig> = BTreeMap::new();
        for (i, t) in raw.topic.iter().enumerate() {
            let tp = root.key("topic").index(i);
            self.name(&tp.key("name"), "topic name", &t.name);
            // The bounds are weir-queue's, which every way of making a topic
            // checks; here they are reported at their line.
            let d = TopicConfig::default();
            let partitions = self.bounded(&tp.key("partitions"), t.partitions, 1, bounds::PARTITIONS, "") as u32;
            let policy = t.fsync.map(|f| match f {
                RawFsync::Always => "always",
                RawFsync::Interval => "interval",
                RawFsync::Never => "never",
            });
            // Only whether an interval is given matters to the parse; its
            // value is checked below, against the bounds, at its line.
            let fsync = match Fsync::parse(policy, t.fsync_interval_ms.map(|_| Fsync::DEFAULT_INTERVAL_MS)) {
                Ok(Fsync::Interval { .. }) => Fsync::Interval {
                    ms: self.bounded(
                        &tp.key("fsync_interval_ms"),
                        t.fsync_interval_ms,
                        Fsync::DEFAULT_INTERVAL_MS,
                        bounds::FSYNC_INTERVAL_MS,
                        " ms",
                    ),
                },
                Ok(fsync) => fsync,
                Err(_) => {
                    self.error(&tp.key("fsync_interval_ms"), "only valid with fsync = \"interval\"");
                    Fsync::Always
                }
            };
            let group_commit_us =
                self.bounded(&tp.key("group_commit_us"), t.group_commit_us, d.group_commit_us, bounds::GROUP_COMMIT_US, " µs");
            let segment_bytes = self.bounded(&tp.key("segment_bytes"), t.segment_bytes, d.segment_bytes, bounds::SEGMENT_BYTES, " bytes");
            let dedupe_window_ms =
                self.bounded(&tp.key("dedupe_window_ms"), t.dedupe_window_ms, d.dedupe_window_ms, bounds::DEDUPE_WINDOW_MS, " ms");
            let max_age_ms = t.max_age_ms.map(|v| self.bounded(&tp.key("max_age_ms"), Some(v), 0, bounds::MAX_AGE_MS, " ms"));
            let max_bytes = t.max_bytes.map(|v| self.bounded(&tp.key("max_bytes"), Some(v), 0, bounds::MAX_BYTES, " bytes"));
            let config = TopicConfig { partitions, fsync, group_commit_us, segment_bytes, dedupe_window_ms, max_age_ms, max_bytes };
            if topics.insert(t.name.clone(), config).is_some() {
                self.error(&tp.key("name"), format!("topic {:?} is defined twice", t.name));
            }
        }

        topics
    }

    /// `[source]`.
    fn source(&mut self, raw: &RawFile, base: &Path) -> Source {
        let root = TomlPath::default();
        let s = root.key("source");
        match &raw.source {
            RawSource::Queue { topic, group, start, max_ack_pending, commit_interval_ms } => {
                self.name(&s.key("topic"), "topic name", topic);
                if let Some(g) = group {
                    self.name(&s.key("group"), "consumer group", g);
                }
                let group = group.clone().unwrap_or_else(|| raw.pipeline.name.clone());
                let max_ack_pending = self.int(&s.key("max_ack_pending"), *max_ack_pending, defaults::MAX_ACK_PENDING, 1, 10_000_000, "");
                let commit_interval =
                    self.int(&s.key("commit_interval_ms"), *commit_interval_ms, defaults::COMMIT_INTERVAL_MS, 0, 60_000, " ms");
                Source::Queue {
                    topic: topic.clone(),
                    group,
                    start: match start {
                        Some(RawStart::Latest) => StartFrom::Latest,
                        Some(RawStart::Earliest) | None => StartFrom::Earliest,
                    },
                    max_ack_pending: max_ack_pending as usize,
                    commit_interval: Duration::from_millis(commit_interval as u64),
                }
            }
            RawSource::Stdin { format } => Source::Stdin { json: matches!(format, Some(RawFormat::Json)) },
            RawSource::File { path, format } => {
                let path = base.join(path);
                if !path.is_file() {
                    self.error(&s.key("path"), format!("input file {} does not exist", path.display()));
                }
                Source::File { path, json: matches!(format, Some(RawFormat::Json)) }
            }
            RawSource::Generator { count, size, rate, keys, key_size } => Source::Generator(Generator {
                input: None,
                count: count.map(|n| self.int(&s.key("count"), Some(n), 1, 1, i64::MAX, "") as u64),
                size: self.int(&s.key("size"), *size, 100, 0, 64 << 20, " bytes") as usize,
                rate: rate.map(|r| self.int(&s.key("rate"), Some(r), 1, 1, i64::MAX, " messages/s") as u64),
                keys: self.int(&s.key("keys"), *keys, 0, 0, i64::MAX, "") as u64,
                key_size: self.int(&s.key("key_size"), *key_size, 0, 0, 64 << 10, " bytes") as usize,
            }),
            RawSource::Nats {
                stream,
                subjects,
                consumer,
                start,
                ack_wait_ms,
                max_attempts,
                backoff_ms,
                max_ack_pending,
                single_process,
                subject,
                queue_group,
            } => match (stream, subject) {
                (Some(stream), None) => {
                    self.nats_name(&s.key("stream"), "stream name", stream);
                    let subjects = subjects.clone().unwrap_or_default();
                    for (i, subj) in subjects.iter().enumerate() {
                        self.subject(&s.key("subjects").index(i), subj, true);
                    }
                    let consumer = consumer.clone().unwrap_or_else(|| raw.pipeline.name.clone());
                    self.nats_name(&s.key("consumer"), "consumer name", &consumer);
                    let ack_wait_ms = self.int(&s.key("ack_wait_ms"), *ack_wait_ms, defaults::NATS_ACK_WAIT_MS, 100, 86_400_000, " ms");
                    let max_attempts = max_attempts.map(|n| self.int(&s.key("max_attempts"), Some(n), 1, 1, 1_000_000, "") as u32);
                    let mut backoff = Vec::new();
                    for (i, ms) in backoff_ms.iter().flatten().enumerate() {
                        backoff.push(Duration::from_millis(
                            self.int(&s.key("backoff_ms").index(i), Some(*ms), 1, 1, 86_400_000, " ms") as u64
                        ));
                    }
                    if let Some(n) = max_attempts
                        && !backoff.is_empty()
                        && backoff.len() >= n as usize
                    {
                        self.error(&s.key("backoff_ms"), format!("needs fewer delays than max_attempts ({n}), got {}", backoff.len()));
                    }
                    let max_ack_pending =
                        self.int(&s.key("max_ack_pending"), *max_ack_pending, defaults::MAX_ACK_PENDING, 1, 10_000_000, "");
                    Source::Nats(NatsSource::JetStream(JetStreamSource {
                        stream: stream.clone(),
                        subjects,
                        consumer,
                        start: match start {
                            Some(RawStart::Latest) => StartFrom::Latest,
                            Some(RawStart::Earliest) | None => StartFrom::Earliest,
                        },
                        ack_wait: Duration::from_millis(ack_wait_ms as u64),
                        max_attempts,
                        backoff,
                        max_ack_pending: max_ack_pending as usize,
                        single_process: single_process.unwrap_or(false),
                    }))
                }
                (None, Some(subject)) => {
                    self.subject(&s.key("subject"), subject, true);
                    let jetstream_only = [
                        ("subjects", subjects.is_some()),
                        ("consumer", consumer.is_some()),
                        ("start", start.is_some()),
                        ("ack_wait_ms", ack_wait_ms.is_some()),
                        ("max_attempts", max_attempts.is_some()),
                        ("backoff_ms", backoff_ms.is_some()),
                        ("max_ack_pending", max_ack_pending.is_some()),
                        ("single_process", single_process.is_some()),
                    ];
                    for (key, set) in jetstream_only {
                        if set {
                            self.error(&s.key(key), "applies to a JetStream source (`stream`), not to a core NATS `subject`");
                        }
                    }
                    if let Some(g) = queue_group {
                        self.nats_name(&s.key("queue_group"), "queue group", g);
                    }
                    Source::Nats(NatsSource::Core { subject: subject.clone(), queue_group: queue_group.clone() })
                }
                (Some(_), Some(_)) => {
                    self.error(&s.key("subject"), "set `stream` (JetStream, at-least-once) or `subject` (core NATS), not both");
                    Source::Nats(NatsSource::Core { subject: String::new(), queue_group: None })
                }
                (None, None) => {
                    self.error(&s, "a NATS source needs `stream` (JetStream, at-least-once) or `subject` (core NATS, fire and forget)");
                    Source::Nats(NatsSource::Core { subject: String::new(), queue_group: None })
                }
            },
        }
    }

    /// `[[stage]]`, and the instance pool they share.
    fn stages(&mut self, raw: &RawFile, base: &Path) -> Vec<StageSpec> {
        let root = TomlPath::default();
        let mut stages = Vec::new();
        let mut names = HashSet::new();
        for (i, st) in raw.stage.iter().enumerate() {
            let sp = root.key("stage").index(i);
            self.name(&sp.key("name"), "stage name", &st.name);
            if !names.insert(st.name.clone()) {
                self.error(&sp.key("name"), format!("duplicate stage name {:?}", st.name));
            }
            let module = base.join(&st.module);
            if !module.is_file() {
                self.error(&sp.key("module"), format!("component file {} does not exist", module.display()));
            }
            let max_concurrency = weir_host::MAX_INSTANCES as i64 - 1;
            let concurrency = self.int(&sp.key("concurrency"), st.concurrency, defaults::CONCURRENCY, 1, max_concurrency, "");
            let batch_size = self.int(&sp.key("batch_size"), st.batch_size, defaults::BATCH_SIZE, 1, 100_000, "");
            let batch_timeout_ms =
                self.int(&sp.key("batch_timeout_ms"), st.batch_timeout_ms, defaults::BATCH_TIMEOUT_MS, 0, 3_600_000, " ms");
            let max_timers_per_batch = self.int(
                &sp.key("max_timers_per_batch"),
                st.max_timers_per_batch,
                defaults::MAX_TIMERS_PER_BATCH,
                1,
                10_000_000,
                " timers",
            );
            let timeout_ms = self.int(&sp.key("timeout_ms"), st.timeout_ms, defaults::TIMEOUT_MS, 1, 3_600_000, " ms");
            let max_memory_bytes =
                self.int(&sp.key("max_memory_bytes"), st.max_memory_bytes, defaults::MAX_MEMORY_BYTES, 1 << 20, 4 << 30, " bytes");
            let limits = self.stage_limits(&sp, st);
            let max_batch_output_bytes = self.int(
                &sp.key("max_batch_output_bytes"),
                st.max_batch_output_bytes,
                defaults::MAX_BATCH_OUTPUT_BYTES,
                1,
                1 << 40,
                " bytes",
            );
            let max_attempts = self.int(&sp.key("max_attempts"), st.max_attempts, defaults::MAX_ATTEMPTS, 1, 1_000_000, "");
            let retry_backoff_ms =
                self.int(&sp.key("retry_backoff_ms"), st.retry_backoff_ms, defaults::RETRY_BACKOFF_MS, 0, 86_400_000, " ms");
            let max_fuel = st.max_fuel.map(|f| self.int(&sp.key("max_fuel"), Some(f), 1, 1, i64::MAX, "") as u64);
            let late = (st.late.is_some() || st.allowed_lateness_ms.is_some()).then(|| Late {
                action: match st.late {
                    None | Some(RawLate::Process) => LateAction::Process,
                    Some(RawLate::Drop) => LateAction::Drop,
                    Some(RawLate::DeadLetter) => LateAction::DeadLetter,
                },
                allowed_lateness_ms: self.int(
                    &sp.key("allowed_lateness_ms"),
                    st.allowed_lateness_ms,
                    defaults::ALLOWED_LATENESS_MS,
                    0,
                    365 * 86_400_000,
                    " ms",
                ) as u64,
            });
            let grants = self.grants(&sp.key("grants"), &st.grants, base);
            let mut config = Vec::new();
            for (k, v) in &st.config {
                let value = match v {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(n) => n.to_string(),
                    toml::Value::Float(x) => x.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    toml::Value::Datetime(d) => d.to_string(),
                    toml::Value::Array(_) | toml::Value::Table(_) => {
                        self.error(&sp.key("config").key(k), "must be a string, number, boolean or date");
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
                max_batch_output_bytes: max_batch_output_bytes as usize,
                batch_timeout: Duration::from_millis(batch_timeout_ms as u64),
                max_timers_per_batch: max_timers_per_batch as usize,
                limits: Limits {
                    timeout: Duration::from_millis(timeout_ms as u64),
                    max_memory_bytes: max_memory_bytes as usize,
                    max_fuel,
                    ..limits
                },
                max_attempts: max_attempts as u32,
                retry_backoff: Duration::from_millis(retry_backoff_ms as u64),
                config,
                grants,
                module_at: self.locator.span(&sp.key("module")).map(|s| self.locator.line_col(s.start)),
                late,
                tag_outputs: st.tag_outputs,
            });
        }

        // Each instance, and a spare per stage to replace a failed one, takes a
        // slot of the runtime's pool.
        let instances: usize = stages.iter().map(|s| s.concurrency + 1).sum();
        if instances > weir_host::MAX_INSTANCES {
            let last = root.key("stage").index(raw.stage.len() - 1).key("concurrency");
            self.error(
                &last,
                format!(
                    "the stages' concurrency adds up to {} instances, plus one spare per stage: {instances}; weir runs at most {}",
                    instances - stages.len(),
                    weir_host::MAX_INSTANCES
                ),
            );
        }

        stages
    }

    /// `[[sink]]`; queue sinks add their topics to `topics`.
    fn sinks(&mut self, raw: &RawFile, base: &Path, source: &Source, topics: &mut BTreeMap<String, TopicConfig>) -> Vec<SinkSpec> {
        let root = TomlPath::default();
        let mut sinks = Vec::new();
        if raw.sink.is_empty() {
            self.error(&root, "a pipeline needs at least one [[sink]]");
        }
        let mut sink_names = HashSet::new();
        for (i, sink) in raw.sink.iter().enumerate() {
            let kp = root.key("sink").index(i);
            let kind = match sink {
                RawSink::Queue { topic, .. } => {
                    self.name(&kp.key("topic"), "topic name", topic);
                    topics.entry(topic.clone()).or_default();
                    Sink::Queue { topic: topic.clone() }
                }
                RawSink::Stdout { format, .. } => Sink::Stdout { json: matches!(format, Some(RawFormat::Json)) },
                RawSink::File { path, format, .. } => {
                    let path = base.join(path);
                    if !path.parent().is_some_and(Path::is_dir) {
                        self.error(&kp.key("path"), format!("the directory of {} does not exist", path.display()));
                    }
                    Sink::File { path, json: matches!(format, Some(RawFormat::Json)) }
                }
                RawSink::Nats { subject, stream, core, .. } => {
                    self.subject(&kp.key("subject"), subject, false);
                    if let Some(st) = stream {
                        self.nats_name(&kp.key("stream"), "stream name", st);
                    }
                    let core = core.unwrap_or(false);
                    if core && stream.is_some() {
                        self.error(&kp.key("stream"), "a core publish (`core = true`) goes to no stream");
                    }
                    if let Source::Nats(NatsSource::JetStream(js)) = source
                        && js.subjects.iter().any(|p| subject_matches(p, subject))
                    {
                        self.error(
                            &kp.key("subject"),
                            format!("subject {subject:?} is captured by the source: the pipeline would feed itself"),
                        );
                    }
                    Sink::Nats { subject: subject.clone(), stream: stream.clone(), core }
                }
            };
            let (name, from) = sink.name_and_from();
            let name = name.clone().unwrap_or_else(|| format!("sink[{i}]"));
            if !sink_names.insert(name.clone()) {
                self.error(&kp.key("name"), format!("duplicate sink name {name:?}"));
            }
            if let Some(f) = from {
                self.name(&kp.key("from"), "topic name", f);
                if matches!(source, Source::Queue { topic, .. } if topic == f) {
                    self.error(&kp.key("from"), format!("topic {f:?} is the source: outputs routed to it go back into the pipeline"));
                }
            }
            sinks.push(SinkSpec { name, from: from.clone(), kind });
        }
        if !raw.sink.is_empty() && sinks.iter().all(|k| k.from.is_some()) {
            self.error(&root.key("sink"), "every sink has `from`: nothing takes the last stage's outputs");
        }
        sinks
    }

    /// `[dead_letter]`, or its default by the source (see [`weir_queue::dead_letter_topic`]).
    fn dead_letter(&mut self, raw: &RawFile, source: &Source) -> DeadLetterTo {
        let root = TomlPath::default();
        let dp = root.key("dead_letter");
        match raw.dead_letter.as_ref().map(|d| (&d.topic, &d.subject, &d.stream)) {
            Some((Some(topic), None, None)) => {
                self.name(&dp.key("topic"), "topic name", topic);
                DeadLetterTo::Topic(topic.clone())
            }
            Some((None, Some(subject), stream)) => {
                self.subject(&dp.key("subject"), subject, false);
                if let Some(st) = stream {
                    self.nats_name(&dp.key("stream"), "stream name", st);
                }
                if let Source::Nats(NatsSource::JetStream(js)) = source
                    && js.subjects.iter().any(|p| subject_matches(p, subject))
                {
                    self.error(
                        &dp.key("subject"),
                        format!("subject {subject:?} is captured by the source: dead letters would be redelivered"),
                    );
                }
                DeadLetterTo::Nats {
                    subject: subject.clone(),
                    stream: stream.as_ref().map(|name| StreamSpec { name: name.clone(), subjects: vec![subject.clone()] }),
                }
            }
            Some((Some(_), _, _)) => {
                self.error(&dp, "set `topic` (embedded queue) or `subject` (NATS), not both; `stream` goes with `subject`");
                DeadLetterTo::Topic(String::new())
            }
            Some((None, None, _)) => {
                self.error(&dp, "needs `topic` (embedded queue) or `subject` (NATS)");
                DeadLetterTo::Topic(String::new())
            }
            None if matches!(source, Source::Nats(_)) => DeadLetterTo::Nats {
                subject: format!("{}.{}", defaults::NATS_DLQ_PREFIX, raw.pipeline.name),
                stream: Some(StreamSpec {
                    name: defaults::NATS_DLQ_STREAM.into(),
                    subjects: vec![format!("{}.>", defaults::NATS_DLQ_PREFIX)],
                }),
            },
            None => DeadLetterTo::Topic(weir_queue::dead_letter_topic(&raw.pipeline.name)),
        }
    }

    /// [`Compiler::int`] within one of weir-queue's [`bounds`].
    fn bounded(&mut self, path: &TomlPath, value: Option<i64>, default: u64, range: std::ops::RangeInclusive<u64>, unit: &str) -> u64 {
        let max = (*range.end()).min(i64::MAX as u64) as i64;
        self.int(path, value, default as i64, *range.start() as i64, max, unit) as u64
    }

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
    /// `[event_time]`: a header or a JSON pointer, not both.
    fn event_time(&mut self, path: &TomlPath, raw: Option<&RawEventTime>) -> EventTime {
        let Some(raw) = raw else { return EventTime::Producer };
        let unit = match raw.unit {
            Some(RawTimeUnit::Seconds) => TimeUnit::Seconds,
            None | Some(RawTimeUnit::Millis) => TimeUnit::Millis,
            Some(RawTimeUnit::Micros) => TimeUnit::Micros,
            Some(RawTimeUnit::Nanos) => TimeUnit::Nanos,
        };
        match (&raw.header, &raw.json) {
            (Some(name), None) if !name.is_empty() => EventTime::Header { name: name.clone(), unit },
            (None, Some(pointer)) if pointer.is_empty() || pointer.starts_with('/') => EventTime::Json { pointer: pointer.clone(), unit },
            (None, Some(_)) => {
                self.error(&path.key("json"), "must be a JSON pointer: empty (the whole payload) or starting with '/', like \"/ts\"");
                EventTime::Producer
            }
            (Some(_), None) => {
                self.error(&path.key("header"), "must name a header");
                EventTime::Producer
            }
            (Some(_), Some(_)) => {
                self.error(&path.key("json"), "set either header or json, not both");
                EventTime::Producer
            }
            (None, None) => {
                self.error(path, "set header = \"NAME\" or json = \"/POINTER\" (or leave out [event_time] for the producer's timestamp)");
                EventTime::Producer
            }
        }
    }

    /// What a stage may take through the host: its outputs, state, log and
    /// counters (see [`weir_host::Limits`]).
    fn stage_limits(&mut self, sp: &TomlPath, st: &RawStage) -> Limits {
        use defaults as d;
        // Room for a dead letter's headers beside the largest output the
        // queue must store.
        let max_output = (weir_queue::MAX_RECORD_BYTES - (1 << 20)) as i64;
        let mut bytes = |key: &str, v, default, min, max| self.int(&sp.key(key), v, default, min, max, " bytes") as usize;
        let output = weir_host::OutputLimits {
            max_bytes: bytes("max_output_bytes", st.max_output_bytes, d::MAX_OUTPUT_BYTES, 1, max_output),
            max_key_bytes: bytes("max_output_key_bytes", st.max_output_key_bytes, d::MAX_OUTPUT_KEY_BYTES, 0, 1 << 20),
            max_headers: 0,
            max_header_bytes: bytes("max_output_header_bytes", st.max_output_header_bytes, d::MAX_OUTPUT_HEADER_BYTES, 1, 1 << 20),
        };
        let state = weir_host::StateLimits {
            max_key_bytes: bytes("max_state_key_bytes", st.max_state_key_bytes, d::MAX_STATE_KEY_BYTES, 1, 1 << 20),
            max_value_bytes: bytes("max_state_value_bytes", st.max_state_value_bytes, d::MAX_STATE_VALUE_BYTES, 0, 64 << 20),
            max_write_bytes: bytes("max_state_write_bytes", st.max_state_write_bytes, d::MAX_STATE_WRITE_BYTES, 1, 1 << 30),
            max_bytes: bytes("max_state_bytes", st.max_state_bytes, d::MAX_STATE_BYTES, 1, 64 << 30),
            max_timers: 0, // below
        };
        let max_line_bytes = bytes("max_log_line_bytes", st.max_log_line_bytes, d::MAX_LOG_LINE_BYTES, 16, 1 << 20);
        let max_name_bytes = bytes("max_counter_name_bytes", st.max_counter_name_bytes, d::MAX_COUNTER_NAME_BYTES, 1, 1024);
        let mut count = |key: &str, v, default, min, max, unit| self.int(&sp.key(key), v, default, min, max, unit);
        let max_headers = count("max_output_headers", st.max_output_headers, d::MAX_OUTPUT_HEADERS, 0, 65_000, "") as usize;
        let max_timers = count("max_timers", st.max_timers, d::MAX_TIMERS, 0, 100_000_000, " timers") as usize;
        let state = weir_host::StateLimits { max_timers, ..state };
        let lines_per_second =
            count("log_lines_per_second", st.log_lines_per_second, d::LOG_LINES_PER_SECOND, 0, 1_000_000, " lines/s") as u32;
        let burst_lines = count("log_burst_lines", st.log_burst_lines, d::LOG_BURST_LINES, 1, 1_000_000, " lines") as u32;
        let max_names = count("max_counters", st.max_counters, d::MAX_COUNTERS, 0, 10_000, "") as usize;
        Limits {
            output: weir_host::OutputLimits { max_headers, ..output },
            state,
            log: weir_host::LogLimits { lines_per_second, burst_lines, max_line_bytes },
            counters: weir_host::CounterLimits { max_names, max_name_bytes },
            ..Limits::default()
        }
    }

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
    let state_cache_bytes = c.int(
        &p.key("state_cache_bytes"),
        raw.pipeline.state_cache_bytes,
        weir_queue::DEFAULT_STATE_CACHE_BYTES as i64,
        1 << 20,
        64 << 30,
        " bytes",
    ) as usize;
    let stage_threads = raw.pipeline.stage_threads.map(|n| c.int(&p.key("stage_threads"), Some(n), 1, 0, 1000, "") as usize);

    let mut topics = c.topics(&raw);
    let source = c.source(&raw, base);
    let stages = c.stages(&raw, base);
    let sinks = c.sinks(&raw, base, &source, &mut topics);
    if let Source::Queue { topic, .. } = &source {
        let s = root.key("source");
        if sinks.iter().any(|k| matches!(&k.kind, Sink::Queue { topic: t } if t == topic)) {
            c.error(&s.key("topic"), format!("topic {topic:?} is both the source and a sink: the pipeline would feed itself"));
        }
        topics.entry(topic.clone()).or_default();
    }

    let dead_letter = c.dead_letter(&raw, &source);
    let dp = root.key("dead_letter");
    if let DeadLetterTo::Topic(t) = &dead_letter {
        topics.entry(t.clone()).or_default();
    } else if matches!(source, Source::Stdin { json: true } | Source::File { json: true, .. }) {
        c.error(&dp.key("subject"), "JSON lines that are not messages are dead-lettered to a topic: set dead_letter.topic");
    }
    let nats = raw.nats.as_ref().map(|n| c.nats(&root.key("nats"), n, base));
    let watermark = {
        let w = raw.watermark.as_ref();
        let wp = root.key("watermark");
        let day = 86_400_000;
        let ooo = c.int(
            &wp.key("max_out_of_orderness_ms"),
            w.and_then(|w| w.max_out_of_orderness_ms),
            defaults::MAX_OUT_OF_ORDERNESS_MS,
            0,
            day,
            " ms",
        );
        let idle = c.int(&wp.key("idle_timeout_ms"), w.and_then(|w| w.idle_timeout_ms), 0, 0, day, " ms");
        Watermark { max_out_of_orderness_ms: ooo as u64, idle_timeout: (idle > 0).then(|| Duration::from_millis(idle as u64)) }
    };
    let event_time = c.event_time(&root.key("event_time"), raw.event_time.as_ref());

    c.errors.sort_by_key(|e| e.location);
    if c.errors.is_empty() {
        let mut pipeline = Pipeline {
            name: raw.pipeline.name,
            file: file.to_owned(),
            data_dir,
            state_cache_bytes,
            stage_threads,
            source,
            stages,
            sinks,
            dead_letter,
            topics,
            nats,
            watermark,
            event_time,
        };
        if pipeline.nats.is_none() && pipeline.uses_nats() {
            pipeline.nats = Some(NatsConnection::to(defaults::NATS_URL));
        }
        Ok(pipeline)
    } else {
        Err(ConfigErrors(c.errors))
    }
}
