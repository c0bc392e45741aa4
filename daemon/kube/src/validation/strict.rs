//! `fieldValidation=Strict` decoding: the fields of a body that its kind does not have, and
//! values of the wrong JSON type, found by walking the body against the kind's OpenAPI schema
//! (the embedded schemas of [`crate::openapi`] for built-in kinds, the CRD's `openAPIV3Schema`
//! for custom resources), as kube-apiserver's decoder reports them.
//!
//! The walk follows Go's JSON decoding into the API types: `null` is accepted anywhere, an
//! integer field takes only a whole number in its format's range, an int-or-string (and a
//! quantity) a whole number or a string, a byte field base64, a time RFC 3339. The first value of
//! the wrong type fails the whole body (`... cannot be handled as a Deployment: json: cannot
//! unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32`); unknown
//! fields are all collected (`strict decoding error: unknown field "spec.foo", ...`).
use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::openapi;

/// A body rejected by `fieldValidation=Strict` decoding, or one that does not decode as its kind
/// at all. The API answers 400 BadRequest with [`StrictError::message`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrictError {
    /// Fields the kind does not have, as paths like `spec.template.spec.containers[0].foo`.
    #[error("strict decoding error: {}", .0.iter().map(|f| format!("unknown field {}", super::go_quote(f))).collect::<Vec<_>>().join(", "))]
    UnknownFields(Vec<String>),
    /// A field of the wrong JSON type (`"replicas": "3"`).
    #[error("{kind} in version {version:?} cannot be handled as a {kind}: {message}")]
    Decode { kind: String, version: String, message: String },
}

impl StrictError {
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The `Status` object the API answers with (HTTP 400 BadRequest).
    pub fn to_status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message(), "reason": "BadRequest", "code": 400,
        })
    }
}

/// The built-in kinds whose bodies are checked (the kinds shoal serves with a schema).
const KINDS: &[(&str, &str, &str)] = &[
    ("", "v1", "Pod"),
    ("", "v1", "Service"),
    ("", "v1", "Namespace"),
    ("", "v1", "ConfigMap"),
    ("", "v1", "Secret"),
    ("", "v1", "ServiceAccount"),
    ("", "v1", "Endpoints"),
    ("", "v1", "Node"),
    ("", "v1", "Event"),
    ("", "v1", "PersistentVolume"),
    ("", "v1", "PersistentVolumeClaim"),
    ("apps", "v1", "Deployment"),
    ("apps", "v1", "ReplicaSet"),
    ("apps", "v1", "DaemonSet"),
    ("apps", "v1", "StatefulSet"),
    ("apps", "v1", "ControllerRevision"),
    ("batch", "v1", "Job"),
    ("batch", "v1", "CronJob"),
    ("networking.k8s.io", "v1", "Ingress"),
    ("networking.k8s.io", "v1", "IngressClass"),
    ("networking.k8s.io", "v1", "NetworkPolicy"),
    ("scheduling.k8s.io", "v1", "PriorityClass"),
    ("admissionregistration.k8s.io", "v1", "ValidatingWebhookConfiguration"),
    ("admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration"),
    ("storage.k8s.io", "v1", "StorageClass"),
    ("discovery.k8s.io", "v1", "EndpointSlice"),
    ("coordination.k8s.io", "v1", "Lease"),
    ("autoscaling", "v1", "Scale"),
    ("autoscaling", "v2", "HorizontalPodAutoscaler"),
    ("policy", "v1", "PodDisruptionBudget"),
    ("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
];

const REF_PREFIX: &str = "#/components/schemas/";
const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// The schema name of each checked kind.
fn kind_schemas() -> &'static HashMap<(&'static str, &'static str, &'static str), &'static str> {
    static MAP: OnceLock<HashMap<(&str, &str, &str), &str>> = OnceLock::new();
    MAP.get_or_init(|| {
        KINDS.iter().filter_map(|&(g, v, k)| Some(((g, v, k), openapi::kind_schema(g, v, k)?))).collect()
    })
}

fn builtin(group: &str, version: &str, kind: &str) -> Option<&'static str> {
    kind_schemas().get(&(group, version, kind)).copied()
}

/// Whether [`check_unknown_fields`] knows the schema of this group/version/kind.
pub fn strict_supported(group: &str, version: &str, kind: &str) -> bool {
    builtin(group, version, kind).is_some()
}

