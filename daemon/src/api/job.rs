//! Jobs and CronJobs: defaults, and the selector and labels a Job gets from its uid.
use serde_json::{json, Map, Value};

use super::pod;
use super::status::Cause;

fn set_default(m: &mut Map<String, Value>, key: &str, v: Value) {
    if m.get(key).is_none_or(|x| x.is_null()) {
        m.insert(key.into(), v);
    }
}

fn default_job_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "parallelism", json!(1));
    if spec.get("completionMode").and_then(|m| m.as_str()) != Some("Indexed") || spec.contains_key("completions") {
        set_default(spec, "completions", json!(1));
    }
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    pod::default_template(spec.get_mut("template"));
}

/// A Job on create: defaults, and unless `manualSelector`, the selector and template labels
/// derived from its uid and name.
pub(crate) fn admit_job(obj: &mut Value, uid: &str, creating: bool) -> Vec<Cause> {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    let Some(spec) = obj.get_mut("spec").and_then(|s| s.as_object_mut()) else { return vec![] };
    default_job_spec(spec);
    let manual = spec.get("manualSelector").and_then(|m| m.as_bool()) == Some(true);
    if creating && !manual {
        spec.insert("selector".into(), json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}));
        let t = spec.entry("template").or_insert_with(|| json!({}));
        if !t["metadata"].is_object() {
            t["metadata"] = json!({});
        }
        if !t["metadata"]["labels"].is_object() {
            t["metadata"]["labels"] = json!({});
        }
        let labels = &mut t["metadata"]["labels"];
        labels["batch.kubernetes.io/controller-uid"] = json!(uid);
        labels["batch.kubernetes.io/job-name"] = json!(name);
        labels["controller-uid"] = json!(uid);
        labels["job-name"] = json!(name);
    }
    let mut causes = Vec::new();
    match obj["spec"]["template"]["spec"]["restartPolicy"].as_str() {
        Some("Never") | Some("OnFailure") => {}
        Some(other) => {
            causes.push(Cause::unsupported("spec.template.spec.restartPolicy", other, &["OnFailure", "Never"]))
        }
        None => causes.push(Cause::required("spec.template.spec.restartPolicy")),
    }
    causes.extend(pod::validate_spec(&obj["spec"]["template"]["spec"], "spec.template.spec"));
    causes
}

/// Job defaults without the uid-derived parts (updates keep the stored selector).
pub(crate) fn default_job_update(obj: &mut Value, old: &Value) {
    if let Some(spec) = obj.get_mut("spec").and_then(|s| s.as_object_mut()) {
        default_job_spec(spec);
        if spec.get("selector").is_none_or(|s| s.is_null()) {
            spec.insert("selector".into(), old["spec"]["selector"].clone());
        }
    }
}

pub(crate) fn admit_cronjob(obj: &mut Value) -> Vec<Cause> {
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    let Some(spec) = obj.get_mut("spec").and_then(|s| s.as_object_mut()) else { return vec![] };
    set_default(spec, "concurrencyPolicy", json!("Allow"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "successfulJobsHistoryLimit", json!(3));
    set_default(spec, "failedJobsHistoryLimit", json!(1));
    if let Some(jt) = spec.get_mut("jobTemplate").and_then(|j| j.get_mut("spec")).and_then(|s| s.as_object_mut()) {
        set_default(jt, "backoffLimit", json!(6));
        set_default(jt, "completionMode", json!("NonIndexed"));
        set_default(jt, "suspend", json!(false));
        pod::default_template(jt.get_mut("template"));
    }
    let mut causes = Vec::new();
    match obj["spec"]["schedule"].as_str() {
        None | Some("") => causes.push(Cause::required("spec.schedule")),
        Some(s) if !(s.starts_with('@') || s.split_whitespace().count() == 5) => {
            causes.push(Cause::invalid("spec.schedule", s, "unparseable schedule"))
        }
        Some(_) => {}
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_gets_uid_selector() {
        let mut j = json!({"metadata": {"name": "once"}, "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}});
        assert!(admit_job(&mut j, "u1", true).is_empty());
        assert_eq!(j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"], "u1");
        assert_eq!(j["spec"]["template"]["metadata"]["labels"]["job-name"], "once");
        assert_eq!(j["spec"]["completions"], 1);
        assert_eq!(j["spec"]["backoffLimit"], 6);
    }
}
