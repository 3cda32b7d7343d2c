//! Calling a stage's `consumer` exports, whichever version of the WIT
//! package it was built against: `init`, `handle-batch` with weir's own
//! [`Message`]s, and (0.2.0) `on-timers`. Each message is lowered into the
//! guest's memory straight from its shared buffers, through a borrowed view
//! shaped like the WIT `message` record of the component's version, so no
//! WIT-generated copy of a message (a fresh topic string, key and payload
//! vector per message) is ever built. The results are the same WIT types
//! in both versions (records and variants are checked by shape).
//!
//! A 0.2.1 component that exports `packed` is called through it instead:
//! the batch goes in as three flat lists (three guest allocations per
//! batch, where a `list<message>` takes one per string and list of every
//! message) and the results come back as four, checked here as strictly as
//! the canonical ABI checks a `list<result<list<output>, failure>>`.

use std::borrow::Borrow;

use wasmtime::AsContextMut;
use wasmtime::component::{Component, ComponentExportIndex, ComponentType, Func, Instance, Lift, Lower};

use bytes::Bytes;

use crate::bindings::weir::pipeline::types::{Output as WitOutput, TimeDomain as WitDomain, Timer as WitTimer};
use crate::{Failure, Message, Output, TimeDomain, Timer};

/// The versions of `weir:pipeline` the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V0_1,
    V0_2,
    /// 0.2.0 plus the optional `packed` export.
    V0_2_1,
}

impl Version {
    pub(crate) fn consumer(self) -> &'static str {
        match self {
            Version::V0_1 => "weir:pipeline/consumer@0.1.0",
            Version::V0_2 => "weir:pipeline/consumer@0.2.0",
            Version::V0_2_1 => "weir:pipeline/consumer@0.2.1",
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Version::V0_1 => "0.1.0",
            Version::V0_2 => "0.2.0",
            Version::V0_2_1 => "0.2.1",
        }
    }
}

/// The packed `handle-batch` of 0.2.1.
const PACKED: &str = "weir:pipeline/packed@0.2.1";

/// A [`Message`] as the guest's 0.2.0 `message` record; the field names
/// and order are the WIT record's (checked against the component when an
/// instance is made).
#[derive(ComponentType, Lower)]
#[component(record)]
struct MessageView<'a> {
    topic: &'a str,
    partition: u32,
    offset: u64,
    key: Option<&'a [u8]>,
    payload: &'a [u8],
    headers: &'a [(String, Vec<u8>)],
    #[component(name = "timestamp-ms")]
    timestamp_ms: u64,
    #[component(name = "event-time-ms")]
    event_time_ms: u64,
    attempt: u32,
}

impl<'a> MessageView<'a> {
    fn of(m: &'a Message) -> Self {
        MessageView {
            topic: &m.topic,
            partition: m.partition,
            offset: m.offset,
            key: m.key.as_deref(),
            payload: &m.payload,
            headers: &m.headers,
            timestamp_ms: m.timestamp_us / 1000,
            event_time_ms: m.event_time_ms,
            attempt: m.attempt,
        }
    }
}

/// The 0.1.0 `message` record: no event time.
#[derive(ComponentType, Lower)]
#[component(record)]
struct MessageViewV1<'a> {
    topic: &'a str,
    partition: u32,
    offset: u64,
    key: Option<&'a [u8]>,
    payload: &'a [u8],
    headers: &'a [(String, Vec<u8>)],
    #[component(name = "timestamp-ms")]
    timestamp_ms: u64,
    attempt: u32,
}

impl<'a> MessageViewV1<'a> {
    fn of(m: &'a Message) -> Self {
        MessageViewV1 {
            topic: &m.topic,
            partition: m.partition,
            offset: m.offset,
            key: m.key.as_deref(),
            payload: &m.payload,
            headers: &m.headers,
            timestamp_ms: m.timestamp_us / 1000,
            attempt: m.attempt,
        }
    }
}

