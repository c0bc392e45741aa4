use serde_json::{json, Value};

use super::*;

fn now() -> Timestamp {
    "2025-06-01T12:00:00Z".parse().unwrap()
}

/// `secs` seconds before [`now`], as an RFC 3339 string.
fn ago(secs: i64) -> String {
    Timestamp::from_second(now().as_second() - secs).unwrap().to_string()
}

fn cells(group: &str, kind: &str, obj: Value) -> Vec<Value> {
    let t = table(group, kind, &[obj], IncludeObject::Metadata, now());
    t["rows"][0]["cells"].as_array().cloned().unwrap_or_default()
}

fn headers(group: &str, kind: &str) -> Vec<(String, i64)> {
    let t = table(group, kind, &[], IncludeObject::None, now());
    t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c["priority"].as_i64().unwrap()))
        .collect()
}

#[test]
fn human_durations_like_kubectl() {
    for (secs, want) in [
        (-5, "<invalid>"),
        (-1, "0s"),
        (5, "5s"),
        (119, "119s"),
        (182, "3m2s"),
        (600, "10m"),
        (3 * 3600 + 5 * 60, "3h5m"),
        (20 * 3600, "20h"),
        (2 * 86400 + 3 * 3600, "2d3h"),
        (30 * 86400, "30d"),
        (3 * 365 * 86400 + 86400, "3y1d"),
        (10 * 365 * 86400, "10y"),
    ] {
        assert_eq!(human_duration(secs), want, "{secs}");
    }
}

#[test]
fn table_shape_and_partial_object_metadata() {
    let obj = json!({"metadata": {"name": "a", "namespace": "ns", "labels": {"x": "y"}, "creationTimestamp": ago(5)}, "data": {"k": "v"}});
    let t = table("", "ConfigMap", std::slice::from_ref(&obj), IncludeObject::Metadata, now());
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
    assert_eq!(
        t["columnDefinitions"][0],
        json!({"name": "Name", "type": "string", "format": "name", "description": NAME_DESC, "priority": 0})
    );
    assert_eq!(t["rows"][0]["cells"], json!(["a", 1, "5s"]));
    assert_eq!(
        t["rows"][0]["object"],
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
    );
    let t = table("", "ConfigMap", std::slice::from_ref(&obj), IncludeObject::Object, now());
    assert_eq!(t["rows"][0]["object"], obj);
    let t = table("", "ConfigMap", &[obj], IncludeObject::None, now());
    assert!(t["rows"][0].get("object").is_none());
    assert_eq!(IncludeObject::parse("Object"), Some(IncludeObject::Object));
    assert_eq!(IncludeObject::parse("bogus"), None);
}

fn pod_with(status: Value) -> Value {
    json!({"metadata": {"name": "p", "creationTimestamp": ago(3600)},
        "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
        "status": status})
}

