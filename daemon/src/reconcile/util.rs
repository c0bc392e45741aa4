//! Helpers the controllers and the scheduler share: selectors, owner references, pod state,
//! timestamps, quantities and the template hash.
use std::time::Duration;

use serde_json::{json, Map, Value};
use shoal_kube::{Objects, Preconditions, Resource, UpdateMode};

use super::{Error, Result};

/// Map a store error of a read.
pub(crate) fn read_err(res: &Resource) -> impl FnOnce(shoal_kube::Error) -> Error + '_ {
    move |source| Error::Read { resource: res.plural.clone(), source: Box::new(source) }
}

/// Map a store error of a write.
pub(crate) fn write_err<'a>(res: &'a Resource, name: &'a str) -> impl FnOnce(shoal_kube::Error) -> Error + 'a {
    move |source| Error::Write { resource: res.plural.clone(), name: name.to_string(), source: Box::new(source) }
}

pub(crate) async fn get(objects: &Objects, res: &Resource, ns: Option<&str>, name: &str) -> Result<Option<Value>> {
    objects.get(res, ns, name).await.map_err(read_err(res))
}

pub(crate) async fn list(objects: &Objects, res: &Resource, ns: Option<&str>) -> Result<Vec<Value>> {
    Ok(objects.list(res, ns).await.map_err(read_err(res))?.0)
}

