//! Patches as the Kubernetes API applies them: JSON patch (RFC 6902), JSON merge patch
//! (RFC 7386), strategic merge patch (the merge keys and directives of apimachinery's
//! `strategicpatch`, for the built-in kinds) and server-side apply with field ownership
//! ([`managed`]).
//!
//! Every function is pure: it takes the live object and the request body and returns the new
//! object, or an [`Error`] that the API turns into a `Status` (see [`Error::http_code`]). Nothing
//! here panics on any input.

pub mod managed;
mod schema;
mod strategic;

use serde_json::Value;

pub use schema::{list_strategy, strategic_merge_supported, ListStrategy};
pub use strategic::strategic_merge;

/// Why a patch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request body is not a well-formed patch document of its content type.
    #[error("the body of the request was in an unknown format: {0}")]
    DecodePatch(#[source] serde_json::Error),
    /// A JSON patch operation failed (missing path, failed `test`, ...).
    #[error("{0}")]
    ApplyJsonPatch(#[source] json_patch::PatchError),
    /// A strategic merge patch carries a `$patch` directive with an unknown value.
    #[error("unknown patch type: {directive:?} in map: {context}")]
    BadPatchDirective { directive: String, context: String },
    /// A `$patch` directive is used where it cannot apply (`merge` inside a list, a directive in a
    /// list of primitives).
    #[error("{0}")]
    MisplacedDirective(String),
    /// A list element of a merging list lacks its merge key.
    #[error("map: {element} does not contain declared merge key: {merge_key}")]
    MissingMergeKey { element: String, merge_key: String },
    /// A directive has a value of the wrong shape (`$retainKeys` not a list of strings, ...).
    #[error("invalid value for {directive}: {message}")]
    BadDirectiveValue { directive: String, message: String },
    /// The patched document would not be a JSON object.
    #[error("patched object must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// The patch nests deeper than any Kubernetes object.
    #[error("patch nests deeper than {0} levels")]
    TooDeep(usize),
    /// `metadata.managedFields` of the request cannot be read.
    #[error("metadata.managedFields: Invalid value: {0}")]
    InvalidManagedFields(String),
    /// Server-side apply would change fields other managers own (409 unless forced).
    #[error("{}", managed::conflict_message(.0))]
    Conflict(Vec<managed::Conflict>),
    /// A JSON patch with more operations than kube-apiserver takes.
    #[error("The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {0}")]
    TooManyOperations(usize),
    /// JSON patch `copy` operations that together copy more than the bound (a copy bomb).
    #[error("Unable to complete request: accumulated copy size exceeds the limit ({0} bytes)")]
    CopyLimit(usize),
    /// The patched object would be larger than any object the API takes.
    #[error("the patched object is larger than {0} bytes")]
    TooLarge(usize),
}

/// kube-apiserver's `maxJSONPatchOperations`.
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;
/// What JSON patch `copy` operations may copy in total, and the largest patched object
/// (kube-apiserver's request body limit, 3 MiB).
pub const MAX_PATCHED_BYTES: usize = 3 * 1024 * 1024;
/// The deepest nesting a patched object may have (Kubernetes objects stay far below; the
/// store's JSON reader refuses more than 128).
pub const MAX_PATCHED_DEPTH: usize = 100;

impl Error {
    /// HTTP status the API answers with: 400 for a body that cannot be decoded, 422 for a patch
    /// that decodes but cannot be applied (as kube-apiserver does).
    pub fn http_code(&self) -> u16 {
        match self {
            Error::DecodePatch(_) | Error::InvalidManagedFields(_) => 400,
            Error::Conflict(_) => 409,
            Error::TooManyOperations(_) | Error::TooLarge(_) => 413,
            _ => 422,
        }
    }

    /// `Status.reason` matching [`Error::http_code`].
    pub fn reason(&self) -> &'static str {
        match self {
            Error::DecodePatch(_) | Error::InvalidManagedFields(_) => "BadRequest",
            Error::Conflict(_) => "Conflict",
            Error::TooManyOperations(_) | Error::TooLarge(_) => "RequestEntityTooLarge",
            _ => "Invalid",
        }
    }

    /// `Status.details` of the answer: the `FieldManagerConflict` causes of a conflict.
    pub fn details(&self) -> Option<Value> {
        let Error::Conflict(conflicts) = self else { return None };
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|c| {
                serde_json::json!({
                    "reason": "FieldManagerConflict",
                    "message": format!("conflict with {}", c.manager),
                    "field": c.field,
                })
            })
            .collect();
        Some(serde_json::json!({ "causes": causes }))
    }

    /// The `Status` object the API answers with.
    pub fn to_status(&self) -> Value {
        let mut s = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.to_string(), "reason": self.reason(), "code": self.http_code(),
        });
        if let Some(d) = self.details() {
            s["details"] = d;
        }
        s
    }
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn ensure_object(v: Value) -> Result<Value> {
    if v.is_object() {
        Ok(v)
    } else {
        Err(Error::NotAnObject(type_name(&v)))
    }
}

