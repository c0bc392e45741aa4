use serde_json::{json, Value};

use super::health::response;
use super::rules::{health_checks, ruleset, service_ports, NodeInfo};

fn node() -> NodeInfo {
    NodeInfo { name: "n1".into(), pod_cidr: "10.42.0.0/16".into() }
}

fn svc(name: &str, spec: Value) -> Value {
    json!({"metadata": {"namespace": "default", "name": name}, "spec": spec})
}

fn slice(svc: &str, port_name: &str, port: u16, eps: &[(&str, &str, bool)]) -> Value {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(ip, node, ready)| json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": ready}}))
        .collect();
    json!({
        "metadata": {"namespace": "default", "name": format!("{svc}-abc"), "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

fn web() -> Value {
    svc("web", json!({"clusterIP": "10.43.0.10", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}))
}

#[test]
fn cluster_ip_dnats_round_robin_to_ready_endpoints_only() {
    let s = slice("web", "http", 8080, &[("10.42.1.5", "n1", true), ("10.42.2.5", "n2", true), ("10.42.3.5", "n3", false)]);
    let text = ruleset(&[web()], &[s], &[], &node());
    assert!(text.starts_with("table ip shoal-svc\ndelete table ip shoal-svc\n"));
    assert!(text.contains("10.43.0.10 . tcp . 80 : goto svc-default-web-http-tcp"));
    assert!(text.contains(
        "numgen inc mod 2 vmap { 0 : goto ep-default-web-http-tcp-10-42-1-5-8080, 1 : goto ep-default-web-http-tcp-10-42-2-5-8080 }"
    ));
    assert!(text.contains("meta l4proto tcp dnat to 10.42.1.5:8080"));
    assert!(!text.contains("10.42.3.5"), "not-ready endpoint must get no traffic");
    // Outside the pod CIDR is masqueraded; a pod reaching itself (hairpin) too.
    assert!(text.contains("ip saddr != 10.42.0.0/16 jump mark-masq"));
    assert!(text.contains("ip saddr 10.42.1.5 jump mark-masq"));
    assert!(text.contains("meta mark & 0x00004000 == 0x00004000 masquerade"));
}

#[test]
fn terminating_endpoints_take_no_new_connections() {
    let mut s = slice("web", "http", 8080, &[("10.42.1.5", "n1", true), ("10.42.2.5", "n2", true)]);
    s["endpoints"][1]["conditions"] = json!({"ready": false, "serving": true, "terminating": true});
    let text = ruleset(&[web()], &[s], &[], &node());
    assert!(!text.contains("10.42.2.5"));
    assert!(text.contains("numgen inc mod 1 vmap"));
}

#[test]
fn service_without_endpoints_is_rejected() {
    let text = ruleset(&[web()], &[], &[], &node());
    assert!(text.contains("10.43.0.10 . tcp . 80 : goto reject-svc"));
    assert!(text.contains("meta l4proto tcp reject with tcp reset"));
}

#[test]
fn headless_and_external_name_get_no_rules() {
    let headless = svc("h", json!({"clusterIP": "None", "ports": [{"port": 80}]}));
    let ext = svc("e", json!({"type": "ExternalName", "externalName": "example.com", "ports": [{"port": 80}]}));
    assert!(service_ports(&[headless, ext], &[], &[]).is_empty());
}

#[test]
fn selectorless_service_uses_hand_written_endpoints() {
    let s = svc("external-service", json!({"clusterIP": "10.43.0.20", "ports": [{"port": 80}]}));
    let ep = json!({"metadata": {"namespace": "default", "name": "external-service"},
        "subsets": [{"addresses": [{"ip": "11.11.11.11"}, {"ip": "22.22.22.22"}], "ports": [{"port": 80}]}]});
    let text = ruleset(&[s], &[], &[ep], &node());
    assert!(text.contains("10.43.0.20 . tcp . 80 : goto svc-default-external-service-80-tcp"));
    assert!(text.contains("dnat to 11.11.11.11:80"));
    assert!(text.contains("dnat to 22.22.22.22:80"));
}

#[test]
fn node_port_lb_and_external_ips_use_the_external_chain() {
    let s = json!({"metadata": {"namespace": "default", "name": "lb"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.43.0.30", "externalIPs": ["192.168.9.9"], "selector": {"a": "b"},
                 "ports": [{"name": "web", "port": 80, "nodePort": 30123, "protocol": "TCP"},
                           {"name": "dns", "port": 53, "nodePort": 30053, "protocol": "UDP"}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "192.168.1.240"}]}}});
    let mut sl = slice("lb", "web", 8080, &[("10.42.2.7", "n2", true)]);
    sl["ports"] = json!([{"name": "web", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}]);
    let text = ruleset(&[s], &[sl], &[], &node());
    assert!(text.contains("tcp . 30123 : goto ext-default-lb-web-tcp"));
    assert!(text.contains("udp . 30053 : goto ext-default-lb-dns-udp"));
    assert!(text.contains("192.168.1.240 . tcp . 80 : goto ext-default-lb-web-tcp"));
    assert!(text.contains("192.168.9.9 . tcp . 80 : goto ext-default-lb-web-tcp"));
    assert!(text.contains("meta l4proto udp dnat to 10.42.2.7:5353"));
    assert!(text.contains("fib daddr type local ip daddr != 127.0.0.0/8 jump nodeports"));
}

#[test]
fn sctp_is_supported() {
    let s = svc("s", json!({"clusterIP": "10.43.0.40", "selector": {"a": "b"}, "ports": [{"port": 9, "protocol": "SCTP"}]}));
    let mut sl = slice("s", "", 9, &[("10.42.1.9", "n1", true)]);
    sl["ports"][0]["protocol"] = json!("SCTP");
    let text = ruleset(&[s], &[sl], &[], &node());
    assert!(text.contains("10.43.0.40 . sctp . 9 : goto svc-"));
    assert!(text.contains("meta l4proto sctp dnat to 10.42.1.9:9"));
}

#[test]
fn client_ip_affinity_keeps_a_dynamic_set_per_endpoint() {
    let s = svc("web", json!({"clusterIP": "10.43.0.10", "selector": {"app": "web"}, "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}, "ports": [{"name": "http", "port": 80}]}));
    let sl = slice("web", "http", 8080, &[("10.42.1.5", "n1", true), ("10.42.2.5", "n2", true)]);
    let text = ruleset(&[s], &[sl], &[], &node());
    let tag = "default-web-http-tcp-10-42-1-5-8080";
    assert!(text.contains(&format!("set aff-{tag} {{\n    type ipv4_addr; flags dynamic,timeout; timeout 600s;")));
    assert!(text.contains(&format!("ip saddr @aff-{tag} goto ep-{tag}")));
    assert!(text.contains(&format!("update @aff-{tag} {{ ip saddr }}")));
    // Affinity lookups come before the round robin.
    let aff = text.find(&format!("ip saddr @aff-{tag}")).unwrap();
    let rr = text.find("numgen inc mod 2").unwrap();
    assert!(aff < rr);
}

#[test]
fn external_traffic_policy_local_uses_local_endpoints_without_snat() {
    let s = json!({"metadata": {"namespace": "default", "name": "etp"},
        "spec": {"type": "NodePort", "clusterIP": "10.43.0.50", "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
                 "selector": {"a": "b"}, "ports": [{"port": 80, "nodePort": 30080}]}});
    let sl = slice("etp", "", 8080, &[("10.42.1.5", "n1", true), ("10.42.2.5", "n2", true)]);
    let text = ruleset(&[s.clone()], &[sl.clone()], &[], &node());
    let ext = text.split("chain ext-default-etp-80-tcp {").nth(1).unwrap().split('}').next().unwrap();
    assert!(!ext.contains("jump mark-masq\n    goto"), "external clients keep their source address");
    assert!(ext.contains("ip saddr 10.42.0.0/16 goto svc-default-etp-80-tcp"));
    assert!(ext.contains("numgen inc mod 1 vmap { 0 : goto ep-default-etp-80-tcp-10-42-1-5-8080 }"));
    let hc = health_checks(&service_ports(&[s.clone()], &[sl.clone()], &[]), "n1");
    assert_eq!(hc.get(&32000), Some(&("default".to_string(), "etp".to_string(), 1)));
    let hc3 = health_checks(&service_ports(&[s.clone()], &[sl], &[]), "n3");
    assert_eq!(hc3.get(&32000).map(|h| h.2), Some(0));
    // On a node without local endpoints external traffic is dropped, not sent elsewhere.
    let other = NodeInfo { name: "n3".into(), pod_cidr: "10.42.0.0/16".into() };
    let sl = slice("etp", "", 8080, &[("10.42.2.5", "n2", true)]);
    let text = ruleset(&[s], &[sl], &[], &other);
    let ext = text.split("chain ext-default-etp-80-tcp {").nth(1).unwrap().split('}').next().unwrap();
    assert!(ext.trim_end().ends_with("drop"));
}

#[test]
fn internal_traffic_policy_local_keeps_cluster_traffic_on_the_node() {
    let s = svc("itp", json!({"clusterIP": "10.43.0.60", "internalTrafficPolicy": "Local", "selector": {"a": "b"}, "ports": [{"port": 80}]}));
    let sl = slice("itp", "", 8080, &[("10.42.1.5", "n1", true), ("10.42.2.5", "n2", true)]);
    let text = ruleset(&[s], &[sl], &[], &node());
    assert!(text.contains("10.42.1.5"));
    assert!(!text.contains("10.42.2.5"));
}

#[test]
fn health_response_follows_kube_proxy() {
    let ok = response("default", "etp", 2);
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(ok.ends_with(r#"{"localEndpoints":2,"service":{"name":"etp","namespace":"default"}}"#));
    assert!(response("default", "etp", 0).starts_with("HTTP/1.1 503 "));
}

#[test]
fn the_ruleset_is_deterministic() {
    let a = slice("web", "http", 8080, &[("10.42.2.5", "n2", true), ("10.42.1.5", "n1", true)]);
    let b = slice("web", "http", 8080, &[("10.42.1.5", "n1", true), ("10.42.2.5", "n2", true)]);
    assert_eq!(ruleset(&[web()], &[a], &[], &node()), ruleset(&[web()], &[b], &[], &node()));
}
