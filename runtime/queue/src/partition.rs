//! Durability of one partition: group commit and fail-stop.
//!
//! Appends are written under the log lock; making them durable happens
//! outside it. A publisher that needs its records durable waits until the
//! *synced end* passes its last offset. If no fsync is running it becomes the
//! leader: it notes the current log end, runs one `fdatasync` (while other
//! publishers keep appending), then advances the synced end to the noted
//! offset and wakes everyone. Publishes that arrived during that fsync are
//! covered by the next one, so under load one fsync serves many publishes.
//!
//! Under `fsync = "always"` readers see only the synced prefix, so a record
//! that a crash could still lose is never delivered, and an offset can never
//! come to name a second payload after recovery.

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::faults::Faults;
use crate::log::{Log, Truncation};
use crate::record::{Record, StoredRecord};
use crate::{Error, Fsync, Result};

struct SyncState {
    /// Every offset below this is durable.
    synced_end: u64,
    /// A leader is running an fsync.
    syncing: bool,
    /// Set when an fsync failed: nothing is acknowledged any more.
    failed: Option<String>,
    last_sync: Instant,
    /// How long each group-commit fsync took, µs (its count is the
    /// number of fsyncs).
    sync_times: Histogram<u64>,
}

/// The longest fsync [`SyncState::sync_times`] tells apart, µs (a minute).
const MAX_SYNC_US: u64 = 60_000_000;

/// Lock order: `log` before `state`, never the reverse.
pub(crate) struct Partition {
    dir: PathBuf,
    log: Mutex<Log>,
    fsync: Fsync,
    read_only: bool,
    /// How long a leader waits for more appends before its fsync.
    group_commit: Duration,
    state: Mutex<SyncState>,
    synced: Condvar,
    faults: Faults,
}

impl Partition {
    pub(crate) fn open(
        id: u32,
        dir: &Path,
        fsync: Fsync,
        segment_bytes: u64,
        group_commit: Duration,
        read_only: bool,
        faults: Faults,
    ) -> Result<(Self, Option<Truncation>)> {
        let (log, truncation) = Log::open(id, dir, fsync, segment_bytes, read_only, faults.clone())?;
        let state = SyncState {
            synced_end: log.end_offset(),
            syncing: false,
            failed: None,
            last_sync: Instant::now(),
            sync_times: Histogram::new_with_bounds(1, MAX_SYNC_US, 2).expect("valid histogram bounds"),
        };
        let part = Partition {
            dir: dir.to_owned(),
            log: Mutex::new(log),
            fsync,
            read_only,
            group_commit,
            state: Mutex::new(state),
            synced: Condvar::new(),
            faults,
        };
        Ok((part, truncation))
    }

    pub(crate) fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap()
    }

    /// Append, without waiting for an fsync. Returns the first offset.
    pub(crate) fn append(&self, records: &[&Record]) -> Result<u64> {
        self.log().append(records)
    }

    /// Under `fsync = "always"`, wait until every offset below `end` is
    /// durable (leading an fsync if none runs); at once under the others.
    pub(crate) fn durable_to(&self, end: u64) -> Result<()> {
        if matches!(self.fsync, Fsync::Always) { self.sync_to(end) } else { Ok(()) }
    }

    /// Make everything appended so far durable.
    pub(crate) fn sync(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let end = self.log().end_offset();
        self.sync_to(end)
    }

    /// Sync if there is unsynced data and the last sync is at least `interval` old.
    pub(crate) fn sync_if_older(&self, interval: Duration) -> Result<()> {
        let due = {
            let st = self.state.lock().unwrap();
            st.failed.is_none() && !st.syncing && st.last_sync.elapsed() >= interval
        };
        if !due {
            return Ok(());
        }
        let end = self.log().end_offset();
        let behind = end > self.state.lock().unwrap().synced_end;
        if behind { self.sync_to(end) } else { Ok(()) }
    }

    /// Wait until every offset below `end` is durable, leading an fsync if none runs.
    fn sync_to(&self, end: u64) -> Result<()> {
        let mut st = self.state.lock().unwrap();
        loop {
            if let Some(reason) = &st.failed {
                return Err(Error::Failed { partition_dir: self.dir.clone(), reason: reason.clone() });
            }
            if st.synced_end >= end {
                return Ok(());
            }
            if st.syncing {
                st = self.synced.wait(st).unwrap();
                continue;
            }
            st.syncing = true;
            drop(st);
            if !self.group_commit.is_zero() {
                std::thread::sleep(self.group_commit);
            }
            let (file, target) = {
                let log = self.log();
                (log.writer(), log.end_offset())
            };
            let started = Instant::now();
            let result = file.map_or(Ok(()), |(file, path, data_end)| self.faults.sync_appended(&path, &file, data_end));
            let took = started.elapsed();
            let failure = result.err().map(|e| {
                // Fail-stop: after a failed fsync the kernel may have dropped
                // the dirty pages, so a retry could report success falsely.
                let reason = format!("fsync failed: {e}");
                self.log().fail(reason.clone());
                reason
            });
            st = self.state.lock().unwrap();
            st.syncing = false;
            st.last_sync = Instant::now();
            st.sync_times.saturating_record((took.as_micros() as u64).max(1));
            match failure {
                None => st.synced_end = st.synced_end.max(target),
                Some(reason) => st.failed = Some(reason),
            }
            self.synced.notify_all();
        }
    }

    /// fsyncs run by group commit, for benchmarks and metrics.
    pub(crate) fn fsyncs(&self) -> u64 {
        self.state.lock().unwrap().sync_times.len()
    }

    /// Add how long each group-commit fsync took (µs) to `into`.
    pub(crate) fn add_sync_times(&self, into: &mut Histogram<u64>) {
        into.add(&self.state.lock().unwrap().sync_times).expect("histograms of the same bounds");
    }

    /// Offsets below this may be delivered to consumers.
    pub(crate) fn visible_end(&self) -> u64 {
        match self.fsync {
            Fsync::Always if !self.read_only => self.state.lock().unwrap().synced_end,
            _ => self.log().end_offset(),
        }
    }

    pub(crate) fn start_offset(&self) -> u64 {
        self.log().start_offset()
    }

    /// Read up to `max` visible records from `from`. The partition's lock is
    /// held only to plan the read, not while reading the files.
    pub(crate) fn read(&self, from: u64, max: usize) -> Result<Vec<StoredRecord>> {
        let visible = self.visible_end();
        let (plan, max) = {
            let mut log = self.log();
            let visible = if self.read_only {
                log.refresh()?;
                log.end_offset()
            } else {
                visible
            };
            let max = max.min(visible.saturating_sub(from) as usize);
            if max == 0 {
                return Ok(Vec::new());
            }
            (log.plan_read(from, max), max)
        };
        plan.read(max)
    }

    pub(crate) fn refresh(&self) -> Result<()> {
        self.log().refresh()
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if !self.read_only && !matches!(self.fsync, Fsync::Never) {
            let _ = self.sync();
        }
    }
}
