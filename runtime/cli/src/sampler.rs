//! Each stage's rate and p99 over successive windows of a run, from its
//! counters and latency histograms: the points of `weir bench`'s chart and
//! of the console's charts.

use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;
use weir_engine::PipelineStats;

/// One stage at one moment of the run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Point {
    /// Seconds since the sampler started.
    pub(crate) t: f64,
    pub(crate) stage: String,
    /// Messages per second over the last interval.
    pub(crate) msgs_per_s: f64,
    /// p99 of time per message over the last interval, µs (0 if none).
    pub(crate) p99_us: u64,
}

/// Takes windows of a run's per-stage figures: each [`Sampler::sample`]
/// covers the time since the one before.
pub(crate) struct Sampler<'a> {
    stats: &'a PipelineStats,
    started: Instant,
    last: Instant,
    prev: Vec<(u64, Histogram<u64>)>,
}

impl<'a> Sampler<'a> {
    pub(crate) fn new(stats: &'a PipelineStats) -> Self {
        let prev = stats.stages().iter().map(|s| (s.received(), s.per_message.snapshot())).collect();
        Sampler { stats, started: Instant::now(), last: Instant::now(), prev }
    }

    /// A point per stage for the window since the last call.
    pub(crate) fn sample(&mut self) -> Vec<Point> {
        let secs = self.last.elapsed().as_secs_f64().max(1e-9);
        self.last = Instant::now();
        let t = self.started.elapsed().as_secs_f64();
        let mut points = Vec::with_capacity(self.prev.len());
        for (s, (received, hist)) in self.stats.stages().iter().zip(&mut self.prev) {
            let now = s.per_message.snapshot();
            let mut window = now.clone();
            window.subtract(&*hist).ok();
            let n = s.received();
            points.push(Point {
                t,
                stage: s.name.clone(),
                msgs_per_s: (n - *received) as f64 / secs,
                p99_us: if window.is_empty() { 0 } else { window.value_at_quantile(0.99) },
            });
            *received = n;
            *hist = now;
        }
        points
    }
}
