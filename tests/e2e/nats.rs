//! Scale-out on NATS JetStream, against a real nats-server: the one on
//! 127.0.0.1:4222 (`scripts/test` starts it if none runs; `WEIR_TEST_NATS_URL`
//! names another), or a private one where a test restarts the server.
//!
//! Every test uses streams of its own, deleted at the end.

use std::collections::{BTreeSet, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;

use crate::{Weir, pipeline_file, read_json};

fn server_url() -> String {
    std::env::var("WEIR_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Names unique to one test run: `T<pid>_<n>` for streams, `t<pid>.<n>` for subjects.
fn unique(label: &str) -> (String, String) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let id = format!("{}_{nanos}_{n}", std::process::id());
    (format!("T{id}_{}", label.to_uppercase()), format!("t{id}.{label}"))
}

/// A client for checking what landed in the streams, and deleting them.
struct Js {
    rt: tokio::runtime::Runtime,
    js: jetstream::Context,
    streams: Vec<String>,
}

impl Js {
    fn connect(url: &str) -> Js {
        Self::connect_with(url, async_nats::ConnectOptions::new())
    }

    fn connect_with(url: &str, options: async_nats::ConnectOptions) -> Js {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let connected = rt.block_on(async { options.connect(url).await.map(jetstream::new) });
        let js = connected.unwrap_or_else(|e| panic!("NATS at {url}: {e} (is nats-server -js running?)"));
        Js { js, rt, streams: Vec::new() }
    }

    /// Delete `stream` when the test ends.
    fn owns(&mut self, stream: &str) {
        self.streams.push(stream.to_owned());
    }

    fn len(&self, stream: &str) -> u64 {
        self.rt.block_on(async { self.js.get_stream(stream).await.map(|s| s.cached_info().state.messages).unwrap_or(0) })
    }

    /// Every message of `stream`: (payload, headers), in order. Read with an
    /// ordered consumer, in batches: one direct get per message took a
    /// round trip each (a minute for the 200,000 outputs of a test).
    fn read_all(&self, stream: &str) -> Vec<(String, Vec<(String, String)>)> {
        self.rt.block_on(async {
            let s = self.js.get_stream(stream).await.unwrap();
            let n = s.cached_info().state.messages as usize;
            let mut out = Vec::with_capacity(n);
            if n == 0 {
                return out;
            }
            let consumer = s.create_consumer(jetstream::consumer::pull::OrderedConfig::default()).await.unwrap();
            let mut messages = consumer.messages().await.unwrap();
            while out.len() < n {
                let next = tokio::time::timeout(Duration::from_secs(30), messages.next()).await;
                let m = next.unwrap_or_else(|_| panic!("{stream}: {} of {n} messages read, then none for 30 s", out.len()));
                let m = m.expect("the ordered consumer ended").unwrap();
                let headers = m
                    .headers
                    .iter()
                    .flat_map(|h| h.iter().flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.as_str().to_owned()))))
                    .collect();
                out.push((String::from_utf8_lossy(&m.payload).into_owned(), headers));
            }
            out
        })
    }
}

impl Drop for Js {
    fn drop(&mut self) {
        for s in std::mem::take(&mut self.streams) {
            self.rt.block_on(async { self.js.delete_stream(&s).await.ok() });
        }
    }
}

/// A JetStream pipeline: `source` stream → uppercase (or `stage`) → `out` subject.
struct Names {
    input: (String, String),
    output: (String, String),
    dlq: (String, String),
}

impl Names {
    fn new(js: &mut Js) -> Names {
        let names = Names { input: unique("in"), output: unique("out"), dlq: unique("dlq") };
        for s in [&names.input.0, &names.output.0, &names.dlq.0] {
            js.owns(s);
        }
        names
    }

