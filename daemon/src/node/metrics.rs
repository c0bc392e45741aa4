//! CPU and memory usage of pods and containers (from their cgroups), for metrics.k8s.io
//! (`kubectl top`) and the HorizontalPodAutoscaler. Each node samples its own containers;
//! every node gathers the others' samples over the peer transport (service [`SERVICE`]), so
//! any API node and the leader's controllers see the whole cluster. Nothing is written to the
//! store.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shoal_gossip::Transport;
use shoal_kube::Objects;
use shoal_store::Store;
use tokio_util::sync::CancellationToken;

/// The transport service that answers with this node's samples.
pub const SERVICE: &str = "pod-metrics";
/// How often a node samples its containers (and gathers its peers' samples).
const INTERVAL: Duration = Duration::from_secs(10);

/// Usage of one container over the last window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ContainerUsage {
    pub name: String,
    pub cpu_nanocores: u64,
    pub memory_bytes: u64,
}

/// Usage of one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PodUsage {
    pub namespace: String,
    pub name: String,
    pub timestamp: String,
    pub window_secs: u64,
    pub containers: Vec<ContainerUsage>,
}

/// Usage of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeUsage {
    pub name: String,
    pub timestamp: String,
    pub window_secs: u64,
    pub cpu_nanocores: u64,
    pub memory_bytes: u64,
}

pub(crate) use crate::metrics::kubelet::ContainerSample;

/// What a node reports to its peers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Report {
    node: Option<NodeUsage>,
    pods: Vec<PodUsage>,
}

/// CPU time counters between two samples.
#[derive(Default)]
struct Counters {
    /// Container id → (cpu ns, when).
    containers: HashMap<String, (u64, Instant)>,
    /// Node's busy and total jiffies.
    node: Option<(u64, u64, Instant)>,
}

/// The rate of a CPU counter in nanocores (ns of CPU per s of wall time, × 1e9 / 1e9).
pub(crate) fn nanocores(prev_ns: u64, now_ns: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 || now_ns < prev_ns {
        return 0;
    }
    ((now_ns - prev_ns) as f64 / secs) as u64
}

/// Samples of this node and the latest ones of its peers.
pub struct ClusterMetrics {
    node_name: String,
    objects: Objects,
    store: Store,
    transport: Option<Transport>,
    runtime: Option<shoal_runtime::Runtime>,
    counters: std::sync::Mutex<Counters>,
    local: RwLock<Report>,
    /// This node's containers at the last sample.
    samples: RwLock<Vec<ContainerSample>>,
    /// Node name → its last report and when it arrived.
    remote: RwLock<BTreeMap<String, (Report, Instant)>>,
}

impl ClusterMetrics {
    /// `run_pods`: whether this node runs containers (and so has any to sample).
    pub(crate) fn new(
        transport: Option<Transport>,
        objects: Objects,
        store: Store,
        node_name: &str,
        run_pods: bool,
    ) -> ClusterMetrics {
        ClusterMetrics {
            node_name: node_name.to_string(),
            objects,
            store,
            transport,
            runtime: run_pods.then(|| {
                shoal_runtime::Runtime::new(super::runtime_config(&super::os::HostPaths::default().run, node_name))
            }),
            counters: std::sync::Mutex::new(Counters::default()),
            local: RwLock::new(Report::default()),
            samples: RwLock::new(Vec::new()),
            remote: RwLock::new(BTreeMap::new()),
        }
    }