#[test]
fn pod_columns_and_statuses() {
    assert_eq!(
        headers("", "Pod"),
        [
            ("Name", 0),
            ("Ready", 0),
            ("Status", 0),
            ("Restarts", 0),
            ("Age", 0),
            ("IP", 1),
            ("Node", 1),
            ("Nominated Node", 1),
            ("Readiness Gates", 1)
        ]
        .map(|(n, p)| (n.to_string(), p))
    );
    let running = json!({"phase": "Running", "podIPs": [{"ip": "10.0.0.5"}], "containerStatuses": [
        {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}, "lastState": {"terminated": {"finishedAt": ago(125)}}},
        {"name": "b", "ready": true, "restartCount": 0, "state": {"running": {}}}]});
    assert_eq!(
        cells("", "Pod", pod_with(running)),
        json!(["p", "2/2", "Running", "2 (2m5s ago)", "60m", "10.0.0.5", "n1", "<none>", "<none>"])
            .as_array()
            .unwrap()
            .clone()
    );

    let pending = json!({"phase": "Pending", "containerStatuses": [
        {"name": "a", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]});
    assert_eq!(cells("", "Pod", pod_with(pending))[1..4], [json!("0/2"), json!("ContainerCreating"), json!("0")]);

    let crash = json!({"phase": "Running", "containerStatuses": [
        {"name": "a", "ready": false, "restartCount": 5, "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"finishedAt": ago(30), "reason": "Error"}}},
        {"name": "b", "ready": true, "restartCount": 0, "state": {"running": {}}}]});
    assert_eq!(
        cells("", "Pod", pod_with(crash))[1..4],
        [json!("1/2"), json!("CrashLoopBackOff"), json!("5 (30s ago)")]
    );

    let oom = json!({"phase": "Running", "containerStatuses": [
        {"name": "a", "restartCount": 0, "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]});
    assert_eq!(cells("", "Pod", pod_with(oom))[2], json!("OOMKilled"));

    let done = json!({"phase": "Succeeded", "containerStatuses": [
        {"name": "a", "restartCount": 0, "state": {"terminated": {"reason": "Completed", "exitCode": 0}}}]});
    let t = table("", "Pod", &[pod_with(done)], IncludeObject::None, now());
    assert_eq!(t["rows"][0]["cells"][2], "Completed");
    assert_eq!(t["rows"][0]["conditions"][0]["reason"], "Succeeded");

    let exit = json!({"phase": "Failed", "containerStatuses": [
        {"name": "a", "restartCount": 0, "state": {"terminated": {"exitCode": 3}}}]});
    assert_eq!(cells("", "Pod", pod_with(exit))[2], json!("ExitCode:3"));

    let mut terminating = pod_with(json!({"phase": "Running"}));
    terminating["metadata"]["deletionTimestamp"] = json!(ago(1));
    assert_eq!(cells("", "Pod", terminating)[2], json!("Terminating"));

    let mut init = pod_with(json!({"phase": "Pending", "initContainerStatuses": [
        {"name": "i", "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}]}));
    init["spec"]["initContainers"] = json!([{"name": "i"}]);
    assert_eq!(cells("", "Pod", init)[2], json!("Init:0/1"));

    let mut gates = pod_with(json!({"phase": "Running", "conditions": [{"type": "g1", "status": "True"}]}));
    gates["spec"]["readinessGates"] = json!([{"conditionType": "g1"}, {"conditionType": "g2"}]);
    assert_eq!(cells("", "Pod", gates)[8], json!("1/2"));
}

#[test]
fn workload_printers() {
    let dep = json!({"metadata": {"name": "web", "creationTimestamp": ago(182)},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]}]},
            "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}, {"name": "side", "image": "busybox"}]}}},
        "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
    assert_eq!(
        cells("apps", "Deployment", dep),
        vec![
            json!("web"),
            json!("2/3"),
            json!(3),
            json!(2),
            json!("3m2s"),
            json!("nginx,side"),
            json!("nginx:1.27,busybox"),
            json!("app=web,tier in (a,b)")
        ]
    );
    assert_eq!(headers("apps", "Deployment")[2].0, "Up-to-date");

    let rs = json!({"metadata": {"name": "web-1", "creationTimestamp": ago(10)},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
        "status": {"replicas": 2, "readyReplicas": 1}});
    assert_eq!(
        cells("apps", "ReplicaSet", rs),
        vec![json!("web-1"), json!(2), json!(2), json!(1), json!("10s"), json!("c"), json!("i"), json!("app=web")]
    );

    let ds = json!({"metadata": {"name": "d", "creationTimestamp": ago(10)},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}, "containers": [{"name": "c", "image": "i"}]}}},
        "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2, "updatedNumberScheduled": 3, "numberAvailable": 2}});
    assert_eq!(
        cells("apps", "DaemonSet", ds),
        vec![
            json!("d"),
            json!(3),
            json!(3),
            json!(2),
            json!(3),
            json!(2),
            json!("kubernetes.io/os=linux"),
            json!("10s"),
            json!("c"),
            json!("i"),
            json!("a=b")
        ]
    );

    let sts = json!({"metadata": {"name": "s", "creationTimestamp": ago(10)}, "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}, "status": {"readyReplicas": 3}});
    assert_eq!(cells("apps", "StatefulSet", sts), vec![json!("s"), json!("3/3"), json!("10s"), json!("c"), json!("i")]);

    let cr = json!({"metadata": {"name": "d-5d8", "creationTimestamp": ago(10), "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "d", "controller": true}]}, "revision": 2});
    assert_eq!(
        cells("apps", "ControllerRevision", cr),
        vec![json!("d-5d8"), json!("daemonset.apps/d"), json!(2), json!("10s")]
    );
}

#[test]
fn job_and_cronjob_printers() {
    let job = json!({"metadata": {"name": "j", "creationTimestamp": ago(100)},
        "spec": {"completions": 1, "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}, "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}}},
        "status": {"succeeded": 1, "startTime": ago(100), "completionTime": ago(90), "conditions": [{"type": "Complete", "status": "True"}]}});
    assert_eq!(
        cells("batch", "Job", job),
        vec![
            json!("j"),
            json!("Complete"),
            json!("1/1"),
            json!("10s"),
            json!("100s"),
            json!("c"),
            json!("busybox"),
            json!("batch.kubernetes.io/controller-uid=u")
        ]
    );
    let running = json!({"metadata": {"name": "j2", "creationTimestamp": ago(5)}, "spec": {"parallelism": 2, "template": {"spec": {"containers": []}}}, "status": {"startTime": ago(5)}});
    assert_eq!(cells("batch", "Job", running)[1..4], [json!("Running"), json!("0/1 of 2"), json!("5s")]);
    let failed = json!({"metadata": {"name": "j3"}, "spec": {}, "status": {"conditions": [{"type": "Failed", "status": "True"}]}});
    let c = cells("batch", "Job", failed);
    assert_eq!(c[1], json!("Failed"));
    assert_eq!(c[4], json!("<unknown>"));
    assert_eq!(c[7], json!("<none>"));

    let cj = json!({"metadata": {"name": "cj", "creationTimestamp": ago(600)},
        "spec": {"schedule": "*/5 * * * *", "suspend": false, "jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}},
        "status": {"active": [{"name": "x"}], "lastScheduleTime": ago(65)}});
    assert_eq!(
        cells("batch", "CronJob", cj),
        vec![
            json!("cj"),
            json!("*/5 * * * *"),
            json!("<none>"),
            json!("False"),
            json!(1),
            json!("65s"),
            json!("10m"),
            json!("c"),
            json!("busybox"),
            json!("<none>")
        ]
    );
    assert_eq!(headers("batch", "CronJob")[2].0, "Timezone");
}

#[test]
fn service_printer() {
    let svc = |spec: Value, status: Value| json!({"metadata": {"name": "s", "creationTimestamp": ago(10)}, "spec": spec, "status": status});
    let c = cells(
        "",
        "Service",
        svc(
            json!({"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}], "selector": {"k8s-app": "dns"}}),
            json!({}),
        ),
    );
    assert_eq!(
        c,
        vec![
            json!("s"),
            json!("ClusterIP"),
            json!("10.96.0.10"),
            json!("<none>"),
            json!("53/UDP,53/TCP"),
            json!("10s"),
            json!("k8s-app=dns")
        ]
    );
    let c = cells(
        "",
        "Service",
        svc(
            json!({"type": "NodePort", "clusterIPs": ["10.96.0.2"], "ports": [{"port": 80, "nodePort": 30123, "protocol": "TCP"}]}),
            json!({}),
        ),
    );
    assert_eq!(c[3..5], [json!("<none>"), json!("80:30123/TCP")]);
    assert_eq!(c[6], json!("<none>"));
    let c = cells(
        "",
        "Service",
        svc(
            json!({"type": "LoadBalancer", "clusterIPs": ["10.96.0.3"], "ports": [{"port": 80, "nodePort": 31000, "protocol": "TCP"}]}),
            json!({"loadBalancer": {}}),
        ),
    );
    assert_eq!(c[3], json!("<pending>"));
    let c = cells(
        "",
        "Service",
        svc(
            json!({"type": "LoadBalancer", "clusterIPs": ["10.96.0.3"]}),
            json!({"loadBalancer": {"ingress": [{"ip": "192.168.1.240"}, {"hostname": "lb.example"}]}}),
        ),
    );
    assert_eq!(c[3..5], [json!("192.168.1.240,lb.example"), json!("<none>")]);
    let c = cells("", "Service", svc(json!({"type": "ExternalName", "externalName": "db.example.com"}), json!({})));
    assert_eq!(c[2..4], [json!("<none>"), json!("db.example.com")]);
    let c = cells("", "Service", svc(json!({"type": "ClusterIP", "clusterIPs": ["None"]}), json!({})));
    assert_eq!(c[2], json!("None"));
}

#[test]
fn endpoints_and_slices() {
    let ep = json!({"metadata": {"name": "e", "creationTimestamp": ago(1)}, "subsets": [{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"ip": "10.0.0.3"}, {"ip": "10.0.0.4"}], "ports": [{"port": 80}]}]});
    assert_eq!(cells("", "Endpoints", ep)[1], json!("10.0.0.1:80,10.0.0.2:80,10.0.0.3:80 + 1 more..."));
    let empty = json!({"metadata": {"name": "e"}});
    assert_eq!(cells("", "Endpoints", empty)[1], json!("<none>"));
    let es = json!({"metadata": {"name": "web-abc", "creationTimestamp": ago(1)}, "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}]});
    assert_eq!(
        cells("discovery.k8s.io", "EndpointSlice", es),
        vec![json!("web-abc"), json!("IPv4"), json!("8080"), json!("10.0.0.1,10.0.0.2"), json!("1s")]
    );
    let es = json!({"metadata": {"name": "x"}, "addressType": "IPv4"});
    assert_eq!(cells("discovery.k8s.io", "EndpointSlice", es)[2..4], [json!("<unset>"), json!("<unset>")]);
}

#[test]
fn node_printer() {
    let node = json!({"metadata": {"name": "pi1", "creationTimestamp": ago(2 * 86400 + 3 * 3600), "labels": {"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/worker": ""}},
        "spec": {"unschedulable": true},
        "status": {"conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": "192.168.1.10"}, {"type": "Hostname", "address": "pi1"}],
            "nodeInfo": {"kubeletVersion": "v1.33.0", "osImage": "Debian GNU/Linux 12 (bookworm)", "kernelVersion": "6.6.31", "containerRuntimeVersion": "shoal://0.1.0"}}});
    assert_eq!(
        cells("", "Node", node),
        vec![
            json!("pi1"),
            json!("Ready,SchedulingDisabled"),
            json!("control-plane,worker"),
            json!("2d3h"),
            json!("v1.33.0"),
            json!("192.168.1.10"),
            json!("<none>"),
            json!("Debian GNU/Linux 12 (bookworm)"),
            json!("6.6.31"),
            json!("shoal://0.1.0")
        ]
    );
    let bare = json!({"metadata": {"name": "n"}});
    let c = cells("", "Node", bare);
    assert_eq!(c[1..3], [json!("Unknown"), json!("<none>")]);
    assert_eq!(c[7], json!("<unknown>"));
}

#[test]
fn small_core_printers() {
    let ns = json!({"metadata": {"name": "default", "creationTimestamp": ago(60)}, "status": {"phase": "Active"}});
    assert_eq!(cells("", "Namespace", ns), vec![json!("default"), json!("Active"), json!("60s")]);
    let sec =
        json!({"metadata": {"name": "s", "creationTimestamp": ago(60)}, "type": "Opaque", "data": {"a": "", "b": ""}});
    assert_eq!(cells("", "Secret", sec), vec![json!("s"), json!("Opaque"), json!(2), json!("60s")]);
    let cm = json!({"metadata": {"name": "c"}, "data": {"a": "1"}, "binaryData": {"b": "AA=="}});
    assert_eq!(cells("", "ConfigMap", cm)[1], json!(2));
    let sa = json!({"metadata": {"name": "default", "creationTimestamp": ago(60)}});
    assert_eq!(cells("", "ServiceAccount", sa), vec![json!("default"), json!(0), json!("60s")]);
    let lease = json!({"metadata": {"name": "l", "creationTimestamp": ago(60)}, "spec": {"holderIdentity": "pi1"}});
    assert_eq!(cells("coordination.k8s.io", "Lease", lease), vec![json!("l"), json!("pi1"), json!("60s")]);
}

#[test]
fn event_printer() {
    let ev = json!({"metadata": {"name": "p.1"}, "type": "Normal", "reason": "Pulled", "message": " Successfully pulled image \n",
        "involvedObject": {"kind": "Pod", "name": "web-1", "fieldPath": "spec.containers{nginx}"},
        "source": {"component": "kubelet", "host": "pi1"}, "firstTimestamp": ago(300), "lastTimestamp": ago(30), "count": 4});
    assert_eq!(
        cells("", "Event", ev),
        vec![
            json!("30s"),
            json!("Normal"),
            json!("Pulled"),
            json!("pod/web-1"),
            json!("spec.containers{nginx}"),
            json!("kubelet, pi1"),
            json!("Successfully pulled image"),
            json!("5m"),
            json!(4),
            json!("p.1")
        ]
    );
    let new_api = json!({"metadata": {"name": "e"}, "type": "Warning", "reason": "X", "involvedObject": {"kind": "Node"}, "eventTime": "2025-06-01T11:59:50.000000Z", "reportingComponent": "shoal"});
    let c = cells("", "Event", new_api);
    assert_eq!(c[0], json!("10s"));
    assert_eq!(c[3], json!("node"));
    assert_eq!(c[5], json!("shoal"));
    assert_eq!(c[8], json!(1));
    assert_eq!(headers("", "Event")[9], ("Name".to_string(), 1));
}

#[test]
fn networking_storage_and_policy_printers() {
    let ing = json!({"metadata": {"name": "i", "creationTimestamp": ago(1)}, "spec": {"ingressClassName": "nginx", "tls": [{"hosts": ["foo.com"]}], "rules": [{"host": "foo.com"}, {"http": {}}]}, "status": {"loadBalancer": {"ingress": [{"ip": "192.168.1.240"}]}}});
    assert_eq!(
        cells("networking.k8s.io", "Ingress", ing),
        vec![json!("i"), json!("nginx"), json!("foo.com"), json!("192.168.1.240"), json!("80, 443"), json!("1s")]
    );
    let ing = json!({"metadata": {"name": "i"}, "spec": {"rules": [{"http": {}}]}});
    assert_eq!(cells("networking.k8s.io", "Ingress", ing)[1..5], [json!("<none>"), json!("*"), json!(""), json!("80")]);

    let pv = json!({"metadata": {"name": "pv1", "creationTimestamp": ago(1)}, "spec": {"capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteMany", "ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Retain", "claimRef": {"namespace": "default", "name": "data"}, "storageClassName": "local"}, "status": {"phase": "Bound"}});
    assert_eq!(
        cells("", "PersistentVolume", pv),
        vec![
            json!("pv1"),
            json!("5Gi"),
            json!("RWO,RWX"),
            json!("Retain"),
            json!("Bound"),
            json!("default/data"),
            json!("local"),
            json!("<unset>"),
            json!(""),
            json!("1s"),
            json!("<unset>")
        ]
    );
    let pvc = json!({"metadata": {"name": "data", "creationTimestamp": ago(1)}, "spec": {"volumeName": "pv1", "storageClassName": "local", "volumeMode": "Filesystem"}, "status": {"phase": "Bound", "capacity": {"storage": "5Gi"}, "accessModes": ["ReadWriteOnce"]}});
    assert_eq!(
        cells("", "PersistentVolumeClaim", pvc),
        vec![
            json!("data"),
            json!("Bound"),
            json!("pv1"),
            json!("5Gi"),
            json!("RWO"),
            json!("local"),
            json!("<unset>"),
            json!("1s"),
            json!("Filesystem")
        ]
    );

    let pdb = json!({"metadata": {"name": "p", "creationTimestamp": ago(1)}, "spec": {"minAvailable": 1}, "status": {"disruptionsAllowed": 0}});
    assert_eq!(
        cells("policy", "PodDisruptionBudget", pdb),
        vec![json!("p"), json!("1"), json!("N/A"), json!(0), json!("1s")]
    );

    let hpa = json!({"metadata": {"name": "h", "creationTimestamp": ago(1)}, "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 1, "maxReplicas": 5,
        "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]},
        "status": {"currentReplicas": 2, "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 12}}}]}});
    assert_eq!(
        cells("autoscaling", "HorizontalPodAutoscaler", hpa),
        vec![json!("h"), json!("Deployment/web"), json!("cpu: 12%/80%"), json!("1"), json!(5), json!(2), json!("1s")]
    );
}

#[test]
fn crds_custom_resources_and_default() {
    let crd = json!({"metadata": {"name": "ipaddresspools.metallb.io", "creationTimestamp": "2025-05-01T10:00:00Z"},
        "spec": {"versions": [{"name": "v1beta1", "additionalPrinterColumns": [
            {"name": "Auto Assign", "type": "boolean", "jsonPath": ".spec.autoAssign"},
            {"name": "Addresses", "type": "string", "jsonPath": ".spec.addresses"},
            {"name": "First", "type": "string", "jsonPath": ".spec.addresses[0]", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]}]}});
    assert_eq!(
        cells("apiextensions.k8s.io", "CustomResourceDefinition", crd.clone()),
        vec![json!("ipaddresspools.metallb.io"), json!("2025-05-01T10:00:00Z")]
    );
    assert_eq!(headers("apiextensions.k8s.io", "CustomResourceDefinition")[1].0, "Created At");

    let cols = printer_columns(&crd, "v1beta1");
    assert_eq!(cols.len(), 4);
    let pool = json!({"metadata": {"name": "pool", "creationTimestamp": ago(7)}, "spec": {"autoAssign": true, "addresses": ["192.168.1.240-192.168.1.250"]}});
    let t = custom_table(&cols, std::slice::from_ref(&pool), IncludeObject::Metadata, now());
    assert_eq!(
        t["rows"][0]["cells"],
        json!(["pool", true, "[\"192.168.1.240-192.168.1.250\"]", "192.168.1.240-192.168.1.250", "7s"])
    );
    assert_eq!(t["columnDefinitions"][3]["priority"], 1);

    let default_cols = printer_columns(&crd, "v9");
    let t = custom_table(&default_cols, std::slice::from_ref(&pool), IncludeObject::Metadata, now());
    assert_eq!(t["rows"][0]["cells"], json!(["pool", "7s"]));

    assert_eq!(cells("metallb.io", "L2Advertisement", pool), vec![json!("pool"), json!("7s")]);
    assert_eq!(headers("x", "Y"), vec![("Name".to_string(), 0), ("Age".to_string(), 0)]);
}

#[test]
fn hostile_objects_do_not_panic() {
    let weird = [
        json!(null),
        json!(1),
        json!({"metadata": 5, "spec": [], "status": {"containerStatuses": "x"}}),
        json!({"metadata": {"creationTimestamp": "not a time"}}),
    ];
    for (g, k) in [
        ("", "Pod"),
        ("apps", "Deployment"),
        ("", "Service"),
        ("", "Node"),
        ("", "Event"),
        ("batch", "Job"),
        ("batch", "CronJob"),
        ("", "Endpoints"),
        ("autoscaling", "HorizontalPodAutoscaler"),
        ("", "PersistentVolume"),
    ] {
        let t = table(g, k, &weird, IncludeObject::Metadata, now());
        assert_eq!(t["rows"].as_array().map(Vec::len), Some(4));
    }
}

#[test]
fn every_printer_fills_every_column() {
    let kinds = [
        ("", "Pod"),
        ("apps", "Deployment"),
        ("apps", "ReplicaSet"),
        ("", "ReplicationController"),
        ("apps", "DaemonSet"),
        ("apps", "StatefulSet"),
        ("apps", "ControllerRevision"),
        ("batch", "Job"),
        ("batch", "CronJob"),
        ("", "Service"),
        ("", "Endpoints"),
        ("discovery.k8s.io", "EndpointSlice"),
        ("", "Node"),
        ("", "Namespace"),
        ("", "ConfigMap"),
        ("", "Secret"),
        ("", "ServiceAccount"),
        ("", "Event"),
        ("networking.k8s.io", "Ingress"),
        ("networking.k8s.io", "IngressClass"),
        ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"),
        ("", "PersistentVolume"),
        ("", "PersistentVolumeClaim"),
        ("coordination.k8s.io", "Lease"),
        ("autoscaling", "HorizontalPodAutoscaler"),
        ("policy", "PodDisruptionBudget"),
        ("apiextensions.k8s.io", "CustomResourceDefinition"),
        ("example.com", "Widget"),
    ];
    for (g, k) in kinds {
        let t =
            table(g, k, &[json!({"metadata": {"name": "x", "creationTimestamp": ago(1)}})], IncludeObject::None, now());
        let cols = t["columnDefinitions"].as_array().map(Vec::len);
        let cells = t["rows"][0]["cells"].as_array().map(Vec::len);
        assert_eq!(cols, cells, "{g}/{k}");
    }
}

fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        prop_oneof![Just("2025-06-01T11:00:00Z".to_string()), Just("True".to_string()), "\\PC{0,6}"]
            .prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 40, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("metadata".to_string()),
                    Just("spec".to_string()),
                    Just("status".to_string()),
                    Just("containerStatuses".to_string()),
                    Just("state".to_string()),
                    Just("terminated".to_string()),
                    Just("ports".to_string()),
                    Just("conditions".to_string()),
                    Just("type".to_string()),
                    Just("creationTimestamp".to_string()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest::proptest! {
    #[test]
    fn printers_never_panic(obj in arb_json(), path in "\\PC{0,12}") {
        for (g, k) in [("", "Pod"), ("apps", "Deployment"), ("", "Service"), ("", "Node"), ("", "Event"), ("batch", "Job"),
            ("batch", "CronJob"), ("", "Endpoints"), ("discovery.k8s.io", "EndpointSlice"), ("autoscaling", "HorizontalPodAutoscaler"),
            ("", "PersistentVolume"), ("apps", "DaemonSet"), ("networking.k8s.io", "Ingress")] {
            let _ = table(g, k, std::slice::from_ref(&obj), IncludeObject::Metadata, now());
        }
        let col = PrinterColumn { name: "X".into(), type_: "date".into(), format: String::new(), description: String::new(), priority: 0, json_path: path };
        let _ = custom_table(&[col], std::slice::from_ref(&obj), IncludeObject::Object, now());
        let _ = printer_columns(&obj, "v1");
    }
}
