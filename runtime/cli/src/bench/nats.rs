//! The same queue workload on NATS JetStream (file storage) through async-nats,
//! for the side-by-side figure in `weir bench queue --compare nats`.

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull, stream::StorageType};
use futures::StreamExt;

use super::{QueueArgs, QueueResult, histogram, shares};

pub(crate) fn jetstream(args: &QueueArgs) -> anyhow::Result<QueueResult> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: &QueueArgs) -> anyhow::Result<QueueResult> {
    let client = async_nats::connect(&args.nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {} (is nats-server -js running?)", args.nats_url))?;
    let js = jetstream::new(client);
    let name = format!("weir-bench-{}", std::process::id());
    let _ = js.delete_stream(&name).await;
    js.create_stream(jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("{name}.>")],
        storage: StorageType::File,
        ..Default::default()
    })
    .await
    .context("creating the JetStream benchmark stream")?;
    let result = workload(args, &js, &name).await;
    let _ = js.delete_stream(&name).await;
    result
}

async fn workload(args: &QueueArgs, js: &jetstream::Context, name: &str) -> anyhow::Result<QueueResult> {
    let payload = bytes::Bytes::from(vec![b'x'; args.size]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (p, count) in shares(args.messages, args.producers).into_iter().enumerate() {
        let js = js.clone();
        let payload = payload.clone();
        let subject = format!("{name}.p{}", p as u32 % args.partitions.max(1));
        let batch = args.batch as u64;
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut sent = 0u64;
            while sent < count {
                let n = batch.min(count - sent);
                let t = Instant::now();
                // Pipelined: send the whole batch, then wait for every ack.
                let mut acks = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    acks.push(js.publish(subject.clone(), payload.clone()).await?);
                }
                for ack in acks {
                    ack.await?;
                }
                hist.record(t.elapsed().as_micros().max(1) as u64)?;
                sent += n;
            }
            anyhow::Ok(hist)
        }));
    }
    let mut hist = histogram();
    for t in tasks {
        hist.add(t.await??)?;
    }
    let publish_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let stream = js.get_stream(name).await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await?;
    let mut consumed = 0u64;
    while consumed < args.messages {
        let mut batch = consumer.fetch().max_messages(1000).expires(Duration::from_secs(2)).messages().await?;
        let mut got = 0;
        while let Some(msg) = batch.next().await {
            msg.map_err(|e| anyhow::anyhow!("{e}"))?.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            got += 1;
        }
        anyhow::ensure!(got > 0, "JetStream consumer stalled after {consumed} of {} messages", args.messages);
        consumed += got;
    }
    let consume_secs = started.elapsed().as_secs_f64();
    Ok(QueueResult::new("NATS JetStream", args, publish_secs, consume_secs, &hist, None))
}
