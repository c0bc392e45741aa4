//! The pod lifecycle as a user sees it in the Pod's status and events, driven pass by pass
//! over the fake runtime and network (no root, no kernel): init containers, restarts and
//! back-off, restart policies, failed starts, probes and readiness, teardown, eviction.
use serde_json::{json, Value};
use shoal_runtime::Status;

use super::testing::{Call, OnStart, TestNode};

fn condition(pod: &Value, ty: &str) -> String {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == ty))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("missing")
        .to_string()
}

fn container_status<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["status"][list]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {list} entry for {name}: {:#}", pod["status"]))
}

#[tokio::test]
async fn init_containers_run_in_order_before_the_app_containers() {
    let node = TestNode::new().await;
    node.runtime.on_start("init-a", OnStart::Exit(0));
    node.runtime.on_start("init-b", OnStart::Exit(0));
    let spec = json!({"initContainers": [{"name": "init-a"}, {"name": "init-b"}], "containers": [{"name": "app"}]});
    node.create_pod("web", spec).await;

    let pod = node.sync("web").await;
    assert_eq!(node.runtime.started(), ["init-a"]);
    assert_eq!(pod["status"]["phase"], "Pending");
    assert_eq!(condition(&pod, "Initialized"), "False");
    assert_eq!(condition(&pod, "PodReadyToStartContainers"), "True", "the sandbox is up");
    assert!(pod["status"]["podIP"].as_str().is_some_and(|ip| ip.starts_with("10.42.0.")));

    let pod = node.sync("web").await;
    assert_eq!(node.runtime.started(), ["init-a", "init-b"], "init-b waits for init-a to succeed");
    assert_eq!(container_status(&pod, "initContainerStatuses", "init-a")["state"]["terminated"]["reason"], "Completed");
    assert_eq!(condition(&pod, "Initialized"), "False");

    let pod = node.sync("web").await;
    assert_eq!(node.runtime.started(), ["init-a", "init-b", "app"]);
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(condition(&pod, "Initialized"), "True");
    assert_eq!(condition(&pod, "Ready"), "True", "no readiness probe: ready once running");
    let app = container_status(&pod, "containerStatuses", "app");
    assert!(app["state"]["running"]["startedAt"].is_string());
    assert_eq!(app["restartCount"], 0);

    // Further passes start nothing more.
    node.sync("web").await;
    assert_eq!(node.runtime.started().len(), 3);
    assert!(!node.events("web", "Started").await.is_empty());
}

#[tokio::test]
async fn a_failed_init_container_fails_a_pod_that_never_restarts() {
    let node = TestNode::new().await;
    node.runtime.on_start("setup", OnStart::Exit(3));
    let spec =
        json!({"restartPolicy": "Never", "initContainers": [{"name": "setup"}], "containers": [{"name": "app"}]});
    node.create_pod("job", spec).await;
    node.sync("job").await;
    let pod = node.sync("job").await;
    assert_eq!(pod["status"]["phase"], "Failed");
    assert_eq!(condition(&pod, "Initialized"), "False");
    node.expire_backoff("job").await;
    node.sync("job").await;
    assert_eq!(node.runtime.started(), ["setup"], "the app never starts, the init container never again");
}

#[tokio::test]
async fn a_crashing_container_restarts_with_growing_back_off() {
    let node = TestNode::new().await;
    node.runtime.on_start("app", OnStart::Exit(1));
    node.create_pod("crash", json!({"containers": [{"name": "app"}]})).await;
    node.sync("crash").await;
    assert_eq!(node.runtime.starts("app"), 1);

    // It exited: back-off, no restart yet.
    let pod = node.sync("crash").await;
    let app = container_status(&pod, "containerStatuses", "app");
    assert_eq!(app["state"]["waiting"]["reason"], "CrashLoopBackOff");
    assert_eq!(app["state"]["waiting"]["message"], "back-off 10s restarting failed container=app");
    assert_eq!(app["ready"], false);
    assert_eq!(condition(&pod, "Ready"), "False");
    node.sync("crash").await;
    assert_eq!(node.runtime.starts("app"), 1, "no restart while the back-off runs");
    let backoff = node.events("crash", "BackOff").await;
    assert_eq!(backoff[0]["type"], "Warning");
    assert_eq!(backoff[0]["message"], "Back-off restarting failed container app in pod crash_default");

    // Once the back-off is over it restarts, and crashes again: twice as long.
    node.expire_backoff("crash").await;
    let pod = node.sync("crash").await;
    assert_eq!(node.runtime.starts("app"), 2);
    assert_eq!(container_status(&pod, "containerStatuses", "app")["restartCount"], 1);
    let pod = node.sync("crash").await;
    let app = container_status(&pod, "containerStatuses", "app");
    assert_eq!(app["restartCount"], 1);
    assert_eq!(app["state"]["waiting"]["message"], "back-off 20s restarting failed container=app");
    assert_eq!(app["lastState"]["terminated"]["exitCode"], 1);
    assert_eq!(app["lastState"]["terminated"]["reason"], "Error");

    node.expire_backoff("crash").await;
    node.sync("crash").await;
    let pod = node.sync("crash").await;
    let app = container_status(&pod, "containerStatuses", "app");
    assert_eq!(app["restartCount"], 2);
    assert_eq!(app["state"]["waiting"]["message"], "back-off 40s restarting failed container=app");
    // The old instance was removed before each restart.
    let deletes = node.runtime.calls().iter().filter(|c| matches!(c, Call::Delete(_))).count();
    assert!(deletes >= 2, "{:?}", node.runtime.calls());
}

