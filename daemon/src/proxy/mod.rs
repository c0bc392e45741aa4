//! The Service data plane of one node: watches Services, EndpointSlices and Endpoints in the
//! local replica and keeps one nftables table (`ip shoal-svc`) in step with them, bursts of
//! changes coalesced. Each change is one nft transaction: the first after start (or after a
//! failed apply) replaces the table, later ones update it in place (only the chains and sets
//! that changed are rewritten, stale ones deleted), which keeps the ClientIP affinity sets'
//! entries and makes a change to one Service cheap however many there are. Answers the healthCheckNodePort of
//! externalTrafficPolicy Local Services.
mod health;
pub mod rules;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_kube::{resources, Objects, Resource};
use shoal_netlink::nft::Table;
use shoal_netlink::{LinuxNft, Nft};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use rules::{ruleset, NodeInfo};

/// How long a burst of changes may keep arriving before the table is rebuilt.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// A full rebuild also happens this often, whatever the watches say.
const RESYNC: Duration = Duration::from_secs(30);
/// After a failed apply.
const RETRY: Duration = Duration::from_secs(1);

/// Errors of one sync.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("list {plural}")]
    List {
        plural: &'static str,
        #[source]
        source: shoal_kube::Error,
    },
    #[error("apply the service ruleset")]
    Apply(#[source] Box<shoal_netlink::Error>),
    #[error("apply task failed")]
    Join(#[source] tokio::task::JoinError),
}

/// The node's Service proxy.
pub struct Proxy {
    objects: Objects,
    node: NodeInfo,
    node_ips: Vec<IpAddr>,
    nft: Arc<dyn Nft>,
    sysctl_root: Option<PathBuf>,
    health: bool,
}

struct Kinds {
    services: Resource,
    slices: Resource,
    endpoints: Resource,
    nodes: Resource,
}

fn kinds() -> Option<Kinds> {
    Some(Kinds {
        services: resources::find("", "services")?,
        slices: resources::find("discovery.k8s.io", "endpointslices")?,
        endpoints: resources::find("", "endpoints")?,
        nodes: resources::find("", "nodes")?,
    })
}

impl Proxy {
    /// A proxy for `node_name`, applying rules with `nft` in the current network namespace.
    pub fn new(objects: Objects, node_name: String, node_ips: Vec<IpAddr>) -> Proxy {
        Proxy {
            objects,
            node: NodeInfo { name: node_name, pod_cidr: "10.42.0.0/16".into() },
            node_ips,
            nft: Arc::new(LinuxNft::new()),
            sysctl_root: Some(PathBuf::from("/proc/sys")),
            health: true,
        }
    }

    /// Applies rulesets through `nft` instead (a netns-bound [`LinuxNft`], or a fake).
    pub fn with_nft(mut self, nft: Arc<dyn Nft>) -> Proxy {
        self.nft = nft;
        self
    }

    /// The cluster pod CIDR (default 10.42.0.0/16).
    pub fn with_pod_cidr(mut self, cidr: impl Into<String>) -> Proxy {
        self.node.pod_cidr = cidr.into();
        self
    }

    /// Where `net/bridge/bridge-nf-call-iptables` is set (None: leave sysctls alone).
    pub fn with_sysctl_root(mut self, root: Option<PathBuf>) -> Proxy {
        self.sysctl_root = root;
        self
    }

    /// Whether to serve healthCheckNodePorts (default yes).
    pub fn with_health_checks(mut self, on: bool) -> Proxy {
        self.health = on;
        self
    }

    /// Keeps the table in step with the replica until `shutdown`. The table stays in place
    /// afterwards, so Services keep working while the daemon restarts.
    pub async fn run(self, shutdown: CancellationToken) {
        let Some(k) = kinds() else {
            tracing::error!("service resources missing from the resource table; proxy not started");
            return;
        };
        if let Some(root) = &self.sysctl_root {
            // Pods on one bridge answer each other directly; their replies must still pass
            // conntrack to be un-DNATed.
            let path = root.join("net/bridge/bridge-nf-call-iptables");
            if let Err(e) = std::fs::write(&path, "1") {
                tracing::warn!(path = %path.display(), error = %e, "cannot enable bridge netfilter; same-node pod to service traffic may fail");
            }
        }
        let changed = Arc::new(Notify::new());
        let watch_stop = shutdown.child_token();
        for res in [&k.services, &k.slices, &k.endpoints, &k.nodes] {
            tokio::spawn(crate::reconcile::watch::notify_on_changes(
                self.objects.clone(),
                res.clone(),
                changed.clone(),
                "proxy",
                RETRY,
                watch_stop.clone(),
            ));
        }
        let health = health::HealthServers::new(self.node_ips.clone());
        // The table as the last successful apply left it; None: replace it whole next time.
        let mut last: Option<Table> = None;
        let mut next_wait = Duration::ZERO;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = changed.notified() => {}
                _ = tokio::time::sleep(next_wait) => {}
            }
            // Coalesce a burst of changes into one rebuild.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(DEBOUNCE) => {}
            }
            let started = Instant::now();
            match self.sync(&k, &mut last, &health).await {
                Ok(applied) => {
                    if applied {
                        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "service rules applied");
                    }
                    next_wait = RESYNC;
                }
                Err(e) => {
                    tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "service rules not applied");
                    last = None;
                    next_wait = RETRY;
                }
            }
        }
        watch_stop.cancel();
        health.stop_all();
    }

    /// Reads the replica and applies the table if it changed; returns whether it applied.
    async fn sync(
        &self,
        k: &Kinds,
        last: &mut Option<Table>,
        health: &health::HealthServers,
    ) -> Result<bool, ProxyError> {
        let started = std::time::Instant::now();
        let list = |res: &Resource, plural: &'static str| {
            let objects = self.objects.clone();
            let res = res.clone();
            async move {
                objects.list(&res, None).await.map(|(v, _)| v).map_err(|source| ProxyError::List { plural, source })
            }
        };
        let services: Vec<Value> = list(&k.services, "services").await?;
        let slices: Vec<Value> = list(&k.slices, "endpointslices").await?;
        let endpoints: Vec<Value> = list(&k.endpoints, "endpoints").await?;
        let nodes: Vec<Value> = list(&k.nodes, "nodes").await?;
        let mut ports = rules::service_ports(&services, &slices, &endpoints);
        rules::without_unready(&mut ports, &rules::unready_nodes(&nodes, &self.node.name));
        if self.health {
            health.update(rules::health_checks(&ports, &self.node.name));
        }
        let table = rules::render(&ports, &self.node);
        if last.as_ref() == Some(&table) {
            crate::metrics::proxy::synced(started.elapsed(), ports.len(), None);
            return Ok(false);
        }
        // In place when the kernel still holds what we applied last, so ClientIP affinity
        // entries survive endpoint changes; whole otherwise (at start, after a failure).
        let text = match last.as_ref() {
            Some(prev) => table.update_text(prev),
            None => table.replace_text(),
        };
        let nft = self.nft.clone();
        // Until this apply succeeds the kernel's table is unknown.
        *last = None;
        tokio::task::spawn_blocking(move || nft.apply(&text).map_err(Box::new))
            .await
            .map_err(ProxyError::Join)?
            .map_err(ProxyError::Apply)?;
        crate::metrics::proxy::synced(started.elapsed(), ports.len(), Some(&table));
        *last = Some(table);
        Ok(true)
    }

    /// Builds and applies the table once from the replica (tests, benchmarks).
    pub async fn sync_once(&self) -> Result<(), ProxyError> {
        let Some(k) = kinds() else { return Ok(()) };
        let health = health::HealthServers::new(Vec::new());
        self.sync(&k, &mut None, &health).await.map(|_| ())
    }
}
