//! ResourceQuota (`v1`): what an object costs (compute requests and limits, storage, object
//! counts), which quotas it falls under (scopes, scopeSelector on PriorityClass), the
//! `must specify` constraint on cpu and memory, and the charge: a quota with its new
//! `status.used`, written by the caller in the object's own transaction. [`usage_of`]
//! recomputes a quota's usage from the objects (the quota controller and admission, when a
//! quota has no usage yet, both use it).
use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use shoal_kube::quantity::milli;
use shoal_kube::{Objects, Resource};

use super::{forbidden, Error};

/// Resource name -> amount in thousandths (a count of 1 is 1000).
pub(crate) type Usage = BTreeMap<String, i128>;

pub(crate) fn quotas_res() -> Resource {
    shoal_kube::resources::lookup("", "resourcequotas")
}

/// A quantity as a quota prints it: `500m`, `2`, `128Mi` for bytes that are whole binary units.
pub(crate) fn format_quantity(key: &str, m: i128) -> String {
    if m % 1000 != 0 {
        return format!("{m}m");
    }
    let n = m / 1000;
    let bytes = key.contains("memory") || key.contains("storage");
    if bytes && n != 0 {
        for (suffix, unit) in [("Ti", 1i128 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
            if n % unit == 0 {
                return format!("{}{suffix}", n / unit);
            }
        }
    }
    n.to_string()
}

fn resource_list(v: &Value) -> Usage {
    v.as_object().into_iter().flatten().filter_map(|(k, v)| milli(v).map(|m| (k.clone(), m))).collect()
}

/// Per-resource pod total: the sum of the containers, or the largest init container if more.
fn pod_total(spec: &Value, field: &str) -> Usage {
    let mut sums = Usage::new();
    for c in spec["containers"].as_array().into_iter().flatten() {
        for (k, v) in resource_list(&c["resources"][field]) {
            *sums.entry(k).or_default() += v;
        }
    }
    for c in spec["initContainers"].as_array().into_iter().flatten() {
        for (k, v) in resource_list(&c["resources"][field]) {
            let e = sums.entry(k).or_default();
            *e = (*e).max(v);
        }
    }
    sums
}

fn pod_counts(pod: &Value) -> bool {
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    !matches!(phase, "Succeeded" | "Failed") && pod["metadata"]["deletionTimestamp"].is_null()
}

/// Everything `obj` (of `res`) uses that a quota may limit.
pub(crate) fn usage(res: &Resource, obj: &Value) -> Usage {
    let mut u = Usage::new();
    let count_key = if res.group.is_empty() {
        format!("count/{}", res.plural)
    } else {
        format!("count/{}.{}", res.plural, res.group)
    };
    u.insert(count_key, 1000);
    if !res.group.is_empty() {
        return u;
    }
    match res.kind.as_str() {
        "Pod" => {
            if !pod_counts(obj) {
                return Usage::new();
            }
            u.insert("pods".into(), 1000);
            for (k, v) in pod_total(&obj["spec"], "requests") {
                if k == "cpu" || k == "memory" || k == "ephemeral-storage" {
                    u.insert(k.clone(), v);
                }
                u.insert(format!("requests.{k}"), v);
            }
            for (k, v) in pod_total(&obj["spec"], "limits") {
                u.insert(format!("limits.{k}"), v);
            }
        }
        "Service" => {
            u.insert("services".into(), 1000);
            let ty = obj["spec"]["type"].as_str().unwrap_or("ClusterIP");
            let ports = obj["spec"]["ports"].as_array().map_or(0, |p| p.len()) as i128;
            if ty == "LoadBalancer" {
                u.insert("services.loadbalancers".into(), 1000);
            }
            let node_ports = ty == "NodePort"
                || (ty == "LoadBalancer" && obj["spec"]["allocateLoadBalancerNodePorts"].as_bool() != Some(false));
            if node_ports {
                u.insert("services.nodeports".into(), ports * 1000);
            }
        }
        "PersistentVolumeClaim" => {
            u.insert("persistentvolumeclaims".into(), 1000);
            let storage = milli(&obj["spec"]["resources"]["requests"]["storage"]).unwrap_or(0);
            u.insert("requests.storage".into(), storage);
            if let Some(sc) = obj["spec"]["storageClassName"].as_str().filter(|s| !s.is_empty()) {
                u.insert(format!("{sc}.storageclass.storage.k8s.io/requests.storage"), storage);
                u.insert(format!("{sc}.storageclass.storage.k8s.io/persistentvolumeclaims"), 1000);
            }
        }
        "ConfigMap" | "Secret" | "ReplicationController" | "ResourceQuota" => {
            u.insert(res.plural.clone(), 1000);
        }
        _ => {}
    }
    u
}

fn is_best_effort(pod: &Value) -> bool {
    ["containers", "initContainers"].iter().all(|l| {
        pod["spec"][*l].as_array().into_iter().flatten().all(|c| {
            c["resources"]["requests"].as_object().is_none_or(|m| m.is_empty())
                && c["resources"]["limits"].as_object().is_none_or(|m| m.is_empty())
        })
    })
}

fn scope_matches(scope: &str, pod: &Value) -> bool {
    let terminating = pod["spec"]["activeDeadlineSeconds"].as_i64().is_some_and(|s| s >= 0);
    match scope {
        "Terminating" => terminating,
        "NotTerminating" => !terminating,
        "BestEffort" => is_best_effort(pod),
        "NotBestEffort" => !is_best_effort(pod),
        _ => false,
    }
}

fn selector_matches(req: &Value, pod: &Value) -> bool {
    let scope = req["scopeName"].as_str().unwrap_or_default();
    let op = req["operator"].as_str().unwrap_or_default();
    let values: Vec<&str> = req["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if scope != "PriorityClass" {
        return match op {
            "Exists" => scope_matches(scope, pod),
            "DoesNotExist" => !scope_matches(scope, pod),
            _ => false,
        };
    }
    let class = pod["spec"]["priorityClassName"].as_str().filter(|c| !c.is_empty());
    match op {
        "In" => class.is_some_and(|c| values.contains(&c)),
        "NotIn" => class.is_none_or(|c| !values.contains(&c)),
        "Exists" => class.is_some(),
        "DoesNotExist" => class.is_none(),
        _ => false,
    }
}

/// Whether `quota` covers `obj`: unscoped quotas cover everything; scoped ones only pods that
/// match every scope and every scopeSelector expression.
pub(crate) fn matches(quota: &Value, res: &Resource, obj: &Value) -> bool {
    let scopes: Vec<&str> =
        quota["spec"]["scopes"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let exprs = quota["spec"]["scopeSelector"]["matchExpressions"].as_array().cloned().unwrap_or_default();
    if scopes.is_empty() && exprs.is_empty() {
        return true;
    }
    if !(res.group.is_empty() && res.kind == "Pod") {
        return false;
    }
    scopes.iter().all(|s| scope_matches(s, obj)) && exprs.iter().all(|e| selector_matches(e, obj))
}

/// Upstream's backward-compatible rule: a quota on cpu or memory needs every container to say
/// its request (or limit) of it. `must specify limits.cpu for: c; requests.memory for: c`.
fn constraints(hard: &Usage, pod: &Value) -> Option<String> {
    const CHECKED: [&str; 6] = ["cpu", "memory", "requests.cpu", "requests.memory", "limits.cpu", "limits.memory"];
    let mut missing: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for key in CHECKED.iter().filter(|k| hard.contains_key(**k)) {
        let (field, name) = match key.split_once('.') {
            Some((f, n)) => (f, n),
            None => ("requests", *key),
        };
        for list in ["containers", "initContainers"] {
            for c in pod["spec"][list].as_array().into_iter().flatten() {
                if c["resources"][field].get(name).is_none() {
                    missing.entry(key).or_default().push(c["name"].as_str().unwrap_or_default().to_string());
                }
            }
        }
    }
    if missing.is_empty() {
        return None;
    }
    let parts: Vec<String> = missing
        .into_iter()
        .map(|(k, mut names)| {
            names.sort();
            names.dedup();
            format!("{k} for: {}", names.join(","))
        })
        .collect();
    Some(format!("must specify {}", parts.join("; ")))
}

/// The resources whose objects a quota's `hard` keys count.
fn counted_resources(hard: &Usage) -> Vec<Resource> {
    let mut out: Vec<Resource> = Vec::new();
    let mut add = |r: Resource| {
        if !out.iter().any(|o| o.group == r.group && o.plural == r.plural) {
            out.push(r);
        }
    };
    for k in hard.keys() {
        let core = |p: &str| shoal_kube::resources::lookup("", p);
        if k == "pods"
            || k.starts_with("requests.") && k != "requests.storage"
            || k.starts_with("limits.")
            || ["cpu", "memory", "ephemeral-storage"].contains(&k.as_str())
        {
            add(core("pods"));
        } else if k.starts_with("services") {
            add(core("services"));
        } else if k == "persistentvolumeclaims"
            || k == "requests.storage"
            || k.contains(".storageclass.storage.k8s.io/")
        {
            add(core("persistentvolumeclaims"));
        } else if ["configmaps", "secrets", "replicationcontrollers", "resourcequotas"].contains(&k.as_str()) {
            add(core(k));
        } else if let Some(rest) = k.strip_prefix("count/") {
            let (plural, group) = rest.split_once('.').unwrap_or((rest, ""));
            if let Some(r) = shoal_kube::resources::find(group, plural) {
                add(r);
            }
        }
    }
    out
}

/// What the objects in the quota's namespace use now, for each of its `hard` keys. Read the
/// quota first: the lists here are then at least as new as it, so a usage written with the
/// quota's version as precondition counts every object charged to it.
pub(crate) async fn usage_of(objects: &Objects, quota: &Value) -> Result<Usage, Error> {
    let ns = quota["metadata"]["namespace"].as_str().unwrap_or("default");
    let hard = resource_list(&quota["spec"]["hard"]);
    let mut used: Usage = hard.keys().map(|k| (k.clone(), 0)).collect();
    for res in counted_resources(&hard) {
        let (items, _) = objects
            .list(&res, Some(ns))
            .await
            .map_err(|source| Error::Read { resource: res.plural.clone(), source: Box::new(source) })?;
        for o in items.iter().filter(|o| matches(quota, &res, o)) {
            for (k, v) in usage(&res, o) {
                if let Some(u) = used.get_mut(&k) {
                    *u += v;
                }
            }
        }
    }
    Ok(used)
}

/// `status` of a quota with this usage: `hard` as in the spec, `used` for each hard key.
pub(crate) fn status_with(quota: &Value, used: &Usage) -> Value {
    let hard = quota["spec"]["hard"].clone();
    let mut u = Map::new();
    for (k, v) in used {
        u.insert(k.clone(), json!(format_quantity(k, *v)));
    }
    json!({"hard": if hard.is_object() { hard } else { json!({}) }, "used": u})
}

fn pretty(list: &Usage, keys: &[String], text: impl Fn(&str, i128) -> String) -> String {
    keys.iter().map(|k| format!("{k}={}", text(k, list.get(k).copied().unwrap_or(0)))).collect::<Vec<_>>().join(",")
}

/// Checks `obj` against every quota of `ns` that covers it; returns the quotas with their new
/// usage (to write with the object) or the upstream refusal.
pub(crate) async fn charge(
    objects: &Objects,
    res: &Resource,
    ns: &str,
    obj: &Value,
) -> Result<Vec<(Resource, Value)>, Error> {
    charge_usage(objects, res, ns, obj, usage(res, obj), true).await
}

/// Checks an update of `old` to `obj` against the quotas of `ns`, as upstream's evaluators that
/// handle updates (Services changing type, claims growing): only what grows is requested.
/// Returns the quotas with their usage grown by that (to write with the update, as a create's
/// charges), or the upstream refusal.
pub(crate) async fn check_update(
    objects: &Objects,
    res: &Resource,
    ns: &str,
    obj: &Value,
    old: &Value,
) -> Result<Vec<(Resource, Value)>, Error> {
    let handled = res.group.is_empty() && matches!(res.kind.as_str(), "Service" | "PersistentVolumeClaim");
    if !handled {
        return Ok(Vec::new());
    }
    let before = usage(res, old);
    let grown: Usage = usage(res, obj)
        .into_iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(&k).copied().unwrap_or(0);
            (d > 0).then_some((k, d))
        })
        .collect();
    if grown.is_empty() {
        return Ok(Vec::new());
    }
    charge_usage(objects, res, ns, obj, grown, false).await
}

