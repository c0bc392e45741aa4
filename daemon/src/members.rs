//! The cluster's members as the store records them (`/shoal/nodes/<name>`): what any part of
//! the daemon reads to reach another node (its peer, gossip and API addresses). Written by
//! `cluster` when a node joins; a leaf, so the node agent reads it without knowing `cluster`.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_store::Store;

/// Store prefix of node records.
pub const NODES_PREFIX: &str = "/shoal/nodes/";

/// A node as the cluster remembers it, `/shoal/nodes/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub node_id: u64,
    pub peer_addr: String,
    pub gossip_addr: String,
    pub api_addr: String,
}

/// Every node record in the local replica, by node id.
pub async fn node_records(store: &Store) -> BTreeMap<u64, NodeRecord> {
    let Ok((kvs, _)) = store.range(NODES_PREFIX).await else { return BTreeMap::new() };
    kvs.iter().filter_map(|kv| serde_json::from_slice::<NodeRecord>(&kv.value).ok()).map(|r| (r.node_id, r)).collect()
}
