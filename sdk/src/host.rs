//! Functions the host offers to a stage. Inside a component they call the
//! `weir:pipeline/host` imports; in native tests they record into the
//! [`testing::Harness`](crate::testing::Harness) of the current thread.

/// Severity of a log line.
pub use crate::__private::bindings::weir::pipeline::host::Level;

#[cfg(target_arch = "wasm32")]
mod wasm {
    //! The imports, with the SDK's borrowed arguments.
    use crate::__private::bindings::weir::pipeline::host;
    pub(crate) use host::{counter_add, log, state_delete, state_get, state_put};

    pub(crate) fn set_timer(domain: crate::TimeDomain, key: &[u8], at_ms: u64) {
        host::set_timer(domain, key, at_ms);
    }
    pub(crate) fn delete_timer(domain: crate::TimeDomain, key: &[u8], at_ms: u64) {
        host::delete_timer(domain, key, at_ms);
    }
    pub(crate) fn watermark_ms() -> Option<u64> {
        host::watermark_ms()
    }
    pub(crate) fn now_ms() -> u64 {
        super::system_ms()
    }
}

/// The wall clock, ms since the Unix epoch (in a component, WASI's clock).
pub(crate) fn system_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(not(target_arch = "wasm32"))]
use crate::testing::native as imp;
#[cfg(target_arch = "wasm32")]
use wasm as imp;

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

/// Durable timers: the host calls [`Stage::on_timer`](crate::Stage::on_timer)
/// when one fires. Like state, they are committed with the acknowledgement
/// of the messages whose call set them, so after a crash none is lost and
/// none fires twice into state.
pub mod timers {
    use super::imp;
    use crate::TimeDomain;

    /// Set a timer for `key` at `at_ms` (setting it again changes nothing).
    /// An event-time timer fires once the watermark reaches `at_ms`, a
    /// processing-time one once the host's clock does.
    pub fn set(domain: TimeDomain, key: &[u8], at_ms: u64) {
        imp::set_timer(domain, key, at_ms);
    }

    /// Delete the timer for `key` at `at_ms`, if there is one.
    pub fn delete(domain: TimeDomain, key: &[u8], at_ms: u64) {
        imp::delete_timer(domain, key, at_ms);
    }

    /// The stage's event-time watermark (ms since the Unix epoch): no
    /// message with an earlier event time is expected any more. `None`
    /// before the first; `u64::MAX` once a finite source has ended.
    pub fn watermark() -> Option<u64> {
        imp::watermark_ms()
    }

    /// Processing time now: the host's clock, ms since the Unix epoch (in a
    /// [`Harness`](crate::testing::Harness), its clock, which
    /// `advance_clock` moves).
    pub fn now_ms() -> u64 {
        imp::now_ms()
    }
}
