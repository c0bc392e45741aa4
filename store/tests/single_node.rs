//! One replicated node over its redb file: the store's semantics, leases, watch, restart,
//! backup/restore and bad files.
use std::time::Duration;

use shoal_store::testing::TestCluster;
use shoal_store::{Compare, Error, EventKind, Op, Store, StoreConfig, Txn};

fn init_tracing() {
    let _ = tracing_subscriber::fmt().with_env_filter("warn").with_test_writer().try_init();
}

async fn one_node(dir: &std::path::Path) -> TestCluster {
    init_tracing();
    TestCluster::start(dir, 1).await.expect("start one node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_get_range_cas_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let c = one_node(dir.path()).await;
    let s = c.store(1);
    let r1 = s.txn(Txn::put("/a/1", b"one".to_vec())).await.unwrap();
    assert!(r1.succeeded);
    let r2 = s.txn(Txn::put("/a/2", b"two".to_vec())).await.unwrap();
    assert_eq!(r2.revision, r1.revision + 1);
    let kv = s.get("/a/1").await.unwrap().unwrap();
    assert_eq!(kv.value, b"one");
    assert_eq!(kv.mod_revision, r1.revision);

    // Compare-and-swap on mod_revision.
    let stale = Txn {
        compares: vec![Compare::ModRevision { key: "/a/1".into(), revision: r1.revision + 100 }],
        success: vec![Op::Put { key: "/a/1".into(), value: b"x".to_vec(), lease: None }],
        failure: vec![],
    };
    let res = s.txn(stale).await.unwrap();
    assert!(!res.succeeded);
    assert_eq!(res.current[0].as_ref().unwrap().value, b"one");
    assert_eq!(res.revision, r2.revision, "a failed compare writes nothing");
    let ok = Txn {
        compares: vec![Compare::ModRevision { key: "/a/1".into(), revision: r1.revision }],
        success: vec![Op::Put { key: "/a/1".into(), value: b"uno".to_vec(), lease: None }],
        failure: vec![],
    };
    let res = s.txn(ok).await.unwrap();
    assert!(res.succeeded);
    let kv = s.get("/a/1").await.unwrap().unwrap();
    assert_eq!(kv.create_revision, r1.revision);
    assert_eq!(kv.mod_revision, res.revision);

    let (items, rev) = s.range("/a/").await.unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(rev, s.revision());
    let res = s.txn(Txn::ops(vec![Op::DeletePrefix { prefix: "/a/".into() }])).await.unwrap();
    assert!(s.range("/a/").await.unwrap().0.is_empty());
    assert_eq!(res.revision, s.revision());
    s.sync().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_history_then_live_and_compacted() {
    let dir = tempfile::tempdir().unwrap();
    init_tracing();
    let c = TestCluster::start_with(dir.path(), 1, |cfg| cfg.history_revisions = 5).await.unwrap();
    let s = c.store(1);
    let base = s.revision();
    for i in 0..3 {
        s.txn(Txn::put(format!("/w/{i}"), vec![i])).await.unwrap();
    }
    s.txn(Txn::put("/other", vec![9])).await.unwrap();
    let mut w = s.watch("/w/", Some(base)).await.unwrap();
    for i in 0..3u8 {
        let ev = w.recv().await.unwrap().unwrap();
        assert_eq!(ev.kind, EventKind::Put);
        assert_eq!(ev.kv.value, vec![i]);
    }
    s.txn(Txn::ops(vec![Op::Delete { key: "/w/0".into() }])).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), w.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(ev.kind, EventKind::Delete);
    assert_eq!(ev.prev.unwrap().value, vec![0]);
    for i in 0..10u8 {
        s.txn(Txn::put("/x", vec![i])).await.unwrap();
    }
    match s.watch("/w/", Some(base)).await {
        Err(Error::Compacted { requested, .. }) => assert_eq!(requested, base),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("expected Compacted for a revision older than the history"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_revoke_and_expire_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let c = one_node(dir.path()).await;
    let s = c.store(1);
    let l = s.lease_grant(Duration::from_secs(60)).await.unwrap();
    s.txn(Txn::ops(vec![Op::Put { key: "/l/a".into(), value: vec![1], lease: Some(l) }])).await.unwrap();
    assert_eq!(s.get("/l/a").await.unwrap().unwrap().lease, Some(l));
    s.lease_keepalive(l).await.unwrap();
    s.lease_revoke(l).await.unwrap();
    assert!(s.get("/l/a").await.unwrap().is_none());
    assert!(matches!(s.lease_keepalive(l).await, Err(Error::LeaseNotFound { .. })));
    let put = Txn::ops(vec![Op::Put { key: "/l/b".into(), value: vec![1], lease: Some(l) }]);
    assert!(matches!(s.txn(put).await, Err(Error::LeaseNotFound { .. })));

    let short = s.lease_grant(Duration::from_millis(300)).await.unwrap();
    s.txn(Txn::ops(vec![Op::Put { key: "/l/c".into(), value: vec![1], lease: Some(short) }])).await.unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if s.get("/l/c").await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the leader expires a lease that is not kept alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_data_and_an_idle_node_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = one_node(dir.path()).await;
    for i in 0..20u8 {
        c.store(1).txn(Txn::put(format!("/k/{i}"), vec![i])).await.unwrap();
    }
    let rev = c.store(1).revision();
    c.stop(1).await.unwrap();
    let s = c.launch(1).await.unwrap();
    c.wait_leader(Duration::from_secs(10)).await.unwrap();
    assert_eq!(s.get("/k/7").await.unwrap().unwrap().value, vec![7]);
    assert_eq!(s.revision(), rev);
    s.txn(Txn::put("/k/after", vec![1])).await.unwrap();
    assert_eq!(s.revision(), rev + 1);

    // Let the re-election settle, then watch the file stay untouched while idle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let file = c.config(1).data_dir.join("store.redb");
    let before = std::fs::metadata(&file).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = std::fs::metadata(&file).unwrap();
    assert_eq!(before.modified().unwrap(), after.modified().unwrap(), "idle node wrote to its file");
    assert_eq!(before.len(), after.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_into_a_new_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let c = one_node(dir.path()).await;
    for i in 0..10u8 {
        c.store(1).txn(Txn::put(format!("/b/{i}"), vec![i])).await.unwrap();
    }
    let backup = dir.path().join("backup.snap");
    c.store(1).sync().await.unwrap();
    let rev = c.store(1).backup(&backup).await.unwrap();
    assert_eq!(rev, c.store(1).revision());

    let new_dir = dir.path().join("restored");
    assert_eq!(Store::restore(&backup, &new_dir, 7, "node-7").unwrap(), rev);
    assert!(matches!(Store::restore(&backup, &new_dir, 7, "node-7"), Err(Error::AlreadyExists { .. })));
    let net = shoal_store::testing::MemNetwork::new();
    let s = Store::open(StoreConfig::new(&new_dir, 7, "node-7"), net.transport("node-7")).await.unwrap();
    net.register("node-7", s.clone());
    assert_eq!(s.get("/b/3").await.unwrap().unwrap().value, vec![3]);
    assert_eq!(s.revision(), rev);
    let r = s.txn(Txn::put("/b/new", vec![1])).await.unwrap();
    assert_eq!(r.revision, rev + 1);
    assert_eq!(s.status().leader, Some(7));
    s.shutdown().await.unwrap();

    // A damaged backup is refused.
    let mut bytes = std::fs::read(&backup).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&backup, &bytes).unwrap();
    assert!(matches!(Store::restore(&backup, dir.path().join("again"), 8, "node-8"), Err(Error::InvalidBackup { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_truncated_file_is_a_clear_error() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let net = shoal_store::testing::MemNetwork::new();
    let garbage = dir.path().join("garbage");
    std::fs::create_dir_all(&garbage).unwrap();
    std::fs::write(garbage.join("store.redb"), vec![0x5a; 10_000]).unwrap();
    match Store::open(StoreConfig::new(&garbage, 1, "a"), net.transport("a")).await {
        Err(e @ Error::OpenDatabase { .. }) => assert!(e.to_string().contains("store.redb")),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("garbage file opened"),
    }

    // A real store file cut in half.
    let mut c = one_node(&dir.path().join("real")).await;
    for i in 0..50u8 {
        c.store(1).txn(Txn::put(format!("/t/{i}"), vec![i; 100])).await.unwrap();
    }
    c.stop(1).await.unwrap();
    let file = c.config(1).data_dir.join("store.redb");
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let res = Store::open(c.config(1), net.transport("node-1")).await;
    assert!(res.is_err(), "a truncated file must not open silently");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peer_messages_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let c = one_node(dir.path()).await;
    let s = c.store(1);
    for svc in shoal_store::service::ALL {
        for body in [vec![], vec![0xff; 3], vec![0x80; 64], (0..=255u8).collect::<Vec<u8>>()] {
            let _ = s.handle_rpc(svc, &body).await;
        }
    }
    assert!(matches!(s.handle_rpc("nope", &[]).await, Err(Error::UnknownService { .. })));
    // The node still works.
    s.txn(Txn::put("/still", vec![1])).await.unwrap();
}
