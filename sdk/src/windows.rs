//! Event-time windows, built on [`state`](crate::state) and
//! [`timers`](crate::timers), so a stage writes only the aggregation.
//!
//! A [`Windowed`] assigns each message to its windows by event time —
//! [tumbling](Windows::tumbling), [sliding](Windows::sliding) (hopping) or
//! [session](Windows::session) — per key (the message's key, or one the
//! stage computes), folds it into the window's accumulator with an
//! [`Aggregate`], and sets an event-time timer at the window's end plus
//! the allowed lateness. When the watermark reaches it, the timer fires,
//! [`Windowed::fire`] emits the aggregate's result once and forgets the
//! window. Accumulators and timers are the stage's state: committed with
//! the acknowledgements, so after a crash no message is counted twice and
//! no window is emitted with a different result.
//!
//! A message for a window that has already closed (the watermark passed
//! its end plus the lateness) is not added; it is counted in the stage's
//! custom counter `late`.
//!
//! ```
//! use weir_sdk::windows::{Count, Windowed, Windows};
//! use weir_sdk::{Config, Failure, Message, Output, Stage, Timer};
//!
//! /// Messages per key per minute of event time.
//! struct PerMinute(Windowed<Count>);
//!
//! impl Stage for PerMinute {
//!     fn init(_: &Config) -> Result<Self, String> {
//!         Ok(PerMinute(Windowed::new(Windows::tumbling(60_000)?, Count)))
//!     }
//!     fn handle(&mut self, msg: Message) -> Result<Vec<Output>, Failure> {
//!         self.0.add(&msg)
//!     }
//!     fn on_timer(&mut self, timer: Timer) -> Result<Vec<Output>, Failure> {
//!         self.0.fire(&timer)
//!     }
//! }
//!
//! let mut h = weir_sdk::testing::Harness::<PerMinute>::new(&[]).unwrap();
//! h.handle(Message::new("x").with_key("a").at(1_000)).unwrap();
//! h.handle(Message::new("x").with_key("a").at(59_999)).unwrap();
//! let fired = h.advance_watermark(60_000);
//! assert_eq!(fired[0].1.as_ref().unwrap()[0].payload, br#"{"key":"a","start":0,"end":60000,"count":2}"#);
//! ```
//!
//! State keys and timer keys start with `weir.w/` (tumbling and sliding)
//! or `weir.s/` (sessions); a stage's own keys should not.

use crate::{Failure, Message, Output, TimeDomain, Timer, state, timers};

/// Most windows one message may fall in (`size / slide` of a sliding window).
pub const MAX_WINDOWS_PER_MESSAGE: u64 = 1000;

const FIXED: &[u8] = b"weir.w/";
const SESSION: &[u8] = b"weir.s/";

/// A window of event time: `[start, end)`, ms since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The first millisecond in the window.
    pub start: u64,
    /// The first millisecond after it.
    pub end: u64,
}

/// How messages are assigned to windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Windows {
    /// Back-to-back windows of `size` ms, aligned to the Unix epoch.
    Tumbling {
        /// Window length, ms.
        size: u64,
    },
    /// Windows of `size` ms starting every `slide` ms: a message falls in
    /// `size / slide` of them.
    Sliding {
        /// Window length, ms.
        size: u64,
        /// Time between window starts, ms.
        slide: u64,
    },
    /// Per key, a window from the first message to `gap` ms after the last,
    /// where no two messages are `gap` ms or more apart; sessions that a
    /// late-arriving message bridges are merged.
    Session {
        /// Inactivity that ends a session, ms.
        gap: u64,
    },
}

impl Windows {
    /// Tumbling windows of `size_ms`.
    ///
    /// # Errors
    /// `size_ms` is 0.
    pub fn tumbling(size_ms: u64) -> Result<Self, String> {
        if size_ms == 0 {
            return Err("a window must be at least 1 ms long".into());
        }
        Ok(Windows::Tumbling { size: size_ms })
    }

