//! Pod networking of one node: the node bridge with the first address of the node's pod CIDR,
//! a veth pair per pod (eth0 inside the pod's network namespace), routes to the other nodes'
//! pod CIDRs, and masquerading of pod traffic that leaves the pod network.
//!
//! A peer on the same L2 segment (its address is on-link here) is the next hop for its pod CIDR
//! directly. A peer behind a router is reached through VXLAN (`shoal.vxlan`, VNI 4242, UDP
//! 4789, MTU 1450): each node gives its VXLAN device the network address of its own /24
//! (10.42.N.0/32, as flannel does), routes a remote /24 via that remote address over the device,
//! and floods the device's ARP to every VXLAN peer (an all-zero forwarding entry per peer); the
//! answers teach the device where each remote MAC lives.
//!
//! The node's /24 comes from the cluster pod CIDR through the store (`/shoal/podcidr/<node>`),
//! so no two nodes ever hand out the same pod address; addresses inside the /24 are the
//! node's own business.
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use shoal_netlink::{Address, LinuxNet, Net, Route};
use shoal_store::{Compare, Op, Store, Txn};

/// Name of the node bridge.
pub const BRIDGE: &str = "shoal0";
/// Name of the VXLAN device for peers behind a router.
pub const VXLAN: &str = "shoal.vxlan";
const VXLAN_VNI: u32 = 4242;
const VXLAN_PORT: u16 = 4789;
/// 1500 less the 50 bytes of VXLAN over IPv4.
const VXLAN_MTU: u32 = 1450;
/// Store prefix of node pod CIDRs.
pub const PODCIDR_PREFIX: &str = "/shoal/podcidr/";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pod CIDR {0:?} is not an IPv4 /16")]
    ClusterCidr(String),
    #[error("no free /24 left in the pod CIDR")]
    CidrExhausted,
    #[error("no free pod address left on this node")]
    AddressesExhausted,
    #[error("store")]
    Store(#[from] shoal_store::Error),
    #[error("netlink")]
    Netlink(#[source] Box<shoal_netlink::Error>),
}

impl From<shoal_netlink::Error> for NetError {
    fn from(e: shoal_netlink::Error) -> NetError {
        NetError::Netlink(Box::new(e))
    }
}

/// A node's pod subnet: 10.42.N.0/24, gateway .1, pods .2 to .254.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub base: Ipv4Addr,
}

impl Subnet {
    pub fn gateway(&self) -> Ipv4Addr {
        let o = self.base.octets();
        Ipv4Addr::new(o[0], o[1], o[2], 1)
    }
    pub fn host(&self, n: u8) -> Ipv4Addr {
        let o = self.base.octets();
        Ipv4Addr::new(o[0], o[1], o[2], n)
    }
    pub fn cidr(&self) -> String {
        format!("{}/24", self.base)
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        ip.octets()[..3] == self.base.octets()[..3]
    }
}

fn parse_cluster_cidr(cidr: &str) -> Result<[u8; 2], NetError> {
    let (ip, len) = cidr.split_once('/').ok_or_else(|| NetError::ClusterCidr(cidr.into()))?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| NetError::ClusterCidr(cidr.into()))?;
    if len != "16" {
        return Err(NetError::ClusterCidr(cidr.into()));
    }
    let o = ip.octets();
    Ok([o[0], o[1]])
}

/// Claims (or finds) this node's /24 of the cluster pod CIDR through the store.
pub async fn claim_subnet(store: &Store, cluster_cidr: &str, node: &str) -> Result<Subnet, NetError> {
    let [a, b] = parse_cluster_cidr(cluster_cidr)?;
    let key = format!("{PODCIDR_PREFIX}{node}");
    loop {
        if let Some(kv) = store.get(&key).await? {
            if let Some(base) = std::str::from_utf8(&kv.value).ok().and_then(|s| s.split('/').next()?.parse().ok()) {
                return Ok(Subnet { base });
            }
        }
        let (taken, _) = store.range(PODCIDR_PREFIX).await?;
        let used: Vec<u8> = taken
            .iter()
            .filter_map(|kv| std::str::from_utf8(&kv.value).ok()?.split('/').next()?.parse::<Ipv4Addr>().ok())
            .map(|ip| ip.octets()[2])
            .collect();
        let Some(third) = (0u8..=255).find(|n| !used.contains(n)) else { return Err(NetError::CidrExhausted) };
        let subnet = Subnet { base: Ipv4Addr::new(a, b, third, 0) };
        // The index key makes two nodes racing for the same /24 conflict.
        let index = format!("/shoal/podcidr-index/{third}");
        let txn = Txn {
            compares: vec![Compare::NotExists { key: key.clone() }, Compare::NotExists { key: index.clone() }],
            success: vec![
                Op::Put { key: key.clone(), value: subnet.cidr().into_bytes(), lease: None },
                Op::Put { key: index, value: node.as_bytes().to_vec(), lease: None },
            ],
            failure: vec![],
        };
        store.txn(txn).await?;
    }
}

