//! Measurements behind `weir bench host`: weir-host against a bare wasmtime
//! baseline, in the same run, on the same component and messages.

use std::path::Path;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::weir::pipeline::host::{self, Level};
use crate::bindings::weir::pipeline::types::TimeDomain;
use crate::bindings_v1::weir::pipeline::host as host_v1;
use crate::lower::{Consumer, Exports};
use crate::{Limits, Message, Result, Runtime, StageContext, describe, thread_cpu};

/// Figures of one `weir bench host` run.
#[derive(Debug, Clone)]
pub struct HostReport {
    /// Bare wasmtime (default config, no limits): ns per message.
    pub bare_ns_per_message: f64,
    /// weir-host with deadline, memory cap and output cap: ns per message.
    pub host_ns_per_message: f64,
    /// weir-host while a hostile instance of another stage spins into its
    /// deadline on another thread, over and over: ns per message.
    pub beside_hostile_ns_per_message: f64,
    /// Creating an instance (store, sandbox, pooled memory), µs.
    pub instantiate_us: f64,
    /// The same plus the guest's `init`, µs.
    pub instantiate_init_us: f64,
    /// A new runtime loading the component from a warm compile cache and
    /// instantiating it, ms.
    pub cold_start_cached_ms: f64,
    /// The same with an empty cache (compiling), ms.
    pub cold_start_compile_ms: f64,
}

/// `count` messages of `size` bytes of lowercase text.
pub fn messages(count: usize, size: usize) -> Vec<Message> {
    (0..count)
        .map(|i| Message {
            topic: "bench".into(),
            partition: 0,
            offset: i as u64,
            key: None,
            payload: (0..size).map(|j| b'a' + ((i + j) % 26) as u8).collect::<Vec<u8>>().into(),
            headers: Vec::new(),
            timestamp_us: 0,
            event_time_ms: 0,
            attempt: 1,
        })
        .collect()
}

struct Bare {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl host::Host for Bare {
    fn log(&mut self, _: Level, _: String) -> wasmtime::Result<()> {
        Ok(())
    }
    fn counter_add(&mut self, _: String, _: u64) -> wasmtime::Result<()> {
        Ok(())
    }
    fn state_get(&mut self, _: Vec<u8>) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(None)
    }
    fn state_put(&mut self, _: Vec<u8>, _: Vec<u8>) -> wasmtime::Result<()> {
        Ok(())
    }
    fn state_delete(&mut self, _: Vec<u8>) -> wasmtime::Result<()> {
        Ok(())
    }
    fn set_timer(&mut self, _: TimeDomain, _: Vec<u8>, _: u64) -> wasmtime::Result<()> {
        Ok(())
    }
    fn delete_timer(&mut self, _: TimeDomain, _: Vec<u8>, _: u64) -> wasmtime::Result<()> {
        Ok(())
    }
    fn watermark_ms(&mut self) -> wasmtime::Result<Option<u64>> {
        Ok(None)
    }
}

