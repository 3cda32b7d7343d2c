//! Sessions per user: a user's events belong to one session while no two
//! are `gap_ms` or more apart (event time); each session is emitted once,
//! when the watermark passes its last event plus the gap, as
//! `{"user":USER,"start":MS,"end":MS,"events":N,"pages":N}` (key `USER`),
//! where `end` is the last event's time plus the gap and `pages` the number
//! of distinct payloads. An event arriving out of order that bridges two
//! sessions merges them. Built on the SDK's session
//! [`windows`](weir_sdk::windows): exactly once, like state.
//!
//! Config: `gap_ms` (default 1800000, 30 minutes), `allowed_lateness_ms`
//! (default 0; give the stage's `allowed_lateness_ms` the same).

use weir_sdk::windows::{Aggregate, Window, Windowed, Windows, json_string};
use weir_sdk::{Config, Failure, Message, Output, Stage, Timer};

/// A session's events and the distinct pages among them (sorted).
struct Activity;

impl Aggregate for Activity {
    type Acc = (u64, Vec<Vec<u8>>);

    fn add(&mut self, (events, pages): &mut Self::Acc, msg: &Message) -> Result<(), Failure> {
        *events += 1;
        if let Err(i) = pages.binary_search(&msg.payload) {
            pages.insert(i, msg.payload.clone());
        }
        Ok(())
    }

    fn merge(&mut self, (events, pages): &mut Self::Acc, (more, other): Self::Acc) {
        *events += more;
        for p in other {
            if let Err(i) = pages.binary_search(&p) {
                pages.insert(i, p);
            }
        }
    }

    fn emit(&mut self, user: &[u8], w: Window, (events, pages): Self::Acc) -> Result<Vec<Output>, Failure> {
        let text =
            format!(r#"{{"user":{},"start":{},"end":{},"events":{events},"pages":{}}}"#, json_string(user), w.start, w.end, pages.len());
        Ok(vec![Output::new(text).with_key(user)])
    }
}

pub struct Sessionize(Windowed<Activity>);

impl Stage for Sessionize {
    fn init(config: &Config) -> Result<Self, String> {
        let gap = config.parse::<u64>("gap_ms")?.unwrap_or(30 * 60_000);
        let lateness = config.parse::<u64>("allowed_lateness_ms")?.unwrap_or(0);
        Ok(Sessionize(Windowed::new(Windows::session(gap)?, Activity).allowed_lateness(lateness)))
    }

    fn handle(&mut self, msg: Message) -> Result<Vec<Output>, Failure> {
        self.0.add(&msg)
    }

    fn on_timer(&mut self, timer: Timer) -> Result<Vec<Output>, Failure> {
        self.0.fire(&timer)
    }
}

weir_sdk::export!(Sessionize);

#[cfg(test)]
mod tests {
    use weir_sdk::testing::Harness;

    use super::*;

    fn visit(user: &str, page: &str, ms: u64) -> Message {
        Message::new(page).with_key(user).at(ms)
    }

    fn payloads(fired: Vec<(Timer, Result<Vec<Output>, Failure>)>) -> Vec<String> {
        fired.into_iter().flat_map(|(_, r)| r.unwrap()).map(|o| String::from_utf8(o.payload).unwrap()).collect()
    }

    #[test]
    fn a_session_ends_after_the_gap_and_counts_distinct_pages() {
        let mut h = Harness::<Sessionize>::new(&[("gap_ms", "100")]).unwrap();
        for m in [visit("ann", "/", 0), visit("ann", "/a", 50), visit("ann", "/", 120), visit("ann", "/b", 400)] {
            h.handle(m).unwrap();
        }
        assert!(h.advance_watermark(219).is_empty());
        assert_eq!(payloads(h.advance_watermark(220)), [r#"{"user":"ann","start":0,"end":220,"events":3,"pages":2}"#]);
        assert_eq!(payloads(h.advance_watermark(u64::MAX)), [r#"{"user":"ann","start":400,"end":500,"events":1,"pages":1}"#]);
    }
}
