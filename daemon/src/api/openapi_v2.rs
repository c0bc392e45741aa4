//! OpenAPI v2 (`/openapi/v2`): one Swagger 2.0 document for every served kind, in JSON or in
//! the protobuf form (`application/com.github.proto-openapi.spec.v2.v1.0+protobuf`, gnostic's
//! `openapi.v2.Document`) that client-go asks for exclusively. kubectl reads it for client-side
//! validation when a kind's OpenAPI v3 document does not claim `fieldValidation` (helm does the
//! same), for `kubectl explain --output=plaintext-openapiv2`, and to compute the strategic merge
//! patches of `kubectl apply`; for the last, the built-in schemas carry the
//! `x-kubernetes-patch-strategy`/`x-kubernetes-patch-merge-key` of the merge metadata the API
//! applies patches with, so a patch computed from this document merges as the server does.
//!
//! The schemas are the v3 ones rewritten as kube-apiserver writes v2: references
//! `#/definitions/NAME`, a described reference as `$ref` with its `description` (not `allOf`),
//! without `oneOf`/`anyOf`/`nullable`, which Swagger 2.0 lacks.
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use shoal_kube::Resource;

/// The media type of the protobuf form, as answered (Go's `mime` refuses the `@` of the form
/// clients ask for).
pub(crate) const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";
/// The older spelling client-go still asks for.
const PROTOBUF_ASKED: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";

/// Fields whose patch strategy also retains keys (`$retainKeys`), as the k8s.io/api tags say:
/// (type, field, strategy).
const RETAIN_KEYS: &[(&str, &str, &str)] = &[
    ("DeploymentSpec", "strategy", "retainKeys"),
    ("PodSpec", "volumes", "merge,retainKeys"),
    ("PodSpec", "resourceClaims", "merge,retainKeys"),
];

/// A v3 schema rewritten for v2.
fn v2_schema(v: &Value) -> Value {
    let Value::Object(m) = v else { return v.clone() };
    let mut out = Map::new();
    // A described reference: `{"allOf": [{"$ref": R}], "description": D}` becomes `{"$ref": R,
    // "description": D}`.
    if let Some(Value::Array(all)) = m.get("allOf") {
        if let [Value::Object(only)] = all.as_slice() {
            if let (1, Some(r)) = (only.len(), only.get("$ref")) {
                out.insert("$ref".into(), v2_ref(r));
                if let Some(d) = m.get("description") {
                    out.insert("description".into(), d.clone());
                }
                return Value::Object(out);
            }
        }
    }
    for (k, x) in m {
        match k.as_str() {
            "oneOf" | "anyOf" | "not" | "nullable" => {}
            "$ref" => {
                out.insert(k.clone(), v2_ref(x));
            }
            "properties" => {
                let props = x
                    .as_object()
                    .map(|p| p.iter().map(|(name, s)| (name.clone(), v2_schema(s))).collect::<Map<_, _>>())
                    .unwrap_or_default();
                out.insert(k.clone(), Value::Object(props));
            }
            "items" | "additionalProperties" if x.is_object() => {
                out.insert(k.clone(), v2_schema(x));
            }
            "allOf" => {
                out.insert(k.clone(), Value::Array(x.as_array().into_iter().flatten().map(v2_schema).collect()));
            }
            _ => {
                out.insert(k.clone(), x.clone());
            }
        }
    }
    Value::Object(out)
}

fn v2_ref(r: &Value) -> Value {
    match r.as_str() {
        Some(s) => json!(s.replace("#/components/schemas/", "#/definitions/")),
        None => r.clone(),
    }
}

/// Adds the patch strategies of the built-in type `name` (`io.k8s.api.core.v1.PodSpec`).
fn annotate(name: &str, schema: &mut Value) {
    let ty = name.rsplit('.').next().unwrap_or_default();
    let Some(Value::Object(props)) = schema.get_mut("properties") else { return };
    for (field, p) in props.iter_mut() {
        let Value::Object(p) = p else { continue };
        if let Some((_, _, strategy)) = RETAIN_KEYS.iter().find(|(t, f, _)| *t == ty && f == field) {
            p.insert("x-kubernetes-patch-strategy".into(), json!(strategy));
        }
        match shoal_kube::patch::list_strategy(ty, field) {
            Some(shoal_kube::patch::ListStrategy::MergeByKey(key)) => {
                p.entry("x-kubernetes-patch-strategy").or_insert_with(|| json!("merge"));
                p.insert("x-kubernetes-patch-merge-key".into(), json!(key));
            }
            Some(shoal_kube::patch::ListStrategy::MergePrimitives) => {
                p.entry("x-kubernetes-patch-strategy").or_insert_with(|| json!("merge"));
            }
            _ => {}
        }
    }
}

