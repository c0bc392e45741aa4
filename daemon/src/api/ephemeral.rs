//! `pods/ephemeralcontainers` (what `kubectl debug` writes): GET, PUT and PATCH of a Pod of
//! which only `spec.ephemeralContainers` may change, as kube-apiserver's ephemeral-containers
//! strategy: every other change in the body is dropped, existing ephemeral containers may not
//! be changed or removed, and the fields that would make one part of the workload (ports,
//! probes, resources, lifecycle, ...) are refused.
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use shoal_kube::UpdateMode;

use super::crud::{self, json_response, Ctx, PatchKind};
use super::status::{ApiError, Cause};

/// The fields of a Container that an ephemeral container may not set (upstream's
/// `allowedEphemeralContainerFields` is the complement).
const FORBIDDEN_FIELDS: &[&str] = &[
    "ports",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
    "resources",
    "resizePolicy",
    "restartPolicy",
];

/// What the kubelet names a static pod's mirror, which may not get ephemeral containers.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

pub(crate) async fn serve(ctx: &Ctx, method: Method) -> Result<Response, ApiError> {
    let name = ctx.name()?;
    if method == Method::GET {
        let mut pod = ctx.get_existing(name).await?;
        crud::set_type_meta(&ctx.res, &mut pod);
        return Ok(json_response(StatusCode::OK, &pod));
    }
    let kind = match method {
        Method::PUT => None,
        Method::PATCH => Some(
            PatchKind::from_content_type(&ctx.content_type)
                .ok_or_else(|| ApiError::unsupported_media(&ctx.content_type))?,
        ),
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({method})"
            )))
        }
    };
    let body = if kind.is_none() { Some(ctx.body_json()?) } else { None };
    for _ in 0..8 {
        let mut old = ctx.get_existing(name).await?;
        crud::set_type_meta(&ctx.res, &mut old);
        let (wanted, rv) = match (&body, kind) {
            (Some(b), _) => {
                if b["metadata"]["name"].as_str().is_some_and(|n| n != name) {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({}) does not match the name on the URL ({name})",
                        b["metadata"]["name"].as_str().unwrap_or_default()
                    )));
                }
                (b["spec"]["ephemeralContainers"].clone(), b["metadata"]["resourceVersion"].as_str().map(String::from))
            }
            (None, Some(k)) => {
                let next = crud::apply_patch(k, &old, &ctx.body, "", "Pod")?;
                let rv = next["metadata"]["resourceVersion"].as_str().map(String::from);
                let rv = rv.filter(|r| Some(r.as_str()) != old["metadata"]["resourceVersion"].as_str());
                (next["spec"]["ephemeralContainers"].clone(), rv)
            }
            (None, None) => return Err(ApiError::bad_request("no body")),
        };
        let mut next = old.clone();
        let mut list: Vec<Value> = match wanted {
            Value::Null => vec![],
            Value::Array(a) => a,
            _ => {
                return Err(ApiError::bad_request("spec.ephemeralContainers: expected an array of containers"));
            }
        };
        list.iter_mut().for_each(super::pod::default_container);
        next["spec"]["ephemeralContainers"] = json!(list);
        if list.is_empty() && old["spec"]["ephemeralContainers"].is_null() {
            if let Some(s) = next["spec"].as_object_mut() {
                s.remove("ephemeralContainers");
            }
        }
        let causes = validate(&next, &old);
        if !causes.is_empty() {
            return Err(ApiError::invalid(&ctx.res, name, causes));
        }
        if let Some(rv) = &rv {
            next["metadata"]["resourceVersion"] = json!(rv);
        }
        let ns = ctx.ns().unwrap_or("default");
        crate::admission::pod_security::admit(
            &ctx.state.objects,
            &ctx.state.pod_security_defaults,
            &ctx.res,
            ns,
            &next,
            Some(&old),
        )
        .await
        .map_err(|e| crud::admission_error(e, &ctx.res))?;
        if ctx.dry_run() {
            return Ok(json_response(StatusCode::OK, &next));
        }
        match ctx.state.objects.update(&ctx.res, ctx.ns(), next, UpdateMode::Spec).await {
            Ok(mut out) => {
                crud::set_type_meta(&ctx.res, &mut out);
                return Ok(json_response(StatusCode::OK, &out));
            }
            Err(e) => {
                let e = ApiError::from_objects(e, &ctx.res, name);
                if e.reason == "Conflict" && rv.is_none() {
                    continue;
                }
                return Err(e);
            }
        }
    }
    Err(ApiError::conflict(&ctx.res, name))
}

