//! The node agent: runs the Pods bound to this node with the runtime and images crates, and
//! writes back the status kubectl shows. It reads the local replica (no cache of its own),
//! re-adopts running containers after a restart, and writes status only when it changes.
mod env;
mod events;
pub mod logs;
pub mod network;
mod pod;
mod probes;
pub mod spec;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_kube::{Objects, Resource, UpdateMode};
use shoal_store::Store;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use network::PodNetwork;
use pod::PodState;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("images")]
    Images(#[from] shoal_images::Error),
    #[error("runtime")]
    Runtime(#[from] shoal_runtime::Error),
    #[error("pod network")]
    Network(#[from] network::NetError),
    #[error("objects")]
    Objects(#[from] shoal_kube::Error),
    #[error("{0}")]
    Pod(String),
}

/// What the agent needs from the node.
#[derive(Clone)]
pub struct AgentConfig {
    pub node_name: String,
    pub data_dir: PathBuf,
    pub address: IpAddr,
    pub objects: Objects,
    pub store: Store,
    pub pod_cidr: String,
    pub dns_ip: String,
}

/// Shared state of the agent and its pod workers.
pub(crate) struct Agent {
    pub cfg: AgentConfig,
    pub images: shoal_images::ImageStore,
    pub runtime: shoal_runtime::Runtime,
    pub net: PodNetwork,
    pub pods: Resource,
    pub nodes: Resource,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    pub events: events::Recorder,
    /// Per pod uid: what the agent knows of it.
    pub state: Mutex<HashMap<String, Arc<Mutex<PodState>>>>,
}

pub(crate) fn res(plural: &str) -> Resource {
    shoal_kube::resources::find("", plural).unwrap_or_else(|| unreachable_resource(plural))
}

fn unreachable_resource(plural: &str) -> Resource {
    Resource {
        group: String::new(),
        version: "v1".into(),
        kind: plural.into(),
        plural: plural.into(),
        singular: plural.into(),
        namespaced: true,
        short_names: vec![],
        categories: vec![],
        subresources: vec![],
    }
}

/// The node agent.
pub struct NodeAgent {
    agent: Arc<Agent>,
}

impl NodeAgent {
    /// Prepares images, the runtime and the pod network of this node.
    pub async fn start(cfg: AgentConfig) -> Result<NodeAgent, AgentError> {
        let images = shoal_images::ImageStore::open(&cfg.data_dir, shoal_images::Platform::host())?;
        let run_dir = PathBuf::from("/run/shoal").join(&cfg.node_name);
        let runtime = shoal_runtime::Runtime::new(shoal_runtime::RuntimeConfig {
            root: run_dir.join("runtime"),
            cgroup_parent: format!("shoal-{}", cfg.node_name),
            ..shoal_runtime::RuntimeConfig::default()
        });
        let subnet = network::claim_subnet(&cfg.store, &cfg.pod_cidr, &cfg.node_name).await?;
        let pod_cidr = cfg.pod_cidr.clone();
        let net = tokio::task::spawn_blocking(move || PodNetwork::setup(subnet, &pod_cidr))
            .await
            .map_err(|e| AgentError::Pod(format!("network setup task: {e}")))??;
        let log_dir = cfg.data_dir.join("pods");
        let events = events::Recorder::new(cfg.objects.clone(), cfg.node_name.clone());
        let agent = Agent {
            events,
            cfg,
            images,
            runtime,
            net,
            pods: res("pods"),
            nodes: res("nodes"),
            run_dir,
            log_dir,
            state: Mutex::new(HashMap::new()),
        };
        Ok(NodeAgent { agent: Arc::new(agent) })
    }

    /// Serves `pods/log` for the pods of this node (usable before the agent has started).
    pub fn streams(data_dir: &std::path::Path) -> Arc<dyn crate::api::PodStreams> {
        Arc::new(logs::LocalLogs { log_dir: data_dir.join("pods") })
    }

    /// Runs until `shutdown`. Containers keep running when it stops (their shims own them).
    pub async fn run(self, shutdown: CancellationToken) {
        let agent = self.agent;
        if let Err(e) = register_node(&agent).await {
            tracing::error!(error = %e, "registering the Node object");
        }
        // Air-gapped fleets: every tarball dropped in <data-dir>/images/import/ is imported, at
        // start and whenever a new one appears.
        let mut imported = HashMap::new();
        agent.import_new_tarballs(&mut imported).await;
        agent.adopt().await;
        let mut import_tick = tokio::time::interval(Duration::from_secs(10));
        let mut watch = agent.cfg.objects.watch(&agent.pods, None, None).await.ok();
        let mut tick = tokio::time::interval(Duration::from_millis(1000));
        let mut routes_tick = tokio::time::interval(Duration::from_secs(5));
        let workers = tokio_util::task::TaskTracker::new();
        let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                _ = routes_tick.tick() => { agent.sync_routes().await; continue; }
                _ = import_tick.tick() => { agent.import_new_tarballs(&mut imported).await; continue; }
                ev = async { match watch.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } } => {
                    match ev {
                        Some(Ok(_)) => {}
                        _ => { watch = agent.cfg.objects.watch(&agent.pods, None, None).await.ok(); }
                    }
                }
            }
            running.retain(|_, h| !h.is_finished());
            let mine = match agent.my_pods().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "listing pods");
                    continue;
                }
            };
            let mut seen = std::collections::HashSet::new();
            for pod in mine {
                let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_string();
                seen.insert(uid.clone());
                if running.contains_key(&uid) {
                    continue;
                }
                let a = agent.clone();
                let u = uid.clone();
                running.insert(uid, workers.spawn(async move { a.sync_pod(&u, Some(pod)).await }));
            }
            // Pods that vanished from the store (force-deleted) are torn down.
            let known: Vec<String> = agent.state.lock().await.keys().cloned().collect();
            for uid in known {
                if !seen.contains(&uid) && !running.contains_key(&uid) {
                    let a = agent.clone();
                    let u = uid.clone();
                    running.insert(uid, workers.spawn(async move { a.sync_pod(&u, None).await }));
                }
            }
        }
        workers.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), workers.wait()).await;
    }
}

