//! The on-disk cache of compiled components.
//!
//! Compiling a component with Cranelift takes from tens of milliseconds to
//! seconds; a restart should not pay it again. Artifacts are keyed by the
//! SHA-256 of the component's bytes and of the engine's compatibility hash
//! (wasmtime version, target and every setting that affects code).
//!
//! An artifact is native code that weir maps and runs, so the cache is
//! guarded: its directory is created `0700`, and one owned by another user
//! or writable by others is not used (weir compiles in memory instead and
//! says why). Each artifact starts with the SHA-256 of the rest, checked
//! before wasmtime sees a byte: a truncated or damaged artifact is deleted
//! and compiled again. Artifacts are written through a temporary file of a
//! unique name, synced, then renamed into place.

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

    /// The compiled component: from the cache if it holds a sound artifact,
    /// else compiled now and stored (best effort) for next time.
    pub(crate) fn load_or_compile(&self, engine: &Engine, wasm: &[u8]) -> wasmtime::Result<Component> {
        if let Err(why) = guard_dir(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), "not using the compile cache: {why}");
            return Component::new(engine, wasm);
        }
        let path = self.path(engine, wasm);
        // Read into memory rather than mmap the file: a file rewritten in
        // place under a mapping would crash this process with SIGBUS.
        if let Ok(bytes) = std::fs::read(&path) {
            match sound(&bytes) {
                // SAFETY: the directory is this user's alone (`guard_dir`), and
                // the body is, by its checksum, what `store` wrote from
                // `Component::serialize` for an engine with this compatibility
                // hash; wasmtime re-checks the header and refuses a mismatch.
                Some(body) => match unsafe { Component::deserialize(engine, body) } {
                    Ok(component) => return Ok(component),
                    Err(e) => tracing::warn!(path = %path.display(), error = %describe(&e), "deleting an unusable compiled artifact"),
                },
                None => tracing::warn!(path = %path.display(), "deleting a damaged compiled artifact (checksum mismatch)"),
            }
            std::fs::remove_file(&path).ok();
        }
        let component = Component::new(engine, wasm)?;
        if let Err(e) = store(&path, &component) {
            tracing::warn!(path = %path.display(), error = %e, "cannot cache the compiled component");
        }
        Ok(component)
    }
}

/// Bytes of the SHA-256 that starts every artifact.
const CHECKSUM_LEN: usize = 32;

/// The body of an artifact whose checksum matches.
fn sound(bytes: &[u8]) -> Option<&[u8]> {
    let (sum, body) = bytes.split_at_checked(CHECKSUM_LEN)?;
    (Sha256::digest(body).as_slice() == sum).then_some(body)
}

/// Create the cache directory `0700` if it is missing; refuse one that
/// another user owns or that others may write to, since what it holds is run
/// as native code.
fn guard_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| format!("cannot create it: {e}"))?;
    let meta = std::fs::metadata(dir).map_err(|e| e.to_string())?;
    // /proc/self belongs to the process's effective user.
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if me.is_some_and(|me| meta.uid() != me) {
        return Err(format!("it belongs to user {}, not to this one", meta.uid()));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(format!("others may write to it (mode {:o}); `chmod 700` it", meta.permissions().mode() & 0o777));
    }
    Ok(())
}

fn store(path: &Path, component: &Component) -> std::io::Result<()> {
    let body = component.serialize().map_err(|e| std::io::Error::other(describe(&e)))?;
    let dir = path.parent().expect("cache files live in a directory");
    let mut f = tempfile::Builder::new().prefix(".artifact").tempfile_in(dir)?;
    f.write_all(&Sha256::digest(&body))?;
    f.write_all(&body)?;
    f.as_file().sync_all()?;
    f.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// weir's cache folder: `$WEIR_CACHE_DIR`, else `$XDG_CACHE_HOME/weir`, else
/// `~/.cache/weir` (compiled components, and `weir build`'s toolchains and
/// SDKs).
pub fn cache_root() -> Option<PathBuf> {
    std::env::var_os("WEIR_CACHE_DIR").map(PathBuf::from).or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .filter(|x| !x.is_empty())
            .map(|x| PathBuf::from(x).join("weir"))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/weir")))
    })
}

/// The default folder of compiled components: [`cache_root`]`/components`.
pub fn default_cache_dir() -> Option<PathBuf> {
    Some(cache_root()?.join("components"))
}
