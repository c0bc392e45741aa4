//! The TokenRequest API (`POST .../serviceaccounts/NAME/token`, what `kubectl create token`
//! calls): a ServiceAccount token signed with the cluster CA key, as the node agents mint for
//! pods, but bound to no pod. RBAC decides who may ask (`create serviceaccounts/token`).
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::crud::{decode_body, json_response, Ctx};
use super::status::ApiError;
use crate::auth::sa_token::{claims, Binding, MIN_EXPIRATION_SECS};

/// Default lifetime of a requested token (kube-apiserver's: one hour).
const DEFAULT_SECS: i64 = 3600;
/// The longest lifetime given (kube-apiserver's `--service-account-max-token-expiration`
/// default is none; a day keeps a leaked token short-lived).
const MAX_SECS: i64 = 24 * 3600;

/// The lifetime asked for in a TokenRequest's spec, checked.
pub(crate) fn lifetime(spec: &Value) -> Result<i64, ApiError> {
    match &spec["expirationSeconds"] {
        Value::Null => Ok(DEFAULT_SECS),
        v => match v.as_i64() {
            Some(s) if s < MIN_EXPIRATION_SECS => Err(ApiError::new(
                422,
                "Invalid",
                format!("spec.expirationSeconds: Invalid value: {s}: may not specify a duration less than 10 minutes"),
            )),
            Some(s) => Ok(s.min(MAX_SECS)),
            None => Err(ApiError::bad_request("spec.expirationSeconds: must be an integer")),
        },
    }
}

pub(crate) async fn create(ctx: &Ctx) -> Result<Response, ApiError> {
    let (Some(ns), Some(name)) = (ctx.ns.as_deref(), ctx.name.as_deref()) else {
        return Err(ApiError::path_not_found());
    };
    let req = decode_body(&ctx.content_type, &ctx.body)?;
    if !req.is_object() {
        return Err(ApiError::bad_request("the body must be a TokenRequest object"));
    }
    if req["spec"]["boundObjectRef"].is_object() {
        return Err(ApiError::bad_request(
            "spec.boundObjectRef: binding a requested token to an object is not supported",
        ));
    }
    let lifetime = lifetime(&req["spec"])?;
    let audiences: Vec<String> = req["spec"]["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    let sa = ctx
        .state
        .objects
        .get(&ctx.res, Some(ns), name)
        .await
        .map_err(|e| ApiError::from_objects(e, &ctx.res, name))?
        .ok_or_else(|| ApiError::not_found(&ctx.res, name))?;
    let signer =
        ctx.state.token_signer.as_ref().ok_or_else(|| ApiError::unavailable("token signing is not available"))?;
    let b = Binding {
        namespace: ns.to_string(),
        service_account: name.to_string(),
        service_account_uid: sa["metadata"]["uid"].as_str().unwrap_or_default().to_string(),
        ..Binding::default()
    };
    let now = jiff::Timestamp::now().as_second();
    // Bound to no pod and no node: those claims are left out, as kube-apiserver does.
    let mut c = claims(&b, &audiences, now, lifetime);
    if let Some(k) = c["kubernetes.io"].as_object_mut() {
        k.remove("pod");
        k.remove("node");
    }
    let token = signer.sign(&c).map_err(|e| ApiError::internal(e.to_string()))?;
    let expires = jiff::Timestamp::from_second(now + lifetime).map(|t| t.to_string()).unwrap_or_default();
    let mut aud = audiences;
    if aud.is_empty() {
        aud.push(crate::auth::sa_token::ISSUER.to_string());
    }
    tracing::info!(namespace = ns, service_account = name, lifetime, "token issued");
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
            "spec": {"audiences": aud, "expirationSeconds": lifetime, "boundObjectRef": null},
            "status": {"token": token, "expirationTimestamp": expires},
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_are_checked_and_capped() {
        assert_eq!(lifetime(&json!({})).unwrap(), DEFAULT_SECS);
        assert_eq!(lifetime(&json!({"expirationSeconds": 7200})).unwrap(), 7200);
        assert_eq!(lifetime(&json!({"expirationSeconds": 10_000_000})).unwrap(), MAX_SECS);
        assert_eq!(lifetime(&json!({"expirationSeconds": 10})).unwrap_err().code, 422);
        assert_eq!(lifetime(&json!({"expirationSeconds": "x"})).unwrap_err().code, 400);
    }
}