    /// Sliding windows of `size_ms`, one starting every `slide_ms`.
    ///
    /// # Errors
    /// `slide_ms` is 0 or longer than `size_ms`, or a message would fall in
    /// more than [`MAX_WINDOWS_PER_MESSAGE`] windows.
    pub fn sliding(size_ms: u64, slide_ms: u64) -> Result<Self, String> {
        if slide_ms == 0 || slide_ms > size_ms {
            return Err(format!("the slide must be between 1 ms and the window's size ({size_ms} ms), got {slide_ms}"));
        }
        if size_ms.div_ceil(slide_ms) > MAX_WINDOWS_PER_MESSAGE {
            return Err(format!(
                "a message would fall in {} windows of {size_ms} ms sliding by {slide_ms} ms; at most {MAX_WINDOWS_PER_MESSAGE}",
                size_ms.div_ceil(slide_ms)
            ));
        }
        Ok(Windows::Sliding { size: size_ms, slide: slide_ms })
    }

    /// Session windows closed by `gap_ms` without messages.
    ///
    /// # Errors
    /// `gap_ms` is 0.
    pub fn session(gap_ms: u64) -> Result<Self, String> {
        if gap_ms == 0 {
            return Err("a session gap must be at least 1 ms".into());
        }
        Ok(Windows::Session { gap: gap_ms })
    }

    /// The starts of the fixed windows `t` falls in, earliest first.
    fn starts(self, t: u64) -> impl Iterator<Item = u64> {
        let (size, slide) = match self {
            Windows::Tumbling { size } => (size, size),
            Windows::Sliding { size, slide } => (size, slide),
            Windows::Session { .. } => (1, 1),
        };
        let last = t - t % slide;
        let first = t.saturating_sub(size - 1).div_ceil(slide) * slide;
        (first..=last).step_by(slide as usize)
    }
}

/// An accumulator's bytes in state.
pub trait Codec: Sized {
    /// Append the value's bytes to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Read a value from the front of `input`, advancing it; `None` if the
    /// bytes are not one.
    fn decode(input: &mut &[u8]) -> Option<Self>;
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if input.len() < n {
        return None;
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Some(head)
}

macro_rules! codec_number {
    ($($t:ty),*) => {$(
        impl Codec for $t {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn decode(input: &mut &[u8]) -> Option<Self> {
                take(input, size_of::<$t>()).map(|b| <$t>::from_le_bytes(b.try_into().expect("sized")))
            }
        }
    )*};
}
codec_number!(u8, u16, u32, u64, u128, i8, i16, i32, i64, i128, f32, f64);

impl Codec for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
    fn decode(input: &mut &[u8]) -> Option<Self> {
        u8::decode(input).map(|b| b != 0)
    }
}

impl<T: Codec> Codec for Vec<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        (self.len() as u32).encode(out);
        for v in self {
            v.encode(out);
        }
    }
    fn decode(input: &mut &[u8]) -> Option<Self> {
        let n = u32::decode(input)? as usize;
        // Each element takes at least a byte, except zero-sized ones: do
        // not trust a length the bytes cannot hold.
        let mut v = Vec::with_capacity(n.min(input.len()));
        for _ in 0..n {
            v.push(T::decode(input)?);
        }
        Some(v)
    }
}

impl Codec for String {
    fn encode(&self, out: &mut Vec<u8>) {
        (self.len() as u32).encode(out);
        out.extend_from_slice(self.as_bytes());
    }
    fn decode(input: &mut &[u8]) -> Option<Self> {
        let n = u32::decode(input)? as usize;
        String::from_utf8(take(input, n)?.to_vec()).ok()
    }
}

impl<T: Codec> Codec for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        self.is_some().encode(out);
        if let Some(v) = self {
            v.encode(out);
        }
    }
    fn decode(input: &mut &[u8]) -> Option<Self> {
        if bool::decode(input)? { T::decode(input).map(Some) } else { Some(None) }
    }
}

