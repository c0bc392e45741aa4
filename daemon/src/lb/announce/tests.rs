use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use shoal_gossip::Member;
use shoal_kube::Objects;
use shoal_netlink::{FakeNet, Net};
use shoal_store::Store;
use tokio_util::sync::CancellationToken;

use super::*;

fn member(name: &str, id: u64, alive: bool) -> Member {
    let mut attrs = BTreeMap::new();
    attrs.insert("node_id".to_string(), id.to_string());
    Member { name: name.into(), gossip_addr: ([127, 0, 0, 1], 7946).into(), generation: 1, alive, attrs }
}

/// What one node sees: a list of members that the test changes.
#[derive(Clone)]
struct View {
    members: Arc<Mutex<Vec<Member>>>,
}

impl View {
    fn new(alive: &[bool; 3]) -> View {
        let ms = ["n1", "n2", "n3"].iter().enumerate().map(|(i, n)| member(n, i as u64 + 1, alive[i])).collect();
        View { members: Arc::new(Mutex::new(ms)) }
    }

    fn set_alive(&self, name: &str, alive: bool) {
        for m in self.members.lock().unwrap().iter_mut() {
            if m.name == name {
                m.alive = alive;
            }
        }
    }
}

impl ClusterView for View {
    fn members(&self) -> Vec<Member> {
        self.members.lock().unwrap().clone()
    }

    fn voters(&self) -> Vec<u64> {
        vec![1, 2, 3]
    }
}

const VIP: &str = "10.77.0.240";

fn vip() -> IpAddr {
    VIP.parse().unwrap()
}

#[test]
fn election_is_deterministic_and_moves_only_the_dead_nodes_ips() {
    let nodes = ["n1", "n2", "n3", "n4"];
    let ips: Vec<IpAddr> = (1..=40).map(|i| format!("10.0.0.{i}").parse().unwrap()).collect();
    let before: Vec<&str> = ips.iter().map(|ip| elect(*ip, nodes).unwrap()).collect();
    let again: Vec<&str> = ips.iter().map(|ip| elect(*ip, nodes.iter().rev().copied()).unwrap()).collect();
    assert_eq!(before, again);
    let after: Vec<&str> = ips.iter().map(|ip| elect(*ip, ["n1", "n2", "n4"]).unwrap()).collect();
    for (b, a) in before.iter().zip(&after) {
        if *b != "n3" {
            assert_eq!(b, a);
        }
    }
    assert!(before.iter().any(|n| *n != before[0]), "one node won every ip");
}

#[test]
fn quorum_needs_a_majority_of_voters() {
    let ms = vec![member("n1", 1, true), member("n2", 2, false), member("n3", 3, false)];
    assert!(!has_quorum("n1", &ms, &[1, 2, 3]));
    let ms = vec![member("n1", 1, true), member("n2", 2, true), member("n3", 3, false)];
    assert!(has_quorum("n1", &ms, &[1, 2, 3]));
    assert!(has_quorum("n1", &ms, &[]));
}

#[test]
fn eligibility_follows_l2_advertisements_and_local_endpoints() {
    let alive: Vec<String> = vec!["n1".into(), "n2".into(), "n3".into()];
    let mut snap = Snapshot::default();
    let svc = json!({"metadata": {"name": "s", "namespace": "default"}, "spec": {"type": "LoadBalancer"}});
    snap.ips.insert(vip(), vec![svc.clone()]);
    snap.pools = vec![Pool::from_object(
        &json!({"metadata": {"name": "lan"}, "spec": {"addresses": ["10.77.0.0/24"]}}),
    )
    .unwrap()];
    assert!(snap.eligible(vip(), &alive).is_empty(), "a metallb pool without an L2Advertisement is not announced");
    snap.l2ads =
        vec![json!({"spec": {"ipAddressPools": ["lan"], "nodeSelectors": [{"matchLabels": {"edge": "yes"}}]}})];
    snap.nodes.insert("n2".into(), json!({"metadata": {"name": "n2", "labels": {"edge": "yes"}}}));
    snap.nodes.insert(
        "n3".into(),
        json!({"metadata": {"name": "n3", "labels": {"edge": "yes",
        "node.kubernetes.io/exclude-from-external-load-balancers": ""}}}),
    );
    assert_eq!(snap.eligible(vip(), &alive), vec!["n2"]);

    let mut local = svc;
    local["spec"]["externalTrafficPolicy"] = json!("Local");
    snap.ips.insert(vip(), vec![local]);
    snap.l2ads = vec![json!({"spec": {}})];
    snap.local_endpoints.insert("default/s".into(), ["n1".to_string()].into());
    assert_eq!(snap.eligible(vip(), &alive), vec!["n1"]);
}

