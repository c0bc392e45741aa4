//! The node agent: runs the Pods bound to this node with the runtime and images crates, and
//! writes back the status kubectl shows. It reads the local replica (no cache of its own),
//! re-adopts running containers after a restart, and writes status only when it changes.
pub mod blobs;
mod dns_files;
mod env;
pub mod eviction;
pub mod lease;
#[cfg(test)]
mod lifecycle_tests;
pub mod logs;
pub mod metrics;
pub mod network;
pub mod os;
mod pod;
mod probes;
pub mod spec;
mod streams;
mod subpath;
#[cfg(test)]
mod testing;
pub use crate::auth::sa_token as token;
mod volumes;

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
use os::{ContainerRuntime, HostPaths, PodNetworking};
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
    /// A volume could not be set up (a FailedMount event says so already).
    #[error("MountVolume.SetUp failed for volume \"{volume}\" : {message}")]
    Mount { volume: String, message: String },
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
    /// The `kubernetes` Service's ClusterIP (`KUBERNETES_SERVICE_HOST`).
    pub kubernetes_ip: String,
    /// Where the run dir and procfs are (`/run/shoal`, `/proc` on a node).
    pub paths: HostPaths,
}

/// Shared state of the agent and its pod workers.
pub(crate) struct Agent {
    pub cfg: AgentConfig,
    pub images: shoal_images::ImageStore,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub net: Arc<dyn PodNetworking>,
    pub pods: Resource,
    pub nodes: Resource,
    pub run_dir: PathBuf,
    pub log_dir: PathBuf,
    pub events: crate::reconcile::events::Recorder,
    /// Devices declared for hardware-in-the-loop benches.
    pub devices: Vec<crate::config::DeviceConfig>,
    /// Device path → uid of the pod that holds it.
    pub device_owners: std::sync::Mutex<HashMap<PathBuf, String>>,
    /// Per pod uid: what the agent knows of it.
    pub state: Mutex<HashMap<String, Arc<Mutex<PodState>>>>,
    /// The cluster's ServiceAccount keys, which sign the pods' tokens; None where the data dir
    /// holds no cluster secrets, and then pods get no token.
    pub signer: Option<token::TokenKeys>,
    /// The cluster CA certificate, the `ca.crt` of the ServiceAccount volume.
    pub ca_crt: Option<String>,
    /// Node-pressure eviction: thresholds, where the signals come from, and the pressure
    /// seen (with the conditions it holds).
    pub eviction: eviction::EvictionConfig,
    pub node_stats: Arc<dyn eviction::NodeStats>,
    pub pressure: std::sync::Mutex<(eviction::Pressure, Vec<eviction::Resource>)>,
    /// The pod routes last applied and when; unchanged routes are re-applied once a minute
    /// (in case something else removed them), not on every pass.
    pub routes: Mutex<(network::Routes, Option<std::time::Instant>)>,
    /// The node's allocatable cpu (millicores) and memory (bytes), read once at start: every
    /// pass of every pod used to read /proc/meminfo and the cgroup CPU quota again.
    pub allocatable: (u64, u64),
}

/// How often unchanged pod routes are applied again.
const ROUTES_REFRESH: Duration = Duration::from_secs(60);

pub(crate) fn res(plural: &str) -> Resource {
    shoal_kube::resources::lookup("", plural)
}

/// The runtime settings of a node's agent (state under `<run>/<node>`, `/run/shoal/<node>` on
/// a node).
pub(crate) fn runtime_config(run: &std::path::Path, node_name: &str) -> shoal_runtime::RuntimeConfig {
    shoal_runtime::RuntimeConfig {
        root: run.join(node_name).join("runtime"),
        cgroup_parent: format!("shoal-{node_name}"),
        ..shoal_runtime::RuntimeConfig::default()
    }
}

/// Serves `pods/log` and `pods/exec` for every pod of the cluster: this node's pods itself,
/// the others by proxying to the node that runs them over the peer transport (which must
/// have [`register_streams`] done on every node). Without a transport, only local pods.
pub fn streams(
    transport: Option<shoal_gossip::Transport>,
    store: Store,
    data_dir: &std::path::Path,
    node_name: &str,
) -> Arc<dyn crate::streams::PodStreams> {
    Arc::new(streams::node_streams(transport, store, data_dir, node_name))
}

/// Serves this node's pod streams to the peers (service `pod-streams` on the transport).
pub fn register_streams(transport: &shoal_gossip::Transport, data_dir: &std::path::Path, node_name: &str) {
    streams::register(transport, data_dir, node_name)
}

/// Usage of every pod and node of the cluster (metrics.k8s.io, the HPA's `PodMetrics`).
/// Run it with `ClusterMetrics::run(shutdown)` on every node; pass `run_pods` = whether this
/// node runs containers. Peers' samples arrive over the transport once
/// [`register_metrics`] is done on every node.
pub fn metrics(
    transport: Option<shoal_gossip::Transport>,
    objects: Objects,
    store: Store,
    node_name: &str,
    run_pods: bool,
) -> Arc<metrics::ClusterMetrics> {
    Arc::new(metrics::ClusterMetrics::new(transport, objects, store, node_name, run_pods))
}

