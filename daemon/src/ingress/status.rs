//! What the router publishes: IngressClass `shoal`, the Service `shoal-system/ingress` (type
//! LoadBalancer, one EndpointSlice per node pointing at that node's router), the addresses in
//! `status.loadBalancer.ingress` of every Ingress served, and Warning events.
use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::{json, Value};
use shoal_kube::{resources, Objects, Resource, UpdateMode};

use super::table::{self, Warning};

pub(crate) const NAMESPACE: &str = "shoal-system";
pub(crate) const SERVICE: &str = "ingress";
const COMPONENT: &str = "shoal-ingress";

fn res(group: &str, plural: &str) -> Option<Resource> {
    resources::find(group, plural)
}

/// The Service the load-balancer pool gives the ingress VIP through.
pub(crate) fn service(http: u16, https: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/name": "shoal-ingress"}},
        "spec": {
            "type": "LoadBalancer",
            "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": http},
                {"name": "https", "port": 443, "protocol": "TCP", "targetPort": https},
            ],
            "externalTrafficPolicy": "Cluster",
        },
    })
}

/// This node's share of the Service's endpoints.
pub(crate) fn node_slice(node: &str, ip: IpAddr, http: u16, https: u16) -> Value {
    let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{SERVICE}-{node}"),
            "namespace": NAMESPACE,
            "labels": {
                "kubernetes.io/service-name": SERVICE,
                "endpointslice.kubernetes.io/managed-by": "shoal.dev/ingress",
            },
        },
        "addressType": family,
        "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}, "nodeName": node}],
        "ports": [
            {"name": "http", "port": http, "protocol": "TCP"},
            {"name": "https", "port": https, "protocol": "TCP"},
        ],
    })
}

/// Creates what the router needs to exist (idempotent; run by every node at start).
pub(crate) async fn ensure_objects(
    objects: &Objects,
    node: &str,
    ip: IpAddr,
    http: u16,
    https: u16,
    range: &shoal_kube::service_cidr::ServiceCidr,
) -> Result<(), String> {
    let (Some(classes), Some(namespaces), Some(slices)) =
        (res("networking.k8s.io", "ingressclasses"), res("", "namespaces"), res("discovery.k8s.io", "endpointslices"))
    else {
        return Err("ingress resources missing from the resource table".into());
    };
    let exists = |e: &shoal_kube::Error| matches!(e, shoal_kube::Error::AlreadyExists { .. });
    match objects.create(&classes, None, table::ingress_class()).await {
        Ok(_) => tracing::info!(class = table::CLASS, "created the ingress class"),
        Err(e) if exists(&e) => {}
        Err(e) => return Err(format!("create IngressClass {}: {e}", table::CLASS)),
    }
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
    match objects.create(&namespaces, None, ns).await {
        Ok(_) => {}
        Err(e) if exists(&e) => {}
        Err(e) => return Err(format!("create namespace {NAMESPACE}: {e}")),
    }
    match crate::api::create_system_service(objects, service(http, https), range).await {
        Ok(_) => tracing::info!("created the ingress service"),
        Err(reason) if reason.contains("already exists") => {}
        Err(reason) => return Err(format!("create Service {NAMESPACE}/{SERVICE}: {reason}")),
    }
    let want = node_slice(node, ip, http, https);
    let name = format!("{SERVICE}-{node}");
    match objects.create(&slices, Some(NAMESPACE), want.clone()).await {
        Ok(_) => Ok(()),
        Err(e) if exists(&e) => objects
            .modify(&slices, Some(NAMESPACE), &name, UpdateMode::All, |s| {
                if s["endpoints"] == want["endpoints"] && s["ports"] == want["ports"] {
                    return Ok(false);
                }
                s["endpoints"] = want["endpoints"].clone();
                s["ports"] = want["ports"].clone();
                s["addressType"] = want["addressType"].clone();
                Ok(true)
            })
            .await
            .map(|_| ())
            .map_err(|e| format!("update EndpointSlice {NAMESPACE}/{name}: {e}")),
        Err(e) => Err(format!("create EndpointSlice {NAMESPACE}/{name}: {e}")),
    }
}

/// The addresses Ingresses show: the ingress Service's LoadBalancer IPs, else the
/// InternalIPs of the nodes that are not known to be down.
pub(crate) fn addresses(services: &[Value], nodes: &[Value]) -> Vec<String> {
    let lb: BTreeSet<String> = services
        .iter()
        .filter(|s| s["metadata"]["namespace"] == NAMESPACE && s["metadata"]["name"] == SERVICE)
        .flat_map(|s| s["status"]["loadBalancer"]["ingress"].as_array().cloned().unwrap_or_default())
        .filter_map(|i| i["ip"].as_str().map(str::to_string))
        .collect();
    if !lb.is_empty() {
        return lb.into_iter().collect();
    }
    let mut out: BTreeSet<String> = BTreeSet::new();
    for n in nodes {
        let down = n["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "False");
        if down {
            continue;
        }
        if let Some(a) = n["status"]["addresses"].as_array().into_iter().flatten().find(|a| a["type"] == "InternalIP") {
            if let Some(ip) = a["address"].as_str() {
                out.insert(ip.to_string());
            }
        }
    }
    out.into_iter().collect()
}

/// Whether this node writes status and events: the first by name of the nodes not known to
/// be down (so one Warning event per problem, not one per node).
pub(crate) fn is_reporter(nodes: &[Value], me: &str) -> bool {
    let first = nodes
        .iter()
        .filter(|n| {
            !n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "False")
        })
        .filter_map(|n| n["metadata"]["name"].as_str())
        .min();
    first.is_none_or(|f| f == me)
}

/// Sets `status.loadBalancer.ingress` of one Ingress (no write when already so).
pub(crate) async fn set_status(
    objects: &Objects,
    ns: &str,
    name: &str,
    addrs: &[String],
) -> Result<(), shoal_kube::Error> {
    let Some(ings) = res("networking.k8s.io", "ingresses") else { return Ok(()) };
    let want: Vec<Value> = addrs.iter().map(|a| json!({"ip": a})).collect();
    let want = json!({"ingress": want});
    objects
        .modify(&ings, Some(ns), name, UpdateMode::Status, |ing| {
            let cur = &ing["status"]["loadBalancer"];
            if *cur == want || (cur.is_null() && addrs.is_empty()) {
                return Ok(false);
            }
            if !ing["status"].is_object() {
                ing["status"] = json!({});
            }
            ing["status"]["loadBalancer"] = want.clone();
            Ok(true)
        })
        .await
        .map(|_| ())
}

/// Records one Warning event on the Ingress a warning is about.
pub(crate) async fn warn(objects: &Objects, ingress: &Value, w: &Warning) {
    let Some(events) = res("", "events") else { return };
    let mut involved = ingress.clone();
    involved["apiVersion"] = json!("networking.k8s.io/v1");
    involved["kind"] = json!("Ingress");
    crate::reconcile::events::Recorder::new(objects.clone(), events)
        .warning(COMPONENT, &involved, &w.reason, &w.message)
        .await;
}
