//! Glue between the peer transport (QUIC) and the store: Raft RPCs, joins, and the record
//! of every node kept in the store under `/shoal/nodes/`.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use shoal_gossip::transport::{PeerInfo, Transport};
use shoal_store::{RaftTransport, Store, TransportError};

use super::identity::Identity;
use crate::config::Ports;

pub use crate::members::{node_records, NodeRecord, NODES_PREFIX};
/// Transport service a joining node calls to be added to the Raft group.
const ADD_NODE: &str = "cluster/add-node";

impl NodeRecord {
    pub fn of(id: &Identity) -> Self {
        NodeRecord {
            name: id.name.clone(),
            node_id: id.node_id,
            peer_addr: SocketAddr::new(id.advertise, id.peer_port).to_string(),
            gossip_addr: SocketAddr::new(id.advertise, id.gossip_port).to_string(),
            api_addr: SocketAddr::new(id.advertise, id.api_port).to_string(),
        }
    }
}

struct Quic(Transport);

impl RaftTransport for Quic {
    fn call(
        &self,
        addr: &str,
        service: &'static str,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>> {
        let t = self.0.clone();
        let addr = addr.to_string();
        async move {
            let sa: SocketAddr = addr.parse().map_err(|_| TransportError::Unreachable {
                addr: addr.clone(),
                reason: "not a socket address".into(),
            })?;
            t.call_with_timeout(sa, service, body, call_timeout(service)).await.map_err(|e| peer_error(&addr, e))
        }
        .boxed()
    }
}

/// Raft messages to a dead peer must fail fast (a kill -9 leaves the QUIC connection open
/// until its idle timeout), or elections and forwarded writes wait for nothing.
fn call_timeout(service: &str) -> Duration {
    use shoal_store::service;
    // Framed (format 2) names carry a suffix: time them as the service they stand for.
    match service::base(service).0 {
        s if s == service::PROPOSE || s == service::READ_INDEX => Duration::from_secs(2),
        s if s == service::SNAPSHOT => Duration::from_secs(60),
        _ => Duration::from_secs(3),
    }
}

fn peer_error(addr: &str, e: shoal_gossip::Error) -> TransportError {
    use shoal_gossip::Error as G;
    let addr = addr.to_string();
    match e {
        G::Connect { .. } | G::Handshake { .. } | G::ConnectTimeout { .. } => {
            TransportError::Unreachable { addr, reason: e.to_string() }
        }
        G::Timeout { .. } => TransportError::Timeout { addr },
        G::Remote { message, .. } => TransportError::Refused { addr, reason: message },
        other => TransportError::Failed { addr, reason: other.to_string() },
    }
}

/// The store's view of the transport.
pub fn raft_transport(t: Transport) -> Arc<dyn RaftTransport> {
    Arc::new(Quic(t))
}

