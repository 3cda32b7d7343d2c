//! What a run measures, per stage and at the source and sink: counters,
//! throughput and latency histograms (hdrhistogram, microseconds), updated
//! once per batch or call, and the [`Report`] made from them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use weir_host::{Counters, Limited};

/// Largest latency a histogram holds: one hour, in µs.
const MAX_US: u64 = 3_600_000_000;

/// A latency distribution in microseconds (1 µs to 1 hour, 3 significant digits).
#[derive(Debug)]
pub struct Latency(Mutex<Histogram<u64>>);

impl Default for Latency {
    fn default() -> Self {
        Latency(Mutex::new(Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")))
    }
}

impl From<Histogram<u64>> for Latency {
    /// A distribution of µs recorded elsewhere (the queue's fsync times).
    fn from(h: Histogram<u64>) -> Self {
        Latency(Mutex::new(h))
    }
}

impl Latency {
    /// `d` in µs, within the histogram's bounds.
    fn micros(d: Duration) -> u64 {
        (d.as_micros() as u64).clamp(1, MAX_US)
    }

    /// Record one sample.
    pub fn record(&self, d: Duration) {
        self.record_n(d, 1);
    }

    /// Record `n` samples of `d`.
    pub(crate) fn record_n(&self, d: Duration, n: u64) {
        self.0.lock().unwrap().saturating_record_n(Self::micros(d), n);
    }

    /// Record one sample per value, under one lock.
    pub(crate) fn record_all(&self, samples: impl IntoIterator<Item = Duration>) {
        let mut h = self.0.lock().unwrap();
        for d in samples {
            h.saturating_record(Self::micros(d));
        }
    }

    /// Samples per bucket (not cumulative) for upper bounds `bounds_us`, the
    /// rest in a last bucket; the sample count; and their sum in µs.
    pub fn buckets(&self, bounds_us: &[u64]) -> (Vec<u64>, u64, f64) {
        let h = self.0.lock().unwrap();
        let mut out = Vec::with_capacity(bounds_us.len() + 1);
        let mut below = 0;
        for &b in bounds_us {
            let upto = if h.is_empty() { 0 } else { h.count_between(0, b) };
            out.push(upto - below);
            below = upto;
        }
        out.push(h.len() - below);
        (out, h.len(), h.mean() * h.len() as f64)
    }

    /// A copy of the distribution so far (for windows: subtract an earlier copy).
    pub fn snapshot(&self) -> Histogram<u64> {
        self.0.lock().unwrap().clone()
    }

    /// Percentiles so far.
    pub fn summary(&self) -> LatencySummary {
        let h = self.0.lock().unwrap();
        let q = |q: f64| if h.is_empty() { 0 } else { h.value_at_quantile(q) };
        LatencySummary {
            count: h.len(),
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if h.is_empty() { 0 } else { h.max() },
        }
    }
}

/// Percentiles of a [`Latency`], in microseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
}

pub(crate) use weir_host::thread_cpu;
pub(crate) use weir_queue::now_us;

/// Time from `timestamp_us` (µs since the Unix epoch) to `now_us`; `None`
/// when the timestamp is unset (0), zero when it is ahead of this clock.
pub(crate) fn since(now_us: u64, timestamp_us: u64) -> Option<Duration> {
    (timestamp_us > 0).then(|| Duration::from_micros(now_us.saturating_sub(timestamp_us)))
}

/// Counters and latencies of one stage.
#[derive(Debug, Default)]
pub struct StageStats {
    /// Stage name.
    pub name: String,
    received: AtomicU64,
    ok: AtomicU64,
    emitted: AtomicU64,
    retried: AtomicU64,
    rejected: AtomicU64,
    dead_lettered: AtomicU64,
    abandoned: AtomicU64,
    filtered: AtomicU64,
    deferred: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    busy_ns: AtomicU64,
    cpu_ns: AtomicU64,
    instances: AtomicU64,
    replaced: AtomicU64,
    recycled: AtomicU64,
    /// The running version's component digest.
    module: Mutex<String>,
    upgrades: AtomicU64,
    timers_fired: AtomicU64,
    late: AtomicU64,
    late_dropped: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    pub(crate) custom: OnceLock<Arc<Counters>>,
    pub(crate) limited: OnceLock<Arc<Limited>>,
    /// Call time divided by the messages in the call.
    pub per_message: Latency,
    /// Time of one `handle-batch` call.
    pub per_call: Latency,
    /// Time a batch waited in the channel before this stage took it.
    pub queue_wait: Latency,
    /// Time from the producer's timestamp to this stage taking the message.
    pub end_to_end: Latency,
}

impl StageStats {
    pub(crate) fn add_received(&self, n: u64, bytes: u64) {
        self.received.fetch_add(n, Relaxed);
        self.bytes_in.fetch_add(bytes, Relaxed);
    }
    /// A batch's messages handled without failure: counted once per batch,
    /// not per message (three atomic additions per message per stage were
    /// a measurable part of a stage's own time).
    pub(crate) fn add_ok(&self, ok: &Handled) {
        self.ok.fetch_add(ok.messages, Relaxed);
        self.filtered.fetch_add(ok.filtered, Relaxed);
        self.emitted.fetch_add(ok.outputs, Relaxed);
        self.bytes_out.fetch_add(ok.bytes, Relaxed);
    }
    pub(crate) fn add_retried(&self) {
        self.retried.fetch_add(1, Relaxed);
    }
    pub(crate) fn add_dead(&self, rejected: bool) {
        self.dead_lettered.fetch_add(1, Relaxed);
        if rejected {
            self.rejected.fetch_add(1, Relaxed);
        }
    }
    pub(crate) fn set_instances(&self, n: usize) {
        self.instances.store(n as u64, Relaxed);
    }
    pub(crate) fn set_module(&self, digest: &str) {
        *self.module.lock().unwrap() = digest.to_owned();
    }
    pub(crate) fn add_upgrade(&self) {
        self.upgrades.fetch_add(1, Relaxed);
    }
    /// An instance replaced: `worn` (recycled for its memory), or after a failed call.
    pub(crate) fn add_replaced(&self, worn: bool) {
        if worn { &self.recycled } else { &self.replaced }.fetch_add(1, Relaxed);
    }
    pub(crate) fn add_timers_fired(&self, n: u64) {
        self.timers_fired.fetch_add(n, Relaxed);
    }
    /// A late message; `dropped` when the stage's policy drops it.
    pub(crate) fn add_late(&self, dropped: bool) {
        self.late.fetch_add(1, Relaxed);
        if dropped {
            self.late_dropped.fetch_add(1, Relaxed);
        }
    }
    pub(crate) fn add_abandoned(&self) {
        self.abandoned.fetch_add(1, Relaxed);
    }
    pub(crate) fn add_deferred(&self) {
        self.deferred.fetch_add(1, Relaxed);
    }
    pub(crate) fn add_busy(&self, d: Duration) {
        self.busy_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }
    pub(crate) fn add_cpu(&self, d: Duration) {
        self.cpu_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }
    pub(crate) fn add_error(&self, kind: &'static str) {
        *self.errors.lock().unwrap().entry(kind).or_default() += 1;
    }

