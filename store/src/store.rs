//! The store handle every component holds.
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::encryption::Encryption;
use crate::mem::MemStore;
use crate::network::RaftTransport;
use crate::node::RaftNode;
use crate::state_machine::SnapshotData;
use crate::tables::KvRecord;
use crate::types::{Kv, StoreConfig, StoreStatus, Txn, TxnResult, VoterChange, WatchStream};
use crate::{Error, Result};

/// A cloneable handle on the node's store: the replicated redb store of a cluster member,
/// or an in-memory store for tests and tools.
#[derive(Clone)]
pub struct Store {
    inner: Backend,
    /// Encryption at rest of the Secrets, once the daemon has handed over its key.
    pub(crate) enc: Arc<OnceLock<Encryption>>,
}

/// See [`Store::leader_watch`].
pub struct LeaderWatch {
    rx: Option<tokio::sync::watch::Receiver<openraft::metrics::RaftServerMetrics<u64, crate::raft_types::Node>>>,
}

impl LeaderWatch {
    /// The leader now, as this node knows it; marks the value seen.
    pub fn leader(&mut self) -> Option<u64> {
        self.rx.as_mut().and_then(|rx| rx.borrow_and_update().current_leader)
    }

    /// Waits until the leader or this node's role may have changed since the last
    /// [`LeaderWatch::leader`]. [`Error::Shutdown`] once the store has stopped.
    pub async fn changed(&mut self) -> Result<()> {
        match &mut self.rx {
            Some(rx) => rx.changed().await.map_err(|_| Error::Shutdown),
            None => std::future::pending().await,
        }
    }
}

#[derive(Clone)]
enum Backend {
    Mem(MemStore),
    Raft(Arc<RaftNode>),
}

impl Store {
    /// A store that lives in memory only, for tests and tools.
    pub fn in_memory() -> Self {
        Store { inner: Backend::Mem(MemStore::in_memory()), enc: Arc::default() }
    }

    /// Opens this node's replicated store (`<data_dir>/store.redb`, created if missing) and
    /// starts its Raft member. A new node is not part of any cluster until [`Store::initialize`]
    /// (first node) or [`Store::join_via`] (every other node); a node with state rejoins on its own.
    pub async fn open(cfg: StoreConfig, transport: Arc<dyn RaftTransport>) -> Result<Self> {
        Ok(Store { inner: Backend::Raft(RaftNode::open(cfg, transport).await?), enc: Arc::default() })
    }

    /// Restores a backup file into `<data_dir>/store.redb` as a fresh one-node cluster of
    /// `node_id` at `addr` (the directory must not hold a store yet). Returns the restored
    /// revision. Start the node with [`Store::open`] afterwards; other nodes then join it.
    pub fn restore(file: impl AsRef<Path>, data_dir: impl AsRef<Path>, node_id: u64, addr: &str) -> Result<u64> {
        crate::backup::restore(file.as_ref(), data_dir.as_ref(), node_id, addr)
    }

    /// Whether a backup file holds Secrets sealed with data keys (then restoring it needs the
    /// key-encryption key of the cluster it came from).
    pub fn backup_is_encrypted(file: impl AsRef<Path>) -> Result<bool> {
        let data = crate::backup::read_file(file.as_ref())?;
        Ok(data.kv.iter().any(|(k, _)| k == crate::encryption::KEYRING_KEY))
    }

    /// Makes node `node_id` the only voter of the group recorded in `<data_dir>/store.redb`,
    /// keeping its whole log and state (etcd's `--force-new-cluster`). The node must be
    /// stopped; its former peers must never return with their old data.
    pub fn force_single_voter(data_dir: impl AsRef<Path>, node_id: u64) -> Result<crate::ForceOutcome> {
        crate::force::force_single_voter(data_dir.as_ref(), node_id)
    }

    fn raft(&self, operation: &'static str) -> Result<&Arc<RaftNode>> {
        match &self.inner {
            Backend::Raft(n) => Ok(n),
            Backend::Mem(_) => Err(Error::NotReplicated { operation }),
        }
    }

    /// This node's Raft id (0 for an in-memory store).
    pub fn node_id(&self) -> u64 {
        match &self.inner {
            Backend::Mem(_) => 0,
            Backend::Raft(n) => n.cfg.node_id,
        }
    }

