//! `weir topics`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use weir_queue::{Fsync, Queue, TopicConfig};

#[derive(Subcommand)]
pub(crate) enum TopicsCommand {
    /// List topics with their partitions and message counts.
    List,
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Number of partitions (fixed for the topic's life).
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// When appends are made durable.
        #[arg(long, value_enum, default_value_t = FsyncArg::Always)]
        fsync: FsyncArg,
        /// With `--fsync interval`: the interval.
        #[arg(long, default_value_t = 100)]
        fsync_interval_ms: u64,
        /// Delete a partition's oldest segments once older than this.
        #[arg(long)]
        max_age_ms: Option<u64>,
        /// Delete a partition's oldest segments while it is larger than this.
        #[arg(long)]
        max_bytes: Option<u64>,
    },
    /// Show a topic's settings and per-partition offsets.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Delete a topic, its messages and its consumer groups' offsets.
    Delete {
        /// Topic name.
        name: String,
    },
}

/// `--fsync`: a topic's durability policy, as [`Fsync::parse`] reads it.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum FsyncArg {
    Always,
    Interval,
    Never,
}

impl FsyncArg {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FsyncArg::Always => "always",
            FsyncArg::Interval => "interval",
            FsyncArg::Never => "never",
        }
    }

    /// The policy, with `interval_ms` for `interval`.
    pub(crate) fn fsync(self, interval_ms: u64) -> Fsync {
        let interval_ms = (self == FsyncArg::Interval).then_some(interval_ms);
        Fsync::parse(Some(self.as_str()), interval_ms).expect("clap admits only the three policies")
    }
}

pub(crate) fn topics(cmd: TopicsCommand, dir: PathBuf) -> anyhow::Result<()> {
    let open_ro = || Queue::open_read_only(&dir).with_context(|| format!("opening data directory {}", dir.display()));
    match cmd {
        TopicsCommand::List => {
            let queue = open_ro()?;
            for t in queue.topics() {
                println!("{:<30} partitions={:<4} messages={}", t.name, t.config.partitions, t.len());
            }
        }
        TopicsCommand::Create { name, partitions, fsync, fsync_interval_ms, max_age_ms, max_bytes }
            if let Some(api) = crate::api::running(&dir) =>
        {
            let fsync = fsync.fsync(fsync_interval_ms);
            let body = serde_json::json!({
                "name": name, "partitions": partitions, "fsync": fsync.policy(), "fsync_interval_ms": fsync.interval_ms(),
                "max_age_ms": max_age_ms, "max_bytes": max_bytes,
            });
            let t = api.call("POST", "/v1/topics", "application/json", body.to_string().into_bytes())?;
            println!("created topic {} with {} partition(s)", t["name"].as_str().unwrap_or(&name), t["partitions"]);
        }
        TopicsCommand::Create { name, partitions, fsync, fsync_interval_ms, max_age_ms, max_bytes } => {
            let queue = Queue::open(&dir).with_context(|| format!("opening data directory {}", dir.display()))?;
            let config = TopicConfig { partitions, fsync: fsync.fsync(fsync_interval_ms), max_age_ms, max_bytes, ..TopicConfig::default() };
            let info = queue.create_topic(&name, &config)?;
            println!("created topic {} with {} partition(s)", info.name, info.config.partitions);
        }
        TopicsCommand::Delete { name } => {
            match crate::api::running(&dir) {
                Some(api) => drop(api.call("DELETE", &format!("/v1/topics/{name}"), "application/json", Vec::new())?),
                None => Queue::open(&dir).with_context(|| format!("opening data directory {}", dir.display()))?.delete_topic(&name)?,
            }
            println!("deleted topic {name}");
        }
        TopicsCommand::Describe { name } => {
            let queue = open_ro()?;
            let t = queue.topic_info(&name)?;
            println!("topic {}: {} partition(s), fsync {}", t.name, t.config.partitions, t.config.fsync);
            for (p, (start, end)) in t.offsets.iter().enumerate() {
                println!("  partition {p}: offsets {start}..{end} ({} messages)", end - start);
            }
        }
    }
    Ok(())
}
