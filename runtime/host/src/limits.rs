//! What a stage may take from the host, and the checks that hold it to that.
//!
//! A guest's own CPU and linear memory are bounded by the call deadline,
//! fuel and the memory cap. Everything it reaches *through the host* is
//! bounded here: the outputs it returns ([`OutputLimits`]), the state it
//! writes ([`StateLimits`]), the log lines it writes ([`LogLimits`]) and the
//! custom counters it creates ([`CounterLimits`]). Breaking an output or a
//! state limit fails the message (error kinds `output` and `state`); log
//! lines and counter names over their limits are dropped and counted in
//! [`Limited`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::Output;

/// Limits applied to every instance of a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock deadline of one call (`init` or one batch).
    pub timeout: Duration,
    /// Cap on the instance's linear memory.
    pub max_memory_bytes: usize,
    /// Fuel (roughly, WebAssembly instructions) one call may burn; `None`
    /// for no limit. Needs a [`crate::RuntimeOptions::fuel`] runtime.
    pub max_fuel: Option<u64>,
    /// What one message's outputs may carry.
    pub output: OutputLimits,
    /// What the stage may keep in state.
    pub state: StateLimits,
    /// How much the stage may log.
    pub log: LogLimits,
    /// How many custom counters the stage may create.
    pub counters: CounterLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(10),
            max_memory_bytes: 64 << 20,
            max_fuel: None,
            output: OutputLimits::default(),
            state: StateLimits::default(),
            log: LogLimits::default(),
            counters: CounterLimits::default(),
        }
    }
}

/// What the outputs of one message may carry. A message whose outputs break
/// one of these fails with [`crate::MessageError::OutputLimit`] (dead-lettered,
/// error kind `output`), before any sink sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLimits {
    /// All the message's outputs together: payloads, keys, header names and
    /// values, and topic names.
    pub max_bytes: usize,
    /// One output's key.
    pub max_key_bytes: usize,
    /// Headers on one output.
    pub max_headers: usize,
    /// One header: its name and value together.
    pub max_header_bytes: usize,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits { max_bytes: 4 << 20, max_key_bytes: 16 << 10, max_headers: 64, max_header_bytes: 16 << 10 }
    }
}

/// What an output carries, as `max_output_bytes` counts it: payload, key,
/// header names and values, and topic name.
pub fn output_bytes(o: &Output) -> usize {
    o.payload.len()
        + o.key.as_ref().map_or(0, bytes::Bytes::len)
        + o.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + o.topic.as_ref().map_or(0, String::len)
}

/// Longest topic name an output may give (the queue's own limit).
const MAX_TOPIC_BYTES: usize = 200;

impl OutputLimits {
    /// Check one message's outputs; `Err` names the limit broken.
    pub(crate) fn check(&self, outputs: &[Output]) -> Result<(), crate::MessageError> {
        let over = |limit: &'static str, value: usize, max: usize| Err(crate::MessageError::OutputLimit { limit, value, max });
        let mut total = 0usize;
        for o in outputs {
            let key = o.key.as_ref().map_or(0, bytes::Bytes::len);
            if key > self.max_key_bytes {
                return over("max_output_key_bytes", key, self.max_key_bytes);
            }
            if o.headers.len() > self.max_headers {
                return over("max_output_headers", o.headers.len(), self.max_headers);
            }
            if let Some(one) = o.headers.iter().map(|(name, value)| name.len() + value.len()).find(|&one| one > self.max_header_bytes) {
                return over("max_output_header_bytes", one, self.max_header_bytes);
            }
            let topic = o.topic.as_ref().map_or(0, String::len);
            if topic > MAX_TOPIC_BYTES {
                return over("topic name bytes", topic, MAX_TOPIC_BYTES);
            }
            total = total.saturating_add(output_bytes(o));
        }
        if total > self.max_bytes {
            return over("max_output_bytes", total, self.max_bytes);
        }
        Ok(())
    }
}