/// Answers the peers' metrics requests (service `pod-metrics` on the transport).
pub fn register_metrics(transport: &shoal_gossip::Transport, metrics: Arc<metrics::ClusterMetrics>) {
    metrics::register(transport, metrics)
}

/// The node agent.
pub struct NodeAgent {
    agent: Arc<Agent>,
}

impl NodeAgent {
    /// Prepares images, the runtime and the pod network of this node.
    pub async fn start(cfg: AgentConfig) -> Result<NodeAgent, AgentError> {
        NodeAgent::start_with_shim(cfg, shoal_runtime::ShimCommand::default()).await
    }

    /// Like [`NodeAgent::start`], with the command that runs the container shims (the
    /// default re-executes the running binary, which a test binary cannot serve).
    pub async fn start_with_shim(cfg: AgentConfig, shim: shoal_runtime::ShimCommand) -> Result<NodeAgent, AgentError> {
        let images = shoal_images::ImageStore::open(&cfg.data_dir, shoal_images::Platform::host())?;
        let run_dir = cfg.paths.run.join(&cfg.node_name);
        let runtime = shoal_runtime::Runtime::new(shoal_runtime::RuntimeConfig {
            shim,
            ..runtime_config(&cfg.paths.run, &cfg.node_name)
        });
        let runtime = Arc::new(os::LinuxRuntime { runtime, sandboxes: run_dir.join("sandboxes") });
        let subnet = network::claim_subnet(&cfg.store, &cfg.pod_cidr, &cfg.node_name).await?;
        let net = Arc::new(PodNetwork::setup(subnet, &cfg.pod_cidr, &cfg.paths.proc).await?);
        Ok(NodeAgent { agent: Arc::new(Agent::new(cfg, images, runtime, net)) })
    }

    /// Serves `pods/log` for the pods of this node only (usable before the agent has
    /// started). [`streams`] serves logs and exec for every pod of the cluster.
    pub fn streams(data_dir: &std::path::Path) -> Arc<dyn crate::streams::PodStreams> {
        Arc::new(logs::LocalLogs { log_dir: data_dir.join("pods") })
    }
}

impl Agent {
    /// The agent of a node, over the given image store, container runtime and pod network.
    pub(crate) fn new(
        cfg: AgentConfig,
        images: shoal_images::ImageStore,
        runtime: Arc<dyn ContainerRuntime>,
        net: Arc<dyn PodNetworking>,
    ) -> Agent {
        let run_dir = cfg.paths.run.join(&cfg.node_name);
        let log_dir = cfg.data_dir.join("pods");
        let events = crate::reconcile::events::Recorder::for_node(cfg.objects.clone(), cfg.node_name.clone());
        let (signer, ca_crt) = load_token_key(&cfg.data_dir);
        let node_stats: Arc<dyn eviction::NodeStats> = Arc::new(eviction::LinuxNodeStats {
            meminfo: cfg.paths.proc.join("meminfo"),
            data_dir: cfg.data_dir.clone(),
            proc: cfg.paths.proc.clone(),
        });
        let allocatable = node_allocatable(&cfg.paths.proc);
        Agent {
            allocatable,
            signer,
            ca_crt,
            eviction: eviction::EvictionConfig::default(),
            node_stats,
            pressure: std::sync::Mutex::new(Default::default()),
            events,
            devices: Vec::new(),
            device_owners: std::sync::Mutex::new(HashMap::new()),
            cfg,
            images,
            runtime,
            net,
            pods: res("pods"),
            nodes: res("nodes"),
            run_dir,
            log_dir,
            state: Mutex::new(HashMap::new()),
            routes: Mutex::new(Default::default()),
        }
    }
}

impl NodeAgent {
    /// This node's image store.
    pub fn images(&self) -> shoal_images::ImageStore {
        self.agent.images.clone()
    }

    /// Declares the node's devices (config `[node] devices`): advertised as extended resources,
    /// and handed to the pods that request them. Call before [`NodeAgent::run`].
    pub fn with_devices(mut self, devices: Vec<crate::config::DeviceConfig>) -> NodeAgent {
        match Arc::get_mut(&mut self.agent) {
            Some(a) => a.devices = devices,
            None => tracing::warn!("devices declared after the agent started; ignored"),
        }
        self
    }

    /// Sets the hard eviction thresholds and, for tests, where the node's memory and disk
    /// signals come from (default: /proc/meminfo and the data dir's filesystem). Call before
    /// [`NodeAgent::run`].
    pub fn with_eviction(
        mut self,
        config: eviction::EvictionConfig,
        stats: Option<Arc<dyn eviction::NodeStats>>,
    ) -> NodeAgent {
        match Arc::get_mut(&mut self.agent) {
            Some(a) => {
                a.eviction = config;
                if let Some(s) = stats {
                    a.node_stats = s;
                }
            }
            None => tracing::warn!("eviction settings given after the agent started; ignored"),
        }
        self
    }

