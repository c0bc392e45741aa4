//! In-process clusters of 3 and 5 nodes over the in-memory transport.
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_store::testing::{addr_of, TestCluster};
use shoal_store::{Error, Role, Txn, VoterChange};

fn init_tracing() {
    let _ = tracing_subscriber::fmt().with_env_filter("warn").with_test_writer().try_init();
}

type Acked = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

const LONG: Duration = Duration::from_secs(15);

async fn value(c: &TestCluster, id: u64, key: &str) -> Option<Vec<u8>> {
    c.store(id).get(key).await.unwrap().map(|kv| kv.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_forward_writes() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start(dir.path(), 3).await.unwrap();
    let leader = c.wait_leader(LONG).await.unwrap();
    let st = c.store(leader).status();
    assert_eq!(st.members.iter().filter(|m| m.role == Role::Voter).count(), 3);
    // Writes through every node, including followers (forwarded to the leader).
    for id in 1..=3u64 {
        let r = c.store(id).txn(Txn::put(format!("/via/{id}"), vec![id as u8])).await.unwrap();
        assert!(r.succeeded);
        // Read-your-writes on the node that wrote.
        assert_eq!(value(&c, id, &format!("/via/{id}")).await, Some(vec![id as u8]));
    }
    for id in 1..=3u64 {
        c.store(id).sync().await.unwrap();
        let (items, rev) = c.store(id).range("/via/").await.unwrap();
        assert_eq!(items.len(), 3, "node {id} sees every write after sync");
        assert_eq!(rev, c.store(leader).revision());
    }
    // Watch on a follower sees writes made on another node.
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let mut w = c.store(follower).watch("/live/", None).await.unwrap();
    c.store(leader).txn(Txn::put("/live/x", vec![1])).await.unwrap();
    let ev = tokio::time::timeout(LONG, w.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(ev.kv.key, "/live/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_a_new_one_and_writes_continue() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start(dir.path(), 3).await.unwrap();
    let old = c.wait_leader(LONG).await.unwrap();
    c.store(old).txn(Txn::put("/before", vec![1])).await.unwrap();
    c.stop(old).await.unwrap();
    let killed = Instant::now();
    let rest: Vec<u64> = c.running();
    let new = c.wait_leader_among(&rest, LONG).await.unwrap();
    assert_ne!(new, old);
    c.store(new).txn(Txn::put("/first-after", vec![1])).await.unwrap();
    eprintln!("failover_ms: {}", killed.elapsed().as_millis());
    for id in &rest {
        let r = c.store(*id).txn(Txn::put(format!("/after/{id}"), vec![2])).await.unwrap();
        assert!(r.succeeded);
    }
    // The old leader comes back from its file and catches up.
    c.launch(old).await.unwrap();
    c.store(old).sync().await.unwrap();
    assert_eq!(value(&c, old, "/before").await, Some(vec![1]));
    for id in &rest {
        assert_eq!(value(&c, old, &format!("/after/{id}")).await, Some(vec![2]));
    }
}

/// A leader that loses power answers nothing (over QUIC its peers see silence, not a reset).
/// The followers stand for election once its lease is over, and a write and a linearizable
/// read through a follower that were waiting on the dead leader move to the new one instead of
/// waiting out the 10 s request timeout. A longer lease than the default here, so that the
/// figures printed stand out from scheduling noise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_dead_leader_is_replaced_just_after_its_lease() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start_with(dir.path(), 3, |cfg| {
        cfg.election_timeout_min_ms = 1000;
        cfg.election_timeout_max_ms = 1100;
    })
    .await
    .unwrap();
    let old = c.wait_leader(LONG).await.unwrap();
    let follower = c.running().into_iter().find(|i| *i != old).unwrap();
    c.store(follower).txn(Txn::put("/before", vec![1])).await.unwrap();
    c.net.black_hole(&addr_of(old));
    let killed = Instant::now();
    let (w, r) = (c.store(follower).clone(), c.store(follower).clone());
    let write = tokio::spawn(async move { (w.txn(Txn::put("/after", vec![2])).await, Instant::now()) });
    let read = tokio::spawn(async move { (r.sync().await, Instant::now()) });
    let rest: Vec<u64> = c.running().into_iter().filter(|i| *i != old).collect();
    let new = c.wait_leader_among(&rest, LONG).await.unwrap();
    let elected = killed.elapsed();
    assert_ne!(new, old);
    let (wrote, wrote_at) = write.await.unwrap();
    assert!(wrote.unwrap().succeeded);
    let (synced, synced_at) = read.await.unwrap();
    synced.unwrap();
    eprintln!(
        "new leader after {} ms, write after {} ms, read after {} ms",
        elected.as_millis(),
        wrote_at.duration_since(killed).as_millis(),
        synced_at.duration_since(killed).as_millis()
    );
    // One election round takes the lease plus up to 0.2 s; even three rounds stay far below
    // the request timeout a call to the dead leader would wait out.
    let limit = Duration::from_secs(5);
    assert!(wrote_at.duration_since(killed) < limit, "the write waited on the dead leader");
    assert!(synced_at.duration_since(killed) < limit, "the read waited on the dead leader");
    assert_eq!(value(&c, new, "/after").await, Some(vec![2]));
}

