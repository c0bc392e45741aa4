//! Deployments, ReplicaSets, DaemonSets, StatefulSets and ReplicationControllers: defaults as
//! kube-apiserver writes them, and the selector/template checks every apps/v1 kind shares.
use serde_json::{json, Map, Value};
use shoal_kube::selector::LabelSelector;

use super::pod;
use super::status::Cause;

fn set_default(m: &mut Map<String, Value>, key: &str, v: Value) {
    if m.get(key).is_none_or(|x| x.is_null()) {
        m.insert(key.into(), v);
    }
}

fn spec_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    obj.get_mut("spec").and_then(|s| s.as_object_mut())
}

/// Defaults and checks one workload kind (`kind` as in the object).
pub(crate) fn admit(kind: &str, obj: &mut Value) -> Vec<Cause> {
    let Some(spec) = spec_mut(obj) else { return vec![] };
    match kind {
        "Deployment" => {
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            set_default(spec, "strategy", json!({}));
            if let Some(st) = spec.get_mut("strategy").and_then(|s| s.as_object_mut()) {
                set_default(st, "type", json!("RollingUpdate"));
                if st.get("type").and_then(|t| t.as_str()) == Some("RollingUpdate") {
                    set_default(st, "rollingUpdate", json!({}));
                    if let Some(ru) = st.get_mut("rollingUpdate").and_then(|r| r.as_object_mut()) {
                        set_default(ru, "maxUnavailable", json!("25%"));
                        set_default(ru, "maxSurge", json!("25%"));
                    }
                }
            }
        }
        "ReplicaSet" | "ReplicationController" => {
            set_default(spec, "replicas", json!(1));
        }
        "DaemonSet" => {
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "updateStrategy", json!({}));
            if let Some(st) = spec.get_mut("updateStrategy").and_then(|s| s.as_object_mut()) {
                set_default(st, "type", json!("RollingUpdate"));
                if st.get("type").and_then(|t| t.as_str()) == Some("RollingUpdate") {
                    set_default(st, "rollingUpdate", json!({}));
                    if let Some(ru) = st.get_mut("rollingUpdate").and_then(|r| r.as_object_mut()) {
                        set_default(ru, "maxUnavailable", json!(1));
                        set_default(ru, "maxSurge", json!(0));
                    }
                }
            }
        }
        "StatefulSet" => {
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            set_default(spec, "updateStrategy", json!({}));
            if let Some(st) = spec.get_mut("updateStrategy").and_then(|s| s.as_object_mut()) {
                set_default(st, "type", json!("RollingUpdate"));
                if st.get("type").and_then(|t| t.as_str()) == Some("RollingUpdate") {
                    set_default(st, "rollingUpdate", json!({"partition": 0}));
                }
            }
            set_default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
        }
        _ => {}
    }
    if kind == "ReplicationController" {
        // A ReplicationController's selector is a plain map, defaulted from the template.
        if spec.get("selector").is_none_or(|s| s.is_null()) {
            if let Some(l) = spec.get("template").and_then(|t| t["metadata"]["labels"].as_object()).cloned() {
                spec.insert("selector".into(), Value::Object(l));
            }
        }
    }
    pod::default_template(spec.get_mut("template"));
    validate(kind, obj)
}

fn validate(kind: &str, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let spec = &obj["spec"];
    if let Some(r) = spec["replicas"].as_i64() {
        if r < 0 {
            causes.push(Cause::invalid("spec.replicas", &r.to_string(), "must be greater than or equal to 0"));
        }
    }
    let template_labels = spec["template"]["metadata"]["labels"].as_object();
    if kind == "ReplicationController" {
        if let Some(sel) = spec["selector"].as_object() {
            let ok = sel.iter().all(|(k, v)| template_labels.and_then(|l| l.get(k)) == Some(v));
            if !ok {
                causes.push(Cause::invalid(
                    "spec.template.metadata.labels",
                    "",
                    "`selector` does not match template `labels`",
                ));
            }
        }
    } else if spec["selector"].is_null() {
        causes.push(Cause::required("spec.selector"));
    } else {
        match LabelSelector::from_json(&spec["selector"]) {
            Err(e) => causes.push(Cause::invalid("spec.selector", "", &e.to_string())),
            Ok(sel) if sel.is_empty() => {
                causes.push(Cause::invalid("spec.selector", "", "empty selector is invalid for deployment"))
            }
            Ok(sel) => {
                if !sel.matches(template_labels) {
                    let labels = template_labels
                        .map(|l| {
                            let mut v: Vec<String> =
                                l.iter().map(|(k, v)| format!("{k}:{}", v.as_str().unwrap_or_default())).collect();
                            v.sort();
                            format!("map[{}]", v.join(" "))
                        })
                        .unwrap_or_else(|| "map[]".into());
                    causes.push(Cause::invalid(
                        "spec.template.metadata.labels",
                        &labels,
                        "`selector` does not match template `labels`",
                    ));
                }
            }
        }
    }
    if spec["template"].is_null() {
        causes.push(Cause::required("spec.template"));
    } else {
        causes.extend(pod::validate_spec(&spec["template"]["spec"], "spec.template.spec"));
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_defaults_and_selector_check() {
        let mut d = json!({"spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}
        }});
        assert!(admit("Deployment", &mut d).is_empty());
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"], "Always");
        let mut bad = d.clone();
        bad["spec"]["template"]["metadata"]["labels"]["app"] = json!("other");
        assert_eq!(admit("Deployment", &mut bad)[0].field, "spec.template.metadata.labels");
    }
}