    /// Runs until `shutdown`. Containers keep running when it stops (their shims own them).
    pub async fn run(self, shutdown: CancellationToken) {
        let agent = self.agent;
        if let Err(e) = register_node(&agent).await {
            tracing::error!(error = %e, "registering the Node object");
        }
        publish_root_ca(&agent).await;
        // Air-gapped fleets: every tarball dropped in <data-dir>/images/import/ is imported, at
        // start and whenever a new one appears.
        let mut imported = HashMap::new();
        if agent.import_new_tarballs(&mut imported).await {
            agent.refresh_node().await;
        }
        agent.adopt().await;
        let mut import_tick = tokio::time::interval(Duration::from_secs(10));
        // This node's pods by uid, from one list and the watch that follows it: the passes of
        // the tick read them from here, not from a list of every pod of the cluster.
        let mut mine: HashMap<String, Value> = HashMap::new();
        let mut watch = agent.list_and_watch(&mut mine).await;
        let mut tick = tokio::time::interval(Duration::from_millis(1000));
        let mut routes_tick = tokio::time::interval(Duration::from_secs(5));
        let mut node_tick = tokio::time::interval(Duration::from_secs(30));
        node_tick.tick().await;
        let mut eviction_tick = tokio::time::interval(agent.eviction.interval.max(Duration::from_millis(100)));
        let workers = tokio_util::task::TaskTracker::new();
        let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        // One pod worker at a time per uid: a pod whose worker still runs is left to a later
        // pass.
        let spawn_sync = |running: &mut HashMap<String, tokio::task::JoinHandle<()>>, uid: String, pod| {
            if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(uid) {
                let (a, u) = (agent.clone(), slot.key().clone());
                slot.insert(workers.spawn(async move { a.sync_pod(&u, pod).await }));
            }
        };
        loop {
            // A tick resyncs every pod of this node (level-triggered: container exits, probe
            // results, back-off timers); a watch event syncs only the pods it names, and only
            // those bound here, so a start storm elsewhere in the cluster costs this node no
            // listing and no resyncs.
            let mut changed: HashMap<String, Value> = HashMap::new();
            let full = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => true,
                _ = routes_tick.tick() => { agent.sync_routes().await; continue; }
                _ = node_tick.tick() => {
                    agent.refresh_node().await;
                    agent.clean_storage().await;
                    continue;
                }
                _ = eviction_tick.tick() => { agent.check_pressure().await; continue; }
                _ = import_tick.tick() => {
                    if agent.import_new_tarballs(&mut imported).await {
                        agent.refresh_node().await;
                    }
                    continue;
                }
                ev = async { match watch.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } } => {
                    let mut full = false;
                    let mut next = Some(ev);
                    // Every event already queued is taken in this one pass.
                    while let Some(ev) = next.take() {
                        match ev {
                            Some(Ok(ev)) => full |= agent.note_event(ev, &mut mine, &mut changed),
                            _ => {
                                watch = agent.list_and_watch(&mut mine).await;
                                full = true;
                                break;
                            }
                        }
                        next = watch.as_mut().and_then(|w| w.try_recv().ok()).map(Some);
                    }
                    full
                }
            };
            running.retain(|_, h| !h.is_finished());
            if !full {
                for (uid, pod) in changed {
                    spawn_sync(&mut running, uid, Some(pod));
                }
                continue;
            }
            if watch.is_none() {
                // No list since the watch failed: the pods here may be stale.
                watch = agent.list_and_watch(&mut mine).await;
                if watch.is_none() {
                    continue;
                }
            }
            let mut seen = std::collections::HashSet::new();
            for (uid, pod) in &mine {
                seen.insert(uid.clone());
                spawn_sync(&mut running, uid.clone(), Some(pod.clone()));
            }
            // Pods that vanished from the store (force-deleted) are torn down.
            let known: Vec<String> = agent.state.lock().await.keys().cloned().collect();
            for uid in known {
                if !seen.contains(&uid) {
                    spawn_sync(&mut running, uid, None);
                }
            }
        }
        workers.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), workers.wait()).await;
    }
}

impl Agent {
    /// Notes one pod watch event in `mine` and for the next pass: a pod bound to this node
    /// goes into `changed` (the newest version wins). True when the pass must look at every
    /// pod: a pod of this node was deleted (its teardown is found by the full pass, which also
    /// sees force deletes). The deletes of other nodes' pods cost nothing here: with 1,000
    /// pods in the cluster, each of them used to resync every pod of every node.
    fn note_event(
        &self,
        ev: shoal_kube::objects::ObjectEvent,
        mine: &mut HashMap<String, Value>,
        changed: &mut HashMap<String, Value>,
    ) -> bool {
        let uid = ev.object["metadata"]["uid"].as_str().map(str::to_string);
        if ev.kind == "DELETED" {
            let here = ev.object["spec"]["nodeName"].as_str() == Some(self.cfg.node_name.as_str());
            let was_mine = uid.as_ref().is_some_and(|uid| mine.remove(uid).is_some());
            return here || was_mine || uid.is_none();
        }
        if ev.object["spec"]["nodeName"].as_str() != Some(self.cfg.node_name.as_str()) {
            return false;
        }
        match uid {
            Some(uid) => {
                mine.insert(uid.clone(), ev.object.clone());
                changed.insert(uid, ev.object);
                false
            }
            None => true,
        }
    }

