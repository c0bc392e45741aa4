//! LoadBalancer IP announcement, on every node: for each allocated IP, one node of the healthy
//! eligible set (sorted on `sha256(node + "#" + ip)`, as MetalLB) adds the IP to its interface
//! and sends gratuitous ARP / unsolicited NA; every other node removes it. A node that cannot
//! see a quorum of the Raft voters for [`QUORUM_GRACE`] withdraws everything, so after a
//! partition no IP is answered from both sides.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use shoal_gossip::Member;
use shoal_kube::Objects;
use shoal_netlink::{Address, Net};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::allocator::{ingress_ips, is_ours};
use super::pool::{self, Pool, DEFAULT_POOL};
use super::{core, ipaddresspools, l2advertisements, LbError};
use crate::reconcile::events::Recorder;

/// How long a node may miss the quorum before it withdraws its IPs.
pub const QUORUM_GRACE: Duration = Duration::from_secs(2);
/// How long a node must see the quorum before it announces: at start and after a partition
/// heals, so the node that held its IPs meanwhile has seen it come back and let them go.
pub const REJOIN_HOLD: Duration = Duration::from_secs(1);
/// Gratuitous ARP / NA: one at once, then this many more, this far apart.
const BURST_REPEATS: u32 = 4;
const BURST_GAP: Duration = Duration::from_millis(1100);
/// Periodic re-announcement, so switches keep the MAC in their tables.
const REFRESH: Duration = Duration::from_secs(60);
/// How often the election is evaluated.
const TICK: Duration = Duration::from_millis(200);
const COMPONENT: &str = "shoal-lb-speaker";
/// How long a node listens for another host answering for an IP before it takes it.
pub const PROBE_WAIT: Duration = Duration::from_millis(150);
/// How long a node defers to another host that keeps answering for an IP it won (after a
/// partition heals, until the old holder sees this node alive again); then it takes the IP.
const CONTEST_LIMIT: Duration = Duration::from_secs(15);

/// Sends the announcements that move an IP to this node.
pub trait Announcer: Send + Sync + 'static {
    /// One gratuitous ARP (IPv4) or unsolicited neighbour advertisement (IPv6) out of `link`.
    #[allow(clippy::result_large_err)]
    fn announce(&self, link: &str, ip: IpAddr) -> Result<(), shoal_netlink::Error>;
    /// The MAC of another host that still answers for `ip` on `link`, asked before this node
    /// takes the IP (blocks up to [`PROBE_WAIT`]). None: nobody else answers.
    #[allow(clippy::result_large_err)]
    fn probe(&self, _link: &str, _ip: IpAddr) -> Result<Option<[u8; 6]>, shoal_netlink::Error> {
        Ok(None)
    }
}

/// [`Announcer`] over raw sockets (shoal-netlink).
pub struct LinuxAnnouncer;

impl Announcer for LinuxAnnouncer {
    fn announce(&self, link: &str, ip: IpAddr) -> Result<(), shoal_netlink::Error> {
        shoal_netlink::announce::announce(link, ip)
    }

    fn probe(&self, link: &str, ip: IpAddr) -> Result<Option<[u8; 6]>, shoal_netlink::Error> {
        shoal_netlink::announce::probe(link, ip, PROBE_WAIT)
    }
}

/// [`Announcer`] that records what it was asked to send.
#[derive(Default)]
pub struct FakeAnnouncer {
    sent: Mutex<Vec<(String, IpAddr)>>,
    answered_by: Mutex<Option<[u8; 6]>>,
}

impl FakeAnnouncer {
    pub fn sent(&self) -> Vec<(String, IpAddr)> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Makes probes find another host answering with `mac` (None: nobody).
    pub fn set_answered_by(&self, mac: Option<[u8; 6]>) {
        *self.answered_by.lock().unwrap_or_else(|p| p.into_inner()) = mac;
    }
}