impl Agent {
    async fn my_pods(&self) -> Result<Vec<Value>, AgentError> {
        let (pods, _) = self.cfg.objects.list(&self.pods, None).await?;
        Ok(pods.into_iter().filter(|p| p["spec"]["nodeName"].as_str() == Some(self.cfg.node_name.as_str())).collect())
    }

    /// Imports the tarballs of the import dir that are new or changed since the last look.
    async fn import_new_tarballs(&self, seen: &mut HashMap<PathBuf, (u64, std::time::SystemTime)>) {
        let dir = self.images.import_dir_path();
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        let mut files: Vec<(PathBuf, (u64, std::time::SystemTime))> = entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                let m = e.metadata().ok().filter(|m| m.is_file())?;
                Some((e.path(), (m.len(), m.modified().ok()?)))
            })
            .filter(|(p, stamp)| seen.get(p) != Some(stamp))
            .collect();
        files.sort();
        for (path, stamp) in files {
            match self.images.import(&path).await {
                Ok(refs) => tracing::info!(file = %path.display(), images = refs.len(), "imported image tarball"),
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot import image tarball"),
            }
            seen.insert(path, stamp);
        }
    }

    /// Routes to every other node's pod subnet.
    async fn sync_routes(&self) {
        let Ok((cidrs, _)) = self.cfg.store.range(network::PODCIDR_PREFIX).await else { return };
        let records = crate::cluster::peers::node_records(&self.cfg.store).await;
        let addr_of: BTreeMap<String, Ipv4Addr> = records
            .values()
            .filter_map(|r| Some((r.name.clone(), r.peer_addr.parse::<std::net::SocketAddr>().ok()?.ip())))
            .filter_map(|(n, ip)| match ip {
                IpAddr::V4(v4) => Some((n, v4)),
                IpAddr::V6(_) => None,
            })
            .collect();
        let mut routes = BTreeMap::new();
        for kv in cidrs {
            let node = kv.key.trim_start_matches(network::PODCIDR_PREFIX).to_string();
            if node == self.cfg.node_name {
                continue;
            }
            if let (Ok(cidr), Some(via)) = (String::from_utf8(kv.value), addr_of.get(&node)) {
                routes.insert(cidr, *via);
            }
        }
        let net = &self.net;
        net.sync_routes(&routes);
    }
}

/// Creates or refreshes this node's Node object (only written when something changed).
async fn register_node(agent: &Agent) -> Result<(), AgentError> {
    let name = agent.cfg.node_name.clone();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let os_image = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string())))
        .unwrap_or_else(|| "Linux".into());
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    };
    let capacity = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{mem_kib}Ki"),
        "pods": "110",
        "ephemeral-storage": "10Gi",
    });
    let status = json!({
        "capacity": capacity,
        "allocatable": capacity,
        "addresses": [
            {"type": "InternalIP", "address": agent.cfg.address.to_string()},
            {"type": "Hostname", "address": name},
        ],
        "nodeInfo": {
            "architecture": arch,
            "operatingSystem": "linux",
            "kernelVersion": kernel,
            "osImage": os_image,
            "containerRuntimeVersion": concat!("shoal://", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": "v1.33.0",
            "kubeProxyVersion": "v1.33.0",
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
        },
        "conditions": [{
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "shoal node agent is ready",
            "lastHeartbeatTime": shoal_kube::objects::now_rfc3339(),
            "lastTransitionTime": shoal_kube::objects::now_rfc3339(),
        }],
    });
    let labels = json!({
        "kubernetes.io/arch": arch,
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": name,
        "beta.kubernetes.io/arch": arch,
        "beta.kubernetes.io/os": "linux",
    });
    let pod_cidr = agent.net.subnet.cidr();
    match agent.cfg.objects.get(&agent.nodes, None, &name).await? {
        None => {
            let node = json!({
                "metadata": {"name": name, "labels": labels},
                "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
                "status": status,
            });
            agent.cfg.objects.create(&agent.nodes, None, node).await?;
        }
        Some(_) => {
            agent
                .cfg
                .objects
                .modify(&agent.nodes, None, &name, UpdateMode::All, |n| {
                    let before = n.clone();
                    if let Some(l) = n["metadata"]["labels"].as_object_mut() {
                        for (k, v) in labels.as_object().into_iter().flatten() {
                            l.insert(k.clone(), v.clone());
                        }
                    } else {
                        n["metadata"]["labels"] = labels.clone();
                    }
                    n["spec"]["podCIDR"] = json!(pod_cidr);
                    n["spec"]["podCIDRs"] = json!([pod_cidr]);
                    // Keep the conditions' times unless readiness changes: no write at all on
                    // a plain restart.
                    let mut st = status.clone();
                    if n["status"]["conditions"][0]["status"] == "True" {
                        st["conditions"] = n["status"]["conditions"].clone();
                    }
                    n["status"] = st;
                    Ok(*n != before)
                })
                .await?;
        }
    }
    Ok(())
}
