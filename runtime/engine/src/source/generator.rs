//! The generator: `count` messages (or endless) of `size` bytes over `keys`
//! keys, at `rate` per second (or as fast as the pipeline takes them).

use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

use weir_queue::Record;

use super::memory::{Read, spawn_reader};
use crate::config::Generator;
use crate::stats::now_ms;

pub(super) fn spawn(g: Generator) -> Receiver<Read> {
    spawn_reader("weir-generator", move |tx| generate(&g, &tx))
}

fn generate(g: &Generator, tx: &SyncSender<Read>) {
    let started = Instant::now();
    let mut i = 0u64;
    while g.count.is_none_or(|n| i < n) {
        if let Some(rate) = g.rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let read = Read::Record(Record { timestamp_ms: Some(now_ms()), ..g.record(i) });
        if tx.send(read).is_err() {
            return;
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::sync_channel;

    use super::*;

    #[test]
    fn the_generator_makes_distinct_sized_keyed_messages() {
        let (tx, rx) = sync_channel(100);
        generate(&Generator { count: Some(30), size: 20, rate: None, keys: 3 }, &tx);
        drop(tx);
        let recs: Vec<Record> = rx.iter().map(|r| if let Read::Record(r) = r { r } else { panic!() }).collect();
        assert_eq!(recs.len(), 30);
        assert!(recs.iter().all(|r| r.payload.len() == 20));
        assert_eq!(recs.iter().map(|r| &r.payload).collect::<std::collections::HashSet<_>>().len(), 30);
        assert_eq!(recs[4].key.as_deref(), Some(&b"k1"[..]));
    }
}