impl Announcer for FakeAnnouncer {
    fn announce(&self, link: &str, ip: IpAddr) -> Result<(), shoal_netlink::Error> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).push((link.to_string(), ip));
        Ok(())
    }

    fn probe(&self, _link: &str, _ip: IpAddr) -> Result<Option<[u8; 6]>, shoal_netlink::Error> {
        Ok(*self.answered_by.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// What the announcer needs to know about the cluster.
pub trait ClusterView: Send + Sync + 'static {
    /// Gossip members as this node sees them.
    fn members(&self) -> Vec<Member>;
    /// Node ids of the Raft voters (empty: unknown, no quorum check).
    fn voters(&self) -> Vec<u64>;
}

/// [`ClusterView`] from gossip (`Membership::subscribe()`) and the store's Raft status.
pub struct GossipView {
    pub members: watch::Receiver<Vec<Member>>,
    pub store: shoal_store::Store,
}

impl ClusterView for GossipView {
    fn members(&self) -> Vec<Member> {
        self.members.borrow().clone()
    }

    fn voters(&self) -> Vec<u64> {
        self.store
            .status()
            .members
            .into_iter()
            .filter(|m| m.role == shoal_store::Role::Voter)
            .map(|m| m.node_id)
            .collect()
    }
}

/// Which node announces an IP, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Announcement {
    pub ip: IpAddr,
    /// `namespace/name` of the Service (the first, when several share the IP).
    pub service: String,
    /// None when no node is eligible.
    pub node: Option<String>,
}

/// The deterministic winner among `nodes` for `ip`: lowest `sha256(node + "#" + ip)`.
pub fn elect<'a>(ip: IpAddr, nodes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    nodes.into_iter().min_by_key(|n| {
        let mut h = Sha256::new();
        h.update(n.as_bytes());
        h.update(b"#");
        h.update(ip.to_string().as_bytes());
        h.finalize()
    })
}

/// Gossip attribute `lb = "false"`: the node runs no announcer (a witness, or a node without
/// pods), so it is never elected for an IP. Absent (older nodes): a candidate.
pub const ATTR_LB: &str = "lb";

/// Whether `m` announces LoadBalancer IPs it wins.
pub(crate) fn announces(m: &Member) -> bool {
    m.attrs.get(ATTR_LB).map(String::as_str) != Some("false")
}

/// Whether the alive voters this node sees make a majority. `me` counts as alive.
pub(crate) fn has_quorum(me: &str, members: &[Member], voters: &[u64]) -> bool {
    if voters.is_empty() {
        return true;
    }
    let alive: BTreeSet<u64> = members
        .iter()
        .filter(|m| m.alive || m.name == me)
        .filter_map(|m| m.attrs.get("node_id").and_then(|s| s.parse().ok()))
        .collect();
    let seen = voters.iter().filter(|v| alive.contains(v)).count();
    seen > voters.len() / 2
}

/// Everything the election reads from the replica in one pass.
#[derive(Default)]
pub(crate) struct Snapshot {
    /// ip -> Services holding it.
    pub ips: BTreeMap<IpAddr, Vec<Value>>,
    pub pools: Vec<Pool>,
    pub l2ads: Vec<Value>,
    /// Node name -> Node object.
    pub nodes: HashMap<String, Value>,
    /// `ns/name` -> nodes with a ready endpoint of that Service.
    pub local_endpoints: HashMap<String, BTreeSet<String>>,
}

fn svc_key(s: &Value) -> String {
    format!("{}/{}", s["metadata"]["namespace"].as_str().unwrap_or(""), s["metadata"]["name"].as_str().unwrap_or(""))
}

