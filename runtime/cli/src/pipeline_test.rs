//! `weir test PIPELINE.toml --input FILE --expect [TOPIC=]FILE --expect-dead FILE`:
//! run a pipeline over given input in a scratch data directory and compare
//! what comes out — its outputs, what it routes to topics, its dead
//! letters — with what is expected, showing a diff where they differ.
//!
//! The pipeline runs as written (its stages, their config, limits and
//! concurrency, routing, event time and watermarks) with three things
//! swapped: the source reads the input file (named after the real source,
//! so messages carry the same `topic`), every sink writes JSON lines into
//! the scratch directory, and dead letters go to a scratch topic. Nothing
//! is read from or written to the pipeline's data directory or NATS.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use weir_engine::config::{DeadLetterTo, Sink, Source};
use weir_engine::{Pipeline, RunOptions};
use weir_queue::{Fsync, Message, Queue, dlq_headers as dl};

use crate::Reported;

#[derive(clap::Args)]
pub(crate) struct TestArgs {
    /// The pipeline file.
    pipeline: PathBuf,
    /// The messages to feed the stages, in place of the pipeline's source:
    /// one payload per line, or, in a `.jsonl` or `.ndjson` file, one JSON
    /// message per line as `weir consume --format json` writes them (with
    /// `key`, `headers`, `timestamp_ms`).
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// The outputs the pipeline's sinks should get, in order: one payload
    /// per line, or, in a `.jsonl`/`.ndjson` file, one JSON object per line
    /// with the fields to compare (`payload`, `key`, `headers`, ...).
    /// `TOPIC=FILE`: the outputs the stages route to TOPIC. Repeatable.
    #[arg(long, value_name = "[TOPIC=]FILE")]
    expect: Vec<String>,
    /// The dead letters expected, in order: `STAGE: KIND: PAYLOAD` per line,
    /// or JSON lines as for `--expect`. Without it, a dead letter fails the test.
    #[arg(long, value_name = "FILE")]
    expect_dead: Option<PathBuf>,
    /// Compare the lines as sets, ignoring their order (outputs of
    /// different keys on a stage with concurrency > 1 may interleave
    /// differently from run to run).
    #[arg(long)]
    unordered: bool,
    /// Write what this run produced into the `--expect` and `--expect-dead`
    /// files instead of comparing (review the change before committing it).
    #[arg(long)]
    update: bool,
    /// Fail if the pipeline has not drained after this many seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    timeout: u64,
    /// Keep the scratch data directory, and say where it is, to look at
    /// with `weir consume --data-dir`.
    #[arg(long)]
    keep: bool,
}

/// How the lines of an input or expectation file are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// A payload per line (a dead letter: `STAGE: KIND: PAYLOAD`).
    Text,
    /// A JSON object per line.
    Json,
}

impl Format {
    fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl" | "ndjson") => Format::Json,
            _ => Format::Text,
        }
    }
}

/// What comes out of a pipeline, by where it goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Destination {
    /// The sinks that take the last stage's outputs.
    Outputs,
    /// Outputs routed to a topic.
    Routed(String),
    /// Dead letters.
    Dead,
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Outputs => write!(f, "outputs"),
            Destination::Routed(t) => write!(f, "outputs routed to `{t}`"),
            Destination::Dead => write!(f, "dead letters"),
        }
    }
}

