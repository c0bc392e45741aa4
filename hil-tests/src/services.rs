//! Scenarios with workloads on the cluster, driven with the real `kubectl` run on the rig's
//! client host (so they need no address on this machine): a LoadBalancer IP moving away from a
//! node that loses power, and a Deployment's pods coming back after a node dies.
//!
//! They need a netns rig with a client host (`needs_client`), `kubectl` and `curl` on this
//! machine, and the test images in `out/images` (`./scripts/images.sh`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::info;

use crate::error::{Error, Result};
use crate::proc::wait_until;
use crate::rig::Rig;
use crate::scenarios::{Measured, ScenarioOptions};
use crate::shoal::{self, ms, Cluster, CONVERGE_TIMEOUT};

/// The MetalLB address pool the LoadBalancer scenario applies (10.77.0.250 is this machine's
/// address on rigs with host access, 10.77.0.200 the client).
pub const LB_POOL: &str = "10.77.0.240-10.77.0.249";

/// The MetalLB CRDs as a user applies them before any pool (schemas kept open).
const METALLB_CRDS: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: ipaddresspools.metallb.io
spec:
  group: metallb.io
  names:
    kind: IPAddressPool
    listKind: IPAddressPoolList
    plural: ipaddresspools
    singular: ipaddresspool
  scope: Namespaced
  versions:
  - name: v1beta1
    served: true
    storage: true
    subresources:
      status: {}
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: l2advertisements.metallb.io
spec:
  group: metallb.io
  names:
    kind: L2Advertisement
    listKind: L2AdvertisementList
    plural: l2advertisements
    singular: l2advertisement
  scope: Namespaced
  versions:
  - name: v1beta1
    served: true
    storage: true
    subresources:
      status: {}
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

fn metallb_config() -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: metallb-system
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: hil-pool
  namespace: metallb-system
spec:
  addresses:
  - {LB_POOL}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata:
  name: hil-l2
  namespace: metallb-system
spec:
  ipAddressPools:
  - hil-pool
"#
    )
}

pub(crate) const LB_APP: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: lb-web
spec:
  replicas: 3
  selector:
    matchLabels: {app: lb-web}
  template:
    metadata:
      labels: {app: lb-web}
    spec:
      containers:
      - name: node-web
        image: whatwant/node-web:1.0
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: lb-web
spec:
  type: LoadBalancer
  selector: {app: lb-web}
  ports:
  - port: 80
    targetPort: 8080
"#;

const PODS_BACK_REPLICAS: usize = 6;

const PODS_BACK_APP: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: pods-back
spec:
  replicas: 6
  selector:
    matchLabels: {app: pods-back}
  template:
    metadata:
      labels: {app: pods-back}
    spec:
      containers:
      - name: web
        image: nginx
        imagePullPolicy: IfNotPresent
        resources:
          requests: {cpu: 10m, memory: 16Mi}
"#;

/// The client's poller: one HTTP request to the IP every 50 ms, `epoch_ms ok|fail` per line,
/// until the stop file exists.
const POLLER: &str = r#"vip=$1 out=$2 stop=$3
while [ ! -e "$stop" ]; do
  t=$(date +%s%3N)
  if curl -s -o /dev/null --connect-timeout 0.3 -m 0.5 "http://$vip/"; then echo "$t ok"; else echo "$t fail"; fi >>"$out"
  sleep 0.05
done
"#;

pub(crate) fn failed(scenario: &str, reason: impl Into<String>) -> Error {
    Error::ScenarioFailed { scenario: scenario.to_string(), reason: reason.into() }
}

pub(crate) fn set(m: &mut Measured, name: &str, value: f64) {
    m.figures.insert(name.to_string(), value);
}

pub(crate) fn epoch_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A scratch dir on this machine, seen by every host of a netns rig; removed when dropped.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    pub(crate) fn new(scenario: &str) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("shoal-hil-{scenario}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io { op: "create dir", path: dir.clone(), source })?;
        Ok(Scratch(dir))
    }

    pub(crate) fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.0.join(name);
        std::fs::write(&path, text).map_err(|source| Error::Io { op: "write", path: path.clone(), source })?;
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// (name, node, pod IP) of a pod.
type Pod = (String, String, String);

/// `kubectl` run on the client host against one node's API.
pub(crate) struct Kubectl<'a> {
    rig: &'a dyn Rig,
    pub(crate) client: String,
    pub(crate) kubeconfig: PathBuf,
}

