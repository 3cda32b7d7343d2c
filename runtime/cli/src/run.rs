//! `weir run` and `weir validate`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Args;
use weir_engine::{Engine, Pipeline, Report, RunOptions};
use weir_queue::StartFrom;

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
    /// Consume as this consumer group instead of the pipeline's (a queue or
    /// JetStream source): a new group replays history with its own offsets
    /// and stage state, leaving the pipeline's group untouched.
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// Where a group without committed offsets starts: `beginning`, `end`,
    /// a time (RFC 3339, or a duration ago: `90s`, `30m`, `2h`, `1d`),
    /// or an offset in every partition. A group with committed offsets
    /// resumes from them.
    #[arg(long, value_name = "WHERE")]
    from: Option<String>,
    /// Upgrade stages live: when a stage's component file changes (or the
    /// pipeline file names another), the new version is checked, started
    /// and swapped in between two batches; a version that fails to load or
    /// start is refused and the running one runs on.
    #[arg(long)]
    watch: bool,
    /// Also serve the queue's HTTP API (as `weir serve` does), so other
    /// processes can publish to and consume from this data directory.
    #[command(flatten)]
    listen: crate::api::ListenArgs,
}

/// `--from`: where a new group starts.
pub(crate) fn parse_from(text: &str, now_ms: u64) -> anyhow::Result<StartFrom> {
    let ago = |n: &str, unit_ms: u64| n.parse::<u64>().ok().map(|n| StartFrom::Time(now_ms.saturating_sub(n.saturating_mul(unit_ms))));
    let parsed = match text {
        "beginning" | "earliest" => Some(StartFrom::Earliest),
        "end" | "latest" => Some(StartFrom::Latest),
        t if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => t.parse().ok().map(StartFrom::Offset),
        t => match t.char_indices().last() {
            Some((i, 's')) => ago(&t[..i], 1_000),
            Some((i, 'm')) => ago(&t[..i], 60_000),
            Some((i, 'h')) => ago(&t[..i], 3_600_000),
            Some((i, 'd')) => ago(&t[..i], 86_400_000),
            _ => None,
        }
        .or_else(|| t.parse::<jiff::Timestamp>().ok().map(|ts| StartFrom::Time(ts.as_millisecond().max(0) as u64))),
    };
    parsed.with_context(|| {
        format!("--from {text:?}: give `beginning`, `end`, a time (2026-12-01T22:00:00Z, or a duration ago: 90s, 30m, 2h, 1d) or an offset")
    })
}

/// `--group` and `--from`: the source's consumer group and where a new one starts.
fn replay(pipeline: &mut Pipeline, group: Option<&str>, from: Option<&str>) -> anyhow::Result<()> {
    if group.is_none() && from.is_none() {
        return Ok(());
    }
    let from = from.map(|f| parse_from(f, weir_queue::now_us() / 1000)).transpose()?;
    let (name, start) = match &mut pipeline.source {
        weir_engine::config::Source::Queue { group, start, .. } => (group, start),
        weir_engine::config::Source::Nats(weir_engine::config::NatsSource::JetStream(js)) => (&mut js.consumer, &mut js.start),
        _ => anyhow::bail!("--group and --from need a queue or JetStream source: the others have no offsets to start from"),
    };
    if let Some(g) = group {
        weir_queue::validate_name("consumer group", g)?;
        *name = g.to_owned();
    }
    if let Some(f) = from {
        *start = f;
    }
    Ok(())
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
    let (engine, mut pipeline) = load(&args.pipeline)?;
    replay(&mut pipeline, args.group.as_deref(), args.from.as_deref())?;
    let dir = crate::data_dir(data_dir_flag, pipeline.data_dir.as_ref());
    let queue = weir_queue::Queue::open(&dir).with_context(|| format!("opening data directory {}", dir.display()))?;
    if let (weir_engine::config::Source::Queue { topic, group, .. }, Some(_)) = (&pipeline.source, &args.from)
        && queue.groups(topic).is_ok_and(|gs| gs.iter().any(|(g, _)| g == group))
    {
        tracing::info!(%group, "the group has committed offsets: it resumes from them (--from is where a new group starts)");
    }
    let stop = Arc::new(AtomicBool::new(false));
    install_signal_handlers(stop.clone());
    let stats = weir_engine::PipelineStats::for_pipeline(&pipeline);
    let upgrades = weir_engine::Upgrades::for_pipeline(&pipeline);
    if args.watch {
        crate::watch::start(args.pipeline.clone(), &pipeline, upgrades.clone(), stop.clone());
    }
    let options = RunOptions { drain: args.drain, stop, stats: Some(stats.clone()), upgrades: Some(upgrades.clone()) };
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
            // Before serving: a publish to the source topic must not be
            // refused as unknown while the stages are still being loaded.
            weir_engine::Engine::ensure_topics(&pipeline, &queue)?;
            let metrics = crate::metrics::router(Some(queue.clone()), Some((&pipeline.name, stats.clone())))
                .merge(crate::console::pipeline_routes(&pipeline, stats.clone(), upgrades.clone()));
            let protected = pipeline.topics.keys().cloned().collect();
            let server = crate::api::start(queue.clone(), &args.listen, Some(metrics), protected)?;
            tracing::info!(addr = %server.addr, "HTTP API at http://{}", server.addr);
            Some(server)
        }
        None => None,
    };
    let live = crate::live::LiveView::start(stats, total);
    tracing::info!(pipeline = %pipeline.name, data_dir = %dir.display(), drain = args.drain, stage_threads = pipeline.stage_threads(), "pipeline starting");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_takes_a_place_a_time_a_duration_ago_or_an_offset() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_from("beginning", now).unwrap(), StartFrom::Earliest);
        assert_eq!(parse_from("end", now).unwrap(), StartFrom::Latest);
        assert_eq!(parse_from("42", now).unwrap(), StartFrom::Offset(42));
        assert_eq!(parse_from("90s", now).unwrap(), StartFrom::Time(now - 90_000));
        assert_eq!(parse_from("2h", now).unwrap(), StartFrom::Time(now - 7_200_000));
        assert_eq!(parse_from("1d", now).unwrap(), StartFrom::Time(now - 86_400_000));
        assert_eq!(parse_from("2026-12-01T22:00:00Z", now).unwrap(), StartFrom::Time(1_796_162_400_000));
        for bad in ["", "yesterday", "5x", "m", "-3"] {
            let e = parse_from(bad, now).unwrap_err().to_string();
            assert!(e.contains("give `beginning`, `end`, a time"), "{bad}: {e}");
        }
    }
}
