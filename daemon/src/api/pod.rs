//! Pods: defaults (on pods and on every pod template), validation, `pods/log`, `pods/binding`.
use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{json, Map, Value};

use super::crud::Ctx;
use super::status::{ApiError, Cause};
use crate::streams::{LogOptions, StreamError};

fn set_default(m: &mut Map<String, Value>, key: &str, v: Value) {
    if m.get(key).is_none_or(|x| x.is_null()) {
        m.insert(key.into(), v);
    }
}

/// `Always` for `:latest` or an untagged image, otherwise `IfNotPresent` (as kube-apiserver).
pub(crate) fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        None => "Always",
        Some((_, "latest")) => "Always",
        Some(_) => "IfNotPresent",
    }
}

pub(super) fn default_container(c: &mut Value) {
    let Some(m) = c.as_object_mut() else { return };
    let image = m.get("image").and_then(|i| i.as_str()).unwrap_or_default().to_string();
    set_default(m, "imagePullPolicy", json!(default_pull_policy(&image)));
    set_default(m, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(m, "terminationMessagePolicy", json!("File"));
    set_default(m, "resources", json!({}));
    // A limit without a request: the request is the limit (upstream's pod defaults).
    if let Some(r) = m.get_mut("resources").and_then(|r| r.as_object_mut()) {
        let limits = r.get("limits").and_then(|l| l.as_object()).cloned().unwrap_or_default();
        if !limits.is_empty() {
            let req = r.entry("requests").or_insert_with(|| json!({}));
            if let Some(req) = req.as_object_mut() {
                for (k, v) in limits {
                    req.entry(k).or_insert(v);
                }
            }
        }
    }
    if let Some(ports) = m.get_mut("ports").and_then(|p| p.as_array_mut()) {
        for p in ports.iter_mut().filter_map(|p| p.as_object_mut()) {
            set_default(p, "protocol", json!("TCP"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = m.get_mut(probe).and_then(|p| p.as_object_mut()) {
            set_default(p, "timeoutSeconds", json!(1));
            set_default(p, "periodSeconds", json!(10));
            set_default(p, "successThreshold", json!(1));
            set_default(p, "failureThreshold", json!(3));
        }
    }
}

/// Defaults of a PodSpec, wherever it appears (a Pod, or a template of a workload).
pub(crate) fn default_spec(spec: &mut Value) {
    let Some(m) = spec.as_object_mut() else { return };
    set_default(m, "restartPolicy", json!("Always"));
    set_default(m, "dnsPolicy", json!("ClusterFirst"));
    set_default(m, "terminationGracePeriodSeconds", json!(30));
    set_default(m, "schedulerName", json!("default-scheduler"));
    set_default(m, "securityContext", json!({}));
    set_default(m, "enableServiceLinks", json!(true));
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        if let Some(cs) = m.get_mut(list).and_then(|c| c.as_array_mut()) {
            cs.iter_mut().for_each(default_container);
        }
    }
}

/// Defaults of a `spec.template` (a PodTemplateSpec).
pub(crate) fn default_template(template: Option<&mut Value>) {
    if let Some(t) = template {
        if let Some(spec) = t.get_mut("spec") {
            default_spec(spec);
        }
    }
}

/// Validation of a PodSpec at `path` (`spec`, `spec.template.spec`).
pub(crate) fn validate_spec(spec: &Value, path: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    match spec.get("containers").and_then(|c| c.as_array()) {
        None => causes.push(Cause::required(&format!("{path}.containers"))),
        Some(cs) if cs.is_empty() => causes.push(Cause::required(&format!("{path}.containers"))),
        Some(cs) => {
            let mut seen = Vec::new();
            for (i, c) in cs.iter().enumerate() {
                match c.get("name").and_then(|n| n.as_str()) {
                    None | Some("") => causes.push(Cause::required(&format!("{path}.containers[{i}].name"))),
                    Some(n) if seen.contains(&n) => causes.push(Cause {
                        reason: "FieldValueDuplicate",
                        field: format!("{path}.containers[{i}].name"),
                        message: format!("Duplicate value: \"{n}\""),
                    }),
                    Some(n) => seen.push(n),
                }
                if c.get("image").and_then(|n| n.as_str()).is_none_or(|i| i.trim().is_empty()) {
                    causes.push(Cause::required(&format!("{path}.containers[{i}].image")));
                }
            }
        }
    }
    if let Some(rp) = spec.get("restartPolicy").and_then(|r| r.as_str()) {
        if !["Always", "OnFailure", "Never"].contains(&rp) {
            causes.push(Cause::unsupported(&format!("{path}.restartPolicy"), rp, &["Always", "OnFailure", "Never"]));
        }
    }
    causes
}

/// Create/update admission of a Pod.
pub(crate) fn admit(obj: &mut Value, creating: bool) -> Vec<Cause> {
    if let Some(spec) = obj.get_mut("spec") {
        default_spec(spec);
    }
    if creating {
        if let Some(o) = obj.as_object_mut() {
            let st = o.entry("status").or_insert_with(|| json!({}));
            if let Some(st) = st.as_object_mut() {
                set_default(st, "phase", json!("Pending"));
            }
        }
    }
    validate_spec(obj.get("spec").unwrap_or(&Value::Null), "spec")
}

/// `GET pods/<name>/log`.
pub(crate) async fn logs(ctx: &Ctx) -> Result<Response, ApiError> {
    let name = ctx.name()?;
    let pod = ctx.get_existing(name).await?;
    let q = |k: &str| ctx.query.get(k).map(|s| s.as_str());
    let flag = |k: &str| matches!(q(k), Some("true") | Some("1"));
    let num = |k: &str| -> Result<Option<i64>, ApiError> {
        q(k).map(|v| v.parse::<i64>().map_err(|_| ApiError::bad_request(format!("{k}: invalid value {v:?}"))))
            .transpose()
    };
    let containers: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["name"].as_str().map(String::from)).collect())
        .unwrap_or_default();
    let init: Vec<String> = ["initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| pod["spec"][*k].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    let container = match q("container") {
        Some(c) if containers.iter().chain(init.iter()).any(|x| x == c) => c.to_string(),
        Some(c) => return Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )))
        }
    };
    let opts = LogOptions {
        container: Some(container),
        follow: flag("follow"),
        previous: flag("previous"),
        timestamps: flag("timestamps"),
        tail_lines: num("tailLines")?,
        since_seconds: num("sinceSeconds")?,
        limit_bytes: num("limitBytes")?,
    };
    let streams = ctx.state.streams.clone().ok_or_else(|| ApiError::unavailable("node agent not available"))?;
    let stream = streams.logs(&pod, opts).await.map_err(|e| match e {
        StreamError::Unavailable(_) => ApiError::unavailable(e.to_string()),
        _ => ApiError::bad_request(e.to_string()),
    })?;
    let shutdown = ctx.state.shutdown.clone();
    let body = stream.take_until(shutdown.cancelled_owned());
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], Body::from_stream(body)).into_response())
}