/// Registers `service` on the peer transport for the other nodes only: a caller without a node
/// certificate is refused (and logged, as a `what`), and so is every call once the node is
/// stopping; `handle` gets the node, the caller and the request body.
pub(crate) fn serve_node_only<F, Fut>(node: &Arc<super::Node>, service: &'static str, what: &'static str, handle: F)
where
    F: Fn(Arc<super::Node>, PeerInfo, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Vec<u8>, String>> + Send + 'static,
{
    let weak = Arc::downgrade(node);
    let handle = Arc::new(handle);
    node.transport.register(
        service,
        Arc::new(move |peer: PeerInfo, body: Vec<u8>| {
            let (weak, handle) = (weak.clone(), handle.clone());
            async move {
                if !peer.is_node() {
                    tracing::warn!(peer = %peer.addr, name = %peer.node_name, "{what} without a node certificate refused");
                    return Err(format!("{what}: only nodes may call {service}"));
                }
                let node = weak.upgrade().ok_or("node is stopping")?;
                handle(node, peer, body).await
            }
            .boxed()
        }),
    );
}

/// Serves the store's RPCs (Raft, forwarded writes, read index) on the transport.
pub fn serve_store(t: &Transport, store: &Store) {
    for service in shoal_store::service::ALL {
        let store = store.clone();
        t.register(
            service,
            Arc::new(move |peer: PeerInfo, body: Vec<u8>| {
                let store = store.clone();
                async move {
                    store_caller_allowed(service, &peer)?;
                    store.handle_rpc(service, &body).await.map_err(|e| e.to_string())
                }
                .boxed()
            }),
        );
    }
}

/// Membership changes through the store's services come from nodes only (a user's certificate
/// from the same CA opens a QUIC connection too).
fn store_caller_allowed(service: &str, peer: &PeerInfo) -> Result<(), String> {
    let (base, _) = shoal_store::service::base(service);
    if base == shoal_store::service::REMOVE_MEMBER_LEADER && !peer.is_node() {
        return Err(format!("{:?} does not hold a node certificate", peer.node_name));
    }
    Ok(())
}

#[derive(Debug, Serialize, Deserialize)]
struct AddNode {
    record: NodeRecord,
    /// The newest format the joining node reads; absent from releases before formats existed
    /// (format 1).
    #[serde(default)]
    format: Option<u32>,
}

/// Start of the refusal a joining node must not retry (it cannot work in this cluster).
const INCOMPATIBLE: &str = "incompatible:";

/// Whether a node reading formats up to `joining` may join a cluster that writes `cluster`:
/// it would be sent messages and entries it cannot read.
fn format_admits(joining: Option<u32>, cluster: u32) -> Result<(), String> {
    let reads = joining.unwrap_or(shoal_store::version::OLDEST_FORMAT);
    if reads < cluster {
        return Err(format!(
            "{INCOMPATIBLE} the cluster writes format {cluster} and this node reads formats up to {reads}: \
             install the cluster's shoal version on it (shoal status shows it), wipe its data dir and join again"
        ));
    }
    Ok(())
}

/// Serves joins: the join handshake itself lives in the transport (token check, certificate);
/// after it, the new node asks to be added to the Raft group with its record.
pub fn serve_joins(t: &Transport, secrets: shoal_gossip::pki::ClusterSecrets, store: Store, _ports: Ports) {
    t.enable_join(secrets, None);
    t.register(
        ADD_NODE,
        Arc::new(move |peer: PeerInfo, body: Vec<u8>| {
            let store = store.clone();
            async move {
                let req: AddNode = serde_json::from_slice(&body).map_err(|e| format!("bad add-node request: {e}"))?;
                if let Err(e) = format_admits(req.format, store.cluster_format()) {
                    tracing::warn!(peer = %peer.addr, name = %peer.node_name, error = %e, "add-node refused");
                    return Err(e);
                }
                let records = node_records(&store).await;
                let record = admitted_record(&peer, req.record, records.values()).map_err(|e| {
                    tracing::warn!(peer = %peer.addr, name = %peer.node_name, error = %e, "add-node refused");
                    e
                })?;
                store.add_learner(record.node_id, record.peer_addr.clone()).await.map_err(|e| e.to_string())?;
                put_record(&store, &record).await.map_err(|e| e.to_string())?;
                Ok(b"{}".to_vec())
            }
            .boxed()
        }),
    );
}

/// The record a node may add for itself: its name is the one of its certificate (never the
/// request's), the caller must hold a node certificate, and a Raft id already recorded for
/// another node cannot be taken over.
fn admitted_record<'a>(
    peer: &PeerInfo,
    mut record: NodeRecord,
    known: impl IntoIterator<Item = &'a NodeRecord>,
) -> Result<NodeRecord, String> {
    if !peer.is_node() {
        return Err(format!("{:?} does not hold a node certificate", peer.node_name));
    }
    if record.name != peer.node_name {
        return Err(format!("certificate is for {:?}, request is for {:?}", peer.node_name, record.name));
    }
    record.name = peer.node_name.clone();
    if let Some(other) = known.into_iter().find(|r| r.node_id == record.node_id && r.name != record.name) {
        return Err(format!("node id {} belongs to node {:?}", record.node_id, other.name));
    }
    Ok(record)
}

/// Writes a node's record if it is missing or changed.
pub async fn put_record(store: &Store, rec: &NodeRecord) -> Result<(), shoal_store::Error> {
    let key = format!("{NODES_PREFIX}{}", rec.name);
    let value = serde_json::to_vec(rec).unwrap_or_default();
    if store.get(&key).await?.is_some_and(|kv| kv.value == value) {
        return Ok(());
    }
    store.txn(shoal_store::Txn::put(key, value)).await?;
    Ok(())
}

