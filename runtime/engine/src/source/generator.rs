//! The generator: `count` messages (or endless) of `size` bytes over `keys`
//! keys, at `rate` per second (or as fast as the pipeline takes them).

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use weir_queue::Record;

use super::memory::{Read, Reads, spawn_reader};
use crate::config::Generator;
use crate::stats::now_us;

pub(super) fn spawn(g: Generator) -> Receiver<Vec<Read>> {
    spawn_reader("weir-generator", move |tx| generate(&g, tx))
}

fn generate(g: &Generator, tx: &mut Reads) {
    let (started, started_us) = (Instant::now(), now_us());
    let mut i = 0u64;
    while g.count.is_none_or(|n| i < n) {
        // At a set rate a message's producer time is when it was due, not
        // when this thread got to it: a stall that holds the generator up
        // (the machine's, or the pipeline's back-pressure) counts in the
        // latency of every message it delayed, as it would for a producer
        // outside the process. Stamped when made, the messages due during
        // the stall would look fresh, and the tail would hide it.
        let stamp = match g.rate {
            Some(rate) => {
                let after_us = (u128::from(i) * 1_000_000 / u128::from(rate)) as u64;
                if let Some(wait) = (started + Duration::from_micros(after_us)).checked_duration_since(Instant::now()) {
                    if !tx.flush() {
                        return;
                    }
                    std::thread::sleep(wait);
                }
                started_us + after_us
            }
            None => now_us(),
        };
        let read = Read::Record(Record { timestamp_us: Some(stamp), ..g.record(i) });
        if !tx.send(read) {
            return;
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_a_rate_each_message_is_stamped_with_when_it_was_due() {
        let rx = spawn(Generator { count: Some(300), size: 8, rate: Some(10_000), keys: 0, key_size: 0, input: None });
        let stamps: Vec<u64> =
            rx.iter().flatten().map(|r| if let Read::Record(r) = r { r.timestamp_us.unwrap() } else { panic!() }).collect();
        assert_eq!(stamps.len(), 300);
        // 100 µs apart exactly, however late the thread got to each.
        assert!(stamps.windows(2).all(|w| w[1] - w[0] == 100), "{stamps:?}");
    }

    #[test]
    fn the_generator_makes_distinct_sized_keyed_messages() {
        let rx = spawn(Generator { count: Some(100), size: 20, rate: None, keys: 3, key_size: 0, input: None });
        let recs: Vec<Record> = rx.iter().flatten().map(|r| if let Read::Record(r) = r { r } else { panic!() }).collect();
        assert_eq!(recs.len(), 100, "every message, the last chunk not full");
        assert!(recs.iter().all(|r| r.payload.len() == 20));
        assert_eq!(recs.iter().map(|r| &r.payload).collect::<std::collections::HashSet<_>>().len(), 100);
        assert_eq!(recs[4].key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(recs[3].payload, b"000000000003pqrstuvw", "the index, then letter (i + j) % 26 at byte j");
        let g = Generator { count: None, size: 16, rate: None, keys: 0, key_size: 0, input: None };
        assert_eq!(g.record(1234567890123).payload, b"1234567890123wxy", "an index past 12 digits is written whole");
        assert_eq!(g.record(0).payload, b"000000000000mnop");
        assert_eq!(g.record(u64::MAX).payload, b"1844674407370955", "cut to size");
        let long = Generator { count: None, size: 80, rate: None, keys: 0, key_size: 0, input: None }.record(25).payload;
        assert!(long[12..].iter().enumerate().all(|(k, &b)| b == b'a' + ((25 + 12 + k) % 26) as u8), "{}", String::from_utf8_lossy(&long));
        let padded = Generator { count: None, size: 0, rate: None, keys: 100, key_size: 16, input: None };
        assert_eq!(padded.record(142).key.as_deref(), Some(&b"k000000000000042"[..]), "zero-padded to key_size");
        assert_eq!(Generator { key_size: 2, ..padded }.record(142).key.as_deref(), Some(&b"k42"[..]), "never cut");
        assert_eq!(
            Generator { count: None, size: 5, rate: None, keys: 0, key_size: 0, input: None }.record(7).payload,
            b"00000",
            "cut to size"
        );
    }
}
