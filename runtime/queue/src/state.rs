//! Durable per-stage key-value state, committed atomically with acknowledgements.
//!
//! A [`StateStore`] belongs to one consumer group reading one topic (a
//! pipeline's source). Each [`StateStore::commit`] appends one transaction to
//! a CRC-framed log and fsyncs it: the state writes of some messages *and* the
//! ids of those messages. The ids form the *applied set*: after a crash the
//! group's committed offset may lag behind acknowledgements that were never
//! written to the group file, and a message in the applied set is one whose
//! state writes are already durable, so it must not be processed again. That
//! is what makes state exactly-once while delivery is at-least-once.
//!
//! The log is folded into a snapshot (written atomically) once it grows past
//! [`COMPACT_AT`]; the applied set then drops every id below the floor the
//! source last gave ([`StateStore::set_floor`]: a group's committed offsets),
//! which is never delivered again. Replaying the log over
//! a snapshot that already contains it is harmless: puts and deletes are
//! absolute, and the applied set is a set.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::faults::{Faults, SyncSite};
use crate::{Error, Result, create_dir_durable, sync_dir, validate_name, write_atomic};

/// Log size that triggers folding the log into the snapshot.
pub const COMPACT_AT: u64 = 64 << 20;

const LOG_FILE: &str = "state.log";
const SNAPSHOT_FILE: &str = "state.snapshot";
/// Frame header: body length (u32 LE) then CRC32C of the body (u32 LE).
const FRAME_HEADER: usize = 8;
/// Largest transaction body accepted when reading (guards against garbage lengths).
const MAX_FRAME: usize = 1 << 30;

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

/// A stage's key-value state.
pub type StageMap = HashMap<Vec<u8>, Vec<u8>>;

/// Durable state of one consumer group on one topic. See the module docs.
pub struct StateStore {
    dir: PathBuf,
    /// Opened (and the directory made) by the first commit, so a group whose
    /// stages keep no state leaves no files.
    log: Option<File>,
    log_len: u64,
    stages: HashMap<String, StageMap>,
    applied: HashSet<(u32, u64)>,
    /// Per partition, the offset below which the source never delivers
    /// again, as the caller last said ([`StateStore::set_floor`]).
    floor: Option<Vec<u64>>,
    faults: Faults,
    /// Set when an fsync failed: no commit is tried again.
    failed: Option<String>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore").field("dir", &self.dir).field("applied", &self.applied.len()).finish_non_exhaustive()
    }
}

fn open_log(dir: &Path) -> Result<File> {
    OpenOptions::new().create(true).read(true).append(true).open(dir.join(LOG_FILE)).map_err(|e| Error::io(dir, e))
}

