//! Who is asking and may they: authentication (client certificate or ServiceAccount token),
//! impersonation and the RBAC decision for every request, and the review endpoints kubectl's
//! `auth` commands call: SelfSubjectAccessReview, SubjectAccessReview,
//! LocalSubjectAccessReview, SelfSubjectRulesReview (`authorization.k8s.io/v1`) and
//! SelfSubjectReview (`authentication.k8s.io/v1`).
use std::sync::Arc;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use tracing::debug;

use super::crud::{decode_body, json_response};
use super::status::ApiError;
use super::ApiState;
use crate::auth::{self, Attributes, ImpersonateError, UserInfo};

/// The 403 kube-apiserver answers for a refused request.
pub(crate) fn forbidden(user: &str, a: &Attributes, reason: &str) -> ApiError {
    let mut details = serde_json::Map::new();
    if a.resource_request {
        if !a.group.is_empty() {
            details.insert("group".into(), json!(a.group));
        }
        if !a.resource.is_empty() {
            details.insert("kind".into(), json!(a.resource));
        }
        if !a.name.is_empty() {
            details.insert("name".into(), json!(a.name));
        }
    }
    let mut e = ApiError::forbidden(auth::forbidden_message(user, a, reason));
    e.details = Some(Value::Object(details));
    e
}

fn query_pairs(req: &Parts) -> Vec<(String, String)> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&req.uri).map(|q| q.0).unwrap_or_default()
}

/// The identity a request acts as, once authenticated, impersonation checked and the request
/// allowed; the error is the 401 or 403 to answer. `authenticated` gets who the credentials
/// speak for (before impersonation), for the audit log.
pub(crate) async fn check(
    state: &ApiState,
    cert_user: Option<&UserInfo>,
    req: &Parts,
    authenticated: &mut Option<UserInfo>,
) -> Result<Arc<UserInfo>, ApiError> {
    let user = match cert_user {
        Some(u) => u.clone(),
        None => auth::token::authenticate(&state.objects, state.tokens.as_deref(), &req.headers)
            .await
            .ok_or_else(ApiError::unauthorized)?,
    };
    *authenticated = Some(user.clone());
    let user = match auth::impersonate(&state.authz, &user, &req.headers).await {
        Ok(u) => u,
        Err(ImpersonateError::Forbidden(a)) => {
            debug!(user = %user.name, "impersonation refused");
            return Err(forbidden(&user.name, &a, ""));
        }
        Err(ImpersonateError::BadRequest(m)) => return Err(ApiError::bad_request(m)),
    };
    let attrs = Attributes::from_request(req.method.as_str(), req.uri.path(), &query_pairs(req));
    let started = std::time::Instant::now();
    let decision = state.authz.authorize(&user, &attrs).await;
    crate::metrics::apiserver::observe_authz(started.elapsed());
    match decision {
        auth::Decision::Allow(_) => Ok(Arc::new(user)),
        auth::Decision::Deny(reason) => {
            debug!(user = %user.name, verb = %attrs.verb, resource = %attrs.resource, namespace = %attrs.namespace, path = %attrs.path, "request refused by rbac");
            Err(forbidden(&user.name, &attrs, &reason))
        }
    }
}

fn user_json(u: &UserInfo) -> Value {
    let mut v = json!({"username": u.name, "groups": u.groups});
    if !u.uid.is_empty() {
        v["uid"] = json!(u.uid);
    }
    if !u.extra.is_empty() {
        v["extra"] = json!(u.extra);
    }
    v
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect()
}

