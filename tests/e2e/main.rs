//! End-to-end tests: they drive the real `weir` binary as a user would.

mod bad_input;
mod bench;
mod console;
mod containment;
mod hello;
mod http;
mod metrics;
mod nats;
mod operate;
mod pipeline_test;
mod pipelines;
mod projects;
mod readme;
mod state;
mod terminal;
mod ui;
mod windows;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub use weir_e2e::{component, repo_root};

/// A `weir` binary bound to a fresh data directory.
pub struct Weir {
    pub data: tempfile::TempDir,
}

impl Default for Weir {
    fn default() -> Self {
        Self::new()
    }
}

impl Weir {
    pub fn new() -> Self {
        Weir { data: tempfile::tempdir().unwrap() }
    }

    pub fn bin() -> PathBuf {
        PathBuf::from(env!("CARGO_BIN_EXE_weir"))
    }

    /// `weir ARGS --data-dir DATA`, run from the repository root.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(Self::bin());
        c.args(args).arg("--data-dir").arg(self.data.path()).current_dir(repo_root()).env("WEIR_LOG", "warn");
        c
    }

    /// Run with `stdin` as input; returns the output whatever the exit status.
    pub fn output(&self, args: &[&str], stdin: &[u8]) -> Output {
        Self::output_of(self.cmd(args), stdin)
    }

    /// [`Weir::output`] for a command made by [`Weir::cmd`] and adjusted (its environment, say).
    pub fn output_of(mut cmd: Command, stdin: &[u8]) -> Output {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        // Fed from another thread: a large input must not block while the
        // command waits for us to read its output. It may also exit without
        // reading its input (e.g. on an error).
        let mut input = child.stdin.take().unwrap();
        let stdin = stdin.to_vec();
        let feeder = std::thread::spawn(move || drop(input.write_all(&stdin)));
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        out
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str], stdin: &[u8]) -> String {
        let out = self.output(args, stdin);
        assert!(out.status.success(), "weir {args:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run and require failure; returns stderr.
    pub fn fails(&self, args: &[&str], stdin: &[u8]) -> String {
        let out = self.output(args, stdin);
        assert!(!out.status.success(), "weir {args:?} should have failed; stdout: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8(out.stderr).unwrap()
    }

    pub fn produce(&self, topic: &str, lines: &[&str]) {
        let mut input = lines.join("\n");
        input.push('\n');
        self.ok(&["produce", topic], input.as_bytes());
    }

    /// Every payload of `topic`, from the beginning.
    pub fn consume_all(&self, topic: &str) -> Vec<String> {
        self.ok(&["consume", topic], b"").lines().map(str::to_owned).collect()
    }

    /// Messages stored in `topic` over all partitions (0 until it exists),
    /// from `weir topics describe`.
    pub fn topic_len(&self, topic: &str) -> u64 {
        let info = String::from_utf8(self.output(&["topics", "describe", topic], b"").stdout).unwrap();
        info.lines().filter_map(|l| l.split('(').nth(1)?.split(' ').next()?.parse::<u64>().ok()).sum()
    }

    /// Every message of `topic` as JSON.
    pub fn consume_json(&self, topic: &str) -> Vec<serde_json::Value> {
        self.ok(&["consume", topic, "--format", "json"], b"").lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

/// Wait for `child` to exit and collect its output; if it has not exited
/// within `within`, kill it and fail: weir must never hang.
pub fn finish_within(mut child: std::process::Child, within: std::time::Duration) -> Output {
    let started = std::time::Instant::now();
    // Read its pipes meanwhile, so a chatty child does not block on them.
    let readers: Vec<std::thread::JoinHandle<Vec<u8>>> = [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .map(|pipe| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                std::io::Read::read_to_end(&mut p, &mut buf).ok();
            }
            buf
        })
    })
    .collect();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > within {
            child.kill().ok();
            child.wait().ok();
            let err = readers.into_iter().nth(1).and_then(|h| h.join().ok()).unwrap_or_default();
            panic!("weir did not exit within {within:?} (killed):\n{}", String::from_utf8_lossy(&err));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut pipes = readers.into_iter().map(|h| h.join().unwrap());
    Output { status, stdout: pipes.next().unwrap(), stderr: pipes.next().unwrap() }
}

/// A hostile stage between topic `in` and topic `out`, with default limits
/// but for attempts (two, at once) and `extra` keys.
pub fn hostile_pipeline(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    one_stage_pipeline(dir, "hostile", extra)
}

/// Pipeline `h`: stage `component` (named after it) between topic `in`
/// and topic `out`, with default limits but for attempts (two, at once)
/// and `extra` keys.
pub fn one_stage_pipeline(dir: &std::path::Path, component: &str, extra: &str) -> std::path::PathBuf {
    pipeline_file(
        dir,
        &format!("{component}.toml"),
        &format!(
            r#"[pipeline]
name = "h"

[source]
type = "queue"
topic = "in"

[[stage]]
name = "{component}"
module = "{{component:{component}}}"
max_attempts = 2
retry_backoff_ms = 0
{extra}

[[sink]]
type = "queue"
topic = "out"
"#
        ),
    )
}

/// A JSON file, such as a `--report`.
pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Write a pipeline file into `dir`, replacing `{component:NAME}` with the
/// absolute path of that example component.
pub fn pipeline_file(dir: &Path, name: &str, toml: &str) -> PathBuf {
    let mut text = toml.to_owned();
    while let Some(start) = text.find("{component:") {
        let end = start + text[start..].find('}').unwrap();
        let comp = component(&text[start + 11..end]);
        text.replace_range(start..=end, comp.to_str().unwrap());
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
