//! `weir` in a real terminal (tmux): the README's bench command, whose
//! first stage logs a line per message, must end with its live table on
//! screen, drawn once below every log line, and with no more log lines
//! than the guest log limit lets through.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Weir, component, repo_root};

/// A tmux server of its own (its socket named for this process), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(width: u16, height: u16, command: &str) -> Tmux {
        let tmux = Tmux { socket: format!("weir-e2e-{}", std::process::id()) };
        let (w, h) = (width.to_string(), height.to_string());
        let out = tmux
            .cmd(&["new-session", "-d", "-s", "weir", "-x", &w, "-y", &h, command])
            .output()
            .expect("tmux (scripts/setup.sh installs it)");
        assert!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
        tmux
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]).args(args);
        c
    }

    /// The screen, or with `history` everything that scrolled off it too.
    fn capture(&self, history: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-J", "-t", "weir"];
        if history {
            args.extend(["-S", "-"]);
        }
        String::from_utf8(self.cmd(&args).output().unwrap().stdout).unwrap()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]).output();
    }
}

#[test]
fn the_live_table_stays_below_the_logs_and_the_logs_stay_within_their_limit() {
    component("hello");
    let weir = Weir::new();
    let scratch = tempfile::tempdir().unwrap();
    let command = format!(
        "cd {} && WEIR_DATA_DIR={} {} bench examples/pipelines/filter.toml --messages 100000 --report {}/r.json --chart {}/c.svg; echo WEIR-EXITED; sleep 600",
        repo_root().display(),
        weir.data.path().display(),
        Weir::bin().display(),
        scratch.path().display(),
        scratch.path().display()
    );
    let tmux = Tmux::start(160, 45, &command);
    let started = Instant::now();
    while !tmux.capture(false).contains("WEIR-EXITED") {
        assert!(started.elapsed() < Duration::from_secs(300), "weir bench did not finish:\n{}", tmux.capture(false));
        std::thread::sleep(Duration::from_millis(200));
    }
    let screen = tmux.capture(false);
    let all = tmux.capture(true);
    let live_header = |l: &&str| l.starts_with("stage") && l.contains("msg/s") && !l.contains(" ok ");
    assert!(screen.lines().any(|l| live_header(&l)), "the live table is not on screen at the end:\n{screen}");
    assert_eq!(all.lines().filter(live_header).count(), 1, "a live table was left among the log lines:\n{all}");
    let table_at = all.lines().position(|l| live_header(&l)).unwrap();
    let is_log = |l: &str| l.len() > 20 && l.as_bytes()[4] == b'-' && l.as_bytes()[10] == b'T';
    assert!(!all.lines().skip(table_at).any(is_log), "a log line was printed below the live table:\n{all}");

    // The hello stage logs every message; its limit (burst 1000, then 100
    // lines a second, with a summary of what it suppressed every 10 s) is
    // what reaches the terminal, plus weir's own few lines.
    let secs: f64 = all
        .lines()
        .find_map(|l| l.strip_prefix("weir: ")?.rsplit_once(" in ")?.1.strip_suffix('s')?.parse().ok())
        .unwrap_or_else(|| panic!("no summary line:\n{all}"));
    let logs = all.lines().filter(|l| is_log(l)).count();
    let bound = 1000 + (100.0 * (secs + 1.0)) as usize + 20;
    assert!(logs <= bound, "{logs} log lines in {secs} s (at most {bound} expected)");
    assert!(logs > 0, "the hello stage's log lines did not reach the terminal");
}
