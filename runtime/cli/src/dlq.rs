//! `weir dlq list|show|redrive`: dead letters read back, and sent again
//! once their cause is fixed. Directly on the data directory, or through
//! the HTTP API of the weir process that owns it (as `weir produce` does).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use weir_queue::{DeadLetter, Queue, Selection};

#[derive(Subcommand)]
pub(crate) enum DlqCommand {
    /// Dead letters of a topic: counts by stage and error kind, then the newest.
    List {
        /// The dead-letter topic (a pipeline's is `PIPELINE.dlq` unless it says otherwise).
        topic: String,
        #[command(flatten)]
        select: Select,
        /// Show at most this many (up to 1000), newest first.
        #[arg(long, default_value_t = 20, value_name = "N")]
        limit: usize,
    },
    /// One dead letter: why, from where, its headers and its payload.
    Show {
        /// The dead-letter topic.
        topic: String,
        /// Which: PARTITION@OFFSET, as `weir dlq list` shows it.
        id: String,
        /// The payload as a hex dump.
        #[arg(long)]
        hex: bool,
    },
    /// Send dead letters again, once each: to the topic each came from, or
    /// to --to; with their key, payload and headers, the dead-letter
    /// headers replaced by weir.redriven-from and weir.redriven-reason.
    /// Marks them: a second redrive sends none of them again.
    Redrive {
        /// The dead-letter topic.
        topic: String,
        #[command(flatten)]
        select: Select,
        /// Send them to this topic instead of the ones they came from.
        #[arg(long, value_name = "TOPIC")]
        to: Option<String>,
        /// Say what would be sent, send nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Which dead letters.
#[derive(Args, Clone, Default)]
pub(crate) struct Select {
    /// Those that failed at this stage (`source`, `routing` and the sink
    /// name their own).
    #[arg(long)]
    stage: Option<String>,
    /// Those with this error kind (guest, trap, timeout, memory, fuel, output, ...).
    #[arg(long)]
    kind: Option<String>,
    /// Those dead-lettered at or after this time (RFC 3339, or a duration ago: 30m, 2h, 1d).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Those dead-lettered before this time.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Only these: PARTITION@OFFSET, comma-separated.
    #[arg(long, value_name = "P@O,...", value_delimiter = ',')]
    ids: Vec<String>,
}

/// `P@O`.
fn parse_id(text: &str) -> anyhow::Result<(u32, u64)> {
    let (p, o) = text.split_once('@').with_context(|| format!("{text:?}: write a dead letter as PARTITION@OFFSET, like 0@17"))?;
    Ok((p.trim().parse().with_context(|| format!("{text:?}: partition"))?, o.trim().parse().with_context(|| format!("{text:?}: offset"))?))
}

/// A time for --since/--until, as --from takes it, in ms.
fn parse_time(flag: &str, text: &str) -> anyhow::Result<u64> {
    match crate::run::parse_from(text, weir_queue::now_us() / 1000) {
        Ok(weir_queue::StartFrom::Time(ms)) => Ok(ms),
        _ => bail!("--{flag} {text:?}: give a time (2026-12-01T22:00:00Z) or a duration ago (30m, 2h, 1d)"),
    }
}

impl Select {
    fn selection(&self) -> anyhow::Result<Selection> {
        Ok(Selection {
            stage: self.stage.clone(),
            kind: self.kind.clone(),
            since_ms: self.since.as_deref().map(|t| parse_time("since", t)).transpose()?,
            until_ms: self.until.as_deref().map(|t| parse_time("until", t)).transpose()?,
            ids: self.ids.iter().map(|i| parse_id(i)).collect::<anyhow::Result<_>>()?,
        })
    }
}

/// A selection as the body of a redrive over HTTP.
pub(crate) fn selection_json(s: &Selection) -> Value {
    json!({ "stage": s.stage, "kind": s.kind, "since_ms": s.since_ms, "until_ms": s.until_ms, "ids": s.ids })
}

/// A selection as the query of `GET /v1/topics/T/dead-letters`.
fn selection_query(s: &Selection) -> String {
    let mut q = Vec::new();
    // Stage names and kinds are names (letters, digits, `-`, `_`, `.`);
    // anything else would not match and is left out rather than encoded.
    let name = |v: &str| v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.[]".contains(&b));
    if let Some(v) = s.stage.as_deref().filter(|v| name(v)) {
        q.push(format!("stage={v}"));
    }
    if let Some(v) = s.kind.as_deref().filter(|v| name(v)) {
        q.push(format!("kind={v}"));
    }
    if let Some(v) = s.since_ms {
        q.push(format!("since_ms={v}"));
    }
    if let Some(v) = s.until_ms {
        q.push(format!("until_ms={v}"));
    }
    if !s.ids.is_empty() {
        q.push(format!("ids={}", s.ids.iter().map(|(p, o)| format!("{p}@{o}")).collect::<Vec<_>>().join(",")));
    }
    if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) }
}

