//! Upper-cases text payloads. Payloads that are not UTF-8 are rejected (they go
//! to the dead-letter topic), since retrying them can never succeed.

use weir_sdk::{Config, Failure, Message, Output, Stage};

struct Uppercase;

impl Stage for Uppercase {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Uppercase)
    }

    fn handle(&mut self, msg: Message) -> Result<Vec<Output>, Failure> {
        let upper = msg.text()?.to_uppercase();
        Ok(vec![Output::reply(&msg, upper)])
    }
}

weir_sdk::export!(Uppercase);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::Harness;

    #[test]
    fn uppercases_text() {
        let mut h = Harness::<Uppercase>::new(&[]).unwrap();
        assert_eq!(h.handle(Message::new("Hello World!")).unwrap()[0].payload, b"HELLO WORLD!");
    }

    #[test]
    fn rejects_binary() {
        let mut h = Harness::<Uppercase>::new(&[]).unwrap();
        assert!(matches!(h.handle(Message::new(vec![0xff, 0xfe])), Err(Failure::Reject(_))));
    }
}
