//! The web console at `/`: one page, its script and its style embedded in
//! the binary (no CDN; it works offline), showing the pipeline running in
//! this process as a graph with each stage's figures, charts of the last
//! minutes, the topics with their consumer groups, and the dead letters.
//!
//! The page reads only the JSON API, once a second at most: `/v1/pipeline`
//! (the run's [`weir_engine::Report`], the same figures as `--report` and
//! `/metrics`, with the pipeline's shape), `/v1/pipeline/history` (rate and
//! p99 per stage and second, from [`crate::sampler`]), `/v1/topics` and
//! `/v1/topics/T/messages`. The page itself holds no data and needs no
//! token; what it reads needs the `read` scope (and `consume` to browse
//! messages). Untrusted text (payloads, headers, reasons) is only ever set
//! as text, never parsed as HTML.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::routing::{get, post};
use serde_json::{Value, json};
use weir_engine::config::{DeadLetterTo, NatsSource, Sink, Source};
use weir_engine::{Pipeline, PipelineStats, UpgradeError, Upgrades};

use crate::api::ApiError;
use crate::sampler::{Point, Sampler};

/// How much history the charts get: this many seconds, a point a second.
const HISTORY_S: usize = 300;

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

/// The page and its files.
pub(crate) fn assets<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let file = |body: &'static str, kind: &'static str| {
        get(move || async move { ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], body) })
    };
    Router::new()
        .route("/", file(INDEX, "text/html; charset=utf-8"))
        .route("/console/app.js", file(SCRIPT, "text/javascript; charset=utf-8"))
        .route("/console/style.css", file(STYLE, "text/css; charset=utf-8"))
}

/// `/v1/pipeline` and `/v1/pipeline/history` for the pipeline running in
/// this process; samples its figures every second from now on.
pub(crate) fn pipeline_routes(pipeline: &Pipeline, stats: Arc<PipelineStats>, upgrades: Arc<Upgrades>) -> Router {
    let history: Arc<Mutex<VecDeque<Point>>> = Arc::default();
    let (ring, sampled) = (history.clone(), stats.clone());
    let per_sample = pipeline.stages.len().max(1);
    std::thread::Builder::new()
        .name("weir-console".into())
        .spawn(move || {
            let mut sampler = Sampler::new(&sampled);
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let points = sampler.sample();
                let mut ring = ring.lock().expect("history lock");
                ring.extend(points);
                while ring.len() > HISTORY_S * per_sample {
                    ring.pop_front();
                }
            }
        })
        .expect("spawn the console's sampler");
    let name = pipeline.name.clone();
    let shape = graph(pipeline);
    Router::new()
        .route(
            "/v1/pipeline",
            get(move || {
                let (name, shape, stats) = (name.clone(), shape.clone(), stats.clone());
                async move { Json(json!({ "name": name, "graph": shape, "report": stats.report(&name) })) }
            }),
        )
        .route(
            "/v1/pipeline/history",
            get(move || {
                let points: Vec<Point> = history.lock().expect("history lock").iter().cloned().collect();
                async move { Json(json!({ "interval_s": 1, "points": points })) }
            }),
        )
        .route("/v1/pipeline/stages/{stage}/upgrade", post(move |path, body| upgrade(upgrades.clone(), path, body)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UpgradeBody {
    /// The new version's component file, on this machine.
    module: PathBuf,
}

/// `POST /v1/pipeline/stages/STAGE/upgrade`: swap in another version of a
/// stage's component, as `weir run --watch` does; answered once it runs.
async fn upgrade(upgrades: Arc<Upgrades>, Path(stage): Path<String>, body: axum::body::Bytes) -> Result<Json<Value>, ApiError> {
    let error = |status: StatusCode, e: &dyn std::fmt::Display| ApiError(status, e.to_string());
    let b: UpgradeBody = serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("body: {e} (give {{\"module\": \"PATH.wasm\"}})")))?;
    let done = tokio::task::spawn_blocking(move || upgrades.upgrade(&stage, &b.module, crate::watch::SWAP_WAIT)).await;
    match done {
        Ok(Ok(u)) => Ok(Json(json!({ "stage": u.stage, "previous": u.previous, "module": u.module }))),
        Ok(Err(e @ UpgradeError::UnknownStage(_))) => Err(error(StatusCode::NOT_FOUND, &e)),
        Ok(Err(e @ UpgradeError::Refused { .. })) => Err(error(StatusCode::UNPROCESSABLE_ENTITY, &e)),
        Ok(Err(e)) => Err(error(StatusCode::SERVICE_UNAVAILABLE, &e)),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, &e)),
    }
}

/// Under `weir serve`: no pipeline, said plainly (the page then shows
/// topics and dead letters only).
pub(crate) fn no_pipeline() -> Router {
    let none = || async { ApiError(StatusCode::NOT_FOUND, "no pipeline runs in this process (weir serve)".into()) };
    Router::new()
        .route("/v1/pipeline", get(none))
        .route("/v1/pipeline/history", get(none))
        .route("/v1/pipeline/stages/{stage}/upgrade", post(none))
}

/// The pipeline's shape: where messages come from, the stages in order,
/// where outputs and dead letters go.
fn graph(p: &Pipeline) -> Value {
    let source = match &p.source {
        Source::Queue { .. } => "queue",
        Source::Stdin { .. } => "stdin",
        Source::File { .. } => "file",
        Source::Generator(_) => "generator",
        Source::Nats(NatsSource::JetStream(_)) => "jetstream",
        Source::Nats(NatsSource::Core { .. }) => "nats",
    };
    let sinks: Vec<Value> = p
        .sinks
        .iter()
        .map(|s| {
            let (kind, target) = match &s.kind {
                Sink::Queue { topic } => ("queue", topic.clone()),
                Sink::Stdout { .. } => ("stdout", String::new()),
                Sink::File { path, .. } => ("file", path.display().to_string()),
                Sink::Nats { subject, .. } => ("nats", subject.clone()),
            };
            json!({ "name": s.name, "from": s.from, "kind": kind, "target": target })
        })
        .collect();
    let (dead_kind, dead_target) = match &p.dead_letter {
        DeadLetterTo::Topic(t) => ("queue", t.clone()),
        DeadLetterTo::Nats { subject, .. } => ("nats", subject.clone()),
    };
    json!({
        "source": { "kind": source, "name": p.source.name() },
        "stages": p.stages.iter().map(|s| json!({ "name": s.name, "concurrency": s.concurrency, "batch_size": s.batch_size })).collect::<Vec<_>>(),
        "sinks": sinks,
        "dead_letter": { "kind": dead_kind, "target": dead_target },
    })
}