async fn seeded() -> Objects {
    let objects = Objects::new(Store::in_memory());
    let svc = json!({"metadata": {"name": "svc-loadbalancer", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
        "status": {"loadBalancer": {"ingress": [{"ip": VIP, "ipMode": "VIP"}]}}});
    objects.create(&core("services"), Some("default"), svc).await.unwrap();
    objects
}

struct Node {
    name: &'static str,
    net: Arc<FakeNet>,
    garp: Arc<FakeAnnouncer>,
    view: View,
    announced: watch::Receiver<Vec<Announcement>>,
}

fn start(objects: &Objects, name: &'static str, shutdown: &CancellationToken) -> Node {
    let net = Arc::new(FakeNet::with_links(&["eth0"]));
    let garp = Arc::new(FakeAnnouncer::default());
    let view = View::new(&[true, true, true]);
    let a = LbAnnouncer::new(name, Arc::clone(&net), Arc::clone(&garp), view.clone()).with_link("eth0");
    let announced = a.announced();
    tokio::spawn(a.run(objects.clone(), shutdown.clone()));
    Node { name, net, garp, view, announced }
}

async fn holds(n: &Node) -> bool {
    n.net.list_addresses("eth0").await.unwrap().iter().any(|a| a.addr == vip() && a.prefix == 32)
}

async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut f: F) {
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The value of an unlabelled series in a `/metrics` text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

#[tokio::test]
async fn one_node_announces_and_another_takes_over_when_it_dies() {
    let objects = seeded().await;
    let shutdown = CancellationToken::new();
    let nodes: Vec<Node> = ["n1", "n2", "n3"].into_iter().map(|n| start(&objects, n, &shutdown)).collect();
    let winner = elect(vip(), ["n1", "n2", "n3"]).unwrap();
    let w = nodes.iter().position(|n| n.name == winner).unwrap();

    eventually("the elected node holds the ip", async || holds(&nodes[w]).await).await;
    for (i, n) in nodes.iter().enumerate() {
        if i != w {
            assert!(!holds(n).await, "{} holds the ip too", n.name);
        }
    }
    eventually("a gratuitous arp went out", async || nodes[w].garp.sent().contains(&("eth0".to_string(), vip()))).await;
    let table = nodes[0].announced.borrow().clone();
    assert_eq!(
        table,
        vec![Announcement { ip: vip(), service: "default/svc-loadbalancer".into(), node: Some(winner.into()) }]
    );
    let (events, _) = objects.list(&core("events"), Some("default")).await.unwrap();
    assert!(events.iter().any(|e| e["reason"] == "nodeAssigned" && e["message"].as_str().unwrap().contains(winner)));

    // The winner dies: the others see it dead, the next in line takes the ip.
    for (i, n) in nodes.iter().enumerate() {
        if i != w {
            n.view.set_alive(winner, false);
        }
    }
    let survivors: Vec<&str> = ["n1", "n2", "n3"].into_iter().filter(|n| *n != winner).collect();
    let next = elect(vip(), survivors).unwrap();
    let nx = nodes.iter().position(|n| n.name == next).unwrap();
    eventually("the next node holds the ip", async || holds(&nodes[nx]).await).await;
    let scrape = crate::metrics::Exporter::new(None).render();
    assert!(metric(&scrape, "shoal_lb_failovers_total") >= 1.0, "the take-over is counted: {scrape}");
    assert!(metric(&scrape, "shoal_lb_announcements_total") >= 1.0, "gratuitous arp counted: {scrape}");

    shutdown.cancel();
    eventually("ips are removed on shutdown", async || !holds(&nodes[nx]).await).await;
}

#[tokio::test]
async fn a_node_cut_off_from_the_quorum_withdraws() {
    let objects = seeded().await;
    let shutdown = CancellationToken::new();
    let winner = elect(vip(), ["n1", "n2", "n3"]).unwrap();
    let n = start(&objects, winner, &shutdown);
    eventually("the elected node holds the ip", async || holds(&n).await).await;
    // It sees no one else: it still believes it wins, but has no quorum.
    for other in ["n1", "n2", "n3"].into_iter().filter(|o| *o != winner) {
        n.view.set_alive(other, false);
    }
    eventually("the ip is withdrawn", async || !holds(&n).await).await;
    let table = n.announced.borrow().clone();
    assert_ne!(table.first().and_then(|a| a.node.clone()).as_deref(), Some(winner));
    // The partition heals: it announces again.
    for other in ["n1", "n2", "n3"] {
        n.view.set_alive(other, true);
    }
    eventually("the ip is back", async || holds(&n).await).await;
    shutdown.cancel();
}

#[tokio::test]
async fn a_winner_waits_while_another_host_still_answers() {
    let objects = seeded().await;
    let shutdown = CancellationToken::new();
    let winner = elect(vip(), ["n1", "n2", "n3"]).unwrap();
    let net = Arc::new(FakeNet::with_links(&["eth0"]));
    let garp = Arc::new(FakeAnnouncer::default());
    // The node that held the ip during a partition has not let it go yet.
    garp.set_answered_by(Some([2, 0, 0, 0, 0, 9]));
    let a =
        LbAnnouncer::new(winner, Arc::clone(&net), Arc::clone(&garp), View::new(&[true, true, true])).with_link("eth0");
    tokio::spawn(a.run(objects.clone(), shutdown.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let holds_now = net.list_addresses("eth0").await.unwrap().iter().any(|a| a.addr == vip());
    assert!(!holds_now, "the winner took the ip while another host answered for it");
    assert!(garp.sent().is_empty(), "no announcement while another host answers");
    let scrape = crate::metrics::Exporter::new(None).render();
    assert!(metric(&scrape, "shoal_lb_arp_replies_total") >= 1.0, "the answered probe is counted: {scrape}");
    garp.set_answered_by(None);
    eventually("the ip is taken once nobody else answers", async || {
        net.list_addresses("eth0").await.unwrap().iter().any(|a| a.addr == vip())
    })
    .await;
    shutdown.cancel();
}

#[tokio::test]
async fn a_witness_is_never_elected_and_its_share_goes_to_a_worker() {
    let objects = seeded().await;
    let shutdown = CancellationToken::new();
    // Make the witness the node that would win the IP among all three.
    let witness = elect(vip(), ["n1", "n2", "n3"]).unwrap();
    let workers: Vec<&'static str> = ["n1", "n2", "n3"].into_iter().filter(|n| *n != witness).collect();
    let nodes: Vec<Node> = workers.iter().map(|n| start(&objects, n, &shutdown)).collect();
    for n in &nodes {
        for m in n.view.members.lock().unwrap().iter_mut() {
            if m.name == witness {
                m.attrs.insert(ATTR_LB.to_string(), "false".to_string());
            }
        }
    }
    let expected = elect(vip(), workers.iter().copied()).unwrap();
    let w = nodes.iter().position(|n| n.name == expected).unwrap();
    eventually("a worker holds the ip", async || holds(&nodes[w]).await).await;
    for n in &nodes {
        let table = n.announced.borrow().clone();
        assert_eq!(table.len(), 1);
        assert_eq!(table[0].node.as_deref(), Some(expected), "{} names the witness", n.name);
    }
    // The workers still count the witness's vote: with the other worker gone, the survivor
    // keeps quorum (itself and the witness) and takes the ip.
    let other = nodes.iter().position(|n| n.name != expected).unwrap();
    nodes[other].view.set_alive(expected, false);
    eventually("the surviving worker holds the ip", async || holds(&nodes[other]).await).await;
    shutdown.cancel();
    eventually("ips are removed on shutdown", async || !holds(&nodes[other]).await && !holds(&nodes[w]).await).await;
}
