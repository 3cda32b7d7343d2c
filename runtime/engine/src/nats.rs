//! NATS through async-nats: the connection, the JetStream source feed, and
//! publishing outputs and dead letters.
//!
//! The pipeline's threads are synchronous; NATS I/O runs on a small tokio
//! runtime owned by [`Nats`], entered with `block_on` from the source and
//! sink threads. The client reconnects by itself (backing off to 2 s): while
//! the connection is down, fetches come back empty and publishes are retried,
//! so the pipeline pauses instead of failing, and nothing unpublished is
//! acknowledged.
//!
//! A JetStream message maps to the WIT `message` as: subject → topic, stream
//! sequence → offset (partition 0), headers → headers (the `Weir-Key` header
//! → key), delivery count → attempt, publish time → timestamp.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::message::{Acker, PublishMessage};
use async_nats::jetstream::{self, AckKind};
use async_nats::{Client, ConnectOptions, HeaderMap, ServerAddr, Subject};
use futures_util::StreamExt;
use weir_host::Message;
use weir_queue::{DeliveryId, Record, StartFrom};

use crate::batch::Fetched;
use crate::config::{DeadLetterTo, JetStreamSource, NatsConnection, Pipeline, Sink, StreamSpec};
use crate::{BoxError, Error, Result};

/// The header that carries a message's key (NATS messages have none of their own).
pub const KEY_HEADER: &str = "Weir-Key";

/// Messages asked for per pull request, at least: the server streams them
/// ahead while the pipeline works on the previous ones.
const MIN_PULL_BATCH: usize = 512;

/// Longest wait for a publish acknowledgement before it is retried.
const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Connect to NATS as `conn` says: auth, TLS, and reconnecting forever with
/// a backoff up to 2 s, logging when the connection is lost and regained.
///
/// # Errors
/// [`Error::Nats`] if no server answers within the connect timeout, or a
/// credentials file cannot be read.
pub async fn connect(conn: &NatsConnection) -> Result<Client> {
    connect_watched(conn, Arc::default()).await
}

/// Whether `event` is the server refusing the connection: said as a server
/// error, or (on a reconnect) as a client one.
fn is_refusal(event: &async_nats::Event) -> bool {
    match event {
        async_nats::Event::ServerError(async_nats::ServerError::AuthorizationViolation) => true,
        async_nats::Event::ClientError(async_nats::ClientError::Other(e)) => e.contains("authorization violation"),
        _ => false,
    }
}

/// Refusals in a row after which a lost connection is given up for good.
const REFUSALS_TO_GIVE_UP: u32 = 3;

/// [`connect`], counting in `refusals` the server's refusals of the
/// connection (authorization violations) since it was last connected.
async fn connect_watched(conn: &NatsConnection, refusals: Arc<std::sync::atomic::AtomicU32>) -> Result<Client> {
    let urls = conn.urls.join(", ");
    let reading = |path: &std::path::Path, e: std::io::Error| Error::nats(format!("connecting to {urls}: {}", path.display()), e);
    let mut opts = match &conn.creds_file {
        Some(path) => ConnectOptions::with_credentials_file(path).await.map_err(|e| reading(path, e))?,
        None => ConnectOptions::new(),
    };
    if let Some(path) = &conn.nkey_seed_file {
        let seed = std::fs::read_to_string(path).map_err(|e| reading(path, e))?;
        opts = opts.nkey(seed.trim().to_owned());
    }
    if let Some(token) = &conn.token {
        opts = opts.token(token.clone());
    }
    if let Some((user, password)) = &conn.user_password {
        opts = opts.user_and_password(user.clone(), password.clone());
    }
    if let Some(ca) = &conn.tls_ca_file {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &conn.tls_client {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    if let Some(name) = &conn.name {
        opts = opts.name(name);
    }
    let lost = Arc::new(AtomicBool::new(false));
    let addrs = conn
        .urls
        .iter()
        .map(|u| u.parse::<ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::nats(format!("connecting to {urls}"), e))?;
    opts.require_tls(conn.tls_required)
        .connection_timeout(conn.connect_timeout)
        .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64 * 250).min(2_000)))
        .event_callback(move |event| {
            let (lost, refusals) = (lost.clone(), refusals.clone());
            async move {
                if matches!(event, async_nats::Event::Connected) {
                    refusals.store(0, Ordering::Relaxed);
                }
                match event {
                    event if is_refusal(&event) => {
                        refusals.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("the NATS server refused the connection: authorization violation");
                    }
                    async_nats::Event::Disconnected => {
                        lost.store(true, Ordering::Relaxed);
                        tracing::warn!("NATS connection lost; waiting for it to come back");
                    }
                    async_nats::Event::Connected if lost.swap(false, Ordering::Relaxed) => tracing::info!("NATS connection is back"),
                    async_nats::Event::Connected | async_nats::Event::Closed => tracing::debug!(event = %event, "NATS"),
                    other => tracing::warn!(event = %other, "NATS"),
                }
            }
        })
        .connect(addrs)
        .await
        .map_err(|e| Error::nats(format!("connecting to {urls}"), e))
}

