//! Durable per-stage key-value state, committed atomically with acknowledgements.
//!
//! A [`StateStore`] belongs to one consumer group reading one topic (a
//! pipeline's source). It is a [redb](https://docs.rs/redb) database on
//! disk, `state.redb`, holding three tables: every stage's entries (keyed
//! by stage, then key, so one stage's keys are a contiguous range in key
//! order), the *applied set*, and each stage's totals (entries and bytes).
//! Each [`StateStore::commit`] is one fsynced write transaction holding the
//! state writes of some messages *and* the ids of those messages. The ids
//! form the applied set: after a crash the group's committed offset may lag
//! behind acknowledgements that were never written to the group file, and a
//! message in the applied set is one whose state writes are already
//! durable, so it must not be processed again. That is what makes state
//! exactly-once while delivery is at-least-once.
//!
//! State need not fit in memory: what is read is read from the database
//! through a cache of bounded size ([`StateStore::open`]'s `cache_bytes`),
//! and opening a store reads only the applied set and the totals. The
//! applied set stays in memory; it is pruned of ids below the floor the
//! source last gave ([`StateStore::set_floor`]: a group's committed
//! offsets), which are never delivered again.
//!
//! Readers ([`StateReader`], one per stage) read committed state from their
//! own snapshot, renewed after every commit, so they never wait for a
//! commit and never see half of one.
//!
//! Stores written before weir kept state in redb (a `state.log` of
//! CRC-framed transactions and a `state.snapshot`) are imported on open, in
//! one transaction, and their files removed.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use redb::{Database, ReadOnlyTable, ReadableDatabase, ReadableTable, StorageBackend, TableDefinition};

use crate::faults::{Faults, SyncSite};
use crate::{Error, Result, create_dir_durable, sync_dir, validate_name};

/// The database file of a store.
const DB_FILE: &str = "state.redb";
/// Default size of a store's cache of database pages.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;
/// Below this many applied ids, commits do not prune the set.
const PRUNE_AT_LEAST: usize = 4096;

/// Every stage's entries: stage (length-prefixed), then key → value.
const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
/// Ids (partition, offset) of messages whose state writes are durable.
const APPLIED: TableDefinition<(u32, u64), ()> = TableDefinition::new("applied");
/// Per stage: (entries, key and value bytes).
const TOTALS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("totals");

/// One state change of one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateWrite {
    /// The stage whose state it is.
    pub stage: String,
    /// The key.
    pub key: Vec<u8>,
    /// The new value; `None` deletes the key.
    pub value: Option<Vec<u8>>,
}

/// A stage's key-value state, read whole ([`StateStore::stage`]).
pub type StageMap = HashMap<Vec<u8>, Vec<u8>>;

/// How much one stage holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Keys.
    pub entries: u64,
    /// Key and value bytes.
    pub bytes: u64,
}

/// What a store and its readers share.
#[derive(Debug, Default)]
struct Shared {
    dir: PathBuf,
    /// Made by the first commit, so a group whose stages keep no state leaves no files.
    db: OnceLock<Database>,
    /// Bumped after every commit: a reader's snapshot older than it is stale.
    commits: AtomicU64,
    totals: Mutex<HashMap<String, Totals>>,
}

/// Durable state of one consumer group on one topic. See the module docs.
pub struct StateStore {
    shared: Arc<Shared>,
    applied: HashSet<(u32, u64)>,
    /// Applied ids after the last pruning: prune again once twice as many.
    pruned_to: usize,
    /// Per partition, the offset below which the source never delivers
    /// again, as the caller last said ([`StateStore::set_floor`]).
    floor: Option<Vec<u64>>,
    cache_bytes: usize,
    faults: Faults,
    /// Set when a commit failed: no commit is tried again.
    failed: Option<String>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore").field("dir", &self.shared.dir).field("applied", &self.applied.len()).finish_non_exhaustive()
    }
}

