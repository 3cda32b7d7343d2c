//! The sink worker: routes outputs to sinks, writes them and dead letters durably, commits state, then settles.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use weir_host::Output;
use weir_queue::{DeliveryId, Message, Queue, Record, StateStore, StateWrite, dlq_headers};

use super::Finished;
use super::dead_log::DeadLetterLog;
use crate::Result;
use crate::batch::{Batch, DeadLetter, Fate, Origin, Settlement, StateDelta};
use crate::config::{DeadLetterTo, Pipeline};
use crate::nats::Nats;
use crate::sink::{SinkWriter, Writes};
use crate::stats::{PipelineStats, now_us, since};

pub(super) struct SinkWorker<'a> {
    pub(super) pipeline: &'a Pipeline,
    pub(super) queue: Queue,
    pub(super) state: StateStore,
    /// Each stage's view of it, to stop if one failed to read.
    pub(super) stage_states: Vec<Arc<weir_host::StageState>>,
    /// Source ids survive restarts: use the applied set and dead-letter ids.
    pub(super) durable_ids: bool,
    /// What dead letters name as their source.
    pub(super) source_name: String,
    /// `GROUP/SOURCE`, which starts the ids of dead letters (`dlq/GROUP/SOURCE/..`,
    /// as the queue's consumer makes them too); `None` when source ids do
    /// not survive restarts.
    pub(super) id_prefix: Option<String>,
    /// Sinks taking the last stage's outputs.
    pub(super) main_sinks: Vec<usize>,
    /// Routed topic → the sinks taking it (`from`).
    pub(super) routes: HashMap<String, Vec<usize>>,
    /// One per sink of the pipeline, in order.
    pub(super) sinks: Vec<Box<dyn SinkWriter>>,
    /// The connection, when a sink or the dead letters go to NATS.
    pub(super) nats: Option<Arc<Nats>>,
    /// Set to stop: a NATS publish stops retrying (nothing is acknowledged).
    pub(super) stop: &'a AtomicBool,
    pub(super) stats: &'a PipelineStats,
    pub(super) settle: Settle,
    /// What is logged about dead letters (the first few, then counts).
    pub(super) dead_letter_log: DeadLetterLog,
    /// The source's floor (see [`StateStore::set_floor`]), when it has one.
    pub(super) floor: &'a Mutex<Option<Vec<u64>>>,
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
        topic: topic.into(),
        partition: o.id.partition,
        offset: o.id.offset,
        key: out.key,
        payload: out.payload,
        headers: out.headers,
        timestamp_us: 0,
        event_time_ms: 0,
        attempt: o.attempt,
    }
}

/// A routed output as the record its topic stores (stamped when appended).
fn routed_record(out: Output) -> Record {
    Record { key: out.key.map(Vec::from), headers: out.headers, payload: out.payload.into(), timestamp_us: None, id: None }
}

/// Most batches the sink writes together.
pub(super) const MAX_GROUP: usize = 16;

/// A batch settled and its writes gathered, waiting for them to be durable.
struct Prepared {
    batch: Batch,
    done: Done,
}

/// What is left of a batch once its outputs are written: to count it and
/// hand its settlement back when they are durable.
struct Done {
    settlement: Settlement,
    /// Outputs written, for the counters.
    outputs: u64,
    /// Dead letters written.
    dead: u64,
    /// The producer times of the outputs, µs since the Unix epoch.
    written_at: Vec<u64>,
}

impl Done {
    /// Count the batch as written, its outputs durable now; its settlement.
    fn count(self, stats: &PipelineStats) -> Settlement {
        let Done { settlement, outputs, dead, written_at } = self;
        stats.sink_written(outputs, dead);
        let now = now_us();
        stats.sink_end_to_end.record_all(written_at.into_iter().filter_map(|t| since(now, t)));
        stats.settled(settlement.acks.len() + settlement.dead.len(), settlement.naks.len(), settlement.releases.len());
        settlement
    }
}

/// Where the sink hands its settlements.
pub(super) enum Settle {
    /// Straight to the source.
    Now(Sender<Settlement>),
    /// Through [`settle_when_durable`]'s thread, in order with the batches
    /// waiting there for their fsync. The sink then holds no sender to the
    /// source: if that thread stops, the source hears at once.
    WhenDurable(SyncSender<Written>),
}

/// Batches written, to be counted and settled once what they appended
/// (if anything) is durable.
pub(super) struct Written {
    appended: Vec<weir_queue::Appended>,
    done: Vec<Done>,
}

