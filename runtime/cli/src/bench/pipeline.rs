//! `weir bench PIPELINE.toml`: the pipeline fed by a generator in a scratch
//! data directory, watched over time; a per-stage table, a JSON report with
//! the time series, and an SVG chart of throughput and p99 per stage.
//!
//! `--source queue` and `--source nats` first fill an embedded-queue topic or
//! a JetStream stream with the same generated messages, then run the
//! pipeline from it (queue sinks going to the same kind of place), so the
//! two transports can be compared on one pipeline.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use plotters::prelude::*;
use serde::Serialize;
use weir_engine::config::{DeadLetterTo, Generator, JetStreamSource, NatsConnection, NatsSource, Sink, Source, StreamSpec};
use weir_engine::{LatencySummary, PipelineStats, Report, RunOptions};

use crate::sampler::{Point, Sampler};

#[derive(Args)]
pub(crate) struct PipelineArgs {
    /// The pipeline to measure; its source is replaced by a generator.
    pipeline: Option<PathBuf>,
    /// Messages to generate.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Messages per second [default: as fast as the pipeline takes them].
    #[arg(long)]
    rate: Option<u64>,
    /// Distinct message keys (0: no key).
    #[arg(long, default_value_t = 0)]
    keys: u64,
    /// Replay the messages of this file, cycled to `--messages`, instead
    /// of made-up ones (so a pipeline that parses JSON is measured on JSON).
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// How `--input` holds messages: `text` (a line is a payload) or `json`
    /// (a line is a message as `weir consume --format json` writes it).
    #[arg(long, value_enum, default_value_t = InputFormat::Text, requires = "input")]
    input_format: InputFormat,
    /// Where the pipeline reads the generated messages from.
    #[arg(long, value_enum, default_value_t = BenchSource::Generator)]
    source: BenchSource,
    /// The fsync policy of every topic the pipeline writes (its queue sinks
    /// and dead-letter topic): `always`, `interval` (100 ms) or `never`
    /// [default: as the pipeline file says].
    #[arg(long, value_enum)]
    fsync: Option<crate::topics::FsyncArg>,
    /// Threads the stages run on, as `[pipeline] stage_threads` (0: the
    /// stages and sinks on the source's thread) [default: as the pipeline
    /// file says].
    #[arg(long, value_parser = clap::value_parser!(u16).range(0..=1000))]
    stage_threads: Option<u16>,
    /// NATS server for `--source nats`.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Where to write the JSON report [default: weir-bench.json in a new
    /// directory under the system's temporary directory, printed at the end].
    #[arg(long)]
    report: Option<PathBuf>,
    /// Where to draw the chart (SVG).
    /// [default: weir-bench.svg beside the report]
    #[arg(long)]
    chart: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum InputFormat {
    /// A line is a payload.
    Text,
    /// A line is a message in weir's JSON form.
    Json,
}

/// The messages of `--input`.
fn read_input(path: &std::path::Path, format: InputFormat) -> anyhow::Result<Vec<weir_queue::Record>> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut records = Vec::new();
    for (n, line) in text.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        records.push(match format {
            InputFormat::Text => weir_queue::Record::new(line.to_vec()),
            InputFormat::Json => serde_json::from_slice(line)
                .map_err(|e| e.to_string())
                .and_then(|v| weir_queue::json::record_from_json(&v))
                .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?,
        });
    }
    anyhow::ensure!(!records.is_empty(), "{} holds no messages", path.display());
    Ok(records)
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
enum BenchSource {
    /// Straight from memory: the stages and sinks alone.
    Generator,
    /// A topic of the embedded queue, filled first; queue sinks to the scratch queue.
    Queue,
    /// A JetStream stream, filled first; queue sinks and dead letters to JetStream too.
    Nats,
}

#[derive(Serialize)]
struct BenchReport {
    messages: u64,
    size: usize,
    source: BenchSource,
    /// The threads the stages ran on (0: on the source's thread).
    stage_threads: usize,
    /// Seconds spent filling the topic or stream before the run.
    fill_s: f64,
    /// The machine alone, measured before the run: how long a thread
    /// blocked on a channel takes to run again once another thread sends
    /// to it (what every hand-off between a pipeline's threads waits for),
    /// µs. The floor under the pipeline's end-to-end tail.
    thread_wakeup: LatencySummary,
    /// The scratch directory's disk on its own, measured before the run:
    /// appending 4 KiB and `fdatasync` (what a queue topic with `fsync =
    /// "always"` waits for per batch), µs.
    disk_fdatasync: LatencySummary,
    /// The fsyncs that made the queue sinks' outputs durable in the run
    /// (each covering whatever was appended while the one before ran), µs.
    sink_fdatasync: LatencySummary,
    /// At a set rate into topics with `fsync = "always"`, measured before
    /// the run: a bare group commit of as many records a second (two
    /// seconds' worth, at most a million) on the same disk, each record from
    /// its stamp to durable, and its fsyncs, µs.
    bare_group_commit: Option<GroupCommitProbe>,
    /// How the machine's CPUs spent the run (Linux only).
    machine_in_run: Option<CpuShares>,
    /// In the run: how late a thread sleeping a millisecond at a time woke.
    stalls_in_run: Stalls,
    #[serde(flatten)]
    run: Report,
    /// Per stage: what the engine adds to the bare call.
    overhead: Vec<Overhead>,
    series: Vec<Point>,
}

