//! A file, appended to: one line per message, `fdatasync`ed before the
//! batch is acknowledged.

use std::io::Write;
use std::path::Path;

use weir_queue::Message;

use super::{SinkWriter, Writes, line};
use crate::{Error, Result};

pub(super) struct FileSink {
    /// `SINK: PATH`, for errors.
    what: String,
    json: bool,
    file: std::fs::File,
    buf: Vec<u8>,
}

impl FileSink {
    /// Open (appending, creating) `path`.
    pub(super) fn open(name: &str, path: &Path, json: bool) -> Result<FileSink> {
        let what = format!("{name}: {}", path.display());
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::sink_failed(what.clone(), e))?;
        Ok(FileSink { what, json, file, buf: Vec::new() })
    }
}

impl SinkWriter for FileSink {
    fn take(&mut self, msgs: Vec<Message>, _: &mut Writes) -> Result<()> {
        self.buf.clear();
        msgs.iter().for_each(|m| line(self.json, m, &mut self.buf));
        self.file.write_all(&self.buf).and_then(|()| self.file.sync_data()).map_err(|e| Error::sink_failed(self.what.clone(), e))
    }
}