    /// Lists this node's pods into `mine` and watches every pod from that revision on (None
    /// when either fails: the next tick tries again).
    async fn list_and_watch(
        &self,
        mine: &mut HashMap<String, Value>,
    ) -> Option<tokio::sync::mpsc::Receiver<shoal_kube::Result<shoal_kube::objects::ObjectEvent>>> {
        match self.cfg.objects.list_and_watch(&self.pods, None).await {
            Ok((pods, rx)) => {
                mine.clear();
                for pod in pods {
                    if pod["spec"]["nodeName"].as_str() != Some(self.cfg.node_name.as_str()) {
                        continue;
                    }
                    if let Some(uid) = pod["metadata"]["uid"].as_str() {
                        mine.insert(uid.to_string(), pod);
                    }
                }
                Some(rx)
            }
            Err(e) => {
                tracing::warn!(error = %e, "listing and watching pods");
                None
            }
        }
    }

    async fn my_pods(&self) -> Result<Vec<Value>, AgentError> {
        let (pods, _) = self.cfg.objects.list(&self.pods, None).await?;
        Ok(pods.into_iter().filter(|p| p["spec"]["nodeName"].as_str() == Some(self.cfg.node_name.as_str())).collect())
    }

    /// Rewrites the Node object if its status changed (images, devices, capacity).
    async fn refresh_node(&self) {
        if let Err(e) = register_node(self).await {
            tracing::warn!(error = %e, "refreshing the Node object");
        }
    }

    /// Reads the node's signals; reports pressure changes on the Node and, while a signal is
    /// below its threshold, evicts the first pod in eviction order.
    async fn check_pressure(self: &Arc<Self>) {
        let stats = self.node_stats.clone();
        let Ok(signals) = tokio::task::spawn_blocking(move || stats.signals()).await else { return };
        let under = eviction::under(&self.eviction, &signals);
        let changed = match self.pressure.lock() {
            Ok(mut p) => {
                let active = p.0.observe(&self.eviction, std::time::Instant::now(), &under);
                let changed = active != p.1;
                p.1 = active;
                changed
            }
            Err(_) => false,
        };
        if changed {
            tracing::warn!(signals = ?signals, under = ?under, "node pressure changed");
            self.refresh_node().await;
        }
        let Some(&(resource, observed, threshold)) = under.first() else { return };
        let Ok(pods) = self.my_pods().await else { return };
        let mut usage = HashMap::new();
        for p in &pods {
            let uid = p["metadata"]["uid"].as_str().unwrap_or_default();
            let used: u64 = p["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| self.runtime.stats(&pod::container_id(uid, c["name"].as_str()?)).ok())
                .map(|s| if resource == eviction::Resource::Pids { s.pids } else { s.memory_usage_bytes })
                .sum();
            usage.insert(uid.to_string(), used);
        }
        if let Some(victim) = eviction::rank(&pods, &usage, resource).first() {
            self.evict(victim, resource, observed, threshold).await;
        }
    }

    /// Stops a pod at once and marks it Failed, reason Evicted (the Pod object stays, as
    /// upstream; its controller replaces it).
    async fn evict(self: &Arc<Self>, pod: &Value, resource: eviction::Resource, observed: u64, threshold: u64) {
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        let entry = {
            let mut map = self.state.lock().await;
            map.entry(uid.clone()).or_insert_with(|| Arc::new(Mutex::new(PodState::default()))).clone()
        };
        let mut st = entry.lock().await;
        if st.evicted {
            return;
        }
        st.evicted = true;
        let now = shoal_kube::objects::now_rfc3339();
        let status = eviction::evicted_status(&pod["status"], resource, observed, threshold, &now);
        let message = status["message"].as_str().unwrap_or_default().to_string();
        tracing::warn!(pod = %name, namespace = %ns, %message, "evicting pod");
        self.events.emit(pod, None, crate::reconcile::events::Type::Warning, "Evicted", &message);
        self.teardown(&uid, &mut st, Duration::ZERO, None).await;
        let res = self
            .cfg
            .objects
            .modify(&self.pods, Some(&ns), &name, UpdateMode::Status, |p| {
                if p["metadata"]["uid"].as_str() != Some(uid.as_str()) {
                    return Ok(false);
                }
                p["status"] = eviction::evicted_status(&p["status"], resource, observed, threshold, &now);
                Ok(true)
            })
            .await;
        if let Err(e) = res {
            tracing::warn!(pod = %name, error = %e, "writing the evicted pod's status");
        }
    }

    /// Removes the directories of this node's provisioned volumes whose PersistentVolume is
    /// gone (reclaimPolicy Delete).
    async fn clean_storage(&self) {
        let dir = self.cfg.data_dir.join("storage");
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        // Only against a replica that holds every acknowledged write (confirmed with the
        // leader first), never a lagging or blank one: a volume seen missing here is gone.
        if self.cfg.store.sync().await.is_err() {
            return;
        }
        let Ok((pvs, revision)) = self.cfg.objects.list(&res("persistentvolumes"), None).await else { return };
        if revision == 0 {
            return;
        }
        let live: std::collections::HashSet<String> =
            pvs.iter().filter_map(|p| p["metadata"]["name"].as_str().map(String::from)).collect();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // A directory made in the last minute may belong to a volume still being bound.
            let young = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(60));
            if name.starts_with("pvc-") && !live.contains(&name) && !young {
                match std::fs::remove_dir_all(e.path()) {
                    Ok(()) => tracing::info!(volume = %name, "removed the directory of a deleted volume"),
                    Err(err) => tracing::warn!(volume = %name, error = %err, "removing a deleted volume's directory"),
                }
            }
        }
    }

    /// Imports the tarballs of the import dir that are new or changed since the last look;
    /// says whether any image was imported.
    async fn import_new_tarballs(&self, seen: &mut HashMap<PathBuf, (u64, std::time::SystemTime)>) -> bool {
        let mut any = false;
        let dir = self.images.import_dir_path();
        let Ok(entries) = std::fs::read_dir(&dir) else { return false };
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
                Ok(refs) => {
                    any |= !refs.is_empty();
                    tracing::info!(file = %path.display(), images = refs.len(), "imported image tarball")
                }
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot import image tarball"),
            }
            seen.insert(path, stamp);
        }
        any
    }

    /// Routes to every other node's pod subnet.
    async fn sync_routes(&self) {
        let Ok((cidrs, _)) = self.cfg.store.range(network::PODCIDR_PREFIX).await else { return };
        let records = crate::members::node_records(&self.cfg.store).await;
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
        let want = network::Routes { peers: routes, me: addr_of.get(&self.cfg.node_name).copied() };
        let mut last = self.routes.lock().await;
        let fresh = last.1.is_some_and(|at| at.elapsed() < ROUTES_REFRESH);
        if last.0 == want && fresh {
            return;
        }
        let ok = self.net.sync_routes(&want).await;
        // A failed pass is retried on the next tick.
        *last = (want, ok.then(std::time::Instant::now));
    }
}

