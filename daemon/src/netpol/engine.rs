//! NetworkPolicy semantics as a pure function: from pods, namespaces and policies, what each
//! pod may receive (ingress) and send (egress), as upstream defines it.
//!
//! - A pod selected by a policy whose `policyTypes` holds `Ingress` is isolated for ingress (and
//!   likewise for egress); a pod no policy isolates allows everything in that direction.
//! - What an isolated pod allows is the union of the rules of every policy that selects it for
//!   that direction (rules are ORed; there is no deny).
//! - A rule with no peers allows every peer, with no ports every port. A peer is a podSelector
//!   (pods of the policy's namespace), a namespaceSelector (every pod of the matching
//!   namespaces), both (the pods matching the one in the namespaces matching the other), or an
//!   ipBlock (a CIDR less its excepts).
//! - Ports are numbers (with `endPort`, a range) or names; a name is resolved against the
//!   containerPorts of the pod that receives the traffic: the selected pod for ingress, each
//!   destination pod for egress (so a named egress port never matches a non-pod destination).
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde_json::{Map, Value};
use shoal_kube::selector::LabelSelector;
use shoal_kube::validation::network_policy::parse_cidr;

/// A transport protocol a port rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn parse(s: &str) -> Option<Proto> {
        match s {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// The nftables name.
    pub fn nft(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// A named container port of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub proto: Proto,
    pub port: u16,
}

/// What the engine needs of a pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub node: String,
    pub labels: Map<String, Value>,
    pub ports: Vec<NamedPort>,
    /// Stands for something that is not a pod (the node's cluster resolver): a peer that
    /// selectors can match, never a pod that policies isolate.
    pub virtual_peer: bool,
}

impl PodInfo {
    /// A pod with an IPv4 address on the pod network (None for pods without one yet, or on
    /// the host network, which policies do not cover).
    pub fn from_json(pod: &Value) -> Option<PodInfo> {
        if pod["spec"]["hostNetwork"] == true {
            return None;
        }
        let phase = pod["status"]["phase"].as_str().unwrap_or("");
        if phase == "Succeeded" || phase == "Failed" {
            return None;
        }
        let ip: Ipv4Addr = pod["status"]["podIP"].as_str()?.parse().ok()?;
        let mut ports = Vec::new();
        for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
            for p in c["ports"].as_array().into_iter().flatten() {
                let (Some(name), Some(port)) = (p["name"].as_str(), p["containerPort"].as_u64()) else { continue };
                let Ok(port) = u16::try_from(port) else { continue };
                let Some(proto) = Proto::parse(p["protocol"].as_str().unwrap_or("TCP")) else { continue };
                ports.push(NamedPort { name: name.to_string(), proto, port });
            }
        }
        Some(PodInfo {
            namespace: pod["metadata"]["namespace"].as_str().unwrap_or("default").to_string(),
            name: pod["metadata"]["name"].as_str().unwrap_or("").to_string(),
            ip,
            node: pod["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
            labels: pod["metadata"]["labels"].as_object().cloned().unwrap_or_default(),
            ports,
            virtual_peer: false,
        })
    }
}

/// An inclusive range of ports of one protocol (`1..=65535` for every port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub proto: Proto,
    pub lo: u16,
    pub hi: u16,
}

/// An inclusive range of IPv4 addresses (as numbers).
pub type IpRange = (u32, u32);

/// One allow of an isolated pod's direction: traffic with a peer in `peers` to a port in
/// `ports`, or to one of the `named` (destination, protocol, port) triples.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Allow {
    /// None: any peer. Sorted, disjoint, non-adjacent ranges.
    pub peers: Option<Vec<IpRange>>,
    /// None: any protocol and port. Some(empty): none (only `named` can match).
    pub ports: Option<BTreeSet<PortRange>>,
    /// Named egress ports resolved at their destinations, already limited to the peers.
    pub named: BTreeSet<(Ipv4Addr, Proto, u16)>,
}

impl Allow {
    /// Whether traffic with `peer` on (`proto`, `port`) of the receiving side matches.
    pub fn matches(&self, peer: Ipv4Addr, proto: Proto, port: u16) -> bool {
        if self.named.contains(&(peer, proto, port)) {
            return true;
        }
        let peer_ok = match &self.peers {
            None => true,
            Some(ranges) => ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&u32::from(peer))),
        };
        let port_ok = match &self.ports {
            None => true,
            Some(ports) => ports.iter().any(|p| p.proto == proto && (p.lo..=p.hi).contains(&port)),
        };
        peer_ok && port_ok
    }
}

/// What one pod allows: None for a direction no policy isolates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodPolicy {
    pub ingress: Option<Vec<Allow>>,
    pub egress: Option<Vec<Allow>>,
}

