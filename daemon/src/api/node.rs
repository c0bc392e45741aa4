//! Node objects as read through the API: the conditions' `lastHeartbeatTime` comes from the
//! live gossip state, so `kubectl describe node` shows a heartbeat seconds old on a cluster that
//! writes nothing while idle (the node agent stores it only every few minutes).
use std::time::SystemTime;

use serde_json::{json, Value};
use shoal_kube::Resource;

/// Live heartbeats of the cluster's nodes.
pub trait NodeHeartbeats: Send + Sync {
    /// When a heartbeat of `node` was last heard, while gossip holds it alive; None otherwise.
    fn last_heard(&self, node: &str) -> Option<SystemTime>;
}

/// Moves the `lastHeartbeatTime` of a Node's known conditions up to the live heartbeat. A
/// condition the node lifecycle controller set to Unknown (the node is unreachable) keeps its
/// stored time, as does every condition of a node gossip does not hold alive.
///
/// A node's Lease (`kube-node-lease/<node>`, held by the node) shows the live heartbeat as its
/// `spec.renewTime` the same way.
pub(crate) fn live_heartbeat(beats: Option<&dyn NodeHeartbeats>, res: &Resource, obj: &mut Value) {
    let Some(beats) = beats else { return };
    if res.group == "coordination.k8s.io" && res.plural == "leases" {
        live_lease(beats, obj);
        return;
    }
    if !(res.group.is_empty() && res.plural == "nodes") {
        return;
    }
    let Some(heard) = obj["metadata"]["name"].as_str().and_then(|n| beats.last_heard(n)) else { return };
    let heard = jiff::Timestamp::try_from(heard).ok();
    let Some(heard) = heard else { return };
    let Some(conds) = obj["status"]["conditions"].as_array_mut() else { return };
    for c in conds {
        if c["status"] == "Unknown" {
            continue;
        }
        let stored = c["lastHeartbeatTime"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok());
        if stored.is_none_or(|t| t < heard) {
            c["lastHeartbeatTime"] = json!(heard.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        }
    }
}

fn live_lease(beats: &dyn NodeHeartbeats, lease: &mut Value) {
    if lease["metadata"]["namespace"] != shoal_kube::objects::NODE_LEASE_NAMESPACE {
        return;
    }
    let Some(node) = lease["metadata"]["name"].as_str() else { return };
    if lease["spec"]["holderIdentity"].as_str() != Some(node) {
        return;
    }
    let Some(heard) = beats.last_heard(node).and_then(|t| jiff::Timestamp::try_from(t).ok()) else { return };
    let stored = lease["spec"]["renewTime"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok());
    if stored.is_none_or(|t| t < heard) {
        lease["spec"]["renewTime"] = json!(shoal_kube::objects::micro_time(heard));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    struct Beats(Option<SystemTime>);
    impl NodeHeartbeats for Beats {
        fn last_heard(&self, _: &str) -> Option<SystemTime> {
            self.0
        }
    }

    fn nodes() -> Resource {
        shoal_kube::resources::lookup("", "nodes")
    }

    fn node() -> Value {
        json!({"metadata": {"name": "n1"}, "status": {"conditions": [
            {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-01-01T00:00:00Z"},
            {"type": "MemoryPressure", "status": "Unknown", "lastHeartbeatTime": "2026-01-01T00:00:00Z"},
        ]}})
    }

    #[test]
    fn a_live_node_shows_its_gossip_heartbeat() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut n = node();
        live_heartbeat(Some(&Beats(Some(t))), &nodes(), &mut n);
        assert_eq!(n["status"]["conditions"][0]["lastHeartbeatTime"], "2027-01-15T08:00:00Z");
        assert_eq!(n["status"]["conditions"][1]["lastHeartbeatTime"], "2026-01-01T00:00:00Z", "Unknown stays");
    }

    #[test]
    fn dead_nodes_older_beats_and_other_kinds_are_left_alone() {
        let mut n = node();
        live_heartbeat(Some(&Beats(None)), &nodes(), &mut n);
        assert_eq!(n, node());
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        live_heartbeat(Some(&Beats(Some(old))), &nodes(), &mut n);
        assert_eq!(n, node());
        let mut cm = node();
        let now = Some(SystemTime::now());
        live_heartbeat(Some(&Beats(now)), &shoal_kube::resources::lookup("", "configmaps"), &mut cm);
        assert_eq!(cm, node());
        live_heartbeat(None, &nodes(), &mut n);
        assert_eq!(n, node());
    }

    #[test]
    fn a_live_nodes_lease_is_renewed_as_read() {
        let leases = shoal_kube::resources::lookup("coordination.k8s.io", "leases");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let lease = |ns: &str, holder: &str| {
            json!({"metadata": {"name": "n1", "namespace": ns}, "spec": {"holderIdentity": holder,
                "renewTime": "2026-01-01T00:00:00.000000Z"}})
        };
        let mut l = lease("kube-node-lease", "n1");
        live_heartbeat(Some(&Beats(Some(t))), &leases, &mut l);
        assert_eq!(l["spec"]["renewTime"], "2027-01-15T08:00:00.000000Z");
        // Other namespaces, other holders and dead nodes keep what is stored.
        for (mut l, beat) in [
            (lease("default", "n1"), Some(t)),
            (lease("kube-node-lease", "someone"), Some(t)),
            (lease("kube-node-lease", "n1"), None),
        ] {
            let before = l.clone();
            live_heartbeat(Some(&Beats(beat)), &leases, &mut l);
            assert_eq!(l, before);
        }
    }
}