/// The ServiceAccount keys and the CA certificate from the data dir's `secrets.json`, to sign
/// tokens and publish the CA pods verify the API with.
fn load_token_key(data_dir: &std::path::Path) -> (Option<token::TokenKeys>, Option<String>) {
    let path = data_dir.join(crate::config::SECRETS_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        tracing::info!(path = %path.display(), "no cluster secrets; pods get no service account token");
        return (None, None);
    };
    let secrets: shoal_gossip::pki::ClusterSecrets = match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cluster secrets unreadable; pods get no token");
            return (None, None);
        }
    };
    match token::TokenKeys::from_secrets(&secrets) {
        Ok(s) => (Some(s.reloading_from(path)), Some(secrets.ca_cert_pem)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot sign service account tokens");
            (None, Some(secrets.ca_cert_pem))
        }
    }
}

/// Publishes the cluster CA certificate as kube-system's `kube-root-ca.crt` (what bearer
/// tokens are verified against); written only when missing or different.
async fn publish_root_ca(agent: &Agent) {
    let Some(ca) = &agent.ca_crt else { return };
    let cms = res("configmaps");
    let name = volumes::ROOT_CA_CONFIGMAP;
    let res = match agent.cfg.objects.get(&cms, Some("kube-system"), name).await {
        Ok(Some(cm)) if cm["data"]["ca.crt"].as_str() == Some(ca.as_str()) => return,
        Ok(Some(_)) => {
            agent
                .cfg
                .objects
                .modify(&cms, Some("kube-system"), name, UpdateMode::All, |cm| {
                    cm["data"] = json!({"ca.crt": ca});
                    Ok(true)
                })
                .await
        }
        Ok(None) => {
            let cm = json!({"metadata": {"name": name, "namespace": "kube-system"}, "data": {"ca.crt": ca}});
            match agent.cfg.objects.create(&cms, Some("kube-system"), cm).await {
                Err(shoal_kube::Error::AlreadyExists { .. }) => return,
                r => r,
            }
        }
        Err(e) => Err(e),
    };
    if let Err(e) = res {
        tracing::warn!(error = %e, "publishing the cluster CA certificate");
    }
}

