//! `weir bench PIPELINE.toml`: the pipeline fed by a generator in a scratch
//! data directory, watched over time; a per-stage table, a JSON report with
//! the time series, and an SVG chart of throughput and p99 per stage.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use plotters::prelude::*;
use serde::Serialize;
use weir_engine::config::{Generator, Sink, Source};
use weir_engine::{PipelineStats, Report, RunOptions};

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
    /// Where to write the JSON report.
    #[arg(long, default_value = "weir-bench.json")]
    report: PathBuf,
    /// Where to draw the chart (SVG).
    #[arg(long, default_value = "weir-bench.svg")]
    chart: PathBuf,
}

/// One stage at one moment of the run.
#[derive(Debug, Clone, Serialize)]
struct Point {
    /// Seconds since the start.
    t: f64,
    stage: String,
    /// Messages per second over the last interval.
    msgs_per_s: f64,
    /// p99 of time per message over the last interval, µs (0 if none).
    p99_us: u64,
}

#[derive(Serialize)]
struct BenchReport {
    messages: u64,
    size: usize,
    #[serde(flatten)]
    run: Report,
    series: Vec<Point>,
}

/// Sample every stage every `every` until `done`.
fn sample(stats: &PipelineStats, every: Duration, done: &AtomicBool) -> Vec<Point> {
    let started = Instant::now();
    let mut points = Vec::new();
    let mut prev: Vec<(u64, hdrhistogram::Histogram<u64>)> =
        stats.stages().iter().map(|s| (s.received(), s.per_message.snapshot())).collect();
    let mut last = Instant::now();
    loop {
        let stop = done.load(Ordering::Relaxed);
        std::thread::sleep(every.min(Duration::from_millis(50)));
        if !stop && last.elapsed() < every {
            continue;
        }
        let secs = last.elapsed().as_secs_f64();
        last = Instant::now();
        for (s, (received, hist)) in stats.stages().iter().zip(&mut prev) {
            let now = s.per_message.snapshot();
            let mut window = now.clone();
            window.subtract(&*hist).ok();
            let n = s.received();
            points.push(Point {
                t: started.elapsed().as_secs_f64(),
                stage: s.name.clone(),
                msgs_per_s: (n - *received) as f64 / secs,
                p99_us: if window.is_empty() { 0 } else { window.value_at_quantile(0.99) },
            });
            *received = n;
            *hist = now;
        }
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
    pipeline.source = Source::Generator(Generator { count: Some(args.messages), size: args.size, rate: args.rate, keys: args.keys });
    let dir = tempfile::tempdir()?;
    // Outputs stay in the scratch directory too: file and stdout sinks write
    // files there, so a benchmark neither floods the terminal nor touches
    // the user's files (queue sinks go to the scratch data directory).
    for (i, sink) in pipeline.sinks.iter_mut().enumerate() {
        if let Sink::File { json, .. } | Sink::Stdout { json } = sink.kind {
            sink.kind = Sink::File { path: dir.path().join(format!("sink-{i}.out")), json };
        }
    }
    let queue = weir_queue::Queue::open(dir.path().join("data"))?;
    let stats = PipelineStats::for_pipeline(&pipeline);
    let done = Arc::new(AtomicBool::new(false));
    let every = Duration::from_millis(if args.rate.is_some_and(|r| args.messages / r >= 20) { 1000 } else { 250 });
    let sampler = {
        let (stats, done) = (stats.clone(), done.clone());
        std::thread::spawn(move || sample(&stats, every, &done))
    };
    let live = crate::live::LiveView::start(stats.clone(), Some(args.messages));
    let options = RunOptions { drain: true, stats: Some(stats.clone()), ..RunOptions::default() };
    let result = engine.run(&pipeline, &queue, &options);
    done.store(true, Ordering::Relaxed);
    drop(live);
    let series = sampler.join().map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
    result.with_context(|| format!("pipeline `{}`", pipeline.name))?;

    let run = stats.report(&pipeline.name);
    crate::run::print_summary(&run);
    draw(&args.chart, &pipeline.name, &series).with_context(|| format!("drawing {}", args.chart.display()))?;
    let report = BenchReport { messages: args.messages, size: args.size, run, series };
    std::fs::write(&args.report, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", args.report.display()))?;
    eprintln!("report: {}, chart: {}", args.report.display(), args.chart.display());
    Ok(())
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
