//! A stage's key-value state as its instances see it: the committed state plus
//! the writes of calls whose messages are still on their way to the sink.
//!
//! Every call that touches state runs alone (it holds the stage's *gate* from
//! its first state access, or from the start once the stage is known to use
//! state, until it returns), so a read-modify-write is never lost to another
//! instance. A successful call's writes become a [`PendingWrites`] that later
//! calls read through. The engine then either commits it (durably, with the
//! acknowledgement of its messages) or aborts it: an abort also aborts every
//! later pending write set of the stage, because those calls may have read
//! it, and a call still running when an abort happens is aborted when it
//! finishes. So committed state only ever reflects calls that read committed
//! state: exactly-once, at the price of redoing the later work on an abort.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};

/// A stage's committed key-value state.
pub type StateMap = HashMap<Vec<u8>, Vec<u8>>;

/// The net writes of one call: key → new value, or `None` for a delete.
pub type WriteSet = HashMap<Vec<u8>, Option<Vec<u8>>>;

/// The shared state of one stage. See the module docs.
#[derive(Debug)]
pub struct StageState {
    name: String,
    overlay: Mutex<Overlay>,
    gate: Gate,
    used: AtomicBool,
}

#[derive(Debug, Default)]
struct Overlay {
    committed: StateMap,
    /// Key and value bytes of `committed`.
    committed_bytes: usize,
    /// Uncommitted write sets, oldest first.
    pending: VecDeque<Arc<PendingWrites>>,
    next_seq: u64,
    /// Bumped by every abort; a call that started before an abort cannot commit.
    generation: u64,
}

/// The writes of one successful call, waiting to be committed or aborted.
#[derive(Debug)]
pub struct PendingWrites {
    seq: u64,
    writes: WriteSet,
    /// How much it grows (or shrinks) the state it was written over.
    grown: isize,
    aborted: AtomicBool,
    stage: Weak<StageState>,
}

impl PendingWrites {
    /// Its place in the stage's order of calls: commit in ascending order.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The writes, net per key.
    pub fn writes(&self) -> &WriteSet {
        &self.writes
    }

    /// Whether it was aborted (directly or because an earlier one was).
    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    /// Abort it and every later pending write set of its stage.
    pub fn abort(&self) {
        if let Some(stage) = self.stage.upgrade() {
            let mut o = stage.overlay.lock().unwrap();
            o.generation += 1;
            while o.pending.back().is_some_and(|w| w.seq >= self.seq) {
                o.pending.pop_back().unwrap().aborted.store(true, Ordering::Release);
            }
        }
        self.aborted.store(true, Ordering::Release);
    }

    /// Fold it into the committed state, once it is durable.
    ///
    /// # Panics
    /// If it was aborted.
    pub fn committed(&self) {
        assert!(!self.is_aborted(), "an aborted write set cannot be committed");
        if let Some(stage) = self.stage.upgrade() {
            let mut o = stage.overlay.lock().unwrap();
            o.pending.retain(|w| w.seq != self.seq);
            for (k, v) in &self.writes {
                let old = match v {
                    Some(v) => o.committed.insert(k.clone(), v.clone()),
                    None => o.committed.remove(k),
                };
                let size = |v: Option<usize>| v.map_or(0, |v| k.len() + v);
                o.committed_bytes = (o.committed_bytes + size(v.as_ref().map(Vec::len))).saturating_sub(size(old.as_ref().map(Vec::len)));
            }
        }
    }
}

impl StageState {
    /// The state of stage `name`, starting from `committed`.
    pub fn new(name: &str, committed: StateMap) -> Arc<Self> {
        Arc::new(StageState {
            name: name.to_owned(),
            overlay: Mutex::new(Overlay {
                committed_bytes: committed.iter().map(|(k, v)| k.len() + v.len()).sum(),
                committed,
                ..Overlay::default()
            }),
            gate: Gate::default(),
            used: AtomicBool::new(false),
        })
    }

    /// The stage's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The committed value of `key`.
    pub fn committed_value(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.overlay.lock().unwrap().committed.get(key).cloned()
    }