/// What `handle-batch` and `on-timers` return: one result per message or timer.
pub(crate) type BatchResults = Vec<Result<Vec<Output>, Failure>>;
/// The same as a `list<result<list<output>, failure>>` lifts.
type WitResults = Vec<Result<Vec<WitOutput>, Failure>>;
type Params<'a> = (&'a [MessageView<'a>],);
type ParamsV1<'a> = (&'a [MessageViewV1<'a>],);
type Config<'a> = (&'a [(String, String)],);

fn from_wit(results: WitResults) -> BatchResults {
    results.into_iter().map(|r| r.map(|outs| outs.into_iter().map(Output::from).collect())).collect()
}

/// Where a component exports the consumer's functions.
#[derive(Clone)]
pub(crate) struct Exports {
    pub(crate) version: Version,
    init: ComponentExportIndex,
    handle_batch: ComponentExportIndex,
    on_timers: Option<ComponentExportIndex>,
    pub(crate) packed: Option<ComponentExportIndex>,
}

impl Exports {
    /// Find the `consumer` export of either version.
    ///
    /// # Errors
    /// If the component exports neither, or lacks one of its functions.
    pub(crate) fn find(component: &Component) -> wasmtime::Result<Self> {
        // By the exact name: a lookup by name also finds a semver-compatible
        // export (0.2.1's name finds a 0.2.0 export).
        let names: Vec<String> = component.component_type().exports(component.engine()).map(|(name, _)| name.to_owned()).collect();
        let (version, consumer) = [Version::V0_2_1, Version::V0_2, Version::V0_1]
            .into_iter()
            .filter(|v| names.iter().any(|n| n == v.consumer()))
            .find_map(|v| component.get_export_index(None, v.consumer()).map(|i| (v, i)))
            .ok_or_else(|| wasmtime::format_err!("no weir:pipeline/consumer export (0.2.1, 0.2.0 or 0.1.0)"))?;
        let func = |instance: &ComponentExportIndex, interface: &str, name: &str| {
            component.get_export_index(Some(instance), name).ok_or_else(|| wasmtime::format_err!("no {interface}#{name} export"))
        };
        let packed = match component.get_export_index(None, PACKED) {
            Some(packed) if version == Version::V0_2_1 => Some(func(&packed, PACKED, "handle-batch")?),
            _ => None,
        };
        Ok(Exports {
            version,
            init: func(&consumer, version.consumer(), "init")?,
            handle_batch: func(&consumer, version.consumer(), "handle-batch")?,
            on_timers: if version == Version::V0_1 { None } else { Some(func(&consumer, version.consumer(), "on-timers")?) },
            packed,
        })
    }
}

/// An instance's consumer functions, their types checked.
#[derive(Clone, Copy)]
pub(crate) struct Consumer {
    version: Version,
    init: Func,
    handle_batch: Func,
    on_timers: Option<Func>,
    packed: Option<Func>,
}

impl Consumer {
    /// Find and type-check the consumer functions in `instance`.
    pub(crate) fn find(mut store: impl AsContextMut, instance: &Instance, exports: &Exports) -> wasmtime::Result<Self> {
        let mut func = |index: &ComponentExportIndex| {
            instance
                .get_func(store.as_context_mut(), index)
                .ok_or_else(|| wasmtime::format_err!("{} is missing an export", exports.version.consumer()))
        };
        let init = func(&exports.init)?;
        let handle_batch = func(&exports.handle_batch)?;
        let on_timers = exports.on_timers.as_ref().map(&mut func).transpose()?;
        let packed = exports.packed.as_ref().map(&mut func).transpose()?;
        let store = store.as_context();
        init.typed::<Config<'_>, (Result<(), String>,)>(&store)?;
        match exports.version {
            Version::V0_1 => drop(handle_batch.typed::<ParamsV1<'_>, (WitResults,)>(&store)?),
            Version::V0_2 | Version::V0_2_1 => drop(handle_batch.typed::<Params<'_>, (WitResults,)>(&store)?),
        }
        if let Some(f) = on_timers {
            f.typed::<(&[WitTimer],), (WitResults,)>(&store)?;
        }
        if let Some(f) = packed {
            f.typed::<PackedParams<'_>, (PackedResults,)>(&store)?;
        }
        Ok(Consumer { version: exports.version, init, handle_batch, on_timers, packed })
    }

    /// Call `init` with the stage's config.
    pub(crate) fn init(self, mut store: impl AsContextMut, config: &[(String, String)]) -> wasmtime::Result<Result<(), String>> {
        let typed = self.init.typed::<Config<'_>, (Result<(), String>,)>(store.as_context())?;
        typed.call(&mut store, (config,)).map(|(r,)| r)
    }

    /// Call `handle-batch` with `batch`.
    pub(crate) fn handle_batch<M: Borrow<Message>>(self, mut store: impl AsContextMut, batch: &[M]) -> wasmtime::Result<BatchResults> {
        // The type checks repeat `find`'s: a walk over a few types, cheap
        // next to the call.
        if let Some(packed) = self.packed {
            let batch = Packer::pack(batch);
            let typed = packed.typed::<PackedParams<'_>, (PackedResults,)>(store.as_context())?;
            let (results,) = typed.call(&mut store, (batch.view(),))?;
            return results.unpack().map_err(wasmtime::Error::new);
        }
        match self.version {
            Version::V0_2 | Version::V0_2_1 => {
                let views: Vec<MessageView<'_>> = batch.iter().map(|m| MessageView::of(m.borrow())).collect();
                let typed = self.handle_batch.typed::<Params<'_>, (WitResults,)>(store.as_context())?;
                typed.call(&mut store, (&views,)).map(|(r,)| from_wit(r))
            }
            Version::V0_1 => {
                let views: Vec<MessageViewV1<'_>> = batch.iter().map(|m| MessageViewV1::of(m.borrow())).collect();
                let typed = self.handle_batch.typed::<ParamsV1<'_>, (WitResults,)>(store.as_context())?;
                typed.call(&mut store, (&views,)).map(|(r,)| from_wit(r))
            }
        }
    }

    /// Call `on-timers` with `timers`.
    ///
    /// # Errors
    /// If the component is a 0.1.0 one, which cannot have set a timer.
    pub(crate) fn on_timers(self, mut store: impl AsContextMut, timers: &[Timer]) -> wasmtime::Result<BatchResults> {
        let f = self.on_timers.ok_or_else(|| wasmtime::format_err!("a 0.1.0 component has no on-timers"))?;
        let timers: Vec<WitTimer> = timers
            .iter()
            .map(|t| WitTimer {
                domain: match t.domain {
                    TimeDomain::Event => WitDomain::EventTime,
                    TimeDomain::Processing => WitDomain::ProcessingTime,
                },
                key: t.key.clone(),
                at_ms: t.at_ms,
            })
            .collect();
        let typed = f.typed::<(&[WitTimer],), (WitResults,)>(store.as_context())?;
        typed.call(&mut store, (&timers,)).map(|(r,)| from_wit(r))
    }
}

/// A `packed-batch`, borrowed from a [`Packer`].
#[derive(ComponentType, Lower)]
#[component(record)]
struct PackedBatch<'a> {
    data: &'a [u8],
    messages: &'a [u64],
    #[component(name = "header-lens")]
    header_lens: &'a [u32],
}

type PackedParams<'a> = (PackedBatch<'a>,);

/// The numbers a `packed-batch` carries per message.
const MESSAGE_WORDS: usize = 9;
/// The numbers `packed-results` carry per result and per output.
const RESULT_WORDS: usize = 2;
const OUTPUT_WORDS: usize = 4;
/// "None" for a key length in `messages`, and for a topic or key length in
/// `outputs`.
const NO_KEY: u64 = u64::MAX;
const NONE32: u32 = u32::MAX;

/// A batch packed for the guest: every message's variable-length parts
/// back to back in `data`, its numbers in `messages`, in the order the WIT
/// gives.
struct Packer {
    data: Vec<u8>,
    messages: Vec<u64>,
    header_lens: Vec<u32>,
}

impl Packer {
    fn pack<M: Borrow<Message>>(batch: &[M]) -> Packer {
        let size = batch
            .iter()
            .map(|m| {
                let m = m.borrow();
                m.topic.len()
                    + m.key.as_ref().map_or(0, |k| k.len())
                    + m.payload.len()
                    + m.headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>()
            })
            .sum();
        let mut p = Packer {
            data: Vec::with_capacity(size),
            messages: Vec::with_capacity(batch.len() * MESSAGE_WORDS),
            header_lens: Vec::with_capacity(batch.iter().map(|m| 2 * m.borrow().headers.len()).sum()),
        };
        for m in batch {
            let m = m.borrow();
            let mut put = |bytes: &[u8]| {
                p.data.extend_from_slice(bytes);
                bytes.len() as u64
            };
            let topic_len = put(m.topic.as_bytes());
            let key_len = m.key.as_deref().map_or(NO_KEY, &mut put);
            let payload_len = put(&m.payload);
            for (name, value) in &m.headers {
                let lens = [put(name.as_bytes()), put(value)];
                p.header_lens.extend(lens.map(len32));
            }
            p.messages.extend([
                topic_len,
                u64::from(m.partition),
                m.offset,
                key_len,
                payload_len,
                m.headers.len() as u64,
                m.timestamp_us / 1000,
                m.event_time_ms,
                u64::from(m.attempt),
            ]);
        }
        p
    }

    fn view(&self) -> PackedBatch<'_> {
        PackedBatch { data: &self.data, messages: &self.messages, header_lens: &self.header_lens }
    }
}

