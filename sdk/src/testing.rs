//! Test a stage natively with `cargo test`, without building WebAssembly.
//!
//! [`Harness`] runs a [`Stage`] the way the host does — `init` with a config,
//! then batches — and records what it logged, the counters it added and the
//! state it wrote. State follows the host's rules: writes made in `init` are
//! discarded, and so are a call's writes when it asks to retry any message
//! (the host then replays the batch one message at a time).
//!
//! ```
//! use weir_sdk::{testing::Harness, Config, Failure, Message, Output, Stage};
//!
//! struct Echo;
//! impl Stage for Echo {
//!     fn init(_: &Config) -> Result<Self, String> { Ok(Echo) }
//!     fn handle(&mut self, msg: Message) -> Result<Vec<Output>, Failure> {
//!         weir_sdk::log(weir_sdk::Level::Info, "echo");
//!         Ok(vec![Output::forward(msg)])
//!     }
//! }
//!
//! let mut h = Harness::<Echo>::new(&[]).unwrap();
//! assert_eq!(h.handle(Message::new("x")).unwrap()[0].payload, b"x");
//! assert_eq!(h.logs(), [(weir_sdk::Level::Info, "echo".to_string())]);
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use crate::{Config, Failure, Level, Message, Output, Stage, TimeDomain, Timer};

/// A timer as the harness keeps it: ordered by domain, time, key.
type TimerKey = (u8, u64, Vec<u8>);

fn key_of(domain: TimeDomain, key: &[u8], at_ms: u64) -> TimerKey {
    (domain as u8, at_ms, key.to_vec())
}

#[derive(Default, Clone)]
struct Recorded {
    logs: Vec<(Level, String)>,
    counters: BTreeMap<String, u64>,
    state: BTreeMap<Vec<u8>, Vec<u8>>,
    timers: BTreeSet<TimerKey>,
    watermark: Option<u64>,
    clock: Option<u64>,
}

thread_local! {
    static RECORDED: RefCell<Recorded> = RefCell::new(Recorded::default());
}

/// Runs a stage natively and records its calls to the host.
pub struct Harness<S: Stage> {
    stage: S,
}

impl<S: Stage> Harness<S> {
    /// Initialise the stage with `config` entries, clearing anything recorded
    /// on this thread before.
    ///
    /// # Errors
    /// The stage's own `init` error.
    pub fn new(config: &[(&str, &str)]) -> Result<Self, String> {
        RECORDED.with(|r| *r.borrow_mut() = Recorded::default());
        let config: Vec<(String, String)> = config.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        let stage = S::init(&Config::from(config))?;
        RECORDED.with(|r| {
            let mut r = r.borrow_mut();
            r.state.clear();
            r.timers.clear();
        });
        Ok(Harness { stage })
    }

    /// Handle one message.
    ///
    /// # Errors
    /// The stage's [`Failure`].
    pub fn handle(&mut self, msg: Message) -> Result<Vec<Output>, Failure> {
        self.handle_batch(vec![msg]).pop().expect("one result per message")
    }

    /// Handle a batch as the host would, checking that the stage returned one
    /// result per input.
    pub fn handle_batch(&mut self, batch: Vec<Message>) -> Vec<Result<Vec<Output>, Failure>> {
        let out = self.call(batch.clone());
        if !out.iter().any(|r| matches!(r, Err(Failure::Retry(_)))) || batch.len() == 1 {
            return out;
        }
        batch.into_iter().flat_map(|m| self.call(vec![m])).collect()
    }

    /// One call; its state and timer writes are undone if it asks for a retry.
    fn call(&mut self, batch: Vec<Message>) -> Vec<Result<Vec<Output>, Failure>> {
        let n = batch.len();
        let before = RECORDED.with(|r| (r.borrow().state.clone(), r.borrow().timers.clone()));
        let out = self.stage.handle_batch(batch);
        assert_eq!(out.len(), n, "a stage must return exactly one result per input message");
        if out.iter().any(|r| matches!(r, Err(Failure::Retry(_)))) {
            RECORDED.with(|r| (r.borrow_mut().state, r.borrow_mut().timers) = before);
        }
        out
    }

    /// Move the watermark to `ms` (it never goes back) and fire every
    /// event-time timer it reaches, earliest first, as the host does after
    /// a batch; returns each fired timer with its result. `u64::MAX` is
    /// the end of a finite source: every event-time timer fires.
    pub fn advance_watermark(&mut self, ms: u64) -> Vec<(Timer, Result<Vec<Output>, Failure>)> {
        RECORDED.with(|r| {
            let mut r = r.borrow_mut();
            r.watermark = Some(r.watermark.map_or(ms, |w| w.max(ms)));
        });
        self.fire(TimeDomain::EventTime, ms)
    }