    /// Whether any call has touched the state.
    pub(crate) fn is_used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }

    /// Take the gate; returns the generation the call reads.
    pub(crate) fn enter(&self) -> u64 {
        self.used.store(true, Ordering::Relaxed);
        self.gate.acquire();
        self.overlay.lock().unwrap().generation
    }

    pub(crate) fn leave(&self) {
        self.gate.release();
    }

    /// Read `key` through the pending writes (newest first) to the committed state.
    pub(crate) fn read(&self, key: &[u8]) -> Option<Vec<u8>> {
        let o = self.overlay.lock().unwrap();
        for w in o.pending.iter().rev() {
            if let Some(v) = w.writes.get(key) {
                return v.clone();
            }
        }
        o.committed.get(key).cloned()
    }

    /// The length of `key`'s value, read as [`StageState::read`] does, and
    /// the bytes the stage holds; under one lock, for each state write.
    pub(crate) fn value_len_and_bytes(&self, key: &[u8]) -> (Option<usize>, usize) {
        let o = self.overlay.lock().unwrap();
        let len = match o.pending.iter().rev().find_map(|w| w.writes.get(key)) {
            Some(v) => v.as_ref().map(Vec::len),
            None => o.committed.get(key).map(Vec::len),
        };
        (len, Self::held(&o))
    }

    /// Key and value bytes the stage holds, committed and pending.
    pub fn bytes(&self) -> usize {
        Self::held(&self.overlay.lock().unwrap())
    }

    fn held(o: &Overlay) -> usize {
        let pending: isize = o.pending.iter().map(|w| w.grown).sum();
        (o.committed_bytes as isize + pending).max(0) as usize
    }

    /// Register the writes of a call that read generation `generation`;
    /// `grown` is how much they grow the state they were written over.
    pub(crate) fn register(self: &Arc<Self>, writes: WriteSet, generation: u64, grown: isize) -> Arc<PendingWrites> {
        let mut o = self.overlay.lock().unwrap();
        let seq = o.next_seq;
        o.next_seq += 1;
        let stale = o.generation != generation;
        let w = Arc::new(PendingWrites { seq, writes, grown, aborted: AtomicBool::new(stale), stage: Arc::downgrade(self) });
        if !stale {
            o.pending.push_back(w.clone());
        }
        w
    }
}

/// A binary semaphore that can be held across host calls.
#[derive(Debug, Default)]
struct Gate {
    held: Mutex<bool>,
    freed: Condvar,
}

impl Gate {
    fn acquire(&self) {
        let mut held = self.held.lock().unwrap();
        while *held {
            held = self.freed.wait(held).unwrap();
        }
        *held = true;
    }

    fn release(&self) {
        *self.held.lock().unwrap() = false;
        self.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(pairs: &[(&str, Option<&str>)]) -> WriteSet {
        pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec()))).collect()
    }

    #[test]
    fn reads_see_pending_writes_and_an_abort_takes_the_later_ones_with_it() {
        let s = StageState::new("s", StateMap::from([(b"k".to_vec(), b"0".to_vec())]));
        assert_eq!(s.bytes(), 2);
        let g = s.enter();
        let a = s.register(ws(&[("k", Some("1"))]), g, 0);
        s.leave();
        let g = s.enter();
        assert_eq!(s.read(b"k"), Some(b"1".to_vec()));
        let b = s.register(ws(&[("k", Some("2")), ("j", None)]), g, 0);
        s.leave();
        assert_eq!(s.read(b"k"), Some(b"2".to_vec()));
        // A call that read before the abort cannot commit.
        let g = s.enter();
        a.abort();
        assert!(a.is_aborted() && b.is_aborted());
        let c = s.register(ws(&[("k", Some("3"))]), g, 0);
        s.leave();
        assert!(c.is_aborted());
        assert_eq!(s.read(b"k"), Some(b"0".to_vec()), "back to the committed state");
        let g = s.enter();
        let d = s.register(ws(&[("k", None)]), g, -2);
        s.leave();
        assert_eq!(s.bytes(), 0, "the pending delete shrinks the state");
        d.committed();
        assert_eq!(s.committed_value(b"k"), None);
        assert_eq!(s.bytes(), 0);
    }
}
