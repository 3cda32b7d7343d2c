//! Model-based property test: random sequences of publish, fetch, ack, nak,
//! commit and reopen against a simple in-memory model of the queue.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use proptest::prelude::*;
use weir_queue::{Consumer, ConsumerOptions, DeliveryId, Queue, Record, TopicConfig};

const PARTITIONS: u32 = 3;

#[derive(Debug, Clone)]
enum Op {
    Publish { keys: Vec<Option<u8>>, size: u8 },
    Fetch(u8),
    Ack(usize),
    Nak(usize),
    Commit,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (prop::collection::vec(prop::option::of(0u8..6), 1..6), 0u8..40).prop_map(|(keys, size)| Op::Publish { keys, size }),
        3 => (1u8..8).prop_map(Op::Fetch),
        3 => any::<usize>().prop_map(Op::Ack),
        1 => any::<usize>().prop_map(Op::Nak),
        1 => Just(Op::Commit),
        1 => Just(Op::Reopen),
    ]
}

struct Model {
    /// Payloads per partition, by offset.
    log: Vec<Vec<Vec<u8>>>,
    /// Partition each key went to.
    key_partition: [Option<u32>; 6],
    /// Per partition: offsets acknowledged since the last reopen (below the frontier too).
    acked: Vec<BTreeSet<u64>>,
    /// Per partition: every offset below this is acknowledged.
    frontier: Vec<u64>,
    committed: Vec<u64>,
    /// Delivered, not yet settled: (id, attempt).
    in_flight: Vec<(DeliveryId, u32)>,
    /// Offsets nak'd, with the attempt their redelivery must carry.
    naked: Vec<(DeliveryId, u32)>,
    counter: u64,
}

impl Model {
    fn advance(&mut self, p: usize) {
        while self.acked[p].contains(&self.frontier[p]) {
            self.frontier[p] += 1;
        }
    }
}

fn open(dir: &std::path::Path) -> (Queue, Consumer) {
    let q = Queue::open(dir).unwrap();
    q.ensure_topic("t", &TopicConfig { partitions: PARTITIONS, segment_bytes: 4096, ..TopicConfig::default() }).unwrap();
    let opts = ConsumerOptions { ack_wait: Duration::from_secs(3600), ..Default::default() };
    let c = q.consumer("t", "g", opts).unwrap();
    (q, c)
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let (mut q, mut c) = open(dir.path());
    let n = PARTITIONS as usize;
    let mut m = Model {
        log: vec![Vec::new(); n],
        key_partition: [None; 6],
        acked: vec![BTreeSet::new(); n],
        frontier: vec![0; n],
        committed: vec![0; n],
        in_flight: Vec::new(),
        naked: Vec::new(),
        counter: 0,
    };
    for op in ops {
        match op {
            Op::Publish { keys, size } => {
                let recs: Vec<Record> = keys
                    .iter()
                    .map(|k| {
                        m.counter += 1;
                        let mut r = Record::new(format!("{}:{}", m.counter, "p".repeat(size as usize)));
                        r.key = k.map(|k| vec![k]);
                        r
                    })
                    .collect();
                let positions = q.publish("t", &recs).unwrap();
                for ((r, k), (p, o)) in recs.iter().zip(&keys).zip(positions) {
                    prop_assert_eq!(o, m.log[p as usize].len() as u64, "offsets are dense");
                    m.log[p as usize].push(r.payload.clone());
                    if let Some(k) = k {
                        let kp = m.key_partition[*k as usize].get_or_insert(p);
                        prop_assert_eq!(*kp, p, "a key always maps to one partition");
                    }
                }
            }
            Op::Fetch(max) => {
                for d in c.fetch(max as usize, Duration::ZERO).unwrap() {
                    let id = d.id();
                    let p = id.partition as usize;
                    prop_assert_eq!(&d.record.payload, &m.log[p][id.offset as usize], "payload of {:?}", id);
                    prop_assert!(!m.in_flight.iter().any(|(i, _)| *i == id), "{:?} delivered twice at once", id);
                    prop_assert!(!m.acked[p].contains(&id.offset) && id.offset >= m.frontier[p], "{:?} was acked", id);
                    let want = match m.naked.iter().position(|(i, _)| *i == id) {
                        Some(i) => m.naked.remove(i).1,
                        None => 1,
                    };
                    prop_assert_eq!(d.attempt, want, "attempt of {:?}", id);
                    m.in_flight.push((id, d.attempt));
                }
            }
            Op::Ack(i) if !m.in_flight.is_empty() => {
                let (id, _) = m.in_flight.remove(i % m.in_flight.len());
                c.ack(id);
                m.acked[id.partition as usize].insert(id.offset);
                m.advance(id.partition as usize);
            }
            Op::Nak(i) if !m.in_flight.is_empty() => {
                let (id, attempt) = m.in_flight.remove(i % m.in_flight.len());
                c.nak(id, Duration::ZERO);
                m.naked.push((id, attempt + 1));
            }
            Op::Ack(_) | Op::Nak(_) => {}
            Op::Commit => {
                c.commit().unwrap();
                m.committed.clone_from(&m.frontier);
                prop_assert_eq!(c.committed(), m.committed.clone());
            }
            Op::Reopen => {
                drop(c);
                drop(q);
                (q, c) = open(dir.path());
                prop_assert_eq!(c.committed(), m.committed.clone(), "committed offsets survive a reopen");
                // Uncommitted progress is forgotten: everything from the
                // committed offset on is delivered again, as a first attempt.
                m.frontier.clone_from(&m.committed);
                for p in 0..n {
                    let committed = m.committed[p];
                    m.acked[p].retain(|&o| o < committed);
                }
                m.in_flight.clear();
                m.naked.clear();
            }
        }
    }
    // Drain: every message from the frontier on is delivered once more and settles.
    let mut seen = HashSet::new();
    for (id, _) in m.in_flight.drain(..) {
        c.ack(id);
        m.acked[id.partition as usize].insert(id.offset);
    }
    loop {
        let batch = c.fetch(100, Duration::ZERO).unwrap();
        if batch.is_empty() {
            break;
        }
        for d in batch {
            prop_assert!(seen.insert(d.id()), "{:?} delivered twice while draining", d.id());
            c.ack(d.id());
            m.acked[d.record.partition as usize].insert(d.record.offset);
        }
    }
    for p in 0..n {
        m.advance(p);
        prop_assert_eq!(m.frontier[p], m.log[p].len() as u64, "partition {} fully delivered", p);
    }
    prop_assert!(c.is_settled());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn queue_matches_model(ops in prop::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
