//! The seeds' workloads against an in-memory store: the controllers and the scheduler run as on
//! the leader, and a stand-in for the node agent moves bound pods to Running/Ready (or makes Job
//! pods succeed or fail), as the real one would.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_kube::{Objects, Preconditions, UpdateMode};
use shoal_store::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::util::{controlled_by, name_of, pod_is_active, pod_phase};
use super::{ControllerConfig, ControllerManager, PodMetrics};
pub(crate) use crate::reconcile::testing::{add_node, eventually, res};
use crate::scheduler::Scheduler;

pub(crate) const NGINX: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx
  labels:
    app: nginx
spec:
  replicas: 2
  selector:
    matchLabels:
      app: nginx
  template:
    metadata:
      labels:
        app: nginx
    spec:
      containers:
      - name: nginx
        image: nginx
        ports:
        - containerPort: 80
        resources:
          requests:
            cpu: 100m
            memory: 512Mi
          limits:
            cpu: 250m
            memory: 768Mi
"#;

const RS_NODE_WEB: &str = r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: rs-node-web
spec:
  replicas: 3
  selector:
    matchExpressions:
      - key: app
        operator: In
        values:
          - node-web
  template:
    metadata:
      labels:
        app: node-web
    spec:
      containers:
      - name: node-web
        image: whatwant/node-web:1.0
        ports:
        - containerPort: 8080
"#;

const JOB_PARALLEL: &str = r#"
apiVersion: batch/v1
kind: Job
metadata:
  name: throw-dice-job
spec:
  completions: 3
  parallelism: 3
  backoffLimit: 25
  template:
    spec:
      containers:
      - name: math-add
        image: kodekloud/throw-dice
      restartPolicy: Never
"#;

pub(crate) fn yaml(s: &str) -> Value {
    serde_norway::from_str(s).expect("test manifest is valid YAML")
}

/// What the stand-in node agent does with a pod it finds bound.
#[derive(Clone)]
enum Agent {
    /// Running and Ready.
    Run,
    /// Job pods: the first `fail` pods fail, the rest succeed.
    Dice { fail: usize, seen: Arc<AtomicUsize> },
}

pub(crate) struct Cluster {
    pub objects: Objects,
    pub health: watch::Sender<BTreeMap<String, bool>>,
    stop: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
}

impl Cluster {
    async fn start(nodes: &[&str], config: ControllerConfig, agent: Agent) -> Cluster {
        Cluster::start_with(nodes, config, agent, None).await
    }

    async fn start_with(
        nodes: &[&str],
        config: ControllerConfig,
        agent: Agent,
        metrics: Option<Arc<dyn PodMetrics>>,
    ) -> Cluster {
        let objects = Objects::new(Store::in_memory());
        let mut alive = BTreeMap::new();
        for n in nodes {
            add_node(&objects, n, "4", "8Gi").await;
            alive.insert(n.to_string(), true);
        }
        let (health, rx) = watch::channel(alive);
        let stop = CancellationToken::new();
        let tasks = tokio_util::task::TaskTracker::new();
        let mut manager = ControllerManager::new(config);
        if let Some(m) = metrics {
            manager = manager.with_metrics(m);
        }
        tasks.spawn(manager.run(objects.clone(), rx, stop.child_token()));
        tasks.spawn(Scheduler::new().run(objects.clone(), stop.child_token()));
        tasks.spawn(node_agent(objects.clone(), agent, stop.child_token()));
        Cluster { objects, health, stop, tasks }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    async fn pods(&self) -> Vec<Value> {
        self.objects.list(&res("", "pods"), Some("default")).await.expect("list pods").0
    }

    async fn get(&self, group: &str, plural: &str, name: &str) -> Option<Value> {
        let r = res(group, plural);
        let ns = if r.namespaced { Some("default") } else { None };
        self.objects.get(&r, ns, name).await.expect("get")
    }

    async fn list(&self, group: &str, plural: &str) -> Vec<Value> {
        self.objects.list(&res(group, plural), Some("default")).await.expect("list").0
    }
}

/// Moves bound pods along as a node agent would.
async fn node_agent(objects: Objects, agent: Agent, stop: CancellationToken) {
    let pods = res("", "pods");
    let mut ip = 10u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(30)) => {}
        }
        let Ok((list, _)) = objects.list(&pods, None).await else { continue };
        for p in list {
            let bound = p["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
            if bound && super::util::is_deleting(&p) {
                // Graceful deletion: the agent stops the containers, then removes the pod.
                let pre = shoal_kube::Preconditions {
                    uid: Some(super::util::uid_of(&p).to_string()),
                    resource_version: None,
                };
                let _ = objects.delete(&pods, p["metadata"]["namespace"].as_str(), name_of(&p), pre).await;
                continue;
            }
            if !bound || pod_phase(&p) != "Pending" || !pod_is_active(&p) {
                continue;
            }
            ip += 1;
            let now = super::util::now_str();
            let (phase, ready) = match &agent {
                Agent::Run => ("Running", true),
                Agent::Dice { fail, seen } => {
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    (if n < *fail { "Failed" } else { "Succeeded" }, false)
                }
            };
            let status = json!({
                "phase": phase,
                "podIP": format!("10.0.0.{}", ip % 250),
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": now},
                ],
                "containerStatuses": [{"name": "c", "ready": ready, "restartCount": 0,
                    "state": if phase == "Running" { json!({"running": {"startedAt": now}}) }
                             else { json!({"terminated": {"exitCode": if phase == "Failed" { 1 } else { 0 }, "finishedAt": now}}) }}],
            });
            let mut next = p.clone();
            next["status"] = status;
            // A stale write just loses to whoever changed the pod; the next round retries.
            let _ = objects.update(&pods, p["metadata"]["namespace"].as_str(), next, UpdateMode::Status).await;
        }
    }
}

/// Polls `cond` until it holds; the long limit only guards against a hung test.
fn fast() -> ControllerConfig {
    ControllerConfig {
        default_unreachable_toleration: Duration::from_secs(1),
        job_backoff_base: Duration::from_millis(50),
        job_backoff_max: Duration::from_millis(400),
        resync_period: Duration::from_secs(5),
        pod_security_defaults: Default::default(),
        service_cidr: Default::default(),
    }
}

fn running(pods: &[Value]) -> Vec<&Value> {
    pods.iter().filter(|p| pod_phase(p) == "Running" && pod_is_active(p)).collect()
}

fn rs_of<'a>(pods: &'a [Value], rs: &Value) -> Vec<&'a Value> {
    let uid = rs["metadata"]["uid"].as_str().unwrap_or("");
    pods.iter().filter(|p| controlled_by(p, uid) && pod_is_active(p)).collect()
}