/// A node with a candidacy delay (a witness) votes at once but never stands before the
/// others: when the leader dies, the other survivor leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_candidacy_delay_lets_the_others_lead() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start_with(dir.path(), 3, |cfg| {
        if cfg.node_id == 3 {
            cfg.candidacy_delay_ms = 1000;
        }
    })
    .await
    .unwrap();
    let old = c.wait_leader(LONG).await.unwrap();
    assert_ne!(old, 3, "the delayed node stood for election first");
    c.net.black_hole(&addr_of(old));
    let rest: Vec<u64> = c.running().into_iter().filter(|i| *i != old).collect();
    let new = c.wait_leader_among(&rest, LONG).await.unwrap();
    assert_ne!(new, 3, "the delayed node leads although another survivor could");
    assert!(c.store(3).txn(Txn::put("/via-witness", vec![3])).await.unwrap().succeeded);
}

/// A follower's leader watch wakes when the leader dies and a new one takes over, and names
/// the leader `status()` settles on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_watch_follows_a_failover() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start(dir.path(), 3).await.unwrap();
    let old = c.wait_leader(LONG).await.unwrap();
    let follower = c.running().into_iter().find(|i| *i != old).unwrap();
    let mut w = c.store(follower).leader_watch();
    assert_eq!(w.leader(), Some(old));
    c.stop(old).await.unwrap();
    let new = tokio::time::timeout(LONG, async {
        loop {
            w.changed().await.unwrap();
            if let Some(l) = w.leader().filter(|l| *l != old) {
                return l;
            }
        }
    })
    .await
    .expect("the watch never saw a new leader");
    let rest = c.running();
    assert_eq!(c.wait_leader_among(&rest, LONG).await.unwrap(), new, "the watch and status() disagree");
    // A memory store has no leader, and its watch never fires.
    let mut mem = shoal_store::Store::in_memory().leader_watch();
    assert_eq!(mem.leader(), None);
    assert!(tokio::time::timeout(Duration::from_millis(50), mem.changed()).await.is_err());
}

/// Two workers and a witness (node 3, with a candidacy delay). One worker falls behind and
/// restarts while the leader is frozen (SIGSTOP: its calls hang, it still believes it leads);
/// then the leader resumes. The lagging worker cannot win (its log is behind), and it must not
/// keep the others from electing: the witness leads while the leader is frozen, and once the
/// leader resumes every node agrees on one leader and writes go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_restarted_voter_does_not_stall_elections_after_a_frozen_leader_resumes() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start_with(dir.path(), 3, |cfg| {
        if cfg.node_id == 3 {
            cfg.candidacy_delay_ms = 2 * cfg.election_timeout_max_ms;
        }
    })
    .await
    .unwrap();
    let leader = c.wait_leader(LONG).await.unwrap();
    assert_ne!(leader, 3);
    let lagging = if leader == 1 { 2 } else { 1 };
    // The lagging worker misses writes the leader and the witness commit.
    c.net.isolate(&addr_of(lagging), &c.addrs());
    for i in 0..20u8 {
        assert!(c.store(leader).txn(Txn::put(format!("/missed/{i}"), vec![i])).await.unwrap().succeeded);
    }
    c.stop(lagging).await.unwrap();
    c.net.heal_all();
    c.net.black_hole(&addr_of(leader));
    c.launch(lagging).await.unwrap();
    let both = [lagging, 3];
    let new = c.wait_leader_among(&both, LONG).await.expect("the witness and the lagging worker elect no leader");
    assert_eq!(new, 3, "only the witness has every committed entry");
    // The frozen leader resumes.
    c.net.heal_all();
    let all = c.wait_leader(LONG).await.expect("no leader after the frozen leader resumed");
    for id in 1..=3u64 {
        let r = tokio::time::timeout(LONG, c.store(id).txn(Txn::put(format!("/after/{id}"), vec![id as u8])))
            .await
            .expect("write hangs")
            .unwrap();
        assert!(r.succeeded);
    }
    let again = c.wait_leader(LONG).await.unwrap();
    assert_eq!(all, again, "leadership kept changing");
    c.store(lagging).sync().await.unwrap();
    assert_eq!(value(&c, lagging, "/missed/19").await, Some(vec![19]));
}

