//! `weir consume`: print messages of a topic.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use weir_queue::{ConsumerOptions, Message, Queue, StartFrom, StoredRecord};

#[derive(Args)]
pub(crate) struct ConsumeArgs {
    /// The topic; with `--nats`, the subject (as for `weir produce --nats`),
    /// read from the stream that captures it.
    topic: String,
    /// Read a JetStream stream of NATS at URL instead of the embedded queue.
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// With `--nats`: authenticate with this token.
    #[arg(long, env = "NATS_TOKEN", value_name = "TOKEN", requires = "nats", hide_env_values = true)]
    nats_token: Option<String>,
    /// With `--nats`: the stream to read [default: the one capturing the subject].
    #[arg(long, value_name = "NAME", requires = "nats")]
    stream: Option<String>,
    /// Old form: the positional argument named the stream and this the
    /// subject (warns; goes away in the next release).
    #[arg(long, value_name = "SUBJECT", requires = "nats", hide = true)]
    subject: Option<String>,
    /// Where to start: `earliest` (the oldest message kept) or `latest`
    /// (only messages published from now on) [default: earliest; with
    /// `--follow`, latest]. A `--group` that exists resumes where it
    /// committed; this is where a new one starts.
    #[arg(long, value_enum, value_name = "WHERE")]
    start: Option<Start>,
    /// Old spelling of `--start earliest` (warns; goes away in the next release).
    #[arg(long, hide = true)]
    from_beginning: bool,
    /// Stop after this many messages (with `--follow`, wait for them).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Keep waiting for new messages instead of exiting when caught up.
    #[arg(long)]
    follow: bool,
    /// Consume as this consumer group: resume from its committed offsets and
    /// commit what was printed. Without a group nothing is written, and it
    /// works while another weir process owns the data directory. With
    /// `--nats`, a durable consumer of this name, acknowledging what was printed.
    #[arg(long, value_name = "G")]
    group: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// `--start`: the words of a queue source's `start` and the HTTP API's `?start=`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Start {
    /// The oldest message kept.
    Earliest,
    /// Only messages published from now on.
    Latest,
}

