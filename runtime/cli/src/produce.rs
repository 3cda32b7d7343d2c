//! `weir produce`: publish lines from standard input.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use weir_queue::{Queue, Record, TopicConfig};

/// Lines published per call (one fsync per call under fsync = "always").
const BATCH: usize = 1000;

#[derive(Args)]
pub(crate) struct ProduceArgs {
    /// The topic; created with default settings if it does not exist. With
    /// `--nats`, the subject to publish to.
    topic: String,
    /// Publish to NATS at URL (comma-separated for several) instead of the
    /// embedded queue: through JetStream, each message acknowledged by the
    /// stream that captures the subject.
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// With `--nats`: authenticate with this token.
    #[arg(long, env = "NATS_TOKEN", value_name = "TOKEN", requires = "nats", hide_env_values = true)]
    nats_token: Option<String>,
    /// With `--nats`: create this stream, capturing the subject, if no stream captures it.
    #[arg(long, value_name = "NAME", requires = "nats")]
    stream: Option<String>,
    /// With `--nats`: core publish (no stream, no acknowledgement).
    #[arg(long, requires = "nats", conflicts_with = "stream")]
    core: bool,
    /// Key of every message (selects the partition).
    #[arg(long)]
    key: Option<String>,
    /// A header `name=value` on every message; repeatable.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
}

impl ProduceArgs {
    /// A line as a message with the key and headers given.
    fn record(&self, line: Vec<u8>) -> Record {
        let mut r = Record::new(line);
        r.key = self.key.as_ref().map(|k| k.clone().into_bytes());
        r.headers = self.headers.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
        r
    }
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

pub(crate) fn produce(args: ProduceArgs, dir: PathBuf) -> anyhow::Result<()> {
    if let Some(url) = &args.nats {
        return tokio::runtime::Runtime::new()?.block_on(produce_nats(&args, url));
    }
    if let Some(api) = crate::api::running(&dir) {
        return produce_http(&args, &api);
    }
    let queue = Queue::open(&dir).with_context(|| format!("opening data directory {}", dir.display()))?;
    queue.ensure_topic(&args.topic, &TopicConfig::default())?;
    let published = publish_lines(|batch| Ok(queue.publish(&args.topic, &batch.into_iter().map(|l| args.record(l)).collect::<Vec<_>>())?))?;
    published.print(&args.topic)
}

/// `weir produce` while another weir process owns the data directory and
/// serves its HTTP API: the same, through it.
fn produce_http(args: &ProduceArgs, api: &crate::api::Client) -> anyhow::Result<()> {
    // Created with default settings if absent, as without a server.
    let topic_path = format!("/v1/topics/{}", args.topic);
    if api.call("GET", &topic_path, "application/json", Vec::new()).is_err() {
        let create = serde_json::json!({ "name": args.topic }).to_string().into_bytes();
        if let Err(e) = api.call("POST", "/v1/topics", "application/json", create) {
            api.call("GET", &topic_path, "application/json", Vec::new()).map_err(|_| e)?;
        }
    }
    let path = format!("{topic_path}/messages");
    let published = publish_lines(|batch| {
        let mut body = Vec::new();
        for line in batch {
            body.extend_from_slice(weir_queue::json::record_json(&args.record(line)).to_string().as_bytes());
            body.push(b'\n');
        }
        let answer = api.call("POST", &path, "application/x-ndjson", body)?;
        let offsets = answer["offsets"].as_array().context("an answer without offsets")?;
        Ok(offsets.iter().filter_map(|o| Some((o["partition"].as_u64()? as u32, o["offset"].as_u64()?))).collect())
    })?;
    published.print(&args.topic)
}

/// What was published: per partition (first offset, last offset, count).
struct Published {
    ranges: BTreeMap<u32, (u64, u64, u64)>,
    total: u64,
}

/// Read standard input's lines and hand them to `publish` `BATCH` at a time.
fn publish_lines(mut publish: impl FnMut(Vec<Vec<u8>>) -> anyhow::Result<Vec<(u32, u64)>>) -> anyhow::Result<Published> {
    let mut out = Published { ranges: BTreeMap::new(), total: 0 };
    let mut batch = Vec::with_capacity(BATCH);
    let stdin = std::io::stdin();
    // Lines are bytes: a payload need not be UTF-8. A trailing "\r" is kept.
    let mut lines = stdin.lock().split(b'\n');
    loop {
        let line = lines.next().transpose().context("reading standard input")?;
        let done = line.is_none();
        if let Some(line) = line {
            batch.push(line);
        }
        if batch.len() == BATCH || (done && !batch.is_empty()) {
            out.total += batch.len() as u64;
            for (p, o) in publish(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))? {
                let e = out.ranges.entry(p).or_insert((o, o, 0));
                e.1 = o;
                e.2 += 1;
            }
        }
        if done {
            return Ok(out);
        }
    }
}