/// The thread beside a sink on the source's thread when a topic it writes
/// syncs every write (`fsync = "always"`): waits for the fsyncs of what
/// the sink appended, then counts and settles it, in order. Meanwhile the
/// source goes on fetching and the sink appends the next batches, which
/// the next fsync covers: waiting itself, the sink would hold the source
/// for the fsync, and every message due meanwhile would wait for it and
/// then for one more.
pub(super) fn settle_when_durable(
    queue: &Queue,
    stats: &PipelineStats,
    settle: Sender<Settlement>,
    input: Receiver<Written>,
) -> Result<()> {
    while let Ok(Written { appended, done }) = input.recv() {
        for a in appended {
            queue.wait_durable(a)?;
        }
        for d in done {
            if settle.send(d.count(stats)).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Whether a topic the sink may write syncs every write: then a sink on
/// the source's thread is given [`settle_when_durable`]'s thread. Those
/// are the topics the pipeline names (its queue sinks', the dead letters'
/// and the declared ones, which outputs may be routed to): compiling the
/// pipeline puts them all in `pipeline.topics`, and they exist by now.
pub(super) fn writes_synced_topic(pipeline: &Pipeline, queue: &Queue) -> bool {
    pipeline.topics.keys().any(|t| queue.topic_info(t).is_ok_and(|i| i.config.fsync == weir_queue::Fsync::Always))
}

impl SinkWorker<'_> {
    /// The sink thread: writes what comes from `input` until it closes.
    /// `finished` counts the batches written, when the sink is the
    /// source's next thread.
    pub(super) fn run(mut self, input: Receiver<Batch>, finished: Option<&Finished>) -> Result<()> {
        let mut result = Ok(());
        while let Ok(first) = input.recv() {
            // The batches that arrived while the last ones were written go
            // out together: one publish and one fsync per topic for all of
            // them, so a sink that waits for its disk does not fall behind
            // by a batch per fsync.
            let mut group = vec![first];
            while group.len() < MAX_GROUP
                && let Ok(b) = input.try_recv()
            {
                group.push(b);
            }
            let batches = group.len();
            match self.write_group(group) {
                Ok(true) => {
                    if let Some(f) = finished {
                        f.add(batches);
                    }
                }
                Ok(false) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.finish();
        result
    }

    /// Write `group` and hand its settlements to the source; `false` when
    /// the source has stopped listening (or the thread settling for the
    /// sink stopped: its join reports why).
    pub(super) fn write_group(&mut self, group: Vec<Batch>) -> Result<bool> {
        self.write(group, &mut std::io::stdout().lock())
    }

    /// At the end of the run: the last summary of dead letters.
    pub(super) fn finish(&mut self) {
        self.dead_letter_log.tick(true);
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
                o.fate = Fate::Dead { stage: "sink".into(), kind: "output", reason, msg, module: None };
            }
        };
        for item in items.iter() {
            let m = &item.msg;
            if let Some(reason) = self.main_sinks.iter().find_map(|&i| self.sinks[i].refusal(m.key.as_deref(), &m.headers, m.payload.len()))
            {
                fail(origins, item.origin, reason, m.clone());
            }
        }
        for (origin, topic, out) in routed.iter() {
            let (key, headers, payload) = (out.key.as_deref(), &out.headers, out.payload.len());
            let to_topic = self.pipeline.topics.contains_key(topic).then(|| weir_queue::check_parts(key, headers, payload).err()).flatten();
            let refused = to_topic.map(|e| format!("topic {topic}: {e}")).or_else(|| {
                self.routes.get(topic).and_then(|takers| takers.iter().find_map(|&i| self.sinks[i].refusal(key, headers, payload)))
            });
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
                if !o.timer && o.fate.is_final() && applied.contains(&(o.id.partition, o.id.offset)) {
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
        // A stage that could not read its state may have computed anything:
        // stop before its messages are acknowledged.
        if let Some(failure) = self.stage_states.iter().find_map(|s| s.failure()) {
            return Err(crate::Error::State(failure));
        }
        let mut live: Vec<StateDelta> = std::mem::take(&mut batch.writes).into_iter().filter(|d| !d.writes.is_aborted()).collect();
        live.sort_by_key(|d| (d.stage, d.writes.seq()));
        let ops: Vec<StateWrite> = live.iter().flat_map(|d| d.writes.store_writes(&self.pipeline.stages[d.stage].name)).collect();
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

    /// Write the outputs and dead letters of `batches` durably, together,
    /// then commit their state writes, count them and settle them, one by
    /// one, in order; `false` when the source stopped listening.
    ///
    /// Batches that only append to topics, with no state to commit, are
    /// handed to [`settle_when_durable`]'s thread, when there is one, to
    /// be settled once durable. The rest wait here: their state commit
    /// must follow their outputs (and checks the ids already applied,
    /// which the commits before it must have added), and what goes to
    /// NATS or standard output goes after the topics' writes are durable.
    fn write(&mut self, batches: Vec<Batch>, out: &mut impl Write) -> Result<bool> {
        let taken = now_us();
        let mut writes = Writes::default();
        let mut prepared = Vec::with_capacity(batches.len());
        for batch in batches {
            prepared.push(self.prepare(batch, &mut writes)?);
        }
        self.stats.sink_arrival.record_all(prepared.iter().flat_map(|p| &p.done.written_at).filter_map(|&t| since(taken, t)));
        self.dead_letter_log.tick(false);
        if let Settle::WhenDurable(tx) = &self.settle
            && writes.only_topics()
            && prepared.iter().all(|p| p.batch.writes.is_empty())
        {
            let appended = writes.append(&self.queue)?;
            let done = prepared.into_iter().map(|p| p.done).collect();
            return Ok(tx.send(Written { appended, done }).is_ok());
        }
        // Durable before anything is acknowledged.
        writes.flush(&self.queue, self.nats.as_ref(), self.stop, out)?;
        let mut done = Vec::with_capacity(prepared.len());
        for Prepared { mut batch, done: d } in prepared {
            self.commit_state(&mut batch, &d.settlement.acks)?;
            done.push(d);
        }
        Ok(match &self.settle {
            Settle::Now(tx) => done.into_iter().all(|d| tx.send(d.count(self.stats)).is_ok()),
            Settle::WhenDurable(tx) => tx.send(Written { appended: Vec::new(), done }).is_ok(),
        })
    }

    /// Settle `batch` and add what it publishes to `writes`; file and
    /// stdout sinks take their outputs now.
    fn prepare(&mut self, mut batch: Batch, writes: &mut Writes) -> Result<Prepared> {
        self.refuse_unknown_topics(&mut batch);
        self.vet(&mut batch);
        // Before any output is taken: it may release messages.
        self.resolve_state(&mut batch);

        // What each sink gets, in order; routed outputs go to their topic too.
        let mut per_sink: Vec<Vec<Message>> = vec![Vec::new(); self.sinks.len()];
        for item in std::mem::take(&mut batch.items) {
            if matches!(batch.origins[item.origin].fate, Fate::Ok) {
                fan_out(&mut per_sink, &self.main_sinks, item.msg);
            }
        }
        let mut to_topics = 0;
        for (origin, topic, out) in std::mem::take(&mut batch.routed) {
            let o = &batch.origins[origin];
            if !matches!(o.fate, Fate::Ok) {
                continue;
            }
            let takers = self.routes.get(&topic).map_or(&[][..], Vec::as_slice);
            let declared = self.pipeline.topics.contains_key(&topic);
            if declared {
                to_topics += 1;
                // The output itself goes to the topic unless sinks need it too.
                if takers.is_empty() {
                    writes.publish(&topic, [routed_record(out)]);
                    continue;
                }
                writes.publish(&topic, [routed_record(out.clone())]);
            }
            fan_out(&mut per_sink, takers, routed_message(o, topic, out));
        }

        let (settlement, dead) = self.settle(&mut batch);
        let dead_count = dead.len() as u64;
        if !dead.is_empty() {
            match &self.pipeline.dead_letter {
                DeadLetterTo::Topic(t) => writes.publish(t, dead),
                DeadLetterTo::Nats { subject, .. } => {
                    writes.subjects.push((subject.clone(), false, dead.into_iter().map(|r| (r.id.clone(), r)).collect()))
                }
            }
        }
        let written_at: Vec<u64> = per_sink.iter().flatten().map(|m| m.timestamp_us).collect();
        let outputs = per_sink.iter().map(|m| m.len() as u64).sum::<u64>() + to_topics;
        for (sink, msgs) in self.sinks.iter_mut().zip(per_sink) {
            if !msgs.is_empty() {
                sink.take(msgs, writes)?;
            }
        }
        Ok(Prepared { batch, done: Done { settlement, outputs, dead: dead_count, written_at } })
    }

    /// An output to a topic that is neither declared nor taken by a sink
    /// makes its origin a dead letter, carrying that output.
    fn refuse_unknown_topics(&self, batch: &mut Batch) {
        for (origin, topic, out) in std::mem::take(&mut batch.routed) {
            if self.pipeline.topics.contains_key(&topic) || self.routes.contains_key(&topic) {
                batch.routed.push((origin, topic, out));
                continue;
            }
            let o = &mut batch.origins[origin];
            if matches!(o.fate, Fate::Ok) {
                let reason = format!("output names topic {topic:?}, which the pipeline neither declares nor sends to a sink");
                let msg = routed_message(o, topic, out);
                o.fate = Fate::Dead { stage: "routing".into(), kind: "routing", reason, msg, module: None };
            }
        }
    }

    /// Each origin's settlement by its fate, and the dead letters to write
    /// (with their headers and ids) before any of it is handed back.
    fn settle(&mut self, batch: &mut Batch) -> (Settlement, Vec<Record>) {
        let mut settlement =
            Settlement { acks: Vec::new(), dead: Vec::new(), naks: Vec::new(), releases: Vec::new(), timers_left: batch.timers_left };
        let mut dead = Vec::new();
        for o in &mut batch.origins {
            let fate = std::mem::replace(&mut o.fate, Fate::Ok);
            if o.timer && !matches!(fate, Fate::Dead { .. }) {
                continue; // nothing to settle at the source
            }
            match fate {
                Fate::Ok | Fate::Applied => settlement.acks.push(o.id),
                Fate::Retry { delay } => settlement.naks.push((o.id, delay)),
                Fate::Release => settlement.releases.push(o.id),
                Fate::Dead { stage, kind, reason, msg, module } => {
                    self.dead_letter_log.record(&stage, kind, &reason, o.id.partition, o.id.offset);
                    let mut rec = msg.into_record();
                    let why = DeadLetter {
                        stage: &stage,
                        kind,
                        reason,
                        source: &self.source_name,
                        id: o.id,
                        attempt: o.attempt,
                        module: module.as_deref(),
                    };
                    why.add_headers(&mut rec);
                    // Same id as the queue's own dead letters: a replay after a
                    // crash between this write and the ack does not duplicate it.
                    if let Some(prefix) = &self.id_prefix
                        && !o.timer
                    {
                        rec.id = Some(format!("dlq/{prefix}/{}/{}", o.id.partition, o.id.offset));
                    }
                    self.fit_dead_letter(&mut rec);
                    dead.push(rec);
                    if !o.timer {
                        settlement.dead.push(o.id);
                    }
                }
            }
        }
        (settlement, dead)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::mpsc::{TryRecvError, channel, sync_channel};

    use weir_queue::{FaultInjector, Queue, Record, TopicConfig};

    use super::{Done, Written, settle_when_durable};
    use crate::batch::Settlement;
    use crate::stats::PipelineStats;

    fn done() -> Done {
        let settlement = Settlement { acks: Vec::new(), dead: Vec::new(), naks: Vec::new(), releases: Vec::new(), timers_left: false };
        Done { settlement, outputs: 1, dead: 0, written_at: Vec::new() }
    }

    /// What the settling thread does with one appended batch when the
    /// fsync fails (`fail`) or not: its result, and what the source hears.
    fn settle_one(fail: bool) -> (crate::Result<()>, Result<(), TryRecvError>) {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(FaultInjector::default());
        let queue = Queue::open_with_faults(dir.path(), faults.clone()).unwrap();
        queue.create_topic("out", &TopicConfig::default()).unwrap();
        let (tx, rx) = sync_channel(4);
        let (settle_tx, settle_rx) = channel();
        let appended = vec![queue.append("out", &[Record::new("m")]).unwrap()];
        if fail {
            faults.fail_next_fsync();
        }
        tx.send(Written { appended, done: vec![done()] }).unwrap();
        drop(tx);
        let stats = PipelineStats::new(Vec::new());
        let result = settle_when_durable(&queue, &stats, settle_tx, rx);
        let heard = settle_rx.try_recv().map(|_| ());
        (result, heard)
    }

    #[test]
    fn a_batch_is_settled_once_its_append_is_durable() {
        let (result, heard) = settle_one(false);
        assert!(result.is_ok());
        assert_eq!(heard, Ok(()));
    }

    #[test]
    fn a_failed_fsync_ends_the_settling_thread_with_the_error_and_settles_nothing() {
        let (result, heard) = settle_one(true);
        let err = result.expect_err("the fsync failed");
        assert!(err.to_string().contains("fsync failed"), "{err}");
        assert_eq!(heard, Err(TryRecvError::Disconnected), "the source hears at once that no settlement will come");
    }
}