    /// Messages handed to the stage (redeliveries count again).
    pub fn received(&self) -> u64 {
        self.received.load(Relaxed)
    }
    /// Messages the stage handled successfully.
    pub fn ok(&self) -> u64 {
        self.ok.load(Relaxed)
    }
    /// Outputs the stage returned.
    pub fn emitted(&self) -> u64 {
        self.emitted.load(Relaxed)
    }
    /// Messages that failed here and will be delivered again.
    pub fn retried(&self) -> u64 {
        self.retried.load(Relaxed)
    }
    /// Messages the stage rejected (also counted in `dead_lettered`).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Relaxed)
    }
    /// Messages dead-lettered by this stage: rejected, out of attempts, over a limit.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Relaxed)
    }
    /// Instances the stage runs (its `concurrency`).
    pub fn instances(&self) -> u64 {
        self.instances.load(Relaxed)
    }
    /// Timers of the stage that fired (a timer fired again after a retry
    /// counts again).
    pub fn timers_fired(&self) -> u64 {
        self.timers_fired.load(Relaxed)
    }

    /// Messages behind the stage's watermark by more than its allowed
    /// lateness, whatever its `late` policy did with them.
    pub fn late(&self) -> u64 {
        self.late.load(Relaxed)
    }
    /// Late messages the stage's policy dropped (not called).
    pub fn late_dropped(&self) -> u64 {
        self.late_dropped.load(Relaxed)
    }

    /// Instances discarded after a trap, timeout or limit and replaced.
    pub fn replaced(&self) -> u64 {
        self.replaced.load(Relaxed)
    }
    /// Instances replaced between calls because their linear memory grew
    /// past 3/4 of `max_memory_bytes` (before it could fail a call).
    pub fn recycled(&self) -> u64 {
        self.recycled.load(Relaxed)
    }
    /// Results dropped because another message from the same source
    /// message failed here first.
    pub fn abandoned(&self) -> u64 {
        self.abandoned.load(Relaxed)
    }
    /// Messages handled successfully with no output (a filter's drops).
    pub fn filtered(&self) -> u64 {
        self.filtered.load(Relaxed)
    }
    /// Messages not called because their source batch's outputs at this
    /// stage filled `max_batch_output_bytes`; they come back later.
    pub fn deferred(&self) -> u64 {
        self.deferred.load(Relaxed)
    }
    /// Time spent handling batches.
    pub fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy_ns.load(Relaxed))
    }
    /// CPU time spent handling batches (the stage's thread and its instances' threads).
    pub fn cpu(&self) -> Duration {
        Duration::from_nanos(self.cpu_ns.load(Relaxed))
    }
    /// Whole-call failures and over-limit outputs, by kind.
    pub fn errors(&self) -> BTreeMap<&'static str, u64> {
        self.errors.lock().unwrap().clone()
    }
    /// The guest's own counters (`counter-add`).
    pub fn custom(&self) -> BTreeMap<String, u64> {
        self.custom.get().map(|c| c.snapshot()).unwrap_or_default()
    }
    /// What the stage's limits dropped, by limit (see [`Limited::snapshot`]).
    pub fn limited(&self) -> BTreeMap<&'static str, u64> {
        self.limited.get().map(|c| c.snapshot()).unwrap_or_default()
    }
}