/// `fieldValidation=Strict`: fails with the unknown fields of `obj` (or a type mismatch) for the
/// built-in kinds. Kinds without a compiled-in schema (custom resources) have only their
/// `metadata` checked; see [`strict_supported`]. `apiVersion` and `kind` are not checked (the
/// API takes them from the path).
pub fn check_unknown_fields(group: &str, version: &str, kind: &str, obj: &Value) -> Result<(), StrictError> {
    let mut walk = Walk { kind, version, unknown: Vec::new() };
    match builtin(group, version, kind) {
        Some(name) => {
            if let (Value::Object(m), Some(schema)) = (obj, openapi::schemas().get(name)) {
                walk.members(Schema { name, schema }, m, &mut Path::default(), &["apiVersion", "kind"], 0)?;
            } else if let Some(schema) = openapi::schemas().get(name) {
                walk.value(Schema { name, schema }, obj, &mut Path::default(), 0)?;
            }
        }
        // Custom resources: only `metadata` has a compiled-in schema.
        None => walk.metadata(obj)?,
    }
    walk.finish()
}

/// `fieldValidation=Strict` for a custom resource: the fields of `obj` that its CRD's
/// `openAPIV3Schema` (`schema`) does not declare, as kube-apiserver's pruning finds them (a
/// `x-kubernetes-preserve-unknown-fields` subtree and `additionalProperties` maps accept
/// anything; `metadata` is checked as ObjectMeta).
pub fn check_unknown_fields_by_schema(
    schema: &Value,
    kind: &str,
    version: &str,
    obj: &Value,
) -> Result<(), StrictError> {
    let mut walk = Walk { kind, version, unknown: Vec::new() };
    walk.metadata(obj)?;
    if let Value::Object(m) = obj {
        let props = schema.get("properties").and_then(|p| p.as_object());
        for (k, v) in m {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            match props.and_then(|p| p.get(k)) {
                Some(s) => undeclared(s, v, k, &mut walk.unknown, 0),
                None if preserves(schema) => {}
                None => walk.unknown.push(k.clone()),
            }
        }
    }
    walk.finish()
}

fn preserves(schema: &Value) -> bool {
    schema.get("x-kubernetes-preserve-unknown-fields").and_then(|v| v.as_bool()) == Some(true)
}

