//! Running a pipeline: a source thread, one thread per stage and a sink
//! thread, joined by bounded channels.
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use weir_host::{Failure, Instance, LogBucket, Message, MessageError, MessageResult, Output, PendingWrites, Runtime, StageContext};
use weir_queue::{ConsumerOptions, DeliveryId, Queue, Record, StateStore, StateWrite, dlq_headers};

use crate::config::{DeadLetterTo, NatsSource, Pipeline, Sink, Source, StageSpec};
use crate::feed::Feed;
use crate::nats::{IdRecords, Nats};
use crate::stats::{PipelineStats, StageStats, now_ms, since};
use crate::{Error, Result};

/// Batches buffered between two threads; bounds memory and applies backpressure.
const CHANNEL_DEPTH: usize = 2;

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
}

/// What happened to a source message.
enum Fate {
    Ok,
    Retry {
        delay: Duration,
    },
    Dead {
        stage: String,
        kind: &'static str,
        reason: String,
        msg: Message,
    },
    /// Abandoned because state it depended on was aborted: redo it, without
    /// charging an attempt.
    Release,
    /// Its state writes were already committed (it is a redelivery): acknowledge only.
    Applied,
}

impl Fate {
    /// Whether the message is settled without being redone.
    fn is_final(&self) -> bool {
        matches!(self, Fate::Ok | Fate::Dead { .. } | Fate::Applied)
    }
}

struct Origin {
    id: DeliveryId,
    attempt: u32,
    fate: Fate,
}

struct Item {
    origin: usize,
    msg: Message,
}

struct Batch {
    origins: Vec<Origin>,
    /// Messages flowing to the next stage (or the sinks after the last).
    items: Vec<Item>,
    /// Outputs that named a topic: published there directly.
    routed: Vec<(usize, String, Output)>,
    /// State writes of the stateful calls made for this batch.
    writes: Vec<StateDelta>,
    /// When it was last handed to a channel (for queue-wait times).
    sent: Instant,
}

/// The state writes of one call and the origins of the messages it handled.
struct StateDelta {
    stage: usize,
    writes: Arc<PendingWrites>,
    origins: Vec<usize>,
}

struct Settlement {
    acks: Vec<DeliveryId>,
    /// Dead-lettered: published to the dead-letter destination, never again.
    dead: Vec<DeliveryId>,
    naks: Vec<(DeliveryId, Duration)>,
    releases: Vec<DeliveryId>,
}

fn message_from(origin_msg: &Message, out: Output) -> Message {
    Message {
        topic: origin_msg.topic.clone(),
        partition: origin_msg.partition,
        offset: origin_msg.offset,
        key: out.key,
        payload: out.payload,
        headers: out.headers,
        timestamp_ms: origin_msg.timestamp_ms,
        attempt: origin_msg.attempt,
    }
}

/// Load every stage's component and create its first instances, so that a
/// bad component or a failing `init` stops the pipeline before it pulls a message.
/// Stages start from the state the source's consumer group committed.
pub(crate) struct Prepared {
    stages: Vec<(StageSpec, weir_host::Stage, StageContext, Vec<Instance>)>,
    state: StateStore,
    /// Whose stage state it is (see [`state_owner`]).
    owner: (String, String),
}