impl Kubectl<'_> {
    /// `kubectl ARGS` against `host`'s API server; stdout, or what went wrong.
    pub(crate) fn on(&self, host: &str, args: &[&str]) -> std::result::Result<String, String> {
        self.on_with_stderr(host, args).map(|(stdout, _)| stdout)
    }

    /// `kubectl ARGS` against `host`'s API server; (stdout, stderr: the warnings it printed),
    /// or what went wrong.
    pub(crate) fn on_with_stderr(&self, host: &str, args: &[&str]) -> std::result::Result<(String, String), String> {
        let addr = self.rig.address(host).map_err(|e| e.to_string())?;
        let server = format!("https://{addr}:6443");
        let kc = self.kubeconfig.display().to_string();
        let mut cmd = vec!["kubectl", "--kubeconfig", &kc, "--server", &server, "--request-timeout=10s"];
        cmd.extend_from_slice(args);
        let out = self.rig.exec_timeout(&self.client, &cmd, Duration::from_secs(30)).map_err(|e| e.to_string())?;
        if out.success() {
            Ok((out.stdout, out.stderr))
        } else {
            Err(format!("`kubectl {}` on {host}: {}{}", args.join(" "), out.stderr.trim(), out.stdout.trim()))
        }
    }

    /// Applies MetalLB's CRDs and the rig's pool and L2Advertisement through `host`.
    pub(crate) fn apply_metallb(&self, host: &str, scratch: &Scratch) -> Result<()> {
        self.apply(host, &scratch.write("metallb-crds.yaml", METALLB_CRDS)?, CONVERGE_TIMEOUT)?;
        self.apply(host, &scratch.write("metallb-config.yaml", &metallb_config())?, CONVERGE_TIMEOUT)
    }

    /// Waits until Service `svc` has a LoadBalancer ingress IP; returns it.
    pub(crate) fn ingress_ip(&self, host: &str, svc: &str, timeout: Duration) -> std::result::Result<String, String> {
        let mut vip = String::new();
        wait_until(&format!("an ingress IP for service {svc}"), timeout, Duration::from_millis(500), || {
            vip = self
                .on(host, &["get", "svc", svc, "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}"])
                .unwrap_or_default()
                .trim()
                .to_string();
            !vip.is_empty()
        })
        .map_err(|e| e.to_string())?;
        Ok(vip)
    }

    /// (name, node, pod IP) of the Running pods matching `label` that are not being deleted.
    pub(crate) fn running_pods(&self, host: &str, label: &str) -> Vec<Pod> {
        let fmt = "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP} {.status.phase} {.metadata.deletionTimestamp}{\"\\n\"}{end}";
        self.on(host, &["get", "pods", "-l", label, "-o", fmt])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.len() == 4 && w[3] == "Running").then(|| (w[0].to_string(), w[1].to_string(), w[2].to_string()))
            })
            .collect()
    }

    /// Applies a file through `host`, retrying while the API does not know its kinds yet.
    pub(crate) fn apply(&self, host: &str, file: &Path, timeout: Duration) -> Result<()> {
        let path = file.display().to_string();
        let mut last = String::new();
        wait_until(&format!("kubectl apply -f {path}"), timeout, Duration::from_millis(500), || {
            match self.on(host, &["apply", "-f", &path]) {
                Ok(_) => true,
                Err(e) => {
                    last = e;
                    false
                }
            }
        })
        .map_err(|e| Error::ScenarioFailed { scenario: "kubectl".into(), reason: format!("{e}: {last}") })?;
        Ok(())
    }
}

/// A 3-node cluster with the test images in every node's import dir and a kubeconfig for the
/// client host.
pub(crate) fn cluster_with_kubectl<'a>(
    rig: &'a dyn Rig,
    opts: &ScenarioOptions,
    scenario: &str,
    scratch: &Scratch,
) -> Result<(Vec<String>, Kubectl<'a>)> {
    rig.client().ok_or_else(|| failed(scenario, "needs a rig with a client host"))?;
    let hosts = rig.hosts();
    if hosts.len() < opts.nodes {
        return Err(failed(scenario, format!("needs {} hosts, the rig has {}", opts.nodes, hosts.len())));
    }
    let hosts = hosts[..opts.nodes].to_vec();
    let cluster = Cluster::form(rig, &hosts, None)?;
    cluster.wait_converged(CONVERGE_TIMEOUT)?;
    let k = kubectl_for(rig, scenario, &hosts, scratch)?;
    Ok((hosts, k))
}

/// The test images in the import dir of each of `hosts` and a kubeconfig for the client host
/// against `hosts[0]`.
pub(crate) fn kubectl_for<'a>(
    rig: &'a dyn Rig,
    scenario: &str,
    hosts: &[String],
    scratch: &Scratch,
) -> Result<Kubectl<'a>> {
    let client = rig.client().ok_or_else(|| failed(scenario, "needs a rig with a client host"))?;
    let images = shoal::workspace_root().join("out/images");
    let tars: Vec<PathBuf> = std::fs::read_dir(&images)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "tar")).collect()
        })
        .unwrap_or_default();
    if tars.is_empty() {
        return Err(failed(scenario, format!("no test images in {} (run ./scripts/images.sh)", images.display())));
    }
    for h in hosts {
        let import = rig.data_dir(h)?.join("images/import");
        std::fs::create_dir_all(&import).map_err(|source| Error::Io {
            op: "create dir",
            path: import.clone(),
            source,
        })?;
        for t in &tars {
            if let Some(name) = t.file_name() {
                let to = import.join(name);
                std::fs::copy(t, &to).map_err(|source| Error::Io { op: "copy image", path: to.clone(), source })?;
            }
        }
    }
    let server = format!("https://{}:6443", rig.address(&hosts[0])?);
    let kubeconfig = scratch.write("kubeconfig", &shoal::kubeconfig(rig, &hosts[0], Some(&server))?)?;
    Ok(Kubectl { rig, client, kubeconfig })
}

/// The hosts whose `eth0` holds `ip`.
pub(crate) fn holders(rig: &dyn Rig, hosts: &[String], ip: &str) -> Vec<String> {
    hosts
        .iter()
        .filter(|h| {
            rig.exec_timeout(h, &["ip", "-o", "addr", "show", "to", &format!("{ip}/32")], Duration::from_secs(5))
                .is_ok_and(|o| o.success() && !o.stdout.trim().is_empty())
        })
        .cloned()
        .collect()
}

/// The MAC address of `host`'s `eth0`.
fn mac_of(rig: &dyn Rig, host: &str) -> Option<String> {
    let out = rig.exec_timeout(host, &["ip", "-o", "link", "show", "eth0"], Duration::from_secs(5)).ok()?;
    let words: Vec<&str> = out.stdout.split_whitespace().collect();
    words.iter().position(|w| *w == "link/ether").and_then(|i| words.get(i + 1)).map(|s| s.to_ascii_lowercase())
}

