//! Micro-benchmarks of the queue core: append, read, index lookup.
//! `cargo bench -p weir-queue`. End-to-end figures: `weir bench queue`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use weir_queue::{Fsync, Queue, Record, TopicConfig};

const SIZE: usize = 100;

fn queue(fsync: Fsync) -> (tempfile::TempDir, Queue) {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path()).unwrap();
    q.create_topic("t", &TopicConfig { fsync, ..TopicConfig::default() }).unwrap();
    (dir, q)
}

fn batch(n: usize) -> Vec<Record> {
    (0..n).map(|_| Record::new(vec![b'x'; SIZE])).collect()
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    for n in [1, 100, 1000] {
        let (_dir, q) = queue(Fsync::Never);
        let records = batch(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("batch_{n}"), |b| b.iter(|| q.publish("t", black_box(&records)).unwrap()));
    }
    g.finish();
}

fn read(c: &mut Criterion) {
    let (_dir, q) = queue(Fsync::Never);
    for _ in 0..200 {
        q.publish("t", &batch(1000)).unwrap();
    }
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Elements(1000));
    let mut at = 0u64;
    g.bench_function("sequential_1000", |b| {
        b.iter(|| {
            let recs = q.read("t", 0, at, 1000).unwrap();
            at = (at + 1000) % 199_000;
            black_box(recs)
        })
    });
    g.throughput(Throughput::Elements(1));
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    g.bench_function("index_lookup_random_1", |b| {
        b.iter_batched(
            || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % 200_000
            },
            |offset| black_box(q.read("t", 0, offset, 1).unwrap()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = append, read
}
criterion_main!(benches);
