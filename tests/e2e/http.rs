//! The HTTP API (`weir serve`, `weir run --listen`), driven over real HTTP.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Weir, pipeline_file, repo_root};

/// A client of one server.
pub(crate) struct Api {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

impl Api {
    pub(crate) fn new(base: String, token: Option<&str>) -> Api {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        Api { base, agent, token: token.map(str::to_owned) }
    }

    /// Send a request; the status and the body as JSON (`Value::Null` if it is not JSON).
    pub(crate) fn send(&self, method: &str, path: &str, content_type: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder().method(method).uri(&url).header("content-type", content_type);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut resp = self.agent.run(req.body(body.to_vec()).unwrap()).unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub(crate) fn get(&self, path: &str) -> (u16, Value) {
        self.send("GET", path, "application/json", b"", &[])
    }

    pub(crate) fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send("POST", path, "application/json", body.to_string().as_bytes(), &[])
    }
}

/// Pipeline `up`: topic `in` → uppercase → topic `out`.
fn uppercase_pipeline(dir: &std::path::Path) -> std::path::PathBuf {
    pipeline_file(
        dir,
        "p.toml",
        "[pipeline]\nname = \"up\"\n[source]\ntype = \"queue\"\ntopic = \"in\"\n\
         [[stage]]\nname = \"upper\"\nmodule = \"{component:uppercase}\"\n[[sink]]\ntype = \"queue\"\ntopic = \"out\"\n",
    )
}

/// A `weir` process a test started: killed when dropped, so a test that
/// fails (panics) before it stops the process leaves none behind.
pub(crate) struct Served(pub(crate) Child);

impl std::ops::Deref for Served {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Served {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.0.kill().ok();
            self.0.wait().ok();
        }
    }
}

/// Start `weir ARGS` (serve, or run --listen) and wait for the address it writes.
pub(crate) fn start(weir: &Weir, args: &[&str]) -> (Served, String) {
    let mut cmd = weir.cmd(args);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    start_command(weir, cmd)
}

