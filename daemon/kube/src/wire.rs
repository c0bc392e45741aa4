//! JSON as kube-apiserver writes it: objects start with `kind`, `apiVersion`, `metadata` (then
//! `spec`, `status` and the rest), a `Status` keeps Go's field order (`status`, `message`,
//! `reason`, `details`, `code`), a watch event is `type` then `object`. serde_json's maps are
//! sorted by key, so without this every response would start with `apiVersion`; clients and
//! tests that compare bodies as text see the order of kube-apiserver instead.
//!
//! Only the order of the keys in a map changes; no value is copied.
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Value};

/// The first keys of an object (a map with `metadata`, or with both `kind` and `apiVersion`).
const OBJECT: &[&str] = &["kind", "apiVersion", "metadata", "spec", "status"];
/// The first keys of a `Status` (metav1.Status's field order).
const STATUS: &[&str] = &["kind", "apiVersion", "metadata", "status", "message", "reason", "details", "code"];
/// StatusDetails and StatusCause.
const DETAILS: &[&str] = &["name", "group", "kind", "uid", "causes", "retryAfterSeconds"];
const CAUSE: &[&str] = &["reason", "message", "field"];
/// ObjectMeta's field order.
const META: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];
/// A watch event.
const EVENT: &[&str] = &["type", "object"];

/// What a map is, which decides the order of its keys and of the maps inside it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Any,
    Meta,
    Details,
    Causes,
}

/// `v` written in kube-apiserver's field order.
pub fn to_vec(v: &Value) -> Vec<u8> {
    // Writing a Value to memory cannot fail: every key is a string.
    serde_json::to_vec(&Ordered(v, Shape::Any)).unwrap_or_default()
}

/// Appends `v`, in kube-apiserver's field order, to `buf` (a streamed list's items).
pub fn extend(buf: &mut Vec<u8>, v: &Value) {
    if serde_json::to_writer(&mut *buf, &Ordered(v, Shape::Any)).is_err() {
        buf.extend_from_slice(b"null");
    }
}

struct Ordered<'a>(&'a Value, Shape);

fn first_keys(m: &Map<String, Value>, shape: Shape) -> &'static [&'static str] {
    match shape {
        Shape::Meta => META,
        Shape::Details => DETAILS,
        Shape::Causes => CAUSE,
        Shape::Any if m.contains_key("metadata") || (m.contains_key("kind") && m.contains_key("apiVersion")) => {
            if m.get("kind").and_then(Value::as_str) == Some("Status") {
                STATUS
            } else {
                OBJECT
            }
        }
        Shape::Any if m.len() == 2 && m.contains_key("type") && m.contains_key("object") => EVENT,
        Shape::Any => &[],
    }
}

impl Serialize for Ordered<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(m) => {
                let first = first_keys(m, self.1);
                let status = self.1 == Shape::Any && first.len() == STATUS.len() && first == STATUS;
                let object = first.len() >= 3 && first[2] == "metadata";
                let inner = |k: &str| match (status, self.1, k) {
                    (true, _, "details") => Shape::Details,
                    (_, Shape::Any, "metadata") if object => Shape::Meta,
                    (_, Shape::Details, "causes") => Shape::Causes,
                    _ => Shape::Any,
                };
                let mut map = s.serialize_map(Some(m.len()))?;
                for k in first {
                    if let Some(v) = m.get(*k) {
                        map.serialize_entry(k, &Ordered(v, inner(k)))?;
                    }
                }
                for (k, v) in m.iter().filter(|(k, _)| !first.contains(&k.as_str())) {
                    map.serialize_entry(k, &Ordered(v, inner(k)))?;
                }
                map.end()
            }
            Value::Array(items) => {
                // The items of `causes` are causes; any other list's items are maps of any kind.
                let shape = if self.1 == Shape::Causes { Shape::Causes } else { Shape::Any };
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(&Ordered(v, shape))?;
                }
                seq.end()
            }
            other => other.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(v: Value) -> String {
        String::from_utf8(to_vec(&v)).unwrap()
    }

    #[test]
    fn objects_lists_statuses_and_events_in_upstream_order() {
        let pod = json!({"apiVersion": "v1", "status": {"phase": "Running"}, "spec": {"b": 1, "a": 2}, "metadata": {"uid": "u", "labels": {"b": "1", "a": "2"}, "name": "p"}, "kind": "Pod"});
        assert_eq!(
            text(pod.clone()),
            r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p","uid":"u","labels":{"a":"2","b":"1"}},"spec":{"a":2,"b":1},"status":{"phase":"Running"}}"#
        );
        let list = json!({"apiVersion": "v1", "items": [pod.clone()], "kind": "PodList", "metadata": {"resourceVersion": "3"}});
        assert!(text(list).starts_with(r#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"3"},"items":[{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p""#));
        let status = json!({"apiVersion": "v1", "code": 422, "details": {"causes": [{"field": "spec", "message": "m", "reason": "FieldValueInvalid"}], "kind": "pods", "name": "p"}, "kind": "Status", "message": "bad", "metadata": {}, "reason": "Invalid", "status": "Failure"});
        assert_eq!(
            text(status),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"bad","reason":"Invalid","details":{"name":"p","kind":"pods","causes":[{"reason":"FieldValueInvalid","message":"m","field":"spec"}]},"code":422}"#
        );
        let event = json!({"object": pod, "type": "ADDED"});
        assert!(text(event).starts_with(r#"{"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata""#));
        // Maps that are no objects keep the sorted order; scalars and odd shapes pass through.
        assert_eq!(text(json!({"b": [1, "x", null], "a": {"kind": "k"}})), r#"{"a":{"kind":"k"},"b":[1,"x",null]}"#);
        assert_eq!(text(json!("s")), r#""s""#);
    }
}
