//! The packed `handle-batch` (`weir:pipeline/packed@0.2.1`): the host
//! hands a batch over as three flat lists instead of a `list<message>`, so
//! it calls into the guest's allocator three times per batch rather than
//! a few times per message; the results go back the same way. Stages see
//! the same [`Message`]s and return the same results either way.

use super::bindings::weir::pipeline::types::{PackedBatch, PackedResults};
use crate::{Failure, Message, Output};

/// The numbers a batch carries per message (see `packed-batch`).
const MESSAGE_WORDS: usize = 9;
/// "None" for a key length in a batch, a topic or key length in results.
const NO_KEY: u64 = u64::MAX;
const NONE32: u32 = u32::MAX;

/// The batch's messages. The host packed it, so every length is in range
/// and every string is UTF-8; a batch that is not is a host bug, and
/// trapping on it (a slice index panics) fails the call safely.
pub fn unpack(batch: PackedBatch) -> Vec<Message> {
    let data = &batch.data[..];
    let mut at = 0usize;
    let mut take = |n: u64| {
        let part = &data[at..at + n as usize];
        at += n as usize;
        part
    };
    let mut lens = batch.header_lens.chunks_exact(2);
    batch
        .messages
        .chunks_exact(MESSAGE_WORDS)
        .map(|m| {
            let [topic_len, partition, offset, key_len, payload_len, headers, timestamp_ms, event_time_ms, attempt] =
                m.try_into().expect("chunks of MESSAGE_WORDS");
            let topic = text(take(topic_len));
            let key = (key_len != NO_KEY).then(|| take(key_len).to_vec());
            let payload = take(payload_len).to_vec();
            let headers = (0..headers)
                .map(|_| {
                    let nv = lens.next().expect("the host sends two lengths per header");
                    (text(take(u64::from(nv[0]))), take(u64::from(nv[1])).to_vec())
                })
                .collect();
            Message {
                topic,
                partition: partition as u32,
                offset,
                key,
                payload,
                headers,
                timestamp_ms,
                event_time_ms,
                attempt: attempt as u32,
            }
        })
        .collect()
}

fn text(bytes: &[u8]) -> String {
    std::str::from_utf8(bytes).expect("the host sends UTF-8 strings").to_owned()
}

/// The stage's results, packed in the order the WIT gives.
pub fn pack(results: Vec<Result<Vec<Output>, Failure>>) -> PackedResults {
    let (mut size, mut outputs) = (0, 0);
    for r in &results {
        match r {
            Ok(outs) => {
                outputs += outs.len();
                size += outs
                    .iter()
                    .map(|o| {
                        o.topic.as_ref().map_or(0, String::len)
                            + o.key.as_ref().map_or(0, Vec::len)
                            + o.payload.len()
                            + o.headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>()
                    })
                    .sum::<usize>();
            }
            Err(f) => size += f.reason().len(),
        }
    }
    let mut packed = PackedResults {
        data: Vec::with_capacity(size),
        results: Vec::with_capacity(2 * results.len()),
        outputs: Vec::with_capacity(4 * outputs),
        header_lens: Vec::new(),
    };
    for result in results {
        let (outcome, count) = match result {
            Ok(outputs) => {
                let count = len32(outputs.len());
                for o in outputs {
                    let mut put = |bytes: &[u8]| {
                        packed.data.extend_from_slice(bytes);
                        len32(bytes.len())
                    };
                    let topic_len = o.topic.as_deref().map_or(NONE32, |t| put(t.as_bytes()));
                    let key_len = o.key.as_deref().map_or(NONE32, &mut put);
                    let payload_len = put(&o.payload);
                    for (name, value) in &o.headers {
                        let lens = [put(name.as_bytes()), put(value)];
                        packed.header_lens.extend(lens);
                    }
                    packed.outputs.extend([topic_len, key_len, payload_len, len32(o.headers.len())]);
                }
                (0, count)
            }
            Err(f) => {
                let outcome = if matches!(f, Failure::Retry(_)) { 1 } else { 2 };
                packed.data.extend_from_slice(f.reason().as_bytes());
                (outcome, len32(f.reason().len()))
            }
        };
        packed.results.extend([outcome, count]);
    }
    packed
}

/// Lengths in a 32-bit guest always fit (and never reach `NONE32`: no
/// object fills the whole address space).
fn len32(n: usize) -> u32 {
    u32::try_from(n).expect("a wasm32 length fits in u32")
}
