//! In-process clusters for tests: an in-memory transport whose links can be cut, and a small
//! harness that starts, stops and restarts nodes over files in a caller-provided directory.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::network::{RaftTransport, TransportError};
use crate::types::{Role, StoreConfig};
use crate::{Error, Result, Store};

/// A network of stores in one process. Calls are delivered by calling the target's
/// [`Store::handle_rpc`]; a cut link or an unregistered target answers `Unreachable`.
#[derive(Default)]
pub struct MemNetwork {
    inner: Mutex<NetInner>,
}

#[derive(Default)]
struct NetInner {
    nodes: HashMap<String, Store>,
    cut: HashSet<(String, String)>,
    silent: HashSet<String>,
}

impl MemNetwork {
    pub fn new() -> Arc<Self> {
        Arc::new(MemNetwork::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The transport a node at `from` uses.
    pub fn transport(self: &Arc<Self>, from: &str) -> Arc<dyn RaftTransport> {
        Arc::new(MemTransport { net: self.clone(), from: from.to_string() })
    }

    /// Makes `store` reachable at `addr`.
    pub fn register(&self, addr: &str, store: Store) {
        self.lock().nodes.insert(addr.to_string(), store);
    }

    /// Makes `addr` unreachable (as if the process died).
    pub fn unregister(&self, addr: &str) -> Option<Store> {
        self.lock().nodes.remove(addr)
    }

    /// Makes `addr` swallow every call without an answer, as a host that lost power does over
    /// QUIC (no reset: callers wait out their own timeouts). Undone by [`Self::heal_all`].
    pub fn black_hole(&self, addr: &str) {
        self.lock().silent.insert(addr.to_string());
    }

    /// Cuts the link between `a` and `b` in both directions.
    pub fn cut(&self, a: &str, b: &str) {
        let mut n = self.lock();
        n.cut.insert((a.to_string(), b.to_string()));
        n.cut.insert((b.to_string(), a.to_string()));
    }

    /// Cuts every link of `a` to the given peers.
    pub fn isolate(&self, a: &str, peers: &[String]) {
        for p in peers {
            if p != a {
                self.cut(a, p);
            }
        }
    }

    /// Restores every link.
    pub fn heal_all(&self) {
        let mut n = self.lock();
        n.cut.clear();
        n.silent.clear();
    }
}

struct MemTransport {
    net: Arc<MemNetwork>,
    from: String,
}

impl RaftTransport for MemTransport {
    fn call(
        &self,
        addr: &str,
        service: &'static str,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>> {
        let target = {
            let n = self.net.lock();
            if n.silent.contains(addr) || n.silent.contains(&self.from) {
                return Box::pin(std::future::pending());
            }
            if n.cut.contains(&(self.from.clone(), addr.to_string())) {
                None
            } else {
                n.nodes.get(addr).cloned()
            }
        };
        let addr = addr.to_string();
        let net = self.net.clone();
        let from = self.from.clone();
        Box::pin(async move {
            let Some(store) = target else {
                return Err(TransportError::Unreachable { addr, reason: "link down".into() });
            };
            let res = store.handle_rpc(service, &body).await;
            // A link cut while the call ran loses the answer.
            if net.lock().cut.contains(&(addr.clone(), from)) {
                return Err(TransportError::Failed { addr, reason: "link went down".into() });
            }
            res.map_err(|e| TransportError::Refused { addr, reason: e.to_string() })
        })
    }
}

/// N stores in one process over a [`MemNetwork`], with files under `dir/node-<id>`.
pub struct TestCluster {
    pub net: Arc<MemNetwork>,
    dir: PathBuf,
    nodes: BTreeMap<u64, Store>,
    tune: fn(&mut StoreConfig),
}

/// The address of node `id` in a [`TestCluster`].
pub fn addr_of(id: u64) -> String {
    format!("node-{id}")
}

async fn wait_until<F: FnMut() -> bool>(timeout: Duration, mut f: F) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

impl TestCluster {
    /// An empty cluster; `tune` adjusts each node's config (for example the snapshot interval).
    pub fn new(dir: &Path, tune: fn(&mut StoreConfig)) -> Self {
        TestCluster { net: MemNetwork::new(), dir: dir.to_path_buf(), nodes: BTreeMap::new(), tune }
    }

    /// Starts `n` nodes: node 1 creates the cluster, the others join it, and voters are
    /// reconciled until 3 (or 5) of them vote.
    pub async fn start(dir: &Path, n: u64) -> Result<Self> {
        Self::start_with(dir, n, |_| {}).await
    }

    pub async fn start_with(dir: &Path, n: u64, tune: fn(&mut StoreConfig)) -> Result<Self> {
        let mut c = TestCluster::new(dir, tune);
        for id in 1..=n {
            c.launch(id).await?;
        }
        c.store(1).initialize().await?;
        c.wait_leader_among(&[1], Duration::from_secs(10)).await?;
        for id in 2..=n {
            c.store(id).join_via(&addr_of(1)).await?;
        }
        let want = if n >= 5 { 5 } else { n.min(3) };
        c.reconcile_until(want as usize, Duration::from_secs(20)).await?;
        Ok(c)
    }

    pub fn config(&self, id: u64) -> StoreConfig {
        let mut cfg = StoreConfig::new(self.dir.join(format!("node-{id}")), id, addr_of(id));
        (self.tune)(&mut cfg);
        cfg
    }

    /// Opens node `id` (from its file if it exists) and connects it to the network.
    pub async fn launch(&mut self, id: u64) -> Result<Store> {
        let addr = addr_of(id);
        let store = Store::open(self.config(id), self.net.transport(&addr)).await?;
        // Every node here runs this release (the daemon learns the members' formats by gossip).
        store.set_cluster_format(crate::version::FORMAT);
        self.net.register(&addr, store.clone());
        self.nodes.insert(id, store.clone());
        Ok(store)
    }

    /// Stops node `id` (its file stays).
    pub async fn stop(&mut self, id: u64) -> Result<()> {
        self.net.unregister(&addr_of(id));
        if let Some(s) = self.nodes.remove(&id) {
            s.shutdown().await?;
        }
        Ok(())
    }

    /// Stops every node.
    pub async fn stop_all(&mut self) -> Result<()> {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await?;
        }
        Ok(())
    }

    /// Node `id`'s store; panics if it is not running (a test helper).
    pub fn store(&self, id: u64) -> &Store {
        &self.nodes[&id]
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.keys().map(|id| addr_of(*id)).collect()
    }

    /// The leader every running node agrees on, waiting up to `timeout`.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<u64> {
        self.wait_leader_among(&self.running(), timeout).await
    }

