//! Load generators behind the benchmarks of `bench/`: store writes (shoal's control socket or
//! etcd's HTTP gateway) and Kubernetes API work (objects, pods, simulated nodes).

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use serde_json::json;

use crate::kube::{Http, KubeConfig};

/// Latencies (ms) of one kind of operation and how long the whole run took.
#[derive(Default, Clone)]
pub struct Stats {
    pub ms: Vec<f64>,
    pub errors: usize,
    pub elapsed: Duration,
}

impl Stats {
    pub fn pct(&self, q: f64) -> f64 {
        let mut s = self.ms.clone();
        s.sort_by(|a, b| a.total_cmp(b));
        crate::workload::percentile(&s, q)
    }
    pub fn per_s(&self) -> f64 {
        self.ms.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// Prints `PREFIX_per_s`, `PREFIX_p50_ms`, `PREFIX_p99_ms` (and errors when any).
    pub fn print(&self, prefix: &str) {
        println!("{prefix}_per_s: {:.1}", self.per_s());
        println!("{prefix}_p50_ms: {:.2}", self.pct(0.50));
        println!("{prefix}_p99_ms: {:.2}", self.pct(0.99));
        if self.errors > 0 {
            println!("{prefix}_errors: {}", self.errors);
        }
    }
}

/// Where store writes go.
#[derive(Clone)]
pub enum KvTarget {
    /// A shoal daemon's control socket (`DATA_DIR/shoal.sock`), one session per writer.
    Shoal(PathBuf),
    /// etcd's gRPC gateway, `HOST:PORT`.
    Etcd(String),
}

/// One writer's control-socket session: the connection stays open for all its writes, as an
/// etcd client keeps its HTTP connection.
struct ShoalSession {
    reader: std::io::BufReader<UnixStream>,
    writer: UnixStream,
}

impl ShoalSession {
    fn open(sock: &PathBuf) -> anyhow::Result<Self> {
        let s = UnixStream::connect(sock).with_context(|| format!("connect {}", sock.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let mut session = ShoalSession { reader: std::io::BufReader::new(s.try_clone()?), writer: s };
        session.request(&json!({"op": "session"}))?;
        Ok(session)
    }

    fn request(&mut self, req: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        use std::io::BufRead;
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        let mut reply = String::new();
        if self.reader.read_line(&mut reply)? == 0 {
            bail!("the daemon closed the control session");
        }
        let v: serde_json::Value = serde_json::from_str(&reply).context("reply")?;
        match v.get("ok") {
            Some(ok) => Ok(ok.clone()),
            None => bail!("{}", reply.trim_end()),
        }
    }
}

fn shoal_put(session: &mut Option<ShoalSession>, sock: &PathBuf, key: &str, value: &str) -> anyhow::Result<()> {
    if session.is_none() {
        *session = Some(ShoalSession::open(sock)?);
    }
    let s = session.as_mut().ok_or_else(|| anyhow!("no session"))?;
    match s.request(&json!({"op": "kv_put", "key": key, "value": value})) {
        Ok(_) => Ok(()),
        Err(e) => {
            *session = None;
            Err(e)
        }
    }
}

/// `writers` threads write `value_size`-byte values for `duration`, spread over `targets`.
pub fn kv_load(targets: &[KvTarget], writers: usize, duration: Duration, value_size: usize) -> Stats {
    let value = "x".repeat(value_size);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let all = Arc::new(Mutex::new(Stats::default()));
    let start = Instant::now();
    std::thread::scope(|s| {
        for w in 0..writers {
            let target = targets[w % targets.len()].clone();
            let (all, value) = (all.clone(), value.clone());
            let b64v = b64(&value);
            s.spawn(move || {
                let mut local = Stats::default();
                let mut etcd: Option<Http<std::net::TcpStream>> = None;
                let mut shoal: Option<ShoalSession> = None;
                let mut i = 0u64;
                while start.elapsed() < duration {
                    i += 1;
                    let key = format!("bench/w{w}/k{}", i % 1000);
                    let t = Instant::now();
                    let r = match &target {
                        KvTarget::Shoal(sock) => shoal_put(&mut shoal, sock, &key, &value),
                        KvTarget::Etcd(addr) => (|| {
                            if etcd.is_none() {
                                etcd = Some(Http::plain(addr)?);
                            }
                            let c = etcd.as_mut().ok_or_else(|| anyhow!("no connection"))?;
                            let r = c.post("/v3/kv/put", &json!({"key": b64(&key), "value": b64v}));
                            match r {
                                Ok(r) => r.ok().map(|_| ()),
                                Err(e) => {
                                    etcd = None;
                                    Err(e)
                                }
                            }
                        })(),
                    };
                    match r {
                        Ok(()) => local.ms.push(t.elapsed().as_secs_f64() * 1000.0),
                        Err(_) => {
                            local.errors += 1;
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                if let Ok(mut a) = all.lock() {
                    a.ms.extend(local.ms);
                    a.errors += local.errors;
                }
            });
        }
    });
    let mut st = all.lock().map(|a| a.clone()).unwrap_or_default();
    st.elapsed = start.elapsed();
    st
}

fn timed<T>(st: &mut Stats, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let t = Instant::now();
    let r = f();
    match &r {
        Ok(_) => st.ms.push(t.elapsed().as_secs_f64() * 1000.0),
        Err(_) => st.errors += 1,
    }
    r
}

/// Runs `n` jobs over `clients` connections; each job gets a client and its index.
fn parallel(
    cfg: &KubeConfig,
    clients: usize,
    n: usize,
    job: impl Fn(&mut crate::kube::Client, usize, &mut Stats) + Sync,
) -> anyhow::Result<Stats> {
    let all = Mutex::new(Stats::default());
    let start = Instant::now();
    let err: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for c in 0..clients {
            let (all, job, err) = (&all, &job, &err);
            s.spawn(move || {
                let mut client = match cfg.connect() {
                    Ok(c) => c,
                    Err(e) => {
                        if let Ok(mut g) = err.lock() {
                            *g = Some(e);
                        }
                        return;
                    }
                };
                let mut local = Stats::default();
                let mut i = c;
                while i < n {
                    job(&mut client, i, &mut local);
                    i += clients;
                }
                if let Ok(mut a) = all.lock() {
                    a.ms.extend(local.ms);
                    a.errors += local.errors;
                }
            });
        }
    });
    if let Some(e) = err.into_inner().ok().flatten() {
        return Err(e);
    }
    let mut st = all.into_inner().unwrap_or_default();
    st.elapsed = start.elapsed();
    Ok(st)
}

/// Keeps a client usable after a failed request by reconnecting.
fn retry(
    cfg: &KubeConfig,
    c: &mut crate::kube::Client,
    st: &mut Stats,
    f: impl Fn(&mut crate::kube::Client) -> anyhow::Result<()>,
) {
    if timed(st, || f(c)).is_err() {
        if let Ok(n) = cfg.connect() {
            *c = n;
        }
    }
}

fn ensure_namespace(cfg: &KubeConfig, ns: &str) -> anyhow::Result<()> {
    let mut c = cfg.connect()?;
    let r =
        c.post("/api/v1/namespaces", &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))?;
    // 409: it exists; 403: a user who may not make namespaces works in one made for it.
    if r.status != 409 && r.status != 403 {
        r.ok()?;
    }
    Ok(())
}

/// The API benchmark in namespace `ns`: create/get/list/patch/watch on ConfigMaps, then fill
/// up to `fill` objects.
pub fn api_bench(cfg: &KubeConfig, ns: &str, count: usize, clients: usize, fill: usize) -> anyhow::Result<()> {
    ensure_namespace(cfg, ns)?;
    let base = format!("/api/v1/namespaces/{ns}/configmaps");
    let cm = |i: usize| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i}"), "labels": {"bench": "api"}}, "data": {"k": "v".repeat(200)}});
    let create =
        parallel(cfg, clients, count, |c, i, st| retry(cfg, c, st, |c| c.post(&base, &cm(i))?.ok().map(|_| ())))?;
    let get = parallel(cfg, clients, count, |c, i, st| {
        retry(cfg, c, st, |c| c.get(&format!("{base}/cm-{i}"))?.ok().map(|_| ()))
    })?;
    let mut list_items = 0;
    let list = parallel(cfg, 1, 10, |c, _, st| {
        retry(cfg, c, st, |c| {
            let _ = c.get(&format!("{base}?labelSelector=bench%3Dapi"))?.ok()?;
            Ok(())
        })
    })?;
    if let Ok(v) = cfg.connect()?.get(&base)?.ok()?.json() {
        list_items = v["items"].as_array().map(Vec::len).unwrap_or(0);
    }
    let patch = parallel(cfg, clients, count, |c, i, st| {
        retry(cfg, c, st, |c| c.merge_patch(&format!("{base}/cm-{i}"), &json!({"data": {"p": "1"}}))?.ok().map(|_| ()))
    })?;
    // Watch delivery: one patch at a time, time from sending it until the watch shows it.
    let rv =
        cfg.connect()?.get(&base)?.ok()?.json()?["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
    let mut watch = cfg.connect()?.watch(&format!("{base}?watch=true&resourceVersion={rv}"))?;
    let mut c = cfg.connect()?;
    let mut wd = Stats::default();
    let rounds = count.min(200);
    let t0 = Instant::now();
    for i in 0..rounds {
        let name = format!("cm-{i}");
        let t = Instant::now();
        c.merge_patch(&format!("{base}/{name}"), &json!({"data": {"w": format!("{i}")}}))?.ok()?;
        loop {
            let Some(ev) = watch.next_event()? else { bail!("watch ended") };
            if ev["object"]["metadata"]["name"] == name.as_str() && ev["object"]["data"]["w"] == format!("{i}").as_str()
            {
                wd.ms.push(t.elapsed().as_secs_f64() * 1000.0);
                break;
            }
        }
    }
    wd.elapsed = t0.elapsed();
    create.print("api_create");
    get.print("api_get");
    list.print("api_list_1000");
    println!("api_list_items: {list_items}");
    patch.print("api_patch");
    wd.print("api_watch_delivery");
    if fill > count {
        let fillst = parallel(cfg, clients, fill - count, |c, i, st| {
            retry(cfg, c, st, |c| c.post(&base, &cm(count + i))?.ok().map(|_| ()))
        })?;
        println!("api_fill_objects: {}", fillst.ms.len() + count);
        fillst.print("api_fill_create");
    }
    let mut m = create.ms.clone();
    m.extend(patch.ms.iter().copied());
    let mutating = Stats { ms: m, errors: 0, elapsed: Duration::from_secs(1) };
    println!("mutating_p50_ms: {:.2}", mutating.pct(0.5));
    println!("mutating_p99_ms: {:.2}", mutating.pct(0.99));
    Ok(())
}

/// Deletes a namespace and waits (up to `wait`) until it is gone.
pub fn delete_namespace(cfg: &KubeConfig, ns: &str, wait: Duration) -> anyhow::Result<()> {
    let mut c = cfg.connect()?;
    let _ = c.delete(&format!("/api/v1/namespaces/{ns}"))?;
    let t = Instant::now();
    while t.elapsed() < wait {
        if c.get(&format!("/api/v1/namespaces/{ns}"))?.status == 404 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// What [`pod_start`] measured: each pod from its create request until a watch shows it
/// Running (`total`), split at the first watch event that shows it bound to a node: create to
/// bound (`scheduled`) and bound to Running (`on_node`).
pub struct PodStart {
    pub total: Stats,
    pub scheduled: Stats,
    pub on_node: Stats,
}

/// Creates `count` pods (optionally pinned to `node` through nodeSelector) and times each from
/// its create request until a watch shows it Running. With a `rate` (pods per second) the
/// creates are paced, as a latency SLO is measured; without, they go as fast as `clients`
/// connections send them (a burst, which measures throughput as much as latency).
pub fn pod_start(
    cfg: &KubeConfig,
    ns: &str,
    count: usize,
    clients: usize,
    image: &str,
    node: Option<&str>,
    rate: Option<f64>,
) -> anyhow::Result<PodStart> {
    ensure_namespace(cfg, ns)?;
    let base = format!("/api/v1/namespaces/{ns}/pods");
    let rv =
        cfg.connect()?.get(&base)?.ok()?.json()?["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
    let mut watch = cfg.connect()?.watch(&format!("{base}?watch=true&resourceVersion={rv}"))?;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let running: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let bound: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (running, bound, done) = (running.clone(), bound.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(Some(ev)) = watch.next_event() else { break };
                let Some(name) = ev["object"]["metadata"]["name"].as_str() else { continue };
                let now = Instant::now();
                if ev["object"]["spec"]["nodeName"].is_string() {
                    if let Ok(mut b) = bound.lock() {
                        b.entry(name.to_string()).or_insert(now);
                    }
                }
                if ev["object"]["status"]["phase"] == "Running" {
                    if let Ok(mut r) = running.lock() {
                        r.entry(name.to_string()).or_insert(now);
                        if r.len() >= count {
                            break;
                        }
                    }
                }
            }
        })
    };
    let start = Instant::now();
    let created = parallel(cfg, clients, count, |c, i, st| {
        if let Some(r) = rate.filter(|r| *r > 0.0) {
            let due = start + Duration::from_secs_f64(i as f64 / r);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let name = format!("p-{i}");
        let mut spec = json!({"containers": [{"name": "c", "image": image, "imagePullPolicy": "IfNotPresent"}]});
        if let Some(n) = node {
            spec["nodeSelector"] = json!({"kubernetes.io/hostname": n});
        }
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"bench": "podstart"}}, "spec": spec});
        let t = Instant::now();
        retry(cfg, c, st, |c| c.post(&base, &pod)?.ok().map(|_| ()));
        if let Ok(mut s) = sent.lock() {
            s.insert(name, t);
        }
    })?;
    let deadline = Duration::from_secs(60 + count as u64);
    while start.elapsed() < deadline && running.lock().map(|r| r.len()).unwrap_or(0) < created.ms.len() {
        std::thread::sleep(Duration::from_millis(200));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let all_running = start.elapsed();
    let copy = |m: &Arc<Mutex<HashMap<String, Instant>>>| m.lock().map(|s| s.clone()).unwrap_or_default();
    let (sent, running, bound) = (copy(&sent), copy(&running), copy(&bound));
    let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1000.0;
    let mut out = PodStart {
        total: Stats { elapsed: all_running, ..Default::default() },
        scheduled: Stats { elapsed: all_running, ..Default::default() },
        on_node: Stats { elapsed: all_running, ..Default::default() },
    };
    for (name, t) in &sent {
        match running.get(name) {
            Some(r) => {
                out.total.ms.push(ms(*t, *r));
                // A pod seen Running was bound by then, even when the watch folded the two
                // changes into one event.
                let b = bound.get(name).copied().unwrap_or(*r).min(*r);
                out.scheduled.ms.push(ms(*t, b));
                out.on_node.ms.push(ms(b, *r));
            }
            None => out.total.errors += 1,
        }
    }
    drop(watcher);
    Ok(out)
}

/// Registers `nodes` Node objects without agents, creates `pods` pods that select a label no
/// node has yet (so they stay pending), then labels the nodes and counts how fast the pending
/// pods get bound (from a watch). Prints a timeline and the rate.
pub fn scheduler_bench(cfg: &KubeConfig, nodes: usize, pods: usize, clients: usize) -> anyhow::Result<()> {
    let ns = "bench-sched";
    ensure_namespace(cfg, ns)?;
    let nodes_made = parallel(cfg, clients, nodes, |c, i, st| {
        let node = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": format!("sim-{i}"), "labels": {"kubernetes.io/hostname": format!("sim-{i}"), "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
            "status": {"capacity": {"cpu": "64", "memory": "256Gi", "pods": "110"}, "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "Simulated"}]}});
        retry(cfg, c, st, |c| {
            let r = c.post("/api/v1/nodes", &node)?;
            if r.status == 409 {
                Ok(())
            } else {
                r.ok().map(|_| ())
            }
        })
    })?;
    println!("sched_sim_nodes: {}", nodes_made.ms.len());
    let base = format!("/api/v1/namespaces/{ns}/pods");
    let rv =
        cfg.connect()?.get(&base)?.ok()?.json()?["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
    let mut watch = cfg.connect()?.watch(&format!("{base}?watch=true&resourceVersion={rv}"))?;
    let bound: Arc<Mutex<HashMap<String, (Instant, String)>>> = Arc::default();
    {
        let bound = bound.clone();
        std::thread::spawn(move || loop {
            let Ok(Some(ev)) = watch.next_event() else { break };
            if let (Some(name), Some(node)) =
                (ev["object"]["metadata"]["name"].as_str(), ev["object"]["spec"]["nodeName"].as_str())
            {
                if let Ok(mut b) = bound.lock() {
                    b.entry(name.to_string()).or_insert_with(|| (Instant::now(), node.to_string()));
                    if b.len() >= pods {
                        break;
                    }
                }
            }
        });
    }
    let t_create = Instant::now();
    let created = parallel(cfg, clients, pods, |c, i, st| {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("s-{i}")},
            "spec": {"nodeSelector": {"shoal.dev/simulated": "true"}, "containers": [{"name": "c", "image": "busybox:1.25", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}});
        retry(cfg, c, st, |c| c.post(&base, &pod)?.ok().map(|_| ()))
    })?;
    println!("sched_pods_created: {}", created.ms.len());
    println!("sched_pods_create_s: {:.2}", t_create.elapsed().as_secs_f64());
    let early = bound.lock().map(|b| b.len()).unwrap_or(0);
    println!("sched_bound_before_nodes_labelled: {early}");
    // The pods select `shoal.dev/simulated=true`, which no node has yet: all are pending. Label
    // the simulated nodes now and time how fast the pending pods get bound.
    let start = Instant::now();
    parallel(cfg, clients, nodes, |c, i, st| {
        retry(cfg, c, st, |c| {
            c.merge_patch(
                &format!("/api/v1/nodes/sim-{i}"),
                &json!({"metadata": {"labels": {"shoal.dev/simulated": "true"}}}),
            )?
            .ok()
            .map(|_| ())
        })
    })?;
    let deadline = Duration::from_secs(120);
    let mut last = 0;
    while start.elapsed() < deadline {
        let n = bound.lock().map(|b| b.len()).unwrap_or(0);
        if n >= created.ms.len() {
            break;
        }
        if n != last {
            last = n;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let b = bound.lock().map(|b| b.clone()).unwrap_or_default();
    let mut times: Vec<f64> = b.values().map(|(t, _)| t.saturating_duration_since(start).as_secs_f64()).collect();
    times.sort_by(|a, b| a.total_cmp(b));
    let nodes_used = b.values().map(|(_, n)| n.clone()).collect::<std::collections::HashSet<_>>().len();
    for q in [0.25, 0.5, 0.75, 1.0] {
        let i = ((times.len() as f64 * q).ceil() as usize).saturating_sub(1);
        if let Some(t) = times.get(i) {
            println!("sched_bound_{:.0}pct_at_s: {t:.2}", q * 100.0);
        }
    }
    println!("sched_nodes_used: {nodes_used}");
    println!("sched_pods_bound: {}", times.len());
    let rate = match (times.first(), times.last()) {
        (Some(_), Some(l)) if *l > 0.0 => times.len() as f64 / l,
        _ => 0.0,
    };
    println!("scheduled_pods_per_s: {rate:.1}");
    Ok(())
}