/// [`start`] for a command the caller has set up: its standard error
/// piped (shown if it exits before serving) or sent elsewhere.
pub(crate) fn start_command(weir: &Weir, mut cmd: Command) -> (Served, String) {
    let addr_file = weir.data.path().join("api.addr");
    std::fs::remove_file(&addr_file).ok();
    let mut child = Served(cmd.spawn().unwrap());
    let started = Instant::now();
    loop {
        if let Some(addr) = std::fs::read_to_string(&addr_file).ok().and_then(|a| a.lines().next().map(str::to_owned)) {
            return (child, addr);
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(stderr) = child.stderr.as_mut() {
                std::io::Read::read_to_string(stderr, &mut err).ok();
            }
            panic!("{cmd:?} exited ({status}) before serving:\n{err}");
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{cmd:?} did not write its address");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `sha256` of a token, as `weir token hash` prints it for an --auth file.
pub(crate) fn token_hash(weir: &Weir, secret: &str) -> String {
    let out = weir.ok(&["token", "hash"], secret.as_bytes());
    out.trim().strip_prefix("sha256 = ").unwrap().trim_matches('"').to_owned()
}

pub(crate) fn stop(mut child: Served) {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(30), "weir did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn run_listen_takes_publishes_to_its_source_topic_as_soon_as_it_serves() {
    // 300 more topics to make, each synced to disk, before `in` (they sort
    // first): the API must not serve until the source topic exists, or a
    // publish right after it starts is refused as an unknown topic. Then
    // the stage's init spins until its 5 s timeout.
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let mut toml = "[pipeline]\nname = \"slow\"\n[source]\ntype = \"queue\"\ntopic = \"in\"\n\
         [[stage]]\nname = \"slow\"\nmodule = \"{component:hostile}\"\ntimeout_ms = 5000\n[stage.config]\ninit = \"loop\"\n\
         [[sink]]\ntype = \"queue\"\ntopic = \"out\"\n"
        .to_owned();
    for i in 0..300 {
        toml += &format!("[[topic]]\nname = \"a{i:03}\"\n");
    }
    let p = pipeline_file(dir.path(), "p.toml", &toml);
    let (mut run, base) = start(&weir, &["run", p.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let (status, v) = Api::new(base, None).post("/v1/topics/in/messages", &json!({"payload": "first"}));
    assert!(run.try_wait().unwrap().is_none(), "the stage was still loading");
    run.kill().unwrap();
    run.wait().unwrap();
    assert_eq!(status, 200, "{v}");
}

#[test]
fn a_batch_waiting_further_down_does_not_hold_a_new_message_at_the_source() {
    // The first stage waits up to ten minutes to fill a batch while it is
    // busy; the second spins 30 s on the first message. The first stage is
    // free meanwhile, so a second message goes to it at once: waiting to
    // fill is for a busy next thread, not for batches further down.
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let toml = r#"[pipeline]
name = "t"
stage_threads = 2

[source]
type = "queue"
topic = "in"

[[stage]]
name = "first"
module = "{component:filter}"
batch_timeout_ms = 600000

[stage.config]
drop_if_contains = "debug"

[[stage]]
name = "slow"
module = "{component:hostile}"
timeout_ms = 60000

[[sink]]
type = "queue"
topic = "out"
"#;
    let p = pipeline_file(dir.path(), "p.toml", toml);
    let (mut run, base) = start(&weir, &["run", p.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let api = Api::new(base, None);
    let received = |stage: usize| api.get("/v1/pipeline").1["report"]["stages"][stage]["received"].as_u64();
    assert_eq!(api.post("/v1/topics/in/messages", &json!({"payload": "spin:30000"})).0, 200);
    let started = Instant::now();
    while received(1) != Some(1) {
        assert!(started.elapsed() < Duration::from_secs(20), "the slow stage never got the first message");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(api.post("/v1/topics/in/messages", &json!({"payload": "second"})).0, 200);
    let started = Instant::now();
    while received(0) != Some(2) {
        assert!(started.elapsed() < Duration::from_secs(15), "the source held the second message back to fill a batch");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(received(1), Some(1), "the slow stage is still on the first message");
    run.kill().unwrap(); // SIGTERM would wait for the spinning call
    run.wait().unwrap();
}

#[test]
fn concurrent_http_publishers_feed_a_running_pipeline_each_message_once() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let p = uppercase_pipeline(dir.path());
    let (run, base) = start(&weir, &["run", p.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let (clients, requests, per_request) = (4, 25, 100);
    let publishers: Vec<_> = (0..clients)
        .map(|c| {
            let base = base.clone();
            std::thread::spawn(move || {
                let api = Api::new(base, None);
                let mut offsets = Vec::new();
                for r in 0..requests {
                    let body: String = (0..per_request).map(|i| format!("{{\"payload\":\"c{c}-r{r}-m{i}\"}}\n")).collect();
                    let (status, v) = api.send("POST", "/v1/topics/in/messages", "application/x-ndjson", body.as_bytes(), &[]);
                    assert_eq!(status, 200, "{v}");
                    offsets.extend(v["offsets"].as_array().unwrap().iter().map(|o| o["offset"].as_u64().unwrap()));
                }
                offsets
            })
        })
        .collect();
    let mut offsets: Vec<u64> = publishers.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let total = (clients * requests * per_request) as u64;
    offsets.sort_unstable();
    assert_eq!(offsets, (0..total).collect::<Vec<_>>(), "offsets are dense and each given once");

    let api = Api::new(base, None);
    let started = Instant::now();
    while api.get("/v1/topics/out").1["messages"].as_u64() != Some(total) {
        assert!(started.elapsed() < Duration::from_secs(120), "the pipeline did not process everything");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop(run);
    let out = weir.consume_all("out");
    let distinct: HashSet<&String> = out.iter().collect();
    assert_eq!((out.len(), distinct.len()), (total as usize, total as usize), "each message once");
    assert!(distinct.contains(&"C3-R24-M99".to_string()));
}

#[test]
fn bad_requests_get_a_clear_4xx_and_change_nothing() {
    let weir = Weir::new();
    let (serve, base) = start(&weir, &["serve", "--listen", "127.0.0.1:0", "--token", "t0k", "--max-body-bytes", "1024"]);
    let anonymous = Api::new(base.clone(), None);
    let wrong = Api::new(base.clone(), Some("nope"));
    let api = Api::new(base, Some("t0k"));
    assert_eq!(anonymous.get("/health").0, 200, "health needs no token");
    for (who, what) in [(&anonymous, "no token"), (&wrong, "a wrong token")] {
        let (status, v) = who.get("/v1/topics");
        assert_eq!(status, 401, "{what}: {v}");
        assert!(v["error"].as_str().unwrap().contains("bearer token"), "{v}");
        assert_eq!(who.post("/v1/topics", &json!({"name": "sneaky"})).0, 401);
    }
    assert_eq!(api.post("/v1/topics", &json!({"name": "t"})).0, 201);

    let error = |(status, v): (u16, Value), want: u16, says: &str| {
        assert_eq!(status, want, "{v}");
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("a JSON error: {v}"));
        assert!(msg.contains(says), "{msg:?} should say {says:?}");
    };
    error(api.post("/v1/topics/nope/messages", &json!({"payload": "x"})), 404, "unknown topic `nope`");
    error(api.send("POST", "/v1/topics/t/messages", "application/json", b"{\"payload\": ", &[]), 400, "malformed JSON");
    error(api.post("/v1/topics/t/messages", &json!([{"payload": "ok"}, {"key": "no payload"}])), 400, "message [1]: needs a `payload`");
    let ndjson = b"{\"payload\":\"fine\"}\n{\"payload\": 12}\n";
    error(api.send("POST", "/v1/topics/t/messages", "application/x-ndjson", ndjson, &[]), 400, "line 2");
    error(api.send("POST", "/v1/topics/t/messages", "text/plain", &[b'x'; 2000], &[]), 413, "larger than 1024 bytes");
    error(api.post("/v1/topics/t/messages", &json!([])), 400, "no messages");
    error(api.get("/v1/topics/t/groups/g/messages?max=0"), 400, "max must be");
    error(api.post("/v1/topics/t/groups/g/ack", &json!({"ids": []})), 404, "has no open fetch");
    error(api.post("/v1/topics", &json!({"name": "t"})), 409, "already exists");
    error(api.post("/v1/topics", &json!({"name": "u", "fsync": "sometimes"})), 400, "fsync must be");
    error(api.get("/v2/anything"), 404, "no such route");
    let (_, t) = api.get("/v1/topics/t");
    assert_eq!(t["messages"], 0, "refused requests published nothing: {t}");
    let (_, all) = api.get("/v1/topics");
    let names: Vec<&str> = all["topics"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["t"], "refused requests created nothing");
    stop(serve);

    let exposed = Weir::new().fails(&["serve", "--listen", "0.0.0.0:0"], b"");
    assert!(exposed.contains("not a loopback address") && exposed.contains("--token"), "{exposed}");
}

#[test]
fn kill_9_after_acknowledged_publishes_loses_nothing() {
    let weir = Weir::new();
    let (serve, base) = start(&weir, &["serve", "--listen", "127.0.0.1:0"]);
    let api = Api::new(base, None);
    assert_eq!(api.post("/v1/topics", &json!({"name": "t"})).0, 201);
    let mut want = Vec::new();
    for r in 0..50 {
        let batch: Vec<Value> = (0..20).map(|i| json!({"payload": format!("r{r:02}-{i:02}")})).collect();
        want.extend(batch.iter().map(|m| m["payload"].as_str().unwrap().to_owned()));
        assert_eq!(api.post("/v1/topics/t/messages", &Value::Array(batch)).0, 200);
    }
    let mut serve = serve;
    serve.kill().unwrap(); // SIGKILL
    serve.wait().unwrap();
    assert_eq!(weir.consume_all("t"), want, "every acknowledged publish survives, in order");
}

#[test]
fn consumers_long_poll_ack_nak_and_reject_over_http() {
    let weir = Weir::new();
    let (serve, base) = start(&weir, &["serve", "--listen", "127.0.0.1:0"]);
    let api = Api::new(base, None);
    assert_eq!(api.post("/v1/topics", &json!({"name": "jobs"})).0, 201);
    let body = json!([{"payload": "a", "key": "k", "headers": {"h": "v"}}, {"payload": "b"}, {"payload": "c"}]);
    assert_eq!(api.post("/v1/topics/jobs/messages", &body).0, 200);

    let (status, v) = api.get("/v1/topics/jobs/groups/workers/messages?max=10&wait_ms=2000");
    assert_eq!(status, 200, "{v}");
    let msgs = v["messages"].as_array().unwrap();
    let payloads: Vec<&str> = msgs.iter().map(|m| m["payload"].as_str().unwrap()).collect();
    assert_eq!(payloads, ["a", "b", "c"]);
    assert_eq!((msgs[0]["key"].as_str(), msgs[0]["headers"]["h"].as_str(), msgs[0]["attempt"].as_u64()), (Some("k"), Some("v"), Some(1)));
    let id = |m: &Value| json!({"partition": m["partition"], "offset": m["offset"]});
    assert_eq!(api.post("/v1/topics/jobs/groups/workers/ack", &json!({"ids": [id(&msgs[0])]})).0, 200);
    assert_eq!(api.post("/v1/topics/jobs/groups/workers/nak", &json!({"ids": [id(&msgs[1])]})).0, 200);
    let rejected = api.post("/v1/topics/jobs/groups/workers/reject", &json!({"ids": [id(&msgs[2])], "reason": "cannot bill"}));
    assert_eq!(rejected.0, 200, "{}", rejected.1);

    let (_, again) = api.get("/v1/topics/jobs/groups/workers/messages?max=10&wait_ms=5000");
    let again = again["messages"].as_array().unwrap().clone();
    assert_eq!(again.len(), 1, "only the nakked message comes back: {again:?}");
    assert_eq!((again[0]["payload"].as_str(), again[0]["attempt"].as_u64()), (Some("b"), Some(2)));
    assert_eq!(api.post("/v1/topics/jobs/groups/workers/ack", &json!({"ids": [id(&again[0])]})).0, 200);
    let (_, empty) = api.get("/v1/topics/jobs/groups/workers/messages?wait_ms=300");
    assert_eq!(empty["messages"], json!([]), "nothing left for the group");
    stop(serve);

    let dead = weir.consume_json("jobs.dlq");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!((dead[0]["payload"].as_str(), dead[0]["headers"]["weir.reason"].as_str()), (Some("c"), Some("cannot bill")));
}

/// Every operation in docs/openapi.json is exercised by an example that the
/// server answers as documented, so the file cannot drift from the server.
#[test]
fn the_openapi_document_matches_the_server() {
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(repo_root().join("docs/openapi.json")).unwrap()).unwrap();
    let weir = Weir::new();
    let (serve, base) = start(&weir, &["serve", "--listen", "127.0.0.1:0"]);
    let api = Api::new(base, None);
    let paths = spec["paths"].as_object().unwrap();
    let mut covered = HashSet::new();
    for ex in spec["x-weir-examples"].as_array().unwrap() {
        let (method, path) = (ex["method"].as_str().unwrap(), ex["path"].as_str().unwrap());
        let bare = path.split('?').next().unwrap();
        let (template, op) = paths
            .iter()
            .find_map(|(t, item)| (matches(t, bare) && item.get(method).is_some()).then(|| (t.clone(), &item[method])))
            .unwrap_or_else(|| panic!("example {method} {path} is not a documented operation"));
        covered.insert((method.to_owned(), template));
        let content_type = ex["content_type"].as_str().unwrap_or("application/json");
        let body = match (&ex["raw"], &ex["body"]) {
            (Value::String(raw), _) => raw.clone().into_bytes(),
            (_, Value::Null) => Vec::new(),
            (_, body) => body.to_string().into_bytes(),
        };
        let headers: Vec<(&str, &str)> =
            ex["headers"].as_object().into_iter().flatten().map(|(k, v)| (k.as_str(), v.as_str().unwrap())).collect();
        let (status, answer) = api.send(&method.to_uppercase(), path, content_type, &body, &headers);
        assert_eq!(status, ex["status"].as_u64().unwrap() as u16, "{method} {path}: {answer}");
        let documented = &op["responses"][status.to_string()];
        assert!(!documented.is_null(), "{method} {path} answered {status}, which the document does not list");
        let schema = resolve(&spec, resolve(&spec, documented.clone())["content"]["application/json"]["schema"].clone());
        for field in schema["required"].as_array().into_iter().flatten() {
            assert!(answer.get(field.as_str().unwrap()).is_some(), "{method} {path}: answer lacks {field}: {answer}");
        }
    }
    for (template, item) in paths {
        for method in item.as_object().unwrap().keys().filter(|m| *m != "parameters") {
            assert!(covered.contains(&(method.clone(), template.clone())), "no example exercises {method} {template}");
        }
    }
    stop(serve);
}

/// Whether `path` fits the OpenAPI path `template` (`{name}` is one segment).
fn matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len() && t.iter().zip(&p).all(|(t, p)| t.starts_with('{') || t == p)
}

/// Follow a `$ref` within the document.
fn resolve(spec: &Value, v: Value) -> Value {
    match v["$ref"].as_str() {
        Some(r) => r.trim_start_matches("#/").split('/').fold(spec, |node, key| &node[key]).clone(),
        None => v,
    }
}

#[test]
fn the_python_producer_example_publishes_through_the_api() {
    let weir = Weir::new();
    let (serve, base) = start(&weir, &["serve", "--listen", "127.0.0.1:0"]);
    let script = repo_root().join("examples/python/producer.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--url", &base, "--topic", "py", "--count", "1000", "--batch", "250"])
        .output()
        .expect("python3 is installed");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("published 1000 messages"), "{said}");
    stop(serve);
    let got = weir.consume_json("py");
    assert_eq!(got.len(), 1000);
    let last: Value = serde_json::from_str(got[999]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(last, json!({"order": 999, "amount": 999 * 3 % 100}));
    assert_eq!(got[999]["key"], "customer-9");
}

#[test]
fn produce_consume_and_topics_go_through_the_process_that_owns_the_directory() {
    let weir = Weir::new();
    let (serve, _) = start(&weir, &["serve", "--listen", "127.0.0.1:0", "--token", "s3cret"]);
    let with_token = |args: &[&str], stdin: &[u8]| {
        let mut cmd = weir.cmd(args);
        cmd.env("WEIR_TOKEN", "s3cret");
        let out = Weir::output_of(cmd, stdin);
        assert!(out.status.success(), "weir {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let said = with_token(&["produce", "t", "--key", "k", "--header", "h=v"], b"one\ntwo\nthree\n");
    assert_eq!(said.trim(), "published 3 messages to t: partition 0 offsets 0..=2 (3)");
    let said = with_token(&["topics", "create", "u", "--partitions", "2"], b"");
    assert_eq!(said.trim(), "created topic u with 2 partition(s)");
    with_token(&["topics", "create", "v", "--fsync", "interval", "--fsync-interval-ms", "50"], b"");
    // One rule for topic settings: the server says what the queue says.
    let mut cmd = weir.cmd(&["topics", "create", "w", "--partitions", "0"]);
    cmd.env("WEIR_TOKEN", "s3cret");
    let refused = String::from_utf8(Weir::output_of(cmd, b"").stderr).unwrap();
    assert!(refused.contains("invalid partitions `0`: must be between 1 and 4096"), "{refused}");
    assert_eq!(with_token(&["consume", "t", "--group", "g", "--start", "earliest"], b""), "one\ntwo\nthree\n");
    assert_eq!(with_token(&["consume", "t", "--group", "g"], b""), "", "the group acknowledged them");
    let refused = weir.fails(&["produce", "t"], b"four\n");
    assert!(refused.contains("bearer token"), "without the token the server refuses: {refused}");
    stop(serve);
    let described = weir.ok(&["topics", "describe", "v"], b"");
    assert!(described.starts_with("topic v: 1 partition(s), fsync interval (50 ms)\n"), "{described}");
    let refused = weir.fails(&["topics", "create", "w", "--partitions", "0"], b"");
    assert!(refused.contains("invalid partitions `0`: must be between 1 and 4096"), "without the server too: {refused}");
    let json = weir.consume_json("t");
    assert_eq!(json.len(), 3, "nothing was published without the token");
    assert_eq!((json[0]["key"].as_str(), json[0]["headers"]["h"].as_str()), (Some("k"), Some("v")));
}

#[test]
fn tls_serves_https_with_the_given_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=weir-test", "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let weir = Weir::new();
    let args = ["serve", "--listen", "127.0.0.1:0", "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()];
    let (serve, base) = start(&weir, &args);
    assert!(base.starts_with("https://"), "{base}");
    // A client that trusts only this certificate gets through; plain HTTP does not.
    let check = r#"
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
print(urllib.request.urlopen(sys.argv[1] + "/health", context=ctx, timeout=10).read().decode())
try:
    urllib.request.urlopen(sys.argv[1].replace("https://", "http://") + "/health", timeout=10)
    print("PLAIN HTTP ANSWERED")
except Exception as e:
    print("plain refused")
"#;
    let out = Command::new("python3").args(["-c", check, &base, cert.to_str().unwrap()]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}{}", said, String::from_utf8_lossy(&out.stderr));
    assert!(said.contains(r#""status":"ok""#) && said.contains("plain refused"), "{said}");
    // weir's own commands find the certificate beside the address and go through HTTPS.
    assert_eq!(weir.ok(&["produce", "t"], b"over tls\n").trim(), "published 1 message to t: partition 0 offset 0");
    stop(serve);
    assert_eq!(weir.consume_all("t"), ["over tls"]);
}

#[test]
fn topics_are_deleted_with_their_offsets_but_not_while_a_pipeline_consumes_them() {
    let weir = Weir::new();
    weir.produce("old", &["a", "b"]);
    assert_eq!(weir.consume_all("old"), ["a", "b"]);
    assert_eq!(weir.ok(&["topics", "delete", "old"], b"").trim(), "deleted topic old");
    assert!(!weir.ok(&["topics", "list"], b"").contains("old"));
    weir.produce("old", &["c"]);
    assert_eq!(weir.consume_json("old")[0]["offset"], 0, "a new topic of the same name starts again");

    let dir = tempfile::tempdir().unwrap();
    let p = uppercase_pipeline(dir.path());
    let (run, base) = start(&weir, &["run", p.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    let api = Api::new(base, None);
    // Once a message has gone through, the pipeline is consuming `in`.
    assert_eq!(api.post("/v1/topics/in/messages", &json!({"payload": "x"})).0, 200);
    let started = Instant::now();
    while api.get("/v1/topics/out").1["messages"] != 1 {
        assert!(started.elapsed() < Duration::from_secs(30), "the pipeline did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    for topic in ["in", "out", "up.dlq"] {
        let (status, v) = api.send("DELETE", &format!("/v1/topics/{topic}"), "application/json", b"", &[]);
        assert_eq!(status, 409, "{topic}: {v}");
        assert!(v["error"].as_str().unwrap().contains("belongs to the pipeline"), "{v}");
    }
    // Nor may an HTTP consumer join the pipeline's own group: it would see
    // the same messages and overwrite the pipeline's offsets.
    let (status, v) = api.get("/v1/topics/in/groups/up/messages");
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("already reading topic `in`"), "{v}");
    assert_eq!(api.send("DELETE", "/v1/topics/old", "application/json", b"", &[]).0, 200);
    assert_eq!(api.get("/v1/topics/old").0, 404);
    stop(run);
}

#[test]
fn clients_cannot_exhaust_the_server_groups_long_polls_and_request_sizes_are_bounded() {
    let weir = Weir::new();
    weir.ok(&["topics", "create", "t", "--partitions", "1"], b"");
    let (child, base) = start(
        &weir,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-groups",
            "3",
            "--group-idle-ms",
            "500",
            "--max-long-polls",
            "2",
            "--max-request-messages",
            "5",
        ],
    );
    let api = Api::new(base.clone(), None);

    // A request's message count is capped, and a refused publish stores nothing.
    let six: Vec<Value> = (0..6).map(|i| json!({"payload": format!("m{i}")})).collect();
    let (status, body) = api.post("/v1/topics/t/messages", &json!(six));
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("--max-request-messages"), "{body}");
    let (status, _) = api.post("/v1/topics/t/messages", &json!(six[..5]));
    assert_eq!(status, 200);
    assert_eq!(weir.topic_len("t"), 5);

    // Groups past the cap are refused until one has been idle long enough.
    for g in ["g0", "g1", "g2"] {
        assert_eq!(api.get(&format!("/v1/topics/t/groups/{g}/messages?max=1")).0, 200, "{g}");
    }
    let (status, body) = api.get("/v1/topics/t/groups/g3/messages?max=1");
    assert_eq!(status, 429, "{body}");
    assert!(body["error"].as_str().unwrap().contains("--max-groups"), "{body}");
    std::thread::sleep(Duration::from_millis(1500));
    let (status, body) = api.get("/v1/topics/t/groups/g3/messages?max=1");
    assert_eq!(status, 200, "idle groups were closed: {body}");
    assert_eq!(body["messages"][0]["payload"], "m0");
    // g0 was closed while idle: its unacknowledged delivery goes to its next fetch again.
    let (_, body) = api.get("/v1/topics/t/groups/g0/messages?max=1");
    assert_eq!(body["messages"][0]["payload"], "m0", "{body}");

    // At most two long-polls wait; a third is refused at once, and a publish
    // wakes the waiting ones long before their wait is up. (First let the
    // groups above close, to leave room for two more.)
    std::thread::sleep(Duration::from_millis(1500));
    let waiting: Vec<_> = ["w0", "w1"]
        .into_iter()
        .map(|g| {
            let (base, g) = (base.clone(), g.to_owned());
            std::thread::spawn(move || {
                let api = Api::new(base, None);
                let started = Instant::now();
                let (status, body) = api.get(&format!("/v1/topics/t/groups/{g}/messages?max=10&wait_ms=30000&start=latest"));
                (status, body, started.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let (status, body) = api.get("/v1/topics/t/groups/g0/messages?max=1&wait_ms=30000");
    assert_eq!(status, 429, "{body}");
    assert!(body["error"].as_str().unwrap().contains("--max-long-polls"), "{body}");
    assert_eq!(api.post("/v1/topics/t/messages", &json!({"payload": "wake"})).0, 200);
    for w in waiting {
        let (status, body, took) = w.join().unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["messages"][0]["payload"], "wake", "{body}");
        assert!(took < Duration::from_secs(20), "woken by the publish, not the 30 s wait: {took:?}");
    }
    stop(child);
}

/// `--auth`: each scope's routes work, every other route is refused (401
/// without a known token, 403 without the scope) and changes nothing, and
/// no token appears in the log, even at trace level.
#[test]
fn every_scope_allows_its_routes_and_refuses_the_rest_changing_nothing() {
    let weir = Weir::new();
    let dir = tempfile::tempdir().unwrap();
    let secrets = ["weir_admin0", "weir_reader", "weir_writer", "weir_billing"];
    let hash = |s: &str| token_hash(&weir, s);
    let auth = dir.path().join("tokens.toml");
    std::fs::write(
        &auth,
        format!(
            "[[token]]\nname = \"admin\"\nsha256 = \"{}\"\nadmin = true\n\
             [[token]]\nname = \"reader\"\nsha256 = \"{}\"\nread = true\n\
             [[token]]\nname = \"writer\"\nsha256 = \"{}\"\nproduce = [\"orders*\"]\n\
             [[token]]\nname = \"billing\"\nsha256 = \"{}\"\nconsume = [{{ topics = [\"orders\"], groups = [\"billing\"] }}]\n",
            hash(secrets[0]),
            hash(secrets[1]),
            hash(secrets[2]),
            hash(secrets[3])
        ),
    )
    .unwrap();
    let log = dir.path().join("weir.log");
    let mut cmd = weir.cmd(&["serve", "--listen", "127.0.0.1:0", "--auth", auth.to_str().unwrap()]);
    cmd.env("WEIR_LOG", "trace").stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
    let (serve, base) = start_command(&weir, cmd);
    let [admin, reader, writer, billing] = secrets.map(|s| Api::new(base.clone(), Some(s)));
    let (anonymous, unknown) = (Api::new(base.clone(), None), Api::new(base.clone(), Some("weir_nobody")));
    let msg = json!({"payload": "x"});

    // admin: everything, including making topics.
    for t in ["orders", "orders.eu", "payments"] {
        assert_eq!(admin.post("/v1/topics", &json!({"name": t})).0, 201);
    }
    // Refused requests: the status, and nothing changed.
    let refused = |api: &Api, method: &str, path: &str, body: &Value, status: u16| {
        let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
        let (got, v) = api.send(method, path, "application/json", &body, &[]);
        assert_eq!(got, status, "{method} {path}: {v}");
    };
    for api in [&anonymous, &unknown] {
        for (method, path) in [("GET", "/v1/topics"), ("GET", "/metrics"), ("POST", "/v1/topics/orders/messages")] {
            refused(api, method, path, &msg, 401);
        }
    }
    assert_eq!(anonymous.get("/health").0, 200);

    // read: listing, describing, metrics; nothing else.
    assert_eq!(reader.get("/v1/topics").0, 200);
    assert_eq!(reader.get("/v1/topics/orders").0, 200);
    assert_eq!(reader.get("/metrics").0, 200);
    refused(&reader, "POST", "/v1/topics/orders/messages", &msg, 403);
    refused(&reader, "POST", "/v1/topics", &json!({"name": "new"}), 403);
    refused(&reader, "DELETE", "/v1/topics/orders", &Value::Null, 403);
    refused(&reader, "GET", "/v1/topics/orders/groups/billing/messages", &Value::Null, 403);

    // produce on orders*: publishes there, nowhere else, reads nothing.
    assert_eq!(writer.post("/v1/topics/orders/messages", &msg).0, 200);
    assert_eq!(writer.post("/v1/topics/orders.eu/messages", &msg).0, 200);
    refused(&writer, "POST", "/v1/topics/payments/messages", &msg, 403);
    refused(&writer, "GET", "/v1/topics", &Value::Null, 403);
    refused(&writer, "GET", "/v1/topics/orders/groups/billing/messages", &Value::Null, 403);
    refused(&writer, "DELETE", "/v1/topics/orders", &Value::Null, 403);

    // consume orders as billing: fetches and acks there only.
    let (status, fetched) = billing.get("/v1/topics/orders/groups/billing/messages?max=10");
    assert_eq!(status, 200, "{fetched}");
    let ids: Vec<Value> =
        fetched["messages"].as_array().unwrap().iter().map(|m| json!({"partition": m["partition"], "offset": m["offset"]})).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(billing.post("/v1/topics/orders/groups/billing/ack", &json!({"ids": ids})).0, 200);
    refused(&billing, "GET", "/v1/topics/orders/groups/other/messages", &Value::Null, 403);
    refused(&billing, "GET", "/v1/topics/payments/groups/billing/messages", &Value::Null, 403);
    refused(&billing, "POST", "/v1/topics/orders/messages", &msg, 403);
    refused(&billing, "GET", "/metrics", &Value::Null, 403);
    let (_, v) = billing.send("POST", "/v1/topics/%6Frders/messages", "application/json", msg.to_string().as_bytes(), &[]);
    assert!(v["error"].as_str().unwrap().contains("percent-encoding"), "{v}");

    // Nothing the refusals touched changed: no topic made or deleted, no
    // message published, no group opened.
    let (_, all) = admin.get("/v1/topics");
    let counts: Vec<(String, u64)> = all["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_owned(), t["messages"].as_u64().unwrap()))
        .collect();
    assert_eq!(counts, [("orders".into(), 1), ("orders.eu".into(), 1), ("payments".into(), 0)]);
    let (_, other) = admin.get("/v1/topics/orders/groups/other/messages?max=10");
    assert_eq!(other["messages"].as_array().unwrap().len(), 1, "the refused group `other` never consumed");
    stop(serve);

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.len() > 1000, "a trace-level log was written: {text}");
    for s in secrets.iter().chain(&["weir_nobody"]) {
        assert!(!text.contains(s), "the token {s} is in the log");
    }
}

/// A non-loopback address needs tokens and TLS, or an explicit --insecure-http.
#[test]
fn a_non_loopback_address_needs_tls_or_insecure_http() {
    let err = Weir::new().fails(&["serve", "--listen", "0.0.0.0:0", "--token", "t"], b"");
    assert!(err.contains("so that tokens do not travel in clear text, or pass --insecure-http"), "{err}");
    let weir = Weir::new();
    let (serve, _) = start(&weir, &["serve", "--listen", "0.0.0.0:0", "--token", "t", "--insecure-http"]);
    stop(serve);
}

/// A request refused before its body was read (here: no token, and the
/// body sent after the head) must not leave the client a connection the
/// server then closes without saying so: the client's next request on it
/// would fail with no response at all. Either the refusal says
/// `connection: close`, or the connection still answers.
#[test]
fn a_request_refused_before_its_body_is_read_leaves_no_silently_closed_connection() {
    use std::io::{Read, Write};
    let weir = Weir::new();
    let (child, base) = start(&weir, &["serve", "--listen", "127.0.0.1:0", "--token", "weir_admin0"]);
    let mut conn = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = br#"{"payload": "x"}"#;
    write!(
        conn,
        "POST /v1/topics/orders/messages HTTP/1.1\r\nhost: weir\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // The server may have closed already: what is sent then is lost.
    conn.write_all(body).ok();
    let response = |conn: &mut std::net::TcpStream| {
        let mut got = Vec::new();
        let mut buf = [0; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&got).to_lowercase()
    };
    let refused = response(&mut conn);
    assert!(refused.starts_with("http/1.1 401"), "{refused}");
    if !refused.contains("\r\nconnection: close\r\n") {
        std::thread::sleep(Duration::from_millis(200));
        let sent = conn.write_all(b"GET /health HTTP/1.1\r\nhost: weir\r\n\r\n");
        let next = response(&mut conn);
        assert!(sent.is_ok() && next.contains(" 200 "), "kept alive, then closed without a response: {refused:?} then {next:?}");
    }
    stop(child);
}
