//! weir's WebAssembly host.
//!
//! One [`Runtime`] per process owns the wasmtime `Engine` (component model,
//! epoch interruption driven by a ticker thread, pooling allocator where the
//! OS allows it) and a linker with the `weir:pipeline/host` imports and WASI
//! behind an empty context. [`Runtime::load`] compiles a component once and
//! checks that it implements the `stage` world; [`Stage::instantiate`] makes
//! instances that handle batches under a deadline and a memory cap.
//!
//! ```no_run
//! use weir_host::{Limits, Message, Runtime, StageContext};
//!
//! # fn main() -> Result<(), weir_host::Error> {
//! let runtime = Runtime::new()?;
//! let stage = runtime.load("uppercase.wasm".as_ref())?;
//! let ctx = StageContext::new("demo", "uppercase", vec![], Limits::default());
//! let mut instance = stage.instantiate(&ctx)?;
//! let batch: Vec<Message> = vec![/* messages */];
//! for result in instance.handle_batch(&batch)? {
//!     println!("{result:?}");
//! }
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod bench;
mod cache;
mod component;
mod instance;
mod limits;
mod lower;
mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config, Engine};

pub use cache::{cache_root, default_cache_dir};
pub use component::Stage;
pub use instance::{Counters, DirGrant, ErrorKind, Grants, Instance, StageContext};
pub use limits::{CounterLimits, Limited, Limits, LogBucket, LogLimits, OutputLimits, StateLimits, output_bytes};
pub use state::{PendingWrites, StageState, TimeDomain, Timer, WriteSet, timers_of};

/// Generated bindings for the `weir:pipeline/stage` world, 0.2.1. Its host
/// imports also serve 0.2.0 components (the linker resolves an import of
/// 0.2.0 to 0.2.1, which only adds to it).
mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "stage",
        // A host import may fail the call (a state write over its limit).
        imports: { default: trappable },
    });
}

/// 0.2.0's world, only to check the exports of components built against it.
mod bindings_v2 {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.2.0",
        world: "stage",
        imports: { default: trappable },
    });
}

/// The same for 0.1.0, whose components run unchanged: the host imports
/// differ only by what 0.2.0 added, and the exports are called through
/// weir's own lowering (`lower.rs`).
mod bindings_v1 {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.1.0",
        world: "stage",
        imports: { default: trappable },
    });
}

/// Severity of a guest log line.
pub use bindings::weir::pipeline::host::Level;
/// A stage's reason for not handling a message (the WIT `failure` variant).
pub use bindings::weir::pipeline::types::Failure;
/// A message emitted by a stage: the WIT `output` record, its key and
/// payload in shared buffers. The outputs of a packed call are slices of
/// the one buffer their bytes were copied into from the guest, so they
/// move on to the next stage or a sink without another copy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    /// Where it goes: `None` for the stage's default next hop.
    pub topic: Option<String>,
    /// Its partitioning key, if any.
    pub key: Option<bytes::Bytes>,
    /// Its body.
    pub payload: bytes::Bytes,
    /// Its headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl From<bindings::weir::pipeline::types::Output> for Output {
    fn from(o: bindings::weir::pipeline::types::Output) -> Self {
        Output { topic: o.topic, key: o.key.map(Into::into), payload: o.payload.into(), headers: o.headers }
    }
}

/// A message delivered to a stage: weir's own message type, lowered into
/// the guest as the WIT `message` record.
pub use weir_queue::Message;

/// CPU time this thread has used: what a stage's work costs whether or not
/// the thread was waiting for a core meanwhile (on a machine with more busy
/// threads than cores, wall time counts the waits too). The engine times
/// its stages by it, and `weir bench` the bare call it compares them with.
pub fn thread_cpu() -> std::time::Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The result of one message: its outputs, or why there are none.
pub type MessageResult = Result<Vec<Output>, MessageError>;

/// Why one message of a successful call has no outputs.
#[derive(Debug, Clone)]
pub enum MessageError {
    /// The stage returned this failure.
    Guest(Failure),
    /// The stage's outputs for the message broke one of its
    /// [`OutputLimits`]; the message should be dead-lettered (error kind
    /// `output`).
    OutputLimit {
        /// The limit broken, by its pipeline-file name (`max_output_bytes`, ...).
        limit: &'static str,
        /// What the outputs came to.
        value: usize,
        /// The limit's value.
        max: usize,
    },
}

impl std::fmt::Display for MessageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageError::Guest(Failure::Retry(r)) => write!(f, "retry: {r}"),
            MessageError::Guest(Failure::Reject(r)) => write!(f, "reject: {r}"),
            MessageError::OutputLimit { limit, value, max } => write!(f, "outputs exceed {limit}: {value} > {max}"),
        }
    }
}

/// Stage instances one runtime holds at once (the pooling allocator's size).
/// A pipeline's stages together may run at most this many, counting one
/// spare per stage for replacing an instance after a failure.
pub const MAX_INSTANCES: usize = 1000;

/// Core instances and tables the pool keeps per component instance.
const CORE_INSTANCES_PER_COMPONENT: u32 = 8;