pub(crate) fn prepare(pipeline: &Pipeline, queue: &Queue, runtime: &Runtime) -> Result<Prepared> {
    for (name, config) in &pipeline.topics {
        queue.ensure_topic(name, config)?;
    }
    let owner = state_owner(pipeline, queue)?;
    let state = queue.state_store(&owner.0, &owner.1)?;
    let mut stages = Vec::new();
    for spec in &pipeline.stages {
        let component = runtime.load(&spec.module)?;
        let ctx = StageContext::new(&pipeline.name, &spec.name, spec.config.clone(), spec.limits.clone())
            .with_state(state.stage(&spec.name))
            .with_grants(spec.grants.clone());
        let instances = (0..spec.concurrency).map(|_| component.instantiate(&ctx)).collect::<Result<Vec<_>, _>>()?;
        stages.push((spec.clone(), component, ctx, instances));
    }
    Ok(Prepared { stages, state, owner })
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
    // Retries and dead letters are decided per stage; the queue's own limit only
    // backs them up. A lease must outlive the slowest batch: every stage may
    // replay a failed batch message by message, each up to its timeout.
    let slowest: Duration = pipeline.stages.iter().map(|s| s.limits.timeout * s.batch_size.min(64) as u32).sum();
    let max_attempts = pipeline.stages.iter().map(|s| s.max_attempts).max().unwrap_or(5);
    // Per-batch costs (an fsync, a round trip to NATS) are shared by more
    // messages when batches are large; stages still take `batch_size` per call.
    let fetch_size = pipeline.stages.first().map_or(MIN_FETCH, |s| s.batch_size * s.concurrency).max(MIN_FETCH);
    let nats = Nats::for_pipeline(pipeline)?;
    let feed = match &pipeline.source {
        Source::Queue { topic, group, start, max_ack_pending } => {
            let consumer_options = ConsumerOptions {
                start: *start,
                max_ack_pending: *max_ack_pending,
                ack_wait: slowest.max(Duration::from_secs(60)),
                max_attempts,
                retry_backoff: pipeline.stages.iter().map(|s| s.retry_backoff).max().unwrap_or(Duration::from_secs(1)),
                // Dead letters to NATS are written by the pipeline; the
                // queue's own backstop keeps them in a topic.
                dead_letter: Some(match &pipeline.dead_letter {
                    DeadLetterTo::Topic(t) => t.clone(),
                    DeadLetterTo::Nats { .. } => weir_queue::dead_letter_topic(&pipeline.name),
                }),
            };
            Feed::Queue(queue.consumer(topic, group, consumer_options)?)
        }
        Source::Nats(NatsSource::JetStream(js)) => {
            let nats = nats.as_ref().expect("a NATS source has a connection");
            Feed::JetStream(Box::new(nats.jetstream_feed(js, js.max_attempts.unwrap_or(max_attempts), fetch_size)?))
        }
        other => {
            if options.drain && matches!(other, Source::Nats(_)) {
                return Err(Error::Source(format!(
                    "{}: a core NATS subject has no end to drain to; use a JetStream source (`stream`) or stop with Ctrl-C",
                    other.name()
                )));
            }
            let dead_letter = match &pipeline.dead_letter {
                DeadLetterTo::Topic(t) => Some((queue.clone(), t.clone())),
                DeadLetterTo::Nats { .. } => None,
            };
            let max_in_flight = crate::config::defaults::MAX_ACK_PENDING as usize;
            Feed::ephemeral(other, max_in_flight, dead_letter, nats.as_ref())?
        }
    };
    let durable_ids = feed.has_durable_ids();
    let files = open_file_sinks(pipeline)?;
    let stats = options.stats.clone().unwrap_or_else(|| PipelineStats::for_pipeline(pipeline));
    let fill_wait = pipeline.stages.first().map_or(Duration::ZERO, |s| s.batch_timeout);

    let floor = Mutex::new(None);
    std::thread::scope(|scope| -> Result<()> {
        let (settle_tx, settle_rx) = mpsc::channel::<Settlement>();
        let (first_tx, mut rx) = sync_channel::<Batch>(CHANNEL_DEPTH);
        let mut handles = Vec::new();
        for (i, (spec, component, ctx, instances)) in prepared.stages.into_iter().enumerate() {
            let (tx, next_rx) = sync_channel::<Batch>(CHANNEL_DEPTH);
            let stage_stats = stats.stage(i);
            stage_stats.custom.set(ctx.shared_counters()).ok();
            stage_stats.limited.set(ctx.limited()).ok();
            stage_stats.set_instances(instances.len());
            let worker = StageWorker { index: i, spec, component, ctx, instances, stats: stage_stats, warnings: guest_driven_log() };
            let input = std::mem::replace(&mut rx, next_rx);
            handles.push(scope.spawn(move || worker.run(input, tx)));
        }
        let applied = if durable_ids { prepared.state.applied().clone() } else { HashSet::new() };
        let source_name = pipeline.source.name();
        let id_prefix = durable_ids.then(|| format!("{}/{}", prepared.owner.0, prepared.owner.1));
        let mut routes: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, s) in pipeline.sinks.iter().enumerate() {
            if let Some(topic) = &s.from {
                routes.entry(topic.clone()).or_default().push(i);
            }
        }
        let main_sinks = (0..pipeline.sinks.len()).filter(|&i| pipeline.sinks[i].from.is_none()).collect();
        let sink = SinkWorker {
            pipeline,
            queue: queue.clone(),
            state: prepared.state,
            durable_ids,
            source_name,
            id_prefix,
            main_sinks,
            routes,
            files,
            nats: nats.clone(),
            stop: &options.stop,
            stats: &stats,
            settle: settle_tx,
            dead_letter_log: guest_driven_log(),
            floor: &floor,
        };
        let sink_handle = scope.spawn(move || sink.run(rx));
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
        };
        let source_result = source.run(first_tx, settle_rx);
        let sink_result = sink_handle.join().expect("sink thread panicked");
        for h in handles {
            h.join().expect("stage thread panicked");
        }
        source_result.and(sink_result)
    })?;
    Ok(stats)
}

struct SourceWorker<'a> {
    feed: Feed,
    /// Ids whose state writes an earlier run committed (see [`StateStore::applied`]).
    applied: HashSet<(u32, u64)>,
    options: &'a RunOptions,
    stats: &'a PipelineStats,
    fetch_size: usize,
    fill_wait: Duration,
    /// Batches sent down the pipeline and not yet settled.
    in_pipeline: usize,
    queue: &'a Queue,
    /// When the data directory was last seen to be there.
    checked: Instant,
    /// Told to the sink's state store: below it, ids are never delivered again.
    floor: &'a Mutex<Option<Vec<u64>>>,
}

