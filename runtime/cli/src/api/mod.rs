//! The embedded queue over HTTP, for producers and consumers in other
//! processes and languages: `weir serve`, and `weir run --listen` beside a
//! pipeline. Routes and bodies are documented in `docs/openapi.json`
//! (checked against this server by the tests).
//!
//! Every answer to a publish comes after the messages are durable per the
//! topic's fsync policy. Errors are `{"error": "..."}` with a 4xx status for
//! the client's mistakes, and change nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::body::HttpBody as _;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use serde::Deserialize;
use serde_json::{Value, json};
use weir_queue::{Fsync, Queue, Record, TopicConfig, TopicInfo};

pub(crate) mod auth;
mod groups;

use auth::{Need, Token};
use groups::{Disposition, SharedConsumer, fetch, settling};

/// Where a running server writes its address, in the data directory, so
/// other `weir` commands and scripts can find it.
pub(crate) const ADDR_FILE: &str = "api.addr";

const MAX_BODY_BYTES: usize = 16 << 20;
const MAX_REQUEST_MESSAGES: usize = 10_000;
const MAX_GROUPS: usize = 256;
const GROUP_IDLE_MS: u64 = 300_000;
const MAX_LONG_POLLS: usize = 512;

#[derive(Args, Clone)]
pub(crate) struct ListenArgs {
    /// Serve the HTTP API on this address (loopback unless --auth or
    /// --token is set).
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
    /// Require `Authorization: Bearer TOKEN` on every request but /health
    /// and the console's files: an admin token.
    #[arg(long, env = "WEIR_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Tokens with scopes (admin, read, produce, consume), stored as
    /// SHA-256 hashes, from this TOML file (see `weir token new`).
    #[arg(long, value_name = "FILE")]
    auth: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (bearer tokens then
    /// travel in clear text; use --tls-cert and --tls-key instead).
    #[arg(long)]
    insecure_http: bool,
    /// Largest request body accepted.
    #[arg(long, default_value_t = MAX_BODY_BYTES, value_name = "BYTES")]
    max_body_bytes: usize,
    /// Most messages in one publish, and ids in one ack, nak or reject.
    #[arg(long, default_value_t = MAX_REQUEST_MESSAGES, value_name = "N")]
    max_request_messages: usize,
    /// Most consumer groups open over HTTP at once; past it, a new group is
    /// refused (429) until an idle one is closed.
    #[arg(long, default_value_t = MAX_GROUPS, value_name = "N")]
    max_groups: usize,
    /// Close a consumer group opened over HTTP after this long without a
    /// fetch or settle: what it had not settled is delivered again.
    #[arg(long, default_value_t = GROUP_IDLE_MS, value_name = "MS")]
    group_idle_ms: u64,
    /// Most long-polls (fetches with wait_ms) waiting at once; past it, 429.
    #[arg(long, default_value_t = MAX_LONG_POLLS, value_name = "N")]
    max_long_polls: usize,
    /// Serve HTTPS with this certificate chain (PEM), with --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl ListenArgs {
    /// `addr`, no token, the default body limit.
    pub(crate) fn on(addr: SocketAddr) -> Self {
        ListenArgs {
            listen: Some(addr),
            token: None,
            auth: None,
            insecure_http: false,
            max_body_bytes: MAX_BODY_BYTES,
            max_request_messages: MAX_REQUEST_MESSAGES,
            max_groups: MAX_GROUPS,
            group_idle_ms: GROUP_IDLE_MS,
            max_long_polls: MAX_LONG_POLLS,
            tls_cert: None,
            tls_key: None,
        }
    }

    /// `weir serve`'s default address.
    pub(crate) fn or_default(mut self) -> Self {
        self.listen.get_or_insert(SocketAddr::from(([127, 0, 0, 1], 7878)));
        self
    }
}

struct ApiState {
    queue: Queue,
    /// Consumer groups opened through the API, by (topic, group).
    consumers: Mutex<HashMap<(String, String), SharedConsumer>>,
    /// `None`: no token needed (loopback without --auth or --token).
    tokens: Option<Vec<Token>>,
    max_body_bytes: usize,
    max_request_messages: usize,
    max_groups: usize,
    group_idle: Duration,
    /// Permits for waiting long-polls.
    long_polls: Arc<tokio::sync::Semaphore>,
    max_long_polls: usize,
    /// Woken by every publish to the queue.
    published: Arc<tokio::sync::Notify>,
    /// Topics of the pipeline running in this process: not to be deleted.
    protected: Vec<String>,
}

/// A running server; dropping it removes the address file (the server
/// itself ends with the process).
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    addr_file: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        std::fs::remove_file(&self.addr_file).ok();
    }
}

