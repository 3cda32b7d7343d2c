//! Records as JSON, the one form weir's command line, files and HTTP API
//! use: `payload` (a string when UTF-8, else an array of bytes), optional
//! `key` (the same), `headers` (an object of the same), the producer's
//! time as `timestamp_ms` and `timestamp_us` (the same time, in ms and in
//! µs since the Unix epoch; reading, `timestamp_us` wins) and `id`. A message read from a topic (see [`message`]) adds where it was
//! read: `topic`, `partition` and `offset`.

use crate::{Message, Record};

/// Bytes as JSON: a string when UTF-8, else an array of bytes.
pub fn bytes(b: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(b) {
        Ok(s) => serde_json::Value::String(s.to_owned()),
        Err(_) => serde_json::Value::from(b.to_vec()),
    }
}

/// Bytes from JSON as [`bytes`] writes them (a string, or an array of
/// byte values); `None` for anything else.
pub fn bytes_from_json(v: &serde_json::Value) -> Option<Vec<u8>> {
    match v {
        serde_json::Value::String(s) => Some(s.clone().into_bytes()),
        serde_json::Value::Array(a) => a.iter().map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok())).collect(),
        _ => None,
    }
}

/// Headers as a JSON object of [`bytes`] values.
pub fn headers(headers: &[(String, Vec<u8>)]) -> serde_json::Value {
    headers.iter().map(|(k, v)| (k.clone(), bytes(v))).collect::<serde_json::Map<_, _>>().into()
}

/// A record to publish, as the JSON [`record_from_json`] reads back.
pub fn record_json(r: &Record) -> serde_json::Value {
    let mut v = serde_json::json!({ "payload": bytes(&r.payload), "headers": headers(&r.headers) });
    if let Some(key) = &r.key {
        v["key"] = bytes(key);
    }
    if let Some(t) = r.timestamp_us {
        v["timestamp_ms"] = (t / 1000).into();
        v["timestamp_us"] = t.into();
    }
    if let Some(id) = &r.id {
        v["id"] = id.clone().into();
    }
    v
}

/// A message as one JSON object: `topic`, `partition`, `offset`,
/// `timestamp_ms`, `timestamp_us`, `key` (null when none), `headers` and `payload`, bytes
/// as [`bytes`] writes them. [`record_from_json`] reads it back as a record.
pub fn message(msg: &Message) -> serde_json::Value {
    serde_json::json!({
        "topic": &*msg.topic,
        "partition": msg.partition,
        "offset": msg.offset,
        "timestamp_ms": msg.timestamp_us / 1000,
        "timestamp_us": msg.timestamp_us,
        "key": msg.key.as_deref().map(bytes),
        "headers": headers(&msg.headers),
        "payload": bytes(&msg.payload),
    })
}

/// A message written as JSON, in the form weir writes messages as JSON lines: `payload` (a
/// string or an array of bytes), optional `key` (the same) and `headers` (an
/// object of the same), optional `timestamp_us` or `timestamp_ms` (0 or absent: none) and `id`
/// (a publish with an id seen in the topic's dedupe window is dropped); other
/// fields are ignored.
///
/// # Errors
/// What is wrong with it, for the one who sent it.
pub fn record_from_json(v: &serde_json::Value) -> std::result::Result<Record, String> {
    let bytes = bytes_from_json;
    let Some(obj) = v.as_object() else { return Err("not a JSON object".into()) };
    let Some(payload) = obj.get("payload").and_then(bytes) else {
        return Err("needs a `payload`: a string or an array of bytes".into());
    };
    let key = match obj.get("key") {
        None | Some(serde_json::Value::Null) => None,
        Some(k) => Some(bytes(k).ok_or("`key` must be a string or an array of bytes")?),
    };
    let mut headers = Vec::new();
    if let Some(h) = obj.get("headers") {
        let h = h.as_object().ok_or("`headers` must be an object")?;
        for (k, v) in h {
            headers.push((k.clone(), bytes(v).ok_or_else(|| format!("header {k:?} must be a string or an array of bytes"))?));
        }
    }
    let time = |name: &str| obj.get(name).and_then(serde_json::Value::as_u64).filter(|&t| t > 0);
    let timestamp_us = time("timestamp_us").or_else(|| time("timestamp_ms").map(|ms| ms.saturating_mul(1000)));
    let id = match obj.get("id") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("`id` must be a string".into()),
    };
    Ok(Record { key, headers, payload, timestamp_us, id })
}

/// The records of an HTTP publish body, by its content type: a JSON message
/// or an array of them (`application/json`), one message per line
/// (`application/x-ndjson`, `application/jsonl`), or (any other type) the
/// raw body as one payload, with its key, id and headers taken from the
/// HTTP headers `Weir-Key`, `Weir-Id` and `Weir-Header-NAME` (`headers`:
/// lower-case names and values).
///
/// # Errors
/// What is wrong and where (`message [2]: ...`, `line 3: ...`).
pub fn records_from_body<'a>(
    content_type: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    body: &[u8],
) -> std::result::Result<Vec<Record>, String> {
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let message = |v: &serde_json::Value, at: String| record_from_json(v).map_err(|e| format!("{at}: {e}"));
    match mime.as_str() {
        "application/json" => {
            let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
            match &v {
                serde_json::Value::Array(items) => items.iter().enumerate().map(|(i, m)| message(m, format!("message [{i}]"))).collect(),
                _ => Ok(vec![message(&v, "message".into())?]),
            }
        }
        "application/x-ndjson" | "application/jsonl" => body
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
            .map(|(i, line)| {
                let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| format!("line {}: malformed JSON: {e}", i + 1))?;
                message(&v, format!("line {}", i + 1))
            })
            .collect(),
        _ => {
            let mut r = Record::new(body.to_vec());
            for (name, value) in headers {
                if name == "weir-key" {
                    r.key = Some(value.to_vec());
                } else if name == "weir-id" {
                    r.id = Some(String::from_utf8_lossy(value).into_owned());
                } else if let Some(h) = name.strip_prefix("weir-header-") {
                    r.headers.push((h.to_owned(), value.to_vec()));
                }
            }
            Ok(vec![r])
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::Record;

    #[test]
    fn a_record_survives_json_both_ways() {
        let r = Record {
            key: Some(b"k".to_vec()),
            headers: vec![("h".into(), vec![0xff, 1]), ("t".into(), b"text".to_vec())],
            payload: vec![0, 159, 146, 150],
            timestamp_us: Some(7),
            id: Some("id-1".into()),
        };
        let back = super::record_from_json(&super::record_json(&r)).unwrap();
        assert_eq!((back.key, back.headers, back.payload, back.timestamp_us, back.id), (r.key, r.headers, r.payload, r.timestamp_us, r.id));
    }
}
