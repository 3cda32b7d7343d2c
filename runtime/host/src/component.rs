//! Loading and checking stage components.

use std::path::{Path, PathBuf};

use wasmtime::component::InstancePre;

use crate::lower::{Exports, Version};
use crate::{Error, Result, Runtime, describe};

const WASM_MAGIC: &[u8; 4] = b"\0asm";
/// Version and layer bytes of a core module.
const CORE_MODULE: [u8; 4] = [1, 0, 0, 0];

/// A compiled, checked stage component, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct Stage {
    pub(crate) runtime: Runtime,
    pub(crate) pre: InstancePre<crate::instance::HostState>,
    pub(crate) path: PathBuf,
    /// Where the component exports the consumer's functions, and which
    /// version of `weir:pipeline` it was built against.
    pub(crate) exports: Exports,
    /// Whether it imports `state-put`, `state-delete` or `set-timer`.
    writes_state: bool,
    /// Whether it imports `set-timer`.
    uses_timers: bool,
    /// SHA-256 of the component's bytes, hex: which version this is.
    digest: String,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Runtime {
    /// Read and compile the component at `path` and check that it implements
    /// the `weir:pipeline/stage` world.
    ///
    /// # Errors
    /// [`Error::Read`] if the file cannot be read; [`Error::NotAStage`] if it is
    /// not WebAssembly, is a core module rather than a component, imports
    /// something the host does not provide, or lacks the `consumer` export.
    pub fn load(&self, path: &Path) -> Result<Stage> {
        let bytes = std::fs::read(path).map_err(|source| Error::Read { path: path.to_owned(), source })?;
        let not_a_stage = |reason: String| Error::NotAStage { path: path.to_owned(), reason };
        if bytes.len() < 8 || &bytes[0..4] != WASM_MAGIC {
            return Err(not_a_stage("not a WebAssembly file".into()));
        }
        if bytes[4..8] == CORE_MODULE {
            return Err(not_a_stage(
                "a core WebAssembly module, not a component; build it with `--target wasm32-wasip2` \
                 (or wrap it with `wasm-tools component new`)"
                    .into(),
            ));
        }
        let component = self.compile(&bytes).map_err(|e| not_a_stage(format!("invalid component: {}", describe(&e))))?;
        let instance_pre = self.linker().instantiate_pre(&component).map_err(|e| {
            not_a_stage(format!(
                "does not fit the weir:pipeline/stage world: {} (a stage may import only \
                 weir:pipeline/host and WASI)",
                describe(&e)
            ))
        })?;
        let exports = Exports::find(&component).and_then(|exports| {
            // The bindings check the exports' types.
            match exports.version {
                Version::V0_2_1 => drop(crate::bindings::StagePre::new(instance_pre.clone())?),
                Version::V0_2 => drop(crate::bindings_v2::StagePre::new(instance_pre.clone())?),
                Version::V0_1 => drop(crate::bindings_v1::StagePre::new(instance_pre.clone())?),
            }
            Ok(exports)
        });
        let exports = exports.map_err(|e| {
            not_a_stage(format!(
                "does not implement weir:pipeline/stage: {} (it must export \
                 weir:pipeline/consumer@0.2.1 or @0.2.0 with `init`, `handle-batch` and \
                 `on-timers`, or weir:pipeline/consumer@0.1.0 with `init` and `handle-batch`)",
                describe(&e)
            ))
        })?;
        let imports = host_imports(self.engine_ref(), &component);
        let imports_any = |names: &[&str]| imports.iter().any(|f| names.contains(&f.as_str()));
        Ok(Stage {
            runtime: self.clone(),
            pre: instance_pre,
            path: path.to_owned(),
            exports,
            writes_state: imports_any(&["state-put", "state-delete", "set-timer"]),
            uses_timers: imports_any(&["set-timer"]),
            digest: <sha2::Sha256 as sha2::Digest>::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect(),
        })
    }
}

/// The `weir:pipeline/host` functions `component` imports: a component
/// imports only the host functions it calls, so this says whether it can
/// write state or set timers at all.
fn host_imports(engine: &wasmtime::Engine, component: &wasmtime::component::Component) -> Vec<String> {
    use wasmtime::component::types::ComponentItem;
    let mut names = Vec::new();
    for (name, item) in component.component_type().imports(engine) {
        if name.starts_with("weir:pipeline/host")
            && let ComponentItem::ComponentInstance(host) = &item.ty
        {
            names.extend(host.exports(engine).map(|(f, _)| f.to_owned()));
        }
    }
    names
}

impl Stage {
    /// The file the component was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the component can write state: it imports `state-put`,
    /// `state-delete` or `set-timer` (a component imports only the
    /// functions it calls; timers are state).
    pub fn writes_state(&self) -> bool {
        self.writes_state
    }

    /// Whether the component can set timers: it imports `set-timer`.
    pub fn uses_timers(&self) -> bool {
        self.uses_timers
    }

    /// SHA-256 of the component's bytes (hex): which version of the stage
    /// this is, as run reports and dead letters (`weir.module`) name it.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The version of `weir:pipeline` the component was built against
    /// (`0.1.0`, `0.2.0` or `0.2.1`).
    pub fn wit_version(&self) -> &'static str {
        self.exports.version.as_str()
    }

    /// Whether the component exports `weir:pipeline/packed` (0.2.1), so
    /// that its batches go in and its results come out packed.
    pub fn packed(&self) -> bool {
        self.exports.packed.is_some()
    }
}
