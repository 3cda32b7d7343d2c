//! Measurements behind `weir bench host`: weir-host against a bare wasmtime
//! baseline, in the same run, on the same component and messages.

use std::path::Path;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::weir::pipeline::host::{self, Level};
use crate::{Limits, Message, Result, Runtime, StageContext, describe};

/// Figures of one `weir bench host` run.
#[derive(Debug, Clone)]
pub struct HostReport {
    /// Bare wasmtime (default config, no limits): ns per message.
    pub bare_ns_per_message: f64,
    /// weir-host with deadline, memory cap and output cap: ns per message.
    pub host_ns_per_message: f64,
    /// Creating an instance from the pooled allocator and running `init`, µs.
    pub instantiate_us: f64,
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
            payload: (0..size).map(|j| b'a' + ((i + j) % 26) as u8).collect(),
            headers: Vec::new(),
            timestamp_ms: 0,
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
    fn log(&mut self, _: Level, _: String) {}
    fn counter_add(&mut self, _: String, _: u64) {}
    fn state_get(&mut self, _: Vec<u8>) -> Option<Vec<u8>> {
        None
    }
    fn state_put(&mut self, _: Vec<u8>, _: Vec<u8>) {}
    fn state_delete(&mut self, _: Vec<u8>) {}
}

impl crate::bindings::weir::pipeline::types::Host for Bare {}

fn engine_err(e: wasmtime::Error) -> crate::Error {
    crate::Error::Engine(describe(&e))
}

/// The baseline: a plain wasmtime engine calling `handle-batch` in a loop.
fn bare_ns_per_message(wasm: &[u8], batch: &[Message], duration: Duration) -> Result<f64> {
    let engine = Engine::new(&Config::new()).map_err(engine_err)?;
    let component = Component::new(&engine, wasm).map_err(engine_err)?;
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_err)?;
    crate::bindings::Stage::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s).map_err(engine_err)?;
    let mut store = Store::new(&engine, Bare { wasi: WasiCtxBuilder::new().build(), table: ResourceTable::new() });
    let stage = crate::bindings::Stage::instantiate(&mut store, &component, &linker).map_err(engine_err)?;
    stage.weir_pipeline_consumer().call_init(&mut store, &[]).map_err(engine_err)?.map_err(crate::Error::Engine)?;
    let call = |store: &mut Store<Bare>| stage.weir_pipeline_consumer().call_handle_batch(store, batch).map(drop);
    timed(duration, batch.len(), || call(&mut store).map_err(engine_err))
}

/// Run `f` repeatedly for about `duration` after a warm-up; ns per message.
fn timed(duration: Duration, per_call: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..100 {
        f()?;
    }
    let started = Instant::now();
    let mut calls = 0u64;
    while started.elapsed() < duration {
        for _ in 0..32 {
            f()?;
        }
        calls += 32;
    }
    Ok(started.elapsed().as_nanos() as f64 / (calls as f64 * per_call as f64))
}

/// Measure the component at `path` with batches of `batch` messages of `size`
/// bytes, each side for about `duration`.
///
/// # Errors
/// If the component cannot be loaded or called.
pub fn measure(path: &Path, size: usize, batch: usize, duration: Duration) -> Result<HostReport> {
    let wasm = std::fs::read(path).map_err(|source| crate::Error::Read { path: path.to_owned(), source })?;
    let msgs = messages(batch, size);
    let bare = bare_ns_per_message(&wasm, &msgs, duration)?;

    let ctx = StageContext::new("bench", "bench", Vec::new(), Limits::default());
    let runtime = Runtime::new()?;
    let stage = runtime.load(path)?;
    let mut inst = stage.instantiate(&ctx)?;
    let host = timed(duration, msgs.len(), || inst.handle_batch(&msgs).map(drop))?;

    let n = 2000;
    let started = Instant::now();
    for _ in 0..n {
        drop(stage.instantiate(&ctx)?);
    }
    let instantiate_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(n);

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
        instantiate_us,
        cold_start_cached_ms: cached,
        cold_start_compile_ms: compile,
    })
}