/// The MAC the client's neighbour table holds for `ip`, if any.
fn client_neighbour(rig: &dyn Rig, client: &str, ip: &str) -> Option<String> {
    let out = rig.exec_timeout(client, &["ip", "neigh", "show", ip], Duration::from_secs(5)).ok()?;
    let words: Vec<&str> = out.stdout.split_whitespace().collect();
    words.iter().position(|w| *w == "lladdr").and_then(|i| words.get(i + 1)).map(|s| s.to_ascii_lowercase())
}

pub(crate) fn client_answers(rig: &dyn Rig, client: &str, ip: &str) -> bool {
    rig.exec_timeout(
        client,
        &["curl", "-s", "-o", "/dev/null", "-m", "2", "-w", "%{http_code}", &format!("http://{ip}/")],
        Duration::from_secs(5),
    )
    .is_ok_and(|o| o.stdout.trim() == "200")
}

/// One poll of the client: when it started and whether it was answered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Poll {
    pub(crate) at_ms: u64,
    pub(crate) ok: bool,
}

pub(crate) fn read_polls(path: &Path) -> Vec<Poll> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (t, r) = l.split_once(' ')?;
            Some(Poll { at_ms: t.parse().ok()?, ok: r == "ok" })
        })
        .collect()
}

/// What the client saw after the kill at `kill_ms`.
#[derive(Debug, Default, PartialEq)]
pub struct Outage {
    /// From the kill to the first answer after the first failure; 0 when nothing failed.
    pub back_ms: Option<u64>,
    /// From the kill to the last failure seen (answers are continuous after it).
    pub last_failure_ms: Option<u64>,
    pub failures: usize,
    pub polls: usize,
}

pub(crate) fn outage(polls: &[Poll], kill_ms: u64) -> Outage {
    let after: Vec<&Poll> = polls.iter().filter(|p| p.at_ms >= kill_ms).collect();
    let first_fail = after.iter().position(|p| !p.ok);
    let back_ms = match first_fail {
        None => Some(0),
        Some(i) => after[i..].iter().find(|p| p.ok).map(|p| p.at_ms - kill_ms),
    };
    Outage {
        back_ms,
        last_failure_ms: after.iter().rev().find(|p| !p.ok).map(|p| p.at_ms - kill_ms),
        failures: after.iter().filter(|p| !p.ok).count(),
        polls: after.len(),
    }
}

