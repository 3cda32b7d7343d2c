//! Calling a stage's `consumer` exports, whichever version of the WIT
//! package it was built against: `init`, `handle-batch` with weir's own
//! [`Message`]s, and (0.2.0) `on-timers`. Each message is lowered into the
//! guest's memory straight from its shared buffers, through a borrowed view
//! shaped like the WIT `message` record of the component's version, so no
//! WIT-generated copy of a message (a fresh topic string, key and payload
//! vector per message) is ever built. The results are the same WIT types
//! in both versions (records and variants are checked by shape).

use wasmtime::AsContextMut;
use wasmtime::component::{Component, ComponentExportIndex, ComponentType, Func, Instance, Lower};

use crate::bindings::weir::pipeline::types::{TimeDomain as WitDomain, Timer as WitTimer};
use crate::{Failure, Message, Output, TimeDomain, Timer};

/// The versions of `weir:pipeline` the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V0_1,
    V0_2,
}

impl Version {
    pub(crate) fn consumer(self) -> &'static str {
        match self {
            Version::V0_1 => "weir:pipeline/consumer@0.1.0",
            Version::V0_2 => "weir:pipeline/consumer@0.2.0",
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Version::V0_1 => "0.1.0",
            Version::V0_2 => "0.2.0",
        }
    }
}

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
type Params<'a> = (&'a [MessageView<'a>],);
type ParamsV1<'a> = (&'a [MessageViewV1<'a>],);
type Config<'a> = (&'a [(String, String)],);

/// Where a component exports the consumer's functions.
#[derive(Clone)]
pub(crate) struct Exports {
    pub(crate) version: Version,
    init: ComponentExportIndex,
    handle_batch: ComponentExportIndex,
    on_timers: Option<ComponentExportIndex>,
}

impl Exports {
    /// Find the `consumer` export of either version.
    ///
    /// # Errors
    /// If the component exports neither, or lacks one of its functions.
    pub(crate) fn find(component: &Component) -> wasmtime::Result<Self> {
        let (version, consumer) = [Version::V0_2, Version::V0_1]
            .into_iter()
            .find_map(|v| component.get_export_index(None, v.consumer()).map(|i| (v, i)))
            .ok_or_else(|| wasmtime::format_err!("no weir:pipeline/consumer export (0.2.0 or 0.1.0)"))?;
        let func = |name: &str| {
            component
                .get_export_index(Some(&consumer), name)
                .ok_or_else(|| wasmtime::format_err!("no {}#{name} export", version.consumer()))
        };
        Ok(Exports {
            version,
            init: func("init")?,
            handle_batch: func("handle-batch")?,
            on_timers: if version == Version::V0_2 { Some(func("on-timers")?) } else { None },
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
        let on_timers = exports.on_timers.as_ref().map(func).transpose()?;
        let store = store.as_context();
        init.typed::<Config<'_>, (Result<(), String>,)>(&store)?;
        match exports.version {
            Version::V0_1 => drop(handle_batch.typed::<ParamsV1<'_>, (BatchResults,)>(&store)?),
            Version::V0_2 => drop(handle_batch.typed::<Params<'_>, (BatchResults,)>(&store)?),
        }
        if let Some(f) = on_timers {
            f.typed::<(&[WitTimer],), (BatchResults,)>(&store)?;
        }
        Ok(Consumer { version: exports.version, init, handle_batch, on_timers })
    }

    /// Call `init` with the stage's config.
    pub(crate) fn init(self, mut store: impl AsContextMut, config: &[(String, String)]) -> wasmtime::Result<Result<(), String>> {
        let typed = self.init.typed::<Config<'_>, (Result<(), String>,)>(store.as_context())?;
        typed.call(&mut store, (config,)).map(|(r,)| r)
    }

    /// Call `handle-batch` with `batch`.
    pub(crate) fn handle_batch(self, mut store: impl AsContextMut, batch: &[Message]) -> wasmtime::Result<BatchResults> {
        // The type checks repeat `find`'s: a walk over a few types, cheap
        // next to the call.
        match self.version {
            Version::V0_2 => {
                let views: Vec<MessageView<'_>> = batch.iter().map(MessageView::of).collect();
                let typed = self.handle_batch.typed::<Params<'_>, (BatchResults,)>(store.as_context())?;
                typed.call(&mut store, (&views,)).map(|(r,)| r)
            }
            Version::V0_1 => {
                let views: Vec<MessageViewV1<'_>> = batch.iter().map(MessageViewV1::of).collect();
                let typed = self.handle_batch.typed::<ParamsV1<'_>, (BatchResults,)>(store.as_context())?;
                typed.call(&mut store, (&views,)).map(|(r,)| r)
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
        let typed = f.typed::<(&[WitTimer],), (BatchResults,)>(store.as_context())?;
        typed.call(&mut store, (&timers,)).map(|(r,)| r)
    }
}