impl SourceWorker<'_> {
    fn run(mut self, tx: SyncSender<Batch>, settlements: Receiver<Settlement>) -> Result<()> {
        let result = self.pull(&tx, &settlements);
        // Stop feeding; the stages and the sink finish what they hold, and
        // every settlement they send is applied before the final commit.
        drop(tx);
        while let Ok(s) = settlements.recv() {
            self.apply(s);
        }
        let committed = self.feed.commit();
        self.feed.close();
        result.and(committed)
    }

    fn apply(&mut self, s: Settlement) {
        for id in s.acks {
            self.feed.ack(id);
        }
        for id in s.dead {
            self.feed.term(id);
        }
        for (id, delay) in s.naks {
            self.feed.nak(id, delay);
        }
        for id in s.releases {
            self.feed.release(id);
        }
        self.in_pipeline -= 1;
    }

    fn pull(&mut self, tx: &SyncSender<Batch>, settlements: &Receiver<Settlement>) -> Result<()> {
        loop {
            let mut settled = false;
            while let Ok(s) = settlements.try_recv() {
                self.apply(s);
                settled = true;
            }
            if settled {
                self.feed.commit()?;
            }
            self.stats.set_source_state(self.feed.lag(), self.feed.in_flight());
            if self.checked.elapsed() >= Duration::from_secs(1) {
                self.queue.check_present()?;
                *self.floor.lock().unwrap() = self.feed.floor();
                self.checked = Instant::now();
            }
            if self.options.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if self.options.drain && self.in_pipeline == 0 && self.feed.is_settled() {
                return Ok(());
            }
            let wait = if self.in_pipeline > 0 { Duration::ZERO } else { Duration::from_millis(50) };
            let mut deliveries = self.feed.fetch(self.fetch_size, wait)?;
            if deliveries.is_empty() {
                if self.in_pipeline > 0 {
                    // Nothing new (or max_ack_pending reached): wait for batches to settle.
                    match settlements.recv_timeout(Duration::from_millis(50)) {
                        Ok(s) => {
                            self.apply(s);
                            self.feed.commit()?;
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        // The sink stopped (its error is reported by the join):
                        // what is in flight will never settle.
                        Err(RecvTimeoutError::Disconnected) => return Ok(()),
                    }
                }
                continue;
            }
            if deliveries.len() < self.fetch_size && !self.fill_wait.is_zero() {
                let more = self.feed.fetch(self.fetch_size - deliveries.len(), self.fill_wait)?;
                deliveries.extend(more);
            }
            if !self.applied.is_empty() {
                // Processed by an earlier run whose acknowledgement was lost with it.
                deliveries.retain(|d| {
                    let done = self.applied.contains(&(d.id.partition, d.id.offset));
                    if done {
                        self.feed.ack(d.id);
                    }
                    !done
                });
                if deliveries.is_empty() {
                    continue;
                }
            }
            let redelivered = deliveries.iter().filter(|d| d.attempt > 1).count();
            self.stats.source_received(deliveries.len() as u64, redelivered as u64);
            let now = now_ms();
            self.stats.source_wait.record_all(deliveries.iter().filter_map(|d| since(now, d.appended_ms)));
            let mut origins = Vec::with_capacity(deliveries.len());
            let mut items = Vec::with_capacity(deliveries.len());
            for (i, d) in deliveries.into_iter().enumerate() {
                origins.push(Origin { id: d.id, attempt: d.attempt, fate: Fate::Ok });
                items.push(Item { origin: i, msg: d.msg });
            }
            self.in_pipeline += 1;
            if tx.send(Batch { origins, items, routed: Vec::new(), writes: Vec::new(), sent: Instant::now() }).is_err() {
                // A downstream thread stopped (its error is reported by the join).
                self.in_pipeline -= 1;
                return Ok(());
            }
        }
    }
}

struct StageWorker {
    /// Position in the pipeline.
    index: usize,
    spec: StageSpec,
    component: weir_host::Stage,
    ctx: StageContext,
    /// One per unit of concurrency; a poisoned one is replaced before its next call.
    instances: Vec<Instance>,
    stats: Arc<StageStats>,
    /// Rate limit for lines about failed calls.
    warnings: LogBucket,
}

impl StageWorker {
    fn run(mut self, input: Receiver<Batch>, output: SyncSender<Batch>) {
        while let Ok(batch) = input.recv() {
            let mut batch = self.process(batch);
            batch.sent = Instant::now();
            if output.send(batch).is_err() {
                break;
            }
        }
        self.ctx.flush_log_summary();
        summarise_suppressed("failed calls", self.warnings.take_suppressed());
    }

    fn process(&mut self, mut batch: Batch) -> Batch {
        let started = Instant::now();
        // Descendants of origins that already failed upstream are dropped.
        let (owners, msgs): (Vec<usize>, Vec<Message>) = std::mem::take(&mut batch.items)
            .into_iter()
            .filter(|it| matches!(batch.origins[it.origin].fate, Fate::Ok))
            .map(|it| (it.origin, it.msg))
            .unzip();
        self.stats.queue_wait.record_n(started.duration_since(batch.sent), msgs.len() as u64);
        let now = now_ms();
        self.stats.end_to_end.record_all(msgs.iter().filter_map(|m| since(now, m.timestamp_ms)));
        self.stats.add_received(msgs.len() as u64, msgs.iter().map(|m| m.payload.len() as u64).sum());
        let (results, writes) = self.call_all(&msgs);
        for (w, idxs) in writes {
            let origins = idxs.into_iter().map(|i| owners[i]).collect();
            batch.writes.push(StateDelta { stage: self.index, writes: w, origins });
        }
        let mut next = Vec::with_capacity(msgs.len());
        for ((owner, msg), result) in owners.into_iter().zip(msgs).zip(results) {
            let item = Item { origin: owner, msg };
            let origin = &mut batch.origins[item.origin];
            if !matches!(origin.fate, Fate::Ok) {
                self.stats.add_abandoned(); // a sibling already failed this origin
                continue;
            }
            match result {
                Err(CallFailure { kind: DEFERRED, .. }) => {
                    self.stats.add_deferred();
                    origin.fate = Fate::Release;
                }
                Ok(outputs) => {
                    self.stats.add_ok(outputs.len() as u64, outputs.iter().map(|o| o.payload.len() as u64).sum());
                    for out in outputs {
                        match out.topic.clone() {
                            Some(topic) => batch.routed.push((item.origin, topic, out)),
                            None => next.push(Item { origin: item.origin, msg: message_from(&item.msg, out) }),
                        }
                    }
                }
                Err(CallFailure { failure: Failure::Retry(reason), kind }) if origin.attempt < self.spec.max_attempts => {
                    self.stats.add_retried();
                    let reason = bounded(&reason);
                    tracing::debug!(stage = %self.spec.name, %reason, kind, attempt = origin.attempt, "message will be retried");
                    origin.fate = Fate::Retry { delay: self.spec.retry_backoff };
                }
                Err(CallFailure { failure, kind }) => {
                    let reason = match &failure {
                        Failure::Retry(r) => {
                            format!("{} (gave up after {} attempts)", bounded(r), origin.attempt)
                        }
                        Failure::Reject(r) => bounded(r),
                    };
                    self.stats.add_dead(matches!(failure, Failure::Reject(_)));
                    origin.fate = Fate::Dead { stage: self.spec.name.clone(), kind, reason, msg: item.msg };
                }
            }
        }
        batch.items = next;
        self.stats.add_busy(started.elapsed());
        batch
    }

