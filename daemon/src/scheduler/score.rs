//! Scores, each 0..=100 per node, summed: least allocated, balanced allocation, preferred node
//! affinity, preferred pod (anti-)affinity, topology spread (including the default spread of a
//! controller's pods over nodes), PreferNoSchedule taints and image locality.
use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::filter::{spread_counts, term_selects, topology};
use super::{pod_requests, Snapshot};
use crate::reconcile::util::*;

/// The best of `candidates`; ties go to the node name that sorts first.
pub(crate) fn best(snap: &Snapshot, pod: &Value, candidates: &[String]) -> Option<String> {
    let spreads = spread_domains(snap, pod);
    let mut scored: Vec<(i64, &String)> = candidates.iter().map(|n| (total(snap, pod, n, &spreads), n)).collect();
    // Equal scores go to the node with fewer pods, so identical nodes fill evenly.
    let pods = |n: &str| snap.usage.get(n).map(|u| u.pods).unwrap_or(0);
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(pods(a.1).cmp(&pods(b.1))).then(a.1.cmp(b.1)));
    scored.first().map(|(_, n)| (*n).clone())
}

fn total(snap: &Snapshot, pod: &Value, node_name: &str, spreads: &[Spread]) -> i64 {
    let Some(node) = snap.nodes.iter().find(|n| name_of(n) == node_name) else { return 0 };
    let (least, balanced) = allocation(snap, pod, node);
    least
        + balanced
        + node_affinity(pod, node)
        + pod_affinity(snap, pod, node)
        + spread(spreads, node)
        + taints(pod, node)
        + image_locality(pod, node)
}

/// Least allocated and balanced allocation over cpu and memory.
fn allocation(snap: &Snapshot, pod: &Value, node: &Value) -> (i64, i64) {
    let req = pod_requests(pod);
    let empty = Default::default();
    let used = snap.usage.get(name_of(node)).unwrap_or(&empty);
    let mut fracs = Vec::new();
    for r in ["cpu", "memory"] {
        let Some(alloc) = quantity_milli(&node["status"]["allocatable"][r]).filter(|a| *a > 0) else { continue };
        // Pods without requests count as Kubernetes' non-zero defaults (100m cpu, 200Mi).
        let default = if r == "cpu" { 100 } else { 200 * 1024 * 1024 * 1000 };
        let want =
            used.requested.get(r).copied().unwrap_or(0) + req.get(r).copied().filter(|q| *q > 0).unwrap_or(default);
        fracs.push((want as f64 / alloc as f64).min(1.0));
    }
    if fracs.is_empty() {
        return (50, 50);
    }
    let least = fracs.iter().map(|f| (1.0 - f) * 100.0).sum::<f64>() / fracs.len() as f64;
    let balanced = if fracs.len() == 2 { 100.0 - (fracs[0] - fracs[1]).abs() * 100.0 } else { 100.0 };
    (least as i64, balanced as i64)
}

fn node_affinity(pod: &Value, node: &Value) -> i64 {
    let prefs = pod["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"].as_array();
    let Some(prefs) = prefs else { return 0 };
    let max: i64 = prefs.iter().map(|p| p["weight"].as_i64().unwrap_or(0)).sum();
    if max == 0 {
        return 0;
    }
    let got: i64 = prefs
        .iter()
        .filter(|p| node_selector_term_matches(&p["preference"], node))
        .map(|p| p["weight"].as_i64().unwrap_or(0))
        .sum();
    got * 100 / max
}

fn pod_affinity(snap: &Snapshot, pod: &Value, node: &Value) -> i64 {
    let ns = namespace_of(pod).unwrap_or("default");
    let mut score = 0;
    for (kind, sign) in [("podAffinity", 1), ("podAntiAffinity", -1)] {
        for p in pod["spec"]["affinity"][kind]["preferredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let term = &p["podAffinityTerm"];
            let key = term["topologyKey"].as_str().unwrap_or("");
            let Some(here) = node["metadata"]["labels"][key].as_str() else { continue };
            let hits = snap
                .bound
                .iter()
                .filter(|o| {
                    term_selects(term, ns, o)
                        && topology(snap, o["spec"]["nodeName"].as_str().unwrap_or(""), key) == Some(here)
                })
                .count() as i64;
            score += sign * p["weight"].as_i64().unwrap_or(0).min(100) * hits.min(1);
        }
    }
    score
}