fn forbidden(field: String, message: impl Into<String>) -> Cause {
    Cause { reason: "FieldValueForbidden", field, message: format!("Forbidden: {}", message.into()) }
}

/// Whether a field holds something other than its zero value.
fn is_set(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// Upstream's `ValidatePodEphemeralContainersUpdate`: the new ephemeral containers are
/// valid, and the old ones are all still there, unchanged.
pub(crate) fn validate(new: &Value, old: &Value) -> Vec<Cause> {
    if old["metadata"]["annotations"].get(MIRROR_ANNOTATION).is_some() {
        return vec![forbidden(String::new(), "static pods do not support ephemeral containers")];
    }
    let mut causes = Vec::new();
    let names = |k: &str| -> Vec<String> {
        new["spec"][k].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str().map(String::from)).collect()
    };
    let mut others: Vec<String> = names("containers");
    others.extend(names("initContainers"));
    let path = "spec.ephemeralContainers";
    let list: Vec<Value> = new["spec"]["ephemeralContainers"].as_array().cloned().unwrap_or_default();
    for (i, ec) in list.iter().enumerate() {
        let at = format!("{path}[{i}]");
        let name = ec["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            causes.push(Cause::required(&format!("{at}.name")));
        } else if let Err(why) = dns_label(name) {
            causes.push(Cause::invalid(&format!("{at}.name"), name, &why));
        }
        if ec["image"].as_str().is_none_or(|i| i.trim().is_empty()) {
            causes.push(Cause::required(&format!("{at}.image")));
        }
        if !name.is_empty() {
            if others.iter().any(|o| o == name) {
                causes.push(Cause {
                    reason: "FieldValueDuplicate",
                    field: format!("{at}.name"),
                    message: format!("Duplicate value: \"{name}\""),
                });
            } else {
                others.push(name.to_string());
            }
        }
        if let Some(target) = ec["targetContainerName"].as_str().filter(|t| !t.is_empty()) {
            if !others.iter().any(|o| o == target) {
                causes.push(Cause {
                    reason: "FieldValueNotFound",
                    field: format!("{at}.targetContainerName"),
                    message: format!("Not found: \"{target}\""),
                });
            }
        }
        for f in FORBIDDEN_FIELDS {
            if is_set(&ec[*f]) {
                causes.push(forbidden(format!("{at}.{f}"), "cannot be set for an Ephemeral Container"));
            }
        }
        for (j, vm) in ec["volumeMounts"].as_array().into_iter().flatten().enumerate() {
            for f in ["subPath", "subPathExpr"] {
                if is_set(&vm[f]) {
                    causes.push(forbidden(
                        format!("{at}.volumeMounts[{j}].{f}"),
                        "cannot be set for an Ephemeral Container",
                    ));
                }
            }
        }
    }
    for o in old["spec"]["ephemeralContainers"].as_array().into_iter().flatten() {
        let name = o["name"].as_str().unwrap_or_default();
        match list.iter().find(|c| c["name"].as_str() == Some(name)) {
            None => causes.push(forbidden(
                path.to_string(),
                format!("existing ephemeral containers \"{name}\" may not be removed\n"),
            )),
            Some(c) if c != o => causes.push(forbidden(
                format!("{path}[{name}]"),
                format!("existing ephemeral containers \"{name}\" may not be changed\n"),
            )),
            Some(_) => {}
        }
    }
    causes
}

