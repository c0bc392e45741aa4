//! In-memory fakes of the agent's OS boundary ([`super::os`]) and a one-node harness over an
//! in-memory store, for unit tests of the pod lifecycle that need no root: the fake runtime
//! records every call, and a test says how a container behaves when it starts (runs, exits
//! with a code, fails to start with an error) and what its exec probes answer.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use serde_json::{json, Value};
use shoal_kube::Objects;
use shoal_runtime::{CreateOpts, Error as RuntimeError, Sandbox, State, Stats, Status};
use shoal_store::Store;

use super::eviction::FakeNodeStats;
use super::network::{NetError, Routes, Subnet};
use super::os::{ContainerRuntime, HostPaths, PodNetworking};
use super::{Agent, AgentConfig};

/// One call the agent made to the fake runtime (container ids as the agent names them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    CreateSandbox(String),
    RemoveSandbox(String),
    Create(String),
    Start(String),
    Stop(String),
    Delete(String),
    Exec(String, Vec<String>),
}

/// What a container does when it is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OnStart {
    /// Runs until stopped (or [`FakeRuntime::exit`]).
    Run,
    /// Exits at once with this code.
    Exit(i32),
    /// `start` fails with this message (as the shim would report it).
    Fail(String),
}

#[derive(Default)]
struct RuntimeInner {
    containers: BTreeMap<String, State>,
    sandboxes: BTreeSet<String>,
    calls: Vec<Call>,
    /// Per container name.
    on_start: HashMap<String, OnStart>,
    exec: HashMap<String, Result<(), String>>,
    stats: HashMap<String, Stats>,
    /// Seconds the fake clock has advanced: every start and exit is a second after the last
    /// (a crash's record differs from the one before, as on a node where back-off separates
    /// them).
    ticks: u64,
}

impl RuntimeInner {
    /// The fake clock: a hundred seconds ago at first, a second later on each reading.
    fn now(&mut self) -> SystemTime {
        self.ticks += 1;
        SystemTime::now() - Duration::from_secs(100) + Duration::from_secs(self.ticks)
    }
}

/// A container runtime in memory. Behaviours are set per container name (the part of the
/// agent's id after the pod's short uid), so a test need not know the uid.
#[derive(Default)]
pub(crate) struct FakeRuntime {
    root: PathBuf,
    inner: Mutex<RuntimeInner>,
}

/// The container name in an agent's container id (`<short uid>-<name>`).
fn name_of(id: &str) -> &str {
    id.split_once('-').map(|(_, n)| n).unwrap_or(id)
}

