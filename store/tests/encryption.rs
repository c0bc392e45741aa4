//! Secrets encrypted at rest: nothing under an encrypted prefix reaches the redb file (objects,
//! Raft log, watch history, snapshot) or a backup in plaintext; reads see the plaintext; a
//! rotation re-seals everything (plaintext of an upgraded cluster included) under a new key.
use std::time::Duration;

use shoal_store::testing::TestCluster;
use shoal_store::{Store, StoreConfig, Txn};

const PREFIX: &str = "/core/secrets/";
const KEK: [u8; 32] = [0x5a; 32];

fn init_tracing() {
    let _ = tracing_subscriber::fmt().with_env_filter("warn").with_test_writer().try_init();
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn secret(i: usize) -> (String, Vec<u8>, String) {
    let marker = format!("TOPSECRET-{i:04}-hunter2");
    let value = format!("{{\"kind\":\"Secret\",\"data\":{{\"pw\":\"{marker}\"}}}}").into_bytes();
    (format!("{PREFIX}default/s{i}"), value, marker)
}

fn every_file_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(every_file_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_file_the_log_snapshots_or_backups_in_plaintext() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start_with(dir.path(), 1, |cfg| {
        cfg.snapshot_every = 20;
        cfg.keep_logs_behind_snapshot = 5;
    })
    .await
    .unwrap();
    let s = c.store(1);
    s.enable_secrets_encryption(&KEK, vec![PREFIX.to_string()]).unwrap();
    let mut watch = s.watch(PREFIX, None).await.unwrap();
    let mut markers = Vec::new();
    for i in 0..10 {
        let (key, value, marker) = secret(i);
        s.txn(Txn::put(key.clone(), value.clone())).await.unwrap();
        // Reads and watches see the plaintext.
        assert_eq!(s.get(&key).await.unwrap().unwrap().value, value);
        let ev = tokio::time::timeout(Duration::from_secs(5), watch.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(ev.kv.value, value);
        markers.push(marker);
    }
    // Updates: the watch's previous value is opened too.
    let (key, _, _) = secret(0);
    let (_, v1, _) = secret(1);
    s.txn(Txn::put(key.clone(), v1.clone())).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), watch.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(ev.prev.unwrap().value, secret(0).1);
    // Enough other writes for snapshots and log purges.
    for i in 0..60u32 {
        s.txn(Txn::put(format!("/other/{i}"), b"not-secret-marker".to_vec())).await.unwrap();
    }
    let (all, _) = s.range(PREFIX).await.unwrap();
    assert_eq!(all.len(), 10);
    assert!(all.iter().all(|kv| String::from_utf8_lossy(&kv.value).contains("TOPSECRET")));
    let backup = dir.path().join("backup.snap");
    s.sync().await.unwrap();
    s.backup(&backup).await.unwrap();
    let status = s.secrets_encryption_status().await.unwrap();
    assert_eq!((status.objects, status.plaintext, status.primary), (10, 0, Some(1)), "{status:?}");

    let mut files = every_file_under(dir.path());
    files.retain(|f| f != &backup);
    assert!(files.iter().any(|f| f.ends_with("store.redb")), "{files:?}");
    files.push(backup.clone());
    let mut seen_other = false;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        seen_other |= contains(&bytes, b"not-secret-marker");
        for m in &markers {
            assert!(!contains(&bytes, m.as_bytes()), "{} holds the Secret value {m} in plaintext", f.display());
        }
    }
    assert!(seen_other, "the scan reads the files that hold the values");

    // The backup restores with the cluster's key, and is useless without it.
    let restored = dir.path().join("restored");
    Store::restore(&backup, &restored, 7, "node-7").unwrap();
    let net = shoal_store::testing::MemNetwork::new();
    let r = Store::open(StoreConfig::new(&restored, 7, "node-7"), net.transport("node-7")).await.unwrap();
    net.register("node-7", r.clone());
    let raw = r.get(&secret(3).0).await.unwrap().unwrap().value;
    assert!(!contains(&raw, b"TOPSECRET"), "without the key a read returns the sealed bytes");
    r.enable_secrets_encryption(&[0x11; 32], vec![PREFIX.to_string()]).unwrap();
    let err = r.get(&secret(3).0).await.unwrap_err().to_string();
    assert!(err.contains("does not open with this node's key-encryption key"), "{err}");
    r.shutdown().await.unwrap();
    let restored = dir.path().join("restored-again");
    Store::restore(&backup, &restored, 8, "node-8").unwrap();
    let r = Store::open(StoreConfig::new(&restored, 8, "node-8"), net.transport("node-8")).await.unwrap();
    net.register("node-8", r.clone());
    r.enable_secrets_encryption(&KEK, vec![PREFIX.to_string()]).unwrap();
    assert_eq!(r.get(&secret(3).0).await.unwrap().unwrap().value, secret(3).1);
    r.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_reseals_plaintext_and_old_keys_across_nodes() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let c = TestCluster::start(dir.path(), 3).await.unwrap();
    // An upgraded cluster: Secrets written before encryption existed.
    for i in 0..3 {
        let (key, value, _) = secret(i);
        c.store(1).txn(Txn::put(key, value)).await.unwrap();
    }
    for id in 1..=3 {
        c.store(id).enable_secrets_encryption(&KEK, vec![PREFIX.to_string()]).unwrap();
    }
    // Still read as they are; new writes (through a follower) are sealed.
    assert_eq!(c.store(2).get(&secret(0).0).await.unwrap().unwrap().value, secret(0).1);
    for i in 3..6 {
        let (key, value, _) = secret(i);
        c.store(2).txn(Txn::put(key, value)).await.unwrap();
    }
    c.store(3).sync().await.unwrap();
    assert_eq!(c.store(3).get(&secret(4).0).await.unwrap().unwrap().value, secret(4).1);
    let st = c.store(3).secrets_encryption_status().await.unwrap();
    assert_eq!((st.objects, st.plaintext), (6, 3), "{st:?}");
    assert_eq!(st.by_key.get(&1), Some(&3));

    let out = c.store(1).rotate_secrets_key().await.unwrap();
    assert_eq!((out.key, out.resealed, out.were_plaintext, out.retired.clone()), (2, 6, 3, vec![1]), "{out:?}");
    for id in 1..=3 {
        c.store(id).sync().await.unwrap();
        let st = c.store(id).secrets_encryption_status().await.unwrap();
        assert_eq!((st.objects, st.plaintext, st.primary), (6, 0, Some(2)), "node {id}: {st:?}");
        assert_eq!(st.keys.iter().map(|k| k.0).collect::<Vec<_>>(), vec![2]);
        let (all, _) = c.store(id).range(PREFIX).await.unwrap();
        let want: Vec<Vec<u8>> = (0..6).map(|i| secret(i).1).collect();
        assert_eq!(all.into_iter().map(|kv| kv.value).collect::<Vec<_>>(), want, "node {id}");
    }
    // A second rotation through a follower.
    let out = c.store(3).rotate_secrets_key().await.unwrap();
    assert_eq!((out.key, out.resealed, out.were_plaintext), (3, 6, 0));
    c.store(2).sync().await.unwrap();
    assert_eq!(c.store(2).get(&secret(5).0).await.unwrap().unwrap().value, secret(5).1);
}
