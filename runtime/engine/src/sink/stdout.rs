//! Standard output: one line per message, printed once the batch's other
//! writes are durable. A closed pipe (`weir run … | head`) is not an error.

use weir_queue::Message;

use super::{SinkWriter, Writes, line};
use crate::Result;

pub(super) struct StdoutSink {
    pub(super) json: bool,
}

impl SinkWriter for StdoutSink {
    fn take(&mut self, msgs: Vec<Message>, writes: &mut Writes) -> Result<()> {
        msgs.iter().for_each(|m| line(self.json, m, &mut writes.printed));
        Ok(())
    }
}
