//! Node lifecycle: a node that gossip reports dead gets Ready=Unknown and the
//! `node.kubernetes.io/unreachable` taints; its pods are evicted (deleted) once their toleration
//! of `unreachable:NoExecute` runs out, so their controllers recreate them elsewhere.
//!
//! Damping: the toleration counts from the moment the node went dead (the taint's `timeAdded`).
//! A node that comes back before that removes the taint and cancels every pending eviction, so a
//! node that flaps faster than the toleration never loses its pods; only a node that stays dead
//! for the whole toleration does. The default toleration is
//! [`super::ControllerConfig::default_unreachable_toleration`] (10 s); a pod's own toleration
//! with `tolerationSeconds` overrides it, one without `tolerationSeconds` keeps the pod forever.
//!
//! Disruption: when every node, or more than two and at least 55 % of them, look dead at once
//! (upstream's `--unhealthy-zone-threshold`; for clusters of at most 50 nodes upstream's
//! secondary eviction rate is 0), the fault is more likely the observer's (its own link, a
//! starved leader on an overloaded machine) than the nodes'. The nodes are still marked
//! unreachable, but no pod is evicted until the view recovers: evicting would start every
//! pod again elsewhere and make the overload worse.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_kube::{ObjectEvent, UpdateMode};

use super::runner::{Action, ControllerSpec, Mapper, ObjKey, ReconcileFuture, Watch};
use super::util::{self, *};
use super::{Context, Kinds, Result};

pub(crate) const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const COMPONENT: &str = "node-controller";

pub(crate) fn spec(k: &Kinds) -> ControllerSpec {
    ControllerSpec {
        kind: "Node",
        primary: k.nodes.clone(),
        watches: vec![
            Watch { res: k.nodes.clone(), map: Mapper::Itself },
            Watch { res: k.pods.clone(), map: Mapper::Custom(pod_node) },
        ],
        on_health_change: true,
        workers: 2,
        single_key: None,
        reconcile: |key, ctx| -> ReconcileFuture { Box::pin(reconcile(key, ctx)) },
    }
}

fn pod_node(ev: &ObjectEvent) -> Vec<ObjKey> {
    match ev.object["spec"]["nodeName"].as_str() {
        Some(n) if !n.is_empty() && ev.kind != "DELETED" => vec![ObjKey::new(None, n)],
        _ => Vec::new(),
    }
}

/// How long a pod tolerates an unreachable node: None = forever.
pub(crate) fn toleration_for(pod: &Value, default: Duration) -> Option<Duration> {
    let taint = json!({"key": UNREACHABLE, "effect": "NoExecute"});
    let tols: Vec<&Value> = pod["spec"]["tolerations"]
        .as_array()
        .map(|ts| ts.iter().filter(|t| toleration_matches(t, &taint)).collect())
        .unwrap_or_default();
    if tols.is_empty() {
        return Some(default);
    }
    // The longest matching toleration wins; one without seconds tolerates forever.
    let mut best = Duration::ZERO;
    for t in tols {
        match t["tolerationSeconds"].as_i64() {
            None => return None,
            Some(s) => best = best.max(Duration::from_secs(s.max(0) as u64)),
        }
    }
    Some(best)
}

pub(crate) async fn reconcile(key: ObjKey, ctx: Arc<Context>) -> Result<Action> {
    let k = &ctx.kinds;
    let Some(node) = util::get(&ctx.objects, &k.nodes, None, &key.name).await? else {
        return Ok(Action::await_change());
    };
    let alive = ctx.health.borrow().get(&key.name).copied();
    match alive {
        None => Ok(Action::await_change()),
        Some(true) => {
            mark_reachable(&ctx, &node).await?;
            Ok(Action::await_change())
        }
        Some(false) => {
            let since = mark_unreachable(&ctx, &node).await?;
            let (dead, total) = disruption(&ctx.health.borrow());
            if disrupted(dead, total) {
                tracing::warn!(node = %key.name, dead, total, "most nodes look unreachable at once; evicting nothing");
                let msg = format!(
                    "{dead} of {total} nodes look unreachable at once: no pod is evicted until the view recovers"
                );
                ctx.events.warning(COMPONENT, &node, "EvictionsHeld", &msg).await;
                return Ok(Action::requeue(DISRUPTION_RECHECK));
            }
            evict(&ctx, &key.name, since).await
        }
    }
}

