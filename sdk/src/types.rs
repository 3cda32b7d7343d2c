//! The message types, with helpers. They are the WIT types themselves, so no
//! copy is made between the host's call and your code.

use crate::__private::bindings::weir::pipeline::types;

/// Message headers: ordered (name, value) pairs; names may repeat.
pub type Headers = Vec<(String, Vec<u8>)>;

/// Why a stage could not handle a message.
///
/// `Failure::Retry(reason)` delivers it again later, up to the stage's
/// `max_attempts`; `Failure::Reject(reason)` sends it to the dead-letter topic
/// at once.
pub use types::Failure;
/// A message delivered to a stage. See `wit/weir.wit` for each field.
pub use types::Message;
/// A message a stage emits. See `wit/weir.wit` for each field.
pub use types::Output;
/// The clock a timer follows: event time (the watermark) or processing
/// time (the host's clock).
pub use types::TimeDomain;
/// A timer that fired: its domain, the key it was set for, its time.
pub use types::Timer;

impl Message {
    /// A message with only a payload, for tests: topic `test`, partition 0,
    /// offset 0, attempt 1.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Message {
            topic: "test".into(),
            partition: 0,
            offset: 0,
            key: None,
            payload: payload.into(),
            headers: Vec::new(),
            timestamp_ms: 0,
            event_time_ms: 0,
            attempt: 1,
        }
    }

    /// Set the event time (builder style, for tests).
    #[must_use]
    pub fn at(mut self, event_time_ms: u64) -> Self {
        self.event_time_ms = event_time_ms;
        self
    }

    /// The payload as UTF-8 text.
    ///
    /// # Errors
    /// [`Failure::Reject`] if it is not UTF-8: such a message will never become valid.
    pub fn text(&self) -> Result<&str, Failure> {
        std::str::from_utf8(&self.payload).map_err(|e| Failure::Reject(format!("payload is not UTF-8: {e}")))
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }

    /// Set the key (builder style, for tests).
    #[must_use]
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Add a header (builder style, for tests).
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

impl Output {
    /// An output with only a payload, to the default next hop.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Output { topic: None, key: None, payload: payload.into(), headers: Vec::new() }
    }

    /// An output that keeps `msg`'s key and headers with a new payload.
    pub fn reply(msg: &Message, payload: impl Into<Vec<u8>>) -> Self {
        Output { topic: None, key: msg.key.clone(), payload: payload.into(), headers: msg.headers.clone() }
    }

    /// Pass `msg` on unchanged (payload, key, headers).
    pub fn forward(msg: Message) -> Self {
        Output { topic: None, key: msg.key, payload: msg.payload, headers: msg.headers }
    }

    /// Send this output to `topic` instead of the default next hop.
    #[must_use]
    pub fn to_topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Set the key.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Add a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

impl Failure {
    /// The reason given by the stage.
    pub fn reason(&self) -> &str {
        match self {
            Failure::Retry(r) | Failure::Reject(r) => r,
        }
    }
}

/// A stage's `[stage.config]` table, flattened to string values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl From<Vec<(String, String)>> for Config {
    fn from(entries: Vec<(String, String)>) -> Self {
        Config { entries }
    }
}

impl Config {
    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or an error naming it if it is missing.
    ///
    /// # Errors
    /// `"missing config key `key`"`.
    pub fn require(&self, key: &str) -> Result<&str, String> {
        self.get(key).ok_or_else(|| format!("missing config key `{key}`"))
    }

    /// Parse the value of `key`; `Ok(None)` if it is not set.
    ///
    /// # Errors
    /// A message naming the key, the value and the parse error.
    pub fn parse<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, String>
    where
        T::Err: std::fmt::Display,
    {
        self.get(key).map(|v| v.parse::<T>().map_err(|e| format!("config key `{key}` = {v:?}: {e}"))).transpose()
    }

    /// All entries, in the order the host passed them.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}
