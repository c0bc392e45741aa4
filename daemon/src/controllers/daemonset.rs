//! DaemonSet: one pod per eligible node (nodeSelector, required node affinity, tolerated
//! NoSchedule/NoExecute taints), pinned to its node by a `metadata.name` node affinity so the
//! scheduler binds it; nodes that join later get theirs; RollingUpdate (maxUnavailable) and
//! OnDelete.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{json, Value};

use super::runner::{Action, ControllerSpec, Mapper, ObjKey, ReconcileFuture, Watch};
use super::util::{self, *};
use super::{Context, Kinds, Result};

const COMPONENT: &str = "daemonset-controller";
pub(crate) const REVISION_LABEL: &str = "controller-revision-hash";

pub(crate) fn spec(k: &Kinds) -> ControllerSpec {
    ControllerSpec {
        kind: "DaemonSet",
        primary: k.daemonsets.clone(),
        watches: vec![
            Watch { res: k.daemonsets.clone(), map: Mapper::Itself },
            Watch { res: k.pods.clone(), map: Mapper::Owner("DaemonSet") },
            Watch { res: k.nodes.clone(), map: Mapper::All },
        ],
        on_health_change: false,
        workers: 1,
        single_key: None,
        reconcile: |key, ctx| -> ReconcileFuture { Box::pin(reconcile(key, ctx)) },
    }
}

/// Should the DaemonSet's pod run on this node?
pub(crate) fn node_eligible(template: &Value, node: &Value) -> bool {
    let spec = &template["spec"];
    if let Some(sel) = spec["nodeSelector"].as_object() {
        if !sel.iter().all(|(k, v)| node["metadata"]["labels"].get(k) == Some(v)) {
            return false;
        }
    }
    let req = &spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    if req.is_array() && !node_selector_terms_match(req, node) {
        return false;
    }
    let pod = json!({"spec": {"tolerations": daemon_tolerations(spec)}});
    node["spec"]["taints"].as_array().is_none_or(|ts| {
        ts.iter().all(|t| {
            let effect = t["effect"].as_str().unwrap_or("");
            effect == "PreferNoSchedule" || tolerates(&pod, t)
        })
    })
}

/// The pod's tolerations plus those Kubernetes adds to every daemon pod.
fn daemon_tolerations(spec: &Value) -> Vec<Value> {
    let mut tols = spec["tolerations"].as_array().cloned().unwrap_or_default();
    for (key, effect) in [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ] {
        let t = json!({"key": key, "operator": "Exists", "effect": effect});
        if !tols.contains(&t) {
            tols.push(t);
        }
    }
    tols
}

/// The node a daemon pod is meant for.
fn target_node(pod: &Value) -> Option<String> {
    if let Some(n) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
        return Some(n.to_string());
    }
    let terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .as_array()?;
    terms.iter().find_map(|t| {
        t["matchFields"].as_array()?.iter().find_map(|f| {
            (f["key"].as_str() == Some("metadata.name")).then(|| f["values"][0].as_str().map(str::to_string)).flatten()
        })
    })
}