    /// Makes this node a one-member cluster. Does nothing if the node already has state.
    pub async fn initialize(&self) -> Result<()> {
        match &self.inner {
            Backend::Mem(_) => Ok(()),
            Backend::Raft(n) => n.initialize().await,
        }
    }

    /// Whether this node belongs to a cluster (initialized, joined, or restored).
    pub async fn is_initialized(&self) -> Result<bool> {
        match &self.inner {
            Backend::Mem(_) => Ok(true),
            Backend::Raft(n) => n.is_initialized().await,
        }
    }

    /// Asks the member at `addr` to add this node as a learner; it then catches up from the
    /// leader, and `reconcile_voters` may promote it.
    pub async fn join_via(&self, addr: &str) -> Result<()> {
        self.raft("join")?.join_via(addr).await
    }

    /// Adds a learner; works on any member (forwarded to the leader).
    pub async fn add_learner(&self, node_id: u64, addr: impl Into<String>) -> Result<()> {
        self.raft("add learner")?.add_learner(node_id, addr.into()).await
    }

    /// Removes a member from the group for good; works on any member (forwarded to the
    /// leader). A voter is demoted first; when two members remain, the one that does not lead
    /// becomes a learner (the two-node layout). The leader itself cannot be removed.
    pub async fn remove_member(&self, node_id: u64) -> Result<()> {
        self.raft("remove member")?.remove_member(node_id).await
    }

    /// Called periodically on every node with the members gossip sees as healthy. Only the
    /// leader acts: at most one membership change per call (see [`VoterChange`]).
    pub async fn reconcile_voters(&self, healthy: &BTreeSet<u64>, now: Instant) -> Result<Option<VoterChange>> {
        match &self.inner {
            Backend::Mem(_) => Ok(None),
            Backend::Raft(n) => n.reconcile_voters(healthy, now).await,
        }
    }

    /// The peer message format this node writes: the lowest any member reads (see
    /// [`crate::version`]). Starts at format 1 until [`Store::set_cluster_format`] is called.
    pub fn cluster_format(&self) -> u32 {
        match &self.inner {
            Backend::Mem(_) => crate::version::FORMAT,
            Backend::Raft(n) => n.cluster_format(),
        }
    }

    /// Sets the cluster format from what the members gossip ([`crate::version::cluster_format`]).
    pub fn set_cluster_format(&self, format: u32) {
        if let Backend::Raft(n) = &self.inner {
            n.set_cluster_format(format);
        }
    }

    /// Stands for election now (a follower voter only; a leader or learner does nothing).
    /// The leader hands its place over this way: a witness that won an election asks a
    /// caught-up workload voter to stand, and votes for it once its own lease has run out.
    pub async fn stand_for_election(&self) -> Result<()> {
        self.raft("stand for election")?.stand_for_election().await
    }

