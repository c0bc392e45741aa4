//! NetworkPolicy enforcement on one node: watches Pods, Namespaces and NetworkPolicies in the
//! local replica (the pods reduced to what policies see of them, so a pod's status writes cost
//! nothing; with no NetworkPolicy in the cluster a sync reads only the empty policy list), computes what each pod of this node may receive and send ([`engine`]) and
//! keeps one nftables table (`inet shoal-netpol`, [`rules`]) in step, each change applied as
//! one `nft -f` transaction. A change is acted on as soon as its watch event arrives, with no
//! timer in the path; changes that arrive while a sync runs are coalesced into the next one.
//! Policies that select nothing or carry a peer the node cannot enforce get a Warning event;
//! they never stop the others.
pub mod engine;
pub mod rules;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use shoal_kube::{resources, Objects, Resource};
use shoal_netlink::nft::Table;
use shoal_netlink::{LinuxNft, Nft};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use engine::{NamedPort, PodInfo, PodPolicy, Proto};

/// A full rebuild also happens this often, whatever the watches say.
const RESYNC: Duration = Duration::from_secs(30);
/// After a failed apply.
const RETRY: Duration = Duration::from_secs(1);

/// Errors of one sync.
#[derive(Debug, thiserror::Error)]
pub enum NetpolError {
    #[error("list {plural}")]
    List {
        plural: &'static str,
        #[source]
        source: shoal_kube::Error,
    },
    #[error("apply the network policy ruleset")]
    Apply(#[source] Box<shoal_netlink::Error>),
    #[error("apply task failed")]
    Join(#[source] tokio::task::JoinError),
}

struct Kinds {
    pods: Resource,
    namespaces: Resource,
    policies: Resource,
}

fn kinds() -> Option<Kinds> {
    Some(Kinds {
        pods: resources::find("", "pods")?,
        namespaces: resources::find("", "namespaces")?,
        policies: resources::find("networking.k8s.io", "networkpolicies")?,
    })
}

/// The cluster resolver as a peer policies can name: the node's own DNS listener (where the
/// DNS Service IP is DNATed to) stands for a pod `k8s-app=kube-dns` in `kube-system`, so the
/// usual allow-DNS policy of upstream clusters works unchanged.
pub fn resolver_peer(node: &str, ip: Ipv4Addr) -> PodInfo {
    let mut labels = Map::new();
    labels.insert("k8s-app".into(), Value::String("kube-dns".into()));
    PodInfo {
        namespace: "kube-system".into(),
        name: format!("cluster-dns-{node}"),
        ip,
        node: node.into(),
        labels,
        ports: vec![
            NamedPort { name: "dns".into(), proto: Proto::Udp, port: 53 },
            NamedPort { name: "dns-tcp".into(), proto: Proto::Tcp, port: 53 },
        ],
        virtual_peer: true,
    }
}

/// The policies of this node's pods by address, from the stored objects.
pub fn local_policies(
    pods: &[Value],
    namespaces: &[Value],
    policies: &[Value],
    node: &str,
    extra_peers: &[PodInfo],
) -> (BTreeMap<Ipv4Addr, PodPolicy>, Vec<engine::Warning>) {
    let infos: Vec<PodInfo> = pods.iter().filter_map(PodInfo::from_json).collect();
    local_policies_of(infos, namespaces, policies, node, extra_peers)
}

/// [`local_policies`] of pods already reduced to what policies see of them.
fn local_policies_of(
    mut infos: Vec<PodInfo>,
    namespaces: &[Value],
    policies: &[Value],
    node: &str,
    extra_peers: &[PodInfo],
) -> (BTreeMap<Ipv4Addr, PodPolicy>, Vec<engine::Warning>) {
    if policies.is_empty() {
        return (BTreeMap::new(), Vec::new());
    }
    infos.extend(extra_peers.iter().cloned());
    let computed = engine::compute_for(&infos, namespaces, policies, |p| p.node == node);
    let mut local = BTreeMap::new();
    for p in infos.iter().filter(|p| p.node == node && !p.virtual_peer) {
        if let Some(pp) = computed.pods.get(&(p.namespace.clone(), p.name.clone())) {
            local.insert(p.ip, pp.clone());
        }
    }
    (local, computed.warnings)
}

/// Where the time of a sync that applied went (logged, for finding what delays enforcement).
struct SyncTimes {
    /// Listing pods, namespaces and policies from the replica.
    read: Duration,
    /// The engine, the rendering and the diff against the applied table.
    compute: Duration,
    /// `nft -f`.
    apply: Duration,
}

/// The node's NetworkPolicy enforcer.
pub struct Netpol {
    objects: Objects,
    node: String,
    resolver: Option<Ipv4Addr>,
    nft: Arc<dyn Nft>,
    events: Option<crate::reconcile::events::Recorder>,
}

impl Netpol {
    /// An enforcer for `node`, applying rules with `nft` in the current network namespace.
    pub fn new(objects: Objects, node: String) -> Netpol {
        let events = Some(crate::reconcile::events::Recorder::new(objects.clone(), resources::lookup("", "events")));
        Netpol { objects, node, resolver: None, nft: Arc::new(LinuxNft::new()), events }
    }

    /// The address of this node's cluster resolver (see [`resolver_peer`]).
    pub fn with_resolver(mut self, ip: Ipv4Addr) -> Netpol {
        self.resolver = Some(ip);
        self
    }

    /// Applies rulesets through `nft` instead (a netns-bound [`LinuxNft`], or a fake).
    pub fn with_nft(mut self, nft: Arc<dyn Nft>) -> Netpol {
        self.nft = nft;
        self
    }

    /// Keeps the table in step with the replica until `shutdown`. The table stays in place
    /// afterwards, so policies hold while the daemon restarts.
    pub async fn run(self, shutdown: CancellationToken) {
        let Some(k) = kinds() else {
            tracing::error!("network policy resources missing from the resource table; not enforced");
            return;
        };
        let changed = Arc::new(Notify::new());
        let watch_stop = shutdown.child_token();
        let pods = PodView::default();
        tokio::spawn(pods.clone().follow(self.objects.clone(), k.pods.clone(), changed.clone(), watch_stop.clone()));
        for res in [&k.namespaces, &k.policies] {
            tokio::spawn(crate::reconcile::watch::notify_on_changes(
                self.objects.clone(),
                res.clone(),
                changed.clone(),
                "netpol",
                RETRY,
                watch_stop.clone(),
            ));
        }
        let mut last: Option<Table> = None;
        let mut warned: HashSet<String> = HashSet::new();
        // The first sync waits for the first list of pods: a table computed without them
        // would drop the rules a previous run of the daemon left in place.
        let mut next_wait = RESYNC;
        loop {
            // No debounce: a sync starts as soon as a change is signalled. Events that arrive
            // while it runs leave one permit in `changed`, so a burst costs one more sync, not
            // one per event, and never a wait on a timer.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = changed.notified() => {}
                _ = tokio::time::sleep(next_wait) => {}
            }
            let Some(pods) = pods.snapshot() else { continue };
            match self.sync(&k, pods, &mut last, &mut warned).await {
                Ok(Some(t)) => {
                    tracing::info!(
                        read_ms = t.read.as_millis() as u64,
                        compute_ms = t.compute.as_millis() as u64,
                        apply_ms = t.apply.as_millis() as u64,
                        "network policy rules applied"
                    );
                    next_wait = RESYNC;
                }
                Ok(None) => next_wait = RESYNC,
                Err(e) => {
                    tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "network policy rules not applied");
                    last = None;
                    next_wait = RETRY;
                }
            }
        }
        watch_stop.cancel();
    }

