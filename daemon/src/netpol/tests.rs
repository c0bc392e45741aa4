use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::engine::*;
use super::rules;
use super::*;

fn pod(ns: &str, name: &str, ip: &str, node: &str, labels: Value) -> Value {
    json!({"metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
            {"name": "http", "containerPort": 8080},
            {"name": "dns", "containerPort": 5353, "protocol": "UDP"}]}]},
        "status": {"phase": "Running", "podIP": ip}})
}

fn ns(name: &str, labels: Value) -> Value {
    let mut l = labels.as_object().cloned().unwrap_or_default();
    l.insert("kubernetes.io/metadata.name".into(), json!(name));
    json!({"metadata": {"name": name, "labels": l}})
}

fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({"metadata": {"namespace": ns, "name": name, "uid": format!("uid-{name}")}, "spec": spec})
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// The upstream docs' cluster: `default` (db, frontend, other), `myproject` (client), `other`
/// (client).
fn cluster() -> (Vec<Value>, Vec<Value>) {
    let pods = vec![
        pod("default", "db", "10.42.0.10", "n1", json!({"role": "db"})),
        pod("default", "frontend", "10.42.0.11", "n1", json!({"role": "frontend"})),
        pod("default", "other", "10.42.1.12", "n2", json!({"role": "other"})),
        pod("myproject", "client", "10.42.1.20", "n2", json!({"role": "client"})),
        pod("other", "client", "10.42.2.30", "n3", json!({"role": "client"})),
    ];
    let namespaces =
        vec![ns("default", json!({})), ns("myproject", json!({"project": "myproject"})), ns("other", json!({}))];
    (pods, namespaces)
}

fn computed(policies: &[Value]) -> BTreeMap<String, PodPolicy> {
    let (pods, namespaces) = cluster();
    let infos: Vec<PodInfo> = pods.iter().filter_map(PodInfo::from_json).collect();
    compute(&infos, &namespaces, policies).pods.into_iter().map(|((n, p), v)| (format!("{n}/{p}"), v)).collect()
}

const TCP: Proto = Proto::Tcp;

#[test]
fn no_policy_isolates_nothing() {
    assert!(computed(&[]).is_empty());
}

#[test]
fn default_deny_ingress_isolates_every_pod_of_the_namespace_only() {
    let c = computed(&[policy("default", "deny", json!({"podSelector": {}, "policyTypes": ["Ingress"]}))]);
    assert_eq!(c.len(), 3);
    let db = &c["default/db"];
    assert_eq!(db.ingress, Some(vec![]));
    assert_eq!(db.egress, None);
    assert!(!db.allows_ingress(ip("10.42.0.11"), TCP, 80));
    assert!(db.allows_egress(ip("1.1.1.1"), TCP, 443));
}

#[test]
fn default_deny_all_and_allow_all_patterns() {
    let c = computed(&[policy("default", "deny", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))]);
    assert!(!c["default/db"].allows_egress(ip("10.42.2.30"), TCP, 80));
    let c = computed(&[
        policy("default", "deny", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})),
        policy("default", "allow-all-in", json!({"podSelector": {}, "ingress": [{}]})),
        policy("default", "allow-all-out", json!({"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]})),
    ]);
    let db = &c["default/db"];
    assert!(db.allows_ingress(ip("8.8.8.8"), Proto::Udp, 9));
    assert!(db.allows_egress(ip("8.8.8.8"), Proto::Sctp, 9));
}