/// The API of the weir process that owns `dir`, if one is serving it:
/// its base URL (and, over HTTPS, the certificate to trust) from the
/// address file, answering /health.
pub(crate) fn running(dir: &std::path::Path) -> Option<Client> {
    let text = std::fs::read_to_string(dir.join(ADDR_FILE)).ok()?;
    let mut lines = text.lines();
    let base = lines.next()?.trim().to_owned();
    let cert = lines.find_map(|l| l.strip_prefix("cert=")).map(PathBuf::from);
    let unreachable = |e: &dyn std::fmt::Display| {
        tracing::warn!(%base, error = %e, "the address file names a server that does not answer; opening the data directory itself");
    };
    let client = Client::new(base.clone(), cert.as_deref()).map_err(|e| unreachable(&format!("{e:#}"))).ok()?;
    let health = client.agent.get(format!("{base}/health")).call().map_err(|e| unreachable(&e)).ok()?;
    health.status().is_success().then_some(client)
}

/// rustls's crypto, process-wide: ring, as async-nats uses (no aws-lc build).
fn use_ring_for_tls() {
    // An error means a provider is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client of a running server, for `weir produce`, `consume` and
/// `topics` when another weir process owns the data directory. The token,
/// if the server needs one, comes from `WEIR_TOKEN`.
pub(crate) struct Client {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

impl Client {
    /// Trusting `cert` (PEM) for HTTPS, if given.
    fn new(base: String, cert: Option<&std::path::Path>) -> anyhow::Result<Client> {
        let mut config = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(120)));
        if let Some(cert) = cert {
            use_ring_for_tls();
            let pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
            let roots = ureq::tls::RootCerts::Specific(Arc::new(vec![ureq::tls::Certificate::from_pem(&pem)?]));
            config = config.tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build());
        }
        Ok(Client { base, agent: config.build().into(), token: std::env::var("WEIR_TOKEN").ok() })
    }

    /// Send a request; the answer's JSON, or its error as an error.
    pub(crate) fn call(&self, method: &str, path: &str, content_type: &str, body: Vec<u8>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder().method(method).uri(&url).header("content-type", content_type);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let mut resp = self.agent.run(req.body(body)?).with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let v: Value = serde_json::from_str(&resp.body_mut().read_to_string()?).unwrap_or(Value::Null);
        if !status.is_success() {
            anyhow::bail!("{} (from the weir serving {}: {status})", v["error"].as_str().unwrap_or("request failed"), self.base);
        }
        Ok(v)
    }
}

/// Serve the API and the console for `queue` (plus `extra` routes: a
/// pipeline's /metrics and /v1/pipeline) from a thread of its own; `protected` topics (a running
/// pipeline's) cannot be deleted. Refuses a non-loopback address without a
/// token.
pub(crate) fn start(queue: Queue, args: &ListenArgs, extra: Option<Router>, protected: Vec<String>) -> anyhow::Result<Server> {
    let addr = args.listen.context("no --listen address")?;
    let mut tokens = match &args.auth {
        Some(path) => Some(auth::load(path)?),
        None => None,
    };
    if let Some(secret) = &args.token {
        tokens.get_or_insert_with(Vec::new).push(Token::admin("--token", secret));
    }
    if !addr.ip().is_loopback() {
        if tokens.is_none() {
            anyhow::bail!("--listen {addr} is not a loopback address: set --auth FILE or --token so that requests must carry a token");
        }
        if args.tls_cert.is_none() && !args.insecure_http {
            anyhow::bail!(
                "--listen {addr} is not a loopback address: serve HTTPS (--tls-cert and --tls-key) so that tokens do not travel in clear \
                 text, or pass --insecure-http"
            );
        }
    }
    let published = Arc::new(tokio::sync::Notify::new());
    let wake = published.clone();
    queue.on_publish(Arc::new(move || wake.notify_waiters()));
    let state = Arc::new(ApiState {
        queue: queue.clone(),
        consumers: Mutex::default(),
        tokens,
        max_body_bytes: args.max_body_bytes,
        max_request_messages: args.max_request_messages,
        max_groups: args.max_groups,
        group_idle: Duration::from_millis(args.group_idle_ms),
        long_polls: Arc::new(tokio::sync::Semaphore::new(args.max_long_polls)),
        max_long_polls: args.max_long_polls,
        published,
        protected,
    });
    let metrics = extra.unwrap_or_else(|| crate::metrics::router(Some(queue.clone()), None).merge(crate::console::no_pipeline()));
    let app = router(state.clone())
        .merge(metrics.layer(axum::middleware::from_fn_with_state(state.clone(), authorize)))
        .layer(axum::middleware::from_fn(close_after_an_error_with_a_body));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("weir-api").enable_all().build()?;
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("--listen {addr}"))?;
    let bound = listener.local_addr()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            use_ring_for_tls();
            let config = rt
                .block_on(axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key))
                .with_context(|| format!("TLS certificate {} and key {}", cert.display(), key.display()))?;
            Some(config)
        }
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let idle = state.clone();
    rt.spawn(async move {
        let mut tick = tokio::time::interval(idle.group_idle.clamp(Duration::from_millis(100), Duration::from_secs(10)));
        loop {
            tick.tick().await;
            idle.close_idle(&mut idle.consumers.lock().expect("consumer map poisoned"));
        }
    });
    std::thread::Builder::new().name("weir-api".into()).spawn(move || {
        let served = rt.block_on(async move {
            match tls {
                Some(config) => axum_server::from_tcp_rustls(listener, config)?.serve(app.into_make_service()).await,
                None => {
                    listener.set_nonblocking(true)?;
                    axum::serve(tokio::net::TcpListener::from_std(listener)?, app).await
                }
            }
        });
        if let Err(e) = served {
            tracing::error!(error = %e, "the HTTP API stopped");
        }
    })?;
    let addr_file = queue.dir().join(ADDR_FILE);
    // Over HTTPS, where the certificate is, so the other weir commands can trust it.
    let mut addr = format!("{scheme}://{bound}\n");
    if let Some(cert) = &args.tls_cert {
        addr += &format!("cert={}\n", std::fs::canonicalize(cert)?.display());
    }
    std::fs::write(&addr_file, addr).with_context(|| format!("writing {}", addr_file.display()))?;
    Ok(Server { addr: bound, addr_file })
}