    /// Handle `msgs` in batches of `batch_size`, spread over the instances.
    /// Returns a result per message and the state writes of the calls, each
    /// with the indexes (into `msgs`) of the messages it handled.
    fn call_all(&mut self, msgs: &[Message]) -> (Vec<CallResult>, Vec<CallWrites>) {
        let per_instance = msgs.len().div_ceil(self.instances.len().max(1)).max(1);
        let chunks: Vec<&[Message]> = msgs.chunks(per_instance).collect();
        let budget = AtomicUsize::new(self.spec.max_batch_output_bytes);
        let caller = Caller {
            spec: &self.spec,
            component: &self.component,
            ctx: &self.ctx,
            stats: &self.stats,
            warnings: &self.warnings,
            budget: &budget,
        };
        let mut results = Vec::with_capacity(msgs.len());
        let mut writes = Vec::new();
        if chunks.len() <= 1 {
            if let Some(chunk) = chunks.first() {
                caller.call_chunked(&mut self.instances[0], chunk, 0, &mut results, &mut writes);
            }
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = self
                    .instances
                    .iter_mut()
                    .zip(chunks)
                    .enumerate()
                    .map(|(i, (inst, chunk))| {
                        let caller = &caller;
                        s.spawn(move || {
                            let (mut r, mut w) = (Vec::with_capacity(chunk.len()), Vec::new());
                            caller.call_chunked(inst, chunk, i * per_instance, &mut r, &mut w);
                            (r, w)
                        })
                    })
                    .collect();
                for h in handles {
                    let (r, w) = h.join().expect("stage instance thread panicked");
                    results.extend(r);
                    writes.extend(w);
                }
            });
        }
        (results, writes)
    }
}

/// Longest reason a dead letter carries: a guest's reason can be as long as
/// its memory, and the dead letter must still fit a record and a log line.
const MAX_REASON_BYTES: usize = 1024;

/// `reason`, cut to [`MAX_REASON_BYTES`] (saying how long it was).
fn bounded(reason: &str) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason.to_owned();
    }
    format!("{}… (cut from {} bytes)", &reason[..reason.floor_char_boundary(MAX_REASON_BYTES)], reason.len())
}

type CallResult = Result<Vec<Output>, CallFailure>;
/// A call's state writes and the indexes of the messages it handled.
type CallWrites = (Arc<PendingWrites>, Vec<usize>);

struct CallFailure {
    failure: Failure,
    /// `guest` for a failure the stage returned, else the host's error kind.
    kind: &'static str,
}

/// What calling a stage's instances needs.
struct Caller<'a> {
    spec: &'a StageSpec,
    component: &'a weir_host::Stage,
    ctx: &'a StageContext,
    stats: &'a StageStats,
    warnings: &'a LogBucket,
    /// Output bytes the stage may still return for this source batch.
    budget: &'a AtomicUsize,
}

/// The kind of a message not called because its batch's outputs filled
/// `max_batch_output_bytes`: released, to come back in a later batch.
const DEFERRED: &str = "deferred";

/// Lines that guests cause (a failed call, a dead letter) are logged at most
/// this often, after a burst; the rest are counted and summarised.
fn guest_driven_log() -> LogBucket {
    LogBucket::new(10, 20)
}

fn summarise_suppressed(what: &str, n: u64) {
    if n > 0 {
        tracing::warn!(suppressed = n, "{n} more log lines about {what} suppressed (at most 10 a second are written)");
    }
}

fn is_retry(r: &MessageResult) -> bool {
    matches!(r, Err(MessageError::Guest(Failure::Retry(_))))
}

