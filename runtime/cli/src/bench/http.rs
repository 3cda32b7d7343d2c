//! `weir bench http`: publish throughput through the HTTP API, against the
//! same batches published straight into the queue in the same run; and the
//! HTTP side of `weir bench queue --compare http`: the queue workload on a
//! weir broker in another process.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use weir_queue::{Queue, Record, TopicConfig};

use super::{QueueArgs, QueueResult, histogram, shares};

#[derive(Args)]
pub(crate) struct HttpArgs {
    /// Messages to publish, in all.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Messages per request (NDJSON).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
}

/// One side's figures.
struct Side {
    secs: f64,
    hist: hdrhistogram::Histogram<u64>,
}

pub(crate) fn bench_http(args: &HttpArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.messages > 0 && args.batch > 0 && args.clients > 0, "--messages, --batch and --clients must be > 0");
    let payload = "x".repeat(args.size);
    let line = format!("{{\"payload\":\"{payload}\"}}\n");

    // Baseline: the same batches, the same concurrency, straight into a queue.
    let dir = tempfile::tempdir()?;
    let queue = Queue::open(dir.path().join("direct"))?;
    queue.create_topic("bench", &TopicConfig::default())?;
    let direct = run_clients(args.messages, args.clients, args.batch, |_| {
        let queue = queue.clone();
        let batch: Vec<Record> = (0..args.batch).map(|_| Record::new(payload.clone().into_bytes())).collect();
        move |n: usize| queue.publish("bench", &batch[..n]).map(|_| ()).map_err(anyhow::Error::from)
    })?;

    let queue = Queue::open(dir.path().join("http"))?;
    queue.create_topic("bench", &TopicConfig::default())?;
    let listen = crate::api::ListenArgs::on(([127, 0, 0, 1], 0).into());
    let server = crate::api::start(queue.clone(), &listen, None, Vec::new())?;
    let url = format!("http://{}/v1/topics/bench/messages", server.addr);
    let bodies: Arc<Vec<String>> = Arc::new((0..=args.batch).map(|n| line.repeat(n)).collect());
    let http = run_clients(args.messages, args.clients, args.batch, |_| {
        let agent = agent();
        let (url, bodies) = (url.clone(), bodies.clone());
        move |n: usize| {
            agent.post(&url).header("content-type", "application/x-ndjson").send(bodies[n].as_str())?.body_mut().read_to_string()?;
            Ok(())
        }
    })?;
    let stored: u64 = queue.topic_info("bench")?.len();
    anyhow::ensure!(stored == args.messages, "the topic holds {stored} messages, not {}", args.messages);

    let rate = |s: &Side| args.messages as f64 / s.secs;
    println!(
        "{} messages of {} bytes, batches of {}, {} clients; topic fsync = always",
        args.messages, args.size, args.batch, args.clients
    );
    println!("{:<28} {:>12} {:>14} {:>14}", "publish", "msg/s", "p50 per batch", "p99 per batch");
    for (name, side) in [("queue.publish (in process)", &direct), ("HTTP POST (NDJSON)", &http)] {
        println!(
            "{name:<28} {:>12.0} {:>11} µs {:>11} µs",
            rate(side),
            side.hist.value_at_quantile(0.5),
            side.hist.value_at_quantile(0.99)
        );
    }
    println!("HTTP / in process: {:.2}", rate(&http) / rate(&direct));
    Ok(())
}

/// One client: one connection, kept alive; a status of 400 or more is an error.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(true).build().into()
}

