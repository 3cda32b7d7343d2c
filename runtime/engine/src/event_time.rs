//! Reading a message's event time where `[event_time]` says it is: the
//! producer's timestamp, a header, or a field of the JSON payload. A number
//! is in the configured unit; a string is such a number or an RFC 3339
//! time. What cannot be read is the reason the source dead-letters the
//! message with (error kind `event-time`).

use weir_queue::Message;

use crate::config::{EventTime, TimeUnit};

/// The error kind of a message whose event time cannot be read.
pub(crate) const KIND: &str = "event-time";

impl EventTime {
    /// Whether event times come from somewhere other than the producer's timestamp.
    pub(crate) fn is_read(&self) -> bool {
        !matches!(self, EventTime::Producer)
    }

    /// `msg`'s event time in ms since the Unix epoch, or why it has none.
    pub(crate) fn read(&self, msg: &Message) -> Result<u64, String> {
        match self {
            EventTime::Producer => Ok(msg.event_time_ms),
            EventTime::Header { name, unit } => {
                let (_, value) =
                    msg.headers.iter().find(|(k, _)| k == name).ok_or_else(|| format!("event time: the message has no header {name:?}"))?;
                let text = std::str::from_utf8(value).map_err(|_| format!("event time: header {name:?} is not UTF-8"))?;
                from_text(text, *unit).map_err(|e| format!("event time: header {name:?}: {e}"))
            }
            EventTime::Json { pointer, unit } => {
                let doc: serde_json::Value =
                    serde_json::from_slice(&msg.payload).map_err(|e| format!("event time: the payload is not JSON ({e})"))?;
                let value = doc.pointer(pointer).ok_or_else(|| format!("event time: the payload has no field at {pointer:?}"))?;
                from_json(value, *unit).map_err(|e| format!("event time: {pointer:?}: {e}"))
            }
        }
    }
}

fn from_json(value: &serde_json::Value, unit: TimeUnit) -> Result<u64, String> {
    match value {
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(n), _) => Ok(from_integer(n, unit)),
            (None, Some(x)) => from_number(x, unit),
            (None, None) => Err(format!("{n} is not a time in {}", unit_name(unit))),
        },
        serde_json::Value::String(s) => from_text(s, unit),
        other => Err(format!("is {}, not a number or an RFC 3339 time", kind(other))),
    }
}

/// A number in `unit`, or an RFC 3339 time.
fn from_text(text: &str, unit: TimeUnit) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(n) = text.parse::<u64>() {
        return Ok(from_integer(n, unit));
    }
    if let Ok(x) = text.parse::<f64>() {
        return from_number(x, unit);
    }
    let t: jiff::Timestamp = text.parse().map_err(|_| format!("{:?} is not a number or an RFC 3339 time", cut(text)))?;
    u64::try_from(t.as_millisecond()).map_err(|_| format!("{text} is before 1970"))
}

fn from_integer(n: u64, unit: TimeUnit) -> u64 {
    match unit {
        TimeUnit::Seconds => n.saturating_mul(1000),
        TimeUnit::Millis => n,
        TimeUnit::Micros => n / 1000,
        TimeUnit::Nanos => n / 1_000_000,
    }
}

fn from_number(x: f64, unit: TimeUnit) -> Result<u64, String> {
    let per_ms = match unit {
        TimeUnit::Seconds => 1e-3,
        TimeUnit::Millis => 1.0,
        TimeUnit::Micros => 1e3,
        TimeUnit::Nanos => 1e6,
    };
    let ms = (x / per_ms).floor();
    if !ms.is_finite() || ms < 0.0 || ms >= u64::MAX as f64 {
        return Err(format!("{x} is not a time in {}", unit_name(unit)));
    }
    Ok(ms as u64)
}

fn unit_name(unit: TimeUnit) -> &'static str {
    match unit {
        TimeUnit::Seconds => "seconds",
        TimeUnit::Millis => "milliseconds",
        TimeUnit::Micros => "microseconds",
        TimeUnit::Nanos => "nanoseconds",
    }
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// At most 64 bytes of a value, for a reason.
fn cut(s: &str) -> &str {
    &s[..s.floor_char_boundary(64)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(payload: &str, headers: &[(&str, &str)]) -> Message {
        let mut m = Message::from_record(std::sync::Arc::from("t"), 0, weir_queue::Record::new(payload.as_bytes().to_vec()));
        m.headers = headers.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
        m.event_time_ms = 42;
        m
    }

    fn json(pointer: &str, unit: TimeUnit) -> EventTime {
        EventTime::Json { pointer: pointer.into(), unit }
    }

    #[test]
    fn numbers_are_read_in_their_unit_and_strings_as_numbers_or_rfc_3339() {
        let m = msg(
            r#"{"ts": 1700000000123, "s": 1700000000.5, "iso": "2023-11-14T22:13:20.123Z", "off": "2023-11-14T23:13:20+01:00", "q": "1700000000123"}"#,
            &[],
        );
        assert_eq!(json("/ts", TimeUnit::Millis).read(&m), Ok(1_700_000_000_123));
        assert_eq!(json("/s", TimeUnit::Seconds).read(&m), Ok(1_700_000_000_500));
        assert_eq!(json("/ts", TimeUnit::Micros).read(&m), Ok(1_700_000_000));
        assert_eq!(json("/iso", TimeUnit::Millis).read(&m), Ok(1_700_000_000_123));
        assert_eq!(json("/off", TimeUnit::Seconds).read(&m), Ok(1_700_000_000_000), "an RFC 3339 time ignores the unit");
        assert_eq!(json("/q", TimeUnit::Millis).read(&m), Ok(1_700_000_000_123));
        assert_eq!(EventTime::Producer.read(&m), Ok(42));
        let h = msg("not json", &[("ts", "1700000000"), ("bad", "yesterday")]);
        assert_eq!(EventTime::Header { name: "ts".into(), unit: TimeUnit::Seconds }.read(&h), Ok(1_700_000_000_000));
    }

    #[test]
    fn what_cannot_be_read_says_why() {
        let m = msg(r#"{"ts": -5, "o": {}, "n": null, "s": "soon"}"#, &[("bad", "yesterday")]);
        let err = |e: EventTime, m: &Message| e.read(m).unwrap_err();
        assert_eq!(err(json("/missing", TimeUnit::Millis), &m), r#"event time: the payload has no field at "/missing""#);
        assert_eq!(err(json("/ts", TimeUnit::Millis), &m), r#"event time: "/ts": -5 is not a time in milliseconds"#);
        assert_eq!(err(json("/o", TimeUnit::Millis), &m), r#"event time: "/o": is an object, not a number or an RFC 3339 time"#);
        assert_eq!(err(json("/n", TimeUnit::Millis), &m), r#"event time: "/n": is null, not a number or an RFC 3339 time"#);
        assert_eq!(err(json("/s", TimeUnit::Millis), &m), r#"event time: "/s": "soon" is not a number or an RFC 3339 time"#);
        assert!(err(json("/ts", TimeUnit::Millis), &msg("{", &[])).starts_with("event time: the payload is not JSON ("));
        let header = |n: &str| EventTime::Header { name: n.into(), unit: TimeUnit::Millis };
        assert_eq!(err(header("ts"), &m), r#"event time: the message has no header "ts""#);
        assert_eq!(err(header("bad"), &m), r#"event time: header "bad": "yesterday" is not a number or an RFC 3339 time"#);
    }
}
