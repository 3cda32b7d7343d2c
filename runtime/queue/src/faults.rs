//! Storage fault injection for tests (cargo feature `fault-injection`),
//! and the one path every fsync takes ([`Faults::sync`]), so that each place
//! the queue syncs ([`SyncSite`]) can be made to fail. Without the feature,
//! [`Faults`] is empty and every check compiles away.

#[cfg(feature = "fault-injection")]
use std::sync::Arc;
#[cfg(feature = "fault-injection")]
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// A place where the queue makes data durable with fsync. A failed fsync at
/// any of them stops what it was syncing for good (until a restart
/// re-validates it from disk): the kernel may have dropped the dirty pages,
/// so a retry could report success for data that is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SyncSite {
    /// Group commit of appended records.
    Append,
    /// Sealing a segment before the next one starts.
    SegmentRoll,
    /// A sealed segment's index file.
    Index,
    /// A directory, after creating, renaming or deleting an entry in it.
    Directory,
    /// A consumer group's committed offsets.
    Offsets,
    /// A transaction of the stage-state log.
    StateLog,
    /// A stage-state snapshot (compaction).
    StateSnapshot,
    /// A topic's metadata and id files.
    TopicMeta,
}

/// Makes the queue's storage fail on demand. Hand it to
/// [`Queue::open_with_faults`](crate::Queue::open_with_faults).
#[cfg(feature = "fault-injection")]
#[derive(Debug, Default)]
pub struct FaultInjector {
    disk_full: AtomicBool,
    /// One bit per [`SyncSite`] whose next fsync fails.
    fail_sync: AtomicU32,
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
        self.fail_next_sync(SyncSite::Append);
    }

    /// The next fsync at `site` fails with EIO.
    pub fn fail_next_sync(&self, site: SyncSite) {
        self.fail_sync.fetch_or(1 << site as u32, Ordering::SeqCst);
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

    /// Run the fsync `sync` for `site`, or fail it with EIO, once, if a
    /// failure was asked for there. Every fsync of the queue goes through here.
    pub(crate) fn sync(&self, site: SyncSite, sync: impl FnOnce() -> std::io::Result<()>) -> std::io::Result<()> {
        #[cfg(feature = "fault-injection")]
        if let Some(f) = &self.injector {
            let bit = 1 << site as u32;
            if f.fail_sync.fetch_and(!bit, Ordering::SeqCst) & bit != 0 {
                return Err(std::io::Error::from_raw_os_error(5)); // EIO
            }
        }
        #[cfg(not(feature = "fault-injection"))]
        let _ = site;
        sync()
    }
}