#[tokio::test]
async fn deployment_rollout_undo_and_scale() {
    let c = Cluster::start(&["n1", "n2", "n3"], fast(), Agent::Run).await;
    let deps = res("apps", "deployments");
    c.objects.create(&deps, Some("default"), yaml(NGINX)).await.unwrap();

    // kubectl get all: 1 deployment, 1 replicaset, 2 pods.
    eventually("2 nginx pods running", || async {
        let d = c.get("apps", "deployments", "nginx").await.unwrap();
        running(&c.pods().await).len() == 2
            && d["status"]["availableReplicas"] == 2
            && c.list("apps", "replicasets").await.len() == 1
    })
    .await;
    let rs1 = c.list("apps", "replicasets").await.remove(0);
    let rs1_name = name_of(&rs1).to_string();
    assert!(rs1_name.starts_with("nginx-"));
    assert_eq!(rs1["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "1");
    let d = c.get("apps", "deployments", "nginx").await.unwrap();
    let progressing =
        d["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Progressing").unwrap().clone();
    assert_eq!(progressing["reason"], "NewReplicaSetAvailable");
    assert_eq!(d["status"]["observedGeneration"], d["metadata"]["generation"]);

    // kubectl apply -f nginx_deployment_cpu200_k8s.yaml: a new ReplicaSet takes over.
    let mut cpu200 = c.get("apps", "deployments", "nginx").await.unwrap();
    cpu200["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = json!("200m");
    c.objects.update(&deps, Some("default"), cpu200, UpdateMode::Spec).await.unwrap();
    eventually("rolled to the second replicaset", || async {
        let rss = c.list("apps", "replicasets").await;
        let pods = c.pods().await;
        let d = c.get("apps", "deployments", "nginx").await.unwrap();
        rss.len() == 2
            && rss
                .iter()
                .any(|rs| name_of(rs) != rs1_name && rs_of(&pods, rs).len() == 2 && rs["status"]["readyReplicas"] == 2)
            && rss
                .iter()
                .any(|rs| name_of(rs) == rs1_name && rs["spec"]["replicas"] == 0 && rs_of(&pods, rs).is_empty())
            && d["status"]["updatedReplicas"] == 2
            && d["status"]["replicas"] == 2
    })
    .await;
    let rss = c.list("apps", "replicasets").await;
    let rs2 = rss.iter().find(|rs| name_of(rs) != rs1_name).unwrap().clone();
    assert_eq!(rs2["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "2");
    // Events as kubectl describe shows them.
    let events = c.list("", "events").await;
    assert!(events.iter().any(|e| e["reason"] == "ScalingReplicaSet"
        && e["message"].as_str().is_some_and(|m| m.starts_with(&format!("Scaled up replica set {}", name_of(&rs2))))));

    // kubectl rollout undo deployment nginx --to-revision=1: the JSON patch kubectl sends.
    let mut tmpl = rs1["spec"]["template"].clone();
    tmpl["metadata"]["labels"].as_object_mut().unwrap().remove("pod-template-hash");
    tmpl["metadata"]["creationTimestamp"] = Value::Null;
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/spec/template", "value": tmpl},
        {"op": "replace", "path": "/metadata/annotations", "value": {"deployment.kubernetes.io/revision": "2"}},
    ]))
    .unwrap();
    let mut d = c.get("apps", "deployments", "nginx").await.unwrap();
    json_patch::patch(&mut d, &patch).unwrap();
    c.objects.update(&deps, Some("default"), d, UpdateMode::Spec).await.unwrap();
    eventually("first replicaset back", || async {
        let rss = c.list("apps", "replicasets").await;
        let pods = c.pods().await;
        let rs1 = rss.iter().find(|rs| name_of(rs) == rs1_name);
        rss.len() == 2
            && rs1.is_some_and(|rs| rs_of(&pods, rs).len() == 2 && rs["status"]["readyReplicas"] == 2)
            && rss.iter().any(|rs| name_of(rs) != rs1_name && rs["spec"]["replicas"] == 0)
    })
    .await;
    let rs1 = c.get("apps", "replicasets", &rs1_name).await.unwrap();
    assert_eq!(rs1["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "3");
    eventually("deployment at revision 3", || async {
        let d = c.get("apps", "deployments", "nginx").await.unwrap();
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
    })
    .await;

    // kubectl scale deployment nginx --replicas=4
    c.objects
        .modify(&deps, Some("default"), "nginx", UpdateMode::Spec, |d| {
            d["spec"]["replicas"] = json!(4);
            Ok(true)
        })
        .await
        .unwrap();
    eventually("4 pods", || async {
        let d = c.get("apps", "deployments", "nginx").await.unwrap();
        running(&c.pods().await).len() == 4
            && d["status"]["availableReplicas"] == 4
            && d["status"]["updatedReplicas"] == 4
    })
    .await;
    c.stop().await;
}

#[tokio::test]
async fn recreate_strategy_replaces_all_pods() {
    let c = Cluster::start(&["n1"], fast(), Agent::Run).await;
    let deps = res("apps", "deployments");
    let mut d = yaml(NGINX);
    d["spec"]["strategy"] = json!({"type": "Recreate"});
    c.objects.create(&deps, Some("default"), d).await.unwrap();
    eventually("2 pods", || async { running(&c.pods().await).len() == 2 }).await;
    c.objects
        .modify(&deps, Some("default"), "nginx", UpdateMode::Spec, |d| {
            d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.27");
            Ok(true)
        })
        .await
        .unwrap();
    eventually("2 new pods", || async {
        let pods = c.pods().await;
        let r = running(&pods);
        r.len() == 2 && r.iter().all(|p| p["spec"]["containers"][0]["image"] == "nginx:1.27")
    })
    .await;
    c.stop().await;
}

#[tokio::test]
async fn replicaset_keeps_three_pods() {
    let c = Cluster::start(&["n1", "n2", "n3"], fast(), Agent::Run).await;
    let rss = res("apps", "replicasets");
    c.objects.create(&rss, Some("default"), yaml(RS_NODE_WEB)).await.unwrap();
    eventually("3 pods running", || async { running(&c.pods().await).len() == 3 }).await;
    // Spread over the three nodes.
    let pods = c.pods().await;
    let mut nodes: Vec<&str> = pods.iter().filter_map(|p| p["spec"]["nodeName"].as_str()).collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 3);

    // kubectl delete pod <one>
    let victim = name_of(&pods[0]).to_string();
    c.objects.delete(&res("", "pods"), Some("default"), &victim, Preconditions::default()).await.unwrap();
    eventually("3 pods again, without the deleted one", || async {
        let pods = c.pods().await;
        running(&pods).len() == 3 && !pods.iter().any(|p| name_of(p) == victim)
    })
    .await;
    let rs = c.get("apps", "replicasets", "rs-node-web").await.unwrap();
    eventually("status counts 3 ready", || async {
        let rs = c.get("apps", "replicasets", "rs-node-web").await.unwrap();
        rs["status"]["readyReplicas"] == 3
            && rs["status"]["availableReplicas"] == 3
            && rs["status"]["fullyLabeledReplicas"] == 3
    })
    .await;
    let events = c.list("", "events").await;
    assert!(events.iter().any(|e| e["reason"] == "SuccessfulCreate" && e["involvedObject"]["name"] == "rs-node-web"));
    assert!(events.iter().any(|e| e["reason"] == "Scheduled"));

    // Scale down to 1: two pods go.
    c.objects
        .modify(&rss, Some("default"), "rs-node-web", UpdateMode::Spec, |o| {
            o["spec"]["replicas"] = json!(1);
            Ok(true)
        })
        .await
        .unwrap();
    eventually("1 pod", || async { c.pods().await.iter().filter(|p| pod_is_active(p)).count() == 1 }).await;
    let _ = rs;

    // An orphan pod with matching labels is adopted (and, being one too many, removed).
    c.stop().await;
}

#[tokio::test]
async fn job_parallel_completes_despite_failures() {
    let agent = Agent::Dice { fail: 5, seen: Arc::new(AtomicUsize::new(0)) };
    let c = Cluster::start(&["n1", "n2", "n3"], fast(), agent).await;
    c.objects.create(&res("batch", "jobs"), Some("default"), yaml(JOB_PARALLEL)).await.unwrap();
    eventually("job complete", || async {
        let j = c.get("batch", "jobs", "throw-dice-job").await.unwrap();
        j["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Complete" && c["status"] == "True"))
    })
    .await;
    let j = c.get("batch", "jobs", "throw-dice-job").await.unwrap();
    // kubectl get jobs: COMPLETIONS 3/3.
    assert_eq!(j["status"]["succeeded"], 3);
    assert_eq!(j["status"]["failed"], 5);
    assert!(j["status"]["startTime"].is_string() && j["status"]["completionTime"].is_string());
    // kubectl get pods: the failed attempts stay visible as Error.
    let pods = c.pods().await;
    assert_eq!(pods.iter().filter(|p| pod_phase(p) == "Failed").count(), 5);
    assert_eq!(pods.iter().filter(|p| pod_phase(p) == "Succeeded").count(), 3);
    assert!(pods.iter().all(|p| name_of(p).starts_with("throw-dice-job-")));
    assert!(c.list("", "events").await.iter().any(|e| e["reason"] == "Completed"));
    c.stop().await;
}

#[tokio::test]
async fn job_backoff_limit_fails_the_job() {
    let agent = Agent::Dice { fail: 100, seen: Arc::new(AtomicUsize::new(0)) };
    let c = Cluster::start(&["n1"], fast(), agent).await;
    let mut job = yaml(JOB_PARALLEL);
    job["spec"]["backoffLimit"] = json!(2);
    job["spec"]["parallelism"] = json!(1);
    c.objects.create(&res("batch", "jobs"), Some("default"), job).await.unwrap();
    eventually("job failed", || async {
        let j = c.get("batch", "jobs", "throw-dice-job").await.unwrap();
        j["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| c["type"] == "Failed" && c["status"] == "True" && c["reason"] == "BackoffLimitExceeded")
        })
    })
    .await;
    let j = c.get("batch", "jobs", "throw-dice-job").await.unwrap();
    assert_eq!(j["status"]["failed"], 3);
    assert!(c.list("", "events").await.iter().any(|e| e["reason"] == "BackoffLimitExceeded"));
    c.stop().await;
}

#[tokio::test]
async fn dead_node_pods_are_evicted_and_recreated_elsewhere() {
    let c = Cluster::start(&["n1", "n2", "n3"], fast(), Agent::Run).await;
    let mut d = yaml(NGINX);
    d["spec"]["replicas"] = json!(6);
    c.objects.create(&res("apps", "deployments"), Some("default"), d).await.unwrap();
    eventually("6 pods running", || async { running(&c.pods().await).len() == 6 }).await;
    let on_n1: Vec<String> =
        c.pods().await.iter().filter(|p| p["spec"]["nodeName"] == "n1").map(|p| name_of(p).to_string()).collect();
    assert_eq!(on_n1.len(), 2, "pods are spread over the nodes");

    // n1 loses power.
    c.health.send_modify(|h| {
        h.insert("n1".into(), false);
    });
    eventually("n1 tainted and NotReady", || async {
        let n = c.get("", "nodes", "n1").await.unwrap();
        let tainted = n["spec"]["taints"].as_array().is_some_and(|ts| {
            ts.iter().any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute")
        });
        let unknown = n["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "Unknown");
        tainted && unknown
    })
    .await;
    eventually("6 pods running on n2 and n3", || async {
        let pods = c.pods().await;
        let r = running(&pods);
        r.len() == 6
            && r.iter().all(|p| p["spec"]["nodeName"] != "n1")
            && !pods.iter().any(|p| on_n1.iter().any(|n| n == name_of(p)))
    })
    .await;

    // n1 comes back: the taint goes, its evicted pods stay gone.
    c.health.send_modify(|h| {
        h.insert("n1".into(), true);
    });
    eventually("n1 untainted", || async {
        let n = c.get("", "nodes", "n1").await.unwrap();
        n["spec"]["taints"].as_array().is_none_or(|ts| ts.is_empty())
    })
    .await;
    assert!(!c.pods().await.iter().any(|p| on_n1.iter().any(|n| n == name_of(p))));
    c.stop().await;
}

#[tokio::test]
async fn a_flap_shorter_than_the_toleration_evicts_nothing() {
    let mut cfg = fast();
    cfg.default_unreachable_toleration = Duration::from_secs(3600);
    let c = Cluster::start(&["n1", "n2"], cfg, Agent::Run).await;
    let mut d = yaml(NGINX);
    d["spec"]["replicas"] = json!(4);
    c.objects.create(&res("apps", "deployments"), Some("default"), d).await.unwrap();
    eventually("4 pods running", || async { running(&c.pods().await).len() == 4 }).await;
    let before: Vec<String> = c.pods().await.iter().map(|p| name_of(p).to_string()).collect();
    c.health.send_modify(|h| {
        h.insert("n1".into(), false);
    });
    eventually("n1 tainted", || async {
        let n = c.get("", "nodes", "n1").await.unwrap();
        n["spec"]["taints"].as_array().is_some_and(|ts| !ts.is_empty())
    })
    .await;
    c.health.send_modify(|h| {
        h.insert("n1".into(), true);
    });
    eventually("n1 untainted", || async {
        let n = c.get("", "nodes", "n1").await.unwrap();
        n["spec"]["taints"].as_array().is_none_or(|ts| ts.is_empty())
    })
    .await;
    let after: Vec<String> = c.pods().await.iter().map(|p| name_of(p).to_string()).collect();
    assert_eq!(before, after);
    c.stop().await;
}

/// Three of five nodes look dead at once (a starved leader's view, its own link down): they
/// are marked unreachable, but nothing is evicted until the view recovers; then the one node
/// still dead loses its pods as usual.
#[tokio::test]
async fn most_nodes_dead_at_once_evicts_nothing_until_the_view_recovers() {
    let nodes = ["n1", "n2", "n3", "n4", "n5"];
    let c = Cluster::start(&nodes, fast(), Agent::Run).await;
    let mut d = yaml(NGINX);
    d["spec"]["replicas"] = json!(10);
    c.objects.create(&res("apps", "deployments"), Some("default"), d).await.unwrap();
    eventually("10 pods running", || async { running(&c.pods().await).len() == 10 }).await;
    let before: Vec<String> = c.pods().await.iter().map(|p| name_of(p).to_string()).collect();
    c.health.send_modify(|h| {
        for n in ["n1", "n2", "n3"] {
            h.insert(n.into(), false);
        }
    });
    eventually("n1, n2 and n3 tainted", || async {
        let mut all = true;
        for n in ["n1", "n2", "n3"] {
            let node = c.get("", "nodes", n).await.unwrap();
            all &= node["spec"]["taints"].as_array().is_some_and(|ts| !ts.is_empty());
        }
        all
    })
    .await;
    // Three times the toleration: still every pod.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during: Vec<String> = c.pods().await.iter().map(|p| name_of(p).to_string()).collect();
    assert_eq!(before, during, "no pod evicted while most nodes look dead");
    assert!(
        c.list("", "events").await.iter().any(|e| e["reason"] == "EvictionsHeld" && e["type"] == "Warning"),
        "the hold shows on the Node"
    );
    // n2 and n3 come back; n1 stays dead (one of five): its pods go.
    let on_n1: Vec<String> =
        c.pods().await.iter().filter(|p| p["spec"]["nodeName"] == "n1").map(|p| name_of(p).to_string()).collect();
    assert!(!on_n1.is_empty());
    c.health.send_modify(|h| {
        h.insert("n2".into(), true);
        h.insert("n3".into(), true);
    });
    eventually("n1's pods evicted", || async {
        let pods = c.pods().await;
        !pods.iter().any(|p| on_n1.iter().any(|n| n == name_of(p)))
    })
    .await;
    c.stop().await;
}

#[tokio::test]
async fn garbage_collector_deletes_owned_objects() {
    let c = Cluster::start(&["n1"], fast(), Agent::Run).await;
    let rss = res("apps", "replicasets");
    c.objects.create(&rss, Some("default"), yaml(RS_NODE_WEB)).await.unwrap();
    eventually("3 pods", || async { running(&c.pods().await).len() == 3 }).await;
    // kubectl delete rs (background propagation).
    c.objects.delete(&rss, Some("default"), "rs-node-web", Preconditions::default()).await.unwrap();
    eventually("pods collected", || async { c.pods().await.is_empty() }).await;

    // Orphan propagation: the pods stay, without owner.
    let mut rs = yaml(RS_NODE_WEB);
    rs["metadata"]["finalizers"] = json!(["orphan"]);
    c.objects.create(&rss, Some("default"), rs).await.unwrap();
    eventually("3 pods", || async { running(&c.pods().await).len() == 3 }).await;
    c.objects.delete(&rss, Some("default"), "rs-node-web", Preconditions::default()).await.unwrap();
    eventually("rs gone, pods orphaned", || async {
        let pods = c.pods().await;
        c.get("apps", "replicasets", "rs-node-web").await.is_none()
            && pods.len() == 3
            && pods.iter().all(|p| p["metadata"]["ownerReferences"].is_null())
    })
    .await;
    for p in c.pods().await {
        c.objects.delete(&res("", "pods"), Some("default"), name_of(&p), Preconditions::default()).await.unwrap();
    }

    // Foreground propagation: the deployment goes last.
    let deps = res("apps", "deployments");
    let mut d = yaml(NGINX);
    d["metadata"]["finalizers"] = json!(["foregroundDeletion"]);
    c.objects.create(&deps, Some("default"), d).await.unwrap();
    eventually("2 pods", || async { running(&c.pods().await).len() == 2 }).await;
    c.objects.delete(&deps, Some("default"), "nginx", Preconditions::default()).await.unwrap();
    eventually("everything gone", || async {
        c.get("apps", "deployments", "nginx").await.is_none()
            && c.list("apps", "replicasets").await.is_empty()
            && c.pods().await.is_empty()
    })
    .await;
    c.stop().await;
}

#[tokio::test]
async fn endpoints_follow_ready_pods() {
    let c = Cluster::start(&["n1"], fast(), Agent::Run).await;
    let svc = json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "node-web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    });
    c.objects.create(&res("", "services"), Some("default"), svc).await.unwrap();
    c.objects.create(&res("apps", "replicasets"), Some("default"), yaml(RS_NODE_WEB)).await.unwrap();
    eventually("3 ready addresses", || async {
        let Some(ep) = c.get("", "endpoints", "web").await else { return false };
        let ready = ep["subsets"][0]["addresses"].as_array().map_or(0, |a| a.len());
        ready == 3 && ep["subsets"][0]["ports"][0]["port"] == 8080
    })
    .await;
    let slices = c.list("discovery.k8s.io", "endpointslices").await;
    assert_eq!(slices.len(), 1);
    assert_eq!(slices[0]["endpoints"].as_array().unwrap().len(), 3);
    assert_eq!(slices[0]["metadata"]["labels"]["kubernetes.io/service-name"], "web");
    c.stop().await;
}

#[tokio::test]
async fn namespaces_get_a_default_service_account_and_are_emptied_on_delete() {
    let c = Cluster::start(&["n1"], fast(), Agent::Run).await;
    let nss = res("", "namespaces");
    let sas = res("", "serviceaccounts");
    c.objects
        .create(
            &nss,
            None,
            json!({"metadata": {"name": "team", "finalizers": ["kubernetes"]}, "spec": {"finalizers": ["kubernetes"]}}),
        )
        .await
        .unwrap();
    eventually("default service account", || async {
        c.objects.get(&sas, Some("team"), "default").await.unwrap().is_some()
    })
    .await;
    c.objects.create(&res("", "configmaps"), Some("team"), json!({"metadata": {"name": "cfg"}})).await.unwrap();
    c.objects.delete(&nss, None, "team", Preconditions::default()).await.unwrap();
    eventually("namespace gone", || async { c.objects.get(&nss, None, "team").await.unwrap().is_none() }).await;
    assert!(c.objects.get(&res("", "configmaps"), Some("team"), "cfg").await.unwrap().is_none());
    c.stop().await;
}

#[tokio::test]
async fn cronjob_starts_the_missed_run_once() {
    let c = Cluster::start(&["n1"], fast(), Agent::Dice { fail: 0, seen: Arc::new(AtomicUsize::new(0)) }).await;
    let cjs = res("batch", "cronjobs");
    let cj = json!({
        "metadata": {"name": "tick"},
        "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"name": "c", "image": "busybox"}], "restartPolicy": "Never"}}}}},
    });
    c.objects.create(&cjs, Some("default"), cj).await.unwrap();
    let start_minute = jiff::Timestamp::now().as_second() / 60;
    let three_min_ago = jiff::Timestamp::now().checked_sub(jiff::SignedDuration::from_secs(180)).unwrap();
    c.objects
        .modify(&cjs, Some("default"), "tick", UpdateMode::Status, |o| {
            o["status"] = json!({"lastScheduleTime": super::util::fmt_time(three_min_ago)});
            Ok(true)
        })
        .await
        .unwrap();
    // Jobs are named tick-<minute>. The run of the latest missed minute (this one) starts, the
    // two before it do not; on a slow machine the next minute may start its own run meanwhile.
    let minute_of = |j: &Value| name_of(j).strip_prefix("tick-").and_then(|m| m.parse::<i64>().ok());
    eventually("one job for the latest missed minute", || async {
        let jobs = c.list("batch", "jobs").await;
        !jobs.is_empty() && jobs.iter().all(|j| minute_of(j).is_some_and(|m| m >= start_minute))
    })
    .await;
    let jobs = c.list("batch", "jobs").await;
    assert!(jobs.iter().all(|j| minute_of(j).is_some_and(|m| m >= start_minute)), "an older missed run started too");
    eventually("job completes and the cronjob records it", || async {
        let cj = c.get("batch", "cronjobs", "tick").await.unwrap();
        cj["status"]["lastSuccessfulTime"].is_string()
    })
    .await;
    c.stop().await;
}

#[tokio::test]
async fn restarting_the_manager_creates_nothing_twice() {
    let c = Cluster::start(&["n1", "n2"], fast(), Agent::Run).await;
    c.objects.create(&res("apps", "deployments"), Some("default"), yaml(NGINX)).await.unwrap();
    eventually("2 pods", || async { running(&c.pods().await).len() == 2 }).await;
    // A second manager (a new leader) starts while the first still runs.
    let stop = CancellationToken::new();
    let (_tx, rx) = watch::channel(BTreeMap::from([("n1".to_string(), true), ("n2".to_string(), true)]));
    let h = tokio::spawn(ControllerManager::new(fast()).run(c.objects.clone(), rx, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    h.await.unwrap();
    assert_eq!(c.list("apps", "replicasets").await.len(), 1);
    eventually("still 2 pods", || async { c.pods().await.iter().filter(|p| pod_is_active(p)).count() == 2 }).await;
    c.stop().await;
}

#[tokio::test]
async fn daemonset_runs_one_pod_per_node_and_rolls() {
    let c = Cluster::start(&["n1", "n2"], fast(), Agent::Run).await;
    let dss = res("apps", "daemonsets");
    let ds = json!({
        "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "a", "image": "agent:1"}]}}},
    });
    c.objects.create(&dss, Some("default"), ds).await.unwrap();
    eventually("one pod on each node", || async {
        let pods = c.pods().await;
        let r = running(&pods);
        r.len() == 2
            && r.iter().any(|p| p["spec"]["nodeName"] == "n1")
            && r.iter().any(|p| p["spec"]["nodeName"] == "n2")
    })
    .await;
    add_node(&c.objects, "n3", "4", "8Gi").await;
    eventually("the new node gets one", || async {
        running(&c.pods().await).iter().any(|p| p["spec"]["nodeName"] == "n3")
    })
    .await;
    c.objects
        .modify(&dss, Some("default"), "agent", UpdateMode::Spec, |o| {
            o["spec"]["template"]["spec"]["containers"][0]["image"] = json!("agent:2");
            Ok(true)
        })
        .await
        .unwrap();
    eventually("all pods updated", || async {
        let pods = c.pods().await;
        let r = running(&pods);
        let ds = c.get("apps", "daemonsets", "agent").await.unwrap();
        r.len() == 3
            && r.iter().all(|p| p["spec"]["containers"][0]["image"] == "agent:2")
            && ds["status"]["updatedNumberScheduled"] == 3
            && ds["status"]["numberReady"] == 3
    })
    .await;
    let revisions = c.list("apps", "controllerrevisions").await;
    assert_eq!(revisions.len(), 2);
    assert!(revisions.iter().any(|r| r["revision"] == 2));
    c.stop().await;
}

#[tokio::test]
async fn statefulset_orders_pods_and_keeps_claims() {
    let c = Cluster::start(&["n1", "n2"], fast(), Agent::Run).await;
    let stss = res("apps", "statefulsets");
    let sts = json!({
        "metadata": {"name": "web"},
        "spec": {
            "serviceName": "web", "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "w", "image": "nginx"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
        },
    });
    c.objects.create(&stss, Some("default"), sts).await.unwrap();
    eventually("web-0..2 running", || async {
        let pods = c.pods().await;
        let mut names: Vec<&str> = running(&pods).iter().map(|p| name_of(p)).collect();
        names.sort();
        names == ["web-0", "web-1", "web-2"]
    })
    .await;
    let pods = c.pods().await;
    let web1 = pods.iter().find(|p| name_of(p) == "web-1").unwrap();
    assert_eq!(web1["spec"]["hostname"], "web-1");
    assert_eq!(web1["spec"]["subdomain"], "web");
    assert_eq!(web1["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"], "data-web-1");
    // Created in order: web-1 not before web-0.
    let created = |n: &str| {
        pods.iter().find(|p| name_of(p) == n).unwrap()["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(created("web-0") < created("web-1") && created("web-1") < created("web-2"));
    let pvcs = c.list("", "persistentvolumeclaims").await;
    assert_eq!(pvcs.len(), 3);
    c.objects
        .modify(&stss, Some("default"), "web", UpdateMode::Spec, |o| {
            o["spec"]["replicas"] = json!(1);
            Ok(true)
        })
        .await
        .unwrap();
    eventually("only web-0 left", || async {
        let pods = c.pods().await;
        pods.len() == 1 && name_of(&pods[0]) == "web-0"
    })
    .await;
    assert_eq!(c.list("", "persistentvolumeclaims").await.len(), 3, "claims stay with their ordinals");
    eventually("status", || async {
        let s = c.get("apps", "statefulsets", "web").await.unwrap();
        s["status"]["replicas"] == 1 && s["status"]["readyReplicas"] == 1
    })
    .await;
    c.stop().await;
}

/// StatefulSet pods pass admission as every controller's do: a quota of one pod stops web-1
/// with upstream's FailedCreate text, and the pod that breaks the namespace's enforced Pod
/// Security level (from the config default) is never created.
#[tokio::test]
async fn statefulset_pods_pass_admission() {
    let mut config = fast();
    config.pod_security_defaults =
        [("pod-security.kubernetes.io/enforce".to_string(), "baseline".to_string())].into_iter().collect();
    let c = Cluster::start(&["n1"], config, Agent::Run).await;
    let quota = json!({"metadata": {"name": "one"}, "spec": {"hard": {"pods": "1"}}});
    c.objects.create(&res("", "resourcequotas"), Some("default"), quota).await.unwrap();
    let stss = res("apps", "statefulsets");
    let sts = |name: &str, privileged: bool| {
        json!({
            "metadata": {"name": name},
            "spec": {
                "serviceName": name, "replicas": 2, "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "w", "image": "nginx",
                    "securityContext": {"privileged": privileged}}]}},
            },
        })
    };
    c.objects.create(&stss, Some("default"), sts("web", false)).await.unwrap();
    let events = res("", "events");
    let message_with = |want: &'static str| {
        let objects = c.objects.clone();
        let events = events.clone();
        async move {
            let evs = objects.list(&events, Some("default")).await.unwrap().0;
            evs.iter().any(|e| e["reason"] == "FailedCreate" && e["message"].as_str().is_some_and(|m| m.contains(want)))
        }
    };
    eventually("web-1 refused by the quota", || message_with("StatefulSet web failed error: pods \"web-")).await;
    assert!(message_with("is forbidden: exceeded quota: one, requested: pods=1, used: pods=1, limited: pods=1").await);
    assert_eq!(c.pods().await.len(), 1);
    c.objects.delete(&res("", "resourcequotas"), Some("default"), "one", Default::default()).await.unwrap();
    c.objects.create(&stss, Some("default"), sts("root", true)).await.unwrap();
    eventually("root-0 refused by Pod Security", || {
        message_with("create Pod root-0 in StatefulSet root failed error: pods \"root-0\" is forbidden: violates PodSecurity \"baseline:latest\": privileged (container \"w\" must not set securityContext.privileged=true)")
    })
    .await;
    assert!(c.pods().await.iter().all(|p| !name_of(p).starts_with("root")));
    c.stop().await;
}

#[tokio::test]
async fn pdb_status_counts_disruptions_allowed() {
    let c = Cluster::start(&["n1"], fast(), Agent::Run).await;
    c.objects.create(&res("apps", "replicasets"), Some("default"), yaml(RS_NODE_WEB)).await.unwrap();
    let pdb = json!({"metadata": {"name": "web"}, "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "node-web"}}}});
    c.objects.create(&res("policy", "poddisruptionbudgets"), Some("default"), pdb).await.unwrap();
    eventually("1 disruption allowed", || async {
        let p = c.get("policy", "poddisruptionbudgets", "web").await.unwrap();
        p["status"]["currentHealthy"] == 3 && p["status"]["expectedPods"] == 3 && p["status"]["disruptionsAllowed"] == 1
    })
    .await;
    c.stop().await;
}

/// Every pod uses the same cpu.
struct FlatCpu(i128);

impl PodMetrics for FlatCpu {
    fn usage(&self, _namespace: &str, _pod: &str) -> Option<BTreeMap<String, i128>> {
        Some(BTreeMap::from([("cpu".to_string(), self.0)]))
    }
}

#[tokio::test]
async fn hpa_scales_on_cpu_utilisation() {
    let c = Cluster::start_with(&["n1", "n2"], fast(), Agent::Run, Some(Arc::new(FlatCpu(100)))).await;
    c.objects.create(&res("apps", "deployments"), Some("default"), yaml(NGINX)).await.unwrap();
    eventually("2 pods", || async { running(&c.pods().await).len() == 2 }).await;
    // Pods request 100m and use 100m: 100 % against a 50 % target asks for twice the pods.
    let hpa = json!({
        "metadata": {"name": "nginx"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "nginx"},
                 "minReplicas": 1, "maxReplicas": 5,
                 "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]},
    });
    c.objects.create(&res("autoscaling", "horizontalpodautoscalers"), Some("default"), hpa).await.unwrap();
    eventually("scaled to 4", || async {
        let d = c.get("apps", "deployments", "nginx").await.unwrap();
        let h = c.get("autoscaling", "horizontalpodautoscalers", "nginx").await.unwrap();
        d["spec"]["replicas"] == 4
            && h["status"]["desiredReplicas"] == 4
            && h["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"] == 100
    })
    .await;
    eventually("4 pods", || async { running(&c.pods().await).len() == 4 }).await;
    c.stop().await;
}

#[tokio::test]
async fn hpa_without_metrics_says_so() {
    let c = Cluster::start(&["n1"], fast(), Agent::Run).await;
    c.objects.create(&res("apps", "deployments"), Some("default"), yaml(NGINX)).await.unwrap();
    let hpa = json!({
        "metadata": {"name": "nginx"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "nginx"}, "maxReplicas": 5},
    });
    c.objects.create(&res("autoscaling", "horizontalpodautoscalers"), Some("default"), hpa).await.unwrap();
    eventually("ScalingActive=False", || async {
        let h = c.get("autoscaling", "horizontalpodautoscalers", "nginx").await.unwrap();
        h["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["type"] == "ScalingActive" && c["status"] == "False" && c["reason"] == "FailedGetResourceMetric"
            })
        })
    })
    .await;
    c.stop().await;
}

