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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self};
use async_nats::{Client, ConnectOptions, ServerAddr};
use futures_util::StreamExt;

use crate::config::{DeadLetterTo, NatsConnection, Pipeline, Sink, StreamSpec};
use crate::{BoxError, Error, Result};

mod codec;

pub use codec::{Headers, KEY_HEADER, from_nats_headers, jetstream_message, to_nats};
pub(crate) use codec::{IdRecords, wire_len};

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
    pub(crate) js: jetstream::Context,
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

    pub(crate) fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Run `f` in the background on the connection's runtime.
    pub(crate) fn spawn<F: Future<Output = ()> + Send + 'static>(&self, f: F) -> tokio::task::JoinHandle<()> {
        self.rt.spawn(f)
    }

    pub(crate) fn ensure_stream(&self, subject: &str, create: Option<&StreamSpec>) -> Result<()> {
        self.block_on(ensure_stream(&self.js, subject, create))
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
        let failed = |e: BoxError| Error::sink_failed(format!("NATS subject {subject}"), e);
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
    let stream = match js.get_or_create_stream(config).await {
        Ok(stream) => stream,
        // Processes started together race to create the stream, and the
        // server can refuse the later create as overlapping the stream the
        // first just made: what counts is that a stream captures the subject.
        Err(_) if js.stream_by_subject(subject).await.is_ok() => return Ok(()),
        Err(e) => return Err(Error::nats(format!("creating stream {} for subject {subject:?}", spec.name), e)),
    };
    let subjects = &stream.cached_info().config.subjects;
    if !subjects.iter().any(|p| crate::config::subject_matches(p, subject)) {
        return Err(Error::nats_refused(format!("stream {} exists but captures {subjects:?}, not subject {subject:?}", spec.name)));
    }
    Ok(())
}