impl FakeRuntime {
    fn new(root: &Path) -> FakeRuntime {
        FakeRuntime { root: root.to_path_buf(), inner: Mutex::new(RuntimeInner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RuntimeInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn on_start(&self, container: &str, what: OnStart) {
        self.lock().on_start.insert(container.to_string(), what);
    }

    /// What the container's exec probes and hooks answer from now on (default: success).
    pub(crate) fn on_exec(&self, container: &str, result: Result<(), String>) {
        self.lock().exec.insert(container.to_string(), result);
    }

    pub(crate) fn set_stats(&self, container: &str, stats: Stats) {
        self.lock().stats.insert(container.to_string(), stats);
    }

    /// Makes the running container of that name exit with `code`.
    pub(crate) fn exit(&self, container: &str, code: i32) {
        let mut inner = self.lock();
        let now = inner.now();
        for s in inner.containers.values_mut().filter(|s| name_of(&s.id) == container) {
            if s.status == Status::Running {
                finish(s, code, now);
            }
        }
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// How often the container of that name was started.
    pub(crate) fn starts(&self, container: &str) -> usize {
        self.calls().iter().filter(|c| matches!(c, Call::Start(id) if name_of(id) == container)).count()
    }

    /// The names of the containers started, in order.
    pub(crate) fn started(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Start(id) => Some(name_of(&id).to_string()),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn status(&self, container: &str) -> Option<Status> {
        self.lock().containers.values().find(|s| name_of(&s.id) == container).map(|s| s.status)
    }

    fn sandbox_at(&self, id: &str) -> Sandbox {
        let dir = self.root.join("sandboxes").join(id);
        Sandbox {
            id: id.to_string(),
            netns_path: dir.join("net"),
            ipc_ns_path: dir.join("ipc"),
            uts_ns_path: dir.join("uts"),
            dir,
        }
    }
}

fn finish(s: &mut State, code: i32, now: SystemTime) {
    s.status = Status::Stopped;
    s.pid = 0;
    s.exit_code = Some(code);
    s.finished_at = Some(now);
}

fn not_found(id: &str) -> RuntimeError {
    RuntimeError::NotFound(id.to_string())
}

impl ContainerRuntime for FakeRuntime {
    fn open_sandbox(&self, id: &str) -> Option<Sandbox> {
        self.lock().sandboxes.contains(id).then(|| self.sandbox_at(id))
    }

    fn create_sandbox(&self, id: &str) -> Result<Sandbox, RuntimeError> {
        let mut inner = self.lock();
        inner.calls.push(Call::CreateSandbox(id.to_string()));
        inner.sandboxes.insert(id.to_string());
        Ok(self.sandbox_at(id))
    }

    fn remove_sandbox(&self, sandbox: &Sandbox) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        inner.calls.push(Call::RemoveSandbox(sandbox.id.clone()));
        inner.sandboxes.remove(&sandbox.id);
        Ok(())
    }

    fn create(&self, id: &str, bundle: &Path, opts: &CreateOpts) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        inner.calls.push(Call::Create(id.to_string()));
        if inner.containers.contains_key(id) {
            return Err(RuntimeError::AlreadyExists(id.to_string()));
        }
        let state = State {
            id: id.to_string(),
            status: Status::Created,
            pid: 0,
            bundle: bundle.to_path_buf(),
            exit_code: None,
            oom_killed: false,
            created_at: inner.now(),
            started_at: None,
            finished_at: None,
            cgroup_path: String::new(),
            log_path: opts.log_path.clone(),
        };
        inner.containers.insert(id.to_string(), state);
        Ok(())
    }

    fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        inner.calls.push(Call::Start(id.to_string()));
        let what = inner.on_start.get(name_of(id)).cloned().unwrap_or(OnStart::Run);
        let (started, exited) = (inner.now(), inner.now());
        let s = inner.containers.get_mut(id).ok_or_else(|| not_found(id))?;
        if s.status != Status::Created {
            return Err(RuntimeError::WrongStatus { id: id.into(), status: s.status.to_string(), needed: "created" });
        }
        match what {
            OnStart::Fail(message) => {
                return Err(RuntimeError::StartContainer { id: id.to_string(), source: std::io::Error::other(message) })
            }
            OnStart::Run => {
                s.status = Status::Running;
                s.pid = 4242;
                s.started_at = Some(started);
            }
            OnStart::Exit(code) => {
                s.started_at = Some(started);
                finish(s, code, exited);
            }
        }
        Ok(())
    }

    fn state(&self, id: &str) -> Result<State, RuntimeError> {
        self.lock().containers.get(id).cloned().ok_or_else(|| not_found(id))
    }

    fn stop(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        inner.calls.push(Call::Stop(id.to_string()));
        let now = inner.now();
        let s = inner.containers.get_mut(id).ok_or_else(|| not_found(id))?;
        if s.status == Status::Running {
            // SIGTERM: 128 + 15.
            finish(s, 143, now);
        }
        Ok(())
    }

    fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        inner.calls.push(Call::Delete(id.to_string()));
        match inner.containers.get(id).map(|s| s.status) {
            None => Err(not_found(id)),
            Some(Status::Running) if !force => {
                Err(RuntimeError::WrongStatus { id: id.into(), status: "running".into(), needed: "stopped" })
            }
            Some(_) => {
                inner.containers.remove(id);
                Ok(())
            }
        }
    }

    fn stats(&self, id: &str) -> Result<Stats, RuntimeError> {
        let inner = self.lock();
        match inner.containers.get(id) {
            Some(s) if s.status == Status::Running => Ok(inner.stats.get(name_of(id)).copied().unwrap_or_default()),
            _ => Err(not_found(id)),
        }
    }

    fn exec(&self, id: &str, cmd: &[String], _timeout: Duration) -> Result<(), String> {
        let mut inner = self.lock();
        inner.calls.push(Call::Exec(id.to_string(), cmd.to_vec()));
        match inner.containers.get(id).map(|s| s.status) {
            Some(Status::Running) => inner.exec.get(name_of(id)).cloned().unwrap_or(Ok(())),
            _ => Err(format!("container {id} is not running")),
        }
    }
}

/// A pod network in memory: addresses from the subnet, no links.
pub(crate) struct FakeNetwork {
    subnet: Subnet,
    /// Last octet → owner.
    used: Mutex<BTreeMap<u8, String>>,
    pub(crate) routes: Mutex<Vec<Routes>>,
}

impl FakeNetwork {
    pub(crate) fn new(subnet: Subnet) -> FakeNetwork {
        FakeNetwork { subnet, used: Mutex::new(BTreeMap::new()), routes: Mutex::new(Vec::new()) }
    }