    /// Publish `lines` to the input subject with `weir produce --nats`
    /// (and `extra` flags), creating the input stream.
    fn produce(&self, url: &str, lines: &[String], extra: &[&str]) {
        let mut input = lines.join("\n");
        input.push('\n');
        let (stream, subject) = &self.input;
        let args = [&["produce", "--nats", url, subject, "--stream", stream][..], extra].concat();
        let out = Weir::new().ok(&args, input.as_bytes());
        assert!(out.contains(&format!("published {} messages", lines.len())), "{out}");
    }

    fn pipeline(&self, dir: &Path, url: &str, stage: &str, source_extra: &str) -> PathBuf {
        let Names { input: (in_stream, in_subject), output: (out_stream, out_subject), dlq: (dlq_stream, dlq_subject) } = self;
        pipeline_file(
            dir,
            "nats.toml",
            &format!(
                r#"
[pipeline]
name = "scale-out"

[nats]
url = "{url}"

[source]
type = "nats"
stream = "{in_stream}"
subjects = ["{in_subject}"]
consumer = "workers"
{source_extra}

{stage}

[[sink]]
type = "nats"
subject = "{out_subject}"
stream = "{out_stream}"

[dead_letter]
subject = "{dlq_subject}"
stream = "{dlq_stream}"
"#
            ),
        )
    }
}

const UPPERCASE: &str = "[[stage]]\nname = \"upper\"\nmodule = \"{component:uppercase}\"";

