//! The scheduler: binds pending pods (`spec.nodeName` empty, `schedulerName` default-scheduler)
//! to nodes. It runs on the Raft leader next to the controllers, on the same reconcile runner.
//!
//! One pass looks at every pending pod in priority and age order against one snapshot of nodes
//! and bound pods, filtering ([`filter`]) then scoring ([`score`]), and binds by writing
//! `spec.nodeName` with the pod's resourceVersion as precondition: a pod that changed or was
//! bound by someone else (a previous leader) is left to the next pass, so no pod is bound twice.
//! A pod that fits nowhere gets `PodScheduled=False`, reason `Unschedulable`, with the message
//! `kubectl describe` shows, and is retried whenever pods or nodes change; if it has a higher
//! priority than pods in the way, it preempts them ([`preempt`]).
//!
//! Image platforms: a node may list, in the annotation [`IMAGE_PLATFORMS_ANNOTATION`], the
//! platforms each of its images offers (all the manifests of the image's index, or the one
//! platform of a single-manifest image). A node whose `kubernetes.io/os`/`kubernetes.io/arch`
//! none of a pod's images offers is filtered out. Images that no node reports are not judged:
//! the pull on the chosen node then fails with the platforms the image offers.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_kube::{ObjectEvent, Objects, UpdateMode};
use tokio_util::sync::CancellationToken;

use crate::reconcile::runner::{self, Action, ControllerSpec, Mapper, ObjKey, ReconcileFuture, Watch};
use crate::reconcile::util::{self, *};
use crate::reconcile::{Context, ControllerConfig, Result};

pub(crate) mod filter;
pub(crate) mod preempt;
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

pub use crate::reconcile::images::{image_platforms_annotation, IMAGE_PLATFORMS_ANNOTATION};

/// The cluster as one pass sees it.
pub(crate) struct Snapshot {
    pub nodes: Vec<Value>,
    pub usage: BTreeMap<String, NodeUse>,
    /// Bound, non-terminal pods.
    pub bound: Vec<Value>,
    /// Indexes into `bound` of pods with required anti-affinity terms (checked against every
    /// incoming pod, so kept apart from the rest).
    pub anti_affinity: Vec<usize>,
    /// Platforms each image offers, as the nodes holding it report (normalised image name).
    pub image_platforms: HashMap<String, BTreeSet<String>>,
    /// PersistentVolumeClaims and PersistentVolumes, loaded when a pending pod uses a claim.
    pub pvcs: Vec<Value>,
    pub pvs: Vec<Value>,
}