/// Collects the undeclared fields under `v` (at `path`), described by a CRD's `schema`.
fn undeclared(schema: &Value, v: &Value, path: &str, out: &mut Vec<String>, depth: usize) {
    if depth > MAX_DEPTH || preserves(schema) {
        return;
    }
    match v {
        Value::Object(m) => {
            let embedded = schema.get("x-kubernetes-embedded-resource").and_then(|v| v.as_bool()) == Some(true);
            let props = schema.get("properties").and_then(|p| p.as_object());
            let additional = schema.get("additionalProperties");
            for (k, x) in m {
                let child = format!("{path}.{k}");
                match (props.and_then(|p| p.get(k)), additional) {
                    (Some(s), _) => undeclared(s, x, &child, out, depth + 1),
                    (None, Some(a @ Value::Object(_))) => undeclared(a, x, &child, out, depth + 1),
                    (None, Some(Value::Bool(true))) => {}
                    _ if embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") => {}
                    _ => out.push(child),
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
                for (i, x) in a.iter().enumerate() {
                    undeclared(items, x, &format!("{path}[{i}]"), out, depth + 1);
                }
            }
        }
        _ => {}
    }
}

/// Deeper than any API type nests; a body past it is not looked at further.
const MAX_DEPTH: usize = 64;

/// A schema and the name of the definition it came from (the Go type in messages).
#[derive(Clone, Copy)]
struct Schema {
    /// Empty for a schema written inline (a field's own).
    name: &'static str,
    schema: &'static Value,
}

impl Schema {
    /// Follows `$ref` (alone or as the one member of `allOf`, as the generator writes
    /// references with a description) to the named definition.
    fn resolve(self) -> Schema {
        let mut cur = self;
        for _ in 0..8 {
            let r = cur.schema.get("$ref").or_else(|| match cur.schema.get("allOf") {
                Some(Value::Array(a)) if a.len() == 1 => a[0].get("$ref"),
                _ => None,
            });
            let Some(name) = r.and_then(Value::as_str).and_then(|r| r.strip_prefix(REF_PREFIX)) else { break };
            let Some((name, schema)) = openapi::schemas().get_key_value(name) else { break };
            cur = Schema { name: name.as_str(), schema };
        }
        cur
    }

    fn field(&self, key: &str) -> Option<&'static Value> {
        self.schema.get(key)
    }

    fn int_or_string(&self) -> bool {
        self.field("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true)
    }

    /// The Go type of a value of this schema, as Go's decoder names it in its errors.
    fn go_type(self) -> String {
        let s = self.resolve();
        if s.int_or_string() {
            return match s.name.rsplit('.').next() {
                Some("Quantity") => "resource.Quantity".into(),
                _ => "intstr.IntOrString".into(),
            };
        }
        match s.field("type").and_then(Value::as_str) {
            Some("integer") => s.field("format").and_then(Value::as_str).unwrap_or("int64").to_string(),
            Some("number") => "float64".into(),
            Some("boolean") => "bool".into(),
            Some("string") if s.field("format").and_then(Value::as_str) == Some("byte") => "[]uint8".into(),
            Some("string") if !s.name.is_empty() => go_name(s.name),
            Some("string") => "string".into(),
            Some("array") => match s.field("items") {
                Some(items) => format!("[]{}", Schema { name: "", schema: items }.go_type()),
                None => "[]interface {}".into(),
            },
            _ if s.field("properties").is_none() => match s.field("additionalProperties") {
                Some(a @ Value::Object(_)) => format!("map[string]{}", Schema { name: "", schema: a }.go_type()),
                _ if !s.name.is_empty() => go_name(s.name),
                _ => "map[string]interface {}".into(),
            },
            _ => go_name(s.name),
        }
    }
}

/// `io.k8s.api.apps.v1.DeploymentSpec` -> `v1.DeploymentSpec`.
fn go_name(name: &str) -> String {
    let mut parts = name.rsplit('.');
    match (parts.next(), parts.next()) {
        (Some(t), Some(pkg)) => format!("{pkg}.{t}"),
        (Some(t), None) => t.to_string(),
        _ => String::new(),
    }
}

/// Where the walk is: the path as the unknown-field messages write it (`a.b[0].c`), the path as
/// Go's decoder writes it (`a.b.c`) and the Go struct the current field belongs to.
#[derive(Default)]
struct Path {
    shown: String,
    go: String,
    owner: String,
}

struct Walk<'a> {
    kind: &'a str,
    version: &'a str,
    unknown: Vec<String>,
}

