//! The node's Service ruleset as a pure function of Services, EndpointSlices, Endpoints and
//! the node: one nftables table, `ip shoal-svc`, replaced as a whole.
//!
//! Packet path: `prerouting` (pods and outside clients) and `output` (host processes) jump to
//! `services`, which sends a (destination, protocol, port) to the Service port's chain with one
//! verdict-map lookup; local destinations then try the NodePorts. A Service port has a cluster
//! chain (`svc-…`, endpoints chosen round robin with `numgen inc`) and, when it is reachable from
//! outside (NodePort, LoadBalancer ingress, externalIPs), an external chain (`ext-…`) that applies
//! externalTrafficPolicy. Each endpoint has a chain (`ep-…`) that marks hairpin traffic for
//! masquerade, records ClientIP affinity and DNATs. Packets marked `0x4000` are masqueraded in
//! `postrouting`. Service ports without a usable endpoint are rejected in the filter hooks.
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde_json::Value;
use shoal_netlink::nft::{Hook, Table};

/// The nftables family and name of the proxy's table.
pub const TABLE_FAMILY: &str = "ip";
pub const TABLE_NAME: &str = "shoal-svc";
const MASQ_MARK: &str = "0x00004000";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the ruleset needs to know about the node it runs on.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    /// The cluster pod CIDR; traffic from outside it to a Service is masqueraded.
    pub pod_cidr: String,
}

/// One ready endpoint of a Service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub node: Option<String>,
}

/// One port of one Service, with everything the rules need.
#[derive(Debug, Clone)]
pub(crate) struct ServicePort {
    pub namespace: String,
    pub service: String,
    /// Port name ("" when unnamed).
    pub name: String,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: &'static str,
    pub port: u16,
    pub cluster_ips: Vec<Ipv4Addr>,
    pub node_port: Option<u16>,
    /// LoadBalancer ingress IPs and externalIPs.
    pub external_ips: Vec<Ipv4Addr>,
    pub affinity_timeout: Option<u32>,
    pub etp_local: bool,
    pub itp_local: bool,
    pub health_check_node_port: Option<u16>,
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    fn chain_suffix(&self) -> String {
        let port = if self.name.is_empty() { self.port.to_string() } else { self.name.clone() };
        sanitize(&format!("{}-{}-{}-{}", self.namespace, self.service, port, self.protocol))
    }

    pub(crate) fn local_endpoints(&self, node: &str) -> Vec<&Endpoint> {
        self.endpoints.iter().filter(|e| e.node.as_deref() == Some(node)).collect()
    }

    fn has_external(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty()
    }
}

fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_lowercase() } else { '-' }).collect()
}

fn protocol_of(v: &Value) -> Option<&'static str> {
    match v.as_str().unwrap_or("TCP") {
        "TCP" => Some("tcp"),
        "UDP" => Some("udp"),
        "SCTP" => Some("sctp"),
        _ => None,
    }
}

fn port_of(v: &Value) -> Option<u16> {
    v.as_u64().and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0)
}

fn ipv4s<'a>(vals: impl Iterator<Item = &'a Value>) -> Vec<Ipv4Addr> {
    vals.filter_map(|v| v.as_str()?.parse::<Ipv4Addr>().ok()).collect()
}

fn str_of<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().unwrap_or("")
}