fn query_param(name: &str) -> Value {
    json!({"name": name, "in": "query", "type": "string", "uniqueItems": true})
}

fn operation(r: &Resource, action: &str, params: &[&str]) -> Value {
    let mut op = json!({
        "operationId": format!("{action}{}", r.kind),
        "consumes": ["*/*"],
        "produces": ["application/json", "application/yaml"],
        "schemes": ["https"],
        "tags": [if r.group.is_empty() { format!("core_{}", r.version) } else { format!("{}_{}", r.group, r.version) }],
        "parameters": params.iter().map(|p| query_param(p)).collect::<Vec<_>>(),
        "responses": {"200": {"description": "OK"}, "401": {"description": "Unauthorized"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
    });
    if action == "patch" {
        op["consumes"] = json!([
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/apply-patch+yaml"
        ]);
    }
    op
}

/// The whole v2 document for the served resources and the CRDs that define the custom ones.
pub(crate) fn document(resources: &[Resource], crds: &[Value]) -> Value {
    let kinds: Vec<&str> =
        resources.iter().filter_map(|r| shoal_kube::openapi::kind_schema(&r.group, &r.version, &r.kind)).collect();
    let mut definitions = Map::new();
    for (name, s) in shoal_kube::openapi::closure(kinds.iter().copied().chain([super::openapi::OBJECT_META])) {
        let mut s = v2_schema(&s);
        annotate(&name, &mut s);
        definitions.insert(name, s);
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in resources.iter().filter(|r| shoal_kube::openapi::kind_schema(&r.group, &r.version, &r.kind).is_none()) {
        if seen.insert((r.group.clone(), r.version.clone())) {
            for (name, s) in super::openapi::custom_schemas(crds, &r.group, &r.version) {
                definitions.insert(name, v2_schema(&s));
            }
        }
    }
    let mut paths = Map::new();
    for r in resources {
        super::openapi::insert_paths(&mut paths, r, false, operation);
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": super::KUBERNETES_VERSION},
        "paths": paths,
        "definitions": definitions,
    })
}

/// The document in JSON and in protobuf, and its ETag.
pub(crate) struct Encoded {
    pub json: bytes::Bytes,
    pub protobuf: bytes::Bytes,
    pub etag: String,
}

/// The document, built once per set of served resources and CRD schemas.
pub(crate) fn cached(resources: &[Resource], crds: &[Value]) -> Arc<Encoded> {
    type Slot = Option<(String, Arc<Encoded>)>;
    static CACHE: OnceLock<Mutex<Slot>> = OnceLock::new();
    let signature = format!("{resources:?}{}", Value::Array(crds.iter().map(|c| c["spec"].clone()).collect()));
    let cache = CACHE.get_or_init(Default::default);
    if let Ok(c) = cache.lock() {
        if let Some((sig, enc)) = c.as_ref() {
            if *sig == signature {
                return enc.clone();
            }
        }
    }
    let doc = document(resources, crds);
    let json = bytes::Bytes::from(doc.to_string());
    let etag = format!("\"{}\"", hex::encode_upper(Sha256::digest(&json)));
    let enc = Arc::new(Encoded { protobuf: bytes::Bytes::from(pb::document(&doc)), json, etag });
    if let Ok(mut c) = cache.lock() {
        *c = Some((signature, enc.clone()));
    }
    enc
}

/// Whether an `Accept` header asks for the protobuf form before JSON (client-go asks for it
/// alone).
pub(crate) fn wants_protobuf(accept: &str) -> bool {
    for part in accept.split(',') {
        let essence = part.split(';').next().unwrap_or_default().trim();
        if essence.eq_ignore_ascii_case(PROTOBUF) || essence.eq_ignore_ascii_case(PROTOBUF_ASKED) {
            return true;
        }
        if matches!(essence, "application/json" | "*/*" | "application/*") {
            return false;
        }
    }
    false
}

/// Protobuf encoding of the JSON document, with the field numbers of gnostic's
/// `openapiv2/OpenAPIv2.proto`. Only the parts this server writes are encoded.
mod pb {
    use serde_json::{Map, Value};

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
        varint(out, (u64::from(field) << 3) | u64::from(wire));
    }

    fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
        key(out, field, 2);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    fn string(out: &mut Vec<u8>, field: u32, v: Option<&Value>) {
        if let Some(s) = v.and_then(|v| v.as_str()).filter(|s| !s.is_empty()) {
            bytes(out, field, s.as_bytes());
        }
    }

    fn strings(out: &mut Vec<u8>, field: u32, v: Option<&Value>) {
        for s in v.and_then(|v| v.as_array()).into_iter().flatten().filter_map(|s| s.as_str()) {
            bytes(out, field, s.as_bytes());
        }
    }

    fn boolean(out: &mut Vec<u8>, field: u32, v: Option<&Value>) {
        if v.and_then(|v| v.as_bool()) == Some(true) {
            key(out, field, 0);
            out.push(1);
        }
    }

    fn int(out: &mut Vec<u8>, field: u32, v: Option<&Value>) {
        if let Some(n) = v.and_then(|v| v.as_i64()) {
            key(out, field, 0);
            varint(out, n as u64);
        }
    }

    fn double(out: &mut Vec<u8>, field: u32, v: Option<&Value>) {
        if let Some(n) = v.and_then(|v| v.as_f64()) {
            key(out, field, 1);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }

    fn message(out: &mut Vec<u8>, field: u32, body: Vec<u8>) {
        bytes(out, field, &body);
    }

    /// `Any {yaml = 2}`: the value as YAML text (JSON is YAML), as gnostic reads it.
    fn any(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        let text = match v {
            Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
            other => other.to_string(),
        };
        bytes(&mut out, 2, format!("{text}\n").as_bytes());
        out
    }

    /// `repeated NamedAny vendor_extension`: the `x-` keys of `m`.
    fn extensions(out: &mut Vec<u8>, field: u32, m: &Map<String, Value>) {
        for (k, v) in m.iter().filter(|(k, _)| k.starts_with("x-")) {
            let mut named = Vec::new();
            bytes(&mut named, 1, k.as_bytes());
            message(&mut named, 2, any(v));
            message(out, field, named);
        }
    }

    fn schema(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        let Value::Object(m) = v else { return out };
        string(&mut out, 1, m.get("$ref"));
        string(&mut out, 2, m.get("format"));
        string(&mut out, 3, m.get("title"));
        string(&mut out, 4, m.get("description"));
        if let Some(d) = m.get("default") {
            message(&mut out, 5, any(d));
        }
        double(&mut out, 6, m.get("multipleOf"));
        double(&mut out, 7, m.get("maximum"));
        boolean(&mut out, 8, m.get("exclusiveMaximum"));
        double(&mut out, 9, m.get("minimum"));
        boolean(&mut out, 10, m.get("exclusiveMinimum"));
        int(&mut out, 11, m.get("maxLength"));
        int(&mut out, 12, m.get("minLength"));
        string(&mut out, 13, m.get("pattern"));
        int(&mut out, 14, m.get("maxItems"));
        int(&mut out, 15, m.get("minItems"));
        boolean(&mut out, 16, m.get("uniqueItems"));
        int(&mut out, 17, m.get("maxProperties"));
        int(&mut out, 18, m.get("minProperties"));
        strings(&mut out, 19, m.get("required"));
        for e in m.get("enum").and_then(|e| e.as_array()).into_iter().flatten() {
            message(&mut out, 20, any(e));
        }
        match m.get("additionalProperties") {
            Some(Value::Bool(b)) => {
                let mut item = Vec::new();
                key(&mut item, 2, 0);
                item.push(u8::from(*b));
                message(&mut out, 21, item);
            }
            Some(s @ Value::Object(_)) => {
                let mut item = Vec::new();
                message(&mut item, 1, schema(s));
                message(&mut out, 21, item);
            }
            _ => {}
        }
        match m.get("type") {
            Some(Value::String(t)) => {
                let mut item = Vec::new();
                bytes(&mut item, 1, t.as_bytes());
                message(&mut out, 22, item);
            }
            Some(t @ Value::Array(_)) => {
                let mut item = Vec::new();
                strings(&mut item, 1, Some(t));
                message(&mut out, 22, item);
            }
            _ => {}
        }
        match m.get("items") {
            Some(s @ Value::Object(_)) => {
                let mut item = Vec::new();
                message(&mut item, 1, schema(s));
                message(&mut out, 23, item);
            }
            Some(Value::Array(a)) => {
                let mut item = Vec::new();
                a.iter().for_each(|s| message(&mut item, 1, schema(s)));
                message(&mut out, 23, item);
            }
            _ => {}
        }
        for s in m.get("allOf").and_then(|a| a.as_array()).into_iter().flatten() {
            message(&mut out, 24, schema(s));
        }
        if let Some(Value::Object(props)) = m.get("properties") {
            let mut p = Vec::new();
            for (name, s) in props {
                let mut named = Vec::new();
                bytes(&mut named, 1, name.as_bytes());
                message(&mut named, 2, schema(s));
                message(&mut p, 1, named);
            }
            message(&mut out, 25, p);
        }
        boolean(&mut out, 27, m.get("readOnly"));
        if let Some(e) = m.get("example") {
            message(&mut out, 30, any(e));
        }
        extensions(&mut out, 31, m);
        out
    }

    /// `ParametersItem { parameter = 1: Parameter { non_body_parameter = 2: NonBodyParameter {
    /// query_parameter_sub_schema = 3 } } }`.
    fn parameter(p: &Value) -> Vec<u8> {
        let mut q = Vec::new();
        boolean(&mut q, 1, p.get("required"));
        string(&mut q, 2, p.get("in"));
        string(&mut q, 3, p.get("description"));
        string(&mut q, 4, p.get("name"));
        string(&mut q, 6, p.get("type"));
        boolean(&mut q, 20, p.get("uniqueItems"));
        let mut non_body = Vec::new();
        message(&mut non_body, 3, q);
        let mut param = Vec::new();
        message(&mut param, 2, non_body);
        let mut item = Vec::new();
        message(&mut item, 1, param);
        item
    }

    fn operation(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        let Value::Object(m) = v else { return out };
        strings(&mut out, 1, m.get("tags"));
        string(&mut out, 2, m.get("summary"));
        string(&mut out, 3, m.get("description"));
        string(&mut out, 5, m.get("operationId"));
        strings(&mut out, 6, m.get("produces"));
        strings(&mut out, 7, m.get("consumes"));
        for p in m.get("parameters").and_then(|p| p.as_array()).into_iter().flatten() {
            message(&mut out, 8, parameter(p));
        }
        if let Some(Value::Object(codes)) = m.get("responses") {
            let mut responses = Vec::new();
            for (code, r) in codes {
                let mut response = Vec::new();
                string(&mut response, 1, r.get("description"));
                let mut value = Vec::new();
                message(&mut value, 1, response);
                let mut named = Vec::new();
                bytes(&mut named, 1, code.as_bytes());
                message(&mut named, 2, value);
                message(&mut responses, 1, named);
            }
            message(&mut out, 9, responses);
        }
        strings(&mut out, 10, m.get("schemes"));
        extensions(&mut out, 13, m);
        out
    }

    /// The whole `openapi.v2.Document`.
    pub(super) fn document(doc: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        string(&mut out, 1, doc.get("swagger"));
        let mut info = Vec::new();
        string(&mut info, 1, doc["info"].get("title"));
        string(&mut info, 2, doc["info"].get("version"));
        message(&mut out, 2, info);
        if let Some(Value::Object(paths)) = doc.get("paths") {
            let mut p = Vec::new();
            for (path, item) in paths {
                let mut pi = Vec::new();
                for (verb, field) in [("get", 2), ("put", 3), ("post", 4), ("delete", 5), ("patch", 8)] {
                    if let Some(op) = item.get(verb) {
                        message(&mut pi, field, operation(op));
                    }
                }
                let mut named = Vec::new();
                bytes(&mut named, 1, path.as_bytes());
                message(&mut named, 2, pi);
                message(&mut p, 2, named);
            }
            message(&mut out, 8, p);
        }
        if let Some(Value::Object(defs)) = doc.get("definitions") {
            let mut d = Vec::new();
            for (name, s) in defs {
                let mut named = Vec::new();
                bytes(&mut named, 1, name.as_bytes());
                message(&mut named, 2, schema(s));
                message(&mut d, 1, named);
            }
            message(&mut out, 9, d);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        document(&shoal_kube::resources::builtin(), &[])
    }

    #[test]
    fn references_are_definitions_and_resolve() {
        let d = doc();
        let defs = d["definitions"].as_object().unwrap();
        let text = d.to_string();
        assert!(!text.contains("#/components/schemas/"));
        let mut i = 0;
        while let Some(at) = text[i..].find("\"$ref\":\"#/definitions/") {
            let start = i + at + "\"$ref\":\"#/definitions/".len();
            let end = start + text[start..].find('"').unwrap();
            assert!(defs.contains_key(&text[start..end]), "{} is referenced but missing", &text[start..end]);
            i = end;
        }
        let spec = &defs["io.k8s.api.apps.v1.DeploymentSpec"];
        assert_eq!(spec["properties"]["template"]["$ref"], "#/definitions/io.k8s.api.core.v1.PodTemplateSpec");
        assert!(spec["properties"]["template"]["description"].is_string());
        assert!(spec["properties"]["template"].get("allOf").is_none());
        assert_eq!(defs["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"][0]["kind"], "Deployment");
        // Every array has one item schema (kubectl refuses the whole document otherwise).
        fn arrays(v: &Value) {
            match v {
                Value::Object(m) => {
                    if m.get("type") == Some(&json!("array")) {
                        assert!(m["items"].is_object(), "{v}");
                    }
                    m.values().for_each(arrays);
                }
                Value::Array(a) => a.iter().for_each(arrays),
                _ => {}
            }
        }
        defs.values().for_each(arrays);
    }

    #[test]
    fn merge_keys_are_those_the_server_merges_with() {
        let d = doc();
        let pod = &d["definitions"]["io.k8s.api.core.v1.PodSpec"]["properties"];
        assert_eq!(pod["containers"]["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(pod["containers"]["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(pod["volumes"]["x-kubernetes-patch-strategy"], "merge,retainKeys");
        assert!(pod["tolerations"].get("x-kubernetes-patch-strategy").is_none());
        let c = &d["definitions"]["io.k8s.api.core.v1.Container"]["properties"];
        assert_eq!(c["env"]["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(c["ports"]["x-kubernetes-patch-merge-key"], "containerPort");
        let meta = &d["definitions"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"];
        assert_eq!(meta["finalizers"]["x-kubernetes-patch-strategy"], "merge");
        let strategy = &d["definitions"]["io.k8s.api.apps.v1.DeploymentSpec"]["properties"]["strategy"];
        assert_eq!(strategy["x-kubernetes-patch-strategy"], "retainKeys");
    }

    #[test]
    fn custom_kinds_and_patch_operations() {
        let crd = json!({"spec": {"group": "example.com", "names": {"kind": "Widget", "plural": "widgets"},
            "scope": "Namespaced", "versions": [{"name": "v1", "served": true, "storage": true,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object",
                "properties": {"size": {"type": "integer"}}}}}}}]}});
        let mut all = shoal_kube::resources::builtin();
        all.extend(super::super::registry::crd_resources(&crd));
        let d = document(&all, &[crd]);
        let w = &d["definitions"]["com.example.v1.Widget"];
        assert_eq!(w["properties"]["spec"]["properties"]["size"]["type"], "integer");
        assert_eq!(
            w["properties"]["metadata"]["$ref"],
            "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
        let patch = &d["paths"]["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Widget");
        assert!(patch["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation"));
    }

    #[test]
    fn protobuf_is_asked_for_by_client_go_only() {
        assert!(wants_protobuf(PROTOBUF));
        assert!(wants_protobuf(PROTOBUF_ASKED));
        assert!(wants_protobuf(&format!("{PROTOBUF}, application/json")));
        assert!(!wants_protobuf("application/json"));
        assert!(!wants_protobuf(""));
        assert!(!wants_protobuf("*/*"));
    }

    #[test]
    fn protobuf_encodes_the_document() {
        let enc = cached(&shoal_kube::resources::builtin(), &[]);
        let p = &enc.protobuf;
        // Document.swagger = 1: "2.0".
        assert_eq!(&p[..5], b"\x0a\x032.0");
        // Field 8 (paths) and 9 (definitions) are present as length-delimited fields.
        let text = String::from_utf8_lossy(p);
        assert!(text.contains("io.k8s.api.core.v1.PodSpec"));
        assert!(text.contains("x-kubernetes-patch-merge-key"));
        assert!(text.contains("/apis/apps/v1/namespaces/{namespace}/deployments/{name}"));
        assert!(p.len() > 100_000, "{}", p.len());
    }
}
