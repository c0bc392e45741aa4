//! A minimal OpenAPI v3: one document per served group/version whose PATCH operations carry
//! `x-kubernetes-group-version-kind` and the `fieldValidation` query parameter, which is what
//! kubectl checks before it relies on server-side validation (`--validate=strict`). Schemas
//! are not published, so kubectl computes strategic merge patches from its built-in types and
//! `kubectl explain` has nothing to show.
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
        let mut types =
            vec!["application/apply-patch+yaml", "application/json-patch+json", "application/merge-patch+json"];
        if !r.group.contains('.') || r.group.ends_with(".k8s.io") {
            types.push("application/strategic-merge-patch+json");
        }
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
        "components": {"schemas": {}},
    }))
}

fn hash(doc: &Value) -> String {
    hex::encode_upper(Sha256::digest(doc.to_string().as_bytes()))
}

/// `/openapi/v3`: every group/version with the URL (and content hash) of its document.
pub(crate) fn index(resources: &[Resource]) -> Value {
    let mut paths = Map::new();
    for r in resources {
        let p = gv_path(r);
        if paths.contains_key(&p) {
            continue;
        }
        if let Some(doc) = document(resources, &r.group, &r.version) {
            paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", hash(&doc))}));
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
    }
}
