//! Stage instances: the store, host imports, limits and classified calls.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::weir::pipeline::host::{self, Level};
use crate::bindings::weir::pipeline::types::TimeDomain as WitDomain;
use crate::component::Stage;
use crate::limits::{Limited, LogBucket, StateLimitError};
use crate::lower::Consumer;
use crate::state::{PendingWrites, StageState, TimeDomain, Timer, TimerWrites, WriteSet};
use crate::{EPOCH_TICK, Error, Limits, Message, MessageError, MessageResult, Result, describe};

/// What a stage may reach beyond the empty sandbox (clocks and random only).
/// Each grant is explicit; the default grants nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Environment variables the guest sees (name, value).
    pub env: Vec<(String, String)>,
    /// Host directories the guest may open.
    pub dirs: Vec<DirGrant>,
    /// Let the guest write to weir's standard error (for debugging).
    pub stderr: bool,
}

/// A host directory made visible to a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the guest sees it (e.g. `/data`).
    pub guest: String,
    /// Whether the guest may create, change and delete files in it.
    pub writable: bool,
}

/// Why a call into a stage failed as a whole. Each kind is counted per stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The guest trapped (panic, unreachable, stack overflow, ...).
    Trap,
    /// The call ran past its deadline.
    Timeout,
    /// The guest tried to grow its memory past `max_memory_bytes`.
    Memory,
    /// The call burned its `max_fuel`.
    Fuel,
    /// The guest broke the contract (wrong number of results, packed
    /// results that do not add up).
    Contract,
    /// A state write broke one of the stage's [`crate::StateLimits`].
    State,
}

impl ErrorKind {
    /// A stable lowercase name, used in metrics and dead-letter headers.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Trap => "trap",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Memory => "memory",
            ErrorKind::Fuel => "fuel",
            ErrorKind::Contract => "contract",
            ErrorKind::State => "state",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Custom counters a stage's instances add to with `counter-add`.
#[derive(Debug, Default)]
pub struct Counters(Mutex<BTreeMap<String, u64>>);

impl Counters {
    /// A snapshot of every counter.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap().clone()
    }
}

/// Everything an instance needs to know about the stage it belongs to.
/// Clones share the counters and state.
#[derive(Debug, Clone)]
pub struct StageContext {
    /// Pipeline name, for log lines.
    pub pipeline: String,
    /// Stage name, for log lines and errors.
    pub stage: String,
    /// The `[stage.config]` entries passed to `init`.
    pub config: Vec<(String, String)>,
    /// Limits for every call.
    pub limits: Limits,
    /// Capabilities beyond the empty sandbox.
    pub grants: Grants,
    counters: Arc<Counters>,
    state: Arc<StageState>,
    limited: Arc<Limited>,
    log: Arc<LogBucket>,
    /// The stage's event-time watermark, ms; `None` before the first.
    watermark: Arc<Mutex<Option<u64>>>,
}

impl StageContext {
    /// A context with fresh counters and empty state.
    pub fn new(pipeline: &str, stage: &str, config: Vec<(String, String)>, limits: Limits) -> Self {
        StageContext {
            pipeline: pipeline.to_owned(),
            stage: stage.to_owned(),
            config,
            grants: Grants::default(),
            counters: Arc::default(),
            state: StageState::new(stage, weir_queue::StateReader::empty()),
            limited: Arc::default(),
            watermark: Arc::default(),
            log: Arc::new(LogBucket::new(limits.log.lines_per_second, limits.log.burst_lines)),
            limits,
        }
    }

    /// Read the stage's committed state and timers from `store` (what
    /// earlier runs made durable, and what the engine commits to it)
    /// instead of an empty state.
    #[must_use]
    pub fn with_state(mut self, store: weir_queue::StateReader) -> Self {
        self.state = StageState::new(&self.stage, store);
        self
    }

    /// Move the stage's event-time watermark to `ms`; it never goes back.
    pub fn advance_watermark(&self, ms: u64) {
        let mut w = self.watermark.lock().unwrap();
        *w = Some(w.map_or(ms, |w| w.max(ms)));
    }

    /// The stage's event-time watermark, ms; `None` before the first.
    pub fn watermark(&self) -> Option<u64> {
        *self.watermark.lock().unwrap()
    }

    /// Grant the stage's instances `grants`.
    #[must_use]
    pub fn with_grants(mut self, grants: Grants) -> Self {
        self.grants = grants;
        self
    }