fn node_ok(node: Option<&Value>) -> bool {
    let Some(n) = node else { return true };
    if n["metadata"]["labels"]["node.kubernetes.io/exclude-from-external-load-balancers"].is_string() {
        return false;
    }
    !n["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "NetworkUnavailable" && c["status"] == "True")
}

impl Snapshot {
    /// The nodes that may announce `ip`, out of the `alive` ones.
    pub(crate) fn eligible<'a>(&self, ip: IpAddr, alive: &'a [String]) -> Vec<&'a str> {
        let Some(svcs) = self.ips.get(&ip) else { return Vec::new() };
        let pool = self.pools.iter().find(|p| p.contains(ip));
        // The allocator only hands out pool addresses: one outside every IPAddressPool comes
        // from the node config's default pool.
        let pool_name = pool.map(|p| p.name.as_str()).unwrap_or(DEFAULT_POOL);
        // The advertisements that cover the pool; the default pool is advertised everywhere.
        let ads: Vec<&Value> = self
            .l2ads
            .iter()
            .filter(|a| {
                let spec = &a["spec"];
                let names: Vec<&str> =
                    spec["ipAddressPools"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
                let sels = spec["ipAddressPoolSelectors"].as_array().cloned().unwrap_or_default();
                (names.is_empty() && sels.is_empty()) || names.contains(&pool_name)
            })
            .collect();
        if pool_name != DEFAULT_POOL && ads.is_empty() {
            return Vec::new();
        }
        alive
            .iter()
            .map(String::as_str)
            .filter(|n| {
                let node = self.nodes.get(*n);
                if !node_ok(node) {
                    return false;
                }
                let labels = node.map(pool::labels).unwrap_or_default();
                let by_ad = pool_name == DEFAULT_POOL && ads.is_empty()
                    || ads.iter().any(|a| {
                        let sels = a["spec"]["nodeSelectors"].as_array().cloned().unwrap_or_default();
                        sels.is_empty() || sels.iter().any(|s| pool::selector_matches(s, &labels))
                    });
                // With externalTrafficPolicy Local every Service on the IP needs a local endpoint.
                let local_ok = svcs.iter().all(|s| {
                    s["spec"]["externalTrafficPolicy"].as_str() != Some("Local")
                        || self.local_endpoints.get(&svc_key(s)).is_some_and(|ns| ns.contains(*n))
                });
                by_ad && local_ok
            })
            .collect()
    }
}

/// The per-node announcer.
pub struct LbAnnouncer<N: Net + 'static, A: Announcer, V: ClusterView> {
    node: String,
    net: Arc<N>,
    garp: Arc<A>,
    view: V,
    link: Option<String>,
    node_ip: Option<IpAddr>,
    state: watch::Sender<Vec<Announcement>>,
}

struct Held {
    link: String,
    burst: AbortHandle,
}