fn router(state: Arc<ApiState>) -> Router {
    let api = Router::new()
        .route("/v1/topics", get(list_topics).post(create_topic))
        .route("/v1/topics/{topic}", get(describe_topic).delete(delete_topic))
        .route("/v1/topics/{topic}/messages", post(publish).get(browse))
        .route("/v1/topics/{topic}/dead-letters", get(list_dead_letters))
        .route("/v1/topics/{topic}/dead-letters/redrive", post(redrive))
        .route("/v1/topics/{topic}/groups/{group}/messages", get(fetch))
        .route("/v1/topics/{topic}/groups/{group}/ack", settling(Disposition::Ack))
        .route("/v1/topics/{topic}/groups/{group}/nak", settling(Disposition::Nak))
        .route("/v1/topics/{topic}/groups/{group}/reject", settling(Disposition::Reject))
        .layer(axum::middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .merge(crate::console::assets())
        .merge(api)
        .fallback(not_found)
        .with_state(state)
}

/// A client's mistake or a server failure, as `{"error": ...}`.
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<weir_queue::Error> for ApiError {
    fn from(e: weir_queue::Error) -> Self {
        let status = match &e {
            weir_queue::Error::UnknownTopic(_) => StatusCode::NOT_FOUND,
            weir_queue::Error::TopicExists { .. } | weir_queue::Error::TopicInUse { .. } | weir_queue::Error::GroupInUse { .. } => {
                StatusCode::CONFLICT
            }
            weir_queue::Error::Invalid { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such route; see docs/openapi.json".into())
}

/// Every request, before its handler: what it needs ([`auth::required`]),
/// then whether its token grants it. 401 without a known token, 403
/// without the scope; neither reaches a handler, so nothing changes.
async fn authorize(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let need = match auth::required(request.method().as_str(), request.uri().path()) {
        Ok(need) => need,
        Err(e) => return bad(e).into_response(),
    };
    if let Some(tokens) = &state.tokens
        && need != Need::Nothing
    {
        let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        let Some(token) = given.and_then(|g| auth::find(tokens, g)) else {
            let mut r = ApiError(StatusCode::UNAUTHORIZED, "missing or unknown bearer token".into()).into_response();
            r.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("a valid header value"));
            return r;
        };
        if !token.allows(&need) {
            tracing::debug!(token = %token.name, method = %request.method(), path = %request.uri().path(), "refused: no scope");
            return ApiError(StatusCode::FORBIDDEN, format!("token `{}` does not grant {need}", token.name)).into_response();
        }
    }
    next.run(request).await
}

/// An error answered to a request that carried a body closes the
/// connection, and says so. The body may not have been read (a refusal
/// comes before it); hyper then closes the connection after the response
/// without a `connection: close`, and a client that sends its next request
/// on it gets no response at all.
async fn close_after_an_error_with_a_body(request: Request, next: Next) -> Response {
    let has_body = !request.body().is_end_stream();
    let mut response = next.run(request).await;
    let status = response.status();
    if has_body && (status.is_client_error() || status.is_server_error()) {
        response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    }
    response
}

/// Run blocking queue work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

/// A topic: the fields of the request that creates one, then what it holds
/// (messages, bytes on disk, offsets) and its consumer groups with their lag.
fn topic_json(queue: &Queue, t: &TopicInfo) -> Value {
    let groups: Vec<Value> = queue
        .groups(&t.name)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, committed)| {
            let lag: u64 =
                t.offsets.iter().zip(committed.iter().chain(std::iter::repeat(&0))).map(|((_, end), c)| end.saturating_sub(*c)).sum();
            json!({"name": name, "committed": committed, "lag": lag})
        })
        .collect();
    json!({
        "name": t.name,
        "partitions": t.config.partitions,
        "messages": t.len(),
        "fsync": t.config.fsync.policy(),
        "fsync_interval_ms": t.config.fsync.interval_ms(),
        "max_age_ms": t.config.max_age_ms,
        "max_bytes": t.config.max_bytes,
        "bytes": queue.topic_bytes(&t.name).unwrap_or(0),
        "offsets": t.offsets.iter().enumerate().map(|(p, (start, end))| json!({"partition": p, "start": start, "end": end})).collect::<Vec<_>>(),
        "groups": groups,
    })
}

async fn list_topics(State(s): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    blocking(move || Ok(Json(json!({ "topics": s.queue.topics().iter().map(|t| topic_json(&s.queue, t)).collect::<Vec<_>>() })))).await
}

async fn describe_topic(State(s): State<Arc<ApiState>>, Path(topic): Path<String>) -> Result<Json<Value>, ApiError> {
    blocking(move || Ok(Json(topic_json(&s.queue, &s.queue.topic_info(&topic)?)))).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Browse {
    #[serde(default)]
    partition: u32,
    /// From this offset; by default the newest `limit` messages.
    offset: Option<u64>,
    #[serde(default = "browse_limit")]
    limit: usize,
}

fn browse_limit() -> usize {
    50
}

/// Read a partition's messages without a consumer group (the console's
/// dead-letter browser): nothing is delivered, acknowledged or committed.
async fn browse(
    State(s): State<Arc<ApiState>>,
    Path(topic): Path<String>,
    axum::extract::Query(q): axum::extract::Query<Browse>,
) -> Result<Json<Value>, ApiError> {
    if q.limit == 0 || q.limit > 1000 {
        return Err(bad("limit: 1 to 1000"));
    }
    blocking(move || {
        let info = s.queue.topic_info(&topic)?;
        let &(start, end) =
            info.offsets.get(q.partition as usize).ok_or_else(|| bad(format!("topic {topic:?} has no partition {}", q.partition)))?;
        let from = q.offset.unwrap_or(end.saturating_sub(q.limit as u64)).max(start);
        let records = s.queue.read(&topic, q.partition, from, q.limit)?;
        let next = records.last().map_or(from, |r| r.offset + 1);
        let name: Arc<str> = topic.as_str().into();
        let messages: Vec<Value> =
            records.into_iter().map(|r| weir_queue::json::message(&weir_queue::Message::from_stored(name.clone(), r, 1))).collect();
        Ok(Json(json!({"partition": q.partition, "start": start, "end": end, "next": next, "messages": messages})))
    })
    .await
}

/// Delete a topic, after closing the API's own consumers of it.
async fn delete_topic(State(s): State<Arc<ApiState>>, Path(topic): Path<String>) -> Result<Json<Value>, ApiError> {
    if s.protected.contains(&topic) {
        return Err(ApiError(StatusCode::CONFLICT, format!("topic {topic:?} belongs to the pipeline running in this process")));
    }
    s.consumers.lock().expect("consumer map poisoned").retain(|(t, _), _| *t != topic);
    let name = topic.clone();
    blocking(move || s.queue.delete_topic(&name).map_err(ApiError::from)).await?;
    Ok(Json(json!({ "deleted": topic })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTopic {
    name: String,
    #[serde(default = "one")]
    partitions: u32,
    #[serde(default)]
    fsync: Option<String>,
    #[serde(default)]
    fsync_interval_ms: Option<u64>,
    #[serde(default)]
    max_age_ms: Option<u64>,
    #[serde(default)]
    max_bytes: Option<u64>,
}

fn one() -> u32 {
    1
}

async fn create_topic(State(s): State<Arc<ApiState>>, request: Request) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = read_body(&s, request).await?;
    let t: NewTopic = serde_json::from_slice(&body).map_err(|e| bad(format!("body: {e}")))?;
    let fsync = Fsync::parse(t.fsync.as_deref(), t.fsync_interval_ms).map_err(|e| bad(e.to_string()))?;
    // The queue validates the rest, as for every way of making a topic.
    let config =
        TopicConfig { partitions: t.partitions, fsync, max_age_ms: t.max_age_ms, max_bytes: t.max_bytes, ..TopicConfig::default() };
    let queue = s.queue.clone();
    let info = blocking(move || Ok(s.queue.create_topic(&t.name, &config)?)).await?;
    Ok((StatusCode::CREATED, Json(topic_json(&queue, &info))))
}

/// The dead letters of a topic that the query selects (`weir dlq list`).
async fn list_dead_letters(
    State(s): State<Arc<ApiState>>,
    Path(topic): Path<String>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let selection = crate::dlq::selection_from_query(&q).map_err(bad)?;
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 50,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return Err(bad("limit: 1 to 1000")),
    };
    blocking(move || Ok(Json(crate::dlq::summary_json(&s.queue.dead_letter_summary(&topic, &selection, limit)?)))).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedriveBody {
    stage: Option<String>,
    kind: Option<String>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
    #[serde(default)]
    ids: Vec<(u32, u64)>,
    to: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

/// Send dead letters again, once each (`weir dlq redrive`).
async fn redrive(State(s): State<Arc<ApiState>>, Path(topic): Path<String>, request: Request) -> Result<Json<Value>, ApiError> {
    let body = read_body(&s, request).await?;
    let b: RedriveBody = serde_json::from_slice(&body).map_err(|e| bad(format!("body: {e}")))?;
    let selection = weir_queue::Selection { stage: b.stage, kind: b.kind, since_ms: b.since_ms, until_ms: b.until_ms, ids: b.ids };
    let report = blocking(move || Ok(s.queue.redrive(&topic, &selection, b.to.as_deref(), b.dry_run)?)).await?;
    Ok(Json(serde_json::to_value(report).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?))
}

/// The body, refused past the size limit.
async fn read_body(s: &ApiState, request: Request) -> Result<axum::body::Bytes, ApiError> {
    let limit = s.max_body_bytes;
    axum::body::to_bytes(request.into_body(), limit).await.map_err(|e| {
        let too_big = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_big {
            ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than {limit} bytes (--max-body-bytes)"))
        } else {
            bad(format!("reading the body: {e}"))
        }
    })
}

/// The records of a publish body ([`weir_queue::json::records_from_body`]).
fn records(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Record>, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let headers = headers.iter().map(|(name, value)| (name.as_str(), value.as_bytes()));
    weir_queue::json::records_from_body(content_type, headers, body).map_err(bad)
}

async fn publish(State(s): State<Arc<ApiState>>, Path(topic): Path<String>, request: Request) -> Result<Json<Value>, ApiError> {
    let headers = request.headers().clone();
    let body = read_body(&s, request).await?;
    let records = records(&headers, &body)?;
    if records.is_empty() {
        return Err(bad("no messages in the body"));
    }
    let count = records.len();
    if count > s.max_request_messages {
        return Err(too_many(count, s.max_request_messages));
    }
    let positions = blocking(move || Ok(s.queue.publish(&topic, &records)?)).await?;
    let offsets: Vec<Value> = positions.iter().map(|(p, o)| json!({"partition": p, "offset": o})).collect();
    Ok(Json(json!({ "count": count, "offsets": offsets })))
}

/// A request carrying more messages than `--max-request-messages`.
fn too_many(count: usize, max: usize) -> ApiError {
    ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("{count} messages in one request; at most {max} (--max-request-messages)"))
}

/// `weir serve`: the queue as a local broker until Ctrl-C.
pub(crate) fn serve(args: ListenArgs, dir: PathBuf) -> anyhow::Result<()> {
    let queue = Queue::open(&dir).with_context(|| format!("opening data directory {}", dir.display()))?;
    let args = args.or_default();
    let server = start(queue, &args, None, Vec::new())?;
    let scheme = if args.tls_cert.is_some() { "https" } else { "http" };
    eprintln!("weir: serving {} at {scheme}://{} (Ctrl-C to stop)", dir.display(), server.addr);
    let (tx, rx) = std::sync::mpsc::channel();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::spawn(move || {
        rt.block_on(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { if let Some(t) = term.as_mut() { t.recv().await; } else { std::future::pending::<()>().await } } => {}
            }
        });
        tx.send(()).ok();
    });
    rx.recv().ok();
    drop(server);
    Ok(())
}
