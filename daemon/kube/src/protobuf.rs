//! Decoding of Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) into
//! the JSON object the same client would have sent as JSON.
//!
//! A body is the magic `k8s\0` followed by a `runtime.Unknown` message
//! `{1: TypeMeta{1: apiVersion, 2: kind}, 2: raw, 3: contentEncoding, 4: contentType}` whose
//! `raw` is the object encoded with the field numbers of k8s.io/api `generated.proto`. The tables
//! below map those numbers to JSON names for the kinds `kubectl create <generator>` sends (and
//! the types they contain), with the emptiness rules of Go's `encoding/json` so that the result
//! equals what the client would have sent as JSON (`"creationTimestamp": null`,
//! `"resources": {}`, `"status": {}` included). Unknown fields are skipped.

use base64::Engine as _;
use serde_json::{Map, Value};

/// The four bytes every Kubernetes protobuf body starts with.
pub const MAGIC: &[u8] = b"k8s\0";

/// Why a protobuf body could not be decoded. The API answers 400 BadRequest for
/// every variant except [`Error::UnsupportedKind`] (415 UnsupportedMediaType).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("protobuf body does not start with the Kubernetes magic \"k8s\\0\"")]
    ReadMagic,
    #[error("malformed protobuf at byte {offset}: {reason}")]
    ReadWire { offset: usize, reason: &'static str },
    #[error("protobuf field {field} of {message} has wire type {wire_type}, expected {expected}")]
    WireType { message: &'static str, field: u32, wire_type: u8, expected: &'static str },
    #[error("protobuf body with content encoding {0:?} is not supported")]
    ContentEncoding(String),
    #[error("protobuf bodies of kind {kind:?} in {api_version:?} are not supported, send JSON")]
    UnsupportedKind { api_version: String, kind: String },
    #[error("protobuf timestamp {0} is out of range")]
    Timestamp(i64),
}

impl Error {
    /// HTTP status the API answers with.
    pub fn http_code(&self) -> u16 {
        match self {
            Error::UnsupportedKind { .. } => 415,
            _ => 400,
        }
    }

    /// The `Status` object the API answers with.
    pub fn to_status(&self) -> Value {
        let reason = if self.http_code() == 415 { "UnsupportedMediaType" } else { "BadRequest" };
        serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.to_string(), "reason": reason, "code": self.http_code(),
        })
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Decodes a whole request body (magic included) into a JSON object with `kind` and
/// `apiVersion` set from the envelope's TypeMeta.
pub fn decode(body: &[u8]) -> Result<Value> {
    let rest = body.strip_prefix(MAGIC).ok_or(Error::ReadMagic)?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    let mut encoding = String::new();
    let mut r = Reader::new(rest);
    while let Some((num, wire)) = r.next()? {
        match (num, wire) {
            (1, Wire::Bytes(b)) => {
                let mut tm = Reader::new(b);
                while let Some((n, w)) = tm.next()? {
                    match (n, w) {
                        (1, Wire::Bytes(s)) => api_version = text(s),
                        (2, Wire::Bytes(s)) => kind = text(s),
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = b,
            (3, Wire::Bytes(b)) => encoding = text(b),
            _ => {}
        }
    }
    if !encoding.is_empty() {
        return Err(Error::ContentEncoding(encoding));
    }
    let msg = message_for(&api_version, &kind)
        .ok_or_else(|| Error::UnsupportedKind { api_version: api_version.clone(), kind: kind.clone() })?;
    let mut out = Map::new();
    out.insert("kind".into(), Value::String(kind));
    out.insert("apiVersion".into(), Value::String(api_version));
    decode_into(msg, raw, &mut out)?;
    Ok(Value::Object(out))
}

/// Whether protobuf bodies of this apiVersion and kind can be decoded.
pub fn is_supported(api_version: &str, kind: &str) -> bool {
    message_for(api_version, kind).is_some()
}

fn message_for(api_version: &str, kind: &str) -> Option<&'static Msg> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => &NAMESPACE,
        ("v1", "ConfigMap") => &CONFIG_MAP,
        ("v1", "Secret") => &SECRET,
        ("v1", "Service") => &SERVICE,
        ("v1", "ServiceAccount") => &SERVICE_ACCOUNT,
        ("v1", "Pod") => &POD,
        ("apps/v1", "Deployment") => &DEPLOYMENT,
        ("batch/v1", "Job") => &JOB,
        ("batch/v1", "CronJob") => &CRON_JOB,
        ("networking.k8s.io/v1", "Ingress") => &INGRESS,
        ("policy/v1", "PodDisruptionBudget") => &POD_DISRUPTION_BUDGET,
        ("certificates.k8s.io/v1", "CertificateSigningRequest") => &CSR,
        ("rbac.authorization.k8s.io/v1", "Role") => &ROLE,
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => &CLUSTER_ROLE,
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => &ROLE_BINDING,
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => &ROLE_BINDING,
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => &SELF_SUBJECT_ACCESS_REVIEW,
        ("authorization.k8s.io/v1", "SubjectAccessReview" | "LocalSubjectAccessReview") => &SUBJECT_ACCESS_REVIEW,
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => &SELF_SUBJECT_RULES_REVIEW,
        ("authentication.k8s.io/v1", "SelfSubjectReview") => &SELF_SUBJECT_REVIEW,
        ("authentication.k8s.io/v1", "TokenRequest") => &TOKEN_REQUEST,
        _ => return None,
    })
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Wire format

#[derive(Debug, Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    /// Skipped: no field of the tables is fixed64.
    Fixed64,
    Bytes(&'a [u8]),
    /// Skipped: no field of the tables is fixed32.
    Fixed32,
}

impl Wire<'_> {
    fn code(&self) -> u8 {
        match self {
            Wire::Varint(_) => 0,
            Wire::Fixed64 => 1,
            Wire::Bytes(_) => 2,
            Wire::Fixed32 => 5,
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn err(&self, reason: &'static str) -> Error {
        Error::ReadWire { offset: self.pos, reason }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err("truncated varint"));
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.err("length overflows"))?;
        let s = self.buf.get(self.pos..end).ok_or_else(|| self.err("truncated field"))?;
        self.pos = end;
        Ok(s)
    }

    /// The next field, or None at the end of the message.
    fn next(&mut self) -> Result<Option<(u32, Wire<'a>)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let num = u32::try_from(key >> 3).map_err(|_| self.err("field number out of range"))?;
        if num == 0 {
            return Err(self.err("field number 0"));
        }
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed64
            }
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| self.err("length out of range"))?;
                Wire::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed32
            }
            _ => return Err(self.err("unsupported wire type (groups)")),
        };
        Ok(Some((num, wire)))
    }
}

// ---------------------------------------------------------------------------------------------
// Schema

