//! Running a pipeline: a source thread, one thread per stage and a sink
//! thread, joined by bounded channels (or fewer stage threads, or none:
//! see `stage_threads`).
//!
//! A batch of source deliveries travels down the chain as one unit. Every
//! message in it remembers the source delivery it descends from (its
//! *origin*); a failure at any stage decides that origin's fate (retry or
//! dead-letter) and drops its other descendants. The sink writes the outputs
//! and dead letters durably, then hands the settlements back to the source,
//! which acknowledges and commits. So a source message is acknowledged only
//! after everything it produced is durable: at-least-once end to end.
//!
//! Stage state is exactly-once. Each stateful call's writes travel with the
//! batch (see [`weir_host::PendingWrites`]); the sink commits them to the
//! group's [`StateStore`] together with the ids of the messages it
//! acknowledges, after their outputs are durable. A write set whose messages
//! are not all settled for good (one is retried, or was abandoned because an
//! earlier write set it may have read was aborted) is aborted and its
//! messages are released for redelivery, so they are redone from committed
//! state. A message whose id is in the store's applied set was already
//! counted and is acknowledged without processing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use weir_host::{Instance, Runtime, StageContext};
use weir_queue::{Queue, StateStore};

use crate::Result;
use crate::batch::{Batch, Settlement};
use crate::config::{NatsSource, Pipeline, Source, StageSpec};
use crate::nats::Nats;
use crate::source::OpenOptions;
use crate::stats::PipelineStats;

mod dead_log;
mod sink;
mod source;
mod stage;

use dead_log::DeadLetterLog;
use sink::{Settle, SinkWorker};
use source::{Downstream, SourceWorker, Watermarks};
use stage::{Chain, StageWorker, guest_driven_log, run_chain};

/// Batches buffered between two threads; bounds memory and applies backpressure.
const CHANNEL_DEPTH: usize = 2;

/// Batches buffered before the sink: as many as it writes together, so that
/// what arrives while it waits for an fsync goes out with the next one (the
/// source's in-flight limit bounds the messages in the pipeline either way).
const SINK_DEPTH: usize = sink::MAX_GROUP;

/// Batches the thread after the source (the first stage thread, or the
/// sink's) has finished with. Against the batches it sent, the source
/// tells whether a new batch would wait for that thread (see
/// [`source::Downstream::first_busy`]).
#[derive(Default)]
pub(super) struct Finished(AtomicU64);

