//! A NATS subject: through JetStream (each message retried until the stream
//! acknowledges it, stored once by its id), or core NATS (flushed, fire and
//! forget).

use std::collections::HashMap;
use std::sync::Arc;

use weir_queue::Message;

use super::{SinkWriter, Writes};
use crate::Result;
use crate::nats::{IdRecords, Nats, wire_len};

pub(super) struct NatsSink {
    pub(super) name: String,
    pub(super) subject: String,
    pub(super) core: bool,
    pub(super) connection: Arc<Nats>,
    /// `GROUP/SOURCE` when source ids survive restarts.
    pub(super) id_prefix: Option<String>,
}

impl SinkWriter for NatsSink {
    /// Messages over the server's `max_payload` (headers and payload, as NATS counts them).
    fn refusal(&self, key: Option<&[u8]>, headers: &[(String, Vec<u8>)], payload: usize) -> Option<String> {
        let (size, max) = (wire_len(key, headers, payload), self.connection.max_payload());
        (size > max).then(|| format!("sink {}: a message of {size} bytes exceeds the NATS server's max_payload ({max})", self.name))
    }

    fn take(&mut self, msgs: Vec<Message>, writes: &mut Writes) -> Result<()> {
        writes.subjects.push((self.subject.clone(), self.core, output_ids(self.id_prefix.as_deref(), &self.name, msgs)));
        Ok(())
    }
}

/// Outputs as records, each with an id made of where it comes from
/// (`GROUP/SOURCE/PARTITION/OFFSET/SINK/N`, the N-th output of that
/// source message to that sink), so that NATS stores an output once even
/// when its input is redelivered. No ids when source ids do not survive
/// a restart.
fn output_ids(prefix: Option<&str>, sink: &str, msgs: Vec<Message>) -> IdRecords {
    let Some(prefix) = prefix else { return msgs.into_iter().map(|m| (None, m.into_record())).collect() };
    let mut seen: HashMap<(u32, u64), u32> = HashMap::new();
    msgs.into_iter()
        .map(|m| {
            let n = seen.entry((m.partition, m.offset)).or_default();
            let id = format!("{prefix}/{}/{}/{sink}/{n}", m.partition, m.offset);
            *n += 1;
            (Some(id), m.into_record())
        })
        .collect()
}
