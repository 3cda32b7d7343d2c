//! The README's command transcripts are what the binary prints. Every
//! fenced block whose first line is a command of `weir`'s (`$ CMD`, or
//! `==> CMD` as `scripts/hello` prints them) is run, command by command, in a shell at
//! the repository root with `weir` on the `PATH` and a fresh data
//! directory, and what each prints (standard output and error, in order,
//! without weir's timestamped log lines) must match the lines under it.
//! Times, rates and latencies differ from run to run, so they are compared
//! as placeholders; counts, words and layout are compared exactly. Every
//! other block showing a run summary (or `weir bench`'s per-stage cost
//! table) must have its current header, and every `disk alone:`, `disk in
//! the run:`, `disk at this rate:`, `at the sink:`, `machine alone:`, `machine in the run:` or `stalls in the run:` line the words `weir
//! bench` prints (numbers aside), so a block that is not run cannot keep an
//! old layout either.

use std::process::Command;

use crate::{Weir, repo_root};

/// One transcript: its first line in the README and its commands, each
/// with the lines shown under it.
struct Transcript {
    line: usize,
    steps: Vec<(String, Vec<String>)>,
}

/// The README's fenced blocks without a language: (first line number, lines).
fn plain_blocks(readme: &str) -> Vec<(usize, Vec<&str>)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, Vec<&str>, bool)> = None;
    for (i, line) in readme.lines().enumerate() {
        if let Some(fence) = line.strip_prefix("```") {
            match open.take() {
                Some((at, lines, plain)) => {
                    if plain {
                        blocks.push((at, lines));
                    }
                }
                None => open = Some((i + 2, Vec::new(), fence.trim().is_empty())),
            }
        } else if let Some((_, lines, _)) = &mut open {
            lines.push(line);
        }
    }
    blocks
}

fn command(line: &str) -> Option<&str> {
    line.strip_prefix("$ ").or_else(|| line.strip_prefix("==> "))
}

/// Whether `cmd` runs `weir` itself (a transcript of another script, such
/// as `scripts/bench-peers`, is that script's output, not run here).
fn runs_weir(cmd: &str) -> bool {
    cmd.starts_with("weir ") || cmd.contains("| weir ")
}

fn transcripts(readme: &str) -> Vec<Transcript> {
    plain_blocks(readme)
        .into_iter()
        .filter(|(_, lines)| lines.first().and_then(|l| command(l)).is_some_and(runs_weir))
        .map(|(line, lines)| {
            let mut steps: Vec<(String, Vec<String>)> = Vec::new();
            for l in lines {
                match command(l) {
                    Some(cmd) => steps.push((cmd.to_owned(), Vec::new())),
                    None => steps.last_mut().unwrap().1.push(l.to_owned()),
                }
            }
            Transcript { line, steps }
        })
        .collect()
}

/// A line with what varies between runs replaced by `#`: numbers with a
/// unit of time, and in a per-stage summary row the rate, the two
/// percentiles and the busy share (the last four columns); the bottleneck
/// mark and line, which the noise of one run can move.
fn normalise(line: &str, in_table: bool) -> String {
    if line.starts_with("* bottleneck:") {
        return "* bottleneck: #".into();
    }
    let mut tokens: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    if in_table && tokens.last().is_some_and(|t| t == "*") {
        tokens.pop();
    }
    if in_table && tokens.len() >= 5 {
        let n = tokens.len();
        for t in &mut tokens[n - 4..] {
            *t = "#".into();
        }
    }
    for t in &mut tokens {
        let digits = t.trim_end_matches(|c: char| !c.is_ascii_digit());
        let unit = &t[digits.len()..];
        if !digits.is_empty()
            && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
            && ["s", "ms", "µs", "%", "s,", "s)"].contains(&unit)
        {
            *t = format!("#{unit}");
        }
    }
    tokens.join(" ")
}

/// A line measuring the disk, the sink or the machine with its numbers
/// masked, and the topics a `disk in the run:` line names (they are the
/// pipeline's).
fn measure_masked(line: &str) -> String {
    let line = match line.strip_prefix("disk in the run: ").and_then(|rest| rest.split_once(" fdatasync ")) {
        Some((_topics, rest)) => format!("disk in the run: <topics> fdatasync {rest}"),
        None => line.to_owned(),
    };
    numbers_masked(&line)
}

/// `line` with each whole number replaced by `#`.
fn numbers_masked(line: &str) -> String {
    // A number, maybe with a fraction, then maybe a `%`, an `x` or a comma.
    let mask = |t: &str| {
        let number = t.trim_end_matches([',', '%', 'x']);
        let is_number = number.starts_with(|c: char| c.is_ascii_digit()) && number.chars().all(|c| c.is_ascii_digit() || c == '.');
        if is_number { format!("#{}", &t[number.len()..]) } else { t.to_owned() }
    };
    line.split_whitespace().map(|t| t.strip_prefix('(').map_or_else(|| mask(t), |t| format!("({}", mask(t)))).collect::<Vec<_>>().join(" ")
}

/// [`normalise`] for each line, knowing which are rows of a summary table.
fn normalise_all<S: AsRef<str>>(lines: &[S]) -> Vec<String> {
    let mut in_table = false;
    lines
        .iter()
        .map(|l| {
            let l = l.as_ref();
            if l.starts_with("stage ") {
                in_table = true;
                return l.split_whitespace().collect::<Vec<_>>().join(" ");
            }
            in_table &= !l.starts_with("* ") && !l.is_empty();
            normalise(l, in_table)
        })
        .collect()
}

/// A timestamped log line of weir's (`2026-12-01T05:14:34.123Z  INFO ...`).
fn is_log_line(line: &str) -> bool {
    line.len() > 20 && line.as_bytes()[4] == b'-' && line.as_bytes()[10] == b'T' && line[..4].chars().all(|c| c.is_ascii_digit())
}