/// The value type of a field.
#[derive(Clone, Copy)]
enum K {
    Str,
    /// `[]byte`: base64 in JSON.
    Bytes,
    Bool,
    I32,
    I64,
    Msg(&'static Msg),
    /// A Go struct embedded with `json:",inline"`: its fields land in the parent object.
    Inline(&'static Msg),
    /// metav1.Time {1: seconds, 2: nanos}: RFC 3339 in seconds, `null` when zero.
    Time,
    /// intstr.IntOrString {1: type, 2: intVal, 3: strVal}.
    IntOrString,
    /// resource.Quantity {1: string}.
    Quantity,
    /// metav1.FieldsV1 {1: raw}: the raw bytes are the JSON of the field set.
    FieldsV1,
    StrMap,
    BytesMap,
    QuantityMap,
}

/// How Go's encoding/json treats the field.
#[derive(Clone, Copy, PartialEq, Eq)]
enum C {
    /// A value field without `omitempty` (structs behave so even with `omitempty`).
    Req,
    /// A value field with `omitempty`: left out when zero.
    Omit,
    /// A pointer: present exactly when set.
    Ptr,
    /// A slice without `omitempty`: `null` when empty.
    Rep,
    /// A slice or map with `omitempty`.
    RepOmit,
}

struct F {
    n: u32,
    name: &'static str,
    k: K,
    c: C,
}

struct Msg {
    name: &'static str,
    fields: &'static [F],
}

const fn f(n: u32, name: &'static str, k: K, c: C) -> F {
    F { n, name, k, c }
}

use C::{Omit, Ptr, Rep, RepOmit, Req};
use K::{Bool, Inline, IntOrString, Quantity, QuantityMap, Str, StrMap, Time, I32, I64};

const fn m(msg: &'static Msg) -> K {
    K::Msg(msg)
}

// meta/v1
static OBJECT_META: Msg = Msg {
    name: "ObjectMeta",
    fields: &[
        f(1, "name", Str, Omit),
        f(2, "generateName", Str, Omit),
        f(3, "namespace", Str, Omit),
        f(4, "selfLink", Str, Omit),
        f(5, "uid", Str, Omit),
        f(6, "resourceVersion", Str, Omit),
        f(7, "generation", I64, Omit),
        f(8, "creationTimestamp", Time, Req),
        f(9, "deletionTimestamp", Time, Ptr),
        f(10, "deletionGracePeriodSeconds", I64, Ptr),
        f(11, "labels", StrMap, RepOmit),
        f(12, "annotations", StrMap, RepOmit),
        f(13, "ownerReferences", m(&OWNER_REFERENCE), RepOmit),
        f(14, "finalizers", Str, RepOmit),
        f(17, "managedFields", m(&MANAGED_FIELDS_ENTRY), RepOmit),
    ],
};
static MANAGED_FIELDS_ENTRY: Msg = Msg {
    name: "ManagedFieldsEntry",
    fields: &[
        f(1, "manager", Str, Omit),
        f(2, "operation", Str, Omit),
        f(3, "apiVersion", Str, Omit),
        f(4, "time", Time, Ptr),
        f(6, "fieldsType", Str, Omit),
        f(7, "fieldsV1", K::FieldsV1, Ptr),
        f(8, "subresource", Str, Omit),
    ],
};
static OWNER_REFERENCE: Msg = Msg {
    name: "OwnerReference",
    fields: &[
        f(5, "apiVersion", Str, Req),
        f(1, "kind", Str, Req),
        f(3, "name", Str, Req),
        f(4, "uid", Str, Req),
        f(6, "controller", Bool, Ptr),
        f(7, "blockOwnerDeletion", Bool, Ptr),
    ],
};
static LABEL_SELECTOR: Msg = Msg {
    name: "LabelSelector",
    fields: &[f(1, "matchLabels", StrMap, RepOmit), f(2, "matchExpressions", m(&LABEL_SELECTOR_REQUIREMENT), RepOmit)],
};
static LABEL_SELECTOR_REQUIREMENT: Msg = Msg {
    name: "LabelSelectorRequirement",
    fields: &[f(1, "key", Str, Req), f(2, "operator", Str, Req), f(3, "values", Str, RepOmit)],
};
static CONDITION: Msg = Msg {
    name: "Condition",
    fields: &[
        f(1, "type", Str, Req),
        f(2, "status", Str, Req),
        f(3, "observedGeneration", I64, Omit),
        f(4, "lastTransitionTime", Time, Req),
        f(5, "reason", Str, Req),
        f(6, "message", Str, Req),
    ],
};

// core/v1: pods
static POD_TEMPLATE_SPEC: Msg =
    Msg { name: "PodTemplateSpec", fields: &[f(1, "metadata", m(&OBJECT_META), Req), f(2, "spec", m(&POD_SPEC), Req)] };
static POD_SPEC: Msg = Msg {
    name: "PodSpec",
    fields: &[
        f(1, "volumes", m(&VOLUME), RepOmit),
        f(20, "initContainers", m(&CONTAINER), RepOmit),
        f(2, "containers", m(&CONTAINER), Rep),
        f(34, "ephemeralContainers", m(&CONTAINER), RepOmit),
        f(3, "restartPolicy", Str, Omit),
        f(4, "terminationGracePeriodSeconds", I64, Ptr),
        f(5, "activeDeadlineSeconds", I64, Ptr),
        f(6, "dnsPolicy", Str, Omit),
        f(7, "nodeSelector", StrMap, RepOmit),
        f(8, "serviceAccountName", Str, Omit),
        f(9, "serviceAccount", Str, Omit),
        f(21, "automountServiceAccountToken", Bool, Ptr),
        f(10, "nodeName", Str, Omit),
        f(11, "hostNetwork", Bool, Omit),
        f(12, "hostPID", Bool, Omit),
        f(13, "hostIPC", Bool, Omit),
        f(27, "shareProcessNamespace", Bool, Ptr),
        f(14, "securityContext", m(&POD_SECURITY_CONTEXT), Ptr),
        f(15, "imagePullSecrets", m(&LOCAL_OBJECT_REFERENCE), RepOmit),
        f(16, "hostname", Str, Omit),
        f(17, "subdomain", Str, Omit),
        f(18, "affinity", m(&AFFINITY), Ptr),
        f(19, "schedulerName", Str, Omit),
        f(22, "tolerations", m(&TOLERATION), RepOmit),
        f(23, "hostAliases", m(&HOST_ALIAS), RepOmit),
        f(24, "priorityClassName", Str, Omit),
        f(25, "priority", I32, Ptr),
        f(26, "dnsConfig", m(&POD_DNS_CONFIG), Ptr),
        f(28, "readinessGates", m(&POD_READINESS_GATE), RepOmit),
        f(29, "runtimeClassName", Str, Ptr),
        f(30, "enableServiceLinks", Bool, Ptr),
        f(31, "preemptionPolicy", Str, Ptr),
        f(32, "overhead", QuantityMap, RepOmit),
        f(33, "topologySpreadConstraints", m(&TOPOLOGY_SPREAD_CONSTRAINT), RepOmit),
        f(35, "setHostnameAsFQDN", Bool, Ptr),
        f(36, "os", m(&POD_OS), Ptr),
        f(37, "hostUsers", Bool, Ptr),
        f(38, "schedulingGates", m(&NAME_ONLY), RepOmit),
    ],
};
static NAME_ONLY: Msg = Msg { name: "PodSchedulingGate", fields: &[f(1, "name", Str, Req)] };
static POD_OS: Msg = Msg { name: "PodOS", fields: &[f(1, "name", Str, Req)] };
static LOCAL_OBJECT_REFERENCE: Msg = Msg { name: "LocalObjectReference", fields: &[f(1, "name", Str, Omit)] };
static TOLERATION: Msg = Msg {
    name: "Toleration",
    fields: &[
        f(1, "key", Str, Omit),
        f(2, "operator", Str, Omit),
        f(3, "value", Str, Omit),
        f(4, "effect", Str, Omit),
        f(5, "tolerationSeconds", I64, Ptr),
    ],
};
static HOST_ALIAS: Msg = Msg { name: "HostAlias", fields: &[f(1, "ip", Str, Req), f(2, "hostnames", Str, RepOmit)] };
static POD_DNS_CONFIG: Msg = Msg {
    name: "PodDNSConfig",
    fields: &[
        f(1, "nameservers", Str, RepOmit),
        f(2, "searches", Str, RepOmit),
        f(3, "options", m(&POD_DNS_CONFIG_OPTION), RepOmit),
    ],
};
static POD_DNS_CONFIG_OPTION: Msg =
    Msg { name: "PodDNSConfigOption", fields: &[f(1, "name", Str, Omit), f(2, "value", Str, Ptr)] };
static POD_READINESS_GATE: Msg = Msg { name: "PodReadinessGate", fields: &[f(1, "conditionType", Str, Req)] };
static TOPOLOGY_SPREAD_CONSTRAINT: Msg = Msg {
    name: "TopologySpreadConstraint",
    fields: &[
        f(1, "maxSkew", I32, Req),
        f(2, "topologyKey", Str, Req),
        f(3, "whenUnsatisfiable", Str, Req),
        f(4, "labelSelector", m(&LABEL_SELECTOR), Ptr),
        f(5, "minDomains", I32, Ptr),
        f(6, "nodeAffinityPolicy", Str, Ptr),
        f(7, "nodeTaintsPolicy", Str, Ptr),
        f(8, "matchLabelKeys", Str, RepOmit),
    ],
};
static POD_SECURITY_CONTEXT: Msg = Msg {
    name: "PodSecurityContext",
    fields: &[
        f(1, "seLinuxOptions", m(&SE_LINUX_OPTIONS), Ptr),
        f(8, "windowsOptions", m(&WINDOWS_OPTIONS), Ptr),
        f(2, "runAsUser", I64, Ptr),
        f(6, "runAsGroup", I64, Ptr),
        f(3, "runAsNonRoot", Bool, Ptr),
        f(4, "supplementalGroups", I64, RepOmit),
        f(5, "fsGroup", I64, Ptr),
        f(7, "sysctls", m(&SYSCTL), RepOmit),
        f(9, "fsGroupChangePolicy", Str, Ptr),
        f(10, "seccompProfile", m(&SECCOMP_PROFILE), Ptr),
        f(11, "appArmorProfile", m(&SECCOMP_PROFILE), Ptr),
    ],
};
static SYSCTL: Msg = Msg { name: "Sysctl", fields: &[f(1, "name", Str, Req), f(2, "value", Str, Req)] };
static SE_LINUX_OPTIONS: Msg = Msg {
    name: "SELinuxOptions",
    fields: &[f(1, "user", Str, Omit), f(2, "role", Str, Omit), f(3, "type", Str, Omit), f(4, "level", Str, Omit)],
};
static WINDOWS_OPTIONS: Msg = Msg {
    name: "WindowsSecurityContextOptions",
    fields: &[
        f(1, "gmsaCredentialSpecName", Str, Ptr),
        f(2, "gmsaCredentialSpec", Str, Ptr),
        f(3, "runAsUserName", Str, Ptr),
        f(4, "hostProcess", Bool, Ptr),
    ],
};
static SECCOMP_PROFILE: Msg =
    Msg { name: "SeccompProfile", fields: &[f(1, "type", Str, Req), f(2, "localhostProfile", Str, Ptr)] };
static AFFINITY: Msg = Msg {
    name: "Affinity",
    fields: &[
        f(1, "nodeAffinity", m(&NODE_AFFINITY), Ptr),
        f(2, "podAffinity", m(&POD_AFFINITY), Ptr),
        f(3, "podAntiAffinity", m(&POD_AFFINITY), Ptr),
    ],
};
static NODE_AFFINITY: Msg = Msg {
    name: "NodeAffinity",
    fields: &[
        f(1, "requiredDuringSchedulingIgnoredDuringExecution", m(&NODE_SELECTOR), Ptr),
        f(2, "preferredDuringSchedulingIgnoredDuringExecution", m(&PREFERRED_SCHEDULING_TERM), RepOmit),
    ],
};
static NODE_SELECTOR: Msg =
    Msg { name: "NodeSelector", fields: &[f(1, "nodeSelectorTerms", m(&NODE_SELECTOR_TERM), Rep)] };
static NODE_SELECTOR_TERM: Msg = Msg {
    name: "NodeSelectorTerm",
    fields: &[
        f(1, "matchExpressions", m(&NODE_SELECTOR_REQUIREMENT), RepOmit),
        f(2, "matchFields", m(&NODE_SELECTOR_REQUIREMENT), RepOmit),
    ],
};
static NODE_SELECTOR_REQUIREMENT: Msg = Msg {
    name: "NodeSelectorRequirement",
    fields: &[f(1, "key", Str, Req), f(2, "operator", Str, Req), f(3, "values", Str, RepOmit)],
};
static PREFERRED_SCHEDULING_TERM: Msg = Msg {
    name: "PreferredSchedulingTerm",
    fields: &[f(1, "weight", I32, Req), f(2, "preference", m(&NODE_SELECTOR_TERM), Req)],
};
static POD_AFFINITY: Msg = Msg {
    name: "PodAffinity",
    fields: &[
        f(1, "requiredDuringSchedulingIgnoredDuringExecution", m(&POD_AFFINITY_TERM), RepOmit),
        f(2, "preferredDuringSchedulingIgnoredDuringExecution", m(&WEIGHTED_POD_AFFINITY_TERM), RepOmit),
    ],
};
static POD_AFFINITY_TERM: Msg = Msg {
    name: "PodAffinityTerm",
    fields: &[
        f(1, "labelSelector", m(&LABEL_SELECTOR), Ptr),
        f(2, "namespaces", Str, RepOmit),
        f(3, "topologyKey", Str, Req),
        f(4, "namespaceSelector", m(&LABEL_SELECTOR), Ptr),
        f(5, "matchLabelKeys", Str, RepOmit),
        f(6, "mismatchLabelKeys", Str, RepOmit),
    ],
};
static WEIGHTED_POD_AFFINITY_TERM: Msg = Msg {
    name: "WeightedPodAffinityTerm",
    fields: &[f(1, "weight", I32, Req), f(2, "podAffinityTerm", m(&POD_AFFINITY_TERM), Req)],
};
static CONTAINER: Msg = Msg {
    name: "Container",
    fields: &[
        f(1, "name", Str, Req),
        f(2, "image", Str, Omit),
        f(3, "command", Str, RepOmit),
        f(4, "args", Str, RepOmit),
        f(5, "workingDir", Str, Omit),
        f(6, "ports", m(&CONTAINER_PORT), RepOmit),
        f(19, "envFrom", m(&ENV_FROM_SOURCE), RepOmit),
        f(7, "env", m(&ENV_VAR), RepOmit),
        f(8, "resources", m(&RESOURCE_REQUIREMENTS), Req),
        f(23, "resizePolicy", m(&CONTAINER_RESIZE_POLICY), RepOmit),
        f(24, "restartPolicy", Str, Ptr),
        f(9, "volumeMounts", m(&VOLUME_MOUNT), RepOmit),
        f(21, "volumeDevices", m(&VOLUME_DEVICE), RepOmit),
        f(10, "livenessProbe", m(&PROBE), Ptr),
        f(11, "readinessProbe", m(&PROBE), Ptr),
        f(22, "startupProbe", m(&PROBE), Ptr),
        f(12, "lifecycle", m(&LIFECYCLE), Ptr),
        f(13, "terminationMessagePath", Str, Omit),
        f(20, "terminationMessagePolicy", Str, Omit),
        f(14, "imagePullPolicy", Str, Omit),
        f(15, "securityContext", m(&SECURITY_CONTEXT), Ptr),
        f(16, "stdin", Bool, Omit),
        f(17, "stdinOnce", Bool, Omit),
        f(18, "tty", Bool, Omit),
    ],
};
static CONTAINER_PORT: Msg = Msg {
    name: "ContainerPort",
    fields: &[
        f(1, "name", Str, Omit),
        f(2, "hostPort", I32, Omit),
        f(3, "containerPort", I32, Req),
        f(4, "protocol", Str, Omit),
        f(5, "hostIP", Str, Omit),
    ],
};
static CONTAINER_RESIZE_POLICY: Msg =
    Msg { name: "ContainerResizePolicy", fields: &[f(1, "resourceName", Str, Req), f(2, "restartPolicy", Str, Req)] };
static ENV_FROM_SOURCE: Msg = Msg {
    name: "EnvFromSource",
    fields: &[
        f(1, "prefix", Str, Omit),
        f(2, "configMapRef", m(&ENV_SOURCE_REF), Ptr),
        f(3, "secretRef", m(&ENV_SOURCE_REF), Ptr),
    ],
};
static ENV_SOURCE_REF: Msg = Msg {
    name: "ConfigMapEnvSource",
    fields: &[f(1, "", Inline(&LOCAL_OBJECT_REFERENCE), Req), f(2, "optional", Bool, Ptr)],
};
static ENV_VAR: Msg = Msg {
    name: "EnvVar",
    fields: &[f(1, "name", Str, Req), f(2, "value", Str, Omit), f(3, "valueFrom", m(&ENV_VAR_SOURCE), Ptr)],
};
static ENV_VAR_SOURCE: Msg = Msg {
    name: "EnvVarSource",
    fields: &[
        f(1, "fieldRef", m(&OBJECT_FIELD_SELECTOR), Ptr),
        f(2, "resourceFieldRef", m(&RESOURCE_FIELD_SELECTOR), Ptr),
        f(3, "configMapKeyRef", m(&KEY_SELECTOR), Ptr),
        f(4, "secretKeyRef", m(&KEY_SELECTOR), Ptr),
    ],
};
static OBJECT_FIELD_SELECTOR: Msg =
    Msg { name: "ObjectFieldSelector", fields: &[f(1, "apiVersion", Str, Omit), f(2, "fieldPath", Str, Req)] };
static RESOURCE_FIELD_SELECTOR: Msg = Msg {
    name: "ResourceFieldSelector",
    fields: &[f(1, "containerName", Str, Omit), f(2, "resource", Str, Req), f(3, "divisor", Quantity, Req)],
};
static KEY_SELECTOR: Msg = Msg {
    name: "ConfigMapKeySelector",
    fields: &[f(1, "", Inline(&LOCAL_OBJECT_REFERENCE), Req), f(2, "key", Str, Req), f(3, "optional", Bool, Ptr)],
};
static RESOURCE_REQUIREMENTS: Msg = Msg {
    name: "ResourceRequirements",
    fields: &[
        f(1, "limits", QuantityMap, RepOmit),
        f(2, "requests", QuantityMap, RepOmit),
        f(3, "claims", m(&RESOURCE_CLAIM), RepOmit),
    ],
};
static RESOURCE_CLAIM: Msg =
    Msg { name: "ResourceClaim", fields: &[f(1, "name", Str, Req), f(2, "request", Str, Omit)] };
static VOLUME_MOUNT: Msg = Msg {
    name: "VolumeMount",
    fields: &[
        f(1, "name", Str, Req),
        f(2, "readOnly", Bool, Omit),
        f(7, "recursiveReadOnly", Str, Ptr),
        f(3, "mountPath", Str, Req),
        f(4, "subPath", Str, Omit),
        f(5, "mountPropagation", Str, Ptr),
        f(6, "subPathExpr", Str, Omit),
    ],
};
static VOLUME_DEVICE: Msg =
    Msg { name: "VolumeDevice", fields: &[f(1, "name", Str, Req), f(2, "devicePath", Str, Req)] };
static PROBE: Msg = Msg {
    name: "Probe",
    fields: &[
        f(1, "", Inline(&PROBE_HANDLER), Req),
        f(2, "initialDelaySeconds", I32, Omit),
        f(3, "timeoutSeconds", I32, Omit),
        f(4, "periodSeconds", I32, Omit),
        f(5, "successThreshold", I32, Omit),
        f(6, "failureThreshold", I32, Omit),
        f(7, "terminationGracePeriodSeconds", I64, Ptr),
    ],
};
static PROBE_HANDLER: Msg = Msg {
    name: "ProbeHandler",
    fields: &[
        f(1, "exec", m(&EXEC_ACTION), Ptr),
        f(2, "httpGet", m(&HTTP_GET_ACTION), Ptr),
        f(3, "tcpSocket", m(&TCP_SOCKET_ACTION), Ptr),
        f(4, "grpc", m(&GRPC_ACTION), Ptr),
    ],
};
static LIFECYCLE: Msg = Msg {
    name: "Lifecycle",
    fields: &[f(1, "postStart", m(&LIFECYCLE_HANDLER), Ptr), f(2, "preStop", m(&LIFECYCLE_HANDLER), Ptr)],
};
static LIFECYCLE_HANDLER: Msg = Msg {
    name: "LifecycleHandler",
    fields: &[
        f(1, "exec", m(&EXEC_ACTION), Ptr),
        f(2, "httpGet", m(&HTTP_GET_ACTION), Ptr),
        f(3, "tcpSocket", m(&TCP_SOCKET_ACTION), Ptr),
        f(4, "sleep", m(&SLEEP_ACTION), Ptr),
    ],
};
static SLEEP_ACTION: Msg = Msg { name: "SleepAction", fields: &[f(1, "seconds", I64, Req)] };
static EXEC_ACTION: Msg = Msg { name: "ExecAction", fields: &[f(1, "command", Str, RepOmit)] };
static HTTP_GET_ACTION: Msg = Msg {
    name: "HTTPGetAction",
    fields: &[
        f(1, "path", Str, Omit),
        f(2, "port", IntOrString, Req),
        f(3, "host", Str, Omit),
        f(4, "scheme", Str, Omit),
        f(5, "httpHeaders", m(&HTTP_HEADER), RepOmit),
    ],
};
static HTTP_HEADER: Msg = Msg { name: "HTTPHeader", fields: &[f(1, "name", Str, Req), f(2, "value", Str, Req)] };
static TCP_SOCKET_ACTION: Msg =
    Msg { name: "TCPSocketAction", fields: &[f(1, "port", IntOrString, Req), f(2, "host", Str, Omit)] };
static GRPC_ACTION: Msg = Msg { name: "GRPCAction", fields: &[f(1, "port", I32, Req), f(2, "service", Str, Ptr)] };
static SECURITY_CONTEXT: Msg = Msg {
    name: "SecurityContext",
    fields: &[
        f(1, "capabilities", m(&CAPABILITIES), Ptr),
        f(2, "privileged", Bool, Ptr),
        f(3, "seLinuxOptions", m(&SE_LINUX_OPTIONS), Ptr),
        f(10, "windowsOptions", m(&WINDOWS_OPTIONS), Ptr),
        f(4, "runAsUser", I64, Ptr),
        f(8, "runAsGroup", I64, Ptr),
        f(5, "runAsNonRoot", Bool, Ptr),
        f(6, "readOnlyRootFilesystem", Bool, Ptr),
        f(7, "allowPrivilegeEscalation", Bool, Ptr),
        f(9, "procMount", Str, Ptr),
        f(11, "seccompProfile", m(&SECCOMP_PROFILE), Ptr),
        f(12, "appArmorProfile", m(&SECCOMP_PROFILE), Ptr),
    ],
};
static CAPABILITIES: Msg =
    Msg { name: "Capabilities", fields: &[f(1, "add", Str, RepOmit), f(2, "drop", Str, RepOmit)] };
static VOLUME: Msg = Msg { name: "Volume", fields: &[f(1, "name", Str, Req), f(2, "", Inline(&VOLUME_SOURCE), Req)] };
static VOLUME_SOURCE: Msg = Msg {
    name: "VolumeSource",
    fields: &[
        f(1, "hostPath", m(&HOST_PATH_VOLUME_SOURCE), Ptr),
        f(2, "emptyDir", m(&EMPTY_DIR_VOLUME_SOURCE), Ptr),
        f(6, "secret", m(&SECRET_VOLUME_SOURCE), Ptr),
        f(7, "nfs", m(&NFS_VOLUME_SOURCE), Ptr),
        f(10, "persistentVolumeClaim", m(&PVC_VOLUME_SOURCE), Ptr),
        f(16, "downwardAPI", m(&DOWNWARD_API_VOLUME_SOURCE), Ptr),
        f(19, "configMap", m(&CONFIG_MAP_VOLUME_SOURCE), Ptr),
        f(26, "projected", m(&PROJECTED_VOLUME_SOURCE), Ptr),
        f(28, "csi", m(&CSI_VOLUME_SOURCE), Ptr),
    ],
};
static HOST_PATH_VOLUME_SOURCE: Msg =
    Msg { name: "HostPathVolumeSource", fields: &[f(1, "path", Str, Req), f(2, "type", Str, Ptr)] };
static EMPTY_DIR_VOLUME_SOURCE: Msg =
    Msg { name: "EmptyDirVolumeSource", fields: &[f(1, "medium", Str, Omit), f(2, "sizeLimit", Quantity, Ptr)] };
static SECRET_VOLUME_SOURCE: Msg = Msg {
    name: "SecretVolumeSource",
    fields: &[
        f(1, "secretName", Str, Omit),
        f(2, "items", m(&KEY_TO_PATH), RepOmit),
        f(3, "defaultMode", I32, Ptr),
        f(4, "optional", Bool, Ptr),
    ],
};
static CONFIG_MAP_VOLUME_SOURCE: Msg = Msg {
    name: "ConfigMapVolumeSource",
    fields: &[
        f(1, "", Inline(&LOCAL_OBJECT_REFERENCE), Req),
        f(2, "items", m(&KEY_TO_PATH), RepOmit),
        f(3, "defaultMode", I32, Ptr),
        f(4, "optional", Bool, Ptr),
    ],
};
static KEY_TO_PATH: Msg =
    Msg { name: "KeyToPath", fields: &[f(1, "key", Str, Req), f(2, "path", Str, Req), f(3, "mode", I32, Ptr)] };
static NFS_VOLUME_SOURCE: Msg = Msg {
    name: "NFSVolumeSource",
    fields: &[f(1, "server", Str, Req), f(2, "path", Str, Req), f(3, "readOnly", Bool, Omit)],
};
static PVC_VOLUME_SOURCE: Msg = Msg {
    name: "PersistentVolumeClaimVolumeSource",
    fields: &[f(1, "claimName", Str, Req), f(2, "readOnly", Bool, Omit)],
};
static DOWNWARD_API_VOLUME_SOURCE: Msg = Msg {
    name: "DownwardAPIVolumeSource",
    fields: &[f(1, "items", m(&DOWNWARD_API_VOLUME_FILE), RepOmit), f(2, "defaultMode", I32, Ptr)],
};
static DOWNWARD_API_VOLUME_FILE: Msg = Msg {
    name: "DownwardAPIVolumeFile",
    fields: &[
        f(1, "path", Str, Req),
        f(2, "fieldRef", m(&OBJECT_FIELD_SELECTOR), Ptr),
        f(3, "resourceFieldRef", m(&RESOURCE_FIELD_SELECTOR), Ptr),
        f(4, "mode", I32, Ptr),
    ],
};
static PROJECTED_VOLUME_SOURCE: Msg = Msg {
    name: "ProjectedVolumeSource",
    fields: &[f(1, "sources", m(&VOLUME_PROJECTION), Rep), f(2, "defaultMode", I32, Ptr)],
};
static VOLUME_PROJECTION: Msg = Msg {
    name: "VolumeProjection",
    fields: &[
        f(1, "secret", m(&OBJECT_PROJECTION), Ptr),
        f(2, "downwardAPI", m(&DOWNWARD_API_PROJECTION), Ptr),
        f(3, "configMap", m(&OBJECT_PROJECTION), Ptr),
        f(4, "serviceAccountToken", m(&SERVICE_ACCOUNT_TOKEN_PROJECTION), Ptr),
    ],
};
static OBJECT_PROJECTION: Msg = Msg {
    name: "ConfigMapProjection",
    fields: &[
        f(1, "", Inline(&LOCAL_OBJECT_REFERENCE), Req),
        f(2, "items", m(&KEY_TO_PATH), RepOmit),
        f(4, "optional", Bool, Ptr),
    ],
};
static DOWNWARD_API_PROJECTION: Msg =
    Msg { name: "DownwardAPIProjection", fields: &[f(1, "items", m(&DOWNWARD_API_VOLUME_FILE), RepOmit)] };
static SERVICE_ACCOUNT_TOKEN_PROJECTION: Msg = Msg {
    name: "ServiceAccountTokenProjection",
    fields: &[f(1, "audience", Str, Omit), f(2, "expirationSeconds", I64, Ptr), f(3, "path", Str, Req)],
};
static CSI_VOLUME_SOURCE: Msg = Msg {
    name: "CSIVolumeSource",
    fields: &[
        f(1, "driver", Str, Req),
        f(2, "readOnly", Bool, Ptr),
        f(3, "fsType", Str, Ptr),
        f(4, "volumeAttributes", StrMap, RepOmit),
        f(5, "nodePublishSecretRef", m(&LOCAL_OBJECT_REFERENCE), Ptr),
    ],
};
static POD: Msg = Msg {
    name: "Pod",
    fields: &[
        f(1, "metadata", m(&OBJECT_META), Req),
        f(2, "spec", m(&POD_SPEC), Req),
        f(3, "status", m(&POD_STATUS), Req),
    ],
};
static POD_STATUS: Msg = Msg {
    name: "PodStatus",
    fields: &[
        f(1, "phase", Str, Omit),
        f(3, "message", Str, Omit),
        f(4, "reason", Str, Omit),
        f(11, "nominatedNodeName", Str, Omit),
        f(5, "hostIP", Str, Omit),
        f(6, "podIP", Str, Omit),
        f(7, "startTime", Time, Ptr),
        f(9, "qosClass", Str, Omit),
    ],
};

// core/v1: the other generator kinds
static NAMESPACE: Msg = Msg {
    name: "Namespace",
    fields: &[
        f(1, "metadata", m(&OBJECT_META), Req),
        f(2, "spec", m(&NAMESPACE_SPEC), Req),
        f(3, "status", m(&NAMESPACE_STATUS), Req),
    ],
};
static NAMESPACE_SPEC: Msg = Msg { name: "NamespaceSpec", fields: &[f(1, "finalizers", Str, RepOmit)] };
static NAMESPACE_STATUS: Msg = Msg {
    name: "NamespaceStatus",
    fields: &[f(1, "phase", Str, Omit), f(2, "conditions", m(&NAMESPACE_CONDITION), RepOmit)],
};
static NAMESPACE_CONDITION: Msg = Msg {
    name: "NamespaceCondition",
    fields: &[
        f(1, "type", Str, Req),
        f(2, "status", Str, Req),
        f(4, "lastTransitionTime", Time, Req),
        f(5, "reason", Str, Omit),
        f(6, "message", Str, Omit),
    ],
};
static CONFIG_MAP: Msg = Msg {
    name: "ConfigMap",
    fields: &[
        f(1, "metadata", m(&OBJECT_META), Req),
        f(4, "immutable", Bool, Ptr),
        f(2, "data", StrMap, RepOmit),
        f(3, "binaryData", K::BytesMap, RepOmit),
    ],
};
static SECRET: Msg = Msg {
    name: "Secret",
    fields: &[
        f(1, "metadata", m(&OBJECT_META), Req),
        f(5, "immutable", Bool, Ptr),
        f(2, "data", K::BytesMap, RepOmit),
        f(4, "stringData", StrMap, RepOmit),
        f(3, "type", Str, Omit),
    ],
};
static SERVICE_ACCOUNT: Msg = Msg {
    name: "ServiceAccount",
    fields: &[
        f(1, "metadata", m(&OBJECT_META), Req),
        f(2, "secrets", m(&OBJECT_REFERENCE), RepOmit),
        f(3, "imagePullSecrets", m(&LOCAL_OBJECT_REFERENCE), RepOmit),
        f(4, "automountServiceAccountToken", Bool, Ptr),
    ],
};
static OBJECT_REFERENCE: Msg = Msg {
    name: "ObjectReference",
    fields: &[
        f(1, "kind", Str, Omit),
        f(2, "namespace", Str, Omit),
        f(3, "name", Str, Omit),
        f(4, "uid", Str, Omit),
        f(5, "apiVersion", Str, Omit),
        f(6, "resourceVersion", Str, Omit),
        f(7, "fieldPath", Str, Omit),
    ],
};
static SERVICE: Msg = Msg {
    name: "Service",
    fields: &[
        f(1, "metadata", m(&OBJECT_META), Req),
        f(2, "spec", m(&SERVICE_SPEC), Req),
        f(3, "status", m(&SERVICE_STATUS), Req),
    ],
};
static SERVICE_SPEC: Msg = Msg {
    name: "ServiceSpec",
    fields: &[
        f(1, "ports", m(&SERVICE_PORT), RepOmit),
        f(2, "selector", StrMap, RepOmit),
        f(3, "clusterIP", Str, Omit),
        f(18, "clusterIPs", Str, RepOmit),
        f(4, "type", Str, Omit),
        f(5, "externalIPs", Str, RepOmit),
        f(7, "sessionAffinity", Str, Omit),
        f(8, "loadBalancerIP", Str, Omit),
        f(9, "loadBalancerSourceRanges", Str, RepOmit),
        f(10, "externalName", Str, Omit),
        f(11, "externalTrafficPolicy", Str, Omit),
        f(12, "healthCheckNodePort", I32, Omit),
        f(13, "publishNotReadyAddresses", Bool, Omit),
        f(14, "sessionAffinityConfig", m(&SESSION_AFFINITY_CONFIG), Ptr),
        f(19, "ipFamilies", Str, RepOmit),
        f(17, "ipFamilyPolicy", Str, Ptr),
        f(20, "allocateLoadBalancerNodePorts", Bool, Ptr),
        f(21, "loadBalancerClass", Str, Ptr),
        f(22, "internalTrafficPolicy", Str, Ptr),
        f(23, "trafficDistribution", Str, Ptr),
    ],
};
static SESSION_AFFINITY_CONFIG: Msg =
    Msg { name: "SessionAffinityConfig", fields: &[f(1, "clientIP", m(&CLIENT_IP_CONFIG), Ptr)] };
static CLIENT_IP_CONFIG: Msg = Msg { name: "ClientIPConfig", fields: &[f(1, "timeoutSeconds", I32, Ptr)] };
static SERVICE_PORT: Msg = Msg {
    name: "ServicePort",
    fields: &[
        f(1, "name", Str, Omit),
        f(2, "protocol", Str, Omit),
        f(6, "appProtocol", Str, Ptr),
        f(3, "port", I32, Req),
        f(4, "targetPort", IntOrString, Req),
        f(5, "nodePort", I32, Omit),
    ],
};
static SERVICE_STATUS: Msg = Msg {
    name: "ServiceStatus",
    fields: &[f(1, "loadBalancer", m(&LOAD_BALANCER_STATUS), Req), f(2, "conditions", m(&CONDITION), RepOmit)],
};
static LOAD_BALANCER_STATUS: Msg =
    Msg { name: "LoadBalancerStatus", fields: &[f(1, "ingress", m(&LOAD_BALANCER_INGRESS), RepOmit)] };
static LOAD_BALANCER_INGRESS: Msg = Msg {
    name: "LoadBalancerIngress",
    fields: &[f(1, "ip", Str, Omit), f(2, "hostname", Str, Omit), f(4, "ipMode", Str, Ptr)],
};

// apps/v1
static DEPLOYMENT: Msg = Msg {
    name: "Deployment",
    fields: &[
        f(1, "metadata", m(&OBJECT_META), Req),
        f(2, "spec", m(&DEPLOYMENT_SPEC), Req),
        f(3, "status", m(&DEPLOYMENT_STATUS), Req),
    ],
};
static DEPLOYMENT_SPEC: Msg = Msg {
    name: "DeploymentSpec",
    fields: &[
        f(1, "replicas", I32, Ptr),
        f(2, "selector", m(&LABEL_SELECTOR), Ptr),
        f(3, "template", m(&POD_TEMPLATE_SPEC), Req),
        f(4, "strategy", m(&DEPLOYMENT_STRATEGY), Req),
        f(5, "minReadySeconds", I32, Omit),
        f(6, "revisionHistoryLimit", I32, Ptr),
        f(7, "paused", Bool, Omit),
        f(9, "progressDeadlineSeconds", I32, Ptr),
    ],
};
static DEPLOYMENT_STRATEGY: Msg = Msg {
    name: "DeploymentStrategy",
    fields: &[f(1, "type", Str, Omit), f(2, "rollingUpdate", m(&ROLLING_UPDATE_DEPLOYMENT), Ptr)],
};
static ROLLING_UPDATE_DEPLOYMENT: Msg = Msg {
    name: "RollingUpdateDeployment",
    fields: &[f(1, "maxUnavailable", IntOrString, Ptr), f(2, "maxSurge", IntOrString, Ptr)],
};
static DEPLOYMENT_STATUS: Msg = Msg {
    name: "DeploymentStatus",
    fields: &[
        f(1, "observedGeneration", I64, Omit),
        f(2, "replicas", I32, Omit),
        f(3, "updatedReplicas", I32, Omit),
        f(7, "readyReplicas", I32, Omit),
        f(4, "availableReplicas", I32, Omit),
        f(5, "unavailableReplicas", I32, Omit),
        f(6, "conditions", m(&DEPLOYMENT_CONDITION), RepOmit),
        f(8, "collisionCount", I32, Ptr),
    ],
};
static DEPLOYMENT_CONDITION: Msg = Msg {
    name: "DeploymentCondition",
    fields: &[
        f(1, "type", Str, Req),
        f(2, "status", Str, Req),
        f(6, "lastUpdateTime", Time, Req),
        f(7, "lastTransitionTime", Time, Req),
        f(4, "reason", Str, Omit),
        f(5, "message", Str, Omit),
    ],
};

// batch/v1
static JOB: Msg = Msg {
    name: "Job",
    fields: &[
        f(1, "metadata", m(&OBJECT_META), Req),
        f(2, "spec", m(&JOB_SPEC), Req),
        f(3, "status", m(&JOB_STATUS), Req),
    ],
};
static JOB_SPEC: Msg = Msg {
    name: "JobSpec",
    fields: &[
        f(1, "parallelism", I32, Ptr),
        f(2, "completions", I32, Ptr),
        f(3, "activeDeadlineSeconds", I64, Ptr),
        f(7, "backoffLimit", I32, Ptr),
        f(12, "backoffLimitPerIndex", I32, Ptr),
        f(13, "maxFailedIndexes", I32, Ptr),
        f(4, "selector", m(&LABEL_SELECTOR), Ptr),
        f(5, "manualSelector", Bool, Ptr),
        f(6, "template", m(&POD_TEMPLATE_SPEC), Req),
        f(8, "ttlSecondsAfterFinished", I32, Ptr),
        f(9, "completionMode", Str, Ptr),
        f(10, "suspend", Bool, Ptr),
        f(14, "podReplacementPolicy", Str, Ptr),
        f(15, "managedBy", Str, Ptr),
    ],
};
static JOB_STATUS: Msg = Msg {
    name: "JobStatus",
    fields: &[
        f(1, "conditions", m(&JOB_CONDITION), RepOmit),
        f(2, "startTime", Time, Ptr),
        f(3, "completionTime", Time, Ptr),
        f(4, "active", I32, Omit),
        f(5, "succeeded", I32, Omit),
        f(6, "failed", I32, Omit),
        f(11, "terminating", I32, Ptr),
        f(7, "completedIndexes", Str, Omit),
        f(10, "failedIndexes", Str, Ptr),
        f(9, "ready", I32, Ptr),
    ],
};
static JOB_CONDITION: Msg = Msg {
    name: "JobCondition",
    fields: &[
        f(1, "type", Str, Req),
        f(2, "status", Str, Req),
        f(3, "lastProbeTime", Time, Req),
        f(4, "lastTransitionTime", Time, Req),
        f(5, "reason", Str, Omit),
        f(6, "message", Str, Omit),
    ],
};
static CRON_JOB: Msg = Msg {
    name: "CronJob",
    fields: &[
        f(1, "metadata", m(&OBJECT_META), Req),
        f(2, "spec", m(&CRON_JOB_SPEC), Req),
        f(3, "status", m(&CRON_JOB_STATUS), Req),
    ],
};
static CRON_JOB_SPEC: Msg = Msg {
    name: "CronJobSpec",
    fields: &[
        f(1, "schedule", Str, Req),
        f(8, "timeZone", Str, Ptr),
        f(2, "startingDeadlineSeconds", I64, Ptr),
        f(3, "concurrencyPolicy", Str, Omit),
        f(4, "suspend", Bool, Ptr),
        f(5, "jobTemplate", m(&JOB_TEMPLATE_SPEC), Req),
        f(6, "successfulJobsHistoryLimit", I32, Ptr),
        f(7, "failedJobsHistoryLimit", I32, Ptr),
    ],
};
static JOB_TEMPLATE_SPEC: Msg =
    Msg { name: "JobTemplateSpec", fields: &[f(1, "metadata", m(&OBJECT_META), Req), f(2, "spec", m(&JOB_SPEC), Req)] };
static CRON_JOB_STATUS: Msg = Msg {
    name: "CronJobStatus",
    fields: &[
        f(1, "active", m(&OBJECT_REFERENCE), RepOmit),
        f(4, "lastScheduleTime", Time, Ptr),
        f(5, "lastSuccessfulTime", Time, Ptr),
    ],
};

// networking.k8s.io/v1
static INGRESS: Msg = Msg {
    name: "Ingress",
    fields: &[
        f(1, "metadata", m(&OBJECT_META), Req),
        f(2, "spec", m(&INGRESS_SPEC), Req),
        f(3, "status", m(&INGRESS_STATUS), Req),
    ],
};
static INGRESS_SPEC: Msg = Msg {
    name: "IngressSpec",
    fields: &[
        f(4, "ingressClassName", Str, Ptr),
        f(1, "defaultBackend", m(&INGRESS_BACKEND), Ptr),
        f(2, "tls", m(&INGRESS_TLS), RepOmit),
        f(3, "rules", m(&INGRESS_RULE), RepOmit),
    ],
};
static INGRESS_BACKEND: Msg = Msg {
    name: "IngressBackend",
    fields: &[
        f(4, "service", m(&INGRESS_SERVICE_BACKEND), Ptr),
        f(3, "resource", m(&TYPED_LOCAL_OBJECT_REFERENCE), Ptr),
    ],
};
static INGRESS_SERVICE_BACKEND: Msg = Msg {
    name: "IngressServiceBackend",
    fields: &[f(1, "name", Str, Req), f(2, "port", m(&SERVICE_BACKEND_PORT), Req)],
};
static SERVICE_BACKEND_PORT: Msg =
    Msg { name: "ServiceBackendPort", fields: &[f(1, "name", Str, Omit), f(2, "number", I32, Omit)] };
static TYPED_LOCAL_OBJECT_REFERENCE: Msg = Msg {
    name: "TypedLocalObjectReference",
    fields: &[f(1, "apiGroup", Str, Ptr), f(2, "kind", Str, Req), f(3, "name", Str, Req)],
};
static INGRESS_TLS: Msg =
    Msg { name: "IngressTLS", fields: &[f(1, "hosts", Str, RepOmit), f(2, "secretName", Str, Omit)] };
static INGRESS_RULE: Msg =
    Msg { name: "IngressRule", fields: &[f(1, "host", Str, Omit), f(2, "", Inline(&INGRESS_RULE_VALUE), Req)] };
static INGRESS_RULE_VALUE: Msg =
    Msg { name: "IngressRuleValue", fields: &[f(1, "http", m(&HTTP_INGRESS_RULE_VALUE), Ptr)] };
static HTTP_INGRESS_RULE_VALUE: Msg =
    Msg { name: "HTTPIngressRuleValue", fields: &[f(1, "paths", m(&HTTP_INGRESS_PATH), Rep)] };
static HTTP_INGRESS_PATH: Msg = Msg {
    name: "HTTPIngressPath",
    fields: &[f(1, "path", Str, Omit), f(3, "pathType", Str, Ptr), f(2, "backend", m(&INGRESS_BACKEND), Req)],
};
static INGRESS_STATUS: Msg =
    Msg { name: "IngressStatus", fields: &[f(1, "loadBalancer", m(&INGRESS_LOAD_BALANCER_STATUS), Req)] };
static INGRESS_LOAD_BALANCER_STATUS: Msg =
    Msg { name: "IngressLoadBalancerStatus", fields: &[f(1, "ingress", m(&INGRESS_LOAD_BALANCER_INGRESS), RepOmit)] };
static INGRESS_LOAD_BALANCER_INGRESS: Msg =
    Msg { name: "IngressLoadBalancerIngress", fields: &[f(1, "ip", Str, Omit), f(2, "hostname", Str, Omit)] };

// policy/v1
static POD_DISRUPTION_BUDGET: Msg = Msg {
    name: "PodDisruptionBudget",
    fields: &[
        f(1, "metadata", m(&OBJECT_META), Req),
        f(2, "spec", m(&PDB_SPEC), Req),
        f(3, "status", m(&PDB_STATUS), Req),
    ],
};
static PDB_SPEC: Msg = Msg {
    name: "PodDisruptionBudgetSpec",
    fields: &[
        f(1, "minAvailable", IntOrString, Ptr),
        f(2, "selector", m(&LABEL_SELECTOR), Ptr),
        f(3, "maxUnavailable", IntOrString, Ptr),
        f(4, "unhealthyPodEvictionPolicy", Str, Ptr),
    ],
};
static PDB_STATUS: Msg = Msg {
    name: "PodDisruptionBudgetStatus",
    fields: &[
        f(1, "observedGeneration", I64, Omit),
        f(3, "disruptionsAllowed", I32, Req),
        f(4, "currentHealthy", I32, Req),
        f(5, "desiredHealthy", I32, Req),
        f(6, "expectedPods", I32, Req),
        f(7, "conditions", m(&CONDITION), RepOmit),
    ],
};

// ---------------------------------------------------------------------------------------------
// Decoding

fn wire_err(msg: &Msg, field: &F, wire: &Wire<'_>, expected: &'static str) -> Error {
    Error::WireType { message: msg.name, field: field.n, wire_type: wire.code(), expected }
}

fn varint_of(msg: &Msg, field: &F, wire: Wire<'_>) -> Result<u64> {
    match wire {
        Wire::Varint(v) => Ok(v),
        other => Err(wire_err(msg, field, &other, "varint")),
    }
}

fn bytes_of<'a>(msg: &Msg, field: &F, wire: Wire<'a>) -> Result<&'a [u8]> {
    match wire {
        Wire::Bytes(b) => Ok(b),
        other => Err(wire_err(msg, field, &other, "length-delimited")),
    }
}

