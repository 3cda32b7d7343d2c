//! `weir run` and `weir validate`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Args;
use weir_engine::{Engine, Pipeline, Report, RunOptions};

use crate::Reported;

#[derive(Args)]
pub(crate) struct RunArgs {
    /// The pipeline file.
    pipeline: PathBuf,
    /// Exit 0 once the source has no more messages and everything in flight
    /// is acknowledged.
    #[arg(long)]
    drain: bool,
    /// Write the run's per-stage figures (counts, rates, latency percentiles)
    /// to this JSON file when it ends, also on Ctrl-C.
    #[arg(long, value_name = "FILE.json")]
    report: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics while running
    /// (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Also serve the queue's HTTP API (as `weir serve` does), so other
    /// processes can publish to and consume from this data directory.
    #[command(flatten)]
    listen: crate::api::ListenArgs,
}

#[derive(Args)]
pub(crate) struct ValidateArgs {
    /// The pipeline file.
    pipeline: PathBuf,
}

/// Load and fully check a pipeline: config, then every component.
pub(crate) fn load(path: &Path) -> anyhow::Result<(Engine, Pipeline)> {
    let report = |errors: weir_engine::ConfigErrors| {
        for e in &errors.0 {
            eprintln!("error: {e}");
        }
        let n = errors.0.len();
        eprintln!("{}: {n} error{}", path.display(), if n == 1 { "" } else { "s" });
        anyhow::Error::new(Reported(1))
    };
    let pipeline = weir_engine::config::load(path).map_err(report)?;
    let engine = Engine::for_pipeline(&pipeline)?;
    engine.check_components(&pipeline).map_err(report)?;
    Ok((engine, pipeline))
}

pub(crate) fn validate(args: ValidateArgs) -> anyhow::Result<()> {
    let (_, p) = load(&args.pipeline)?;
    println!(
        "{}: ok: pipeline `{}`, {} stage(s), {} sink(s), dead letters to {}",
        args.pipeline.display(),
        p.name,
        p.stages.len(),
        p.sinks.len(),
        p.dead_letter
    );
    for stage in &p.stages {
        println!("stage `{}` (concurrency {}, batch_size {}):", stage.name, stage.concurrency, stage.batch_size);
        for (key, value, default, unit) in stage.limit_table() {
            let note = if value == default { String::new() } else { format!("  (default {default})") };
            println!("  {key:<26} {value:>12} {unit}{note}");
        }
    }
    Ok(())
}

pub(crate) fn run(args: RunArgs, data_dir_flag: Option<PathBuf>) -> anyhow::Result<()> {
    let (engine, pipeline) = load(&args.pipeline)?;
    let dir = crate::data_dir(data_dir_flag, pipeline.data_dir.as_ref());
    let queue = weir_queue::Queue::open(&dir).with_context(|| format!("opening data directory {}", dir.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    install_signal_handlers(stop.clone());
    let stats = weir_engine::PipelineStats::for_pipeline(&pipeline);
    let options = RunOptions { drain: args.drain, stop, stats: Some(stats.clone()) };
    let total = match &pipeline.source {
        weir_engine::config::Source::Generator(g) => g.count,
        _ => None,
    };
    if let Some(addr) = args.metrics_addr {
        let bound = crate::metrics::serve(addr, crate::metrics::router(None, Some((&pipeline.name, stats.clone()))))?;
        tracing::info!(%bound, "metrics at http://{bound}/metrics");
    }
    let _api = match args.listen.listen {
        Some(_) => {
            let metrics = crate::metrics::router(Some(queue.clone()), Some((&pipeline.name, stats.clone())))
                .merge(crate::console::pipeline_routes(&pipeline, stats.clone()));
            let protected = pipeline.topics.keys().cloned().collect();
            let server = crate::api::start(queue.clone(), &args.listen, Some(metrics), protected)?;
            tracing::info!(addr = %server.addr, "HTTP API at http://{}", server.addr);
            Some(server)
        }
        None => None,
    };
    let live = crate::live::LiveView::start(stats, total);
    tracing::info!(pipeline = %pipeline.name, data_dir = %dir.display(), drain = args.drain, "pipeline starting");
    let stats = engine.run(&pipeline, &queue, &options).with_context(|| format!("pipeline `{}`", pipeline.name))?;
    drop(live);
    let report = stats.report(&pipeline.name);
    print_summary(&report);
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing the report {}", path.display()))?;
    }
    Ok(())
}

/// First SIGINT/SIGTERM: stop pulling, drain, commit, exit 0. Second: exit at
/// once (nothing acknowledged is lost: acks follow durable writes).
pub(crate) fn install_signal_handlers(stop: Arc<AtomicBool>) {
    std::thread::Builder::new()
        .name("weir-signals".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("signal runtime");
            rt.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
                    tracing::warn!("cannot install signal handlers");
                    return;
                };
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    if stop.swap(true, Ordering::SeqCst) {
                        eprintln!("weir: second signal, exiting now");
                        std::process::exit(130);
                    }
                    crate::live::print_above(b"weir: stopping: finishing in-flight batches (signal again to exit at once)\n");
                }
            });
        })
        .expect("spawn signal thread");
}

pub(crate) fn print_summary(r: &Report) {
    let out: u64 = r.sink.written;
    eprintln!("weir: {} in, {out} out, {} dead-lettered in {:.2}s", r.source.received, r.sink.dead_lettered, r.elapsed_s);
    if r.stages.is_empty() {
        return;
    }
    eprintln!(
        "{:<22} {:>10} {:>10} {:>8} {:>8} {:>7} {:>11} {:>9} {:>9} {:>6}",
        "stage", "received", "ok", "retried", "dead", "errors", "busy msg/s", "p50 µs", "p99 µs", "busy"
    );
    for s in &r.stages {
        let errs: u64 = s.errors.values().sum();
        let mark = if r.bottleneck.as_deref() == Some(&s.name) { " *" } else { "" };
        eprintln!(
            "{:<22} {:>10} {:>10} {:>8} {:>8} {:>7} {:>11.0} {:>9} {:>9} {:>5.0}%{mark}",
            s.name,
            s.received,
            s.ok,
            s.retried,
            s.dead_lettered,
            errs,
            s.busy_msgs_per_s,
            s.per_message.p50_us,
            s.per_message.p99_us,
            s.busy_share * 100.0
        );
        if !s.errors.is_empty() {
            let detail: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
            eprintln!("{:<22} errors: {}", "", detail.join(" "));
        }
    }
    if let Some(b) = &r.bottleneck {
        eprintln!("* bottleneck: {b}; end to end at the sink p50 {} µs, p99 {} µs", r.sink.end_to_end.p50_us, r.sink.end_to_end.p99_us);
    }
}