    /// The stage's state, shared by its instances.
    pub fn state(&self) -> &Arc<StageState> {
        &self.state
    }

    /// The stage's custom counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The stage's custom counters, to read while the stage runs.
    pub fn shared_counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// How often the stage ran into a limit that drops (log lines, counter
    /// names), to read while the stage runs.
    pub fn limited(&self) -> Arc<Limited> {
        self.limited.clone()
    }

    /// Log how many of the stage's log lines the rate limit suppressed since
    /// the last one it let through; call when the stage stops.
    pub fn flush_log_summary(&self) {
        let n = self.log.take_suppressed();
        if n > 0 {
            self.log_suppressed(n);
        }
    }

    fn log_suppressed(&self, n: u64) {
        let (pipeline, stage, rate) = (&self.pipeline, &self.stage, self.limits.log.lines_per_second);
        tracing::warn!(target: "weir::guest", %pipeline, %stage, suppressed = n, "{n} log lines suppressed (log_lines_per_second = {rate})");
    }
}

struct MemoryLimiter {
    max_memory_bytes: usize,
    hit: bool,
    /// The largest linear memory size refused.
    refused: usize,
    /// The store's linear memories, all together.
    total: usize,
}

impl MemoryLimiter {
    /// Whether the instance has grown past 3/4 of its limit: a language
    /// runtime that leaks a little per call (componentize-py 0.25 does) or
    /// collects late (StarlingMonkey) would otherwise fail a call there.
    fn worn(&self) -> bool {
        self.total > self.max_memory_bytes / 4 * 3
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let ok = desired <= self.max_memory_bytes;
        self.hit |= !ok;
        if ok {
            self.total += desired.saturating_sub(current);
        } else {
            self.refused = self.refused.max(desired);
        }
        Ok(ok)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// The data of each instance's store.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    ctx: StageContext,
    /// While a call holds the stage's state gate: the generation it reads.
    gate: Option<u64>,
    /// The current call's state writes.
    writes: WriteSet,
    /// The current call's timer writes.
    timers: TimerWrites,
    /// Key and value bytes the current call wrote or deleted.
    written: usize,
    /// How much the current call's writes grow (or shrink) the stage's state.
    grown: isize,
    /// How many timers the current call's writes add (or remove).
    timers_grown: isize,
}

impl HostState {
    fn enter_state(&mut self) {
        if self.gate.is_none() {
            self.gate = Some(self.ctx.state.enter());
        }
    }

