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
//!
//! Committed state and timers are read from the state store
//! ([`StateReader`]), not held in memory. The engine commits a write set to
//! the store first, then calls [`PendingWrites::committed`]; both reads and
//! that call hold the stage's lock, so a read sees a write set either
//! pending or committed, never neither. A read the store fails is recorded
//! ([`StageState::failure`]) and the engine stops before acknowledging anything.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};

use weir_queue::{StateReader, StateWrite};

/// The net writes of one call: key → new value, or `None` for a delete.
pub type WriteSet = HashMap<Vec<u8>, Option<Vec<u8>>>;

/// The clock a timer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimeDomain {
    /// Fires once the stage's watermark reaches it.
    Event,
    /// Fires once the host's clock reaches it.
    Processing,
}

/// A timer of a stage: it fires for `key` at `at_ms` on the `domain`
/// clock. Ordered by domain, then time: the order timers fire in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timer {
    /// Its clock.
    pub domain: TimeDomain,
    /// When it fires, ms since the Unix epoch.
    pub at_ms: u64,
    /// The stage's key.
    pub key: Vec<u8>,
}

impl Timer {
    /// The timer as a state key: its domain (a byte), its time (8 bytes,
    /// big-endian), its key; so stored timers sort as they fire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.key.len());
        out.push(match self.domain {
            TimeDomain::Event => 0,
            TimeDomain::Processing => 1,
        });
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        out.extend_from_slice(&self.key);
        out
    }

    /// A timer from [`Timer::encode`]'s bytes, or `None` if they are not one.
    pub fn decode(bytes: &[u8]) -> Option<Timer> {
        let domain = match bytes.first()? {
            0 => TimeDomain::Event,
            1 => TimeDomain::Processing,
            _ => return None,
        };
        let at_ms = u64::from_be_bytes(bytes.get(1..9)?.try_into().ok()?);
        Some(Timer { domain, at_ms, key: bytes[9..].to_vec() })
    }

    /// Bytes it counts for in a call's writes (`max_state_write_bytes`).
    pub(crate) fn write_bytes(&self) -> usize {
        9 + self.key.len()
    }
}

/// The timer writes of one call: set (`true`) or deleted (`false`).
pub type TimerWrites = BTreeMap<Timer, bool>;

/// Where a stage's timers are kept in the state store: beside its state,
/// under a name no stage can have (`@` is not allowed in names).
pub fn timers_of(stage: &str) -> String {
    format!("{stage}@timers")
}

/// The shared state of one stage. See the module docs.
#[derive(Debug)]
pub struct StageState {
    name: String,
    timers_name: String,
    store: StateReader,
    overlay: Mutex<Overlay>,
    gate: Gate,
    used: AtomicBool,
    /// The first read of the store that failed.
    failure: Mutex<Option<String>>,
}

#[derive(Debug, Default)]
struct Overlay {
    /// Key and value bytes of the committed state.
    committed_bytes: usize,
    /// Committed timers.
    committed_timers: usize,
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
    timers: TimerWrites,
    /// How much it grows (or shrinks) the state it was written over.
    grown: isize,
    /// How many timers it adds (or removes).
    timers_grown: isize,
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

    /// The timers set (`true`) and deleted (`false`).
    pub fn timers(&self) -> &TimerWrites {
        &self.timers
    }

    /// Whether it writes nothing at all (a call that only read).
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.timers.is_empty()
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

    /// Its writes as the state store takes them, for `stage`: state under
    /// the stage's name, timers under [`timers_of`] it.
    pub fn store_writes(&self, stage: &str) -> Vec<StateWrite> {
        let timers = timers_of(stage);
        let state = self.writes.iter().map(|(k, v)| StateWrite { stage: stage.to_owned(), key: k.clone(), value: v.clone() });
        let timers = self.timers.iter().map(|(t, set)| StateWrite { stage: timers.clone(), key: t.encode(), value: set.then(Vec::new) });
        state.chain(timers).collect()
    }

    /// Drop it from the pending writes once the engine has committed
    /// [`PendingWrites::store_writes`] to the store: reads find it there now.
    ///
    /// # Panics
    /// If it was aborted.
    pub fn committed(&self) {
        assert!(!self.is_aborted(), "an aborted write set cannot be committed");
        if let Some(stage) = self.stage.upgrade() {
            let mut o = stage.overlay.lock().unwrap();
            o.pending.retain(|w| w.seq != self.seq);
            o.committed_bytes = (o.committed_bytes as isize + self.grown).max(0) as usize;
            o.committed_timers = (o.committed_timers as isize + self.timers_grown).max(0) as usize;
        }
    }
}

impl StageState {
    /// The state of stage `name`, committed in `store`.
    pub fn new(name: &str, store: StateReader) -> Arc<Self> {
        let timers_name = timers_of(name);
        let overlay = Overlay {
            committed_bytes: store.totals(name).bytes as usize,
            committed_timers: store.totals(&timers_name).entries as usize,
            ..Overlay::default()
        };
        Arc::new(StageState {
            name: name.to_owned(),
            timers_name,
            store,
            overlay: Mutex::new(overlay),
            gate: Gate::default(),
            used: AtomicBool::new(false),
            failure: Mutex::new(None),
        })
    }