/// One stage's time per message in the run against the bare wasmtime call
/// of its component, measured right after the run on the bench's messages
/// (generated, or `--input`'s) in calls of the run's average size.
#[derive(Serialize)]
struct Overhead {
    stage: String,
    /// Messages per call: the run's average.
    batch: usize,
    /// The stage's busy time per message in the run (taking a batch,
    /// calling, sorting results and outputs, counting), wall clock, ns:
    /// includes the time its thread waited for a core.
    busy_ns_per_message: f64,
    /// The same in CPU time of the stage's threads, ns.
    cpu_ns_per_message: f64,
    /// The component called directly in a default wasmtime (no limits, no
    /// engine around it), ns.
    bare_ns_per_message: f64,
    /// CPU time minus the bare call: what weir adds per message at this stage, ns.
    engine_ns_per_message: f64,
}

/// Point file and stdout sinks at files in `dir` (the scratch directory),
/// so a benchmark neither floods the terminal nor touches the user's files
/// (queue sinks go to the scratch data directory). A sink to /dev/null
/// touches nothing and stays: a file instead cost speed.toml 0.6 s per
/// million on the source's thread (`stage_threads = 0`): writes and fsyncs
/// that the pipeline it measures does not make.
fn keep_outputs_in(dir: &std::path::Path, sinks: &mut [weir_engine::config::SinkSpec]) {
    for (i, sink) in sinks.iter_mut().enumerate() {
        match sink.kind {
            Sink::File { ref path, .. } if path == std::path::Path::new("/dev/null") => {}
            Sink::File { json, .. } | Sink::Stdout { json } => {
                sink.kind = Sink::File { path: dir.join(format!("sink-{i}.out")), json };
            }
            _ => {}
        }
    }
}

/// [`Overhead`] of every stage that received messages.
fn overheads(pipeline: &weir_engine::Pipeline, run: &Report, g: &Generator) -> anyhow::Result<Vec<Overhead>> {
    let mut out = Vec::new();
    for (spec, s) in pipeline.stages.iter().zip(&run.stages) {
        if s.received == 0 || s.per_call.count == 0 {
            continue;
        }
        let batch = ((s.received as f64 / s.per_call.count as f64).round() as usize).clamp(1, spec.batch_size);
        let topic: std::sync::Arc<str> = FILL_TOPIC.into();
        let msgs: Vec<weir_queue::Message> =
            (0..batch as u64).map(|i| weir_queue::Message::from_record(topic.clone(), i, g.record(i))).collect();
        let bare = weir_host::bench::bare_ns_per_message(&spec.module, &spec.config, &msgs, Duration::from_millis(500))
            .with_context(|| format!("stage `{}`: the bare call", spec.name))?;
        let per_message = |secs: f64| secs * 1e9 / s.received as f64;
        let cpu = per_message(s.cpu_s);
        out.push(Overhead {
            stage: s.name.clone(),
            batch,
            busy_ns_per_message: per_message(s.busy_s),
            cpu_ns_per_message: cpu,
            bare_ns_per_message: bare,
            engine_ns_per_message: cpu - bare,
        });
    }
    Ok(out)
}

/// Sample every stage every `every` until `done`.
fn sample(stats: &PipelineStats, every: Duration, done: &AtomicBool) -> Vec<Point> {
    let mut sampler = Sampler::new(stats);
    let mut points = Vec::new();
    let mut last = Instant::now();
    loop {
        let stop = done.load(Ordering::Relaxed);
        std::thread::sleep(every.min(Duration::from_millis(50)));
        if !stop && last.elapsed() < every {
            continue;
        }
        last = Instant::now();
        points.extend(sampler.sample());
        if stop {
            return points;
        }
    }
}

