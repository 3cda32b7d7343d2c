//! Parses each payload as a JSON object: a message that is not one is
//! rejected (to the dead-letter topic, with the parser's reason). The object
//! is passed on in compact form, keyed by one of its fields when asked.
//!
//! ```toml
//! [stage.config]
//! key_field = "user"     # optional: the output key is this field's value
//! require = "user,level" # optional: comma-separated fields that must exist
//! ```

use weir_sdk::{Config, Failure, Message, Output, Stage};

struct JsonParse {
    key_field: Option<String>,
    require: Vec<String>,
}

impl Stage for JsonParse {
    fn init(config: &Config) -> Result<Self, String> {
        let require = config.get("require").map(|r| r.split(',').map(|f| f.trim().to_owned()).filter(|f| !f.is_empty()).collect());
        Ok(JsonParse { key_field: config.get("key_field").map(str::to_owned), require: require.unwrap_or_default() })
    }

    fn handle(&mut self, msg: Message) -> Result<Vec<Output>, Failure> {
        let value: serde_json::Value =
            serde_json::from_slice(&msg.payload).map_err(|e| Failure::Reject(format!("payload is not JSON: {e}")))?;
        let Some(obj) = value.as_object() else { return Err(Failure::Reject("payload is not a JSON object".into())) };
        if let Some(missing) = self.require.iter().find(|f| !obj.contains_key(*f)) {
            return Err(Failure::Reject(format!("field `{missing}` is missing")));
        }
        let mut out = Output::reply(&msg, serde_json::to_vec(&value).expect("a parsed value serializes"));
        if let Some(field) = &self.key_field {
            out.key = obj.get(field).map(|v| match v {
                serde_json::Value::String(s) => s.clone().into_bytes(),
                other => other.to_string().into_bytes(),
            });
        }
        Ok(vec![out])
    }
}

weir_sdk::export!(JsonParse);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::Harness;

    #[test]
    fn parses_keys_and_rejects() {
        let mut h = Harness::<JsonParse>::new(&[("key_field", "user"), ("require", "user")]).unwrap();
        let out = h.handle(Message::new(r#"{ "user": "ada", "n": 1 }"#)).unwrap();
        assert_eq!(out[0].payload, br#"{"n":1,"user":"ada"}"#);
        assert_eq!(out[0].key.as_deref(), Some(&b"ada"[..]));
        for (bad, why) in [("nope", "not JSON"), ("[1]", "not a JSON object"), (r#"{"n":1}"#, "`user` is missing")] {
            match h.handle(Message::new(bad)) {
                Err(Failure::Reject(r)) => assert!(r.contains(why), "{r}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