/// A redb error as the queue's.
fn db_error(path: &Path) -> impl Fn(redb::Error) -> Error + '_ {
    move |e| match e {
        redb::Error::Io(source) => Error::Io { path: path.to_owned(), source },
        e => Error::Store { path: path.to_owned(), reason: e.to_string() },
    }
}

/// The entries key of `key` in `stage`'s state.
fn entry_key(stage: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + stage.len() + key.len());
    out.extend_from_slice(&(stage.len() as u16).to_be_bytes());
    out.extend_from_slice(stage.as_bytes());
    out.extend_from_slice(key);
    out
}

/// The database file, with every fsync through [`Faults`] (so tests can
/// fail, skip or cut the power under it).
struct StateFile {
    inner: redb::backends::FileBackend,
    /// The same file, to sync.
    file: File,
    path: PathBuf,
    faults: Faults,
}

impl std::fmt::Debug for StateFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateFile").field("path", &self.path).finish_non_exhaustive()
    }
}

impl StorageBackend for StateFile {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.faults.sync_file(SyncSite::State, &self.path, &self.file, true)
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if self.faults.disk_full() {
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        self.inner.write(offset, data)
    }
    fn close(&self) -> std::io::Result<()> {
        self.inner.close()
    }
    fn try_lock_range(&self, start: std::ops::Bound<u64>, end: std::ops::Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_range(start, end)
    }
    fn try_lock_shared_range(&self, start: std::ops::Bound<u64>, end: std::ops::Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: std::ops::Bound<u64>, end: std::ops::Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: std::ops::Bound<u64>, end: std::ops::Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: std::ops::Bound<u64>, end: std::ops::Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: std::ops::Bound<u64>, end: std::ops::Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

impl StateStore {
    /// Open the state of `group` on `topic` under the queue directory
    /// `root` (none yet: empty state), caching at most `cache_bytes` of it
    /// in memory. Reads the applied set and the totals, not the state.
    pub(crate) fn open(root: &Path, group: &str, topic: &str, cache_bytes: usize, faults: Faults) -> Result<Self> {
        validate_name("consumer group", group)?;
        let dir = root.join("state").join(group).join(topic);
        let mut store = StateStore {
            shared: Arc::new(Shared { dir, ..Shared::default() }),
            applied: HashSet::new(),
            pruned_to: 0,
            floor: None,
            cache_bytes,
            faults,
            failed: None,
        };
        if store.shared.dir.join(DB_FILE).exists() {
            let db = store.open_db()?;
            // A file whose first commit never became durable has no tables.
            Self::create_tables(&db, &store.path())?;
            store.load(&db)?;
            store.shared.db.set(db).expect("set once");
        }
        legacy::import(&mut store)?;
        Ok(store)
    }

    fn path(&self) -> PathBuf {
        self.shared.dir.join(DB_FILE)
    }

    /// Open (or make) the database file. A crash during a commit leaves
    /// the previous commit, which redb finds by its checksums.
    fn open_db(&self) -> Result<Database> {
        let path = self.path();
        let io = |e| Error::io(&path, e);
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        let backend = StateFile {
            file: file.try_clone().map_err(io)?,
            inner: redb::backends::FileBackend::new(file).map_err(|e| db_error(&path)(e.into()))?,
            path: path.clone(),
            faults: self.faults.clone(),
        };
        redb::Builder::new().set_cache_size(self.cache_bytes).create_with_backend(backend).map_err(|e| db_error(&path)(e.into()))
    }

    /// Read the applied set and the totals.
    fn load(&mut self, db: &Database) -> Result<()> {
        let path = self.path();
        let err = db_error(&path);
        let tx = db.begin_read().map_err(|e| err(e.into()))?;
        let applied = tx.open_table(APPLIED).map_err(|e| err(e.into()))?;
        for id in applied.iter().map_err(|e| err(e.into()))? {
            self.applied.insert(id.map_err(|e| err(e.into()))?.0.value());
        }
        self.pruned_to = self.applied.len();
        let mut totals = self.shared.totals.lock().unwrap();
        for row in tx.open_table(TOTALS).map_err(|e| err(e.into()))?.iter().map_err(|e| err(e.into()))? {
            let (stage, (entries, bytes)) = row.map(|(k, v)| (k.value().to_owned(), v.value())).map_err(|e| err(e.into()))?;
            totals.insert(stage, Totals { entries, bytes });
        }
        Ok(())
    }

    /// Make the tables, if the file has none yet.
    fn create_tables(db: &Database, path: &Path) -> Result<()> {
        let err = db_error(path);
        let tx = db.begin_write().map_err(|e| err(e.into()))?;
        tx.open_table(ENTRIES).map_err(|e| err(e.into()))?;
        tx.open_table(APPLIED).map_err(|e| err(e.into()))?;
        tx.open_table(TOTALS).map_err(|e| err(e.into()))?;
        tx.commit().map_err(|e| err(e.into()))
    }

    /// The database, made (with its directory and tables) if this is the first commit.
    fn db(&self) -> Result<&Database> {
        if let Some(db) = self.shared.db.get() {
            return Ok(db);
        }
        create_dir_durable(&self.shared.dir, &self.faults)?;
        let db = self.open_db()?;
        sync_dir(&self.shared.dir, &self.faults)?;
        Self::create_tables(&db, &self.path())?;
        Ok(self.shared.db.get_or_init(|| db))
    }

    /// A reader of the committed state, for one thread at a time.
    pub fn reader(&self) -> StateReader {
        StateReader { shared: self.shared.clone(), snapshot: Mutex::new(None) }
    }

    /// The committed state of `stage` (empty if it has none), read whole:
    /// for tests and tools, not for state larger than memory.
    ///
    /// # Errors
    /// The database cannot be read.
    pub fn stage(&self, stage: &str) -> Result<StageMap> {
        self.reader().entries(stage, &[], usize::MAX).map(|e| e.into_iter().collect())
    }

    /// How much `stage` holds.
    pub fn totals(&self, stage: &str) -> Totals {
        self.shared.totals.lock().unwrap().get(stage).copied().unwrap_or_default()
    }

    /// Ids (partition, offset) of messages whose state writes are durable:
    /// if one is delivered again, it must be acknowledged without processing.
    pub fn applied(&self) -> &HashSet<(u32, u64)> {
        &self.applied
    }

    /// Make `writes` durable together with the acknowledgement of `acked`
    /// (the messages they came from), in one fsynced transaction.
    ///
    /// # Errors
    /// An I/O error; nothing of the transaction then counts as applied, and
    /// the store takes no more commits (fail-stop: what the file holds is no
    /// longer known until it is opened again).
    pub fn commit(&mut self, writes: &[StateWrite], acked: &[(u32, u64)]) -> Result<()> {
        let prune = self.applied.len() + acked.len() >= (2 * self.pruned_to).max(PRUNE_AT_LEAST);
        self.commit_pruning(writes, acked, prune)
    }

    /// [`StateStore::commit`], pruning the applied ids below the floor if
    /// `prune` (and there is a floor).
    fn commit_pruning(&mut self, writes: &[StateWrite], acked: &[(u32, u64)], prune: bool) -> Result<()> {
        if let Some(reason) = &self.failed {
            return Err(Error::Stopped { path: self.path(), reason: reason.clone() });
        }
        let prune = prune && self.floor.is_some();
        let committed = self.try_commit(writes, acked, prune);
        if let Err(e) = &committed {
            self.failed = Some(e.to_string());
        }
        committed
    }

    fn try_commit(&mut self, writes: &[StateWrite], acked: &[(u32, u64)], prune: bool) -> Result<()> {
        let path = self.path();
        let err = db_error(&path);
        let db = self.db()?;
        // Durability::Immediate, redb's default: fsynced when commit returns.
        let mut tx = db.begin_write().map_err(|e| err(e.into()))?;
        // Restart stays quick after a crash: the allocator state is saved
        // with each commit instead of rebuilt by reading the whole file.
        tx.set_quick_repair(true);
        let mut totals = self.shared.totals.lock().unwrap().clone();
        {
            let mut entries = tx.open_table(ENTRIES).map_err(|e| err(e.into()))?;
            for w in writes {
                let key = entry_key(&w.stage, &w.key);
                let old = match &w.value {
                    Some(v) => entries.insert(key.as_slice(), v.as_slice()),
                    None => entries.remove(key.as_slice()),
                }
                .map_err(|e| err(e.into()))?
                .map(|old| old.value().len());
                let t = totals.entry(w.stage.clone()).or_default();
                let size = |len: Option<usize>| len.map_or(0, |len| (w.key.len() + len) as u64);
                t.bytes = (t.bytes + size(w.value.as_ref().map(Vec::len))).saturating_sub(size(old));
                t.entries = (t.entries + u64::from(w.value.is_some())).saturating_sub(u64::from(old.is_some()));
            }
            let mut table = tx.open_table(TOTALS).map_err(|e| err(e.into()))?;
            let stages: std::collections::BTreeSet<&str> = writes.iter().map(|w| w.stage.as_str()).collect();
            for stage in stages {
                let t = totals[stage];
                table.insert(stage, (t.entries, t.bytes)).map_err(|e| err(e.into()))?;
            }
            let mut applied = tx.open_table(APPLIED).map_err(|e| err(e.into()))?;
            for &id in acked {
                applied.insert(id, ()).map_err(|e| err(e.into()))?;
            }
            if prune {
                let floor = self.floor.as_deref().unwrap_or_default();
                applied.retain(|(p, o), ()| !below(floor, p, o)).map_err(|e| err(e.into()))?;
            }
        }
        tx.commit().map_err(|e| err(e.into()))?;
        self.shared.commits.fetch_add(1, Ordering::Release);
        *self.shared.totals.lock().unwrap() = totals;
        self.applied.extend(acked.iter().copied());
        if prune {
            let floor = self.floor.as_deref().unwrap_or_default();
            self.applied.retain(|&(p, o)| !below(floor, p, o));
            self.pruned_to = self.applied.len();
        }
        Ok(())
    }

    /// Say below which offset, per partition, the source will never deliver
    /// a message again (a consumer group's committed offsets; a JetStream
    /// consumer's acknowledgement floor + 1). Commits prune the applied ids
    /// below it, once the set has doubled since it was last pruned; until a
    /// floor is given, none is pruned.
    pub fn set_floor(&mut self, floor: Vec<u64>) {
        self.floor = Some(floor);
    }

    /// Prune the applied ids below the floor now, in a commit of its own.
    ///
    /// # Errors
    /// As [`StateStore::commit`].
    pub fn prune(&mut self) -> Result<()> {
        if self.shared.db.get().is_none() || self.floor.is_none() {
            return Ok(()); // nothing was ever committed, or nothing can be pruned
        }
        self.commit_pruning(&[], &[], true)
    }
}

/// Whether `(p, o)` is below `floor` (a partition it does not cover is not).
fn below(floor: &[u64], p: u32, o: u64) -> bool {
    floor.get(p as usize).is_some_and(|&c| o < c)
}

type Snapshot = ReadOnlyTable<&'static [u8], &'static [u8]>;

/// Reads a store's committed state: see [`StateStore::reader`].
pub struct StateReader {
    shared: Arc<Shared>,
    /// The snapshot it reads, and the commit count it was taken at.
    snapshot: Mutex<Option<(u64, Snapshot)>>,
}

impl std::fmt::Debug for StateReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateReader").field("dir", &self.shared.dir).finish_non_exhaustive()
    }
}

