//! The scheduler: binds pending pods (`spec.nodeName` empty, `schedulerName` default-scheduler)
//! to nodes. It runs on the Raft leader next to the controllers, on the same reconcile runner.
//!
//! One pass looks at every pending pod in priority and age order against one snapshot of nodes
//! and bound pods, filtering ([`filter`]) then scoring ([`score`]), and binds by writing
//! `spec.nodeName` with the pod's resourceVersion as precondition: a pod that changed or was
//! bound by someone else (a previous leader) is left to the next pass, so no pod is bound twice.
//! A pod that fits nowhere gets `PodScheduled=False`, reason `Unschedulable`, with the message
//! `kubectl describe` shows, and is retried whenever pods or nodes change.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_kube::{ObjectEvent, Objects, UpdateMode};
use tokio_util::sync::CancellationToken;

use crate::controllers::runner::{self, Action, ControllerSpec, Mapper, ObjKey, ReconcileFuture, Watch};
use crate::controllers::util::{self, *};
use crate::controllers::{Context, ControllerConfig, Result};

pub(crate) mod filter;
pub(crate) mod score;

#[cfg(test)]
mod tests;

const COMPONENT: &str = "default-scheduler";
pub(crate) const SCHEDULER_NAME: &str = "default-scheduler";
/// Binds written concurrently at most.
const BIND_BATCH: usize = 64;
/// Unschedulable pods are retried at least this often, even if nothing seems to change.
const RETRY: Duration = Duration::from_secs(10);

/// The default scheduler.
#[derive(Debug, Default)]
pub struct Scheduler {}

impl Scheduler {
    pub fn new() -> Self {
        Scheduler {}
    }

    /// Schedules until `shutdown`. Safe to start and stop repeatedly (leader changes).
    pub async fn run(self, objects: Objects, shutdown: CancellationToken) {
        let (_tx, health) = tokio::sync::watch::channel(BTreeMap::new());
        let ctx = match Context::new(objects, health, ControllerConfig::default()) {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(%error, "scheduler cannot start");
                return;
            }
        };
        tracing::info!("scheduler started");
        runner::run_controller(spec(&ctx), ctx.clone(), shutdown).await;
        tracing::info!("scheduler stopped");
    }
}

/// Every pass schedules all pending pods; the one key is "*".
fn all_key() -> ObjKey {
    ObjKey::new(None, ALL)
}

const ALL: &str = "*";

fn pod_event(ev: &ObjectEvent) -> Vec<ObjKey> {
    let p = &ev.object;
    let unbound = p["spec"]["nodeName"].as_str().is_none_or(|n| n.is_empty());
    let frees = ev.kind == "DELETED" || matches!(pod_phase(p), "Succeeded" | "Failed");
    if (unbound && ev.kind != "DELETED") || frees {
        vec![all_key()]
    } else {
        Vec::new()
    }
}

fn node_event(_ev: &ObjectEvent) -> Vec<ObjKey> {
    vec![all_key()]
}

pub(crate) fn spec(ctx: &Context) -> ControllerSpec {
    ControllerSpec {
        kind: "Pod",
        primary: ctx.kinds.pods.clone(),
        watches: vec![
            Watch { res: ctx.kinds.pods.clone(), map: Mapper::Custom(pod_event) },
            Watch { res: ctx.kinds.nodes.clone(), map: Mapper::Custom(node_event) },
        ],
        on_health_change: false,
        workers: 1,
        single_key: Some(ALL),
        reconcile: |_key, ctx| -> ReconcileFuture { Box::pin(schedule_pending(ctx)) },
    }
}

/// What a node already carries.
#[derive(Debug, Default, Clone)]
pub(crate) struct NodeUse {
    /// Requested resources in thousandths, by name ("cpu", "memory", "nvidia.com/gpu", ...).
    pub requested: BTreeMap<String, i128>,
    pub pods: i64,
    /// (protocol, hostIP, hostPort) in use.
    pub host_ports: Vec<(String, String, i64)>,
}

/// The cluster as one pass sees it.
pub(crate) struct Snapshot {
    pub nodes: Vec<Value>,
    pub usage: BTreeMap<String, NodeUse>,
    /// Bound, non-terminal pods.
    pub bound: Vec<Value>,
    /// Indexes into `bound` of pods with required anti-affinity terms (checked against every
    /// incoming pod, so kept apart from the rest).
    pub anti_affinity: Vec<usize>,
}