    /// Set the clock [`timers::now_ms`](crate::timers::now_ms) reads (it
    /// never goes back; before the first call it is the system's) and fire
    /// every processing-time timer due, earliest first.
    pub fn advance_clock(&mut self, now_ms: u64) -> Vec<(Timer, Result<Vec<Output>, Failure>)> {
        RECORDED.with(|r| {
            let mut r = r.borrow_mut();
            r.clock = Some(r.clock.map_or(now_ms, |c| c.max(now_ms)));
        });
        self.fire(TimeDomain::ProcessingTime, now_ms)
    }

    fn fire(&mut self, domain: TimeDomain, until: u64) -> Vec<(Timer, Result<Vec<Output>, Failure>)> {
        let mut fired = Vec::new();
        loop {
            let due = RECORDED.with(|r| {
                let mut r = r.borrow_mut();
                let next = r.timers.iter().find(|(d, at, _)| *d == domain as u8 && *at <= until).cloned();
                next.inspect(|t| {
                    r.timers.remove(t);
                })
            });
            let Some((_, at_ms, key)) = due else { return fired };
            let timer = Timer { domain, key, at_ms };
            let before = RECORDED.with(|r| r.borrow().clone());
            let result = self.stage.on_timer(timer.clone());
            if matches!(result, Err(Failure::Retry(_))) {
                // Undone, as the host does; it would fire again later.
                let (logs, counters) = RECORDED.with(|r| (r.borrow().logs.clone(), r.borrow().counters.clone()));
                RECORDED.with(|r| *r.borrow_mut() = Recorded { logs, counters, ..before });
                fired.push((timer, result));
                return fired;
            }
            fired.push((timer, result));
        }
    }

    /// The timers set and not yet fired, earliest first per domain.
    pub fn timers(&self) -> Vec<Timer> {
        RECORDED.with(|r| {
            r.borrow()
                .timers
                .iter()
                .map(|(d, at_ms, key)| Timer {
                    domain: if *d == TimeDomain::EventTime as u8 { TimeDomain::EventTime } else { TimeDomain::ProcessingTime },
                    key: key.clone(),
                    at_ms: *at_ms,
                })
                .collect()
        })
    }

    /// The lines logged so far.
    pub fn logs(&self) -> Vec<(Level, String)> {
        RECORDED.with(|r| r.borrow().logs.clone())
    }

    /// The value of custom counter `name`.
    pub fn counter(&self, name: &str) -> u64 {
        RECORDED.with(|r| r.borrow().counters.get(name).copied().unwrap_or(0))
    }

    /// The stored state for `key`.
    pub fn state(&self, key: &[u8]) -> Option<Vec<u8>> {
        native::state_get(key)
    }
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) mod native {
    use super::{Level, RECORDED};

    pub(crate) fn log(level: Level, message: &str) {
        RECORDED.with(|r| r.borrow_mut().logs.push((level, message.to_owned())));
    }
    pub(crate) fn counter_add(name: &str, delta: u64) {
        RECORDED.with(|r| *r.borrow_mut().counters.entry(name.to_owned()).or_default() += delta);
    }
    pub(crate) fn state_get(key: &[u8]) -> Option<Vec<u8>> {
        RECORDED.with(|r| r.borrow().state.get(key).cloned())
    }
    pub(crate) fn state_put(key: &[u8], value: &[u8]) {
        RECORDED.with(|r| r.borrow_mut().state.insert(key.to_vec(), value.to_vec()));
    }
    pub(crate) fn state_delete(key: &[u8]) {
        RECORDED.with(|r| r.borrow_mut().state.remove(key));
    }
    pub(crate) fn set_timer(domain: crate::TimeDomain, key: &[u8], at_ms: u64) {
        RECORDED.with(|r| r.borrow_mut().timers.insert(super::key_of(domain, key, at_ms)));
    }
    pub(crate) fn delete_timer(domain: crate::TimeDomain, key: &[u8], at_ms: u64) {
        RECORDED.with(|r| r.borrow_mut().timers.remove(&super::key_of(domain, key, at_ms)));
    }
    pub(crate) fn watermark_ms() -> Option<u64> {
        RECORDED.with(|r| r.borrow().watermark)
    }
    pub(crate) fn now_ms() -> u64 {
        RECORDED.with(|r| r.borrow().clock).unwrap_or_else(crate::host::system_ms)
    }
}
