//! The node's NetworkPolicy ruleset as a pure function of the engine's answer: one nftables
//! table, `inet shoal-netpol`.
//!
//! Packet path: `forward` (pod to pod on this node across the bridge, through br_netfilter;
//! pods of other nodes over routes or VXLAN; outside clients; all after the Service proxy's
//! DNAT, so a Service's traffic is matched at the pod it lands on) and `input` (pods to this
//! node: the cluster resolver on the bridge address, NodePorts, the API). Both accept
//! `established,related` first, so replies and connections already open pass. Then the source
//! of a pod of this node that is isolated for egress jumps to its egress chain (`out-…`), which
//! returns when a rule allows the packet and drops otherwise; and the destination of a pod of
//! this node isolated for ingress jumps to its ingress chain (`in-…`), which accepts or drops.
//! Pods with the same rules share one chain; each distinct set of peers is one interval set
//! (`peers-…`) of pod addresses and ipBlock ranges. Traffic from this node's own processes to
//! its pods (probes) takes the `output` hook and is not filtered, as upstream allows it.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;

use shoal_netlink::nft::{Hook, Table};

use super::engine::{Allow, IpRange, PodPolicy, PortRange};

pub const TABLE_FAMILY: &str = "inet";
pub const TABLE_NAME: &str = "shoal-netpol";

fn short_hash<T: Hash>(v: &T) -> String {
    // FNV-1a over the Debug-free Hash stream: stable across runs for the same input.
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= u64::from(*b);
                self.0 = self.0.wrapping_mul(0x100000001b3);
            }
        }
    }
    let mut h = Fnv(0xcbf29ce484222325);
    v.hash(&mut h);
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

fn range_text((lo, hi): IpRange) -> String {
    if lo == hi {
        Ipv4Addr::from(lo).to_string()
    } else {
        format!("{}-{}", Ipv4Addr::from(lo), Ipv4Addr::from(hi))
    }
}

/// `meta l4proto tcp th dport { 80, 8000-8080 }` per protocol of `ports`.
fn port_matches(ports: &BTreeSet<PortRange>) -> Vec<String> {
    let mut by_proto: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for p in ports {
        let entry = by_proto.entry(p.proto.nft()).or_default();
        if p.lo == 1 && p.hi == 65535 {
            entry.clear();
            entry.push(String::new());
        } else if entry.first().is_none_or(|e| !e.is_empty()) {
            entry.push(if p.lo == p.hi { p.lo.to_string() } else { format!("{}-{}", p.lo, p.hi) });
        }
    }
    by_proto
        .into_iter()
        .map(|(proto, list)| {
            if list.first().is_some_and(String::is_empty) {
                format!("meta l4proto {proto}")
            } else {
                format!("meta l4proto {proto} th dport {{ {} }}", list.join(", "))
            }
        })
        .collect()
}

/// What the table is built of, counted for the benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub chains: usize,
    pub rules: usize,
    pub sets: usize,
    pub set_elements: usize,
}

struct Builder {
    sets: BTreeMap<Vec<IpRange>, String>,
    chains: BTreeMap<(bool, Vec<Allow>), (String, Vec<String>)>,
    counts: Counts,
}

impl Builder {
    fn peer_set(&mut self, ranges: &[IpRange]) -> String {
        if let Some(n) = self.sets.get(ranges) {
            return n.clone();
        }
        let name = format!("peers-{}", short_hash(&ranges));
        self.sets.insert(ranges.to_vec(), name.clone());
        name
    }

    /// The chain of one direction's allows (shared by every pod with the same ones).
    fn chain(&mut self, ingress: bool, allows: &[Allow]) -> String {
        let key = (ingress, allows.to_vec());
        if let Some((n, _)) = self.chains.get(&key) {
            return n.clone();
        }
        let (dir, addr, verdict) = if ingress { ("in", "saddr", "accept") } else { ("out", "daddr", "return") };
        let name = format!("{dir}-{}", short_hash(&key.1));
        let mut rules = Vec::new();
        for a in allows {
            let peer = match &a.peers {
                None => String::new(),
                Some(r) if r.is_empty() => {
                    // No peer at all: only the named ports (already limited) can match.
                    "-".into()
                }
                Some(r) => format!("ip {addr} @{} ", self.peer_set(r)),
            };
            if peer != "-" {
                match &a.ports {
                    None => rules.push(format!("{peer}{verdict}")),
                    Some(p) => {
                        for m in port_matches(p) {
                            rules.push(format!("{peer}{m} {verdict}"));
                        }
                    }
                }
            }
            if !a.named.is_empty() {
                let elems: Vec<String> =
                    a.named.iter().map(|(ip, proto, port)| format!("{ip} . {} . {port}", proto.nft())).collect();
                rules.push(format!("ip {addr} . meta l4proto . th dport {{ {} }} {verdict}", elems.join(", ")));
            }
        }
        rules.push("drop".into());
        self.chains.insert(key, (name.clone(), rules));
        name
    }
}

/// The table for the pods of one node: `local` maps each pod address on this node to its
/// policy (pods no policy isolates left out).
pub fn render(local: &BTreeMap<Ipv4Addr, PodPolicy>) -> (Table, Counts) {
    let mut b = Builder { sets: BTreeMap::new(), chains: BTreeMap::new(), counts: Counts::default() };
    let mut out_arms = Vec::new();
    let mut in_arms = Vec::new();
    for (ip, pp) in local {
        if let Some(eg) = &pp.egress {
            out_arms.push(format!("{ip} : jump {}", b.chain(false, eg)));
        }
        if let Some(ing) = &pp.ingress {
            in_arms.push(format!("{ip} : jump {}", b.chain(true, ing)));
        }
    }
    let mut t = Table::new(TABLE_FAMILY, TABLE_NAME);
    let mut counts = b.counts;
    for (ranges, name) in &b.sets {
        let elems: Vec<String> = ranges.iter().map(|r| range_text(*r)).collect();
        let mut body = String::from("type ipv4_addr; flags interval;");
        if !elems.is_empty() {
            let _ = write!(body, " elements = {{ {} }}", elems.join(", "));
        }
        t.set("set", name, &body);
        counts.sets += 1;
        counts.set_elements += elems.len();
    }
    let mut forward = vec!["ct state established,related accept".to_string()];
    let mut input = forward.clone();
    if !out_arms.is_empty() {
        let egress = format!("ip saddr vmap {{ {} }}", out_arms.join(", "));
        forward.push(egress.clone());
        input.push(egress);
    }
    if !in_arms.is_empty() {
        forward.push(format!("ip daddr vmap {{ {} }}", in_arms.join(", ")));
    }
    let filter = |hook| Hook { kind: "filter", hook, priority: "filter" };
    counts.rules += forward.len() + input.len();
    counts.chains += 2;
    t.base_chain("forward", filter("forward"), &forward);
    t.base_chain("input", filter("input"), &input);
    for (name, rules) in b.chains.values() {
        counts.chains += 1;
        counts.rules += rules.len();
        t.chain(name, rules);
    }
    (t, counts)
}
