//! Messages per key per tumbling window of event time, exactly once, with
//! the SDK's [`windows`](weir_sdk::windows).
//!
//! Each message adds one to the count of its key in the window its event
//! time falls in (`[start, start + window_ms)`). When the watermark reaches
//! the window's end, the stage emits `KEY START COUNT` (key `KEY`) once, and
//! forgets the window. A message for a window that has already closed is
//! late: it is dropped and counted (`late`). Counts and timers are state,
//! committed with the acknowledgements, so after a crash no window counts a
//! message twice nor closes twice into state.
//!
//! Config: `window_ms` (default 60000).

use weir_sdk::windows::{Aggregate, Window, Windowed, Windows};
use weir_sdk::{Config, Failure, Message, Output, Stage, Timer};

/// Counts, emitted as `KEY START COUNT`.
struct Count;

impl Aggregate for Count {
    type Acc = u64;

    fn add(&mut self, n: &mut u64, _: &Message) -> Result<(), Failure> {
        *n += 1;
        Ok(())
    }

    fn merge(&mut self, into: &mut u64, other: u64) {
        *into += other;
    }

    fn emit(&mut self, key: &[u8], window: Window, n: u64) -> Result<Vec<Output>, Failure> {
        let text = format!("{} {} {n}", String::from_utf8_lossy(key), window.start);
        Ok(vec![Output::new(text).with_key(key)])
    }
}

pub struct WindowCount(Windowed<Count>);

impl Stage for WindowCount {
    fn init(config: &Config) -> Result<Self, String> {
        let window_ms = config.parse::<u64>("window_ms")?.unwrap_or(60_000);
        Ok(WindowCount(Windowed::new(Windows::tumbling(window_ms)?, Count)))
    }

    fn handle(&mut self, msg: Message) -> Result<Vec<Output>, Failure> {
        self.0.add(&msg)
    }

    fn on_timer(&mut self, timer: Timer) -> Result<Vec<Output>, Failure> {
        self.0.fire(&timer)
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

    fn payloads(fired: Vec<(Timer, Result<Vec<Output>, Failure>)>) -> Vec<String> {
        fired.into_iter().flat_map(|(_, r)| r.unwrap()).map(|o| String::from_utf8(o.payload).unwrap()).collect()
    }

    #[test]
    fn each_window_is_emitted_once_when_the_watermark_passes_its_end() {
        let mut h = Harness::<WindowCount>::new(&[("window_ms", "1000")]).unwrap();
        for m in [at("a", 100), at("b", 999), at("a", 1500), at("a", 10)] {
            assert!(h.handle(m).unwrap().is_empty());
        }
        assert!(h.advance_watermark(999).is_empty(), "the first window ends at 1000");
        assert_eq!(payloads(h.advance_watermark(1000)), ["a 0 2", "b 0 1"]);
        // Late for a closed window: dropped, counted.
        assert!(h.handle(at("a", 5)).unwrap().is_empty());
        assert_eq!(h.counter("late"), 1);
        assert_eq!(payloads(h.advance_watermark(u64::MAX)), ["a 1000 1"]);
        assert!(h.timers().is_empty(), "closed windows are forgotten");
    }

    #[test]
    fn a_zero_window_is_refused() {
        assert!(Harness::<WindowCount>::new(&[("window_ms", "0")]).is_err());
    }
}