/// Ready endpoints per (namespace, service, port name, protocol), from EndpointSlices
/// (`kubernetes.io/service-name`) and, for Services without a selector, their Endpoints.
type EndpointIndex = BTreeMap<(String, String, String, &'static str), BTreeSet<Endpoint>>;

fn index_slices(slices: &[Value]) -> EndpointIndex {
    let mut idx = EndpointIndex::new();
    for s in slices {
        if !matches!(s["addressType"].as_str(), Some("IPv4") | None) {
            continue;
        }
        let ns = str_of(s, &["metadata", "namespace"]);
        let Some(svc) = s["metadata"]["labels"][SERVICE_NAME_LABEL].as_str() else { continue };
        for p in s["ports"].as_array().into_iter().flatten() {
            let (Some(proto), Some(port)) = (protocol_of(&p["protocol"]), port_of(&p["port"])) else { continue };
            let name = p["name"].as_str().unwrap_or("").to_string();
            let set = idx.entry((ns.into(), svc.into(), name, proto)).or_default();
            for e in s["endpoints"].as_array().into_iter().flatten() {
                // Unset `ready` means ready; terminating endpoints are never ready.
                if e["conditions"]["ready"].as_bool() == Some(false) || e["conditions"]["terminating"] == true {
                    continue;
                }
                let node = e["nodeName"].as_str().map(str::to_string);
                for ip in ipv4s(e["addresses"].as_array().into_iter().flatten()) {
                    set.insert(Endpoint { ip, port, node: node.clone() });
                }
            }
        }
    }
    idx
}

fn index_endpoints(endpoints: &[Value], idx: &mut EndpointIndex) {
    for ep in endpoints {
        let ns = str_of(ep, &["metadata", "namespace"]);
        let svc = str_of(ep, &["metadata", "name"]);
        for subset in ep["subsets"].as_array().into_iter().flatten() {
            for p in subset["ports"].as_array().into_iter().flatten() {
                let (Some(proto), Some(port)) = (protocol_of(&p["protocol"]), port_of(&p["port"])) else { continue };
                let name = p["name"].as_str().unwrap_or("").to_string();
                let set = idx.entry((ns.into(), svc.into(), name, proto)).or_default();
                for a in subset["addresses"].as_array().into_iter().flatten() {
                    if let Some(ip) = a["ip"].as_str().and_then(|i| i.parse().ok()) {
                        set.insert(Endpoint { ip, port, node: a["nodeName"].as_str().map(str::to_string) });
                    }
                }
            }
        }
    }
}

/// Nodes whose `Ready` condition is not `True` (a dead or cut-off node), except `me`: this
/// node's own endpoints are served locally whatever the cluster thinks of it.
pub(crate) fn unready_nodes(nodes: &[Value], me: &str) -> BTreeSet<String> {
    nodes
        .iter()
        .filter(|n| {
            let ready = n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .map(|c| c["status"] == "True");
            ready == Some(false)
        })
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
        .filter(|n| n != me)
        .collect()
}

/// Drops the endpoints on `unready` nodes: a node that stopped answering takes no new
/// connections, without waiting for its pods to be evicted.
pub(crate) fn without_unready(ports: &mut [ServicePort], unready: &BTreeSet<String>) {
    if unready.is_empty() {
        return;
    }
    for p in ports {
        p.endpoints.retain(|e| e.node.as_ref().is_none_or(|n| !unready.contains(n)));
    }
}

/// Every Service port that gets rules, with its ready endpoints. ExternalName and headless
/// Services have none (DNS serves them).
pub(crate) fn service_ports(services: &[Value], slices: &[Value], endpoints: &[Value]) -> Vec<ServicePort> {
    let from_slices = index_slices(slices);
    let mut from_endpoints = EndpointIndex::new();
    index_endpoints(endpoints, &mut from_endpoints);
    let mut out = Vec::new();
    for svc in services {
        let spec = &svc["spec"];
        let ty = spec["type"].as_str().unwrap_or("ClusterIP");
        if ty == "ExternalName" {
            continue;
        }
        let ns = str_of(svc, &["metadata", "namespace"]).to_string();
        let name = str_of(svc, &["metadata", "name"]).to_string();
        let mut cluster_ips = ipv4s(spec["clusterIPs"].as_array().into_iter().flatten());
        if cluster_ips.is_empty() {
            cluster_ips = ipv4s(std::iter::once(&spec["clusterIP"]));
        }
        if cluster_ips.is_empty() {
            // Headless ("None") or not yet allocated.
            continue;
        }
        let mut external_ips = ipv4s(spec["externalIPs"].as_array().into_iter().flatten());
        if ty == "LoadBalancer" {
            let ingress = svc["status"]["loadBalancer"]["ingress"].as_array().into_iter().flatten();
            external_ips.extend(ipv4s(ingress.map(|i| &i["ip"])));
        }
        external_ips.sort();
        external_ips.dedup();
        let external_policy = ty == "NodePort" || ty == "LoadBalancer" || !external_ips.is_empty();
        let etp_local = external_policy && spec["externalTrafficPolicy"].as_str() == Some("Local");
        let itp_local = spec["internalTrafficPolicy"].as_str() == Some("Local");
        let affinity_timeout = (spec["sessionAffinity"].as_str() == Some("ClientIP")).then(|| {
            spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"]
                .as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0)
                .unwrap_or(10800)
        });
        let has_selector = spec["selector"].as_object().is_some_and(|m| !m.is_empty());
        let health_check_node_port = if etp_local && (ty == "LoadBalancer" || ty == "NodePort") {
            port_of(&spec["healthCheckNodePort"])
        } else {
            None
        };
        for p in spec["ports"].as_array().into_iter().flatten() {
            let (Some(protocol), Some(port)) = (protocol_of(&p["protocol"]), port_of(&p["port"])) else { continue };
            let pname = p["name"].as_str().unwrap_or("").to_string();
            let key = (ns.clone(), name.clone(), pname.clone(), protocol);
            let mut eps: BTreeSet<Endpoint> = from_slices.get(&key).cloned().unwrap_or_default();
            if !has_selector {
                if let Some(more) = from_endpoints.get(&key) {
                    eps.extend(more.iter().cloned());
                }
            }
            let node_port = if ty == "NodePort" || ty == "LoadBalancer" { port_of(&p["nodePort"]) } else { None };
            out.push(ServicePort {
                namespace: ns.clone(),
                service: name.clone(),
                name: pname,
                protocol,
                port,
                cluster_ips: cluster_ips.clone(),
                node_port,
                external_ips: external_ips.clone(),
                affinity_timeout,
                etp_local,
                itp_local,
                health_check_node_port,
                endpoints: eps.into_iter().collect(),
            });
        }
    }
    out
}