/// Counters and latencies of a whole run.
#[derive(Debug)]
pub struct PipelineStats {
    started: Instant,
    source_received: AtomicU64,
    redelivered: AtomicU64,
    acked: AtomicU64,
    naked: AtomicU64,
    released: AtomicU64,
    sink_written: AtomicU64,
    dead_lettered: AtomicU64,
    event_time_errors: AtomicU64,
    /// At the source: fetch time minus the time the queue appended the message.
    pub source_wait: Latency,
    lag: Mutex<Vec<u64>>,
    in_flight: AtomicU64,
    /// At the sink: time from the producer's timestamp to the output being durable.
    pub sink_end_to_end: Latency,
    /// At the sink: time from the producer's timestamp to the sink taking
    /// the output, before writing it; a wait in the channel while the sink
    /// wrote earlier outputs is included. The rest of `sink_end_to_end` is
    /// the output's own write and its wait to be durable.
    pub sink_arrival: Latency,
    stages: Vec<Arc<StageStats>>,
}

impl PipelineStats {
    /// Fresh counters for a run of `pipeline`.
    pub fn for_pipeline(pipeline: &crate::Pipeline) -> Arc<Self> {
        Arc::new(Self::new(pipeline.stages.iter().map(|s| s.name.clone()).collect()))
    }

