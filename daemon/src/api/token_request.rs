//! TokenRequest (`POST .../serviceaccounts/NAME/token`, what `kubectl create token` calls): a
//! ServiceAccount token signed with the cluster's key, for the audiences asked (the API's by
//! default), optionally bound to a pod (it dies with the pod), its lifetime capped at
//! `[api] service_account_max_token_expiration`.
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::crud::{decode_body, json_response, Ctx};
use super::status::{ApiError, Cause};
use crate::auth::sa_token::{self, Binding, ISSUER, MIN_EXPIRATION_SECS};

/// The default lifetime of a requested token (kube-apiserver's: one hour).
const DEFAULT_SECS: i64 = 3600;

fn invalid(name: &str, causes: Vec<Cause>) -> ApiError {
    let text: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
    let mut e = ApiError::new(
        422,
        "Invalid",
        format!("TokenRequest.authentication.k8s.io \"{name}\" is invalid: {}", text.join(", ")),
    );
    e.details = Some(json!({
        "name": name,
        "group": "authentication.k8s.io",
        "kind": "TokenRequest",
        "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>(),
    }));
    e
}

/// The lifetime a request gets: at least ten minutes (else 422), at most `max`.
fn lifetime(spec: &Value, name: &str, max: i64) -> Result<i64, ApiError> {
    let asked = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_SECS,
        v => v.as_i64().ok_or_else(|| {
            invalid(name, vec![Cause::invalid("spec.expirationSeconds", &v.to_string(), "must be an integer")])
        })?,
    };
    if asked < MIN_EXPIRATION_SECS {
        return Err(invalid(
            name,
            vec![Cause {
                reason: "FieldValueInvalid",
                field: "spec.expirationSeconds".into(),
                message: format!("Invalid value: {asked}: may not specify a duration less than 10 minutes"),
            }],
        ));
    }
    Ok(asked.min(max.max(MIN_EXPIRATION_SECS)))
}

pub(crate) async fn create(ctx: &Ctx) -> Result<Response, ApiError> {
    let name = ctx.name.clone().unwrap_or_default();
    let ns = ctx.ns.clone().unwrap_or_default();
    let keys = ctx.state.tokens.clone().ok_or_else(|| ApiError::unavailable("this server cannot sign tokens"))?;
    let mut req = decode_body(&ctx.content_type, &ctx.body)?;
    if !req.is_object() {
        return Err(ApiError::bad_request("the body of the request must be a JSON object"));
    }
    if let Some(kind) = req["kind"].as_str().filter(|k| !k.is_empty() && *k != "TokenRequest") {
        return Err(ApiError::bad_request(format!("a TokenRequest is expected, not a {kind}")));
    }
    let sa = ctx
        .state
        .objects
        .get(&ctx.res, Some(&ns), &name)
        .await
        .map_err(|e| ApiError::from_objects(e, &ctx.res, &name))?
        .ok_or_else(|| ApiError::not_found(&ctx.res, &name))?;
    let spec = req["spec"].clone();
    let max = ctx.state.max_token_expiration.as_secs().try_into().unwrap_or(i64::MAX);
    let secs = lifetime(&spec, &name, max)?;
    let audiences: Vec<String> =
        spec["audiences"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(String::from)).collect();
    let audiences = if audiences.is_empty() { vec![ISSUER.to_string()] } else { audiences };
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut binding = Binding {
        namespace: ns.clone(),
        service_account: name.clone(),
        service_account_uid: s(&sa["metadata"]["uid"]),
        ..Binding::default()
    };
    let bound = &spec["boundObjectRef"];
    if bound.is_object() {
        let kind = bound["kind"].as_str().unwrap_or_default();
        if kind != "Pod" {
            return Err(invalid(&name, vec![Cause::unsupported("spec.boundObjectRef.kind", kind, &["Pod"])]));
        }
        let pod_name = s(&bound["name"]);
        let pods = shoal_kube::resources::lookup("", "pods");
        let pod = ctx
            .state
            .objects
            .get(&pods, Some(&ns), &pod_name)
            .await
            .map_err(|e| ApiError::from_objects(e, &pods, &pod_name))?
            .ok_or_else(|| ApiError::not_found(&pods, &pod_name))?;
        let uid = s(&pod["metadata"]["uid"]);
        if bound["uid"].as_str().is_some_and(|u| !u.is_empty() && u != uid) {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!("the UID in the bound object reference ({}) does not match the UID in record. The object might have been deleted and then recreated", s(&bound["uid"])),
            ));
        }
        let sa_of_pod = pod["spec"]["serviceAccountName"].as_str().filter(|n| !n.is_empty()).unwrap_or("default");
        if sa_of_pod != name {
            return Err(ApiError::bad_request(format!(
                "cannot bind a token of service account \"{name}\" to pod \"{pod_name}\", which runs as \"{sa_of_pod}\""
            )));
        }
        binding.pod_name = pod_name;
        binding.pod_uid = uid;
        binding.node_name = s(&pod["spec"]["nodeName"]);
    }
    let now = jiff::Timestamp::now().as_second();
    let token = keys
        .signer()
        .sign(&sa_token::claims(&binding, &audiences, now, secs))
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
    let expires = jiff::Timestamp::from_second(now + secs)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    tracing::info!(serviceaccount = %format!("{ns}/{name}"), seconds = secs, "token issued");
    req["apiVersion"] = json!("authentication.k8s.io/v1");
    req["kind"] = json!("TokenRequest");
    req["metadata"] = json!({"name": name, "namespace": ns, "creationTimestamp": null});
    req["spec"]["audiences"] = json!(audiences);
    req["spec"]["expirationSeconds"] = json!(secs);
    if !bound.is_object() {
        req["spec"]["boundObjectRef"] = Value::Null;
    }
    req["status"] = json!({"token": token, "expirationTimestamp": expires});
    Ok(json_response(StatusCode::CREATED, &req))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_are_capped_and_too_short_ones_refused() {
        let max = 48 * 3600;
        assert_eq!(lifetime(&json!({}), "d", max).unwrap(), 3600);
        assert_eq!(lifetime(&json!({"expirationSeconds": 100 * 3600}), "d", max).unwrap(), max);
        assert_eq!(lifetime(&json!({"expirationSeconds": 7200}), "d", max).unwrap(), 7200);
        let e = lifetime(&json!({"expirationSeconds": 60}), "d", max).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(e.message.contains("may not specify a duration less than 10 minutes"), "{}", e.message);
        assert_eq!(lifetime(&json!({"expirationSeconds": "x"}), "d", max).unwrap_err().code, 422);
    }
}