/// How often the epoch ticker advances; call deadlines are counted in ticks.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Errors from the host.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The wasmtime engine could not be created.
    #[error("cannot create the WebAssembly engine: {0}")]
    Engine(String),
    /// A component file could not be read.
    #[error("cannot read component {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a usable stage component.
    #[error("{}: {reason}", path.display())]
    NotAStage {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Instantiating a component failed.
    #[error("stage `{stage}`: cannot instantiate: {reason}")]
    Instantiate {
        /// The stage.
        stage: String,
        /// Why.
        reason: String,
    },
    /// The stage's `init` returned an error or failed.
    #[error("stage `{stage}`: init failed: {reason}")]
    Init {
        /// The stage.
        stage: String,
        /// The guest's message, or the trap.
        reason: String,
    },
    /// A call into the guest failed as a whole (trap, timeout, memory limit, ...).
    #[error("stage `{stage}`: {kind}: {reason}")]
    Call {
        /// The stage.
        stage: String,
        /// The class of failure.
        kind: ErrorKind,
        /// Details.
        reason: String,
    },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Render a wasmtime error with its whole chain of causes.
pub(crate) fn describe(err: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = err.chain().map(|e| e.to_string()).collect();
    parts.dedup();
    parts.join(": ")
}

/// How to build a [`Runtime`].
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// Keep compiled components here (see [`Runtime::with_cache`]).
    pub cache_dir: Option<PathBuf>,
    /// Meter fuel, so stages can set [`Limits::max_fuel`]. It slows every
    /// stage a little, so it is off unless some stage asks for it.
    pub fuel: bool,
}

/// The process-wide WebAssembly runtime. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<instance::HostState>,
    cache: Option<cache::Cache>,
}

impl Runtime {
    /// Create the engine, start its epoch ticker and build the linker.
    /// Components are compiled on every load; see [`Runtime::with_cache`].
    ///
    /// # Errors
    /// [`Error::Engine`] if wasmtime cannot be configured on this machine.
    pub fn new() -> Result<Self> {
        Self::with_options(&RuntimeOptions::default())
    }

    /// Like [`Runtime::new`], keeping compiled components in `dir` (created
    /// when needed) so that loading an unchanged component again, in this
    /// process or the next, skips compilation.
    ///
    /// # Errors
    /// [`Error::Engine`] if wasmtime cannot be configured on this machine.
    pub fn with_cache(dir: impl Into<PathBuf>) -> Result<Self> {
        Self::with_options(&RuntimeOptions { cache_dir: Some(dir.into()), ..RuntimeOptions::default() })
    }

    /// A runtime with `options`.
    ///
    /// # Errors
    /// [`Error::Engine`] if wasmtime cannot be configured on this machine.
    pub fn with_options(options: &RuntimeOptions) -> Result<Self> {
        let cache = options.cache_dir.clone().map(cache::Cache::new);
        let engine = Self::engine(options.fuel).map_err(|e| Error::Engine(describe(&e)))?;
        spawn_ticker(&engine);
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| Error::Engine(describe(&e)))?;
        bindings::Stage::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| Error::Engine(describe(&e)))?;
        bindings_v1::Stage::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| Error::Engine(describe(&e)))?;
        Ok(Runtime { inner: Arc::new(RuntimeInner { engine, linker, cache }) })
    }

    fn engine(fuel: bool) -> wasmtime::Result<Engine> {
        let mut config = Config::new();
        config.consume_fuel(fuel);
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        config.max_wasm_stack(1 << 20);
        let mut pooling = wasmtime::PoolingAllocationConfig::default();
        let n = MAX_INSTANCES as u32;
        pooling.total_component_instances(n);
        // A component holds several core instances (its module and
        // adapter shims) and tables, and one memory (a test holds the pool full).
        pooling.total_core_instances(n * CORE_INSTANCES_PER_COMPONENT);
        pooling.total_memories(n);
        pooling.total_tables(n * CORE_INSTANCES_PER_COMPONENT);
        pooling.max_memory_size(1 << 32);
        pooling.pagemap_scan(wasmtime::Enabled::Auto);
        pooling.linear_memory_keep_resident(2 << 20);
        pooling.table_keep_resident(64 << 10);
        let mut pooled = config.clone();
        pooled.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling));
        match Engine::new(&pooled) {
            Ok(engine) => Ok(engine),
            Err(err) => {
                // Some sandboxes refuse the large virtual reservation the pool
                // needs; instances are then allocated on demand.
                tracing::warn!(error = %describe(&err), "pooling allocator unavailable; using on-demand allocation");
                Engine::new(&config)
            }
        }
    }

    pub(crate) fn engine_ref(&self) -> &Engine {
        &self.inner.engine
    }

    pub(crate) fn linker(&self) -> &Linker<instance::HostState> {
        &self.inner.linker
    }

    /// Compile `wasm`, through the cache when there is one.
    pub(crate) fn compile(&self, wasm: &[u8]) -> wasmtime::Result<wasmtime::component::Component> {
        match &self.inner.cache {
            Some(cache) => cache.load_or_compile(&self.inner.engine, wasm),
            None => wasmtime::component::Component::new(&self.inner.engine, wasm),
        }
    }
}

/// Advance the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
fn spawn_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("weir-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawn epoch ticker thread");
}
