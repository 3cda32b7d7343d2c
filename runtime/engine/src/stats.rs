//! Per-stage counters, updated once per batch and read for the run summary.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Counters of one stage.
#[derive(Debug, Default)]
pub struct StageStats {
    /// Stage name.
    pub name: String,
    received: AtomicU64,
    emitted: AtomicU64,
    retried: AtomicU64,
    rejected: AtomicU64,
    busy_ns: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl StageStats {
    pub(crate) fn add_received(&self, n: u64) {
        self.received.fetch_add(n, Relaxed);
    }
    pub(crate) fn add_emitted(&self, n: u64) {
        self.emitted.fetch_add(n, Relaxed);
    }
    pub(crate) fn add_retried(&self, n: u64) {
        self.retried.fetch_add(n, Relaxed);
    }
    pub(crate) fn add_rejected(&self, n: u64) {
        self.rejected.fetch_add(n, Relaxed);
    }
    pub(crate) fn add_busy(&self, d: Duration) {
        self.busy_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }
    pub(crate) fn add_error(&self, kind: &'static str) {
        *self.errors.lock().unwrap().entry(kind).or_default() += 1;
    }

    /// Messages handed to the stage.
    pub fn received(&self) -> u64 {
        self.received.load(Relaxed)
    }
    /// Outputs the stage returned.
    pub fn emitted(&self) -> u64 {
        self.emitted.load(Relaxed)
    }
    /// Messages the stage asked to retry.
    pub fn retried(&self) -> u64 {
        self.retried.load(Relaxed)
    }
    /// Messages the stage rejected.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Relaxed)
    }
    /// Time spent handling batches.
    pub fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy_ns.load(Relaxed))
    }
    /// Whole-call failures by kind (trap, timeout, memory, contract).
    pub fn errors(&self) -> BTreeMap<&'static str, u64> {
        self.errors.lock().unwrap().clone()
    }
}

/// Counters of a whole run.
#[derive(Debug)]
pub struct PipelineStats {
    started: Instant,
    source_received: AtomicU64,
    sink_written: AtomicU64,
    dead_lettered: AtomicU64,
    stages: Vec<Arc<StageStats>>,
}

impl PipelineStats {
    pub(crate) fn new(names: Vec<String>) -> Self {
        PipelineStats {
            started: Instant::now(),
            source_received: AtomicU64::new(0),
            sink_written: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            stages: names.into_iter().map(|name| Arc::new(StageStats { name, ..StageStats::default() })).collect(),
        }
    }
    pub(crate) fn stage(&self, i: usize) -> Arc<StageStats> {
        self.stages[i].clone()
    }
    pub(crate) fn source_received(&self, n: u64) {
        self.source_received.fetch_add(n, Relaxed);
    }
    pub(crate) fn sink_written(&self, written: u64, dead: u64) {
        self.sink_written.fetch_add(written, Relaxed);
        self.dead_lettered.fetch_add(dead, Relaxed);
    }

    /// Deliveries taken from the source (redeliveries count again).
    pub fn received(&self) -> u64 {
        self.source_received.load(Relaxed)
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
}
