//! Endpoints and EndpointSlices of Services with a selector: ready pods as addresses, not-ready
//! ones as notReadyAddresses (slices: `conditions.ready=false`), named target ports resolved per
//! pod. Services without a selector are left to their users.
use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};
use shoal_kube::UpdateMode;

use super::runner::{Action, ControllerSpec, Mapper, ObjKey, ReconcileFuture, Watch};
use super::util::{self, *};
use super::{Context, Kinds, Result};

const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGER: &str = "endpointslice-controller.k8s.io";
const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// (port name, port, protocol) of every service port, as resolved for one pod.
type PortSet = Vec<(String, i64, String)>;

pub(crate) fn spec(k: &Kinds) -> ControllerSpec {
    ControllerSpec {
        kind: "Endpoints",
        primary: k.services.clone(),
        watches: vec![
            Watch { res: k.services.clone(), map: Mapper::Itself },
            Watch { res: k.pods.clone(), map: Mapper::NamespaceIf(has_address) },
        ],
        on_health_change: false,
        workers: 2,
        single_key: None,
        reconcile: |key, ctx| -> ReconcileFuture { Box::pin(reconcile(key, ctx)) },
    }
}

/// Only pods with an IP (or that just lost theirs by going away) change any Endpoints.
fn has_address(ev: &shoal_kube::ObjectEvent) -> bool {
    ev.object["status"]["podIP"].as_str().is_some_and(|ip| !ip.is_empty())
}

/// The container port a service port's targetPort means on one pod.
fn resolve_port(target: &Value, port: &Value, pod: &Value) -> Option<i64> {
    match target {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => {
            if let Ok(n) = name.parse::<i64>() {
                return Some(n);
            }
            pod["spec"]["containers"].as_array()?.iter().find_map(|c| {
                c["ports"].as_array()?.iter().find(|p| p["name"].as_str() == Some(name.as_str()))?["containerPort"]
                    .as_i64()
            })
        }
        _ => port["port"].as_i64(),
    }
}

