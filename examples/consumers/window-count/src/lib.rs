//! Messages per key per tumbling window of event time, exactly once.
//!
//! Each message adds one to the count of its key in the window its event
//! time falls in (`[start, start + window_ms)`) and sets an event-time
//! timer at the window's end. When the watermark reaches the end, the
//! timer fires and the stage emits `KEY START COUNT` (key `KEY`) once, and
//! forgets the window. A message for a window that has already closed is
//! late: it is dropped and counted (`late`). Counts and timers are state,
//! committed with the acknowledgements, so after a crash no window counts a
//! message twice nor closes twice into state.
//!
//! Config: `window_ms` (default 60000).

use weir_sdk::{Config, Failure, Message, Output, Stage, TimeDomain, Timer, state, timers};

pub struct WindowCount {
    window_ms: u64,
}

/// The state key of `key`'s window starting at `start`: the start (8 bytes,
/// big-endian) then the key; also the timer's key.
fn window_key(key: &[u8], start: u64) -> Vec<u8> {
    let mut k = start.to_be_bytes().to_vec();
    k.extend_from_slice(key);
    k
}

impl Stage for WindowCount {
    fn init(config: &Config) -> Result<Self, String> {
        let window_ms = config.parse::<u64>("window_ms")?.unwrap_or(60_000);
        if window_ms == 0 {
            return Err("window_ms must be at least 1".into());
        }
        Ok(WindowCount { window_ms })
    }

    fn handle(&mut self, msg: Message) -> Result<Vec<Output>, Failure> {
        let start = msg.event_time_ms - msg.event_time_ms % self.window_ms;
        let end = start.saturating_add(self.window_ms);
        if timers::watermark().is_some_and(|w| w >= end) {
            weir_sdk::counter_add("late", 1);
            return Ok(vec![]);
        }
        let wk = window_key(msg.key.as_deref().unwrap_or_default(), start);
        let n = state::get(&wk).map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap_or_default())) + 1;
        state::put(&wk, &n.to_le_bytes());
        timers::set(TimeDomain::EventTime, &wk, end);
        Ok(vec![])
    }

    fn on_timer(&mut self, timer: Timer) -> Result<Vec<Output>, Failure> {
        let Some(count) = state::get(&timer.key) else { return Ok(vec![]) };
        state::delete(&timer.key);
        let (start, key) = timer.key.split_at(8.min(timer.key.len()));
        let start = u64::from_be_bytes(start.try_into().map_err(|_| Failure::Reject("not a window timer".into()))?);
        let count = u64::from_le_bytes(count.try_into().map_err(|_| Failure::Reject("not a window count".into()))?);
        let text = format!("{} {start} {count}", String::from_utf8_lossy(key));
        Ok(vec![Output::new(text).with_key(key)])
    }
}

weir_sdk::export!(WindowCount);

#[cfg(test)]
mod tests {
    use weir_sdk::testing::Harness;

    use super::*;

    fn at(key: &str, ms: u64) -> Message {
        Message::new("x").with_key(key).at(ms)
    }

    #[test]
    fn each_window_is_emitted_once_when_the_watermark_passes_its_end() {
        let mut h = Harness::<WindowCount>::new(&[("window_ms", "1000")]).unwrap();
        for m in [at("a", 100), at("b", 999), at("a", 1500), at("a", 10)] {
            assert!(h.handle(m).unwrap().is_empty());
        }
        let fired = h.advance_watermark(999);
        assert!(fired.is_empty(), "the first window ends at 1000");
        let fired: Vec<_> = h.advance_watermark(1000).into_iter().map(|(_, r)| r.unwrap()[0].payload.clone()).collect();
        assert_eq!(fired, [b"a 0 2".to_vec(), b"b 0 1".to_vec()]);
        // Late for a closed window: dropped, counted.
        assert!(h.handle(at("a", 5)).unwrap().is_empty());
        assert_eq!(h.counter("late"), 1);
        let fired: Vec<_> = h.advance_watermark(u64::MAX).into_iter().map(|(_, r)| r.unwrap()[0].payload.clone()).collect();
        assert_eq!(fired, [b"a 1000 1".to_vec()]);
        assert!(h.timers().is_empty());
        assert_eq!(h.state(&window_key(b"a", 0)), None, "closed windows are forgotten");
    }
}
