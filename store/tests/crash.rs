//! `kill -9` of a node while it writes loses no acknowledged write: the test re-runs itself as
//! a child process that writes and prints each acknowledged key, kills it with SIGKILL, reopens
//! the same file and looks for every key.
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_store::testing::MemNetwork;
use shoal_store::{Store, StoreConfig, Txn};

const CHILD_ENV: &str = "SHOAL_STORE_CRASH_CHILD";

fn child(dir: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let net = MemNetwork::new();
        let s = Store::open(StoreConfig::new(dir, 1, "node-1"), net.transport("node-1")).await.unwrap();
        net.register("node-1", s.clone());
        s.initialize().await.unwrap();
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for w in 0..16 {
            let s = s.clone();
            let out = out.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("/crash/{w}/{i}");
                    if s.txn(Txn::put(key.clone(), vec![1; 64])).await.is_ok() {
                        let mut o = out.lock().unwrap();
                        let _ = writeln!(o, "ACK {key}");
                        let _ = o.flush();
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut proc = Command::new(exe)
        .args(["--exact", "acknowledged_writes_survive_kill_9", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = proc.stdout.take().unwrap();
    let mut acked = Vec::new();
    let start = Instant::now();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(key) = line.strip_prefix("ACK ") {
            acked.push(key.to_string());
        }
        if acked.len() >= 2000 || start.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    eprintln!("acknowledged before kill: {}", acked.len());
    proc.kill().unwrap(); // SIGKILL
    let _ = proc.wait();
    assert!(!acked.is_empty(), "the child acknowledged no write");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let net = MemNetwork::new();
        let s = Store::open(StoreConfig::new(dir.path(), 1, "node-1"), net.transport("node-1")).await.unwrap();
        net.register("node-1", s.clone());
        s.sync().await.unwrap();
        for key in &acked {
            assert!(s.get(key).await.unwrap().is_some(), "acknowledged write {key} lost after kill -9");
        }
        s.shutdown().await.unwrap();
    });
}
