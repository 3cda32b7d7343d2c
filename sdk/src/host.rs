//! Functions the host offers to a stage. Inside a component they call the
//! `weir:pipeline/host` imports; in native tests they record into the
//! [`testing::Harness`](crate::testing::Harness) of the current thread.

/// Severity of a log line.
pub use crate::__private::bindings::weir::pipeline::host::Level;

#[cfg(target_arch = "wasm32")]
use crate::__private::bindings::weir::pipeline::host as imp;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::native as imp;

/// Write a log line; the host tags it with the pipeline and stage names.
pub fn log(level: Level, message: &str) {
    imp::log(level, message);
}

/// Add `delta` to the stage's custom counter `name`, reported with its metrics.
pub fn counter_add(name: &str, delta: u64) {
    imp::counter_add(name, delta);
}

/// The stage's durable key-value state, shared by its instances. Writes are
/// committed together with the acknowledgement of the batch being handled.
pub mod state {
    use super::imp;

    /// The value stored for `key`.
    pub fn get(key: &[u8]) -> Option<Vec<u8>> {
        imp::state_get(key)
    }

    /// Store `value` for `key`.
    pub fn put(key: &[u8], value: &[u8]) {
        imp::state_put(key, value);
    }

    /// Remove `key`.
    pub fn delete(key: &[u8]) {
        imp::state_delete(key);
    }
}