#[test]
fn the_readme_shows_what_the_binary_prints() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let found = transcripts(&readme);
    assert!(found.len() >= 3, "the README's transcripts were not found: {}", found.len());
    let bin_dir = Weir::bin().parent().unwrap().to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut headers = Vec::new();
    for t in &found {
        let data = tempfile::tempdir().unwrap();
        for (cmd, shown) in &t.steps {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("{cmd} 2>&1"))
                .current_dir(repo_root())
                .env("PATH", &path)
                .env("WEIR_DATA_DIR", data.path())
                .env_remove("WEIR_LOG")
                .output()
                .unwrap();
            let printed = String::from_utf8_lossy(&out.stdout);
            let printed: Vec<&str> = printed.lines().filter(|l| !is_log_line(l)).collect();
            headers.extend(printed.iter().filter(|l| l.starts_with("stage ")).map(|l| l.to_string()));
            assert_eq!(
                normalise_all(shown),
                normalise_all(&printed),
                "README.md:{}: `{cmd}` printed something else (left: the README, right: the binary); printed:\n{}",
                t.line,
                printed.join("\n")
            );
        }
    }
    assert!(!headers.is_empty(), "no transcript shows a run summary");
    // The bench's per-stage cost table is not in a transcript (it takes a
    // real run): its header comes from a short one. So do the lines
    // measuring the disk, the sink and the machine, their numbers masked;
    // at a set rate into topics with `fsync = "always"` there are more.
    let bench = |extra: &[&str]| {
        let out = Command::new(Weir::bin())
            .args([&["bench", "examples/pipelines/filter.toml", "--messages", "2000"], extra].concat())
            .current_dir(repo_root())
            .env("WEIR_LOG", "warn")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let (plain, at_rate) = (bench(&[]), bench(&["--fsync", "always", "--rate", "100000"]));
    headers.extend(plain.lines().filter(|l| l.starts_with("stage ") && l.contains("ns/msg")).map(str::to_owned));
    let measured = |l: &str| {
        [
            "disk alone:",
            "disk in the run:",
            "disk at this rate:",
            "at the sink:",
            "machine alone:",
            "machine in the run:",
            "stalls in the run:",
        ]
        .iter()
        .any(|p| l.starts_with(p))
    };
    let probes: Vec<String> = [&plain, &at_rate].iter().flat_map(|b| b.lines().filter(|l| measured(l)).map(measure_masked)).collect();
    assert_eq!(probes.len(), 6 + 7, "weir bench printed no disk, sink and machine lines:\n{plain}\n{at_rate}");
    for (line, lines) in plain_blocks(&readme) {
        for l in lines.iter().filter(|l| measured(l)) {
            assert!(
                probes.contains(&measure_masked(l)),
                "README.md:{line}: a line the binary no longer prints:\n{l}\nit prints:\n{}",
                probes.join("\n")
            );
        }
    }
    for (line, lines) in plain_blocks(&readme) {
        let tables = |l: &&&str| l.starts_with("stage ") && (l.contains("received") && l.contains("ok") || l.contains("ns/msg"));
        for l in lines.iter().filter(tables) {
            assert!(
                headers.iter().any(|h| h == l),
                "README.md:{line}: a summary header the binary no longer prints:\n{l}\nit prints:\n{}",
                headers[0]
            );
        }
    }
}

#[test]
fn what_varies_is_masked_and_counts_are_not() {
    let shown = [
        "weir: 3 in, 2 out, 1 dead-lettered in 0.01s",
        "stage  received  ok",
        "up  3  2  1  0  0  120000  1  7  29% *",
        "* bottleneck: up; p99 5 µs",
    ];
    let other =
        ["weir: 3 in, 2 out, 1 dead-lettered in 1.63s", "stage  received  ok", "up  3  2  1  0  0  99  2  9  3%", "* bottleneck: x"];
    assert_eq!(normalise_all(&shown), normalise_all(&other));
    let miscounted = ["weir: 4 in, 2 out, 1 dead-lettered in 0.01s", "stage  received  ok", "up  3  2  1  0  0  120000  1  7  29% *", ""];
    assert_ne!(normalise_all(&shown)[0], normalise_all(&miscounted)[0]);
    let row = ["stage  received  ok", "up  4  2  1  0  0  120000  1  7  29% *"];
    assert_ne!(normalise_all(&shown)[2], normalise_all(&row)[1]);
    assert_eq!(normalise("passed (4 in, 1 dead-lettered in 0.02s)", false), normalise("passed (4 in, 1 dead-lettered in 1.50s)", false));
    assert_ne!(normalise("passed (4 in, 1 dead-lettered in 0.02s)", false), normalise("passed (5 in, 1 dead-lettered in 0.02s)", false));
    // Ratios are measured too, and words after them are not.
    let ratio = |r: &str| numbers_masked(&format!("end to end p99 is {r} the bare group commit's"));
    assert_eq!(ratio("0.9x"), ratio("13.5x"));
    assert_ne!(numbers_masked("p99 is 2.0x that"), numbers_masked("p99 is 2.0x this"));
    let disk = |topics: &str| measure_masked(&format!("disk in the run: {topics} fdatasync p50 42 µs, p99 140 µs"));
    assert_eq!(disk("speed-out"), disk("logs-clean, logs.dlq"));
    assert_ne!(disk("speed-out"), measure_masked("disk in the run: speed-out fsync p50 42 µs, p99 140 µs"));
    assert!(is_log_line("2026-12-01T05:14:34.123456Z  INFO pipeline starting"));
    assert!(!is_log_line("weir: 1 in, 2 out, 0 dead-lettered in 0.01s"));
}