/// The attributes a review's spec asks about.
fn review_attributes(spec: &Value) -> Result<Attributes, ApiError> {
    let r = &spec["resourceAttributes"];
    let n = &spec["nonResourceAttributes"];
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    match (r.is_object(), n.is_object()) {
        (true, false) => Ok(Attributes::resource(
            &s(r, "verb"),
            &s(r, "group"),
            &s(r, "resource"),
            &s(r, "subresource"),
            &s(r, "namespace"),
            &s(r, "name"),
        )),
        (false, true) => Ok(Attributes::non_resource(&s(n, "verb"), &s(n, "path"))),
        _ => Err(ApiError::new(
            422,
            "Invalid",
            "spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

async fn access_status(state: &ApiState, user: &UserInfo, a: &Attributes) -> Value {
    match state.authz.authorize(user, a).await {
        auth::Decision::Allow(reason) => {
            let mut s = json!({"allowed": true});
            if !reason.is_empty() {
                s["reason"] = json!(reason);
            }
            s
        }
        auth::Decision::Deny(reason) => {
            let mut s = json!({"allowed": false});
            if !reason.is_empty() {
                s["reason"] = json!(reason);
            }
            s
        }
    }
}

fn rules_status(rules: &[auth::PolicyRule]) -> Value {
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for r in rules {
        if r.non_resource_urls.is_empty() {
            let mut v = json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
            if !r.resource_names.is_empty() {
                v["resourceNames"] = json!(r.resource_names);
            }
            resource_rules.push(v);
        } else {
            non_resource_rules.push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
        }
    }
    json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false})
}

/// POST of a review object; `namespace` is set for LocalSubjectAccessReview's path.
pub(crate) async fn review(
    state: &ApiState,
    req: Request<Body>,
    group: &str,
    version: &str,
    plural: &str,
    namespace: Option<&str>,
) -> Result<Response, ApiError> {
    let user = req.extensions().get::<Arc<UserInfo>>().cloned().ok_or_else(ApiError::unauthorized)?;
    let content_type = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = super::router::read_body(req.into_body(), state.max_body_bytes).await?;
    let mut obj = decode_body(&content_type, &body)?;
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body of the request must be a JSON object"));
    }
    let kind = match plural {
        "selfsubjectaccessreviews" => "SelfSubjectAccessReview",
        "subjectaccessreviews" => "SubjectAccessReview",
        "localsubjectaccessreviews" => "LocalSubjectAccessReview",
        "selfsubjectrulesreviews" => "SelfSubjectRulesReview",
        "selfsubjectreviews" => "SelfSubjectReview",
        _ => return Err(ApiError::path_not_found()),
    };
    let spec = obj["spec"].clone();
    let status = match plural {
        "selfsubjectaccessreviews" => access_status(state, &user, &review_attributes(&spec)?).await,
        "subjectaccessreviews" | "localsubjectaccessreviews" => {
            let a = review_attributes(&spec)?;
            if let Some(ns) = namespace {
                if a.namespace != ns {
                    return Err(ApiError::bad_request(format!(
                        "spec.resourceAttributes.namespace must match namespace: {ns}"
                    )));
                }
            }
            let subject = UserInfo {
                name: spec["user"].as_str().unwrap_or_default().to_string(),
                uid: spec["uid"].as_str().unwrap_or_default().to_string(),
                groups: strs(&spec["groups"]),
                extra: spec["extra"].as_object().into_iter().flatten().map(|(k, v)| (k.clone(), strs(v))).collect(),
            };
            if subject.name.is_empty() && subject.groups.is_empty() {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!("{kind}.authorization.k8s.io \"\" is invalid: spec.user: Invalid value: \"\": at least one of user or group must be specified"),
                ));
            }
            access_status(state, &subject, &a).await
        }
        "selfsubjectrulesreviews" => {
            let ns = spec["namespace"].as_str().unwrap_or_default();
            rules_status(&state.authz.rules(&user, ns).await)
        }
        _ => json!({"userInfo": user_json(&user)}),
    };
    obj["apiVersion"] = json!(format!("{group}/{version}"));
    obj["kind"] = json!(kind);
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["creationTimestamp"] = Value::Null;
    obj["status"] = status;
    Ok(json_response(StatusCode::CREATED, &obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_status_names_the_resource() {
        let a = Attributes::resource("get", "apps", "deployments", "", "dev", "web");
        let e = forbidden("alice", &a, "");
        assert_eq!(e.code, 403);
        assert_eq!(e.reason, "Forbidden");
        assert_eq!(e.details, Some(json!({"group": "apps", "kind": "deployments", "name": "web"})));
        let n = forbidden("alice", &Attributes::non_resource("get", "/metrics"), "");
        assert_eq!(n.message, "forbidden: User \"alice\" cannot get path \"/metrics\"");
        assert!(review_attributes(&json!({})).is_err());
        assert_eq!(
            review_attributes(&json!({"nonResourceAttributes": {"verb": "get", "path": "/x"}})).unwrap().path,
            "/x"
        );
    }
}