    /// End a call. If it held the gate and `keep`, its writes are registered
    /// (before the gate opens, so the next call reads them) and returned; a
    /// call that only read state registers an empty set: if what it read is
    /// aborted, so is the call. Also says whether it wrote anything.
    fn end_call(&mut self, keep: bool) -> (Option<Arc<PendingWrites>>, bool) {
        let writes = std::mem::take(&mut self.writes);
        let timers = std::mem::take(&mut self.timers);
        let grown = std::mem::take(&mut self.grown);
        let timers_grown = std::mem::take(&mut self.timers_grown);
        self.written = 0;
        let wrote = !writes.is_empty() || !timers.is_empty();
        let pending = self.gate.take().and_then(|generation| {
            let pending = keep.then(|| self.ctx.state.register(writes, timers, generation, grown, timers_grown));
            self.ctx.state.leave();
            pending
        });
        (pending, wrote)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl HostState {
    /// Account for a write of `value` (`None`: a delete) to `key`, or refuse
    /// it: the call then traps, and its writes are discarded.
    fn admit_write(&mut self, key: &[u8], value: Option<&[u8]>) -> wasmtime::Result<()> {
        let limits = &self.ctx.limits.state;
        let refuse = |what, value, limit, max| Err(StateLimitError { what, value, unit: "bytes", limit, max }.into());
        if key.len() > limits.max_key_bytes {
            return refuse("key", key.len(), "max_state_key_bytes", limits.max_key_bytes);
        }
        let len = value.map_or(0, <[u8]>::len);
        if len > limits.max_value_bytes {
            return refuse("value", len, "max_state_value_bytes", limits.max_value_bytes);
        }
        self.written = self.written.saturating_add(key.len() + len);
        if self.written > limits.max_write_bytes {
            return refuse("written by one call", self.written, "max_state_write_bytes", limits.max_write_bytes);
        }
        let (stored, held) = self.ctx.state.value_len_and_bytes(key);
        let old = match self.writes.get(key) {
            Some(v) => v.as_ref().map(Vec::len),
            None => stored,
        };
        let size = |v: Option<usize>| v.map_or(0, |v| key.len() + v) as isize;
        self.grown += size(value.map(<[u8]>::len)) - size(old);
        let total = (held as isize + self.grown).max(0) as usize;
        if value.is_some() && total > limits.max_bytes {
            return refuse("held by the stage", total, "max_state_bytes", limits.max_bytes);
        }
        Ok(())
    }

    /// Set (`set`) or delete `timer` in the current call, or refuse it as
    /// [`HostState::admit_write`] does: timers are state.
    fn write_timer(&mut self, timer: Timer, set: bool) -> wasmtime::Result<()> {
        self.enter_state();
        let limits = &self.ctx.limits.state;
        let refuse = |what, value, unit, limit, max| Err(StateLimitError { what, value, unit, limit, max }.into());
        if timer.key.len() > limits.max_key_bytes {
            return refuse("timer key", timer.key.len(), "bytes", "max_state_key_bytes", limits.max_key_bytes);
        }
        self.written = self.written.saturating_add(timer.write_bytes());
        if self.written > limits.max_write_bytes {
            return refuse("written by one call", self.written, "bytes", "max_state_write_bytes", limits.max_write_bytes);
        }
        let was = match self.timers.get(&timer) {
            Some(was) => *was,
            None => self.ctx.state.has_timer(&timer),
        };
        self.timers_grown += isize::from(set) - isize::from(was);
        let held = (self.ctx.state.timer_count() as isize + self.timers_grown).max(0) as usize;
        if set && !was && held > limits.max_timers {
            return refuse("timers held by the stage", held, "timers", "max_timers", limits.max_timers);
        }
        self.timers.insert(timer, set);
        Ok(())
    }
}

fn timer(domain: WitDomain, key: Vec<u8>, at_ms: u64) -> Timer {
    let domain = match domain {
        WitDomain::EventTime => TimeDomain::Event,
        WitDomain::ProcessingTime => TimeDomain::Processing,
    };
    Timer { domain, at_ms, key }
}

impl host::Host for HostState {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let enabled = match level {
            Level::Trace => tracing::enabled!(target: "weir::guest", tracing::Level::TRACE),
            Level::Debug => tracing::enabled!(target: "weir::guest", tracing::Level::DEBUG),
            Level::Info => tracing::enabled!(target: "weir::guest", tracing::Level::INFO),
            Level::Warn => tracing::enabled!(target: "weir::guest", tracing::Level::WARN),
            Level::Error => tracing::enabled!(target: "weir::guest", tracing::Level::ERROR),
        };
        if !enabled {
            return Ok(());
        }
        let ctx = &self.ctx;
        let Some(suppressed) = ctx.log.take() else {
            ctx.limited.log_suppressed();
            return Ok(());
        };
        if suppressed > 0 {
            ctx.log_suppressed(suppressed);
        }
        let mut message = message;
        let max = ctx.limits.log.max_line_bytes;
        if message.len() > max {
            message.truncate(message.floor_char_boundary(max));
            message.push_str(" …");
            ctx.limited.log_cut();
        }
        let (pipeline, stage) = (&ctx.pipeline, &ctx.stage);
        match level {
            Level::Trace => tracing::trace!(target: "weir::guest", %pipeline, %stage, "{message}"),
            Level::Debug => tracing::debug!(target: "weir::guest", %pipeline, %stage, "{message}"),
            Level::Info => tracing::info!(target: "weir::guest", %pipeline, %stage, "{message}"),
            Level::Warn => tracing::warn!(target: "weir::guest", %pipeline, %stage, "{message}"),
            Level::Error => tracing::error!(target: "weir::guest", %pipeline, %stage, "{message}"),
        }
        Ok(())
    }

    fn counter_add(&mut self, name: String, delta: u64) -> wasmtime::Result<()> {
        let limits = &self.ctx.limits.counters;
        let mut counters = self.ctx.counters.0.lock().unwrap();
        if let Some(c) = counters.get_mut(&name) {
            *c = c.saturating_add(delta);
        } else if name.len() <= limits.max_name_bytes && counters.len() < limits.max_names {
            counters.insert(name, delta);
        } else if self.ctx.limited.counter_refused() {
            let (pipeline, stage) = (&self.ctx.pipeline, &self.ctx.stage);
            let shown: String = name.chars().take(64).collect();
            tracing::warn!(
                %pipeline, %stage, counter = %shown,
                "counter not created: a stage may have {} counters (max_counters) with names of at most {} bytes \
                 (max_counter_name_bytes); further refusals are only counted",
                limits.max_names, limits.max_name_bytes
            );
        }
        Ok(())
    }

    fn state_get(&mut self, key: Vec<u8>) -> wasmtime::Result<Option<Vec<u8>>> {
        self.enter_state();
        Ok(match self.writes.get(&key) {
            Some(v) => v.clone(),
            None => self.ctx.state.read(&key),
        })
    }

    fn state_put(&mut self, key: Vec<u8>, value: Vec<u8>) -> wasmtime::Result<()> {
        self.enter_state();
        self.admit_write(&key, Some(&value))?;
        self.writes.insert(key, Some(value));
        Ok(())
    }

    fn state_delete(&mut self, key: Vec<u8>) -> wasmtime::Result<()> {
        self.enter_state();
        self.admit_write(&key, None)?;
        self.writes.insert(key, None);
        Ok(())
    }

    fn set_timer(&mut self, domain: WitDomain, key: Vec<u8>, at_ms: u64) -> wasmtime::Result<()> {
        self.write_timer(timer(domain, key, at_ms), true)
    }

    fn delete_timer(&mut self, domain: WitDomain, key: Vec<u8>, at_ms: u64) -> wasmtime::Result<()> {
        self.write_timer(timer(domain, key, at_ms), false)
    }

    fn watermark_ms(&mut self) -> wasmtime::Result<Option<u64>> {
        Ok(self.ctx.watermark())
    }
}

impl crate::bindings::weir::pipeline::types::Host for HostState {}

/// 0.1.0's host functions are 0.2.0's, less timers and the watermark.
impl crate::bindings_v1::weir::pipeline::host::Host for HostState {
    fn log(&mut self, level: crate::bindings_v1::weir::pipeline::host::Level, message: String) -> wasmtime::Result<()> {
        use crate::bindings_v1::weir::pipeline::host::Level as V1;
        let level = match level {
            V1::Trace => Level::Trace,
            V1::Debug => Level::Debug,
            V1::Info => Level::Info,
            V1::Warn => Level::Warn,
            V1::Error => Level::Error,
        };
        host::Host::log(self, level, message)
    }