/// A connection to NATS and the runtime that drives it.
pub(crate) struct Nats {
    rt: tokio::runtime::Runtime,
    client: Client,
    js: jetstream::Context,
    /// The server's refusals of the connection since it was last up.
    refusals: Arc<std::sync::atomic::AtomicU32>,
}

impl Nats {
    pub(crate) fn connect(conn: &NatsConnection) -> Result<Arc<Nats>> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("weir-nats")
            .enable_all()
            .build()
            .map_err(|e| Error::nats("starting the NATS runtime", e))?;
        let refusals = Arc::default();
        let client = rt.block_on(connect_watched(conn, Arc::clone(&refusals)))?;
        let js = rt.block_on(async { jetstream::context::ContextBuilder::new().ack_timeout(PUBLISH_ACK_TIMEOUT).build(client.clone()) });
        Ok(Arc::new(Nats { rt, client, js, refusals }))
    }

    /// An error once the server has refused to take the connection back
    /// several times in a row: waiting for it would hang the run for good.
    pub(crate) fn check_refused(&self) -> Result<()> {
        let n = self.refusals.load(Ordering::Relaxed);
        if n >= REFUSALS_TO_GIVE_UP {
            return Err(Error::nats_refused(format!(
                "the NATS server refused the connection {n} times in a row (authorization violation); check the credentials in [nats]"
            )));
        }
        Ok(())
    }

    /// The largest message the server takes (headers and payload), as it
    /// said when the client connected.
    pub(crate) fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    /// Connect for `pipeline` if it uses NATS, and make sure a stream takes
    /// what its sinks and dead letters publish, so a missing one is an error
    /// before the first message is pulled.
    pub(crate) fn for_pipeline(pipeline: &Pipeline) -> Result<Option<Arc<Nats>>> {
        let Some(conn) = &pipeline.nats else { return Ok(None) };
        let nats = Nats::connect(conn)?;
        for s in &pipeline.sinks {
            if let Sink::Nats { subject, stream, core: false } = &s.kind {
                let create = stream.as_ref().map(|name| StreamSpec { name: name.clone(), subjects: vec![subject.clone()] });
                nats.ensure_stream(subject, create.as_ref())?;
            }
        }
        if let DeadLetterTo::Nats { subject, stream } = &pipeline.dead_letter {
            nats.ensure_stream(subject, stream.as_ref())?;
        }
        Ok(Some(nats))
    }

    fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub(crate) fn ensure_stream(&self, subject: &str, create: Option<&StreamSpec>) -> Result<()> {
        self.block_on(ensure_stream(&self.js, subject, create))
    }

    /// Open the durable pull consumer of a JetStream source, creating the
    /// stream and the consumer if absent and applying the TOML settings to an
    /// existing consumer (all but where it starts, which is fixed at creation).
    pub(crate) fn jetstream_feed(self: &Arc<Self>, src: &JetStreamSource, max_attempts: u32, batch: usize) -> Result<JetStreamFeed> {
        let consumer = self.block_on(async {
            let stream = match self.js.get_stream(&src.stream).await {
                Ok(s) => s,
                Err(e) if src.subjects.is_empty() => {
                    return Err(Error::nats(format!("stream {} (set source.subjects to have weir create it)", src.stream), e));
                }
                Err(_) => {
                    let config =
                        jetstream::stream::Config { name: src.stream.clone(), subjects: src.subjects.clone(), ..Default::default() };
                    self.js.create_stream(config).await.map_err(|e| Error::nats(format!("creating stream {}", src.stream), e))?
                }
            };
            let mut config = pull::Config {
                durable_name: Some(src.consumer.clone()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: src.ack_wait,
                max_deliver: i64::from(max_attempts),
                backoff: src.backoff.clone(),
                max_ack_pending: src.max_ack_pending as i64,
                deliver_policy: match src.start {
                    StartFrom::Earliest => DeliverPolicy::All,
                    StartFrom::Latest => DeliverPolicy::New,
                },
                ..Default::default()
            };
            match src.subjects.as_slice() {
                [] => {}
                [one] => config.filter_subject = one.clone(),
                many => config.filter_subjects = many.to_vec(),
            }
            if let Ok(existing) = stream.consumer_info(&src.consumer).await {
                config.deliver_policy = existing.config.deliver_policy;
            }
            stream
                .create_consumer(config)
                .await
                .map_err(|e| Error::nats(format!("creating consumer {} on stream {}", src.consumer, src.stream), e))
        })?;
        let in_flight: Arc<Mutex<HashMap<u64, Pending>>> = Arc::default();
        let keep_alive = self.rt.spawn(keep_alive(self.js.clone(), in_flight.clone(), src.ack_wait));
        Ok(JetStreamFeed {
            nats: self.clone(),
            consumer,
            messages: None,
            batch,
            in_flight,
            ops: Vec::new(),
            info: None,
            keep_alive,
            warned: None,
        })
    }

    /// Subscribe to a core subject, in `queue_group` if given.
    pub(crate) fn subscribe(&self, subject: &str, queue_group: Option<&str>) -> Result<async_nats::Subscriber> {
        self.block_on(async {
            match queue_group {
                Some(g) => self.client.queue_subscribe(subject.to_owned(), g.to_owned()).await,
                None => self.client.subscribe(subject.to_owned()).await,
            }
        })
        .map_err(|e| Error::nats(format!("subscribing to {subject:?}"), e))
    }

    /// The next message of a core subscription; `None` when it ends.
    pub(crate) fn next(&self, sub: &mut async_nats::Subscriber) -> Option<async_nats::Message> {
        self.block_on(sub.next())
    }

    /// Publish `records` to `subject`. Through JetStream, each is retried
    /// until the stream acknowledges it (a lost connection pauses here), with
    /// its id as `Nats-Msg-Id` so a retry or a redelivered input is stored
    /// once; give up only when `stop` is set. A core publish is flushed, not
    /// acknowledged.
    pub(crate) fn publish(&self, subject: &str, records: IdRecords, core: bool, stop: &AtomicBool) -> Result<()> {
        let failed = |e: BoxError| Error::sink(format!("NATS subject {subject}"), e);
        self.block_on(async {
            if core {
                for (_, r) in records {
                    let (headers, payload) = to_nats(r);
                    self.client.publish_with_headers(subject.to_owned(), headers, payload).await.map_err(|e| failed(e.into()))?;
                }
                return self.client.flush().await.map_err(|e| failed(e.into()));
            }
            let mut pending: Vec<PublishMessage> = records
                .into_iter()
                .map(|(id, r)| {
                    let (headers, payload) = to_nats(r);
                    let m = PublishMessage::build().payload(payload).headers(headers);
                    match id {
                        Some(id) => m.message_id(id),
                        None => m,
                    }
                })
                .collect();
            let mut delay = Duration::from_millis(50);
            loop {
                let mut acks = Vec::with_capacity(pending.len());
                let mut retry = Vec::new();
                let mut last_error = String::new();
                for m in pending {
                    match self.js.send_publish(subject.to_owned(), m.clone()).await {
                        Ok(ack) => acks.push((m, ack)),
                        // Sizes are checked before a batch is written
                        // ([`Nats::max_payload`]); retrying cannot help.
                        Err(e) if e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded => return Err(failed(e.into())),
                        Err(e) => {
                            last_error = e.to_string();
                            retry.push(m);
                        }
                    }
                }
                // All at once: each waits up to the ack timeout, and after a lost
                // connection none may come; one by one that is 5 s per message.
                let answers = futures_util::future::join_all(acks.into_iter().map(|(m, ack)| async move { (m, ack.await) })).await;
                for (m, answer) in answers {
                    if let Err(e) = answer {
                        last_error = e.to_string();
                        retry.push(m);
                    }
                }
                if retry.is_empty() {
                    return Ok(());
                }
                if stop.load(Ordering::Relaxed) {
                    return Err(failed(format!("{} messages unpublished at stop: {last_error}", retry.len()).into()));
                }
                self.check_refused()?;
                tracing::warn!(%subject, unpublished = retry.len(), error = %last_error, "NATS publish failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                pending = retry;
            }
        })
    }
}

/// Room left for the `Nats-Msg-Id` header an output or dead letter may carry.
const MSG_ID_ROOM: usize = 1024;

/// The bytes NATS counts against `max_payload` for a message of these parts
/// as [`to_nats`] encodes it, plus room for its message id.
pub(crate) fn wire_len(key: Option<&[u8]>, headers: &[(String, Vec<u8>)], payload_len: usize) -> usize {
    let header = |name: &str, v: &[u8]| name.len() + 2 + one_line(v).len() + 2;
    let block =
        b"NATS/1.0\r\n\r\n".len() + headers.iter().map(|(k, v)| header(k, v)).sum::<usize>() + key.map_or(0, |k| header(KEY_HEADER, k));
    block + MSG_ID_ROOM + payload_len
}

/// A header value as NATS carries it: text on one line, invalid UTF-8
/// replaced, line breaks written `\r` and `\n`. Borrows when nothing changes,
/// so sizing a message ([`wire_len`]) costs no copy in the common case.
fn one_line(v: &[u8]) -> std::borrow::Cow<'_, str> {
    match String::from_utf8_lossy(v) {
        text if text.contains(['\r', '\n']) => text.replace('\r', "\\r").replace('\n', "\\n").into(),
        text => text,
    }
}