/// The node's pod network.
pub struct PodNetwork {
    pub subnet: Subnet,
    /// The first two octets of the cluster's /16 pod CIDR.
    pub cluster: [u8; 2],
    used: Mutex<BTreeMap<u8, String>>,
}

impl PodNetwork {
    /// Sets up the bridge (over rtnetlink), forwarding (through `proc`, procfs) and
    /// masquerading for `subnet` (idempotent).
    pub async fn setup(subnet: Subnet, cluster_cidr: &str, proc: &Path) -> Result<PodNetwork, NetError> {
        let cluster = parse_cluster_cidr(cluster_cidr)?;
        let net = LinuxNet::new()?;
        net.ensure_bridge(BRIDGE).await?;
        net.add_address(BRIDGE, Address { addr: subnet.gateway().into(), prefix: 24 }).await?;
        let _ = std::fs::write(proc.join("sys/net/ipv4/ip_forward"), "1");
        // Pod traffic to anything outside the pod network leaves with the node's address.
        let rules = format!(
            "table ip shoal-nat\ndelete table ip shoal-nat\ntable ip shoal-nat {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {} ip daddr != {} masquerade\n  }}\n}}\n",
            subnet.cidr(),
            cluster_cidr
        );
        tokio::task::spawn_blocking(move || nft_apply(&rules))
            .await
            .map_err(|e| NetError::Command { command: "nft -f -".into(), stderr: e.to_string() })??;
        Ok(PodNetwork { subnet, cluster, used: Mutex::new(BTreeMap::new()) })
    }

    /// Marks an address as used (a pod found running at start).
    pub fn reserve(&self, ip: Ipv4Addr, owner: &str) {
        if self.subnet.contains(ip) {
            self.used.lock().unwrap_or_else(|p| p.into_inner()).insert(ip.octets()[3], owner.to_string());
        }
    }

    /// Connects a pod's network namespace: veth into the bridge, eth0 with a fresh address and
    /// the default route via the bridge. Over rtnetlink, in this namespace and the pod's.
    pub async fn attach(&self, owner: &str, netns: &Path) -> Result<Ipv4Addr, NetError> {
        let n = {
            let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
            let n = (2u8..=254).find(|n| !used.contains_key(n)).ok_or(NetError::AddressesExhausted)?;
            used.insert(n, owner.to_string());
            n
        };
        let ip = self.subnet.host(n);
        let result = self.connect(&veth_name(owner), ip, netns).await;
        if result.is_err() {
            self.release(ip);
        }
        result.map(|()| ip)
    }

    async fn connect(&self, host_if: &str, ip: Ipv4Addr, netns: &Path) -> Result<(), NetError> {
        let host = LinuxNet::new()?;
        // A veth left by a pod worker that died halfway.
        host.delete_link(host_if).await?;
        // Pods get the VXLAN device's MTU whether or not their traffic crosses it (as
        // flannel does): a pod cannot know which peers sit behind a router.
        host.attach_veth(host_if, "eth0", netns, BRIDGE, VXLAN_MTU).await?;
        let pod = LinuxNet::in_netns(netns)?;
        pod.add_address("eth0", Address { addr: ip.into(), prefix: 24 }).await?;
        pod.set_link_up("eth0", true).await?;
        pod.set_link_up("lo", true).await?;
        let default =
            Route { dst: Ipv4Addr::UNSPECIFIED.into(), prefix: 0, via: Some(self.subnet.gateway().into()), dev: None };
        pod.replace_route(&default).await?;
        Ok(())
    }

