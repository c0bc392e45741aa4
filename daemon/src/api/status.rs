//! `metav1.Status` errors: every failure a user sees is one of these, with the HTTP code,
//! reason and (for validation) field causes that kubectl prints.
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use shoal_kube::Resource;

/// A request that failed, as the Status object kubectl decodes.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

/// One field cause of a 422 Invalid.
#[derive(Debug, Clone)]
pub(crate) struct Cause {
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn required(field: &str) -> Self {
        Cause { reason: "FieldValueRequired", field: field.into(), message: "Required value".into() }
    }

    pub fn invalid(field: &str, value: &str, why: &str) -> Self {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: \"{value}\": {why}"),
        }
    }

    pub fn unsupported(field: &str, value: &str, allowed: &[&str]) -> Self {
        let allowed: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
        Cause {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!("Unsupported value: \"{value}\": supported values: {}", allowed.join(", ")),
        }
    }
}

/// The resource name as Status.details.kind/group carry it.
fn details(res: &Resource, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": res.plural});
    if !res.group.is_empty() {
        d["group"] = json!(res.group);
    }
    d
}

/// "deployments.apps" or "pods", as Kubernetes messages name resources.
pub(crate) fn qualified(res: &Resource) -> String {
    if res.group.is_empty() {
        res.plural.clone()
    } else {
        format!("{}.{}", res.plural, res.group)
    }
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None }
    }

    pub fn not_found(res: &Resource, name: &str) -> Self {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", qualified(res)),
            details: Some(details(res, name)),
        }
    }

    pub fn path_not_found() -> Self {
        ApiError::new(404, "NotFound", "the server could not find the requested resource")
    }

    pub fn already_exists(res: &Resource, name: &str) -> Self {
        ApiError {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", qualified(res)),
            details: Some(details(res, name)),
        }
    }

    pub fn conflict(res: &Resource, name: &str) -> Self {
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                qualified(res)
            ),
            details: Some(details(res, name)),
        }
    }

    pub fn invalid(res: &Resource, name: &str, causes: Vec<Cause>) -> Self {
        let text: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let kind_name = if res.group.is_empty() { res.kind.clone() } else { format!("{}.{}", res.kind, res.group) };
        let mut d = json!({"name": name, "kind": res.kind});
        if !res.group.is_empty() {
            d["group"] = json!(res.group);
        }
        d["causes"] = Value::Array(
            causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect(),
        );
        let message = if text.len() == 1 {
            format!("{kind_name} \"{name}\" is invalid: {}", text[0])
        } else {
            format!("{kind_name} \"{name}\" is invalid: [{}]", text.join(", "))
        };
        ApiError { code: 422, reason: "Invalid", message, details: Some(d) }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        ApiError::new(405, "MethodNotAllowed", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(403, "Forbidden", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(503, "ServiceUnavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(500, "InternalError", message)
    }

    pub fn expired(message: impl Into<String>) -> Self {
        ApiError::new(410, "Expired", message)
    }

    pub fn unsupported_media(content_type: &str) -> Self {
        ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type:?})"))
    }

    pub fn too_large(limit: usize) -> Self {
        ApiError::new(413, "RequestEntityTooLarge", format!("the request body is too large: limit is {limit} bytes"))
    }

    pub fn unauthorized() -> Self {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    /// A validation failure of shoal-kube's validation module (422 with its causes).
    pub fn from_invalid(inv: &shoal_kube::validation::Invalid) -> Self {
        let st = inv.to_status();
        ApiError { code: 422, reason: "Invalid", message: inv.message(), details: st.get("details").cloned() }
    }

    /// The Status object itself.
    pub fn to_json(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }

    /// Maps an object-layer error for a resource and name.
    pub fn from_objects(e: shoal_kube::Error, res: &Resource, name: &str) -> Self {
        use shoal_kube::Error as E;
        match e {
            E::NotFound { .. } => ApiError::not_found(res, name),
            E::AlreadyExists { .. } => ApiError::already_exists(res, name),
            E::Conflict { .. } => ApiError::conflict(res, name),
            E::Invalid(msg) => {
                let (field, message) =
                    msg.split_once(": ").map(|(f, m)| (f.to_string(), m.to_string())).unwrap_or_default();
                ApiError::invalid(res, name, vec![Cause { reason: "FieldValueInvalid", field, message }])
            }
            E::Store(shoal_store::Error::NoLeader { reason }) => {
                ApiError::unavailable(format!("the cluster has no leader right now: {reason}"))
            }
            E::Store(shoal_store::Error::Compacted { requested, oldest }) => {
                ApiError::expired(format!("too old resource version: {requested} ({oldest})"))
            }
            other => {
                tracing::warn!(error = %other, "object store failure");
                ApiError::internal(format!("storage error: {other}"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = shoal_kube::wire::to_vec(&self.to_json());
        let mut resp = (code, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        // As upstream: a 429 or 5xx that names a wait carries it in Retry-After too.
        let retry = self.details.as_ref().and_then(|d| d["retryAfterSeconds"].as_u64()).filter(|s| *s > 0);
        if let Some(secs) = retry.filter(|_| self.code == 429 || self.code >= 500) {
            resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        resp
    }
}

/// A `Status` Success reply (deletecollection of nothing, deletion of a namespace-less kind).
pub(crate) fn success(details: Option<Value>) -> Value {
    let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"});
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}