/// A record as NATS headers and payload; its key travels in [`KEY_HEADER`].
/// Header values are text on one line: invalid UTF-8 is replaced and line
/// breaks are written `\n` (a dead letter's reason may span lines). A header
/// whose name NATS cannot carry is dropped, with a warning.
pub fn to_nats(r: Record) -> (HeaderMap, bytes::Bytes) {
    let mut headers = HeaderMap::new();
    for (k, v) in &r.headers {
        match async_nats::HeaderName::try_from(k.as_str()) {
            Ok(name) => headers.append(name, one_line(v).into_owned()),
            Err(e) => tracing::warn!(header = %k, error = %e, "header dropped: NATS cannot carry its name"),
        }
    }
    if let Some(key) = &r.key {
        headers.insert(KEY_HEADER, one_line(key).into_owned());
    }
    (headers, r.payload.into())
}

/// A message's headers, as weir keeps them.
pub type Headers = Vec<(String, Vec<u8>)>;

/// Records to publish, each with its `Nats-Msg-Id` if it has one.
pub(crate) type IdRecords = Vec<(Option<String>, Record)>;

/// A NATS message's headers as weir headers, taking out the key.
pub fn from_nats_headers(headers: Option<&HeaderMap>) -> (Option<Vec<u8>>, Headers) {
    let mut key = None;
    let mut out = Vec::new();
    for (name, values) in headers.into_iter().flat_map(HeaderMap::iter) {
        let name: &str = name.as_ref();
        for v in values {
            if name == KEY_HEADER {
                key = Some(v.as_str().as_bytes().to_vec());
            } else {
                out.push((name.to_owned(), v.as_str().as_bytes().to_vec()));
            }
        }
    }
    (key, out)
}

