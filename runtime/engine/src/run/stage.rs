//! A stage worker and its caller: calls a stage's instances with a batch, replays failures one by one, classifies them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use weir_host::{Failure, Instance, LogBucket, MessageError, MessageResult, Output, PendingWrites, StageContext, TimeDomain, Timer};
use weir_queue::{DeliveryId, Message};

use super::Finished;
use crate::Result;
use crate::batch::{Batch, Fate, Item, Origin, StateDelta};
use crate::config::{LateAction, StageSpec};
use crate::stats::{Handled, StageStats, now_us, since, thread_cpu};

pub(super) struct StageWorker {
    /// Position in the pipeline.
    pub(super) index: usize,
    pub(super) spec: StageSpec,
    pub(super) component: weir_host::Stage,
    pub(super) ctx: StageContext,
    /// One per unit of concurrency; a poisoned one is replaced before its next call.
    pub(super) instances: Vec<Instance>,
    pub(super) stats: Arc<StageStats>,
    /// Rate limit for lines about failed calls.
    pub(super) warnings: LogBucket,
    /// How often each timer that has not yet fired for good has fired.
    pub(super) timer_attempts: HashMap<Timer, u32>,
    /// The running version: its component's SHA-256.
    pub(super) module: Arc<str>,
    /// Where a new version waits to be swapped in.
    pub(super) upgrades: Option<Arc<crate::Upgrades>>,
}

/// How long an idle stage waits for a batch before looking for an upgrade.
const UPGRADE_POLL: Duration = Duration::from_millis(100);

/// Consecutive stages on one thread: each batch goes through them in turn,
/// with no hand-off (no channel, no wake-up, no message moved between
/// cores) between two of them.
pub(super) struct Chain(pub(super) Vec<StageWorker>);

impl Chain {
    /// Between two batches: the only place a version is swapped.
    pub(super) fn between_batches(&mut self) {
        for s in &mut self.0 {
            s.swap_if_upgraded();
        }
    }

    pub(super) fn process(&mut self, mut batch: Batch) -> Batch {
        for s in &mut self.0 {
            batch = s.process(batch);
            batch.sent = Instant::now();
        }
        batch
    }

    /// At the end of the run: the summaries of what was rate-limited.
    pub(super) fn finish(self) {
        for s in self.0 {
            s.ctx.flush_log_summary();
            summarise_suppressed("failed calls", s.warnings.take_suppressed());
        }
    }
}