/// LoadBalancer IP failover: MetalLB's CRDs, an `IPAddressPool` and an `L2Advertisement`
/// applied with kubectl, a Deployment behind a Service of type LoadBalancer; the client host
/// requests the IP every 50 ms; the node announcing it loses power. Measures the time until
/// the client gets answers again (`vip_failover_ms`). Fails when the IP never answers again,
/// ends up on two nodes, or the client's neighbour entry does not follow it to the new node.
pub fn lb_failover(rig: &dyn Rig, opts: &ScenarioOptions) -> Result<Measured> {
    let name = "lb-failover";
    let scratch = Scratch::new(name)?;
    let (hosts, k) = cluster_with_kubectl(rig, opts, name, &scratch)?;
    let mut m = Measured::default();
    let first = hosts[0].clone();
    k.apply_metallb(&first, &scratch)?;
    k.apply(&first, &scratch.write("lb-web.yaml", LB_APP)?, CONVERGE_TIMEOUT)?;
    let t_svc = Instant::now();
    let vip = k
        .ingress_ip(&first, "lb-web", Duration::from_secs(120))
        .map_err(|e| failed(name, format!("{e}: the Service never got a LoadBalancer IP")))?;
    set(&mut m, "ip_assigned_ms", ms(t_svc, Instant::now()));
    info!(vip, "service lb-web has its loadbalancer ip");
    // The image import dir is rescanned every 10 s; then 3 pods start.
    wait_until("3 ready lb-web pods", Duration::from_secs(240), Duration::from_secs(1), || {
        k.on(&first, &["get", "deploy", "lb-web", "-o", "jsonpath={.status.readyReplicas}"])
            .is_ok_and(|s| s.trim() == "3")
    })
    .map_err(|e| failed(name, e.to_string()))?;
    let mut holder = Vec::new();
    wait_until(
        &format!("{vip} held by one node and answering the client"),
        Duration::from_secs(120),
        Duration::from_millis(500),
        || {
            holder = holders(rig, &hosts, &vip);
            holder.len() == 1 && client_answers(rig, &k.client, &vip)
        },
    )
    .map_err(|e| failed(name, format!("{e}: holders {holder:?}")))?;
    set(&mut m, "vip_serving_ms", ms(t_svc, Instant::now()));
    let victim = holder[0].clone();
    let survivors: Vec<String> = hosts.iter().filter(|h| **h != victim).cloned().collect();
    let old_mac = mac_of(rig, &victim).unwrap_or_default();
    if let Ok(events) =
        k.on(&first, &["get", "events", "--field-selector", "involvedObject.name=lb-web", "--no-headers"])
    {
        if events.contains("nodeAssigned") {
            m.notes.push(format!("the Service's events name the announcing node ({victim})"));
        }
    }

    let poller = scratch.write("poll.sh", POLLER)?;
    let polls = scratch.0.join("polls");
    let stop = scratch.0.join("stop");
    let (poller_s, polls_s, stop_s) =
        (poller.display().to_string(), polls.display().to_string(), stop.display().to_string());
    let client = k.client.clone();
    let mut kill_ms = 0;
    let mut moved: Option<(String, f64)> = None;
    std::thread::scope(|s| -> Result<()> {
        let poll = s.spawn(|| {
            rig.exec_timeout(&client, &["bash", &poller_s, &vip, &polls_s, &stop_s], Duration::from_secs(300))
        });
        let stop_poller = || {
            let _ = std::fs::write(&stop, b"");
        };
        std::thread::sleep(Duration::from_secs(2));
        kill_ms = epoch_ms();
        let kill_at = Instant::now();
        if let Err(e) = rig.power_off(&victim) {
            stop_poller();
            return Err(e);
        }
        info!(victim, vip, "announcing node powered off");
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if moved.is_none() {
                if let Some(h) = holders(rig, &survivors, &vip).first() {
                    moved = Some((h.clone(), ms(kill_at, Instant::now())));
                }
            }
            let o = outage(&read_polls(&polls), kill_ms);
            let answered_since = read_polls(&polls).iter().filter(|p| p.at_ms > kill_ms + 3000 && p.ok).count();
            if moved.is_some() && (o.back_ms.is_some_and(|b| b > 0) || o.failures == 0 && answered_since >= 20) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // keep polling a while: requests to endpoints on the dead node fail until they are removed
        std::thread::sleep(Duration::from_secs(15));
        stop_poller();
        let _ = poll.join();
        Ok(())
    })?;
    let o = outage(&read_polls(&polls), kill_ms);
    set(&mut m, "polls_after_kill", o.polls as f64);
    set(&mut m, "failed_polls_after_kill", o.failures as f64);
    if let Some(last) = o.last_failure_ms {
        set(&mut m, "vip_last_failure_ms", last as f64);
    }
    let Some((new_holder, moved_ms)) = moved else {
        return Err(failed(name, format!("{vip} did not move off {victim} within 90 s")));
    };
    set(&mut m, "vip_moved_ms", moved_ms);
    let Some(back) = o.back_ms else {
        return Err(failed(
            name,
            format!("{vip} did not answer the client again within 90 s of powering off {victim}"),
        ));
    };
    set(&mut m, "vip_failover_ms", back as f64);
    m.notes.push(format!("{vip} announced by {victim}, then by {new_holder} after the power-off"));
    let now_held = holders(rig, &survivors, &vip);
    if now_held.len() != 1 {
        return Err(failed(name, format!("{vip} is on {now_held:?} after the failover")));
    }
    let new_mac = mac_of(rig, &new_holder).unwrap_or_default();
    let seen = client_neighbour(rig, &k.client, &vip).unwrap_or_default();
    if seen != new_mac || new_mac == old_mac {
        return Err(failed(
            name,
            format!("the client resolves {vip} to {seen:?}; {new_holder} has {new_mac:?} ({victim} had {old_mac:?})"),
        ));
    }
    m.notes.push(format!("the client's neighbour entry for {vip} moved from {old_mac} to {new_mac}"));
    Ok(m)
}

/// Pods back after a node dies: a Deployment of 6 pods spread over 3 nodes; the node (not the
/// first) running the most of them loses power; measures the time until 6 pods are Running
/// on the survivors as kubectl sees it (`pods_back_s`).
pub fn pods_back(rig: &dyn Rig, opts: &ScenarioOptions) -> Result<Measured> {
    let name = "pods-back";
    let scratch = Scratch::new(name)?;
    let (hosts, k) = cluster_with_kubectl(rig, opts, name, &scratch)?;
    let mut m = Measured::default();
    let first = hosts[0].clone();
    k.apply(&first, &scratch.write("pods-back.yaml", PODS_BACK_APP)?, CONVERGE_TIMEOUT)?;
    // While the pods start: Debian's prometheus scrapes the three nodes.
    crate::observe::prometheus_scrapes(rig, &k, &hosts, &scratch, name, &mut m)?;
    let placement = |via: &str| -> Vec<(String, String, bool)> {
        k.on(
            via,
            &[
                "get",
                "pods",
                "-l",
                "app=pods-back",
                "-o",
                "jsonpath={range .items[*]}{.status.phase} {.spec.nodeName} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
            ],
        )
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            Some((w.first()?.to_string(), w.get(1).unwrap_or(&"").to_string(), w.len() > 2))
        })
        .collect()
    };
    let running_except = |pods: &[(String, String, bool)], dead: &str| {
        pods.iter().filter(|(phase, node, deleting)| phase == "Running" && node != dead && !deleting).count()
    };
    let t0 = Instant::now();
    let mut pods = Vec::new();
    wait_until("6 pods-back pods Running", Duration::from_secs(240), Duration::from_secs(1), || {
        pods = placement(&first);
        running_except(&pods, "") >= PODS_BACK_REPLICAS
    })
    .map_err(|e| failed(name, format!("{e}: {pods:?}")))?;
    set(&mut m, "all_running_s", t0.elapsed().as_secs_f64());
    // The status page in Chromium through the first node (never the victim): signed in, it
    // shows 3 nodes, then a pod after `kubectl run`, then the victim NotReady.
    let page = crate::observe::status_page_live(rig, &k, &first, &scratch, name, &mut m)?;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for (_, node, _) in &pods {
        *per_node.entry(node.clone()).or_default() += 1;
    }
    m.notes.push(format!("pods per node before: {per_node:?}"));
    let victim = per_node
        .iter()
        .filter(|(n, _)| **n != first && hosts.contains(n))
        .max_by_key(|(_, c)| **c)
        .map(|(n, _)| n.clone())
        .ok_or_else(|| failed(name, format!("no pods on a node other than {first}: {per_node:?}")))?;
    let on_victim = per_node.get(&victim).copied().unwrap_or(0);
    set(&mut m, "pods_on_dead_node", on_victim as f64);
    let kill_at = Instant::now();
    rig.power_off(&victim)?;
    info!(victim, on_victim, "node powered off");
    let mut not_ready: Option<f64> = None;
    wait_until(
        &format!("6 pods Running without {victim}"),
        Duration::from_secs(240),
        Duration::from_millis(250),
        || {
            if not_ready.is_none()
                && k.on(&first, &["get", "node", &victim, "--no-headers"]).is_ok_and(|o| o.contains("NotReady"))
            {
                not_ready = Some(kill_at.elapsed().as_secs_f64());
            }
            pods = placement(&first);
            running_except(&pods, &victim) >= PODS_BACK_REPLICAS
        },
    )
    .map_err(|e| failed(name, format!("{e}: {pods:?}")))?;
    set(&mut m, "pods_back_s", kill_at.elapsed().as_secs_f64());
    if let Some(s) = not_ready {
        set(&mut m, "node_not_ready_s", s);
    }
    m.notes.push(format!("powered off {victim} with {on_victim} pods; default unreachable toleration applies"));
    let down = page.wait("notready", Duration::from_secs(120))?;
    if down["node"].as_str() != Some(victim.as_str()) {
        return Err(failed(name, format!("the status page shows {down} NotReady, not {victim}")));
    }
    m.notes.push(format!(
        "the status page showed {victim} NotReady and {} leading (screenshots in target/hil/status-page)",
        down["leader"].as_str().unwrap_or("?")
    ));
    Ok(m)
}