/// The example policy of the upstream NetworkPolicy page.
#[test]
fn upstream_test_network_policy_example() {
    let c = computed(&[policy(
        "default",
        "test-network-policy",
        json!({"podSelector": {"matchLabels": {"role": "db"}}, "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [
                {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
                {"podSelector": {"matchLabels": {"role": "frontend"}}}],
                "ports": [{"protocol": "TCP", "port": 6379}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": [{"protocol": "TCP", "port": 5978}]}]}),
    )]);
    assert_eq!(c.len(), 1, "only role=db is selected");
    let db = &c["default/db"];
    assert!(db.allows_ingress(ip("172.17.0.5"), TCP, 6379));
    assert!(!db.allows_ingress(ip("172.17.1.5"), TCP, 6379), "except");
    assert!(!db.allows_ingress(ip("172.17.0.5"), TCP, 6380), "port");
    assert!(!db.allows_ingress(ip("172.17.0.5"), Proto::Udp, 6379), "protocol");
    assert!(db.allows_ingress(ip("10.42.1.20"), TCP, 6379), "pod of myproject");
    assert!(db.allows_ingress(ip("10.42.0.11"), TCP, 6379), "frontend");
    assert!(!db.allows_ingress(ip("10.42.1.12"), TCP, 6379), "other pod of default");
    assert!(!db.allows_ingress(ip("10.42.2.30"), TCP, 6379), "pod of another namespace");
    assert!(db.allows_egress(ip("10.0.0.9"), TCP, 5978));
    assert!(!db.allows_egress(ip("10.0.1.9"), TCP, 5978));
}

#[test]
fn namespace_and_pod_selector_in_one_peer_is_an_and() {
    let c = computed(&[policy(
        "default",
        "p",
        json!({"podSelector": {"matchLabels": {"role": "db"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"project": "myproject"}},
                "podSelector": {"matchLabels": {"role": "client"}}}]}]}),
    )]);
    let db = &c["default/db"];
    assert!(db.allows_ingress(ip("10.42.1.20"), TCP, 1));
    assert!(!db.allows_ingress(ip("10.42.2.30"), TCP, 1), "client of a namespace without the label");
    // Two peers instead: an OR.
    let c = computed(&[policy(
        "default",
        "p",
        json!({"podSelector": {"matchLabels": {"role": "db"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
                {"podSelector": {"matchLabels": {"role": "client"}}}]}]}),
    )]);
    assert!(c["default/db"].allows_ingress(ip("10.42.1.20"), TCP, 1));
    assert!(!c["default/db"].allows_ingress(ip("10.42.2.30"), TCP, 1), "podSelector alone is the policy's namespace");
}

