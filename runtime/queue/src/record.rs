//! The on-disk record format.
//!
//! ```text
//! u32  body length (bytes after the CRC)
//! u32  CRC32C of the body
//! body:
//!   u64  offset
//!   u64  append timestamp, ms since the Unix epoch (monotonic per partition)
//!   u64  producer timestamp since the Unix epoch: µs when flag bit 1 is
//!        set (every record written since 2026-12), ms in older records
//!   u8   flags: bit 0 = carries a message id header (for idempotent publish),
//!        bit 1 = the producer timestamp is in µs
//!   u32  key length, or u32::MAX for no key
//!   ..   key
//!   u16  header count
//!   per header: u16 name length, name (UTF-8), u32 value length, value
//!   ..   payload (the rest of the body)
//! ```
//!
//! All integers are little-endian. A record is valid only if its whole body is
//! present and its CRC matches, so a torn write is always detected.

/// Bytes before the body: length and CRC.
pub(crate) const HEADER_LEN: usize = 8;
/// Smallest possible body: offset, two timestamps, flags, key length, header count.
const MIN_BODY: usize = 8 + 8 + 8 + 1 + 4 + 2;
/// The smallest record on disk: a segment of n bytes holds at most n / this.
pub const MIN_FRAME: usize = HEADER_LEN + MIN_BODY;
/// Offsets stay at or below this (2^63 - 1, as Kafka's): a segment named
/// beyond it is damage, and a partition that reaches it takes no more.
pub(crate) const MAX_OFFSET: u64 = i64::MAX as u64;
/// Position of the flags byte in a frame.
const FLAGS_AT: usize = HEADER_LEN + 24;
/// Flag: the record carries a [`MSG_ID_HEADER`].
pub(crate) const FLAG_HAS_ID: u8 = 1;
/// Flag: the producer timestamp is in µs (without it, in ms).
const FLAG_MICROS: u8 = 2;
/// Largest body we accept; guards recovery against a garbage length field.
pub(crate) const MAX_BODY: usize = 64 * 1024 * 1024;
/// The largest record the queue stores: key, headers and payload together,
/// with a few dozen bytes of framing, fit in this many bytes.
pub const MAX_RECORD_BYTES: usize = MAX_BODY;
const NO_KEY: u32 = u32::MAX;

/// A message to publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Partitioning key; records with the same key go to the same partition.
    pub key: Option<Vec<u8>>,
    /// Ordered header (name, value) pairs.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub payload: Vec<u8>,
    /// When the producer created it (µs since the Unix epoch); `None` means now.
    pub timestamp_us: Option<u64>,
    /// Idempotency key: a publish of a record whose id was already published
    /// to the topic within its dedupe window writes nothing and returns the
    /// original position. Stored as the header [`MSG_ID_HEADER`].
    pub id: Option<String>,
}

/// Header that carries a record's idempotency key ([`Record::id`]).
pub const MSG_ID_HEADER: &str = "weir.msg-id";

impl Record {
    /// A record with only a payload.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Self { payload: payload.into(), ..Self::default() }
    }

    /// Set the key.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Add a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Encoded size of this record on disk.
    #[cfg(test)]
    pub(crate) fn encoded_len(&self) -> usize {
        HEADER_LEN
            + MIN_BODY
            + self.key.as_ref().map_or(0, Vec::len)
            + self.headers.iter().map(|(k, v)| 6 + k.len() + v.len()).sum::<usize>()
            + self.id.as_ref().map_or(0, |id| 6 + MSG_ID_HEADER.len() + id.len())
            + self.payload.len()
    }

    /// Checks that the record can be stored: at most 65535 headers, names
    /// of at most 65535 bytes, at most [`MAX_RECORD_BYTES`] in all. A
    /// publish of a batch holding one that cannot is refused whole.
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn validate(&self) -> Result<(), &'static str> {
        let id = self.id.as_ref().map_or(0, |id| 6 + MSG_ID_HEADER.len() + id.len());
        check_parts(self.key.as_deref(), &self.headers, self.payload.len() + id)
    }
}

/// [`Record::validate`] for a record of these parts, without one.
///
/// # Errors
/// What is wrong with it.
pub fn check_parts(key: Option<&[u8]>, headers: &[(String, Vec<u8>)], payload_len: usize) -> Result<(), &'static str> {
    if headers.len() >= u16::MAX as usize {
        return Err("more than 65534 headers");
    }
    if headers.iter().any(|(k, _)| k.len() > u16::MAX as usize) {
        return Err("a header name is longer than 65535 bytes");
    }
    let body = MIN_BODY + key.map_or(0, <[u8]>::len) + headers.iter().map(|(k, v)| 6 + k.len() + v.len()).sum::<usize>() + payload_len;
    if body > MAX_BODY {
        return Err("record larger than 64 MiB");
    }
    Ok(())
}

impl Record {
    /// Append the encoding of this record at `offset` to `out`.
    /// `append_ts` is in ms, `producer_us` in µs.
    pub(crate) fn encode(&self, offset: u64, append_ts: u64, producer_us: u64, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&append_ts.to_le_bytes());
        out.extend_from_slice(&producer_us.to_le_bytes());
        out.push(FLAG_MICROS | if self.id.is_some() { FLAG_HAS_ID } else { 0 });
        match &self.key {
            Some(k) => {
                out.extend_from_slice(&(k.len() as u32).to_le_bytes());
                out.extend_from_slice(k);
            }
            None => out.extend_from_slice(&NO_KEY.to_le_bytes()),
        }
        let id = self.id.as_ref().map(|id| (MSG_ID_HEADER, id.as_bytes()));
        let count = self.headers.len() + usize::from(id.is_some());
        out.extend_from_slice(&(count as u16).to_le_bytes());
        let headers = self.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())).chain(id);
        for (name, value) in headers {
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        out.extend_from_slice(&self.payload);
        let body = &out[start + HEADER_LEN..];
        let len = body.len() as u32;
        let crc = crc32c::crc32c(body);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// A record as stored in a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Partition it is stored in.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// When the queue appended it (ms since the Unix epoch).
    pub append_timestamp_ms: u64,
    /// When the producer created it (µs since the Unix epoch; a record
    /// written before weir kept µs has its ms times 1000).
    pub timestamp_us: u64,
    /// Partitioning key.
    pub key: Option<Vec<u8>>,
    /// Header (name, value) pairs, in publish order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub payload: Vec<u8>,
}

