//! Upgrading a stage of a running pipeline to another version of its
//! component, without stopping it (`weir run --watch`, the HTTP API).
//!
//! The new version is loaded (read, validated against the WIT world,
//! compiled) and started — its instances created and `init` run, with the
//! stage's own context, so its state is the same state — beside the old
//! one, on the caller's thread. Only then is it handed to the stage's
//! thread, which swaps it in between two batches: a batch is handled by one
//! version from its first message to its last, none by both, none lost.
//! A version that fails to load or to start is refused and the old one runs
//! on. The swap is acknowledged to the caller, which learns the digest of
//! the version it replaced.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_host::{Instance, Runtime, StageContext};

use crate::Pipeline;

/// Why an upgrade did not happen (the running version runs on).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// No stage of that name.
    #[error("the pipeline has no stage `{0}`")]
    UnknownStage(String),
    /// The pipeline is not running (not yet, or no longer).
    #[error("the pipeline is not running")]
    NotRunning,
    /// The new version cannot run in its place.
    #[error("stage `{stage}`: {module}: {reason}")]
    Refused {
        /// The stage.
        stage: String,
        /// The component file.
        module: PathBuf,
        /// Why.
        reason: String,
    },
    /// The stage's thread did not take the new version in time (a call
    /// that does not end, say): nothing was swapped.
    #[error("stage `{0}` did not take the new version within {1:?}; the running version runs on")]
    Timeout(String, Duration),
}

/// A swap that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgraded {
    /// The stage.
    pub stage: String,
    /// The digest (SHA-256 of the component) of the version replaced.
    pub previous: String,
    /// The digest of the version now running.
    pub module: String,
}

/// The stages of one pipeline, open to upgrades while it runs.
#[derive(Default)]
pub struct Upgrades {
    slots: Vec<Slot>,
}

struct Slot {
    name: String,
    /// What starting a version needs; set while the pipeline runs.
    live: Mutex<Option<Live>>,
    /// A started version, for the stage's thread to take.
    pending: Mutex<Option<Swap>>,
}

/// A stage of a running pipeline.
pub(crate) struct Live {
    pub(crate) runtime: Runtime,
    pub(crate) ctx: StageContext,
    pub(crate) concurrency: usize,
    /// The source's "some stage sets timers" and "track the watermark":
    /// a version that sets timers turns them on.
    pub(crate) timers: [Arc<AtomicBool>; 2],
    /// Whether the source is a JetStream consumer other processes may
    /// share (no stage state behind one).
    pub(crate) shared_source: bool,
    pub(crate) module: String,
    pub(crate) path: PathBuf,
}

/// A started version, handed to the stage's thread.
pub(crate) struct Swap {
    pub(crate) component: weir_host::Stage,
    pub(crate) instances: Vec<Instance>,
    /// Told once the swap is done.
    pub(crate) done: SyncSender<()>,
}

impl std::fmt::Debug for Upgrades {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.slots.iter().map(|s| &s.name)).finish()
    }
}

impl Upgrades {
    /// A slot per stage of `pipeline`.
    pub fn for_pipeline(pipeline: &Pipeline) -> Arc<Upgrades> {
        let slots =
            pipeline.stages.iter().map(|s| Slot { name: s.name.clone(), live: Mutex::new(None), pending: Mutex::new(None) }).collect();
        Arc::new(Upgrades { slots })
    }

    /// The running version of `stage`: its digest and the file it came from.
    pub fn current(&self, stage: &str) -> Option<(String, PathBuf)> {
        let slot = self.slots.iter().find(|s| s.name == stage)?;
        slot.live.lock().unwrap().as_ref().map(|l| (l.module.clone(), l.path.clone()))
    }

    /// Load, check and start the component at `module`, then have `stage`
    /// swap it in between two batches, waiting up to `wait` for that.
    ///
    /// # Errors
    /// [`UpgradeError`]; the running version then runs on.
    pub fn upgrade(&self, stage: &str, module: &Path, wait: Duration) -> Result<Upgraded, UpgradeError> {
        let slot = self.slots.iter().find(|s| s.name == stage).ok_or_else(|| UpgradeError::UnknownStage(stage.to_owned()))?;
        // Held throughout: one upgrade of a stage at a time.
        let mut live = slot.live.lock().unwrap();
        let l = live.as_mut().ok_or(UpgradeError::NotRunning)?;
        let refuse = |reason: String| UpgradeError::Refused { stage: stage.to_owned(), module: module.to_owned(), reason };
        let component = l.runtime.load(module).map_err(|e| refuse(e.to_string()))?;
        if component.digest() == l.module {
            // The same version (a file rewritten with the same bytes): nothing to swap.
            tracing::debug!(stage, module = %module.display(), "the same version as the one running: nothing to swap");
            l.path = module.to_owned();
            return Ok(Upgraded { stage: stage.to_owned(), previous: l.module.clone(), module: l.module.clone() });
        }
        if component.writes_state() && l.shared_source {
            return Err(refuse("it keeps state, and the pipeline reads a JetStream consumer that other weir processes may share".into()));
        }
        let instances = (0..l.concurrency)
            .map(|_| component.instantiate(&l.ctx))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| refuse(format!("it does not start: {e}")))?;
        let digest = component.digest().to_owned();
        if component.uses_timers() {
            // Before the swap: the batches it handles carry the watermark.
            l.timers.iter().for_each(|t| t.store(true, Ordering::SeqCst));
        }
        let (done, acked) = sync_channel(1);
        *slot.pending.lock().unwrap() = Some(Swap { component, instances, done });
        match acked.recv_timeout(wait) {
            Ok(()) => {}
            // Taken back unless the stage took it just now.
            Err(RecvTimeoutError::Timeout) if slot.pending.lock().unwrap().take().is_some() => {
                return Err(UpgradeError::Timeout(stage.to_owned(), wait));
            }
            Err(RecvTimeoutError::Timeout) => acked.recv().map_err(|_| UpgradeError::NotRunning)?,
            Err(RecvTimeoutError::Disconnected) => return Err(UpgradeError::NotRunning),
        }
        let previous = std::mem::replace(&mut l.module, digest.clone());
        l.path = module.to_owned();
        tracing::info!(
            stage,
            from = short(&previous),
            to = short(&digest),
            module = %module.display(),
            "stage upgraded; messages in flight finished on the old version"
        );
        Ok(Upgraded { stage: stage.to_owned(), previous, module: digest })
    }

    /// The run starts: stage `i` can be upgraded.
    pub(crate) fn attach(&self, i: usize, live: Live) {
        if let Some(slot) = self.slots.get(i) {
            *slot.live.lock().unwrap() = Some(live);
        }
    }

    /// The run ended: no more upgrades; a pending one is dropped (its
    /// caller learns the pipeline is not running).
    pub(crate) fn detach_all(&self) {
        for slot in &self.slots {
            slot.pending.lock().unwrap().take();
            if let Ok(mut live) = slot.live.try_lock() {
                live.take();
            }
        }
    }

    /// For stage `i`'s thread, between batches: a version to swap in.
    pub(crate) fn take(&self, i: usize) -> Option<Swap> {
        self.slots.get(i)?.pending.lock().unwrap().take()
    }
}

/// A digest's first 12 hex digits, for logs.
pub(crate) fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}