impl Caller<'_> {
    /// One call, timed.
    fn call(&self, inst: &mut Instance, batch: &[Message]) -> Result<Vec<MessageResult>, weir_host::Error> {
        let started = Instant::now();
        if inst.is_poisoned() {
            *inst = self.component.instantiate(self.ctx)?;
            self.stats.add_replaced();
        }
        let result = inst.handle_batch(batch);
        if let Err(e) = &result
            && let Some(suppressed) = self.warnings.take()
        {
            tracing::warn!(stage = %self.ctx.stage, error = %e, messages = batch.len(), "stage call failed; replacing the instance");
            summarise_suppressed("failed calls", suppressed);
        }
        let took = started.elapsed();
        self.stats.per_call.record_n(took, 1);
        self.stats.per_message.record_n(took / batch.len().max(1) as u32, batch.len() as u64);
        result
    }

    /// One message's result, with the failure's kind; an output over the
    /// limit is counted as an `output` error and dead-lettered.
    fn settle(&self, r: MessageResult) -> CallResult {
        r.map_err(|e| match e {
            MessageError::Guest(failure) => CallFailure { failure, kind: "guest" },
            MessageError::OutputLimit { .. } => {
                self.stats.add_error("output");
                CallFailure { failure: Failure::Reject(e.to_string()), kind: "output" }
            }
        })
    }

    /// Call one instance on `msgs` (indexes from `base`), `batch_size` at a
    /// time. When a call fails as a whole (trap, timeout, memory), the
    /// instance is replaced and the batch's messages are retried one by one,
    /// so only the culprit is charged. So are they when a stateful call asks
    /// to retry one of them, so the others' state writes can stand.
    ///
    /// Once the stage's outputs for this source batch pass
    /// `max_batch_output_bytes`, the rest of its messages are not called but
    /// deferred: released to come back in a later batch.
    fn call_chunked(&self, inst: &mut Instance, msgs: &[Message], base: usize, out: &mut Vec<CallResult>, writes: &mut Vec<CallWrites>) {
        for (n, batch) in msgs.chunks(self.spec.batch_size).enumerate() {
            let first = base + n * self.spec.batch_size;
            if self.budget.load(Ordering::Relaxed) == 0 {
                out.extend(batch.iter().map(|_| Err(CallFailure { failure: Failure::Retry("deferred".into()), kind: DEFERRED })));
                continue;
            }
            let before = out.len();
            self.call_one(inst, batch, first, out, writes);
            let used: usize = out[before..].iter().filter_map(|r| r.as_ref().ok()).flatten().map(weir_host::output_bytes).sum();
            let _ = self.budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| Some(left.saturating_sub(used)));
        }
    }

    /// One call of `batch_size` messages, replayed one by one if it fails.
    fn call_one(&self, inst: &mut Instance, batch: &[Message], first: usize, out: &mut Vec<CallResult>, writes: &mut Vec<CallWrites>) {
        match self.call(inst, batch) {
            Ok(results) => match inst.take_writes() {
                Some(w) if results.iter().any(is_retry) => {
                    w.abort();
                    if batch.len() > 1 {
                        self.one_by_one(inst, batch, first, out, writes);
                    } else {
                        out.extend(results.into_iter().map(|r| self.settle(r)));
                    }
                }
                w => {
                    if let Some(w) = w {
                        writes.push((w, (first..first + batch.len()).collect()));
                    }
                    out.extend(results.into_iter().map(|r| self.settle(r)));
                }
            },
            Err(_) if batch.len() > 1 => self.one_by_one(inst, batch, first, out, writes),
            Err(e) => out.push(Err(host_failure(self.stats, e))),
        }
    }

    fn one_by_one(&self, inst: &mut Instance, msgs: &[Message], first: usize, out: &mut Vec<CallResult>, writes: &mut Vec<CallWrites>) {
        for (i, msg) in msgs.iter().enumerate() {
            match self.call(inst, std::slice::from_ref(msg)) {
                Ok(mut r) => {
                    let r = r.pop().expect("one result");
                    if let Some(w) = inst.take_writes() {
                        if is_retry(&r) {
                            w.abort();
                        } else {
                            writes.push((w, vec![first + i]));
                        }
                    }
                    out.push(self.settle(r));
                }
                Err(e) => out.push(Err(host_failure(self.stats, e))),
            }
        }
    }
}

fn host_failure(stats: &StageStats, e: weir_host::Error) -> CallFailure {
    let kind = match &e {
        weir_host::Error::Call { kind, .. } => kind.as_str(),
        _ => "instantiate",
    };
    stats.add_error(kind);
    CallFailure { failure: Failure::Retry(e.to_string()), kind }
}

struct SinkWorker<'a> {
    pipeline: &'a Pipeline,
    queue: Queue,
    state: StateStore,
    /// Source ids survive restarts: use the applied set and dead-letter ids.
    durable_ids: bool,
    /// What dead letters name as their source.
    source_name: String,
    /// `GROUP/SOURCE`, which starts the ids of dead letters (`dlq/GROUP/SOURCE/..`,
    /// as the queue's consumer makes them too) and NATS outputs; `None` when
    /// source ids do not survive restarts.
    id_prefix: Option<String>,
    /// Sinks taking the last stage's outputs.
    main_sinks: Vec<usize>,
    /// Routed topic → the sinks taking it (`from`).
    routes: HashMap<String, Vec<usize>>,
    /// One per sink; `Some` for file sinks.
    files: Vec<Option<std::fs::File>>,
    /// The connection, when a sink or the dead letters go to NATS.
    nats: Option<Arc<Nats>>,
    /// Set to stop: a NATS publish stops retrying (nothing is acknowledged).
    stop: &'a AtomicBool,
    stats: &'a PipelineStats,
    settle: Sender<Settlement>,
    /// Rate limit for lines about dead letters.
    dead_letter_log: LogBucket,
    /// The source's floor (see [`StateStore::set_floor`]), when it has one.
    floor: &'a Mutex<Option<Vec<u64>>>,
}

/// Where and why a message was dead-lettered.
pub(crate) struct DeadLetter<'a> {
    pub(crate) stage: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) reason: String,
    /// The source's name (its topic, or `stdin`, ...).
    pub(crate) source: &'a str,
    pub(crate) id: DeliveryId,
    pub(crate) attempt: u32,
}