pub(crate) fn bench(args: &PipelineArgs) -> anyhow::Result<()> {
    let Some(path) = &args.pipeline else {
        anyhow::bail!("name a pipeline file (weir bench PIPELINE.toml) or a benchmark (weir bench --help)");
    };
    anyhow::ensure!(args.messages > 0, "--messages must be > 0");
    let (engine, mut pipeline) = crate::run::load(path)?;
    let input = args.input.as_deref().map(|p| read_input(p, args.input_format)).transpose()?.map(Arc::new);
    let generator = Generator { count: Some(args.messages), size: args.size, rate: args.rate, keys: args.keys, key_size: 0, input };
    anyhow::ensure!(args.rate.is_none() || args.source == BenchSource::Generator, "--rate needs --source generator");
    let dir = tempfile::tempdir()?;
    keep_outputs_in(dir.path(), &mut pipeline.sinks);
    if let Some(n) = args.stage_threads {
        pipeline.stage_threads = Some(n.into());
    }
    let sink_topics: Vec<String> = pipeline
        .sinks
        .iter()
        .filter_map(|s| match &s.kind {
            Sink::Queue { topic } => Some(topic.clone()),
            _ => None,
        })
        .collect();
    if let Some(policy) = args.fsync {
        let fsync = policy.fsync(weir_queue::Fsync::DEFAULT_INTERVAL_MS);
        let dead = match &pipeline.dead_letter {
            DeadLetterTo::Topic(t) => Some(t.clone()),
            DeadLetterTo::Nats { .. } => None,
        };
        for topic in sink_topics.iter().cloned().chain(dead).collect::<Vec<_>>() {
            pipeline.topics.entry(topic).or_default().fsync = fsync;
        }
    }
    // Only at a set rate is end to end the latency of a message rather
    // than how long it queued, and only under "always" does every output
    // wait for an fsync: then the disk at that rate is the floor.
    let always =
        !sink_topics.is_empty() && sink_topics.iter().all(|t| pipeline.topics.get(t).is_none_or(|c| c.fsync == weir_queue::Fsync::Always));
    let disk_fdatasync = disk_fdatasync(dir.path(), 200)?;
    // The bare group commit's records: as large as the queue stores a message.
    let record_bytes = args.size + weir_queue::MIN_FRAME;
    let group_commit = match args.rate {
        Some(rate) if always => {
            let n = args.messages.min(rate.saturating_mul(2)).min(GROUP_COMMIT_PROBE_MAX);
            Some(bare_group_commit(dir.path(), n, rate, record_bytes)?)
        }
        _ => None,
    };
    let thread_wakeup = thread_wakeup(1000);
    let queue = weir_queue::Queue::open(dir.path().join("data"))?;
    let fill_started = Instant::now();
    let _scratch = match args.source {
        BenchSource::Generator => {
            pipeline.source = Source::Generator(generator.clone());
            None
        }
        BenchSource::Queue => {
            fill_queue(&queue, &generator)?;
            pipeline.source = Source::Queue {
                topic: FILL_TOPIC.into(),
                group: "bench".into(),
                start: weir_queue::StartFrom::Earliest,
                max_ack_pending: weir_engine::config::defaults::MAX_ACK_PENDING as usize,
                commit_interval: Duration::from_millis(weir_engine::config::defaults::COMMIT_INTERVAL_MS as u64),
            };
            None
        }
        BenchSource::Nats => Some(ScratchStreams::fill(&args.nats_url, &generator, &mut pipeline)?),
    };
    let fill_s = fill_started.elapsed().as_secs_f64();
    if args.source != BenchSource::Generator {
        eprintln!("filled {} messages in {fill_s:.1}s; running the pipeline", args.messages);
    }
    let stats = PipelineStats::for_pipeline(&pipeline);
    let done = Arc::new(AtomicBool::new(false));
    let every = Duration::from_millis(if args.rate.is_some_and(|r| args.messages / r >= 20) { 1000 } else { 250 });
    let sampler = {
        let (stats, done) = (stats.clone(), done.clone());
        std::thread::spawn(move || sample(&stats, every, &done))
    };
    let live = crate::live::LiveView::start(stats.clone(), Some(args.messages));
    let options = RunOptions { drain: true, stats: Some(stats.clone()), ..RunOptions::default() };
    let cpu_before = CpuTimes::now();
    let stall_meter = StallMeter::start();
    let result = engine.run(&pipeline, &queue, &options);
    let stalls_in_run = stall_meter.stop();
    let machine_in_run = cpu_before.zip(CpuTimes::now()).map(|(a, b)| b.since(a));
    done.store(true, Ordering::Relaxed);
    drop(live);
    let series = sampler.join().map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
    result.with_context(|| format!("pipeline `{}`", pipeline.name))?;

    let run = stats.report(&pipeline.name);
    crate::run::print_summary(&run);
    if let Some(note) = unlike_real_work(&run, &queue, &pipeline) {
        eprintln!("{note}");
    }
    eprintln!(
        "disk alone: append 4 KiB + fdatasync p50 {} µs, p99 {} µs ({} samples, before the run)",
        disk_fdatasync.p50_us, disk_fdatasync.p99_us, disk_fdatasync.count
    );
    let sink_fdatasync = sink_fdatasync(&queue, &sink_topics)?;
    if sink_fdatasync.count > 0 {
        let mut line = format!(
            "disk in the run: {} fdatasync p50 {} µs, p99 {} µs, longest {} µs ({} fsyncs)",
            sink_topics.join(", "),
            sink_fdatasync.p50_us,
            sink_fdatasync.p99_us,
            sink_fdatasync.max_us,
            sink_fdatasync.count
        );
        if args.rate.is_some() && always {
            let ratio = |disk: &LatencySummary| run.sink.end_to_end.p99_us as f64 / disk.p99_us.max(1) as f64;
            line += &format!(
                "; end to end p99 is {:.1}x the disk's p99 before the run, {:.1}x in it",
                ratio(&disk_fdatasync),
                ratio(&sink_fdatasync)
            );
        }
        eprintln!("{line}");
    }
    if let Some(bare) = &group_commit {
        eprintln!(
            "disk at this rate: a bare group commit of {}-byte records took them from their stamp to durable in p50 {} µs, p99 {} µs ({} records, before the run), {:.1}x the p99 of its own {} fdatasyncs ({} µs); end to end p99 is {:.1}x the bare group commit's",
            record_bytes,
            bare.records.p50_us,
            bare.records.p99_us,
            bare.records.count,
            bare.records.p99_us as f64 / bare.fsyncs.p99_us.max(1) as f64,
            bare.fsyncs.count,
            bare.fsyncs.p99_us,
            run.sink.end_to_end.p99_us as f64 / bare.records.p99_us.max(1) as f64
        );
    }
    // Where end to end goes: to reach the sink (threads, batching) or in
    // its write (an fsync, a round trip).
    let sink = &run.sink;
    if sink.arrival.count > 0 {
        eprintln!(
            "at the sink: outputs arrived p50 {} µs, p99 {} µs after their producer time, were written by p50 {} µs, p99 {} µs",
            sink.arrival.p50_us, sink.arrival.p99_us, sink.end_to_end.p50_us, sink.end_to_end.p99_us
        );
    }
    eprintln!(
        "machine alone: a blocked thread woken by another p50 {} µs, p99 {} µs ({} samples, before the run)",
        thread_wakeup.p50_us, thread_wakeup.p99_us, thread_wakeup.count
    );
    if let Some(m) = &machine_in_run {
        eprintln!(
            "machine in the run: the CPUs were busy {:.0}%, idle {:.0}%, and held back by the hypervisor (steal) {:.1}% of the time",
            m.busy_pct, m.idle_pct, m.steal_pct
        );
    }
    let s = &stalls_in_run;
    eprintln!(
        "stalls in the run: a thread sleeping 1 ms at a time woke late by 1 ms or more {} times, {} ms in all, the longest {} µs (p99 {} µs late; {} wake-ups)",
        s.over_1ms,
        s.over_1ms_total_us / 1000,
        s.longest_us,
        s.late.p99_us,
        s.late.count
    );
    let overhead = overheads(&pipeline, &run, &generator)?;
    if !overhead.is_empty() {
        eprintln!(
            "{:<22} {:>7} {:>12} {:>12} {:>12} {:>14}",
            "stage", "batch", "busy ns/msg", "cpu ns/msg", "bare ns/msg", "engine ns/msg"
        );
        for o in &overhead {
            eprintln!(
                "{:<22} {:>7} {:>12.0} {:>12.0} {:>12.0} {:>14.0}",
                o.stage, o.batch, o.busy_ns_per_message, o.cpu_ns_per_message, o.bare_ns_per_message, o.engine_ns_per_message
            );
        }
    }
    let (report_path, chart_path) = output_paths(args)?;
    draw(&chart_path, &pipeline.name, &series).with_context(|| format!("drawing {}", chart_path.display()))?;
    let report = BenchReport {
        messages: args.messages,
        size: args.size,
        source: args.source,
        stage_threads: pipeline.stage_threads(),
        fill_s,
        thread_wakeup,
        disk_fdatasync,
        sink_fdatasync,
        bare_group_commit: group_commit,
        machine_in_run,
        stalls_in_run,
        run,
        overhead,
        series,
    };
    std::fs::write(&report_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", report_path.display()))?;
    eprintln!("report: {}, chart: {}", report_path.display(), chart_path.display());
    Ok(())
}

/// A note when the run measured something other than the pipeline at work:
/// most messages dead-lettered, or dropped by the stages. Its rate is then
/// how fast messages were turned away, which the summary must not pass
/// off as the pipeline's speed.
fn unlike_real_work(run: &Report, queue: &weir_queue::Queue, pipeline: &weir_engine::Pipeline) -> Option<String> {
    let (n, dead) = (run.source.received, run.sink.dead_lettered);
    let rate = n as f64 / run.elapsed_s.max(1e-9);
    if n > 0 && dead * 2 >= n {
        let reason = match &pipeline.dead_letter {
            DeadLetterTo::Topic(t) => queue.read(t, 0, 0, 1).ok().and_then(|r| {
                let h = r.into_iter().next()?.headers;
                h.into_iter().find(|(k, _)| k == weir_queue::dlq_headers::REASON).map(|(_, v)| String::from_utf8_lossy(&v).into_owned())
            }),
            DeadLetterTo::Nats { .. } => None,
        };
        let reason = reason.map(|r| format!(" (the first: {r})")).unwrap_or_default();
        return Some(format!(
            "note: {dead} of {n} messages ({:.0}%) were dead-lettered{reason}. {rate:.0} msg/s is how fast they were \
             processed, mostly turned away, not the pipeline's speed on its real input: give it that with --input FILE",
            dead as f64 * 100.0 / n as f64
        ));
    }
    let filtered: u64 = run.stages.iter().map(|s| s.filtered).sum();
    if n > 0 && (dead + filtered) * 2 >= n {
        return Some(format!(
            "note: the stages dropped {filtered} of {n} messages (returned no output) and dead-lettered {dead}. \
             {rate:.0} msg/s is how fast they were processed, mostly dropped, not the pipeline's speed on input \
             it keeps: give it that with --input FILE"
        ));
    }
    None
}

/// Where the report and the chart go: where `--report` and `--chart` say;
/// what they do not say goes into a new directory of its own under the
/// system's temporary directory (nothing is written into the current one
/// unasked), the chart beside a given report.
fn output_paths(args: &PipelineArgs) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = match (&args.report, &args.chart) {
        (Some(r), None) => r.parent().map(std::path::Path::to_path_buf).unwrap_or_default(),
        (None, _) => tempfile::Builder::new().prefix("weir-bench-").tempdir().context("making an output directory")?.keep(),
        (Some(_), Some(_)) => PathBuf::new(),
    };
    let report = args.report.clone().unwrap_or_else(|| dir.join("weir-bench.json"));
    let chart = args.chart.clone().unwrap_or_else(|| dir.join("weir-bench.svg"));
    Ok((report, chart))
}

