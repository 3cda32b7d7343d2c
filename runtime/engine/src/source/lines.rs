//! Standard input and files: one message per line, its bytes as the
//! payload, or (with `json = true`) a JSON object as `weir consume --format
//! json` writes it. A line that is not such an object is dead-lettered.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::mpsc::Receiver;

use weir_queue::Record;

use super::memory::{Read, Reads, spawn_reader};
use crate::stats::now_us;

pub(super) fn read_stdin(json: bool) -> Receiver<Vec<Read>> {
    spawn_reader("weir-stdin", move |tx| read_lines(BufReader::with_capacity(1 << 16, std::io::stdin()), json, tx))
}

/// Open `path` now, so a missing file fails the run before it starts.
pub(super) fn read_file(path: &Path, json: bool) -> std::io::Result<Receiver<Vec<Read>>> {
    let file = BufReader::with_capacity(1 << 16, std::fs::File::open(path)?);
    Ok(spawn_reader("weir-file", move |tx| read_lines(file, json, tx)))
}

fn read_lines(mut input: BufReader<impl std::io::Read>, json: bool, tx: &mut Reads) {
    let mut line = Vec::new();
    loop {
        // The next read may block (a terminal, a pipe): send what is read first.
        if input.buffer().is_empty() && !tx.flush() {
            return;
        }
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "reading the source failed; treating it as ended");
                return;
            }
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        let read =
            if json { parse_json(&line) } else { Read::Record(Record { timestamp_us: Some(now_us()), ..Record::new(line.clone()) }) };
        if !tx.send(read) {
            return;
        }
    }
}

/// A JSON line in the form `weir consume --format json` writes (see
/// [`weir_queue::json::record_from_json`]).
fn parse_json(line: &[u8]) -> Read {
    let parsed = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}")).and_then(|v| weir_queue::json::record_from_json(&v));
    match parsed {
        Ok(r) => Read::Record(Record { timestamp_us: r.timestamp_us.or(Some(now_us())), ..r }),
        Err(reason) => Read::Bad { line: line.to_vec(), reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_parse_like_weir_consume_writes_them() {
        let Read::Record(r) = parse_json(br#"{"payload":"hi","key":"k","headers":{"a":"b","c":[1,2]},"timestamp_ms":5}"#) else {
            panic!("should parse")
        };
        assert_eq!((r.payload.as_slice(), r.key.as_deref(), r.timestamp_us), (&b"hi"[..], Some(&b"k"[..]), Some(5000)));
        assert_eq!(r.headers, [("a".to_string(), b"b".to_vec()), ("c".to_string(), vec![1, 2])]);
        for (line, want) in [(&b"nope"[..], "not JSON"), (b"[1]", "not a JSON object"), (br#"{"key":"k"}"#, "needs a `payload`")] {
            match parse_json(line) {
                Read::Bad { reason, .. } => assert!(reason.contains(want), "{reason}"),
                Read::Record(_) => panic!("{} should be refused", String::from_utf8_lossy(line)),
            }
        }
    }
}
