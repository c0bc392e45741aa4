//! The `kubernetes` Service in `default`: its ClusterIP is the first address of the service
//! range (`[network] service_cidr`, 10.43.0.1 by default), port 443 to the API server's 6443 on every live node. Its Endpoints list the
//! InternalIP of each node that gossip sees alive (or, before gossip has an opinion, whose
//! `Ready` condition is True), so in-cluster clients reach the API through the Service proxy.
use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{json, Value};
use shoal_kube::{ObjectEvent, UpdateMode};

use super::runner::{Action, ControllerSpec, Mapper, ObjKey, ReconcileFuture, Watch};
use super::util::{self, write_err};
use super::{Context, Error, Kinds, Result};

const NAMESPACE: &str = "default";
const NAME: &str = "kubernetes";
/// Where every node serves the API.
pub(crate) const API_PORT: i64 = 6443;

pub(crate) fn spec(k: &Kinds) -> ControllerSpec {
    ControllerSpec {
        kind: "KubernetesService",
        primary: k.services.clone(),
        watches: vec![
            Watch { res: k.nodes.clone(), map: Mapper::Custom(always) },
            Watch { res: k.services.clone(), map: Mapper::Custom(if_ours) },
            Watch { res: k.endpoints.clone(), map: Mapper::Custom(if_ours) },
        ],
        on_health_change: true,
        workers: 1,
        single_key: Some(NAME),
        reconcile: |key, ctx| -> ReconcileFuture { Box::pin(reconcile(key, ctx)) },
    }
}

fn key() -> Vec<ObjKey> {
    vec![ObjKey::new(None, NAME)]
}

fn always(_: &ObjectEvent) -> Vec<ObjKey> {
    key()
}

fn if_ours(ev: &ObjectEvent) -> Vec<ObjKey> {
    let m = &ev.object["metadata"];
    if m["namespace"].as_str() == Some(NAMESPACE) && m["name"].as_str() == Some(NAME) {
        key()
    } else {
        Vec::new()
    }
}

/// The Service as the cluster creates it.
pub(crate) fn service(range: &shoal_kube::service_cidr::ServiceCidr) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": NAME,
            "namespace": NAMESPACE,
            "labels": {"component": "apiserver", "provider": "kubernetes"},
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": range.kubernetes_ip().to_string(),
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": API_PORT}],
            "sessionAffinity": "None",
        },
    })
}

/// The address a node serves the API on: its InternalIP (else its first address).
fn node_address(node: &Value) -> Option<String> {
    let addrs = node["status"]["addresses"].as_array()?;
    addrs
        .iter()
        .find(|a| a["type"] == "InternalIP")
        .or_else(|| addrs.first())
        .and_then(|a| a["address"].as_str())
        .map(String::from)
}

