//! Durable stage state: exactly-once across crashes and retries.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::{Weir, pipeline_file};

const KEYS: usize = 7;

/// A pipeline from topic `words` to topic `counts` through `stages`.
fn counting_pipeline(dir: &std::path::Path, stages: &str) -> std::path::PathBuf {
    pipeline_file(
        dir,
        "count.toml",
        &format!(
            "[pipeline]\nname = \"count\"\n\n[source]\ntype = \"queue\"\ntopic = \"words\"\n\n{stages}\n[[sink]]\ntype = \"queue\"\ntopic = \"counts\"\n"
        ),
    )
}

/// A `[[stage]]` of the `component` counting example (which asks to retry
/// every 13th count on its first attempt).
fn count_stage(component: &str, concurrency: usize) -> String {
    format!(
        r#"[[stage]]
name = "count"
module = "{{component:{component}}}"
batch_size = 16
concurrency = {concurrency}
retry_backoff_ms = 0

[stage.config]
retry_every = "13"
"#
    )
}

/// Each key's emitted counts must be exactly 1..=n: a gap would be a lost
/// state write, a count above n a message counted twice.
fn check_counts(weir: &Weir, per_key: usize) {
    check_count_lines(&weir.consume_all("counts"), per_key);
}

fn check_count_lines(lines: &[String], per_key: usize) {
    check_count_lines_of(lines, KEYS, per_key);
}

/// Every one of `keys` keys counted 1..=`per_key`, each count seen (some
/// perhaps more than once: outputs are at-least-once), none above.
pub(crate) fn check_count_lines_of(lines: &[String], keys: usize, per_key: usize) {
    let mut seen: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for line in lines {
        let (k, c) = line.split_once('=').unwrap();
        seen.entry(k.to_owned()).or_default().insert(c.parse().unwrap());
    }
    assert_eq!(seen.len(), keys);
    for (k, counts) in seen {
        let missing: Vec<usize> = (1..=per_key).filter(|c| !counts.contains(c)).take(10).collect();
        let extra: Vec<&usize> = counts.iter().filter(|&&c| c > per_key).take(10).collect();
        assert!(missing.is_empty() && extra.is_empty(), "{k}: lost counts {missing:?}, counted twice: {extra:?}");
    }
}

fn produce_words(weir: &Weir, n: usize) {
    let mut input: String = (0..n).map(|i| format!("k{}\n", i % KEYS)).collect();
    input.push('\n');
    weir.ok(&["produce", "words"], input.trim_end().as_bytes());
}

/// Run pipeline `p` over `n` words, killing it with SIGKILL three times at
/// different points of progress, then drain it.
fn kill_three_times_then_drain(weir: &Weir, p: &str, n: usize) {
    for round in 1..=3u64 {
        let mut run = weir.cmd(&["run", p]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let started = Instant::now();
        let at_kill = loop {
            let done = weir.topic_len("counts");
            if done >= round * n as u64 / 5 {
                break done;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "round {round}: no progress");
            std::thread::sleep(Duration::from_millis(5));
        };
        run.kill().unwrap(); // SIGKILL
        run.wait().unwrap();
        eprintln!("round {round}: killed at {at_kill} outputs");
    }
    weir.ok(&["run", p, "--drain"], b"");
}

#[test]
fn state_is_exactly_once_through_retries_and_kill_9() {
    let weir = Weir::new();
    let n = KEYS * 3000;
    produce_words(&weir, n);
    let dir = tempfile::tempdir().unwrap();
    let p = counting_pipeline(dir.path(), &count_stage("count", 2));
    let p = p.to_str().unwrap();
    kill_three_times_then_drain(&weir, p, n);
    check_counts(&weir, n / KEYS);

    // State survives a clean restart too: more input continues the counts.
    produce_words(&weir, KEYS * 10);
    weir.ok(&["run", p, "--drain"], b"");
    check_counts(&weir, n / KEYS + 10);
}

/// Three languages in one pipeline: the Python count example, the Rust
/// uppercase one, then the JavaScript count example counting what reaches
/// it. Through retries and kill -9, the Python counts are exactly 1..=n
/// per key, and the JavaScript stage saw each of those lines once in its
/// state (`K0=5=1`; a `=2` would be one counted twice): each stage's state
/// is exactly-once, whatever language it is written in.
#[test]
fn python_rust_and_javascript_stages_count_exactly_once_through_kill_9() {
    let weir = Weir::new();
    let n = KEYS * 1000;
    produce_words(&weir, n);
    let dir = tempfile::tempdir().unwrap();
    let stages = format!(
        "{}\n[[stage]]\nname = \"shout\"\nmodule = \"{{component:uppercase}}\"\n\n[[stage]]\nname = \"recount\"\nmodule = \"{{component:count-js}}\"\nbatch_size = 16\n",
        count_stage("count-py", 1)
    );
    let p = counting_pipeline(dir.path(), &stages);
    kill_three_times_then_drain(&weir, p.to_str().unwrap(), n);
    let lines = weir.consume_all("counts");
    let twice: Vec<&String> = lines.iter().filter(|l| !l.ends_with("=1")).take(10).collect();
    assert!(twice.is_empty(), "the JavaScript stage counted these lines more than once: {twice:?}");
    let python: Vec<String> = lines.iter().map(|l| l.strip_suffix("=1").unwrap().to_owned()).collect();
    assert!(python.iter().all(|l| l.starts_with('K')), "the Rust stage upper-cased the Python stage's outputs");
    check_count_lines(&python, n / KEYS);
}

#[test]
fn a_topic_deleted_and_created_again_inherits_nothing() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_file(
        dir.path(),
        "count.toml",
        "[pipeline]\nname = \"count\"\n[source]\ntype = \"queue\"\ntopic = \"words\"\n\
         [[stage]]\nname = \"count\"\nmodule = \"{component:count}\"\n[[sink]]\ntype = \"queue\"\ntopic = \"counts\"\n",
    );
    weir.produce("words", &["a", "a", "b"]);
    weir.ok(&["run", p.to_str().unwrap(), "--drain"], b"");
    assert_eq!(weir.consume_all("counts"), ["a=1", "a=2", "b=1"]);

    // Same name, same offsets, a new topic: counted afresh, none skipped as
    // already applied, and its group starts at its beginning.
    weir.ok(&["topics", "delete", "words"], b"");
    weir.ok(&["topics", "create", "words", "--partitions", "1"], b"");
    weir.produce("words", &["a", "b", "c", "a"]);
    weir.ok(&["run", p.to_str().unwrap(), "--drain"], b"");
    assert_eq!(weir.consume_all("counts")[3..], ["a=1", "b=1", "c=1", "a=2"]);
}
