//! Merge metadata of the built-in kinds: for each Go type, which fields lead to which type and
//! how their lists merge (the `patchStrategy`/`patchMergeKey` tags of k8s.io/api).

/// How a list field merges under a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// The patch's list replaces the live list (the default).
    Replace,
    /// Lists of objects merged element by element, matched by this key.
    MergeByKey(&'static str),
    /// Lists of scalars merged as a set union (`finalizers`, `podCIDRs`).
    MergePrimitives,
}

/// A field of a Go type: the type of its value (of its elements, for lists) and how lists merge.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FieldMeta {
    pub ty: Option<&'static str>,
    pub list: ListStrategy,
}

use ListStrategy::{MergeByKey as Key, MergePrimitives as Prim, Replace};

/// (type, field, field type, list strategy).
const FIELDS: &[(&str, &str, &str, ListStrategy)] = &[
    ("ObjectMeta", "ownerReferences", "OwnerReference", Key("uid")),
    ("ObjectMeta", "finalizers", "", Prim),
    // admissionregistration.k8s.io/v1
    ("ValidatingWebhookConfiguration", "webhooks", "Webhook", Key("name")),
    ("MutatingWebhookConfiguration", "webhooks", "Webhook", Key("name")),
    // apps/v1
    ("Deployment", "spec", "DeploymentSpec", Replace),
    ("Deployment", "status", "DeploymentStatus", Replace),
    ("DeploymentSpec", "template", "PodTemplateSpec", Replace),
    ("DeploymentSpec", "selector", "LabelSelector", Replace),
    ("DeploymentSpec", "strategy", "DeploymentStrategy", Replace),
    ("ReplicaSet", "spec", "ReplicaSetSpec", Replace),
    ("ReplicaSet", "status", "ReplicaSetStatus", Replace),
    ("ReplicaSetSpec", "template", "PodTemplateSpec", Replace),
    ("DaemonSet", "spec", "DaemonSetSpec", Replace),
    ("DaemonSet", "status", "DaemonSetStatus", Replace),
    ("DaemonSetSpec", "template", "PodTemplateSpec", Replace),
    ("StatefulSet", "spec", "StatefulSetSpec", Replace),
    ("StatefulSet", "status", "StatefulSetStatus", Replace),
    ("StatefulSetSpec", "template", "PodTemplateSpec", Replace),
    ("StatefulSetSpec", "volumeClaimTemplates", "PersistentVolumeClaim", Replace),
    ("ControllerRevision", "data", "", Replace),
    // batch/v1
    ("Job", "spec", "JobSpec", Replace),
    ("Job", "status", "JobStatus", Replace),
    ("JobSpec", "template", "PodTemplateSpec", Replace),
    ("CronJob", "spec", "CronJobSpec", Replace),
    ("CronJob", "status", "CronJobStatus", Replace),
    ("CronJobSpec", "jobTemplate", "JobTemplateSpec", Replace),
    ("JobTemplateSpec", "spec", "JobSpec", Replace),
    // core/v1
    ("PodTemplate", "template", "PodTemplateSpec", Replace),
    ("ReplicationController", "spec", "ReplicationControllerSpec", Replace),
    ("ReplicationController", "status", "ReplicationControllerStatus", Replace),
    ("ReplicationControllerSpec", "template", "PodTemplateSpec", Replace),
    ("PodTemplateSpec", "spec", "PodSpec", Replace),
    ("Pod", "spec", "PodSpec", Replace),
    ("Pod", "status", "PodStatus", Replace),
    ("PodSpec", "containers", "Container", Key("name")),
    ("PodSpec", "initContainers", "Container", Key("name")),
    ("PodSpec", "ephemeralContainers", "Container", Key("name")),
    ("PodSpec", "volumes", "Volume", Key("name")),
    ("PodSpec", "imagePullSecrets", "LocalObjectReference", Key("name")),
    ("PodSpec", "hostAliases", "HostAlias", Key("ip")),
    ("PodSpec", "topologySpreadConstraints", "TopologySpreadConstraint", Key("topologyKey")),
    ("PodSpec", "schedulingGates", "PodSchedulingGate", Key("name")),
    ("PodSpec", "resourceClaims", "PodResourceClaim", Key("name")),
    ("Container", "ports", "ContainerPort", Key("containerPort")),
    ("Container", "env", "EnvVar", Key("name")),
    ("Container", "volumeMounts", "VolumeMount", Key("mountPath")),
    ("Container", "volumeDevices", "VolumeDevice", Key("devicePath")),
    ("PodStatus", "conditions", "PodCondition", Key("type")),
    ("PodStatus", "podIPs", "PodIP", Key("ip")),
    ("PodStatus", "hostIPs", "HostIP", Key("ip")),
    ("PodStatus", "resourceClaimStatuses", "PodResourceClaimStatus", Key("name")),
    ("Service", "spec", "ServiceSpec", Replace),
    ("Service", "status", "ServiceStatus", Replace),
    ("ServiceSpec", "ports", "ServicePort", Key("port")),
    ("ServiceAccount", "secrets", "ObjectReference", Key("name")),
    ("Node", "spec", "NodeSpec", Replace),
    ("Node", "status", "NodeStatus", Replace),
    ("NodeSpec", "podCIDRs", "", Prim),
    ("NodeStatus", "addresses", "NodeAddress", Key("type")),
    ("Namespace", "status", "NamespaceStatus", Replace),
    ("PersistentVolumeClaim", "status", "PersistentVolumeClaimStatus", Replace),
    ("PersistentVolume", "status", "PersistentVolumeStatus", Replace),
    ("Ingress", "status", "IngressStatus", Replace),
    ("HorizontalPodAutoscaler", "status", "HorizontalPodAutoscalerStatus", Replace),
    ("PodDisruptionBudget", "status", "PodDisruptionBudgetStatus", Replace),
    ("CustomResourceDefinition", "status", "CustomResourceDefinitionStatus", Replace),
];