fn node_ready(node: &Value) -> bool {
    node["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// The subsets of the Endpoints for these live node addresses (none: no subsets).
pub(crate) fn subsets(addresses: &BTreeSet<String>) -> Value {
    if addresses.is_empty() {
        return json!([]);
    }
    let addrs: Vec<Value> = addresses.iter().map(|ip| json!({"ip": ip})).collect();
    json!([{"addresses": addrs, "ports": [{"name": "https", "port": API_PORT, "protocol": "TCP"}]}])
}

pub(crate) async fn reconcile(_key: ObjKey, ctx: Arc<Context>) -> Result<Action> {
    let k = &ctx.kinds;
    if util::get(&ctx.objects, &k.namespaces, None, NAMESPACE).await?.is_none() {
        return Ok(Action::requeue(std::time::Duration::from_secs(1)));
    }
    if util::get(&ctx.objects, &k.services, Some(NAMESPACE), NAME).await?.is_none() {
        let range = &ctx.config.service_cidr;
        match crate::api::create_system_service(&ctx.objects, service(range), range).await {
            Ok(_) => tracing::info!(ip = %range.kubernetes_ip(), "created the kubernetes service"),
            Err(reason) if reason.contains("already exists") => {}
            Err(reason) => return Err(Error::InvalidSpec { what: "the kubernetes Service".into(), reason }),
        }
    }
    let health = ctx.health.borrow().clone();
    let live: BTreeSet<String> = util::list(&ctx.objects, &k.nodes, None)
        .await?
        .iter()
        .filter(|n| match health.get(util::name_of(n)) {
            Some(alive) => *alive,
            None => node_ready(n),
        })
        .filter_map(node_address)
        .collect();
    let want = subsets(&live);
    match util::get(&ctx.objects, &k.endpoints, Some(NAMESPACE), NAME).await? {
        None => {
            let ep = json!({
                "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                "subsets": want,
            });
            match ctx.objects.create(&k.endpoints, Some(NAMESPACE), ep).await {
                Ok(_) | Err(shoal_kube::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(write_err(&k.endpoints, NAME)(e)),
            }
        }
        Some(ep) if ep["subsets"] == want || (ep["subsets"].is_null() && want == json!([])) => {}
        Some(_) => {
            util::modify(&ctx.objects, &k.endpoints, Some(NAMESPACE), NAME, UpdateMode::Spec, |ep| {
                ep["subsets"] = want.clone();
                true
            })
            .await?;
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use shoal_kube::Objects;
    use shoal_store::Store;

    fn node(name: &str, ip: &str) -> Value {
        json!({"metadata": {"name": name}, "status": {"addresses": [{"type": "InternalIP", "address": ip}], "conditions": [{"type": "Ready", "status": "True"}]}})
    }

    #[tokio::test]
    async fn keeps_the_service_and_its_endpoints_to_the_live_nodes() {
        let objects = Objects::new(Store::in_memory());
        let (health, rx) = tokio::sync::watch::channel(BTreeMap::from([
            ("n1".to_string(), true),
            ("n2".to_string(), true),
            ("n3".to_string(), false),
        ]));
        let ctx = Context::new(objects.clone(), rx, super::super::ControllerConfig::default()).unwrap();
        let k = ctx.kinds.clone();
        objects.create(&k.namespaces, None, json!({"metadata": {"name": "default"}})).await.unwrap();
        for (n, ip) in [("n1", "10.77.0.1"), ("n2", "10.77.0.2"), ("n3", "10.77.0.3")] {
            objects.create(&k.nodes, None, node(n, ip)).await.unwrap();
        }
        reconcile(ObjKey::new(None, NAME), ctx.clone()).await.unwrap();
        let svc = objects.get(&k.services, Some(NAMESPACE), NAME).await.unwrap().unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "10.43.0.1");
        assert_eq!(svc["spec"]["ports"][0]["port"], 443);
        let ips = |ep: &Value| ep["subsets"][0]["addresses"].clone();
        let ep = objects.get(&k.endpoints, Some(NAMESPACE), NAME).await.unwrap().unwrap();
        assert_eq!(ips(&ep), json!([{"ip": "10.77.0.1"}, {"ip": "10.77.0.2"}]));
        // n2 goes down, n3 comes back; a deleted Service is recreated with the same address.
        health.send_replace(BTreeMap::from([("n1".into(), true), ("n2".into(), false), ("n3".into(), true)]));
        objects.delete(&k.services, Some(NAMESPACE), NAME, Default::default()).await.unwrap();
        reconcile(ObjKey::new(None, NAME), ctx.clone()).await.unwrap();
        let ep = objects.get(&k.endpoints, Some(NAMESPACE), NAME).await.unwrap().unwrap();
        assert_eq!(ips(&ep), json!([{"ip": "10.77.0.1"}, {"ip": "10.77.0.3"}]));
        let svc = objects.get(&k.services, Some(NAMESPACE), NAME).await.unwrap().unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "10.43.0.1");
    }

    #[test]
    fn endpoints_list_live_node_addresses_on_6443() {
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.77.0.1"}], "conditions": [{"type": "Ready", "status": "True"}]}});
        assert_eq!(node_address(&node).as_deref(), Some("10.77.0.1"));
        assert!(node_ready(&node));
        let live: BTreeSet<String> = ["10.77.0.2".to_string(), "10.77.0.1".to_string()].into();
        let s = subsets(&live);
        assert_eq!(s[0]["addresses"], json!([{"ip": "10.77.0.1"}, {"ip": "10.77.0.2"}]));
        assert_eq!(s[0]["ports"][0]["port"], 6443);
        assert_eq!(subsets(&BTreeSet::new()), json!([]));
        assert_eq!(service(&Default::default())["spec"]["clusterIP"], "10.43.0.1");
        let wide = shoal_kube::service_cidr::ServiceCidr::parse("10.96.0.0/12").unwrap();
        assert_eq!(service(&wide)["spec"]["clusterIP"], "10.96.0.1");
    }
}