impl StateReader {
    /// A reader of nothing, whose store is never committed to: for a
    /// stage run without a store (benchmarks, tests of the host alone).
    pub fn empty() -> Self {
        StateReader { shared: Arc::default(), snapshot: Mutex::new(None) }
    }

    /// Run `f` on a snapshot of the last commit (`None` before the first).
    fn with<T>(&self, f: impl FnOnce(&Snapshot) -> std::result::Result<T, redb::StorageError>) -> Result<Option<T>> {
        let path = self.shared.dir.join(DB_FILE);
        let err = db_error(&path);
        let commits = self.shared.commits.load(Ordering::Acquire);
        let mut snapshot = self.snapshot.lock().unwrap();
        if snapshot.as_ref().is_none_or(|(at, _)| *at != commits) {
            // Drop the old one first: a snapshot kept pins the pages it reads.
            *snapshot = None;
            let Some(db) = self.shared.db.get() else { return Ok(None) };
            let table = db.begin_read().map_err(|e| err(e.into()))?.open_table(ENTRIES).map_err(|e| err(e.into()))?;
            *snapshot = Some((commits, table));
        }
        let (_, table) = snapshot.as_ref().expect("set above");
        f(table).map(Some).map_err(|e| err(e.into()))
    }

    /// The committed value of `key` in `stage`'s state.
    ///
    /// # Errors
    /// The database cannot be read.
    pub fn get(&self, stage: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let key = entry_key(stage, key);
        Ok(self.with(|t| Ok(t.get(key.as_slice())?.map(|v| v.value().to_vec())))?.flatten())
    }

