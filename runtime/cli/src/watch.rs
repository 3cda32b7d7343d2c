//! `weir run --watch`: the pipeline file and each stage's component are
//! looked at twice a second. A component that changed (the file a stage
//! names was rebuilt, or the pipeline file names another) is upgraded live
//! ([`weir_engine::Upgrades`]); any other change of the pipeline file is
//! reported as needing a restart. A file is taken once it has stopped
//! changing for one look, so a build still writing it is not read half-way.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use weir_engine::{Pipeline, Upgrades};

const LOOK_EVERY: Duration = Duration::from_millis(500);
/// How long a stage may take to reach the end of its batch and swap.
pub(crate) const SWAP_WAIT: Duration = Duration::from_secs(30);

/// What says a file changed: its modification time and length.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

struct Watched {
    name: String,
    module: PathBuf,
    /// The stamp last acted on (applied or refused).
    done: Stamp,
    /// The stamp seen at the last look, to wait for it to settle.
    seen: Stamp,
}

/// Everything about a pipeline but its stages' modules, to tell whether a
/// change of the file can be applied live.
fn shape(p: &Pipeline) -> String {
    let mut p = p.clone();
    for s in &mut p.stages {
        s.module = PathBuf::new();
        s.module_at = None;
    }
    format!("{p:?}")
}

pub(crate) fn start(file: PathBuf, pipeline: &Pipeline, upgrades: Arc<Upgrades>, stop: Arc<AtomicBool>) {
    let mut stages: Vec<Watched> = pipeline
        .stages
        .iter()
        .map(|s| Watched { name: s.name.clone(), module: s.module.clone(), done: stamp(&s.module), seen: stamp(&s.module) })
        .collect();
    let mut running_shape = shape(pipeline);
    let (mut file_done, mut file_seen) = (stamp(&file), stamp(&file));
    let run = move || {
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(LOOK_EVERY);
            let now = stamp(&file);
            if now != file_done && now == file_seen {
                file_done = now;
                match weir_engine::config::load(&file) {
                    Err(errors) => tracing::error!(file = %file.display(), %errors, "the pipeline file has errors; nothing of it applied"),
                    Ok(new) => {
                        if shape(&new) != running_shape {
                            tracing::warn!(file = %file.display(), "the pipeline file changed beyond stage modules: restart weir to apply that");
                            running_shape = shape(&new);
                        }
                        for s in &mut stages {
                            if let Some(spec) = new.stages.iter().find(|n| n.name == s.name)
                                && spec.module != s.module
                            {
                                s.module = spec.module.clone();
                                s.done = None; // a new file: take it
                            }
                        }
                    }
                }
            }
            file_seen = now;
            for s in &mut stages {
                let now = stamp(&s.module);
                if now.is_some() && now != s.done && now == s.seen {
                    s.done = now;
                    // An upgrade logs itself; a refusal is said here.
                    if let Err(e) = upgrades.upgrade(&s.name, &s.module, SWAP_WAIT) {
                        tracing::error!(error = %e, "upgrade refused; the running version runs on");
                    }
                }
                s.seen = now;
            }
        }
    };
    std::thread::Builder::new().name("weir-watch".into()).spawn(run).expect("spawn the watcher");
}
