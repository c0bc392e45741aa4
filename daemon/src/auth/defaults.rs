//! The default ClusterRoles and ClusterRoleBindings of kube-apiserver (the user-facing ones
//! and those every authenticated identity relies on), created at start and reconciled when
//! they carry `rbac.authorization.kubernetes.io/autoupdate: "true"`: missing rules, labels and
//! subjects are added back, nothing a cluster added is taken away.
use std::time::Duration;

use serde_json::{json, Value};
use shoal_kube::{Objects, UpdateMode};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::rbac::GROUP;

const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const RW: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const RO: &[&str] = &["get", "list", "watch"];
const ALL: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn urls(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"nonResourceURLs": urls, "verbs": verbs})
}

fn meta(name: &str, labels: Value) -> Value {
    let mut l = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    if let (Some(l), Some(extra)) = (l.as_object_mut(), labels.as_object()) {
        l.extend(extra.clone());
    }
    json!({"name": name, "labels": l, "annotations": {AUTOUPDATE: "true"}})
}

fn cluster_role(name: &str, labels: Value, rules: Vec<Value>) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta(name, labels), "rules": rules})
}

fn aggregated(name: &str, labels: Value, to: &str) -> Value {
    let mut r = cluster_role(name, labels, Vec::new());
    r["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{to}"): "true"}}]});
    r
}

fn binding(name: &str, role: &str, groups: &[&str]) -> Value {
    let subjects: Vec<Value> = groups.iter().map(|g| json!({"apiGroup": GROUP, "kind": "Group", "name": g})).collect();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": meta(name, json!({})),
        "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

/// kube-apiserver's default ClusterRoles (the ones shoal's API serves anything for).
pub(crate) fn cluster_roles() -> Vec<Value> {
    let agg = |to: &str| json!({format!("rbac.authorization.k8s.io/aggregate-to-{to}"): "true"});
    vec![
        cluster_role("cluster-admin", json!({}), vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])]),
        aggregated("admin", json!({}), "admin"),
        aggregated("edit", agg("admin"), "edit"),
        aggregated("view", agg("edit"), "view"),
        cluster_role(
            "system:aggregate-to-admin",
            agg("admin"),
            vec![
                rule(&["create"], &["authorization.k8s.io"], &["localsubjectaccessreviews"]),
                rule(ALL, &["rbac.authorization.k8s.io"], &["rolebindings", "roles"]),
            ],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            agg("edit"),
            vec![
                rule(
                    RO,
                    &[""],
                    &["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets", "services/proxy"],
                ),
                rule(&["impersonate"], &[""], &["serviceaccounts"]),
                rule(RW, &[""], &["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"]),
                rule(&["create"], &[""], &["pods/eviction"]),
                rule(
                    RW,
                    &[""],
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                ),
                rule(&["create"], &[""], &["serviceaccounts/token"]),
                rule(
                    RW,
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                rule(RW, &["autoscaling"], &["horizontalpodautoscalers"]),
                rule(RW, &["batch"], &["cronjobs", "jobs"]),
                rule(
                    RW,
                    &["extensions"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "ingresses",
                        "networkpolicies",
                        "replicasets",
                        "replicasets/scale",
                        "replicationcontrollers/scale",
                    ],
                ),
                rule(RW, &["policy"], &["poddisruptionbudgets"]),
                rule(RW, &["networking.k8s.io"], &["ingresses", "networkpolicies"]),
                rule(ALL, &["coordination.k8s.io"], &["leases"]),
            ],
        ),
        cluster_role(
            "system:aggregate-to-view",
            agg("view"),
            vec![
                rule(
                    RO,
                    &[""],
                    &[
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                    ],
                ),
                rule(
                    RO,
                    &[""],
                    &[
                        "bindings",
                        "events",
                        "limitranges",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                        "replicationcontrollers/status",
                        "resourcequotas",
                        "resourcequotas/status",
                    ],
                ),
                rule(RO, &[""], &["namespaces"]),
                rule(RO, &["discovery.k8s.io"], &["endpointslices"]),
                rule(
                    RO,
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                ),
                rule(RO, &["autoscaling"], &["horizontalpodautoscalers", "horizontalpodautoscalers/status"]),
                rule(RO, &["batch"], &["cronjobs", "cronjobs/status", "jobs", "jobs/status"]),
                rule(
                    RO,
                    &["extensions"],
                    &[
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "ingresses",
                        "ingresses/status",
                        "networkpolicies",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "replicationcontrollers/scale",
                    ],
                ),
                rule(RO, &["policy"], &["poddisruptionbudgets", "poddisruptionbudgets/status"]),
                rule(RO, &["networking.k8s.io"], &["ingresses", "ingresses/status", "networkpolicies"]),
            ],
        ),
        cluster_role(
            "system:basic-user",
            json!({}),
            vec![
                rule(&["create"], &["authorization.k8s.io"], &["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
                rule(&["create"], &["authentication.k8s.io"], &["selfsubjectreviews"]),
            ],
        ),
        cluster_role(
            "system:discovery",
            json!({}),
            vec![urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        cluster_role(
            "system:public-info-viewer",
            json!({}),
            vec![urls(&["get"], &["/healthz", "/livez", "/readyz", "/version", "/version/"])],
        ),
        // What a scraper needs (Prometheus with a certificate in group system:monitoring).
        cluster_role(
            "system:monitoring",
            json!({}),
            vec![urls(
                &["get"],
                &["/healthz", "/healthz/*", "/livez", "/livez/*", "/metrics", "/metrics/slis", "/readyz", "/readyz/*"],
            )],
        ),
    ]
}

/// kube-apiserver's default ClusterRoleBindings of those roles.
pub(crate) fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding("cluster-admin", "cluster-admin", &["system:masters"]),
        binding("system:basic-user", "system:basic-user", &["system:authenticated"]),
        binding("system:discovery", "system:discovery", &["system:authenticated"]),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &["system:authenticated", "system:unauthenticated"],
        ),
        binding("system:monitoring", "system:monitoring", &["system:monitoring"]),
    ]
}

