//! Secrets: `stringData` is folded into base64 `data`; `type` defaults to Opaque.
use base64::Engine;
use serde_json::{json, Value};

use super::status::Cause;

pub(crate) fn admit(obj: &mut Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if let Some(string_data) = obj.as_object_mut().and_then(|o| o.remove("stringData")) {
        if let Some(sd) = string_data.as_object() {
            if !obj["data"].is_object() {
                obj["data"] = json!({});
            }
            for (k, v) in sd {
                let s = v.as_str().unwrap_or_default();
                obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(s.as_bytes()));
            }
        }
    }
    if obj["type"].is_null() {
        obj["type"] = json!("Opaque");
    }
    if let Some(data) = obj["data"].as_object() {
        for (k, v) in data {
            let ok = v.as_str().is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok());
            if !ok {
                causes.push(Cause::invalid(&format!("data[{k}]"), "", "must be base64 encoded"));
            }
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_data_becomes_data() {
        let mut s = json!({"stringData": {"pw": "hunter2"}, "data": {"a": "eA=="}});
        assert!(admit(&mut s).is_empty());
        assert_eq!(s["data"]["pw"], "aHVudGVyMg==");
        assert_eq!(s["data"]["a"], "eA==");
        assert!(s.get("stringData").is_none());
        assert_eq!(s["type"], "Opaque");
    }
}