impl DeadLetter<'_> {
    /// Say it in `rec`'s headers, the same way for every dead letter.
    pub(crate) fn add_headers(self, rec: &mut Record) {
        for (k, v) in [
            (dlq_headers::REASON, self.reason),
            (dlq_headers::ERROR_KIND, self.kind.to_owned()),
            (dlq_headers::STAGE, self.stage.to_owned()),
            (dlq_headers::SOURCE_TOPIC, self.source.to_owned()),
            (dlq_headers::SOURCE_PARTITION, self.id.partition.to_string()),
            (dlq_headers::SOURCE_OFFSET, self.id.offset.to_string()),
            (dlq_headers::ATTEMPTS, self.attempt.to_string()),
        ] {
            rec.headers.push((k.to_owned(), v.into_bytes()));
        }
    }
}

/// Open (appending, creating) every file sink, so a bad path fails the run
/// before it pulls a message.
fn open_file_sinks(pipeline: &Pipeline) -> Result<Vec<Option<std::fs::File>>> {
    pipeline
        .sinks
        .iter()
        .map(|s| match &s.kind {
            Sink::File { path, .. } => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(Some)
                .map_err(|e| Error::Sink(format!("{}: {}: {e}", s.name, path.display()))),
            _ => Ok(None),
        })
        .collect()
}

/// A message as one output line: its payload's bytes, or a JSON object.
fn line(json: bool, msg: &Message, out: &mut Vec<u8>) {
    if json {
        out.extend_from_slice(crate::json_line(msg).as_bytes());
    } else {
        out.extend_from_slice(&msg.payload);
    }
    out.push(b'\n');
}

/// Give `msg` to each sink in `to`: a copy to all but the last, which takes it.
fn fan_out(per_sink: &mut [Vec<Message>], to: &[usize], msg: Message) {
    if let Some((&last, rest)) = to.split_last() {
        for &i in rest {
            per_sink[i].push(msg.clone());
        }
        per_sink[last].push(msg);
    }
}

/// A routed output as a message, placed at its origin.
fn routed_message(o: &Origin, topic: String, out: Output) -> Message {
    Message {
        topic,
        partition: o.id.partition,
        offset: o.id.offset,
        key: out.key,
        payload: out.payload,
        headers: out.headers,
        timestamp_ms: 0,
        attempt: o.attempt,
    }
}

fn record(msg: Message) -> Record {
    Record { key: msg.key, headers: msg.headers, payload: msg.payload, timestamp_ms: Some(msg.timestamp_ms), id: None }
}

