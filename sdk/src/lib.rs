//! Write [weir](https://example.invalid/weir) pipeline stages in Rust.
//!
//! A stage is a type that implements [`Stage`]: it is built once per instance
//! from the stage's `[stage.config]` table, then handles one message at a
//! time. [`export!`] turns it into a WebAssembly component implementing the
//! `weir:pipeline/stage` world; the SDK runs the batch loop the host calls.
//!
//! ```
//! use weir_sdk::{Config, Failure, Message, Output, Stage};
//!
//! /// Upper-cases text messages; rejects payloads that are not UTF-8.
//! struct Shout {
//!     suffix: String,
//! }
//!
//! impl Stage for Shout {
//!     fn init(config: &Config) -> Result<Self, String> {
//!         Ok(Shout { suffix: config.get("suffix").unwrap_or("").to_owned() })
//!     }
//!
//!     fn handle(&mut self, msg: Message) -> Result<Vec<Output>, Failure> {
//!         let text = msg.text()?;
//!         weir_sdk::counter_add("shouted", 1);
//!         Ok(vec![Output::reply(&msg, format!("{}{}", text.to_uppercase(), self.suffix))])
//!     }
//! }
//!
//! weir_sdk::export!(Shout);
//!
//! // The same logic, tested natively with `cargo test`:
//! let mut h = weir_sdk::testing::Harness::<Shout>::new(&[("suffix", "!")]).unwrap();
//! let out = h.handle(Message::new("hello")).unwrap();
//! assert_eq!(out[0].payload, b"HELLO!");
//! assert_eq!(h.counter("shouted"), 1);
//! ```
//!
//! Build the component with `cargo build --target wasm32-wasip2 --release`.
#![deny(missing_docs)]

extern crate self as weir_sdk;

mod host;
pub mod testing;
mod types;
pub mod windows;

pub use host::{Level, counter_add, log, state, timers};
pub use types::{Config, Failure, Headers, Message, Output, TimeDomain, Timer};

/// A pipeline stage.
///
/// One value is created per stage instance with [`Stage::init`]; the host may
/// run several instances of a stage in parallel (its `concurrency`), each with
/// its own value, so keep shared state in [`state`].
pub trait Stage: Sized + 'static {
    /// Build the stage from its `[stage.config]` table. An `Err` stops the
    /// pipeline at start and is shown to the user.
    ///
    /// # Errors
    /// A message saying what is wrong with the configuration.
    fn init(config: &Config) -> Result<Self, String>;

    /// Handle one message: return the outputs (none drops the message) or a
    /// [`Failure`] (retry later, or reject to the dead-letter topic).
    ///
    /// # Errors
    /// [`Failure::Retry`] for a transient problem, [`Failure::Reject`] for a
    /// message that can never be handled.
    fn handle(&mut self, msg: Message) -> Result<Vec<Output>, Failure>;

    /// Handle a batch. The default calls [`Stage::handle`] for each message;
    /// override it to amortise work across a batch. Must return one result per
    /// input, in order.
    fn handle_batch(&mut self, batch: Vec<Message>) -> Vec<Result<Vec<Output>, Failure>> {
        batch.into_iter().map(|m| self.handle(m)).collect()
    }

    /// A timer set with [`timers::set`] fired (the host deleted it; set it
    /// again to repeat). Its outputs go on like a message's, with the
    /// timer's time as their event time. The default emits nothing.
    ///
    /// # Errors
    /// [`Failure::Retry`] fires it again later (up to `max_attempts`),
    /// [`Failure::Reject`] dead-letters a record of it.
    fn on_timer(&mut self, timer: Timer) -> Result<Vec<Output>, Failure> {
        let _ = timer;
        Ok(Vec::new())
    }
}

/// Export a [`Stage`] implementation as the component's
/// `weir:pipeline/packed-stage` world (the `stage` world, plus batches
/// packed into flat lists, which the host calls instead). Use once per
/// component, at the crate root: `weir_sdk::export!(MyStage);`
#[macro_export]
macro_rules! export {
    ($ty:ty) => {
        const _: () = {
            struct __WeirStageExport;
            impl $crate::__private::bindings::exports::weir::pipeline::consumer::Guest for __WeirStageExport {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::init::<$ty>(config)
                }
                fn handle_batch(
                    batch: ::std::vec::Vec<$crate::Message>,
                ) -> ::std::vec::Vec<::std::result::Result<::std::vec::Vec<$crate::Output>, $crate::Failure>> {
                    $crate::__private::handle_batch::<$ty>(batch)
                }
                fn on_timers(
                    timers: ::std::vec::Vec<$crate::Timer>,
                ) -> ::std::vec::Vec<::std::result::Result<::std::vec::Vec<$crate::Output>, $crate::Failure>> {
                    $crate::__private::on_timers::<$ty>(timers)
                }
            }
            impl $crate::__private::bindings::exports::weir::pipeline::packed::Guest for __WeirStageExport {
                fn handle_batch(
                    batch: $crate::__private::bindings::weir::pipeline::types::PackedBatch,
                ) -> $crate::__private::bindings::weir::pipeline::types::PackedResults {
                    $crate::__private::packed::pack($crate::__private::handle_batch::<$ty>($crate::__private::packed::unpack(batch)))
                }
            }
            $crate::__private::bindings::__export_stage!(
                __WeirStageExport with_types_in $crate::__private::bindings
            );
        };
    };
}

#[doc(hidden)]
pub mod __private {
    use std::cell::RefCell;

    use super::{Config, Failure, Message, Output, Stage, Timer};

    pub use wit_bindgen;

    pub mod packed;

    #[allow(missing_docs, unsafe_op_in_unsafe_fn, clippy::all)]
    pub mod bindings {
        wit_bindgen::generate!({
            path: "../wit",
            world: "packed-stage",
            pub_export_macro: true,
            export_macro_name: "__export_stage",
            default_bindings_module: "weir_sdk::__private::bindings",
            runtime_path: "weir_sdk::__private::wit_bindgen::rt",
        });
    }

    thread_local! {
        // A component instance is single-threaded; this holds its stage value.
        static INSTANCE: RefCell<Option<Box<dyn std::any::Any>>> = const { RefCell::new(None) };
    }

    pub fn init<S: Stage>(config: Vec<(String, String)>) -> Result<(), String> {
        let stage = S::init(&Config::from(config))?;
        INSTANCE.with(|i| *i.borrow_mut() = Some(Box::new(stage)));
        Ok(())
    }

    pub fn handle_batch<S: Stage>(batch: Vec<Message>) -> Vec<Result<Vec<Output>, Failure>> {
        INSTANCE.with(|i| {
            let mut slot = i.borrow_mut();
            match slot.as_mut().and_then(|s| s.downcast_mut::<S>()) {
                Some(stage) => stage.handle_batch(batch),
                None => batch.iter().map(|_| Err(Failure::Reject("stage used before init".into()))).collect(),
            }
        })
    }

    pub fn on_timers<S: Stage>(timers: Vec<Timer>) -> Vec<Result<Vec<Output>, Failure>> {
        INSTANCE.with(|i| {
            let mut slot = i.borrow_mut();
            match slot.as_mut().and_then(|s| s.downcast_mut::<S>()) {
                Some(stage) => timers.into_iter().map(|t| stage.on_timer(t)).collect(),
                None => timers.iter().map(|_| Err(Failure::Reject("stage used before init".into()))).collect(),
            }
        })
    }
}
