//! [`Message`]: a record on its way through a pipeline.

use std::sync::Arc;

use bytes::Bytes;

use crate::{Record, StoredRecord};

/// A message as weir passes it along, from a source through the stages to
/// the sinks, and as its API and command line show it. Cheap to clone and
/// to hand on: the key and payload are shared bytes and the topic a shared
/// name, so a source that reads a thousand records of one topic holds its
/// name once. Stages see it as the WIT `message` record; the host lowers it
/// into the guest's memory straight from these fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was read from (for a stage's output: the topic of the
    /// source message it descends from).
    pub topic: Arc<str>,
    /// The partition of `topic` it was read from.
    pub partition: u32,
    /// Its offset in that partition.
    pub offset: u64,
    /// The partitioning key, if the producer gave one.
    pub key: Option<Bytes>,
    /// The body.
    pub payload: Bytes,
    /// Ordered header (name, value) pairs.
    pub headers: Vec<(String, Vec<u8>)>,
    /// When the producer created it, in µs since the Unix epoch.
    pub timestamp_us: u64,
    /// When the event it records happened, in ms since the Unix epoch:
    /// the producer's time unless the pipeline's source reads it from the
    /// message. Watermarks and event-time timers follow it.
    pub event_time_ms: u64,
    /// Delivery attempt: 1 on first delivery, 2 on the first redelivery, ...
    pub attempt: u32,
}

impl Message {
    /// The message for a record stored in `topic`, on its `attempt`th
    /// delivery. Takes the record's buffers without copying them.
    pub fn from_stored(topic: Arc<str>, r: StoredRecord, attempt: u32) -> Message {
        Message {
            topic,
            partition: r.partition,
            offset: r.offset,
            key: r.key.map(Bytes::from),
            payload: Bytes::from(r.payload),
            headers: r.headers,
            timestamp_us: r.timestamp_us,
            event_time_ms: r.timestamp_us / 1000,
            attempt,
        }
    }

    /// The first delivery of `r`, a record not stored in a topic (read from
    /// a file, made by a generator), as message `offset` of partition 0 of
    /// `topic`. Takes the record's buffers without copying them; its
    /// producer time, if it has none, is 0 (unset).
    pub fn from_record(topic: Arc<str>, offset: u64, r: Record) -> Message {
        Message {
            topic,
            partition: 0,
            offset,
            key: r.key.map(Bytes::from),
            payload: Bytes::from(r.payload),
            headers: r.headers,
            timestamp_us: r.timestamp_us.unwrap_or(0),
            event_time_ms: r.timestamp_us.unwrap_or(0) / 1000,
            attempt: 1,
        }
    }

    /// The record a topic or subject stores for it, with its key, headers,
    /// payload and timestamp. Copies the key and payload only if they are
    /// still shared with another message.
    pub fn into_record(self) -> Record {
        Record {
            key: self.key.map(Vec::from),
            headers: self.headers,
            payload: Vec::from(self.payload),
            timestamp_us: Some(self.timestamp_us),
            id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_read_elsewhere_becomes_a_first_delivery() {
        let r = Record {
            key: Some(b"k".to_vec()),
            headers: vec![("h".into(), b"v".to_vec())],
            payload: b"body".to_vec(),
            timestamp_us: Some(7),
            id: None,
        };
        let msg = Message::from_record("lines".into(), 4, r);
        assert_eq!((&*msg.topic, msg.partition, msg.offset, msg.attempt, msg.timestamp_us), ("lines", 0, 4, 1, 7));
        assert_eq!((msg.key.as_deref(), &msg.payload[..], msg.headers.len()), (Some(&b"k"[..]), &b"body"[..], 1));
        assert_eq!(Message::from_record("lines".into(), 0, Record::new("x")).timestamp_us, 0, "no producer time: unset");
    }

    #[test]
    fn a_stored_record_becomes_a_message_and_back_without_losing_a_field() {
        let stored = StoredRecord {
            partition: 2,
            offset: 9,
            append_timestamp_ms: 11,
            timestamp_us: 10,
            key: Some(b"k".to_vec()),
            headers: vec![("h".into(), b"v".to_vec())],
            payload: b"body".to_vec(),
        };
        let msg = Message::from_stored("t".into(), stored, 3);
        assert_eq!((&*msg.topic, msg.partition, msg.offset, msg.attempt, msg.timestamp_us), ("t", 2, 9, 3, 10));
        let r = msg.into_record();
        assert_eq!(
            r,
            Record {
                key: Some(b"k".to_vec()),
                headers: vec![("h".into(), b"v".to_vec())],
                payload: b"body".to_vec(),
                timestamp_us: Some(10),
                id: None
            }
        );
    }
}