/// A follower whose link to the leader is down (the other follower still reaches both) never
/// hears the leader. It must not unseat it: before it stands it asks for a pre-vote, and the
/// other follower, who still hears the leader, refuses. Without that, each failed candidacy
/// raises its term, and the leader steps down the moment the link heals and it sees that
/// term. The leader stays, writes go on, and the leader keeps its term when the link heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_cannot_hear_the_leader_does_not_unseat_it() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start(dir.path(), 3).await.unwrap();
    let leader = c.wait_leader(LONG).await.unwrap();
    let deaf = c.running().into_iter().find(|i| *i != leader).unwrap();
    let other = c.running().into_iter().find(|i| *i != leader && *i != deaf).unwrap();
    c.net.cut(&addr_of(leader), &addr_of(deaf));
    let term = c.store(leader).status().term;
    let until = Instant::now() + Duration::from_secs(4);
    let mut i = 0u32;
    while Instant::now() < until {
        let r = tokio::time::timeout(LONG, c.store(other).txn(Txn::put(format!("/w/{i}"), vec![1])))
            .await
            .expect("write hangs")
            .unwrap();
        assert!(r.succeeded);
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let st = c.store(leader).status();
    assert_eq!(st.leader, Some(leader), "the deaf follower unseated the leader");
    assert_eq!(st.term, term, "the term moved while the leader was alive");
    // Healed, the deaf follower catches up, and its failed candidacies (none with pre-votes)
    // did not leave it a higher term that would make the leader step down when it reaches it.
    c.net.heal_all();
    c.store(deaf).sync().await.unwrap();
    assert_eq!(value(&c, deaf, &format!("/w/{}", i - 1)).await, Some(vec![1]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(c.store(other).txn(Txn::put("/after-heal", vec![1])).await.unwrap().succeeded);
    let st = c.store(deaf).status();
    assert_eq!((st.leader, st.term), (Some(leader), term), "the leader stepped down once the deaf follower was heard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_leader_is_replaced_and_catches_up_after_heal() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start(dir.path(), 3).await.unwrap();
    let old = c.wait_leader(LONG).await.unwrap();
    c.net.isolate(&addr_of(old), &c.addrs());
    let majority: Vec<u64> = c.running().into_iter().filter(|i| *i != old).collect();
    let deadline = Instant::now() + LONG;
    let new = loop {
        let l = c.store(majority[0]).status().leader;
        if let Some(l) = l.filter(|l| *l != old) {
            break l;
        }
        assert!(Instant::now() < deadline, "majority elected no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    c.store(new).txn(Txn::put("/during", vec![7])).await.unwrap();
    // The isolated old leader cannot confirm a read.
    let old_store = c.store(old).clone();
    let stale_read = tokio::spawn(async move { old_store.sync().await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.net.heal_all();
    // After healing, the old leader follows and catches up.
    c.wait_leader(LONG).await.unwrap();
    c.store(old).sync().await.unwrap();
    assert_eq!(value(&c, old, "/during").await, Some(vec![7]));
    // A read index asked during the partition either waited for the heal or failed; it never
    // answered from the stale side without the write.
    if let Ok(Ok(())) = stale_read.await {
        assert_eq!(value(&c, old, "/during").await, Some(vec![7]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_restarts() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start(dir.path(), 3).await.unwrap();
    let acked: Acked = Arc::default();
    let stop_at = Instant::now() + Duration::from_secs(3);
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let s = c.store(1 + w % 3).clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0u32;
            while Instant::now() < stop_at {
                let key = format!("/acked/{w}/{i}");
                let val = format!("{w}-{i}").into_bytes();
                if let Ok(r) = s.txn(Txn::put(key.clone(), val.clone())).await {
                    if r.succeeded {
                        acked.lock().unwrap().push((key, val));
                    }
                }
                i += 1;
            }
        }));
    }
    // Restart one follower while writes flow.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let leader = c.wait_leader(LONG).await.unwrap();
    let victim = c.running().into_iter().find(|i| *i != leader).unwrap();
    c.stop(victim).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.launch(victim).await.unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 10, "writers made progress");
    // Restart every node from its file.
    c.stop_all().await.unwrap();
    for id in 1..=3 {
        c.launch(id).await.unwrap();
    }
    c.wait_leader(LONG).await.unwrap();
    for id in 1..=3 {
        c.store(id).sync().await.unwrap();
        for (k, v) in &acked {
            assert_eq!(value(&c, id, k).await.as_ref(), Some(v), "node {id} lost acknowledged write {k}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_catches_up_from_a_snapshot_and_the_log_stays_bounded() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start_with(dir.path(), 3, |cfg| {
        cfg.snapshot_every = 50;
        cfg.keep_logs_behind_snapshot = 10;
    })
    .await
    .unwrap();
    let leader = c.wait_leader(LONG).await.unwrap();
    let lagging = c.running().into_iter().find(|i| *i != leader).unwrap();
    c.stop(lagging).await.unwrap();
    for i in 0..400u32 {
        c.store(leader).txn(Txn::put(format!("/s/{}", i % 40), i.to_le_bytes().to_vec())).await.unwrap();
    }
    let size_after_400 = std::fs::metadata(c.config(leader).data_dir.join("store.redb")).unwrap().len();
    for i in 400..1200u32 {
        c.store(leader).txn(Txn::put(format!("/s/{}", i % 40), i.to_le_bytes().to_vec())).await.unwrap();
    }
    let size_after_1200 = std::fs::metadata(c.config(leader).data_dir.join("store.redb")).unwrap().len();
    // redb grows its file in regions and never shrinks it, and purging follows snapshots
    // asynchronously: allow slack, but not growth with the number of writes.
    assert!(
        size_after_1200 <= size_after_400 * 4,
        "file grew from {size_after_400} to {size_after_1200} bytes while the data stayed the same size"
    );
    c.launch(lagging).await.unwrap();
    c.store(lagging).sync().await.unwrap();
    let (items, rev) = c.store(lagging).range("/s/").await.unwrap();
    assert_eq!(items.len(), 40);
    assert_eq!(rev, c.store(leader).revision());
    assert_eq!(value(&c, lagging, "/s/39").await, Some(1199u32.to_le_bytes().to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_survive_losing_two_voters_one_after_the_other() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut c =
        TestCluster::start_with(dir.path(), 5, |cfg| cfg.voter_grace = Duration::from_millis(500)).await.unwrap();
    let leader = c.wait_leader(LONG).await.unwrap();
    assert_eq!(c.store(leader).status().members.iter().filter(|m| m.role == Role::Voter).count(), 5);
    c.store(leader).txn(Txn::put("/five", vec![5])).await.unwrap();

    for round in 0..2 {
        let leader = c.wait_leader(LONG).await.unwrap();
        let victim = c.running().into_iter().find(|i| *i != leader).unwrap();
        c.stop(victim).await.unwrap();
        // Reconcile until the dead voter is gone from the voters.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let healthy: BTreeSet<u64> = c.running().into_iter().collect();
            let mut changes: Vec<VoterChange> = Vec::new();
            for id in c.running() {
                if let Ok(Some(ch)) = c.store(id).reconcile_voters(&healthy, Instant::now()).await {
                    changes.push(ch);
                }
            }
            let l = c.wait_leader(LONG).await.unwrap();
            let voters: BTreeSet<u64> =
                c.store(l).status().members.iter().filter(|m| m.role == Role::Voter).map(|m| m.node_id).collect();
            if !voters.contains(&victim) && voters.len() == 3 {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: voters still {voters:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let l = c.wait_leader(LONG).await.unwrap();
        c.store(l).txn(Txn::put(format!("/round/{round}"), vec![round])).await.unwrap();
    }
    for id in c.running() {
        c.store(id).sync().await.unwrap();
        assert_eq!(value(&c, id, "/five").await, Some(vec![5]));
        assert_eq!(value(&c, id, "/round/1").await, Some(vec![1]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_fail_cleanly_without_a_quorum() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut c =
        TestCluster::start_with(dir.path(), 3, |cfg| cfg.request_timeout = Duration::from_secs(2)).await.unwrap();
    let leader = c.wait_leader(LONG).await.unwrap();
    for id in c.running() {
        if id != leader {
            c.stop(id).await.unwrap();
        }
    }
    let res = c.store(leader).txn(Txn::put("/noquorum", vec![1])).await;
    assert!(matches!(res, Err(Error::NoLeader { .. })), "got {res:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cluster_writes_nothing() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start(dir.path(), 3).await.unwrap();
    c.store(1).txn(Txn::put("/idle", vec![1])).await.unwrap();
    for id in 1..=3 {
        c.store(id).sync().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let files: Vec<_> = (1..=3).map(|id| c.config(id).data_dir.join("store.redb")).collect();
    let before: Vec<_> = files.iter().map(|f| std::fs::metadata(f).unwrap().modified().unwrap()).collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: Vec<_> = files.iter().map(|f| std::fs::metadata(f).unwrap().modified().unwrap()).collect();
    assert_eq!(before, after, "heartbeats must not write to any node's file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_through_a_follower_as_learner() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start(dir.path(), 3).await.unwrap();
    let leader = c.wait_leader(LONG).await.unwrap();
    c.store(leader).txn(Txn::put("/before-join", vec![1])).await.unwrap();
    let follower = c.running().into_iter().find(|i| *i != leader).unwrap();
    let s4 = c.launch(4).await.unwrap();
    s4.join_via(&addr_of(follower)).await.unwrap();
    s4.sync().await.unwrap();
    assert_eq!(value(&c, 4, "/before-join").await, Some(vec![1]));
    let st = c.store(leader).status();
    let m4 = st.members.iter().find(|m| m.node_id == 4).expect("node 4 is a member");
    assert_eq!(m4.role, Role::Learner);
    assert_eq!(m4.addr, addr_of(4));
    // Writes through the learner are forwarded too.
    s4.txn(Txn::put("/from-learner", vec![4])).await.unwrap();
    c.store(leader).sync().await.unwrap();
    assert_eq!(value(&c, leader, "/from-learner").await, Some(vec![4]));
    // Joining again (a restart) changes nothing.
    s4.join_via(&addr_of(leader)).await.unwrap();
    assert_eq!(c.store(leader).status().members.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_kept_alive_through_a_follower_survive_failover_and_expire_after() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start(dir.path(), 3).await.unwrap();
    let leader = c.wait_leader(LONG).await.unwrap();
    let follower = c.running().into_iter().find(|i| *i != leader).unwrap();
    let f = c.store(follower).clone();
    let lease = f.lease_grant(Duration::from_millis(1500)).await.unwrap();
    f.txn(Txn::ops(vec![shoal_store::Op::Put { key: "/lease/k".into(), value: vec![1], lease: Some(lease) }]))
        .await
        .unwrap();
    // Kept alive for longer than its TTL, across a leader change.
    for _ in 0..6 {
        f.lease_keepalive(lease).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    c.stop(leader).await.unwrap();
    let rest = c.running();
    c.wait_leader_among(&rest, LONG).await.unwrap();
    f.lease_keepalive(lease).await.unwrap();
    assert_eq!(value(&c, follower, "/lease/k").await, Some(vec![1]));
    // Left alone, it expires and its key is deleted everywhere.
    let deadline = Instant::now() + LONG;
    loop {
        f.sync().await.unwrap();
        if value(&c, follower, "/lease/k").await.is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "lease never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A keepalive that finds no leader in time (a loaded machine) says nothing about the
    // lease: ask again.
    let answer = loop {
        match f.lease_keepalive(lease).await {
            Err(Error::NoLeader { .. }) if Instant::now() < deadline => continue,
            other => break other,
        }
    };
    assert!(matches!(answer, Err(Error::LeaseNotFound { .. })), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_learner_is_dropped_and_can_be_added_back() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start_with(dir.path(), 4, |cfg| {
        cfg.voter_grace = Duration::from_secs(60);
        cfg.learner_grace = Duration::from_millis(500);
    })
    .await
    .unwrap();
    let leader = c.wait_leader(LONG).await.unwrap();
    let learner = c
        .store(leader)
        .status()
        .members
        .iter()
        .find(|m| m.role == Role::Learner)
        .map(|m| m.node_id)
        .expect("4 nodes: 3 voters and a learner");
    c.stop(learner).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let healthy: BTreeSet<u64> = c.running().into_iter().collect();
        let l = c.wait_leader(LONG).await.unwrap();
        let _ = c.store(l).reconcile_voters(&healthy, Instant::now()).await;
        if c.store(l).status().members.iter().all(|m| m.node_id != learner) {
            break;
        }
        assert!(Instant::now() < deadline, "learner {learner} still a member");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Writes go on without it; when it returns and is added back, it catches up.
    let l = c.wait_leader(LONG).await.unwrap();
    c.store(l).txn(Txn::put("/while-away", vec![7])).await.unwrap();
    c.launch(learner).await.unwrap();
    c.store(l).add_learner(learner, addr_of(learner)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while value(&c, learner, "/while-away").await != Some(vec![7]) {
        assert!(Instant::now() < deadline, "returning learner never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(c.store(l).status().members.iter().any(|m| m.node_id == learner && m.role == Role::Learner));
}

/// A leader that keeps stalling a little longer than its lease (a starved process on an
/// overloaded machine) is replaced once, not at every stall: leaders replaced in a row make the
/// followers wait longer before they stand, so the cluster goes on committing instead of
/// electing. Without that, each of the six stalls elects a new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_keeps_stalling_is_not_replaced_at_every_stall() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start(dir.path(), 3).await.unwrap();
    let mut leader = c.wait_leader(LONG).await.unwrap();
    let mut changes = 0;
    for round in 0..6u8 {
        c.net.black_hole(&addr_of(leader));
        tokio::time::sleep(Duration::from_millis(800)).await;
        c.net.heal_all();
        let now = c.wait_leader(LONG).await.unwrap();
        if now != leader {
            changes += 1;
            leader = now;
        }
        // Writes commit between the stalls.
        c.store(leader).txn(Txn::put(format!("/stall/{round}"), vec![round])).await.unwrap();
    }
    assert!(changes <= 3, "{changes} of 6 stalls replaced the leader");
}

/// Two nodes (one voter, one learner), the voter lost for good: `promote --force` on the
/// learner's stopped store makes it the only voter, with every committed write kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_survivor_becomes_the_single_voter_and_keeps_its_state() {
    use shoal_store::{ForceOutcome, Store};
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::new(dir.path(), |_| {});
    c.launch(1).await.unwrap();
    c.launch(2).await.unwrap();
    c.store(1).initialize().await.unwrap();
    c.wait_leader_among(&[1], LONG).await.unwrap();
    c.store(2).join_via(&addr_of(1)).await.unwrap();
    for i in 0..20u8 {
        c.store(2).txn(Txn::put(format!("/kept/{i}"), vec![i])).await.unwrap();
    }
    c.store(2).sync().await.unwrap();
    let rev = c.store(2).revision();
    let learner = c.store(2).status().members.iter().find(|m| m.node_id == 2).map(|m| m.role);
    assert_eq!(learner, Some(Role::Learner), "two nodes: one voter, one learner");

    // The voter dies; the learner alone has no leader and cannot write.
    c.stop(1).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(3), c.store(2).txn(Txn::put("/lost", vec![1]))).await;
    assert!(!matches!(err, Ok(Ok(_))), "a lone learner must not accept writes");

    // Forcing while the store is open is refused (the daemon still runs).
    let node2 = dir.path().join("node-2");
    assert!(Store::force_single_voter(&node2, 2).is_err(), "the store is in use");
    c.stop(2).await.unwrap();
    // A node the group does not know, and an empty dir, are refused too.
    assert!(Store::force_single_voter(&node2, 99).is_err());
    assert!(Store::force_single_voter(dir.path().join("nothing"), 2).is_err());

    match Store::force_single_voter(&node2, 2).unwrap() {
        ForceOutcome::Forced { dropped, .. } => assert_eq!(dropped, vec![1]),
        other => panic!("unexpected {other:?}"),
    }
    c.launch(2).await.unwrap();
    assert_eq!(c.wait_leader_among(&[2], LONG).await.unwrap(), 2);
    let st = c.store(2).status();
    let voters: Vec<u64> = st.members.iter().filter(|m| m.role == Role::Voter).map(|m| m.node_id).collect();
    assert_eq!(voters, vec![2]);
    assert_eq!(st.members.len(), 1, "the lost node left the group");
    assert!(c.store(2).revision() >= rev);
    for i in 0..20u8 {
        assert_eq!(value(&c, 2, &format!("/kept/{i}")).await, Some(vec![i]), "committed write {i} kept");
    }
    assert!(c.store(2).txn(Txn::put("/after", vec![1])).await.unwrap().succeeded);
    // Once more: already the only voter, nothing to do.
    c.stop(2).await.unwrap();
    assert_eq!(Store::force_single_voter(&node2, 2).unwrap(), ForceOutcome::AlreadySingleVoter);
    c.launch(2).await.unwrap();
    assert_eq!(value(&c, 2, "/after").await, Some(vec![1]));
    c.stop_all().await.unwrap();
}