/// Deletes an object; one that is already gone is fine.
pub(crate) async fn delete(objects: &Objects, res: &Resource, ns: Option<&str>, name: &str) -> Result<()> {
    match objects.delete(res, ns, name, Preconditions::default()).await {
        Ok(_) | Err(shoal_kube::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(write_err(res, name)(e)),
    }
}

/// Deletes an object only if it still has this uid.
pub(crate) async fn delete_uid(
    objects: &Objects,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    uid: &str,
) -> Result<()> {
    let pre = Preconditions { uid: Some(uid.to_string()), resource_version: None };
    match objects.delete(res, ns, name, pre).await {
        Ok(_) | Err(shoal_kube::Error::NotFound { .. }) | Err(shoal_kube::Error::Conflict { .. }) => Ok(()),
        Err(e) => Err(write_err(res, name)(e)),
    }
}

/// Deletes a pod as `kubectl delete pod` does: a pod running on a node is terminated
/// gracefully (deletionTimestamp set, its node agent runs preStop hooks, sends SIGTERM, waits up to
/// `terminationGracePeriodSeconds` (30 s default) and then removes the object); a pending or
/// finished pod is removed at once. Only while the pod still has its uid.
pub(crate) async fn delete_pod(objects: &Objects, res: &Resource, pod: &Value) -> Result<()> {
    let (ns, name, uid) = (namespace_of(pod), name_of(pod), uid_of(pod));
    let bound = pod["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
    if !bound || matches!(pod_phase(pod), "Succeeded" | "Failed") {
        return delete_uid(objects, res, ns, name, uid).await;
    }
    if is_deleting(pod) {
        return Ok(());
    }
    let grace = pod["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30).max(0);
    let pre = Preconditions { uid: Some(uid.to_string()), resource_version: None };
    match objects.terminate(res, ns, name, grace, pre).await {
        Ok(_) | Err(shoal_kube::Error::NotFound { .. }) | Err(shoal_kube::Error::Conflict { .. }) => Ok(()),
        Err(e) => Err(write_err(res, name)(e)),
    }
}

/// Read-modify-write with conflict retries; `f` returns false to leave the object alone.
/// A missing object is `Ok(None)`.
pub(crate) async fn modify<F>(
    objects: &Objects,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    mode: UpdateMode,
    mut f: F,
) -> Result<Option<Value>>
where
    F: FnMut(&mut Value) -> bool,
{
    match objects.modify(res, ns, name, mode, |o| Ok(f(o))).await {
        Ok(v) => Ok(Some(v)),
        Err(shoal_kube::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(write_err(res, name)(e)),
    }
}

/// Writes `status` of an object if it differs from the stored one.
pub(crate) async fn write_status(objects: &Objects, res: &Resource, obj: &Value, status: Value) -> Result<()> {
    if obj.get("status") == Some(&status) {
        return Ok(());
    }
    let name = name_of(obj).to_string();
    modify(objects, res, namespace_of(obj), &name, UpdateMode::Status, |o| {
        if o.get("status") == Some(&status) {
            return false;
        }
        o["status"] = status.clone();
        true
    })
    .await?;
    Ok(())
}

pub(crate) fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

pub(crate) fn namespace_of(obj: &Value) -> Option<&str> {
    obj["metadata"]["namespace"].as_str()
}

pub(crate) fn uid_of(obj: &Value) -> &str {
    obj["metadata"]["uid"].as_str().unwrap_or("")
}

pub(crate) fn is_deleting(obj: &Value) -> bool {
    obj["metadata"]["deletionTimestamp"].is_string()
}

pub(crate) fn labels_of(obj: &Value) -> &Value {
    &obj["metadata"]["labels"]
}

pub(crate) fn generation_of(obj: &Value) -> i64 {
    obj["metadata"]["generation"].as_i64().unwrap_or(1)
}

// ---------------------------------------------------------------- selectors

/// Does a LabelSelector (`matchLabels` + `matchExpressions`) select these labels? An empty
/// selector selects everything; a null one nothing.
pub(crate) fn selector_matches(sel: &Value, labels: &Value) -> bool {
    shoal_kube::selector::selects(sel, labels)
}

pub(crate) use shoal_kube::selector::{node_selector_term_matches, node_selector_terms_match};

// ---------------------------------------------------------------- owners

/// The controlling ownerReference of an object.
pub(crate) fn controller_ref(obj: &Value) -> Option<&Value> {
    obj["metadata"]["ownerReferences"].as_array()?.iter().find(|r| r["controller"].as_bool() == Some(true))
}

/// Is `obj` controlled by the object with this uid?
pub(crate) fn controlled_by(obj: &Value, uid: &str) -> bool {
    controller_ref(obj).is_some_and(|r| r["uid"].as_str() == Some(uid))
}

/// An ownerReference to `owner` that marks it as the controller.
pub(crate) fn owner_ref(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": name_of(owner),
        "uid": uid_of(owner),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// Adopts `obj` (adds a controller ownerReference to `owner`) if it has no controller yet.
pub(crate) async fn adopt(objects: &Objects, res: &Resource, obj: &Value, owner: &Value) -> Result<()> {
    let oref = owner_ref(owner);
    let uid = uid_of(obj).to_string();
    modify(objects, res, namespace_of(obj), name_of(obj), UpdateMode::Spec, |o| {
        if uid_of(o) != uid || controller_ref(o).is_some() || is_deleting(o) {
            return false;
        }
        let refs = o["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
        let mut refs: Vec<Value> = refs.into_iter().filter(|r| r["uid"] != oref["uid"]).collect();
        refs.push(oref.clone());
        o["metadata"]["ownerReferences"] = Value::Array(refs);
        true
    })
    .await?;
    Ok(())
}

/// Releases `obj` from the owner with this uid.
pub(crate) async fn release(objects: &Objects, res: &Resource, obj: &Value, owner_uid: &str) -> Result<()> {
    modify(objects, res, namespace_of(obj), name_of(obj), UpdateMode::Spec, |o| {
        let Some(refs) = o["metadata"]["ownerReferences"].as_array() else { return false };
        let kept: Vec<Value> = refs.iter().filter(|r| r["uid"].as_str() != Some(owner_uid)).cloned().collect();
        if kept.len() == refs.len() {
            return false;
        }
        if kept.is_empty() {
            if let Some(m) = o["metadata"].as_object_mut() {
                m.remove("ownerReferences");
            }
        } else {
            o["metadata"]["ownerReferences"] = Value::Array(kept);
        }
        true
    })
    .await?;
    Ok(())
}

// ---------------------------------------------------------------- pods

pub(crate) fn pod_phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or("Pending")
}

/// Not finished and not being deleted.
pub(crate) fn pod_is_active(pod: &Value) -> bool {
    !matches!(pod_phase(pod), "Succeeded" | "Failed") && !is_deleting(pod)
}

pub(crate) fn pod_condition<'a>(pod: &'a Value, type_: &str) -> Option<&'a Value> {
    pod["status"]["conditions"].as_array()?.iter().find(|c| c["type"].as_str() == Some(type_))
}

pub(crate) fn pod_is_ready(pod: &Value) -> bool {
    pod_phase(pod) == "Running" && pod_condition(pod, "Ready").is_some_and(|c| c["status"].as_str() == Some("True"))
}

/// Ready for at least `min_ready`; otherwise how long until it will be (if it is ready at all).
pub(crate) fn pod_availability(pod: &Value, min_ready: Duration, now: jiff::Timestamp) -> (bool, Option<Duration>) {
    if !pod_is_ready(pod) {
        return (false, None);
    }
    if min_ready.is_zero() {
        return (true, None);
    }
    let since = pod_condition(pod, "Ready").and_then(|c| parse_time(&c["lastTransitionTime"]));
    match since {
        None => (true, None),
        Some(t) => {
            let ready_for = elapsed(t, now);
            if ready_for >= min_ready {
                (true, None)
            } else {
                (false, Some(min_ready - ready_for))
            }
        }
    }
}

pub(crate) fn restart_count(pod: &Value) -> i64 {
    pod["status"]["containerStatuses"]
        .as_array()
        .map(|a| a.iter().map(|c| c["restartCount"].as_i64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

/// The pod a template describes, owned by `owner`.
pub(crate) fn pod_from_template(template: &Value, owner: &Value, generate_name: &str) -> Value {
    let mut meta = template["metadata"].as_object().cloned().unwrap_or_default();
    meta.remove("creationTimestamp");
    meta.remove("name");
    meta.insert("generateName".into(), json!(generate_name));
    meta.insert("ownerReferences".into(), json!([owner_ref(owner)]));
    let mut spec = template["spec"].clone();
    if !spec.is_object() {
        spec = json!({});
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": Value::Object(meta), "spec": spec})
}

// ---------------------------------------------------------------- time

pub(crate) fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

pub(crate) fn fmt_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub(crate) fn now_str() -> String {
    fmt_time(now())
}

pub(crate) fn parse_time(v: &Value) -> Option<jiff::Timestamp> {
    v.as_str()?.parse().ok()
}

/// `now - t`, zero if `t` is in the future.
pub(crate) fn elapsed(t: jiff::Timestamp, now: jiff::Timestamp) -> Duration {
    let d = now.as_millisecond() - t.as_millisecond();
    Duration::from_millis(d.max(0) as u64)
}

/// Sets a condition in a `conditions` array, keeping lastTransitionTime if the status is
/// unchanged. Returns true if anything changed.
pub(crate) fn set_condition(
    conds: &mut Vec<Value>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    with_update_time: bool,
) {
    let now = now_str();
    if let Some(c) = conds.iter_mut().find(|c| c["type"].as_str() == Some(type_)) {
        let same_status = c["status"].as_str() == Some(status);
        let same = same_status && c["reason"].as_str() == Some(reason) && c["message"].as_str() == Some(message);
        if same {
            return;
        }
        if !same_status {
            c["lastTransitionTime"] = json!(now);
        }
        c["status"] = json!(status);
        c["reason"] = json!(reason);
        c["message"] = json!(message);
        if with_update_time {
            c["lastUpdateTime"] = json!(now);
        }
        return;
    }
    let mut c =
        json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": now});
    if with_update_time {
        c["lastUpdateTime"] = json!(now);
    }
    conds.push(c);
}

pub(crate) fn conditions_of(obj: &Value) -> Vec<Value> {
    obj["status"]["conditions"].as_array().cloned().unwrap_or_default()
}

pub(crate) fn find_condition<'a>(conds: &'a [Value], type_: &str) -> Option<&'a Value> {
    conds.iter().find(|c| c["type"].as_str() == Some(type_))
}

// ---------------------------------------------------------------- int-or-percent

/// An IntOrString scaled against `total`; percentages round up or down.
pub(crate) fn int_or_percent(v: &Value, total: i64, round_up: bool, default: i64) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(default),
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.trim().parse::<i64>().ok()) {
            Some(p) => {
                let x = p * total;
                if round_up {
                    (x + 99) / 100
                } else {
                    x / 100
                }
            }
            None => s.parse().unwrap_or(default),
        },
        _ => default,
    }
}

// ---------------------------------------------------------------- quantities

/// A resource quantity in thousandths ("100m" -> 100, "2" -> 2000, "1Ki" -> 1024000).
pub(crate) use shoal_kube::quantity::milli as quantity_milli;

// ---------------------------------------------------------------- hashing

/// JSON with sorted keys, so that equal objects hash equally.
pub(crate) fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let inner: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::String((*k).clone()), canonical_json(&m[k.as_str()])))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(canonical_json).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// FNV-1a, 32 bits.
pub(crate) fn fnv32a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in data {
        h ^= *b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    h
}

