//! Storage fault injection for tests (cargo feature `fault-injection`),
//! and the one path every fsync takes ([`Faults::sync_file`],
//! [`Faults::sync_dir`]), so that each place the queue syncs ([`SyncSite`])
//! can be made to fail, to lie, or to lose power. Without the feature,
//! [`Faults`] is empty and every check compiles away.

use std::fs::File;
use std::path::Path;
#[cfg(feature = "fault-injection")]
use std::sync::Arc;
#[cfg(feature = "fault-injection")]
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

#[cfg(feature = "fault-injection")]
use crate::power::PowerModel;

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
    /// A commit of the stage-state database.
    State,
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
    /// One bit per [`SyncSite`] whose fsyncs report success without syncing.
    skip_sync: AtomicU32,
    power: Option<PowerModel>,
}

#[cfg(feature = "fault-injection")]
impl FaultInjector {
    /// An injector that also simulates power loss for the data directory
    /// `root`, whose present contents count as durable: it records what
    /// every completed fsync makes durable, so that after
    /// [`FaultInjector::cut_power`] [`FaultInjector::restore_after_power_cut`]
    /// can rebuild exactly what a disk would hold. `shadow` is an empty
    /// directory on the same file system, where files are kept (hard-linked)
    /// until then.
    ///
    /// # Errors
    /// I/O errors reading `root` or linking into `shadow`.
    pub fn with_power_model(root: &Path, shadow: impl Into<std::path::PathBuf>) -> std::io::Result<Self> {
        Ok(FaultInjector { power: Some(PowerModel::new(root, shadow.into())?), ..Self::default() })
    }

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

    /// From now on every fsync at `site` reports success without syncing:
    /// a missing fsync, to show that a power-cut test notices one.
    pub fn skip_syncs(&self, site: SyncSite) {
        self.skip_sync.fetch_or(1 << site as u32, Ordering::SeqCst);
    }

    /// Cut the power: from now on nothing becomes durable, and every fsync
    /// fails with EIO (the process would be dead; this one only stops).
    ///
    /// # Panics
    /// If the injector has no power model.
    pub fn cut_power(&self) {
        self.power.as_ref().expect("made with_power_model").cut();
    }

    /// After [`FaultInjector::cut_power`], and once the queue under `root` is
    /// dropped, write to the new directory `into` what the disk would hold
    /// after the power came back: each directory with the entries its last
    /// completed fsync covered (later creations, renames and deletions
    /// undone) and each file cut to the length its last completed fsync
    /// covered (nothing, if none did).
    ///
    /// # Errors
    /// I/O errors reading the shadow copies or writing `into`.
    ///
    /// # Panics
    /// If the injector has no power model.
    pub fn restore_after_power_cut(&self, root: &Path, into: &Path) -> std::io::Result<()> {
        self.power.as_ref().expect("made with_power_model").restore(root, into)
    }
}

/// The injector a queue was opened with, if any.
#[derive(Clone, Default)]
pub(crate) struct Faults {
    #[cfg(feature = "fault-injection")]
    pub(crate) injector: Option<Arc<FaultInjector>>,
}

/// What one fsync call syncs.
enum Target<'a> {
    /// A file (`data_only`: fdatasync), with its path.
    File {
        file: &'a File,
        #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
        path: &'a Path,
        data_only: bool,
        /// Where the data ends: from here to the end of the file, zeros
        /// filled ahead of it (none: the data is the whole file).
        #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
        data_end: Option<u64>,
    },
    /// A directory's entries.
    Dir(&'a Path),
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

    /// fsync (`data_only`: fdatasync) `file`, found at `path`, for `site`.
    pub(crate) fn sync_file(&self, site: SyncSite, path: &Path, file: &File, data_only: bool) -> std::io::Result<()> {
        self.sync(site, Target::File { file, path, data_only, data_end: None })
    }

    /// fdatasync a log segment for group commit; its data ends at
    /// `data_end`, zeros filled ahead of appends follow.
    pub(crate) fn sync_appended(&self, path: &Path, file: &File, data_end: u64) -> std::io::Result<()> {
        self.sync(SyncSite::Append, Target::File { file, path, data_only: true, data_end: Some(data_end) })
    }

    /// fsync the directory `dir`, so that entries created, renamed or
    /// deleted in it are durable.
    pub(crate) fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.sync(SyncSite::Directory, Target::Dir(dir))
    }

    /// Every fsync of the queue goes through here: it fails once with EIO if
    /// a failure was asked for at `site`, pretends if told to skip `site`,
    /// and tells the power model what became durable.
    fn sync(&self, site: SyncSite, target: Target<'_>) -> std::io::Result<()> {
        #[cfg(feature = "fault-injection")]
        if let Some(f) = &self.injector {
            let bit = 1 << site as u32;
            if f.fail_sync.fetch_and(!bit, Ordering::SeqCst) & bit != 0 {
                return Err(std::io::Error::from_raw_os_error(5)); // EIO
            }
            if f.skip_sync.load(Ordering::SeqCst) & bit != 0 {
                return Ok(());
            }
            if let Some(power) = &f.power {
                return match target {
                    Target::File { file, path, data_end, .. } => power.sync_file(path, file, data_end, || target.run()),
                    Target::Dir(dir) => power.sync_dir(dir, || target.run()),
                };
            }
        }
        #[cfg(not(feature = "fault-injection"))]
        let _ = site;
        target.run()
    }
}

impl Target<'_> {
    /// The fsync itself.
    fn run(&self) -> std::io::Result<()> {
        match *self {
            Target::File { file, data_only: true, .. } => file.sync_data(),
            Target::File { file, data_only: false, .. } => file.sync_all(),
            Target::Dir(dir) => File::open(dir)?.sync_all(),
        }
    }
}