    /// Up to `max` of `stage`'s committed entries, in key order, from
    /// the first key ≥ `from`.
    ///
    /// # Errors
    /// The database cannot be read.
    pub fn entries(&self, stage: &str, from: &[u8], max: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let start = entry_key(stage, from);
        let prefix = entry_key(stage, &[]);
        let found = self.with(|t| {
            let mut out = Vec::new();
            for row in t.range(start.as_slice()..)? {
                let (k, v) = row?;
                let Some(key) = k.value().strip_prefix(prefix.as_slice()) else { break };
                if out.len() == max {
                    break;
                }
                out.push((key.to_vec(), v.value().to_vec()));
            }
            Ok(out)
        })?;
        Ok(found.unwrap_or_default())
    }

    /// How much `stage` holds, as of the last commit.
    pub fn totals(&self, stage: &str) -> Totals {
        self.shared.totals.lock().unwrap().get(stage).copied().unwrap_or_default()
    }
}

/// The store's format before redb: a CRC-framed transaction log and a
/// snapshot in the same frame format. Read only to import it.
mod legacy {
    use super::*;

    const LOG_FILE: &str = "state.log";
    const SNAPSHOT_FILE: &str = "state.snapshot";
    /// Frame header: body length (u32 LE) then CRC32C of the body (u32 LE).
    pub(super) const FRAME_HEADER: usize = 8;
    /// Largest transaction body accepted (guards against garbage lengths).
    const MAX_FRAME: usize = 1 << 30;