impl<N: Net + 'static, A: Announcer, V: ClusterView> LbAnnouncer<N, A, V> {
    /// `node`: this node's name (its gossip and Node name).
    pub fn new(node: impl Into<String>, net: Arc<N>, garp: Arc<A>, view: V) -> Self {
        LbAnnouncer {
            node: node.into(),
            net,
            garp,
            view,
            link: None,
            node_ip: None,
            state: watch::channel(Vec::new()).0,
        }
    }

    /// Announce on this link instead of the one holding the node's address.
    pub fn with_link(mut self, link: impl Into<String>) -> Self {
        self.link = Some(link.into());
        self
    }

    /// The node's address, whose link carries the IPs (default: this node's gossip address).
    pub fn with_node_ip(mut self, ip: IpAddr) -> Self {
        self.node_ip = Some(ip);
        self
    }

    /// Which node announces each IP, as this node sees it; updated on every change.
    pub fn announced(&self) -> watch::Receiver<Vec<Announcement>> {
        self.state.subscribe()
    }

    async fn find_link(&self) -> Option<String> {
        if let Some(l) = &self.link {
            return Some(l.clone());
        }
        let ip = self
            .node_ip
            .or_else(|| self.view.members().iter().find(|m| m.name == self.node).map(|m| m.gossip_addr.ip()))?;
        // Links come from netlink: /sys/class/net shows the namespace that mounted sysfs,
        // which need not be the node's.
        let names = match self.net.list_links().await {
            Ok(n) => n,
            Err(error) => {
                tracing::warn!(%error, "cannot list links for loadbalancer ips");
                return None;
            }
        };
        for n in names {
            if let Ok(addrs) = self.net.list_addresses(&n).await {
                if addrs.iter().any(|a| a.addr == ip) {
                    return Some(n);
                }
            }
        }
        None
    }

    async fn snapshot(&self, objects: &Objects) -> Result<Snapshot, LbError> {
        let read = LbError::read;
        let mut snap = Snapshot::default();
        let (svcs, _) = objects.list(&core("services"), None).await.map_err(read)?;
        let mut local_wanted = BTreeSet::new();
        for s in svcs.into_iter().filter(is_ours) {
            if s["spec"]["externalTrafficPolicy"].as_str() == Some("Local") {
                local_wanted.insert(svc_key(&s));
            }
            for ip in ingress_ips(&s) {
                snap.ips.entry(ip).or_default().push(s.clone());
            }
        }
        if snap.ips.is_empty() {
            return Ok(snap);
        }
        let (pools, _) = objects.list(&ipaddresspools(), None).await.map_err(read)?;
        snap.pools = pools.iter().filter_map(Pool::from_object).collect();
        snap.l2ads = objects.list(&l2advertisements(), None).await.map_err(read)?.0;
        let nodes = shoal_kube::Resource { namespaced: false, ..core("nodes") };
        for n in objects.list(&nodes, None).await.map_err(read)?.0 {
            if let Some(name) = n["metadata"]["name"].as_str() {
                snap.nodes.insert(name.to_string(), n);
            }
        }
        for key in local_wanted {
            let Some((ns, name)) = key.split_once('/') else { continue };
            let Some(ep) = objects.get(&core("endpoints"), Some(ns), name).await.map_err(read)? else { continue };
            let nodes: BTreeSet<String> = ep["subsets"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a["nodeName"].as_str().map(String::from))
                .collect();
            snap.local_endpoints.insert(key, nodes);
        }
        Ok(snap)
    }

    /// Runs until `shutdown`, then removes every IP it added.
    pub async fn run(self, objects: Objects, shutdown: CancellationToken) -> Result<(), LbError> {
        let recorder = Recorder::new(objects.clone(), core("events"));
        let mut held: BTreeMap<IpAddr, Held> = BTreeMap::new();
        let mut lost_since: Option<Instant> = None;
        let mut quorum_since: Option<Instant> = None;
        let mut active = false;
        let mut last_refresh = Instant::now();
        let mut stale_checked = false;
        let mut contested: BTreeMap<IpAddr, Instant> = BTreeMap::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let members = self.view.members();
            let quorum = has_quorum(&self.node, &members, &self.view.voters());
            let now = Instant::now();
            if quorum {
                lost_since = None;
                let since = *quorum_since.get_or_insert(now);
                if !active && now.duration_since(since) >= REJOIN_HOLD {
                    active = true;
                    tracing::info!(node = %self.node, "quorum in sight; announcing loadbalancer ips");
                }
            } else {
                quorum_since = None;
                let since = *lost_since.get_or_insert(now);
                if active && now.duration_since(since) >= QUORUM_GRACE {
                    active = false;
                    tracing::warn!(node = %self.node, "quorum out of sight; withdrawing loadbalancer ips");
                }
            }
            let withdrawn = !active;
            let snap = match self.snapshot(&objects).await {
                Ok(s) => s,
                Err(error) => {
                    tracing::warn!(%error, "loadbalancer snapshot failed");
                    continue;
                }
            };
            let mut alive: Vec<String> = members
                .iter()
                .filter(|m| m.alive && m.name != self.node && announces(m))
                .map(|m| m.name.clone())
                .collect();
            if !withdrawn {
                alive.push(self.node.clone());
            }
            let mut table = Vec::new();
            let mut desired = BTreeSet::new();
            for (ip, svcs) in &snap.ips {
                let winner = elect(*ip, snap.eligible(*ip, &alive)).map(String::from);
                if winner.as_deref() == Some(self.node.as_str()) {
                    desired.insert(*ip);
                }
                table.push(Announcement {
                    ip: *ip,
                    service: svcs.first().map(svc_key).unwrap_or_default(),
                    node: winner,
                });
            }
            crate::metrics::lb::took_over(winners(&self.state.borrow()), winners(&table), &self.node);
            self.state.send_if_modified(|cur| {
                let changed = *cur != table;
                *cur = table;
                changed
            });

            let Some(link) = self.find_link().await else {
                if !desired.is_empty() {
                    tracing::warn!(node = %self.node, "no link holds the node address; loadbalancer ips not announced");
                }
                continue;
            };
            if !stale_checked {
                // IPs a previous run left on the link: take them under management.
                if let Ok(addrs) = self.net.list_addresses(&link).await {
                    for a in addrs.iter().filter(|a| snap.ips.contains_key(&a.addr) && a.prefix == host_prefix(a.addr))
                    {
                        let burst = tokio::spawn(async {}).abort_handle();
                        held.insert(a.addr, Held { link: link.clone(), burst });
                    }
                }
                stale_checked = true;
            }
            let gone: Vec<IpAddr> = held.keys().filter(|ip| !desired.contains(ip)).copied().collect();
            for ip in gone {
                if let Some(h) = held.remove(&ip) {
                    h.burst.abort();
                    if let Err(error) = self.net.del_address(&h.link, ip).await {
                        tracing::warn!(%error, %ip, "remove loadbalancer ip failed");
                    }
                    tracing::info!(%ip, reason = if withdrawn { "quorum not in sight" } else { "not elected" }, "stopped announcing");
                }
            }
            let new: Vec<IpAddr> = desired.iter().filter(|ip| !held.contains_key(ip)).copied().collect();
            contested.retain(|ip, _| new.contains(ip));
            for ip in &new {
                // The node that held the IP may not have seen this one come back yet (after a
                // partition heals): while another host answers for it, wait.
                let (garp, l, probed) = (Arc::clone(&self.garp), link.clone(), *ip);
                match tokio::task::spawn_blocking(move || garp.probe(&l, probed).map_err(Box::new)).await {
                    Ok(Ok(Some(mac))) => {
                        crate::metrics::lb::probe_answered();
                        let other = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
                        let since = *contested.entry(*ip).or_insert(now);
                        if now.duration_since(since) < CONTEST_LIMIT {
                            tracing::info!(%ip, other, "another host still answers for the ip; waiting for it to let go");
                            continue;
                        }
                        tracing::warn!(%ip, other, "another host keeps answering for the ip; taking it anyway");
                    }
                    Ok(Ok(None)) => {}
                    Ok(Err(error)) => tracing::warn!(%error, %ip, "probe before announcing failed"),
                    Err(error) => tracing::warn!(%error, %ip, "probe task failed"),
                }
                contested.remove(ip);
                if let Err(error) = self.net.add_address(&link, Address { addr: *ip, prefix: host_prefix(*ip) }).await {
                    tracing::warn!(%error, %ip, "add loadbalancer ip failed");
                    continue;
                }
                let burst = spawn_burst(Arc::clone(&self.garp), link.clone(), *ip);
                held.insert(*ip, Held { link: link.clone(), burst });
                tracing::info!(%ip, link, "announcing");
                for s in snap.ips.get(ip).into_iter().flatten() {
                    recorder
                        .normal(
                            COMPONENT,
                            s,
                            "nodeAssigned",
                            &format!("announcing from node {:?} with protocol \"layer2\"", self.node),
                        )
                        .await;
                }
            }
            if now.duration_since(last_refresh) >= REFRESH {
                last_refresh = now;
                for (ip, h) in &held {
                    if let Err(error) = self.garp.announce(&h.link, *ip) {
                        tracing::debug!(%error, %ip, "refresh announcement failed");
                    }
                }
            }
        }
        for (ip, h) in held {
            h.burst.abort();
            if let Err(error) = self.net.del_address(&h.link, ip).await {
                tracing::warn!(%error, %ip, "remove loadbalancer ip failed");
            }
        }
        self.state.send_replace(Vec::new());
        Ok(())
    }
}

/// Each IP of an announcement table with its elected node (for the failover count).
fn winners(table: &[Announcement]) -> impl Iterator<Item = (IpAddr, Option<&str>)> {
    table.iter().map(|a| (a.ip, a.node.as_deref()))
}

fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// One announcement at once, then [`BURST_REPEATS`] more [`BURST_GAP`] apart.
fn spawn_burst<A: Announcer>(garp: Arc<A>, link: String, ip: IpAddr) -> AbortHandle {
    tokio::spawn(async move {
        for i in 0..=BURST_REPEATS {
            if i > 0 {
                tokio::time::sleep(BURST_GAP).await;
            }
            match garp.announce(&link, ip) {
                Ok(()) => crate::metrics::lb::announced(),
                Err(error) => tracing::warn!(%error, %ip, link, "announcement failed"),
            }
        }
    })
    .abort_handle()
}

#[cfg(test)]
mod tests;