pub(crate) async fn reconcile(key: ObjKey, ctx: Arc<Context>) -> Result<Action> {
    let k = &ctx.kinds;
    let Some(ds) = util::get(&ctx.objects, &k.daemonsets, key.ns(), &key.name).await? else {
        return Ok(Action::await_change());
    };
    if is_deleting(&ds) {
        return Ok(Action::await_change());
    }
    let uid = uid_of(&ds).to_string();
    let template = &ds["spec"]["template"];
    let nodes = util::list(&ctx.objects, &k.nodes, None).await?;
    let mut by_node: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for p in util::list(&ctx.objects, &k.pods, key.ns()).await? {
        if !controlled_by(&p, &uid) || is_deleting(&p) {
            continue;
        }
        if pod_phase(&p) == "Failed" {
            util::delete_pod(&ctx.objects, &k.pods, &p).await?;
            continue;
        }
        if let Some(n) = target_node(&p) {
            by_node.entry(n).or_default().push(p);
        }
    }
    let in_use: BTreeSet<String> = by_node
        .values()
        .flatten()
        .filter_map(|p| p["metadata"]["labels"][REVISION_LABEL].as_str().map(str::to_string))
        .collect();
    let limit = ds["spec"]["revisionHistoryLimit"].as_i64().unwrap_or(10).max(0) as usize;
    let hash = super::revisions::sync(&ctx, &ds, template, &in_use, limit).await?;
    let mut desired = 0;
    let mut current = 0;
    let mut ready = 0;
    let mut available = 0;
    let mut updated = 0;
    let mut misscheduled = 0;
    let mut old_pods: Vec<Value> = Vec::new();
    let mut unavailable = 0;
    for node in &nodes {
        let n = name_of(node).to_string();
        let eligible = node_eligible(template, node);
        let pods = by_node.remove(&n).unwrap_or_default();
        if eligible {
            desired += 1;
            if pods.is_empty() {
                let mut pod = pod_from_template(template, &ds, &format!("{}-", key.name));
                pod["metadata"]["labels"][REVISION_LABEL] = json!(hash);
                pod["spec"]["tolerations"] = Value::Array(daemon_tolerations(&template["spec"]));
                let mut affinity = pod["spec"]["affinity"].clone();
                if !affinity.is_object() {
                    affinity = json!({});
                }
                affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({
                    "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [n]}]}]
                });
                pod["spec"]["affinity"] = affinity;
                let Some(created) = super::create_pod(&ctx, COMPONENT, &ds, key.ns(), pod).await? else {
                    return Ok(Action::requeue(super::REFUSED_RETRY));
                };
                ctx.events
                    .normal(COMPONENT, &ds, "SuccessfulCreate", &format!("Created pod: {}", name_of(&created)))
                    .await;
                unavailable += 1;
                continue;
            }
            current += 1;
            let mut pods = pods;
            pods.sort_by(|a, b| super::replicaset::deletion_order(b, a));
            for extra in pods.drain(1..) {
                util::delete_pod(&ctx.objects, &k.pods, &extra).await?;
            }
            let p = &pods[0];
            if pod_is_ready(p) {
                ready += 1;
                available += 1;
            } else {
                unavailable += 1;
            }
            if p["metadata"]["labels"][REVISION_LABEL].as_str() == Some(hash.as_str()) {
                updated += 1;
            } else {
                old_pods.push(p.clone());
            }
        } else {
            if !pods.is_empty() {
                misscheduled += 1;
            }
            for p in pods {
                util::delete_pod(&ctx.objects, &k.pods, &p).await?;
                ctx.events.normal(COMPONENT, &ds, "SuccessfulDelete", &format!("Deleted pod: {}", name_of(&p))).await;
            }
        }
    }
    // Pods for nodes that no longer exist.
    for (_, pods) in by_node {
        for p in pods {
            util::delete_pod(&ctx.objects, &k.pods, &p).await?;
        }
    }
    if ds["spec"]["updateStrategy"]["type"].as_str().unwrap_or("RollingUpdate") == "RollingUpdate" {
        let mu = &ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"];
        let one = json!(1);
        let max_unavailable = int_or_percent(if mu.is_null() { &one } else { mu }, desired, true, 1).max(1);
        // Not-ready old pods first: replacing them costs no availability.
        old_pods.sort_by_key(pod_is_ready);
        let mut budget = max_unavailable - unavailable;
        for p in old_pods {
            if pod_is_ready(&p) {
                if budget <= 0 {
                    break;
                }
                budget -= 1;
            }
            util::delete_pod(&ctx.objects, &k.pods, &p).await?;
        }
    }
    let status = json!({
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": current,
        "numberReady": ready,
        "numberAvailable": available,
        "numberUnavailable": (desired - available).max(0),
        "updatedNumberScheduled": updated,
        "numberMisscheduled": misscheduled,
        "observedGeneration": generation_of(&ds),
    });
    util::write_status(&ctx.objects, &k.daemonsets, &ds, status).await?;
    Ok(Action::await_change())
}