/// The patch formats of `PATCH` requests, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`
    Json,
    /// `application/merge-patch+json`
    Merge,
    /// `application/strategic-merge-patch+json`
    StrategicMerge,
    /// `application/apply-patch+yaml` (server-side apply)
    Apply,
}

impl PatchType {
    /// The patch type of a `Content-Type` header value (parameters such as `charset` ignored);
    /// None for anything else, which the API answers with 415.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::StrategicMerge),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

/// Decodes a server-side apply body: JSON (what kubectl sends) or YAML.
pub fn decode_apply_body(body: &[u8]) -> Result<Value> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => ensure_object(v),
        Err(json_err) => match serde_norway::from_slice::<Value>(body) {
            Ok(v) => ensure_object(v),
            Err(_) => Err(Error::DecodePatch(json_err)),
        },
    }
}

/// Applies a `PATCH` body of type `patch_type` to the live object. Server-side apply of an
/// object that does not exist yet goes through [`server_side_apply`] with `None`.
pub fn apply(patch_type: PatchType, live: &Value, body: &[u8], group: &str, kind: &str) -> Result<Value> {
    let out = match patch_type {
        PatchType::Json => apply_json_patch(live, body),
        PatchType::Merge => apply_merge_patch(live, body),
        PatchType::StrategicMerge => apply_strategic_merge_patch(live, body, group, kind),
        PatchType::Apply => server_side_apply(Some(live.clone()), decode_apply_body(body)?, group, kind),
    }?;
    check_bounds(&out)?;
    Ok(out)
}

/// Refuses a patched object nested deeper than [`MAX_PATCHED_DEPTH`] or larger than
/// [`MAX_PATCHED_BYTES`] serialized; walks without recursion, so no input overflows the stack
/// (a walk stopped at the size bound may miss deeper parts, but then the size refuses it).
pub fn check_bounds(v: &Value) -> Result<()> {
    let (size, depth) = measure(v, MAX_PATCHED_BYTES);
    if size > MAX_PATCHED_BYTES {
        return Err(Error::TooLarge(MAX_PATCHED_BYTES));
    }
    if depth > MAX_PATCHED_DEPTH {
        return Err(Error::TooDeep(MAX_PATCHED_DEPTH));
    }
    Ok(())
}