/// The queue workload of `weir bench queue` on the weir broker at
/// `args.http_url`: `args.producers` clients publish NDJSON batches of
/// `args.batch` (keys spread them over partitions, ids when `--ids`), then
/// one client fetches `args.batch` at a time and acknowledges each fetch
/// with one request, which commits the group's offsets.
pub(crate) fn broker(args: &QueueArgs) -> anyhow::Result<QueueResult> {
    let base = args.http_url.trim_end_matches('/').to_owned();
    let admin = agent();
    // A topic left by an earlier run goes; 404 when there is none.
    let _ = admin.delete(format!("{base}/v1/topics/bench")).call();
    let topic = serde_json::json!({"name": "bench", "partitions": args.partitions, "fsync": args.fsync.as_str()});
    admin
        .post(format!("{base}/v1/topics"))
        .header("content-type", "application/json")
        .send(topic.to_string().as_str())
        .with_context(|| format!("creating topic bench on the weir broker at {base} (is `weir serve` running?)"))?;

    let payload = "x".repeat(args.size);
    let url = format!("{base}/v1/topics/bench/messages");
    let published = run_clients(args.messages, args.producers, args.batch, |p| {
        let (agent, url, payload, ids) = (agent(), url.clone(), payload.clone(), args.ids);
        let mut sent = 0u64;
        let mut body = String::new();
        move |n: usize| {
            body.clear();
            for i in sent..sent + n as u64 {
                let key = (i as u32 ^ p as u32).to_string();
                let id = if ids { format!(",\"id\":\"{p}/{i}\"") } else { String::new() };
                writeln!(body, "{{\"payload\":\"{payload}\",\"key\":\"{key}\"{id}}}")?;
            }
            agent.post(&url).header("content-type", "application/x-ndjson").send(body.as_str())?.body_mut().read_to_string()?;
            sent += n as u64;
            Ok(())
        }
    })?;

    let started = Instant::now();
    let fetch = format!("{base}/v1/topics/bench/groups/bench/messages?max={}&wait_ms=1000", args.batch);
    let ack = format!("{base}/v1/topics/bench/groups/bench/ack");
    let mut consumed = 0u64;
    while consumed < args.messages {
        let body = admin.get(&fetch).call()?.body_mut().read_to_string()?;
        let got: serde_json::Value = serde_json::from_str(&body)?;
        let ids: Vec<_> = got["messages"]
            .as_array()
            .context("a fetch answered without messages")?
            .iter()
            .map(|m| serde_json::json!({"partition": m["partition"], "offset": m["offset"]}))
            .collect();
        anyhow::ensure!(!ids.is_empty(), "the broker's consumer stalled after {consumed} of {} messages", args.messages);
        consumed += ids.len() as u64;
        let ids = serde_json::json!({ "ids": ids });
        admin.post(&ack).header("content-type", "application/json").send(ids.to_string().as_str())?.body_mut().read_to_string()?;
    }
    let consume_secs = started.elapsed().as_secs_f64();
    Ok(QueueResult::new("weir over HTTP", args, published.secs, consume_secs, &published.hist, None))
}

/// Publish `messages` from `clients` threads in batches of `batch`, each
/// thread calling the function `make` gives it with the size of its next
/// batch.
fn run_clients<F, M>(messages: u64, clients: usize, batch: usize, make: M) -> anyhow::Result<Side>
where
    M: Fn(usize) -> F,
    F: FnMut(usize) -> anyhow::Result<()> + Send + 'static,
{
    let started = Instant::now();
    let handles: Vec<_> = shares(messages, clients)
        .into_iter()
        .enumerate()
        .map(|(i, count)| {
            let mut publish = make(i);
            let batch = batch as u64;
            std::thread::spawn(move || -> anyhow::Result<hdrhistogram::Histogram<u64>> {
                let mut hist = histogram();
                let mut sent = 0;
                while sent < count {
                    let n = batch.min(count - sent);
                    let t = Instant::now();
                    publish(n as usize)?;
                    hist.record(t.elapsed().as_micros().max(1) as u64)?;
                    sent += n;
                }
                Ok(hist)
            })
        })
        .collect();
    let mut hist = histogram();
    for h in handles {
        hist.add(h.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??)?;
    }
    Ok(Side { secs: started.elapsed().as_secs_f64(), hist })
}
