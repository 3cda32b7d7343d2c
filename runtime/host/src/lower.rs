//! Calling `handle-batch` with weir's own [`Message`]s: each is lowered into
//! the guest's memory straight from its shared buffers, through a borrowed
//! view shaped like the WIT `message` record, so no WIT-generated copy of a
//! message (a fresh topic string, key and payload vector per message) is
//! ever built.

use wasmtime::AsContextMut;
use wasmtime::component::{ComponentExportIndex, ComponentType, Func, Instance, Lower};

use crate::{Failure, Message, Output};

/// The WIT `consumer` interface, as the component exports it.
const CONSUMER: &str = "weir:pipeline/consumer@0.1.0";

/// A [`Message`] as the guest's `message` record; the field names and
/// order are the WIT record's (checked against the component when an
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
            attempt: m.attempt,
        }
    }
}

/// What `handle-batch` returns: one result per message.
pub(crate) type BatchResults = Vec<Result<Vec<Output>, Failure>>;
type Params<'a> = (&'a [MessageView<'a>],);

/// Where a component exports `handle-batch`.
///
/// # Errors
/// If it does not export it (a component that passed the world check does).
pub(crate) fn export_index(component: &wasmtime::component::Component) -> wasmtime::Result<ComponentExportIndex> {
    let consumer = component.get_export_index(None, CONSUMER).ok_or_else(|| wasmtime::format_err!("no {CONSUMER} export"))?;
    component.get_export_index(Some(&consumer), "handle-batch").ok_or_else(|| wasmtime::format_err!("no {CONSUMER}#handle-batch export"))
}

/// An instance's `handle-batch`, its type checked against [`MessageView`].
#[derive(Clone, Copy)]
pub(crate) struct HandleBatch(Func);

impl HandleBatch {
    /// Find and type-check `handle-batch` in `instance`.
    pub(crate) fn find(mut store: impl AsContextMut, instance: &Instance, index: &ComponentExportIndex) -> wasmtime::Result<Self> {
        let func = instance.get_func(&mut store, index).ok_or_else(|| wasmtime::format_err!("no {CONSUMER}#handle-batch export"))?;
        func.typed::<Params<'_>, (BatchResults,)>(&store)?;
        Ok(HandleBatch(func))
    }

    /// Call it with `batch`.
    pub(crate) fn call(self, mut store: impl AsContextMut, batch: &[Message]) -> wasmtime::Result<BatchResults> {
        let views: Vec<MessageView<'_>> = batch.iter().map(MessageView::of).collect();
        // Checked in `find`: this is the same check again, a walk over a
        // few types, cheap next to the call.
        let typed = self.0.typed::<Params<'_>, (BatchResults,)>(store.as_context())?;
        typed.call(&mut store, (&views,)).map(|(results,)| results)
    }
}
