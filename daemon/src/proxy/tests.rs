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

fn chain_body<'a>(text: &'a str, chain: &str) -> &'a str {
    let start = text.find(&format!("chain {chain} {{\n")).unwrap_or_else(|| panic!("no chain {chain}"));
    let body = &text[start..];
    &body[..body.find("\n  }\n").unwrap_or(body.len())]
}

fn web() -> Value {
    svc(
        "web",
        json!({"clusterIP": "10.43.0.10", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}),
    )
}

#[test]
fn cluster_ip_dnats_round_robin_to_ready_endpoints_only() {
    let s =
        slice("web", "http", 8080, &[("10.42.1.5", "n1", true), ("10.42.2.5", "n2", true), ("10.42.3.5", "n3", false)]);
    let text = ruleset(&[web()], &[s], &[], &node());
    assert!(text.starts_with("table ip shoal-svc\ndelete table ip shoal-svc\n"));
    assert!(text.contains("10.43.0.10 . tcp . 80 : goto svc-default-web-http-tcp"));
    assert!(text.contains(
        "numgen inc mod 2 vmap { 0 : goto ep-default-web-http-tcp-10-42-1-5-8080, 1 : goto ep-default-web-http-tcp-10-42-2-5-8080 }"
    ));
    assert!(text.contains("meta l4proto tcp dnat to 10.42.1.5:8080"));
    assert!(!text.contains("10.42.3.5"), "not-ready endpoint must get no traffic");
    // Outside the pod CIDR is masqueraded on the way to another node's endpoint, not to a local
    // one; a pod reaching itself (hairpin) is.
    let local = chain_body(&text, "ep-default-web-http-tcp-10-42-1-5-8080");
    let remote = chain_body(&text, "ep-default-web-http-tcp-10-42-2-5-8080");
    assert!(!local.contains("ip saddr != 10.42.0.0/16 jump mark-masq"), "{local}");
    assert!(remote.contains("ip saddr != 10.42.0.0/16 jump mark-masq"), "{remote}");
    assert!(!chain_body(&text, "svc-default-web-http-tcp").contains("mark-masq"));
    assert!(text.contains("ip saddr 10.42.1.5 jump mark-masq"));
    assert!(text.contains("meta mark & 0x00004000 == 0x00004000 masquerade"));
}

#[test]
fn endpoints_on_an_unready_node_take_no_new_connections() {
    use super::rules::{render, unready_nodes, without_unready};
    let s =
        slice("web", "http", 8080, &[("10.42.1.5", "n1", true), ("10.42.2.5", "n2", true), ("10.42.3.5", "n3", true)]);
    let node_obj = |name: &str, ready: &str| json!({"metadata": {"name": name}, "status": {"conditions": [{"type": "Ready", "status": ready}]}});
    // n3 died; n1, this node, is seen NotReady by a stale replica but serves its own pods.
    let nodes = [node_obj("n1", "Unknown"), node_obj("n2", "True"), node_obj("n3", "Unknown")];
    let unready = unready_nodes(&nodes, "n1");
    assert_eq!(unready.iter().map(String::as_str).collect::<Vec<_>>(), ["n3"]);
    let mut ports = service_ports(&[web()], &[s], &[]);
    without_unready(&mut ports, &unready);
    let text = render(&ports, &node()).replace_text();
    assert!(text.contains("10.42.1.5") && text.contains("10.42.2.5"));
    assert!(!text.contains("10.42.3.5"), "the dead node's endpoint must get no traffic");
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
    sl["ports"] =
        json!([{"name": "web", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}]);
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
    let s = svc(
        "s",
        json!({"clusterIP": "10.43.0.40", "selector": {"a": "b"}, "ports": [{"port": 9, "protocol": "SCTP"}]}),
    );
    let mut sl = slice("s", "", 9, &[("10.42.1.9", "n1", true)]);
    sl["ports"][0]["protocol"] = json!("SCTP");
    let text = ruleset(&[s], &[sl], &[], &node());
    assert!(text.contains("10.43.0.40 . sctp . 9 : goto svc-"));
    assert!(text.contains("meta l4proto sctp dnat to 10.42.1.9:9"));
}

