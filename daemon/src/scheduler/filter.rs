//! Filters: which nodes can run a pod, and why the others cannot (in the words of
//! Kubernetes' scheduler, since `kubectl describe pod` shows them).
use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::score::normalise_image;
use super::{host_ports, pod_requests, Snapshot};
use crate::reconcile::util::*;

/// Nodes that pass every filter, or the count of nodes per failure reason.
pub(crate) fn feasible(snap: &Snapshot, pod: &Value) -> Result<Vec<String>, BTreeMap<String, usize>> {
    let mut ok = Vec::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for node in &snap.nodes {
        match check(snap, pod, node) {
            Ok(()) => ok.push(name_of(node).to_string()),
            Err(rs) => {
                for r in rs {
                    *reasons.entry(r).or_insert(0) += 1;
                }
            }
        }
    }
    if ok.is_empty() {
        Err(reasons)
    } else {
        Ok(ok)
    }
}

/// Every reason a node cannot run the pod (empty: it can). The first failing filter group wins,
/// as in Kubernetes, except that all insufficient resources are listed.
pub(crate) fn check(snap: &Snapshot, pod: &Value, node: &Value) -> Result<(), Vec<String>> {
    let name = name_of(node);
    if node["spec"]["unschedulable"].as_bool() == Some(true)
        && !tolerates(pod, &json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}))
    {
        return Err(vec!["node(s) were unschedulable".into()]);
    }
    if let Some(t) = untolerated_taint(pod, node) {
        return Err(vec![t]);
    }
    if !node_is_ready(node) {
        let t = json!({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"});
        if !tolerates(pod, &t) {
            return Err(vec!["node(s) had untolerated taint {node.kubernetes.io/not-ready: }".into()]);
        }
    }
    if !node_affinity_matches(pod, node) {
        return Err(vec!["node(s) didn't match Pod's node affinity/selector".into()]);
    }
    if !image_platforms_ok(snap, pod, node) {
        return Err(vec![IMAGE_PLATFORM_MISMATCH.into()]);
    }
    if pod["spec"]["volumes"].as_array().is_some_and(|vs| vs.iter().any(|v| v["persistentVolumeClaim"].is_object())) {
        crate::reconcile::volumes::volumes_fit(pod, node, &snap.pvcs, &snap.pvs).map_err(|r| vec![r])?;
    }
    let empty = Default::default();
    let used = snap.usage.get(name).unwrap_or(&empty);
    let mut insufficient = Vec::new();
    let alloc = &node["status"]["allocatable"];
    let max_pods = quantity_milli(&alloc["pods"]).map(|q| (q / 1000) as i64).unwrap_or(110);
    if used.pods + 1 > max_pods {
        insufficient.push("Too many pods".to_string());
    }
    for (r, q) in pod_requests(pod) {
        if q == 0 {
            continue;
        }
        let have = match quantity_milli(&alloc[r.as_str()]) {
            Some(h) => h,
            // Unknown cpu/memory capacity is not a limit; unknown extended resources are zero.
            None if matches!(r.as_str(), "cpu" | "memory" | "ephemeral-storage") => continue,
            None => 0,
        };
        let in_use = used.requested.get(&r).copied().unwrap_or(0);
        if in_use + q > have {
            insufficient.push(format!("Insufficient {r}"));
        }
    }
    if !insufficient.is_empty() {
        return Err(insufficient);
    }
    for (proto, ip, port) in host_ports(pod) {
        let clash = used.host_ports.iter().any(|(p2, ip2, port2)| {
            *p2 == proto && *port2 == port && (ip == "0.0.0.0" || ip2 == "0.0.0.0" || *ip2 == ip)
        });
        if clash {
            return Err(vec!["node(s) didn't have free ports for the requested pod ports".into()]);
        }
    }
    if let Err(r) = pod_affinity_ok(snap, pod, node) {
        return Err(vec![r]);
    }
    if !topology_spread_ok(snap, pod, node) {
        return Err(vec!["node(s) didn't match pod topology spread constraints".into()]);
    }
    Ok(())
}

/// Why a node whose platform none of a pod's images offers is filtered out.
pub(crate) const IMAGE_PLATFORM_MISMATCH: &str = "node(s) didn't match the platform of the pod's images";

/// `os/arch` of a node from its well-known labels (os defaults to linux); None if the node does
/// not say its architecture.
fn node_platform(node: &Value) -> Option<String> {
    let labels = labels_of(node);
    let arch = labels["kubernetes.io/arch"].as_str().filter(|a| !a.is_empty())?;
    let os = labels["kubernetes.io/os"].as_str().filter(|o| !o.is_empty()).unwrap_or("linux");
    Some(format!("{os}/{arch}"))
}

/// Does every image of the pod offer the node's platform? Only images whose platforms some node
/// reported are judged; an image no node holds yet passes (the node's pull then tells).
fn image_platforms_ok(snap: &Snapshot, pod: &Value, node: &Value) -> bool {
    if snap.image_platforms.is_empty() {
        return true;
    }
    let Some(want) = node_platform(node) else { return true };
    pod_images(pod).all(|img| match snap.image_platforms.get(&normalise_image(img)) {
        None => true,
        // "linux/arm/v7" offers "linux/arm": the variant is not a node label.
        Some(offered) => {
            offered.iter().any(|p| *p == want || p.strip_prefix(want.as_str()).is_some_and(|v| v.starts_with('/')))
        }
    })
}

/// Images of a pod's containers and init containers.
pub(crate) fn pod_images(pod: &Value) -> impl Iterator<Item = &str> {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(move |k| pod["spec"][k].as_array().into_iter().flatten())
        .filter_map(|c| c["image"].as_str())
}

fn untolerated_taint(pod: &Value, node: &Value) -> Option<String> {
    let taints = node["spec"]["taints"].as_array()?;
    taints
        .iter()
        .find(|t| matches!(t["effect"].as_str(), Some("NoSchedule") | Some("NoExecute")) && !tolerates(pod, t))
        .map(|t| {
            format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t["key"].as_str().unwrap_or(""),
                t["value"].as_str().unwrap_or("")
            )
        })
}