    pub(crate) fn new(names: Vec<String>) -> Self {
        PipelineStats {
            started: Instant::now(),
            source_received: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            naked: AtomicU64::new(0),
            released: AtomicU64::new(0),
            sink_written: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            event_time_errors: AtomicU64::new(0),
            source_wait: Latency::default(),
            lag: Mutex::new(Vec::new()),
            in_flight: AtomicU64::new(0),
            sink_end_to_end: Latency::default(),
            sink_arrival: Latency::default(),
            stages: names.into_iter().map(|name| Arc::new(StageStats { name, ..StageStats::default() })).collect(),
        }
    }
    pub(crate) fn stage(&self, i: usize) -> Arc<StageStats> {
        self.stages[i].clone()
    }
    pub(crate) fn source_received(&self, n: u64, redelivered: u64) {
        self.source_received.fetch_add(n, Relaxed);
        self.redelivered.fetch_add(redelivered, Relaxed);
    }
    pub(crate) fn add_event_time_error(&self) {
        self.event_time_errors.fetch_add(1, Relaxed);
    }
    pub(crate) fn sink_written(&self, written: u64, dead: u64) {
        self.sink_written.fetch_add(written, Relaxed);
        self.dead_lettered.fetch_add(dead, Relaxed);
    }
    pub(crate) fn settled(&self, acked: usize, naked: usize, released: usize) {
        self.acked.fetch_add(acked as u64, Relaxed);
        self.naked.fetch_add(naked as u64, Relaxed);
        self.released.fetch_add(released as u64, Relaxed);
    }

    pub(crate) fn set_source_state(&self, lag: Option<Vec<u64>>, in_flight: usize) {
        if let Some(lag) = lag {
            *self.lag.lock().unwrap() = lag;
        }
        self.in_flight.store(in_flight as u64, Relaxed);
    }

    /// Deliveries taken from the source (redeliveries count again).
    pub fn received(&self) -> u64 {
        self.source_received.load(Relaxed)
    }
    /// Per partition of a queue source: log end minus the group's committed
    /// offset, as of the source's last loop (empty for other sources).
    pub fn lag(&self) -> Vec<u64> {
        self.lag.lock().unwrap().clone()
    }
    /// Source messages delivered and not yet settled.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }
    /// Messages written by the sinks (each sink counts).
    pub fn written(&self) -> u64 {
        self.sink_written.load(Relaxed)
    }
    /// Source messages sent to the dead-letter topic.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Relaxed)
    }
    /// Per-stage counters, in pipeline order.
    pub fn stages(&self) -> &[Arc<StageStats>] {
        &self.stages
    }
    /// Time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The stage that spent the largest share of the run busy, if any was.
    pub fn bottleneck(&self) -> Option<&StageStats> {
        self.stages.iter().filter(|s| s.busy() > Duration::ZERO).max_by_key(|s| s.busy()).map(|s| &**s)
    }

    /// The run's figures, for `--report` and the summary table.
    pub fn report(&self, pipeline: &str) -> Report {
        let secs = self.elapsed().as_secs_f64().max(1e-9);
        let rate = |n: u64| n as f64 / secs;
        Report {
            pipeline: pipeline.to_owned(),
            elapsed_s: secs,
            bottleneck: self.bottleneck().map(|s| s.name.clone()),
            source: SourceReport {
                received: self.received(),
                redelivered: self.redelivered.load(Relaxed),
                acked: self.acked.load(Relaxed),
                retried: self.naked.load(Relaxed),
                released: self.released.load(Relaxed),
                msgs_per_s: rate(self.received()),
                wait: self.source_wait.summary(),
                lag: self.lag(),
                in_flight: self.in_flight(),
                event_time_errors: self.event_time_errors.load(Relaxed),
            },
            stages: self
                .stages
                .iter()
                .map(|s| StageReport {
                    name: s.name.clone(),
                    received: s.received(),
                    ok: s.ok(),
                    emitted: s.emitted(),
                    retried: s.retried(),
                    rejected: s.rejected(),
                    dead_lettered: s.dead_lettered(),
                    abandoned: s.abandoned(),
                    filtered: s.filtered(),
                    deferred: s.deferred(),
                    errors: s.errors().into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                    bytes_in: s.bytes_in.load(Relaxed),
                    bytes_out: s.bytes_out.load(Relaxed),
                    msgs_per_s: rate(s.received()),
                    busy_msgs_per_s: if s.busy().is_zero() { 0.0 } else { s.received() as f64 / s.busy().as_secs_f64() },
                    bytes_in_per_s: rate(s.bytes_in.load(Relaxed)),
                    bytes_out_per_s: rate(s.bytes_out.load(Relaxed)),
                    instances: s.instances(),
                    instances_replaced: s.replaced(),
                    instances_recycled: s.recycled(),
                    module: s.module.lock().unwrap().clone(),
                    upgrades: s.upgrades.load(Relaxed),
                    timers_fired: s.timers_fired(),
                    late: s.late(),
                    late_dropped: s.late_dropped(),
                    busy_s: s.busy().as_secs_f64(),
                    cpu_s: s.cpu().as_secs_f64(),
                    busy_share: s.busy().as_secs_f64() / secs,
                    per_message: s.per_message.summary(),
                    per_call: s.per_call.summary(),
                    queue_wait: s.queue_wait.summary(),
                    end_to_end: s.end_to_end.summary(),
                    custom: s.custom(),
                    limited: s.limited().into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                })
                .collect(),
            sink: SinkReport {
                written: self.written(),
                dead_lettered: self.dead_lettered(),
                arrival: self.sink_arrival.summary(),
                end_to_end: self.sink_end_to_end.summary(),
            },
            peak_rss_bytes: resident_memory().1,
        }
    }
}