const FILL_TOPIC: &str = "bench-input";

/// The time to append 4 KiB to a file in `dir` and `fdatasync` it, `n`
/// times: the floor under the latency of a topic with `fsync = "always"`.
fn disk_fdatasync(dir: &std::path::Path, n: u64) -> anyhow::Result<LatencySummary> {
    use std::io::Write;
    let path = dir.join("fdatasync-probe");
    let mut file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let latency = weir_engine::Latency::default();
    let block = [0x5a_u8; 4096];
    for _ in 0..n {
        let started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        latency.record(started.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(latency.summary())
}

/// Most records the bare group commit stamps (16 bytes each while they wait).
const GROUP_COMMIT_PROBE_MAX: u64 = 1_000_000;

/// A bare group commit on the scratch directory's disk, `n` records of
/// `record_bytes` at `rate` a second: one thread stamps each record when it
/// is due, another writes whatever has come and `fdatasync`s it, then takes
/// what came meanwhile. It writes as a topic with `fsync = "always"` does
/// (over zeros filled [`weir_queue::ZERO_AHEAD`] ahead of the data), with no
/// pipeline, no queue and no other work around it. Per record, from its
/// stamp to the return of the fsync that covered it: the end-to-end latency
/// that nothing but this disk at this rate imposes; and per fsync, what the
/// disk's fdatasync p99 counts.
fn bare_group_commit(dir: &std::path::Path, n: u64, rate: u64, record_bytes: usize) -> anyhow::Result<GroupCommitProbe> {
    use std::os::unix::fs::FileExt;
    let path = dir.join("group-commit-probe");
    let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let (tx, rx) = std::sync::mpsc::channel::<Instant>();
    let stamper = std::thread::spawn(move || {
        let started = Instant::now();
        for i in 0..n {
            // Stamped with when it was due, as the generator stamps messages.
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if tx.send(due).is_err() {
                return;
            }
        }
    });
    let (records, fsyncs) = (weir_engine::Latency::default(), weir_engine::Latency::default());
    let zeros = vec![0; weir_queue::ZERO_AHEAD as usize];
    let (mut len, mut zeroed_to) = (0, 0);
    let mut buf = Vec::new();
    let mut taken = Vec::new();
    // What came while the last fsync ran goes out with one write and one fsync.
    while let Ok(first) = rx.recv() {
        taken.push(first);
        taken.extend(rx.try_iter());
        buf.clear();
        buf.resize(taken.len() * record_bytes, 0x5a);
        file.write_all_at(&buf, len)?;
        len += buf.len() as u64;
        if len > zeroed_to {
            file.write_all_at(&zeros, len)?;
            zeroed_to = len + zeros.len() as u64;
        }
        let synced = Instant::now();
        file.sync_data()?;
        fsyncs.record(synced.elapsed());
        for stamp in taken.drain(..) {
            records.record(stamp.elapsed());
        }
    }
    stamper.join().map_err(|_| anyhow::anyhow!("the group-commit probe's stamper panicked"))?;
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(GroupCommitProbe { records: records.summary(), fsyncs: fsyncs.summary() })
}

/// What [`bare_group_commit`] measured.
#[derive(Serialize)]
struct GroupCommitProbe {
    /// Per record, from its stamp to durable, µs.
    #[serde(flatten)]
    records: LatencySummary,
    /// Per fsync, µs. A slow fsync counts once here and for every record it
    /// held above, so the records' p99 can be many times the fsyncs' p99
    /// with nothing but the disk in the way.
    fsyncs: LatencySummary,
}

/// How long the fsyncs of the queue sinks' `topics` took in the run.
fn sink_fdatasync(queue: &weir_queue::Queue, topics: &[String]) -> anyhow::Result<LatencySummary> {
    let mut all = hdrhistogram::Histogram::new(2)?;
    for t in topics {
        all.add(queue.fsync_times(t)?)?;
    }
    Ok(weir_engine::Latency::from(all).summary())
}

/// The CPU time of the whole machine since boot, in clock ticks, from
/// `/proc/stat` (Linux; elsewhere none).
#[derive(Clone, Copy)]
struct CpuTimes {
    busy: u64,
    idle: u64,
    /// Time a virtual CPU was ready to run but the hypervisor ran something else.
    steal: u64,
}

/// Shares of the machine's CPU time over a stretch, %.
#[derive(Serialize)]
struct CpuShares {
    busy_pct: f64,
    idle_pct: f64,
    /// On a virtual machine, the time its CPUs were held back by the
    /// hypervisor: a thread on such a CPU stalls for that long, whatever
    /// the pipeline does, and latency's tail with it.
    steal_pct: f64,
}

impl CpuTimes {
    fn now() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// From the text of `/proc/stat`: its first line, all CPUs together.
    fn parse(stat: &str) -> Option<Self> {
        let fields: Vec<u64> =
            stat.lines().find(|l| l.starts_with("cpu "))?.split_whitespace().skip(1).map_while(|f| f.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal (guest time is in user)
        let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = fields[..] else {
            return None;
        };
        Some(CpuTimes { busy: user + nice + system + irq + softirq, idle: idle + iowait, steal })
    }

    fn since(self, before: CpuTimes) -> CpuShares {
        let (busy, idle, steal) =
            (self.busy.saturating_sub(before.busy), self.idle.saturating_sub(before.idle), self.steal.saturating_sub(before.steal));
        let pct = |x: u64| x as f64 * 100.0 / (busy + idle + steal).max(1) as f64;
        CpuShares { busy_pct: pct(busy), idle_pct: pct(idle), steal_pct: pct(steal) }
    }
}

/// Stalls the machine imposes while the pipeline runs, jHiccup's way: a
/// thread sleeps a millisecond at a time and notes how late it woke. A
/// runnable thread that no CPU takes up (the hypervisor holding a virtual
/// CPU back, every core busy, a timer interrupt late) shows up here as it
/// does in the pipeline's end-to-end tail, which the pipeline's own
/// figures cannot tell apart from its work.
struct StallMeter {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Wakeups>,
}

/// How late a sleeping thread woke over the run.
#[derive(Serialize)]
struct Stalls {
    /// Lateness of each wake-up, µs.
    late: LatencySummary,
    /// Wake-ups a millisecond or more late: a message arriving then waits at
    /// least that long.
    over_1ms: u64,
    /// Their lateness added up, µs.
    over_1ms_total_us: u64,
    /// The latest wake-up, µs late (exact; `late.max_us` is the histogram's).
    longest_us: u64,
}

/// What counts as a stall: a wake-up at least this late, µs.
const STALL_US: u64 = 1000;

/// The wake-ups so far, in constant memory however long the run.
#[derive(Default)]
struct Wakeups {
    late: weir_engine::Latency,
    over_1ms: u64,
    over_1ms_total_us: u64,
    longest_us: u64,
}

impl Wakeups {
    fn add(&mut self, late_us: u64) {
        self.late.record(Duration::from_micros(late_us));
        if late_us >= STALL_US {
            self.over_1ms += 1;
            self.over_1ms_total_us += late_us;
        }
        self.longest_us = self.longest_us.max(late_us);
    }

    fn stalls(&self) -> Stalls {
        Stalls {
            late: self.late.summary(),
            over_1ms: self.over_1ms,
            over_1ms_total_us: self.over_1ms_total_us,
            longest_us: self.longest_us,
        }
    }
}

impl StallMeter {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut wakeups = Wakeups::default();
                // At least one wake-up, however short the run.
                loop {
                    let asleep = Instant::now();
                    std::thread::sleep(Duration::from_millis(1));
                    wakeups.add(asleep.elapsed().saturating_sub(Duration::from_millis(1)).as_micros() as u64);
                    if stop.load(Ordering::Relaxed) {
                        return wakeups;
                    }
                }
            })
        };
        StallMeter { stop, thread }
    }

    fn stop(self) -> Stalls {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the stall meter does not panic").stalls()
    }
}

