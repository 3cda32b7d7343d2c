//! Loading and checking stage components.

use std::path::{Path, PathBuf};

use crate::bindings::{StageIndices, StagePre};
use crate::{Error, Result, Runtime, describe};

const WASM_MAGIC: &[u8; 4] = b"\0asm";
/// Version and layer bytes of a core module.
const CORE_MODULE: [u8; 4] = [1, 0, 0, 0];

/// A compiled, checked stage component, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct Stage {
    pub(crate) runtime: Runtime,
    pub(crate) pre: StagePre<crate::instance::HostState>,
    pub(crate) path: PathBuf,
    /// Where the component exports its functions: `init` through the
    /// bindings, `handle-batch` for weir's own lowering.
    pub(crate) indices: StageIndices,
    pub(crate) handle_batch: wasmtime::component::ComponentExportIndex,
    /// Whether it imports `state-put` or `state-delete`.
    writes_state: bool,
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
        let pre = StagePre::new(instance_pre).map_err(|e| {
            not_a_stage(format!(
                "does not implement weir:pipeline/stage: {} (it must export \
                 weir:pipeline/consumer@0.1.0 with `init` and `handle-batch`)",
                describe(&e)
            ))
        })?;
        let indices = StageIndices::new(pre.instance_pre()).map_err(|e| not_a_stage(describe(&e)))?;
        let handle_batch = crate::lower::export_index(&component).map_err(|e| not_a_stage(describe(&e)))?;
        let writes_state = imports_state_writes(self.engine_ref(), &component);
        Ok(Stage { runtime: self.clone(), pre, path: path.to_owned(), indices, handle_batch, writes_state })
    }
}

/// Whether `component` imports `state-put` or `state-delete`: a component
/// imports only the host functions it calls, so this says whether it can
/// write state at all.
fn imports_state_writes(engine: &wasmtime::Engine, component: &wasmtime::component::Component) -> bool {
    use wasmtime::component::types::ComponentItem;
    component.component_type().imports(engine).any(|(name, item)| {
        name.starts_with("weir:pipeline/host")
            && matches!(&item.ty, ComponentItem::ComponentInstance(host)
                if host.exports(engine).any(|(f, _)| f == "state-put" || f == "state-delete"))
    })
}

impl Stage {
    /// The file the component was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the component can write state: it imports `state-put` or
    /// `state-delete` (a component imports only the functions it calls).
    pub fn writes_state(&self) -> bool {
        self.writes_state
    }
}