    /// Removes a pod's veth and frees its address.
    pub async fn detach(&self, owner: &str, ip: Option<Ipv4Addr>) {
        let host_if = veth_name(owner);
        match LinuxNet::new() {
            Ok(net) => {
                if let Err(e) = net.delete_link(&host_if).await {
                    tracing::warn!(link = %host_if, error = %e, "pod veth not removed");
                }
            }
            Err(e) => tracing::warn!(link = %host_if, error = %e, "pod veth not removed"),
        }
        if let Some(ip) = ip {
            self.release(ip);
        }
    }

    fn release(&self, ip: Ipv4Addr) {
        if self.subnet.contains(ip) {
            self.used.lock().unwrap_or_else(|p| p.into_inner()).remove(&ip.octets()[3]);
        }
    }
}

/// What [`sync_routes`] applies: each peer's /24 (CIDR → peer address) and this node's own
/// address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    pub peers: BTreeMap<String, Ipv4Addr>,
    pub me: Option<Ipv4Addr>,
}

/// Routes every other node's pod subnet (`want.peers`: CIDR → node address) from the node
/// whose pod subnet is `subnet`, over rtnetlink: via that node's address when it is on-link
/// here, over VXLAN when a router is in between. `want.me` is this node's own address, the VXLAN
/// tunnel's source (without it, routed peers stay unreachable and a warning says so). Then the
/// kernel's own tables are swept: a /24 route inside the cluster CIDR `cluster` (its first two
/// octets) that is neither this node's nor wanted, and a VXLAN flooding entry to an address no
/// peer has, belong to a node that left (also while this daemon was down) and are removed.
/// Returns false when a route could not be set or swept (the caller retries).
pub async fn sync_routes(subnet: Subnet, cluster: [u8; 2], want: &Routes) -> bool {
    let net = match LinuxNet::new() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "pod routes: no rtnetlink connection");
            return false;
        }
    };
    let mut ok = true;
    for (cidr, via) in &want.peers {
        let result = match net.gateway_to((*via).into()).await.map_err(NetError::from) {
            Ok(None) => match parse_cidr(cidr) {
                Ok((dst, prefix)) => net
                    .replace_route(&Route { dst: dst.into(), prefix, via: Some((*via).into()), dev: None })
                    .await
                    .map_err(NetError::from),
                Err(e) => Err(e),
            },
            Ok(Some(_)) => match want.me {
                Some(me) => vxlan_route(&net, subnet, cidr, *via, me).await,
                None => {
                    tracing::warn!(%cidr, %via, "peer is behind a router and this node's own address is unknown: no VXLAN route");
                    ok = false;
                    continue;
                }
            },
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(%cidr, %via, error = %e, "pod route");
            ok = false;
        }
    }
    if let Err(e) = sweep_departed(&net, subnet, cluster, want).await {
        tracing::warn!(error = %e, "routes of departed nodes not swept");
        ok = false;
    }
    ok
}

/// The sweep of [`sync_routes`]: removes the pod routes and VXLAN flooding entries of nodes
/// that are not in `want`.
async fn sweep_departed(net: &LinuxNet, subnet: Subnet, cluster: [u8; 2], want: &Routes) -> Result<(), NetError> {
    let wanted: Vec<(Ipv4Addr, u8)> = want.peers.keys().filter_map(|c| parse_cidr(c).ok()).collect();
    for r in departed_routes(&net.ipv4_routes().await?, subnet, cluster, &wanted) {
        net.del_route(&r).await?;
        tracing::info!(cidr = %format!("{}/{}", r.dst, r.prefix), "route of a departed node removed");
    }
    if net.link_index(VXLAN).await?.is_some() {
        for peer in net.flood_entries(VXLAN).await? {
            if !want.peers.values().any(|v| IpAddr::V4(*v) == peer) {
                net.del_flood_entry(VXLAN, peer).await?;
                tracing::info!(%peer, "VXLAN entry of a departed node removed");
            }
        }
    }
    Ok(())
}