/// `n` times, about a millisecond apart: the time from one thread sending
/// on a channel to another, blocked on it, running again. On a loaded or
/// virtual machine its tail is the scheduler's, and every message of a
/// pipeline crosses several such hand-offs.
fn thread_wakeup(n: u64) -> LatencySummary {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Instant>(1);
    let receiver = std::thread::spawn(move || {
        let latency = weir_engine::Latency::default();
        for sent in rx {
            latency.record(sent.elapsed());
        }
        latency.summary()
    });
    for _ in 0..n {
        std::thread::sleep(Duration::from_millis(1));
        if tx.send(Instant::now()).is_err() {
            break;
        }
    }
    drop(tx);
    receiver.join().expect("the wake-up probe's receiver does not panic")
}

/// Fill the scratch queue's input topic, a thousand messages per append.
fn fill_queue(queue: &weir_queue::Queue, g: &Generator) -> anyhow::Result<()> {
    let total = g.count.unwrap_or(0);
    queue.ensure_topic(FILL_TOPIC, &weir_queue::TopicConfig::default())?;
    let mut i = 0;
    while i < total {
        let batch: Vec<_> = (i..(i + 1000).min(total)).map(|i| g.record(i)).collect();
        queue.publish(FILL_TOPIC, &batch)?;
        i += batch.len() as u64;
        fill_progress(i, total);
    }
    Ok(())
}

