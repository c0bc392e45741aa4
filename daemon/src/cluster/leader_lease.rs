//! The leader Lease, `kube-system/shoal-leader` (`coordination.k8s.io/v1`): who leads the Raft
//! group and which nodes are its members, where any Kubernetes client (the status page,
//! `kubectl get lease -n kube-system shoal-leader`) reads it with the RBAC it already has.
//!
//! The leader keeps it. `spec.holderIdentity` is the leader's node name; the annotation
//! `shoal.dev/members` lists every Raft member with its role (`n1=voter,n2=voter,w=witness`).
//! It is written when the holder changes, when the members change (at most once per
//! [`MIN_GAP`]), and when it is [`RENEW_AFTER`] old; an idle cluster writes it once per
//! [`RENEW_AFTER`], a flash-friendly pace.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_kube::objects::micro_time;
use shoal_kube::{resources, Objects, UpdateMode};
use tokio_util::sync::CancellationToken;

use super::{Node, ATTR_ROLE};

/// Namespace and name of the leader Lease.
pub(crate) const NAMESPACE: &str = "kube-system";
pub(crate) const NAME: &str = "shoal-leader";
/// Annotation listing the Raft members and their roles.
pub(crate) const MEMBERS: &str = "shoal.dev/members";
/// `spec.leaseDurationSeconds`.
pub(crate) const DURATION_S: u64 = 600;
/// A lease this old is renewed (well before it expires): the pace of the Node heartbeat and
/// the node Leases, so an idle cluster adds no write of its own more often than those.
pub(crate) const RENEW_AFTER: Duration = Duration::from_secs(300);
/// The least time between two writes for a change of members by the same holder.
pub(crate) const MIN_GAP: Duration = Duration::from_secs(10);
/// How often the leader looks at the members.
const POLL: Duration = Duration::from_secs(2);

/// What the Lease should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Want {
    pub holder: String,
    /// `name=role,...`, sorted by name.
    pub members: String,
}

/// `name=role,...` sorted by name; role is `voter`, `learner`, or `witness` (a voter that
/// runs no pods).
pub(crate) fn members_value(members: &BTreeMap<String, &'static str>) -> String {
    members.iter().map(|(n, r)| format!("{n}={r}")).collect::<Vec<_>>().join(",")
}

/// Brings `lease` to `want` at `now` when a write is due; whether it changed it.
pub(crate) fn apply(lease: &mut Value, want: &Want, now: jiff::Timestamp) -> bool {
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default().to_string();
    let renewed = lease["spec"]["renewTime"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let age = renewed.map(|t| now.duration_since(t).unsigned_abs());
    let members = lease["metadata"]["annotations"][MEMBERS].as_str().unwrap_or_default();
    let new_holder = holder != want.holder;
    let due = age.is_none_or(|a| a >= RENEW_AFTER);
    let moved = members != want.members && age.is_none_or(|a| a >= MIN_GAP);
    if !new_holder && !due && !moved {
        return false;
    }
    if new_holder {
        let transitions = lease["spec"]["leaseTransitions"].as_u64().unwrap_or(0);
        if !holder.is_empty() {
            lease["spec"]["leaseTransitions"] = json!(transitions + 1);
        }
        lease["spec"]["acquireTime"] = json!(micro_time(now));
        lease["spec"]["holderIdentity"] = json!(want.holder);
    }
    lease["spec"]["leaseDurationSeconds"] = json!(DURATION_S);
    lease["spec"]["renewTime"] = json!(micro_time(now));
    if !lease["metadata"]["annotations"].is_object() {
        lease["metadata"]["annotations"] = json!({});
    }
    lease["metadata"]["annotations"][MEMBERS] = json!(want.members);
    true
}

/// Creates or updates the Lease to `want` when a write is due.
pub(crate) async fn keep(objects: &Objects, want: &Want) -> Result<(), shoal_kube::Error> {
    let Some(res) = resources::find("coordination.k8s.io", "leases") else { return Ok(()) };
    let now = jiff::Timestamp::now();
    match objects.get(&res, Some(NAMESPACE), NAME).await? {
        None => {
            let mut lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": NAME, "namespace": NAMESPACE},
                "spec": {"leaseTransitions": 0},
            });
            apply(&mut lease, want, now);
            match objects.create(&res, Some(NAMESPACE), lease).await {
                Ok(_) | Err(shoal_kube::Error::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Some(_) => {
            objects.modify(&res, Some(NAMESPACE), NAME, UpdateMode::All, |l| Ok(apply(l, want, now))).await.map(drop)
        }
    }
}

/// What this node, the leader, should write: itself as holder and the members as it sees them.
async fn want(node: &Node) -> Want {
    let st = node.store.status();
    let gossip = node.membership.members();
    let records = crate::members::node_records(&node.store).await;
    let mut members = BTreeMap::new();
    for m in &st.members {
        let g = gossip.iter().find(|g| g.attrs.get("node_id").and_then(|s| s.parse::<u64>().ok()) == Some(m.node_id));
        let name = g
            .map(|g| g.name.clone())
            .or_else(|| records.get(&m.node_id).map(|r| r.name.clone()))
            .unwrap_or_else(|| format!("node-{:x}", m.node_id));
        let witness = if m.node_id == node.identity.node_id {
            node.cfg.node.role == crate::config::NodeRole::Witness
        } else {
            g.and_then(|g| g.attrs.get(ATTR_ROLE)).is_some_and(|r| r == "witness")
        };
        let role = match m.role {
            shoal_store::Role::Learner => "learner",
            shoal_store::Role::Voter if witness => "witness",
            shoal_store::Role::Voter => "voter",
        };
        members.insert(name, role);
    }
    Want { holder: node.identity.name.clone(), members: members_value(&members) }
}

/// Keeps the leader Lease while this node leads (until `stop`).
pub(crate) async fn run(node: Arc<Node>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if node.store.status().leader != Some(node.identity.node_id) {
            continue;
        }
        let want = want(&node).await;
        if let Err(e) = keep(&node.objects, &want).await {
            tracing::debug!(error = %e, "keeping the leader lease; retrying");
        }
    }
}

#[cfg(test)]
mod tests;
