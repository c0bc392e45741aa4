//! Volume rules shared by the PersistentVolume controller, the scheduler and the node agent:
//! which claims a pod uses, whether a volume may live on a node, where a local volume's
//! directory is, and whether shoal provisioned it.
use serde_json::Value;

use super::util::{name_of, namespace_of, node_selector_terms_match};

/// The default StorageClass: node-local directories, bound when the first pod is scheduled.
pub(crate) const LOCAL_CLASS: &str = "local";
/// `pv.kubernetes.io/provisioned-by` of the volumes made here.
pub(crate) const PROVISIONER: &str = "shoal.dev/local-path";
/// Node annotation: the directory under which that node keeps its local volumes.
pub(crate) const STORAGE_DIR_ANNOTATION: &str = "shoal.dev/storage-dir";

/// The claim names of a pod's volumes.
pub(crate) fn claim_names(pod: &Value) -> Vec<String> {
    pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str().map(String::from))
        .collect()
}

/// The class a claim asks for: its `storageClassName`, or the default `local` when unset.
pub(crate) fn claim_class(pvc: &Value) -> &str {
    pvc["spec"]["storageClassName"].as_str().unwrap_or(LOCAL_CLASS)
}

/// Does a volume's `nodeAffinity` allow this node? (A volume without one fits every node.)
pub(crate) fn pv_fits_node(pv: &Value, node: &Value) -> bool {
    let terms = &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"];
    !terms.is_array() || node_selector_terms_match(terms, node)
}

/// The directory on the node of a `local` or `hostPath` volume.
pub(crate) fn host_path(pv: &Value) -> Option<&str> {
    pv["spec"]["local"]["path"].as_str().or(pv["spec"]["hostPath"]["path"].as_str()).filter(|p| p.starts_with('/'))
}

/// Whether this controller made the volume (its directory is created and removed by the agent).
pub(crate) fn is_provisioned_here(pv: &Value) -> bool {
    pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"].as_str() == Some(PROVISIONER)
}

/// Scheduler filter for a pod's PersistentVolumeClaims on one node: every claim must exist;
/// a bound claim's volume must allow the node (`nodeAffinity`); an unbound claim is fine only
/// in the `local` class (WaitForFirstConsumer: it is bound to whichever node the pod gets).
/// `pvcs` are the claims of the pod's namespace (or more), `pvs` all volumes. The error is
/// the reason kubectl shows in the FailedScheduling event.
pub fn volumes_fit(pod: &Value, node: &Value, pvcs: &[Value], pvs: &[Value]) -> std::result::Result<(), String> {
    let ns = namespace_of(pod).unwrap_or("default");
    for claim in claim_names(pod) {
        let Some(pvc) = pvcs.iter().find(|c| namespace_of(c).unwrap_or("default") == ns && name_of(c) == claim) else {
            return Err(format!("persistentvolumeclaim \"{claim}\" not found"));
        };
        match pvc["spec"]["volumeName"].as_str().filter(|v| !v.is_empty()) {
            Some(pv_name) => {
                let Some(pv) = pvs.iter().find(|p| name_of(p) == pv_name) else {
                    return Err(format!("persistentvolume \"{pv_name}\" not found"));
                };
                if !pv_fits_node(pv, node) {
                    return Err("node(s) had volume node affinity conflict".into());
                }
            }
            None if claim_class(pvc) == LOCAL_CLASS => {}
            None => return Err("pod has unbound immediate PersistentVolumeClaims".into()),
        }
    }
    Ok(())
}
