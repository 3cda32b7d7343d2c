//! Counts messages per key in durable stage state and emits `key=count`.
//!
//! The key is the message key, or the payload when there is none. State is
//! committed with the acknowledgements, so after any crash each key's counts
//! go 1, 2, 3 … with none skipped and none counted twice (an output may be
//! repeated: outputs are at-least-once, state is exactly-once).
//!
//! ```toml
//! [stage.config]
//! retry_every = "7"   # optional: ask to retry a message on its first attempt
//!                     # whenever its count is a multiple of 7 (to exercise retries)
//! ```

use weir_sdk::{Config, Failure, Message, Output, Stage, state};

struct Count {
    retry_every: Option<u64>,
}

impl Stage for Count {
    fn init(config: &Config) -> Result<Self, String> {
        let retry_every = config.parse::<u64>("retry_every")?;
        if retry_every == Some(0) {
            return Err("config key `retry_every` must be > 0".into());
        }
        Ok(Count { retry_every })
    }

    fn handle(&mut self, msg: Message) -> Result<Vec<Output>, Failure> {
        let key = msg.key.clone().unwrap_or_else(|| msg.payload.clone());
        let count = match state::get(&key) {
            Some(v) => u64::from_le_bytes(v.try_into().map_err(|_| Failure::Reject("corrupt counter".into()))?) + 1,
            None => 1,
        };
        // Written before deciding to retry: the host must discard it.
        state::put(&key, &count.to_le_bytes());
        if msg.attempt == 1 && self.retry_every.is_some_and(|n| count % n == 0) {
            return Err(Failure::Retry(format!("count {count} asks for a retry")));
        }
        let mut text = key;
        text.extend_from_slice(format!("={count}").as_bytes());
        Ok(vec![Output::new(text)])
    }
}

weir_sdk::export!(Count);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::Harness;

    #[test]
    fn counts_per_key() {
        let mut h = Harness::<Count>::new(&[]).unwrap();
        let out = h.handle_batch(vec![Message::new("a"), Message::new("b"), Message::new("a")]);
        let texts: Vec<String> = out.into_iter().map(|r| String::from_utf8(r.unwrap()[0].payload.clone()).unwrap()).collect();
        assert_eq!(texts, ["a=1", "b=1", "a=2"]);
        assert_eq!(h.state(b"a"), Some(2u64.to_le_bytes().to_vec()));
    }

    #[test]
    fn retry_every_fails_first_attempts_only() {
        let mut h = Harness::<Count>::new(&[("retry_every", "2")]).unwrap();
        assert!(h.handle(Message::new("a")).is_ok());
        assert!(matches!(h.handle(Message::new("a")), Err(Failure::Retry(_))));
        assert_eq!(h.state(b"a"), Some(1u64.to_le_bytes().to_vec()), "a retried call's writes are undone");
        let mut again = Message::new("a");
        again.attempt = 2;
        assert_eq!(h.handle(again).unwrap()[0].payload, b"a=2");
        assert_eq!(Harness::<Count>::new(&[("retry_every", "0")]).err().unwrap(), "config key `retry_every` must be > 0");
    }
}
