//! Pod priority and preemption.
//!
//! A pod's priority is `spec.priority`; where that is unset, its `priorityClassName` is resolved
//! against the PriorityClass objects (when the API serves `scheduling.k8s.io/v1`) and the two
//! built-in system classes, then the class marked `globalDefault`, else 0.
//!
//! A pending pod that fits nowhere may preempt: on each node where only resources, host ports,
//! anti-affinity or topology spread stand in the way, the scheduler removes every pod of lower
//! priority from its picture of the node, checks that the pod then fits, and gives back
//! ("reprieves") as many of them as still leave room, most important first, PodDisruptionBudget
//! violators before the others. The node whose victims violate the fewest budgets, then whose
//! most important victim has the lowest priority, then the lowest sum of priorities, then the
//! fewest victims, wins. As in Kubernetes, budgets are respected on a best-effort basis: a
//! victim that violates one is chosen only when no plan without it exists. The victims get the
//! `DisruptionTarget` condition and are deleted gracefully; the pod gets
//! `status.nominatedNodeName` and is bound once the victims are gone, while the space stays
//! reserved for it against pods of lower priority.
use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::filter;
use super::Snapshot;
use crate::reconcile::util::*;

/// Priority of the built-in `system-cluster-critical` class.
pub(crate) const SYSTEM_CLUSTER_CRITICAL: i64 = 2_000_000_000;
/// Priority of the built-in `system-node-critical` class.
pub(crate) const SYSTEM_NODE_CRITICAL: i64 = 2_000_001_000;

pub(crate) const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
pub(crate) const NO_VICTIMS: &str = "No preemption victims found for incoming pod";

/// PriorityClasses by name: (value, preemptionPolicy).
#[derive(Debug, Default, Clone)]
pub(crate) struct Priorities {
    classes: HashMap<String, (i64, Option<String>)>,
    global_default: Option<(i64, Option<String>)>,
}

impl Priorities {
    /// From PriorityClass objects (may be empty when the kind is not served).
    pub(crate) fn new(classes: &[Value]) -> Priorities {
        let mut p = Priorities::default();
        p.classes.insert("system-cluster-critical".into(), (SYSTEM_CLUSTER_CRITICAL, None));
        p.classes.insert("system-node-critical".into(), (SYSTEM_NODE_CRITICAL, None));
        let mut defaults: Vec<(i64, Option<String>)> = Vec::new();
        for c in classes {
            let v = c["value"].as_i64().unwrap_or(0);
            let policy = c["preemptionPolicy"].as_str().map(str::to_string);
            if c["globalDefault"].as_bool() == Some(true) {
                defaults.push((v, policy.clone()));
            }
            p.classes.insert(name_of(c).to_string(), (v, policy));
        }
        // Several global defaults: Kubernetes takes the lowest.
        p.global_default = defaults.into_iter().min_by_key(|(v, _)| *v);
        p
    }

    fn class_of(&self, pod: &Value) -> Option<&(i64, Option<String>)> {
        match pod["spec"]["priorityClassName"].as_str().filter(|c| !c.is_empty()) {
            Some(c) => self.classes.get(c),
            None => self.global_default.as_ref(),
        }
    }

    pub(crate) fn of(&self, pod: &Value) -> i64 {
        pod["spec"]["priority"].as_i64().or_else(|| self.class_of(pod).map(|c| c.0)).unwrap_or(0)
    }

    /// `preemptionPolicy: Never` pods wait instead of preempting.
    pub(crate) fn may_preempt(&self, pod: &Value) -> bool {
        let policy = pod["spec"]["preemptionPolicy"]
            .as_str()
            .map(str::to_string)
            .or_else(|| self.class_of(pod).and_then(|c| c.1.clone()));
        policy.as_deref() != Some("Never")
    }
}

/// Can taking pods off the node cure this filter failure?
fn resolvable(reason: &str) -> bool {
    reason.starts_with("Insufficient ")
        || reason == "Too many pods"
        || reason.contains("free ports")
        || reason.contains("anti-affinity")
        || reason.contains("topology spread")
}

/// Victims on one node, and what choosing it costs.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub node: String,
    pub victims: Vec<Value>,
    pub pdb_violations: usize,
}

impl Plan {
    fn cost(&self, prio: &Priorities) -> (usize, i64, i128, usize) {
        let ps: Vec<i64> = self.victims.iter().map(|v| prio.of(v)).collect();
        // Offset so that negative priorities still sum in order, as Kubernetes does.
        let sum: i128 = ps.iter().map(|p| *p as i128 + i32::MAX as i128 + 1).sum();
        (self.pdb_violations, ps.iter().copied().max().unwrap_or(i64::MIN), sum, self.victims.len())
    }
}