fn spawn_run(weir: &Weir, pipeline: &Path, report: &Path) -> Child {
    weir.cmd(&["run", pipeline.to_str().unwrap(), "--drain", "--report", report.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `n` processes running `pipeline` to the end, each with a data directory
/// of its own and a report in `dir`.
struct Workers {
    _data: Vec<Weir>,
    reports: Vec<PathBuf>,
    runs: Vec<Child>,
}

fn workers(n: usize, dir: &Path, pipeline: &Path) -> Workers {
    let data: Vec<Weir> = (0..n).map(|_| Weir::new()).collect();
    let reports: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("r{i}.json"))).collect();
    let runs = data.iter().zip(&reports).map(|(w, r)| spawn_run(w, pipeline, r)).collect();
    Workers { _data: data, reports, runs }
}

fn wait(child: Child, within: Duration) -> String {
    let started = Instant::now();
    let mut child = child;
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "weir run failed: {}\n{stderr}", out.status);
            return stderr;
        }
        if started.elapsed() > within {
            child.kill().ok();
            let out = child.wait_with_output().unwrap();
            panic!("weir run did not finish in {within:?}:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The outputs are exactly the upper-cased inputs, each once.
fn assert_exact_output(js: &Js, names: &Names, inputs: &[String]) {
    let out = js.read_all(&names.output.0);
    let got: HashSet<&str> = out.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(out.len(), inputs.len(), "output count after NATS dedupe");
    let want: HashSet<String> = inputs.iter().map(|s| s.to_uppercase()).collect();
    assert!(want.iter().all(|w| got.contains(w.as_str())), "some outputs are missing");
    assert_eq!(js.len(&names.dlq.0), 0, "nothing should be dead-lettered");
}

fn inputs(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{i:07}")).collect()
}

#[test]
fn three_processes_share_a_durable_consumer_and_process_everything() {
    let url = server_url();
    let mut js = Js::connect(&url);
    let names = Names::new(&mut js);
    let inputs = inputs(200_000);
    names.produce(&url, &inputs, &[]);

    let dir = tempfile::tempdir().unwrap();
    let p = names.pipeline(dir.path(), &url, UPPERCASE, "ack_wait_ms = 5000");
    let Workers { _data, reports, runs } = workers(3, dir.path(), &p);
    for run in runs {
        wait(run, Duration::from_secs(300));
    }
    assert_exact_output(&js, &names, &inputs);
    let received: Vec<u64> = reports.iter().map(|r| read_json(r)["source"]["received"].as_u64().unwrap()).collect();
    assert!(received.iter().all(|&n| n > 0), "every process should take a share: {received:?}");
    assert!(received.iter().sum::<u64>() >= inputs.len() as u64, "{received:?}");
}

#[test]
fn kill_9_of_one_process_loses_nothing_and_counts_the_redeliveries() {
    let url = server_url();
    let mut js = Js::connect(&url);
    let names = Names::new(&mut js);
    let inputs = inputs(200_000);
    names.produce(&url, &inputs, &[]);

    let dir = tempfile::tempdir().unwrap();
    // A short ack wait: the dead process's messages come back quickly.
    let p = names.pipeline(dir.path(), &url, UPPERCASE, "ack_wait_ms = 2000");
    let Workers { _data, reports, mut runs } = workers(3, dir.path(), &p);
    wait_until("a fifth of the outputs", Duration::from_secs(120), || js.len(&names.output.0) >= 40_000);
    let mut victim = runs.remove(0);
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();
    let done_at_kill = js.len(&names.output.0);
    assert!(done_at_kill < inputs.len() as u64, "the run should be mid-way when one process dies");
    for run in runs {
        wait(run, Duration::from_secs(300));
    }
    assert_exact_output(&js, &names, &inputs);
    let redelivered: u64 = reports[1..].iter().map(|r| read_json(r)["source"]["redelivered"].as_u64().unwrap()).sum();
    assert!(redelivered > 0, "the killed process's unacknowledged messages are redelivered to the others");
}

#[test]
fn poison_messages_reach_the_dead_letter_subject_and_long_batches_stay_leased() {
    let url = server_url();
    let mut js = Js::connect(&url);
    let names = Names::new(&mut js);
    let inputs: Vec<String> = ["ok-1", "reject", "trap", "spin:2500", "ok-2"].map(String::from).to_vec();
    names.produce(&url, &inputs, &[]);

    let dir = tempfile::tempdir().unwrap();
    let stage = "[[stage]]\nname = \"hostile\"\nmodule = \"{component:hostile}\"\nmax_attempts = 2\nretry_backoff_ms = 100";
    // The spin takes 2.5 s, longer than the ack wait: only progress acks
    // keep it (and its batch) from being redelivered.
    // The hostile fixture can write state: one process runs it here.
    let p = names.pipeline(dir.path(), &url, stage, "ack_wait_ms = 1000\nsingle_process = true");
    let report = dir.path().join("r.json");
    wait(spawn_run(&Weir::new(), &p, &report), Duration::from_secs(120));

    let outputs: BTreeSet<String> = js.read_all(&names.output.0).into_iter().map(|(p, _)| p).collect();
    assert_eq!(outputs, ["ok-1", "ok-2", "spin:2500"].map(String::from).into());
    let dead = js.read_all(&names.dlq.0);
    let header = |m: &(String, Vec<(String, String)>), k: &str| m.1.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let by_payload = |p: &str| dead.iter().find(|m| m.0 == p).unwrap_or_else(|| panic!("{p} should be dead-lettered: {dead:?}"));
    assert_eq!(dead.len(), 2, "{dead:?}");
    let reject = by_payload("reject");
    assert_eq!(header(reject, "weir.reason").as_deref(), Some("asked to reject"));
    assert_eq!(header(reject, "weir.stage").as_deref(), Some("hostile"));
    assert_eq!(header(reject, "weir.source.topic"), Some(names.input.0.clone()));
    let trap = by_payload("trap");
    assert_eq!(header(trap, "weir.attempts").as_deref(), Some("2"));
    assert_eq!(header(trap, "weir.error-kind").as_deref(), Some("trap"));
    let r = read_json(&report);
    // Only the trap is delivered twice (its retry): the slow batch was kept alive.
    assert_eq!(r["source"]["redelivered"], 1, "{r}");
    assert_eq!(r["source"]["received"], 6, "{r}");
}

/// A nats-server of the test's own, on a free port with its own store, so it
/// can be stopped and started again.
struct PrivateServer {
    store: tempfile::TempDir,
    port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl PrivateServer {
    fn start() -> PrivateServer {
        Self::start_with(&[])
    }

    /// With extra nats-server arguments, such as `--auth TOKEN`.
    fn start_with(args: &[&str]) -> PrivateServer {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut s = PrivateServer { store: tempfile::tempdir().unwrap(), port, args, child: None };
        s.up();
        s
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) {
        let bin = ["nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|b| Command::new(b).arg("--version").output().is_ok())
            .expect("nats-server is installed (scripts/test installs it)");
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.store.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        wait_until("the private nats-server", Duration::from_secs(10), || std::net::TcpStream::connect(&addr).is_ok());
    }

    /// Freeze it past the publish-ack timeout (requests in flight go
    /// unanswered, as when a server hangs), then stop it as an operator
    /// would (SIGTERM: JetStream flushes and exits).
    fn hang_then_stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id().to_string();
            Command::new("kill").args(["-STOP", &pid]).status().unwrap();
            std::thread::sleep(Duration::from_secs(6));
            Command::new("kill").args(["-CONT", &pid]).status().unwrap();
            Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

#[test]
fn a_nats_server_restart_mid_run_pauses_the_pipeline_and_loses_nothing() {
    let mut server = PrivateServer::start();
    let url = server.url();
    let mut js = Js::connect(&url);
    let names = Names::new(&mut js);
    let inputs = inputs(30_000);
    names.produce(&url, &inputs, &[]);

    let dir = tempfile::tempdir().unwrap();
    // Small batches so the run lasts long enough to be interrupted.
    let stage = "[[stage]]\nname = \"upper\"\nmodule = \"{component:uppercase}\"\nbatch_size = 4";
    let p = names.pipeline(dir.path(), &url, stage, "ack_wait_ms = 5000");
    let report = dir.path().join("r.json");
    let run = spawn_run(&Weir::new(), &p, &report);
    let mut done_at_stop = 0;
    wait_until("some outputs", Duration::from_secs(120), || {
        done_at_stop = js.len(&names.output.0);
        done_at_stop >= 2_000
    });
    server.hang_then_stop();
    assert!(done_at_stop < inputs.len() as u64, "the run should be mid-way when the server stops");
    std::thread::sleep(Duration::from_secs(2));
    server.up();
    // Unanswered publishes are retried together: a few seconds, not one
    // ack timeout per message (and within the stream's 2-minute dedupe window).
    let stderr = wait(run, Duration::from_secs(90));
    assert!(stderr.contains("NATS connection lost"), "the outage should be reported:\n{stderr}");
    assert_exact_output(&js, &names, &inputs);
    let r = read_json(&report);
    assert!(r["source"]["received"].as_u64().unwrap() >= inputs.len() as u64, "{r}");
}

#[test]
fn a_token_protected_server_takes_the_token_from_the_environment_and_refuses_a_wrong_one() {
    let server = PrivateServer::start_with(&["--auth", "s3cret"]);
    let url = server.url();
    let mut js = Js::connect_with(&url, async_nats::ConnectOptions::with_token("s3cret".into()));
    let names = Names::new(&mut js);
    let inputs = inputs(10);
    names.produce(&url, &inputs, &["--nats-token", "s3cret"]);

    let dir = tempfile::tempdir().unwrap();
    let p = names.pipeline(dir.path(), &url, UPPERCASE, "");
    // The same file everywhere; the secret comes from each machine's environment.
    let text = std::fs::read_to_string(&p).unwrap().replace("[nats]\n", "[nats]\ntoken_env = \"WEIR_TEST_NATS_TOKEN\"\n");
    std::fs::write(&p, text).unwrap();
    let run = |token: &str| {
        let weir = Weir::new();
        let mut cmd = weir.cmd(&["run", p.to_str().unwrap(), "--drain"]);
        cmd.env("WEIR_TEST_NATS_TOKEN", token).stdin(Stdio::null()).output().unwrap()
    };
    let refused = run("wrong");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a wrong token must not run");
    assert!(stderr.contains("connecting to") && stderr.to_lowercase().contains("authorization"), "{stderr}");
    let ok = run("s3cret");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_exact_output(&js, &names, &inputs);
}

/// A TCP proxy in front of a NATS server whose connections can be cut, as
/// a network failure would: what was in flight is lost, the server keeps
/// running and keeps what it stored.
struct CuttableProxy {
    port: u16,
    cut: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl CuttableProxy {
    fn to(upstream: String) -> CuttableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>> = Default::default();
        let conns = open.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(&upstream) else { continue };
                let mut held = conns.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(server.try_clone().unwrap());
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    std::thread::spawn(move || {
                        std::io::copy(&mut from, &mut to).ok();
                        to.shutdown(std::net::Shutdown::Both).ok();
                    });
                }
            }
        });
        CuttableProxy { port, cut: open }
    }

    /// Drop every connection through the proxy; new ones are let through.
    fn cut(&self) {
        for c in self.cut.lock().unwrap().drain(..) {
            c.shutdown(std::net::Shutdown::Both).ok();
        }
    }
}

#[test]
fn a_dropped_connection_mid_publish_is_retried_at_once_and_loses_nothing() {
    let url = server_url();
    let mut js = Js::connect(&url);
    let names = Names::new(&mut js);
    let inputs = inputs(60_000);
    names.produce(&url, &inputs, &[]);

    let upstream = url.trim_start_matches("nats://").to_owned();
    let proxy = CuttableProxy::to(upstream);
    let dir = tempfile::tempdir().unwrap();
    let p = names.pipeline(dir.path(), &format!("nats://127.0.0.1:{}", proxy.port), UPPERCASE, "ack_wait_ms = 5000");
    let report = dir.path().join("r.json");
    let run = spawn_run(&Weir::new(), &p, &report);
    wait_until("some outputs", Duration::from_secs(120), || js.len(&names.output.0) >= 5_000);
    // Twice, so that publishes are surely in flight at one of the cuts.
    proxy.cut();
    std::thread::sleep(Duration::from_millis(700));
    proxy.cut();
    // Publishes whose acks were lost time out together (5 s) and are sent
    // again: well within the stream's 2-minute dedupe window.
    let stderr = wait(run, Duration::from_secs(90));
    assert!(stderr.contains("NATS connection lost"), "the cut should be reported:\n{stderr}");
    assert_exact_output(&js, &names, &inputs);
}

#[test]
fn a_server_that_refuses_the_connection_mid_run_stops_the_run_with_the_cause() {
    let mut server = PrivateServer::start_with(&["--auth", "s3cret"]);
    let url = server.url();
    let mut js = Js::connect_with(&url, async_nats::ConnectOptions::with_token("s3cret".into()));
    let names = Names::new(&mut js);
    names.produce(&url, &inputs(10), &["--nats-token", "s3cret"]);
    let dir = tempfile::tempdir().unwrap();
    let p = names.pipeline(dir.path(), &url, UPPERCASE, "");
    let text = std::fs::read_to_string(&p).unwrap().replace("[nats]\n", "[nats]\ntoken_env = \"WEIR_TEST_NATS_TOKEN\"\n");
    std::fs::write(&p, text).unwrap();
    let weir = Weir::new();
    let child = weir
        .cmd(&["run", p.to_str().unwrap()])
        .env("WEIR_TEST_NATS_TOKEN", "s3cret")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the first outputs", Duration::from_secs(30), || js.len(&names.output.0) == 10);
    // The server comes back with another token: the old one is refused for
    // good. (Its streams live and die with its store.)
    js.streams.clear();
    drop(js);
    if let Some(mut c) = server.child.take() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    server.args = vec!["--auth".into(), "rotated".into()];
    server.up();
    let out = crate::finish_within(child, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused the connection") && stderr.contains("authorization violation"), "{stderr}");
}

#[test]
fn an_output_over_the_servers_max_payload_is_dead_lettered_alone() {
    let url = server_url();
    let mut js = Js::connect(&url);
    let names = Names::new(&mut js);
    // The default server takes at most 1 MiB: 2 MB is within the stage's limits, not the server's.
    let lines: Vec<String> = ["ok-1", "big:2000000", "ok-2"].map(String::from).to_vec();
    names.produce(&url, &lines, &[]);
    let dir = tempfile::tempdir().unwrap();
    let stage = "[[stage]]\nname = \"hostile\"\nmodule = \"{component:hostile}\"";
    let p = names.pipeline(dir.path(), &url, stage, "single_process = true");
    let weir = Weir::new();
    let report = dir.path().join("r.json");
    wait(spawn_run(&weir, &p, &report), Duration::from_secs(60));
    let out: Vec<String> = js.read_all(&names.output.0).into_iter().map(|(payload, _)| payload).collect();
    assert_eq!(out, ["ok-1", "ok-2"]);
    let dead = js.read_all(&names.dlq.0);
    assert_eq!(dead.len(), 1, "{dead:?}");
    let header = |name: &str| dead[0].1.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!(header("weir.error-kind").as_deref(), Some("output"));
    assert_eq!(header("weir.stage").as_deref(), Some("sink"));
    assert!(header("weir.reason").unwrap().contains("max_payload"), "{dead:?}");
    assert_eq!(header("weir.payload-dropped").as_deref(), Some("2000000"), "the dead letter itself fits");
}

#[test]
fn a_stage_that_keeps_state_behind_a_shared_jetstream_consumer_is_refused() {
    let url = server_url();
    let mut js = Js::connect(&url);
    let names = Names::new(&mut js);
    let dir = tempfile::tempdir().unwrap();
    let count = "[[stage]]\nname = \"count\"\nmodule = \"{component:count}\"";
    let shared = names.pipeline(dir.path(), &url, count, "");
    let weir = Weir::new();
    for command in ["validate", "run"] {
        let err = weir.fails(&[command, shared.to_str().unwrap()], b"");
        assert!(
            err.contains("stage[0].module") && err.contains("keeps state") && err.contains("single_process = true"),
            "{command}: {err}"
        );
    }
    // Stateless stages are fine; so is a stateful one on the operator's word.
    weir.ok(&["validate", names.pipeline(dir.path(), &url, UPPERCASE, "").to_str().unwrap()], b"");
    weir.ok(&["validate", names.pipeline(dir.path(), &url, count, "single_process = true").to_str().unwrap()], b"");
}

#[test]
fn consume_names_a_subject_as_produce_does() {
    let url = server_url();
    let mut js = Js::connect(&url);
    let (stream, subject) = unique("words");
    js.owns(&stream);
    let weir = Weir::new();
    let out = weir.ok(&["produce", "--nats", &url, &subject, "--stream", &stream], b"one\ntwo\n");
    assert!(out.contains("published 2 messages"), "{out}");
    // The subject, as for produce: the stream capturing it is found.
    assert_eq!(weir.ok(&["consume", "--nats", &url, &subject], b""), "one\ntwo\n");
    assert_eq!(weir.ok(&["consume", "--nats", &url, &subject, "--stream", &stream, "--count", "1"], b""), "one\n");
    // The old form (the stream's name) still works and says what changed.
    let old = weir.output(&["consume", "--nats", &url, &stream], b"");
    assert_eq!(String::from_utf8_lossy(&old.stdout), "one\ntwo\n");
    assert!(String::from_utf8_lossy(&old.stderr).contains("--stream NAME"), "{}", String::from_utf8_lossy(&old.stderr));
    let err = weir.fails(&["consume", "--nats", &url, &format!("{subject}.nowhere")], b"");
    assert!(err.contains("no JetStream stream captures subject"), "{err}");
}