/// The seeds' manifests: `SHOAL_MANIFESTS`, else `/work/shared/manifests`.
pub(crate) fn seed_manifests() -> PathBuf {
    std::env::var_os("SHOAL_MANIFESTS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/work/shared/manifests"))
}

/// The distinct `You've hit <pod>` answers of `n` requests to `url` made from pod `from`.
fn hits_from_pod(
    k: &Kubectl<'_>,
    via: &str,
    from: &str,
    url: &str,
    n: usize,
) -> std::result::Result<Vec<String>, String> {
    let script = format!("for i in $(seq 1 {n}); do timeout 5 wget -q -O - {url}; done");
    let out = k.on(via, &["exec", from, "--", "sh", "-c", &script])?;
    let mut hits: Vec<String> = out.lines().filter(|l| l.starts_with("You've hit ")).map(str::to_string).collect();
    if hits.len() < n {
        return Err(format!("{} of {n} requests to {url} from {from} answered: {out}", hits.len()));
    }
    hits.sort();
    hits.dedup();
    Ok(hits)
}

/// The Services acceptance of the seeds, with real kubectl on a 3-node rig and a client host:
/// rs-node-web behind each Service manifest of `../shared/manifests`. ClusterIP round-robins
/// over pods on every node; ClientIP affinity keeps one pod; the named targetPort works;
/// NodePort 30123 answers on every node address; the selector-less Service routes to the
/// Endpoints written by hand; `nslookup external-service` gives the CNAME; a LoadBalancer
/// Service gets a pool IP the client reaches; externalTrafficPolicy Local keeps the client's
/// source address (Cluster does not); pods resolve `svc-node`, `svc-node.default` and
/// `svc-node.default.svc.cluster.local`.
pub fn services(rig: &dyn Rig, opts: &ScenarioOptions) -> Result<Measured> {
    let name = "services";
    let scratch = Scratch::new(name)?;
    let (hosts, k) = cluster_with_kubectl(rig, opts, name, &scratch)?;
    let dir = seed_manifests();
    if !dir.is_dir() {
        return Err(failed(name, format!("no manifests at {} (set SHOAL_MANIFESTS)", dir.display())));
    }
    let seed = |file: &str| dir.join(file);
    let mut m = Measured::default();
    let first = hosts[0].clone();
    let step = |what: &str, r: std::result::Result<(), String>| r.map_err(|e| failed(name, format!("{what}: {e}")));
    let pods = |label: &str| k.running_pods(&first, label);
    let three_running = |what: &str| -> Result<Vec<Pod>> {
        let mut p = Vec::new();
        wait_until(what, Duration::from_secs(240), Duration::from_secs(1), || {
            p = pods("app=node-web");
            p.len() == 3
        })
        .map_err(|e| failed(name, format!("{e}: {p:?}")))?;
        Ok(p)
    };

    // ClusterIP, round robin across pods and nodes; the DNS names of the Service.
    k.apply(&first, &seed("rs-node-web.yaml"), CONVERGE_TIMEOUT)?;
    k.apply(&first, &seed("svc-none-node-web.yaml"), CONVERGE_TIMEOUT)?;
    let web = three_running("3 rs-node-web pods Running")?;
    let nodes: std::collections::BTreeSet<&String> = web.iter().map(|p| &p.1).collect();
    m.notes.push(format!("rs-node-web pods: {web:?}"));
    let client_pod = web[0].0.clone();
    let mut seen = Vec::new();
    wait_until("svc-node answers round robin from a pod", Duration::from_secs(60), Duration::from_secs(1), || {
        seen = hits_from_pod(&k, &first, &client_pod, "http://svc-node/", 12).unwrap_or_default();
        seen.len() == 3
    })
    .map_err(|e| failed(name, format!("{e}: saw {seen:?}")))?;
    set(&mut m, "clusterip_distinct_pods", seen.len() as f64);
    set(&mut m, "clusterip_nodes", nodes.len() as f64);
    for dns in ["svc-node", "svc-node.default", "svc-node.default.svc.cluster.local"] {
        step(
            &format!("{dns} from a pod"),
            hits_from_pod(&k, &first, &client_pod, &format!("http://{dns}/"), 1).map(drop),
        )?;
    }

    // ClientIP affinity: one pod for one client.
    k.apply(&first, &seed("svc-clientip-node-web.yaml"), CONVERGE_TIMEOUT)?;
    wait_until("svc-node keeps one pod per client", Duration::from_secs(30), Duration::from_secs(1), || {
        seen = hits_from_pod(&k, &first, &client_pod, "http://svc-node/", 8).unwrap_or_default();
        seen.len() == 1
    })
    .map_err(|e| failed(name, format!("{e}: saw {seen:?}")))?;
    set(&mut m, "clientip_distinct_pods", seen.len() as f64);

    // NodePort 30123 on every node address, from the client host.
    k.apply(&first, &seed("svc-nodeport.yaml"), CONVERGE_TIMEOUT)?;
    let mut answered = 0;
    for h in &hosts {
        let url = format!("http://{}:30123/", rig.address(h)?);
        let ok = wait_until(
            &format!("NodePort {url} from the client"),
            Duration::from_secs(30),
            Duration::from_millis(500),
            || {
                rig.exec_timeout(&k.client, &["curl", "-s", "-m", "3", &url], Duration::from_secs(10))
                    .is_ok_and(|o| o.stdout.starts_with("You've hit "))
            },
        );
        ok.map_err(|e| failed(name, e.to_string()))?;
        answered += 1;
    }
    set(&mut m, "nodeport_addresses_answering", answered as f64);

    // The named targetPort: pods whose port is named node-http.
    k.on(&first, &["delete", "rs", "rs-node-web", "--wait=true"]).map_err(|e| failed(name, e))?;
    // Their pods are deleted gracefully: wait until none of them is counted any more.
    wait_until("the first rs-node-web pods going", Duration::from_secs(60), Duration::from_secs(1), || {
        pods("app=node-web").is_empty()
    })
    .map_err(|e| failed(name, e.to_string()))?;
    k.apply(&first, &seed("rs-node-web-ports-name.yaml"), CONVERGE_TIMEOUT)?;
    k.apply(&first, &seed("svc-clientip-node-web-ports-name.yaml"), CONVERGE_TIMEOUT)?;
    let named = three_running("3 rs-node-web pods with the named port Running")?;
    let client_pod = named[0].0.clone();
    wait_until("svc-node through targetPort node-http", Duration::from_secs(60), Duration::from_secs(1), || {
        hits_from_pod(&k, &first, &client_pod, "http://svc-node/", 2).is_ok()
    })
    .map_err(|e| failed(name, e.to_string()))?;

    // A Service without selector routes to the Endpoints written by hand.
    k.apply(&first, &seed("svc-no-selector.yaml"), CONVERGE_TIMEOUT)?;
    wait_until(
        "rules to 11.11.11.11 and 22.22.22.22 on every node",
        Duration::from_secs(30),
        Duration::from_secs(1),
        || {
            hosts.iter().all(|h| {
                rig.exec_timeout(h, &["nft", "list", "table", "ip", "shoal-svc"], Duration::from_secs(5)).is_ok_and(
                    |o| o.stdout.contains("dnat to 11.11.11.11:80") && o.stdout.contains("dnat to 22.22.22.22:80"),
                )
            })
        },
    )
    .map_err(|e| failed(name, e.to_string()))?;

    // ExternalName: the CNAME.
    k.on(&first, &["delete", "svc", "external-service"]).map_err(|e| failed(name, e))?;
    k.apply(&first, &seed("external-name.yaml"), CONVERGE_TIMEOUT)?;
    let mut answer = String::new();
    wait_until("nslookup external-service gives the CNAME", Duration::from_secs(30), Duration::from_secs(1), || {
        // nslookup exits non-zero when google.com itself does not resolve (no internet here).
        answer = k
            .on(&first, &["exec", &client_pod, "--", "sh", "-c", "nslookup external-service 2>&1; true"])
            .unwrap_or_default();
        answer.contains("google.com")
    })
    .map_err(|e| failed(name, format!("{e}: {answer}")))?;

    // LoadBalancer: an IP from the pool, reached by the client host.
    k.apply_metallb(&first, &scratch)?;
    k.apply(&first, &seed("svc-loadbalancer.yaml"), CONVERGE_TIMEOUT)?;
    let vip = k.ingress_ip(&first, "svc-loadbalancer", Duration::from_secs(60)).map_err(|e| failed(name, e))?;
    wait_until(&format!("the client reaches {vip}"), Duration::from_secs(60), Duration::from_millis(500), || {
        client_answers(rig, &k.client, &vip)
    })
    .map_err(|e| failed(name, e.to_string()))?;
    m.notes.push(format!("svc-loadbalancer got {vip}"));

    // Source address as the pod sees it: Cluster masquerades, Local keeps the client's.
    let client_ip = rig.address(&k.client)?.to_string();
    let mut cluster_peer = None;
    wait_until("a pod sees the client's connection", Duration::from_secs(30), Duration::from_secs(1), || {
        cluster_peer = peer_seen_by_pods(rig, &k, &first, &named, &vip).ok().flatten();
        cluster_peer.is_some()
    })
    .map_err(|e| failed(name, e.to_string()))?;
    if cluster_peer.as_deref() == Some(client_ip.as_str()) {
        return Err(failed(name, "externalTrafficPolicy Cluster: the pod saw the client's own address"));
    }
    m.notes.push(format!("with externalTrafficPolicy Cluster the pod saw {cluster_peer:?}"));
    k.apply(&first, &seed("svc-externaltrafficpolicy.yaml"), CONVERGE_TIMEOUT)?;
    let mut local_peer = None;
    wait_until(
        "externalTrafficPolicy Local keeps the client's address",
        Duration::from_secs(60),
        Duration::from_secs(2),
        || {
            local_peer = peer_seen_by_pods(rig, &k, &first, &named, &vip).ok().flatten();
            local_peer.as_deref() == Some(client_ip.as_str())
        },
    )
    .map_err(|e| failed(name, format!("{e}: the pod saw {local_peer:?}, the client is {client_ip}")))?;
    set(&mut m, "etp_local_source_preserved", 1.0);

    // Admission: a validating webhook served by a pod behind a Service (issue 21).
    crate::admission::webhook_in_cluster(&k, &first, &scratch, &mut m)?;
    crate::admission::quota_limits_pod_security(rig, &k, &hosts, &scratch, &mut m)?;
    Ok(m)
}