macro_rules! codec_tuple {
    ($($n:ident),+) => {
        impl<$($n: Codec),+> Codec for ($($n,)+) {
            #[allow(non_snake_case)]
            fn encode(&self, out: &mut Vec<u8>) {
                let ($($n,)+) = self;
                $($n.encode(out);)+
            }
            fn decode(input: &mut &[u8]) -> Option<Self> {
                Some(($($n::decode(input)?,)+))
            }
        }
    };
}
codec_tuple!(A, B);
codec_tuple!(A, B, C);
codec_tuple!(A, B, C, D);

fn to_bytes<T: Codec>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    v.encode(&mut out);
    out
}

fn from_bytes<T: Codec>(bytes: &[u8], what: &str) -> Result<T, Failure> {
    let mut input = bytes;
    match T::decode(&mut input) {
        Some(v) if input.is_empty() => Ok(v),
        _ => Err(Failure::Reject(format!("the stored {what} cannot be read (did the accumulator type change?)"))),
    }
}

/// What a window computes: an accumulator that messages are added to, and
/// the outputs made from it when the window closes.
pub trait Aggregate {
    /// The running value, kept in state between messages.
    type Acc: Codec + Default;

    /// Add `msg` to `acc`.
    ///
    /// # Errors
    /// The message's [`Failure`]: nothing it would add is kept.
    fn add(&mut self, acc: &mut Self::Acc, msg: &Message) -> Result<(), Failure>;

    /// Merge `other` into `into`: two sessions that a message bridged.
    fn merge(&mut self, into: &mut Self::Acc, other: Self::Acc);

    /// The outputs of a closed window of `key`.
    ///
    /// # Errors
    /// The timer's [`Failure`]: a retry fires it again, a reject
    /// dead-letters a record of it.
    fn emit(&mut self, key: &[u8], window: Window, acc: Self::Acc) -> Result<Vec<Output>, Failure>;
}

/// Counts messages; emits `{"key":KEY,"start":MS,"end":MS,"count":N}`
/// keyed by the window's key.
#[derive(Debug, Default, Clone, Copy)]
pub struct Count;

impl Aggregate for Count {
    type Acc = u64;

    fn add(&mut self, acc: &mut u64, _: &Message) -> Result<(), Failure> {
        *acc += 1;
        Ok(())
    }

    fn merge(&mut self, into: &mut u64, other: u64) {
        *into += other;
    }