    async fn list(&self, res: &Resource, plural: &'static str) -> Result<Vec<Value>, NetpolError> {
        self.objects.list(res, None).await.map(|(v, _)| v).map_err(|source| NetpolError::List { plural, source })
    }

    /// Reads the replica and applies the table if it changed; how long each step took when it
    /// applied.
    async fn sync(
        &self,
        k: &Kinds,
        pods: Vec<PodInfo>,
        last: &mut Option<Table>,
        warned: &mut HashSet<String>,
    ) -> Result<Option<SyncTimes>, NetpolError> {
        let started = Instant::now();
        let policies = self.list(&k.policies, "networkpolicies").await?;
        // Without any policy nothing is isolated: the namespaces are not needed.
        let namespaces = if policies.is_empty() { Vec::new() } else { self.list(&k.namespaces, "namespaces").await? };
        let read = started.elapsed();
        let extra: Vec<PodInfo> = self.resolver.map(|ip| resolver_peer(&self.node, ip)).into_iter().collect();
        let (local, warnings) = local_policies_of(pods, &namespaces, &policies, &self.node, &extra);
        self.warn(&policies, warnings, warned);
        let (table, _) = rules::render(&local);
        if last.as_ref() == Some(&table) {
            return Ok(None);
        }
        let compute = started.elapsed() - read;
        let text = match last.as_ref() {
            Some(prev) => table.update_text(prev),
            None => table.replace_text(),
        };
        *last = None;
        let nft = self.nft.clone();
        tokio::task::spawn_blocking(move || nft.apply(&text).map_err(Box::new))
            .await
            .map_err(NetpolError::Join)?
            .map_err(NetpolError::Apply)?;
        *last = Some(table);
        Ok(Some(SyncTimes { read, compute, apply: started.elapsed() - read - compute }))
    }