impl SinkWorker<'_> {
    fn run(mut self, input: Receiver<Batch>) -> Result<()> {
        let stdout = std::io::stdout();
        let mut result = Ok(());
        while let Ok(batch) = input.recv() {
            match self.write(batch, &mut stdout.lock()) {
                Ok(settlement) => {
                    if self.settle.send(settlement).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        summarise_suppressed("dead letters", self.dead_letter_log.take_suppressed());
        result
    }

    /// Why sink `i` cannot take a message of these parts, if it cannot. The
    /// queue refuses records over its size and header limits, NATS messages
    /// over the server's `max_payload`.
    fn refusal(&self, i: usize, key: Option<&[u8]>, headers: &[(String, Vec<u8>)], payload: usize) -> Option<String> {
        let spec = &self.pipeline.sinks[i];
        match &spec.kind {
            Sink::Queue { .. } => weir_queue::check_parts(key, headers, payload).err().map(|e| format!("sink {}: {e}", spec.name)),
            Sink::Nats { .. } => {
                let (size, max) = (crate::nats::wire_len(key, headers, payload), self.nats.as_ref()?.max_payload());
                (size > max).then(|| format!("sink {}: a message of {size} bytes exceeds the NATS server's max_payload ({max})", spec.name))
            }
            Sink::Stdout { .. } | Sink::File { .. } => None,
        }
    }

    /// Fail, alone, each origin one of whose outputs a sink or a routed topic
    /// could not store, before anything is written: no value a guest
    /// controls may fail a whole batch's write. (Outputs within the stage's
    /// limits fit the queue; this catches what the queue or NATS refuses.)
    fn vet(&self, batch: &mut Batch) {
        let Batch { origins, items, routed, .. } = batch;
        let fail = |origins: &mut Vec<Origin>, origin: usize, reason: String, msg: Message| {
            let o = &mut origins[origin];
            if matches!(o.fate, Fate::Ok) {
                o.fate = Fate::Dead { stage: "sink".into(), kind: "output", reason, msg };
            }
        };
        for item in items.iter() {
            let m = &item.msg;
            if let Some(reason) = self.main_sinks.iter().find_map(|&i| self.refusal(i, m.key.as_deref(), &m.headers, m.payload.len())) {
                fail(origins, item.origin, reason, m.clone());
            }
        }
        for (origin, topic, out) in routed.iter() {
            let (key, headers, payload) = (out.key.as_deref(), &out.headers, out.payload.len());
            let to_topic = self.pipeline.topics.contains_key(topic).then(|| weir_queue::check_parts(key, headers, payload).err()).flatten();
            let refused = to_topic
                .map(|e| format!("topic {topic}: {e}"))
                .or_else(|| self.routes.get(topic).and_then(|takers| takers.iter().find_map(|&i| self.refusal(i, key, headers, payload))));
            if let Some(reason) = refused {
                let msg = routed_message(&origins[*origin], topic.clone(), out.clone());
                fail(origins, *origin, reason, msg);
            }
        }
    }

    /// Make a dead letter fit where it goes: without its payload if it is
    /// too large (header `weir.payload-dropped` says how large it was), and
    /// without its own key and headers if even that is not enough.
    fn fit_dead_letter(&self, rec: &mut Record) {
        let fits = |r: &Record| match &self.pipeline.dead_letter {
            DeadLetterTo::Topic(_) => r.validate().is_ok(),
            DeadLetterTo::Nats { .. } => {
                self.nats.as_ref().is_none_or(|n| crate::nats::wire_len(r.key.as_deref(), &r.headers, r.payload.len()) <= n.max_payload())
            }
        };
        if fits(rec) {
            return;
        }
        let dropped = std::mem::take(&mut rec.payload).len();
        rec.headers.push((dlq_headers::PAYLOAD_DROPPED.into(), dropped.to_string().into_bytes()));
        if !fits(rec) {
            rec.key = None;
            rec.headers.retain(|(k, _)| k.starts_with("weir."));
        }
    }

    /// Decide which of the batch's state writes can be committed. A write set
    /// stands only if every message it handled is settled for good; if not,
    /// it is aborted (with every later one of its stage) and its other
    /// messages are released to be redone. Repeats until nothing changes.
    fn resolve_state(&self, batch: &mut Batch) {
        if batch.writes.is_empty() {
            return;
        }
        if self.durable_ids {
            let applied = self.state.applied();
            for o in &mut batch.origins {
                if o.fate.is_final() && applied.contains(&(o.id.partition, o.id.offset)) {
                    o.fate = Fate::Applied;
                }
            }
        }
        loop {
            let mut changed = false;
            for d in &batch.writes {
                if !d.writes.is_aborted()
                    && d.origins.iter().all(|&i| batch.origins[i].fate.is_final() && !matches!(batch.origins[i].fate, Fate::Applied))
                {
                    continue;
                }
                if !d.writes.is_aborted() {
                    // Also aborts later write sets, maybe ones already passed over.
                    d.writes.abort();
                    changed = true;
                }
                for &i in &d.origins {
                    let fate = &mut batch.origins[i].fate;
                    if matches!(fate, Fate::Ok | Fate::Dead { .. }) {
                        *fate = Fate::Release;
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
    }

    /// Make the surviving state writes durable with the ids of the messages
    /// acknowledged, then let the stages read them as committed.
    fn commit_state(&mut self, batch: &mut Batch, acks: &[DeliveryId]) -> Result<()> {
        let mut live: Vec<StateDelta> = std::mem::take(&mut batch.writes).into_iter().filter(|d| !d.writes.is_aborted()).collect();
        live.sort_by_key(|d| (d.stage, d.writes.seq()));
        let ops: Vec<StateWrite> = live
            .iter()
            .flat_map(|d| {
                let stage = &self.pipeline.stages[d.stage].name;
                d.writes.writes().iter().map(|(k, v)| StateWrite { stage: stage.clone(), key: k.clone(), value: v.clone() })
            })
            .collect();
        if !ops.is_empty() {
            if let Some(floor) = self.floor.lock().unwrap().take() {
                self.state.set_floor(floor);
            }
            let ids: Vec<(u32, u64)> =
                if self.durable_ids { acks.iter().map(|id| (id.partition, id.offset)).collect() } else { Vec::new() };
            self.state.commit(&ops, &ids)?;
        }
        for d in live {
            d.writes.committed();
        }
        Ok(())
    }

    fn write(&mut self, mut batch: Batch, out: &mut impl Write) -> Result<Settlement> {
        let sinks = &self.pipeline.sinks;
        // An output to a topic that is neither declared nor taken by a sink
        // makes its origin a dead letter, carrying that output.
        for (origin, topic, out) in std::mem::take(&mut batch.routed) {
            if self.pipeline.topics.contains_key(&topic) || self.routes.contains_key(&topic) {
                batch.routed.push((origin, topic, out));
                continue;
            }
            let o = &mut batch.origins[origin];
            if matches!(o.fate, Fate::Ok) {
                let reason = format!("output names topic {topic:?}, which the pipeline neither declares nor sends to a sink");
                let msg = routed_message(o, topic, out);
                o.fate = Fate::Dead { stage: "routing".into(), kind: "routing", reason, msg };
            }
        }
        self.vet(&mut batch);
        // Before any output is taken: it may release messages.
        self.resolve_state(&mut batch);

        // What each sink gets, in order.
        let mut per_sink: Vec<Vec<Message>> = vec![Vec::new(); sinks.len()];
        for item in std::mem::take(&mut batch.items) {
            if matches!(batch.origins[item.origin].fate, Fate::Ok) {
                fan_out(&mut per_sink, &self.main_sinks, item.msg);
            }
        }
        let mut by_topic: BTreeMap<&str, Vec<Record>> = BTreeMap::new();
        for (origin, topic, out) in std::mem::take(&mut batch.routed) {
            let o = &batch.origins[origin];
            if !matches!(o.fate, Fate::Ok) {
                continue;
            }
            let takers = self.routes.get(&topic).map_or(&[][..], Vec::as_slice);
            let declared = self.pipeline.topics.get_key_value(&topic).map(|(name, _)| name.as_str());
            // The output itself goes to the topic unless sinks need it too.
            let (rec, msg) = if takers.is_empty() {
                (Record { key: out.key, headers: out.headers, payload: out.payload, timestamp_ms: None, id: None }, None)
            } else {
                let rec = Record {
                    key: out.key.clone(),
                    headers: out.headers.clone(),
                    payload: out.payload.clone(),
                    timestamp_ms: None,
                    id: None,
                };
                (rec, Some(routed_message(o, topic, out)))
            };
            if let Some(name) = declared {
                by_topic.entry(name).or_default().push(rec);
            }
            if let Some(msg) = msg {
                fan_out(&mut per_sink, takers, msg);
            }
        }

        let mut acks = Vec::new();
        let mut naks = Vec::new();
        let mut releases = Vec::new();
        let mut dead = Vec::new();
        let mut dead_ids = Vec::new();
        for o in &mut batch.origins {
            match std::mem::replace(&mut o.fate, Fate::Ok) {
                Fate::Ok | Fate::Applied => acks.push(o.id),
                Fate::Retry { delay } => naks.push((o.id, delay)),
                Fate::Release => releases.push(o.id),
                Fate::Dead { stage, kind, reason, msg } => {
                    if let Some(suppressed) = self.dead_letter_log.take() {
                        tracing::warn!(%stage, kind, %reason, partition = o.id.partition, offset = o.id.offset, "message dead-lettered");
                        summarise_suppressed("dead letters", suppressed);
                    }
                    let mut rec = record(msg);
                    let why = DeadLetter { stage: &stage, kind, reason, source: &self.source_name, id: o.id, attempt: o.attempt };
                    why.add_headers(&mut rec);
                    // Same id as the queue's own dead letters: a replay after a
                    // crash between this write and the ack does not duplicate it.
                    if let Some(prefix) = &self.id_prefix {
                        rec.id = Some(format!("dlq/{prefix}/{}/{}", o.id.partition, o.id.offset));
                    }
                    self.fit_dead_letter(&mut rec);
                    dead.push(rec);
                    dead_ids.push(o.id);
                }
            }
        }
        let dead_count = dead.len() as u64;
        let outputs: u64 = per_sink.iter().map(|m| m.len() as u64).sum::<u64>() + by_topic.values().map(|r| r.len() as u64).sum::<u64>();
        let mut to_nats: Vec<(&str, bool, IdRecords)> = Vec::new();
        if !dead.is_empty() {
            match &self.pipeline.dead_letter {
                DeadLetterTo::Topic(t) => by_topic.entry(t).or_default().extend(dead),
                DeadLetterTo::Nats { subject, .. } => to_nats.push((subject, false, dead.into_iter().map(|r| (r.id.clone(), r)).collect())),
            }
        }
        let written_at: Vec<u64> = per_sink.iter().flatten().map(|m| m.timestamp_ms).collect();
        let mut printed = Vec::new();
        let mut buf = Vec::new();
        for ((spec, msgs), file) in sinks.iter().zip(per_sink).zip(&mut self.files) {
            if msgs.is_empty() {
                continue;
            }
            match &spec.kind {
                Sink::Nats { subject, core, .. } => to_nats.push((subject, *core, output_ids(self.id_prefix.as_deref(), &spec.name, msgs))),
                Sink::Queue { topic } => by_topic.entry(topic).or_default().extend(msgs.into_iter().map(record)),
                Sink::Stdout { json } => msgs.iter().for_each(|m| line(*json, m, &mut printed)),
                Sink::File { path, json } => {
                    buf.clear();
                    msgs.iter().for_each(|m| line(*json, m, &mut buf));
                    let file = file.as_mut().expect("file sinks are opened at start");
                    file.write_all(&buf)
                        .and_then(|()| file.sync_data())
                        .map_err(|e| Error::Sink(format!("{}: {}: {e}", spec.name, path.display())))?;
                }
            }
        }
        // Durable before anything is acknowledged.
        for (topic, records) in &by_topic {
            self.queue.publish(topic, records)?;
        }
        for (subject, core, records) in to_nats {
            self.nats.as_ref().expect("NATS sinks have a connection").publish(subject, records, core, self.stop)?;
        }
        if !printed.is_empty() {
            let written = out.write_all(&printed).and_then(|()| out.flush());
            if let Err(e) = written
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                return Err(Error::Sink(format!("stdout: {e}")));
            }
        }
        self.commit_state(&mut batch, &acks)?;
        self.stats.sink_written(outputs, dead_count);
        self.stats.sink_end_to_end.record_all(written_at.into_iter().filter_map(|t| since(now_ms(), t)));
        self.stats.settled(acks.len() + dead_ids.len(), naks.len(), releases.len());
        Ok(Settlement { acks, dead: dead_ids, naks, releases })
    }
}

/// Outputs as records, each with an id made of where it comes from
/// (`GROUP/SOURCE/PARTITION/OFFSET/SINK/N`, the N-th output of that
/// source message to that sink), so that NATS stores an output once even
/// when its input is redelivered. No ids when source ids do not survive
/// a restart.
fn output_ids(prefix: Option<&str>, sink: &str, msgs: Vec<Message>) -> IdRecords {
    let Some(prefix) = prefix else { return msgs.into_iter().map(|m| (None, record(m))).collect() };
    let mut seen: HashMap<(u32, u64), u32> = HashMap::new();
    msgs.into_iter()
        .map(|m| {
            let n = seen.entry((m.partition, m.offset)).or_default();
            let id = format!("{prefix}/{}/{}/{sink}/{n}", m.partition, m.offset);
            *n += 1;
            (Some(id), record(m))
        })
        .collect()
}
