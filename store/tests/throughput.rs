//! Write throughput of an in-process cluster (a measurement, not a check): run with
//! `cargo test -p shoal-store --release --test throughput -- --ignored --nocapture`.
use std::time::{Duration, Instant};

use shoal_store::testing::TestCluster;
use shoal_store::Txn;

async fn run(nodes: u64, writers: usize, per_writer: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = TestCluster::start(dir.path(), nodes).await.unwrap();
    let leader = c.wait_leader(Duration::from_secs(10)).await.unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let s = c.store(leader).clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_writer);
            for i in 0..per_writer {
                let t = Instant::now();
                s.txn(Txn::put(format!("/bench/{w}/{i}"), vec![7u8; 256])).await.unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let n = lat.len();
    println!(
        "store_{nodes}n_{writers}c_writes_per_s: {:.0}\nstore_{nodes}n_{writers}c_p50_ms: {:.2}\nstore_{nodes}n_{writers}c_p99_ms: {:.2}",
        n as f64 / secs,
        lat[n / 2].as_secs_f64() * 1000.0,
        lat[n * 99 / 100].as_secs_f64() * 1000.0
    );
    c.stop_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    run(1, 1, 300).await;
    run(1, 64, 30).await;
    run(3, 1, 300).await;
    run(3, 64, 30).await;
}