/// A JetStream delivery as the message a stage sees, and the subject to
/// acknowledge it on; `None` (logged) for a message without delivery info.
pub fn jetstream_message(m: jetstream::Message) -> Option<(Message, Subject)> {
    let Ok(info) = m.info() else {
        tracing::warn!(subject = %m.subject, "a JetStream message without delivery info; skipped");
        return None;
    };
    let (offset, attempt) = (info.stream_sequence, info.delivered.clamp(1, i64::from(u32::MAX)) as u32);
    let published_ms = (info.published.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
    let msg = m.message;
    let (key, headers) = from_nats_headers(msg.headers.as_ref());
    let message = Message {
        topic: msg.subject.to_string(),
        partition: 0,
        offset,
        key,
        payload: msg.payload.to_vec(),
        headers,
        timestamp_ms: published_ms,
        attempt,
    };
    Some((message, msg.reply?))
}

/// Make sure a stream captures `subject`: one already does, or `create`
/// names a stream to make (an existing stream of that name must capture it).
///
/// # Errors
/// [`Error::Nats`] when no stream captures it and none is to be created, or
/// the stream cannot be created.
pub async fn ensure_stream(js: &jetstream::Context, subject: &str, create: Option<&StreamSpec>) -> Result<()> {
    if js.stream_by_subject(subject).await.is_ok() {
        return Ok(());
    }
    let Some(spec) = create else {
        return Err(Error::nats_refused(format!(
            "no JetStream stream captures subject {subject:?}: create one, or name a stream for weir to create"
        )));
    };
    let config = jetstream::stream::Config { name: spec.name.clone(), subjects: spec.subjects.clone(), ..Default::default() };
    let stream = js
        .get_or_create_stream(config)
        .await
        .map_err(|e| Error::nats(format!("creating stream {} for subject {subject:?}", spec.name), e))?;
    let subjects = &stream.cached_info().config.subjects;
    if !subjects.iter().any(|p| crate::config::subject_matches(p, subject)) {
        return Err(Error::nats_refused(format!("stream {} exists but captures {subjects:?}, not subject {subject:?}", spec.name)));
    }
    Ok(())
}

/// A message delivered and not yet settled: where to ack it, and when it was
/// last kept alive.
struct Pending {
    reply: Subject,
    touched: Instant,
}

/// Tell the server, every third of `ack_wait`, that messages still in the
/// pipeline are being worked on, so a long batch is not redelivered.
async fn keep_alive(js: jetstream::Context, in_flight: Arc<Mutex<HashMap<u64, Pending>>>, ack_wait: Duration) {
    let every = (ack_wait / 3).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(every).await;
        let due: Vec<Subject> = {
            let now = Instant::now();
            let mut map = in_flight.lock().expect("in-flight map poisoned");
            map.values_mut()
                .filter(|p| now.duration_since(p.touched) >= every)
                .map(|p| {
                    p.touched = now;
                    p.reply.clone()
                })
                .collect()
        };
        for reply in due {
            if let Err(e) = Acker::new(js.clone(), Some(reply)).ack_with(AckKind::Progress).await {
                tracing::debug!(error = %e, "progress ack failed");
            }
        }
    }
}

