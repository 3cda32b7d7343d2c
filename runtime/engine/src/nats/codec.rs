//! How a weir message travels as a NATS message: its key in the `Weir-Key`
//! header, its headers as NATS headers (one line each), and the size NATS
//! counts against `max_payload`. Shared by the JetStream source and the sinks.

use async_nats::jetstream;
use async_nats::{HeaderMap, Subject};
use weir_queue::Message;
use weir_queue::Record;

/// The header that carries a message's key (NATS messages have none of their own).
pub const KEY_HEADER: &str = "Weir-Key";

/// Room left for the `Nats-Msg-Id` header an output or dead letter may carry.
pub(super) const MSG_ID_ROOM: usize = 1024;

/// The bytes NATS counts against `max_payload` for a message of these parts
/// as [`to_nats`] encodes it, plus room for its message id.
pub(crate) fn wire_len(key: Option<&[u8]>, headers: &[(String, Vec<u8>)], payload_len: usize) -> usize {
    let header = |name: &str, v: &[u8]| name.len() + 2 + one_line(v).len() + 2;
    let block =
        b"NATS/1.0\r\n\r\n".len() + headers.iter().map(|(k, v)| header(k, v)).sum::<usize>() + key.map_or(0, |k| header(KEY_HEADER, k));
    block + MSG_ID_ROOM + payload_len
}

/// A header value as NATS carries it: text on one line, invalid UTF-8
/// replaced, line breaks written `\r` and `\n`. Borrows when nothing changes,
/// so sizing a message ([`wire_len`]) costs no copy in the common case.
pub(super) fn one_line(v: &[u8]) -> std::borrow::Cow<'_, str> {
    match String::from_utf8_lossy(v) {
        text if text.contains(['\r', '\n']) => text.replace('\r', "\\r").replace('\n', "\\n").into(),
        text => text,
    }
}

/// A record as NATS headers and payload; its key travels in [`KEY_HEADER`].
/// Header values are text on one line: invalid UTF-8 is replaced and line
/// breaks are written `\n` (a dead letter's reason may span lines). A header
/// whose name NATS cannot carry is dropped, with a warning.
pub fn to_nats(r: Record) -> (HeaderMap, bytes::Bytes) {
    let mut headers = HeaderMap::new();
    for (k, v) in &r.headers {
        match async_nats::HeaderName::try_from(k.as_str()) {
            Ok(name) => headers.append(name, one_line(v).into_owned()),
            Err(e) => tracing::warn!(header = %k, error = %e, "header dropped: NATS cannot carry its name"),
        }
    }
    if let Some(key) = &r.key {
        headers.insert(KEY_HEADER, one_line(key).into_owned());
    }
    (headers, r.payload.into())
}

/// A message's headers, as weir keeps them.
pub type Headers = Vec<(String, Vec<u8>)>;

/// Records to publish, each with its `Nats-Msg-Id` if it has one.
pub(crate) type IdRecords = Vec<(Option<String>, Record)>;

/// A NATS message's headers as weir headers, taking out the key.
pub fn from_nats_headers(headers: Option<&HeaderMap>) -> (Option<Vec<u8>>, Headers) {
    let mut key = None;
    let mut out = Vec::new();
    for (name, values) in headers.into_iter().flat_map(HeaderMap::iter) {
        let name: &str = name.as_ref();
        for v in values {
            if name == KEY_HEADER {
                key = Some(v.as_str().as_bytes().to_vec());
            } else {
                out.push((name.to_owned(), v.as_str().as_bytes().to_vec()));
            }
        }
    }
    (key, out)
}

/// A JetStream delivery as the message a stage sees, and the subject to
/// acknowledge it on; `None` (logged) for a message without delivery info.
pub fn jetstream_message(m: jetstream::Message) -> Option<(Message, Subject)> {
    let Ok(info) = m.info() else {
        tracing::warn!(subject = %m.subject, "a JetStream message without delivery info; skipped");
        return None;
    };
    let (offset, attempt) = (info.stream_sequence, info.delivered.clamp(1, i64::from(u32::MAX)) as u32);
    let published_us = (info.published.unix_timestamp_nanos() / 1_000).max(0) as u64;
    let msg = m.message;
    let (key, headers) = from_nats_headers(msg.headers.as_ref());
    let message = Message {
        topic: msg.subject.as_str().into(),
        partition: 0,
        offset,
        key: key.map(Into::into),
        payload: msg.payload,
        headers,
        timestamp_us: published_us,
        event_time_ms: published_us / 1000,
        attempt,
    };
    Some((message, msg.reply?))
}
