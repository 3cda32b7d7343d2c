//! The smallest stage: logs each message through the host and passes it on.

use weir_sdk::{Config, Failure, Level, Message, Output, Stage};

struct Hello;

impl Stage for Hello {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Hello)
    }

    fn handle(&mut self, msg: Message) -> Result<Vec<Output>, Failure> {
        weir_sdk::log(
            Level::Info,
            &format!("received {} from {}/{}@{}", String::from_utf8_lossy(&msg.payload), msg.topic, msg.partition, msg.offset),
        );
        Ok(vec![Output::forward(msg)])
    }
}

weir_sdk::export!(Hello);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::Harness;

    #[test]
    fn passes_through_and_logs() {
        let mut h = Harness::<Hello>::new(&[]).unwrap();
        let out = h.handle(Message::new("Hello World!").with_key("k")).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].payload, b"Hello World!");
        assert_eq!(out[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(h.logs().len(), 1);
        assert!(h.logs()[0].1.contains("Hello World!"));
    }
}
