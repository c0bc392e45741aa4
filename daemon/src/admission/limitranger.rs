//! LimitRanger (`v1` LimitRange): default requests and limits of containers, then min, max and
//! maxLimitRequestRatio per Container, per Pod and per PersistentVolumeClaim, refused with
//! upstream's words (`minimum cpu usage per Container is 100m, but request is 50m.`).
use serde_json::{json, Map, Value};
use shoal_kube::quantity::milli;
use shoal_kube::{Objects, Resource};

use super::{forbidden, Error};

fn limit_ranges_res() -> Resource {
    shoal_kube::resources::lookup("", "limitranges")
}

async fn limit_ranges(objects: &Objects, ns: &str) -> Result<Vec<Value>, Error> {
    let res = limit_ranges_res();
    let (mut items, _) = objects
        .list(&res, Some(ns))
        .await
        .map_err(|source| Error::Read { resource: res.plural.clone(), source: Box::new(source) })?;
    items.sort_by(|a, b| a["metadata"]["name"].as_str().cmp(&b["metadata"]["name"].as_str()));
    Ok(items)
}

/// API defaults of a LimitRange (upstream SetDefaults_LimitRange), for Container limits:
/// `default` from `max`, `defaultRequest` from `default`, then from `min`.
pub(crate) fn default_object(obj: &mut Value) {
    let Some(limits) = obj.pointer_mut("/spec/limits").and_then(Value::as_array_mut) else { return };
    for l in limits.iter_mut() {
        if l["type"].as_str() != Some("Container") {
            continue;
        }
        let Some(m) = l.as_object_mut() else { continue };
        let fill = |m: &mut Map<String, Value>, to: &str, from: &str| {
            let src = m.get(from).and_then(Value::as_object).cloned().unwrap_or_default();
            if src.is_empty() {
                return;
            }
            let dst = m.entry(to).or_insert_with(|| json!({}));
            if !dst.is_object() {
                *dst = json!({});
            }
            if let Some(d) = dst.as_object_mut() {
                for (k, v) in src {
                    d.entry(k).or_insert(v);
                }
            }
        };
        fill(m, "default", "max");
        fill(m, "defaultRequest", "default");
        fill(m, "defaultRequest", "min");
    }
}

/// The mutating half: containers that leave out a request or a limit get the LimitRange's
/// `defaultRequest`/`default`, and the pod is annotated with what was set, as upstream.
pub(crate) async fn default(objects: &Objects, res: &Resource, ns: &str, obj: &mut Value) -> Result<(), Error> {
    if !(res.group.is_empty() && res.kind == "Pod") {
        return Ok(());
    }
    let ranges = limit_ranges(objects, ns).await?;
    let mut notes: Vec<String> = Vec::new();
    for lr in &ranges {
        let (mut limits, mut requests) = (Map::new(), Map::new());
        for l in lr["spec"]["limits"].as_array().into_iter().flatten() {
            if l["type"].as_str() != Some("Container") {
                continue;
            }
            for (k, v) in l["default"].as_object().into_iter().flatten() {
                limits.insert(k.clone(), v.clone());
            }
            for (k, v) in l["defaultRequest"].as_object().into_iter().flatten() {
                requests.insert(k.clone(), v.clone());
            }
        }
        if limits.is_empty() && requests.is_empty() {
            continue;
        }
        for (list, what) in [("containers", "container"), ("initContainers", "init container")] {
            let Some(cs) = obj.pointer_mut(&format!("/spec/{list}")).and_then(Value::as_array_mut) else { continue };
            for c in cs.iter_mut() {
                let cname = c["name"].as_str().unwrap_or_default().to_string();
                if !c["resources"].is_object() {
                    c["resources"] = json!({});
                }
                let set_req = merge(&mut c["resources"], "requests", &requests);
                let set_lim = merge(&mut c["resources"], "limits", &limits);
                if !set_req.is_empty() {
                    notes.push(format!("{} request for {what} {cname}", set_req.join(", ")));
                }
                if !set_lim.is_empty() {
                    notes.push(format!("{} limit for {what} {cname}", set_lim.join(", ")));
                }
            }
        }
    }
    if !notes.is_empty() {
        if !obj["metadata"]["annotations"].is_object() {
            obj["metadata"]["annotations"] = json!({});
        }
        obj["metadata"]["annotations"]["kubernetes.io/limit-ranger"] =
            json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
    }
    Ok(())
}

