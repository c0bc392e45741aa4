//! The node agent with real containers (root): downwardAPI and projected volumes, the
//! ServiceAccount token mount, a node-local PersistentVolumeClaim provisioned on first use,
//! a ConfigMap change reaching a running container, and node-pressure eviction driven by a
//! fake memory signal. Each test re-runs itself in a fresh network namespace (the agent
//! makes its bridge and veths there), with an in-memory store, the busybox test image from
//! out/images, and the controllers in the same process.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use std::sync::atomic::{AtomicU32, Ordering};

use shoal::node::eviction::{EvictionConfig, NodeStats, Signals};
use shoal::node::{AgentConfig, NodeAgent};
use shoal_kube::{resources, Objects, Preconditions};
use shoal_store::Store;
use tokio_util::sync::CancellationToken;

const INNER: &str = "SHOAL_NODE_TEST_INNER";
/// What `scripts/images.sh` writes, in this checkout.
const IMAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../out/images");

/// Runs `name` of this binary again inside `unshare --net`; true when we are the inner run.
fn in_own_netns(name: &str) -> bool {
    if std::env::var_os(INNER).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let status = std::process::Command::new("unshare")
        .args(["--net", "--"])
        .arg(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(INNER, "1")
        .status()
        .expect("unshare (util-linux) must be installed; the test needs root");
    cleanup(name);
    assert!(status.success(), "inner run of {name} failed");
    false
}

/// The node name each test uses.
fn node_name(test: &str) -> String {
    format!("nodetest-{}", &test[..test.len().min(12)]).trim_end_matches('_').replace('_', "-")
}

/// Whatever a failed inner run left: processes in the node's cgroups, the cgroups, and the
/// runtime state under /run/shoal.
fn cleanup(test: &str) {
    let name = node_name(test);
    let mut dirs = Vec::new();
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        let root = hierarchy.path().join(format!("shoal-{name}"));
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            if !d.is_dir() {
                continue;
            }
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                }
            }
            dirs.push(d);
        }
    }
    for d in &dirs {
        for pid in std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default().lines() {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    // Mounts left under the node's state: sandbox namespaces and container root filesystems
    // (whose data dir, named in the overlay options, goes too).
    let run = format!("/run/shoal/{name}/");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut points: Vec<(String, Option<PathBuf>)> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let point = f.get(1).filter(|p| p.starts_with(&run))?.to_string();
            let data = f.get(3).and_then(|o| o.split(',').find_map(|x| x.strip_prefix("upperdir=")));
            Some((point, data.and_then(|d| d.split("/images/").next()).map(PathBuf::from)))
        })
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
    for (point, data) in points {
        let _ = nix::mount::umount2(point.as_str(), nix::mount::MntFlags::MNT_DETACH);
        if let Some(d) = data.filter(|d| d.starts_with(std::env::temp_dir())) {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
    let _ = std::fs::remove_dir_all(PathBuf::from("/run/shoal").join(&name));
}

fn res(plural: &str) -> shoal_kube::Resource {
    resources::lookup("", plural)
}

struct Node {
    objects: Objects,
    data: tempfile::TempDir,
    name: String,
    stop: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
    secrets: shoal_gossip::pki::ClusterSecrets,
}

/// The node's `[network]` section: service_cidr 10.96.0.0/16 (not the default 10.43.0.0/16).
fn network() -> shoal::config::NetworkConfig {
    shoal::config::NetworkConfig { service_cidr: "10.96.0.0/16".into(), ..Default::default() }
}

async fn start_node(name: &str, stats: Option<Arc<dyn NodeStats>>) -> Node {
    let lo = std::process::Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip");
    assert!(lo.success());
    let data = tempfile::tempdir().expect("tempdir");
    let secrets = shoal_gossip::pki::ClusterSecrets::generate("test").expect("cluster secrets");
    std::fs::write(data.path().join("secrets.json"), serde_json::to_vec(&secrets).expect("json")).expect("secrets");
    let import = data.path().join("images/import");
    std::fs::create_dir_all(&import).expect("import dir");
    std::fs::copy(Path::new(IMAGES).join("busybox_1.25.tar"), import.join("busybox_1.25.tar"))
        .expect("the busybox test image (out/images/busybox_1.25.tar)");
    let store = Store::in_memory();
    let objects = Objects::new(store.clone());
    for ns in ["default", "kube-system"] {
        objects.create(&res("namespaces"), None, json!({"metadata": {"name": ns}})).await.expect("namespace");
    }
    objects
        .create(&res("serviceaccounts"), Some("default"), json!({"metadata": {"name": "default"}}))
        .await
        .expect("service account");
    let cfg = AgentConfig {
        node_name: name.to_string(),
        data_dir: data.path().to_path_buf(),
        address: "10.99.0.1".parse().expect("ip"),
        objects: objects.clone(),
        store,
        pod_cidr: "10.98.0.0/16".into(),
        // A non-default `[network] service_cidr`, turned into addresses as the daemon does.
        dns_ip: network().cluster_dns_ip(),
        kubernetes_ip: network().service_range().kubernetes_ip().to_string(),
        paths: Default::default(),
    };
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let shim = shoal_runtime::ShimCommand { program: env!("CARGO_BIN_EXE_shoal").into(), args: vec!["__shim".into()] };
    let mut agent = NodeAgent::start_with_shim(cfg, shim).await.expect("agent start");
    let eviction = EvictionConfig { interval: Duration::from_millis(300), ..EvictionConfig::default() };
    agent = agent.with_eviction(eviction, stats);
    tasks.spawn(agent.run(stop.clone()));
    let (_health_tx, health) = tokio::sync::watch::channel(BTreeMap::new());
    let manager = shoal::controllers::ControllerManager::new(shoal::controllers::ControllerConfig {
        service_cidr: network().service_range(),
        ..Default::default()
    });
    let (o, s) = (objects.clone(), stop.clone());
    tasks.spawn(async move {
        let _keep = _health_tx;
        manager.run(o, health, s).await
    });
    Node { objects, data, name: name.to_string(), stop, tasks, secrets }
}

impl Node {
    async fn pod(&self, name: &str) -> Option<Value> {
        self.objects.get(&res("pods"), Some("default"), name).await.expect("get pod")
    }

    async fn wait_pod(&self, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..1200 {
            if let Some(p) = self.pod(name).await.filter(|p| ok(p)) {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("pod {name} never became {what}: {:#}", self.pod(name).await.unwrap_or_default());
    }

    async fn wait_pod_free<F, Fut>(&self, f: F) -> Value
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Option<Value>>,
    {
        for _ in 0..600 {
            if let Some(v) = f().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the node never reported MemoryPressure");
    }

    fn log(&self, pod: &Value, container: &str) -> String {
        let m = &pod["metadata"];
        let dir = self.data.path().join("pods").join(format!(
            "default_{}_{}",
            m["name"].as_str().unwrap_or_default(),
            m["uid"].as_str().unwrap_or_default()
        ));
        std::fs::read_to_string(dir.join(container).join("0.log")).unwrap_or_default()
    }

    async fn wait_log(&self, name: &str, container: &str, needle: &str) -> String {
        for _ in 0..600 {
            let pod = self.pod(name).await.unwrap_or_default();
            let log = self.log(&pod, container);
            if log.contains(needle) {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let pod = self.pod(name).await.unwrap_or_default();
        panic!("log of {name} never showed {needle:?}:\n{}", self.log(&pod, container));
    }

    /// Deletes every pod, waits for the agent to remove their containers, and stops.
    async fn finish(mut self) {
        let (pods, _) = self.objects.list(&res("pods"), None).await.expect("list");
        for p in pods {
            let name = p["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let _ = self.objects.delete(&res("pods"), Some("default"), &name, Preconditions::default()).await;
        }
        let runtime_root = PathBuf::from("/run/shoal").join(&self.name).join("runtime");
        for _ in 0..300 {
            let left = std::fs::read_dir(&runtime_root).map(|d| d.count()).unwrap_or(0);
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        let _ = std::fs::remove_dir_all(PathBuf::from("/run/shoal").join(&self.name));
        for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/pids"] {
            let _ = std::fs::remove_dir(Path::new(root).join(format!("shoal-{}", self.name)));
        }
    }
}

fn busybox(name: &str, script: &str) -> Value {
    json!({"name": name, "image": "busybox:1.25", "imagePullPolicy": "Never", "command": ["sh", "-c", script]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_token_and_local_claims_reach_the_container() {
    if !in_own_netns("volumes_token_and_local_claims_reach_the_container") {
        return;
    }
    // Plenty of memory and disk, whatever this machine has.
    let stats = Arc::new(Scripted { low_readings: AtomicU32::new(0), fine: FINE, low: FINE });
    let node =
        start_node(&node_name("volumes_token_and_local_claims_reach_the_container"), Some(stats as Arc<dyn NodeStats>))
            .await;
    let o = &node.objects;
    o.create(&res("configmaps"), Some("default"), json!({"metadata": {"name": "cfg"}, "data": {"greeting": "hello"}}))
        .await
        .expect("configmap");
    o.create(&res("secrets"), Some("default"), json!({"metadata": {"name": "pw"}, "data": {"pass": "aHVudGVyMg=="}}))
        .await
        .expect("secret");
    o.create(
        &res("persistentvolumeclaims"),
        Some("default"),
        json!({"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
    )
    .await
    .expect("pvc");
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let script = format!(
        "cat /info/labels; echo; echo ns=$(cat {sa}/namespace); echo token=$(cat {sa}/token); \
         echo pass=$(cat /all/pass); echo mem=$(cat /all/mem); echo ca=$(head -1 {sa}/ca.crt); \
         echo kept > /data/file; \
         while true; do echo greeting=$(cat /all/conf/greeting); sleep 1; done"
    );
    let mut c = busybox("app", &script);
    c["resources"] = json!({"limits": {"memory": "64Mi"}});
    c["volumeMounts"] = json!([
        {"name": "info", "mountPath": "/info"},
        {"name": "all", "mountPath": "/all"},
        {"name": "data", "mountPath": "/data"},
    ]);
    let pod = json!({
        "metadata": {"name": "vols", "labels": {"app": "vols", "tier": "test"}},
        "spec": {"nodeName": node.name, "restartPolicy": "Always", "containers": [c], "volumes": [
            {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
            {"name": "all", "projected": {"sources": [
                {"configMap": {"name": "cfg", "items": [{"key": "greeting", "path": "conf/greeting"}]}},
                {"secret": {"name": "pw"}},
                {"downwardAPI": {"items": [{"path": "mem", "resourceFieldRef": {"containerName": "app", "resource": "limits.memory", "divisor": "1Mi"}}]}},
            ]}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
        ]},
    });
    o.create(&res("pods"), Some("default"), pod).await.expect("pod");
    let running = node.wait_pod("vols", "Running", |p| p["status"]["phase"] == "Running").await;
    let log = node.wait_log("vols", "app", "greeting=hello").await;
    assert!(log.contains(r#"app="vols""#) && log.contains(r#"tier="test""#), "labels file: {log}");
    assert!(log.contains("ns=default"), "{log}");
    assert!(log.contains("pass=hunter2"), "{log}");
    assert!(log.contains("mem=64"), "{log}");
    assert!(log.contains("ca=-----BEGIN CERTIFICATE-----"), "{log}");
    // The token is a JWT of this cluster, bound to this pod.
    let token = log.split("token=").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_default();
    let now = jiff::Timestamp::now().as_second();
    let keys = shoal::auth::sa_token::TokenKeys::from_secrets(&node.secrets).expect("token keys");
    let user = shoal::auth::token::verify(token, &keys, now).expect("a valid token");
    assert_eq!(user.username, "system:serviceaccount:default:default");
    assert_eq!(user.pod.map(|p| p.1), running["metadata"]["uid"].as_str().map(String::from));
    // The claim was bound to a volume provisioned on this node, in its data dir.
    let pvc = o.get(&res("persistentvolumeclaims"), Some("default"), "data").await.expect("get").expect("pvc");
    assert_eq!(pvc["status"]["phase"], "Bound");
    let pv_name = pvc["spec"]["volumeName"].as_str().expect("volumeName").to_string();
    let file = node.data.path().join("storage").join(&pv_name).join("file");
    for _ in 0..100 {
        if file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(std::fs::read_to_string(&file).expect("file written through the claim"), "kept\n");
    // A ConfigMap change reaches the running container without a restart.
    o.modify(&res("configmaps"), Some("default"), "cfg", shoal_kube::UpdateMode::All, |cm| {
        cm["data"]["greeting"] = json!("bonjour");
        Ok(true)
    })
    .await
    .expect("update configmap");
    node.wait_log("vols", "app", "greeting=bonjour").await;
    let pod = node.pod("vols").await.expect("pod");
    assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 0);
    node.finish().await;
}

const GIB: u64 = 1 << 30;
const FINE: Signals = Signals {
    memory_available: Some(4 * GIB),
    memory_capacity: Some(8 * GIB),
    nodefs_available: Some(50 * GIB),
    nodefs_capacity: Some(100 * GIB),
    pid_available: Some(30_000),
    pid_capacity: Some(32_768),
};

/// A memory signal that reads low for a given number of readings, then fine again: each low
/// reading lets the agent evict one pod.
struct Scripted {
    low_readings: AtomicU32,
    fine: Signals,
    low: Signals,
}

impl NodeStats for Scripted {
    fn signals(&self) -> Signals {
        match self.low_readings.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) {
            Ok(_) => self.low,
            Err(_) => self.fine,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_pressure_evicts_best_effort_pods_first() {
    if !in_own_netns("memory_pressure_evicts_best_effort_pods_first") {
        return;
    }
    let fine = FINE;
    let stats = Arc::new(Scripted {
        low_readings: AtomicU32::new(0),
        fine,
        low: Signals { memory_available: Some(50 << 20), ..fine },
    });
    let node = start_node(
        &node_name("memory_pressure_evicts_best_effort_pods_first"),
        Some(stats.clone() as Arc<dyn NodeStats>),
    )
    .await;
    let o = &node.objects;
    let mut guaranteed = busybox("app", "sleep 3600");
    guaranteed["resources"] = json!({"limits": {"memory": "32Mi", "cpu": "100m"}});
    for (name, c) in [("guaranteed", guaranteed), ("besteffort", busybox("app", "sleep 3600"))] {
        let pod = json!({"metadata": {"name": name}, "spec": {"nodeName": node.name, "containers": [c]}});
        o.create(&res("pods"), Some("default"), pod).await.expect("pod");
    }
    for name in ["guaranteed", "besteffort"] {
        node.wait_pod(name, "Running", |p| p["status"]["phase"] == "Running").await;
    }
    // One low reading: one pod goes, and it is the BestEffort one.
    stats.low_readings.store(1, Ordering::SeqCst);
    let evicted = node.wait_pod("besteffort", "Failed", |p| p["status"]["phase"] == "Failed").await;
    assert_eq!(evicted["status"]["reason"], "Evicted");
    assert!(evicted["status"]["message"].as_str().is_some_and(|m| m.contains("low on resource: memory")));
    let kept = node.pod("guaranteed").await.expect("pod");
    assert_eq!(kept["status"]["phase"], "Running");
    let nodeobj = node
        .wait_pod_free(|| async {
            let n = o.get(&res("nodes"), None, &node.name).await.ok().flatten()?;
            let cond = n["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "MemoryPressure")?.clone();
            (cond["status"] == "True").then_some(n)
        })
        .await;
    assert!(nodeobj["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t["key"] == "node.kubernetes.io/memory-pressure"));
    node.finish().await;
}

/// A pod plants `ln -s / vol/escape` in its emptyDir (an init container), then a container
/// mounts `subPath: escape`: it must not start with the host's `/`, but wait with the
/// kubelet's CreateContainerConfigError and the cause; a subPath inside the volume works. A
/// container under runAsNonRoot whose image runs as root is refused the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subpath_symlink_out_of_the_volume_is_refused() {
    if !in_own_netns("subpath_symlink_out_of_the_volume_is_refused") {
        return;
    }
    let stats = Arc::new(Scripted { low_readings: AtomicU32::new(0), fine: FINE, low: FINE });
    let node =
        start_node(&node_name("subpath_symlink_out_of_the_volume_is_refused"), Some(stats as Arc<dyn NodeStats>)).await;
    let mut plant = busybox("plant", "ln -s / /vol/escape && mkdir -p /vol/inside && echo mine > /vol/inside/f");
    plant["volumeMounts"] = json!([{"name": "vol", "mountPath": "/vol"}]);
    let mut ok = busybox("ok", "cat /sub/f; sleep 3600");
    ok["volumeMounts"] = json!([{"name": "vol", "mountPath": "/sub", "subPath": "inside"}]);
    let mut victim = busybox("victim", "ls /host; cat /host/etc/hostname; sleep 3600");
    victim["volumeMounts"] = json!([{"name": "vol", "mountPath": "/host", "subPath": "escape"}]);
    // And runAsNonRoot with an image that runs as root: refused, as the kubelet does.
    let mut rootless = busybox("rootless", "id; sleep 3600");
    rootless["securityContext"] = json!({"runAsNonRoot": true});
    let pod = json!({
        "metadata": {"name": "subpath"},
        "spec": {"nodeName": node.name, "restartPolicy": "Always", "initContainers": [plant],
                 "containers": [ok, victim, rootless], "volumes": [{"name": "vol", "emptyDir": {}}]},
    });
    node.objects.create(&res("pods"), Some("default"), pod).await.expect("pod");
    let pod = node
        .wait_pod("subpath", "refused", |p| {
            p["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["name"] == "victim" && c["state"]["waiting"]["reason"] == "CreateContainerConfigError")
        })
        .await;
    let victim = pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "victim")
        .cloned()
        .unwrap_or_default();
    let message = victim["state"]["waiting"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("subPath") && message.contains("out of the volume"), "{message}");
    let pod = node
        .wait_pod("subpath", "refused as root", |p| {
            p["status"]["containerStatuses"].as_array().into_iter().flatten().any(|c| {
                c["name"] == "rootless"
                    && c["state"]["waiting"]["message"] == "container has runAsNonRoot and image will run as root"
                    && c["state"]["waiting"]["reason"] == "CreateContainerConfigError"
            })
        })
        .await;
    assert!(node.log(&pod, "rootless").is_empty(), "the root container ran: {}", node.log(&pod, "rootless"));
    node.wait_log("subpath", "ok", "mine").await;
    assert!(node.log(&pod, "victim").is_empty(), "the victim ran: {}", node.log(&pod, "victim"));
    node.finish().await;
}

/// The last value of a `Key:\t...` line of /proc/self/status in a container log (CRI lines).
fn status_field<'a>(log: &'a str, key: &str) -> &'a str {
    log.lines().rev().find_map(|l| l.split_once(&format!(" {key}")).map(|(_, v)| v.trim())).unwrap_or("")
}

fn cap_mask(log: &str, key: &str) -> u64 {
    u64::from_str_radix(status_field(log, key), 16).unwrap_or_else(|_| panic!("no {key} in {log:?}"))
}

/// securityContext in real containers: capabilities add/drop, allowPrivilegeEscalation
/// (no_new_privs), readOnlyRootFilesystem, privileged (the node's capabilities),
/// runAsUser/runAsGroup from the pod,
/// supplementalGroups and fsGroup, a safe sysctl set, hostIPC sharing the host's IPC
/// namespace; an unsafe sysctl is refused with the kubelet's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_context_is_honoured_or_refused() {
    if !in_own_netns("security_context_is_honoured_or_refused") {
        return;
    }
    let stats = Arc::new(Scripted { low_readings: AtomicU32::new(0), fine: FINE, low: FINE });
    let node =
        start_node(&node_name("security_context_is_honoured_or_refused"), Some(stats as Arc<dyn NodeStats>)).await;
    let report = "grep -E '^(CapBnd|CapEff|NoNewPrivs|Uid|Gid|Groups)' /proc/self/status; \
                  echo sysctl=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start); \
                  echo ipc=$(readlink /proc/self/ns/ipc); \
                  touch /written 2>/dev/null && echo rootfs=rw || echo rootfs=ro; echo done; sleep 3600";
    let mut narrow = busybox("narrow", report);
    narrow["securityContext"] = json!({
        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
    });
    let mut wide = busybox("wide", report);
    wide["securityContext"] = json!({"privileged": true, "runAsUser": 0, "runAsGroup": 0});
    let pod = json!({
        "metadata": {"name": "secctx"},
        "spec": {"nodeName": node.name, "restartPolicy": "Always", "hostIPC": true,
                 "securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "supplementalGroups": [5],
                                     "fsGroup": 2000,
                                     "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "80"}]},
                 "containers": [narrow, wide]},
    });
    node.objects.create(&res("pods"), Some("default"), pod).await.expect("pod");
    let refused = json!({
        "metadata": {"name": "unsafe-sysctl"},
        "spec": {"nodeName": node.name, "restartPolicy": "Always",
                 "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1024"}]},
                 "containers": [busybox("c", "echo ran; sleep 3600")]},
    });
    node.objects.create(&res("pods"), Some("default"), refused).await.expect("pod");

    let log = node.wait_log("secctx", "narrow", "done").await;
    assert_eq!(cap_mask(&log, "CapBnd:"), 1 << 10, "only NET_BIND_SERVICE: {log}");
    assert_eq!(status_field(&log, "NoNewPrivs:"), "1", "{log}");
    assert!(status_field(&log, "Uid:").starts_with("1000"), "runAsUser of the pod: {log}");
    assert!(status_field(&log, "Gid:").starts_with("3000"), "runAsGroup of the pod: {log}");
    let groups: Vec<&str> = status_field(&log, "Groups:").split_whitespace().collect();
    assert!(groups.contains(&"5") && groups.contains(&"2000"), "supplementalGroups and fsGroup: {log}");
    assert!(log.contains("rootfs=ro"), "readOnlyRootFilesystem: {log}");
    assert!(log.contains("sysctl=80"), "the safe sysctl: {log}");
    let host_ipc = std::fs::read_link("/proc/self/ns/ipc").expect("ipc ns").display().to_string();
    assert!(log.contains(&format!("ipc={host_ipc}")), "hostIPC shares {host_ipc}: {log}");

    let log = node.wait_log("secctx", "wide", "done").await;
    assert_ne!(cap_mask(&log, "CapEff:") & (1 << 21), 0, "privileged has CAP_SYS_ADMIN: {log}");
    assert_eq!(status_field(&log, "NoNewPrivs:"), "0", "{log}");
    assert!(status_field(&log, "Uid:").starts_with('0'), "{log}");
    assert!(log.contains("rootfs=rw"), "{log}");

    let pod = node
        .wait_pod("unsafe-sysctl", "refused", |p| {
            p["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["state"]["waiting"]["reason"] == "CreateContainerConfigError")
        })
        .await;
    let message = pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("forbidden sysctl: \"kernel.msgmax\" not allowlisted"), "{message}");
    assert!(node.log(&pod, "c").is_empty(), "the refused pod ran: {}", node.log(&pod, "c"));
    node.finish().await;
}

/// What `cat` shows of /etc/resolv.conf, /etc/hosts and the hostname inside a real busybox
/// pod, for each dnsPolicy, with dnsConfig, hostAliases and hostname/subdomain: what the kubelet
/// writes. Then an ephemeral container added to one of them sees its target's processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_dns_files_are_the_kubelets() {
    if !in_own_netns("pod_dns_files_are_the_kubelets") {
        return;
    }
    let stats = Arc::new(Scripted { low_readings: AtomicU32::new(0), fine: FINE, low: FINE });
    let node = start_node(&node_name("pod_dns_files_are_the_kubelets"), Some(stats as Arc<dyn NodeStats>)).await;
    let script = "echo k8s=$KUBERNETES_SERVICE_HOST; echo ---; cat /etc/resolv.conf; echo ---; cat /etc/hosts; echo ---; echo host=$(hostname); sleep 3600";
    let pod = |name: &str, spec: Value| {
        let mut p = json!({"metadata": {"name": name}, "spec": spec});
        p["spec"]["nodeName"] = json!(node.name);
        p["spec"]["containers"] = json!([busybox("app", script)]);
        p
    };
    let o = &node.objects;
    let pods = [
        pod(
            "cluster-first",
            json!({"hostname": "web-0", "subdomain": "web",
                "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}]}),
        ),
        pod("default-policy", json!({"dnsPolicy": "Default"})),
        pod(
            "none-policy",
            json!({"dnsPolicy": "None", "dnsConfig": {
                "nameservers": ["192.0.2.1"],
                "searches": ["ns1.svc.cluster-domain.example", "my.dns.search.suffix"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}],
            }}),
        ),
    ];
    for p in pods {
        o.create(&res("pods"), Some("default"), p).await.expect("pod");
    }
    let shown = |log: &str| -> (String, String, String) {
        let log = plain(log);
        let parts: Vec<&str> = log.split("---\n").collect();
        assert_eq!(parts.len(), 4, "{log}");
        // The API's address from the configured Service range, in every pod.
        assert_eq!(parts[0].trim(), "k8s=10.96.0.1", "{log}");
        (parts[1].to_string(), parts[2].to_string(), parts[3].trim().to_string())
    };
    // ClusterFirst (the default): the cluster DNS, the namespace's search path, ndots:5; the
    // hosts file names the pod by hostname and its FQDN under the subdomain, then the aliases.
    // The `kubernetes` Service takes the first address of the configured range.
    let mut svc_ip = String::new();
    for _ in 0..100 {
        if let Ok(Some(svc)) = o.get(&res("services"), Some("default"), "kubernetes").await {
            svc_ip = svc["spec"]["clusterIP"].as_str().unwrap_or_default().to_string();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(svc_ip, "10.96.0.1");
    let log = node.wait_log("cluster-first", "app", "host=").await;
    let ip = node.wait_pod("cluster-first", "Running", |p| p["status"]["podIP"].is_string()).await["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (resolv, hosts, host) = shown(&log);
    assert!(resolv.starts_with("search default.svc.cluster.local svc.cluster.local cluster.local"), "{resolv}");
    assert!(resolv.contains("\nnameserver 10.96.0.10\noptions ndots:5\n"), "{resolv}");
    assert_eq!(resolv.matches("nameserver").count(), 1, "{resolv}");
    assert!(hosts.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"), "{hosts}");
    assert!(hosts.contains(&format!("\n{ip}\tweb-0.web.default.svc.cluster.local\tweb-0\n")), "{hosts}");
    assert!(hosts.ends_with("\n# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar.local\n"), "{hosts}");
    assert_eq!(host, "host=web-0");
    // An ephemeral container (what `kubectl debug --target=app` adds) joins the running pod:
    // the target's processes, the pod's hostname and files; it runs once and is reported.
    let probe = "ps; echo host=$(hostname); head -1 /etc/resolv.conf; echo dbg-done";
    o.modify(&res("pods"), Some("default"), "cluster-first", shoal_kube::UpdateMode::All, |p| {
        let mut c = busybox("dbg", probe);
        c["targetContainerName"] = json!("app");
        p["spec"]["ephemeralContainers"] = json!([c]);
        Ok(true)
    })
    .await
    .expect("add an ephemeral container");
    let log = plain(&node.wait_log("cluster-first", "dbg", "dbg-done").await);
    // PID 1 is the target's (its shell exec'd the sleep), not the debug container's shell.
    let pid1 = log.lines().find(|l| l.split_whitespace().next() == Some("1")).unwrap_or_default();
    assert!(pid1.ends_with("sleep 3600"), "the target's processes: {log}");
    assert!(log.contains("host=web-0\nsearch default.svc.cluster.local"), "{log}");
    let done = node
        .wait_pod("cluster-first", "showing the ephemeral container's end", |p| {
            p["status"]["ephemeralContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
        })
        .await;
    let st = &done["status"]["ephemeralContainerStatuses"][0];
    assert_eq!(
        (st["name"].as_str(), st["ready"].as_bool(), st["restartCount"].as_u64()),
        (Some("dbg"), Some(false), Some(0))
    );
    assert_eq!(done["status"]["phase"], "Running");
    // Default: the node's resolver, nothing of the cluster.
    let log = node.wait_log("default-policy", "app", "host=").await;
    let (resolv, hosts, host) = shown(&log);
    assert!(!resolv.contains("cluster.local") && !resolv.contains("10.96.0.10"), "{resolv}");
    let node_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let servers = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with("nameserver"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    if !servers(&node_resolv).iter().any(|s| s.starts_with("nameserver 127.")) {
        let want: Vec<String> = servers(&node_resolv).into_iter().take(3).collect();
        assert_eq!(servers(&resolv), want, "pod: {resolv}\nnode: {node_resolv}");
    }
    assert!(hosts.contains("\tdefault-policy\n") && !hosts.contains("HostAliases"), "{hosts}");
    assert_eq!(host, "host=default-policy");
    // None: only dnsConfig, in the order given.
    let log = node.wait_log("none-policy", "app", "host=").await;
    let (resolv, _, _) = shown(&log);
    assert_eq!(
        resolv,
        "search ns1.svc.cluster-domain.example my.dns.search.suffix\nnameserver 192.0.2.1\noptions ndots:2 edns0\n"
    );
    node.finish().await;
}

/// What the container wrote, without the log's `TIME STREAM TAG ` prefixes (`P` lines are
/// parts of one line).
fn plain(log: &str) -> String {
    let mut out = String::new();
    for line in log.lines() {
        let mut f = line.splitn(4, ' ');
        let (_, _, tag, text) = (f.next(), f.next(), f.next(), f.next().unwrap_or_default());
        out.push_str(text);
        if tag != Some("P") {
            out.push('\n');
        }
    }
    out
}
