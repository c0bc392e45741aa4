//! OpenAPI v3: one document per served group/version. Its PATCH operations carry
//! `x-kubernetes-group-version-kind` and the `fieldValidation` query parameter, which is what
//! kubectl checks before it relies on server-side validation (`--validate=strict`); its
//! `components.schemas` hold the schemas of the built-in kinds of the group/version and of
//! everything they reference (what `kubectl explain` walks). Custom resources have no schema
//! here yet.
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

/// The document of one group/version.
pub(crate) fn document(resources: &[Resource], group: &str, version: &str) -> Option<Value> {
    let mine: Vec<&Resource> = resources.iter().filter(|r| r.group == group && r.version == version).collect();
    if mine.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let kinds: Vec<&str> =
        mine.iter().filter_map(|r| shoal_kube::openapi::kind_schema(&r.group, &r.version, &r.kind)).collect();
    let schemas = shoal_kube::openapi::closure(kinds);
    for r in mine {
        let base = format!("/{}", gv_path(r));
        let coll = if r.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("{base}/{}", r.plural)
        };
        paths.insert(
            coll.clone(),
            json!({
                "get": operation(r, "list", &["labelSelector", "fieldSelector", "watch"]),
                "post": operation(r, "post", &["dryRun", "fieldManager", "fieldValidation"]),
                "delete": operation(r, "deletecollection", &["labelSelector", "fieldSelector"]),
            }),
        );
        paths.insert(
            format!("{coll}/{{name}}"),
            json!({
                "get": operation(r, "get", &[]),
                "put": operation(r, "put", &["dryRun", "fieldManager", "fieldValidation"]),
                "patch": operation(r, "patch", &["dryRun", "fieldManager", "fieldValidation", "force"]),
                "delete": operation(r, "delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy"]),
            }),
        );
        for sub in r.subresources.iter().filter(|s| *s == "status" || *s == "scale") {
            paths.insert(
                format!("{coll}/{{name}}/{sub}"),
                json!({
                    "get": operation(r, "get", &[]),
                    "put": operation(r, "put", &["dryRun", "fieldManager", "fieldValidation"]),
                    "patch": operation(r, "patch", &["dryRun", "fieldManager", "fieldValidation", "force"]),
                }),
            );
        }
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
/// (the schemas make them large; kubectl fetches the index on every apply).
pub(crate) fn cached(resources: &[Resource], group: &str, version: &str) -> Option<(Arc<Value>, String)> {
    static CACHE: OnceLock<Mutex<HashMap<String, Cached>>> = OnceLock::new();
    let mine: Vec<&Resource> = resources.iter().filter(|r| r.group == group && r.version == version).collect();
    let signature = format!("{mine:?}");
    let gv = format!("{group}/{version}");
    let cache = CACHE.get_or_init(Default::default);
    if let Ok(c) = cache.lock() {
        if let Some((sig, doc, h)) = c.get(&gv) {
            if *sig == signature {
                return Some((doc.clone(), h.clone()));
            }
        }
    }
    let doc = Arc::new(document(resources, group, version)?);
    let h = hash(&doc);
    if let Ok(mut c) = cache.lock() {
        c.insert(gv, (signature, doc.clone(), h.clone()));
    }
    Some((doc, h))
}

/// `/openapi/v3`: every group/version with the URL (and content hash) of its document.
pub(crate) fn index(resources: &[Resource]) -> Value {
    let mut paths = Map::new();
    for r in resources {
        let p = gv_path(r);
        if paths.contains_key(&p) {
            continue;
        }
        if let Some((_, h)) = cached(resources, &r.group, &r.version) {
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
        let idx = index(&all);
        assert!(idx["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .starts_with("/openapi/v3/apis/apps/v1?hash="));
        let doc = document(&all, "apps", "v1").unwrap();
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
}