/// One soft spread constraint with the count of matching pods per topology value.
struct Spread {
    key: String,
    counts: BTreeMap<String, i64>,
}

/// Soft spread constraints of a pod, counted once per pod. Pods of a controller are spread over
/// hostnames by default, as Kubernetes' default constraints do.
fn spread_domains(snap: &Snapshot, pod: &Value) -> Vec<Spread> {
    let mut constraints: Vec<Value> = pod["spec"]["topologySpreadConstraints"]
        .as_array()
        .map(|a| a.iter().filter(|c| c["whenUnsatisfiable"].as_str() == Some("ScheduleAnyway")).cloned().collect())
        .unwrap_or_default();
    if pod["spec"]["topologySpreadConstraints"].is_null() && controller_ref(pod).is_some() {
        if let Some(labels) = pod["metadata"]["labels"].as_object().filter(|l| !l.is_empty()) {
            constraints.push(json!({
                "topologyKey": "kubernetes.io/hostname", "maxSkew": 1, "labelSelector": {"matchLabels": labels}
            }));
        }
    }
    let mut out = Vec::new();
    for c in &constraints {
        let key = c["topologyKey"].as_str().unwrap_or("").to_string();
        let counts = if key == "kubernetes.io/hostname" {
            // Nodes may lack the label; count per node name.
            let mut m: BTreeMap<String, i64> = snap.nodes.iter().map(|n| (name_of(n).to_string(), 0)).collect();
            for o in &snap.bound {
                if namespace_of(o) == namespace_of(pod) && selector_matches(&c["labelSelector"], labels_of(o)) {
                    if let Some(e) = m.get_mut(o["spec"]["nodeName"].as_str().unwrap_or("")) {
                        *e += 1;
                    }
                }
            }
            m
        } else {
            spread_counts(snap, pod, c)
        };
        out.push(Spread { key, counts });
    }
    out
}

/// Fewer matching pods in the node's domain score higher.
fn spread(spreads: &[Spread], node: &Value) -> i64 {
    let mut score = 0;
    for s in spreads {
        let here = if s.key == "kubernetes.io/hostname" {
            Some(name_of(node))
        } else {
            node["metadata"]["labels"][s.key.as_str()].as_str()
        };
        let Some(here) = here else { continue };
        let max = s.counts.values().copied().max().unwrap_or(0);
        let mine = s.counts.get(here).copied().unwrap_or(0);
        score += if max > 0 { (max - mine) * 100 / max } else { 100 };
    }
    score
}

fn taints(pod: &Value, node: &Value) -> i64 {
    let n = node["spec"]["taints"]
        .as_array()
        .map(|ts| ts.iter().filter(|t| t["effect"].as_str() == Some("PreferNoSchedule") && !tolerates(pod, t)).count())
        .unwrap_or(0);
    -(n as i64) * 50
}

fn image_locality(pod: &Value, node: &Value) -> i64 {
    let Some(images) = node["status"]["images"].as_array() else { return 0 };
    let mut wanted = 0;
    let mut have = 0;
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        let Some(img) = c["image"].as_str() else { continue };
        wanted += 1;
        let norm = normalise_image(img);
        if images.iter().any(|i| {
            i["names"]
                .as_array()
                .is_some_and(|ns| ns.iter().any(|n| n.as_str().map(normalise_image) == Some(norm.clone())))
        }) {
            have += 1;
        }
    }
    if wanted == 0 {
        0
    } else {
        have * 100 / wanted
    }
}

pub(crate) use crate::reconcile::images::normalise_image;