#[test]
fn named_ports_resolve_on_the_receiving_pod() {
    let c = computed(&[
        policy(
            "default",
            "in",
            json!({"podSelector": {"matchLabels": {"role": "db"}},
            "ingress": [{"ports": [{"port": "http"}, {"port": "dns", "protocol": "UDP"}, {"port": "nope"}]}]}),
        ),
        policy(
            "default",
            "out",
            json!({"podSelector": {"matchLabels": {"role": "frontend"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": "http"}]},
                       {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": "http"}, {"port": 443}]}]}),
        ),
    ]);
    let db = &c["default/db"];
    assert!(db.allows_ingress(ip("1.2.3.4"), TCP, 8080));
    assert!(db.allows_ingress(ip("1.2.3.4"), Proto::Udp, 5353));
    assert!(!db.allows_ingress(ip("1.2.3.4"), TCP, 5353), "the name with the other protocol");
    let fe = &c["default/frontend"];
    assert!(fe.allows_egress(ip("10.42.2.30"), TCP, 8080), "a pod with the named port");
    assert!(!fe.allows_egress(ip("8.8.8.8"), TCP, 8080), "a named port never matches a non-pod");
    assert!(fe.allows_egress(ip("8.8.8.8"), TCP, 443));
}

#[test]
fn end_port_ranges_and_protocol_only_ports() {
    let c = computed(&[policy(
        "default",
        "p",
        json!({"podSelector": {"matchLabels": {"role": "db"}},
        "ingress": [{"ports": [{"port": 32000, "endPort": 32768}, {"protocol": "UDP"}, {"protocol": "SCTP", "port": 9}]}]}),
    )]);
    let db = &c["default/db"];
    assert!(db.allows_ingress(ip("1.1.1.1"), TCP, 32000));
    assert!(db.allows_ingress(ip("1.1.1.1"), TCP, 32768));
    assert!(!db.allows_ingress(ip("1.1.1.1"), TCP, 32769));
    assert!(db.allows_ingress(ip("1.1.1.1"), Proto::Udp, 1));
    assert!(db.allows_ingress(ip("1.1.1.1"), Proto::Sctp, 9));
    assert!(!db.allows_ingress(ip("1.1.1.1"), Proto::Sctp, 10));
}

#[test]
fn policy_types_default_as_upstream() {
    // Egress rules without policyTypes: both directions.
    let c = computed(&[policy(
        "default",
        "p",
        json!({"podSelector": {"matchLabels": {"role": "db"}},
        "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}),
    )]);
    let db = &c["default/db"];
    assert_eq!(db.ingress, Some(vec![]));
    assert!(db.allows_egress(ip("9.9.9.9"), Proto::Udp, 53));
    assert!(!db.allows_egress(ip("9.9.9.9"), TCP, 53));
    // Egress only: ingress open.
    let c = computed(&[policy("default", "p", json!({"podSelector": {}, "policyTypes": ["Egress"]}))]);
    assert_eq!(c["default/db"].ingress, None);
}

#[test]
fn policies_selecting_nothing_or_with_bad_peers_warn_and_do_not_stop_others() {
    let (pods, namespaces) = cluster();
    let infos: Vec<PodInfo> = pods.iter().filter_map(PodInfo::from_json).collect();
    let c = compute(
        &infos,
        &namespaces,
        &[
            policy("default", "nobody", json!({"podSelector": {"matchLabels": {"role": "ghost"}}})),
            policy(
                "default",
                "v6",
                json!({"podSelector": {"matchLabels": {"role": "db"}},
                "ingress": [{"from": [{"ipBlock": {"cidr": "fd00::/8"}}]}]}),
            ),
            policy(
                "default",
                "bad-op",
                json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}),
            ),
        ],
    );
    let reasons: Vec<(&str, &str)> = c.warnings.iter().map(|w| (w.policy.as_str(), w.reason)).collect();
    assert!(reasons.contains(&("nobody", "SelectsNoPods")), "{reasons:?}");
    assert!(reasons.contains(&("v6", "UnsupportedPeer")), "{reasons:?}");
    assert!(reasons.contains(&("bad-op", "InvalidSelector")), "{reasons:?}");
    // The IPv6 peer matches nothing, so db is isolated with no IPv4 peer allowed.
    let db = &c.pods[&("default".to_string(), "db".to_string())];
    assert!(!db.allows_ingress(ip("10.42.0.11"), TCP, 80));
}

#[test]
fn the_resolver_peer_answers_the_usual_allow_dns_policy() {
    let (pods, mut namespaces) = cluster();
    namespaces.push(ns("kube-system", json!({})));
    let extra = vec![resolver_peer("n1", ip("10.42.0.1"))];
    let allow_dns = policy(
        "default",
        "allow-dns",
        json!({"podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]}),
    );
    let (local, _) = local_policies(&pods, &namespaces, &[allow_dns], "n1", &extra);
    let db = &local[&ip("10.42.0.10")];
    assert!(db.allows_egress(ip("10.42.0.1"), Proto::Udp, 53));
    assert!(!db.allows_egress(ip("10.42.0.1"), TCP, 6443));
    assert!(!db.allows_egress(ip("8.8.8.8"), Proto::Udp, 53));
    assert_eq!(local.len(), 2, "only the pods of n1: {local:?}");
}

#[test]
fn ruleset_has_conntrack_first_and_shared_chains() {
    let (pods, namespaces) = cluster();
    let pol = policy(
        "default",
        "p",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}], "ports": [{"port": 80}, {"port": 90, "endPort": 99}]}],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.42.0.0/16"]}}]}, {"ports": [{"port": "http"}]}]}),
    );
    let (local, _) = local_policies(&pods, &namespaces, &[pol], "n1", &[]);
    let (table, counts) = rules::render(&local);
    let text = table.definition();
    assert!(text.starts_with("table inet shoal-netpol {\n"), "{text}");
    let fwd = text.split("chain forward {").nth(1).unwrap();
    let first_rule = fwd.lines().nth(2).unwrap().trim();
    assert_eq!(first_rule, "ct state established,related accept");
    assert!(text.contains("ip saddr vmap { 10.42.0.10 : jump out-"), "{text}");
    assert!(text.contains("ip daddr vmap { 10.42.0.10 : jump in-"), "{text}");
    assert!(text.contains("meta l4proto tcp th dport { 80, 90-99 } accept"), "{text}");
    assert!(text.contains("elements = { 10.0.0.0-10.41.255.255, 10.43.0.0-10.255.255.255 }"), "{text}");
    assert!(text.contains("10.42.2.30 . tcp . 8080"), "named egress port at its destination: {text}");
    // db and frontend have the same rules: one chain each way.
    assert_eq!(text.matches("chain in-").count(), 1, "{text}");
    assert_eq!(text.matches("chain out-").count(), 1, "{text}");
    assert_eq!(counts.chains, 4);
    // Nothing isolated: the table still exists, with only the conntrack rules.
    let (empty, _) = rules::render(&BTreeMap::new());
    assert!(!empty.definition().contains("vmap"));
}

#[tokio::test]
async fn a_failed_apply_is_retried_whole_and_changes_are_applied_in_place() {
    use shoal_netlink::FakeNft;
    let nft = Arc::new(FakeNft::new());
    let (pods, namespaces) = cluster();
    let (local, _) = local_policies(&pods, &namespaces, &[], "n1", &[]);
    let (t1, _) = rules::render(&local);
    nft.apply(&t1.replace_text()).unwrap();
    let pol = policy("default", "deny", json!({"podSelector": {}}));
    let (local, _) = local_policies(&pods, &namespaces, &[pol], "n1", &[]);
    let (t2, _) = rules::render(&local);
    let update = t2.update_text(&t1);
    assert!(update.starts_with("flush chain inet shoal-netpol forward\n"), "{update}");
    assert!(!update.contains("delete table"), "{update}");
}

// ---------------------------------------------------------------------------------------------
// Property tests: the engine against a direct reading of the policies.

/// Whether `peer` (pod index or outside address) is allowed to reach `target` on (proto, port),
/// read straight from the policy objects as the upstream docs state it.
fn reference_ingress(
    pods: &[PodInfo],
    ns_labels: &BTreeMap<String, serde_json::Map<String, Value>>,
    policies: &[Value],
    target: usize,
    peer: Ipv4Addr,
    proto: Proto,
    port: u16,
) -> bool {
    let t = &pods[target];
    let sel_matches = |sel: &Value, labels: &serde_json::Map<String, Value>| {
        shoal_kube::selector::LabelSelector::from_json(sel).map(|s| s.matches(Some(labels))).unwrap_or(false)
    };
    let selecting: Vec<&Value> = policies
        .iter()
        .filter(|p| p["metadata"]["namespace"] == t.namespace.as_str())
        .filter(|p| sel_matches(&p["spec"]["podSelector"], &t.labels))
        .filter(|p| {
            let types = p["spec"]["policyTypes"].as_array().cloned().unwrap_or_default();
            types.is_empty() || types.iter().any(|x| x == "Ingress")
        })
        .collect();
    if selecting.is_empty() {
        return true;
    }
    let peer_pod = pods.iter().find(|p| p.ip == peer);
    selecting.iter().any(|p| {
        p["spec"]["ingress"].as_array().into_iter().flatten().any(|rule| {
            let from = rule["from"].as_array().cloned().unwrap_or_default();
            let peer_ok = from.is_empty()
                || from.iter().any(|f| {
                    if let Some(cidr) = f["ipBlock"]["cidr"].as_str() {
                        let (net, len) = shoal_kube::validation::network_policy::parse_cidr(cidr).unwrap();
                        let inside = |c: &str| {
                            let n = shoal_kube::validation::network_policy::parse_cidr(c).unwrap();
                            shoal_kube::validation::network_policy::cidr_contains(n, peer.into())
                        };
                        return shoal_kube::validation::network_policy::cidr_contains((net, len), peer.into())
                            && !f["ipBlock"]["except"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .any(|e| inside(e.as_str().unwrap()));
                    }
                    let Some(pp) = peer_pod else { return false };
                    let ns_ok = match f.get("namespaceSelector") {
                        Some(s) => sel_matches(s, &ns_labels[&pp.namespace]),
                        None => pp.namespace == t.namespace,
                    };
                    let pod_ok = f.get("podSelector").is_none_or(|s| sel_matches(s, &pp.labels));
                    ns_ok && pod_ok
                });
            let ports = rule["ports"].as_array().cloned().unwrap_or_default();
            let port_ok = ports.is_empty()
                || ports.iter().any(|p| {
                    if Proto::parse(p["protocol"].as_str().unwrap_or("TCP")) != Some(proto) {
                        return false;
                    }
                    match &p["port"] {
                        Value::Null => true,
                        Value::String(n) => {
                            t.ports.iter().any(|np| &np.name == n && np.proto == proto && np.port == port)
                        }
                        v => {
                            let lo = v.as_u64().unwrap() as u16;
                            let hi = p["endPort"].as_u64().map(|e| e as u16).unwrap_or(lo);
                            (lo..=hi).contains(&port)
                        }
                    }
                });
            peer_ok && port_ok
        })
    })
}

fn arb_labels() -> impl Strategy<Value = Value> {
    (prop::sample::select(vec!["a", "b"]), prop::sample::select(vec!["x", "y"]))
        .prop_map(|(app, tier)| json!({"app": app, "tier": tier}))
}

fn arb_selector() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        prop::sample::select(vec!["a", "b"]).prop_map(|v| json!({"matchLabels": {"app": v}})),
        prop::sample::select(vec!["x", "y"])
            .prop_map(|v| json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": [v]}]})),
    ]
}

fn arb_peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        arb_selector().prop_map(|s| json!({"podSelector": s})),
        arb_selector().prop_map(|s| json!({"namespaceSelector": s})),
        (arb_selector(), arb_selector()).prop_map(|(a, b)| json!({"podSelector": a, "namespaceSelector": b})),
        (0u8..4, 8u8..=30, 0u8..4).prop_map(|(o, len, e)| {
            let cidr = format!("10.{o}.0.0/{len}");
            let except = format!("10.{o}.{}.0/31", e);
            if len < 31 {
                json!({"ipBlock": {"cidr": cidr, "except": [except]}})
            } else {
                json!({"ipBlock": {"cidr": cidr}})
            }
        }),
    ]
}

fn arb_port() -> impl Strategy<Value = Value> {
    prop_oneof![
        (1u16..6).prop_map(|p| json!({"port": p})),
        (1u16..4, 0u16..3).prop_map(|(p, d)| json!({"port": p, "endPort": p + d})),
        Just(json!({"port": "http"})),
        Just(json!({"protocol": "UDP"})),
    ]
}

fn arb_rule() -> impl Strategy<Value = Value> {
    (prop::collection::vec(arb_peer(), 0..3), prop::collection::vec(arb_port(), 0..3))
        .prop_map(|(from, ports)| json!({"from": from, "ports": ports}))
}

fn arb_policy() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["n0", "n1"]),
        arb_selector(),
        prop::collection::vec(arb_rule(), 0..3),
        prop::sample::select(vec![json!(["Ingress"]), json!([]), json!(["Egress"]), json!(["Ingress", "Egress"])]),
    )
        .prop_map(|(ns, sel, ingress, types)| {
            json!({"metadata": {"namespace": ns, "name": "p"},
            "spec": {"podSelector": sel, "ingress": ingress, "policyTypes": types}})
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn ingress_matches_the_reference_reading(
        pod_labels in prop::collection::vec(arb_labels(), 4),
        ns_app in prop::collection::vec(prop::sample::select(vec!["a", "b"]), 2),
        policies in prop::collection::vec(arb_policy(), 0..4),
        probes in prop::collection::vec((0usize..4, 0usize..6, prop::bool::ANY, 1u16..7), 12),
    ) {
        let namespaces: Vec<Value> = (0..2).map(|i| json!({"metadata": {"name": format!("n{i}"), "labels": {"app": ns_app[i]}}})).collect();
        let ns_labels: BTreeMap<String, serde_json::Map<String, Value>> = namespaces.iter()
            .map(|n| (n["metadata"]["name"].as_str().unwrap().to_string(), n["metadata"]["labels"].as_object().cloned().unwrap())).collect();
        let pods: Vec<PodInfo> = pod_labels.iter().enumerate().map(|(i, l)| {
            PodInfo::from_json(&json!({"metadata": {"namespace": format!("n{}", i % 2), "name": format!("p{i}"), "labels": l},
                "spec": {"nodeName": "n", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 2 + i}]}]},
                "status": {"podIP": format!("10.{}.0.{}", i % 2, i)}})).unwrap()
        }).collect();
        let c = compute(&pods, &namespaces, &policies);
        for (target, peer, udp, port) in probes {
            // Peers: the four pods, or two outside addresses (one inside every small except).
            let peer_ip: Ipv4Addr = if peer < 4 { pods[peer].ip } else { format!("10.{}.0.{}", peer - 4, 1).parse().unwrap() };
            let proto = if udp { Proto::Udp } else { Proto::Tcp };
            let want = reference_ingress(&pods, &ns_labels, &policies, target, peer_ip, proto, port);
            let key = (pods[target].namespace.clone(), pods[target].name.clone());
            let got = c.pods.get(&key).is_none_or(|pp| pp.allows_ingress(peer_ip, proto, port));
            prop_assert_eq!(got, want, "target {} peer {} {:?}/{} policies {}", target, peer_ip, proto, port, serde_json::to_string(&policies).unwrap());
        }
    }

    #[test]
    fn merged_ranges_cover_exactly_the_union(ranges in prop::collection::vec((0u32..200, 0u32..20), 0..8), probe in 0u32..230) {
        let rs: Vec<IpRange> = ranges.iter().map(|(lo, len)| (*lo, lo + len)).collect();
        let merged = merge_ranges(rs.clone());
        let inside = |r: &[IpRange]| r.iter().any(|(lo, hi)| (*lo..=*hi).contains(&probe));
        prop_assert_eq!(inside(&merged), inside(&rs));
        for w in merged.windows(2) {
            prop_assert!(w[0].1 + 1 < w[1].0, "disjoint and not adjacent: {:?}", merged);
        }
    }
}

