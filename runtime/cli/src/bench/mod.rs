//! `weir bench`: measured workloads, reported as figures and ratios.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use weir_queue::{ConsumerOptions, Fsync, Queue, Record, TopicConfig};

use crate::topics::FsyncArg;

mod http;
mod nats;
mod pipeline;

/// `weir bench PIPELINE.toml [...]`, or one of the named benchmarks.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    pipeline: pipeline::PipelineArgs,
}

#[derive(Subcommand)]
pub(crate) enum BenchCommand {
    /// Publish N messages, then consume and acknowledge them, on the embedded queue.
    Queue(QueueArgs),
    /// Per-message cost of a stage through weir-host against bare wasmtime.
    Host(HostArgs),
    /// Drain a backlog of N messages through one stage; report rate and peak memory.
    Backlog(BacklogArgs),
    /// Publish through the HTTP API, against the same batches published in process.
    Http(http::HttpArgs),
}

#[derive(Args)]
pub(crate) struct BacklogArgs {
    /// Messages in the backlog.
    #[arg(long, default_value_t = 10_000_000)]
    messages: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// The stage component [default: the uppercase example].
    #[arg(long)]
    component: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub(crate) struct HostArgs {
    /// The stage component [default: the uppercase example].
    #[arg(long)]
    component: Option<std::path::PathBuf>,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Messages per call.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Seconds to measure each side.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// The hostile fixture, run beside the stage [default: the examples build's].
    #[arg(long)]
    hostile: Option<std::path::PathBuf>,
}

fn bench_host(args: &HostArgs) -> anyhow::Result<()> {
    let path = args.component.clone().unwrap_or_else(|| "target/wasm32-wasip2/release/uppercase.wasm".into());
    anyhow::ensure!(path.is_file(), "no component at {} (build the examples first; see the README)", path.display());
    let hostile = args.hostile.clone().unwrap_or_else(|| "target/wasm32-wasip2/release/hostile.wasm".into());
    let hostile = hostile.is_file().then_some(hostile);
    let r = weir_host::bench::measure(&path, hostile.as_deref(), args.size, args.batch, Duration::from_secs_f64(args.seconds))?;
    println!("{}: batches of {} messages of {} bytes", path.display(), args.batch, args.size);
    println!("{:<48} {:>12}", "bare wasmtime, ns/message", format!("{:.0}", r.bare_ns_per_message));
    println!("{:<48} {:>12}", "weir-host with limits, ns/message", format!("{:.0}", r.host_ns_per_message));
    println!("{:<48} {:>12}", "ratio weir-host / bare", format!("{:.2}", r.host_ns_per_message / r.bare_ns_per_message));
    if hostile.is_some() {
        println!("{:<48} {:>12}", "weir-host beside a hostile guest, ns/message", format!("{:.0}", r.beside_hostile_ns_per_message));
        let ratio = r.beside_hostile_ns_per_message / r.host_ns_per_message;
        println!("{:<48} {:>12}", "ratio beside hostile / alone", format!("{ratio:.2}"));
    }
    println!("{:<48} {:>12}", "instantiate (pooled), µs", format!("{:.1}", r.instantiate_us));
    println!("{:<48} {:>12}", "instantiate + init (pooled), µs", format!("{:.1}", r.instantiate_init_us));
    println!("{:<48} {:>12}", "cold start, compile cache warm, ms", format!("{:.1}", r.cold_start_cached_ms));
    println!("{:<48} {:>12}", "cold start, compiling, ms", format!("{:.1}", r.cold_start_compile_ms));
    Ok(())
}

#[derive(Args, Clone)]
pub(crate) struct QueueArgs {
    /// Messages to publish and consume.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Durability policy of the benchmark topic.
    #[arg(long, value_enum, default_value_t = FsyncArg::Interval)]
    fsync: FsyncArg,
    /// Messages per publish call.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 2)]
    producers: usize,
    /// Give every message an id (idempotent publish), as dead letters, the
    /// HTTP API and the Python producer do.
    #[arg(long)]
    ids: bool,
    /// Also run the same workload on NATS JetStream (file storage), or on a
    /// weir broker process over its HTTP API (`weir serve`), and print the
    /// ratios; may be given twice.
    #[arg(long, value_enum)]
    compare: Vec<Compare>,
    /// NATS server for `--compare nats`.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// The `weir serve` for `--compare http` (its topic `bench` is made
    /// again with `--partitions` and `--fsync`).
    #[arg(long, default_value = "http://127.0.0.1:7878")]
    http_url: String,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum Compare {
    Nats,
    Http,
}

/// One system's figures for the workload.
#[derive(Serialize)]
pub(crate) struct QueueResult {
    system: String,
    messages: u64,
    publish_msgs_per_s: f64,
    publish_mb_per_s: f64,
    consume_msgs_per_s: f64,
    /// Publish call latency (submit to durable acknowledgement), microseconds.
    publish_p50_us: u64,
    publish_p99_us: u64,
    publish_p999_us: u64,
    /// Messages covered by one fsync (fsync = always), if known.
    messages_per_fsync: Option<f64>,
}

impl QueueResult {
    /// Figures for `args.messages` published in `publish_secs` and consumed in `consume_secs`.
    pub(crate) fn new(
        system: &str,
        args: &QueueArgs,
        publish_secs: f64,
        consume_secs: f64,
        publish_latency: &Histogram<u64>,
        messages_per_fsync: Option<f64>,
    ) -> Self {
        let n = args.messages as f64;
        QueueResult {
            system: system.into(),
            messages: args.messages,
            publish_msgs_per_s: n / publish_secs,
            publish_mb_per_s: n * args.size as f64 / publish_secs / 1e6,
            consume_msgs_per_s: n / consume_secs,
            publish_p50_us: publish_latency.value_at_quantile(0.5),
            publish_p99_us: publish_latency.value_at_quantile(0.99),
            publish_p999_us: publish_latency.value_at_quantile(0.999),
            messages_per_fsync,
        }
    }
}

pub(crate) fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let Some(cmd) = args.command else { return pipeline::bench(&args.pipeline) };
    match cmd {
        BenchCommand::Queue(args) => bench_queue(&args),
        BenchCommand::Host(args) => bench_host(&args),
        BenchCommand::Backlog(args) => bench_backlog(&args),
        BenchCommand::Http(args) => http::bench_http(&args),
    }
}

fn bench_backlog(args: &BacklogArgs) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let component = args.component.clone().unwrap_or_else(|| "target/wasm32-wasip2/release/uppercase.wasm".into());
    anyhow::ensure!(component.is_file(), "no component at {} (build the examples first; see the README)", component.display());
    let component = std::fs::canonicalize(&component)?;
    let dir = tempfile::tempdir()?;
    let queue = Queue::open(dir.path().join("data"))?;
    queue.create_topic("backlog", &TopicConfig { fsync: Fsync::Never, ..TopicConfig::default() })?;
    let started = Instant::now();
    let batch: Vec<Record> = (0..1000).map(|i| Record::new(vec![b'a' + (i % 26) as u8; args.size])).collect();
    let mut published = 0;
    while published < args.messages {
        let n = (args.messages - published).min(batch.len() as u64) as usize;
        queue.publish("backlog", &batch[..n])?;
        published += n as u64;
        if published % 1_000_000 == 0 {
            eprintln!("  published {published} of {}", args.messages);
        }
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let (rss_before, _) = weir_engine::resident_memory();

    let toml = format!(
        "[pipeline]\nname = \"backlog\"\n[source]\ntype = \"queue\"\ntopic = \"backlog\"\n\
         [[stage]]\nname = \"stage\"\nmodule = {module:?}\nbatch_size = 256\n\
         [[sink]]\ntype = \"queue\"\ntopic = \"out\"\n[[topic]]\nname = \"out\"\nfsync = \"interval\"\n",
        module = component.display().to_string()
    );
    let pipeline = weir_engine::config::compile(&dir.path().join("backlog.toml"), &toml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let engine = weir_engine::Engine::for_pipeline(&pipeline)?;
    // Sample the resident set while draining: the figure to watch is its
    // peak during the drain, after the backlog was written.
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(weir_engine::resident_memory().0, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let started = Instant::now();
    let stats = engine.run(&pipeline, &queue, &weir_engine::RunOptions { drain: true, ..Default::default() })?;
    let drain_secs = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    sampler.join().ok();
    anyhow::ensure!(stats.received() >= args.messages, "drained only {} of {} messages", stats.received(), args.messages);
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    println!("backlog of {} messages of {} bytes through {}", args.messages, args.size, component.display());
    println!("{:<40} {:>12.0}", "publish, msg/s", args.messages as f64 / publish_secs);
    println!("{:<40} {:>12.0}", "drain through the stage, msg/s", args.messages as f64 / drain_secs);
    println!("{:<40} {:>12.1}", "RSS before the drain, MiB", mb(rss_before));
    println!("{:<40} {:>12.1}", "peak RSS, MiB (target ≤ 150)", mb(peak.load(Ordering::Relaxed).max(weir_engine::resident_memory().1)));
    Ok(())
}

fn bench_queue(args: &QueueArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.messages > 0 && args.batch > 0 && args.producers > 0, "--messages, --batch and --producers must be > 0");
    let mut results = vec![embedded(args)?];
    for compare in &args.compare {
        results.push(match compare {
            Compare::Nats => nats::jetstream(args)?,
            Compare::Http => http::broker(args)?,
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    println!(
        "{} messages of {} bytes{}, {} partition(s), batches of {}, {} producer(s), fsync {}",
        args.messages,
        args.size,
        if args.ids { " with ids" } else { "" },
        args.partitions,
        args.batch,
        args.producers,
        args.fsync.fsync(Fsync::DEFAULT_INTERVAL_MS)
    );
    println!(
        "{:<16} {:>14} {:>10} {:>16} {:>10} {:>10} {:>10} {:>12}",
        "system", "publish msg/s", "MB/s", "consume+ack msg/s", "p50 µs", "p99 µs", "p99.9 µs", "msgs/fsync"
    );
    for r in &results {
        println!(
            "{:<16} {:>14.0} {:>10.1} {:>16.0} {:>10} {:>10} {:>10} {:>12}",
            r.system,
            r.publish_msgs_per_s,
            r.publish_mb_per_s,
            r.consume_msgs_per_s,
            r.publish_p50_us,
            r.publish_p99_us,
            r.publish_p999_us,
            r.messages_per_fsync.map_or("-".into(), |m| format!("{m:.0}"))
        );
    }
    let (weir, others) = results.split_first().expect("weir's own figures come first");
    for other in others {
        println!(
            "weir / {}: publish {:.1}x, consume+ack {:.1}x",
            other.system,
            weir.publish_msgs_per_s / other.publish_msgs_per_s,
            weir.consume_msgs_per_s / other.consume_msgs_per_s
        );
    }
    Ok(())
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Split `total` messages into per-producer counts.
pub(crate) fn shares(total: u64, producers: usize) -> Vec<u64> {
    let n = producers as u64;
    (0..n).map(|i| total / n + u64::from(i < total % n)).collect()
}

fn embedded(args: &QueueArgs) -> anyhow::Result<QueueResult> {
    let dir = tempfile::Builder::new().prefix("weir-bench-").tempdir().context("creating a temporary data directory")?;
    let queue = Queue::open(dir.path())?;
    let fsync = args.fsync.fsync(Fsync::DEFAULT_INTERVAL_MS);
    queue.create_topic("bench", &TopicConfig { partitions: args.partitions, fsync, ..TopicConfig::default() })?;
    let payload = Arc::new(vec![b'x'; args.size]);

    let started = Instant::now();
    let handles: Vec<_> = shares(args.messages, args.producers)
        .into_iter()
        .enumerate()
        .map(|(p, count)| {
            let queue = queue.clone();
            let payload = payload.clone();
            let (batch, ids) = (args.batch, args.ids);
            std::thread::spawn(move || -> anyhow::Result<Histogram<u64>> {
                let mut hist = histogram();
                let mut sent = 0u64;
                let mut records = Vec::with_capacity(batch);
                while sent < count {
                    let n = (batch as u64).min(count - sent);
                    records.clear();
                    // Keys spread the load over partitions.
                    records.extend((0..n).map(|i| Record {
                        key: Some(((sent + i) as u32 ^ p as u32).to_le_bytes().to_vec()),
                        payload: payload.to_vec(),
                        id: ids.then(|| format!("{p}/{}", sent + i)),
                        ..Record::default()
                    }));
                    let t = Instant::now();
                    queue.publish("bench", &records)?;
                    hist.record(t.elapsed().as_micros().max(1) as u64)?;
                    sent += n;
                }
                Ok(hist)
            })
        })
        .collect();
    let mut hist = histogram();
    for h in handles {
        hist.add(h.join().expect("producer thread panicked")?)?;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let fsyncs = queue.topic_info("bench")?.fsyncs;

    let started = Instant::now();
    let mut consumer = queue.consumer("bench", "bench", ConsumerOptions { max_ack_pending: 100_000, ..ConsumerOptions::default() })?;
    let mut consumed = 0u64;
    while consumed < args.messages {
        let batch = consumer.fetch(10_000, Duration::from_millis(100))?;
        anyhow::ensure!(!batch.is_empty(), "consumer stalled after {consumed} of {} messages", args.messages);
        for d in &batch {
            consumer.ack(d.id());
        }
        consumed += batch.len() as u64;
        consumer.commit()?;
    }
    let consume_secs = started.elapsed().as_secs_f64();
    let per_fsync = (args.fsync == FsyncArg::Always && fsyncs > 0).then(|| args.messages as f64 / fsyncs as f64);
    Ok(QueueResult::new("weir", args, publish_secs, consume_secs, &hist, per_fsync))
}