/// Why bytes at a position are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Not enough bytes for the header or the body: a torn write or the end.
    Truncated,
    /// The length field is impossible.
    BadLength,
    /// The CRC does not match the body.
    BadCrc,
    /// The CRC matches but the body does not parse.
    Malformed,
}

impl Invalid {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Invalid::Truncated => "incomplete record (torn write)",
            Invalid::BadLength => "impossible record length",
            Invalid::BadCrc => "CRC32C mismatch",
            Invalid::Malformed => "malformed record body",
        }
    }
}

/// The total length of the record starting at `buf[0]`, if its header is there.
pub(crate) fn frame_len(buf: &[u8]) -> Result<usize, Invalid> {
    if buf.len() < HEADER_LEN {
        return Err(Invalid::Truncated);
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
    if !(MIN_BODY..=MAX_BODY).contains(&len) {
        return Err(Invalid::BadLength);
    }
    Ok(HEADER_LEN + len)
}

/// The flags of a validated frame.
pub(crate) fn flags(frame: &[u8]) -> u8 {
    frame[FLAGS_AT]
}

/// Validate the record at the start of `buf` and return its total length and offset.
pub(crate) fn check(buf: &[u8]) -> Result<(usize, u64, u64), Invalid> {
    let total = frame_len(buf)?;
    if buf.len() < total {
        return Err(Invalid::Truncated);
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    let body = &buf[HEADER_LEN..total];
    if !crate::crc_matches(body, crc) {
        return Err(Invalid::BadCrc);
    }
    let offset = u64::from_le_bytes(body[0..8].try_into().unwrap());
    let append_ts = u64::from_le_bytes(body[8..16].try_into().unwrap());
    Ok((total, offset, append_ts))
}

/// Decode a record whose frame was already validated by [`check`].
pub(crate) fn decode(partition: u32, frame: &[u8]) -> Result<StoredRecord, Invalid> {
    let mut r = Reader { buf: &frame[HEADER_LEN..] };
    let offset = r.u64()?;
    let append_timestamp_ms = r.u64()?;
    let producer_ts = r.u64()?;
    let flags = r.bytes(1)?[0];
    let timestamp_us = if flags & FLAG_MICROS != 0 { producer_ts } else { producer_ts.saturating_mul(1000) };
    let key_len = r.u32()?;
    let key = if key_len == NO_KEY { None } else { Some(r.bytes(key_len as usize)?.to_vec()) };
    let count = r.u16()?;
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let n = r.u16()? as usize;
        let name = std::str::from_utf8(r.bytes(n)?).map_err(|_| Invalid::Malformed)?.to_owned();
        let v = r.u32()? as usize;
        headers.push((name, r.bytes(v)?.to_vec()));
    }
    Ok(StoredRecord { partition, offset, append_timestamp_ms, timestamp_us, key, headers, payload: r.buf.to_vec() })
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Invalid> {
        if self.buf.len() < n {
            return Err(Invalid::Malformed);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, Invalid> {
        Ok(u16::from_le_bytes(self.bytes(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, Invalid> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, Invalid> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().unwrap()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record::new(b"Hello World!".to_vec()).with_key(b"k1".to_vec()).with_header("h", b"v".to_vec())
    }

    #[test]
    fn round_trips() {
        let rec = sample();
        let mut buf = Vec::new();
        rec.encode(42, 1000, 999, &mut buf);
        assert_eq!(buf.len(), rec.encoded_len());
        let (len, off, ts) = check(&buf).unwrap();
        assert_eq!((len, off, ts), (buf.len(), 42, 1000));
        let got = decode(3, &buf).unwrap();
        assert_eq!(got.partition, 3);
        assert_eq!(got.offset, 42);
        assert_eq!(got.timestamp_us, 999);
        assert_eq!(got.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(got.headers, vec![("h".to_string(), b"v".to_vec())]);
        assert_eq!(got.payload, b"Hello World!");
    }

    #[test]
    fn a_record_written_before_micros_reads_its_ms_as_us() {
        let mut buf = Vec::new();
        sample().encode(1, 1000, 999, &mut buf);
        // As weir wrote records before µs: the flag clear, the time in ms.
        buf[FLAGS_AT] &= !FLAG_MICROS;
        let crc = crc32c::crc32c(&buf[HEADER_LEN..]);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        let got = decode(0, &buf).unwrap();
        assert_eq!((got.timestamp_us, got.payload.as_slice()), (999_000, &b"Hello World!"[..]));
    }

    #[test]
    fn every_truncation_is_detected() {
        let mut buf = Vec::new();
        sample().encode(0, 1, 1, &mut buf);
        for cut in 0..buf.len() {
            assert!(check(&buf[..cut]).is_err(), "cut at {cut} accepted");
        }
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let mut buf = Vec::new();
        sample().encode(0, 1, 1, &mut buf);
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                if let Ok((len, ..)) = check(&bad) {
                    panic!("flip at byte {byte} bit {bit} accepted (len {len})");
                }
            }
        }
    }
}
