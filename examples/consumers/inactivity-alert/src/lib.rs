//! Alert when a device goes quiet: every message (a heartbeat, keyed by
//! device) moves the device's processing-time deadline to now plus
//! `timeout_ms`; if no heartbeat comes before it, the timer fires and the
//! stage emits `{"device":DEVICE,"last_seen_ms":MS,"timeout_ms":MS}` (key
//! `DEVICE`) once. The next heartbeat arms it again. Deadlines are state
//! and timers, committed with the acknowledgements: after a crash a device
//! is neither forgotten nor alerted twice.
//!
//! Config: `timeout_ms` (default 30000).

use weir_sdk::windows::json_string;
use weir_sdk::{Config, Failure, Message, Output, Stage, TimeDomain, Timer, state, timers};

pub struct InactivityAlert {
    timeout_ms: u64,
}

fn deadline(device: &[u8]) -> Option<u64> {
    state::get(device).and_then(|v| Some(u64::from_le_bytes(v.try_into().ok()?)))
}

impl Stage for InactivityAlert {
    fn init(config: &Config) -> Result<Self, String> {
        let timeout_ms = config.parse::<u64>("timeout_ms")?.unwrap_or(30_000);
        if timeout_ms == 0 {
            return Err("timeout_ms must be at least 1".into());
        }
        Ok(InactivityAlert { timeout_ms })
    }

    fn handle(&mut self, msg: Message) -> Result<Vec<Output>, Failure> {
        let device = msg.key.as_deref().unwrap_or_default();
        if let Some(old) = deadline(device) {
            timers::delete(TimeDomain::ProcessingTime, device, old);
        }
        let at = timers::now_ms().saturating_add(self.timeout_ms);
        timers::set(TimeDomain::ProcessingTime, device, at);
        state::put(device, &at.to_le_bytes());
        Ok(vec![])
    }

    fn on_timer(&mut self, timer: Timer) -> Result<Vec<Output>, Failure> {
        // Only the device's current deadline alerts.
        if deadline(&timer.key) != Some(timer.at_ms) {
            return Ok(vec![]);
        }
        state::delete(&timer.key);
        let text = format!(
            r#"{{"device":{},"last_seen_ms":{},"timeout_ms":{}}}"#,
            json_string(&timer.key),
            timer.at_ms - self.timeout_ms,
            self.timeout_ms
        );
        Ok(vec![Output::new(text).with_key(timer.key)])
    }
}

weir_sdk::export!(InactivityAlert);

#[cfg(test)]
mod tests {
    use weir_sdk::testing::Harness;

    use super::*;

    fn beat(device: &str) -> Message {
        Message::new("ok").with_key(device)
    }

    #[test]
    fn a_device_that_stops_beating_is_alerted_once_and_a_beating_one_never() {
        let mut h = Harness::<InactivityAlert>::new(&[("timeout_ms", "100")]).unwrap();
        h.advance_clock(1000);
        h.handle(beat("a")).unwrap();
        h.handle(beat("b")).unwrap();
        for now in [1050, 1099] {
            assert!(h.advance_clock(now).is_empty());
            h.handle(beat("a")).unwrap();
        }
        let fired = h.advance_clock(1150);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].1.as_ref().unwrap()[0].payload, br#"{"device":"b","last_seen_ms":1000,"timeout_ms":100}"#);
        assert!(h.advance_clock(1198).is_empty(), "b is alerted once; a beat at 1099");
        assert_eq!(h.advance_clock(1199).len(), 1, "a is quiet now");
        assert!(h.timers().is_empty());
        h.handle(beat("b")).unwrap();
        assert_eq!(h.timers().len(), 1, "a beat arms it again");
    }
}