/// `POST pods/<name>/binding`: sets `spec.nodeName` once.
pub(crate) async fn bind(ctx: &Ctx) -> Result<Value, ApiError> {
    let name = ctx.name()?;
    let body = ctx.body_json()?;
    let node = body["target"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::invalid(&ctx.res, name, vec![Cause::required("target.name")]))?;
    let node = node.to_string();
    let mut already = None;
    ctx.state
        .objects
        .modify(&ctx.res, ctx.ns.as_deref(), name, shoal_kube::UpdateMode::All, |pod| {
            if let Some(n) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                already = Some(n.to_string());
                return Ok(false);
            }
            pod["spec"]["nodeName"] = json!(node);
            Ok(true)
        })
        .await
        .map_err(|e| ApiError::from_objects(e, &ctx.res, name))?;
    if let Some(n) = already {
        return Err(ApiError::new(409, "Conflict", format!("pod {name} is already assigned to node \"{n}\"")));
    }
    Ok(super::status::success(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_follows_the_tag() {
        assert_eq!(default_pull_policy("nginx"), "Always");
        assert_eq!(default_pull_policy("nginx:latest"), "Always");
        assert_eq!(default_pull_policy("nginx:1.25"), "IfNotPresent");
        assert_eq!(default_pull_policy("reg:5000/nginx"), "Always");
        assert_eq!(default_pull_policy("reg:5000/nginx:1"), "IfNotPresent");
        assert_eq!(default_pull_policy("nginx@sha256:abc"), "IfNotPresent");
    }

    #[test]
    fn pod_defaults_and_causes() {
        let mut p =
            json!({"spec": {"containers": [{"name": "c", "image": "busybox:1.25", "ports": [{"containerPort": 80}]}]}});
        assert!(admit(&mut p, true).is_empty());
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(p["spec"]["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(p["status"]["phase"], "Pending");
        let mut bad = json!({"spec": {"containers": [{"name": "c"}]}});
        let causes = admit(&mut bad, true);
        assert_eq!(causes[0].field, "spec.containers[0].image");
    }
}