#[tokio::test]
async fn endpoints_resolve_named_target_ports() {
    let c = Cluster::start(&["n1"], fast(), Agent::Run).await;
    let mut rs = yaml(RS_NODE_WEB);
    rs["spec"]["template"]["spec"]["containers"][0]["ports"] = json!([{"name": "node-http", "containerPort": 8080}]);
    c.objects.create(&res("apps", "replicasets"), Some("default"), rs).await.unwrap();
    let svc = json!({"metadata": {"name": "svc-node"},
        "spec": {"ports": [{"port": 80, "targetPort": "node-http"}], "selector": {"app": "node-web"}, "sessionAffinity": "ClientIP"}});
    c.objects.create(&res("", "services"), Some("default"), svc).await.unwrap();
    eventually("named port resolved", || async {
        let Some(ep) = c.get("", "endpoints", "svc-node").await else { return false };
        ep["subsets"][0]["ports"][0]["port"] == 8080
            && ep["subsets"][0]["addresses"].as_array().is_some_and(|a| a.len() == 3)
    })
    .await;
    c.stop().await;
}

#[tokio::test]
async fn indexed_job_runs_each_index_once_and_ttl_removes_it() {
    let c = Cluster::start(&["n1"], fast(), Agent::Dice { fail: 0, seen: Arc::new(AtomicUsize::new(0)) }).await;
    let mut job = yaml(JOB_PARALLEL);
    job["spec"]["completionMode"] = json!("Indexed");
    job["spec"]["parallelism"] = json!(2);
    c.objects.create(&res("batch", "jobs"), Some("default"), job).await.unwrap();
    eventually("indexes 0-2 completed", || async {
        c.get("batch", "jobs", "throw-dice-job").await.is_some_and(|j| j["status"]["completedIndexes"] == "0-2")
    })
    .await;
    let pods = c.pods().await;
    let mut idx: Vec<&str> = pods
        .iter()
        .filter_map(|p| p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"].as_str())
        .collect();
    idx.sort();
    assert_eq!(idx, ["0", "1", "2"]);
    // ttlSecondsAfterFinished, set on the finished job (set from the start, a slow machine
    // could see the job gone before it saw it complete): the job and, through the garbage
    // collector, its pods go.
    c.objects
        .modify(&res("batch", "jobs"), Some("default"), "throw-dice-job", UpdateMode::Spec, |j| {
            j["spec"]["ttlSecondsAfterFinished"] = json!(1);
            Ok(true)
        })
        .await
        .unwrap();
    eventually("job and pods gone", || async {
        c.get("batch", "jobs", "throw-dice-job").await.is_none() && c.pods().await.is_empty()
    })
    .await;
    c.stop().await;
}

#[tokio::test]
async fn suspended_job_runs_nothing_until_resumed() {
    let c = Cluster::start(&["n1"], fast(), Agent::Dice { fail: 0, seen: Arc::new(AtomicUsize::new(0)) }).await;
    let jobs = res("batch", "jobs");
    let mut job = yaml(JOB_PARALLEL);
    job["spec"]["suspend"] = json!(true);
    c.objects.create(&jobs, Some("default"), job).await.unwrap();
    eventually("Suspended condition", || async {
        let j = c.get("batch", "jobs", "throw-dice-job").await.unwrap();
        j["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Suspended" && c["status"] == "True"))
    })
    .await;
    assert!(c.pods().await.is_empty());
    c.objects
        .modify(&jobs, Some("default"), "throw-dice-job", UpdateMode::Spec, |j| {
            j["spec"]["suspend"] = json!(false);
            Ok(true)
        })
        .await
        .unwrap();
    eventually("completes", || async {
        c.get("batch", "jobs", "throw-dice-job").await.is_some_and(|j| j["status"]["succeeded"] == 3)
    })
    .await;
    c.stop().await;
}

