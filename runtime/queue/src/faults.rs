//! Storage fault injection for tests (cargo feature `fault-injection`).
//! Without the feature, [`Faults`] is empty and every check compiles away.

#[cfg(feature = "fault-injection")]
use std::sync::Arc;
#[cfg(feature = "fault-injection")]
use std::sync::atomic::{AtomicBool, Ordering};

/// Makes the queue's storage fail on demand. Hand it to
/// [`Queue::open_with_faults`](crate::Queue::open_with_faults).
#[cfg(feature = "fault-injection")]
#[derive(Debug, Default)]
pub struct FaultInjector {
    disk_full: AtomicBool,
    fail_fsync: AtomicBool,
}

#[cfg(feature = "fault-injection")]
impl FaultInjector {
    /// While set, every append writes half of its bytes and then fails with
    /// ENOSPC, as a full disk does.
    pub fn set_disk_full(&self, full: bool) {
        self.disk_full.store(full, Ordering::SeqCst);
    }

    /// The next fsync of appended data fails with EIO.
    pub fn fail_next_fsync(&self) {
        self.fail_fsync.store(true, Ordering::SeqCst);
    }
}

/// The injector a queue was opened with, if any.
#[derive(Clone, Default)]
pub(crate) struct Faults {
    #[cfg(feature = "fault-injection")]
    pub(crate) injector: Option<Arc<FaultInjector>>,
}

impl Faults {
    /// ENOSPC if the disk is "full".
    pub(crate) fn disk_full(&self) -> bool {
        #[cfg(feature = "fault-injection")]
        if let Some(f) = &self.injector {
            return f.disk_full.load(Ordering::SeqCst);
        }
        false
    }

    /// An fsync error, once, if one was asked for.
    pub(crate) fn fsync_error(&self) -> Option<std::io::Error> {
        #[cfg(feature = "fault-injection")]
        if let Some(f) = &self.injector
            && f.fail_fsync.swap(false, Ordering::SeqCst)
        {
            return Some(std::io::Error::from_raw_os_error(5)); // EIO
        }
        None
    }
}