/// Applies an RFC 6902 JSON patch (`application/json-patch+json`). All or nothing: on error the
/// live object is untouched (it is only borrowed).
pub fn apply_json_patch(doc: &Value, patch: &[u8]) -> Result<Value> {
    use json_patch::PatchOperation as Op;
    let ops: json_patch::Patch = serde_json::from_slice(patch).map_err(Error::DecodePatch)?;
    if ops.0.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(Error::TooManyOperations(ops.0.len()));
    }
    let mut out = doc.clone();
    // One operation at a time, each bounded before it runs: what `copy` and `move` carry
    // counts against one budget (a copy bomb doubles the object with every operation), and
    // nothing may land deeper than the depth bound, so the object never grows past either.
    let mut carried = 0usize;
    for (i, op) in ops.0.iter().enumerate() {
        let landed = match op {
            Op::Add(a) => Some((a.path.tokens().count(), measure(&a.value, usize::MAX).1)),
            Op::Replace(r) => Some((r.path.tokens().count(), measure(&r.value, usize::MAX).1)),
            Op::Copy(json_patch::CopyOperation { from, path }) | Op::Move(json_patch::MoveOperation { from, path }) => {
                match out.pointer(from.as_str()) {
                    Some(src) => {
                        let (size, depth) = measure(src, MAX_PATCHED_BYTES - carried);
                        carried += size;
                        if carried > MAX_PATCHED_BYTES {
                            return Err(Error::CopyLimit(MAX_PATCHED_BYTES));
                        }
                        Some((path.tokens().count(), depth))
                    }
                    None => None,
                }
            }
            Op::Remove(_) | Op::Test(_) => None,
        };
        if landed.is_some_and(|(at, depth)| at + depth > MAX_PATCHED_DEPTH) {
            return Err(Error::TooDeep(MAX_PATCHED_DEPTH));
        }
        json_patch::patch_unsafe(&mut out, std::slice::from_ref(op)).map_err(|mut e| {
            e.operation = i;
            Error::ApplyJsonPatch(e)
        })?;
    }
    ensure_object(out)
}

/// (serialized size, roughly; nesting depth) of `v`, walking without recursion and stopping
/// once the size passes `cap`.
fn measure(v: &Value, cap: usize) -> (usize, usize) {
    let mut stack = vec![(v, 1usize)];
    let (mut size, mut deepest) = (0usize, 0usize);
    while let Some((v, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        size += match v {
            Value::Null | Value::Bool(_) => 5,
            Value::Number(_) => 20,
            Value::String(s) => s.len() + 2,
            Value::Array(a) => {
                stack.extend(a.iter().map(|x| (x, depth + 1)));
                a.len() + 2
            }
            Value::Object(m) => {
                stack.extend(m.iter().map(|(_, x)| (x, depth + 1)));
                m.keys().map(|k| k.len() + 4).sum::<usize>() + 2
            }
        };
        if size > cap {
            break;
        }
    }
    (size, deepest)
}

/// Applies an RFC 7386 JSON merge patch (`application/merge-patch+json`).
pub fn apply_merge_patch(doc: &Value, patch: &[u8]) -> Result<Value> {
    let patch: Value = serde_json::from_slice(patch).map_err(Error::DecodePatch)?;
    let mut out = doc.clone();
    json_patch::merge(&mut out, &patch);
    ensure_object(out)
}

/// Applies a strategic merge patch (`application/strategic-merge-patch+json`) to an object of
/// the given API group ("" for core) and kind. Kinds without merge metadata (custom resources)
/// merge maps and replace lists; kube-apiserver refuses strategic merge patches for custom
/// resources with 415, which the API decides with [`strategic_merge_supported`].
pub fn apply_strategic_merge_patch(doc: &Value, patch: &[u8], group: &str, kind: &str) -> Result<Value> {
    let patch: Value = serde_json::from_slice(patch).map_err(Error::DecodePatch)?;
    strategic_merge(doc, &patch, group, kind)
}

/// Server-side apply (`application/apply-patch+yaml`, body already decoded to JSON) as an upsert:
/// without a live object the applied configuration is the new object; otherwise the applied
/// configuration is merged into the live object with the strategic merge rules (maps merged,
/// lists with merge keys merged by key, other lists replaced).
///
/// This is the merge alone, without field ownership; the API applies with
/// [`managed::apply`], which tracks `managedFields`, detects conflicts and removes the fields a
/// manager stops applying.
pub fn server_side_apply(live: Option<Value>, applied: Value, group: &str, kind: &str) -> Result<Value> {
    let applied = ensure_object(applied)?;
    match live {
        None => strategic_merge(&Value::Object(Default::default()), &applied, group, kind),
        Some(live) => strategic_merge(&live, &applied, group, kind),
    }
}

#[cfg(test)]
mod tests;
