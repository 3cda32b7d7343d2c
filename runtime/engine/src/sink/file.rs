//! A file, appended to: one line per message, `fdatasync`ed before the
//! batch is acknowledged. A path that is not a regular file (`/dev/null`, a
//! named pipe, a terminal) is written but not synced: there is nothing
//! on disk to make durable, and the kernel refuses to sync it.

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
    /// Whether it is a regular file, which `fdatasync` makes durable.
    sync: bool,
    buf: Vec<u8>,
}

impl FileSink {
    /// Open (appending, creating) `path`.
    pub(super) fn open(name: &str, path: &Path, json: bool) -> Result<FileSink> {
        let what = format!("{name}: {}", path.display());
        let failed = |e| Error::sink_failed(what.clone(), e);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(failed)?;
        let sync = file.metadata().map_err(failed)?.is_file();
        Ok(FileSink { what, json, file, sync, buf: Vec::new() })
    }
}

impl SinkWriter for FileSink {
    fn take(&mut self, msgs: Vec<Message>, _: &mut Writes) -> Result<()> {
        self.buf.clear();
        msgs.iter().for_each(|m| line(self.json, m, &mut self.buf));
        let written = self.file.write_all(&self.buf).and_then(|()| if self.sync { self.file.sync_data() } else { Ok(()) });
        written.map_err(|e| Error::sink_failed(self.what.clone(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(payload: &'static str) -> Message {
        Message {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            key: None,
            payload: payload.into(),
            headers: Vec::new(),
            timestamp_us: 0,
            event_time_ms: 0,
            attempt: 1,
        }
    }

    #[test]
    fn a_regular_file_is_synced_and_dev_null_is_written_without_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        let mut file = FileSink::open("f", &path, false).unwrap();
        assert!(file.sync);
        file.take(vec![msg("a"), msg("b")], &mut Writes::default()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb\n");
        let mut null = FileSink::open("n", Path::new("/dev/null"), true).unwrap();
        assert!(!null.sync);
        null.take(vec![msg("a")], &mut Writes::default()).unwrap();
    }
}