/// How often a dead node is looked at again while evictions are held back.
const DISRUPTION_RECHECK: Duration = Duration::from_secs(2);

/// (dead, all) nodes as gossip sees them.
fn disruption(health: &BTreeMap<String, bool>) -> (usize, usize) {
    (health.values().filter(|alive| !**alive).count(), health.len())
}

/// Upstream's zone states: full disruption (every node dead) or partial (more than two dead,
/// and at least 55 % of all).
fn disrupted(dead: usize, total: usize) -> bool {
    dead > 0 && (dead == total || (dead > 2 && dead * 100 >= total * 55))
}

fn has_unreachable_taint(node: &Value) -> bool {
    node["spec"]["taints"].as_array().is_some_and(|ts| ts.iter().any(|t| t["key"].as_str() == Some(UNREACHABLE)))
}

async fn mark_reachable(ctx: &Context, node: &Value) -> Result<()> {
    let ours = node["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"].as_str() == Some("Ready")))
        .is_some_and(|c| c["reason"].as_str() == Some("NodeStatusUnknown"));
    if !has_unreachable_taint(node) && !ours {
        return Ok(());
    }
    tracing::info!(node = %name_of(node), "node reachable again");
    let k = &ctx.kinds;
    util::modify(&ctx.objects, &k.nodes, None, name_of(node), UpdateMode::All, |n| {
        if let Some(ts) = n["spec"]["taints"].as_array() {
            let kept: Vec<Value> = ts.iter().filter(|t| t["key"].as_str() != Some(UNREACHABLE)).cloned().collect();
            if kept.is_empty() {
                if let Some(s) = n["spec"].as_object_mut() {
                    s.remove("taints");
                }
            } else {
                n["spec"]["taints"] = Value::Array(kept);
            }
        }
        if let Some(cs) = n["status"]["conditions"].as_array_mut() {
            for c in cs.iter_mut() {
                if c["reason"].as_str() == Some("NodeStatusUnknown") {
                    let now = now_str();
                    c["status"] = json!(if c["type"].as_str() == Some("Ready") { "True" } else { "False" });
                    c["reason"] =
                        json!(if c["type"].as_str() == Some("Ready") { "KubeletReady" } else { "NodeStatusKnown" });
                    c["message"] = json!("node is reachable again");
                    c["lastTransitionTime"] = json!(now);
                    c["lastHeartbeatTime"] = json!(now);
                }
            }
        }
        true
    })
    .await?;
    Ok(())
}