/// Of the kernel's `routes`, the pod routes of departed nodes: /24s inside the cluster's /16
/// that are neither `subnet` (this node's, on the bridge) nor `wanted`.
fn departed_routes(routes: &[Route], subnet: Subnet, cluster: [u8; 2], wanted: &[(Ipv4Addr, u8)]) -> Vec<Route> {
    routes
        .iter()
        .filter_map(|r| match r.dst {
            IpAddr::V4(dst) if r.prefix == 24 && dst.octets()[..2] == cluster => Some((dst, r)),
            _ => None,
        })
        .filter(|(dst, _)| *dst != subnet.base && !wanted.contains(&(*dst, 24)))
        .map(|(dst, r)| Route { dst: dst.into(), prefix: r.prefix, via: None, dev: None })
        .collect()
}

fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, u8), NetError> {
    let bad = || NetError::Command { command: format!("route {cidr}"), stderr: "not an IPv4 CIDR".into() };
    let (ip, len) = cidr.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32).ok_or_else(bad)?;
    Ok((ip, len))
}

/// Routes `cidr` (a peer's /24) over VXLAN to the peer at `peer`.
async fn vxlan_route(net: &LinuxNet, subnet: Subnet, cidr: &str, peer: Ipv4Addr, me: Ipv4Addr) -> Result<(), NetError> {
    let (vtep, prefix) = parse_cidr(cidr)?;
    net.ensure_vxlan(VXLAN, VXLAN_VNI, VXLAN_PORT, me, VXLAN_MTU).await?;
    net.add_address(VXLAN, Address { addr: subnet.host(0).into(), prefix: 32 }).await?;
    // Appending an entry already there is a no-op.
    net.append_flood_entry(VXLAN, peer.into()).await?;
    let route = Route { dst: vtep.into(), prefix, via: Some(vtep.into()), dev: Some(VXLAN.into()) };
    net.replace_route_onlink(&route).await?;
    Ok(())
}

/// Host-side veth name of a pod: stable, at most 15 bytes.
pub fn veth_name(owner: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(owner.as_bytes());
    format!("veth{}", &hex::encode(h)[..10])
}

/// Applies an nftables ruleset atomically (`nft -f -`).
pub fn nft_apply(rules: &str) -> Result<(), NetError> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| NetError::Spawn { command: "nft -f -".into(), source })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(rules.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| NetError::Spawn { command: "nft -f -".into(), source })?;
    if !out.status.success() {
        return Err(NetError::Command {
            command: "nft -f -".into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nodes_get_distinct_subnets() {
        let store = Store::in_memory();
        let a = claim_subnet(&store, "10.42.0.0/16", "n1").await.unwrap();
        let b = claim_subnet(&store, "10.42.0.0/16", "n2").await.unwrap();
        let a2 = claim_subnet(&store, "10.42.0.0/16", "n1").await.unwrap();
        assert_ne!(a, b);
        assert_eq!(a, a2);
        assert_eq!(a.gateway(), Ipv4Addr::new(10, 42, 0, 1));
        assert!(claim_subnet(&store, "10.42.0.0/8", "n3").await.is_err());
    }

    #[test]
    fn only_pod_routes_of_departed_nodes_are_swept() {
        let r = |dst: &str, prefix: u8| Route { dst: dst.parse().unwrap(), prefix, via: None, dev: None };
        let kernel = [
            r("0.0.0.0", 0),
            r("10.42.0.0", 24), // this node's own subnet (the bridge)
            r("10.42.1.0", 24), // a live peer
            r("10.42.2.0", 24), // a node that left
            r("10.42.9.9", 32), // not a pod /24
            r("10.43.2.0", 24), // outside the cluster CIDR
            r("192.168.1.0", 24),
        ];
        let me = Subnet { base: Ipv4Addr::new(10, 42, 0, 0) };
        let gone = departed_routes(&kernel, me, [10, 42], &[(Ipv4Addr::new(10, 42, 1, 0), 24)]);
        assert_eq!(gone, vec![r("10.42.2.0", 24)]);
    }

    #[test]
    fn veth_names_fit() {
        assert!(veth_name("some-very-long-pod-uid-1234567890").len() <= 15);
        assert_ne!(veth_name("a"), veth_name("b"));
    }
}