    fn emit(&mut self, key: &[u8], w: Window, count: u64) -> Result<Vec<Output>, Failure> {
        let text = format!(r#"{{"key":{},"start":{},"end":{},"count":{count}}}"#, json_string(key), w.start, w.end);
        Ok(vec![Output::new(text).with_key(key)])
    }
}

/// `bytes` (as UTF-8, invalid sequences replaced) as a JSON string.
pub fn json_string(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Windows of one kind over a stage's messages, aggregated by `A`.
#[derive(Debug, Clone)]
pub struct Windowed<A> {
    windows: Windows,
    lateness_ms: u64,
    aggregate: A,
}

/// One session of a key: its window and accumulator's bytes.
type Session = (u64, u64, Vec<u8>);

impl<A: Aggregate> Windowed<A> {
    /// Windows of `windows`, aggregated by `aggregate`, closed as soon as
    /// the watermark passes their end.
    pub fn new(windows: Windows, aggregate: A) -> Self {
        Windowed { windows, lateness_ms: 0, aggregate }
    }

    /// Keep each window open `ms` after the watermark passes its end, for
    /// messages that much later than the watermark (set the stage's
    /// `allowed_lateness_ms` to the same, or the host drops them first).
    #[must_use]
    pub fn allowed_lateness(mut self, ms: u64) -> Self {
        self.lateness_ms = ms;
        self
    }

    /// The aggregate.
    pub fn aggregate(&mut self) -> &mut A {
        &mut self.aggregate
    }

    /// Add `msg` to its windows under its key (none: the empty key).
    /// Returns no outputs: windows emit when they close.
    ///
    /// # Errors
    /// The aggregate's failure, or state that cannot be read.
    pub fn add(&mut self, msg: &Message) -> Result<Vec<Output>, Failure> {
        let key = msg.key.clone().unwrap_or_default();
        self.add_keyed(&key, msg)
    }

    /// Add `msg` to its windows under `key`.
    ///
    /// # Errors
    /// The aggregate's failure, or state that cannot be read.
    pub fn add_keyed(&mut self, key: &[u8], msg: &Message) -> Result<Vec<Output>, Failure> {
        let t = msg.event_time_ms;
        let watermark = timers::watermark();
        let closed = |end: u64| watermark.is_some_and(|w| w >= end.saturating_add(self.lateness_ms));
        match self.windows {
            Windows::Session { gap } => self.add_to_session(key, msg, gap, closed(t.saturating_add(gap))),
            Windows::Tumbling { size } | Windows::Sliding { size, .. } => {
                // All windows' accumulators first, so a failure keeps none.
                let mut writes = Vec::new();
                for start in self.windows.starts(t) {
                    let end = start.saturating_add(size);
                    if closed(end) {
                        continue;
                    }
                    let sk = fixed_key(start, key);
                    let mut acc = match state::get(&sk) {
                        Some(b) => from_bytes(&b, "window accumulator")?,
                        None => A::Acc::default(),
                    };
                    self.aggregate.add(&mut acc, msg)?;
                    writes.push((sk, to_bytes(&acc), end));
                }
                if writes.is_empty() {
                    crate::counter_add("late", 1);
                }
                for (sk, acc, end) in writes {
                    state::put(&sk, &acc);
                    timers::set(TimeDomain::EventTime, &sk, end.saturating_add(self.lateness_ms));
                }
                Ok(Vec::new())
            }
        }
    }

    fn add_to_session(&mut self, key: &[u8], msg: &Message, gap: u64, late: bool) -> Result<Vec<Output>, Failure> {
        if late {
            crate::counter_add("late", 1);
            return Ok(Vec::new());
        }
        let sk = session_key(key);
        let mut sessions: Vec<Session> = match state::get(&sk) {
            Some(b) => from_bytes(&b, "sessions")?,
            None => Vec::new(),
        };
        let t = msg.event_time_ms;
        let (mut start, mut end) = (t, t.saturating_add(gap));
        let mut acc = A::Acc::default();
        self.aggregate.add(&mut acc, msg)?;
        // Merge every session this one touches.
        let mut merged = Vec::new();
        let mut i = 0;
        while i < sessions.len() {
            let (s, e, _) = sessions[i];
            if s < end && start < e {
                let (s, e, bytes) = sessions.swap_remove(i);
                self.aggregate.merge(&mut acc, from_bytes(&bytes, "session accumulator")?);
                start = start.min(s);
                end = end.max(e);
                merged.push(e);
            } else {
                i += 1;
            }
        }
        for e in merged {
            timers::delete(TimeDomain::EventTime, &sk, e.saturating_add(self.lateness_ms));
        }
        sessions.push((start, end, to_bytes(&acc)));
        sessions.sort_unstable_by_key(|s| s.0);
        state::put(&sk, &to_bytes(&sessions));
        timers::set(TimeDomain::EventTime, &sk, end.saturating_add(self.lateness_ms));
        Ok(Vec::new())
    }

    /// A timer fired: if it is one of these windows', emit the windows it
    /// closes and forget them; `None` if it is not (the stage's own).
    pub fn fire_if_window(&mut self, timer: &Timer) -> Option<Result<Vec<Output>, Failure>> {
        if timer.domain != TimeDomain::EventTime {
            return None;
        }
        if let Some(rest) = timer.key.strip_prefix(FIXED) {
            let (start, key) = rest.split_at(8.min(rest.len()));
            let start = u64::from_be_bytes(start.try_into().ok()?);
            let size = match self.windows {
                Windows::Tumbling { size } | Windows::Sliding { size, .. } => size,
                Windows::Session { .. } => return None,
            };
            let Some(bytes) = state::get(&timer.key) else { return Some(Ok(Vec::new())) };
            return Some((|| {
                let acc = from_bytes(&bytes, "window accumulator")?;
                state::delete(&timer.key);
                self.aggregate.emit(key, Window { start, end: start.saturating_add(size) }, acc)
            })());
        }
        let key = timer.key.strip_prefix(SESSION)?;
        Some((|| {
            let Some(bytes) = state::get(&timer.key) else { return Ok(Vec::new()) };
            let sessions: Vec<Session> = from_bytes(&bytes, "sessions")?;
            let (done, open): (Vec<_>, Vec<_>) =
                sessions.into_iter().partition(|(_, end, _)| end.saturating_add(self.lateness_ms) <= timer.at_ms);
            let mut outputs = Vec::new();
            for (start, end, acc) in done {
                outputs.extend(self.aggregate.emit(key, Window { start, end }, from_bytes(&acc, "session accumulator")?)?);
            }
            if open.is_empty() {
                state::delete(&timer.key);
            } else {
                state::put(&timer.key, &to_bytes(&open));
            }
            Ok(outputs)
        })())
    }

    /// A timer fired: emit the windows it closes. A timer that is not one
    /// of these windows' emits nothing.
    ///
    /// # Errors
    /// The aggregate's failure, or state that cannot be read.
    pub fn fire(&mut self, timer: &Timer) -> Result<Vec<Output>, Failure> {
        self.fire_if_window(timer).unwrap_or_else(|| Ok(Vec::new()))
    }
}

fn fixed_key(start: u64, key: &[u8]) -> Vec<u8> {
    [FIXED, &start.to_be_bytes(), key].concat()
}

fn session_key(key: &[u8]) -> Vec<u8> {
    [SESSION, key].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Harness;
    use crate::{Config, Stage};

    fn at(key: &str, ms: u64) -> Message {
        Message::new("x").with_key(key).at(ms)
    }

    #[test]
    fn sliding_windows_hold_each_message_size_over_slide_times() {
        let w = Windows::sliding(10, 5).unwrap();
        assert_eq!(w.starts(12).collect::<Vec<_>>(), [5, 10]);
        assert_eq!(w.starts(3).collect::<Vec<_>>(), [0], "no window starts before the epoch");
        assert_eq!(Windows::tumbling(10).unwrap().starts(19).collect::<Vec<_>>(), [10]);
        assert_eq!(Windows::sliding(10, 3).unwrap().starts(12).collect::<Vec<_>>(), [3, 6, 9, 12]);
        assert!(Windows::sliding(10, 0).is_err());
        assert!(Windows::sliding(10, 11).is_err());
        assert!(Windows::sliding(1_000_001, 1000).is_err());
        assert!(Windows::tumbling(0).is_err() && Windows::session(0).is_err());
    }

    #[test]
    fn codecs_round_trip_and_refuse_short_input() {
        let v: (u64, Vec<String>, Option<f64>) = (7, vec!["a".into(), "bc".into()], Some(1.5));
        assert_eq!(from_bytes::<(u64, Vec<String>, Option<f64>)>(&to_bytes(&v), "x").ok(), Some(v));
        assert!(from_bytes::<u64>(&[1, 2, 3], "x").is_err());
        assert!(from_bytes::<u32>(&[1, 2, 3, 4, 5], "x").is_err(), "trailing bytes are not a value");
        assert!(from_bytes::<Vec<u64>>(&to_bytes(&u32::MAX), "x").is_err(), "a length the bytes cannot hold");
    }

    /// Counts per key, in windows chosen by config.
    struct Counts(Windowed<Count>);

    impl Stage for Counts {
        fn init(c: &Config) -> Result<Self, String> {
            let n = |k: &str| c.parse::<u64>(k).map(|v| v.unwrap_or(0));
            let windows = match c.get("kind") {
                Some("sliding") => Windows::sliding(n("size")?, n("slide")?)?,
                Some("session") => Windows::session(n("gap")?)?,
                _ => Windows::tumbling(n("size")?)?,
            };
            Ok(Counts(Windowed::new(windows, Count).allowed_lateness(n("lateness")?)))
        }
        fn handle(&mut self, msg: Message) -> Result<Vec<Output>, Failure> {
            self.0.add(&msg)
        }
        fn on_timer(&mut self, t: Timer) -> Result<Vec<Output>, Failure> {
            self.0.fire(&t)
        }
    }

    fn payloads(fired: Vec<(Timer, Result<Vec<Output>, Failure>)>) -> Vec<String> {
        fired.into_iter().flat_map(|(_, r)| r.unwrap()).map(|o| String::from_utf8(o.payload).unwrap()).collect()
    }

    #[test]
    fn sliding_windows_emit_each_window_once_with_every_message_in_it() {
        let mut h = Harness::<Counts>::new(&[("kind", "sliding"), ("size", "10"), ("slide", "5")]).unwrap();
        for m in [at("a", 1), at("a", 7), at("a", 12)] {
            h.handle(m).unwrap();
        }
        assert_eq!(payloads(h.advance_watermark(9)), Vec::<String>::new());
        assert_eq!(payloads(h.advance_watermark(10)), [r#"{"key":"a","start":0,"end":10,"count":2}"#]);
        assert_eq!(
            payloads(h.advance_watermark(u64::MAX)),
            [r#"{"key":"a","start":5,"end":15,"count":2}"#, r#"{"key":"a","start":10,"end":20,"count":1}"#]
        );
        assert!(h.timers().is_empty());
    }

    #[test]
    fn a_message_after_its_window_closed_is_counted_late_not_added() {
        let mut h = Harness::<Counts>::new(&[("size", "10"), ("lateness", "5")]).unwrap();
        h.handle(at("a", 3)).unwrap();
        assert!(payloads(h.advance_watermark(14)).is_empty(), "open until 10 + 5");
        h.handle(at("a", 4)).unwrap();
        assert_eq!(payloads(h.advance_watermark(15)), [r#"{"key":"a","start":0,"end":10,"count":2}"#]);
        h.handle(at("a", 5)).unwrap();
        assert_eq!(h.counter("late"), 1);
        assert!(h.timers().is_empty() && h.state(&fixed_key(0, b"a")).is_none());
    }

    #[test]
    fn sessions_close_after_the_gap_and_merge_when_a_message_bridges_them() {
        let mut h = Harness::<Counts>::new(&[("kind", "session"), ("gap", "10")]).unwrap();
        for m in [at("a", 0), at("a", 5), at("a", 30), at("b", 3)] {
            h.handle(m).unwrap();
        }
        // a: [0, 15) and [30, 40); b: [3, 13).
        assert_eq!(
            payloads(h.advance_watermark(15)),
            [r#"{"key":"b","start":3,"end":13,"count":1}"#, r#"{"key":"a","start":0,"end":15,"count":2}"#]
        );
        // Out of order: 25 joins [30, 40), then 18 bridges [18, 28) and
        // [25, 40); 10 and 20 apart are two sessions.
        for m in [at("a", 25), at("a", 18)] {
            h.handle(m).unwrap();
        }
        assert_eq!(h.timers().len(), 1, "one timer for the merged session");
        assert_eq!(payloads(h.advance_watermark(u64::MAX)), [r#"{"key":"a","start":18,"end":40,"count":3}"#]);
        h.handle(at("a", 1)).unwrap();
        assert_eq!(h.counter("late"), 1);
    }

    #[test]
    fn keys_are_json_strings() {
        assert_eq!(json_string(b"a\"b\\c\n\x01\xff"), "\"a\\\"b\\\\c\\n\\u0001\u{fffd}\"");
    }
}