/// Adds what `want` has and `have` lacks (array members, map keys); true when it changed.
fn add_missing(have: &mut Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Array(h), Value::Array(w)) => {
            let mut changed = false;
            for x in w {
                if !h.contains(x) {
                    h.push(x.clone());
                    changed = true;
                }
            }
            changed
        }
        (Value::Object(h), Value::Object(w)) => {
            let mut changed = false;
            for (k, v) in w {
                if !h.contains_key(k) {
                    h.insert(k.clone(), v.clone());
                    changed = true;
                }
            }
            changed
        }
        (h, w) if h.is_null() => {
            *h = w.clone();
            true
        }
        _ => false,
    }
}

/// Creates or reconciles one default object; Ok(false) when nothing was written.
async fn ensure_one(objects: &Objects, plural: &str, want: &Value) -> Result<bool, shoal_kube::Error> {
    let res = shoal_kube::resources::lookup(GROUP, plural);
    let name = want["metadata"]["name"].as_str().unwrap_or_default();
    match objects.get(&res, None, name).await? {
        None => match objects.create(&res, None, want.clone()).await {
            Ok(_) => Ok(true),
            Err(shoal_kube::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e),
        },
        Some(have) if have["metadata"]["annotations"][AUTOUPDATE] == "true" => {
            let mut changed = false;
            objects
                .modify(&res, None, name, UpdateMode::All, |o| {
                    changed = add_missing(&mut o["metadata"]["labels"], &want["metadata"]["labels"]);
                    if want["aggregationRule"].is_object() {
                        changed |= add_missing(&mut o["aggregationRule"], &want["aggregationRule"]);
                    } else if want["rules"].is_array() {
                        changed |= add_missing(&mut o["rules"], &want["rules"]);
                    }
                    if want["subjects"].is_array() {
                        changed |= add_missing(&mut o["subjects"], &want["subjects"]);
                    }
                    Ok(changed)
                })
                .await?;
            Ok(changed)
        }
        Some(_) => Ok(false),
    }
}

/// Creates and reconciles the default roles and bindings, retrying until the store takes
/// writes (a node starts before its cluster has a leader), then returns.
pub async fn ensure_defaults(objects: Objects, shutdown: CancellationToken) {
    let wanted: Vec<(&str, Value)> = cluster_roles()
        .into_iter()
        .map(|r| ("clusterroles", r))
        .chain(cluster_role_bindings().into_iter().map(|b| ("clusterrolebindings", b)))
        .collect();
    let mut delay = Duration::from_millis(100);
    loop {
        let mut failed = false;
        let mut written = 0;
        for (plural, obj) in &wanted {
            match ensure_one(&objects, plural, obj).await {
                Ok(true) => written += 1,
                Ok(false) => {}
                Err(e) => {
                    debug!(error = %e, "default rbac object not written yet");
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            if written > 0 {
                info!(written, "default rbac roles and bindings reconciled");
            }
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_adds_back_and_keeps_additions() {
        let mut have = json!([{"verbs": ["get"]}, {"verbs": ["mine"]}]);
        assert!(add_missing(&mut have, &json!([{"verbs": ["get"]}, {"verbs": ["list"]}])));
        assert_eq!(have, json!([{"verbs": ["get"]}, {"verbs": ["mine"]}, {"verbs": ["list"]}]));
        assert!(!add_missing(&mut have, &json!([{"verbs": ["list"]}])));
        let names: Vec<String> =
            cluster_roles().iter().map(|r| r["metadata"]["name"].as_str().unwrap_or_default().to_string()).collect();
        for n in [
            "cluster-admin",
            "admin",
            "edit",
            "view",
            "system:basic-user",
            "system:discovery",
            "system:public-info-viewer",
            "system:monitoring",
        ] {
            assert!(names.iter().any(|x| x == n), "{n}");
        }
    }
}