    /// Samples and gathers every [`INTERVAL`] until `shutdown` (the first two samples 2 s
    /// apart, so rates exist early).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut first = true;
        loop {
            self.sample_local().await;
            self.gather().await;
            let wait = if first { Duration::from_secs(2) } else { INTERVAL };
            first = false;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn sample_local(&self) {
        let now_str = shoal_kube::objects::now_rfc3339();
        let node = self.sample_node(&now_str);
        let mut pods = Vec::new();
        let mut samples = Vec::new();
        if let Some(rt) = &self.runtime {
            let pod_res = super::res("pods");
            let list = self.objects.list(&pod_res, None).await.map(|(p, _)| p).unwrap_or_default();
            let Ok(mut counters) = self.counters.lock() else { return };
            let mut live = HashMap::new();
            for pod in list.iter().filter(|p| p["spec"]["nodeName"].as_str() == Some(self.node_name.as_str())) {
                let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
                let mut containers = Vec::new();
                let mut window = 0;
                for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
                    let name = c["name"].as_str().unwrap_or_default();
                    let id = super::pod::container_id(uid, name);
                    let Ok(stats) = rt.stats(&id) else { continue };
                    samples.push(ContainerSample {
                        namespace: pod["metadata"]["namespace"].as_str().unwrap_or("default").to_string(),
                        pod: pod["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                        container: name.to_string(),
                        cpu_usage_ns: stats.cpu_usage_ns,
                        memory_bytes: stats.memory_usage_bytes,
                    });
                    let now = Instant::now();
                    if let Some((prev, at)) = counters.containers.get(&id) {
                        let elapsed = now.saturating_duration_since(*at);
                        window = elapsed.as_secs().max(1);
                        containers.push(ContainerUsage {
                            name: name.to_string(),
                            cpu_nanocores: nanocores(*prev, stats.cpu_usage_ns, elapsed),
                            memory_bytes: stats.memory_usage_bytes,
                        });
                    }
                    live.insert(id, (stats.cpu_usage_ns, now));
                }
                if !containers.is_empty() {
                    pods.push(PodUsage {
                        namespace: pod["metadata"]["namespace"].as_str().unwrap_or("default").to_string(),
                        name: pod["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                        timestamp: now_str.clone(),
                        window_secs: window,
                        containers,
                    });
                }
            }
            counters.containers = live;
        }
        if let Ok(mut l) = self.local.write() {
            *l = Report { node, pods };
        }
        if let Ok(mut s) = self.samples.write() {
            *s = samples;
        }
    }

    /// This node's running containers at the last sample.
    pub(crate) fn container_samples(&self) -> Vec<ContainerSample> {
        self.samples.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Node usage from /proc/stat and /proc/meminfo.
    fn sample_node(&self, now_str: &str) -> Option<NodeUsage> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let (busy, total) = cpu_jiffies(&stat)?;
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let memory_bytes = used_memory(&meminfo)?;
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as u64;
        let now = Instant::now();
        let mut counters = self.counters.lock().ok()?;
        let prev = counters.node.replace((busy, total, now));
        let (pb, pt, at) = prev?;
        let (db, dt) = (busy.saturating_sub(pb), total.saturating_sub(pt));
        if dt == 0 {
            return None;
        }
        Some(NodeUsage {
            name: self.node_name.clone(),
            timestamp: now_str.to_string(),
            window_secs: now.saturating_duration_since(at).as_secs().max(1),
            cpu_nanocores: (db as f64 / dt as f64 * cpus as f64 * 1e9) as u64,
            memory_bytes,
        })
    }

    /// Asks every other node for its report.
    async fn gather(&self) {
        let Some(transport) = &self.transport else { return };
        let records = crate::members::node_records(&self.store).await;
        let calls = records.values().filter(|r| r.name != self.node_name).filter_map(|r| {
            let addr: std::net::SocketAddr = r.peer_addr.parse().ok()?;
            let name = r.name.clone();
            let t = transport.clone();
            Some(async move { (name, t.call_with_timeout(addr, SERVICE, Vec::new(), Duration::from_secs(3)).await) })
        });
        for (name, answer) in futures::future::join_all(calls).await {
            match answer.map(|b| serde_json::from_slice::<Report>(&b)) {
                Ok(Ok(report)) => {
                    if let Ok(mut m) = self.remote.write() {
                        m.insert(name, (report, Instant::now()));
                    }
                }
                Ok(Err(e)) => tracing::debug!(node = %name, error = %e, "bad metrics report"),
                Err(e) => tracing::debug!(node = %name, error = %e, "no metrics report"),
            }
        }
        // Nodes gone quiet for a while no longer count.
        if let Ok(mut m) = self.remote.write() {
            m.retain(|_, (_, at)| at.elapsed() < INTERVAL * 6);
        }
    }

    fn reports(&self) -> Vec<Report> {
        let mut out = Vec::new();
        if let Ok(l) = self.local.read() {
            out.push(l.clone());
        }
        if let Ok(m) = self.remote.read() {
            out.extend(m.values().map(|(r, _)| r.clone()));
        }
        out
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<PodUsage> {
        self.reports().into_iter().flat_map(|r| r.pods).find(|p| p.namespace == namespace && p.name == name)
    }

    /// `metrics.k8s.io/v1beta1` for the API: `plural` is `pods` or `nodes`; with `name`, one
    /// object (None when there is no sample for it), else the list (of `namespace` if given).
    pub fn to_json(&self, plural: &str, namespace: Option<&str>, name: Option<&str>) -> Option<Value> {
        let items: Vec<Value> = if plural == "nodes" {
            self.reports()
                .into_iter()
                .filter_map(|r| r.node)
                .filter(|n| name.is_none_or(|x| x == n.name))
                .map(|n| node_json(&n))
                .collect()
        } else {
            self.reports()
                .into_iter()
                .flat_map(|r| r.pods)
                .filter(|p| namespace.is_none_or(|ns| ns == p.namespace) && name.is_none_or(|x| x == p.name))
                .map(|p| pod_json(&p))
                .collect()
        };
        let kind = if plural == "nodes" { "NodeMetrics" } else { "PodMetrics" };
        match name {
            Some(_) => items.into_iter().next(),
            None => Some(json!({
                "kind": format!("{kind}List"),
                "apiVersion": "metrics.k8s.io/v1beta1",
                "metadata": {},
                "items": items,
            })),
        }
    }
}

impl crate::reconcile::PodMetrics for ClusterMetrics {
    fn usage(&self, namespace: &str, pod: &str) -> Option<BTreeMap<String, i128>> {
        let p = self.pod(namespace, pod)?;
        Some(usage_map(&p))
    }
}

/// Pod usage in thousandths of the unit: millicores and millibytes.
pub(crate) fn usage_map(p: &PodUsage) -> BTreeMap<String, i128> {
    let cpu: i128 = p.containers.iter().map(|c| i128::from(c.cpu_nanocores)).sum::<i128>() / 1_000_000;
    let mem: i128 = p.containers.iter().map(|c| i128::from(c.memory_bytes)).sum::<i128>() * 1000;
    BTreeMap::from([("cpu".to_string(), cpu), ("memory".to_string(), mem)])
}

fn usage_json(cpu_nanocores: u64, memory_bytes: u64) -> Value {
    json!({"cpu": format!("{cpu_nanocores}n"), "memory": format!("{}Ki", memory_bytes / 1024)})
}

fn pod_json(p: &PodUsage) -> Value {
    json!({
        "kind": "PodMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {"name": p.name, "namespace": p.namespace, "creationTimestamp": p.timestamp},
        "timestamp": p.timestamp,
        "window": format!("{}s", p.window_secs),
        "containers": p.containers.iter().map(|c| json!({"name": c.name, "usage": usage_json(c.cpu_nanocores, c.memory_bytes)})).collect::<Vec<_>>(),
    })
}

fn node_json(n: &NodeUsage) -> Value {
    json!({
        "kind": "NodeMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {"name": n.name, "creationTimestamp": n.timestamp},
        "timestamp": n.timestamp,
        "window": format!("{}s", n.window_secs),
        "usage": usage_json(n.cpu_nanocores, n.memory_bytes),
    })
}

/// Busy and total jiffies of the `cpu` line of /proc/stat.
fn cpu_jiffies(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    if v.len() < 4 {
        return None;
    }
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// MemTotal − MemAvailable, in bytes (the working set `kubectl top node` shows).
fn used_memory(meminfo: &str) -> Option<u64> {
    let field = |k: &str| -> Option<u64> {
        meminfo.lines().find(|l| l.starts_with(k))?.split_whitespace().nth(1)?.parse().ok()
    };
    Some(field("MemTotal:")?.saturating_sub(field("MemAvailable:")?) * 1024)
}

/// Answers peers' [`SERVICE`] calls with this node's report.
pub(crate) fn register(transport: &Transport, metrics: Arc<ClusterMetrics>) {
    transport.register(
        SERVICE,
        Arc::new(move |_peer, _body| {
            let m = metrics.clone();
            Box::pin(async move {
                let report = m.local.read().map(|r| r.clone()).unwrap_or_default();
                serde_json::to_vec(&report).map_err(|e| e.to_string())
            })
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_units() {
        assert_eq!(nanocores(1_000_000_000, 1_500_000_000, Duration::from_secs(1)), 500_000_000);
        assert_eq!(nanocores(10, 5, Duration::from_secs(1)), 0, "a reset counter is no usage");
        let p = PodUsage {
            namespace: "d".into(),
            name: "p".into(),
            timestamp: "t".into(),
            window_secs: 10,
            containers: vec![
                ContainerUsage { name: "a".into(), cpu_nanocores: 250_000_000, memory_bytes: 4096 },
                ContainerUsage { name: "b".into(), cpu_nanocores: 50_000_000, memory_bytes: 1024 },
            ],
        };
        let u = usage_map(&p);
        assert_eq!(u["cpu"], 300, "millicores");
        assert_eq!(u["memory"], 5120 * 1000, "millibytes");
        let j = pod_json(&p);
        assert_eq!(j["containers"][0]["usage"], json!({"cpu": "250000000n", "memory": "4Ki"}));
        assert_eq!(j["window"], "10s");
    }

    #[test]
    fn proc_parsing() {
        let stat = "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(cpu_jiffies(stat), Some((200, 1000)));
        let mem = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    400 kB\n";
        assert_eq!(used_memory(mem), Some(600 * 1024));
    }
}