impl Finished {
    fn add(&self, batches: usize) {
        self.0.fetch_add(batches as u64, Ordering::Release);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// Source messages taken per batch, at least.
const MIN_FETCH: usize = 512;

/// Options of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Exit once the source has no more messages and all are settled.
    pub drain: bool,
    /// Set to stop: the source stops pulling, in-flight batches finish, and
    /// the run returns after committing.
    pub stop: Arc<AtomicBool>,
    /// Where to count, so another thread can watch the run (see
    /// [`PipelineStats::for_pipeline`]); a fresh one if `None`.
    pub stats: Option<Arc<PipelineStats>>,
    /// Where another thread can upgrade the stages while the pipeline runs
    /// (see [`crate::Upgrades::for_pipeline`]); none if `None`.
    pub upgrades: Option<Arc<crate::Upgrades>>,
}

/// Load every stage's component and create its first instances, so that a
/// bad component or a failing `init` stops the pipeline before it pulls a message.
/// Stages start from the state the source's consumer group committed.
pub(crate) struct Prepared {
    runtime: Runtime,
    stages: Vec<(StageSpec, weir_host::Stage, StageContext, Vec<Instance>)>,
    state: StateStore,
    /// Whose stage state it is (see [`state_owner`]).
    owner: (String, String),
}

pub(crate) fn ensure_topics(pipeline: &Pipeline, queue: &Queue) -> Result<()> {
    for (name, config) in &pipeline.topics {
        queue.ensure_topic(name, config)?;
    }
    Ok(())
}

pub(crate) fn prepare(pipeline: &Pipeline, queue: &Queue, runtime: &Runtime) -> Result<Prepared> {
    ensure_topics(pipeline, queue)?;
    let owner = state_owner(pipeline, queue)?;
    let state = queue.state_store_with_cache(&owner.0, &owner.1, pipeline.state_cache_bytes)?;
    let mut stages = Vec::new();
    for spec in &pipeline.stages {
        let component = runtime.load(&spec.module)?;
        let ctx = StageContext::new(&pipeline.name, &spec.name, spec.config.clone(), spec.limits.clone())
            .with_state(state.reader())
            .with_grants(spec.grants.clone());
        let instances = (0..spec.concurrency).map(|_| component.instantiate(&ctx)).collect::<Result<Vec<_>, _>>()?;
        stages.push((spec.clone(), component, ctx, instances));
    }
    Ok(Prepared { runtime: runtime.clone(), stages, state, owner })
}

/// Whose stage state it is: the consumer group and topic (by its key: a
/// topic made again under the same name is another) of a queue source, the
/// durable consumer and stream of a JetStream source, else the pipeline and
/// the kind of source. Durable source ids are named after it too.
fn state_owner(pipeline: &Pipeline, queue: &Queue) -> Result<(String, String)> {
    Ok(match &pipeline.source {
        Source::Queue { topic, group, .. } => (group.clone(), queue.topic_key(topic)?),
        Source::Stdin { .. } => (pipeline.name.clone(), "source-stdin".into()),
        Source::File { .. } => (pipeline.name.clone(), "source-file".into()),
        Source::Generator(_) => (pipeline.name.clone(), "source-generator".into()),
        Source::Nats(NatsSource::JetStream(js)) => (js.consumer.clone(), js.stream.clone()),
        Source::Nats(NatsSource::Core { .. }) => (pipeline.name.clone(), "source-nats".into()),
    })
}

/// Run `pipeline` on `queue` until stopped (or drained, with `drain`).
pub(crate) fn run(pipeline: &Pipeline, queue: &Queue, prepared: Prepared, options: &RunOptions) -> Result<Arc<PipelineStats>> {
    // Per-batch costs (an fsync, a round trip to NATS) are shared by more
    // messages when batches are large; stages still take `batch_size` per call.
    let fetch_size = pipeline.stages.first().map_or(MIN_FETCH, |s| s.batch_size * s.concurrency).max(MIN_FETCH);
    let nats = Nats::for_pipeline(pipeline)?;
    let stats = options.stats.clone().unwrap_or_else(|| PipelineStats::for_pipeline(pipeline));
    let open = OpenOptions { queue, nats: nats.as_ref(), drain: options.drain, fetch_size, stats: stats.clone() };
    let feed = crate::source::open(pipeline, open)?;
    let durable_ids = feed.has_durable_ids();
    // Source ids that survive restarts name dead letters and NATS outputs.
    let id_prefix = durable_ids.then(|| format!("{}/{}", prepared.owner.0, prepared.owner.1));
    let sinks = crate::sink::open(pipeline, nats.as_ref(), id_prefix.as_deref())?;
    let fill_wait = pipeline.stages.first().map_or(Duration::ZERO, |s| s.batch_timeout);

    let floor = Mutex::new(None);
    let first_finished = Finished::default();
    let result = std::thread::scope(|scope| -> Result<()> {
        let (settle_tx, settle_rx) = mpsc::channel::<Settlement>();
        let (first_tx, mut rx) = sync_channel::<Batch>(if prepared.stages.is_empty() { SINK_DEPTH } else { CHANNEL_DEPTH });
        let mut handles = Vec::new();
        let uses_timers = prepared.stages.iter().any(|(_, component, ..)| component.uses_timers());
        // Stages with timers or a late policy need the watermark.
        let tracks_watermark = uses_timers || pipeline.stages.iter().any(|s| s.late.is_some());
        // Upgrades to versions that set timers turn both on.
        let (uses_timers, tracks_watermark) = (Arc::new(AtomicBool::new(uses_timers)), Arc::new(AtomicBool::new(tracks_watermark)));
        let stage_states = prepared.stages.iter().map(|(_, _, ctx, _)| ctx.state().clone()).collect();
        let shared_source = matches!(&pipeline.source, Source::Nats(NatsSource::JetStream(js)) if !js.single_process);
        let mut workers = Vec::new();
        for (i, (spec, component, ctx, instances)) in prepared.stages.into_iter().enumerate() {
            let stage_stats = stats.stage(i);
            stage_stats.custom.set(ctx.shared_counters()).ok();
            stage_stats.limited.set(ctx.limited()).ok();
            stage_stats.set_instances(instances.len());
            stage_stats.set_module(component.digest());
            if let Some(upgrades) = &options.upgrades {
                upgrades.attach(
                    i,
                    crate::upgrade::Live {
                        runtime: prepared.runtime.clone(),
                        ctx: ctx.clone(),
                        concurrency: spec.concurrency,
                        timers: [uses_timers.clone(), tracks_watermark.clone()],
                        shared_source,
                        module: component.digest().to_owned(),
                        path: spec.module.clone(),
                    },
                );
            }
            workers.push(StageWorker {
                index: i,
                module: component.digest().into(),
                spec,
                component,
                ctx,
                instances,
                stats: stage_stats,
                warnings: guest_driven_log(),
                timer_attempts: HashMap::new(),
                upgrades: options.upgrades.clone(),
            });
        }
        let threads = pipeline.stage_threads();
        let inline = (threads == 0).then(|| Chain(std::mem::take(&mut workers)));
        let chains = chains(workers, threads);
        let last = chains.len();
        for (n, chain) in chains.into_iter().enumerate() {
            let (tx, next_rx) = sync_channel::<Batch>(if n + 1 == last { SINK_DEPTH } else { CHANNEL_DEPTH });
            let input = std::mem::replace(&mut rx, next_rx);
            // Named for `top -H`, perf and debuggers (Linux keeps 15 bytes).
            let name = format!("weir-{}", chain[0].spec.name);
            let finished = (n == 0).then_some(&first_finished);
            handles.push(thread(scope, name, move || run_chain(Chain(chain), input, tx, finished)));
        }
        let applied = if durable_ids { prepared.state.applied().clone() } else { HashSet::new() };
        let source_name = pipeline.source.name();
        let mut routes: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in pipeline.sinks.iter().enumerate() {
            if let Some(topic) = &s.from {
                routes.entry(topic.clone()).or_default().push(i);
            }
        }
        let main_sinks = (0..pipeline.sinks.len()).filter(|&i| pipeline.sinks[i].from.is_none()).collect();
        // A sink on the source's thread that waited for each fsync would
        // hold the source, and with it every message, for the fsync: there
        // it appends and a thread of its own waits. A sink with its own
        // thread waits itself: what comes meanwhile queues in its channel
        // and goes out under the next fsync (appending each batch as it
        // came instead cost more CPU and did not shorten the tail).
        let (settle, durable_handle) = if inline.is_some() && sink::writes_synced_topic(pipeline, queue) {
            let (tx, rx) = sync_channel(SINK_DEPTH);
            let stats = &stats;
            (
                Settle::WhenDurable(tx),
                Some(thread(scope, "weir-fsync".into(), move || sink::settle_when_durable(queue, stats, settle_tx, rx))),
            )
        } else {
            (Settle::Now(settle_tx), None)
        };
        let sink = SinkWorker {
            pipeline,
            queue: queue.clone(),
            state: prepared.state,
            stage_states,
            durable_ids,
            source_name,
            id_prefix,
            main_sinks,
            routes,
            sinks,
            nats: nats.clone(),
            stop: &options.stop,
            stats: &stats,
            settle,
            dead_letter_log: DeadLetterLog::new(),
            floor: &floor,
        };
        let (down, sink_handle) = match inline {
            Some(chain) => (Downstream::Inline { chain, sink: Box::new(sink), failed: None }, None),
            None => {
                let finished = (last == 0).then_some(&first_finished);
                let down = Downstream::Thread { tx: first_tx, sent: 0, first_finished: &first_finished };
                (down, Some(thread(scope, "weir-sink".into(), move || sink.run(rx, finished))))
            }
        };
        let source = SourceWorker {
            feed,
            applied,
            options,
            stats: &stats,
            fetch_size,
            fill_wait,
            in_pipeline: 0,
            queue,
            checked: Instant::now(),
            floor: &floor,
            uncommitted_since: None,
            watermarks: Watermarks::new(pipeline.watermark.clone()),
            uses_timers,
            tracks_watermark,
            event_time: &pipeline.event_time,
            last_sent: Instant::now(),
            ended: false,
            timers_left: false,
        };
        let source_result = source.run(down, settle_rx);
        let sink_result = sink_handle.map_or(Ok(()), |h| h.join().expect("sink thread panicked"));
        let durable_result = durable_handle.map_or(Ok(()), |h| h.join().expect("fsync thread panicked"));
        for h in handles {
            h.join().expect("stage thread panicked");
        }
        source_result.and(sink_result).and(durable_result)
    });
    if let Some(upgrades) = &options.upgrades {
        upgrades.detach_all();
    }
    // A data directory removed under the run is usually first noticed by
    // a write to a file in it (an offsets file, a segment), whose error
    // names only that file: say what happened instead.
    result.map_err(|e| queue.check_present().err().map_or(e, crate::Error::from))?;
    Ok(stats)
}

/// A pipeline thread, named.
fn thread<'scope, T: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    name: String,
    run: impl FnOnce() -> T + Send + 'scope,
) -> std::thread::ScopedJoinHandle<'scope, T> {
    std::thread::Builder::new().name(name).spawn_scoped(scope, run).expect("spawn a pipeline thread")
}