/// Sets the keys of `defaults` that `resources[field]` lacks; returns the ones set.
fn merge(resources: &mut Value, field: &str, defaults: &Map<String, Value>) -> Vec<String> {
    let mut set = Vec::new();
    if defaults.is_empty() {
        return set;
    }
    if !resources[field].is_object() {
        resources[field] = json!({});
    }
    if let Some(m) = resources[field].as_object_mut() {
        for (k, v) in defaults {
            if !m.contains_key(k) {
                m.insert(k.clone(), v.clone());
                set.push(k.clone());
            }
        }
    }
    set.sort();
    set
}

/// A resource list as (name -> (text, thousandths)).
fn list(v: &Value) -> Vec<(String, String, i128)> {
    let mut out: Vec<(String, String, i128)> = v
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let text = v.as_str().map(String::from).unwrap_or_else(|| v.to_string());
            milli(v).map(|m| (k.clone(), text, m))
        })
        .collect();
    out.sort();
    out
}

fn get<'a>(l: &'a [(String, String, i128)], k: &str) -> Option<&'a (String, String, i128)> {
    l.iter().find(|(n, _, _)| n == k)
}

fn min_constraint(
    ty: &str,
    k: &str,
    text: &str,
    v: i128,
    req: &[(String, String, i128)],
    lim: &[(String, String, i128)],
) -> Option<String> {
    let Some((_, rt, r)) = get(req, k) else {
        return Some(format!("minimum {k} usage per {ty} is {text}.  No request is specified."));
    };
    if *r < v {
        return Some(format!("minimum {k} usage per {ty} is {text}, but request is {rt}."));
    }
    match get(lim, k) {
        Some((_, lt, l)) if *l < v => Some(format!("minimum {k} usage per {ty} is {text}, but limit is {lt}.")),
        _ => None,
    }
}

fn max_constraint(
    ty: &str,
    k: &str,
    text: &str,
    v: i128,
    req: &[(String, String, i128)],
    lim: &[(String, String, i128)],
) -> Option<String> {
    let Some((_, lt, l)) = get(lim, k) else {
        return Some(format!("maximum {k} usage per {ty} is {text}.  No limit is specified."));
    };
    if *l > v {
        return Some(format!("maximum {k} usage per {ty} is {text}, but limit is {lt}."));
    }
    match get(req, k) {
        Some((_, rt, r)) if *r > v => Some(format!("maximum {k} usage per {ty} is {text}, but request is {rt}.")),
        _ => None,
    }
}

fn max_request_constraint(ty: &str, k: &str, text: &str, v: i128, req: &[(String, String, i128)]) -> Option<String> {
    match get(req, k) {
        None => Some(format!("maximum {k} usage per {ty} is {text}.  No request is specified.")),
        Some((_, rt, r)) if *r > v => Some(format!("maximum {k} usage per {ty} is {text}, but request is {rt}.")),
        _ => None,
    }
}

fn ratio_constraint(
    ty: &str,
    k: &str,
    text: &str,
    v: i128,
    req: &[(String, String, i128)],
    lim: &[(String, String, i128)],
) -> Option<String> {
    let r = get(req, k).map(|x| x.2).unwrap_or(0);
    if r == 0 {
        return Some(format!(
            "{k} max limit to request ratio per {ty} is {text}, but no request is specified or request is 0."
        ));
    }
    let l = get(lim, k).map(|x| x.2).unwrap_or(0);
    if l == 0 {
        return Some(format!(
            "{k} max limit to request ratio per {ty} is {text}, but no limit is specified or limit is 0."
        ));
    }
    let observed = l as f64 / r as f64;
    if observed * 1000.0 > v as f64 {
        return Some(format!(
            "{k} max limit to request ratio per {ty} is {text}, but provided ratio is {observed:.6}."
        ));
    }
    None
}

/// Min, max and ratio of one limit entry against one set of requests and limits.
fn bounds(l: &Value, ty: &str, req: &[(String, String, i128)], lim: &[(String, String, i128)], errs: &mut Vec<String>) {
    for (k, text, v) in list(&l["min"]) {
        errs.extend(min_constraint(ty, &k, &text, v, req, lim));
    }
    for (k, text, v) in list(&l["max"]) {
        errs.extend(max_constraint(ty, &k, &text, v, req, lim));
    }
    for (k, text, v) in list(&l["maxLimitRequestRatio"]) {
        errs.extend(ratio_constraint(ty, &k, &text, v, req, lim));
    }
}

