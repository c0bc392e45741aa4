//! The Node authorizer, as kube-apiserver's (with NodeRestriction's limits on writes): a node
//! certificate (`system:node:NAME` in `system:nodes`) may read what a kubelet reads, write its
//! own Node and Lease and the status of the pods bound to it, and read only the Secrets,
//! ConfigMaps and PersistentVolumeClaims those pods use. Anything else falls to RBAC.
use serde_json::Value;
use shoal_kube::Objects;

use super::{Attributes, Decision};

/// The lease namespace of node heartbeats.
const LEASE_NAMESPACE: &str = "kube-node-lease";

fn res(group: &str, plural: &str) -> shoal_kube::Resource {
    shoal_kube::resources::lookup(group, plural)
}

/// Whether a pod refers to a Secret, ConfigMap or claim of this name (volumes, projected
/// sources, env, envFrom, image pull secrets).
pub(crate) fn pod_references(pod: &Value, resource: &str, name: &str) -> bool {
    let is = |v: &Value| v.as_str() == Some(name);
    let spec = &pod["spec"];
    let containers = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten());
    match resource {
        "secrets" => {
            spec["imagePullSecrets"].as_array().into_iter().flatten().any(|s| is(&s["name"]))
                || spec["volumes"].as_array().into_iter().flatten().any(|v| {
                    is(&v["secret"]["secretName"])
                        || v["projected"]["sources"].as_array().into_iter().flatten().any(|s| is(&s["secret"]["name"]))
                })
                || containers.into_iter().any(|c| {
                    c["envFrom"].as_array().into_iter().flatten().any(|e| is(&e["secretRef"]["name"]))
                        || c["env"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|e| is(&e["valueFrom"]["secretKeyRef"]["name"]))
                })
        }
        "configmaps" => {
            spec["volumes"].as_array().into_iter().flatten().any(|v| {
                is(&v["configMap"]["name"])
                    || v["projected"]["sources"].as_array().into_iter().flatten().any(|s| is(&s["configMap"]["name"]))
            }) || containers.into_iter().any(|c| {
                c["envFrom"].as_array().into_iter().flatten().any(|e| is(&e["configMapRef"]["name"]))
                    || c["env"].as_array().into_iter().flatten().any(|e| is(&e["valueFrom"]["configMapKeyRef"]["name"]))
            })
        }
        "persistentvolumeclaims" => {
            spec["volumes"].as_array().into_iter().flatten().any(|v| is(&v["persistentVolumeClaim"]["claimName"]))
        }
        _ => false,
    }
}

const NO_RELATIONSHIP: &str = "no relationship found between node '{node}' and this object";

/// The node authorizer's decision: Allow, or Deny with a reason (RBAC then has its say).
pub(crate) async fn decide(objects: &Objects, node: &str, a: &Attributes) -> Decision {
    let deny = || Decision::Deny(NO_RELATIONSHIP.replace("{node}", node));
    let allow = || Decision::Allow(String::new());
    if !a.resource_request {
        return Decision::Deny(String::new());
    }
    let read = matches!(a.verb.as_str(), "get" | "list" | "watch");
    let own = a.name == node;
    match (a.group.as_str(), a.resource.as_str(), a.subresource.as_str()) {
        ("", "nodes", "") if read => allow(),
        ("", "nodes", "") | ("", "nodes", "status")
            if own && matches!(a.verb.as_str(), "create" | "update" | "patch" | "get") =>
        {
            allow()
        }
        ("", "pods" | "services" | "endpoints" | "namespaces", "") | ("discovery.k8s.io", "endpointslices", "")
            if read =>
        {
            allow()
        }
        ("", "events", "") | ("events.k8s.io", "events", "")
            if matches!(a.verb.as_str(), "create" | "update" | "patch") =>
        {
            allow()
        }
        ("coordination.k8s.io", "leases", "")
            if a.namespace == LEASE_NAMESPACE
                && matches!(a.verb.as_str(), "get" | "create" | "update" | "patch" | "delete")
                && (own || (a.verb == "create" && a.name.is_empty())) =>
        {
            allow()
        }
        ("", "pods", "status") if matches!(a.verb.as_str(), "get" | "update" | "patch") => {
            match objects.get(&res("", "pods"), Some(&a.namespace), &a.name).await {
                Ok(Some(p)) if p["spec"]["nodeName"].as_str() == Some(node) => allow(),
                _ => deny(),
            }
        }
        ("", r @ ("secrets" | "configmaps" | "persistentvolumeclaims"), "")
            if a.verb == "get" && !a.name.is_empty() =>
        {
            let Ok((pods, _)) = objects.list(&res("", "pods"), Some(&a.namespace)).await else { return deny() };
            if pods.iter().any(|p| p["spec"]["nodeName"].as_str() == Some(node) && pod_references(p, r, &a.name)) {
                allow()
            } else {
                deny()
            }
        }
        ("", "secrets" | "configmaps" | "persistentvolumeclaims", "") => deny(),
        _ => Decision::Deny(String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_node_reads_only_what_its_pods_use() {
        let objects = Objects::new(shoal_store::Store::in_memory());
        let pods = res("", "pods");
        for (name, node, secret) in [("a", "n1", "s1"), ("b", "n2", "s2")] {
            let pod = json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"nodeName": node,
                "containers": [{"name": "c", "image": "x", "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": secret, "key": "k"}}}]}],
                "volumes": [{"name": "v", "configMap": {"name": format!("cm-{name}")}}]}});
            objects.create(&pods, Some("default"), pod).await.unwrap();
        }
        let get = |r: &str, name: &str| Attributes::resource("get", "", r, "", "default", name);
        assert!(decide(&objects, "n1", &get("secrets", "s1")).await.allowed());
        assert!(decide(&objects, "n1", &get("configmaps", "cm-a")).await.allowed());
        let d = decide(&objects, "n1", &get("secrets", "s2")).await;
        assert_eq!(d, Decision::Deny("no relationship found between node 'n1' and this object".into()));
        assert!(!decide(&objects, "n1", &get("configmaps", "cm-b")).await.allowed());
        assert!(!decide(&objects, "n1", &Attributes::resource("list", "", "secrets", "", "default", ""))
            .await
            .allowed());
        // Own Node and Lease, own pods' status; not another node's.
        let w = |verb: &str, g: &str, r: &str, sub: &str, ns: &str, name: &str| {
            Attributes::resource(verb, g, r, sub, ns, name)
        };
        assert!(decide(&objects, "n1", &w("patch", "", "nodes", "status", "", "n1")).await.allowed());
        assert!(!decide(&objects, "n1", &w("patch", "", "nodes", "status", "", "n2")).await.allowed());
        assert!(!decide(&objects, "n1", &w("delete", "", "nodes", "", "", "n2")).await.allowed());
        assert!(decide(&objects, "n1", &w("update", "coordination.k8s.io", "leases", "", LEASE_NAMESPACE, "n1"))
            .await
            .allowed());
        assert!(!decide(&objects, "n1", &w("update", "coordination.k8s.io", "leases", "", LEASE_NAMESPACE, "n2"))
            .await
            .allowed());
        assert!(decide(&objects, "n1", &w("update", "", "pods", "status", "default", "a")).await.allowed());
        assert!(!decide(&objects, "n1", &w("update", "", "pods", "status", "default", "b")).await.allowed());
        assert!(!decide(&objects, "n1", &w("delete", "", "pods", "", "default", "b")).await.allowed());
        assert!(!decide(&objects, "n1", &w("create", "rbac.authorization.k8s.io", "clusterrolebindings", "", "", ""))
            .await
            .allowed());
    }
}
