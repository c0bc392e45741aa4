//! The OpenAPI v3 schemas of the built-in kinds (what `kubectl explain` prints), generated from
//! k8s-openapi's schema descriptions by `openapi-gen/` into `openapi/schemas.json.gz`: one map
//! from schema name (`io.k8s.api.apps.v1.DeploymentSpec`) to schema, references written as
//! `#/components/schemas/<name>`, kinds tagged with `x-kubernetes-group-version-kind`.
//!
//! The schemas carry no strategic-merge annotations (`x-kubernetes-patch-merge-key`), so the
//! API does not claim strategic merge patches in its OpenAPI documents and kubectl computes
//! them from its compiled-in types, as it does without schemas.
use std::collections::BTreeSet;
use std::io::Read;
use std::sync::OnceLock;

use serde_json::{Map, Value};

static SCHEMAS_GZ: &[u8] = include_bytes!("../openapi/schemas.json.gz");

/// Every schema by name (decompressed on first use; empty if the embedded data is unreadable,
/// which the tests rule out).
pub fn schemas() -> &'static Map<String, Value> {
    static SCHEMAS: OnceLock<Map<String, Value>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let mut text = Vec::new();
        let read = flate2::read::GzDecoder::new(SCHEMAS_GZ).read_to_end(&mut text);
        match read.ok().and_then(|_| serde_json::from_slice::<Map<String, Value>>(&text).ok()) {
            Some(m) => m,
            None => {
                tracing::error!("embedded openapi schemas are unreadable");
                Map::new()
            }
        }
    })
}

/// The name of the schema of a kind (`None` for kinds without one, such as custom resources).
pub fn kind_schema(group: &str, version: &str, kind: &str) -> Option<&'static str> {
    schemas().iter().find_map(|(name, s)| {
        let tagged = s["x-kubernetes-group-version-kind"].as_array()?.iter().any(|g| {
            g["group"].as_str() == Some(group)
                && g["version"].as_str() == Some(version)
                && g["kind"].as_str() == Some(kind)
        });
        tagged.then_some(name.as_str())
    })
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                if let Some(name) = r.strip_prefix("#/components/schemas/") {
                    out.push(name.to_string());
                }
            }
            m.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

/// The named schemas and every schema they reference, transitively.
pub fn closure<'a>(roots: impl IntoIterator<Item = &'a str>) -> Map<String, Value> {
    let all = schemas();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut todo: Vec<String> = roots.into_iter().map(String::from).collect();
    let mut out = Map::new();
    while let Some(name) = todo.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        if let Some(s) = all.get(&name) {
            refs(s, &mut todo);
            out.insert(name, s.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_kind_has_a_schema_and_its_references_resolve() {
        for r in crate::resources::builtin() {
            let name = kind_schema(&r.group, &r.version, &r.kind);
            assert!(name.is_some(), "{}/{} {}", r.group, r.version, r.kind);
            let docs = closure(name);
            let mut wanted = Vec::new();
            docs.values().for_each(|s| refs(s, &mut wanted));
            for w in wanted {
                assert!(docs.contains_key(&w), "{} references {w}, which is missing", r.kind);
            }
        }
        let spec = &schemas()["io.k8s.api.apps.v1.DeploymentSpec"];
        assert_eq!(spec["properties"]["replicas"]["type"], "integer");
        assert!(spec["properties"]["template"]["allOf"][0]["$ref"].as_str().unwrap().ends_with("PodTemplateSpec"));
    }
}