/// Asks the node at `addr` to add this node to the cluster; retries until it is done, or
/// until the cluster refuses it for good (an older node than the cluster's format allows).
pub async fn request_membership(t: &Transport, addr: SocketAddr, id: &Identity) -> Result<(), String> {
    let req = AddNode { record: NodeRecord::of(id), format: Some(shoal_store::version::FORMAT) };
    let body = serde_json::to_vec(&req).unwrap_or_default();
    let mut wait = Duration::from_millis(200);
    loop {
        match t.call(addr, ADD_NODE, body.clone()).await {
            Ok(_) => return Ok(()),
            Err(shoal_gossip::Error::Remote { message, .. }) if message.contains(INCOMPATIBLE) => {
                return Err(message);
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "asking to be added to the cluster; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Gossip seeds: the node we join through, and every node the store remembers.
pub async fn gossip_seeds(store: &Store, join: Option<SocketAddr>, gossip_port: u16) -> Vec<SocketAddr> {
    let mut seeds: Vec<SocketAddr> = join.map(|a| SocketAddr::new(a.ip(), gossip_port)).into_iter().collect();
    for rec in node_records(store).await.values() {
        if let Ok(a) = rec.gossip_addr.parse() {
            seeds.push(a);
        }
    }
    for m in store.status().members {
        if let Ok(a) = m.addr.parse::<SocketAddr>() {
            seeds.push(SocketAddr::new(a.ip(), gossip_port));
        }
    }
    seeds.sort();
    seeds.dedup();
    seeds
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shoal_store::service;

    use super::*;

    #[test]
    fn framed_services_get_the_timeouts_of_their_base_service() {
        for format in [1, 2] {
            assert_eq!(super::call_timeout(service::for_format(service::SNAPSHOT, format)), Duration::from_secs(60));
            assert_eq!(super::call_timeout(service::for_format(service::PROPOSE, format)), Duration::from_secs(2));
            assert_eq!(super::call_timeout(service::for_format(service::APPEND, format)), Duration::from_secs(3));
        }
    }

    fn peer(name: &str, orgs: &[&str]) -> PeerInfo {
        PeerInfo {
            addr: "10.0.0.9:7443".parse().unwrap(),
            node_name: name.into(),
            organizations: orgs.iter().map(|o| o.to_string()).collect(),
        }
    }

    fn rec(name: &str, id: u64) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            node_id: id,
            peer_addr: "10.0.0.9:7443".into(),
            gossip_addr: "10.0.0.9:7946".into(),
            api_addr: "10.0.0.9:6443".into(),
        }
    }

    #[test]
    fn only_nodes_may_remove_members() {
        for svc in [service::REMOVE_MEMBER_LEADER, service::for_format(service::REMOVE_MEMBER_LEADER, 2)] {
            let e = store_caller_allowed(svc, &peer("admin", &["system:masters"])).unwrap_err();
            assert!(e.contains("node certificate"), "{e}");
            assert!(store_caller_allowed(svc, &peer("n2", &["system:nodes"])).is_ok());
        }
        assert!(store_caller_allowed(service::APPEND, &peer("n2", &["system:nodes"])).is_ok());
    }

    #[test]
    fn an_older_node_is_refused_by_a_cluster_that_writes_a_newer_format() {
        let now = shoal_store::version::FORMAT;
        assert!(format_admits(Some(now), now).is_ok());
        assert!(format_admits(Some(now + 1), now).is_ok(), "a newer node joins an older cluster");
        assert!(format_admits(None, 1).is_ok(), "a release before formats joins a format-1 cluster");
        // A node that reads one format less than the cluster writes (faked), and one from
        // before formats existed.
        for (old, cluster) in [(Some(now), now + 1), (None, 2)] {
            let e = format_admits(old, cluster).unwrap_err();
            assert!(e.starts_with(INCOMPATIBLE), "{e}");
            assert!(e.contains(&format!("writes format {cluster}")) && e.contains("install"), "{e}");
        }
        // An add-node body from a release before formats parses, with no format.
        let body = serde_json::to_vec(&serde_json::json!({"record": rec("n4", 14)})).unwrap();
        let req: AddNode = serde_json::from_slice(&body).unwrap();
        assert_eq!(req.format, None);
    }

    #[test]
    fn add_node_takes_the_identity_from_the_certificate() {
        let known = [rec("n1", 11), rec("n2", 12)];
        let node = peer("n3", &["system:nodes"]);
        assert_eq!(admitted_record(&node, rec("n3", 13), &known).unwrap(), rec("n3", 13));
        // A node restarted with a fresh data dir takes a new id under its own name.
        assert!(admitted_record(&peer("n2", &["system:nodes"]), rec("n2", 22), &known).is_ok());
        // Posing as another node in the body.
        let e = admitted_record(&node, rec("n1", 13), &known).unwrap_err();
        assert!(e.contains("certificate is for \"n3\""), "{e}");
        // Taking over another node's Raft id (its address would be replaced).
        let e = admitted_record(&node, rec("n3", 11), &known).unwrap_err();
        assert!(e.contains("belongs to node \"n1\""), "{e}");
        // A user's certificate, even the admin's, adds nothing.
        let e = admitted_record(&peer("admin", &["system:masters"]), rec("admin", 14), &known).unwrap_err();
        assert!(e.contains("node certificate"), "{e}");
    }
}