/// A run's figures (`weir run --report FILE.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Pipeline name.
    pub pipeline: String,
    /// Wall time of the run, seconds.
    pub elapsed_s: f64,
    /// The stage busy for the largest share of the run.
    pub bottleneck: Option<String>,
    /// The source.
    pub source: SourceReport,
    /// Each stage, in order.
    pub stages: Vec<StageReport>,
    /// The sinks together.
    pub sink: SinkReport,
    /// The process's peak resident memory so far (`VmHWM`), bytes; 0 where
    /// the OS does not say.
    pub peak_rss_bytes: u64,
}

/// This process's resident memory now and at its peak (`VmRSS`, `VmHWM`),
/// bytes; zeros where `/proc/self/status` does not say.
pub fn resident_memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()).unwrap_or(0) * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The source's figures. `received = acked + retried + released` once a run
/// has settled everything (dead letters are acknowledged).
#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    /// Deliveries taken (redeliveries count again).
    pub received: u64,
    /// Of those, deliveries after the first of a message (a retry, or a
    /// message whose earlier delivery was not acknowledged in time, e.g.
    /// because the process that had it died).
    pub redelivered: u64,
    /// Acknowledged: done, or dead-lettered.
    pub acked: u64,
    /// Handed back to be delivered again after a failure.
    pub retried: u64,
    /// Handed back to be redone because state they read was rolled back.
    pub released: u64,
    /// Average deliveries per second.
    pub msgs_per_s: f64,
    /// Fetch time minus append time.
    pub wait: LatencySummary,
    /// Per partition: log end minus committed offset (queue sources), or
    /// messages not yet delivered to the consumer (JetStream).
    pub lag: Vec<u64>,
    /// Delivered, not yet settled.
    pub in_flight: u64,
    /// Dead-lettered because their event time could not be read where
    /// `[event_time]` says it is (error kind `event-time`).
    pub event_time_errors: u64,
}

