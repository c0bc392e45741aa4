//! The table of served resources: what discovery lists and what keys are built from.

/// One served resource (a kind under a group/version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// API group; "" for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    /// Lower-case plural, as in URLs.
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Subresources served besides the object itself ("status", "scale", "log", ...).
    pub subresources: Vec<String>,
}

impl Resource {
    /// "v1" or "apps/v1".
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The group segment used in store keys ("core" for the core group).
    pub fn key_group(&self) -> &str {
        if self.group.is_empty() {
            "core"
        } else {
            &self.group
        }
    }

    /// Store key of one object: `/{group}/{plural}/{namespace}/{name}`; cluster-scoped
    /// objects use `_` as namespace, which no namespace can be named.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{}", self.prefix(namespace), name)
    }

    /// Store prefix of every object of this resource (in one namespace, or all when None).
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("/{}/{}/{}/", self.key_group(), self.plural, ns),
            (true, None) => format!("/{}/{}/", self.key_group(), self.plural),
            (false, _) => format!("/{}/{}/_/", self.key_group(), self.plural),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn res(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    short: &[&str],
    all: bool,
    sub: &[&str],
) -> Resource {
    Resource {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: if all { vec!["all".into()] } else { Vec::new() },
        subresources: sub.iter().map(|s| s.to_string()).collect(),
    }
}

/// Every built-in resource shoal serves.
pub fn builtin() -> Vec<Resource> {
    vec![
        res("", "v1", "Namespace", "namespaces", false, &["ns"], false, &["status", "finalize"]),
        res(
            "",
            "v1",
            "Pod",
            "pods",
            true,
            &["po"],
            true,
            &["status", "log", "exec", "attach", "portforward", "proxy", "binding", "eviction", "ephemeralcontainers"],
        ),
        res("", "v1", "Service", "services", true, &["svc"], true, &["status", "proxy"]),
        res("", "v1", "Endpoints", "endpoints", true, &["ep"], false, &[]),
        res("", "v1", "ConfigMap", "configmaps", true, &["cm"], false, &[]),
        res("", "v1", "Secret", "secrets", true, &[], false, &[]),
        res("", "v1", "ServiceAccount", "serviceaccounts", true, &["sa"], false, &["token"]),
        res("", "v1", "Node", "nodes", false, &["no"], false, &["status", "proxy"]),
        res("", "v1", "Event", "events", true, &["ev"], false, &[]),
        res("", "v1", "PersistentVolume", "persistentvolumes", false, &["pv"], false, &["status"]),
        res("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", true, &["pvc"], false, &["status"]),
        res("", "v1", "LimitRange", "limitranges", true, &["limits"], false, &[]),
        res("", "v1", "ResourceQuota", "resourcequotas", true, &["quota"], false, &["status"]),
        res("", "v1", "ReplicationController", "replicationcontrollers", true, &["rc"], true, &["status", "scale"]),
        res("apps", "v1", "Deployment", "deployments", true, &["deploy"], true, &["status", "scale"]),
        res("apps", "v1", "ReplicaSet", "replicasets", true, &["rs"], true, &["status", "scale"]),
        res("apps", "v1", "DaemonSet", "daemonsets", true, &["ds"], true, &["status"]),
        res("apps", "v1", "StatefulSet", "statefulsets", true, &["sts"], true, &["status", "scale"]),
        res("apps", "v1", "ControllerRevision", "controllerrevisions", true, &[], false, &[]),
        res("batch", "v1", "Job", "jobs", true, &[], true, &["status"]),
        res("batch", "v1", "CronJob", "cronjobs", true, &["cj"], true, &["status"]),
        res("networking.k8s.io", "v1", "Ingress", "ingresses", true, &["ing"], false, &["status"]),
        res("networking.k8s.io", "v1", "IngressClass", "ingressclasses", false, &[], false, &[]),
        res("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", true, &["netpol"], false, &[]),
        res("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", false, &["pc"], false, &[]),
        res(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
            false,
            &[],
            false,
            &[],
        ),
        res(
            "admissionregistration.k8s.io",
            "v1",
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
            false,
            &[],
            false,
            &[],
        ),
        res("storage.k8s.io", "v1", "StorageClass", "storageclasses", false, &["sc"], false, &[]),
        res("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", true, &[], false, &[]),
        res("coordination.k8s.io", "v1", "Lease", "leases", true, &[], false, &[]),
        res("events.k8s.io", "v1", "Event", "events", true, &["ev"], false, &[]),
        res(
            "autoscaling",
            "v2",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            true,
            &["hpa"],
            true,
            &["status"],
        ),
        res("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", true, &["pdb"], false, &["status"]),
        res("rbac.authorization.k8s.io", "v1", "Role", "roles", true, &[], false, &[]),
        res("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", false, &[], false, &[]),
        res("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", true, &[], false, &[]),
        res("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", false, &[], false, &[]),
        res(
            "certificates.k8s.io",
            "v1",
            "CertificateSigningRequest",
            "certificatesigningrequests",
            false,
            &["csr"],
            false,
            &["status", "approval"],
        ),
        res(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
            &["crd", "crds"],
            false,
            &["status"],
        ),
    ]
}

/// Finds a built-in resource by group and plural.
pub fn find(group: &str, plural: &str) -> Option<Resource> {
    builtin().into_iter().find(|r| r.group == group && r.plural == plural)
}

/// A built-in resource by group and plural, or, for a name the table does not know, a plain
/// namespaced `v1` resource of that plural (keys and lists still work for it). For callers
/// that pass literal names.
pub fn lookup(group: &str, plural: &str) -> Resource {
    find(group, plural).unwrap_or_else(|| Resource {
        group: group.into(),
        version: "v1".into(),
        kind: String::new(),
        plural: plural.into(),
        singular: String::new(),
        namespaced: true,
        short_names: vec![],
        categories: vec![],
        subresources: vec![],
    })
}

/// Finds a built-in resource by group and kind.
pub fn find_kind(group: &str, kind: &str) -> Option<Resource> {
    builtin().into_iter().find(|r| r.group == group && r.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_one_shape() {
        let pods = find("", "pods").unwrap();
        assert_eq!(pods.key(Some("default"), "web"), "/core/pods/default/web");
        assert_eq!(pods.prefix(None), "/core/pods/");
        let nodes = find("", "nodes").unwrap();
        assert_eq!(nodes.key(None, "n1"), "/core/nodes/_/n1");
        let deps = find_kind("apps", "Deployment").unwrap();
        assert_eq!(deps.api_version(), "apps/v1");
        assert_eq!(deps.key(Some("a"), "b"), "/apps/deployments/a/b");
    }
}