impl StateStore {
    /// Open the state of `group` on `topic` under the queue directory
    /// `root`, replaying its snapshot and log (none yet: empty state). A torn
    /// last transaction (a crash mid-write) is cut off; it was never acknowledged.
    pub(crate) fn open(root: &Path, group: &str, topic: &str, faults: Faults) -> Result<Self> {
        validate_name("consumer group", group)?;
        let dir = root.join("state").join(group).join(topic);
        let log = match dir.is_dir() {
            true => Some(open_log(&dir)?),
            false => None,
        };
        let mut store =
            StateStore { log, dir, log_len: 0, stages: HashMap::new(), applied: HashSet::new(), floor: None, faults, failed: None };
        let snapshot = store.dir.join(SNAPSHOT_FILE);
        match fs::read(&snapshot) {
            Ok(bytes) => {
                // Written atomically, so any damage is corruption, not a torn write.
                let (body, _) = frame(&bytes, 0).map_err(|reason| Error::Corrupt { path: snapshot.clone(), position: 0, reason })?;
                store.apply(body).map_err(|reason| Error::Corrupt { path: snapshot.clone(), position: 0, reason })?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&snapshot, e)),
        }
        store.replay_log()?;
        Ok(store)
    }

    fn replay_log(&mut self) -> Result<()> {
        let path = self.dir.join(LOG_FILE);
        let Some(log) = &mut self.log else { return Ok(()) };
        let mut bytes = Vec::new();
        log.read_to_end(&mut bytes).map_err(|e| Error::io(&path, e))?;
        let mut pos = 0;
        while pos < bytes.len() {
            let Ok((body, next)) = frame(&bytes, pos) else {
                break;
            };
            let Ok(()) = self.apply(body) else { break };
            pos = next;
        }
        if pos < bytes.len() {
            tracing::warn!(path = %path.display(), at = pos, dropped = bytes.len() - pos, "state log: cutting off a torn transaction");
            let log = self.log.as_mut().expect("read above");
            let faults = &self.faults;
            log.set_len(pos as u64)
                .and_then(|()| faults.sync_file(SyncSite::StateLog, &path, log, false))
                .map_err(|e| Error::io(&path, e))?;
        }
        self.log_len = pos as u64;
        Ok(())
    }

    fn apply(&mut self, body: &[u8]) -> Result<(), String> {
        let (writes, applied) = decode(body)?;
        for w in writes {
            let map = self.stages.entry(w.stage).or_default();
            match w.value {
                Some(v) => map.insert(w.key, v),
                None => map.remove(&w.key),
            };
        }
        self.applied.extend(applied);
        Ok(())
    }

    /// The committed state of `stage` (empty if it has none).
    pub fn stage(&self, stage: &str) -> StageMap {
        self.stages.get(stage).cloned().unwrap_or_default()
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
    /// An I/O error; nothing of the transaction then counts as applied.
    pub fn commit(&mut self, writes: &[StateWrite], acked: &[(u32, u64)]) -> Result<()> {
        if let Some(reason) = &self.failed {
            return Err(Error::Stopped { path: self.dir.clone(), reason: reason.clone() });
        }
        let committed = self.try_commit(writes, acked);
        if let Err(e) = &committed {
            // Fail-stop: what the log holds on disk is no longer known.
            self.failed = Some(e.to_string());
        }
        committed
    }

    fn try_commit(&mut self, writes: &[StateWrite], acked: &[(u32, u64)]) -> Result<()> {
        let frame = encode(writes.iter(), acked.iter().copied());
        let path = self.dir.join(LOG_FILE);
        if self.log.is_none() {
            create_dir_durable(&self.dir, &self.faults)?;
            self.log = Some(open_log(&self.dir)?);
            sync_dir(&self.dir, &self.faults)?;
        }
        let log = self.log.as_mut().expect("opened above");
        let faults = &self.faults;
        let written = log.write_all(&frame).and_then(|()| faults.sync_file(SyncSite::StateLog, &path, log, true));
        if let Err(e) = written {
            // Cut off whatever part reached the file, so the log stays a
            // sequence of whole transactions.
            let _ = log.set_len(self.log_len);
            return Err(Error::io(&path, e));
        }
        self.log_len += frame.len() as u64;
        self.apply(&frame[FRAME_HEADER..]).expect("a frame we encoded decodes");
        if self.log_len >= COMPACT_AT {
            self.compact()?;
        }
        Ok(())
    }

    /// Say below which offset, per partition, the source will never deliver
    /// a message again (a consumer group's committed offsets; a JetStream
    /// consumer's acknowledgement floor + 1). Compaction drops the applied
    /// ids below it; until one is given, it drops none.
    pub fn set_floor(&mut self, floor: Vec<u64>) {
        self.floor = Some(floor);
    }

    /// Fold the log into a new snapshot and empty the log, dropping applied
    /// ids that the source's floor has passed.
    ///
    /// # Errors
    /// I/O errors; the store stays valid (the old snapshot and log remain).
    pub fn compact(&mut self) -> Result<()> {
        if let Some(reason) = &self.failed {
            return Err(Error::Stopped { path: self.dir.clone(), reason: reason.clone() });
        }
        let compacted = self.try_compact();
        if let Err(e) = &compacted {
            self.failed = Some(e.to_string());
        }
        compacted
    }

    fn try_compact(&mut self) -> Result<()> {
        if self.log.is_none() {
            return Ok(()); // nothing was ever committed
        }
        if let Some(floor) = &self.floor {
            self.applied.retain(|&(p, o)| floor.get(p as usize).is_none_or(|&c| o >= c));
        }
        let writes = self
            .stages
            .iter()
            .flat_map(|(stage, map)| map.iter().map(|(k, v)| StateWrite { stage: stage.clone(), key: k.clone(), value: Some(v.clone()) }));
        let snapshot = encode(writes.collect::<Vec<_>>().iter(), self.applied.iter().copied());
        write_atomic(&self.dir.join(SNAPSHOT_FILE), &snapshot, SyncSite::StateSnapshot, &self.faults)?;
        let path = self.dir.join(LOG_FILE);
        let log = self.log.as_mut().expect("checked above");
        let faults = &self.faults;
        log.set_len(0).and_then(|()| faults.sync_file(SyncSite::StateLog, &path, log, false)).map_err(|e| Error::io(&path, e))?;
        sync_dir(&self.dir, &self.faults)?;
        self.log_len = 0;
        Ok(())
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Encode a transaction as one frame (header included).
fn encode<'a>(writes: impl ExactSizeIterator<Item = &'a StateWrite>, acked: impl ExactSizeIterator<Item = (u32, u64)>) -> Vec<u8> {
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

/// The body of the frame at `pos`, and where the next frame starts.
fn frame(bytes: &[u8], pos: usize) -> Result<(&[u8], usize), String> {
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
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("transaction ends early".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

type Decoded = (Vec<StateWrite>, Vec<(u32, u64)>);

fn decode(body: &[u8]) -> Result<Decoded, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn put(stage: &str, k: &str, v: &str) -> StateWrite {
        StateWrite { stage: stage.into(), key: k.into(), value: Some(v.into()) }
    }

    #[test]
    fn a_store_never_committed_to_leaves_no_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateStore::open(dir.path(), "g", "t", Faults::default()).unwrap();
        assert!(s.stage("a").is_empty() && s.applied().is_empty());
        s.compact().unwrap();
        drop(s);
        assert!(!dir.path().join("state").exists(), "opening and compacting made files");
        let mut s = StateStore::open(dir.path(), "g", "t", Faults::default()).unwrap();
        s.commit(&[put("a", "k", "1")], &[(0, 0)]).unwrap();
        drop(s);
        let s = StateStore::open(dir.path(), "g", "t", Faults::default()).unwrap();
        assert_eq!(s.stage("a").get(b"k".as_slice()), Some(&b"1".to_vec()), "the first commit made the files");
    }

    #[test]
    fn commits_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateStore::open(dir.path(), "g", "t", Faults::default()).unwrap();
        s.commit(&[put("a", "k", "1"), put("b", "k", "x")], &[(0, 0), (0, 1)]).unwrap();
        s.commit(&[put("a", "k", "2"), StateWrite { stage: "b".into(), key: "k".into(), value: None }], &[(1, 0)]).unwrap();
        drop(s);
        // A crash mid-append leaves half a frame.
        let log = dir.path().join("state/g/t").join(LOG_FILE);
        let good = fs::metadata(&log).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(&encode([put("a", "k", "3")].iter(), [(1, 1)].into_iter())[..11]).unwrap();
        drop(f);
        let s = StateStore::open(dir.path(), "g", "t", Faults::default()).unwrap();
        assert_eq!(s.stage("a").get(b"k".as_slice()), Some(&b"2".to_vec()));
        assert!(s.stage("b").is_empty());
        assert_eq!(s.applied().len(), 3);
        assert!(!s.applied().contains(&(1, 1)), "the torn transaction was not applied");
        assert_eq!(fs::metadata(&log).unwrap().len(), good, "the torn tail was cut off");
    }

    #[test]
    fn compaction_keeps_state_and_drops_ids_below_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateStore::open(dir.path(), "g", "t", Faults::default()).unwrap();
        for i in 0..10u64 {
            s.commit(&[put("a", &format!("k{}", i % 3), &i.to_string())], &[(0, i)]).unwrap();
        }
        s.set_floor(vec![7]);
        s.compact().unwrap();
        let mut ids: Vec<_> = s.applied().iter().copied().collect();
        ids.sort();
        assert_eq!(ids, vec![(0, 7), (0, 8), (0, 9)]);
        s.commit(&[put("a", "k0", "last")], &[(0, 10)]).unwrap();
        drop(s);
        let s = StateStore::open(dir.path(), "g", "t", Faults::default()).unwrap();
        let a = s.stage("a");
        assert_eq!(a.len(), 3);
        assert_eq!(a[b"k0".as_slice()], b"last");
        assert_eq!(a[b"k1".as_slice()], b"7");
        assert_eq!(a[b"k2".as_slice()], b"8");
        assert_eq!(s.applied().len(), 4);
    }

    #[test]
    fn without_a_floor_compaction_drops_no_ids() {
        // The floor is the source's to give: a consumer group's committed
        // offsets, a JetStream consumer's acknowledgement floor.
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateStore::open(dir.path(), "workers", "STREAM", Faults::default()).unwrap();
        for i in 1..=10u64 {
            s.commit(&[put("a", "k", &i.to_string())], &[(0, i)]).unwrap();
        }
        s.compact().unwrap();
        assert_eq!(s.applied().len(), 10, "no floor known: nothing can be dropped");
        s.set_floor(vec![9]);
        s.compact().unwrap();
        let mut ids: Vec<_> = s.applied().iter().copied().collect();
        ids.sort();
        assert_eq!(ids, vec![(0, 9), (0, 10)]);
        drop(s);
        assert_eq!(
            StateStore::open(dir.path(), "workers", "STREAM", Faults::default()).unwrap().applied().len(),
            2,
            "the snapshot holds the pruned set"
        );
    }

    #[test]
    fn a_damaged_snapshot_is_an_error_not_silent_loss() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StateStore::open(dir.path(), "g", "t", Faults::default()).unwrap();
        s.commit(&[put("a", "k", "v")], &[(0, 0)]).unwrap();
        s.compact().unwrap();
        drop(s);
        let snap = dir.path().join("state/g/t").join(SNAPSHOT_FILE);
        let mut bytes = fs::read(&snap).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&snap, bytes).unwrap();
        let err = StateStore::open(dir.path(), "g", "t", Faults::default()).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }
}