    /// Owners of the addresses in use.
    pub(crate) fn owners(&self) -> Vec<String> {
        self.used.lock().map(|u| u.values().cloned().collect()).unwrap_or_default()
    }
}

impl PodNetworking for FakeNetwork {
    fn subnet(&self) -> Subnet {
        self.subnet
    }

    fn reserve(&self, ip: Ipv4Addr, owner: &str) {
        if let Ok(mut used) = self.used.lock() {
            used.insert(ip.octets()[3], owner.to_string());
        }
    }

    fn attach<'a>(&'a self, owner: &'a str, _netns: &'a Path) -> BoxFuture<'a, Result<Ipv4Addr, NetError>> {
        Box::pin(async move {
            let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
            let n = (2u8..=254).find(|n| !used.contains_key(n)).ok_or(NetError::AddressesExhausted)?;
            used.insert(n, owner.to_string());
            Ok(self.subnet.host(n))
        })
    }

    fn detach<'a>(&'a self, owner: &'a str, _ip: Option<Ipv4Addr>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Ok(mut used) = self.used.lock() {
                used.retain(|_, o| o != owner);
            }
        })
    }

    fn sync_routes<'a>(&'a self, want: &'a Routes) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            if let Ok(mut r) = self.routes.lock() {
                r.push(want.clone());
            }
            true
        })
    }
}

/// The image every test pod runs.
pub(crate) const IMAGE: &str = "shoal.test/app:1";

/// A node agent over the fakes, an in-memory store and a temp dir (run dir, data dir, procfs
/// stand-in); the images store is real, with the fake image OS (no mounts).
pub(crate) struct TestNode {
    pub agent: Arc<Agent>,
    pub runtime: Arc<FakeRuntime>,
    pub net: Arc<FakeNetwork>,
    pub stats: Arc<FakeNodeStats>,
    pub objects: Objects,
    _dir: tempfile::TempDir,
}