/// The query of `GET /v1/topics/T/dead-letters`, as a selection (its
/// `limit`, how many of the newest to list, is read apart).
pub(crate) fn selection_from_query(q: &std::collections::HashMap<String, String>) -> Result<Selection, String> {
    let num = |k: &str| q.get(k).map(|v| v.parse::<u64>().map_err(|_| format!("{k}: not a number: {v:?}"))).transpose();
    Ok(Selection {
        stage: q.get("stage").cloned(),
        kind: q.get("kind").cloned(),
        since_ms: num("since_ms")?,
        until_ms: num("until_ms")?,
        ids: match q.get("ids") {
            Some(ids) => {
                ids.split(',').filter(|s| !s.is_empty()).map(|i| parse_id(i).map_err(|e| e.to_string())).collect::<Result<_, _>>()?
            }
            None => Vec::new(),
        },
    })
}

/// A dead letter as JSON: what its headers say, and the message itself.
pub(crate) fn dead_letter_json(d: &DeadLetter) -> Value {
    let msg = weir_queue::Message::from_stored(d.topic.as_str().into(), d.record.clone(), 1);
    json!({
        "partition": d.partition,
        "offset": d.offset,
        "time_ms": d.record.append_timestamp_ms,
        "stage": d.stage,
        "kind": d.kind,
        "reason": d.reason,
        "attempts": d.attempts,
        "source": d.source.as_ref().map(|(t, p, o)| json!({"topic": t, "partition": p, "offset": o})),
        "redriven": d.redriven,
        "message": weir_queue::json::message(&msg),
    })
}

pub(crate) fn dlq(cmd: DlqCommand, dir: PathBuf) -> anyhow::Result<()> {
    let api = crate::api::running(&dir);
    match cmd {
        DlqCommand::List { topic, select, limit } => {
            let summary = read(&dir, api.as_ref(), &topic, &select.selection()?, limit.clamp(1, 1000))?;
            print_list(&topic, &summary)
        }
        DlqCommand::Show { topic, id, hex } => {
            let (p, o) = parse_id(&id)?;
            let summary = read(&dir, api.as_ref(), &topic, &Selection { ids: vec![(p, o)], ..Selection::default() }, 1)?;
            let d = summary["dead_letters"].get(0).with_context(|| format!("{topic} has no dead letter {p}@{o}"))?;
            print_one(&topic, d, hex)
        }
        DlqCommand::Redrive { topic, select, to, dry_run } => {
            let selection = select.selection()?;
            let report = match &api {
                Some(api) => {
                    let mut body = selection_json(&selection);
                    body["to"] = json!(to);
                    body["dry_run"] = json!(dry_run);
                    api.call(
                        "POST",
                        &format!("/v1/topics/{topic}/dead-letters/redrive"),
                        "application/json",
                        body.to_string().into_bytes(),
                    )?
                }
                None => {
                    let queue = Queue::open(&dir).with_context(|| format!("opening data directory {}", dir.display()))?;
                    serde_json::to_value(queue.redrive(&topic, &selection, to.as_deref(), dry_run)?)?
                }
            };
            print_redrive(&topic, &report, dry_run);
            Ok(())
        }
    }
}

/// What `selection` picks, as the JSON [`summary_json`] makes (the
/// `newest` most recent): through the API of the process that owns `dir`,
/// else read from `dir` (read-only: it works beside a running pipeline
/// that serves no API).
fn read(
    dir: &std::path::Path,
    api: Option<&crate::api::Client>,
    topic: &str,
    selection: &Selection,
    newest: usize,
) -> anyhow::Result<Value> {
    if let Some(api) = api {
        let query = selection_query(selection);
        let sep = if query.is_empty() { '?' } else { '&' };
        return api.call("GET", &format!("/v1/topics/{topic}/dead-letters{query}{sep}limit={newest}"), "application/json", Vec::new());
    }
    let queue = Queue::open_read_only(dir).with_context(|| format!("opening data directory {}", dir.display()))?;
    Ok(summary_json(&queue.dead_letter_summary(topic, selection, newest)?))
}

/// A selection's summary as JSON: counts, counts by stage and kind, and
/// the newest dead letters.
pub(crate) fn summary_json(s: &weir_queue::Summary) -> Value {
    let groups: Vec<Value> = s
        .groups
        .iter()
        .map(|((stage, kind), g)| json!({"stage": stage, "kind": kind, "count": g.count, "first_ms": g.first_ms, "last_ms": g.last_ms}))
        .collect();
    json!({
        "total": s.total,
        "redriven": s.redriven,
        "groups": groups,
        "dead_letters": s.newest.iter().map(dead_letter_json).collect::<Vec<_>>(),
    })
}