#[test]
fn client_ip_affinity_keeps_a_dynamic_set_per_endpoint() {
    let s = svc(
        "web",
        json!({"clusterIP": "10.43.0.10", "selector": {"app": "web"}, "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}, "ports": [{"name": "http", "port": 80}]}),
    );
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
    let text = ruleset(std::slice::from_ref(&s), std::slice::from_ref(&sl), &[], &node());
    let ext = chain_body(&text, "ext-default-etp-80-tcp");
    assert!(!ext.contains("jump mark-masq\n    goto"), "external clients keep their source address");
    assert!(ext.contains("ip saddr 10.42.0.0/16 goto svc-default-etp-80-tcp"));
    assert!(ext.contains("numgen inc mod 1 vmap { 0 : goto ep-default-etp-80-tcp-10-42-1-5-8080 }"));
    let hc = health_checks(&service_ports(std::slice::from_ref(&s), std::slice::from_ref(&sl), &[]), "n1");
    assert_eq!(hc.get(&32000), Some(&("default".to_string(), "etp".to_string(), 1)));
    let hc3 = health_checks(&service_ports(std::slice::from_ref(&s), &[sl], &[]), "n3");
    assert_eq!(hc3.get(&32000).map(|h| h.2), Some(0));
    // On a node without local endpoints external traffic is dropped, not sent elsewhere.
    let other = NodeInfo { name: "n3".into(), pod_cidr: "10.42.0.0/16".into() };
    let sl = slice("etp", "", 8080, &[("10.42.2.5", "n2", true)]);
    let text = ruleset(&[s], &[sl], &[], &other);
    let ext = chain_body(&text, "ext-default-etp-80-tcp");
    assert!(ext.trim_end().ends_with("drop"));
}

#[test]
fn internal_traffic_policy_local_keeps_cluster_traffic_on_the_node() {
    let s = svc(
        "itp",
        json!({"clusterIP": "10.43.0.60", "internalTrafficPolicy": "Local", "selector": {"a": "b"}, "ports": [{"port": 80}]}),
    );
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

/// Root tests: a node namespace with the bridge and the proxy's table, pod namespaces with
/// tiny TCP servers that answer their own name, and clients in a pod namespace and on the node.
mod root {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::process::Command;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::{json, Value};
    use shoal_kube::{resources, Objects};
    use shoal_netlink::LinuxNft;
    use shoal_store::Store;
    use tokio_util::sync::CancellationToken;

    use crate::proxy::Proxy;

    fn sh(args: &[&str]) {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("run {args:?}: {e}"));
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Network namespaces that are deleted when the test ends, even by a panic.
    struct Lab {
        names: Vec<String>,
        stop: Arc<AtomicBool>,
    }

    impl Drop for Lab {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            for n in &self.names {
                let _ = Command::new("ip").args(["netns", "del", n]).output();
            }
        }
    }

    fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|_| panic!("thread in {ns} panicked"))
    }

    fn serve(lab: &Lab, ns: &str, answer: &'static str) {
        let stop = lab.stop.clone();
        let ns = ns.to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            in_netns(&ns, move || {
                let l = TcpListener::bind("0.0.0.0:8080").unwrap_or_else(|e| panic!("bind: {e}"));
                l.set_nonblocking(true).unwrap_or_else(|e| panic!("nonblocking: {e}"));
                let _ = tx.send(());
                while !stop.load(Ordering::SeqCst) {
                    match l.accept() {
                        Ok((mut c, _)) => {
                            let _ = c.write_all(answer.as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        });
        rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|e| panic!("server in pod did not start: {e}"));
    }

    /// What a client in `ns` reads from `addr`, or the error.
    async fn fetch(ns: &str, addr: &str) -> Result<String, String> {
        let ns = ns.to_string();
        let addr: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
        tokio::task::spawn_blocking(move || {
            in_netns(&ns, move || {
                let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
                c.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
                let mut s = String::new();
                c.read_to_string(&mut s).map_err(|e| e.to_string())?;
                Ok(s)
            })
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Retries until the rules are live (the proxy applies them asynchronously).
    async fn fetch_eventually(ns: &str, addr: &str) -> String {
        let mut last = String::new();
        for _ in 0..100 {
            match fetch(ns, addr).await {
                Ok(s) if !s.is_empty() => return s,
                Ok(_) => last = "empty answer".into(),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{addr} never answered from {ns}: {last}");
    }

    /// node: bridge shoal0 10.42.1.1/24; pod1 10.42.1.5 and pod2 10.42.1.6 serve; client 10.42.1.7.
    fn lab(tag: &str) -> Lab {
        for tool in ["ip", "nft"] {
            assert!(Command::new(tool).arg("-V").output().is_ok(), "this test needs `{tool}` and root");
        }
        let p = format!("sp{}{tag}", std::process::id() % 100000);
        let names: Vec<String> = ["node", "pod1", "pod2", "cli"].iter().map(|n| format!("{p}-{n}")).collect();
        let lab = Lab { names: names.clone(), stop: Arc::new(AtomicBool::new(false)) };
        for n in &names {
            sh(&["ip", "netns", "add", n]);
        }
        let node = &names[0];
        let x = |args: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", node.as_str()];
            v.extend_from_slice(args);
            sh(&v);
        };
        x(&["ip", "link", "set", "lo", "up"]);
        x(&["ip", "link", "add", "shoal0", "type", "bridge"]);
        x(&["ip", "addr", "add", "10.42.1.1/24", "dev", "shoal0"]);
        x(&["ip", "link", "set", "shoal0", "up"]);
        x(&["ip", "route", "add", "10.43.0.0/16", "dev", "shoal0"]);
        x(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        // Same-bridge replies must pass conntrack (the proxy sets this on a real node).
        let _ = Command::new("modprobe").arg("br_netfilter").output();
        x(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]);
        for (i, (pod, ip)) in
            [(&names[1], "10.42.1.5"), (&names[2], "10.42.1.6"), (&names[3], "10.42.1.7")].into_iter().enumerate()
        {
            let host = format!("{p}v{i}");
            sh(&["ip", "link", "add", &host, "netns", node, "type", "veth", "peer", "name", "eth0", "netns", pod]);
            x(&["ip", "link", "set", &host, "master", "shoal0", "up"]);
            // A pod reaching itself through a Service comes back out of its own bridge port.
            x(&["ip", "link", "set", &host, "type", "bridge_slave", "hairpin", "on"]);
            let y = |args: &[&str]| {
                let mut v = vec!["ip", "netns", "exec", pod.as_str()];
                v.extend_from_slice(args);
                sh(&v);
            };
            y(&["ip", "link", "set", "lo", "up"]);
            y(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            y(&["ip", "link", "set", "eth0", "up"]);
            y(&["ip", "route", "add", "default", "via", "10.42.1.1"]);
        }
        serve(&lab, &names[1], "pod1");
        serve(&lab, &names[2], "pod2");
        lab
    }

    async fn start(lab: &Lab, objects: &Objects) -> CancellationToken {
        let make = || {
            Proxy::new(objects.clone(), "n1".into(), vec!["10.42.1.1".parse().unwrap_or_else(|e| panic!("{e}"))])
                .with_nft(Arc::new(LinuxNft::in_netns(format!("/run/netns/{}", lab.names[0]))))
                .with_sysctl_root(None)
                .with_health_checks(false)
        };
        // nft accepts the table built from these objects.
        make().sync_once().await.unwrap_or_else(|e| panic!("apply: {e}: {:?}", std::error::Error::source(&e)));
        let before = table_handle(&lab.names[0]);
        let proxy = make();
        let stop = CancellationToken::new();
        tokio::spawn(proxy.run(stop.clone()));
        // The running proxy's first apply replaces the table (a new handle): wait for it, so the
        // test's traffic meets the table the proxy goes on updating.
        for _ in 0..100 {
            if table_handle(&lab.names[0]) != before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop
    }

    /// The kernel's handle of table `ip shoal-svc` in `ns` (a replace gives a new one).
    fn table_handle(ns: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-a", "list", "table", "ip", "shoal-svc"])
            .output()
            .unwrap_or_else(|e| panic!("nft list: {e}"));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines().next().and_then(|l| l.split("# handle ").nth(1)).unwrap_or_default().trim().to_string()
    }

    async fn put(objects: &Objects, plural: &str, obj: Value) {
        let group = if plural == "endpointslices" { "discovery.k8s.io" } else { "" };
        let res = resources::find(group, plural).unwrap_or_else(|| panic!("no resource {plural}"));
        objects.create(&res, Some("default"), obj).await.unwrap_or_else(|e| panic!("create {plural}: {e}"));
    }

    fn web(extra: Value) -> Value {
        let mut spec = json!({"type": "NodePort", "clusterIP": "10.43.0.10", "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080}]});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        json!({"metadata": {"name": "web"}, "spec": spec})
    }

    fn slice() -> Value {
        json!({"metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.42.1.5"], "nodeName": "n1", "conditions": {"ready": true}},
                {"addresses": ["10.42.1.6"], "nodeName": "n1", "conditions": {"ready": true}}]})
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster_ip_and_node_port_reach_both_pods() {
        let lab = lab("a");
        let objects = Objects::new(Store::in_memory());
        put(&objects, "services", web(json!({}))).await;
        put(&objects, "endpointslices", slice()).await;
        let stop = start(&lab, &objects).await;
        let cli = lab.names[3].clone();
        let node = lab.names[0].clone();
        let first = fetch_eventually(&cli, "10.43.0.10:80").await;
        let mut seen = std::collections::BTreeSet::from([first]);
        for _ in 0..6 {
            seen.insert(fetch(&cli, "10.43.0.10:80").await.unwrap_or_else(|e| panic!("cluster ip from pod: {e}")));
        }
        assert_eq!(seen, ["pod1".to_string(), "pod2".to_string()].into(), "round robin over both pods");
        // A host process on the node, through the ClusterIP and the NodePort.
        let a = fetch(&node, "10.43.0.10:80").await.unwrap_or_else(|e| panic!("cluster ip from node: {e}"));
        assert!(a == "pod1" || a == "pod2");
        let b = fetch(&cli, "10.42.1.1:30080").await.unwrap_or_else(|e| panic!("node port from pod: {e}"));
        assert!(b == "pod1" || b == "pod2");
        // Hairpin: a pod reaching its own Service.
        for _ in 0..4 {
            let h = fetch(&lab.names[1], "10.43.0.10:80").await.unwrap_or_else(|e| panic!("hairpin: {e}"));
            assert!(h == "pod1" || h == "pod2");
        }
        // The endpoints go away: the Service refuses at once.
        let res = resources::find("discovery.k8s.io", "endpointslices").unwrap_or_else(|| panic!("no slices"));
        objects.delete(&res, Some("default"), "web-1", Default::default()).await.unwrap_or_else(|e| panic!("{e}"));
        let mut refused = false;
        for _ in 0..100 {
            if let Err(e) = fetch(&cli, "10.43.0.10:80").await {
                refused = e.contains("refused");
                if refused {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(refused, "a Service without endpoints refuses connections");
        stop.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_ip_affinity_keeps_one_pod() {
        let lab = lab("b");
        let objects = Objects::new(Store::in_memory());
        let affinity =
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 300}}});
        put(&objects, "services", web(affinity)).await;
        put(&objects, "endpointslices", slice()).await;
        let stop = start(&lab, &objects).await;
        let cli = lab.names[3].clone();
        let first = fetch_eventually(&cli, "10.43.0.10:80").await;
        for _ in 0..8 {
            assert_eq!(fetch(&cli, "10.43.0.10:80").await.unwrap_or_else(|e| panic!("{e}")), first);
        }
        // Another Service changes the table; the client's affinity entry stays and so does its pod.
        let other = json!({"metadata": {"name": "other"}, "spec": {"clusterIP": "10.43.0.11", "selector": {"app": "other"},
            "ports": [{"port": 80}]}});
        put(&objects, "services", other).await;
        let list = || {
            let out = Command::new("ip")
                .args(["netns", "exec", &lab.names[0], "nft", "list", "table", "ip", "shoal-svc"])
                .output()
                .unwrap_or_else(|e| panic!("nft list: {e}"));
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        let mut table = list();
        for _ in 0..100 {
            if table.contains("10.43.0.11") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            table = list();
        }
        assert!(table.contains("10.43.0.11"), "the new Service never reached the table");
        assert!(table.contains("10.42.1.7 expires"), "the client's affinity entry was lost:\n{table}");
        for _ in 0..8 {
            assert_eq!(fetch(&cli, "10.43.0.10:80").await.unwrap_or_else(|e| panic!("{e}")), first);
        }
        stop.cancel();
    }

    /// `bench/proxy-sync.sh`: time from a change to the rules being live with 1,000 Services
    /// (list from the replica, build, `nft -f -`), plus the debounce the running proxy adds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark; run with bench/proxy-sync.sh"]
    async fn bench_sync_1000_services() {
        let p = format!("spb{}", std::process::id() % 100000);
        sh(&["ip", "netns", "add", &p]);
        let lab = Lab { names: vec![p.clone()], stop: Arc::new(AtomicBool::new(false)) };
        let objects = Objects::new(Store::in_memory());
        for i in 0..1000u32 {
            let ip = format!("10.43.{}.{}", i / 250, i % 250 + 1);
            let svc = json!({"metadata": {"name": format!("s{i}")}, "spec": {"type": "NodePort", "clusterIP": ip,
                "selector": {"app": format!("a{i}")}, "ports": [{"port": 80, "nodePort": 30000 + i}]}});
            put(&objects, "services", svc).await;
            let eps: Vec<Value> = (0..3)
                .map(|j| json!({"addresses": [format!("10.42.{j}.{}", i % 250 + 2)], "nodeName": format!("n{j}"), "conditions": {"ready": true}}))
                .collect();
            let sl = json!({"metadata": {"name": format!("s{i}-x"), "labels": {"kubernetes.io/service-name": format!("s{i}")}},
                "addressType": "IPv4", "ports": [{"port": 8080, "protocol": "TCP"}], "endpoints": eps});
            put(&objects, "endpointslices", sl).await;
        }
        let proxy = Proxy::new(objects.clone(), "n1".into(), vec![])
            .with_nft(Arc::new(LinuxNft::in_netns(format!("/run/netns/{p}"))))
            .with_sysctl_root(None)
            .with_health_checks(false);
        proxy.sync_once().await.unwrap_or_else(|e| panic!("first sync: {e}"));
        let median = |mut v: Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        // Whole-table replace (the first apply after start).
        let mut replace = Vec::new();
        for _ in 0..5 {
            let t = std::time::Instant::now();
            proxy.sync_once().await.unwrap_or_else(|e| panic!("sync: {e}"));
            replace.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        // In-place updates, as the running proxy applies a change: one endpoint moves each time.
        let k = super::super::kinds().unwrap_or_else(|| panic!("no service kinds"));
        let health = super::super::health::HealthServers::new(Vec::new());
        let mut last = None;
        proxy.sync(&k, &mut last, &health).await.unwrap_or_else(|e| panic!("sync: {e}"));
        let res = resources::find("discovery.k8s.io", "endpointslices").unwrap_or_else(|| panic!("no slices"));
        let mut update = Vec::new();
        for round in 0..5u32 {
            let sl = json!({"metadata": {"name": "s0-x", "labels": {"kubernetes.io/service-name": "s0"}},
                "addressType": "IPv4", "ports": [{"port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": [format!("10.42.9.{}", round + 2)], "nodeName": "n9", "conditions": {"ready": true}}]});
            objects
                .update(&res, Some("default"), sl, shoal_kube::UpdateMode::All)
                .await
                .unwrap_or_else(|e| panic!("update slice: {e}"));
            let t = std::time::Instant::now();
            let applied = proxy.sync(&k, &mut last, &health).await.unwrap_or_else(|e| panic!("sync: {e}"));
            update.push(t.elapsed().as_secs_f64() * 1000.0);
            assert!(applied, "the endpoint change must reach the table");
        }
        let (replace, update) = (median(replace), median(update));
        let debounce = super::super::DEBOUNCE.as_secs_f64() * 1000.0;
        println!("proxy_sync_ms_1000_services: {:.0}", update + debounce);
        println!("proxy_sync_update_ms_1000_services: {update:.0}");
        println!("proxy_sync_replace_ms_1000_services: {replace:.0}");
        drop(lab);
    }
}

/// Every sync is observed in `kubeproxy_sync_proxy_rules_duration_seconds`, including the ones
/// that find the table unchanged (kube-proxy observes every sync), and `shoal_proxy_rules`
/// counts the rules of the applied table.
#[tokio::test]
async fn every_sync_is_observed_and_rules_are_counted() {
    use std::sync::Arc;
    let objects = shoal_kube::Objects::new(shoal_store::Store::in_memory());
    let res = shoal_kube::resources::find("", "services").unwrap();
    objects.create(&res, Some("default"), web()).await.unwrap();
    let slices = shoal_kube::resources::find("discovery.k8s.io", "endpointslices").unwrap();
    objects.create(&slices, Some("default"), slice("web", "http", 8080, &[("10.42.1.5", "n2", true)])).await.unwrap();
    let proxy = super::Proxy::new(objects, "n1".into(), vec![])
        .with_nft(Arc::new(shoal_netlink::FakeNft::new()))
        .with_sysctl_root(None)
        .with_health_checks(false);
    let k = super::kinds().unwrap();
    let health = super::health::HealthServers::new(Vec::new());
    let count = |t: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix("kubeproxy_sync_proxy_rules_duration_seconds_count ")?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = count(&crate::metrics::Exporter::new(None).render());
    let mut last = None;
    assert!(proxy.sync(&k, &mut last, &health).await.unwrap(), "the first sync applies");
    assert!(!proxy.sync(&k, &mut last, &health).await.unwrap(), "the second finds nothing to change");
    let text = crate::metrics::Exporter::new(None).render();
    assert!(count(&text) >= before + 2.0, "both syncs observed: {text}");
    let rules = text.lines().find_map(|l| l.strip_prefix("shoal_proxy_rules ")?.parse::<f64>().ok());
    assert!(rules.unwrap_or(0.0) >= 3.0, "the table's rules are counted: {text}");
    assert!(text.contains("kubeproxy_sync_proxy_rules_last_timestamp_seconds "), "{text}");
}