    /// The leader the given running nodes agree on.
    pub async fn wait_leader_among(&self, ids: &[u64], timeout: Duration) -> Result<u64> {
        let mut found = None;
        let ok = wait_until(timeout, || {
            let leaders: BTreeSet<Option<u64>> = ids.iter().map(|id| self.nodes[id].status().leader).collect();
            match leaders.into_iter().collect::<Vec<_>>().as_slice() {
                [Some(l)] if ids.contains(l) => {
                    found = Some(*l);
                    true
                }
                _ => false,
            }
        })
        .await;
        match (ok, found) {
            (true, Some(l)) => Ok(l),
            _ => Err(Error::NoLeader { reason: "nodes did not agree on a leader in time".into() }),
        }
    }

    /// Calls `reconcile_voters` on every running node (healthy = running) until the leader
    /// sees `voters` voters.
    pub async fn reconcile_until(&self, voters: usize, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        loop {
            let healthy: BTreeSet<u64> = self.nodes.keys().copied().collect();
            for s in self.nodes.values() {
                if let Err(e) = s.reconcile_voters(&healthy, Instant::now()).await {
                    tracing::debug!(error = %e, "reconcile failed");
                }
            }
            if let Ok(l) = self.wait_leader(Duration::from_millis(500)).await {
                let st = self.nodes[&l].status();
                let n = st.members.iter().filter(|m| m.role == Role::Voter).count();
                if n == voters {
                    return Ok(());
                }
            }
            if Instant::now() > end {
                return Err(Error::NoLeader { reason: format!("did not reach {voters} voters") });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