async fn charge_usage(
    objects: &Objects,
    res: &Resource,
    ns: &str,
    obj: &Value,
    wanted: Usage,
    creating: bool,
) -> Result<Vec<(Resource, Value)>, Error> {
    let qres = quotas_res();
    if !res.namespaced {
        return Ok(Vec::new());
    }
    let (mut quotas, _) = objects
        .list(&qres, Some(ns))
        .await
        .map_err(|source| Error::Read { resource: qres.plural.clone(), source: Box::new(source) })?;
    if quotas.is_empty() {
        return Ok(Vec::new());
    }
    quotas.sort_by(|a, b| a["metadata"]["name"].as_str().cmp(&b["metadata"]["name"].as_str()));
    let is_pod = creating && res.group.is_empty() && res.kind == "Pod";
    let mut charges = Vec::new();
    for q in quotas {
        if !matches(&q, res, obj) {
            continue;
        }
        let qname = q["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let hard = resource_list(&q["spec"]["hard"]);
        if is_pod {
            if let Some(why) = constraints(&hard, obj) {
                return Err(forbidden(res, obj, &format!("failed quota: {qname}: {why}")));
            }
        }
        let requested: Usage =
            wanted.iter().filter(|(k, _)| hard.contains_key(*k)).map(|(k, v)| (k.clone(), *v)).collect();
        if requested.is_empty() {
            continue;
        }
        let stored = resource_list(&q["status"]["used"]);
        let mut used = if hard.keys().all(|k| stored.contains_key(k)) && q["status"]["hard"] == q["spec"]["hard"] {
            stored
        } else {
            usage_of(objects, &q).await?
        };
        let exceeded: Vec<String> = requested
            .iter()
            .filter(|(k, v)| used.get(*k).copied().unwrap_or(0) + **v > hard[*k])
            .map(|(k, _)| k.clone())
            .collect();
        if !exceeded.is_empty() {
            let hard_text = |k: &str, v: i128| {
                q["spec"]["hard"][k].as_str().map(String::from).unwrap_or_else(|| format_quantity(k, v))
            };
            return Err(forbidden(
                res,
                obj,
                &format!(
                    "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                    pretty(&requested, &exceeded, format_quantity),
                    pretty(&used, &exceeded, format_quantity),
                    pretty(&hard, &exceeded, hard_text),
                ),
            ));
        }
        for (k, v) in &requested {
            *used.entry(k.clone()).or_default() += v;
        }
        let mut next = q.clone();
        next["status"] = status_with(&q, &used);
        charges.push((qres.clone(), next));
    }
    Ok(charges)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Resource {
        shoal_kube::resources::lookup("", "pods")
    }

    #[test]
    fn quantities_print_as_quotas_do() {
        assert_eq!(format_quantity("requests.cpu", 500), "500m");
        assert_eq!(format_quantity("requests.cpu", 2000), "2");
        assert_eq!(format_quantity("requests.memory", 128 * (1 << 20) * 1000), "128Mi");
        assert_eq!(format_quantity("pods", 3000), "3");
    }

    #[test]
    fn a_pod_costs_its_requests_and_limits() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "200m"}}},
            {"name": "b", "resources": {"requests": {"cpu": "300m"}}}
        ], "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1"}}}]}});
        let u = usage(&pods(), &pod);
        assert_eq!(u["pods"], 1000);
        assert_eq!(u["count/pods"], 1000);
        assert_eq!(u["requests.cpu"], 1000, "the init container is larger than the sum");
        assert_eq!(u["cpu"], 1000);
        assert_eq!(u["limits.cpu"], 200);
        assert_eq!(u["requests.memory"], 64 * (1 << 20) * 1000);
        let done = json!({"spec": {"containers": []}, "status": {"phase": "Succeeded"}});
        assert!(usage(&pods(), &done).is_empty());
    }

    #[test]
    fn services_count_node_ports_and_load_balancers() {
        let svc = shoal_kube::resources::lookup("", "services");
        let lb = json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 80}, {"port": 443}]}});
        let u = usage(&svc, &lb);
        assert_eq!(u["services.loadbalancers"], 1000);
        assert_eq!(u["services.nodeports"], 2000);
        let deploy = shoal_kube::resources::lookup("apps", "deployments");
        assert_eq!(usage(&deploy, &json!({}))["count/deployments.apps"], 1000);
    }

    #[test]
    fn scopes_pick_pods() {
        let best = json!({"spec": {"containers": [{"name": "c"}]}});
        let burst = json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}],
            "activeDeadlineSeconds": 10, "priorityClassName": "high"}});
        let q = |spec: Value| json!({"spec": spec});
        assert!(matches(&q(json!({"scopes": ["BestEffort"]})), &pods(), &best));
        assert!(!matches(&q(json!({"scopes": ["BestEffort"]})), &pods(), &burst));
        assert!(matches(&q(json!({"scopes": ["NotBestEffort", "Terminating"]})), &pods(), &burst));
        assert!(!matches(&q(json!({"scopes": ["Terminating"]})), &pods(), &best));
        let pc = q(json!({"scopeSelector": {"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}));
        assert!(matches(&pc, &pods(), &burst));
        assert!(!matches(&pc, &pods(), &best));
        let cms = shoal_kube::resources::lookup("", "configmaps");
        assert!(!matches(&q(json!({"scopes": ["BestEffort"]})), &cms, &json!({})));
    }

    #[test]
    fn cpu_quota_wants_every_container_to_say_its_request() {
        let hard: Usage = [("requests.cpu".to_string(), 1000), ("limits.memory".to_string(), 1000)].into();
        let pod = json!({"spec": {"containers": [{"name": "web", "resources": {"requests": {"cpu": "1"}}},
            {"name": "side"}]}});
        assert_eq!(
            constraints(&hard, &pod).as_deref(),
            Some("must specify limits.memory for: side,web; requests.cpu for: side")
        );
    }
}
