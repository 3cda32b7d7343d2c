//! The live per-stage view of `weir run`: on a terminal, a table redrawn
//! on standard error every second and once more at the end (rate over the
//! last second, cumulative counts, p50/p99 per message, busy share),
//! pinned below everything else weir writes there: log lines print above
//! it ([`LogWriter`]); otherwise a log line per stage every ten seconds.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_engine::PipelineStats;

/// Watches a run until dropped.
pub(crate) struct LiveView {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LiveView {
    /// Start watching `stats`; `total` is the number of messages expected, if known.
    pub(crate) fn start(stats: Arc<PipelineStats>, total: Option<u64>) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let terminal = std::io::stderr().is_terminal();
        let thread = std::thread::Builder::new()
            .name("weir-live".into())
            .spawn(move || {
                let period = if terminal { Duration::from_secs(1) } else { Duration::from_secs(10) };
                let mut last: Vec<u64> = Vec::new();
                let mut last_at = Instant::now();
                loop {
                    let done = sleep_until_done(&flag, period);
                    let secs = last_at.elapsed().as_secs_f64().max(1e-3);
                    last_at = Instant::now();
                    let now: Vec<u64> = stats.stages().iter().map(|s| s.received()).collect();
                    let rates: Vec<f64> =
                        now.iter().enumerate().map(|(i, n)| (n - last.get(i).copied().unwrap_or(0)) as f64 / secs).collect();
                    last = now;
                    if terminal {
                        // Drawn once more when the run ends, so even a run
                        // shorter than a period leaves its final table.
                        pin(table(&stats, &rates, total));
                    } else if !done {
                        for (s, rate) in stats.stages().iter().zip(&rates) {
                            let p = s.per_message.summary();
                            tracing::info!(stage = %s.name, received = s.received(), rate = *rate as u64, p50_us = p.p50_us, p99_us = p.p99_us, dead = s.dead_lettered(), "progress");
                        }
                    }
                    if done {
                        break;
                    }
                }
                if terminal && PINNED.lock().unwrap_or_else(|e| e.into_inner()).take().is_some() {
                    // Leave the last table; the summary follows it.
                    eprintln!();
                }
            })
            .ok();
        LiveView { done, thread }
    }
}

impl Drop for LiveView {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
    }
}

/// Sleep `period` in short steps; true once `done` is set.
fn sleep_until_done(done: &AtomicBool, period: Duration) -> bool {
    let until = Instant::now() + period;
    while Instant::now() < until {
        if done.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done.load(Ordering::Relaxed)
}

/// The table pinned at the bottom of the terminal, while the live view runs.
static PINNED: Mutex<Option<String>> = Mutex::new(None);

/// Move the cursor up over `table` and clear from there down.
fn unpin(err: &mut impl Write, table: &str) {
    let height = table.lines().count();
    if height > 0 {
        let _ = write!(err, "\x1b[{height}F\x1b[J");
    }
}

/// Draw `table` in place of the pinned one.
fn pin(table: String) {
    let mut pinned = PINNED.lock().unwrap_or_else(|e| e.into_inner());
    let mut err = std::io::stderr().lock();
    if let Some(old) = pinned.as_deref() {
        unpin(&mut err, old);
    }
    let _ = err.write_all(table.as_bytes());
    let _ = err.flush();
    *pinned = Some(table);
}

/// Write whole lines to standard error above the pinned table, if one is
/// there: take the table away, write, draw it again.
pub(crate) fn print_above(lines: &[u8]) {
    let pinned = PINNED.lock().unwrap_or_else(|e| e.into_inner());
    let mut err = std::io::stderr().lock();
    if let Some(table) = pinned.as_deref() {
        unpin(&mut err, table);
        let _ = err.write_all(lines);
        let _ = err.write_all(table.as_bytes());
    } else {
        let _ = err.write_all(lines);
    }
    let _ = err.flush();
}

/// Where weir's log lines go: standard error, above the live table.
pub(crate) struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;
    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::new())
    }
}

/// One log event, written out whole when the formatter is done with it.
pub(crate) struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            print_above(&self.0);
        }
    }
}

/// The table: progress, then a line per stage.
fn table(stats: &PipelineStats, rates: &[f64], total: Option<u64>) -> String {
    let mut out = String::new();
    let secs = stats.elapsed().as_secs_f64();
    let received = stats.received();
    match total {
        Some(t) if t > 0 => {
            let frac = (received as f64 / t as f64).min(1.0);
            let width = 30;
            let filled = (frac * width as f64) as usize;
            out.push_str(&format!(
                "[{}{}] {received}/{t} ({:.0}%)  {secs:.0}s\n",
                "#".repeat(filled),
                "-".repeat(width - filled),
                frac * 100.0
            ));
        }
        _ => {
            let lag: u64 = stats.lag().iter().sum();
            out.push_str(&format!(
                "{received} in, {} out, {} dead-lettered, {} in flight, lag {lag}  {secs:.0}s\n",
                stats.written(),
                stats.dead_lettered(),
                stats.in_flight()
            ));
        }
    }
    out.push_str(&format!(
        "{:<22} {:>11} {:>10} {:>8} {:>7} {:>9} {:>9} {:>6}\n",
        "stage", "msg/s", "received", "dead", "errors", "p50 µs", "p99 µs", "busy"
    ));
    let bottleneck = stats.bottleneck().map(|b| b.name.clone());
    for (s, rate) in stats.stages().iter().zip(rates) {
        let p = s.per_message.summary();
        let errors: u64 = s.errors().values().sum();
        let mark = if bottleneck.as_deref() == Some(s.name.as_str()) { " *" } else { "" };
        out.push_str(&format!(
            "{:<22} {:>11.0} {:>10} {:>8} {:>7} {:>9} {:>9} {:>5.0}%{mark}\n",
            s.name,
            rate,
            s.received(),
            s.dead_lettered(),
            errors,
            p.p50_us,
            p.p99_us,
            s.busy().as_secs_f64() / secs.max(1e-9) * 100.0
        ));
    }
    out
}