impl Snapshot {
    pub(crate) fn new(nodes: Vec<Value>, pods: &[Value]) -> Snapshot {
        let mut image_platforms: HashMap<String, BTreeSet<String>> = HashMap::new();
        for n in &nodes {
            let Some(a) = n["metadata"]["annotations"][IMAGE_PLATFORMS_ANNOTATION].as_str() else { continue };
            let Ok(m) = serde_json::from_str::<BTreeMap<String, BTreeSet<String>>>(a) else {
                tracing::debug!(node = %name_of(n), "unreadable image platforms annotation");
                continue;
            };
            for (img, ps) in m {
                image_platforms.entry(score::normalise_image(&img)).or_default().extend(ps);
            }
        }
        let mut s = Snapshot {
            nodes,
            usage: BTreeMap::new(),
            bound: Vec::new(),
            anti_affinity: Vec::new(),
            image_platforms,
            pvcs: Vec::new(),
            pvs: Vec::new(),
        };
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

    /// Takes a bound pod off a node (preemption's what-if).
    pub(crate) fn remove(&mut self, node: &str, pod: &Value) {
        let same = |o: &Value| {
            o["spec"]["nodeName"].as_str() == Some(node)
                && if uid_of(pod).is_empty() {
                    namespace_of(o) == namespace_of(pod) && name_of(o) == name_of(pod)
                } else {
                    uid_of(o) == uid_of(pod)
                }
        };
        let Some(i) = self.bound.iter().position(same) else { return };
        self.bound.remove(i);
        self.anti_affinity.retain(|j| *j != i);
        for j in self.anti_affinity.iter_mut() {
            if *j > i {
                *j -= 1;
            }
        }
        self.unreserve(node, pod);
    }

    /// Holds a pod's resources on a node without placing it there (a nominated pod).
    pub(crate) fn reserve(&mut self, node: &str, pod: &Value) {
        let u = self.usage.entry(node.to_string()).or_default();
        for (r, q) in pod_requests(pod) {
            *u.requested.entry(r).or_insert(0) += q;
        }
        u.pods += 1;
        u.host_ports.extend(host_ports(pod));
    }

    fn unreserve(&mut self, node: &str, pod: &Value) {
        let Some(u) = self.usage.get_mut(node) else { return };
        for (r, q) in pod_requests(pod) {
            if let Some(x) = u.requested.get_mut(&r) {
                *x -= q;
            }
        }
        u.pods -= 1;
        for hp in host_ports(pod) {
            if let Some(i) = u.host_ports.iter().position(|x| *x == hp) {
                u.host_ports.remove(i);
            }
        }
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

/// The "0/3 nodes are available: ..." message, for a pod that cannot preempt either.
#[cfg(test)]
pub(crate) fn unschedulable_message(total: usize, reasons: &BTreeMap<String, usize>) -> String {
    let why = BTreeMap::from([(preempt::NOT_HELPFUL.to_string(), total)]);
    failure_message(total, reasons, Some(&preempt::message(total, &why)))
}

/// "0/3 nodes are available: <filter reasons>.", then what preemption found, if anything.
pub(crate) fn failure_message(total: usize, reasons: &BTreeMap<String, usize>, preemption: Option<&str>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    let mut msg = format!("0/{total} nodes are available: {}.", parts.join(", "));
    if let Some(p) = preemption {
        msg.push(' ');
        msg.push_str(p);
    }
    msg
}

/// PriorityClass objects, where the API serves them.
async fn priority_classes(ctx: &Context) -> Result<Vec<Value>> {
    match shoal_kube::resources::find("scheduling.k8s.io", "priorityclasses") {
        Some(res) => util::list(&ctx.objects, &res, None).await,
        None => Ok(Vec::new()),
    }
}

/// One scheduling pass over every pending pod.
pub(crate) async fn schedule_pending(ctx: Arc<Context>) -> Result<Action> {
    let k = &ctx.kinds;
    let started = std::time::Instant::now();
    let nodes = util::list(&ctx.objects, &k.nodes, None).await?;
    let pods = util::list(&ctx.objects, &k.pods, None).await?;
    let mut pending: Vec<Value> = pods.iter().filter(|p| is_pending(p)).cloned().collect();
    if pending.is_empty() {
        return Ok(Action::await_change());
    }
    let prio = preempt::Priorities::new(&priority_classes(&ctx).await?);
    pending.sort_by_key(|p| (-prio.of(p), parse_time(&p["metadata"]["creationTimestamp"]), name_of(p).to_string()));
    let mut snap = Snapshot::new(nodes, &pods);
    if pending.iter().any(|p| !crate::reconcile::volumes::claim_names(p).is_empty()) {
        snap.pvcs = util::list(&ctx.objects, &k.pvcs, None).await?;
        if let Some(pvs) = shoal_kube::resources::find("", "persistentvolumes") {
            snap.pvs = util::list(&ctx.objects, &pvs, None).await?;
        }
    }
    let mut any_unschedulable = false;
    let mut binds: Vec<(Value, String)> = Vec::new();
    let mut unschedulable: Vec<(Value, String)> = Vec::new();
    let mut pdbs: Option<Vec<Value>> = None;
    for pod in pending {
        match filter::feasible(&snap, &pod) {
            Ok(candidates) => {
                // A nominated pod goes to its nominated node if that node still fits.
                let nominated =
                    pod["status"]["nominatedNodeName"].as_str().filter(|n| candidates.iter().any(|c| c == n));
                let Some(node) = nominated.map(str::to_string).or_else(|| score::best(&snap, &pod, &candidates)) else {
                    continue;
                };
                // Counted as placed right away; a bind that loses its race is retried next pass.
                snap.add(&node, &pod);
                binds.push((pod, node));
                if binds.len() >= BIND_BATCH {
                    bind_all(&ctx, std::mem::take(&mut binds)).await?;
                }
            }
            Err(reasons) => {
                any_unschedulable = true;
                let total = snap.nodes.len();
                if total == 0 {
                    unschedulable.push((pod, "no nodes available to schedule pods".into()));
                    continue;
                }
                if let Some(node) = preempt::waiting_for_victims(&snap, &pod, &prio) {
                    // Already preempted: keep the room for it while its victims terminate.
                    snap.reserve(&node, &pod);
                    continue;
                }
                if !prio.may_preempt(&pod) {
                    let msg = failure_message(
                        total,
                        &reasons,
                        Some("preemption: not eligible due to preemptionPolicy=Never."),
                    );
                    unschedulable.push((pod, msg));
                    continue;
                }
                if pdbs.is_none() {
                    pdbs = Some(util::list(&ctx.objects, &ctx.kinds.pdbs, None).await?);
                }
                match preempt::plan(&mut snap, &pod, &prio, pdbs.as_deref().unwrap_or_default()) {
                    Ok(plan) => {
                        execute_preemption(&ctx, &pod, &plan).await?;
                        snap.reserve(&plan.node, &pod);
                        unschedulable.push((pod, failure_message(total, &reasons, None)));
                    }
                    Err(why) => {
                        let msg = failure_message(total, &reasons, Some(&preempt::message(total, &why)));
                        unschedulable.push((pod, msg));
                    }
                }
            }
        }
        if unschedulable.len() >= BIND_BATCH {
            mark_all_unschedulable(&ctx, std::mem::take(&mut unschedulable)).await?;
        }
    }
    let planned_ms = started.elapsed().as_millis();
    bind_all(&ctx, binds).await?;
    mark_all_unschedulable(&ctx, unschedulable).await?;
    tracing::debug!(pods = pods.len(), planned_ms, pass_ms = started.elapsed().as_millis(), "scheduler pass");
    Ok(if any_unschedulable { Action::requeue(RETRY) } else { Action::await_change() })
}

/// Nominates the node for `pod` and deletes the victims gracefully.
async fn execute_preemption(ctx: &Context, pod: &Value, plan: &preempt::Plan) -> Result<()> {
    let k = &ctx.kinds;
    let node = plan.node.clone();
    let uid = uid_of(pod).to_string();
    tracing::info!(ns = namespace_of(pod).unwrap_or(""), pod = %name_of(pod), node = %node,
        victims = plan.victims.len(), pdb_violations = plan.pdb_violations, "preempting");
    util::modify(&ctx.objects, &k.pods, namespace_of(pod), name_of(pod), UpdateMode::Status, |p| {
        if uid_of(p) != uid || !is_pending(p) || p["status"]["nominatedNodeName"].as_str() == Some(node.as_str()) {
            return false;
        }
        if !p["status"].is_object() {
            p["status"] = json!({});
        }
        p["status"]["nominatedNodeName"] = json!(node);
        true
    })
    .await?;
    for v in &plan.victims {
        if is_deleting(v) {
            continue;
        }
        let vuid = uid_of(v).to_string();
        let ns = namespace_of(v);
        util::modify(&ctx.objects, &k.pods, ns, name_of(v), UpdateMode::Status, |p| {
            if uid_of(p) != vuid || pod_condition(p, "DisruptionTarget").is_some() {
                return false;
            }
            let mut conds = conditions_of(p);
            conds.push(json!({"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                "message": format!("{COMPONENT}: preempting to accommodate a higher priority pod"),
                "lastProbeTime": null, "lastTransitionTime": now_str()}));
            if !p["status"].is_object() {
                p["status"] = json!({});
            }
            p["status"]["conditions"] = Value::Array(conds);
            true
        })
        .await?;
        let grace = v["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
        let pre = shoal_kube::Preconditions { uid: Some(vuid.clone()), resource_version: None };
        match ctx.objects.terminate(&k.pods, ns, name_of(v), grace, pre).await {
            Ok(_) => {
                let msg = format!("Preempted by pod {uid} on node {node}");
                ctx.events.normal(COMPONENT, v, "Preempted", &msg).await;
            }
            Err(shoal_kube::Error::NotFound { .. }) | Err(shoal_kube::Error::Conflict { .. }) => {}
            Err(e) => return Err(write_err(&k.pods, name_of(v))(e)),
        }
    }
    Ok(())
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
    if let Some(st) = next["status"].as_object_mut() {
        st.remove("nominatedNodeName");
    }
    if next["status"]["phase"].is_null() {
        next["status"]["phase"] = json!("Pending");
    }
    match ctx.objects.update(&k.pods, namespace_of(pod), next, UpdateMode::All).await {
        Ok(bound) => {
            tracing::info!(ns = namespace_of(pod).unwrap_or(""), pod = %name_of(pod), node, "pod bound");
            let msg = format!("Successfully assigned {}/{} to {node}", namespace_of(pod).unwrap_or(""), name_of(pod));
            // In the background: the next pass need not wait for the Event's write.
            let events = ctx.events.clone();
            tokio::spawn(async move { events.normal(COMPONENT, &bound, "Scheduled", &msg).await });
            Ok(true)
        }
        Err(shoal_kube::Error::Conflict { .. }) | Err(shoal_kube::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(write_err(&k.pods, name_of(pod))(e)),
    }
}

/// Writes the PodScheduled=False conditions of many pods concurrently, in batches, so that the
/// store commits them together.
async fn mark_all_unschedulable(ctx: &Context, pods: Vec<(Value, String)>) -> Result<()> {
    for chunk in pods.chunks(BIND_BATCH) {
        let results = futures::future::join_all(chunk.iter().map(|(pod, msg)| mark_unschedulable(ctx, pod, msg))).await;
        for r in results {
            r?;
        }
    }
    Ok(())
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