/// A stage thread: its chain's batches from `input` to `output`.
pub(super) fn run_chain(mut chain: Chain, input: Receiver<Batch>, output: SyncSender<Batch>, finished: Option<&Finished>) {
    loop {
        chain.between_batches();
        let batch = match input.recv_timeout(UPGRADE_POLL) {
            Ok(batch) => batch,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if output.send(chain.process(batch)).is_err() {
            break;
        }
        if let Some(f) = finished {
            f.add(1);
        }
    }
    chain.finish();
}

impl StageWorker {
    /// Take a version that [`crate::Upgrades::upgrade`] started, if any:
    /// from the next batch on, it handles this stage's messages.
    fn swap_if_upgraded(&mut self) {
        let Some(swap) = self.upgrades.as_ref().and_then(|u| u.take(self.index)) else { return };
        let previous = std::mem::replace(&mut self.module, swap.component.digest().into());
        tracing::debug!(stage = %self.spec.name, from = crate::upgrade::short(&previous), to = crate::upgrade::short(&self.module), "stage upgraded between batches");
        self.component = swap.component;
        self.instances = swap.instances;
        self.stats.set_module(&self.module);
        self.stats.add_upgrade();
        let _ = swap.done.send(());
    }

    /// With `tag_outputs`, name the version that made `out`.
    fn tag(&self, out: &mut Output) {
        if self.spec.tag_outputs {
            out.headers.push((weir_queue::dlq_headers::MODULE.to_owned(), self.module.as_bytes().to_vec()));
        }
    }

    fn process(&mut self, mut batch: Batch) -> Batch {
        let started = Instant::now();
        let cpu = thread_cpu();
        // Descendants of origins that already failed upstream are dropped.
        // The items stay where they are until they move on (a message is
        // large enough that moving it twice more costs).
        let mut items = std::mem::take(&mut batch.items);
        items.retain(|it| matches!(batch.origins[it.origin].fate, Fate::Ok));
        self.stats.queue_wait.record_n(started.duration_since(batch.sent), items.len() as u64);
        let now = now_us();
        self.stats.end_to_end.record_all(items.iter().filter_map(|it| since(now, it.msg.timestamp_us)));
        self.stats.add_received(items.len() as u64, items.iter().map(|it| it.msg.payload.len() as u64).sum());
        let mut items = self.sort_out_late(&mut batch, items);
        let (results, writes) = self.call_all(&items);
        for (w, idxs) in writes {
            let origins = idxs.into_iter().map(|i| items[i].origin).collect();
            batch.writes.push(StateDelta { stage: self.index, writes: w, origins });
        }
        // Each message's first output takes its place in the batch (its
        // key, payload and headers replaced: nothing moved); a failed or
        // dropped message leaves it. Outputs past the first of a message
        // that fans out are put in after it at the end.
        let mut handled = Handled::default();
        let mut results = results.into_iter();
        let mut fanned_out: Vec<(usize, Item)> = Vec::new();
        let mut kept = 0;
        items.retain_mut(|item| {
            let result = results.next().expect("a result per message");
            let origin = &mut batch.origins[item.origin];
            if !matches!(origin.fate, Fate::Ok) {
                self.stats.add_abandoned(); // a sibling already failed this origin
                return false;
            }
            match result {
                Err(CallFailure { kind: DEFERRED, .. }) => {
                    self.stats.add_deferred();
                    origin.fate = Fate::Release;
                    false
                }
                Ok(outputs) => {
                    handled.add(&outputs);
                    let mut placed = false;
                    for mut out in outputs {
                        self.tag(&mut out);
                        match out.topic.take() {
                            Some(topic) => batch.routed.push((item.origin, topic, out)),
                            None if !placed => {
                                placed = true;
                                become_output(&mut item.msg, out);
                            }
                            None => fanned_out.push((kept, Item { origin: item.origin, msg: message_from(&item.msg, out) })),
                        }
                    }
                    kept += usize::from(placed);
                    placed
                }
                Err(CallFailure { failure: Failure::Retry(reason), kind }) if origin.attempt < self.spec.max_attempts => {
                    self.stats.add_retried();
                    let reason = bounded(&reason);
                    tracing::debug!(stage = %self.spec.name, %reason, kind, attempt = origin.attempt, "message will be retried");
                    origin.fate = Fate::Retry { delay: self.spec.retry_backoff };
                    false
                }
                Err(CallFailure { failure, kind }) => {
                    let reason = dead_reason(&failure, origin.attempt);
                    self.stats.add_dead(matches!(failure, Failure::Reject(_)));
                    let msg = item.msg.clone(); // shares its buffers
                    origin.fate = Fate::Dead { stage: self.spec.name.clone(), kind, reason, msg, module: Some(self.module.clone()) };
                    false
                }
            }
        });
        self.stats.add_ok(&handled);
        batch.items = if fanned_out.is_empty() { items } else { interleave(items, fanned_out) };
        if let Some(w) = batch.watermark {
            self.ctx.advance_watermark(w);
        }
        if self.component.uses_timers() {
            self.fire_timers(&mut batch);
        }
        self.stats.add_busy(started.elapsed());
        self.stats.add_cpu(thread_cpu().saturating_sub(cpu));
        batch
    }

    /// Apply the stage's `late` policy to the messages whose event time is
    /// behind its watermark (as of the batches before this one) by more than
    /// `allowed_lateness_ms`: count them, and drop or dead-letter them
    /// (kind `late`) or leave them to be called. Returns the rest.
    fn sort_out_late(&self, batch: &mut Batch, items: Vec<Item>) -> Vec<Item> {
        let (Some(late), Some(watermark)) = (self.spec.late, self.ctx.watermark()) else { return items };
        let is_late = |m: &Message| m.event_time_ms.saturating_add(late.allowed_lateness_ms) < watermark;
        if !items.iter().any(|it| is_late(&it.msg)) {
            return items;
        }
        let mut keep = Vec::with_capacity(items.len());
        for it in items {
            if is_late(&it.msg) {
                self.stats.add_late(late.action == LateAction::Drop);
                match late.action {
                    LateAction::Process => {}
                    LateAction::Drop => continue,
                    LateAction::DeadLetter => {
                        let origin = &mut batch.origins[it.origin];
                        if !matches!(origin.fate, Fate::Ok) {
                            self.stats.add_abandoned(); // a sibling already failed this origin
                            continue;
                        }
                        let msg = it.msg;
                        let reason = format!(
                            "late: event time {} is {} ms behind the watermark {watermark} (allowed lateness {} ms)",
                            msg.event_time_ms,
                            watermark - msg.event_time_ms,
                            late.allowed_lateness_ms
                        );
                        self.stats.add_dead(false);
                        origin.fate = Fate::Dead { stage: self.spec.name.clone(), kind: LATE, reason, msg, module: None };
                        continue;
                    }
                }
            }
            keep.push(it);
        }
        keep
    }

    /// Fire the stage's timers that are due: event-time ones the watermark
    /// reached, processing-time ones the clock did; `batch_size` per call,
    /// at most `max_timers_per_batch` in all (so a stage whose timers set
    /// timers due at once cannot keep its thread forever).
    /// Each fired timer becomes an origin of the batch, so what it emits
    /// goes on like a message's outputs, and its call's writes (its delete
    /// among them) stand only if those outputs are settled for good.
    fn fire_timers(&mut self, batch: &mut Batch) {
        // A timer fires once per batch: one to be redone waits for the next.
        let mut fired = HashSet::new();
        // Each round reads what is due once and fires it call by call; a
        // further round fires timers the firings set due at once.
        loop {
            let state = self.ctx.state().clone();
            let room = self.spec.max_timers_per_batch.saturating_sub(fired.len());
            let want = room.max(1);
            let mut due = self.ctx.watermark().map(|w| state.due_timers(TimeDomain::Event, w, want)).unwrap_or_default();
            if due.len() < want {
                due.extend(state.due_timers(TimeDomain::Processing, now_us() / 1000, want - due.len()));
            }
            due.retain(|t| !fired.contains(t));
            if due.is_empty() {
                return;
            }
            if room == 0 {
                // The rest fire with the next batches.
                batch.timers_left = true;
                return;
            }
            let mut due = VecDeque::from(due);
            while !due.is_empty() {
                let chunk: Vec<Timer> = due.drain(..self.spec.batch_size.min(due.len())).collect();
                fired.extend(chunk.iter().cloned());
                self.stats.add_timers_fired(chunk.len() as u64);
                let Some(deleted) = self.fire(batch, chunk) else { return };
                // A firing may delete timers read as due with it (a session
                // merged into another): those no longer fire.
                if !deleted.is_empty() {
                    due.retain(|t| !deleted.contains(t));
                }
            }
        }
    }

    /// Fire `due` in one call (one by one if it fails, so only the culprit
    /// is charged) and add the results to the batch; returns the other
    /// timers the calls deleted, or `None` if no instance could fire them.
    fn fire(&mut self, batch: &mut Batch, due: Vec<Timer>) -> Option<HashSet<Timer>> {
        let firing: HashSet<Timer> = due.iter().cloned().collect();
        let mut deleted = HashSet::new();
        let mut note = |writes: &Option<Arc<PendingWrites>>| {
            let removed = writes.iter().flat_map(|w| w.timers().iter()).filter(|(t, set)| !**set && !firing.contains(*t));
            deleted.extend(removed.map(|(t, _)| t.clone()));
        };
        let inst = self.ready_instance()?;
        let results = match inst.on_timers(&due) {
            Ok(r) => {
                let writes = inst.take_writes();
                if due.len() > 1 && r.iter().any(is_retry) {
                    writes.inspect(|w| w.abort());
                    None
                } else {
                    Some((r.into_iter().map(|r| settle(&self.stats, r)).collect(), writes))
                }
            }
            Err(e) if due.len() == 1 => Some((vec![Err(host_failure(&self.stats, e))], None)),
            Err(_) => None,
        };
        match results {
            Some((r, writes)) => {
                note(&writes);
                self.timer_results(batch, due, r, writes);
            }
            None => {
                for t in due {
                    let inst = self.ready_instance()?;
                    let (r, writes) = match inst.on_timers(std::slice::from_ref(&t)) {
                        Ok(r) => {
                            let writes = inst.take_writes();
                            (r.into_iter().map(|r| settle(&self.stats, r)).collect(), writes)
                        }
                        Err(e) => (vec![Err(host_failure(&self.stats, e))], None),
                    };
                    note(&writes);
                    self.timer_results(batch, vec![t], r, writes);
                }
            }
        }
        Some(deleted)
    }

    /// The instance that fires timers, replaced first if a failure poisoned
    /// it; `None` (logged) if it cannot be: the timers fire later.
    fn ready_instance(&mut self) -> Option<&mut Instance> {
        if self.instances[0].is_poisoned() {
            let worn = self.instances[0].is_worn();
            match self.component.instantiate(&self.ctx) {
                Ok(fresh) => {
                    self.instances[0] = fresh;
                    self.stats.add_replaced(worn);
                }
                Err(e) => {
                    tracing::warn!(stage = %self.spec.name, error = %e, "cannot replace the instance to fire timers; they fire later");
                    return None;
                }
            }
        }
        Some(&mut self.instances[0])
    }

    /// Add fired `timers` to the batch as origins, with their results and
    /// the state writes of the call that fired them.
    fn timer_results(&mut self, batch: &mut Batch, timers: Vec<Timer>, results: Vec<CallResult>, writes: Option<Arc<PendingWrites>>) {
        let first = batch.origins.len();
        let mut keep = Vec::new();
        let mut dead = Vec::new();
        for (i, (t, r)) in timers.into_iter().zip(results).enumerate() {
            let attempt = self.timer_attempts.get(&t).copied().unwrap_or(0) + 1;
            let origin = first + i;
            batch.origins.push(Origin { id: DeliveryId { partition: u32::MAX, offset: t.at_ms }, attempt, fate: Fate::Ok, timer: true });
            let msg = timer_message(&self.spec.name, &t);
            match r {
                Ok(outputs) => {
                    self.timer_attempts.remove(&t);
                    keep.push(origin);
                    for mut out in outputs {
                        self.tag(&mut out);
                        match out.topic.take() {
                            Some(topic) => batch.routed.push((origin, topic, out)),
                            None => batch.items.push(Item { origin, msg: message_from(&msg, out) }),
                        }
                    }
                }
                Err(CallFailure { failure: Failure::Retry(reason), kind }) if attempt < self.spec.max_attempts => {
                    tracing::debug!(stage = %self.spec.name, reason = %bounded(&reason), kind, attempt, "timer will fire again");
                    self.timer_attempts.insert(t, attempt);
                    batch.origins[origin].fate = Fate::Release;
                }
                Err(CallFailure { failure, kind }) => {
                    let reason = dead_reason(&failure, attempt);
                    self.timer_attempts.remove(&t);
                    dead.push((origin, t));
                    batch.origins[origin].fate =
                        Fate::Dead { stage: self.spec.name.clone(), kind, reason, msg, module: Some(self.module.clone()) };
                }
            }
        }
        if let Some(w) = writes {
            if keep.len() == batch.origins.len() - first {
                batch.writes.push(StateDelta { stage: self.index, writes: w, origins: keep });
            } else {
                // Some timer of the call is redone or dead: none of its
                // writes stand (aborting also aborts later write sets, so
                // this comes before the deletes below).
                w.abort();
                for o in &mut batch.origins[first..] {
                    if matches!(o.fate, Fate::Ok) {
                        o.fate = Fate::Release;
                    }
                }
            }
        }
        for (origin, t) in dead {
            // Gone for good once its dead letter is durable, whatever its call wrote.
            let delete = self.ctx.state().delete_timer(t);
            batch.writes.push(StateDelta { stage: self.index, writes: delete, origins: vec![origin] });
        }
    }

    /// Handle `msgs` in batches of `batch_size`, spread over the instances.
    /// Returns a result per message and the state writes of the calls, each
    /// with the indexes (into `msgs`) of the messages it handled.
    fn call_all(&mut self, msgs: &[Item]) -> (Vec<CallResult>, Vec<CallWrites>) {
        let per_instance = msgs.len().div_ceil(self.instances.len().max(1)).max(1);
        let chunks: Vec<&[Item]> = msgs.chunks(per_instance).collect();
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
                            let cpu = thread_cpu();
                            let (mut r, mut w) = (Vec::with_capacity(chunk.len()), Vec::new());
                            caller.call_chunked(inst, chunk, i * per_instance, &mut r, &mut w);
                            caller.stats.add_cpu(thread_cpu().saturating_sub(cpu));
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
pub(super) fn bounded(reason: &str) -> String {
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

/// The error kind of a message dead-lettered for being late.
const LATE: &str = "late";

/// The kind of a message not called because its batch's outputs filled
/// `max_batch_output_bytes`: released, to come back in a later batch.
const DEFERRED: &str = "deferred";

/// Lines that guests cause (a failed call, a dead letter) are logged at most
/// this often, after a burst; the rest are counted and summarised.
pub(super) fn guest_driven_log() -> LogBucket {
    LogBucket::new(10, 20)
}

pub(super) fn summarise_suppressed(what: &str, n: u64) {
    if n > 0 {
        tracing::warn!(suppressed = n, "{n} more log lines about {what} suppressed (at most 10 a second are written)");
    }
}

fn is_retry(r: &MessageResult) -> bool {
    matches!(r, Err(MessageError::Guest(Failure::Retry(_))))
}

impl Caller<'_> {
    /// One call, timed.
    pub(super) fn call(&self, inst: &mut Instance, batch: &[Item]) -> Result<Vec<MessageResult>, weir_host::Error> {
        let started = Instant::now();
        if inst.is_poisoned() {
            let worn = inst.is_worn();
            *inst = self.component.instantiate(self.ctx)?;
            self.stats.add_replaced(worn);
        }
        let result = inst.handle_batch(batch);
        if let Err(e) = &result
            && let Some(suppressed) = self.warnings.take()
        {
            tracing::warn!(stage = %self.ctx.stage, error = %e, messages = batch.len(), "stage call failed; replacing the instance");
            summarise_suppressed("failed calls", suppressed);
        }
        let took = started.elapsed();
        self.stats.per_call.record(took);
        self.stats.per_message.record_n(took / batch.len().max(1) as u32, batch.len() as u64);
        result
    }

    /// One message's result, with the failure's kind; an output over the
    /// limit is counted as an `output` error and dead-lettered.
    pub(super) fn settle(&self, r: MessageResult) -> CallResult {
        settle(self.stats, r)
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
    fn call_chunked(&self, inst: &mut Instance, msgs: &[Item], base: usize, out: &mut Vec<CallResult>, writes: &mut Vec<CallWrites>) {
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
    fn call_one(&self, inst: &mut Instance, batch: &[Item], first: usize, out: &mut Vec<CallResult>, writes: &mut Vec<CallWrites>) {
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

    fn one_by_one(&self, inst: &mut Instance, msgs: &[Item], first: usize, out: &mut Vec<CallResult>, writes: &mut Vec<CallWrites>) {
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

/// A fired timer as the message its outputs descend from: topic
/// `STAGE.timers`, its key, its time as event time, and headers saying
/// what it was (what a dead letter of it carries).
fn timer_message(stage: &str, t: &Timer) -> Message {
    let domain = match t.domain {
        TimeDomain::Event => "event-time",
        TimeDomain::Processing => "processing-time",
    };
    Message {
        topic: format!("{stage}.timers").into(),
        partition: u32::MAX,
        offset: t.at_ms,
        key: Some(t.key.clone().into()),
        payload: Default::default(),
        headers: vec![("weir.timer.domain".into(), domain.into()), ("weir.timer.at-ms".into(), t.at_ms.to_string().into_bytes())],
        timestamp_us: now_us(),
        event_time_ms: t.at_ms,
        attempt: 1,
    }
}

/// One message's (or timer's) result, with the failure's kind; an output
/// over the limit is counted as an `output` error and dead-lettered.
fn settle(stats: &StageStats, r: MessageResult) -> CallResult {
    r.map_err(|e| match e {
        MessageError::Guest(failure) => CallFailure { failure, kind: "guest" },
        MessageError::OutputLimit { .. } => {
            stats.add_error("output");
            CallFailure { failure: Failure::Reject(e.to_string()), kind: "output" }
        }
    })
}

/// The reason a dead letter carries for `failure` on its `attempt`th try.
fn dead_reason(failure: &Failure, attempt: u32) -> String {
    match failure {
        Failure::Retry(r) => format!("{} (gave up after {attempt} attempts)", bounded(r)),
        Failure::Reject(r) => bounded(r),
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

/// `out` as a message descending from `origin_msg` (its topic, partition,
/// offset, time and attempt).
fn message_from(origin_msg: &Message, out: Output) -> Message {
    Message {
        topic: origin_msg.topic.clone(),
        partition: origin_msg.partition,
        offset: origin_msg.offset,
        key: out.key,
        payload: out.payload,
        headers: out.headers,
        timestamp_us: origin_msg.timestamp_us,
        event_time_ms: origin_msg.event_time_ms,
        attempt: origin_msg.attempt,
    }
}

/// `msg` become `out` (which descends from it): its key, payload and
/// headers replaced, the rest (its topic's name among them) kept in place.
fn become_output(msg: &mut Message, out: Output) {
    msg.key = out.key;
    msg.payload = out.payload;
    msg.headers = out.headers;
}

/// `items` with each of `extra` put in after the item it names (by its
/// index in `items`), in order.
fn interleave(items: Vec<Item>, extra: Vec<(usize, Item)>) -> Vec<Item> {
    let mut out = Vec::with_capacity(items.len() + extra.len());
    let mut extra = extra.into_iter().peekable();
    for (i, item) in items.into_iter().enumerate() {
        out.push(item);
        while let Some((_, e)) = extra.next_if(|(after, _)| *after == i) {
            out.push(e);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(origin: usize, payload: &str) -> Item {
        let mut msg = timer_message("s", &Timer { domain: TimeDomain::Event, key: Vec::new(), at_ms: 0 });
        msg.payload = payload.as_bytes().to_vec().into();
        Item { origin, msg }
    }

    #[test]
    fn outputs_past_the_first_go_in_after_their_message() {
        let items = vec![item(0, "a"), item(1, "b"), item(2, "c")];
        let extra = vec![(0, item(0, "a2")), (0, item(0, "a3")), (2, item(2, "c2"))];
        let got: Vec<(usize, String)> =
            interleave(items, extra).into_iter().map(|it| (it.origin, String::from_utf8_lossy(&it.msg.payload).into_owned())).collect();
        let want = [(0, "a"), (0, "a2"), (0, "a3"), (1, "b"), (2, "c"), (2, "c2")].map(|(o, p)| (o, p.to_owned()));
        assert_eq!(got, want);
    }
}