/// Sum of the containers, or the largest init container where that is more (per resource).
fn pod_totals(spec: &Value, field: &str) -> Vec<(String, String, i128)> {
    let mut sums: std::collections::BTreeMap<String, i128> = Default::default();
    for c in spec["containers"].as_array().into_iter().flatten() {
        for (k, _, v) in list(&c["resources"][field]) {
            *sums.entry(k).or_default() += v;
        }
    }
    for c in spec["initContainers"].as_array().into_iter().flatten() {
        for (k, _, v) in list(&c["resources"][field]) {
            let e = sums.entry(k).or_default();
            *e = (*e).max(v);
        }
    }
    sums.into_iter().map(|(k, v)| (k.clone(), super::quota::format_quantity(&k, v), v)).collect()
}

/// The validating half: refuses a Pod or PersistentVolumeClaim outside a LimitRange's bounds.
pub(crate) async fn check(objects: &Objects, res: &Resource, ns: &str, obj: &Value) -> Result<(), Error> {
    let is_pod = res.group.is_empty() && res.kind == "Pod";
    let is_pvc = res.group.is_empty() && res.kind == "PersistentVolumeClaim";
    if !is_pod && !is_pvc {
        return Ok(());
    }
    let ranges = limit_ranges(objects, ns).await?;
    let mut errs: Vec<String> = Vec::new();
    for lr in &ranges {
        for l in lr["spec"]["limits"].as_array().into_iter().flatten() {
            let ty = l["type"].as_str().unwrap_or_default();
            match ty {
                "Container" if is_pod => {
                    for list_name in ["containers", "initContainers"] {
                        for c in obj["spec"][list_name].as_array().into_iter().flatten() {
                            let req = list(&c["resources"]["requests"]);
                            let lim = list(&c["resources"]["limits"]);
                            bounds(l, ty, &req, &lim, &mut errs);
                        }
                    }
                }
                "Pod" if is_pod => {
                    let req = pod_totals(&obj["spec"], "requests");
                    let lim = pod_totals(&obj["spec"], "limits");
                    bounds(l, ty, &req, &lim, &mut errs);
                }
                "PersistentVolumeClaim" if is_pvc => {
                    let req = list(&obj["spec"]["resources"]["requests"]);
                    for (k, text, v) in list(&l["min"]) {
                        errs.extend(min_constraint(ty, &k, &text, v, &req, &[]));
                    }
                    for (k, text, v) in list(&l["max"]) {
                        errs.extend(max_request_constraint(ty, &k, &text, v, &req));
                    }
                }
                _ => {}
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    errs.retain(|e| seen.insert(e.clone()));
    match errs.len() {
        0 => Ok(()),
        1 => Err(forbidden(res, obj, &errs[0])),
        _ => Err(forbidden(res, obj, &format!("[{}]", errs.join(", ")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_range_defaults_follow_max_and_min() {
        let mut lr =
            json!({"spec": {"limits": [{"type": "Container", "max": {"cpu": "1"}, "min": {"memory": "64Mi"}}]}});
        default_object(&mut lr);
        assert_eq!(lr["spec"]["limits"][0]["default"], json!({"cpu": "1"}));
        assert_eq!(lr["spec"]["limits"][0]["defaultRequest"], json!({"cpu": "1", "memory": "64Mi"}));
    }

    #[test]
    fn bounds_speak_upstream() {
        let l = json!({"min": {"cpu": "100m"}, "max": {"cpu": "1"}, "maxLimitRequestRatio": {"cpu": "2"}});
        let mut errs = Vec::new();
        bounds(&l, "Container", &list(&json!({"cpu": "50m"})), &list(&json!({"cpu": "2"})), &mut errs);
        assert_eq!(
            errs,
            vec![
                "minimum cpu usage per Container is 100m, but request is 50m.",
                "maximum cpu usage per Container is 1, but limit is 2.",
                "cpu max limit to request ratio per Container is 2, but provided ratio is 40.000000.",
            ]
        );
        let mut ok = Vec::new();
        bounds(&l, "Container", &list(&json!({"cpu": "500m"})), &list(&json!({"cpu": "1"})), &mut ok);
        assert!(ok.is_empty(), "{ok:?}");
    }
}
