//! Where a run's outputs go, one file per kind, each behind [`SinkWriter`]:
//!
//! | kind | file | durable when |
//! | --- | --- | --- |
//! | a topic of the embedded queue | `queue.rs` | the queue's publish returns (per its `fsync`) |
//! | a NATS subject: JetStream or core | `nats.rs` | JetStream: the stream acknowledged each message; core: flushed only |
//! | a file | `file.rs` | written and `fdatasync`ed |
//! | standard output | `stdout.rs` | printed after everything else is durable |
//!
//! The sink worker (`run/sink.rs`) hands each sink its share of a batch;
//! a sink either writes it at once (a file) or adds it to the batch's
//! [`Writes`], which publish to each topic and subject once per batch.
//! All of it is durable before any source message is acknowledged.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use weir_queue::{Message, Queue, Record};

use crate::config::{Pipeline, Sink};
use crate::nats::{IdRecords, Nats};
use crate::{Error, Result};

mod file;
mod nats;
mod queue;
mod stdout;

/// A sink as the sink worker drives it.
pub(crate) trait SinkWriter: Send {
    /// Why it cannot take a message of these parts, if it cannot (checked
    /// before anything of the batch is written, so one output cannot fail
    /// the batch).
    fn refusal(&self, _key: Option<&[u8]>, _headers: &[(String, Vec<u8>)], _payload: usize) -> Option<String> {
        None
    }

    /// Take this batch's messages for the sink: write them now, or add them
    /// to `writes`.
    fn take(&mut self, msgs: Vec<Message>, writes: &mut Writes) -> Result<()>;
}

/// Open every sink of `pipeline`, so a bad path fails the run before it
/// pulls a message. NATS outputs get ids that start with `id_prefix` (see
/// [`nats`]), when source ids survive restarts.
pub(crate) fn open(pipeline: &Pipeline, connection: Option<&Arc<Nats>>, id_prefix: Option<&str>) -> Result<Vec<Box<dyn SinkWriter>>> {
    pipeline
        .sinks
        .iter()
        .map(|s| -> Result<Box<dyn SinkWriter>> {
            Ok(match &s.kind {
                Sink::Queue { topic } => Box::new(queue::QueueSink { name: s.name.clone(), topic: topic.clone() }),
                Sink::Nats { subject, core, .. } => Box::new(nats::NatsSink {
                    name: s.name.clone(),
                    subject: subject.clone(),
                    core: *core,
                    connection: connection.expect("NATS sinks have a connection").clone(),
                    id_prefix: id_prefix.map(str::to_owned),
                }),
                Sink::Stdout { json } => Box::new(stdout::StdoutSink { json: *json }),
                Sink::File { path, json } => Box::new(file::FileSink::open(&s.name, path, *json)?),
            })
        })
        .collect()
}

/// What a batch publishes, gathered from its sinks, routed outputs and dead
/// letters so that each topic and subject takes one publish per batch.
#[derive(Default)]
pub(crate) struct Writes {
    /// Queue topic → its records, in order.
    pub(crate) topics: BTreeMap<String, Vec<Record>>,
    /// (NATS subject, core?, records with their ids).
    pub(crate) subjects: Vec<(String, bool, IdRecords)>,
    /// Standard output's bytes.
    pub(crate) printed: Vec<u8>,
}

impl Writes {
    /// Add `records` to what `topic` takes.
    pub(crate) fn publish(&mut self, topic: &str, records: impl IntoIterator<Item = Record>) {
        match self.topics.get_mut(topic) {
            Some(v) => v.extend(records),
            None => {
                self.topics.insert(topic.to_owned(), records.into_iter().collect());
            }
        }
    }

    /// Whether only topics of the embedded queue take these writes.
    pub(crate) fn only_topics(&self) -> bool {
        self.subjects.is_empty() && self.printed.is_empty()
    }

    /// Append the topics' records, without waiting for the fsyncs of those
    /// that sync every write (see [`Queue::append`]): what is left to wait
    /// for. Only for writes that go to [`Writes::only_topics`].
    pub(crate) fn append(self, queue: &Queue) -> Result<Vec<weir_queue::Appended>> {
        debug_assert!(self.only_topics());
        let mut appended = Vec::with_capacity(self.topics.len());
        for (topic, records) in &self.topics {
            appended.push(queue.append(topic, records)?);
        }
        Ok(appended)
    }

    /// Make it all durable: queue topics, then NATS; print standard output
    /// last. `stop` ends NATS retries (nothing is acknowledged then).
    pub(crate) fn flush(self, queue: &Queue, connection: Option<&Arc<Nats>>, stop: &AtomicBool, out: &mut impl Write) -> Result<()> {
        for (topic, records) in &self.topics {
            queue.publish(topic, records)?;
        }
        for (subject, core, records) in self.subjects {
            connection.expect("NATS sinks have a connection").publish(&subject, records, core, stop)?;
        }
        if !self.printed.is_empty() {
            let written = out.write_all(&self.printed).and_then(|()| out.flush());
            if let Err(e) = written
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                return Err(Error::sink_failed("stdout", e));
            }
        }
        Ok(())
    }
}

/// A message as one output line: its payload's bytes, or a JSON object.
fn line(json: bool, msg: &Message, out: &mut Vec<u8>) {
    if json {
        out.extend_from_slice(weir_queue::json::message(msg).to_string().as_bytes());
    } else {
        out.extend_from_slice(&msg.payload);
    }
    out.push(b'\n');
}
