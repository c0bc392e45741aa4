use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

async fn start(name: &str, port: u16, seeds: &[SocketAddr], loss: Arc<LinkLoss>) -> Membership {
    let mut cfg = MembershipConfig::new(name, "test-cluster", local(port));
    cfg.seeds = seeds.iter().map(|s| s.to_string()).collect();
    let mut attrs = BTreeMap::new();
    attrs.insert("arch".to_string(), "amd64".to_string());
    Membership::start_with_loss(cfg, attrs, loss).await.unwrap()
}

fn alive_names(m: &Membership) -> Vec<String> {
    m.members().into_iter().filter(|m| m.alive).map(|m| m.name).collect()
}

/// Waits up to `limit` for `cond`; returns how long it took, or None.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond().then(|| start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_detect_a_stopped_node_and_its_restart() {
    init_tracing();
    let a = start("node-a", 0, &[], Arc::default()).await;
    let seed = a.advertise_addr();
    let b = start("node-b", 0, &[seed], Arc::default()).await;
    let c = start("node-c", 0, &[seed], Arc::default()).await;
    let c_port = c.advertise_addr().port();
    let all = vec!["node-a".to_string(), "node-b".to_string(), "node-c".to_string()];

    let took = eventually(Duration::from_secs(20), || [&a, &b, &c].iter().all(|m| alive_names(m) == all)).await;
    assert!(took.is_some(), "nodes never saw each other: {:?}", a.members());
    eprintln!("3 nodes converged in {:?}", took.unwrap_or_default());

    b.set_attr("ready", "true").await;
    let seen = eventually(Duration::from_secs(10), || {
        a.members().iter().any(|m| m.name == "node-b" && m.attrs.get("ready").map(String::as_str) == Some("true"))
    })
    .await;
    assert!(seen.is_some(), "attribute never reached node-a");
    let b_at_a = a.members().into_iter().find(|m| m.name == "node-b").unwrap();
    assert_eq!(b_at_a.attrs.get("arch").map(String::as_str), Some("amd64"));

    let old_generation = c.generation();
    c.shutdown().await;
    let stopped = Instant::now();
    let dead = eventually(Duration::from_secs(30), || {
        [&a, &b].iter().all(|m| m.members().iter().any(|member| member.name == "node-c" && !member.alive))
    })
    .await;
    assert!(dead.is_some(), "stopped node never reported dead: {:?}", a.members());
    eprintln!("stopped node reported dead by both peers after {:?}", stopped.elapsed());
    assert_eq!(alive_names(&a), vec!["node-a".to_string(), "node-b".to_string()]);

    // Same name, same port, new generation.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let c = start("node-c", c_port, &[seed], Arc::default()).await;
    assert!(c.generation() > old_generation);
    let restarted = Instant::now();
    let back = eventually(Duration::from_secs(30), || [&a, &b, &c].iter().all(|m| alive_names(m) == all)).await;
    assert!(back.is_some(), "restarted node never reported alive: {:?}", a.members());
    eprintln!("restarted node reported alive after {:?}", restarted.elapsed());
    let c_at_a = a.members().into_iter().find(|m| m.name == "node-c").unwrap();
    assert_eq!(c_at_a.generation, c.generation());

    // Right after a join the detector has few samples and leans on its prior: still prompt.
    c.shutdown().await;
    let stopped = Instant::now();
    let dead = eventually(Duration::from_secs(30), || {
        a.members().iter().any(|member| member.name == "node-c" && !member.alive)
    })
    .await;
    assert!(dead.is_some(), "freshly restarted node never reported dead");
    eprintln!("freshly restarted node reported dead after {:?}", stopped.elapsed());

    for m in [a, b] {
        m.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_changes_and_garbage_is_ignored() {
    init_tracing();
    let a = start("node-a", 0, &[], Arc::default()).await;
    let mut rx = a.subscribe();
    let b = start("node-b", 0, &[a.advertise_addr()], Arc::default()).await;
    let joined = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if rx.borrow_and_update().iter().any(|m| m.name == "node-b" && m.alive) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(joined.is_ok(), "subscriber never saw node-b");

    // Garbage datagrams on the gossip port are dropped; gossip goes on.
    let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for len in [0usize, 1, 3, 7, 100, 1400, 65000] {
        let payload: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
        let _ = junk.send_to(&payload, a.advertise_addr()).await;
    }
    // A chitchat magic number followed by junk.
    let _ = junk.send_to(&[0x5c, 0xc1, 0x00, 0x00, 0xff, 0xff, 0xff], a.advertise_addr()).await;
    b.set_attr("after-garbage", "1").await;
    let seen = eventually(Duration::from_secs(10), || {
        a.members().iter().any(|m| m.name == "node-b" && m.alive && m.attrs.contains_key("after-garbage"))
    })
    .await;
    assert!(seen.is_some(), "gossip stopped after garbage: {:?}", a.members());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossy_link_does_not_flap() {
    init_tracing();
    let a = start("node-a", 0, &[], Arc::default()).await;
    let seed = a.advertise_addr();
    let b = start("node-b", 0, &[seed], Arc::default()).await;
    let loss = Arc::new(LinkLoss::default());
    let c = start("node-c", 0, &[seed], loss.clone()).await;
    let all = vec!["node-a".to_string(), "node-b".to_string(), "node-c".to_string()];
    let converged = eventually(Duration::from_secs(20), || [&a, &b, &c].iter().all(|m| alive_names(m) == all)).await;
    assert!(converged.is_some(), "nodes never saw each other");

    // 30% of node-c's datagrams are lost, in both directions.
    loss.set(300);
    let mut rx = a.subscribe();
    let mut deaths = 0u32;
    let mut was_alive = true;
    let watch_for = Duration::from_secs(20);
    let _ = tokio::time::timeout(watch_for, async {
        loop {
            let alive = rx.borrow_and_update().iter().any(|m| m.name == "node-c" && m.alive);
            if was_alive && !alive {
                deaths += 1;
            }
            was_alive = alive;
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    eprintln!("node-c behind a 30% lossy link was marked dead {deaths} times in {watch_for:?}");
    // Whatever the detector does, the revive hold (2 s, 4 s, 8 s, ...) bounds the flapping:
    // five deaths need at least 2+4+8+16 = 30 s of holds, more than the 20 s watched.
    assert!(deaths <= 4, "node-c flapped {deaths} times in {watch_for:?}");
    for m in [a, b, c] {
        m.shutdown().await;
    }
}

#[tokio::test]
async fn unworkable_settings_are_refused() {
    let base = MembershipConfig::new("node-a", "test-cluster", local(0));
    let mut zero_interval = base.clone();
    zero_interval.gossip_interval = Duration::ZERO;
    let mut no_window = base.clone();
    no_window.sampling_window_size = 0;
    let mut bad_phi = base.clone();
    bad_phi.phi_threshold = f64::NAN;
    for cfg in [zero_interval, no_window, bad_phi] {
        assert!(matches!(Membership::start(cfg, BTreeMap::new()).await, Err(Error::InvalidMembershipConfig { .. })));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_heard_follows_heartbeats_and_stops_with_the_node() {
    init_tracing();
    let a = start("hb-a", 0, &[], Arc::default()).await;
    let b = start("hb-b", 0, &[a.advertise_addr()], Arc::default()).await;
    let both = vec!["hb-a".to_string(), "hb-b".to_string()];
    assert!(eventually(Duration::from_secs(20), || alive_names(&a) == both).await.is_some());
    let age = |m: &Membership, n: &str| m.last_heard(n).and_then(|t| SystemTime::now().duration_since(t).ok());
    assert!(age(&a, "hb-a").is_some_and(|d| d < Duration::from_millis(100)), "a node hears itself now");
    assert!(age(&a, "hb-b").is_some_and(|d| d < Duration::from_secs(3)), "heartbeat of a live peer is fresh");
    assert_eq!(a.last_heard("nobody"), None);

    b.shutdown().await;
    assert!(eventually(Duration::from_secs(30), || alive_names(&a) == vec!["hb-a".to_string()]).await.is_some());
    let last = a.last_heard("hb-b").expect("a dead peer keeps its last heartbeat time");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(a.last_heard("hb-b"), Some(last), "no heartbeat arrives from a stopped node");
    assert!(age(&a, "hb-b").is_some_and(|d| d >= Duration::from_secs(1)));
    a.shutdown().await;
}

async fn start_keyed(name: &str, seeds: &[SocketAddr], keyring: &crate::seal::GossipKeyring) -> Membership {
    let mut cfg = MembershipConfig::new(name, "test-cluster", local(0));
    cfg.seeds = seeds.iter().map(|s| s.to_string()).collect();
    cfg.keyring = keyring.clone();
    Membership::start(cfg, BTreeMap::new()).await.unwrap()
}

/// Nodes sharing the gossip key see each other; a node with another key and a plaintext node
/// pointed at them never appear, and their datagrams are counted as dropped. A rotation run
/// step by step on the live nodes changes no one's liveness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_holding_the_gossip_key_are_members_and_rotation_does_not_flap() {
    init_tracing();
    let ring = crate::seal::GossipKeyring::generate();
    let a = start_keyed("node-a", &[], &ring).await;
    let seed = a.advertise_addr();
    let b = start_keyed("node-b", &[seed], &ring).await;
    let stranger = start_keyed("stranger", &[seed], &crate::seal::GossipKeyring::generate()).await;
    let plaintext = start_keyed("plaintext", &[seed], &crate::seal::GossipKeyring::default()).await;
    let both = vec!["node-a".to_string(), "node-b".to_string()];
    let took = eventually(Duration::from_secs(20), || alive_names(&a) == both && alive_names(&b) == both).await;
    assert!(took.is_some(), "keyed nodes never saw each other: {:?}", a.members());
    tokio::time::sleep(Duration::from_secs(2)).await;
    for m in [&a, &b] {
        let names: Vec<String> = m.members().into_iter().map(|m| m.name).collect();
        assert_eq!(names, both, "no stranger is a member");
    }
    let stats = a.sealer().stats();
    assert!(stats.dropped > 0 && stats.dropped_plaintext > 0, "the strangers' datagrams were counted: {stats:?}");

    // Rotation, each step applied to one node then the other, with gossip running.
    let (mut died, mut seen) = (0, a.subscribe());
    let installed = ring.with_new_key();
    let new_id = *installed.key_ids().last().unwrap();
    for step in [installed.clone(), installed.with_primary(new_id), installed.with_primary(new_id).retired()] {
        a.sealer().set_keyring(step.clone()).unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        b.sealer().set_keyring(step).unwrap();
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if tokio::time::timeout(Duration::from_millis(200), seen.changed()).await.is_ok()
                && seen.borrow().iter().any(|m| !m.alive && m.name == "node-b")
            {
                died += 1;
            }
        }
    }
    assert_eq!(died, 0, "node-b was marked dead during the rotation");
    assert_eq!(alive_names(&a), both);
    assert_eq!(a.sealer().keyring().key_ids(), vec![new_id]);
    stranger.shutdown().await;
    plaintext.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
}
