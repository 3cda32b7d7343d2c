//! One segment file of a partition's log: its records, named by the base
//! offset, and its sparse index file (written when the segment is sealed,
//! trusted on open only when intact and consistent).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::record::{self, Invalid};
use crate::{Error, Result};

/// A sparse index entry every this many bytes of log.
pub(crate) const INDEX_INTERVAL: u64 = 4096;
/// How much to read at a time when scanning or reading.
pub(crate) const READ_CHUNK: usize = 256 * 1024;

pub(crate) struct Segment {
    pub(crate) base: u64,
    /// Shared with reads in progress, which run outside the partition's lock.
    pub(crate) path: Arc<Path>,
    pub(crate) file: Arc<File>,
    /// Validated length in bytes.
    pub(crate) len: u64,
    /// Offset after the last record in this segment.
    pub(crate) next: u64,
    /// (offset, byte position, append time) of some records, ascending.
    pub(crate) index: Vec<(u64, u64, u64)>,
    /// Latest append timestamp in the segment.
    pub(crate) max_ts: u64,
    /// Some record carries a message id (the dedupe window is rebuilt from these).
    pub(crate) has_ids: bool,
}

const INDEX_MAGIC: &[u8; 8] = b"WEIRIDX1";

impl Segment {
    pub(crate) fn new(base: u64, path: PathBuf, file: File) -> Self {
        Segment { base, path: path.into(), file: Arc::new(file), len: 0, next: base, index: Vec::new(), max_ts: 0, has_ids: false }
    }

    pub(crate) fn file_name(base: u64) -> String {
        format!("{base:020}.log")
    }

    pub(crate) fn index_path(&self) -> PathBuf {
        self.path.with_extension("index")
    }

    /// The index file of a sealed segment: magic, base, length, next offset,
    /// latest append time, has-ids flag, entry count, entries (offset, position, time),
    /// CRC32C of all of it. Little-endian.
    pub(crate) fn encode_index(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.index.len() * 24 + 4);
        out.extend_from_slice(INDEX_MAGIC);
        for v in [self.base, self.len, self.next, self.max_ts, u64::from(self.has_ids), self.index.len() as u64] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for &(o, p, t) in &self.index {
            for v in [o, p, t] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Load the index file if it is intact and matches the segment as it is on disk.
    pub(crate) fn load_index(&mut self, file_len: u64) -> bool {
        let Ok(bytes) = std::fs::read(self.index_path()) else {
            return false;
        };
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
        if bytes.len() < 60 || &bytes[..8] != INDEX_MAGIC {
            return false;
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if !crate::crc_matches(body, u32::from_le_bytes(crc.try_into().unwrap())) {
            return false;
        }
        let count = u64_at(48) as usize;
        if count.checked_mul(24).and_then(|n| n.checked_add(56)) != Some(body.len()) || u64_at(8) != self.base || u64_at(16) != file_len {
            return false;
        }
        let next = u64_at(24);
        let index: Vec<(u64, u64, u64)> = (0..count).map(|i| (u64_at(56 + i * 24), u64_at(64 + i * 24), u64_at(72 + i * 24))).collect();
        // Entries name records of this segment, in order: anything else is
        // damage (or forgery, with its CRC made to match), and the log is scanned.
        let ordered = index.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1);
        let inside = index.iter().all(|&(offset, pos, _)| (self.base..next).contains(&offset) && pos < file_len);
        let most = file_len / record::MIN_FRAME as u64;
        if next < self.base || next - self.base > most || !ordered || !inside {
            return false;
        }
        self.len = file_len;
        self.next = next;
        self.max_ts = u64_at(32);
        self.has_ids = u64_at(40) != 0;
        self.index = index;
        true
    }

    /// Byte position from which to scan to find `offset`.
    pub(crate) fn seek_pos(&self, offset: u64) -> u64 {
        match self.index.partition_point(|&(o, ..)| o <= offset) {
            0 => 0,
            i => self.index[i - 1].1,
        }
    }

    /// Scan from `pos` (holding offset `next`), validating records, extending
    /// `len`, `next` and the index. Stops at the end or at the first invalid
    /// record, which it returns with its position.
    pub(crate) fn scan_from(&mut self, mut pos: u64, mut next: u64, last_ts: &mut u64) -> Result<Option<(u64, Invalid)>> {
        let file_len = self.file.metadata().map_err(|e| Error::io(&self.path, e))?.len();
        let mut buf = Vec::new();
        let mut bad = None;
        'outer: while pos < file_len {
            let want = READ_CHUNK.min((file_len - pos) as usize).max(record::HEADER_LEN);
            buf.resize(want, 0);
            let n = read_at_most(&self.file, &mut buf, pos).map_err(|e| Error::io(&self.path, e))?;
            buf.truncate(n);
            let mut at = 0;
            loop {
                match record::check(&buf[at..]) {
                    Ok((len, offset, ts)) => {
                        if offset != next {
                            bad = Some((pos + at as u64, Invalid::Malformed));
                            break 'outer;
                        }
                        let rec_pos = pos + at as u64;
                        let last_indexed = self.index.last().map(|&(_, p, _)| p);
                        if last_indexed.is_none_or(|p| rec_pos >= p + INDEX_INTERVAL) {
                            self.index.push((offset, rec_pos, ts));
                        }
                        *last_ts = (*last_ts).max(ts);
                        self.max_ts = self.max_ts.max(ts);
                        self.has_ids |= record::flags(&buf[at..]) & record::FLAG_HAS_ID != 0;
                        next += 1;
                        at += len;
                    }
                    Err(Invalid::Truncated) if at > 0 => break,
                    Err(Invalid::Truncated) => {
                        // A frame larger than the buffer: read exactly it.
                        match record::frame_len(&buf) {
                            Ok(total) if pos + total as u64 <= file_len => {
                                buf.resize(total, 0);
                                self.file.read_exact_at(&mut buf, pos).map_err(|e| Error::io(&self.path, e))?;
                                continue;
                            }
                            Ok(_) | Err(_) => {
                                bad = Some((pos, Invalid::Truncated));
                                break 'outer;
                            }
                        }
                    }
                    Err(why) => {
                        bad = Some((pos + at as u64, why));
                        break 'outer;
                    }
                }
            }
            pos += at as u64;
        }
        self.len = bad.map_or(pos, |(p, _)| p);
        self.next = next;
        Ok(bad)
    }
}

fn read_at_most(file: &File, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], pos + filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
