//! NATS sources. A JetStream stream is read through a durable pull consumer
//! shared by every process of the pipeline: fetches, acknowledgements at
//! each commit, and the keep-alive that holds leases on long batches. A
//! core subject (fire and forget, shared by a queue group) is read like
//! any ephemeral source.

use std::collections::HashMap;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::Subject;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
use weir_queue::{DeliveryId, Record, StartFrom};

use super::Feed;
use super::memory::{Read, spawn_reader};
use crate::batch::Fetched;
use crate::config::JetStreamSource;
use crate::nats::{Nats, from_nats_headers, jetstream_message};
use crate::stats::now_us;
use crate::{Error, Result};

/// Messages asked for per pull request, at least: the server streams them
/// ahead while the pipeline works on the previous ones.
const MIN_PULL_BATCH: usize = 512;

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
    /// Open the durable pull consumer of a JetStream source, creating the
    /// stream and the consumer if absent and applying the TOML settings to an
    /// existing consumer (all but where it starts, which is fixed at creation).
    pub(super) fn open(nats: &Arc<Nats>, src: &JetStreamSource, max_attempts: u32, batch: usize) -> Result<JetStreamFeed> {
        let consumer = nats.block_on(async {
            let stream = match nats.js.get_stream(&src.stream).await {
                Ok(s) => s,
                Err(e) if src.subjects.is_empty() => {
                    return Err(Error::nats(format!("stream {} (set source.subjects to have weir create it)", src.stream), e));
                }
                Err(_) => {
                    let config =
                        jetstream::stream::Config { name: src.stream.clone(), subjects: src.subjects.clone(), ..Default::default() };
                    nats.js.create_stream(config).await.map_err(|e| Error::nats(format!("creating stream {}", src.stream), e))?
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
                    StartFrom::Time(ms) => DeliverPolicy::ByStartTime {
                        start_time: async_nats::datetime::from_nanos(i128::from(ms) * 1_000_000)
                            .map_err(|e| Error::nats(format!("a start time of {ms} ms"), e))?,
                    },
                    // Stream sequences count from 1, offsets from 0.
                    StartFrom::Offset(o) => DeliverPolicy::ByStartSequence { start_sequence: o + 1 },
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
        let keep_alive = nats.spawn(keep_alive(nats.js.clone(), in_flight.clone(), src.ack_wait));
        Ok(JetStreamFeed {
            nats: nats.clone(),
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

    fn warn(&mut self, e: &dyn std::fmt::Display) {
        if self.warned.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
            tracing::warn!(error = %e, "pulling from NATS failed; retrying");
            self.warned = Some(Instant::now());
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

    /// Queue `kind` for the delivery `id`, sent at the next commit.
    fn settle(&mut self, id: DeliveryId, kind: AckKind) {
        if let Some(p) = self.in_flight.lock().expect("in-flight map poisoned").remove(&id.offset) {
            self.ops.push((p.reply, kind));
        }
    }
}

impl Feed for JetStreamFeed {
    fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Fetched>> {
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
            out.push(Fetched { id: DeliveryId { partition: 0, offset: msg.offset }, appended_us: msg.timestamp_us, msg });
        }
        Ok(out)
    }

    fn ack(&mut self, id: DeliveryId) {
        self.settle(id, AckKind::Ack);
    }

    fn term(&mut self, id: DeliveryId) {
        self.settle(id, AckKind::Term);
    }

    fn nak(&mut self, id: DeliveryId, delay: Duration) {
        self.settle(id, AckKind::Nak((!delay.is_zero()).then_some(delay)));
    }

    /// JetStream counts an attempt anyway.
    fn release(&mut self, id: DeliveryId) {
        self.settle(id, AckKind::Nak(None));
    }

    /// Send the queued settlements (the client writes them out in the
    /// background). An ack lost with the connection means a redelivery,
    /// never a loss.
    fn commit(&mut self) -> Result<()> {
        if self.ops.is_empty() {
            return Ok(());
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
        Ok(())
    }

    /// Wait (a little) until the server has every settlement sent, before the run ends.
    fn close(&mut self) {
        let client = self.nats.js.client();
        let flushed = self.nats.block_on(async { tokio::time::timeout(Duration::from_secs(5), client.flush()).await });
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!("could not flush the last acknowledgements to NATS; those messages will be redelivered");
        }
    }

    /// Messages in the stream not yet delivered to the consumer.
    fn lag(&mut self) -> Option<Vec<u64>> {
        self.counts(Duration::from_secs(1)).map(|(pending, _)| vec![pending])
    }

    /// The stream sequence below which this consumer delivers nothing
    /// again: every message up to its acknowledgement floor is acknowledged,
    /// by this process or another.
    fn floor(&mut self) -> Option<Vec<u64>> {
        self.counts(Duration::from_secs(1))?;
        self.info.map(|(.., ack_floor)| vec![ack_floor + 1])
    }

    fn in_flight(&self) -> usize {
        self.in_flight.lock().expect("in-flight map poisoned").len()
    }

    /// Nothing left for the consumer, here or in any other process.
    fn is_settled(&mut self) -> bool {
        self.ops.is_empty()
            && self.in_flight() == 0
            && self.counts(Duration::from_millis(200)).is_some_and(|(pending, ack_pending)| pending == 0 && ack_pending == 0)
    }

    fn has_durable_ids(&self) -> bool {
        true
    }
}

/// Read a core subject (in `queue_group` if given) on a thread of its own.
pub(super) fn read_core(nats: &Arc<Nats>, subject: &str, queue_group: Option<&str>) -> Result<Receiver<Vec<Read>>> {
    let nats = nats.clone();
    let mut sub = nats.subscribe(subject, queue_group)?;
    Ok(spawn_reader("weir-nats-sub", move |tx| {
        while let Some(m) = nats.next(&mut sub) {
            let (key, headers) = from_nats_headers(m.headers.as_ref());
            let record = Record { key, headers, payload: m.payload.to_vec(), timestamp_us: Some(now_us()), id: None };
            // Each as it comes: the next may be long in coming.
            if !(tx.send(Read::Record(record)) && tx.flush()) {
                return;
            }
        }
    }))
}