/// `stages` split into `threads` runs of consecutive stages, as even as
/// can be (the first runs take one more when they do not divide evenly).
fn chains<T>(stages: Vec<T>, threads: usize) -> Vec<Vec<T>> {
    let threads = threads.clamp(1, stages.len().max(1));
    let (each, extra) = (stages.len() / threads, stages.len() % threads);
    let mut stages = stages.into_iter();
    (0..threads).map(|t| stages.by_ref().take(each + usize::from(t < extra)).collect()).filter(|c: &Vec<T>| !c.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::chains;

    #[test]
    fn stages_are_split_into_runs_as_even_as_can_be() {
        assert_eq!(chains(vec![1, 2, 3], 1), vec![vec![1, 2, 3]]);
        assert_eq!(chains(vec![1, 2, 3], 2), vec![vec![1, 2], vec![3]]);
        assert_eq!(chains(vec![1, 2, 3], 3), vec![vec![1], vec![2], vec![3]]);
        assert_eq!(chains(vec![1, 2, 3], 9), vec![vec![1], vec![2], vec![3]]);
        assert_eq!(chains(vec![1, 2, 3, 4, 5], 2), vec![vec![1, 2, 3], vec![4, 5]]);
        assert_eq!(chains(Vec::<u8>::new(), 2), Vec::<Vec<u8>>::new());
    }
}