/// An expectation file, read (or, with `--update`, perhaps not there yet).
struct Expected {
    path: PathBuf,
    format: Format,
    /// Its lines, JSON ones in canonical form.
    lines: Vec<String>,
    /// JSON: the fields compared, and the header names compared (`None`: all).
    fields: Fields,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fields {
    names: BTreeSet<String>,
    headers: Option<BTreeSet<String>>,
}

impl Default for Fields {
    /// What `--update` writes into a new JSON file.
    fn default() -> Self {
        Fields { names: ["payload", "key", "headers"].map(String::from).into(), headers: None }
    }
}

impl Expected {
    fn read(path: PathBuf, update: bool) -> anyhow::Result<Expected> {
        let format = Format::of(&path);
        let text = match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if update && e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let mut fields = Fields::default();
        if format == Format::Json {
            lines.retain(|l| !l.trim().is_empty());
            let objects = lines
                .iter()
                .enumerate()
                .map(|(i, l)| match serde_json::from_str::<Value>(l) {
                    Ok(Value::Object(o)) => Ok(o),
                    Ok(_) => bail!("{}:{}: not a JSON object", path.display(), i + 1),
                    Err(e) => bail!("{}:{}: not JSON: {e}", path.display(), i + 1),
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            if !objects.is_empty() {
                fields.names = objects.iter().flat_map(|o| o.keys().cloned()).collect();
                let named: BTreeSet<String> =
                    objects.iter().filter_map(|o| o.get("headers")?.as_object()).flat_map(|h| h.keys().cloned()).collect();
                fields.headers = Some(named);
            }
            lines = objects.into_iter().map(|o| canonical(Value::Object(o))).collect();
        }
        Ok(Expected { path, format, lines, fields })
    }

    /// `actual` as this file writes it.
    fn render(&self, dest: &Destination, actual: &[Value]) -> Vec<String> {
        match self.format {
            Format::Text => actual.iter().map(|m| text_line(dest, m)).collect(),
            Format::Json => actual.iter().map(|m| canonical(project(m, &self.fields))).collect(),
        }
    }
}

/// A message as a text line: its payload; a dead letter `STAGE: KIND: PAYLOAD`.
fn text_line(dest: &Destination, msg: &Value) -> String {
    let payload = text(&msg["payload"]);
    match dest {
        Destination::Dead => {
            let header = |name| text(&msg["headers"][name]);
            format!("{}: {}: {payload}", header(dl::STAGE), header(dl::ERROR_KIND))
        }
        _ => payload,
    }
}

/// Bytes as JSON (a string, or an array of bytes) as text.
fn text(v: &Value) -> String {
    String::from_utf8_lossy(&weir_queue::json::bytes_from_json(v).unwrap_or_default()).into_owned()
}

/// The fields of `msg` that `fields` compares.
fn project(msg: &Value, fields: &Fields) -> Value {
    let mut out = serde_json::Map::new();
    for name in &fields.names {
        let mut v = msg.get(name).cloned().unwrap_or(Value::Null);
        if let (Some(keep), "headers", Value::Object(h)) = (&fields.headers, name.as_str(), &mut v) {
            h.retain(|k, _| keep.contains(k));
        }
        out.insert(name.clone(), v);
    }
    Value::Object(out)
}

/// One line of JSON with sorted keys, leaving out null values and empty
/// objects (no key and no headers read the same however they are written).
fn canonical(v: Value) -> String {
    fn sorted(v: Value) -> Value {
        match v {
            Value::Object(o) => {
                let kept: BTreeMap<String, Value> = o
                    .into_iter()
                    .filter(|(_, v)| !v.is_null() && !v.as_object().is_some_and(|o| o.is_empty()))
                    .map(|(k, v)| (k, sorted(v)))
                    .collect();
                Value::Object(kept.into_iter().collect())
            }
            other => other,
        }
    }
    // Rebuilt from key order: serialised in key order whether serde_json's
    // map sorts or keeps insertion order.
    serde_json::to_string(&sorted(v)).expect("JSON values serialise")
}

pub(crate) fn test(args: TestArgs) -> anyhow::Result<()> {
    let (engine, mut pipeline) = crate::run::load(&args.pipeline)?;
    let routable = routable(&pipeline);
    let mut expected: BTreeMap<Destination, Expected> = BTreeMap::new();
    for spec in &args.expect {
        let (dest, path) = match spec.split_once('=') {
            Some((topic, path)) if !topic.contains('/') => (Destination::Routed(topic.to_owned()), path),
            _ => (Destination::Outputs, spec.as_str()),
        };
        if let Destination::Routed(t) = &dest
            && !routable.contains(t)
        {
            let known: Vec<String> = routable.iter().map(|t| format!("`{t}`")).collect();
            let known = if known.is_empty() { "it declares none".to_owned() } else { format!("they are {}", known.join(", ")) };
            bail!(
                "--expect {spec}: `{t}` is not a topic the stages can route to ({known}: a [[topic]] or a sink's `from`); \
                 for a file whose name has `=` in it, write ./{spec}"
            );
        }
        if expected.contains_key(&dest) {
            bail!("--expect: two files for the {dest}");
        }
        expected.insert(dest, Expected::read(PathBuf::from(path), args.update)?);
    }
    if let Some(path) = &args.expect_dead {
        expected.insert(Destination::Dead, Expected::read(path.clone(), args.update)?);
    }
    if args.update && expected.is_empty() {
        bail!("--update writes the files --expect and --expect-dead name; there are none");
    }

    let scratch = tempfile::Builder::new().prefix("weir-test-").tempdir().context("creating a scratch directory")?;
    let sink_files = rewire(&mut pipeline, scratch.path(), &args.input)?;
    let queue = Queue::open(scratch.path().join("data")).context("opening the scratch data directory")?;
    let stop = Arc::new(AtomicBool::new(false));
    crate::run::install_signal_handlers(stop.clone());
    let (done, timed_out) = deadline(stop.clone(), Duration::from_secs(args.timeout));
    let options = RunOptions { drain: true, stop: stop.clone(), stats: None, upgrades: None };
    let stats = engine.run(&pipeline, &queue, &options).with_context(|| format!("pipeline `{}`", pipeline.name))?;
    drop(done);
    let report = stats.report(&pipeline.name);
    let counts = format!(
        "{} in, {} out, {} dead-lettered in {:.2}s",
        report.source.received, report.sink.written, report.sink.dead_lettered, report.elapsed_s
    );
    let title = format!("weir test {}", args.pipeline.display());
    if timed_out.load(Ordering::SeqCst) {
        println!(
            "{title}: FAILED: not drained after {} s ({counts}); is a stage retrying for ever? (--timeout sets the limit)",
            args.timeout
        );
        return Err(Reported(1).into());
    }
    if stop.load(Ordering::SeqCst) {
        println!("{title}: interrupted ({counts})");
        return Err(Reported(130).into());
    }

    let actual = collect(&pipeline, &routable, &queue, &sink_files)?;
    let failed = if args.update { update(&expected, &actual)? } else { compare(&expected, &actual, args.unordered) };
    if args.keep {
        let kept = scratch.keep();
        println!("scratch data directory kept: weir consume --data-dir {} TOPIC", kept.join("data").display());
    }
    if failed > 0 {
        let checks = expected.len() + usize::from(!expected.contains_key(&Destination::Dead));
        println!("{title}: FAILED: {failed} of {checks} checks ({counts})");
        return Err(Reported(1).into());
    }
    println!("{title}: {} ({counts})", if args.update { "updated" } else { "passed" });
    Ok(())
}

/// Topics the stages may route outputs to: those the pipeline declares
/// (apart from its source, sink and dead-letter topics) or sends to a sink
/// (`from`). Of the pipeline as written, not as rewired.
fn routable(pipeline: &Pipeline) -> BTreeSet<String> {
    let mut topics: BTreeSet<String> = pipeline.topics.keys().cloned().collect();
    if let Source::Queue { topic, .. } = &pipeline.source {
        topics.remove(topic);
    }
    if let DeadLetterTo::Topic(t) = &pipeline.dead_letter {
        topics.remove(t);
    }
    for sink in &pipeline.sinks {
        if let Sink::Queue { topic } = &sink.kind {
            topics.remove(topic);
        }
    }
    topics.extend(pipeline.sinks.iter().filter_map(|s| s.from.clone()));
    topics
}

/// Point `pipeline` at the scratch directory: the source reads `input`,
/// every sink writes JSON lines to a file there (returned, by sink), dead
/// letters go to a scratch topic, declared topics get one partition (so
/// what is routed to them keeps its order) and no fsync.
fn rewire(pipeline: &mut Pipeline, scratch: &Path, input: &Path) -> anyhow::Result<Vec<PathBuf>> {
    // Named as the real source is, which names the messages' `topic`.
    let name = pipeline.source.name();
    let name = if name.is_empty() || name.starts_with('.') || name.contains('/') { "input".to_owned() } else { name };
    let fed = scratch.join("input").join(name);
    std::fs::create_dir_all(fed.parent().expect("in a folder"))?;
    std::fs::copy(input, &fed).with_context(|| format!("reading the input {}", input.display()))?;
    pipeline.source = Source::File { path: fed, json: Format::of(input) == Format::Json };
    let out = scratch.join("out");
    std::fs::create_dir_all(&out)?;
    let files: Vec<PathBuf> = (0..pipeline.sinks.len()).map(|i| out.join(format!("sink-{i}.jsonl"))).collect();
    for (sink, path) in pipeline.sinks.iter_mut().zip(&files) {
        sink.kind = Sink::File { path: path.clone(), json: true };
    }
    let dead = match &pipeline.dead_letter {
        DeadLetterTo::Topic(t) => t.clone(),
        DeadLetterTo::Nats { .. } => weir_queue::dead_letter_topic(&pipeline.name),
    };
    pipeline.topics.entry(dead.clone()).or_default();
    pipeline.dead_letter = DeadLetterTo::Topic(dead);
    for config in pipeline.topics.values_mut() {
        config.partitions = 1;
        config.fsync = Fsync::Never;
    }
    pipeline.nats = None;
    pipeline.data_dir = None;
    Ok(files)
}

/// Set `stop` (and the returned flag) unless the returned sender is dropped within `limit`.
fn deadline(stop: Arc<AtomicBool>, limit: Duration) -> (std::sync::mpsc::Sender<()>, Arc<AtomicBool>) {
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let timed_out = Arc::new(AtomicBool::new(false));
    let flag = timed_out.clone();
    std::thread::spawn(move || {
        if wait.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            flag.store(true, Ordering::SeqCst);
            stop.store(true, Ordering::SeqCst);
        }
    });
    (done, timed_out)
}

/// What reached each destination, as JSON messages, in order.
fn collect(
    pipeline: &Pipeline,
    routable: &BTreeSet<String>,
    queue: &Queue,
    sink_files: &[PathBuf],
) -> anyhow::Result<BTreeMap<Destination, Vec<Value>>> {
    let read_sink = |i: usize| -> anyhow::Result<Vec<Value>> {
        let text = match std::fs::read_to_string(&sink_files[i]) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).context("reading a sink's output"),
        };
        text.lines().map(|l| serde_json::from_str(l).context("a sink's output line")).collect()
    };
    let read_topic = |topic: &str| -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        let name: Arc<str> = topic.into();
        loop {
            let records = queue.read(topic, 0, out.len() as u64, 1024)?;
            if records.is_empty() {
                return Ok(out);
            }
            out.extend(records.into_iter().map(|r| weir_queue::json::message(&Message::from_stored(name.clone(), r, 1))));
        }
    };
    let mut got = BTreeMap::new();
    let main = pipeline.sinks.iter().position(|s| s.from.is_none());
    got.insert(Destination::Outputs, main.map(read_sink).transpose()?.unwrap_or_default());
    for topic in routable {
        let values = match pipeline.sinks.iter().position(|s| s.from.as_ref() == Some(topic)) {
            Some(i) => read_sink(i)?,
            None => read_topic(topic)?,
        };
        got.insert(Destination::Routed(topic.clone()), values);
    }
    let DeadLetterTo::Topic(dead) = &pipeline.dead_letter else { unreachable!("rewired to a topic") };
    got.insert(Destination::Dead, read_topic(dead)?);
    Ok(got)
}