/// What a stage may keep in durable state. Breaking one fails the call
/// (error kind `state`): its writes are discarded, its instance replaced,
/// and its messages retried one by one, so only the culprit is charged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateLimits {
    /// One key.
    pub max_key_bytes: usize,
    /// One value.
    pub max_value_bytes: usize,
    /// Keys and values written (put or deleted) by one call.
    pub max_write_bytes: usize,
    /// Keys and values held by the stage, committed and pending together.
    pub max_bytes: usize,
    /// Timers held by the stage, committed and pending together.
    pub max_timers: usize,
}

impl Default for StateLimits {
    fn default() -> Self {
        StateLimits {
            max_key_bytes: 4 << 10,
            max_value_bytes: 1 << 20,
            max_write_bytes: 8 << 20,
            max_bytes: 64 << 20,
            max_timers: 1_000_000,
        }
    }
}

/// A state write over a [`StateLimits`] limit: raised as a trap in the
/// guest, classified as [`crate::ErrorKind::State`].
#[derive(Debug, thiserror::Error)]
#[error("state {what} of {value} {unit} exceeds {limit} ({max})")]
pub(crate) struct StateLimitError {
    pub(crate) what: &'static str,
    pub(crate) value: usize,
    /// `bytes`, or `timers`.
    pub(crate) unit: &'static str,
    pub(crate) limit: &'static str,
    pub(crate) max: usize,
}

/// How much a stage may log: a token bucket shared by its instances, and a
/// cut for long lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLimits {
    /// Lines per second, sustained.
    pub lines_per_second: u32,
    /// Lines that may be written at once after a quiet spell.
    pub burst_lines: u32,
    /// Longest line kept; longer lines are cut.
    pub max_line_bytes: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits { lines_per_second: 100, burst_lines: 1000, max_line_bytes: 4096 }
    }
}

/// How many custom counters a stage may create with `counter-add`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterLimits {
    /// Distinct counter names.
    pub max_names: usize,
    /// Length of one name.
    pub max_name_bytes: usize,
}

impl Default for CounterLimits {
    fn default() -> Self {
        CounterLimits { max_names: 100, max_name_bytes: 128 }
    }
}

/// How often a stage ran into a limit that drops rather than fails: counted
/// per stage, shared by its instances, reported with its metrics.
#[derive(Debug, Default)]
pub struct Limited {
    counter_names: AtomicU64,
    log_lines: AtomicU64,
    log_lines_cut: AtomicU64,
    warned_counters: AtomicBool,
}

impl Limited {
    /// Counts by limit: `counter_names` (counter-add calls refused: a new
    /// name past `max_counters`, or a name too long), `log_lines` (lines
    /// suppressed by the rate limit) and `log_lines_cut` (lines shortened).
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        BTreeMap::from([
            ("counter_names", self.counter_names.load(Relaxed)),
            ("log_lines", self.log_lines.load(Relaxed)),
            ("log_lines_cut", self.log_lines_cut.load(Relaxed)),
        ])
    }

    /// Count a refused counter name; true the first time (to warn once).
    pub(crate) fn counter_refused(&self) -> bool {
        self.counter_names.fetch_add(1, Relaxed);
        !self.warned_counters.swap(true, Relaxed)
    }

    pub(crate) fn log_cut(&self) {
        self.log_lines_cut.fetch_add(1, Relaxed);
    }

    pub(crate) fn log_suppressed(&self) {
        self.log_lines.fetch_add(1, Relaxed);
    }
}

/// A token bucket for log lines: a burst, then a steady rate; it keeps count
/// of the lines it suppressed so they can be summarised. Also used by the
/// engine for lines that guests cause (dead letters, failed calls).
#[derive(Debug)]
pub struct LogBucket {
    inner: Mutex<Bucket>,
    rate: f64,
    burst: f64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Lines suppressed and not yet summarised.
    suppressed: u64,
    /// When the last summary of suppressed lines was handed out.
    summarised: Option<Instant>,
}

