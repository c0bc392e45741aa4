//! Scheduler filters, scores, the unschedulable message and binding without double binds.
use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_kube::{Objects, UpdateMode};
use shoal_store::Store;
use tokio_util::sync::CancellationToken;

use super::preempt::{self, Priorities};
use super::{filter, image_platforms_annotation, score, unschedulable_message, Scheduler, Snapshot};
use crate::reconcile::testing::{add_node, eventually, res};
use crate::reconcile::util::name_of;

fn node(name: &str, cpu: &str, labels: Value, taints: Value) -> Value {
    let mut l = json!({"kubernetes.io/hostname": name});
    if let Some(m) = labels.as_object() {
        for (k, v) in m {
            l[k] = v.clone();
        }
    }
    json!({
        "metadata": {"name": name, "labels": l},
        "spec": {"taints": taints},
        "status": {"allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

fn pod(name: &str, cpu: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "nginx", "resources": {"requests": {"cpu": cpu}}}]},
        "status": {"phase": "Pending"},
    })
}

fn bound(mut p: Value, node: &str) -> Value {
    p["spec"]["nodeName"] = json!(node);
    p["status"]["phase"] = json!("Running");
    p
}

#[test]
fn insufficient_cpu_gives_kubectls_message() {
    let nodes = vec![
        node("n1", "1", json!({}), json!([])),
        node("n2", "1", json!({}), json!([])),
        node("n3", "1", json!({}), json!([])),
    ];
    let snap = Snapshot::new(nodes, &[]);
    let reasons = filter::feasible(&snap, &pod("big", "2")).unwrap_err();
    assert_eq!(
        unschedulable_message(3, &reasons),
        "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );
}

#[test]
fn filters_selector_taints_ports_cordon_and_usage() {
    let mut cordoned = node("n3", "4", json!({}), json!([]));
    cordoned["spec"]["unschedulable"] = json!(true);
    let nodes = vec![
        node("n1", "4", json!({"disk": "ssd"}), json!([])),
        node("n2", "4", json!({}), json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])),
        cordoned,
    ];
    let existing = vec![bound(pod("a", "3500m"), "n1")];
    let snap = Snapshot::new(nodes, &existing);

    let p = pod("p", "100m");
    assert_eq!(filter::feasible(&snap, &p).unwrap(), vec!["n1".to_string()]);
    let big = pod("big", "1");
    let reasons = filter::feasible(&snap, &big).unwrap_err();
    let msg = unschedulable_message(3, &reasons);
    assert!(msg.contains("1 Insufficient cpu"), "{msg}");
    assert!(msg.contains("1 node(s) had untolerated taint {dedicated: gpu}"), "{msg}");
    assert!(msg.contains("1 node(s) were unschedulable"), "{msg}");

    let mut tolerant = pod("t", "1");
    tolerant["spec"]["tolerations"] =
        json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]);
    assert_eq!(filter::feasible(&snap, &tolerant).unwrap(), vec!["n2".to_string()]);

    let mut sel = pod("s", "100m");
    sel["spec"]["nodeSelector"] = json!({"disk": "hdd"});
    let reasons = filter::feasible(&snap, &sel).unwrap_err();
    assert!(unschedulable_message(3, &reasons).contains("node(s) didn't match Pod's node affinity/selector"));

    // hostPort conflicts.
    let mut hp = pod("h1", "10m");
    hp["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": 8080}]);
    let snap2 = Snapshot::new(vec![node("n1", "4", json!({}), json!([]))], &[bound(hp.clone(), "n1")]);
    let reasons = filter::feasible(&snap2, &hp).unwrap_err();
    assert!(reasons.contains_key("node(s) didn't have free ports for the requested pod ports"));
}