impl Walk<'_> {
    fn finish(self) -> Result<(), StrictError> {
        if self.unknown.is_empty() {
            Ok(())
        } else {
            Err(StrictError::UnknownFields(self.unknown))
        }
    }

    /// `metadata` of any object, checked as ObjectMeta.
    fn metadata(&mut self, obj: &Value) -> Result<(), StrictError> {
        let (Some(meta), Some((name, schema))) = (obj.get("metadata"), openapi::schemas().get_key_value(OBJECT_META))
        else {
            return Ok(());
        };
        let mut path = Path { shown: "metadata".into(), go: "metadata".into(), owner: String::new() };
        self.value(Schema { name, schema }, meta, &mut path, 1)
    }

    fn mismatch(&self, schema: Schema, v: &Value, path: &Path) -> StrictError {
        let got = match v {
            Value::Null => "null".to_string(),
            Value::Bool(_) => "bool".to_string(),
            Value::Number(n) => format!("number {n}"),
            Value::String(_) => "string".to_string(),
            Value::Array(_) => "array".to_string(),
            Value::Object(_) => "object".to_string(),
        };
        let target = if path.go.is_empty() {
            format!("Go value of type {}", schema.go_type())
        } else {
            format!("Go struct field {}.{} of type {}", path.owner, path.go, schema.go_type())
        };
        StrictError::Decode {
            kind: self.kind.into(),
            version: self.version.into(),
            message: format!("json: cannot unmarshal {got} into {target}"),
        }
    }

    fn invalid(&self, message: String) -> StrictError {
        StrictError::Decode { kind: self.kind.into(), version: self.version.into(), message }
    }

    /// Checks `v` against `schema` (at `path`).
    fn value(&mut self, schema: Schema, v: &Value, path: &mut Path, depth: usize) -> Result<(), StrictError> {
        if depth > MAX_DEPTH || v.is_null() {
            return Ok(());
        }
        let s = schema.resolve();
        if s.int_or_string() {
            return match v {
                Value::String(_) => Ok(()),
                Value::Number(n) if n.is_i64() || n.is_u64() => Ok(()),
                _ => Err(self.mismatch(s, v, path)),
            };
        }
        let format = s.field("format").and_then(Value::as_str);
        match (s.field("type").and_then(Value::as_str), v) {
            (Some("string"), Value::String(text)) => match format {
                Some("byte") => {
                    base64_ok(text).map_err(|at| self.invalid(format!("illegal base64 data at input byte {at}")))
                }
                Some("date-time") if text.parse::<jiff::Timestamp>().is_err() => {
                    Err(self.invalid(format!("parsing time {text:?} as \"2006-01-02T15:04:05Z07:00\": not RFC 3339")))
                }
                _ => Ok(()),
            },
            (Some("integer"), Value::Number(n)) => {
                let fits = match (n.as_i64(), format) {
                    (Some(i), Some("int32")) => i32::try_from(i).is_ok(),
                    (Some(_), _) => true,
                    (None, _) => false,
                };
                if fits {
                    Ok(())
                } else {
                    Err(self.mismatch(s, v, path))
                }
            }
            (Some("number"), Value::Number(_)) | (Some("boolean"), Value::Bool(_)) => Ok(()),
            (Some("array"), Value::Array(items)) => {
                let Some(item) = s.field("items") else { return Ok(()) };
                let item = Schema { name: "", schema: item };
                let len = path.shown.len();
                for (i, x) in items.iter().enumerate() {
                    path.shown.push_str(&format!("[{i}]"));
                    self.value(item, x, path, depth + 1)?;
                    path.shown.truncate(len);
                }
                Ok(())
            }
            (Some("object") | None, Value::Object(m)) => self.members(s, m, path, &[], depth),
            // An object with no declared members is free-form (RawExtension, JSON, FieldsV1):
            // it takes any value, as its Go type does.
            (Some("object") | None, _)
                if s.field("properties").is_none() && s.field("additionalProperties").is_none() =>
            {
                Ok(())
            }
            (Some(_), _) | (None, _) => Err(self.mismatch(s, v, path)),
        }
    }

    /// The members of an object: declared properties, map values, or unknown fields.
    fn members(
        &mut self,
        s: Schema,
        m: &serde_json::Map<String, Value>,
        path: &mut Path,
        skip: &[&str],
        depth: usize,
    ) -> Result<(), StrictError> {
        if preserves(s.schema) {
            return Ok(());
        }
        let props = s.field("properties").and_then(Value::as_object);
        let additional = s.field("additionalProperties").filter(|a| a.is_object());
        if props.is_none() && additional.is_none() {
            return Ok(());
        }
        let (shown_len, go_len) = (path.shown.len(), path.go.len());
        let owner = match s.name.rsplit('.').next().filter(|n| !n.is_empty()) {
            Some(n) => std::mem::replace(&mut path.owner, n.to_string()),
            None => path.owner.clone(),
        };
        for (k, x) in m {
            if skip.contains(&k.as_str()) {
                continue;
            }
            let child = match (props.and_then(|p| p.get(k)), additional) {
                (Some(p), _) => Some(p),
                (None, Some(a)) => Some(a),
                (None, None) => None,
            };
            for p in [&mut path.shown, &mut path.go] {
                if !p.is_empty() {
                    p.push('.');
                }
                p.push_str(k);
            }
            match child {
                Some(c) => self.value(Schema { name: "", schema: c }, x, path, depth + 1)?,
                None => self.unknown.push(path.shown.clone()),
            }
            path.shown.truncate(shown_len);
            path.go.truncate(go_len);
        }
        path.owner = owner;
        Ok(())
    }
}

/// Standard base64 with padding, as Go's `[]byte` fields decode it; the error is the offset of
/// the first byte that is not.
fn base64_ok(text: &str) -> Result<(), usize> {
    use base64::Engine;
    match base64::engine::general_purpose::STANDARD.decode(text) {
        Ok(_) => Ok(()),
        Err(base64::DecodeError::InvalidByte(at, _)) | Err(base64::DecodeError::InvalidLastSymbol(at, _)) => Err(at),
        Err(_) => Err(text.len()),
    }
}