    /// The stage's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The first read of the store that failed, if any: what the calls
    /// since then read cannot be trusted.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap().clone()
    }

    /// `read`'s result, or `T::default()` with the failure recorded.
    fn recorded<T: Default>(&self, read: weir_queue::Result<T>) -> T {
        read.unwrap_or_else(|e| {
            let mut failure = self.failure.lock().unwrap();
            if failure.is_none() {
                tracing::error!(stage = %self.name, error = %e, "reading stage state failed");
                *failure = Some(format!("stage {}: reading its state failed: {e}", self.name));
            }
            T::default()
        })
    }

    /// The committed value of `key`.
    pub fn committed_value(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.recorded(self.store.get(&self.name, key))
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
        self.committed_value(key)
    }

    /// The length of `key`'s value, read as [`StageState::read`] does, and
    /// the bytes the stage holds; under one lock, for each state write.
    pub(crate) fn value_len_and_bytes(&self, key: &[u8]) -> (Option<usize>, usize) {
        let o = self.overlay.lock().unwrap();
        let len = match o.pending.iter().rev().find_map(|w| w.writes.get(key)) {
            Some(v) => v.as_ref().map(Vec::len),
            None => self.committed_value(key).as_ref().map(Vec::len),
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

    /// Whether `timer` is set, read through the pending writes.
    pub(crate) fn has_timer(&self, timer: &Timer) -> bool {
        let o = self.overlay.lock().unwrap();
        match o.pending.iter().rev().find_map(|w| w.timers.get(timer)) {
            Some(set) => *set,
            None => self.recorded(self.store.get(&self.timers_name, &timer.encode())).is_some(),
        }
    }

    /// Timers the stage holds, committed and pending.
    pub fn timer_count(&self) -> usize {
        let o = self.overlay.lock().unwrap();
        let pending: isize = o.pending.iter().map(|w| w.timers_grown).sum();
        (o.committed_timers as isize + pending).max(0) as usize
    }

    /// The earliest (at most `max`) timers of `domain` due at `until_ms`
    /// (their time ≤ it), read through the pending writes: a timer whose
    /// firing is still pending (deleted by an uncommitted call) is not due
    /// again unless that call is aborted.
    pub fn due_timers(&self, domain: TimeDomain, until_ms: u64, max: usize) -> Vec<Timer> {
        let o = self.overlay.lock().unwrap();
        let lowest = Timer { domain, at_ms: 0, key: Vec::new() };
        let due = |t: &&Timer| t.domain == domain && t.at_ms <= until_ms;
        let pending: Vec<(&Timer, bool)> =
            o.pending.iter().flat_map(|w| w.timers.range(&lowest..).take_while(|(t, _)| due(t)).map(|(t, set)| (t, *set))).collect();
        // Enough committed ones to make up for those deleted meanwhile.
        let deleted = pending.iter().filter(|(_, set)| !set).count();
        let committed = self.recorded(self.store.entries(&self.timers_name, &lowest.encode(), max + deleted));
        let committed: Vec<Timer> = committed.iter().filter_map(|(k, _)| Timer::decode(k)).take_while(|t| due(&t)).collect();
        let mut view: BTreeMap<&Timer, bool> = committed.iter().map(|t| (t, true)).collect();
        view.extend(pending);
        view.into_iter().filter(|(_, set)| *set).map(|(t, _)| t.clone()).take(max).collect()
    }

    /// A write set that only deletes `timer`: a timer that failed for
    /// good (dead-lettered) is gone once the dead letter is durable, even
    /// though its call's own writes were discarded.
    pub fn delete_timer(self: &Arc<Self>, timer: Timer) -> Arc<PendingWrites> {
        let generation = self.enter();
        let grown = -isize::from(self.has_timer(&timer));
        let w = self.register(WriteSet::new(), TimerWrites::from([(timer, false)]), generation, 0, grown);
        self.leave();
        w
    }

    /// Register the writes of a call that read generation `generation`;
    /// `grown` is how much they grow the state they were written over,
    /// `timers_grown` how many timers they add.
    pub(crate) fn register(
        self: &Arc<Self>,
        writes: WriteSet,
        timers: TimerWrites,
        generation: u64,
        grown: isize,
        timers_grown: isize,
    ) -> Arc<PendingWrites> {
        let mut o = self.overlay.lock().unwrap();
        let seq = o.next_seq;
        o.next_seq += 1;
        let stale = o.generation != generation;
        let w = Arc::new(PendingWrites {
            seq,
            writes,
            timers,
            grown,
            timers_grown,
            aborted: AtomicBool::new(stale),
            stage: Arc::downgrade(self),
        });
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

    /// A state store holding `writes` of stage "s", committed, and the dir it is in.
    fn store(writes: &[StateWrite]) -> (tempfile::TempDir, weir_queue::StateStore) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = weir_queue::Queue::open(dir.path()).unwrap().state_store("g", "t").unwrap();
        store.commit(writes, &[]).unwrap();
        (dir, store)
    }

    /// Commit `w` as the engine does: to the store, then to the stage.
    fn commit(store: &mut weir_queue::StateStore, w: &PendingWrites) {
        store.commit(&w.store_writes("s"), &[]).unwrap();
        w.committed();
    }

    #[test]
    fn reads_see_pending_writes_and_an_abort_takes_the_later_ones_with_it() {
        let (_dir, mut store) = store(&[StateWrite { stage: "s".into(), key: b"k".to_vec(), value: Some(b"0".to_vec()) }]);
        let s = StageState::new("s", store.reader());
        assert_eq!(s.bytes(), 2);
        let g = s.enter();
        let a = s.register(ws(&[("k", Some("1"))]), TimerWrites::new(), g, 0, 0);
        s.leave();
        let g = s.enter();
        assert_eq!(s.read(b"k"), Some(b"1".to_vec()));
        let b = s.register(ws(&[("k", Some("2")), ("j", None)]), TimerWrites::new(), g, 0, 0);
        s.leave();
        assert_eq!(s.read(b"k"), Some(b"2".to_vec()));
        // A call that read before the abort cannot commit.
        let g = s.enter();
        a.abort();
        assert!(a.is_aborted() && b.is_aborted());
        let c = s.register(ws(&[("k", Some("3"))]), TimerWrites::new(), g, 0, 0);
        s.leave();
        assert!(c.is_aborted());
        assert_eq!(s.read(b"k"), Some(b"0".to_vec()), "back to the committed state");
        let g = s.enter();
        let d = s.register(ws(&[("k", None)]), TimerWrites::new(), g, -2, 0);
        s.leave();
        assert_eq!(s.bytes(), 0, "the pending delete shrinks the state");
        assert_eq!(s.read(b"k"), None);
        commit(&mut store, &d);
        assert_eq!(s.committed_value(b"k"), None);
        assert_eq!(s.read(b"k"), None);
        assert_eq!(s.bytes(), 0);
    }

    fn timer(domain: TimeDomain, at_ms: u64, key: &str) -> Timer {
        Timer { domain, at_ms, key: key.as_bytes().to_vec() }
    }

    #[test]
    fn due_timers_read_through_pending_sets_and_deletes_in_firing_order() {
        use TimeDomain::{Event, Processing};
        let committed = [timer(Event, 10, "a"), timer(Event, 20, "b"), timer(Event, 30, "c"), timer(Processing, 5, "p")];
        let (_dir, mut store) = store(&committed.map(|t| StateWrite { stage: timers_of("s"), key: t.encode(), value: Some(Vec::new()) }));
        let s = StageState::new("s", store.reader());
        assert_eq!(s.timer_count(), 4);
        assert_eq!(s.due_timers(Event, 20, 10), vec![timer(Event, 10, "a"), timer(Event, 20, "b")]);
        assert_eq!(s.due_timers(Event, 20, 1), vec![timer(Event, 10, "a")]);
        assert_eq!(s.due_timers(Processing, u64::MAX, 10), vec![timer(Processing, 5, "p")]);
        // A call fires "a" (deletes it) and sets "d" at 15.
        let g = s.enter();
        let fired =
            s.register(WriteSet::new(), TimerWrites::from([(timer(Event, 10, "a"), false), (timer(Event, 15, "d"), true)]), g, 0, 0);
        s.leave();
        assert!(!s.has_timer(&timer(Event, 10, "a")) && s.has_timer(&timer(Event, 15, "d")));
        assert_eq!(s.due_timers(Event, 20, 2), vec![timer(Event, 15, "d"), timer(Event, 20, "b")], "a pending delete is made up for");
        fired.abort();
        assert_eq!(s.due_timers(Event, 20, 10), vec![timer(Event, 10, "a"), timer(Event, 20, "b")], "aborted: a fires again");
        let g = s.enter();
        let fired = s.register(WriteSet::new(), TimerWrites::from([(timer(Event, 10, "a"), false)]), g, 0, -1);
        s.leave();
        assert_eq!(s.timer_count(), 3);
        commit(&mut store, &fired);
        assert_eq!(s.due_timers(Event, u64::MAX, 10), vec![timer(Event, 20, "b"), timer(Event, 30, "c")]);
        assert_eq!(s.timer_count(), 3);
        for t in [timer(Event, 0, ""), timer(Processing, u64::MAX, "k\0y")] {
            assert_eq!(Timer::decode(&t.encode()), Some(t));
        }
        assert_eq!(Timer::decode(&[2; 9]), None);
        assert_eq!(Timer::decode(&[0; 8]), None);
    }
}
