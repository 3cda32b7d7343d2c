//! `--metrics-addr`: the run's figures in the Prometheus / OpenMetrics text
//! format at `/metrics`, encoded by prometheus-client from the engine's
//! counters and histograms at each scrape, served by axum.
//!
//! Names (stable; see the README): `weir_source_*`, `weir_stage_*{stage}`,
//! `weir_sink_*`; latencies are histograms in seconds. With the HTTP API,
//! `weir_topic_*{topic,partition}` describe the queue's topics too.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use weir_engine::{Latency, PipelineStats};

/// Histogram bucket upper bounds, in µs: 10 µs to 10 s.
const BUCKETS_US: [u64; 13] = [10, 50, 100, 500, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000, 5_000_000, 10_000_000];

#[derive(Debug)]
struct StatsCollector {
    pipeline: String,
    stats: Arc<PipelineStats>,
}

type Labels = Vec<(String, String)>;

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, series: &[(Labels, u64)]) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, series: &[(Labels, u64)]) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(*v as i64).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn histogram(e: &mut DescriptorEncoder, name: &str, help: &str, series: &[(Labels, &Latency)]) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    let bounds: Vec<f64> = BUCKETS_US.iter().map(|&us| us as f64 / 1e6).chain([f64::MAX]).collect();
    for (labels, latency) in series {
        let (counts, count, sum_us) = latency.buckets(&BUCKETS_US);
        let buckets: Vec<(f64, u64)> = bounds.iter().copied().zip(counts).collect();
        m.encode_family(labels)?.encode_histogram::<NoLabelSet>(sum_us / 1e6, count, &buckets, None)?;
    }
    Ok(())
}

impl Collector for StatsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let r = self.stats.report(&self.pipeline);
        let p = || vec![("pipeline".to_owned(), self.pipeline.clone())];
        let stage = |name: &str| vec![("pipeline".to_owned(), self.pipeline.clone()), ("stage".to_owned(), name.to_owned())];
        counter(
            &mut e,
            "weir_source_received",
            "Deliveries taken from the source (redeliveries count again).",
            &[(p(), r.source.received)],
        )?;
        counter(&mut e, "weir_source_acked", "Source messages acknowledged (done or dead-lettered).", &[(p(), r.source.acked)])?;
        counter(&mut e, "weir_source_retried", "Source messages handed back to be retried.", &[(p(), r.source.retried)])?;
        counter(
            &mut e,
            "weir_source_released",
            "Source messages redone because state they read was rolled back.",
            &[(p(), r.source.released)],
        )?;
        let lag: Vec<(Labels, u64)> =
            r.source.lag.iter().enumerate().map(|(i, l)| ([p(), vec![("partition".to_owned(), i.to_string())]].concat(), *l)).collect();
        gauge(&mut e, "weir_source_lag", "Per partition: log end minus the group's committed offset.", &lag)?;
        gauge(&mut e, "weir_source_in_flight", "Source messages delivered and not yet settled.", &[(p(), r.source.in_flight)])?;
        counter(
            &mut e,
            "weir_source_event_time_errors",
            "Source messages dead-lettered because their event time could not be read.",
            &[(p(), r.source.event_time_errors)],
        )?;
        histogram(
            &mut e,
            "weir_source_wait_seconds",
            "Fetch time minus the time the queue appended the message.",
            &[(p(), &self.stats.source_wait)],
        )?;
        let per = |f: &dyn Fn(&weir_engine::StageReport) -> u64| -> Vec<(Labels, u64)> {
            r.stages.iter().map(|s| (stage(&s.name), f(s))).collect()
        };
        counter(&mut e, "weir_stage_received", "Messages handed to the stage.", &per(&|s| s.received))?;
        counter(&mut e, "weir_stage_ok", "Messages the stage handled successfully.", &per(&|s| s.ok))?;
        counter(&mut e, "weir_stage_emitted", "Outputs the stage returned.", &per(&|s| s.emitted))?;
        counter(&mut e, "weir_stage_retried", "Messages that failed at the stage and will be retried.", &per(&|s| s.retried))?;
        counter(&mut e, "weir_stage_rejected", "Messages the stage rejected.", &per(&|s| s.rejected))?;
        counter(&mut e, "weir_stage_dead_lettered", "Messages dead-lettered at the stage.", &per(&|s| s.dead_lettered))?;
        counter(&mut e, "weir_stage_filtered", "Messages handled successfully with no output (a filter's drops).", &per(&|s| s.filtered))?;
        counter(
            &mut e,
            "weir_stage_abandoned",
            "Results dropped because a sibling from the same source message failed.",
            &per(&|s| s.abandoned),
        )?;
        counter(
            &mut e,
            "weir_stage_deferred",
            "Messages not called because their batch's outputs filled max_batch_output_bytes; they come back later.",
            &per(&|s| s.deferred),
        )?;
        counter(&mut e, "weir_stage_timers_fired", "Timers of the stage that fired.", &per(&|s| s.timers_fired))?;
        counter(&mut e, "weir_stage_late", "Messages behind the stage's watermark by more than its allowed lateness.", &per(&|s| s.late))?;
        counter(&mut e, "weir_stage_late_dropped", "Late messages the stage's policy dropped.", &per(&|s| s.late_dropped))?;
        gauge(&mut e, "weir_stage_instances", "Instances the stage runs (its concurrency).", &per(&|s| s.instances))?;
        counter(
            &mut e,
            "weir_stage_instances_replaced",
            "Instances replaced after a trap, timeout or limit.",
            &per(&|s| s.instances_replaced),
        )?;
        counter(&mut e, "weir_stage_upgrades", "Versions of the stage's component swapped in while it ran.", &per(&|s| s.upgrades))?;
        counter(
            &mut e,
            "weir_stage_instances_recycled",
            "Instances replaced between calls because their linear memory grew past 3/4 of max_memory_bytes.",
            &per(&|s| s.instances_recycled),
        )?;
        counter(&mut e, "weir_stage_bytes_in", "Payload bytes handed to the stage.", &per(&|s| s.bytes_in))?;
        counter(&mut e, "weir_stage_bytes_out", "Payload bytes the stage emitted.", &per(&|s| s.bytes_out))?;
        // Per stage, one series per entry of a map, labelled `label`.
        let by = |label: &str, map: &dyn Fn(&weir_engine::StageReport) -> &BTreeMap<String, u64>| -> Vec<(Labels, u64)> {
            r.stages
                .iter()
                .flat_map(|s| map(s).iter().map(|(k, v)| ([stage(&s.name), vec![(label.to_owned(), k.clone())]].concat(), *v)))
                .collect()
        };
        counter(
            &mut e,
            "weir_stage_errors",
            "Failures by kind: trap, timeout, memory, fuel, output, state, contract, instantiate.",
            &by("kind", &|s| &s.errors),
        )?;
        counter(&mut e, "weir_stage_custom", "The guest's own counters (counter-add).", &by("name", &|s| &s.custom))?;
        counter(
            &mut e,
            "weir_stage_limited",
            "What the stage's limits dropped: counter_names (not created), log_lines (over the rate), log_lines_cut.",
            &by("limit", &|s| &s.limited),
        )?;
        let stages = self.stats.stages();
        let hist = |f: &dyn Fn(&weir_engine::StageStats) -> &Latency| -> Vec<(Labels, &Latency)> {
            stages.iter().map(|s| (stage(&s.name), f(s))).collect()
        };
        histogram(
            &mut e,
            "weir_stage_message_seconds",
            "Time per message: each call's time divided by its batch size, once per message of the call.",
            &hist(&|s| &s.per_message),
        )?;
        histogram(&mut e, "weir_stage_call_seconds", "Time of one handle-batch call.", &hist(&|s| &s.per_call))?;
        histogram(&mut e, "weir_stage_queue_wait_seconds", "Time a batch waited before the stage took it.", &hist(&|s| &s.queue_wait))?;
        histogram(&mut e, "weir_stage_end_to_end_seconds", "Producer timestamp to the stage.", &hist(&|s| &s.end_to_end))?;
        counter(&mut e, "weir_sink_written", "Messages written by the sinks (each sink counts).", &[(p(), r.sink.written)])?;
        counter(&mut e, "weir_sink_dead_lettered", "Dead letters written.", &[(p(), r.sink.dead_lettered)])?;
        histogram(
            &mut e,
            "weir_sink_arrival_seconds",
            "Producer timestamp to the sink taking the output, before writing it (a wait behind its previous write included).",
            &[(p(), &self.stats.sink_arrival)],
        )?;
        histogram(&mut e, "weir_sink_end_to_end_seconds", "Producer timestamp to durable output.", &[(p(), &self.stats.sink_end_to_end)])?;
        Ok(())
    }
}

