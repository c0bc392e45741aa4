//! OpenAPI v3: one document per served group/version. Its PATCH operations carry
//! `x-kubernetes-group-version-kind` and the `fieldValidation` query parameter, which is what
//! kubectl checks before it relies on server-side validation (`--validate=strict`); its
//! `components.schemas` hold the schemas of the built-in kinds of the group/version and of
//! everything they reference (what `kubectl explain` walks). A custom kind's schema is its CRD's
//! `openAPIV3Schema` for that version, named and completed as upstream does (the group reversed:
//! `io.metallb.v1beta1.IPAddressPool`, with `apiVersion`, `kind` and `metadata` added).
//!
//! Strategic merge patch is not listed among the PATCH content types: the schemas lack the
//! merge-key annotations, and without the claim kubectl computes strategic merge patches from
//! its compiled-in types, with the merge keys of k8s.io/api.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use shoal_kube::Resource;

/// Group/versions as OpenAPI v3 names them: "api/v1", "apis/apps/v1".
fn gv_path(r: &Resource) -> String {
    if r.group.is_empty() {
        format!("api/{}", r.version)
    } else {
        format!("apis/{}/{}", r.group, r.version)
    }
}

fn query_param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn gvk(r: &Resource) -> Value {
    json!({"group": r.group, "version": r.version, "kind": r.kind})
}

fn operation(r: &Resource, action: &str, params: &[&str]) -> Value {
    let mut op = json!({
        "operationId": format!("{action}{}", r.kind),
        "parameters": params.iter().map(|p| query_param(p)).collect::<Vec<_>>(),
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(r),
    });
    if action == "patch" {
        let mut content = Map::new();
        let types = ["application/apply-patch+yaml", "application/json-patch+json", "application/merge-patch+json"];
        for t in types {
            content.insert(t.into(), json!({"schema": {"type": "object"}}));
        }
        op["requestBody"] = json!({"content": content, "required": true});
    }
    op
}

/// The paths of one resource (collection, object and, with `subresources`, its status and
/// scale), each verb's operation built by the document's own `operation` (v2 and v3 differ
/// there, not in the table).
pub(crate) fn insert_paths(
    paths: &mut Map<String, Value>,
    r: &Resource,
    subresources: bool,
    operation: fn(&Resource, &str, &[&str]) -> Value,
) {
    let base = format!("/{}", gv_path(r));
    let coll = if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{base}/{}", r.plural)
    };
    const WRITE: &[&str] = &["dryRun", "fieldManager", "fieldValidation"];
    const PATCH: &[&str] = &["dryRun", "fieldManager", "fieldValidation", "force"];
    paths.insert(
        coll.clone(),
        json!({
            "get": operation(r, "list", &["labelSelector", "fieldSelector", "watch"]),
            "post": operation(r, "post", WRITE),
            "delete": operation(r, "deletecollection", &["labelSelector", "fieldSelector"]),
        }),
    );
    paths.insert(
        format!("{coll}/{{name}}"),
        json!({
            "get": operation(r, "get", &[]),
            "put": operation(r, "put", WRITE),
            "patch": operation(r, "patch", PATCH),
            "delete": operation(r, "delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy"]),
        }),
    );
    if !subresources {
        return;
    }
    for sub in r.subresources.iter().filter(|s| *s == "status" || *s == "scale") {
        paths.insert(
            format!("{coll}/{{name}}/{sub}"),
            json!({
                "get": operation(r, "get", &[]),
                "put": operation(r, "put", WRITE),
                "patch": operation(r, "patch", PATCH),
            }),
        );
    }
}

pub(crate) const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// The schema name upstream gives a custom kind: the group's labels reversed, then version and
/// kind.
fn custom_schema_name(group: &str, version: &str, kind: &str) -> String {
    let mut parts: Vec<&str> = group.split('.').rev().collect();
    parts.push(version);
    parts.push(kind);
    parts.join(".")
}

