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
    /// The topic; created with default settings if it does not exist.
    topic: String,
    /// Key of every message (selects the partition).
    #[arg(long)]
    key: Option<String>,
    /// A header `name=value` on every message; repeatable.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

pub(crate) fn produce(args: ProduceArgs, dir: PathBuf) -> anyhow::Result<()> {
    let queue = Queue::open(&dir).with_context(|| format!("opening data directory {}", dir.display()))?;
    queue.ensure_topic(&args.topic, &TopicConfig::default())?;
    let make = |line: Vec<u8>| {
        let mut r = Record::new(line);
        r.key = args.key.as_ref().map(|k| k.clone().into_bytes());
        r.headers = args.headers.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
        r
    };
    // partition -> (first offset, last offset, count)
    let mut ranges: BTreeMap<u32, (u64, u64, u64)> = BTreeMap::new();
    let mut total = 0u64;
    let mut batch = Vec::with_capacity(BATCH);
    let stdin = std::io::stdin();
    // Lines are bytes: a payload need not be UTF-8. A trailing "\r" is kept.
    let mut lines = stdin.lock().split(b'\n');
    loop {
        let line = lines.next().transpose().context("reading standard input")?;
        let done = line.is_none();
        if let Some(line) = line {
            batch.push(make(line));
        }
        if batch.len() == BATCH || (done && !batch.is_empty()) {
            let positions = queue.publish(&args.topic, &batch)?;
            for (p, o) in positions {
                let e = ranges.entry(p).or_insert((o, o, 0));
                e.1 = o;
                e.2 += 1;
            }
            total += batch.len() as u64;
            batch.clear();
        }
        if done {
            break;
        }
    }
    if total == 0 {
        bail!("no lines on standard input: nothing published");
    }
    let parts: Vec<String> =
        ranges
            .iter()
            .map(|(p, (first, last, n))| {
                if first == last {
                    format!("partition {p} offset {first}")
                } else {
                    format!("partition {p} offsets {first}..={last} ({n})")
                }
            })
            .collect();
    println!("published {total} message{} to {}: {}", if total == 1 { "" } else { "s" }, args.topic, parts.join(", "));
    Ok(())
}