/// The queue's topics, per partition.
struct QueueCollector {
    queue: weir_queue::Queue,
}

impl std::fmt::Debug for QueueCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueCollector").field("dir", &self.queue.dir()).finish()
    }
}

impl Collector for QueueCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let mut stored = Vec::new();
        let mut ends = Vec::new();
        for t in self.queue.topics() {
            for (p, (start, end)) in t.offsets.iter().enumerate() {
                let labels = vec![("topic".to_owned(), t.name.clone()), ("partition".to_owned(), p.to_string())];
                stored.push((labels.clone(), end - start));
                ends.push((labels, *end));
            }
        }
        gauge(&mut e, "weir_topic_messages", "Messages stored (retained) in the partition.", &stored)?;
        gauge(&mut e, "weir_topic_end_offset", "Offset the partition's next message will get.", &ends)?;
        Ok(())
    }
}

/// `/metrics` for a run's pipeline and/or a queue's topics.
pub(crate) fn router(queue: Option<weir_queue::Queue>, pipeline: Option<(&str, Arc<PipelineStats>)>) -> axum::Router {
    let mut registry = Registry::default();
    if let Some((name, stats)) = pipeline {
        registry.register_collector(Box::new(StatsCollector { pipeline: name.to_owned(), stats }));
    }
    if let Some(queue) = queue {
        registry.register_collector(Box::new(QueueCollector { queue }));
    }
    let registry = Arc::new(registry);
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut body = String::new();
                match prometheus_client::encoding::text::encode(&mut body, &registry) {
                    Ok(()) => (
                        axum::http::StatusCode::OK,
                        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                        body,
                    ),
                    Err(_) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        [(axum::http::header::CONTENT_TYPE, "text/plain")],
                        "encoding failed".to_owned(),
                    ),
                }
            }
        }),
    )
}

/// Serve `router` on `addr` from a thread of its own for the rest of the
/// process. Fails at once if the address cannot be bound.
pub(crate) fn serve(addr: SocketAddr, router: axum::Router) -> anyhow::Result<SocketAddr> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind(addr)).with_context(|| format!("--metrics-addr {addr}"))?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new().name("weir-metrics".into()).spawn(move || {
        if let Err(e) = rt.block_on(async move { axum::serve(listener, router).await }) {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    })?;
    Ok(bound)
}