/// Compare and print each destination's verdict; the number that differ.
fn compare(expected: &BTreeMap<Destination, Expected>, actual: &BTreeMap<Destination, Vec<Value>>, unordered: bool) -> usize {
    let color = std::io::stdout().is_terminal();
    let mut failed = 0;
    for (dest, msgs) in actual {
        let Some(want) = expected.get(dest) else {
            if msgs.is_empty() {
                continue;
            }
            if *dest == Destination::Dead {
                failed += 1;
                println!("FAIL  {dest}: {}, expected none (--expect-dead FILE expects them):", msgs.len());
                for m in msgs.iter().take(10) {
                    println!("      {}  ({})", text_line(dest, m), text(&m["headers"][dl::REASON]));
                }
                if msgs.len() > 10 {
                    println!("      ... and {} more", msgs.len() - 10);
                }
            } else {
                let flag = match dest {
                    Destination::Routed(t) => format!("--expect {t}=FILE"),
                    _ => "--expect FILE".into(),
                };
                println!("--    {dest}: {}, not checked ({flag} checks them)", msgs.len());
            }
            continue;
        };
        let mut got = want.render(dest, msgs);
        let mut want_lines = want.lines.clone();
        if unordered {
            got.sort();
            want_lines.sort();
        }
        if got == want_lines {
            println!("ok    {dest}: {} as expected ({})", got.len(), want.path.display());
            continue;
        }
        failed += 1;
        println!("FAIL  {dest}: {}, not as expected ({}); - expected, + actual:", got.len(), want.path.display());
        print_diff(&want_lines, &got, color);
    }
    failed
}