pub(crate) async fn reconcile(key: ObjKey, ctx: Arc<Context>) -> Result<Action> {
    let k = &ctx.kinds;
    let svc = util::get(&ctx.objects, &k.services, key.ns(), &key.name).await?;
    let selector = svc.as_ref().map(|s| s["spec"]["selector"].clone()).unwrap_or(Value::Null);
    let Some(svc) = svc.filter(|_| selector.as_object().is_some_and(|m| !m.is_empty())) else {
        // No service, or one without a selector: remove what this controller made.
        let ep = util::get(&ctx.objects, &k.endpoints, key.ns(), &key.name).await?;
        if let Some(ep) = ep {
            if ep["metadata"]["labels"][MANAGED_BY].as_str() == Some(MANAGER) {
                util::delete(&ctx.objects, &k.endpoints, key.ns(), &key.name).await?;
            }
        }
        for s in util::list(&ctx.objects, &k.endpointslices, key.ns()).await? {
            if s["metadata"]["labels"][SERVICE_NAME].as_str() == Some(key.name.as_str())
                && s["metadata"]["labels"][MANAGED_BY].as_str() == Some(MANAGER)
            {
                util::delete(&ctx.objects, &k.endpointslices, key.ns(), name_of(&s)).await?;
            }
        }
        return Ok(Action::await_change());
    };
    let sel = json!({"matchLabels": selector});
    let ports: Vec<Value> = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    let publish_not_ready = svc["spec"]["publishNotReadyAddresses"].as_bool() == Some(true);

    // Pods grouped by the ports they resolve to.
    let mut subsets: BTreeMap<PortSet, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    let mut slice_eps: BTreeMap<PortSet, Vec<Value>> = BTreeMap::new();
    for pod in util::list(&ctx.objects, &k.pods, key.ns()).await? {
        if !selector_matches(&sel, labels_of(&pod)) || matches!(pod_phase(&pod), "Succeeded" | "Failed") {
            continue;
        }
        let Some(ip) = pod["status"]["podIP"].as_str().filter(|s| !s.is_empty()) else { continue };
        let mut resolved = Vec::new();
        for p in &ports {
            let target = if p["targetPort"].is_null() { p["port"].clone() } else { p["targetPort"].clone() };
            if let Some(n) = resolve_port(&target, p, &pod) {
                let name = p["name"].as_str().unwrap_or("").to_string();
                let proto = p["protocol"].as_str().unwrap_or("TCP").to_string();
                resolved.push((name, n, proto));
            }
        }
        let terminating = is_deleting(&pod);
        let ready = pod_is_ready(&pod) && !terminating;
        let mut addr = json!({
            "ip": ip,
            "targetRef": {"kind": "Pod", "namespace": namespace_of(&pod), "name": name_of(&pod), "uid": uid_of(&pod)},
        });
        if let Some(n) = pod["spec"]["nodeName"].as_str() {
            addr["nodeName"] = json!(n);
        }
        if let Some(h) = pod["spec"]["hostname"].as_str() {
            addr["hostname"] = json!(h);
        }
        let entry = subsets.entry(resolved.clone()).or_default();
        if ready || (publish_not_ready && !terminating) {
            entry.0.push(addr.clone());
        } else if !terminating {
            entry.1.push(addr.clone());
        }
        let mut ep = json!({
            "addresses": [ip],
            "conditions": {"ready": ready || publish_not_ready, "serving": pod_is_ready(&pod), "terminating": terminating},
            "targetRef": addr["targetRef"],
        });
        if let Some(n) = pod["spec"]["nodeName"].as_str() {
            ep["nodeName"] = json!(n);
        }
        if let Some(h) = pod["spec"]["hostname"].as_str() {
            ep["hostname"] = json!(h);
        }
        slice_eps.entry(resolved).or_default().push(ep);
    }

    let port_json = |ps: &PortSet| -> Vec<Value> {
        ps.iter()
            .map(|(n, p, proto)| {
                let mut v = json!({"port": p, "protocol": proto});
                if !n.is_empty() {
                    v["name"] = json!(n);
                }
                v
            })
            .collect()
    };
    let mut ep_subsets = Vec::new();
    for (ps, (ready, not_ready)) in &subsets {
        if ready.is_empty() && not_ready.is_empty() {
            continue;
        }
        let mut s = json!({"ports": port_json(ps)});
        if !ready.is_empty() {
            s["addresses"] = json!(ready);
        }
        if !not_ready.is_empty() {
            s["notReadyAddresses"] = json!(not_ready);
        }
        ep_subsets.push(s);
    }
    let mut labels = svc["metadata"]["labels"].as_object().cloned().unwrap_or_default();
    labels.insert(MANAGED_BY.into(), json!(MANAGER));
    let ep = json!({
        "metadata": {"name": key.name, "labels": labels.clone()},
        "subsets": ep_subsets,
    });
    upsert(&ctx, &k.endpoints, key.ns(), &key.name, ep, &["subsets", "metadata"]).await?;

    // One slice per distinct port mapping, named deterministically.
    let mut wanted: Vec<String> = Vec::new();
    if slice_eps.is_empty() {
        slice_eps.insert(Vec::new(), Vec::new());
    }
    for (ps, eps) in &slice_eps {
        let id = safe_encode(fnv32a(format!("{ps:?}").as_bytes()));
        let name = format!("{}-{}", key.name, &id[..id.len().min(5)]);
        let mut sl = labels.clone();
        sl.insert(SERVICE_NAME.into(), json!(key.name));
        let slice = json!({
            "metadata": {"name": name, "labels": sl, "ownerReferences": [owner_ref(&svc)]},
            "addressType": "IPv4",
            "endpoints": eps,
            "ports": port_json(ps),
        });
        upsert(&ctx, &k.endpointslices, key.ns(), &name, slice, &["endpoints", "ports", "addressType", "metadata"])
            .await?;
        wanted.push(name);
    }
    for s in util::list(&ctx.objects, &k.endpointslices, key.ns()).await? {
        if s["metadata"]["labels"][SERVICE_NAME].as_str() == Some(key.name.as_str())
            && s["metadata"]["labels"][MANAGED_BY].as_str() == Some(MANAGER)
            && !wanted.iter().any(|w| w == name_of(&s))
        {
            util::delete(&ctx.objects, &k.endpointslices, key.ns(), name_of(&s)).await?;
        }
    }
    Ok(Action::await_change())
}

/// Creates `obj` or replaces the given top-level fields of the stored one.
async fn upsert(
    ctx: &Context,
    res: &shoal_kube::Resource,
    ns: Option<&str>,
    name: &str,
    obj: Value,
    fields: &[&str],
) -> Result<()> {
    let existing = util::get(&ctx.objects, res, ns, name).await?;
    if existing.is_none() {
        match ctx.objects.create(res, ns, obj.clone()).await {
            Ok(_) => return Ok(()),
            Err(shoal_kube::Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(write_err(res, name)(e)),
        }
    }
    util::modify(&ctx.objects, res, ns, name, UpdateMode::All, |o| {
        let mut changed = false;
        for f in fields {
            if *f == "metadata" {
                for mk in ["labels", "ownerReferences"] {
                    if o["metadata"][mk] != obj["metadata"][mk] && !obj["metadata"][mk].is_null() {
                        o["metadata"][mk] = obj["metadata"][mk].clone();
                        changed = true;
                    }
                }
            } else if o[*f] != obj[*f] {
                o[*f] = obj[*f].clone();
                changed = true;
            }
        }
        changed
    })
    .await?;
    Ok(())
}
