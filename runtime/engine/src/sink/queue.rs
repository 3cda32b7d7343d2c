//! A topic of the embedded queue.

use weir_queue::Message;

use super::{SinkWriter, Writes};
use crate::Result;

pub(super) struct QueueSink {
    pub(super) name: String,
    pub(super) topic: String,
}

impl SinkWriter for QueueSink {
    /// Records over the queue's size and header limits.
    fn refusal(&self, key: Option<&[u8]>, headers: &[(String, Vec<u8>)], payload: usize) -> Option<String> {
        weir_queue::check_parts(key, headers, payload).err().map(|e| format!("sink {}: {e}", self.name))
    }

    fn take(&mut self, msgs: Vec<Message>, writes: &mut Writes) -> Result<()> {
        writes.publish(&self.topic, msgs.into_iter().map(Message::into_record));
        Ok(())
    }
}