impl Snapshot {
    pub(crate) fn new(nodes: Vec<Value>, pods: &[Value]) -> Snapshot {
        let mut s = Snapshot { nodes, usage: BTreeMap::new(), bound: Vec::new(), anti_affinity: Vec::new() };
        for p in pods {
            let Some(n) = p["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else { continue };
            if matches!(pod_phase(p), "Succeeded" | "Failed") {
                continue;
            }
            let n = n.to_string();
            s.add(&n, p);
        }
        s
    }

    pub(crate) fn add(&mut self, node: &str, pod: &Value) {
        let u = self.usage.entry(node.to_string()).or_default();
        for (r, q) in pod_requests(pod) {
            *u.requested.entry(r).or_insert(0) += q;
        }
        u.pods += 1;
        u.host_ports.extend(host_ports(pod));
        let mut p = pod.clone();
        p["spec"]["nodeName"] = json!(node);
        if p["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"].is_array() {
            self.anti_affinity.push(self.bound.len());
        }
        self.bound.push(p);
    }
}

/// A pod's resource requests (thousandths): the sum over containers, at least the largest init
/// container, plus overhead. Limits stand in for missing requests, as Kubernetes defaults them.
pub(crate) fn pod_requests(pod: &Value) -> BTreeMap<String, i128> {
    let mut sum: BTreeMap<String, i128> = BTreeMap::new();
    let container_req = |c: &Value| -> BTreeMap<String, i128> {
        let mut m = BTreeMap::new();
        for src in ["limits", "requests"] {
            if let Some(rs) = c["resources"][src].as_object() {
                for (k, v) in rs {
                    if let Some(q) = quantity_milli(v) {
                        m.insert(k.clone(), q);
                    }
                }
            }
        }
        m
    };
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for (k, v) in container_req(c) {
            *sum.entry(k).or_insert(0) += v;
        }
    }
    for c in pod["spec"]["initContainers"].as_array().into_iter().flatten() {
        for (k, v) in container_req(c) {
            let e = sum.entry(k).or_insert(0);
            *e = (*e).max(v);
        }
    }
    if let Some(o) = pod["spec"]["overhead"].as_object() {
        for (k, v) in o {
            if let Some(q) = quantity_milli(v) {
                *sum.entry(k.clone()).or_insert(0) += q;
            }
        }
    }
    sum
}

pub(crate) fn host_ports(pod: &Value) -> Vec<(String, String, i64)> {
    let mut out = Vec::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for p in c["ports"].as_array().into_iter().flatten() {
            if let Some(hp) = p["hostPort"].as_i64().filter(|h| *h > 0) {
                out.push((
                    p["protocol"].as_str().unwrap_or("TCP").to_string(),
                    p["hostIP"].as_str().unwrap_or("0.0.0.0").to_string(),
                    hp,
                ));
            }
        }
    }
    out
}

fn is_pending(p: &Value) -> bool {
    p["spec"]["nodeName"].as_str().is_none_or(|n| n.is_empty())
        && p["spec"]["schedulerName"].as_str().unwrap_or(SCHEDULER_NAME) == SCHEDULER_NAME
        && !is_deleting(p)
        && pod_phase(p) == "Pending"
}

/// The "0/3 nodes are available: ..." message.
pub(crate) fn unschedulable_message(total: usize, reasons: &BTreeMap<String, usize>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    format!(
        "0/{total} nodes are available: {}. preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling.",
        parts.join(", ")
    )
}