    /// Follows which node leads (the `leader` of [`Store::status`]), woken on each change
    /// instead of polled. An in-memory store has no leader and never changes.
    pub fn leader_watch(&self) -> LeaderWatch {
        match &self.inner {
            Backend::Mem(_) => LeaderWatch { rx: None },
            Backend::Raft(n) => LeaderWatch { rx: Some(n.server_metrics()) },
        }
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> StoreStatus {
        match &self.inner {
            Backend::Mem(m) => StoreStatus {
                node_id: 0,
                leader: None,
                term: 0,
                applied_index: 0,
                revision: m.revision(),
                members: Vec::new(),
            },
            Backend::Raft(n) => n.status(),
        }
    }

    /// Serves one call from a peer (the receiving side of [`RaftTransport::call`]). Bad input
    /// is an error, never a panic.
    pub async fn handle_rpc(&self, service: &str, body: &[u8]) -> Result<Vec<u8>> {
        self.raft("serve peer call")?.handle_rpc(service, body).await
    }

    /// Writes a consistent copy of the local replica's state to `path`; returns its revision.
    /// Call [`Store::sync`] first for a copy that includes every acknowledged write.
    pub async fn backup(&self, path: impl AsRef<Path>) -> Result<u64> {
        let path = path.as_ref().to_path_buf();
        match &self.inner {
            Backend::Mem(m) => {
                let (kvs, leases, revision) = m.dump();
                let data = SnapshotData {
                    revision,
                    kv: kvs
                        .into_iter()
                        .map(|kv| {
                            let rec = KvRecord {
                                value: kv.value,
                                create_revision: kv.create_revision,
                                mod_revision: kv.mod_revision,
                                lease: kv.lease,
                            };
                            (kv.key, rec)
                        })
                        .collect(),
                    leases,
                    requests: Vec::new(),
                };
                crate::backup::write_file(&path, &data)?;
                Ok(revision)
            }
            Backend::Raft(n) => {
                let n = n.clone();
                tokio::task::spawn_blocking(move || n.backup(&path)).await.map_err(|e| Error::raft("backup", e))?
            }
        }
    }

    /// Stops the Raft member and releases the redb file.
    pub async fn shutdown(&self) -> Result<()> {
        match &self.inner {
            Backend::Mem(_) => Ok(()),
            Backend::Raft(n) => n.shutdown().await,
        }
    }

    /// The current revision of the local replica.
    pub fn revision(&self) -> u64 {
        match &self.inner {
            Backend::Mem(m) => m.revision(),
            Backend::Raft(n) => n.revision(),
        }
    }

    /// One key from the local replica, as stored (sealed values stay sealed).
    pub(crate) async fn raw_get(&self, key: &str) -> Result<Option<Kv>> {
        match &self.inner {
            Backend::Mem(m) => m.get(key).await,
            Backend::Raft(n) => n.get(key),
        }
    }

    /// Every key under `prefix` from the local replica, as stored.
    pub(crate) async fn raw_range(&self, prefix: &str) -> Result<(Vec<Kv>, u64)> {
        match &self.inner {
            Backend::Mem(m) => m.range(prefix).await,
            Backend::Raft(n) => n.range(prefix),
        }
    }

    /// Waits until the local replica has applied everything the leader had committed when
    /// the call started (read index), so a following read is linearizable.
    pub async fn sync(&self) -> Result<()> {
        match &self.inner {
            Backend::Mem(m) => m.sync().await,
            Backend::Raft(n) => n.sync().await,
        }
    }

    /// Runs a transaction as given (values already sealed where they must be).
    pub(crate) async fn raw_txn(&self, txn: Txn) -> Result<TxnResult> {
        match &self.inner {
            Backend::Mem(m) => m.txn(txn).await,
            Backend::Raft(n) => n.txn(txn).await,
        }
    }

    /// Grants a lease with the given TTL; keys put with it are deleted when it expires or is
    /// revoked. Keep it alive with [`Store::lease_keepalive`].
    pub async fn lease_grant(&self, ttl: Duration) -> Result<u64> {
        match &self.inner {
            Backend::Mem(m) => m.lease_grant(ttl).await,
            Backend::Raft(n) => n.lease_grant(ttl).await,
        }
    }

    /// Restarts a lease's TTL; returns the TTL. `Error::LeaseNotFound` once it expired.
    pub async fn lease_keepalive(&self, lease: u64) -> Result<Duration> {
        match &self.inner {
            Backend::Mem(m) => m.lease_keepalive(lease).await,
            Backend::Raft(n) => n.lease_keepalive(lease).await,
        }
    }

    /// Revokes a lease and deletes its keys; returns the store revision after.
    pub async fn lease_revoke(&self, lease: u64) -> Result<u64> {
        match &self.inner {
            Backend::Mem(m) => m.lease_revoke(lease).await,
            Backend::Raft(n) => n.lease_revoke(lease).await,
        }
    }

    /// Watches every key under `prefix`. `after: Some(rev)` delivers every event with a
    /// revision above `rev` (from the retained history first); `None` starts from now.
    /// A revision older than the history is `Error::Compacted`.
    pub async fn watch(&self, prefix: &str, after: Option<u64>) -> Result<WatchStream> {
        let inner = self.raw_watch(prefix, after).await?;
        match self.enc.get() {
            Some(enc) if enc.overlaps(prefix) => Ok(self.opened_watch(inner)),
            _ => Ok(inner),
        }
    }

    pub(crate) async fn raw_watch(&self, prefix: &str, after: Option<u64>) -> Result<WatchStream> {
        match &self.inner {
            Backend::Mem(m) => m.watch(prefix, after).await,
            Backend::Raft(n) => n.watch(prefix, after),
        }
    }
}