/// The node's allocatable cpu (millicores) and memory (bytes), for resourceFieldRefs of
/// limits a container does not set.
fn node_allocatable(proc: &std::path::Path) -> (u64, u64) {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (_, alloc) = capacity(cpus, mem_total_kib(proc), &BTreeMap::new());
    let cpu = alloc["cpu"].as_str().and_then(spec::cpu_millis).unwrap_or(1000);
    let mem = alloc["memory"].as_str().and_then(spec::bytes).unwrap_or(0);
    (cpu, mem)
}

fn mem_total_kib(proc: &std::path::Path) -> u64 {
    std::fs::read_to_string(proc.join("meminfo"))
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// How often the node's own status write refreshes `lastHeartbeatTime` when nothing else
/// changes (the kubelet's node status report frequency). Liveness itself rides on gossip.
pub const HEARTBEAT_WRITE: Duration = Duration::from_secs(300);

/// The node conditions this agent reports, from the pressure it sees.
fn node_conditions(pressure: &[eviction::Resource]) -> Vec<Value> {
    let has = |r| pressure.contains(&r);
    let cond = |ty: &str, on: bool, yes: (&str, &str), no: (&str, &str)| {
        let (reason, message) = if on { yes } else { no };
        json!({"type": ty, "status": if on { "True" } else { "False" }, "reason": reason, "message": message})
    };
    vec![
        cond(
            "MemoryPressure",
            has(eviction::Resource::Memory),
            ("KubeletHasInsufficientMemory", "kubelet has insufficient memory available"),
            ("KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ),
        cond(
            "DiskPressure",
            has(eviction::Resource::Disk),
            ("KubeletHasDiskPressure", "kubelet has disk pressure"),
            ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ),
        cond(
            "PIDPressure",
            has(eviction::Resource::Pids),
            ("KubeletHasInsufficientPID", "kubelet has insufficient PID available"),
            ("KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ),
        cond("Ready", true, ("KubeletReady", "shoal node agent is ready"), ("KubeletNotReady", "")),
    ]
}

/// Merges the agent's conditions into the stored ones: a condition keeps its
/// `lastTransitionTime` while its status holds, and its `lastHeartbeatTime` until that is
/// older than [`HEARTBEAT_WRITE`]; one the node lifecycle controller marked Unknown (the node
/// was unreachable) is left to it.
fn merge_conditions(old: &Value, new: &[Value], now: jiff::Timestamp) -> Value {
    let now_s = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let find = |ty: &Value| old.as_array().and_then(|cs| cs.iter().find(|c| c["type"] == *ty)).cloned();
    let out = new
        .iter()
        .map(|c| {
            let prev = find(&c["type"]);
            if let Some(p) = prev.as_ref().filter(|p| p["reason"] == "NodeStatusUnknown") {
                return p.clone();
            }
            let mut c = c.clone();
            let same = prev.as_ref().is_some_and(|p| p["status"] == c["status"]);
            let transition = prev.as_ref().filter(|_| same).and_then(|p| p["lastTransitionTime"].as_str());
            c["lastTransitionTime"] = json!(transition.unwrap_or(&now_s));
            let beat = prev.as_ref().filter(|_| same).and_then(|p| p["lastHeartbeatTime"].as_str()).filter(|t| {
                t.parse::<jiff::Timestamp>().is_ok_and(|t| now.duration_since(t).unsigned_abs() < HEARTBEAT_WRITE)
            });
            c["lastHeartbeatTime"] = json!(beat.unwrap_or(&now_s));
            c
        })
        .collect();
    Value::Array(out)
}

/// The node's taints with the pressure taints (NoSchedule) set for the resources under
/// pressure and removed for the others; other taints are left alone.
fn pressure_taints(old: &Value, pressure: &[eviction::Resource]) -> Value {
    let ours = [eviction::Resource::Memory, eviction::Resource::Disk, eviction::Resource::Pids];
    let mut ts: Vec<Value> = old
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| !ours.iter().any(|r| t["key"] == r.taint() && !pressure.contains(r)))
        .cloned()
        .collect();
    for r in pressure {
        if !ts.iter().any(|t| t["key"] == r.taint()) {
            ts.push(json!({"key": r.taint(), "effect": "NoSchedule"}));
        }
    }
    Value::Array(ts)
}

/// What the node reserves for itself and the daemon: not allocatable to pods.
const RESERVED_CPU_MILLIS: u64 = 100;
const RESERVED_MEMORY_KIB: u64 = 256 * 1024;
/// The kubelet reports at most this many images (largest first).
const MAX_NODE_IMAGES: usize = 50;

/// Declared devices per extended resource name.
fn device_counts(devices: &[crate::config::DeviceConfig]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for d in devices {
        *out.entry(d.resource.clone()).or_insert(0) += 1;
    }
    out
}

/// Capacity and allocatable (capacity minus the node's reserve) of a node.
fn capacity(cpus: usize, mem_kib: u64, devices: &BTreeMap<String, usize>) -> (Value, Value) {
    let mut capacity = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{mem_kib}Ki"),
        "pods": "110",
        "ephemeral-storage": "10Gi",
    });
    let cpu_millis = (cpus as u64 * 1000).saturating_sub(RESERVED_CPU_MILLIS).max(cpus.min(1) as u64 * 100);
    // Small boards keep at least half their memory for pods.
    let mem = mem_kib.saturating_sub(RESERVED_MEMORY_KIB.min(mem_kib / 2));
    let mut allocatable = json!({
        "cpu": format!("{cpu_millis}m"),
        "memory": format!("{mem}Ki"),
        "pods": "110",
        "ephemeral-storage": "9Gi",
    });
    for (resource, n) in devices {
        capacity[resource] = json!(n.to_string());
        allocatable[resource] = json!(n.to_string());
    }
    (capacity, allocatable)
}

/// `status.images`: names and sizes, largest first, as the scheduler's image locality reads.
fn node_images(mut images: Vec<(Vec<String>, u64)>) -> Value {
    images.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    images.truncate(MAX_NODE_IMAGES);
    Value::Array(images.into_iter().map(|(names, size)| json!({"names": names, "sizeBytes": size})).collect())
}

/// Creates or refreshes this node's Node object (only written when something changed).
async fn register_node(agent: &Agent) -> Result<(), AgentError> {
    let name = agent.cfg.node_name.clone();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let proc = &agent.cfg.paths.proc;
    let mem_kib = mem_total_kib(proc);
    let kernel = std::fs::read_to_string(proc.join("sys/kernel/osrelease")).unwrap_or_default().trim().to_string();
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
    let held: Vec<shoal_images::ImageInfo> =
        agent.images.list().unwrap_or_default().into_iter().filter(|i| !i.names.is_empty()).collect();
    // What each image offers, so the scheduler keeps pods off nodes of an architecture the
    // image is not built for.
    let offered: Vec<(Vec<String>, Vec<String>)> =
        held.iter().map(|i| (i.names.clone(), i.platforms.iter().map(|p| p.to_string()).collect())).collect();
    let image_platforms =
        crate::reconcile::images::image_platforms_annotation(offered.iter().map(|(n, p)| (&n[..], &p[..])));
    let images: Vec<(Vec<String>, u64)> = held.into_iter().map(|i| (i.names, i.size)).collect();
    let devices = device_counts(&agent.devices);
    let (capacity, allocatable) = capacity(cpus, mem_kib, &devices);
    let status = json!({
        "capacity": capacity,
        "allocatable": allocatable,
        "images": node_images(images),
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
            "kubeletVersion": shoal_kube::KUBERNETES_VERSION,
            "kubeProxyVersion": shoal_kube::KUBERNETES_VERSION,
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
        },
    });
    let now = jiff::Timestamp::now();
    let pressure = agent.pressure.lock().map(|p| p.1.clone()).unwrap_or_default();
    let conditions = node_conditions(&pressure);
    let storage_dir = agent.cfg.data_dir.join("storage").to_string_lossy().into_owned();
    let annotations = json!({
        crate::reconcile::volumes::STORAGE_DIR_ANNOTATION: storage_dir,
        crate::reconcile::images::IMAGE_PLATFORMS_ANNOTATION: image_platforms,
    });
    let labels = json!({
        "kubernetes.io/arch": arch,
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": name,
        "beta.kubernetes.io/arch": arch,
        "beta.kubernetes.io/os": "linux",
    });
    let pod_cidr = agent.net.subnet().cidr();
    let stored = match agent.cfg.objects.get(&agent.nodes, None, &name).await? {
        None => {
            let mut status = status;
            status["conditions"] = merge_conditions(&Value::Null, &conditions, now);
            let node = json!({
                "metadata": {"name": name, "labels": labels, "annotations": annotations},
                "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr], "taints": pressure_taints(&json!([]), &pressure)},
                "status": status,
            });
            agent.cfg.objects.create(&agent.nodes, None, node).await?
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
                    for (k, v) in annotations.as_object().into_iter().flatten() {
                        if n["metadata"]["annotations"][k] != *v {
                            if !n["metadata"]["annotations"].is_object() {
                                n["metadata"]["annotations"] = json!({});
                            }
                            n["metadata"]["annotations"][k] = v.clone();
                        }
                    }
                    let taints = pressure_taints(&n["spec"]["taints"], &pressure);
                    if taints.as_array().is_some_and(|t| t.is_empty()) {
                        if let Some(spec) = n["spec"].as_object_mut() {
                            spec.remove("taints");
                        }
                    } else {
                        n["spec"]["taints"] = taints;
                    }
                    // Condition times are kept unless a status changes or the heartbeat is
                    // due: no write at all on a plain restart or refresh.
                    let mut st = status.clone();
                    st["conditions"] = merge_conditions(&n["status"]["conditions"], &conditions, now);
                    n["status"] = st;
                    Ok(*n != before)
                })
                .await?
        }
    };
    let uid = stored["metadata"]["uid"].as_str().unwrap_or_default();
    if let Err(e) = lease::keep(&agent.cfg.objects, &name, uid, HEARTBEAT_WRITE).await {
        tracing::warn!(error = %e, "node lease not written");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_pod_sync_tells_the_whole_cause() {
        let io = std::io::Error::other("no space left on device");
        let e = AgentError::Runtime(shoal_runtime::Error::Cgroup {
            path: "/shoal-n1/podabc".into(),
            operation: "create",
            source: Box::new(io),
        });
        let (reason, message) = pod::sync_failure_event(&e, false).expect("an event");
        assert_eq!(reason, "FailedCreatePodSandBox");
        assert_eq!(
            message,
            "Failed to create pod sandbox: runtime: cgroup /shoal-n1/podabc: create: no space left on device"
        );
        let (reason, _) = pod::sync_failure_event(&e, true).expect("an event");
        assert_eq!(reason, "FailedSync");
        let mount = AgentError::Mount { volume: "cfg".into(), message: "configmap \"x\" not found".into() };
        assert_eq!(pod::sync_failure_event(&mount, true), None, "FailedMount said it already");
        assert_eq!(mount.to_string(), "MountVolume.SetUp failed for volume \"cfg\" : configmap \"x\" not found");
    }

    #[test]
    fn allocatable_keeps_a_reserve_and_devices_are_resources() {
        let devs = vec![
            crate::config::DeviceConfig { path: "/dev/ttyUSB0".into(), resource: "devices.shoal.dev/serial".into() },
            crate::config::DeviceConfig { path: "/dev/ttyUSB1".into(), resource: "devices.shoal.dev/serial".into() },
            crate::config::DeviceConfig { path: "/dev/can0".into(), resource: "devices.shoal.dev/can".into() },
        ];
        let (cap, alloc) = capacity(4, 8 * 1024 * 1024, &device_counts(&devs));
        assert_eq!(cap["cpu"], "4");
        assert_eq!(alloc["cpu"], "3900m");
        assert_eq!(alloc["memory"], format!("{}Ki", 8 * 1024 * 1024 - 256 * 1024));
        assert_eq!(cap["devices.shoal.dev/serial"], "2");
        assert_eq!(alloc["devices.shoal.dev/can"], "1");
        let (_, small) = capacity(1, 256 * 1024, &BTreeMap::new());
        assert_eq!(small["memory"], format!("{}Ki", 128 * 1024));
    }

    #[test]
    fn heartbeat_is_written_every_five_minutes_and_transitions_at_once() {
        let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let first = merge_conditions(&Value::Null, &node_conditions(&[]), t0);
        let ready = |c: &Value| c.as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned());
        assert_eq!(ready(&first).map(|c| c["lastHeartbeatTime"].clone()), Some(json!("2026-01-01T00:00:00Z")));
        // A minute later nothing changes, so nothing would be written.
        let later = merge_conditions(&first, &node_conditions(&[]), t0 + jiff::SignedDuration::from_secs(60));
        assert_eq!(later, first);
        // After five minutes the heartbeat moves, the transition time does not.
        let t5 = t0 + jiff::SignedDuration::from_secs(301);
        let beat = merge_conditions(&first, &node_conditions(&[]), t5);
        let r = ready(&beat).expect("ready");
        assert_eq!(r["lastHeartbeatTime"], "2026-01-01T00:05:01Z");
        assert_eq!(r["lastTransitionTime"], "2026-01-01T00:00:00Z");
        // Pressure flips MemoryPressure at once; an Unknown set by the lifecycle controller stays.
        let t1 = t0 + jiff::SignedDuration::from_secs(10);
        let p = merge_conditions(&first, &node_conditions(&[eviction::Resource::Memory]), t1);
        let mem = p.as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "MemoryPressure").cloned());
        assert_eq!(mem.as_ref().map(|c| c["status"].clone()), Some(json!("True")));
        assert_eq!(mem.map(|c| c["lastTransitionTime"].clone()), Some(json!("2026-01-01T00:00:10Z")));
        let unknown = json!([{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"}]);
        let kept = merge_conditions(&unknown, &node_conditions(&[]), t1);
        assert_eq!(ready(&kept).map(|c| c["status"].clone()), Some(json!("Unknown")));
    }

    #[test]
    fn pressure_taints_come_and_go_and_leave_others() {
        let other = json!([{"key": "dedicated", "value": "bench", "effect": "NoSchedule"}]);
        let on = pressure_taints(&other, &[eviction::Resource::Disk]);
        assert_eq!(on.as_array().map(Vec::len), Some(2));
        assert_eq!(on[1]["key"], "node.kubernetes.io/disk-pressure");
        assert_eq!(pressure_taints(&on, &[]), other);
    }

    #[test]
    fn images_are_listed_largest_first() {
        let imgs = node_images(vec![(vec!["busybox".into()], 10), (vec!["nginx".into()], 100)]);
        assert_eq!(imgs[0]["names"][0], "nginx");
        assert_eq!(imgs[0]["sizeBytes"], 100);
        assert_eq!(imgs.as_array().map(Vec::len), Some(2));
    }
}