    fn counter_add(&mut self, name: String, delta: u64) -> wasmtime::Result<()> {
        host::Host::counter_add(self, name, delta)
    }

    fn state_get(&mut self, key: Vec<u8>) -> wasmtime::Result<Option<Vec<u8>>> {
        host::Host::state_get(self, key)
    }

    fn state_put(&mut self, key: Vec<u8>, value: Vec<u8>) -> wasmtime::Result<()> {
        host::Host::state_put(self, key, value)
    }

    fn state_delete(&mut self, key: Vec<u8>) -> wasmtime::Result<()> {
        host::Host::state_delete(self, key)
    }
}

impl crate::bindings_v1::weir::pipeline::types::Host for HostState {}

/// One instance of a stage: a store with its own memory, initialised.
///
/// After a call fails as a whole (trap, timeout, memory) the instance is
/// poisoned and must be replaced; [`Instance::is_poisoned`] says so.
pub struct Instance {
    store: Store<HostState>,
    consumer: Consumer,
    poisoned: bool,
    last_writes: Option<Arc<PendingWrites>>,
}

fn deadline_ticks(timeout: Duration) -> u64 {
    (timeout.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64 + 1
}

impl Stage {
    /// Create an instance and call its `init` with the context's config.
    ///
    /// # Errors
    /// [`Error::Instantiate`] if instantiation fails; [`Error::Init`] if `init`
    /// returns an error, traps or times out.
    pub fn instantiate(&self, ctx: &StageContext) -> Result<Instance> {
        let (mut store, consumer) = self.instantiate_uninit(ctx)?;
        let init_err = |reason: String| Error::Init { stage: ctx.stage.clone(), reason };
        let init = consumer.init(&mut store, &ctx.config);
        if store.data_mut().end_call(false).1 {
            tracing::warn!(pipeline = %ctx.pipeline, stage = %ctx.stage, "state written during init is discarded");
        }
        match init {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => return Err(init_err(msg)),
            Err(e) => {
                let kind = classify(&e, store.data().limiter.hit);
                return Err(init_err(format!("{kind}: {}", describe(&e))));
            }
        }
        Ok(Instance { store, consumer, poisoned: false, last_writes: None })
    }

    /// A new store with the stage's limits and an instance in it, before `init`.
    pub(crate) fn instantiate_uninit(&self, ctx: &StageContext) -> Result<(Store<HostState>, Consumer)> {
        let refuse = |e: wasmtime::Error| Error::Instantiate { stage: ctx.stage.clone(), reason: describe(&e) };
        let wasi = wasi_ctx(&ctx.grants).map_err(refuse)?;
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter { max_memory_bytes: ctx.limits.max_memory_bytes, hit: false, refused: 0, total: 0 },
            ctx: ctx.clone(),
            gate: None,
            writes: WriteSet::new(),
            timers: TimerWrites::new(),
            written: 0,
            grown: 0,
            timers_grown: 0,
        };
        let mut store = Store::new(self.runtime.engine_ref(), state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(deadline_ticks(ctx.limits.timeout));
        set_fuel(&mut store, &ctx.limits).map_err(refuse)?;
        let instance = self.pre.instantiate(&mut store).map_err(|e| {
            let limiter = &store.data().limiter;
            if !limiter.hit {
                return refuse(e);
            }
            // A Python or JavaScript runtime starts with more memory than a
            // Rust stage ever uses: say which setting to raise, and to what.
            let mib = |b: usize| b.div_ceil(1 << 20);
            let reason = format!(
                "it needs {} MiB of linear memory to start, more than the stage's max_memory_bytes ({} MiB): raise max_memory_bytes to at least {}",
                mib(limiter.refused),
                mib(limiter.max_memory_bytes),
                limiter.refused.next_multiple_of(1 << 20)
            );
            Error::Instantiate { stage: ctx.stage.clone(), reason }
        })?;
        let consumer = Consumer::find(&mut store, &instance, &self.exports).map_err(refuse)?;
        Ok((store, consumer))
    }
}

/// The guest's WASI context: nothing but clocks and random, plus `grants`.
fn wasi_ctx(grants: &Grants) -> wasmtime::Result<WasiCtx> {
    let mut b = WasiCtxBuilder::new();
    b.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
    for (k, v) in &grants.env {
        b.env(k, v);
    }
    for d in &grants.dirs {
        let perms = if d.writable { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
        b.preopened_dir(&d.host, &d.guest, perms).map_err(|e| e.context(format!("granting directory {}", d.host.display())))?;
    }
    if grants.stderr {
        b.inherit_stderr();
    }
    Ok(b.build())
}

/// Fill the store's tank for one call, when the runtime meters fuel.
fn set_fuel(store: &mut Store<HostState>, limits: &Limits) -> wasmtime::Result<()> {
    if store.get_fuel().is_ok() {
        store.set_fuel(limits.max_fuel.unwrap_or(u64::MAX))
    } else if limits.max_fuel.is_some() {
        wasmtime::bail!("max_fuel is set but the runtime does not meter fuel (RuntimeOptions::fuel)")
    } else {
        Ok(())
    }
}

fn classify(err: &wasmtime::Error, memory_limit_hit: bool) -> ErrorKind {
    if memory_limit_hit {
        return ErrorKind::Memory;
    }
    if err.downcast_ref::<StateLimitError>().is_some() {
        return ErrorKind::State;
    }
    if err.downcast_ref::<crate::lower::Malformed>().is_some() {
        return ErrorKind::Contract;
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => ErrorKind::Timeout,
        Some(Trap::OutOfFuel) => ErrorKind::Fuel,
        _ => ErrorKind::Trap,
    }
}

impl Instance {
    /// The state writes of the last successful [`Instance::handle_batch`], if
    /// it touched state (possibly none: a call that only read). The caller must commit or abort them (see [`PendingWrites`]);
    /// until then later calls of the stage read them.
    pub fn take_writes(&mut self) -> Option<Arc<PendingWrites>> {
        self.last_writes.take()
    }

    /// Whether the instance must be replaced before its next call: a failed
    /// call left it unusable, or its linear memory has grown past 3/4 of
    /// `max_memory_bytes`, so that it is recycled before it fails a call
    /// (a fresh instance, `init` again; state lives in the host).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned || self.store.data().limiter.worn()
    }

    /// Whether it is to be replaced only because its memory grew past 3/4
    /// of `max_memory_bytes` (recycled), not because a call failed.
    pub fn is_worn(&self) -> bool {
        !self.poisoned && self.store.data().limiter.worn()
    }

    /// Call `handle-batch`. Returns one result per message, in order; a
    /// message whose outputs break the stage's [`crate::OutputLimits`] gets
    /// a [`MessageError::OutputLimit`] saying which.
    ///
    /// # Errors
    /// [`Error::Call`] with the [`ErrorKind`] when the call fails as a whole;
    /// the instance is then poisoned.
    ///
    /// The batch is anything that lends [`Message`]s (`&[Message]`, or the
    /// caller's own items that hold one), so it need not be copied or
    /// moved into a vector of messages first.
    pub fn handle_batch<M: Borrow<Message>>(&mut self, batch: &[M]) -> Result<Vec<MessageResult>> {
        let consumer = self.consumer;
        self.call("handle-batch", "messages", batch.len(), |store| consumer.handle_batch(store, batch), |_| {})
    }

    /// Call `on-timers` with timers of the stage that fired: the call
    /// deletes each first (in its own writes, committed or aborted with the
    /// rest of them), then the guest may set it again. Returns one result per
    /// timer, in order, as [`Instance::handle_batch`] does per message.
    ///
    /// # Errors
    /// As [`Instance::handle_batch`]; a 0.1.0 component has no `on-timers`
    /// (nor could it set a timer): the call fails.
    pub fn on_timers(&mut self, timers: &[Timer]) -> Result<Vec<MessageResult>> {
        let consumer = self.consumer;
        let fire = |data: &mut HostState| {
            data.enter_state();
            for t in timers {
                if data.ctx.state.has_timer(t) && data.timers.insert(t.clone(), false) != Some(false) {
                    data.timers_grown -= 1;
                }
            }
        };
        self.call("on-timers", "timers", timers.len(), |store| consumer.on_timers(store, timers), fire)
    }

    /// One call of `export` with `n` items, its results checked: `before`
    /// runs in the store's data first, inside the call's writes.
    fn call(
        &mut self,
        export: &str,
        items: &str,
        n: usize,
        guest: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<crate::lower::BatchResults>,
        before: impl FnOnce(&mut HostState),
    ) -> Result<Vec<MessageResult>> {
        let ctx = &self.store.data().ctx;
        let (stage, limits) = (ctx.stage.clone(), ctx.limits.clone());
        if self.poisoned {
            return Err(Error::Call { stage, kind: ErrorKind::Trap, reason: "instance was poisoned by an earlier failure".into() });
        }
        self.last_writes = None;
        let data = self.store.data_mut();
        if data.ctx.state.is_used() {
            // Wait for the gate before the deadline starts counting.
            data.enter_state();
        }
        before(data);
        data.limiter.hit = false;
        self.store.set_epoch_deadline(deadline_ticks(limits.timeout));
        if let Some(fuel) = limits.max_fuel {
            self.store.set_fuel(fuel).expect("the runtime meters fuel: checked at instantiation");
        }
        let call = guest(&mut self.store);
        // Writes of a failed call are dropped.
        let keep = matches!(&call, Ok(r) if r.len() == n);
        self.last_writes = self.store.data_mut().end_call(keep).0;
        let results = match call {
            Ok(results) => results,
            Err(e) => {
                self.poisoned = true;
                let kind = classify(&e, self.store.data().limiter.hit);
                let reason = match kind {
                    ErrorKind::Timeout => {
                        format!("call exceeded timeout of {} ms", limits.timeout.as_millis())
                    }
                    ErrorKind::Memory => {
                        format!("memory limit of {} bytes reached ({})", limits.max_memory_bytes, describe(&e))
                    }
                    ErrorKind::Fuel => format!("call burned its max_fuel of {}", limits.max_fuel.unwrap_or(u64::MAX)),
                    ErrorKind::State => e.downcast_ref::<StateLimitError>().map_or_else(|| describe(&e), ToString::to_string),
                    _ => describe(&e),
                };
                return Err(Error::Call { stage, kind, reason });
            }
        };
        if results.len() != n {
            self.poisoned = true;
            return Err(Error::Call {
                stage,
                kind: ErrorKind::Contract,
                reason: format!("{export} returned {} results for {n} {items}", results.len()),
            });
        }
        Ok(results
            .into_iter()
            .map(|r| match r {
                Ok(outputs) => limits.output.check(&outputs).map(|()| outputs),
                Err(f) => Err(MessageError::Guest(f)),
            })
            .collect())
    }
}