fn print_diff(expected: &[String], actual: &[String], color: bool) {
    let (old, new) = (expected.join("\n") + "\n", actual.join("\n") + "\n");
    let diff = similar::TextDiff::from_lines(&old, &new);
    for hunk in diff.unified_diff().context_radius(3).iter_hunks() {
        println!("{}", hunk.header());
        for change in hunk.iter_changes() {
            let (sign, paint) = match change.tag() {
                similar::ChangeTag::Delete => ('-', "\x1b[31m"),
                similar::ChangeTag::Insert => ('+', "\x1b[32m"),
                similar::ChangeTag::Equal => (' ', ""),
            };
            let line = change.value().trim_end_matches('\n');
            if color && !paint.is_empty() {
                println!("{paint}{sign}{line}\x1b[0m");
            } else {
                println!("{sign}{line}");
            }
        }
    }
}

/// `--update`: write each expectation file from what came out; 0 (nothing failed).
fn update(expected: &BTreeMap<Destination, Expected>, actual: &BTreeMap<Destination, Vec<Value>>) -> anyhow::Result<usize> {
    for (dest, want) in expected {
        let lines = want.render(dest, actual.get(dest).map_or(&[][..], Vec::as_slice));
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&want.path, text).with_context(|| format!("writing {}", want.path.display()))?;
        println!("wrote {dest}: {} to {}", lines.len(), want.path.display());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_compare_the_fields_the_file_names_in_any_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("want.jsonl");
        std::fs::write(&path, "{\"payload\":\"A\",\"headers\":{\"h\":\"1\"}}\n\n{\"headers\":{},\"key\":null,\"payload\":\"B\"}\n")
            .unwrap();
        let want = Expected::read(path, false).unwrap();
        assert_eq!(want.lines, [r#"{"headers":{"h":"1"},"payload":"A"}"#, r#"{"payload":"B"}"#]);
        let actual = [
            serde_json::json!({"topic": "t", "offset": 4, "key": null, "payload": "A", "headers": {"h": "1", "other": "x"}}),
            serde_json::json!({"topic": "t", "offset": 5, "key": null, "payload": "B", "headers": {}}),
        ];
        // `other` is not a header the file names, and `topic`/`offset` are not fields it names.
        assert_eq!(want.render(&Destination::Outputs, &actual), want.lines);
        // `key` it names (as null, that is: none).
        let keyed = [actual[0].clone(), serde_json::json!({"key": "k", "payload": "B"})];
        assert_eq!(want.render(&Destination::Outputs, &keyed)[1], r#"{"key":"k","payload":"B"}"#);
    }

    #[test]
    fn text_lines_are_payloads_and_dead_letters_say_stage_and_kind() {
        let msg = serde_json::json!({"payload": [104, 105, 255], "headers": {"weir.stage": "up", "weir.error-kind": "rejected"}});
        assert_eq!(text_line(&Destination::Outputs, &msg), "hi\u{fffd}");
        assert_eq!(text_line(&Destination::Dead, &msg), "up: rejected: hi\u{fffd}");
    }

    #[test]
    fn the_rewired_pipeline_reads_the_input_and_writes_only_into_the_scratch_directory() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("p.toml");
        std::fs::write(
            &toml,
            "[pipeline]\nname = \"p\"\n[source]\ntype = \"nats\"\nsubject = \"in.x\"\n\
             [[stage]]\nname = \"s\"\nmodule = \"s.wasm\"\n\
             [[sink]]\ntype = \"nats\"\nsubject = \"out\"\n[[sink]]\ntype = \"queue\"\ntopic = \"alerts-out\"\nfrom = \"alerts\"\n\
             [[topic]]\nname = \"audit\"\npartitions = 4\n[dead_letter]\nsubject = \"dlq\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("s.wasm"), b"").unwrap();
        let mut p = weir_engine::config::load(&toml).unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "{\"payload\":\"x\"}\n").unwrap();
        let scratch = dir.path().join("scratch");
        assert_eq!(routable(&p), BTreeSet::from(["alerts".to_owned(), "audit".to_owned()]));
        let files = rewire(&mut p, &scratch, &input).unwrap();
        assert!(!p.uses_nats() && p.nats.is_none());
        assert_eq!(p.source, Source::File { path: scratch.join("input/in.x"), json: true });
        assert_eq!(files.len(), 2);
        assert!(p.sinks.iter().zip(&files).all(|(s, f)| s.kind == Sink::File { path: f.clone(), json: true }));
        assert_eq!(p.dead_letter, DeadLetterTo::Topic(weir_queue::dead_letter_topic("p")));
        assert!(p.topics.values().all(|t| t.partitions == 1 && t.fsync == Fsync::Never));
    }
}