/// Which of `pods` (in this order) would be evicted against a PodDisruptionBudget.
fn pdb_violations(pods: &[Value], pdbs: &[Value]) -> Vec<bool> {
    let mut allowed: Vec<i64> = pdbs.iter().map(|b| b["status"]["disruptionsAllowed"].as_i64().unwrap_or(0)).collect();
    pods.iter()
        .map(|p| {
            let mut violated = false;
            for (i, b) in pdbs.iter().enumerate() {
                let sel = &b["spec"]["selector"];
                let empty = sel.as_object().is_none_or(|m| m.is_empty());
                if namespace_of(b) != namespace_of(p) || empty || !selector_matches(sel, labels_of(p)) {
                    continue;
                }
                if b["status"]["disruptedPods"].get(name_of(p)).is_some() {
                    continue;
                }
                allowed[i] -= 1;
                if allowed[i] < 0 {
                    violated = true;
                }
            }
            violated
        })
        .collect()
}

/// The best plan to make room for `pod`, or the per-node reasons why there is none (for the
/// "preemption: ..." part of the message). `snap` is left as it was.
pub(crate) fn plan(
    snap: &mut Snapshot,
    pod: &Value,
    prio: &Priorities,
    pdbs: &[Value],
) -> Result<Plan, BTreeMap<String, usize>> {
    let mine = prio.of(pod);
    let mut why: BTreeMap<String, usize> = BTreeMap::new();
    let mut plans: Vec<Plan> = Vec::new();
    // Most pods (all of equal priority) have nobody to preempt: skip the per-node search then.
    let any_lower = snap.bound.iter().any(|p| prio.of(p) < mine);
    let nodes: Vec<Value> = snap.nodes.clone();
    for node in &nodes {
        let name = name_of(node);
        let reasons = match filter::check(snap, pod, node) {
            Ok(()) => continue,
            Err(rs) => rs,
        };
        if !reasons.iter().all(|r| resolvable(r)) {
            *why.entry(NOT_HELPFUL.into()).or_insert(0) += 1;
            continue;
        }
        if !any_lower {
            *why.entry(NO_VICTIMS.into()).or_insert(0) += 1;
            continue;
        }
        let mut candidates: Vec<Value> = snap
            .bound
            .iter()
            .filter(|p| p["spec"]["nodeName"].as_str() == Some(name) && prio.of(p) < mine)
            .cloned()
            .collect();
        if candidates.is_empty() {
            *why.entry(NO_VICTIMS.into()).or_insert(0) += 1;
            continue;
        }
        for c in &candidates {
            snap.remove(name, c);
        }
        if let Err(rs) = filter::check(snap, pod, node) {
            for c in &candidates {
                snap.add(name, c);
            }
            for r in rs {
                *why.entry(r).or_insert(0) += 1;
            }
            continue;
        }
        // Most important first: higher priority, then the longer running.
        candidates.sort_by_key(|p| (-prio.of(p), parse_time(&p["metadata"]["creationTimestamp"])));
        let violating = pdb_violations(&candidates, pdbs);
        type Flagged = Vec<(Value, bool)>;
        let (bad, good): (Flagged, Flagged) = candidates.into_iter().zip(violating).partition(|(_, v)| *v);
        let mut victims = Vec::new();
        let mut pdb_violations = 0;
        for (c, violates) in bad.into_iter().chain(good) {
            snap.add(name, &c);
            if filter::check(snap, pod, node).is_err() {
                snap.remove(name, &c);
                pdb_violations += usize::from(violates);
                victims.push(c);
            }
        }
        for v in &victims {
            snap.add(name, v);
        }
        plans.push(Plan { node: name.to_string(), victims, pdb_violations });
    }
    plans.into_iter().min_by(|a, b| a.cost(prio).cmp(&b.cost(prio)).then_with(|| a.node.cmp(&b.node))).ok_or(why)
}

/// Has the pod already preempted on its nominated node, with victims still terminating there?
/// Then it waits for them instead of preempting again.
pub(crate) fn waiting_for_victims(snap: &Snapshot, pod: &Value, prio: &Priorities) -> Option<String> {
    let node = pod["status"]["nominatedNodeName"].as_str().filter(|n| !n.is_empty())?;
    let mine = prio.of(pod);
    snap.bound
        .iter()
        .any(|p| p["spec"]["nodeName"].as_str() == Some(node) && is_deleting(p) && prio.of(p) < mine)
        .then(|| node.to_string())
}

/// "preemption: 0/3 nodes are available: ..." for the unschedulable message.
pub(crate) fn message(total: usize, why: &BTreeMap<String, usize>) -> String {
    let mut parts: Vec<String> = why.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    format!("preemption: 0/{total} nodes are available: {}.", parts.join(", "))
}