impl host_v1::Host for Bare {
    fn log(&mut self, _: host_v1::Level, _: String) -> wasmtime::Result<()> {
        Ok(())
    }
    fn counter_add(&mut self, _: String, _: u64) -> wasmtime::Result<()> {
        Ok(())
    }
    fn state_get(&mut self, _: Vec<u8>) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(None)
    }
    fn state_put(&mut self, _: Vec<u8>, _: Vec<u8>) -> wasmtime::Result<()> {
        Ok(())
    }
    fn state_delete(&mut self, _: Vec<u8>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl crate::bindings::weir::pipeline::types::Host for Bare {}
impl crate::bindings_v1::weir::pipeline::types::Host for Bare {}

fn engine_err(e: wasmtime::Error) -> crate::Error {
    crate::Error::Engine(describe(&e))
}

/// The baseline: a stage component instantiated in a plain wasmtime engine
/// (default config: no limits, no deadline, no pooling), called directly
/// with the same lowering of messages as the host.
pub struct BareStage {
    store: Store<Bare>,
    consumer: Consumer,
}

impl BareStage {
    /// Compile `wasm`, instantiate it and call `init` with an empty config.
    ///
    /// # Errors
    /// If it is not a stage component or `init` fails.
    pub fn new(wasm: &[u8]) -> Result<Self> {
        Self::with_config(wasm, &[])
    }

    /// [`BareStage::new`] with the stage's `[stage.config]` pairs.
    ///
    /// # Errors
    /// If it is not a stage component or `init` fails.
    pub fn with_config(wasm: &[u8], config: &[(String, String)]) -> Result<Self> {
        let engine = Engine::new(&Config::new()).map_err(engine_err)?;
        let component = Component::new(&engine, wasm).map_err(engine_err)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_err)?;
        crate::bindings::Stage::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s).map_err(engine_err)?;
        crate::bindings_v1::Stage::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s).map_err(engine_err)?;
        let mut store = Store::new(&engine, Bare { wasi: WasiCtxBuilder::new().build(), table: ResourceTable::new() });
        let instance = linker.instantiate(&mut store, &component).map_err(engine_err)?;
        let exports = Exports::find(&component).map_err(engine_err)?;
        let consumer = Consumer::find(&mut store, &instance, &exports).map_err(engine_err)?;
        consumer.init(&mut store, config).map_err(engine_err)?.map_err(crate::Error::Engine)?;
        Ok(BareStage { store, consumer })
    }

    /// Call `handle-batch`, discarding the results.
    ///
    /// # Errors
    /// If the call traps.
    pub fn handle_batch(&mut self, batch: &[Message]) -> Result<()> {
        self.consumer.handle_batch(&mut self.store, batch).map(drop).map_err(engine_err)
    }
}

/// Instantiate `stage` without calling `init`: the host's part of starting
/// an instance (for benchmarks).
///
/// # Errors
/// [`crate::Error::Instantiate`].
pub fn instantiate_only(stage: &crate::Stage, ctx: &StageContext) -> Result<()> {
    stage.instantiate_uninit(ctx).map(drop)
}

/// While alive, a thread keeps instantiating `hostile` and sending it
/// `loop`, which spins until its 10 ms deadline.
struct HostileNeighbour {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl HostileNeighbour {
    fn start(stage: crate::Stage) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let limits = Limits { timeout: Duration::from_millis(10), ..Limits::default() };
            let ctx = StageContext::new("bench", "hostile", Vec::new(), limits);
            let spin = messages(1, 0).into_iter().map(|m| Message { payload: "loop".into(), ..m }).collect::<Vec<_>>();
            let mut stopped = 0;
            while !flag.load(Ordering::Relaxed) {
                if let Ok(mut inst) = stage.instantiate(&ctx) {
                    stopped += u64::from(inst.handle_batch(&spin).is_err());
                }
            }
            stopped
        });
        HostileNeighbour { stop, thread: Some(thread) }
    }

    /// Stop it; how many of its calls were cut off.
    fn stop(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}

/// The bare call's CPU time per message: the component at `path`,
/// initialised with `config`, called on `batch` over and over for about
/// `duration`, in five rounds; the median round. CPU time of the calling
/// thread, as a pipeline's stages are measured: the time the thread
/// waited for a core does not count (in wall-clock time a round that
/// shared its core with the end of the run read 1.5x the others).
///
/// # Errors
/// If the component cannot be read, made or called.
pub fn bare_ns_per_message(path: &Path, config: &[(String, String)], batch: &[Message], duration: Duration) -> Result<f64> {
    const ROUNDS: u32 = 5;
    let wasm = std::fs::read(path).map_err(|source| crate::Error::Read { path: path.to_owned(), source })?;
    let mut bare = BareStage::with_config(&wasm, config)?;
    let mut rounds = (0..ROUNDS)
        .map(|_| timed_by(thread_cpu, duration / ROUNDS, batch.len(), || bare.handle_batch(batch)))
        .collect::<Result<Vec<f64>>>()?;
    rounds.sort_by(f64::total_cmp);
    Ok(rounds[rounds.len() / 2])
}

