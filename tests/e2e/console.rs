//! The web console in a real browser: headless Chromium, driven by
//! playwright-core (tests/browser/console.mjs), against `weir run --listen
//! --auth` under load. `scripts/test` installs Chromium and playwright-core.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http::{Api, start, stop};
use crate::{Weir, pipeline_file, repo_root};

#[test]
fn the_console_shows_the_running_pipeline_live_and_agrees_with_metrics_in_a_browser() {
    let browser = repo_root().join("tests/browser");
    assert!(
        browser.join("node_modules/playwright-core").is_dir() && std::path::Path::new("/usr/bin/chromium").exists(),
        "Chromium and playwright-core are missing: scripts/test installs them (source scripts/setup.sh; ensure_browser)"
    );
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline_file(
        dir.path(),
        "console.toml",
        "[pipeline]\nname = \"console\"\n[source]\ntype = \"queue\"\ntopic = \"in\"\n\
         [[stage]]\nname = \"screen\"\nmodule = \"{component:hostile}\"\nmax_attempts = 1\n\
         [[stage]]\nname = \"shout\"\nmodule = \"{component:uppercase}\"\n\
         [[sink]]\ntype = \"queue\"\ntopic = \"out\"\n",
    );
    // An admin token publishes; the console signs in with one that may
    // read and browse dead letters, nothing else.
    let (admin, viewer) = ("weir_publisher_token", "weir_console_viewer");
    let hash = |s: &str| crate::http::token_hash(&weir, s);
    let auth = dir.path().join("tokens.toml");
    std::fs::write(
        &auth,
        format!(
            "[[token]]\nname = \"publisher\"\nsha256 = \"{}\"\nadmin = true\n\
             [[token]]\nname = \"viewer\"\nsha256 = \"{}\"\nread = true\nconsume = [{{ topics = [\"*.dlq\"], groups = [\"*\"] }}]\n",
            hash(admin),
            hash(viewer)
        ),
    )
    .unwrap();
    let (run, base) = start(&weir, &["run", p.to_str().unwrap(), "--listen", "127.0.0.1:0", "--auth", auth.to_str().unwrap()]);

    // Load until the browser test is past watching the figures move (its
    // start-up takes seconds on a busy machine, which a fixed span of load
    // could end before): 20 messages every 50 ms, one in ten rejected by
    // `screen`. It then waits for the figures to settle.
    let load_ends = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (base, load_ends) = (base.clone(), load_ends.clone());
        std::thread::spawn(move || {
            let api = Api::new(base, Some(admin));
            let started = Instant::now();
            let mut sent = 0u64;
            while !load_ends.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(120) {
                let body: String = (0..20)
                    .map(|i| {
                        if (sent + i).is_multiple_of(10) {
                            "{\"payload\":\"reject\"}\n".to_owned()
                        } else {
                            format!("{{\"payload\":\"m{}\"}}\n", sent + i)
                        }
                    })
                    .collect();
                let (status, v) = api.send("POST", "/v1/topics/in/messages", "application/x-ndjson", body.as_bytes(), &[]);
                assert_eq!(status, 200, "{v}");
                sent += 20;
                std::thread::sleep(Duration::from_millis(50));
            }
            // Markup in a payload and in a reason (`screen` routes it to a
            // topic named with it: a dead letter of kind `routing`).
            let xss = json!({"payload": "route:<img src=x onerror=window.__pwned=1>"});
            assert_eq!(api.post("/v1/topics/in/messages", &xss).0, 200);
            sent
        })
    };
    let shots = repo_root().join("target/console");
    std::fs::create_dir_all(&shots).unwrap();
    let mut node = Command::new("node")
        .arg(browser.join("console.mjs"))
        .args([&base, viewer, "screen,shout", shots.to_str().unwrap()])
        .current_dir(&browser)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    // Its steps, on standard error as they start.
    let steps = {
        let (stderr, load_ends) = (node.stderr.take().unwrap(), load_ends.clone());
        std::thread::spawn(move || {
            let mut seen = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("once the load ends") {
                    load_ends.store(true, Ordering::SeqCst);
                }
                seen += &line;
                seen.push('\n');
            }
            load_ends.store(true, Ordering::SeqCst);
            seen
        })
    };
    let mut stdout = Vec::new();
    node.stdout.take().unwrap().read_to_end(&mut stdout).unwrap();
    let status = node.wait().unwrap();
    let steps = steps.join().unwrap();
    let sent = publisher.join().unwrap();
    assert!(status.success(), "the browser test failed:\n{}\n{steps}", String::from_utf8_lossy(&stdout));
    let seen: Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(seen["received"]["screen"], json!(sent + 1), "the console counted every message: {seen}");
    assert_eq!(seen["received"]["shout"], json!(sent - sent / 10 + 1), "and the rejected ones stopped at `screen`: {seen}");
    assert!(seen["dead_letters_shown"].as_u64().unwrap() > 0);
    for shot in ["console.png", "console-dead-letters.png"] {
        assert!(std::fs::metadata(shots.join(shot)).unwrap().len() > 10_000, "{shot} was saved");
    }

    // What the page read needs `read`: refused without a token, and the
    // viewer may not publish.
    assert_eq!(Api::new(base.clone(), None).get("/v1/pipeline").0, 401);
    assert_eq!(Api::new(base.clone(), Some(viewer)).post("/v1/topics/in/messages", &json!({"payload": "x"})).0, 403);
    assert_eq!(Api::new(base, None).get("/").0, 200, "the page itself holds no data");
    stop(run);
}
