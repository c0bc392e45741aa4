//! The node's Lease (`kube-node-lease/<node>`, `coordination.k8s.io/v1`), as the kubelet keeps
//! one: `kubectl describe node` shows it and tools that watch node liveness read it.
//!
//! Liveness rides on gossip, so the stored Lease is renewed only as often as the Node's own
//! heartbeat write (every 5 minutes): flash is not worn by a write every 10 s. The API shows
//! `spec.renewTime` of a node gossip holds alive as the last heartbeat heard
//! (the API's node handler), so a read always sees a lease seconds old on a live node.
use std::time::Duration;

use serde_json::{json, Value};
use shoal_kube::{resources, Objects, UpdateMode};

/// Namespace of node leases.
pub use shoal_kube::objects::NODE_LEASE_NAMESPACE as NAMESPACE;
/// `spec.leaseDurationSeconds`, the kubelet's default.
pub const DURATION_S: u64 = 40;

/// `spec.renewTime` format: RFC 3339 with microseconds (Kubernetes MicroTime).
pub use shoal_kube::objects::micro_time;

/// Creates the Lease of `node` (owned by the Node `node_uid`, so it goes with it) when missing,
/// and renews it when its renewTime is `every` old.
pub async fn keep(objects: &Objects, node: &str, node_uid: &str, every: Duration) -> Result<(), shoal_kube::Error> {
    let Some(res) = resources::find("coordination.k8s.io", "leases") else { return Ok(()) };
    let now = jiff::Timestamp::now();
    match objects.get(&res, Some(NAMESPACE), node).await? {
        None => {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": node, "namespace": NAMESPACE, "ownerReferences": [{
                    "apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}]},
                "spec": {"holderIdentity": node, "leaseDurationSeconds": DURATION_S, "renewTime": micro_time(now)},
            });
            match objects.create(&res, Some(NAMESPACE), lease).await {
                Ok(_) | Err(shoal_kube::Error::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Some(_) => {
            objects.modify(&res, Some(NAMESPACE), node, UpdateMode::All, |l| Ok(renew(l, now, every))).await.map(drop)
        }
    }
}

/// Moves `renewTime` to `now` when it is `every` old (or missing, or not ours); whether it did.
fn renew(lease: &mut Value, now: jiff::Timestamp, every: Duration) -> bool {
    let node = lease["metadata"]["name"].clone();
    let stored = lease["spec"]["renewTime"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let due = stored.is_none_or(|t| now.duration_since(t).unsigned_abs() >= every);
    if !due && lease["spec"]["holderIdentity"] == node {
        return false;
    }
    lease["spec"]["holderIdentity"] = node;
    lease["spec"]["leaseDurationSeconds"] = json!(DURATION_S);
    lease["spec"]["renewTime"] = json!(micro_time(now));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_only_when_due() {
        let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap_or_else(|e| panic!("{e}"));
        let mut l = json!({"metadata": {"name": "n1"}, "spec": {"holderIdentity": "n1", "renewTime": micro_time(t0)}});
        let every = Duration::from_secs(300);
        let later = |s: i64| t0.checked_add(jiff::SignedDuration::from_secs(s)).unwrap_or_else(|e| panic!("{e}"));
        assert!(!renew(&mut l, later(299), every));
        assert!(renew(&mut l, later(300), every));
        assert_eq!(l["spec"]["renewTime"], "2026-01-01T00:05:00.000000Z");
        assert_eq!(l["spec"]["leaseDurationSeconds"], 40);
        // Someone else's holder is taken back at once.
        l["spec"]["holderIdentity"] = json!("intruder");
        assert!(renew(&mut l, later(301), every));
        assert_eq!(l["spec"]["holderIdentity"], "n1");
    }

    #[tokio::test]
    async fn the_lease_is_created_once_and_owned_by_the_node() {
        let objects = Objects::new(shoal_store::Store::in_memory());
        let res = resources::lookup("coordination.k8s.io", "leases");
        keep(&objects, "n1", "uid-1", Duration::from_secs(300)).await.unwrap_or_else(|e| panic!("{e}"));
        let l = objects.get(&res, Some(NAMESPACE), "n1").await.unwrap_or_else(|e| panic!("{e}"));
        let l = l.unwrap_or_else(|| panic!("no lease"));
        assert_eq!(l["spec"]["holderIdentity"], "n1");
        assert_eq!(l["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        let rv = l["metadata"]["resourceVersion"].clone();
        keep(&objects, "n1", "uid-1", Duration::from_secs(300)).await.unwrap_or_else(|e| panic!("{e}"));
        let again = objects.get(&res, Some(NAMESPACE), "n1").await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.map(|l| l["metadata"]["resourceVersion"].clone()), Some(rv), "no write when not due");
    }
}