/// A header length the canonical ABI can carry: a guest's memory is
/// 32-bit, so a batch that does not fit fails to lower whatever its packing.
fn len32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The guest's `packed-results`, copied out of its memory (each list is
/// one copy).
#[derive(ComponentType, Lift)]
#[component(record)]
struct PackedResults {
    data: Vec<u8>,
    results: Vec<u32>,
    outputs: Vec<u32>,
    #[component(name = "header-lens")]
    header_lens: Vec<u32>,
}

/// Packed results that do not add up: a length past the end of `data` or
/// of a list, an unknown outcome, a string that is not UTF-8, parts left
/// over. The call fails as a breach of the contract.
#[derive(Debug, thiserror::Error)]
#[error("malformed packed results: {0}")]
pub(crate) struct Malformed(&'static str);

/// Reads the numbers of packed results in order, each count checked.
struct Cursor<'a, T> {
    items: &'a [T],
}

impl<'a, T> Cursor<'a, T> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [T], Malformed> {
        if n > self.items.len() {
            return Err(Malformed(what));
        }
        let (head, rest) = self.items.split_at(n);
        self.items = rest;
        Ok(head)
    }
}

/// Reads the parts of packed results' `data` in order: shared slices of
/// the one buffer, each length checked.
struct Data {
    bytes: Bytes,
    at: usize,
}