/// The schemas of the custom kinds that `crds` define at one group/version: each served
/// version's `openAPIV3Schema`, tagged with its group/version/kind and given the `apiVersion`,
/// `kind` and `metadata` properties every object has. Empty for built-in group/versions.
pub(crate) fn custom_schemas(crds: &[Value], group: &str, version: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let builtin = shoal_kube::openapi::schemas();
    let string_property = |name: &str| -> Value {
        builtin
            .get("io.k8s.api.core.v1.ConfigMap")
            .map(|s| s["properties"][name].clone())
            .filter(|p| p.is_object())
            .unwrap_or_else(|| json!({"type": "string"}))
    };
    for crd in crds {
        let spec = &crd["spec"];
        let (Some(g), Some(kind)) = (spec["group"].as_str(), spec["names"]["kind"].as_str()) else { continue };
        if g != group {
            continue;
        }
        let versions = spec["versions"].as_array().into_iter().flatten();
        let Some(v) = versions.filter(|v| v["served"].as_bool() != Some(false)).find(|v| v["name"] == version) else {
            continue;
        };
        let mut schema = match &v["schema"]["openAPIV3Schema"] {
            Value::Object(m) => m.clone(),
            _ => Map::from_iter([("type".to_string(), json!("object"))]),
        };
        let props = schema.entry("properties").or_insert_with(|| json!({}));
        if let Value::Object(props) = props {
            props.insert("apiVersion".into(), string_property("apiVersion"));
            props.insert("kind".into(), string_property("kind"));
            props.insert(
                "metadata".into(),
                json!({"allOf": [{"$ref": format!("#/components/schemas/{OBJECT_META}")}],
                       "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}),
            );
        }
        schema.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([{"group": group, "version": version, "kind": kind}]),
        );
        out.insert(custom_schema_name(group, version, kind), Value::Object(schema));
    }
    out
}

/// The document of one group/version; `custom` holds the schemas of its custom kinds (from
/// [`custom_schemas`]).
pub(crate) fn document(
    resources: &[Resource],
    custom: Map<String, Value>,
    group: &str,
    version: &str,
) -> Option<Value> {
    let mine: Vec<&Resource> = resources.iter().filter(|r| r.group == group && r.version == version).collect();
    if mine.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let kinds: Vec<&str> =
        mine.iter().filter_map(|r| shoal_kube::openapi::kind_schema(&r.group, &r.version, &r.kind)).collect();
    let mut schemas = shoal_kube::openapi::closure(kinds);
    if !custom.is_empty() {
        schemas.extend(shoal_kube::openapi::closure([OBJECT_META]));
        schemas.extend(custom);
    }
    for r in mine {
        insert_paths(&mut paths, r, true, operation);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": super::KUBERNETES_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

fn hash(doc: &Value) -> String {
    hex::encode_upper(Sha256::digest(doc.to_string().as_bytes()))
}

type Cached = (String, Arc<Value>, String);

/// The document of one group/version and its hash, built once per set of served resources
/// and custom schemas (the schemas make them large; kubectl fetches the index on every apply).
pub(crate) fn cached(
    resources: &[Resource],
    crds: &[Value],
    group: &str,
    version: &str,
) -> Option<(Arc<Value>, String)> {
    static CACHE: OnceLock<Mutex<HashMap<String, Cached>>> = OnceLock::new();
    let mine: Vec<&Resource> = resources.iter().filter(|r| r.group == group && r.version == version).collect();
    let custom = custom_schemas(crds, group, version);
    let signature = format!("{mine:?}{}", Value::Object(custom.clone()));
    let gv = format!("{group}/{version}");
    let cache = CACHE.get_or_init(Default::default);
    if let Ok(c) = cache.lock() {
        if let Some((sig, doc, h)) = c.get(&gv) {
            if *sig == signature {
                return Some((doc.clone(), h.clone()));
            }
        }
    }
    let doc = Arc::new(document(resources, custom, group, version)?);
    let h = hash(&doc);
    if let Ok(mut c) = cache.lock() {
        c.insert(gv, (signature, doc.clone(), h.clone()));
    }
    Some((doc, h))
}

/// `/openapi/v3`: every group/version with the URL (and content hash) of its document.
pub(crate) fn index(resources: &[Resource], crds: &[Value]) -> Value {
    let mut paths = Map::new();
    for r in resources {
        let p = gv_path(r);
        if paths.contains_key(&p) {
            continue;
        }
        if let Some((_, h)) = cached(resources, crds, &r.group, &r.version) {
            paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={h}")}));
        }
    }
    json!({"paths": paths})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_operations_carry_gvk_and_field_validation() {
        let all = shoal_kube::resources::builtin();
        let idx = index(&all, &[]);
        assert!(idx["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .starts_with("/openapi/v3/apis/apps/v1?hash="));
        let doc = document(&all, Map::new(), "apps", "v1").unwrap();
        let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation" && p["in"] == "query"));
        let spec = &doc["components"]["schemas"]["io.k8s.api.apps.v1.DeploymentSpec"];
        assert_eq!(spec["properties"]["paused"]["type"], "boolean");
        assert!(doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"].is_object());
    }

    #[test]
    fn a_custom_kind_gets_its_crd_schema() {
        let crd = json!({"spec": {"group": "metallb.io", "names": {"kind": "IPAddressPool", "plural": "ipaddresspools"},
            "scope": "Namespaced", "versions": [{"name": "v1beta1", "served": true, "storage": true,
            "schema": {"openAPIV3Schema": {"type": "object", "description": "A pool.",
                "properties": {"spec": {"type": "object", "properties": {"addresses": {"type": "array", "items": {"type": "string"}}}}}}}}]}});
        let mut all = shoal_kube::resources::builtin();
        all.extend(super::super::registry::crd_resources(&crd));
        let custom = custom_schemas(std::slice::from_ref(&crd), "metallb.io", "v1beta1");
        let doc = document(&all, custom, "metallb.io", "v1beta1").unwrap();
        let s = &doc["components"]["schemas"]["io.metallb.v1beta1.IPAddressPool"];
        assert_eq!(s["x-kubernetes-group-version-kind"][0]["kind"], "IPAddressPool");
        assert_eq!(s["properties"]["spec"]["properties"]["addresses"]["type"], "array");
        assert!(s["properties"]["metadata"]["allOf"][0]["$ref"].as_str().unwrap().ends_with("meta.v1.ObjectMeta"));
        assert!(doc["components"]["schemas"][OBJECT_META].is_object());
        assert!(custom_schemas(&[crd], "apps", "v1").is_empty());
        // The hash changes with the schema, so kubectl's cache of the document is refreshed.
        let (_, h1) = cached(&all, &[], "metallb.io", "v1beta1").unwrap();
        let crd2 = json!({"spec": {"group": "metallb.io", "names": {"kind": "IPAddressPool"}, "versions": [{"name": "v1beta1"}]}});
        let (_, h2) = cached(&all, &[crd2], "metallb.io", "v1beta1").unwrap();
        assert_ne!(h1, h2);
    }
}