fn fill_progress(done: u64, total: u64) {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() && (done.is_multiple_of(100_000) || done == total) {
        eprint!("\rfilling: {done}/{total}{}", if done == total { "\n" } else { "" });
    }
}

/// JetStream streams for one `--source nats` run, deleted when it ends.
struct ScratchStreams {
    rt: tokio::runtime::Runtime,
    js: async_nats::jetstream::Context,
    names: [String; 2],
}

impl ScratchStreams {
    /// Make an input stream holding the generated messages and an output
    /// stream, and point `pipeline` at them: its source, queue sinks and
    /// dead letters.
    fn fill(url: &str, g: &Generator, pipeline: &mut weir_engine::Pipeline) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Runtime::new()?;
        let conn = NatsConnection::to(url);
        let id = std::process::id();
        let (input, output) = (format!("WEIR_BENCH_{id}_IN"), format!("WEIR_BENCH_{id}_OUT"));
        let (in_subject, out_prefix) = (format!("weir-bench.{id}.in"), format!("weir-bench.{id}.out"));
        let js = rt.block_on(async {
            let js = async_nats::jetstream::new(weir_engine::nats::connect(&conn).await?);
            for (name, subject) in [(&input, in_subject.clone()), (&output, format!("{out_prefix}.>"))] {
                js.create_stream(async_nats::jetstream::stream::Config {
                    name: name.clone(),
                    subjects: vec![subject],
                    ..Default::default()
                })
                .await
                .with_context(|| format!("creating scratch stream {name}"))?;
            }
            anyhow::Ok(js)
        })?;
        let scratch = ScratchStreams { rt, js, names: [input.clone(), output.clone()] };
        scratch.rt.block_on(async {
            let total = g.count.unwrap_or(0);
            let mut acks = Vec::with_capacity(1000);
            for i in 0..total {
                let (headers, payload) = weir_engine::nats::to_nats(g.record(i));
                let m = async_nats::jetstream::message::PublishMessage::build().payload(payload).headers(headers);
                acks.push(scratch.js.send_publish(in_subject.clone(), m).await?);
                if acks.len() == 1000 || i + 1 == total {
                    for ack in futures::future::join_all(acks.drain(..).map(std::future::IntoFuture::into_future)).await {
                        ack?;
                    }
                    fill_progress(i + 1, total);
                }
            }
            anyhow::Ok(())
        })?;
        pipeline.source = Source::Nats(NatsSource::JetStream(JetStreamSource {
            stream: input,
            subjects: vec![in_subject],
            consumer: "bench".into(),
            start: weir_queue::StartFrom::Earliest,
            ack_wait: Duration::from_millis(weir_engine::config::defaults::NATS_ACK_WAIT_MS as u64),
            max_attempts: None,
            backoff: Vec::new(),
            max_ack_pending: weir_engine::config::defaults::MAX_ACK_PENDING as usize,
            // The bench runs this consumer in this process alone.
            single_process: true,
        }));
        for (i, sink) in pipeline.sinks.iter_mut().enumerate() {
            if matches!(sink.kind, Sink::Queue { .. }) {
                sink.kind = Sink::Nats { subject: format!("{out_prefix}.{i}"), stream: None, core: false };
            }
        }
        pipeline.dead_letter =
            DeadLetterTo::Nats { subject: format!("{out_prefix}.dlq"), stream: Some(StreamSpec { name: output, subjects: Vec::new() }) };
        pipeline.nats = Some(conn);
        Ok(scratch)
    }
}