/// Kubernetes' SafeEncodeString of a number: digits mapped to consonants and digits that cannot
/// spell words.
pub(crate) fn safe_encode(n: u32) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    n.to_string().bytes().map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char).collect()
}

/// Removes nulls, empty objects and empty arrays everywhere, the way templates differ between a
/// user's manifest and what `kubectl rollout undo` sends back.
pub(crate) fn normalise(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, x) in m {
                let n = normalise(x);
                let empty = match &n {
                    Value::Null => true,
                    Value::Object(o) => o.is_empty(),
                    Value::Array(a) => a.is_empty(),
                    _ => false,
                };
                if !empty {
                    out.insert(k.clone(), n);
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(normalise).collect()),
        other => other.clone(),
    }
}

/// A pod template without the labels controllers add, normalised for comparing.
pub(crate) fn template_for_compare(template: &Value, drop_labels: &[&str]) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t["metadata"]["labels"].as_object_mut() {
        for l in drop_labels {
            labels.remove(*l);
        }
    }
    normalise(&t)
}

/// The pod-template-hash of a template (with the collision count mixed in).
pub(crate) fn template_hash(template: &Value, collision_count: i64) -> String {
    let mut data = canonical_json(&template_for_compare(template, &["pod-template-hash"])).into_bytes();
    if collision_count > 0 {
        data.extend_from_slice(collision_count.to_string().as_bytes());
    }
    safe_encode(fnv32a(&data))
}