/// Built-in kinds served by shoal for which the strategic merge metadata above is authoritative.
/// Custom resources are refused by kube-apiserver for strategic merge patch (415).
const KINDS: &[(&str, &str)] = &[
    ("", "Pod"),
    ("", "PodTemplate"),
    ("", "ReplicationController"),
    ("", "Service"),
    ("", "Endpoints"),
    ("", "ConfigMap"),
    ("", "Secret"),
    ("", "ServiceAccount"),
    ("", "Namespace"),
    ("", "Node"),
    ("", "Event"),
    ("", "PersistentVolume"),
    ("", "PersistentVolumeClaim"),
    ("apps", "Deployment"),
    ("apps", "ReplicaSet"),
    ("apps", "DaemonSet"),
    ("apps", "StatefulSet"),
    ("apps", "ControllerRevision"),
    ("batch", "Job"),
    ("batch", "CronJob"),
    ("networking.k8s.io", "Ingress"),
    ("networking.k8s.io", "IngressClass"),
    ("networking.k8s.io", "NetworkPolicy"),
    ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"),
    ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"),
    ("discovery.k8s.io", "EndpointSlice"),
    ("coordination.k8s.io", "Lease"),
    ("autoscaling", "HorizontalPodAutoscaler"),
    ("autoscaling", "Scale"),
    ("policy", "PodDisruptionBudget"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ("events.k8s.io", "Event"),
];

/// How the list field `field` of the Go type `ty` (`PodSpec`, `Container`) merges, for the
/// fields that have merge metadata (None: the list is replaced). Published as
/// `x-kubernetes-patch-strategy`/`x-kubernetes-patch-merge-key` in OpenAPI v2.
pub fn list_strategy(ty: &str, field: &str) -> Option<ListStrategy> {
    if let Some((_, _, _, list)) = FIELDS.iter().find(|(t, f, _, _)| *t == ty && *f == field) {
        return (*list != Replace).then_some(*list);
    }
    (field == "conditions" && ty.ends_with("Status")).then_some(Key("type"))
}

/// Whether a strategic merge patch is accepted for this group and kind (built-in kinds only).
pub fn strategic_merge_supported(group: &str, kind: &str) -> bool {
    KINDS.iter().any(|(g, k)| *g == group && *k == kind)
}

/// The root type name of an object of this group and kind, when it has merge metadata.
pub(crate) fn root_type(group: &str, kind: &str) -> Option<&'static str> {
    KINDS.iter().find(|(g, k)| *g == group && *k == kind).map(|(_, k)| *k)
}

/// Merge metadata of `field` inside a value of type `ty` (None: a type without metadata).
pub(crate) fn field(ty: Option<&'static str>, field: &str) -> FieldMeta {
    let Some(ty) = ty else {
        return FieldMeta { ty: None, list: Replace };
    };
    if field == "metadata" {
        return FieldMeta { ty: Some("ObjectMeta"), list: Replace };
    }
    if let Some((_, _, child, list)) = FIELDS.iter().find(|(t, f, _, _)| *t == ty && *f == field) {
        let ty = if child.is_empty() { None } else { Some(*child) };
        return FieldMeta { ty, list: *list };
    }
    // Every `conditions` list of a status merges by `type` in k8s.io/api.
    if field == "conditions" && ty.ends_with("Status") {
        return FieldMeta { ty: Some("Condition"), list: Key("type") };
    }
    FieldMeta { ty: Some("Unknown"), list: Replace }
}