/// The peer address a node-web pod sees on a connection the client host holds open to
/// `vip:80` (busybox `netstat` in each pod, while `nc` on the client waits).
fn peer_seen_by_pods(rig: &dyn Rig, k: &Kubectl<'_>, via: &str, pods: &[Pod], vip: &str) -> Result<Option<String>> {
    let client = k.client.clone();
    let target = vip.to_string();
    std::thread::scope(|scope| {
        let holder = scope.spawn(|| {
            // bash's /dev/tcp: a connection that sends nothing, so the pod's handler waits.
            let cmd = format!("exec 3<>/dev/tcp/{target}/80; sleep 4");
            let _ = rig.exec_timeout(&client, &["bash", "-c", &cmd], Duration::from_secs(10));
        });
        std::thread::sleep(Duration::from_millis(1500));
        let mut peer = None;
        for (pod, _, _) in pods {
            let out = k.on(via, &["exec", pod, "--", "netstat", "-tn"]).unwrap_or_default();
            for l in out.lines().filter(|l| l.contains("ESTABLISHED")) {
                let w: Vec<&str> = l.split_whitespace().collect();
                if w.len() >= 5 && w[3].ends_with(":8080") {
                    // A server on `::` shows IPv4 peers as `::ffff:a.b.c.d`.
                    peer = w[4].rsplit_once(':').map(|(ip, _)| ip.trim_start_matches("::ffff:").to_string());
                }
            }
        }
        let _ = holder.join();
        Ok(peer)
    })
}

