//! weir-host against bare wasmtime on the `uppercase` example, in the same
//! run: `cargo bench -p weir-host`. Compare `handle_batch/bare` with
//! `handle_batch/weir-host` (target: ≤ 1.5×). The same figures, and more,
//! come from `weir bench host`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use weir_e2e::component;
use weir_host::bench::{BareStage, instantiate_only, messages};
use weir_host::{Limits, Runtime, StageContext};

fn handle_batch(c: &mut Criterion) {
    let path = component("uppercase");
    let wasm = std::fs::read(&path).unwrap();
    let mut g = c.benchmark_group("handle_batch");
    g.measurement_time(Duration::from_secs(3));
    for (size, batch) in [(100, 64), (100, 1), (4096, 64)] {
        let msgs = messages(batch, size);
        g.throughput(Throughput::Elements(batch as u64));
        let mut bare = BareStage::new(&wasm).unwrap();
        g.bench_function(format!("bare/{size}B_x{batch}"), |b| b.iter(|| bare.handle_batch(black_box(&msgs)).unwrap()));
        let runtime = Runtime::new().unwrap();
        let stage = runtime.load(&path).unwrap();
        let mut inst = stage.instantiate(&StageContext::new("bench", "bench", Vec::new(), Limits::default())).unwrap();
        g.bench_function(format!("weir-host/{size}B_x{batch}"), |b| b.iter(|| inst.handle_batch(black_box(&msgs)).unwrap()));
    }
    g.finish();
}

fn instantiate(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let stage = runtime.load(&component("uppercase")).unwrap();
    let ctx = StageContext::new("bench", "bench", Vec::new(), Limits::default());
    let mut g = c.benchmark_group("instantiate");
    g.bench_function("pooled", |b| b.iter(|| instantiate_only(&stage, &ctx).unwrap()));
    g.bench_function("pooled_with_init", |b| b.iter(|| drop(stage.instantiate(&ctx).unwrap())));
    g.finish();
}

criterion_group!(benches, handle_batch, instantiate);
criterion_main!(benches);
