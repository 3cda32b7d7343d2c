//! The on-disk cache of compiled components.
//!
//! Compiling a component with Cranelift takes from tens of milliseconds to
//! seconds; a restart should not pay it again. Artifacts are keyed by the
//! SHA-256 of the component's bytes and of the engine's compatibility hash
//! (wasmtime version, target and every setting that affects code), written
//! atomically, and only ever read by the same user that wrote them.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::describe;

/// Feeds `Hash` output into SHA-256.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        unreachable!("only the digest is used")
    }
}

pub(crate) struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Cache { dir }
    }

    /// Where the artifact for `wasm` compiled by `engine` lives.
    fn path(&self, engine: &Engine, wasm: &[u8]) -> PathBuf {
        let mut h = Sha256Hasher(Sha256::new());
        h.write(wasm);
        engine.precompile_compatibility_hash().hash(&mut h);
        let digest = h.0.finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{hex}.cwasm"))
    }

    /// The compiled component: from the cache if it holds a usable artifact,
    /// else compiled now and stored (best effort) for next time.
    pub(crate) fn load_or_compile(&self, engine: &Engine, wasm: &[u8]) -> wasmtime::Result<Component> {
        let path = self.path(engine, wasm);
        // Read into memory rather than mmap the file: a file rewritten in
        // place under a mapping would crash this process with SIGBUS.
        if let Ok(bytes) = std::fs::read(&path) {
            // SAFETY: the bytes were written by `store` below, atomically, from
            // `Component::serialize` for an engine with this compatibility
            // hash; wasmtime re-checks the header and refuses a mismatch.
            match unsafe { Component::deserialize(engine, &bytes) } {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %describe(&e), "ignoring unusable compiled artifact")
                }
            }
        }
        let component = Component::new(engine, wasm)?;
        if let Err(e) = store(&path, &component) {
            tracing::warn!(path = %path.display(), error = %e, "cannot cache the compiled component");
        }
        Ok(component)
    }
}

fn store(path: &Path, component: &Component) -> std::io::Result<()> {
    let bytes = component.serialize().map_err(|e| std::io::Error::other(describe(&e)))?;
    let dir = path.parent().expect("cache files live in a directory");
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The default cache directory: `$WEIR_CACHE_DIR`, else `$XDG_CACHE_HOME/weir`,
/// else `~/.cache/weir`, each with `/components` appended.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("WEIR_CACHE_DIR").map(PathBuf::from).or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(|x| PathBuf::from(x).join("weir"))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/weir")))
    })?;
    Some(base.join("components"))
}
