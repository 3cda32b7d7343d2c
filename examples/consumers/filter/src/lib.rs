//! Drops messages whose payload contains a configured string.
//!
//! ```toml
//! [stage.config]
//! drop_if_contains = "debug"   # required
//! ignore_case = "true"         # optional, default false
//! ```

use memchr::memmem::Finder;
use weir_sdk::{Config, Failure, Message, Output, Stage};

struct Filter {
    /// The needle, lower-cased when `ignore_case`.
    needle: Finder<'static>,
    ignore_case: bool,
}

impl Stage for Filter {
    fn init(config: &Config) -> Result<Self, String> {
        let needle = config.require("drop_if_contains")?;
        if needle.is_empty() {
            return Err("config key `drop_if_contains` must not be empty".into());
        }
        let ignore_case = config.parse::<bool>("ignore_case")?.unwrap_or(false);
        let needle = if ignore_case { needle.to_lowercase() } else { needle.to_owned() };
        Ok(Filter { needle: Finder::new(needle.as_bytes()).into_owned(), ignore_case })
    }

    fn handle(&mut self, msg: Message) -> Result<Vec<Output>, Failure> {
        // The needle is UTF-8, so finding its bytes in the payload is finding
        // it in the payload's text (invalid bytes never swallow valid ones).
        let matched = if self.ignore_case {
            self.needle.find(String::from_utf8_lossy(&msg.payload).to_lowercase().as_bytes()).is_some()
        } else {
            self.needle.find(&msg.payload).is_some()
        };
        if matched {
            weir_sdk::counter_add("dropped", 1);
            Ok(vec![])
        } else {
            Ok(vec![Output::forward(msg)])
        }
    }
}

weir_sdk::export!(Filter);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::Harness;

    #[test]
    fn drops_matches_and_counts_them() {
        let mut h = Harness::<Filter>::new(&[("drop_if_contains", "debug")]).unwrap();
        let out = h.handle_batch(vec![Message::new("keep me"), Message::new("a debug line")]);
        assert_eq!(out[0].as_ref().unwrap().len(), 1);
        assert!(out[1].as_ref().unwrap().is_empty());
        assert_eq!(h.counter("dropped"), 1);
    }

    #[test]
    fn finds_the_needle_beside_bytes_that_are_not_utf8() {
        let mut h = Harness::<Filter>::new(&[("drop_if_contains", "debug")]).unwrap();
        assert!(h.handle(Message::new(&b"\xe2debug\xff"[..])).unwrap().is_empty());
        assert_eq!(h.handle(Message::new(&b"\xe2deb\xffug"[..])).unwrap().len(), 1);
    }

    #[test]
    fn ignore_case() {
        let mut h = Harness::<Filter>::new(&[("drop_if_contains", "DEBUG"), ("ignore_case", "true")]).unwrap();
        assert!(h.handle(Message::new("debug")).unwrap().is_empty());
    }

    #[test]
    fn config_errors_are_clear() {
        assert_eq!(Harness::<Filter>::new(&[]).err().unwrap(), "missing config key `drop_if_contains`");
        let err = Harness::<Filter>::new(&[("drop_if_contains", "x"), ("ignore_case", "maybe")]).err().unwrap();
        assert!(err.contains("ignore_case"), "{err}");
    }
}
