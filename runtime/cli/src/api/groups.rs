//! Consumer groups over HTTP: groups opened by the first fetch and shared
//! by later requests (capped, closed when idle), long-poll fetches woken by
//! publishes (capped), and the settlements of what was fetched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::routing::{MethodRouter, post};
use serde::Deserialize;
use serde_json::{Value, json};
use weir_queue::{Consumer, ConsumerOptions, DeliveryId, Message, StartFrom};

use super::{ApiError, ApiState, bad, blocking, read_body, too_many};

/// A consumer group opened through the API, shared by its requests.
pub(super) struct OpenGroup {
    consumer: Mutex<Consumer>,
    /// Last fetch or settle, for closing idle groups.
    used: Mutex<Instant>,
}

pub(super) type SharedConsumer = Arc<OpenGroup>;

impl OpenGroup {
    /// The consumer, marking the group used.
    fn lock(&self) -> std::sync::MutexGuard<'_, Consumer> {
        *self.used.lock().expect("group clock poisoned") = Instant::now();
        self.consumer.lock().expect("consumer poisoned")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FetchQuery {
    #[serde(default = "hundred")]
    max: usize,
    #[serde(default)]
    wait_ms: u64,
    /// Where a new group starts: "earliest" (default) or "latest".
    #[serde(default)]
    start: Option<String>,
}

fn hundred() -> usize {
    100
}

impl ApiState {
    /// Close, in `consumers` (the locked map), the groups no request has
    /// used for `--group-idle-ms`: their unsettled deliveries go back to the topic.
    pub(super) fn close_idle(&self, consumers: &mut HashMap<(String, String), SharedConsumer>) {
        consumers.retain(|(topic, group), g| {
            let idle = g.used.lock().expect("group clock poisoned").elapsed() >= self.group_idle;
            // A request holding it keeps it open.
            let close = idle && Arc::strong_count(g) == 1;
            if close {
                tracing::info!(%topic, %group, "closing a consumer group idle for {} ms", self.group_idle.as_millis());
            }
            !close
        });
    }

    fn consumer(&self, topic: &str, group: &str, start: Option<&str>) -> Result<SharedConsumer, ApiError> {
        let mut consumers = self.consumers.lock().expect("consumer map poisoned");
        if let Some(c) = consumers.get(&(topic.to_owned(), group.to_owned())) {
            return Ok(c.clone());
        }
        if consumers.len() >= self.max_groups {
            self.close_idle(&mut consumers);
        }
        if consumers.len() >= self.max_groups {
            return Err(ApiError(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{} consumer groups are open (--max-groups); one closes after {} ms without a fetch or settle (--group-idle-ms)",
                    consumers.len(),
                    self.group_idle.as_millis()
                ),
            ));
        }
        let start = match start {
            None | Some("earliest") => StartFrom::Earliest,
            Some("latest") => StartFrom::Latest,
            Some(other) => return Err(bad(format!("start must be \"earliest\" or \"latest\", got {other:?}"))),
        };
        let options = ConsumerOptions { start, ..ConsumerOptions::default() };
        let c = Arc::new(OpenGroup { consumer: Mutex::new(self.queue.consumer(topic, group, options)?), used: Mutex::new(Instant::now()) });
        consumers.insert((topic.to_owned(), group.to_owned()), c.clone());
        Ok(c)
    }

    /// An opened group, for settling what it delivered.
    fn opened(&self, topic: &str, group: &str) -> Result<SharedConsumer, ApiError> {
        let consumers = self.consumers.lock().expect("consumer map poisoned");
        consumers.get(&(topic.to_owned(), group.to_owned())).cloned().ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!(
                    "group {group:?} has no open fetch from topic {topic:?}: none since the server started, or it was closed while idle"
                ),
            )
        })
    }
}

/// Long-poll: up to `max` messages, waiting up to `wait_ms` for the first.
/// Each stays leased to the group until acked, nakked or rejected (or its
/// ack wait, 30 s, passes: then it is delivered again).
pub(super) async fn fetch(
    State(s): State<Arc<ApiState>>,
    Path((topic, group)): Path<(String, String)>,
    Query(q): Query<FetchQuery>,
) -> Result<Json<Value>, ApiError> {
    if !(1..=10_000).contains(&q.max) || q.wait_ms > 60_000 {
        return Err(bad("max must be 1 to 10000 and wait_ms at most 60000"));
    }
    let consumer = blocking({
        let s = s.clone();
        let (topic, group) = (topic.clone(), group.clone());
        move || s.consumer(&topic, &group, q.start.as_deref())
    })
    .await?;
    let topic: Arc<str> = topic.into();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(q.wait_ms);
    let _permit = if q.wait_ms > 0 {
        let permit = s.long_polls.clone().try_acquire_owned().map_err(|_| {
            ApiError(StatusCode::TOO_MANY_REQUESTS, format!("{} long-polls are waiting already (--max-long-polls)", s.max_long_polls))
        })?;
        Some(permit)
    } else {
        None
    };
    loop {
        // Listen before looking, so a publish in between is not missed.
        let published = s.published.notified();
        tokio::pin!(published);
        published.as_mut().enable();
        let c = consumer.clone();
        let (batch, due) = blocking(move || {
            let mut c = c.lock();
            Ok((c.fetch(q.max, Duration::ZERO)?, c.next_due()))
        })
        .await?;
        if !batch.is_empty() || tokio::time::Instant::now() >= deadline {
            let messages: Vec<Value> = batch
                .into_iter()
                .map(|d| {
                    let attempt = d.attempt;
                    let mut v = weir_queue::json::message(&Message::from_stored(topic.clone(), d.record, attempt));
                    v["attempt"] = json!(attempt);
                    v
                })
                .collect();
            return Ok(Json(json!({ "messages": messages })));
        }
        // Until something is published, a delivery comes due again, or time is up.
        let until = due.map_or(deadline, |due| deadline.min(tokio::time::Instant::from_std(due)));
        tokio::select! {
            () = &mut published => {}
            () = tokio::time::sleep_until(until) => {}
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settle {
    ids: Vec<Id>,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Id {
    partition: u32,
    offset: u64,
}

#[derive(Clone, Copy)]
pub(super) enum Disposition {
    Ack,
    Nak,
    Reject,
}

async fn settle(s: Arc<ApiState>, topic: String, group: String, request: Request, how: Disposition) -> Result<Json<Value>, ApiError> {
    let body = read_body(&s, request).await?;
    let settle: Settle = serde_json::from_slice(&body).map_err(|e| bad(format!("body: {e}")))?;
    let n = settle.ids.len();
    if n > s.max_request_messages {
        return Err(too_many(n, s.max_request_messages));
    }
    let consumer = s.opened(&topic, &group)?;
    blocking(move || {
        let mut c = consumer.lock();
        for id in settle.ids {
            let id = DeliveryId { partition: id.partition, offset: id.offset };
            match how {
                Disposition::Ack => c.ack(id),
                Disposition::Nak => c.nak(id, Duration::from_millis(settle.delay_ms)),
                Disposition::Reject => c.reject(id, settle.reason.as_deref().unwrap_or("rejected by the consumer"))?,
            }
        }
        Ok(c.commit()?)
    })
    .await?;
    Ok(Json(json!({ "settled": n })))
}

/// The POST route that settles deliveries as `how` says.
pub(super) fn settling(how: Disposition) -> MethodRouter<Arc<ApiState>> {
    post(move |State(s): State<Arc<ApiState>>, Path((topic, group)): Path<(String, String)>, request: Request| {
        settle(s, topic, group, request, how)
    })
}