/// One stage's figures. `received = ok + retried + dead_lettered + abandoned + deferred + late_dropped`.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// Stage name.
    pub name: String,
    /// Messages handed to it.
    pub received: u64,
    /// Handled successfully.
    pub ok: u64,
    /// Outputs returned.
    pub emitted: u64,
    /// Failed, to be delivered again.
    pub retried: u64,
    /// Rejected by the stage (part of `dead_lettered`).
    pub rejected: u64,
    /// Dead-lettered here.
    pub dead_lettered: u64,
    /// Dropped: another message from the same source message failed here first.
    pub abandoned: u64,
    /// Handled successfully with no output: what a filter drops (part of `ok`).
    pub filtered: u64,
    /// Not called: the source batch's outputs here filled
    /// `max_batch_output_bytes`; released to come back in a later batch.
    pub deferred: u64,
    /// Failures by kind (trap, timeout, memory, fuel, output, state, ...).
    pub errors: BTreeMap<String, u64>,
    /// Payload bytes in.
    pub bytes_in: u64,
    /// Payload bytes out.
    pub bytes_out: u64,
    /// Average messages per second over the run (the rate the stage was
    /// fed at; for every stage of a run limited by one, about the same).
    pub msgs_per_s: f64,
    /// The stage's own rate: messages received per second of time spent
    /// handling batches (per instance when the stage runs several).
    pub busy_msgs_per_s: f64,
    /// Average payload bytes per second in.
    pub bytes_in_per_s: f64,
    /// Average payload bytes per second out.
    pub bytes_out_per_s: f64,
    /// Instances the stage runs.
    pub instances: u64,
    /// Instances replaced after a trap, timeout or limit.
    pub instances_replaced: u64,
    /// Instances replaced because their memory grew past 3/4 of the limit.
    pub instances_recycled: u64,
    /// The running version: SHA-256 of its component, hex.
    pub module: String,
    /// Versions swapped in while the pipeline ran.
    pub upgrades: u64,
    /// Timers of the stage that fired.
    pub timers_fired: u64,
    /// Messages behind the stage's watermark by more than its
    /// `allowed_lateness_ms` (processed, dropped or dead-lettered as its
    /// `late` policy says; dead-lettered ones are also in `dead_lettered`).
    pub late: u64,
    /// Late messages dropped by the policy.
    pub late_dropped: u64,
    /// Time spent handling batches, seconds (summed over instances).
    pub busy_s: f64,
    /// CPU time spent handling batches, seconds: `busy_s` without the
    /// time the stage's threads waited for a core.
    pub cpu_s: f64,
    /// Share of the run's wall time spent handling batches (can exceed 1 with concurrency).
    pub busy_share: f64,
    /// Time per message, as each call's time divided by its batch size,
    /// recorded once for each message of the call: what a message costs in
    /// a batch, not how long any one message waited for its result (that is
    /// `per_call`).
    pub per_message: LatencySummary,
    /// Time per `handle-batch` call.
    pub per_call: LatencySummary,
    /// Wait in the channel before the stage.
    pub queue_wait: LatencySummary,
    /// Producer timestamp to this stage.
    pub end_to_end: LatencySummary,
    /// The guest's own counters.
    pub custom: BTreeMap<String, u64>,
    /// What the stage's limits dropped: `counter_names` (counters not
    /// created), `log_lines` (lines over the rate), `log_lines_cut`.
    pub limited: BTreeMap<String, u64>,
}

/// The sinks' figures.
#[derive(Debug, Clone, Serialize)]
pub struct SinkReport {
    /// Messages written (each sink counts).
    pub written: u64,
    /// Dead letters written.
    pub dead_lettered: u64,
    /// Producer timestamp to the sink taking the output, before its write
    /// (a wait behind the sink's previous write included).
    pub arrival: LatencySummary,
    /// Producer timestamp to durable output.
    pub end_to_end: LatencySummary,
}

/// What a stage's messages that did not fail made, summed over a batch.
#[derive(Debug, Default)]
pub(crate) struct Handled {
    /// Messages handled.
    pub(crate) messages: u64,
    /// Of them, those with no output.
    pub(crate) filtered: u64,
    /// Their outputs.
    pub(crate) outputs: u64,
    /// The outputs' payload bytes.
    pub(crate) bytes: u64,
}

impl Handled {
    pub(crate) fn add(&mut self, outputs: &[weir_host::Output]) {
        self.messages += 1;
        self.filtered += u64::from(outputs.is_empty());
        self.outputs += outputs.len() as u64;
        self.bytes += outputs.iter().map(|o| o.payload.len() as u64).sum::<u64>();
    }
}