/// One web pod per node, spread by hostname.
const ROUTED_PODS_APP: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: routed-pods
spec:
  replicas: 3
  selector:
    matchLabels: {app: routed-pods}
  template:
    metadata:
      labels: {app: routed-pods}
    spec:
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector:
          matchLabels: {app: routed-pods}
      containers:
      - name: web
        image: nginx
        imagePullPolicy: IfNotPresent
        resources:
          requests: {cpu: 10m, memory: 16Mi}
"#;

/// The first three octets of an IPv4 address: hosts with the same prefix share a /24 segment.
fn segment(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}", o[0], o[1], o[2])
        }
        std::net::IpAddr::V6(v6) => v6.to_string(),
    }
}

/// Pod-to-pod traffic between nodes on two subnets with a router between them (the netns rig's
/// routed topology): one web pod per node; every pod fetches every other pod's page by pod IP.
/// Nodes on one segment route to each other's pod CIDR directly; across the router the traffic
/// goes over VXLAN. Records `pod_pairs_ok`, `pod_pairs_vxlan` (pairs whose nodes sit on
/// different segments) and `pod_to_pod_ready_s` (from the pods Running to every pair answering).
pub fn routed_pods(rig: &dyn Rig, opts: &ScenarioOptions) -> Result<Measured> {
    let name = "routed-pods";
    let scratch = Scratch::new(name)?;
    let (hosts, k) = cluster_with_kubectl(rig, opts, name, &scratch)?;
    let segments: BTreeMap<String, String> =
        hosts.iter().map(|h| Ok((h.clone(), segment(rig.address(h)?)))).collect::<Result<_>>()?;
    if segments.values().collect::<std::collections::BTreeSet<_>>().len() < 2 {
        return Err(failed(name, format!("every node is on one segment ({segments:?}): run it on a routed rig")));
    }
    let mut m = Measured::default();
    let first = hosts[0].clone();
    k.apply(&first, &scratch.write("routed-pods.yaml", ROUTED_PODS_APP)?, CONVERGE_TIMEOUT)?;
    let running = || k.running_pods(&first, "app=routed-pods");
    let mut pods = Vec::new();
    wait_until("a routed-pods pod Running on every node", Duration::from_secs(240), Duration::from_secs(1), || {
        pods = running();
        pods.iter().map(|p| &p.1).collect::<std::collections::BTreeSet<_>>().len() >= hosts.len()
    })
    .map_err(|e| failed(name, format!("{e}: {pods:?}")))?;
    m.notes.push(format!("pods: {pods:?}; segments: {segments:?}"));
    let fetch = |from: &str, ip: &str| {
        // busybox wget's own -T crashes (Debian's 1.35): the timeout applet bounds it instead.
        k.on(&first, &["exec", from, "--", "timeout", "5", "wget", "-q", "-O", "-", &format!("http://{ip}/")])
            .is_ok_and(|page| page.contains("Welcome to nginx"))
    };
    let pairs: Vec<(&Pod, &Pod)> =
        pods.iter().flat_map(|a| pods.iter().filter(move |b| b.1 != a.1).map(move |b| (a, b))).collect();
    let started = Instant::now();
    let mut failing: Vec<String> = Vec::new();
    // Routes follow the node records within a few seconds of the pods starting.
    wait_until("every pod reaches every other node's pod", Duration::from_secs(60), Duration::from_secs(1), || {
        failing = pairs
            .iter()
            .filter(|(a, b)| !fetch(&a.0, &b.2))
            .map(|(a, b)| format!("{} on {} -> {} on {}", a.0, a.1, b.2, b.1))
            .collect();
        failing.is_empty()
    })
    .map_err(|e| failed(name, format!("{e}: {failing:?}")))?;
    set(&mut m, "pod_to_pod_ready_s", started.elapsed().as_secs_f64());
    set(&mut m, "pod_pairs_ok", pairs.len() as f64);
    let across = pairs.iter().filter(|(a, b)| segments.get(&a.1) != segments.get(&b.1)).count();
    set(&mut m, "pod_pairs_vxlan", across as f64);
    // The nodes behind the router really use the VXLAN device.
    let vxlan_routes = hosts
        .iter()
        .filter(|h| {
            rig.exec_timeout(h, &["ip", "route", "show", "dev", "shoal.vxlan"], Duration::from_secs(5))
                .is_ok_and(|o| o.success() && !o.stdout.trim().is_empty())
        })
        .count();
    if across > 0 && vxlan_routes == 0 {
        return Err(failed(name, "pods on different segments answered but no node routes over shoal.vxlan"));
    }
    set(&mut m, "nodes_with_vxlan_routes", vxlan_routes as f64);
    // Pods get the tunnel's MTU, so no packet of theirs is too big for it.
    for (pod, node, _) in &pods {
        let mtu = k.on(&first, &["exec", pod, "--", "cat", "/sys/class/net/eth0/mtu"]).map_err(|e| failed(name, e))?;
        if mtu.trim() != "1450" {
            return Err(failed(name, format!("{pod} on {node} has MTU {} on eth0, not 1450", mtu.trim())));
        }
    }
    // Full-size packets cross the tunnel too: 300 KB from a pod behind the router.
    if let Some((a, b)) = pairs.iter().find(|(a, b)| segments.get(&a.1) != segments.get(&b.1)) {
        k.on(
            &first,
            &["exec", &b.0, "--", "sh", "-c", "head -c 300000 /dev/zero | tr '\\0' a >/usr/share/nginx/html/big"],
        )
        .map_err(|e| failed(name, e))?;
        let url = format!("http://{}/big", b.2);
        let got = k
            .on(&first, &["exec", &a.0, "--", "sh", "-c", &format!("timeout 20 wget -q -O - {url} | wc -c")])
            .map_err(|e| failed(name, e))?;
        if got.trim() != "300000" {
            return Err(failed(name, format!("{} fetched {} bytes of 300000 from {url}", a.0, got.trim())));
        }
    }
    // A node that left while this one's daemon was down: its route and VXLAN entry (planted
    // here by hand) are gone after the restart.
    let last = hosts.last().cloned().unwrap_or_default();
    rig.stop(&last, Duration::from_secs(10))?;
    let plant = |cmd: &[&str]| rig.exec_timeout(&last, cmd, Duration::from_secs(5)).is_ok_and(|o| o.success());
    if !plant(&["ip", "route", "replace", "10.42.250.0/24", "dev", "shoal0"]) {
        return Err(failed(name, "could not plant a stale pod route"));
    }
    let vxlan = plant(&["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "shoal.vxlan", "dst", "10.99.99.99"]);
    rig.restart(&last)?;
    let started = Instant::now();
    let shows = |cmd: &[&str], needle: &str| {
        rig.exec_timeout(&last, cmd, Duration::from_secs(5)).is_ok_and(|o| o.stdout.contains(needle))
    };
    wait_until(
        "the departed node's route and VXLAN entry swept",
        Duration::from_secs(60),
        Duration::from_secs(1),
        || {
            let route = shows(&["ip", "route", "show"], "10.42.250.0/24");
            let entry = vxlan && shows(&["bridge", "fdb", "show", "dev", "shoal.vxlan"], "10.99.99.99");
            !route && !entry
        },
    )
    .map_err(|e| failed(name, e.to_string()))?;
    set(&mut m, "stale_routes_swept_s", started.elapsed().as_secs_f64());
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn polls(v: &[(u64, bool)]) -> Vec<Poll> {
        v.iter().map(|&(at_ms, ok)| Poll { at_ms, ok }).collect()
    }

    #[test]
    fn outage_is_first_answer_after_first_failure() {
        let p = polls(&[
            (900, true),
            (1000, true),
            (1100, false),
            (1700, false),
            (2300, true),
            (2400, false),
            (3000, true),
        ]);
        let o = outage(&p, 1000);
        assert_eq!(o.back_ms, Some(1300));
        assert_eq!(o.last_failure_ms, Some(1400));
        assert_eq!(o.failures, 3);
        assert_eq!(o.polls, 6);
    }

    #[test]
    fn no_failure_is_zero_and_no_answer_is_none() {
        assert_eq!(outage(&polls(&[(1000, true), (1100, true)]), 1000).back_ms, Some(0));
        assert_eq!(outage(&polls(&[(1000, true), (1100, false)]), 1050).back_ms, None);
    }
}