/// The nft transaction that replaces the node's Service table.
pub fn ruleset(services: &[Value], slices: &[Value], endpoints: &[Value], node: &NodeInfo) -> String {
    render(&service_ports(services, slices, endpoints), node).replace_text()
}

fn ip_tag(ip: &Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

/// Rules that pick one of `eps` (by affinity first, then round robin) or, with none, `empty`.
fn pick_rules(sp: &ServicePort, eps: &[&Endpoint], suffix: &str, empty: &str) -> Vec<String> {
    if eps.is_empty() {
        return vec![empty.to_string()];
    }
    let mut rules = Vec::new();
    if sp.affinity_timeout.is_some() {
        for e in eps {
            let tag = format!("{suffix}-{}-{}", ip_tag(&e.ip), e.port);
            rules.push(format!("ip saddr @aff-{tag} goto ep-{tag}"));
        }
    }
    let arms: Vec<String> =
        eps.iter().enumerate().map(|(i, e)| format!("{i} : goto ep-{suffix}-{}-{}", ip_tag(&e.ip), e.port)).collect();
    rules.push(format!("numgen inc mod {} vmap {{ {} }}", eps.len(), arms.join(", ")));
    rules
}

pub(crate) fn render(ports: &[ServicePort], node: &NodeInfo) -> Table {
    let mut t = Table::new(TABLE_FAMILY, TABLE_NAME);
    let mut service_arms = Vec::new();
    let mut nodeport_arms = Vec::new();
    let mut reject_arms = Vec::new();
    let mut reject_nodeports = Vec::new();
    let mut chains: Vec<(String, Vec<String>)> = Vec::new();
    let mut sets = Vec::new();
    let cidr = &node.pod_cidr;

    for sp in ports {
        let suffix = sp.chain_suffix();
        let proto = sp.protocol;
        let all: Vec<&Endpoint> = sp.endpoints.iter().collect();
        let local = sp.local_endpoints(&node.name);
        let cluster_eps = if sp.itp_local { local.clone() } else { all.clone() };

        // Cluster chain. Whether to masquerade is the endpoint chain's choice (below).
        let svc_rules = pick_rules(sp, &cluster_eps, &suffix, "drop");
        chains.push((format!("svc-{suffix}"), svc_rules));
        for ip in &sp.cluster_ips {
            if cluster_eps.is_empty() {
                reject_arms.push(format!("{ip} . {proto} . {} : goto reject-svc", sp.port));
            } else {
                service_arms.push(format!("{ip} . {proto} . {} : goto svc-{suffix}", sp.port));
            }
        }

        // External chain.
        if sp.has_external() {
            let mut ext = Vec::new();
            if sp.etp_local {
                // Pods and the node itself reach the Service as cluster traffic.
                ext.push(format!("ip saddr {cidr} goto svc-{suffix}"));
                ext.push("fib saddr type local jump mark-masq".to_string());
                ext.push(format!("fib saddr type local goto svc-{suffix}"));
                ext.extend(pick_rules(sp, &local, &suffix, "drop"));
            } else {
                ext.push("jump mark-masq".to_string());
                ext.push(format!("goto svc-{suffix}"));
            }
            chains.push((format!("ext-{suffix}"), ext));
            let usable = if sp.etp_local { !local.is_empty() } else { !all.is_empty() };
            for ip in &sp.external_ips {
                if usable || sp.etp_local {
                    service_arms.push(format!("{ip} . {proto} . {} : goto ext-{suffix}", sp.port));
                } else {
                    reject_arms.push(format!("{ip} . {proto} . {} : goto reject-svc", sp.port));
                }
            }
            if let Some(np) = sp.node_port {
                if usable || sp.etp_local {
                    nodeport_arms.push(format!("{proto} . {np} : goto ext-{suffix}"));
                } else {
                    reject_nodeports.push(format!("{proto} . {np} : goto reject-svc"));
                }
            }
        }

        // Endpoint chains (one per endpoint the chains above can pick).
        let mut used: BTreeSet<&Endpoint> = cluster_eps.iter().copied().collect();
        if sp.etp_local {
            used.extend(local.iter().copied());
        }
        for e in used {
            let tag = format!("{suffix}-{}-{}", ip_tag(&e.ip), e.port);
            // A pod reaching itself through the Service (hairpin) is masqueraded, and so is a
            // client outside the pod CIDR when the endpoint is on another node: the reply would
            // go back from that node without passing this one's conntrack. A local endpoint's
            // reply passes this node anyway, so its outside clients keep their address and are
            // spared the SNAT. (The external chain of externalTrafficPolicy Cluster masquerades
            // all its traffic before it gets here, as kube-proxy does.)
            let mut rules = vec![format!("ip saddr {} jump mark-masq", e.ip)];
            if e.node.as_deref() != Some(node.name.as_str()) {
                rules.push(format!("ip saddr != {cidr} jump mark-masq"));
            }
            if let Some(timeout) = sp.affinity_timeout {
                sets.push((
                    format!("aff-{tag}"),
                    format!("type ipv4_addr; flags dynamic,timeout; timeout {timeout}s;"),
                ));
                rules.push(format!("update @aff-{tag} {{ ip saddr }}"));
            }
            rules.push(format!("meta l4proto {proto} dnat to {}:{}", e.ip, e.port));
            chains.push((format!("ep-{tag}"), rules));
        }
    }

    for (name, body) in &sets {
        t.set("set", name, body);
    }
    let nat = |hook| Hook { kind: "nat", hook, priority: "-100" };
    t.base_chain("prerouting", nat("prerouting"), &["jump services"]);
    t.base_chain("output", nat("output"), &["jump services"]);
    t.base_chain(
        "postrouting",
        Hook { kind: "nat", hook: "postrouting", priority: "100" },
        &[format!("meta mark & {MASQ_MARK} == {MASQ_MARK} masquerade")],
    );
    t.chain("mark-masq", &[format!("meta mark set meta mark | {MASQ_MARK}")]);
    let mut services = Vec::new();
    if !service_arms.is_empty() {
        services.push(format!("ip daddr . meta l4proto . th dport vmap {{ {} }}", service_arms.join(", ")));
    }
    services.push("fib daddr type local ip daddr != 127.0.0.0/8 jump nodeports".to_string());
    t.chain("services", &services);
    let mut nodeports = Vec::new();
    if !nodeport_arms.is_empty() {
        nodeports.push(format!("meta l4proto . th dport vmap {{ {} }}", nodeport_arms.join(", ")));
    }
    t.chain("nodeports", &nodeports);
    for (name, rules) in &chains {
        t.chain(name, rules);
    }

    // Service ports without endpoints: refuse at once instead of timing out.
    let mut filter = Vec::new();
    if !reject_arms.is_empty() {
        filter.push(format!("ip daddr . meta l4proto . th dport vmap {{ {} }}", reject_arms.join(", ")));
    }
    if !reject_nodeports.is_empty() {
        filter.push(format!("fib daddr type local meta l4proto . th dport vmap {{ {} }}", reject_nodeports.join(", ")));
    }
    t.chain("reject-svc", &["meta l4proto tcp reject with tcp reset", "reject"]);
    t.chain("no-endpoints", &filter);
    for hook in ["input", "forward", "output"] {
        t.base_chain(
            &format!("filter-{hook}"),
            Hook { kind: "filter", hook, priority: "-1" },
            &["ct state new jump no-endpoints"],
        );
    }
    t
}

/// Health-check ports of externalTrafficPolicy Local Services: port → (namespace, name,
/// ready endpoints on this node).
pub(crate) fn health_checks(ports: &[ServicePort], node: &str) -> BTreeMap<u16, (String, String, usize)> {
    let mut out: BTreeMap<u16, (String, String, BTreeSet<Ipv4Addr>)> = BTreeMap::new();
    for sp in ports {
        if let Some(hc) = sp.health_check_node_port {
            let e = out.entry(hc).or_insert_with(|| (sp.namespace.clone(), sp.service.clone(), BTreeSet::new()));
            e.2.extend(sp.local_endpoints(node).iter().map(|ep| ep.ip));
        }
    }
    out.into_iter().map(|(p, (ns, n, ips))| (p, (ns, n, ips.len()))).collect()
}