/// 1,000 pods on 3 nodes in 20 namespaces and 200 policies (10 per namespace: a default deny,
/// allows from labelled pods, from other namespaces, ports by number and name, ipBlocks). Checks
/// the chains are shared; with NETPOL_SCALE_FIGURES=1 prints the figures bench/netpol.sh reports.
#[test]
fn scale_figures() {
    let mut pods = Vec::new();
    for i in 0..1000u32 {
        let ns = format!("ns{}", i % 20);
        let node = format!("n{}", i % 3 + 1);
        let ip = format!("10.42.{}.{}", i / 250, i % 250 + 2);
        pods.push(pod(
            &ns,
            &format!("p{i}"),
            &ip,
            &node,
            json!({"app": format!("app{}", i % 10), "tier": if i % 2 == 0 { "web" } else { "db" }}),
        ));
    }
    let namespaces: Vec<Value> =
        (0..20).map(|i| ns(&format!("ns{i}"), json!({"team": format!("t{}", i % 4)}))).collect();
    let mut policies = Vec::new();
    for n in 0..20 {
        let nsn = format!("ns{n}");
        policies.push(policy(&nsn, "deny", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})));
        policies.push(policy(
            &nsn,
            "dns",
            json!({"podSelector": {}, "policyTypes": ["Egress"],
            "egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]}),
        ));
        for a in 0..8 {
            policies.push(policy(&nsn, &format!("allow-{a}"), json!({
                "podSelector": {"matchLabels": {"app": format!("app{a}")}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": format!("app{}", (a + 1) % 10)}}},
                    {"namespaceSelector": {"matchLabels": {"team": format!("t{}", a % 4)}}, "podSelector": {"matchLabels": {"tier": "web"}}}],
                    "ports": [{"port": "http"}, {"port": 9000 + a, "endPort": 9010 + a}]}],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"tier": "db"}}}], "ports": [{"port": 5432}]},
                    {"to": [{"ipBlock": {"cidr": "192.168.0.0/16", "except": [format!("192.168.{a}.0/24")]}}]}]})));
        }
    }
    assert_eq!(policies.len(), 200);
    let mut times = Vec::new();
    let mut worst = rules::Counts::default();
    let figures = std::env::var_os("NETPOL_SCALE_FIGURES").is_some();
    for round in 0..(if figures { 5 } else { 1 }) {
        for node in ["n1", "n2", "n3"] {
            let started = std::time::Instant::now();
            let (local, _) = local_policies(&pods, &namespaces, &policies, node, &[]);
            let (table, counts) = rules::render(&local);
            let _ = table.replace_text();
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            if round == 0 && counts.rules > worst.rules {
                worst = counts;
            }
        }
    }
    // Pods share chains: far fewer chains than pods.
    assert!(worst.chains < 200, "{worst:?}");
    if figures {
        times.sort_by(|a, b| a.total_cmp(b));
        let p99 = times[((times.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)];
        println!("netpol_scale_rules: {}", worst.rules);
        println!("netpol_scale_chains: {}", worst.chains);
        println!("netpol_scale_sets: {}", worst.sets);
        println!("netpol_scale_set_elements: {}", worst.set_elements);
        println!("netpol_scale_compute_p99_ms: {p99:.1}");
    }
}