impl Data {
    /// Where the next `n` bytes lie, checked.
    fn next(&mut self, n: u32) -> Result<std::ops::Range<usize>, Malformed> {
        let end = self.at.checked_add(n as usize).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(Malformed("a length runs past the end of data"))?;
        Ok(std::mem::replace(&mut self.at, end)..end)
    }

    /// The next `n` bytes, sharing the buffer.
    fn bytes(&mut self, n: u32) -> Result<Bytes, Malformed> {
        let r = self.next(n)?;
        Ok(self.bytes.slice(r))
    }

    /// The next `n` bytes, copied (header values are vectors).
    fn vec(&mut self, n: u32) -> Result<Vec<u8>, Malformed> {
        let r = self.next(n)?;
        Ok(self.bytes[r].to_vec())
    }

    fn text(&mut self, n: u32) -> Result<String, Malformed> {
        let r = self.next(n)?;
        std::str::from_utf8(&self.bytes[r]).map(str::to_owned).map_err(|_| Malformed("a string is not UTF-8"))
    }
}

impl PackedResults {
    fn unpack(self) -> Result<BatchResults, Malformed> {
        if !self.results.len().is_multiple_of(RESULT_WORDS) || !self.outputs.len().is_multiple_of(OUTPUT_WORDS) {
            return Err(Malformed("a list of numbers is cut short"));
        }
        let mut data = Data { bytes: self.data.into(), at: 0 };
        let mut outputs = Cursor { items: &self.outputs[..] };
        let mut lens = Cursor { items: &self.header_lens[..] };
        let mut results = Vec::with_capacity(self.results.len() / RESULT_WORDS);
        for r in self.results.chunks_exact(RESULT_WORDS) {
            let (outcome, count) = (r[0], r[1]);
            results.push(match outcome {
                0 => {
                    let words = (count as usize).checked_mul(OUTPUT_WORDS).ok_or(Malformed("too many outputs"))?;
                    let outs = outputs.take(words, "an output count runs past the end of outputs")?;
                    let mut list = Vec::with_capacity(count as usize);
                    for o in outs.chunks_exact(OUTPUT_WORDS) {
                        let topic = if o[0] == NONE32 { None } else { Some(data.text(o[0])?) };
                        let key = if o[1] == NONE32 { None } else { Some(data.bytes(o[1])?) };
                        let payload = data.bytes(o[2])?;
                        let mut headers = Vec::new();
                        if o[3] > 0 {
                            let pairs = lens.take(2 * o[3] as usize, "a header count runs past the end of header-lens")?;
                            headers.reserve_exact(o[3] as usize);
                            for nv in pairs.chunks_exact(2) {
                                headers.push((data.text(nv[0])?, data.vec(nv[1])?));
                            }
                        }
                        list.push(Output { topic, key, payload, headers });
                    }
                    Ok(list)
                }
                1 => Err(Failure::Retry(data.text(count)?)),
                2 => Err(Failure::Reject(data.text(count)?)),
                _ => return Err(Malformed("an outcome is not 0, 1 or 2")),
            });
        }
        if !(data.at == data.bytes.len() && outputs.items.is_empty() && lens.items.is_empty()) {
            return Err(Malformed("parts are left over after the last result"));
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: u32 = NONE32;

    fn results(data: &[u8], results: &[u32], outputs: &[u32], header_lens: &[u32]) -> PackedResults {
        PackedResults { data: data.to_vec(), results: results.to_vec(), outputs: outputs.to_vec(), header_lens: header_lens.to_vec() }
    }

    #[test]
    fn packed_results_unpack_to_the_outputs_and_failures_they_describe() {
        // Message 1: two outputs (the second routed, with a key and a
        // header), message 2: dropped, message 3: retry, message 4: reject.
        let packed = results(b"AtkBhvCagainrejected", &[0, 2, 0, 0, 1, 5, 2, 9], &[N, N, 1, 0, 1, 1, 1, 1], &[1, 1]);
        let got = packed.unpack().unwrap();
        assert_eq!(got.len(), 4);
        let outs = got[0].as_ref().unwrap();
        assert_eq!((outs[0].topic.as_deref(), outs[0].key.as_deref(), &outs[0].payload[..]), (None, None, &b"A"[..]));
        assert_eq!((outs[1].topic.as_deref(), outs[1].key.as_deref(), &outs[1].payload[..]), (Some("t"), Some(&b"k"[..]), &b"B"[..]));
        assert_eq!(outs[1].headers, vec![("h".to_owned(), b"v".to_vec())]);
        assert!(got[1].as_ref().unwrap().is_empty());
        assert!(matches!(&got[2], Err(Failure::Retry(r)) if r == "Cagai"));
        assert!(matches!(&got[3], Err(Failure::Reject(r)) if r == "nrejected"));
    }

    #[test]
    fn packed_results_that_do_not_add_up_are_refused() {
        let cases = [
            ("payload past the end", results(b"ab", &[0, 1], &[N, N, 3, 0], &[])),
            ("output count past the end", results(b"ab", &[0, 2], &[N, N, 2, 0], &[])),
            ("huge output count", results(b"", &[0, u32::MAX], &[], &[])),
            ("header count past the end", results(b"ab", &[0, 1], &[N, N, 0, 1], &[1])),
            ("huge header count", results(b"", &[0, 1], &[N, N, 0, u32::MAX], &[])),
            ("unknown outcome", results(b"", &[3, 0], &[], &[])),
            ("results cut short", results(b"", &[0], &[], &[])),
            ("outputs cut short", results(b"", &[0, 1], &[N, N, 0], &[])),
            ("topic not UTF-8", results(b"\xff", &[0, 1], &[1, N, 0, 0], &[])),
            ("reason not UTF-8", results(b"\xfe", &[2, 1], &[], &[])),
            ("bytes left over", results(b"abc", &[0, 1], &[N, N, 2, 0], &[])),
            ("outputs left over", results(b"ab", &[0, 1], &[N, N, 2, 0, N, N, 0, 0], &[])),
            ("lengths left over", results(b"ab", &[0, 1], &[N, N, 2, 0], &[0, 0])),
        ];
        for (what, packed) in cases {
            assert!(packed.unpack().is_err(), "{what} was accepted");
        }
    }

    #[test]
    fn a_batch_packs_each_part_of_each_message_in_order() {
        let message = |topic: &str, partition, offset, key: Option<&str>, payload: &str| Message {
            topic: topic.into(),
            partition,
            offset,
            key: key.map(|k| k.as_bytes().to_vec().into()),
            payload: payload.as_bytes().to_vec().into(),
            headers: Vec::new(),
            timestamp_us: 5_000,
            event_time_ms: 3,
            attempt: 1,
        };
        let mut a = message("t1", 0, 7, Some("k"), "payload");
        a.headers = vec![("h".into(), b"vv".to_vec())];
        let b = message("t2", 1, 8, None, "p");
        let p = Packer::pack(&[a, b]);
        assert_eq!(p.data, b"t1kpayloadhvvt2p");
        assert_eq!(p.header_lens, [1, 2]);
        assert_eq!(p.messages, [2, 0, 7, 1, 7, 1, 5, 3, 1, 2, 1, 8, NO_KEY, 1, 0, 5, 3, 1]);
    }
}