/// An RFC 1123 label, with upstream's message.
fn dns_label(s: &str) -> Result<(), String> {
    let ok = s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        return Ok(());
    }
    if s.len() > 63 {
        return Err("must be no more than 63 characters".into());
    }
    Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start \
         and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is \
         '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
        .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ecs: Value) -> Value {
        json!({"metadata": {"name": "web"}, "spec": {
            "containers": [{"name": "app", "image": "busybox:1.25"}],
            "ephemeralContainers": ecs,
        }})
    }

    fn fields(c: &[Cause]) -> Vec<String> {
        c.iter().map(|c| format!("{}: {}", c.field, c.message)).collect()
    }

    #[test]
    fn a_new_debug_container_is_valid() {
        let old = pod(json!([]));
        let new = pod(json!([{"name": "debugger", "image": "busybox:1.25", "targetContainerName": "app",
            "stdin": true, "tty": true, "resources": {}}]));
        assert!(validate(&new, &old).is_empty(), "{:?}", fields(&validate(&new, &old)));
    }

    #[test]
    fn workload_fields_are_refused_with_upstream_wording() {
        let old = pod(json!([]));
        let new = pod(json!([{"name": "d", "image": "busybox", "ports": [{"containerPort": 80}],
            "readinessProbe": {"exec": {"command": ["true"]}}, "resources": {"limits": {"cpu": "1"}},
            "lifecycle": {"preStop": {"exec": {"command": ["true"]}}},
            "volumeMounts": [{"name": "v", "mountPath": "/v", "subPath": "x"}]}]));
        let got = fields(&validate(&new, &old));
        assert_eq!(
            got,
            vec![
                "spec.ephemeralContainers[0].ports: Forbidden: cannot be set for an Ephemeral Container",
                "spec.ephemeralContainers[0].readinessProbe: Forbidden: cannot be set for an Ephemeral Container",
                "spec.ephemeralContainers[0].lifecycle: Forbidden: cannot be set for an Ephemeral Container",
                "spec.ephemeralContainers[0].resources: Forbidden: cannot be set for an Ephemeral Container",
                "spec.ephemeralContainers[0].volumeMounts[0].subPath: Forbidden: cannot be set for an Ephemeral Container",
            ]
        );
    }

    #[test]
    fn names_targets_and_existing_containers() {
        let old = pod(json!([{"name": "d1", "image": "busybox"}]));
        let dup = pod(json!([{"name": "d1", "image": "busybox"}, {"name": "app", "image": "busybox"}]));
        assert_eq!(fields(&validate(&dup, &old)), vec!["spec.ephemeralContainers[1].name: Duplicate value: \"app\""]);
        let removed = pod(json!([]));
        assert_eq!(
            fields(&validate(&removed, &old)),
            vec!["spec.ephemeralContainers: Forbidden: existing ephemeral containers \"d1\" may not be removed\n"]
        );
        let changed = pod(json!([{"name": "d1", "image": "alpine"}]));
        assert_eq!(
            fields(&validate(&changed, &old)),
            vec!["spec.ephemeralContainers[d1]: Forbidden: existing ephemeral containers \"d1\" may not be changed\n"]
        );
        let target = pod(
            json!([{"name": "d1", "image": "busybox"}, {"name": "d2", "image": "busybox", "targetContainerName": "nope"}]),
        );
        assert_eq!(
            fields(&validate(&target, &old)),
            vec!["spec.ephemeralContainers[1].targetContainerName: Not found: \"nope\""]
        );
        let bad = pod(json!([{"name": "d1", "image": "busybox"}, {"name": "Bad_Name"}]));
        let got = fields(&validate(&bad, &old));
        assert!(got[0].starts_with("spec.ephemeralContainers[1].name: Invalid value: \"Bad_Name\""), "{got:?}");
        assert_eq!(got[1], "spec.ephemeralContainers[1].image: Required value");
        let mut mirror = old.clone();
        mirror["metadata"]["annotations"] = json!({MIRROR_ANNOTATION: "x"});
        assert_eq!(
            fields(&validate(&dup, &mirror)),
            vec![": Forbidden: static pods do not support ephemeral containers"]
        );
    }
}
