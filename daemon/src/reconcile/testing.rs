//! Helpers of the control-loop tests (controllers and scheduler): an in-memory cluster's
//! resources, a Ready node, and waiting for a condition.
use std::future::Future;
use std::time::Duration;

use serde_json::json;
use shoal_kube::{resources, Objects};

pub(crate) fn res(group: &str, plural: &str) -> resources::Resource {
    resources::find(group, plural).expect("built-in resource")
}

pub(crate) async fn add_node(objects: &Objects, name: &str, cpu: &str, memory: &str) {
    let node = json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/arch": "amd64"}},
        "spec": {},
        "status": {
            "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
            "capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}],
        },
    });
    objects.create(&res("", "nodes"), None, node).await.expect("create node");
}

pub(crate) async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..1200 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}
