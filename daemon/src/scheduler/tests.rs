//! Scheduler filters, scores, the unschedulable message and binding without double binds.
use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_kube::{Objects, UpdateMode};
use shoal_store::Store;
use tokio_util::sync::CancellationToken;

use super::{filter, score, unschedulable_message, Scheduler, Snapshot};
use crate::controllers::tests::{add_node, eventually, res};
use crate::controllers::util::name_of;

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