/// Taints the node and sets its conditions Unknown; returns since when it is unreachable.
async fn mark_unreachable(ctx: &Context, node: &Value) -> Result<jiff::Timestamp> {
    let existing = node["spec"]["taints"].as_array().and_then(|ts| {
        ts.iter()
            .find(|t| t["key"].as_str() == Some(UNREACHABLE) && t["effect"].as_str() == Some("NoExecute"))
            .and_then(|t| parse_time(&t["timeAdded"]))
    });
    let ready_unknown = node["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"].as_str() == Some("Ready")))
        .is_some_and(|c| c["status"].as_str() == Some("Unknown"));
    if let (Some(t), true) = (existing, ready_unknown) {
        return Ok(t);
    }
    let now_t = now();
    let now = fmt_time(now_t);
    tracing::warn!(node = %name_of(node), "node unreachable");
    let k = &ctx.kinds;
    let updated = util::modify(&ctx.objects, &k.nodes, None, name_of(node), UpdateMode::All, |n| {
        let mut ts = n["spec"]["taints"].as_array().cloned().unwrap_or_default();
        for effect in ["NoSchedule", "NoExecute"] {
            if !ts.iter().any(|t| t["key"].as_str() == Some(UNREACHABLE) && t["effect"].as_str() == Some(effect)) {
                let mut t = json!({"key": UNREACHABLE, "effect": effect});
                if effect == "NoExecute" {
                    t["timeAdded"] = json!(now);
                }
                ts.push(t);
            }
        }
        if !n["spec"].is_object() {
            n["spec"] = json!({});
        }
        n["spec"]["taints"] = Value::Array(ts);
        let mut conds = n["status"]["conditions"].as_array().cloned().unwrap_or_default();
        if !conds.iter().any(|c| c["type"].as_str() == Some("Ready")) {
            conds.push(json!({"type": "Ready"}));
        }
        for c in conds.iter_mut() {
            let t = c["type"].as_str().unwrap_or("");
            if matches!(t, "Ready" | "MemoryPressure" | "DiskPressure" | "PIDPressure")
                && c["status"].as_str() != Some("Unknown")
            {
                c["status"] = json!("Unknown");
                c["reason"] = json!("NodeStatusUnknown");
                c["message"] = json!("Kubelet stopped posting node status.");
                c["lastTransitionTime"] = json!(now);
            }
        }
        if !n["status"].is_object() {
            n["status"] = json!({});
        }
        n["status"]["conditions"] = Value::Array(conds);
        true
    })
    .await?;
    let since = updated
        .as_ref()
        .and_then(|n| n["spec"]["taints"].as_array().cloned())
        .and_then(|ts| {
            ts.iter()
                .find(|t| t["key"].as_str() == Some(UNREACHABLE) && t["effect"].as_str() == Some("NoExecute"))
                .and_then(|t| parse_time(&t["timeAdded"]))
        })
        .unwrap_or(now_t);
    ctx.events
        .normal(COMPONENT, node, "NodeNotReady", &format!("Node {} status is now: NodeNotReady", name_of(node)))
        .await;
    Ok(since)
}

async fn evict(ctx: &Context, node: &str, since: jiff::Timestamp) -> Result<Action> {
    let k = &ctx.kinds;
    let dead_for = elapsed(since, now());
    let mut next: Option<Duration> = None;
    for pod in util::list(&ctx.objects, &k.pods, None).await? {
        if pod["spec"]["nodeName"].as_str() != Some(node) || is_deleting(&pod) {
            continue;
        }
        let Some(tol) = toleration_for(&pod, ctx.config.default_unreachable_toleration) else { continue };
        if dead_for >= tol {
            tracing::info!(node, pod = %name_of(&pod), ns = namespace_of(&pod).unwrap_or(""), "evicting pod from unreachable node");
            ctx.events
                .normal(
                    COMPONENT,
                    &pod,
                    "TaintManagerEviction",
                    &format!("Marking for deletion Pod {}/{}", namespace_of(&pod).unwrap_or(""), name_of(&pod)),
                )
                .await;
            util::delete_uid(&ctx.objects, &k.pods, namespace_of(&pod), name_of(&pod), uid_of(&pod)).await?;
        } else {
            let left = tol - dead_for;
            next = Some(next.map_or(left, |n: Duration| n.min(left)));
        }
    }
    Ok(match next {
        Some(d) => Action::requeue(d + Duration::from_millis(20)),
        None => Action::await_change(),
    })
}

#[cfg(test)]
mod tests {
    use super::disrupted;

    #[test]
    fn evictions_stop_when_most_nodes_look_dead_at_once() {
        // One node of three, or of two (a two-node site), is a node failure: evict.
        assert!(!disrupted(1, 3));
        assert!(!disrupted(1, 2));
        assert!(!disrupted(2, 5));
        // Two of three: more than half, but not more than two nodes (upstream's rule).
        assert!(!disrupted(2, 3));
        // Every node, or more than two and at least 55 %: the observer is the likelier fault.
        assert!(disrupted(1, 1));
        assert!(disrupted(3, 3));
        assert!(disrupted(3, 5));
        assert!(disrupted(6, 10));
        assert!(!disrupted(5, 10));
        assert!(!disrupted(0, 10));
    }
}