impl TestNode {
    pub(crate) async fn new() -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        let paths = HostPaths { run: dir.path().join("run"), proc: dir.path().join("proc") };
        std::fs::create_dir_all(&paths.proc).expect("proc dir");
        std::fs::write(paths.proc.join("meminfo"), "MemTotal:        4000000 kB\nMemAvailable:    3000000 kB\n")
            .expect("meminfo");
        let store = Store::in_memory();
        let objects = Objects::new(store.clone());
        let ns = shoal_kube::resources::lookup("", "namespaces");
        objects.create(&ns, None, json!({"metadata": {"name": "default"}})).await.expect("namespace");
        let cfg = AgentConfig {
            node_name: "n1".into(),
            data_dir: data_dir.clone(),
            address: "10.99.0.1".parse().expect("ip"),
            objects: objects.clone(),
            store,
            pod_cidr: "10.42.0.0/16".into(),
            dns_ip: "10.43.0.10".into(),
            kubernetes_ip: "10.43.0.1".into(),
            paths: paths.clone(),
        };
        let images = shoal_images::ImageStore::open_with(
            &data_dir,
            shoal_images::Platform::host(),
            Arc::new(shoal_images::FakeImageOs::default()),
            shoal_images::UnpackLimits::default(),
        )
        .expect("image store");
        let tarball = dir.path().join("app.tar");
        write_image(&tarball, IMAGE, &shoal_images::Platform::host().architecture);
        images.import(&tarball).await.expect("import the test image");
        let runtime = Arc::new(FakeRuntime::new(&paths.run.join("n1")));
        let net = Arc::new(FakeNetwork::new(Subnet { base: Ipv4Addr::new(10, 42, 0, 0) }));
        let mut agent = Agent::new(cfg, images, runtime.clone(), net.clone());
        let stats = Arc::new(FakeNodeStats::default());
        agent.node_stats = stats.clone();
        TestNode { agent: Arc::new(agent), runtime, net, stats, objects, _dir: dir }
    }

    /// Creates a pod bound to this node from its spec (containers' images default to
    /// [`IMAGE`]).
    pub(crate) async fn create_pod(&self, name: &str, mut spec: Value) -> Value {
        spec["nodeName"] = json!("n1");
        for list in ["initContainers", "containers"] {
            for c in spec[list].as_array_mut().into_iter().flatten() {
                if c["image"].is_null() {
                    c["image"] = json!(IMAGE);
                }
            }
        }
        let pod = json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec});
        self.objects.create(&self.agent.pods, Some("default"), pod).await.expect("create pod")
    }

    pub(crate) async fn pod(&self, name: &str) -> Value {
        self.objects.get(&self.agent.pods, Some("default"), name).await.expect("get pod").expect("the pod exists")
    }

    /// One pass of the agent over the pod, as its loop makes on a tick; returns the pod as
    /// stored after it.
    pub(crate) async fn sync(&self, name: &str) -> Value {
        let pod = self.pod(name).await;
        let uid = pod["metadata"]["uid"].as_str().expect("uid").to_string();
        self.agent.sync_pod(&uid, Some(pod)).await;
        self.pod(name).await
    }

    /// Lets the restart back-off of every container of the pod run out now (the agent's
    /// back-off counts in real time).
    pub(crate) async fn expire_backoff(&self, name: &str) {
        let uid = self.pod(name).await["metadata"]["uid"].as_str().expect("uid").to_string();
        let entry = self.agent.state.lock().await.get(&uid).cloned().expect("pod state");
        for c in entry.lock().await.containers.values_mut() {
            c.retry_at = None;
        }
    }

    /// Makes the container's readiness probe due now (its period counts in real time).
    pub(crate) async fn readiness_due(&self, name: &str, container: &str) {
        let uid = self.pod(name).await["metadata"]["uid"].as_str().expect("uid").to_string();
        let entry = self.agent.state.lock().await.get(&uid).cloned().expect("pod state");
        let mut st = entry.lock().await;
        if let Some(c) = st.containers.get_mut(container) {
            c.probes.readiness = Default::default();
        }
    }

    /// The events of the pod with that reason, waiting a little for the recorder's writes.
    pub(crate) async fn events(&self, pod: &str, reason: &str) -> Vec<Value> {
        let events = shoal_kube::resources::lookup("", "events");
        let mut found = Vec::new();
        for _ in 0..100 {
            let (all, _) = self.objects.list(&events, Some("default")).await.expect("events");
            found = all
                .into_iter()
                .filter(|e| e["involvedObject"]["name"] == pod && e["reason"] == reason)
                .collect::<Vec<_>>();
            if !found.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        found
    }
}

/// Writes an OCI image-layout tarball of a one-layer image named `name` for `arch`.
fn write_image(path: &Path, name: &str, arch: &str) {
    use sha2::Digest;
    let digest = |b: &[u8]| format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)));
    let mut layer = tar::Builder::new(Vec::new());
    add_file(&mut layer, "etc/motd", b"hello\n");
    let layer = layer.into_inner().expect("layer");
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/app"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]},
    }))
    .expect("config");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(&layer), "size": layer.len()}],
    }))
    .expect("manifest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest), "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": name},
        }],
    }))
    .expect("index");
    let mut out = tar::Builder::new(Vec::new());
    add_file(&mut out, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    for blob in [&layer, &config, &manifest] {
        add_file(&mut out, &format!("blobs/sha256/{}", &digest(blob)[7..]), blob);
    }
    add_file(&mut out, "index.json", &index);
    std::fs::write(path, out.into_inner().expect("archive")).expect("write the image tarball");
}

fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).expect("tar path");
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, data).expect("tar entry");
}