/// Decodes one (non-repeated) value of a field.
fn scalar(msg: &Msg, field: &F, kind: K, wire: Wire<'_>) -> Result<Value> {
    Ok(match kind {
        K::Str => Value::String(text(bytes_of(msg, field, wire)?)),
        K::Bytes => Value::String(base64::engine::general_purpose::STANDARD.encode(bytes_of(msg, field, wire)?)),
        K::Bool => Value::Bool(varint_of(msg, field, wire)? != 0),
        K::I32 => Value::from(varint_of(msg, field, wire)? as i32),
        K::I64 => Value::from(varint_of(msg, field, wire)? as i64),
        K::Msg(inner) | K::Inline(inner) => {
            let mut out = Map::new();
            decode_into(inner, bytes_of(msg, field, wire)?, &mut out)?;
            Value::Object(out)
        }
        K::Time => time(bytes_of(msg, field, wire)?)?,
        K::IntOrString => int_or_string(bytes_of(msg, field, wire)?)?,
        K::Quantity => quantity(bytes_of(msg, field, wire)?)?,
        K::FieldsV1 => fields_v1(msg, field, bytes_of(msg, field, wire)?)?,
        K::StrMap | K::BytesMap | K::QuantityMap => return Err(wire_err(msg, field, &wire, "map entry")),
    })
}