    /// A Warning event on each policy with a problem, once per policy version and node.
    fn warn(&self, policies: &[Value], warnings: Vec<engine::Warning>, warned: &mut HashSet<String>) {
        let Some(rec) = &self.events else { return };
        for w in warnings {
            let Some(p) = policies.iter().find(|p| {
                p["metadata"]["namespace"].as_str() == Some(w.namespace.as_str())
                    && p["metadata"]["name"].as_str() == Some(w.policy.as_str())
            }) else {
                continue;
            };
            let key = format!(
                "{}/{}/{}/{}",
                p["metadata"]["uid"].as_str().unwrap_or(""),
                p["metadata"]["resourceVersion"].as_str().unwrap_or(""),
                w.reason,
                w.message
            );
            if !warned.insert(key) {
                continue;
            }
            tracing::info!(namespace = %w.namespace, policy = %w.policy, reason = w.reason, message = %w.message, "network policy warning");
            let mut involved = p.clone();
            involved["apiVersion"] = Value::String("networking.k8s.io/v1".into());
            involved["kind"] = Value::String("NetworkPolicy".into());
            let rec = rec.clone();
            let node = self.node.clone();
            tokio::spawn(async move {
                rec.warning(&format!("netpol/{node}"), &involved, w.reason, &w.message).await;
            });
        }
    }
}

/// The pods as policies see them ([`PodInfo`]: address, labels, node, named ports), kept from
/// the pod watch. Only a change of that signals a sync: the status writes of a pod start
/// (conditions, container states) do not, and no sync lists the pods of the cluster.
#[derive(Clone, Default)]
struct PodView(Arc<std::sync::Mutex<Option<BTreeMap<String, PodInfo>>>>);

impl PodView {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<BTreeMap<String, PodInfo>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every pod with an address on the pod network; None until the first list is in.
    fn snapshot(&self) -> Option<Vec<PodInfo>> {
        self.lock().as_ref().map(|m| m.values().cloned().collect())
    }

    /// Lists the pods, then follows their watch from that revision, signalling `changed` on
    /// every change that matters to a policy; lists again after the watch ends.
    async fn follow(self, objects: Objects, res: Resource, changed: Arc<Notify>, stop: CancellationToken) {
        let key = |pod: &Value| {
            format!(
                "{}/{}",
                pod["metadata"]["namespace"].as_str().unwrap_or_default(),
                pod["metadata"]["name"].as_str().unwrap_or_default()
            )
        };
        loop {
            match objects.list_and_watch(&res, None).await {
                Ok((pods, mut rx)) => {
                    let view = pods.iter().filter_map(|p| Some((key(p), PodInfo::from_json(p)?))).collect();
                    *self.lock() = Some(view);
                    changed.notify_one();
                    loop {
                        let ev = tokio::select! {
                            _ = stop.cancelled() => return,
                            ev = rx.recv() => ev,
                        };
                        let ev = match ev {
                            Some(Ok(ev)) => ev,
                            Some(Err(e)) => {
                                tracing::debug!(error = %e, "netpol pod watch ended");
                                break;
                            }
                            None => break,
                        };
                        let info = if ev.kind == "DELETED" { None } else { PodInfo::from_json(&ev.object) };
                        let k = key(&ev.object);
                        let mut guard = self.lock();
                        let Some(view) = guard.as_mut() else { break };
                        let changed_here = match info {
                            Some(info) => view.insert(k, info.clone()).as_ref() != Some(&info),
                            None => view.remove(&k).is_some(),
                        };
                        drop(guard);
                        if changed_here {
                            changed.notify_one();
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "netpol pod list or watch failed"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}