fn time(ms: &Value) -> String {
    ms.as_i64().and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok()).map_or_else(|| "?".into(), |t| t.to_string())
}

fn text(v: &Value) -> String {
    v.as_str().map(str::to_owned).unwrap_or_default()
}

fn print_list(topic: &str, summary: &Value) -> anyhow::Result<()> {
    let out = &mut std::io::stdout().lock();
    let (total, redriven) = (summary["total"].as_u64().unwrap_or(0), summary["redriven"].as_u64().unwrap_or(0));
    writeln!(out, "{topic}: {total} dead letter{}, {redriven} redriven", if total == 1 { "" } else { "s" })?;
    if total == 0 {
        return Ok(());
    }
    writeln!(out, "{:<16} {:<10} {:>7}  {:<26} last", "stage", "kind", "count", "first")?;
    for g in summary["groups"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "{:<16} {:<10} {:>7}  {:<26} {}",
            text(&g["stage"]),
            text(&g["kind"]),
            g["count"],
            time(&g["first_ms"]),
            time(&g["last_ms"])
        )?;
    }
    let newest = summary["dead_letters"].as_array().cloned().unwrap_or_default();
    writeln!(out, "\nnewest {} (weir dlq show {topic} P@O for one):", newest.len())?;
    for d in &newest {
        let from = match &d["source"] {
            Value::Null => String::new(),
            s => format!(" from {} {}@{}", text(&s["topic"]), s["partition"], s["offset"]),
        };
        let reason: String = text(&d["reason"]).chars().take(100).collect();
        writeln!(
            out,
            "{}@{}  {}  {}: {}{}  {reason}{}",
            d["partition"],
            d["offset"],
            time(&d["time_ms"]),
            text(&d["stage"]),
            text(&d["kind"]),
            from,
            if d["redriven"] == true { "  (redriven)" } else { "" }
        )?;
    }
    Ok(())
}

fn print_one(topic: &str, d: &Value, hex: bool) -> anyhow::Result<()> {
    let out = &mut std::io::stdout().lock();
    let m = &d["message"];
    writeln!(
        out,
        "{topic} {}@{}, dead-lettered {}{}",
        d["partition"],
        d["offset"],
        time(&d["time_ms"]),
        if d["redriven"] == true { ", redriven" } else { "" }
    )?;
    writeln!(out, "stage {}, kind {}, attempts {}", text(&d["stage"]), text(&d["kind"]), d["attempts"])?;
    writeln!(out, "reason: {}", text(&d["reason"]))?;
    if !m["key"].is_null() {
        writeln!(out, "key: {}", printable(&m["key"]))?;
    }
    writeln!(out, "headers:")?;
    for (k, v) in m["headers"].as_object().into_iter().flatten() {
        writeln!(out, "  {k}: {}", printable(v))?;
    }
    let payload = weir_queue::json::bytes_from_json(&m["payload"]).unwrap_or_default();
    writeln!(out, "payload ({} bytes):", payload.len())?;
    if hex {
        for (i, row) in payload.chunks(16).enumerate() {
            let hexes: Vec<String> = row.iter().map(|b| format!("{b:02x}")).collect();
            let ascii: String = row.iter().map(|&b| if (32..127).contains(&b) { b as char } else { '.' }).collect();
            writeln!(out, "{:08x}  {:<47}  {ascii}", i * 16, hexes.join(" "))?;
        }
    } else {
        writeln!(out, "{}", String::from_utf8_lossy(&payload))?;
    }
    Ok(())
}

fn printable(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => format!("bytes {other}"),
    }
}

fn print_redrive(topic: &str, report: &Value, dry_run: bool) {
    let sent = report["sent"].as_u64().unwrap_or(0);
    let targets: Vec<String> = report["to"].as_object().into_iter().flatten().map(|(t, n)| format!("{n} to {t}")).collect();
    let verb = if dry_run { "would redrive" } else { "redrove" };
    let mut line = format!("{verb} {sent} dead letter{} of {topic}", if sent == 1 { "" } else { "s" });
    if !targets.is_empty() {
        line += &format!(": {}", targets.join(", "));
    }
    if let Some(n) = report["already"].as_u64().filter(|n| *n > 0) {
        line += &format!("; {n} redriven before, not sent again");
    }
    if let Some(n) = report["payload_dropped"].as_u64().filter(|n| *n > 0) {
        line += &format!("; {n} stored without their payload (too large), not sent");
    }
    println!("{line}");
}