fn time(b: &[u8]) -> Result<Value> {
    let mut seconds: i64 = 0;
    let mut r = Reader::new(b);
    while let Some((n, w)) = r.next()? {
        if let (1, Wire::Varint(v)) = (n, w) {
            seconds = v as i64;
        }
    }
    if b.is_empty() {
        return Ok(Value::Null);
    }
    let ts = jiff::Timestamp::from_second(seconds).map_err(|_| Error::Timestamp(seconds))?;
    Ok(Value::String(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
}

fn fields_v1(msg: &Msg, field: &F, b: &[u8]) -> Result<Value> {
    let mut raw: &[u8] = &[];
    let mut r = Reader::new(b);
    while let Some((n, w)) = r.next()? {
        if let (1, Wire::Bytes(v)) = (n, w) {
            raw = v;
        }
    }
    if raw.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    // Not JSON: a malformed body, as kube-apiserver refuses it.
    serde_json::from_slice(raw).map_err(|_| Error::WireType {
        message: msg.name,
        field: field.n,
        wire_type: 2,
        expected: "FieldsV1 holding JSON",
    })
}

fn int_or_string(b: &[u8]) -> Result<Value> {
    let (mut ty, mut int_val, mut str_val) = (0u64, 0i32, String::new());
    let mut r = Reader::new(b);
    while let Some((n, w)) = r.next()? {
        match (n, w) {
            (1, Wire::Varint(v)) => ty = v,
            (2, Wire::Varint(v)) => int_val = v as i32,
            (3, Wire::Bytes(s)) => str_val = text(s),
            _ => {}
        }
    }
    Ok(if ty == 1 { Value::String(str_val) } else { Value::from(int_val) })
}

fn quantity(b: &[u8]) -> Result<Value> {
    let mut s = String::new();
    let mut r = Reader::new(b);
    while let Some((n, w)) = r.next()? {
        if let (1, Wire::Bytes(v)) = (n, w) {
            s = text(v);
        }
    }
    // A zero Quantity marshals as "0".
    if s.is_empty() {
        s = "0".into();
    }
    Ok(Value::String(s))
}

fn map_entry(msg: &Msg, field: &F, wire: Wire<'_>) -> Result<(String, Value)> {
    let b = bytes_of(msg, field, wire)?;
    let mut key = String::new();
    let mut value: Option<Value> = None;
    let mut r = Reader::new(b);
    while let Some((n, w)) = r.next()? {
        match (n, w) {
            (1, Wire::Bytes(s)) => key = text(s),
            (2, Wire::Bytes(s)) => {
                value = Some(match field.k {
                    K::BytesMap => Value::String(base64::engine::general_purpose::STANDARD.encode(s)),
                    K::QuantityMap => quantity(s)?,
                    _ => Value::String(text(s)),
                })
            }
            _ => {}
        }
    }
    let value = value.unwrap_or_else(|| match field.k {
        K::QuantityMap => Value::String("0".into()),
        _ => Value::String(String::new()),
    });
    Ok((key, value))
}

/// Appends the elements one wire value of a repeated field carries (one, or several when packed).
fn push_repeated(msg: &Msg, field: &F, wire: Wire<'_>, out: &mut Vec<Value>) -> Result<()> {
    match (field.k, wire) {
        (K::I32 | K::I64 | K::Bool, Wire::Bytes(packed)) => {
            let mut r = Reader::new(packed);
            while r.pos < packed.len() {
                let v = r.varint()?;
                out.push(match field.k {
                    K::I32 => Value::from(v as i32),
                    K::Bool => Value::Bool(v != 0),
                    _ => Value::from(v as i64),
                });
            }
            Ok(())
        }
        (kind, wire) => {
            out.push(scalar(msg, field, kind, wire)?);
            Ok(())
        }
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_i64() == Some(0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// The JSON a zero Go value of this field marshals to, or None when it is left out.
fn zero(field: &F) -> Result<Option<Value>> {
    Ok(match field.c {
        C::Ptr | C::RepOmit => None,
        C::Rep => Some(Value::Null),
        C::Req | C::Omit => match field.k {
            // Structs are never left out by encoding/json, `omitempty` or not.
            K::Msg(inner) => {
                let mut out = Map::new();
                decode_into(inner, &[], &mut out)?;
                Some(Value::Object(out))
            }
            K::Time => Some(Value::Null),
            K::IntOrString => Some(Value::from(0)),
            K::Quantity => Some(Value::String("0".into())),
            K::FieldsV1 => None,
            K::Inline(_) | K::StrMap | K::BytesMap | K::QuantityMap => None,
            _ if field.c == C::Omit => None,
            K::Str | K::Bytes => Some(Value::String(String::new())),
            K::Bool => Some(Value::Bool(false)),
            K::I32 | K::I64 => Some(Value::from(0)),
        },
    })
}

/// Decodes the message `buf` of type `msg` into `out`, following Go's JSON emptiness rules.
fn decode_into(msg: &'static Msg, buf: &[u8], out: &mut Map<String, Value>) -> Result<()> {
    enum Slot {
        Empty,
        One(Value),
        List(Vec<Value>),
        Map(Map<String, Value>),
    }
    let mut slots: Vec<Slot> = msg.fields.iter().map(|_| Slot::Empty).collect();
    let mut r = Reader::new(buf);
    while let Some((num, wire)) = r.next()? {
        let Some(i) = msg.fields.iter().position(|fd| fd.n == num) else {
            continue;
        };
        let field = &msg.fields[i];
        let Some(slot) = slots.get_mut(i) else { continue };
        match field.k {
            K::StrMap | K::BytesMap | K::QuantityMap => {
                let (k, v) = map_entry(msg, field, wire)?;
                match slot {
                    Slot::Map(m) => {
                        m.insert(k, v);
                    }
                    _ => {
                        let mut m = Map::new();
                        m.insert(k, v);
                        *slot = Slot::Map(m);
                    }
                }
            }
            _ if matches!(field.c, C::Rep | C::RepOmit) => {
                if !matches!(slot, Slot::List(_)) {
                    *slot = Slot::List(Vec::new());
                }
                if let Slot::List(l) = slot {
                    push_repeated(msg, field, wire, l)?;
                }
            }
            K::Inline(inner) => {
                let b = bytes_of(msg, field, wire)?;
                let mut m = match std::mem::replace(slot, Slot::Empty) {
                    Slot::Map(m) => m,
                    _ => Map::new(),
                };
                decode_into(inner, b, &mut m)?;
                *slot = Slot::Map(m);
            }
            kind => *slot = Slot::One(scalar(msg, field, kind, wire)?),
        }
    }
    for (field, slot) in msg.fields.iter().zip(slots) {
        match (slot, field.k) {
            (Slot::Empty, K::Inline(inner)) => {
                let mut m = Map::new();
                decode_into(inner, &[], &mut m)?;
                out.extend(m);
            }
            (Slot::Map(m), K::Inline(_)) => out.extend(m),
            (Slot::Empty, _) => {
                if let Some(z) = zero(field)? {
                    out.insert(field.name.into(), z);
                }
            }
            (Slot::One(v), _) => {
                let keep = match (field.c, field.k) {
                    (C::Omit, K::Str | K::Bool | K::I32 | K::I64) => !is_zero(&v),
                    _ => true,
                };
                if keep {
                    out.insert(field.name.into(), v);
                }
            }
            (Slot::List(l), _) => {
                if l.is_empty() && field.c == C::RepOmit {
                    continue;
                }
                out.insert(field.name.into(), Value::Array(l));
            }
            (Slot::Map(m), _) => {
                if m.is_empty() && field.c == C::RepOmit {
                    continue;
                }
                out.insert(field.name.into(), Value::Object(m));
            }
        }
    }
    Ok(())
}

// certificates.k8s.io/v1 (spec.extra is left out: the API sets it from the caller)
static CSR: Msg = Msg {
    name: "CertificateSigningRequest",
    fields: &[
        f(1, "metadata", m(&OBJECT_META), Req),
        f(2, "spec", m(&CSR_SPEC), Req),
        f(3, "status", m(&CSR_STATUS), Req),
    ],
};
static CSR_SPEC: Msg = Msg {
    name: "CertificateSigningRequestSpec",
    fields: &[
        f(1, "request", K::Bytes, Req),
        f(7, "signerName", Str, Req),
        f(8, "expirationSeconds", I32, Ptr),
        f(5, "usages", Str, RepOmit),
        f(2, "username", Str, Omit),
        f(3, "uid", Str, Omit),
        f(4, "groups", Str, RepOmit),
    ],
};
static CSR_STATUS: Msg = Msg {
    name: "CertificateSigningRequestStatus",
    fields: &[f(1, "conditions", m(&CSR_CONDITION), RepOmit), f(2, "certificate", K::Bytes, Omit)],
};
static CSR_CONDITION: Msg = Msg {
    name: "CertificateSigningRequestCondition",
    fields: &[
        f(1, "type", Str, Req),
        f(6, "status", Str, Req),
        f(2, "reason", Str, Omit),
        f(3, "message", Str, Omit),
        f(4, "lastUpdateTime", Time, Omit),
        f(5, "lastTransitionTime", Time, Omit),
    ],
};

// rbac.authorization.k8s.io/v1
static ROLE: Msg =
    Msg { name: "Role", fields: &[f(1, "metadata", m(&OBJECT_META), Req), f(2, "rules", m(&POLICY_RULE), Rep)] };
static CLUSTER_ROLE: Msg = Msg {
    name: "ClusterRole",
    fields: &[
        f(1, "metadata", m(&OBJECT_META), Req),
        f(2, "rules", m(&POLICY_RULE), Rep),
        f(3, "aggregationRule", m(&AGGREGATION_RULE), Ptr),
    ],
};
static AGGREGATION_RULE: Msg =
    Msg { name: "AggregationRule", fields: &[f(1, "clusterRoleSelectors", m(&LABEL_SELECTOR), RepOmit)] };
static POLICY_RULE: Msg = Msg {
    name: "PolicyRule",
    fields: &[
        f(1, "verbs", Str, Rep),
        f(2, "apiGroups", Str, RepOmit),
        f(3, "resources", Str, RepOmit),
        f(4, "resourceNames", Str, RepOmit),
        f(5, "nonResourceURLs", Str, RepOmit),
    ],
};
/// RoleBinding and ClusterRoleBinding share their fields.
static ROLE_BINDING: Msg = Msg {
    name: "RoleBinding",
    fields: &[
        f(1, "metadata", m(&OBJECT_META), Req),
        f(2, "subjects", m(&SUBJECT), RepOmit),
        f(3, "roleRef", m(&ROLE_REF), Req),
    ],
};
static SUBJECT: Msg = Msg {
    name: "Subject",
    fields: &[
        f(1, "kind", Str, Req),
        f(2, "apiGroup", Str, Omit),
        f(3, "name", Str, Req),
        f(4, "namespace", Str, Omit),
    ],
};
static ROLE_REF: Msg =
    Msg { name: "RoleRef", fields: &[f(1, "apiGroup", Str, Req), f(2, "kind", Str, Req), f(3, "name", Str, Req)] };

// authorization.k8s.io/v1 and authentication.k8s.io/v1 (the reviews kubectl auth sends)
static SELF_SUBJECT_ACCESS_REVIEW: Msg = Msg {
    name: "SelfSubjectAccessReview",
    fields: &[f(1, "metadata", m(&OBJECT_META), Req), f(2, "spec", m(&SELF_SUBJECT_ACCESS_REVIEW_SPEC), Req)],
};
static SELF_SUBJECT_ACCESS_REVIEW_SPEC: Msg = Msg {
    name: "SelfSubjectAccessReviewSpec",
    fields: &[
        f(1, "resourceAttributes", m(&RESOURCE_ATTRIBUTES), Ptr),
        f(2, "nonResourceAttributes", m(&NON_RESOURCE_ATTRIBUTES), Ptr),
    ],
};
static SUBJECT_ACCESS_REVIEW: Msg = Msg {
    name: "SubjectAccessReview",
    fields: &[f(1, "metadata", m(&OBJECT_META), Req), f(2, "spec", m(&SUBJECT_ACCESS_REVIEW_SPEC), Req)],
};
static SUBJECT_ACCESS_REVIEW_SPEC: Msg = Msg {
    name: "SubjectAccessReviewSpec",
    fields: &[
        f(1, "resourceAttributes", m(&RESOURCE_ATTRIBUTES), Ptr),
        f(2, "nonResourceAttributes", m(&NON_RESOURCE_ATTRIBUTES), Ptr),
        f(3, "user", Str, Omit),
        f(4, "groups", Str, RepOmit),
        f(6, "uid", Str, Omit),
    ],
};
static RESOURCE_ATTRIBUTES: Msg = Msg {
    name: "ResourceAttributes",
    fields: &[
        f(1, "namespace", Str, Omit),
        f(2, "verb", Str, Omit),
        f(3, "group", Str, Omit),
        f(4, "version", Str, Omit),
        f(5, "resource", Str, Omit),
        f(6, "subresource", Str, Omit),
        f(7, "name", Str, Omit),
    ],
};
static NON_RESOURCE_ATTRIBUTES: Msg =
    Msg { name: "NonResourceAttributes", fields: &[f(1, "path", Str, Omit), f(2, "verb", Str, Omit)] };
static SELF_SUBJECT_RULES_REVIEW: Msg = Msg {
    name: "SelfSubjectRulesReview",
    fields: &[f(1, "metadata", m(&OBJECT_META), Req), f(2, "spec", m(&SELF_SUBJECT_RULES_REVIEW_SPEC), Req)],
};
static SELF_SUBJECT_RULES_REVIEW_SPEC: Msg =
    Msg { name: "SelfSubjectRulesReviewSpec", fields: &[f(1, "namespace", Str, Omit)] };
static SELF_SUBJECT_REVIEW: Msg = Msg { name: "SelfSubjectReview", fields: &[f(1, "metadata", m(&OBJECT_META), Req)] };
static TOKEN_REQUEST: Msg = Msg {
    name: "TokenRequest",
    fields: &[f(1, "metadata", m(&OBJECT_META), Req), f(2, "spec", m(&TOKEN_REQUEST_SPEC), Req)],
};
static TOKEN_REQUEST_SPEC: Msg = Msg {
    name: "TokenRequestSpec",
    fields: &[
        f(1, "audiences", Str, Rep),
        f(3, "boundObjectRef", m(&BOUND_OBJECT_REFERENCE), Ptr),
        f(4, "expirationSeconds", I64, Ptr),
    ],
};
static BOUND_OBJECT_REFERENCE: Msg = Msg {
    name: "BoundObjectReference",
    fields: &[f(1, "kind", Str, Omit), f(2, "apiVersion", Str, Omit), f(3, "name", Str, Omit), f(4, "uid", Str, Omit)],
};

#[cfg(test)]
mod tests;