#[tokio::test]
async fn statefulset_rolling_update_respects_partition() {
    let c = Cluster::start(&["n1"], fast(), Agent::Run).await;
    let stss = res("apps", "statefulsets");
    let sts = json!({
        "metadata": {"name": "db"},
        "spec": {
            "serviceName": "db", "replicas": 3, "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}},
            "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "d", "image": "db:1"}]}},
        },
    });
    c.objects.create(&stss, Some("default"), sts).await.unwrap();
    eventually("3 running", || async { running(&c.pods().await).len() == 3 }).await;
    c.objects
        .modify(&stss, Some("default"), "db", UpdateMode::Spec, |o| {
            o["spec"]["template"]["spec"]["containers"][0]["image"] = json!("db:2");
            Ok(true)
        })
        .await
        .unwrap();
    eventually("db-1 and db-2 updated", || async {
        let pods = c.pods().await;
        let image = |n: &str| {
            running(&pods)
                .iter()
                .find(|p| name_of(p) == n)
                .map(|p| p["spec"]["containers"][0]["image"].as_str().unwrap_or("").to_string())
        };
        image("db-2").as_deref() == Some("db:2")
            && image("db-1").as_deref() == Some("db:2")
            && image("db-0").as_deref() == Some("db:1")
    })
    .await;
    let s = c.get("apps", "statefulsets", "db").await.unwrap();
    assert_ne!(s["status"]["currentRevision"], s["status"]["updateRevision"]);
    // db-0, below the partition, deleted by hand comes back at the current revision.
    let db0 = c.get("", "pods", "db-0").await.unwrap();
    c.objects.delete(&res("", "pods"), Some("default"), "db-0", Preconditions::default()).await.unwrap();
    eventually("db-0 back at db:1", || async {
        c.get("", "pods", "db-0").await.is_some_and(|p| {
            p["metadata"]["uid"] != db0["metadata"]["uid"]
                && pod_phase(&p) == "Running"
                && p["spec"]["containers"][0]["image"] == "db:1"
                && p["metadata"]["labels"]["controller-revision-hash"] == s["status"]["currentRevision"]
        })
    })
    .await;
    c.stop().await;
}