/// A JetStream source: a durable pull consumer shared by every process that
/// runs the pipeline. Settlements are sent when the source commits.
pub(crate) struct JetStreamFeed {
    nats: Arc<Nats>,
    consumer: PullConsumer,
    /// The pull subscription; made again after an error.
    messages: Option<pull::Stream>,
    batch: usize,
    in_flight: Arc<Mutex<HashMap<u64, Pending>>>,
    /// Acks, naks and terms to send at the next commit.
    ops: Vec<(Subject, AckKind)>,
    /// When the consumer's counts were read: (at, pending, ack pending).
    /// When the consumer's info was read, and its pending, ack-pending and
    /// acknowledgement floor (a stream sequence).
    info: Option<(Instant, u64, usize, u64)>,
    keep_alive: tokio::task::JoinHandle<()>,
    /// When a pull error was last logged (they repeat while NATS is away).
    warned: Option<Instant>,
}

impl Drop for JetStreamFeed {
    fn drop(&mut self) {
        self.keep_alive.abort();
    }
}

impl JetStreamFeed {
    pub(crate) fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Fetched>> {
        self.nats.check_refused()?;
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        let nats = self.nats.clone();
        let result = nats.block_on(async {
            while got.len() < max {
                if self.messages.is_none() {
                    let stream = self
                        .consumer
                        .stream()
                        .max_messages_per_batch(self.batch.max(MIN_PULL_BATCH))
                        .heartbeat(Duration::from_secs(5))
                        .expires(Duration::from_secs(30))
                        .messages()
                        .await;
                    match stream {
                        Ok(s) => self.messages = Some(s),
                        Err(e) => {
                            self.warn(&e);
                            tokio::time::sleep(deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(250))).await;
                            return Ok(());
                        }
                    }
                }
                let stream = self.messages.as_mut().expect("made above");
                let left = if got.is_empty() { deadline.saturating_duration_since(Instant::now()) } else { Duration::ZERO };
                match tokio::time::timeout(left, stream.next()).await {
                    Err(_) => return Ok(()),
                    Ok(Some(Ok(m))) => got.push(m),
                    Ok(Some(Err(e))) => {
                        if e.kind() == pull::MessagesErrorKind::ConsumerDeleted {
                            return Err(Error::nats_refused(format!("consumer {} was deleted", self.consumer.cached_info().name)));
                        }
                        self.warn(&e);
                        self.messages = None;
                        return Ok(());
                    }
                    Ok(None) => {
                        self.messages = None;
                        return Ok(());
                    }
                }
            }
            Ok(())
        });
        result?;
        let mut out = Vec::with_capacity(got.len());
        let now = Instant::now();
        let mut in_flight = self.in_flight.lock().expect("in-flight map poisoned");
        for m in got {
            let Some((msg, reply)) = jetstream_message(m) else { continue };
            in_flight.insert(msg.offset, Pending { reply, touched: now });
            out.push(Fetched {
                id: DeliveryId { partition: 0, offset: msg.offset },
                attempt: msg.attempt,
                appended_ms: msg.timestamp_ms,
                msg,
            });
        }
        Ok(out)
    }

    fn warn(&mut self, e: &dyn std::fmt::Display) {
        if self.warned.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
            tracing::warn!(error = %e, "pulling from NATS failed; retrying");
            self.warned = Some(Instant::now());
        }
    }

    /// Queue `kind` for the delivery `id`, sent at the next commit.
    pub(crate) fn settle(&mut self, id: DeliveryId, kind: AckKind) {
        if let Some(p) = self.in_flight.lock().expect("in-flight map poisoned").remove(&id.offset) {
            self.ops.push((p.reply, kind));
        }
    }

    /// Send the queued settlements (the client writes them out in the
    /// background). An ack lost with the connection means a redelivery,
    /// never a loss.
    pub(crate) fn commit(&mut self) {
        if self.ops.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.ops);
        let js = &self.nats.js;
        self.nats.block_on(async {
            for (reply, kind) in ops {
                if let Err(e) = Acker::new(js.clone(), Some(reply)).ack_with(kind).await {
                    tracing::warn!(error = %e, "acknowledging to NATS failed; the message will be redelivered");
                }
            }
        });
    }

    /// Wait (a little) until the server has every settlement sent, before the run ends.
    pub(crate) fn flush(&mut self) {
        let client = self.nats.js.client();
        let flushed = self.nats.block_on(async { tokio::time::timeout(Duration::from_secs(5), client.flush()).await });
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!("could not flush the last acknowledgements to NATS; those messages will be redelivered");
        }
    }

    /// The consumer's counts, read again if older than `max_age`.
    fn counts(&mut self, max_age: Duration) -> Option<(u64, usize)> {
        if self.info.is_none_or(|(at, ..)| at.elapsed() >= max_age) {
            let consumer = &self.consumer;
            if let Ok(Ok(info)) = self.nats.block_on(async { tokio::time::timeout(Duration::from_secs(1), consumer.get_info()).await }) {
                self.info = Some((Instant::now(), info.num_pending, info.num_ack_pending, info.ack_floor.stream_sequence));
            }
        }
        self.info.map(|(_, pending, ack_pending, _)| (pending, ack_pending))
    }

    /// The stream sequence below which this consumer delivers nothing
    /// again: every message up to its acknowledgement floor is acknowledged,
    /// by this process or another.
    pub(crate) fn floor(&mut self) -> Option<Vec<u64>> {
        self.counts(Duration::from_secs(1))?;
        self.info.map(|(.., ack_floor)| vec![ack_floor + 1])
    }

    /// Messages in the stream not yet delivered to the consumer.
    pub(crate) fn lag(&mut self) -> Option<Vec<u64>> {
        self.counts(Duration::from_secs(1)).map(|(pending, _)| vec![pending])
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.lock().expect("in-flight map poisoned").len()
    }

    /// Nothing left for the consumer, here or in any other process.
    pub(crate) fn is_settled(&mut self) -> bool {
        self.ops.is_empty()
            && self.in_flight() == 0
            && self.counts(Duration::from_millis(200)).is_some_and(|(pending, ack_pending)| pending == 0 && ack_pending == 0)
    }
}