impl ConsumeArgs {
    /// Where to start: `--start`, else earliest, or latest when following.
    fn start(&self) -> Start {
        if self.from_beginning {
            eprintln!("weir: --from-beginning is now spelled --start earliest (the default without --follow)");
        }
        match (self.start, self.from_beginning) {
            (Some(s), _) => s,
            (None, true) => Start::Earliest,
            (None, false) if self.follow => Start::Latest,
            (None, false) => Start::Earliest,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// The payload as text, one message per line.
    Text,
    /// One JSON object per line with key, headers, offset and timestamp.
    Json,
}

const POLL: Duration = Duration::from_millis(100);

pub(crate) fn consume(args: ConsumeArgs, dir: PathBuf) -> anyhow::Result<()> {
    let start = args.start();
    if let Some(url) = &args.nats {
        return tokio::runtime::Runtime::new()?.block_on(consume_nats(&args, url, start));
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut printed = 0u64;
    let limit = args.count.unwrap_or(u64::MAX);
    let print = |out: &mut std::io::StdoutLock<'_>, topic: &str, r: StoredRecord| -> std::io::Result<()> {
        match args.format {
            Format::Text => {
                out.write_all(&r.payload)?;
                out.write_all(b"\n")?;
            }
            Format::Json => {
                writeln!(out, "{}", weir_queue::json::message(&Message::from_stored(topic.into(), r, 1)))?;
            }
        }
        Ok(())
    };
    if let (Some(group), Some(api)) = (&args.group, crate::api::running(&dir)) {
        // Another weir process owns the directory: consume through its API.
        let start = match start {
            Start::Earliest => "earliest",
            Start::Latest => "latest",
        };
        let base = format!("/v1/topics/{}/groups/{group}", args.topic);
        while printed < limit {
            let want = (limit - printed).min(1000);
            let wait_ms = if args.follow { 1000 } else { 100 };
            let batch =
                api.call("GET", &format!("{base}/messages?max={want}&wait_ms={wait_ms}&start={start}"), "application/json", Vec::new())?;
            let msgs = batch["messages"].as_array().cloned().unwrap_or_default();
            if msgs.is_empty() && !args.follow {
                break;
            }
            let mut ids = Vec::with_capacity(msgs.len());
            for mut m in msgs {
                ids.push(serde_json::json!({ "partition": m["partition"], "offset": m["offset"] }));
                match args.format {
                    Format::Text => {
                        let r = weir_queue::json::record_from_json(&m).map_err(|e| anyhow::anyhow!("a message from the server: {e}"))?;
                        out.write_all(&r.payload)?;
                        out.write_all(b"\n")?;
                    }
                    Format::Json => {
                        m.as_object_mut().map(|o| o.remove("attempt"));
                        writeln!(out, "{m}")?;
                    }
                }
                printed += 1;
            }
            out.flush()?;
            if !ids.is_empty() {
                api.call("POST", &format!("{base}/ack"), "application/json", serde_json::json!({ "ids": ids }).to_string().into_bytes())?;
            }
        }
        return Ok(());
    }
    if let Some(group) = &args.group {
        let queue = Queue::open(&dir).with_context(|| format!("opening data directory {}", dir.display()))?;
        let start = match start {
            Start::Earliest => StartFrom::Earliest,
            Start::Latest => StartFrom::Latest,
        };
        let mut consumer = queue.consumer(&args.topic, group, ConsumerOptions { start, ..ConsumerOptions::default() })?;
        while printed < limit {
            let want = (limit - printed).min(1000) as usize;
            let batch = consumer.fetch(want, POLL)?;
            if batch.is_empty() && !args.follow {
                break;
            }
            for d in batch {
                let id = d.id();
                print(&mut out, &args.topic, d.record)?;
                consumer.ack(id);
                printed += 1;
            }
            out.flush()?;
            consumer.commit()?;
        }
        return Ok(());
    }
    let queue = Queue::open_read_only(&dir)
        .with_context(|| format!("opening data directory {} (has anything been produced there?)", dir.display()))?;
    let info = queue.topic_info(&args.topic)?;
    let mut next: Vec<u64> = info.offsets.iter().map(|&(first, end)| if start == Start::Earliest { first } else { end }).collect();
    while printed < limit {
        let mut got = false;
        for (p, pos) in next.iter_mut().enumerate() {
            let want = (limit - printed).min(1000) as usize;
            if want == 0 {
                break;
            }
            for r in queue.read(&args.topic, p as u32, *pos, want)? {
                *pos = r.offset + 1;
                print(&mut out, &args.topic, r)?;
                printed += 1;
                got = true;
            }
        }
        out.flush()?;
        if !got {
            if !args.follow {
                break;
            }
            std::thread::sleep(POLL);
        }
    }
    Ok(())
}

/// The stream to read and the subject to read from it: the positional
/// subject, in the stream `--stream` names or else the one capturing it.
/// The old form (the positional a stream, `--subject` the filter) still
/// works, with a notice.
async fn nats_stream_and_subject(args: &ConsumeArgs, js: &async_nats::jetstream::Context) -> anyhow::Result<(String, String)> {
    const OLD_FORM: &str = "weir: the argument of consume --nats is now a subject, as for produce --nats; name a stream with --stream NAME";
    if let Some(stream) = &args.stream {
        return Ok((stream.clone(), args.topic.clone()));
    }
    if let Some(subject) = &args.subject {
        eprintln!("{OLD_FORM}");
        return Ok((args.topic.clone(), subject.clone()));
    }
    match js.stream_by_subject(args.topic.as_str()).await {
        Ok(stream) => Ok((stream, args.topic.clone())),
        Err(e) => {
            if js.get_stream(&args.topic).await.is_ok() {
                eprintln!("{OLD_FORM}");
                return Ok((args.topic.clone(), String::new()));
            }
            Err(anyhow::anyhow!("no JetStream stream captures subject {} ({e}); name one with --stream NAME", args.topic))
        }
    }
}

/// `weir consume --nats URL SUBJECT`: print a JetStream stream's messages,
/// through an ephemeral consumer (nothing is acknowledged) or, with `--group`, a
/// durable one that acknowledges what was printed.
async fn consume_nats(args: &ConsumeArgs, url: &str, start: Start) -> anyhow::Result<()> {
    use async_nats::jetstream::{self, consumer};
    use futures::StreamExt;

    let conn = weir_engine::config::NatsConnection { token: args.nats_token.clone(), ..weir_engine::config::NatsConnection::to(url) };
    let client = weir_engine::nats::connect(&conn).await?;
    let js = jetstream::new(client.clone());
    let (stream_name, filter_subject) = nats_stream_and_subject(args, &js).await?;
    let stream = js.get_stream(&stream_name).await.with_context(|| format!("stream {stream_name}"))?;
    let deliver_policy = match start {
        Start::Earliest => consumer::DeliverPolicy::All,
        Start::Latest => consumer::DeliverPolicy::New,
    };
    let consumer: consumer::PullConsumer = match &args.group {
        Some(group) => {
            let config = consumer::pull::Config { durable_name: Some(group.clone()), deliver_policy, filter_subject, ..Default::default() };
            stream.get_or_create_consumer(group, config).await?
        }
        None => {
            // Ephemeral and unacknowledged: gone 30 s after this command ends.
            let config = consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                deliver_policy,
                filter_subject,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            };
            stream.create_consumer(config).await?
        }
    };
    let mut messages = consumer.messages().await?;
    let stdout = std::io::stdout();
    let limit = args.count.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    while printed < limit {
        // Not following: stop once nothing more comes (the stream is caught up).
        let next =
            if args.follow { Ok(messages.next().await) } else { tokio::time::timeout(Duration::from_secs(1), messages.next()).await };
        let Ok(Some(m)) = next else { break };
        let m = m.map_err(|e| anyhow::anyhow!("reading stream {}: {e}", args.topic))?;
        let pending = m.info().map(|i| i.pending).unwrap_or(1);
        let Some((msg, reply)) = weir_engine::nats::jetstream_message(m) else { continue };
        {
            let mut out = stdout.lock();
            match args.format {
                Format::Text => {
                    out.write_all(&msg.payload)?;
                    out.write_all(b"\n")?;
                }
                Format::Json => writeln!(out, "{}", weir_queue::json::message(&msg))?,
            }
            out.flush()?;
        }
        if args.group.is_some() {
            jetstream::message::Acker::new(js.clone(), Some(reply)).ack().await.map_err(|e| anyhow::anyhow!("acknowledging: {e}"))?;
        }
        printed += 1;
        if pending == 0 && !args.follow {
            break;
        }
    }
    client.flush().await?;
    Ok(())
}