/// Applies through a [`shoal_netlink::FakeNft`] and signals each apply.
#[derive(Default)]
struct SignallingNft {
    inner: shoal_netlink::FakeNft,
    applied: tokio::sync::Notify,
}

impl shoal_netlink::Nft for SignallingNft {
    fn apply(&self, ruleset: &str) -> shoal_netlink::Result<()> {
        let r = self.inner.apply(ruleset);
        self.applied.notify_one();
        r
    }
}

/// From a stored policy to the table applied, no timer runs: under a paused clock (which only
/// moves when every task waits on a timer) the change is applied at the instant it was written.
/// A debounce, a batching window or a poll in the path would move the clock.
#[tokio::test(start_paused = true)]
async fn a_change_is_applied_with_no_timer_in_the_path() {
    let objects = shoal_kube::Objects::new(shoal_store::Store::in_memory());
    let k = kinds().unwrap();
    let (pods, namespaces) = cluster();
    for n in namespaces {
        objects.create(&k.namespaces, None, n).await.unwrap();
    }
    for p in pods {
        let ns = p["metadata"]["namespace"].as_str().unwrap().to_string();
        objects.create(&k.pods, Some(&ns), p).await.unwrap();
    }
    let nft = Arc::new(SignallingNft::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let netpol = Netpol::new(objects.clone(), "n1".into()).with_nft(nft.clone());
    let task = tokio::spawn(netpol.run(stop.clone()));
    nft.applied.notified().await;
    assert!(!nft.inner.applied()[0].contains("jump"), "nothing isolated yet");

    let written = tokio::time::Instant::now();
    let deny = policy("default", "deny", json!({"podSelector": {}, "policyTypes": ["Ingress"]}));
    objects.create(&k.policies, Some("default"), deny).await.unwrap();
    loop {
        nft.applied.notified().await;
        if nft.inner.applied().last().is_some_and(|t| t.contains("10.42.0.10 : jump in-")) {
            break;
        }
    }
    assert_eq!(tokio::time::Instant::now() - written, Duration::ZERO, "a timer ran between the write and the apply");
    stop.cancel();
    task.await.unwrap();
}