#[test]
fn extended_resources_and_pod_anti_affinity() {
    let mut gpu_node = node("n1", "4", json!({}), json!([]));
    gpu_node["status"]["allocatable"]["shoal.dev/hil"] = json!("1");
    let nodes = vec![gpu_node, node("n2", "4", json!({}), json!([]))];
    let snap = Snapshot::new(nodes.clone(), &[]);
    let mut p = pod("dev", "10m");
    p["spec"]["containers"][0]["resources"]["limits"] = json!({"shoal.dev/hil": "1"});
    assert_eq!(filter::feasible(&snap, &p).unwrap(), vec!["n1".to_string()]);
    let snap = Snapshot::new(nodes.clone(), &[bound(p.clone(), "n1")]);
    assert!(filter::feasible(&snap, &p).unwrap_err().contains_key("Insufficient shoal.dev/hil"));

    let mut anti = pod("x", "10m");
    anti["spec"]["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}});
    let snap = Snapshot::new(nodes, &[bound(pod("y", "10m"), "n1")]);
    assert_eq!(filter::feasible(&snap, &anti).unwrap(), vec!["n2".to_string()]);
}

#[test]
fn scores_prefer_emptier_nodes_and_local_images() {
    let mut with_image = node("n2", "4", json!({}), json!([]));
    with_image["status"]["images"] = json!([{"names": ["docker.io/library/nginx:latest"], "sizeBytes": 1}]);
    let nodes = vec![node("n1", "4", json!({}), json!([])), with_image];
    let snap = Snapshot::new(nodes.clone(), &[]);
    assert_eq!(score::best(&snap, &pod("p", "100m"), &["n1".into(), "n2".into()]).as_deref(), Some("n2"));
    let snap = Snapshot::new(nodes, &[bound(pod("a", "3"), "n2")]);
    assert_eq!(score::best(&snap, &pod("p", "100m"), &["n1".into(), "n2".into()]).as_deref(), Some("n1"));
}

#[tokio::test]
async fn two_schedulers_never_bind_a_pod_twice() {
    let objects = Objects::new(Store::in_memory());
    for n in ["n1", "n2", "n3"] {
        add_node(&objects, n, "64", "64Gi").await;
    }
    let pods = res("", "pods");
    let mut watch = objects.watch(&pods, None, None).await.unwrap();
    for i in 0..30 {
        objects.create(&pods, Some("default"), pod(&format!("p{i}"), "100m")).await.unwrap();
    }
    // Two leaders' schedulers overlap, as during a leader change.
    let stop = CancellationToken::new();
    let a = tokio::spawn(Scheduler::new().run(objects.clone(), stop.clone()));
    let b = tokio::spawn(Scheduler::new().run(objects.clone(), stop.clone()));
    eventually("all pods bound", || async {
        let (list, _) = objects.list(&pods, None).await.unwrap();
        list.iter().all(|p| p["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty()))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    a.await.unwrap();
    b.await.unwrap();
    // Every pod's nodeName was written once and never changed.
    let mut first_node: BTreeMap<String, String> = BTreeMap::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(100), watch.recv()).await {
        let ev = ev.unwrap();
        let Some(n) = ev.object["spec"]["nodeName"].as_str() else { continue };
        let prev = first_node.entry(name_of(&ev.object).to_string()).or_insert_with(|| n.to_string());
        assert_eq!(prev, n, "pod {} rebound", name_of(&ev.object));
    }
    assert_eq!(first_node.len(), 30);
    let events = objects.list(&res("", "events"), Some("default")).await.unwrap().0;
    for e in events.iter().filter(|e| e["reason"] == "Scheduled") {
        assert_eq!(e["count"], 1, "{}", e["message"]);
    }
}

#[tokio::test]
async fn unschedulable_pod_gets_condition_and_is_retried_when_a_node_joins() {
    let objects = Objects::new(Store::in_memory());
    add_node(&objects, "small", "1", "1Gi").await;
    let pods = res("", "pods");
    objects.create(&pods, Some("default"), pod("big", "2")).await.unwrap();
    let stop = CancellationToken::new();
    let h = tokio::spawn(Scheduler::new().run(objects.clone(), stop.clone()));
    eventually("PodScheduled=False", || async {
        let p = objects.get(&pods, Some("default"), "big").await.unwrap().unwrap();
        p["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["type"] == "PodScheduled"
                    && c["status"] == "False"
                    && c["reason"] == "Unschedulable"
                    && c["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("0/1 nodes are available: 1 Insufficient cpu."))
            })
        })
    })
    .await;
    let events = objects.list(&res("", "events"), Some("default")).await.unwrap().0;
    assert!(events.iter().any(|e| e["reason"] == "FailedScheduling" && e["type"] == "Warning"));
    add_node(&objects, "large", "8", "8Gi").await;
    eventually("bound to the new node", || async {
        let p = objects.get(&pods, Some("default"), "big").await.unwrap().unwrap();
        p["spec"]["nodeName"] == "large"
    })
    .await;
    // kubectl cordon: new pods avoid the node.
    objects
        .modify(&res("", "nodes"), None, "large", UpdateMode::Spec, |n| {
            n["spec"]["unschedulable"] = json!(true);
            Ok(true)
        })
        .await
        .unwrap();
    objects.create(&pods, Some("default"), pod("small-one", "100m")).await.unwrap();
    eventually("bound to the uncordoned node", || async {
        let p = objects.get(&pods, Some("default"), "small-one").await.unwrap().unwrap();
        p["spec"]["nodeName"] == "small"
    })
    .await;
    stop.cancel();
    h.await.unwrap();
}

fn with_arch(mut n: Value, arch: &str) -> Value {
    n["metadata"]["labels"]["kubernetes.io/arch"] = json!(arch);
    n
}

fn with_platforms(mut n: Value, image: &str, platforms: &[&str]) -> Value {
    let names = [image.to_string()];
    let ps: Vec<String> = platforms.iter().map(|p| p.to_string()).collect();
    n["metadata"]["annotations"] =
        json!({super::IMAGE_PLATFORMS_ANNOTATION: image_platforms_annotation([(&names[..], &ps[..])])});
    n
}

#[test]
fn image_platform_must_match_the_node_architecture() {
    let amd =
        with_platforms(with_arch(node("amd", "4", json!({}), json!([])), "amd64"), "nginx:1.27", &["linux/amd64"]);
    let arm = with_arch(node("arm", "4", json!({}), json!([])), "arm64");
    let armv7 = with_arch(node("armv7", "4", json!({}), json!([])), "arm");
    let snap = Snapshot::new(vec![amd.clone(), arm.clone(), armv7.clone()], &[]);

    // The only node holding nginx:1.27 says it is amd64-only: the arm nodes cannot run it.
    let mut p = pod("p", "100m");
    p["spec"]["containers"][0]["image"] = json!("docker.io/library/nginx:1.27");
    assert_eq!(filter::feasible(&snap, &p).unwrap(), vec!["amd".to_string()]);
    let mut on_arm = p.clone();
    on_arm["spec"]["nodeSelector"] = json!({"kubernetes.io/arch": "arm64"});
    let msg = unschedulable_message(3, &filter::feasible(&snap, &on_arm).unwrap_err());
    assert!(msg.contains("1 node(s) didn't match the platform of the pod's images"), "{msg}");

    // An image no node reports is not judged.
    let mut other = pod("o", "100m");
    other["spec"]["containers"][0]["image"] = json!("busybox");
    assert_eq!(filter::feasible(&snap, &other).unwrap().len(), 3);

    // A multi-arch index offers every listed platform; a variant still matches its arch.
    let amd = with_platforms(amd, "nginx:1.27", &["linux/amd64", "linux/arm64", "linux/arm/v7"]);
    let snap = Snapshot::new(vec![amd, arm, armv7], &[]);
    assert_eq!(filter::feasible(&snap, &p).unwrap().len(), 3);
}

fn prio_pod(name: &str, cpu: &str, priority: i64) -> Value {
    let mut p = pod(name, cpu);
    p["metadata"]["uid"] = json!(format!("uid-{name}"));
    p["spec"]["priority"] = json!(priority);
    p
}

#[test]
fn preemption_picks_the_cheapest_victims() {
    let nodes = vec![node("n1", "1", json!({}), json!([])), node("n2", "1", json!({}), json!([]))];
    let prio = Priorities::new(&[]);
    let existing = vec![
        bound(prio_pod("low-a", "600m", 10), "n1"),
        bound(prio_pod("low-b", "300m", 5), "n1"),
        bound(prio_pod("mid", "900m", 50), "n2"),
    ];
    let mut snap = Snapshot::new(nodes.clone(), &existing);
    let high = prio_pod("high", "500m", 100);
    assert!(filter::feasible(&snap, &high).is_err());
    // n1 needs one victim of priority 10 (low-b can stay? no: 600m+300m+500m > 1, removing
    // low-a leaves 300m+500m), n2 one of priority 50: n1 wins, low-a goes, low-b is reprieved.
    let plan = preempt::plan(&mut snap, &high, &prio, &[]).unwrap();
    assert_eq!(plan.node, "n1");
    let victims: Vec<&str> = plan.victims.iter().map(name_of).collect();
    assert_eq!(victims, vec!["low-a"]);
    // The snapshot is left as it was.
    assert_eq!(snap.bound.len(), 3);
    assert!(filter::feasible(&snap, &high).is_err());

    // A PodDisruptionBudget that allows no disruption of low-a sends the preemption to n2.
    let pdb = json!({"metadata": {"name": "keep", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "minAvailable": 3},
        "status": {"disruptionsAllowed": 0}});
    let plan = preempt::plan(&mut snap, &high, &prio, std::slice::from_ref(&pdb)).unwrap();
    assert_eq!(plan.pdb_violations, 1, "every victim is covered by the budget");
    // Both nodes violate once; then the lower top priority wins.
    assert_eq!(plan.node, "n1");

    // Nothing of lower priority anywhere: no victims, and kubectl's words for it.
    let equal = prio_pod("eq", "500m", 5);
    let why = preempt::plan(&mut snap, &equal, &prio, &[]).unwrap_err();
    assert_eq!(
        preempt::message(2, &why),
        "preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
    );
    // A node selector no node matches cannot be helped by preemption.
    let mut picky = prio_pod("picky", "100m", 100);
    picky["spec"]["nodeSelector"] = json!({"disk": "ssd"});
    let why = preempt::plan(&mut snap, &picky, &prio, &[]).unwrap_err();
    assert_eq!(why.get(preempt::NOT_HELPFUL), Some(&2));
}

#[test]
fn priority_comes_from_the_pod_or_its_class() {
    let classes = vec![
        json!({"metadata": {"name": "high"}, "value": 1000}),
        json!({"metadata": {"name": "polite"}, "value": 2000, "preemptionPolicy": "Never"}),
        json!({"metadata": {"name": "base"}, "value": 7, "globalDefault": true}),
    ];
    let prio = Priorities::new(&classes);
    let mut p = pod("p", "1m");
    assert_eq!(prio.of(&p), 7);
    p["spec"]["priorityClassName"] = json!("high");
    assert_eq!(prio.of(&p), 1000);
    p["spec"]["priority"] = json!(5);
    assert_eq!(prio.of(&p), 5, "spec.priority, as admission set it, wins");
    p["spec"]["priorityClassName"] = json!("polite");
    assert!(!prio.may_preempt(&p));
    p["spec"]["priorityClassName"] = json!("system-node-critical");
    p["spec"]["priority"] = Value::Null;
    assert_eq!(prio.of(&p), preempt::SYSTEM_NODE_CRITICAL);
}

#[tokio::test]
async fn high_priority_pod_preempts_and_is_bound_after_the_victim_is_gone() {
    let objects = Objects::new(Store::in_memory());
    add_node(&objects, "small", "1", "4Gi").await;
    let pods = res("", "pods");
    let mut low = pod("low", "800m");
    low["spec"]["nodeName"] = json!("small");
    low["spec"]["priority"] = json!(0);
    low["spec"]["terminationGracePeriodSeconds"] = json!(5);
    low["status"]["phase"] = json!("Running");
    objects.create(&pods, Some("default"), low).await.unwrap();
    let mut polite = pod("polite", "500m");
    polite["spec"]["priority"] = json!(1000);
    polite["spec"]["preemptionPolicy"] = json!("Never");
    objects.create(&pods, Some("default"), polite).await.unwrap();

    let stop = CancellationToken::new();
    let h = tokio::spawn(Scheduler::new().run(objects.clone(), stop.clone()));
    eventually("the polite pod waits without preempting", || async {
        let p = objects.get(&pods, Some("default"), "polite").await.unwrap().unwrap();
        p["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["type"] == "PodScheduled"
                    && c["message"].as_str().is_some_and(|m| {
                        m == "0/1 nodes are available: 1 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never."
                    })
            })
        })
    })
    .await;
    let low = objects.get(&pods, Some("default"), "low").await.unwrap().unwrap();
    assert!(low["metadata"]["deletionTimestamp"].is_null());
    objects.delete(&pods, Some("default"), "polite", Default::default()).await.unwrap();

    let mut high = pod("high", "500m");
    high["spec"]["priority"] = json!(1000);
    objects.create(&pods, Some("default"), high).await.unwrap();
    eventually("victim terminating, preemptor nominated", || async {
        let low = objects.get(&pods, Some("default"), "low").await.unwrap().unwrap();
        let high = objects.get(&pods, Some("default"), "high").await.unwrap().unwrap();
        low["metadata"]["deletionTimestamp"].is_string()
            && low["metadata"]["deletionGracePeriodSeconds"] == 5
            && low["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter().any(|c| c["type"] == "DisruptionTarget" && c["reason"] == "PreemptionByScheduler")
            })
            && high["status"]["nominatedNodeName"] == "small"
            && high["spec"]["nodeName"].is_null()
    })
    .await;
    let events = objects.list(&res("", "events"), Some("default")).await.unwrap().0;
    assert!(events.iter().any(|e| e["reason"] == "Preempted" && e["involvedObject"]["name"] == "low"));
    // A lower-priority newcomer does not take the room being freed.
    let mut sneaky = pod("sneaky", "600m");
    sneaky["spec"]["priority"] = json!(1);
    objects.create(&pods, Some("default"), sneaky).await.unwrap();
    // The node agent finishes the graceful deletion.
    objects.delete(&pods, Some("default"), "low", Default::default()).await.unwrap();
    eventually("preemptor bound", || async {
        let high = objects.get(&pods, Some("default"), "high").await.unwrap().unwrap();
        high["spec"]["nodeName"] == "small" && high["status"]["nominatedNodeName"].is_null()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sneaky = objects.get(&pods, Some("default"), "sneaky").await.unwrap().unwrap();
    assert!(sneaky["spec"]["nodeName"].is_null(), "the newcomer found no room");
    stop.cancel();
    h.await.unwrap();
}

#[test]
fn claims_must_exist_and_their_volumes_fit_the_node() {
    let nodes = vec![node("n1", "4", json!({}), json!([])), node("n2", "4", json!({}), json!([]))];
    let mut p = pod("db", "100m");
    p["spec"]["volumes"] = json!([{"name": "data", "persistentVolumeClaim": {"claimName": "data-db"}}]);
    let snap = Snapshot::new(nodes.clone(), &[]);
    let msg = unschedulable_message(2, &filter::feasible(&snap, &p).unwrap_err());
    assert!(msg.starts_with("0/2 nodes are available: 2 persistentvolumeclaim \"data-db\" not found."), "{msg}");
    // A claim bound to a volume on n2 keeps the pod there.
    let mut snap = Snapshot::new(nodes, &[]);
    snap.pvcs = vec![json!({"metadata": {"name": "data-db", "namespace": "default"}, "spec": {"volumeName": "pv-1"}})];
    snap.pvs = vec![json!({"metadata": {"name": "pv-1"}, "spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n2"]}]}]}}}})];
    assert_eq!(filter::feasible(&snap, &p).unwrap(), vec!["n2".to_string()]);
}