/// Tolerations of a pod that tolerate a taint.
pub(crate) fn toleration_matches(tol: &Value, taint: &Value) -> bool {
    let effect = tol["effect"].as_str().unwrap_or("");
    if !effect.is_empty() && Some(effect) != taint["effect"].as_str() {
        return false;
    }
    let key = tol["key"].as_str().unwrap_or("");
    let op = tol["operator"].as_str().unwrap_or("Equal");
    if key.is_empty() {
        return op == "Exists";
    }
    if Some(key) != taint["key"].as_str() {
        return false;
    }
    match op {
        "Exists" => true,
        _ => tol["value"].as_str().unwrap_or("") == taint["value"].as_str().unwrap_or(""),
    }
}

pub(crate) fn tolerates(pod: &Value, taint: &Value) -> bool {
    pod["spec"]["tolerations"].as_array().is_some_and(|ts| ts.iter().any(|t| toleration_matches(t, taint)))
}

pub(crate) fn node_is_ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"].as_str() == Some("Ready")))
        .is_some_and(|c| c["status"].as_str() == Some("True"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let labels = json!({"app": "node-web", "tier": "a"});
        assert!(selector_matches(
            &json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["node-web"]}]}),
            &labels
        ));
        assert!(!selector_matches(&json!({"matchLabels": {"app": "x"}}), &labels));
        assert!(selector_matches(&json!({}), &labels));
        assert!(!selector_matches(&Value::Null, &labels));
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity_milli(&json!("100m")), Some(100));
        assert_eq!(quantity_milli(&json!("2")), Some(2000));
        assert_eq!(quantity_milli(&json!("512Mi")), Some(512 * 1024 * 1024 * 1000));
        assert_eq!(quantity_milli(&json!(3)), Some(3000));
        assert_eq!(quantity_milli(&json!("1G")), Some(1_000_000_000_000));
    }

    #[test]
    fn undo_template_hashes_like_the_original() {
        let orig = json!({"metadata": {"labels": {"app": "nginx"}}, "spec": {"containers": [{"name": "nginx", "image": "nginx"}]}});
        let undo = json!({"metadata": {"creationTimestamp": null, "labels": {"app": "nginx", "pod-template-hash": "x"}},
            "spec": {"containers": [{"name": "nginx", "image": "nginx", "resources": {}}]}});
        assert_eq!(template_hash(&orig, 0), template_hash(&undo, 0));
        assert_ne!(template_hash(&orig, 0), template_hash(&orig, 1));
    }

    #[test]
    fn percentages() {
        assert_eq!(int_or_percent(&json!("25%"), 2, true, 0), 1);
        assert_eq!(int_or_percent(&json!("25%"), 2, false, 0), 0);
        assert_eq!(int_or_percent(&json!(3), 2, false, 0), 3);
    }
}