/// Run `f` repeatedly for about `duration` after a warm-up; ns per message
/// by the wall clock.
fn timed(duration: Duration, per_call: usize, f: impl FnMut() -> Result<()>) -> Result<f64> {
    let started = Instant::now();
    timed_by(move || started.elapsed(), duration, per_call, f)
}

/// [`timed`] by `clock`.
fn timed_by(clock: impl Fn() -> Duration, duration: Duration, per_call: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..100 {
        f()?;
    }
    let (started, from) = (Instant::now(), clock());
    let mut calls = 0u64;
    while started.elapsed() < duration {
        for _ in 0..32 {
            f()?;
        }
        calls += 32;
    }
    Ok((clock() - from).as_nanos() as f64 / (calls as f64 * per_call as f64))
}

/// Measure the component at `path` with batches of `batch` messages of `size`
/// bytes, each side for about `duration`. With `hostile` (the path of the
/// hostile test fixture), also measure it beside a guest that spins into
/// its deadline over and over on another thread.
///
/// # Errors
/// If a component cannot be loaded or called.
pub fn measure(path: &Path, hostile: Option<&Path>, size: usize, batch: usize, duration: Duration) -> Result<HostReport> {
    let wasm = std::fs::read(path).map_err(|source| crate::Error::Read { path: path.to_owned(), source })?;
    let msgs = messages(batch, size);
    let mut bare = BareStage::new(&wasm)?;
    let bare = timed(duration, msgs.len(), || bare.handle_batch(&msgs))?;

    let ctx = StageContext::new("bench", "bench", Vec::new(), Limits::default());
    let runtime = Runtime::new()?;
    let stage = runtime.load(path)?;
    let mut inst = stage.instantiate(&ctx)?;
    // As a pipeline does: an instance worn past 3/4 of its memory is replaced
    // (the time it takes counted in the figure).
    let mut call = || {
        if inst.is_poisoned() {
            inst = stage.instantiate(&ctx)?;
        }
        inst.handle_batch(&msgs).map(drop)
    };
    let host = timed(duration, msgs.len(), &mut call)?;
    let beside_hostile = match hostile {
        Some(h) => {
            let neighbour = HostileNeighbour::start(runtime.load(h)?);
            let ns = timed(duration, msgs.len(), &mut call)?;
            let cut_off = neighbour.stop();
            if cut_off == 0 {
                return Err(crate::Error::Engine("the hostile neighbour was never stopped by its deadline".into()));
            }
            ns
        }
        None => f64::NAN,
    };

    let n = 2000;
    let per_instance = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        for _ in 0..100 {
            f()?;
        }
        let started = Instant::now();
        for _ in 0..n {
            f()?;
        }
        Ok(started.elapsed().as_secs_f64() * 1e6 / f64::from(n))
    };
    let instantiate_us = per_instance(&mut || instantiate_only(&stage, &ctx))?;
    let instantiate_init_us = per_instance(&mut || stage.instantiate(&ctx).map(drop))?;

    let cache = std::env::temp_dir().join(format!("weir-bench-cache-{}", std::process::id()));
    let cold = || -> Result<f64> {
        let started = Instant::now();
        let rt = Runtime::with_cache(&cache)?;
        rt.load(path)?.instantiate(&ctx)?;
        Ok(started.elapsed().as_secs_f64() * 1e3)
    };
    let compile = cold()?;
    let cached = cold()?;
    let _ = std::fs::remove_dir_all(&cache);
    Ok(HostReport {
        bare_ns_per_message: bare,
        host_ns_per_message: host,
        beside_hostile_ns_per_message: beside_hostile,
        instantiate_us,
        instantiate_init_us,
        cold_start_cached_ms: cached,
        cold_start_compile_ms: compile,
    })
}
