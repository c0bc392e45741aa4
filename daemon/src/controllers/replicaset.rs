//! ReplicaSet: keeps `replicas` active pods matching the selector, adopting orphans and releasing
//! pods whose labels no longer match; deletes the least valuable pods first when scaling down.
use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::runner::{Action, ControllerSpec, Mapper, ObjKey, ReconcileFuture, Watch};
use super::util::{self, *};
use super::{Context, Kinds, Result};

const COMPONENT: &str = "replicaset-controller";
/// At most this many pods are created or deleted per reconcile (Kubernetes' burst is 500).
const BURST: usize = 500;

/// A live object without a controller, which a ReplicaSet or Deployment may adopt.
pub(crate) fn is_orphan(ev: &shoal_kube::ObjectEvent) -> bool {
    ev.kind != "DELETED" && controller_ref(&ev.object).is_none() && !is_deleting(&ev.object)
}

pub(crate) fn spec(k: &Kinds) -> ControllerSpec {
    ControllerSpec {
        kind: "ReplicaSet",
        primary: k.replicasets.clone(),
        watches: vec![
            Watch { res: k.replicasets.clone(), map: Mapper::Itself },
            Watch { res: k.pods.clone(), map: Mapper::Owner("ReplicaSet") },
            Watch { res: k.pods.clone(), map: Mapper::NamespaceIf(is_orphan) },
        ],
        on_health_change: false,
        workers: 2,
        single_key: None,
        reconcile: |key, ctx| -> ReconcileFuture { Box::pin(reconcile(key, ctx)) },
    }
}

/// Ranks pods for deletion: the first is deleted first (Kubernetes' ActivePods ordering).
pub(crate) fn deletion_order(a: &Value, b: &Value) -> Ordering {
    let assigned = |p: &Value| p["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
    let phase_rank = |p: &Value| match pod_phase(p) {
        "Pending" => 0,
        "Unknown" => 1,
        _ => 2,
    };
    let ready_since = |p: &Value| pod_condition(p, "Ready").and_then(|c| parse_time(&c["lastTransitionTime"]));
    let created = |p: &Value| parse_time(&p["metadata"]["creationTimestamp"]);
    assigned(a)
        .cmp(&assigned(b))
        .then(phase_rank(a).cmp(&phase_rank(b)))
        .then(pod_is_ready(a).cmp(&pod_is_ready(b)))
        // Ready for less time first.
        .then_with(|| {
            if pod_is_ready(a) && pod_is_ready(b) {
                ready_since(b).cmp(&ready_since(a))
            } else {
                Ordering::Equal
            }
        })
        // More restarts first.
        .then(restart_count(b).cmp(&restart_count(a)))
        // Newer first.
        .then(created(b).cmp(&created(a)))
}

pub(crate) async fn reconcile(key: ObjKey, ctx: Arc<Context>) -> Result<Action> {
    let k = &ctx.kinds;
    let Some(rs) = util::get(&ctx.objects, &k.replicasets, key.ns(), &key.name).await? else {
        return Ok(Action::await_change());
    };
    if is_deleting(&rs) {
        return Ok(Action::await_change());
    }
    let uid = uid_of(&rs).to_string();
    let selector = &rs["spec"]["selector"];
    let all_pods = util::list(&ctx.objects, &k.pods, key.ns()).await?;
    let mut owned: Vec<Value> = Vec::new();
    for p in all_pods {
        let matches = selector_matches(selector, labels_of(&p));
        match controller_ref(&p) {
            Some(r) if r["uid"].as_str() == Some(uid.as_str()) => {
                if matches {
                    owned.push(p);
                } else {
                    util::release(&ctx.objects, &k.pods, &p, &uid).await?;
                }
            }
            None if matches && pod_is_active(&p) => {
                util::adopt(&ctx.objects, &k.pods, &p, &rs).await?;
                owned.push(p);
            }
            _ => {}
        }
    }
    let mut active: Vec<Value> = owned.iter().filter(|p| pod_is_active(p)).cloned().collect();
    let want = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
    let name = key.name.clone();
    let mut refused = false;
    if active.len() < want {
        let n = (want - active.len()).min(BURST);
        for _ in 0..n {
            let pod = pod_from_template(&rs["spec"]["template"], &rs, &format!("{name}-"));
            let Some(created) = super::create_pod(&ctx, COMPONENT, &rs, key.ns(), pod).await? else {
                refused = true;
                break;
            };
            ctx.events.normal(COMPONENT, &rs, "SuccessfulCreate", &format!("Created pod: {}", name_of(&created))).await;
            active.push(created);
        }
    } else if active.len() > want {
        active.sort_by(deletion_order);
        let n = (active.len() - want).min(BURST);
        let doomed: Vec<Value> = active.drain(..n).collect();
        for p in doomed {
            util::delete_pod(&ctx.objects, &k.pods, &p).await?;
            ctx.events.normal(COMPONENT, &rs, "SuccessfulDelete", &format!("Deleted pod: {}", name_of(&p))).await;
        }
    }

    // Status from what is active now.
    let min_ready = Duration::from_secs(rs["spec"]["minReadySeconds"].as_u64().unwrap_or(0));
    let now = now();
    let template_labels = &rs["spec"]["template"]["metadata"]["labels"];
    let mut ready = 0;
    let mut available = 0;
    let mut fully_labeled = 0;
    let mut next: Option<Duration> = None;
    for p in &active {
        if pod_is_ready(p) {
            ready += 1;
        }
        let (avail, wait) = pod_availability(p, min_ready, now);
        if avail {
            available += 1;
        }
        if let Some(w) = wait {
            next = Some(next.map_or(w, |n: Duration| n.min(w)));
        }
        let labeled = template_labels
            .as_object()
            .is_none_or(|tl| tl.iter().all(|(lk, lv)| p["metadata"]["labels"].get(lk) == Some(lv)));
        if labeled {
            fully_labeled += 1;
        }
    }
    let mut status = rs["status"].as_object().cloned().unwrap_or_default();
    status.insert("replicas".into(), json!(active.len()));
    status.insert("fullyLabeledReplicas".into(), json!(fully_labeled));
    status.insert("readyReplicas".into(), json!(ready));
    status.insert("availableReplicas".into(), json!(available));
    status.insert("observedGeneration".into(), json!(generation_of(&rs)));
    util::write_status(&ctx.objects, &k.replicasets, &rs, Value::Object(status)).await?;
    if refused {
        next = Some(next.map_or(super::REFUSED_RETRY, |n| n.min(super::REFUSED_RETRY)));
    }
    Ok(match next {
        Some(d) => Action::requeue(d + Duration::from_millis(50)),
        None => Action::await_change(),
    })
}