#[tokio::test]
async fn restart_policy_never_and_on_failure() {
    let node = TestNode::new().await;
    // Never: a failure ends the pod.
    node.runtime.on_start("once", OnStart::Exit(2));
    node.create_pod("never", json!({"restartPolicy": "Never", "containers": [{"name": "once"}]})).await;
    node.sync("never").await;
    let pod = node.sync("never").await;
    assert_eq!(pod["status"]["phase"], "Failed");
    assert_eq!(container_status(&pod, "containerStatuses", "once")["state"]["terminated"]["exitCode"], 2);
    let ready = pod["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned());
    assert_eq!(ready.map(|c| c["reason"].clone()), Some(json!("PodCompleted")));
    node.expire_backoff("never").await;
    node.sync("never").await;
    assert_eq!(node.runtime.starts("once"), 1);

    // Always: even a container that ends well is started again.
    node.create_pod("always", json!({"containers": [{"name": "svc"}]})).await;
    node.sync("always").await;
    node.runtime.exit("svc", 0);
    let pod = node.sync("always").await;
    assert_eq!(container_status(&pod, "containerStatuses", "svc")["state"]["waiting"]["reason"], "CrashLoopBackOff");
    node.expire_backoff("always").await;
    let pod = node.sync("always").await;
    assert_eq!(node.runtime.starts("svc"), 2);
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(container_status(&pod, "containerStatuses", "svc")["lastState"]["terminated"]["reason"], "Completed");

    // OnFailure: success ends the pod ...
    node.runtime.on_start("ok", OnStart::Exit(0));
    node.create_pod("done", json!({"restartPolicy": "OnFailure", "containers": [{"name": "ok"}]})).await;
    node.sync("done").await;
    let pod = node.sync("done").await;
    assert_eq!(pod["status"]["phase"], "Succeeded");
    assert_eq!(container_status(&pod, "containerStatuses", "ok")["state"]["terminated"]["reason"], "Completed");

    // ... a failure restarts the container.
    node.runtime.on_start("flaky", OnStart::Exit(1));
    node.create_pod("retry", json!({"restartPolicy": "OnFailure", "containers": [{"name": "flaky"}]})).await;
    node.sync("retry").await;
    let pod = node.sync("retry").await;
    assert_ne!(pod["status"]["phase"], "Failed");
    assert_eq!(container_status(&pod, "containerStatuses", "flaky")["state"]["waiting"]["reason"], "CrashLoopBackOff");
    node.expire_backoff("retry").await;
    node.sync("retry").await;
    assert_eq!(node.runtime.starts("flaky"), 2);
}

#[tokio::test]
async fn a_failing_start_tells_its_cause_in_the_status_and_a_warning_event() {
    let node = TestNode::new().await;
    node.runtime.on_start("app", OnStart::Fail("exec: \"/bin/app\": no such file or directory".into()));
    node.create_pod("broken", json!({"containers": [{"name": "app"}]})).await;
    let pod = node.sync("broken").await;
    let app = container_status(&pod, "containerStatuses", "app");
    assert_eq!(app["state"]["waiting"]["reason"], "RunContainerError");
    let message = app["state"]["waiting"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("start container ")
            && message.ends_with("-app: exec: \"/bin/app\": no such file or directory"),
        "{message}"
    );
    assert_eq!(pod["status"]["phase"], "Pending");
    let failed = node.events("broken", "Failed").await;
    assert_eq!(failed[0]["type"], "Warning");
    assert_eq!(failed[0]["message"], format!("Error: RunContainerError: {message}"));
    assert_eq!(failed[0]["involvedObject"]["fieldPath"], "spec.containers{app}");

    // An image that is not on the node, with pull policy Never.
    node.create_pod(
        "noimage",
        json!({"containers": [{"name": "app", "image": "shoal.test/absent:1", "imagePullPolicy": "Never"}]}),
    )
    .await;
    let pod = node.sync("noimage").await;
    let app = container_status(&pod, "containerStatuses", "app");
    assert_eq!(app["state"]["waiting"]["reason"], "ErrImageNeverPull");
    assert_eq!(
        app["state"]["waiting"]["message"],
        "Container image \"shoal.test/absent:1\" is not present with pull policy of Never"
    );
    assert!(!node.events("noimage", "Failed").await.is_empty());
}

#[tokio::test]
async fn the_readiness_probe_drives_the_ready_condition() {
    let node = TestNode::new().await;
    node.runtime.on_exec("app", Err("not ready yet".into()));
    let probe = json!({"exec": {"command": ["cat", "/tmp/ready"]}, "failureThreshold": 1});
    node.create_pod("probed", json!({"containers": [{"name": "app", "readinessProbe": probe}]})).await;
    let pod = node.sync("probed").await;
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(condition(&pod, "Ready"), "False");
    assert_eq!(container_status(&pod, "containerStatuses", "app")["ready"], false);
    let unhealthy = node.events("probed", "Unhealthy").await;
    assert_eq!(unhealthy[0]["message"], "Readiness probe failed: not ready yet");
    assert!(node
        .runtime
        .calls()
        .iter()
        .any(|c| matches!(c, Call::Exec(id, cmd) if id.ends_with("-app") && cmd == &["cat", "/tmp/ready"])));

    node.runtime.on_exec("app", Ok(()));
    node.readiness_due("probed", "app").await;
    let pod = node.sync("probed").await;
    assert_eq!(condition(&pod, "Ready"), "True");
    assert_eq!(condition(&pod, "ContainersReady"), "True");
    assert_eq!(container_status(&pod, "containerStatuses", "app")["ready"], true);

    // Not due yet: the last result stands.
    node.runtime.on_exec("app", Err("gone".into()));
    let pod = node.sync("probed").await;
    assert_eq!(condition(&pod, "Ready"), "True");
    node.readiness_due("probed", "app").await;
    let pod = node.sync("probed").await;
    assert_eq!(condition(&pod, "Ready"), "False");
    assert_eq!(node.runtime.starts("app"), 1, "readiness never restarts a container");
}

#[tokio::test]
async fn a_failed_liveness_probe_restarts_the_container() {
    let node = TestNode::new().await;
    let probe = json!({"exec": {"command": ["true"]}, "failureThreshold": 1});
    node.create_pod("live", json!({"containers": [{"name": "app", "livenessProbe": probe}]})).await;
    node.sync("live").await;
    node.runtime.on_exec("app", Err("deadlocked".into()));
    // The liveness probe ran at the first pass (and passed); make it due again.
    let uid = node.pod("live").await["metadata"]["uid"].as_str().unwrap_or_default().to_string();
    let entry = node.agent.state.lock().await.get(&uid).cloned().expect("pod state");
    if let Some(c) = entry.lock().await.containers.get_mut("app") {
        c.probes.liveness = Default::default();
    }
    node.sync("live").await;
    assert_eq!(node.runtime.status("app"), Some(Status::Stopped), "killed");
    let killing = node.events("live", "Killing").await;
    assert_eq!(killing[0]["message"], "Container app failed liveness probe, will be restarted");
    let pod = node.sync("live").await;
    let app = container_status(&pod, "containerStatuses", "app");
    assert_eq!(app["state"]["waiting"]["reason"], "CrashLoopBackOff");
    node.expire_backoff("live").await;
    let pod = node.sync("live").await;
    let app = container_status(&pod, "containerStatuses", "app");
    assert_eq!(app["restartCount"], 1);
    assert_eq!(app["lastState"]["terminated"]["message"], "Container app failed liveness probe, will be restarted");
}

#[tokio::test]
async fn a_deleted_pod_is_torn_down_and_removed() {
    let node = TestNode::new().await;
    node.create_pod("gone", json!({"containers": [{"name": "app"}, {"name": "side"}]})).await;
    node.sync("gone").await;
    assert_eq!(node.net.owners().len(), 1);
    let mut pod = node.pod("gone").await;
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_string();
    pod["metadata"]["deletionTimestamp"] = json!(shoal_kube::objects::now_rfc3339());
    pod["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    node.agent.sync_pod(&uid, Some(pod)).await;
    let calls = node.runtime.calls();
    for name in ["app", "side"] {
        assert!(calls.iter().any(|c| matches!(c, Call::Stop(id) if id.ends_with(&format!("-{name}")))), "{calls:?}");
        assert!(calls.iter().any(|c| matches!(c, Call::Delete(id) if id.ends_with(&format!("-{name}")))), "{calls:?}");
    }
    assert!(calls.iter().any(|c| matches!(c, Call::RemoveSandbox(_))));
    assert!(node.net.owners().is_empty(), "the pod's address is free again");
    assert!(node.agent.state.lock().await.is_empty());
    let left = node.objects.get(&node.agent.pods, Some("default"), "gone").await.expect("get");
    assert!(left.is_none(), "the final delete removed the Pod");
    let killing = node.events("gone", "Killing").await;
    assert!(killing.iter().any(|e| e["message"] == "Stopping container app"));
}

#[tokio::test]
async fn memory_pressure_evicts_the_pod_using_most_first() {
    let node = TestNode::new().await;
    node.create_pod("small", json!({"containers": [{"name": "a"}]})).await;
    node.create_pod("big", json!({"containers": [{"name": "b"}]})).await;
    node.sync("small").await;
    node.sync("big").await;
    node.runtime.set_stats("a", shoal_runtime::Stats { memory_usage_bytes: 10 << 20, ..Default::default() });
    node.runtime.set_stats("b", shoal_runtime::Stats { memory_usage_bytes: 500 << 20, ..Default::default() });
    node.stats.set(super::eviction::Signals {
        memory_available: Some(50 << 20),
        memory_capacity: Some(4 << 30),
        ..Default::default()
    });
    node.agent.check_pressure().await;
    let big = node.pod("big").await;
    assert_eq!(big["status"]["phase"], "Failed");
    assert_eq!(big["status"]["reason"], "Evicted");
    assert_eq!(node.runtime.status("b"), None, "its container is gone");
    let small = node.pod("small").await;
    assert_eq!(small["status"]["phase"], "Running", "one pod per pass");
    assert_eq!(node.runtime.status("a"), Some(Status::Running));
    let n = node.objects.get(&shoal_kube::resources::lookup("", "nodes"), None, "n1").await.expect("get node");
    let n = n.expect("the Node was written");
    assert_eq!(condition(&json!({"status": n["status"]}), "MemoryPressure"), "True");
}

/// A delete elsewhere in the cluster does not make this node resync all its pods; one of its
/// own pods deleted (or force-deleted) does.
#[tokio::test]
async fn only_the_deletes_of_this_nodes_pods_start_a_full_pass() {
    let node = TestNode::new().await;
    let ev = |kind: &'static str, uid: &str, on: &str| shoal_kube::objects::ObjectEvent {
        kind,
        object: json!({"metadata": {"name": uid, "uid": uid}, "spec": {"nodeName": on}}),
        revision: 1,
    };
    let mut mine = std::collections::HashMap::new();
    let mut changed = std::collections::HashMap::new();
    assert!(!node.agent.note_event(ev("ADDED", "a", "n1"), &mut mine, &mut changed));
    assert!(!node.agent.note_event(ev("ADDED", "b", "n2"), &mut mine, &mut changed));
    assert_eq!(mine.keys().collect::<Vec<_>>(), ["a"], "only this node's pods are kept");
    assert!(!node.agent.note_event(ev("DELETED", "b", "n2"), &mut mine, &mut changed), "another node's pod");
    assert!(node.agent.note_event(ev("DELETED", "a", "n1"), &mut mine, &mut changed), "this node's pod");
    assert!(mine.is_empty());
    // Deleted without a node in the event but known here: still a full pass.
    node.agent.note_event(ev("ADDED", "c", "n1"), &mut mine, &mut changed);
    assert!(node.agent.note_event(ev("DELETED", "c", ""), &mut mine, &mut changed));
}
