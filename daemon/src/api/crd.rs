//! CustomResourceDefinitions: checked and marked Established on write; their resources are
//! served at once (see `registry`), and deleting one deletes its objects.
use serde_json::{json, Value};
use shoal_kube::Objects;
use shoal_store::{Op, Txn};

use super::status::Cause;

pub(crate) fn admit(obj: &mut Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = &obj["spec"];
    let group = spec["group"].as_str().unwrap_or_default().to_string();
    let plural = spec["names"]["plural"].as_str().unwrap_or_default().to_string();
    if group.is_empty() {
        causes.push(Cause::required("spec.group"));
    }
    if plural.is_empty() {
        causes.push(Cause::required("spec.names.plural"));
    }
    if spec["names"]["kind"].as_str().is_none_or(|k| k.is_empty()) {
        causes.push(Cause::required("spec.names.kind"));
    }
    match spec["scope"].as_str() {
        Some("Namespaced") | Some("Cluster") => {}
        Some(s) => causes.push(Cause::unsupported("spec.scope", s, &["Cluster", "Namespaced"])),
        None => causes.push(Cause::required("spec.scope")),
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::required("spec.versions"));
    } else if versions.iter().filter(|v| v["storage"].as_bool() == Some(true)).count() != 1 {
        causes.push(Cause::invalid("spec.versions", "", "must have exactly one version marked as storage version"));
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause::invalid("metadata.name", name, "must be spec.names.plural+\".\"+spec.group"));
    }
    if causes.is_empty() {
        let mut names = spec["names"].clone();
        if names["singular"].is_null() {
            names["singular"] = json!(names["kind"].as_str().unwrap_or_default().to_lowercase());
        }
        if names["listKind"].is_null() {
            names["listKind"] = json!(format!("{}List", names["kind"].as_str().unwrap_or_default()));
        }
        obj["spec"]["names"] = names.clone();
        let now = shoal_kube::objects::now_rfc3339();
        obj["status"] = json!({
            "acceptedNames": names,
            "storedVersions": versions.iter().filter(|v| v["storage"].as_bool() == Some(true)).map(|v| v["name"].clone()).collect::<Vec<_>>(),
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
            ],
        });
    }
    causes
}

/// Deletes every object of a deleted CRD.
pub(crate) async fn delete_objects(objects: &Objects, crd: &Value) {
    let (Some(group), Some(plural)) = (crd["spec"]["group"].as_str(), crd["spec"]["names"]["plural"].as_str()) else {
        return;
    };
    let prefix = format!("/{group}/{plural}/");
    if let Err(e) = objects.store().txn(Txn::ops(vec![Op::DeletePrefix { prefix }])).await {
        tracing::warn!(group, plural, error = %e, "delete custom resources of a deleted definition failed");
    }
}