#[tokio::test]
async fn replicaset_adopts_matching_orphans() {
    let c = Cluster::start(&["n1"], fast(), Agent::Run).await;
    let pods = res("", "pods");
    let orphan = json!({"metadata": {"name": "hand-made", "labels": {"app": "node-web"}},
        "spec": {"containers": [{"name": "node-web", "image": "whatwant/node-web:1.0"}]}});
    c.objects.create(&pods, Some("default"), orphan).await.unwrap();
    eventually("orphan running", || async { running(&c.pods().await).len() == 1 }).await;
    c.objects.create(&res("apps", "replicasets"), Some("default"), yaml(RS_NODE_WEB)).await.unwrap();
    eventually("3 pods, the hand-made one adopted", || async {
        let pods = c.pods().await;
        let adopted = pods
            .iter()
            .find(|p| name_of(p) == "hand-made")
            .is_some_and(|p| p["metadata"]["ownerReferences"][0]["name"] == "rs-node-web");
        running(&pods).len() == 3 && adopted
    })
    .await;
    c.stop().await;
}

#[tokio::test]
async fn deployment_progress_deadline_and_pause() {
    let c = Cluster::start(&["n1"], fast(), Agent::Run).await;
    let deps = res("apps", "deployments");
    let mut d = yaml(NGINX);
    // Nothing can run this: the rollout cannot progress.
    d["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = json!("64");
    d["spec"]["progressDeadlineSeconds"] = json!(1);
    c.objects.create(&deps, Some("default"), d).await.unwrap();
    eventually("ProgressDeadlineExceeded", || async {
        let d = c.get("apps", "deployments", "nginx").await.unwrap();
        d["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["type"] == "Progressing" && c["status"] == "False" && c["reason"] == "ProgressDeadlineExceeded"
            })
        })
    })
    .await;

    // kubectl rollout pause; a template change makes no new ReplicaSet until resumed.
    c.objects
        .modify(&deps, Some("default"), "nginx", UpdateMode::Spec, |o| {
            o["spec"]["paused"] = json!(true);
            o["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = json!("100m");
            Ok(true)
        })
        .await
        .unwrap();
    eventually("paused", || async {
        let d = c.get("apps", "deployments", "nginx").await.unwrap();
        d["status"]["conditions"].as_array().is_some_and(|cs| cs.iter().any(|c| c["reason"] == "DeploymentPaused"))
            && d["status"]["observedGeneration"] == d["metadata"]["generation"]
    })
    .await;
    assert_eq!(c.list("apps", "replicasets").await.len(), 1);
    c.objects
        .modify(&deps, Some("default"), "nginx", UpdateMode::Spec, |o| {
            o["spec"]["paused"] = json!(false);
            Ok(true)
        })
        .await
        .unwrap();
    eventually("resumed and rolled out", || async {
        let d = c.get("apps", "deployments", "nginx").await.unwrap();
        c.list("apps", "replicasets").await.len() == 2
            && d["status"]["availableReplicas"] == 2
            && d["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["reason"] == "NewReplicaSetAvailable"))
    })
    .await;
    c.stop().await;
}

#[tokio::test]
async fn a_settled_cluster_writes_nothing() {
    // Resyncs within the quiet window must not write either.
    let mut cfg = fast();
    cfg.resync_period = Duration::from_millis(300);
    let c = Cluster::start(&["n1", "n2"], cfg, Agent::Run).await;
    c.objects.create(&res("apps", "deployments"), Some("default"), yaml(NGINX)).await.unwrap();
    c.objects
        .create(
            &res("", "services"),
            Some("default"),
            json!({"metadata": {"name": "nginx"}, "spec": {"selector": {"app": "nginx"}, "ports": [{"port": 80}]}}),
        )
        .await
        .unwrap();
    c.objects.create(&res("", "namespaces"), None, json!({"metadata": {"name": "default"}})).await.unwrap();
    eventually("settled", || async {
        let d = c.get("apps", "deployments", "nginx").await.unwrap();
        d["status"]["availableReplicas"] == 2
            && d["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["reason"] == "NewReplicaSetAvailable"))
    })
    .await;
    // Flash is precious: once everything is as desired, nothing is rewritten.
    let mut last = c.objects.store().revision();
    let mut quiet_rounds = 0;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = c.objects.store().revision();
        if now == last {
            quiet_rounds += 1;
            if quiet_rounds == 4 {
                break;
            }
        } else {
            quiet_rounds = 0;
            last = now;
        }
    }
    assert_eq!(quiet_rounds, 4, "the store kept changing");
    c.stop().await;
}

fn job_condition(j: &Value, type_: &str) -> Option<Value> {
    j["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_ && c["status"] == "True").cloned()
}

#[tokio::test]
async fn pod_failure_policy_fail_job_stops_at_the_first_matching_exit_code() {
    let agent = Agent::Dice { fail: 100, seen: Arc::new(AtomicUsize::new(0)) };
    let c = Cluster::start(&["n1"], fast(), agent).await;
    let mut job = yaml(JOB_PARALLEL);
    job["spec"]["parallelism"] = json!(1);
    job["spec"]["podFailurePolicy"] = json!({"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [1, 42]}},
    ]});
    c.objects.create(&res("batch", "jobs"), Some("default"), job).await.unwrap();
    eventually("job failed by its policy", || async {
        let j = c.get("batch", "jobs", "throw-dice-job").await.unwrap();
        job_condition(&j, "Failed").is_some_and(|c| c["reason"] == "PodFailurePolicy")
    })
    .await;
    let j = c.get("batch", "jobs", "throw-dice-job").await.unwrap();
    assert_eq!(j["status"]["failed"], 1, "no retry after FailJob although backoffLimit is 25");
    let msg = job_condition(&j, "Failed").unwrap()["message"].as_str().unwrap().to_string();
    assert!(
        msg.starts_with("Container c for pod default/throw-dice-job-")
            && msg.ends_with("failed with exit code 1 matching FailJob rule at index 1"),
        "{msg}"
    );
    c.stop().await;
}

#[tokio::test]
async fn pod_failure_policy_ignore_does_not_count_against_the_backoff_limit() {
    let agent = Agent::Dice { fail: 3, seen: Arc::new(AtomicUsize::new(0)) };
    let c = Cluster::start(&["n1"], fast(), agent).await;
    let mut job = yaml(JOB_PARALLEL);
    job["spec"]["backoffLimit"] = json!(0);
    job["spec"]["podFailurePolicy"] = json!({"rules": [
        {"action": "Ignore", "onExitCodes": {"containerName": "c", "operator": "In", "values": [1]}},
    ]});
    c.objects.create(&res("batch", "jobs"), Some("default"), job).await.unwrap();
    eventually("job complete", || async {
        let j = c.get("batch", "jobs", "throw-dice-job").await.unwrap();
        job_condition(&j, "Complete").is_some()
    })
    .await;
    let j = c.get("batch", "jobs", "throw-dice-job").await.unwrap();
    assert_eq!(j["status"]["succeeded"], 3);
    assert!(j["status"]["failed"].is_null(), "ignored failures are not counted: {}", j["status"]);
    assert_eq!(c.pods().await.iter().filter(|p| pod_phase(p) == "Failed").count(), 3);
    c.stop().await;
}

#[tokio::test]
async fn backoff_limit_per_index_gives_up_on_failed_indexes_only() {
    let agent = Agent::Dice { fail: 1, seen: Arc::new(AtomicUsize::new(0)) };
    let c = Cluster::start(&["n1"], fast(), agent).await;
    let mut job = yaml(JOB_PARALLEL);
    job["spec"]["completionMode"] = json!("Indexed");
    job["spec"]["parallelism"] = json!(1);
    job["spec"]["backoffLimitPerIndex"] = json!(0);
    job["spec"]["podReplacementPolicy"] = json!("Failed");
    c.objects.create(&res("batch", "jobs"), Some("default"), job).await.unwrap();
    eventually("job failed with one failed index", || async {
        let j = c.get("batch", "jobs", "throw-dice-job").await.unwrap();
        job_condition(&j, "Failed").is_some_and(|c| c["reason"] == "FailedIndexes")
    })
    .await;
    let j = c.get("batch", "jobs", "throw-dice-job").await.unwrap();
    // The first pod (index 0) failed and was not retried; the other indexes ran to success.
    assert_eq!(j["status"]["failedIndexes"], "0");
    assert_eq!(j["status"]["completedIndexes"], "1-2");
    assert_eq!(j["status"]["terminating"], 0);
    assert_eq!(c.pods().await.len(), 3);
    c.stop().await;
}

#[tokio::test]
async fn controllers_delete_running_pods_gracefully_and_others_at_once() {
    let objects = Objects::new(shoal_store::Store::in_memory());
    let pods = res("", "pods");
    let pod = |name: &str, node: Option<&str>, phase: &str, grace: Option<i64>| {
        let mut p = json!({"metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}, "status": {"phase": phase}});
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        if let Some(g) = grace {
            p["spec"]["terminationGracePeriodSeconds"] = json!(g);
        }
        p
    };
    for p in [
        pod("running", Some("n1"), "Running", None),
        pod("quick", Some("n1"), "Running", Some(5)),
        pod("pending", None, "Pending", None),
        pod("done", Some("n1"), "Succeeded", None),
    ] {
        let created = objects.create(&pods, Some("default"), p).await.unwrap();
        super::util::delete_pod(&objects, &pods, &created).await.unwrap();
    }
    let get = |n: &'static str| {
        let objects = objects.clone();
        let pods = pods.clone();
        async move { objects.get(&pods, Some("default"), n).await.unwrap() }
    };
    let running = get("running").await.expect("a running pod waits for its node agent");
    assert!(running["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(running["metadata"]["deletionGracePeriodSeconds"], 30);
    assert_eq!(get("quick").await.expect("terminating")["metadata"]["deletionGracePeriodSeconds"], 5);
    assert!(get("pending").await.is_none(), "an unscheduled pod goes at once");
    assert!(get("done").await.is_none(), "a finished pod goes at once");
    // Deleting again changes nothing.
    super::util::delete_pod(&objects, &pods, &running).await.unwrap();
    assert_eq!(
        get("running").await.unwrap()["metadata"]["deletionTimestamp"],
        running["metadata"]["deletionTimestamp"]
    );
}