impl PodPolicy {
    /// Whether the pod accepts traffic from `peer` to its `port`.
    pub fn allows_ingress(&self, peer: Ipv4Addr, proto: Proto, port: u16) -> bool {
        self.ingress.as_ref().is_none_or(|a| a.iter().any(|a| a.matches(peer, proto, port)))
    }

    /// Whether the pod may send to `peer`'s `port`.
    pub fn allows_egress(&self, peer: Ipv4Addr, proto: Proto, port: u16) -> bool {
        self.egress.as_ref().is_none_or(|a| a.iter().any(|a| a.matches(peer, proto, port)))
    }
}

/// Something about a policy a user should hear of (a Warning event on the policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub namespace: String,
    pub policy: String,
    pub reason: &'static str,
    pub message: String,
}

/// The engine's answer: the policy of every pod some policy isolates, keyed by
/// (namespace, name), and the warnings.
#[derive(Debug, Clone, Default)]
pub struct Computed {
    pub pods: BTreeMap<(String, String), PodPolicy>,
    pub warnings: Vec<Warning>,
}

fn labels_of(obj: &Value) -> Map<String, Value> {
    obj["metadata"]["labels"].as_object().cloned().unwrap_or_default()
}

/// A selector from a stored object; an unreadable one selects nothing (and warns).
fn selector(v: &Value, at: &str, warn: &mut dyn FnMut(&'static str, String)) -> Option<LabelSelector> {
    match LabelSelector::from_json(v) {
        Ok(s) => Some(s),
        Err(e) => {
            warn("InvalidSelector", format!("{at}: {e}; it selects nothing"));
            None
        }
    }
}

/// Sorts and merges ranges into disjoint, non-adjacent ones.
pub fn merge_ranges(mut r: Vec<IpRange>) -> Vec<IpRange> {
    r.sort();
    let mut out: Vec<IpRange> = Vec::with_capacity(r.len());
    for (lo, hi) in r {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// `cidr` less every range of `except`.
fn subtract(cidr: IpRange, except: &[IpRange]) -> Vec<IpRange> {
    let mut out = vec![cidr];
    for &(elo, ehi) in except {
        let mut next = Vec::new();
        for (lo, hi) in out {
            if ehi < lo || elo > hi {
                next.push((lo, hi));
                continue;
            }
            if elo > lo {
                next.push((lo, elo - 1));
            }
            if ehi < hi {
                next.push((ehi + 1, hi));
            }
        }
        out = next;
    }
    out
}

fn v4_range(s: &str) -> Option<IpRange> {
    match parse_cidr(s)? {
        (std::net::IpAddr::V4(net), len) => {
            let lo = u32::from(net);
            let size = if len == 0 { u32::MAX } else { (1u32 << (32 - len)) - 1 };
            Some((lo, lo | size))
        }
        _ => None,
    }
}

/// A parsed port entry of a rule.
enum PortSpec {
    Range(PortRange),
    Named(String, Proto),
}

struct Rule {
    /// None: any peer. Peers are (ranges of pods and ipBlocks).
    peers: Option<PeerSet>,
    /// None: every port.
    ports: Option<Vec<PortSpec>>,
}

#[derive(Default)]
struct PeerSet {
    pods: Vec<usize>,
    blocks: Vec<IpRange>,
}

struct Policy {
    namespace: String,
    selector: Option<LabelSelector>,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
}

struct Ctx<'a> {
    pods: &'a [PodInfo],
    ns_labels: BTreeMap<&'a str, Map<String, Value>>,
    /// The indexes into `pods` of each namespace's pods: a selector is matched against the pods
    /// of the namespaces it can select, not against every pod of the cluster.
    by_ns: BTreeMap<&'a str, Vec<usize>>,
}

impl Ctx<'_> {
    fn peer_pods(
        &self,
        policy_ns: &str,
        peer: &Value,
        warn: &mut dyn FnMut(&'static str, String),
        at: &str,
    ) -> Vec<usize> {
        let pod_sel = peer.get("podSelector").filter(|v| !v.is_null());
        let ns_sel = peer.get("namespaceSelector").filter(|v| !v.is_null());
        let pod_sel = match pod_sel {
            Some(s) => match selector(s, &format!("{at}.podSelector"), warn) {
                Some(s) => Some(s),
                None => return vec![],
            },
            None => None,
        };
        let ns_sel = match ns_sel {
            Some(s) => match selector(s, &format!("{at}.namespaceSelector"), warn) {
                Some(s) => Some(s),
                None => return vec![],
            },
            None => None,
        };
        let empty = Map::new();
        self.by_ns
            .iter()
            .filter(|(ns, _)| match &ns_sel {
                None => **ns == policy_ns,
                Some(s) => s.matches(Some(self.ns_labels.get(*ns).unwrap_or(&empty))),
            })
            .flat_map(|(_, idx)| idx.iter().copied())
            .filter(|&i| pod_sel.as_ref().is_none_or(|s| s.matches(Some(&self.pods[i].labels))))
            .collect()
    }

    fn rules(
        &self,
        policy_ns: &str,
        list: &Value,
        peers_key: &str,
        dir: &str,
        warn: &mut dyn FnMut(&'static str, String),
    ) -> Vec<Rule> {
        let mut out = Vec::new();
        for (i, r) in list.as_array().into_iter().flatten().enumerate() {
            let peers_v = r.get(peers_key).and_then(Value::as_array).filter(|a| !a.is_empty());
            let peers = peers_v.map(|list| {
                let mut set = PeerSet::default();
                for (j, p) in list.iter().enumerate() {
                    let at = format!("spec.{dir}[{i}].{peers_key}[{j}]");
                    if let Some(b) = p.get("ipBlock").filter(|v| !v.is_null()) {
                        let cidr = b["cidr"].as_str().unwrap_or("");
                        let Some(range) = v4_range(cidr) else {
                            warn(
                                "UnsupportedPeer",
                                format!("{at}.ipBlock: {cidr:?} is not an IPv4 CIDR; the peer matches nothing"),
                            );
                            continue;
                        };
                        let except: Vec<IpRange> = b["except"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|e| v4_range(e.as_str()?))
                            .collect();
                        set.blocks.extend(subtract(range, &except));
                    } else {
                        set.pods.extend(self.peer_pods(policy_ns, p, warn, &at));
                    }
                }
                set
            });
            let ports_v = r.get("ports").and_then(Value::as_array).filter(|a| !a.is_empty());
            let ports = ports_v.map(|list| {
                let mut specs = Vec::new();
                for p in list {
                    let Some(proto) = Proto::parse(p["protocol"].as_str().unwrap_or("TCP")) else { continue };
                    match p.get("port").filter(|v| !v.is_null()) {
                        None => specs.push(PortSpec::Range(PortRange { proto, lo: 1, hi: 65535 })),
                        Some(Value::String(name)) => specs.push(PortSpec::Named(name.clone(), proto)),
                        Some(v) => {
                            let Some(lo) = v.as_u64().and_then(|n| u16::try_from(n).ok()).filter(|n| *n > 0) else {
                                continue;
                            };
                            let hi = p["endPort"].as_u64().and_then(|n| u16::try_from(n).ok()).unwrap_or(lo).max(lo);
                            specs.push(PortSpec::Range(PortRange { proto, lo, hi }));
                        }
                    }
                }
                specs
            });
            out.push(Rule { peers, ports });
        }
        out
    }

    /// The allow of `rule` for the pod `target` (ingress: names resolve on it).
    fn allow(&self, rule: &Rule, target: &PodInfo, ingress: bool) -> Allow {
        let peers = rule.peers.as_ref().map(|set| {
            let mut ranges: Vec<IpRange> = set.blocks.clone();
            ranges.extend(set.pods.iter().map(|&i| {
                let ip = u32::from(self.pods[i].ip);
                (ip, ip)
            }));
            merge_ranges(ranges)
        });
        let mut named = BTreeSet::new();
        let ports = rule.ports.as_ref().map(|specs| {
            let mut out = BTreeSet::new();
            for s in specs {
                match s {
                    PortSpec::Range(r) => {
                        out.insert(*r);
                    }
                    PortSpec::Named(name, proto) if ingress => {
                        for p in target.ports.iter().filter(|p| &p.name == name && p.proto == *proto) {
                            out.insert(PortRange { proto: *proto, lo: p.port, hi: p.port });
                        }
                    }
                    PortSpec::Named(name, proto) => {
                        // Egress: every destination pod among the peers that has the port.
                        for d in self.pods {
                            let ip = u32::from(d.ip);
                            let in_peers = match &peers {
                                None => true,
                                Some(r) => r.iter().any(|(lo, hi)| (*lo..=*hi).contains(&ip)),
                            };
                            if !in_peers {
                                continue;
                            }
                            for p in d.ports.iter().filter(|p| &p.name == name && p.proto == *proto) {
                                named.insert((d.ip, *proto, p.port));
                            }
                        }
                    }
                }
            }
            out
        });
        Allow { peers, ports, named }
    }
}

/// Computes the policy of every pod from the stored pods (see [`PodInfo::from_json`] plus any
/// virtual peers), namespaces and NetworkPolicies.
pub fn compute(pods: &[PodInfo], namespaces: &[Value], policies: &[Value]) -> Computed {
    compute_for(pods, namespaces, policies, |_| true)
}

/// [`compute`] for the pods `wanted` accepts only (a node needs its own pods' policies; every
/// pod still counts as a peer and for the warnings).
pub fn compute_for(
    pods: &[PodInfo],
    namespaces: &[Value],
    policies: &[Value],
    wanted: impl Fn(&PodInfo) -> bool,
) -> Computed {
    let ns_labels: BTreeMap<&str, Map<String, Value>> =
        namespaces.iter().filter_map(|n| Some((n["metadata"]["name"].as_str()?, labels_of(n)))).collect();
    let mut by_ns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in pods.iter().enumerate() {
        by_ns.entry(p.namespace.as_str()).or_default().push(i);
    }
    let ctx = Ctx { pods, ns_labels, by_ns };
    let mut warnings = Vec::new();
    let mut parsed = Vec::new();
    for p in policies {
        let namespace = p["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
        let mut warn = |reason: &'static str, message: String| {
            warnings.push(Warning { namespace: namespace.clone(), policy: name.clone(), reason, message });
        };
        let spec = &p["spec"];
        let sel_v = spec.get("podSelector").filter(|v| !v.is_null()).cloned().unwrap_or(Value::Object(Map::new()));
        let selector = selector(&sel_v, "spec.podSelector", &mut warn);
        let types: Vec<&str> = spec["policyTypes"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        // Defaults as upstream when unset: Ingress always, Egress when there are egress rules.
        let (ingress_on, egress_on) = if types.is_empty() {
            (true, spec["egress"].as_array().is_some_and(|e| !e.is_empty()))
        } else {
            (types.contains(&"Ingress"), types.contains(&"Egress"))
        };
        let ingress = ingress_on.then(|| ctx.rules(&namespace, &spec["ingress"], "from", "ingress", &mut warn));
        let egress = egress_on.then(|| ctx.rules(&namespace, &spec["egress"], "to", "egress", &mut warn));
        let selects_any = selector.as_ref().is_some_and(|s| {
            let of_ns = ctx.by_ns.get(namespace.as_str()).map(Vec::as_slice).unwrap_or_default();
            of_ns.iter().map(|&i| &pods[i]).any(|pod| !pod.virtual_peer && s.matches(Some(&pod.labels)))
        });
        if !selects_any {
            warn(
                "SelectsNoPods",
                "the podSelector matches no running pod of the namespace; the policy has no effect until one does"
                    .into(),
            );
        }
        parsed.push(Policy { namespace, selector, ingress, egress });
    }
    let mut out: BTreeMap<(String, String), PodPolicy> = BTreeMap::new();
    // A rule's allow depends on the target pod only for named ingress ports: the others are
    // computed once.
    let mut shared: BTreeMap<(usize, usize, bool), Allow> = BTreeMap::new();
    let mut allow_of = |pi: usize, ri: usize, rule: &Rule, target: &PodInfo, ingress: bool| -> Allow {
        let per_target =
            ingress && rule.ports.as_ref().is_some_and(|p| p.iter().any(|s| matches!(s, PortSpec::Named(..))));
        if per_target {
            return ctx.allow(rule, target, ingress);
        }
        shared.entry((pi, ri, ingress)).or_insert_with(|| ctx.allow(rule, target, ingress)).clone()
    };
    let mut of_ns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (pi, pol) in parsed.iter().enumerate() {
        of_ns.entry(pol.namespace.as_str()).or_default().push(pi);
    }
    for target in pods.iter().filter(|p| !p.virtual_peer && wanted(p)) {
        let mut pp = PodPolicy::default();
        for &pi in of_ns.get(target.namespace.as_str()).into_iter().flatten() {
            let pol = &parsed[pi];
            let Some(sel) = &pol.selector else { continue };
            if !sel.matches(Some(&target.labels)) {
                continue;
            }
            if let Some(rules) = &pol.ingress {
                let list = pp.ingress.get_or_insert_with(Vec::new);
                list.extend(rules.iter().enumerate().map(|(ri, r)| allow_of(pi, ri, r, target, true)));
            }
            if let Some(rules) = &pol.egress {
                let list = pp.egress.get_or_insert_with(Vec::new);
                list.extend(rules.iter().enumerate().map(|(ri, r)| allow_of(pi, ri, r, target, false)));
            }
        }
        for list in [&mut pp.ingress, &mut pp.egress].into_iter().flatten() {
            list.sort();
            list.dedup();
        }
        if pp != PodPolicy::default() {
            out.insert((target.namespace.clone(), target.name.clone()), pp);
        }
    }
    Computed { pods: out, warnings }
}