/// Suppressed lines are summarised at most this often (the first time at
/// once), so that a stage over its rate adds one line per interval, not one
/// per line let through.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

impl LogBucket {
    /// A full bucket: `burst_lines` at once, then `lines_per_second`.
    pub fn new(lines_per_second: u32, burst_lines: u32) -> Self {
        let bucket = Bucket { tokens: f64::from(burst_lines), at: Instant::now(), suppressed: 0, summarised: None };
        LogBucket { inner: Mutex::new(bucket), rate: f64::from(lines_per_second), burst: f64::from(burst_lines.max(1)) }
    }

    /// Whether a line may be written now: `Some(n)` if so, `n` being the
    /// lines suppressed before it to summarise now (0 until
    /// [`SUMMARY_EVERY`] has passed since the last summary); `None` if it is
    /// suppressed.
    pub fn take(&self) -> Option<u64> {
        let mut b = self.inner.lock().unwrap();
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            let due = b.summarised.is_none_or(|t| now.duration_since(t) >= SUMMARY_EVERY);
            if b.suppressed > 0 && due {
                b.summarised = Some(now);
                return Some(std::mem::take(&mut b.suppressed));
            }
            Some(0)
        } else {
            b.suppressed += 1;
            None
        }
    }

    /// Lines suppressed and not yet summarised (when the stage stops).
    pub fn take_suppressed(&self) -> u64 {
        std::mem::take(&mut self.inner.lock().unwrap().suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MessageError;

    fn out(payload: usize) -> Output {
        Output { topic: None, key: None, payload: vec![0; payload].into(), headers: Vec::new() }
    }

    fn broken(outputs: &[Output], limits: &OutputLimits) -> Option<&'static str> {
        match limits.check(outputs) {
            Ok(()) => None,
            Err(MessageError::OutputLimit { limit, .. }) => Some(limit),
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn outputs_count_keys_headers_and_topics_not_only_payloads() {
        let l = OutputLimits { max_bytes: 100, max_key_bytes: 10, max_headers: 2, max_header_bytes: 20 };
        assert_eq!(broken(&[out(60), out(40)], &l), None);
        assert_eq!(broken(&[out(60), out(41)], &l), Some("max_output_bytes"));
        let keyed = Output { key: Some(vec![0; 10].into()), ..out(90) };
        assert_eq!(broken(std::slice::from_ref(&keyed), &l), None);
        assert_eq!(broken(&[Output { key: Some(vec![0; 11].into()), ..out(0) }], &l), Some("max_output_key_bytes"));
        let headers = |n: usize, len: usize| Output { headers: vec![("h".into(), vec![0; len - 1]); n], ..out(0) };
        assert_eq!(broken(&[headers(3, 2)], &l), Some("max_output_headers"));
        assert_eq!(broken(&[headers(1, 21)], &l), Some("max_output_header_bytes"));
        assert_eq!(broken(&[headers(2, 20), out(61)], &l), Some("max_output_bytes"), "headers count toward the total");
        let routed = Output { topic: Some("t".repeat(201)), ..out(0) };
        assert_eq!(broken(&[routed], &l), Some("topic name bytes"));
    }

    #[test]
    fn the_log_bucket_lets_a_burst_through_then_the_rate() {
        let bucket = LogBucket::new(1, 3);
        for _ in 0..3 {
            assert_eq!(bucket.take(), Some(0));
        }
        assert_eq!(bucket.take(), None);
        assert_eq!(bucket.take(), None);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(bucket.take(), Some(2), "the next line carries the count to summarise");
        assert_eq!(bucket.take_suppressed(), 0);
        // Over the rate again within the summary interval: the count waits.
        assert_eq!(bucket.take(), None);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(bucket.take(), Some(0), "no second summary within {SUMMARY_EVERY:?}");
        assert_eq!(bucket.take_suppressed(), 1, "what is left is summarised when the stage stops");
    }
}