impl Published {
    fn print(&self, topic: &str) -> anyhow::Result<()> {
        if self.total == 0 {
            bail!("no lines on standard input: nothing published");
        }
        let parts: Vec<String> = self
            .ranges
            .iter()
            .map(|(p, (first, last, n))| {
                if first == last {
                    format!("partition {p} offset {first}")
                } else {
                    format!("partition {p} offsets {first}..={last} ({n})")
                }
            })
            .collect();
        println!("published {} message{} to {topic}: {}", self.total, if self.total == 1 { "" } else { "s" }, parts.join(", "));
        Ok(())
    }
}

/// `weir produce --nats URL SUBJECT`: lines to a NATS subject, a batch of
/// publishes in flight at a time, each awaited for the stream's ack.
async fn produce_nats(args: &ProduceArgs, url: &str) -> anyhow::Result<()> {
    use async_nats::jetstream;
    use tokio::io::AsyncBufReadExt;

    let conn = weir_engine::config::NatsConnection { token: args.nats_token.clone(), ..weir_engine::config::NatsConnection::to(url) };
    let client = weir_engine::nats::connect(&conn).await?;
    let js = jetstream::new(client.clone());
    let subject = args.topic.clone();
    if !args.core {
        let create =
            args.stream.as_ref().map(|name| weir_engine::config::StreamSpec { name: name.clone(), subjects: vec![subject.clone()] });
        weir_engine::nats::ensure_stream(&js, &subject, create.as_ref()).await?;
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).split(b'\n');
    let (mut total, mut first, mut last) = (0u64, None, 0u64);
    let mut acks = Vec::with_capacity(BATCH);
    loop {
        let line = lines.next_segment().await.context("reading standard input")?;
        let done = line.is_none();
        if let Some(line) = line {
            let (headers, payload) = weir_engine::nats::to_nats(args.record(line));
            if args.core {
                client.publish_with_headers(subject.clone(), headers, payload).await?;
            } else if first.is_none() {
                // The first alone, until the stream takes it: a stream that
                // another process has just created can answer "no stream"
                // for a moment (a retry cannot reorder anything yet).
                let mut tries = 0;
                let publish = || jetstream::message::PublishMessage::build().payload(payload.clone()).headers(headers.clone());
                let ack = loop {
                    match js.send_publish(subject.clone(), publish()).await?.await {
                        Err(e) if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound && tries < 50 => {
                            tries += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        ack => break ack.context("waiting for the stream to acknowledge")?,
                    }
                };
                (first, last) = (Some(ack.sequence), ack.sequence);
            } else {
                let message = jetstream::message::PublishMessage::build().payload(payload).headers(headers);
                acks.push(js.send_publish(subject.clone(), message).await?);
            }
            total += 1;
        }
        if acks.len() == BATCH || done {
            // Together: after a lost connection, one timeout for the batch, not one per message.
            for ack in futures::future::join_all(acks.drain(..).map(std::future::IntoFuture::into_future)).await {
                let ack = ack.context("waiting for the stream to acknowledge")?;
                first.get_or_insert(ack.sequence);
                last = ack.sequence;
            }
        }
        if done {
            break;
        }
    }
    client.flush().await?;
    if total == 0 {
        bail!("no lines on standard input: nothing published");
    }
    let s = if total == 1 { "" } else { "s" };
    match first {
        Some(first) => println!("published {total} message{s} to {subject}: stream sequences {first}..={last}"),
        None => println!("published {total} message{s} to {subject} (core NATS, unacknowledged)"),
    }
    Ok(())
}
