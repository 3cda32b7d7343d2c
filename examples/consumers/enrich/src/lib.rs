//! Adds fields to JSON objects: every `[stage.config]` entry becomes a string
//! field (overwriting one of the same name), and `processed_by` names the
//! stage's source position, so the output says where it came from.
//!
//! ```toml
//! [stage.config]
//! region = "eu-west"
//! team = "payments"
//! ```

use weir_sdk::{Config, Failure, Message, Output, Stage};

struct Enrich {
    fields: Vec<(String, String)>,
}

impl Stage for Enrich {
    fn init(config: &Config) -> Result<Self, String> {
        Ok(Enrich { fields: config.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect() })
    }

    fn handle(&mut self, msg: Message) -> Result<Vec<Output>, Failure> {
        let mut value: serde_json::Value =
            serde_json::from_slice(&msg.payload).map_err(|e| Failure::Reject(format!("payload is not JSON: {e}")))?;
        let Some(obj) = value.as_object_mut() else { return Err(Failure::Reject("payload is not a JSON object".into())) };
        for (k, v) in &self.fields {
            obj.insert(k.clone(), serde_json::Value::String(v.clone()));
        }
        obj.insert("processed_by".into(), format!("{}/{}@{}", msg.topic, msg.partition, msg.offset).into());
        Ok(vec![Output::reply(&msg, serde_json::to_vec(&value).expect("a JSON value serializes"))])
    }
}

weir_sdk::export!(Enrich);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::Harness;

    #[test]
    fn adds_the_configured_fields() {
        let mut h = Harness::<Enrich>::new(&[("region", "eu")]).unwrap();
        let out = h.handle(Message::new(r#"{"n":1}"#)).unwrap();
        assert_eq!(out[0].payload, br#"{"n":1,"processed_by":"test/0@0","region":"eu"}"#);
    }
}