pub(crate) fn node_affinity_matches(pod: &Value, node: &Value) -> bool {
    if let Some(sel) = pod["spec"]["nodeSelector"].as_object() {
        if !sel.iter().all(|(k, v)| node["metadata"]["labels"].get(k) == Some(v)) {
            return false;
        }
    }
    let req =
        &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    !req.is_array() || node_selector_terms_match(req, node)
}

/// Topology value of a node for a key.
pub(crate) fn topology<'a>(snap: &'a Snapshot, node: &str, key: &str) -> Option<&'a str> {
    snap.nodes.iter().find(|n| name_of(n) == node)?["metadata"]["labels"][key].as_str()
}

/// Does a pod-affinity term select `other` (namespaces default to the pod's own)?
pub(crate) fn term_selects(term: &Value, pod_ns: &str, other: &Value) -> bool {
    let other_ns = namespace_of(other).unwrap_or("default");
    let nss: Vec<&str> =
        term["namespaces"].as_array().map(|a| a.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
    let ns_ok = if !nss.is_empty() {
        nss.contains(&other_ns)
    } else if term["namespaceSelector"].is_object() {
        // An empty namespaceSelector means all namespaces; others are not evaluated here.
        term["namespaceSelector"].as_object().is_some_and(|m| m.is_empty()) || other_ns == pod_ns
    } else {
        other_ns == pod_ns
    };
    ns_ok && selector_matches(&term["labelSelector"], labels_of(other))
}

fn pod_affinity_ok(snap: &Snapshot, pod: &Value, node: &Value) -> Result<(), String> {
    let pod_ns = namespace_of(pod).unwrap_or("default");
    let node_name = name_of(node);
    let aff = &pod["spec"]["affinity"];
    for term in aff["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"].as_array().into_iter().flatten() {
        let key = term["topologyKey"].as_str().unwrap_or("");
        let Some(here) = node["metadata"]["labels"][key].as_str() else {
            return Err("node(s) didn't match pod affinity rules".into());
        };
        let matching: Vec<&Value> = snap.bound.iter().filter(|o| term_selects(term, pod_ns, o)).collect();
        let satisfied =
            matching.iter().any(|o| topology(snap, o["spec"]["nodeName"].as_str().unwrap_or(""), key) == Some(here));
        // The first pod of a group that selects itself may go anywhere.
        let self_match = matching.is_empty() && term_selects(term, pod_ns, pod);
        if !satisfied && !self_match {
            return Err("node(s) didn't match pod affinity rules".into());
        }
    }
    for term in
        aff["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"].as_array().into_iter().flatten()
    {
        let key = term["topologyKey"].as_str().unwrap_or("");
        let Some(here) = node["metadata"]["labels"][key].as_str() else { continue };
        let clash = snap.bound.iter().any(|o| {
            term_selects(term, pod_ns, o)
                && topology(snap, o["spec"]["nodeName"].as_str().unwrap_or(""), key) == Some(here)
        });
        if clash {
            return Err("node(s) didn't match pod anti-affinity rules".into());
        }
    }
    // Existing pods' anti-affinity against this pod.
    for o in snap.anti_affinity.iter().filter_map(|i| snap.bound.get(*i)) {
        let o_ns = namespace_of(o).unwrap_or("default");
        for term in o["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let key = term["topologyKey"].as_str().unwrap_or("");
            let there = topology(snap, o["spec"]["nodeName"].as_str().unwrap_or(""), key);
            if there.is_some() && node["metadata"]["labels"][key].as_str() == there && term_selects(term, o_ns, pod) {
                return Err("node(s) didn't match pod anti-affinity rules".into());
            }
        }
    }
    let _ = node_name;
    Ok(())
}

/// Pods of `pod`'s namespace matching a spread constraint, per topology value.
pub(crate) fn spread_counts(snap: &Snapshot, pod: &Value, c: &Value) -> BTreeMap<String, i64> {
    let key = c["topologyKey"].as_str().unwrap_or("");
    let ns = namespace_of(pod).unwrap_or("default");
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    for n in &snap.nodes {
        if let Some(v) = n["metadata"]["labels"][key].as_str() {
            if node_affinity_matches(pod, n) {
                counts.entry(v.to_string()).or_insert(0);
            }
        }
    }
    for o in &snap.bound {
        if namespace_of(o).unwrap_or("default") != ns || !selector_matches(&c["labelSelector"], labels_of(o)) {
            continue;
        }
        if let Some(v) = topology(snap, o["spec"]["nodeName"].as_str().unwrap_or(""), key) {
            if let Some(e) = counts.get_mut(v) {
                *e += 1;
            }
        }
    }
    counts
}

fn topology_spread_ok(snap: &Snapshot, pod: &Value, node: &Value) -> bool {
    for c in pod["spec"]["topologySpreadConstraints"].as_array().into_iter().flatten() {
        if c["whenUnsatisfiable"].as_str().unwrap_or("DoNotSchedule") != "DoNotSchedule" {
            continue;
        }
        let key = c["topologyKey"].as_str().unwrap_or("");
        let Some(here) = node["metadata"]["labels"][key].as_str() else { return false };
        let counts = spread_counts(snap, pod, c);
        let min = counts.values().copied().min().unwrap_or(0);
        let mine = counts.get(here).copied().unwrap_or(0);
        let self_match = i64::from(selector_matches(&c["labelSelector"], labels_of(pod)));
        if mine + self_match - min > c["maxSkew"].as_i64().unwrap_or(1) {
            return false;
        }
    }
    true
}