    /// Import the legacy files in `store`'s directory, if any, in one
    /// commit, then remove them. A crash before they are removed imports
    /// them again over the same values: puts are absolute, ids a set.
    pub(super) fn import(store: &mut StateStore) -> Result<()> {
        let dir = store.shared.dir.clone();
        let (log, snapshot) = (dir.join(LOG_FILE), dir.join(SNAPSHOT_FILE));
        if !log.exists() && !snapshot.exists() {
            return Ok(());
        }
        let mut state: HashMap<(String, Vec<u8>), Vec<u8>> = HashMap::new();
        let mut applied = HashSet::new();
        let mut apply = |body: &[u8]| -> std::result::Result<(), String> {
            let (writes, ids) = decode(body)?;
            for w in writes {
                match w.value {
                    Some(v) => state.insert((w.stage, w.key), v),
                    None => state.remove(&(w.stage, w.key)),
                };
            }
            applied.extend(ids);
            Ok(())
        };
        match fs::read(&snapshot) {
            Ok(bytes) => {
                // Written atomically, so any damage is corruption, not a torn write.
                let corrupt = |reason| Error::Corrupt { path: snapshot.clone(), position: 0, reason };
                let (body, _) = frame(&bytes, 0).map_err(corrupt)?;
                apply(body).map_err(corrupt)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&snapshot, e)),
        }
        let bytes = match fs::read(&log) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(&log, e)),
        };
        let mut pos = 0;
        // A torn last transaction (a crash mid-write) was never acknowledged.
        while let Ok((body, next)) = frame(&bytes, pos) {
            if apply(body).is_err() {
                break;
            }
            pos = next;
        }
        let writes: Vec<StateWrite> = state.into_iter().map(|((stage, key), v)| StateWrite { stage, key, value: Some(v) }).collect();
        let ids: Vec<(u32, u64)> = applied.into_iter().collect();
        tracing::info!(dir = %dir.display(), keys = writes.len(), "importing stage state from the log-and-snapshot format");
        store.commit(&writes, &ids)?;
        for file in [&log, &snapshot] {
            match fs::remove_file(file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(file, e)),
                _ => {}
            }
        }
        sync_dir(&dir, &store.faults)
    }

    /// The body of the frame at `pos`, and where the next frame starts.
    pub(super) fn frame(bytes: &[u8], pos: usize) -> std::result::Result<(&[u8], usize), String> {
        let header = bytes.get(pos..pos + FRAME_HEADER).ok_or("truncated frame header")?;
        let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().unwrap());
        if len > MAX_FRAME {
            return Err(format!("frame length {len} is implausible"));
        }
        let body = bytes.get(pos + FRAME_HEADER..pos + FRAME_HEADER + len).ok_or("truncated frame")?;
        if !crate::crc_matches(body, crc) {
            return Err("CRC mismatch".into());
        }
        Ok((body, pos + FRAME_HEADER + len))
    }

    struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
            if self.0.len() < n {
                return Err("transaction ends early".into());
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(head)
        }
        fn u32(&mut self) -> std::result::Result<u32, String> {
            Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
        }
        fn u64(&mut self) -> std::result::Result<u64, String> {
            Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
        }
        fn bytes(&mut self) -> std::result::Result<&'a [u8], String> {
            let n = self.u32()? as usize;
            self.take(n)
        }
    }

    type Decoded = (Vec<StateWrite>, Vec<(u32, u64)>);

    fn decode(body: &[u8]) -> std::result::Result<Decoded, String> {
        let mut r = Reader(body);
        let n = r.u32()?;
        let mut writes = Vec::with_capacity((n as usize).min(1 << 16));
        for _ in 0..n {
            let is_put = r.take(1)?[0] != 0;
            let stage = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| "stage name is not UTF-8")?;
            let key = r.bytes()?.to_vec();
            let value = if is_put { Some(r.bytes()?.to_vec()) } else { None };
            writes.push(StateWrite { stage, key, value });
        }
        let n = r.u32()?;
        let mut acked = Vec::with_capacity((n as usize).min(1 << 16));
        for _ in 0..n {
            acked.push((r.u32()?, r.u64()?));
        }
        if !r.0.is_empty() {
            return Err("trailing bytes after transaction".into());
        }
        Ok((writes, acked))
    }

    /// Encode a transaction as one frame, header included (for tests and
    /// the fuzzer's seeds: weir no longer writes this format).
    pub fn encode(writes: &[StateWrite], acked: &[(u32, u64)]) -> Vec<u8> {
        fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
        let mut out = vec![0; FRAME_HEADER];
        out.extend_from_slice(&(writes.len() as u32).to_le_bytes());
        for w in writes {
            out.push(u8::from(w.value.is_some()));
            put_bytes(&mut out, w.stage.as_bytes());
            put_bytes(&mut out, &w.key);
            if let Some(v) = &w.value {
                put_bytes(&mut out, v);
            }
        }
        out.extend_from_slice(&(acked.len() as u32).to_le_bytes());
        for (p, o) in acked {
            out.extend_from_slice(&p.to_le_bytes());
            out.extend_from_slice(&o.to_le_bytes());
        }
        let len = (out.len() - FRAME_HEADER) as u32;
        let crc = crc32c::crc32c(&out[FRAME_HEADER..]);
        out[..4].copy_from_slice(&len.to_le_bytes());
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        out
    }
}

