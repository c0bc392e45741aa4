//! CustomResourceDefinitions: checked and marked Established on write; their resources are
//! served at once (see `registry`), and deleting one deletes its objects. The built-in
//! LoadBalancer's own kinds (MetalLB's `metallb.io` CRDs) are registered when the cluster starts.
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use shoal_kube::Objects;
use shoal_store::{Op, Txn};
use tokio_util::sync::CancellationToken;

use super::registry::crd_resource;
use super::status::Cause;

/// MetalLB's CRD documents (IPAddressPool, L2Advertisement, BGPPeer, BGPAdvertisement,
/// Community, BFDProfile), as its metallb-native.yaml ships them.
const METALLB_CRDS: &str = include_str!("metallb-crds.yaml");

/// The CRDs every cluster has from the start, admitted (names defaulted, Established), without
/// MetalLB's conversion webhook (shoal stores every version as sent and runs no webhooks).
pub(crate) fn builtin_crds() -> Result<Vec<Value>, serde_norway::Error> {
    let mut out = Vec::new();
    for doc in serde_norway::Deserializer::from_str(METALLB_CRDS) {
        let mut crd = Value::deserialize(doc)?;
        if crd.is_null() {
            continue;
        }
        if let Some(spec) = crd["spec"].as_object_mut() {
            spec.remove("conversion");
        }
        let causes = admit(&mut crd);
        if let Some(c) = causes.first() {
            tracing::error!(field = %c.field, message = %c.message, "a built-in custom resource definition is invalid");
            continue;
        }
        out.push(crd);
    }
    Ok(out)
}

/// Registers the built-in CRDs that are not there yet (a definition already stored, such as one
/// the user applied, is kept), retrying while the store has no leader.
pub(crate) async fn ensure_builtin(objects: Objects, shutdown: CancellationToken) {
    let crds = match builtin_crds() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the built-in custom resource definitions do not parse");
            return;
        }
    };
    let res = crd_resource();
    for crd in crds {
        let name = crd["metadata"]["name"].as_str().unwrap_or_default().to_string();
        loop {
            match objects.create(&res, None, crd.clone()).await {
                Ok(_) => {
                    tracing::debug!(crd = %name, "built-in custom resource definition registered");
                    break;
                }
                Err(shoal_kube::Error::AlreadyExists { .. }) => break,
                Err(e) => {
                    tracing::warn!(crd = %name, error = %e, "register built-in custom resource definition failed, retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metallb_crds_are_built_in_and_established() {
        let crds = builtin_crds().expect("parse");
        let mut names: Vec<&str> = crds.iter().filter_map(|c| c["metadata"]["name"].as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "bfdprofiles.metallb.io",
                "bgpadvertisements.metallb.io",
                "bgppeers.metallb.io",
                "communities.metallb.io",
                "ipaddresspools.metallb.io",
                "l2advertisements.metallb.io",
            ]
        );
        for c in &crds {
            assert!(c["spec"]["conversion"].is_null(), "no webhook conversion");
            let established = c["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|x| x["type"] == "Established" && x["status"] == "True"));
            assert!(established, "{}", c["metadata"]["name"]);
        }
        let pool = crds.iter().find(|c| c["spec"]["names"]["kind"] == "IPAddressPool").expect("pool");
        let v1beta1 = pool["spec"]["versions"].as_array().and_then(|v| v.iter().find(|v| v["name"] == "v1beta1"));
        let schema = &v1beta1.expect("v1beta1")["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(schema["required"], json!(["addresses"]), "MetalLB's schema, not an empty one");
    }

    #[tokio::test]
    async fn ensure_builtin_keeps_a_stored_definition() {
        let objects = Objects::new(shoal_store::Store::in_memory());
        let res = crd_resource();
        let mut mine = builtin_crds()
            .expect("parse")
            .into_iter()
            .find(|c| c["spec"]["names"]["kind"] == "Community")
            .expect("community");
        mine["metadata"]["labels"] = json!({"mine": "yes"});
        objects.create(&res, None, mine).await.expect("create");
        ensure_builtin(objects.clone(), CancellationToken::new()).await;
        let (all, _) = objects.list(&res, None).await.expect("list");
        assert_eq!(all.len(), 6);
        let kept = objects.get(&res, None, "communities.metallb.io").await.expect("get").expect("there");
        assert_eq!(kept["metadata"]["labels"]["mine"], "yes");
        ensure_builtin(objects.clone(), CancellationToken::new()).await;
        assert_eq!(objects.list(&res, None).await.expect("list").0.len(), 6, "idempotent");
    }
}
