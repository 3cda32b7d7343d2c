//! weir's pipeline engine: loads pipeline files and runs them on the
//! embedded queue with WebAssembly stages.
//!
//! ```no_run
//! use std::path::Path;
//! use weir_engine::{Engine, RunOptions};
//!
//! # fn main() -> Result<(), weir_engine::Error> {
//! let pipeline = weir_engine::config::load(Path::new("examples/pipelines/hello.toml"))?;
//! let queue = weir_queue::Queue::open(".weir")?;
//! let engine = Engine::new()?;
//! let stats = engine.run(&pipeline, &queue, &RunOptions { drain: true, ..RunOptions::default() })?;
//! println!("{} messages in", stats.received());
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod batch;
pub mod config;
mod event_time;
pub mod nats;
mod run;
mod sink;
mod source;
mod stats;
mod upgrade;

pub use config::{ConfigError, ConfigErrors, Pipeline};
pub use run::RunOptions;
pub use stats::{Latency, LatencySummary, PipelineStats, Report, SinkReport, SourceReport, StageReport, StageStats, resident_memory};
pub use upgrade::{UpgradeError, Upgraded, Upgrades};

use weir_host::Runtime;

/// Errors from the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The pipeline file is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] weir_queue::Error),
    /// A component could not be loaded or initialised.
    #[error(transparent)]
    Host(#[from] weir_host::Error),
    /// A stage's state could not be read: the run stops before
    /// acknowledging what the stage computed from it.
    #[error("{0}")]
    State(String),
    /// A sink could not write.
    #[error("sink {sink}")]
    Sink {
        /// Which sink (its name, file or subject).
        sink: String,
        /// Why.
        #[source]
        cause: BoxError,
    },
    /// A source could not be opened, or cannot run as asked.
    #[error("source {name}")]
    Source {
        /// The source.
        name: String,
        /// Why.
        #[source]
        cause: BoxError,
    },
    /// NATS could not be reached or refused a request.
    #[error("NATS: {context}")]
    Nats {
        /// What weir was doing.
        context: String,
        /// The client's error, if the failure came from one.
        #[source]
        cause: Option<BoxError>,
    },
}

/// The cause of an [`Error`]: kept, so that callers see the whole chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl Error {
    /// A sink failed to write.
    pub(crate) fn sink_failed(sink: impl Into<String>, cause: impl Into<BoxError>) -> Self {
        Error::Sink { sink: sink.into(), cause: cause.into() }
    }

    /// A source failed to open or cannot run as asked (not named `source`:
    /// that is `std::error::Error::source`, the cause).
    pub(crate) fn source_failed(name: impl Into<String>, cause: impl Into<BoxError>) -> Self {
        Error::Source { name: name.into(), cause: cause.into() }
    }

    /// NATS failed doing `context`, with the client's error.
    pub(crate) fn nats(context: impl Into<String>, cause: impl Into<BoxError>) -> Self {
        Error::Nats { context: context.into(), cause: Some(cause.into()) }
    }

    /// NATS cannot be used as asked; `context` says why.
    pub(crate) fn nats_refused(context: impl Into<String>) -> Self {
        Error::Nats { context: context.into(), cause: None }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs pipelines; holds the WebAssembly runtime.
pub struct Engine {
    runtime: Runtime,
}

impl Engine {
    /// Create the WebAssembly runtime, caching compiled components in
    /// [`weir_host::default_cache_dir`] (when there is a home directory).
    ///
    /// # Errors
    /// If wasmtime cannot be set up on this machine.
    pub fn new() -> Result<Self> {
        Self::with_fuel(false)
    }

    /// An engine fit for `pipeline`: it meters fuel only if a stage sets
    /// `max_fuel` (metering slows every stage a little).
    ///
    /// # Errors
    /// If wasmtime cannot be set up on this machine.
    pub fn for_pipeline(pipeline: &Pipeline) -> Result<Self> {
        Self::with_fuel(pipeline.stages.iter().any(|s| s.limits.max_fuel.is_some()))
    }

    fn with_fuel(fuel: bool) -> Result<Self> {
        let options = weir_host::RuntimeOptions { cache_dir: weir_host::default_cache_dir(), fuel };
        Ok(Engine { runtime: Runtime::with_options(&options)? })
    }

    /// Check that every stage's component loads and implements the stage world.
    /// Errors name the stage, its module and where it is configured.
    ///
    /// # Errors
    /// One [`ConfigError`] per stage whose component is refused.
    ///
    /// Also refuses a stage that writes state behind a JetStream source that
    /// several processes may share: each process keeps its own state, so it
    /// would not be exactly-once across them (`single_process = true` is the
    /// operator's word that one process at a time runs the consumer).
    pub fn check_components(&self, pipeline: &Pipeline) -> Result<(), ConfigErrors> {
        let shared = match &pipeline.source {
            config::Source::Nats(config::NatsSource::JetStream(js)) => !js.single_process,
            _ => false,
        };
        let errors: Vec<ConfigError> = pipeline
            .stages
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let message = match self.runtime.load(&s.module) {
                    Err(e) => e.to_string(),
                    Ok(stage) if shared && stage.writes_state() => format!(
                        "stage `{}` keeps state (its component imports state-put or state-delete), and a JetStream consumer \
                         may be shared by several weir processes, each with its own state: it would not be exactly-once \
                         across them. Use a queue source, or set `single_process = true` in [source] if one process at a \
                         time runs this consumer",
                        s.name
                    ),
                    Ok(_) => return None,
                };
                Some(ConfigError { file: pipeline.file.clone(), location: s.module_at, path: format!("stage[{i}].module"), message })
            })
            .collect();
        if errors.is_empty() { Ok(()) } else { Err(ConfigErrors(errors)) }
    }

    /// Make the topics `pipeline` reads and writes that do not exist yet,
    /// as [`Engine::run`] does first: call it before serving the queue beside
    /// the run, so that a publish to the source topic is taken at once
    /// instead of refused while the stages are being loaded.
    ///
    /// # Errors
    /// A topic name the queue refuses, or an I/O error creating it.
    pub fn ensure_topics(pipeline: &Pipeline, queue: &weir_queue::Queue) -> Result<()> {
        run::ensure_topics(pipeline, queue)
    }

    /// Run `pipeline` on `queue` until `options.stop` is set or, with
    /// `options.drain`, until the source is exhausted and everything settled.
    ///
    /// # Errors
    /// A component that fails to load or initialise (before any message is
    /// pulled), or a queue or sink failure (nothing unwritten is acknowledged).
    pub fn run(&self, pipeline: &Pipeline, queue: &weir_queue::Queue, options: &RunOptions) -> Result<std::sync::Arc<PipelineStats>> {
        let prepared = run::prepare(pipeline, queue, &self.runtime)?;
        run::run(pipeline, queue, prepared, options)
    }
}