/// One scheduling pass over every pending pod.
pub(crate) async fn schedule_pending(ctx: Arc<Context>) -> Result<Action> {
    let k = &ctx.kinds;
    let nodes = util::list(&ctx.objects, &k.nodes, None).await?;
    let pods = util::list(&ctx.objects, &k.pods, None).await?;
    let mut pending: Vec<Value> = pods.iter().filter(|p| is_pending(p)).cloned().collect();
    if pending.is_empty() {
        return Ok(Action::await_change());
    }
    pending.sort_by_key(|p| {
        (
            -(p["spec"]["priority"].as_i64().unwrap_or(0)),
            parse_time(&p["metadata"]["creationTimestamp"]),
            name_of(p).to_string(),
        )
    });
    let mut snap = Snapshot::new(nodes, &pods);
    let mut any_unschedulable = false;
    let mut binds: Vec<(Value, String)> = Vec::new();
    for pod in pending {
        match filter::feasible(&snap, &pod) {
            Ok(candidates) => {
                let Some(node) = score::best(&snap, &pod, &candidates) else { continue };
                // Counted as placed right away; a bind that loses its race is retried next pass.
                snap.add(&node, &pod);
                binds.push((pod, node));
                if binds.len() >= BIND_BATCH {
                    bind_all(&ctx, std::mem::take(&mut binds)).await?;
                }
            }
            Err(reasons) => {
                any_unschedulable = true;
                let msg = if snap.nodes.is_empty() {
                    "no nodes available to schedule pods".to_string()
                } else {
                    unschedulable_message(snap.nodes.len(), &reasons)
                };
                mark_unschedulable(&ctx, &pod, &msg).await?;
            }
        }
    }
    bind_all(&ctx, binds).await?;
    Ok(if any_unschedulable { Action::requeue(RETRY) } else { Action::await_change() })
}

/// Binds a batch concurrently, so that the store can commit the writes together.
async fn bind_all(ctx: &Context, binds: Vec<(Value, String)>) -> Result<()> {
    let results = futures::future::join_all(binds.iter().map(|(pod, node)| bind(ctx, pod, node))).await;
    for r in results {
        r?;
    }
    Ok(())
}

/// Binds with the pod's resourceVersion as precondition; false if the pod changed meanwhile.
async fn bind(ctx: &Context, pod: &Value, node: &str) -> Result<bool> {
    let k = &ctx.kinds;
    let mut next = pod.clone();
    next["spec"]["nodeName"] = json!(node);
    let mut conds = conditions_of(pod);
    conds.retain(|c| c["type"].as_str() != Some("PodScheduled"));
    conds.push(
        json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_str()}),
    );
    if !next["status"].is_object() {
        next["status"] = json!({});
    }
    next["status"]["conditions"] = Value::Array(conds);
    if next["status"]["phase"].is_null() {
        next["status"]["phase"] = json!("Pending");
    }
    match ctx.objects.update(&k.pods, namespace_of(pod), next, UpdateMode::All).await {
        Ok(bound) => {
            tracing::info!(ns = namespace_of(pod).unwrap_or(""), pod = %name_of(pod), node, "pod bound");
            let msg = format!("Successfully assigned {}/{} to {node}", namespace_of(pod).unwrap_or(""), name_of(pod));
            ctx.events.normal(COMPONENT, &bound, "Scheduled", &msg).await;
            Ok(true)
        }
        Err(shoal_kube::Error::Conflict { .. }) | Err(shoal_kube::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(write_err(&k.pods, name_of(pod))(e)),
    }
}

async fn mark_unschedulable(ctx: &Context, pod: &Value, msg: &str) -> Result<()> {
    let current = pod_condition(pod, "PodScheduled");
    let same = current.is_some_and(|c| {
        c["status"].as_str() == Some("False")
            && c["reason"].as_str() == Some("Unschedulable")
            && c["message"].as_str() == Some(msg)
    });
    if same {
        return Ok(());
    }
    let k = &ctx.kinds;
    let uid = uid_of(pod).to_string();
    let msg_owned = msg.to_string();
    let updated = util::modify(&ctx.objects, &k.pods, namespace_of(pod), name_of(pod), UpdateMode::Status, |p| {
        if uid_of(p) != uid || !is_pending(p) {
            return false;
        }
        let mut conds = conditions_of(p);
        conds.retain(|c| c["type"].as_str() != Some("PodScheduled"));
        conds.push(json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg_owned,
            "lastProbeTime": null, "lastTransitionTime": now_str()}));
        if !p["status"].is_object() {
            p["status"] = json!({});
        }
        p["status"]["conditions"] = Value::Array(conds);
        p["status"]["phase"] = json!("Pending");
        true
    })
    .await?;
    if updated.is_some() {
        ctx.events.warning(COMPONENT, pod, "FailedScheduling", msg).await;
    }
    Ok(())
}