impl Drop for ScratchStreams {
    fn drop(&mut self) {
        for name in &self.names {
            if let Err(e) = self.rt.block_on(self.js.delete_stream(name)) {
                eprintln!("warning: could not delete scratch stream {name}: {e}");
            }
        }
    }
}

type Panel<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// Throughput (top) and p99 per message (bottom) over time, a line per stage.
fn draw(path: &std::path::Path, name: &str, series: &[Point]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&format!("weir bench: {name}"), ("sans-serif", 22))?;
    let (top, bottom) = root.split_vertically(350);
    let mut stages: Vec<&str> = Vec::new();
    for p in series {
        if !stages.contains(&p.stage.as_str()) {
            stages.push(&p.stage);
        }
    }
    let t_max = series.iter().map(|p| p.t).fold(0.1, f64::max);
    panel(&top, "messages/s", |p| p.msgs_per_s, series, &stages, t_max)?;
    panel(&bottom, "p99 per message (µs)", |p| p.p99_us as f64, series, &stages, t_max)?;
    root.present()?;
    Ok(())
}

/// One chart: `value` over time, a line per stage.
fn panel(area: &Panel, label: &str, value: fn(&Point) -> f64, series: &[Point], stages: &[&str], t_max: f64) -> anyhow::Result<()> {
    let y_max = series.iter().map(value).fold(1.0, f64::max) * 1.1;
    let mut chart =
        ChartBuilder::on(area).margin(12).x_label_area_size(36).y_label_area_size(80).build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
    chart.configure_mesh().x_desc("seconds").y_desc(label).draw()?;
    for (i, stage) in stages.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let line: Vec<(f64, f64)> = series.iter().filter(|p| p.stage == *stage).map(|p| (p.t, value(p))).collect();
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))?
            .label(*stage)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_shares_come_from_the_all_cpus_line_of_proc_stat() {
        let at = |user: u64, idle: u64, steal: u64| {
            format!("cpu  {user} 0 100 {idle} 50 0 10 {steal} 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 1 2 3\n")
        };
        let before = CpuTimes::parse(&at(1000, 5000, 20)).unwrap();
        let after = CpuTimes::parse(&at(1600, 5300, 120)).unwrap();
        let shares = after.since(before);
        // 600 busy, 300 idle, 100 stolen of 1000 ticks
        assert_eq!((shares.busy_pct, shares.idle_pct, shares.steal_pct), (60.0, 30.0, 10.0));
        assert!(CpuTimes::parse("cpu  1 2 3\n").is_none(), "a kernel too old to count steal");
        assert!(CpuTimes::parse("intr 1 2\n").is_none());
    }

    #[test]
    fn stalls_are_wake_ups_a_millisecond_late_or_more() {
        let of = |late_us: &[u64]| {
            let mut w = Wakeups::default();
            late_us.iter().for_each(|&us| w.add(us));
            w.stalls()
        };
        let s = of(&[3, 999, 1000, 40, 6500, 12]);
        assert_eq!((s.over_1ms, s.over_1ms_total_us), (2, 7500));
        assert_eq!((s.late.count, s.longest_us), (6, 6500));
        let none = of(&[]);
        assert_eq!((none.over_1ms, none.over_1ms_total_us, none.late.count), (0, 0, 0));
    }

    #[test]
    fn a_bench_writes_file_and_stdout_sinks_to_its_scratch_directory_but_leaves_dev_null() {
        let sink = |kind: Sink| weir_engine::config::SinkSpec { name: "s".into(), from: None, kind };
        let mut sinks = vec![
            sink(Sink::File { path: "/dev/null".into(), json: false }),
            sink(Sink::File { path: "out.jsonl".into(), json: true }),
            sink(Sink::Stdout { json: false }),
            sink(Sink::Queue { topic: "t".into() }),
        ];
        keep_outputs_in(std::path::Path::new("/scratch"), &mut sinks);
        let kinds: Vec<&Sink> = sinks.iter().map(|s| &s.kind).collect();
        let want = [
            Sink::File { path: "/dev/null".into(), json: false },
            Sink::File { path: "/scratch/sink-1.out".into(), json: true },
            Sink::File { path: "/scratch/sink-2.out".into(), json: false },
            Sink::Queue { topic: "t".into() },
        ];
        assert_eq!(kinds, want.iter().collect::<Vec<_>>());
    }
}