pub use legacy::encode as encode_legacy_transaction;

#[cfg(test)]
mod tests {
    use super::*;

    fn put(stage: &str, k: &str, v: &str) -> StateWrite {
        StateWrite { stage: stage.into(), key: k.into(), value: Some(v.into()) }
    }

    fn del(stage: &str, k: &str) -> StateWrite {
        StateWrite { stage: stage.into(), key: k.into(), value: None }
    }

    fn open(dir: &Path) -> StateStore {
        StateStore::open(dir, "g", "t", DEFAULT_CACHE_BYTES, Faults::default()).unwrap()
    }

    #[test]
    fn a_store_never_committed_to_leaves_no_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        assert!(s.stage("a").unwrap().is_empty() && s.applied().is_empty());
        s.set_floor(vec![1]);
        s.prune().unwrap();
        drop(s);
        assert!(!dir.path().join("state").exists(), "opening and pruning made files");
        let mut s = open(dir.path());
        s.commit(&[put("a", "k", "1")], &[(0, 0)]).unwrap();
        drop(s);
        let s = open(dir.path());
        assert_eq!(s.stage("a").unwrap().get(b"k".as_slice()), Some(&b"1".to_vec()), "the first commit made the files");
    }

    #[test]
    fn commits_survive_reopen_with_totals_and_readers_see_each_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        let r = s.reader();
        assert_eq!(r.get("a", b"k").unwrap(), None);
        s.commit(&[put("a", "k", "1"), put("b", "k", "x"), put("a", "j", "22")], &[(0, 0), (0, 1)]).unwrap();
        assert_eq!(r.get("a", b"k").unwrap(), Some(b"1".to_vec()));
        s.commit(&[put("a", "k", "333"), del("b", "k"), del("b", "absent")], &[(1, 0)]).unwrap();
        assert_eq!(r.get("a", b"k").unwrap(), Some(b"333".to_vec()), "a reader's snapshot is renewed after a commit");
        assert_eq!(s.totals("a"), Totals { entries: 2, bytes: 1 + 3 + 1 + 2 });
        assert_eq!(s.totals("b"), Totals::default());
        drop((s, r));
        let s = open(dir.path());
        assert_eq!(s.totals("a"), Totals { entries: 2, bytes: 7 }, "totals are stored, not recounted");
        assert!(s.stage("b").unwrap().is_empty());
        assert_eq!(s.applied().len(), 3);
        let r = s.reader();
        assert_eq!(r.entries("a", b"", 10).unwrap(), vec![(b"j".to_vec(), b"22".to_vec()), (b"k".to_vec(), b"333".to_vec())]);
        assert_eq!(r.entries("a", b"k", 10).unwrap().len(), 1);
        assert_eq!(r.entries("a", b"", 1).unwrap().len(), 1);
    }

    #[test]
    fn one_stages_keys_never_run_into_anothers() {
        // "a" + key "b…" must not be read as stage "ab".
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        s.commit(&[put("a", "bx", "1"), put("ab", "x", "2"), put("b", "", "3")], &[]).unwrap();
        let r = s.reader();
        assert_eq!(r.entries("a", b"", 10).unwrap(), vec![(b"bx".to_vec(), b"1".to_vec())]);
        assert_eq!(r.entries("ab", b"", 10).unwrap(), vec![(b"x".to_vec(), b"2".to_vec())]);
        assert_eq!(r.get("b", b"").unwrap(), Some(b"3".to_vec()));
        assert_eq!(r.get("a", b"").unwrap(), None);
    }

    #[test]
    fn applied_ids_below_the_floor_are_pruned_and_stay_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        for i in 0..10u64 {
            s.commit(&[put("a", &format!("k{}", i % 3), &i.to_string())], &[(0, i)]).unwrap();
        }
        s.prune().unwrap();
        assert_eq!(s.applied().len(), 10, "no floor known: nothing can be pruned");
        s.set_floor(vec![7]);
        s.prune().unwrap();
        let mut ids: Vec<_> = s.applied().iter().copied().collect();
        ids.sort();
        assert_eq!(ids, vec![(0, 7), (0, 8), (0, 9)]);
        s.commit(&[put("a", "k0", "last")], &[(0, 10)]).unwrap();
        drop(s);
        let s = open(dir.path());
        let a = s.stage("a").unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a[b"k0".as_slice()], b"last");
        assert_eq!(a[b"k1".as_slice()], b"7");
        assert_eq!(a[b"k2".as_slice()], b"8");
        assert_eq!(s.applied().len(), 4);
    }

    #[test]
    fn commits_prune_once_the_applied_set_has_doubled() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        let ids: Vec<(u32, u64)> = (0..PRUNE_AT_LEAST as u64 - 1).map(|o| (0, o)).collect();
        s.commit(&[], &ids).unwrap();
        s.set_floor(vec![PRUNE_AT_LEAST as u64 - 1]);
        assert_eq!(s.applied().len(), PRUNE_AT_LEAST - 1);
        s.commit(&[], &[(0, PRUNE_AT_LEAST as u64)]).unwrap();
        assert_eq!(s.applied().len(), 1, "pruned by the commit that reached the threshold");
        drop(s);
        assert_eq!(open(dir.path()).applied().len(), 1, "pruned on disk too");
    }

    #[test]
    fn the_old_log_and_snapshot_are_imported_once_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state/g/t");
        fs::create_dir_all(&state).unwrap();
        let snapshot = encode_legacy_transaction(&[put("a", "k", "1"), put("a", "gone", "x")], &[(0, 0)]);
        fs::write(state.join("state.snapshot"), snapshot).unwrap();
        let mut log = encode_legacy_transaction(&[put("a", "k", "2"), del("a", "gone")], &[(0, 1)]);
        // A torn last transaction was never acknowledged.
        log.extend_from_slice(&encode_legacy_transaction(&[put("a", "k", "3")], &[(0, 2)])[..11]);
        fs::write(state.join("state.log"), log).unwrap();
        let s = open(dir.path());
        assert_eq!(s.stage("a").unwrap(), StageMap::from([(b"k".to_vec(), b"2".to_vec())]));
        assert_eq!(s.totals("a"), Totals { entries: 1, bytes: 2 });
        assert_eq!(s.applied(), &HashSet::from([(0, 0), (0, 1)]));
        assert!(!state.join("state.log").exists() && !state.join("state.snapshot").exists());
        drop(s);
        assert_eq!(open(dir.path()).stage("a").unwrap().len(), 1);
    }

    #[test]
    fn a_damaged_old_snapshot_is_an_error_not_silent_loss() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state/g/t");
        fs::create_dir_all(&state).unwrap();
        let mut bytes = encode_legacy_transaction(&[put("a", "k", "v")], &[(0, 0)]);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(state.join("state.snapshot"), bytes).unwrap();
        let err = StateStore::open(dir.path(), "g", "t", DEFAULT_CACHE_BYTES, Faults::default()).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }
}
