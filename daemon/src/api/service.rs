//! Services: defaults, validation, and the allocators of ClusterIPs (`[network] service_cidr`) and
//! NodePorts (30000-32767). Each allocation is a key in the store, claimed with a
//! compare-and-swap (`/shoal/alloc/serviceips/<ip>`, `/shoal/alloc/nodeports/<port>`, value
//! `<namespace>/<name>`), so two API nodes never hand out the same one.
use std::net::Ipv4Addr;

use serde_json::{json, Map, Value};
use shoal_kube::Objects;
use shoal_store::{Compare, Op, Txn};

use super::status::{ApiError, Cause};

const IP_PREFIX: &str = "/shoal/alloc/serviceips/";
const PORT_PREFIX: &str = "/shoal/alloc/nodeports/";
use shoal_kube::service_cidr::ServiceCidr;
pub(crate) const NODE_PORT_MIN: u16 = 30000;
pub(crate) const NODE_PORT_MAX: u16 = 32767;

const TYPES: [&str; 4] = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];

fn set_default(m: &mut Map<String, Value>, key: &str, v: Value) {
    if m.get(key).is_none_or(|x| x.is_null()) {
        m.insert(key.into(), v);
    }
}

fn svc_type(obj: &Value) -> &str {
    obj["spec"]["type"].as_str().unwrap_or("ClusterIP")
}

/// Defaults (type, sessionAffinity, port protocol and targetPort, traffic policies); on
/// update, keeps the allocated ClusterIP and NodePorts the client left out.
pub(crate) fn default(obj: &mut Value, old: Option<&Value>) {
    let Some(spec) = obj.get_mut("spec").and_then(|s| s.as_object_mut()) else {
        if let Some(o) = obj.as_object_mut() {
            o.insert("spec".into(), json!({}));
        }
        return default(obj, old);
    };
    set_default(spec, "type", json!("ClusterIP"));
    let ty = spec.get("type").and_then(|t| t.as_str()).unwrap_or("ClusterIP").to_string();
    if ty != "ExternalName" {
        set_default(spec, "sessionAffinity", json!("None"));
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
        set_default(spec, "ipFamilies", json!(["IPv4"]));
        set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if ty == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if spec.get("sessionAffinity").and_then(|s| s.as_str()) == Some("ClientIP") {
        set_default(spec, "sessionAffinityConfig", json!({"clientIP": {"timeoutSeconds": 10800}}));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(|p| p.as_array_mut()) {
        for p in ports.iter_mut().filter_map(|p| p.as_object_mut()) {
            set_default(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                set_default(p, "targetPort", port);
            }
        }
    }
    if let Some(old) = old {
        let old_spec = &old["spec"];
        if spec.get("clusterIP").is_none_or(|v| v.as_str().is_none_or(|s| s.is_empty())) {
            if let Some(ip) = old_spec.get("clusterIP").filter(|v| !v.is_null()) {
                spec.insert("clusterIP".into(), ip.clone());
                if let Some(ips) = old_spec.get("clusterIPs") {
                    spec.insert("clusterIPs".into(), ips.clone());
                }
            }
        }
        if let (Some(ports), Some(old_ports)) =
            (spec.get_mut("ports").and_then(|p| p.as_array_mut()), old_spec["ports"].as_array())
        {
            for p in ports.iter_mut().filter_map(|p| p.as_object_mut()) {
                if p.get("nodePort").is_some_and(|n| !n.is_null()) {
                    continue;
                }
                let same = old_ports.iter().find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"]);
                if let Some(np) = same.and_then(|o| o.get("nodePort")).filter(|n| !n.is_null()) {
                    p.insert("nodePort".into(), np.clone());
                }
            }
        }
    }
    if let Some(o) = obj.as_object_mut() {
        let st = o.entry("status").or_insert_with(|| json!({}));
        if let Some(st) = st.as_object_mut() {
            set_default(st, "loadBalancer", json!({}));
        }
    }
}

/// Checks a Service; a ClusterIP asked for by name must be inside `range`.
pub(crate) fn validate(obj: &Value, range: &ServiceCidr) -> Vec<Cause> {
    let mut causes = Vec::new();
    let ty = svc_type(obj);
    if !TYPES.contains(&ty) {
        causes.push(Cause::unsupported("spec.type", ty, &TYPES));
        return causes;
    }
    if ty == "ExternalName" {
        if obj["spec"]["externalName"].as_str().is_none_or(|n| n.is_empty()) {
            causes.push(Cause::required("spec.externalName"));
        }
        return causes;
    }
    let ports = obj["spec"]["ports"].as_array();
    let headless = obj["spec"]["clusterIP"].as_str() == Some("None");
    if ports.is_none_or(|p| p.is_empty()) && !headless {
        causes.push(Cause::required("spec.ports"));
    }
    let many = ports.is_some_and(|p| p.len() > 1);
    for (i, p) in ports.into_iter().flatten().enumerate() {
        match p["port"].as_i64() {
            Some(n) if (1..=65535).contains(&n) => {}
            Some(n) => causes.push(Cause::invalid(
                &format!("spec.ports[{i}].port"),
                &n.to_string(),
                "must be between 1 and 65535, inclusive",
            )),
            None => causes.push(Cause::required(&format!("spec.ports[{i}].port"))),
        }
        if many && p["name"].as_str().is_none_or(|n| n.is_empty()) {
            causes.push(Cause::required(&format!("spec.ports[{i}].name")));
        }
        let proto = p["protocol"].as_str().unwrap_or("TCP");
        if !["TCP", "UDP", "SCTP"].contains(&proto) {
            causes.push(Cause::unsupported(&format!("spec.ports[{i}].protocol"), proto, &["SCTP", "TCP", "UDP"]));
        }
        if let Some(np) = p["nodePort"].as_i64() {
            if ty == "ClusterIP" {
                causes.push(Cause::invalid(
                    &format!("spec.ports[{i}].nodePort"),
                    &np.to_string(),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            } else if !(NODE_PORT_MIN as i64..=NODE_PORT_MAX as i64).contains(&np) {
                causes.push(Cause::invalid(
                    &format!("spec.ports[{i}].nodePort"),
                    &np.to_string(),
                    "provided port is not in the valid range. The range of valid ports is 30000-32767",
                ));
            }
        }
    }
    if let Some(ip) = obj["spec"]["clusterIP"].as_str().filter(|s| !s.is_empty() && *s != "None") {
        match ip.parse::<Ipv4Addr>() {
            Ok(a) if range.contains(a) => {}
            _ => causes.push(Cause::invalid(
                "spec.clusterIPs",
                ip,
                &format!("failed to allocate IP: the provided IP is not in the valid range. The range of valid IPs is {range}"),
            )),
        }
    }
    causes
}

fn owner(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["metadata"]["namespace"].as_str().unwrap_or_default(),
        obj["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// Claims `key` for `who`: true if it is now (or already was) ours.
async fn claim(objects: &Objects, key: &str, who: &str) -> Result<bool, ApiError> {
    let store = objects.store();
    let txn = Txn {
        compares: vec![Compare::NotExists { key: key.into() }],
        success: vec![Op::Put { key: key.into(), value: who.as_bytes().to_vec(), lease: None }],
        failure: vec![],
    };
    let r = store
        .txn(txn)
        .await
        .map_err(|e| ApiError::from_objects(e.into(), &super::registry::builtin("", "services"), who))?;
    if r.succeeded {
        return Ok(true);
    }
    let cur = r.current.into_iter().next().flatten();
    Ok(cur.is_some_and(|kv| kv.value == who.as_bytes()))
}

/// Releases allocation keys (after a failed create, or when a Service goes away).
pub(crate) async fn release(objects: &Objects, keys: &[String]) {
    if keys.is_empty() {
        return;
    }
    let ops = keys.iter().map(|k| Op::Delete { key: k.clone() }).collect();
    if let Err(e) = objects.store().txn(Txn::ops(ops)).await {
        tracing::warn!(error = %e, "release service allocations failed");
    }
}

/// Creates a Service the cluster itself owns (the `kubernetes` Service): defaulted and with its
/// addresses claimed exactly as a Service created through the API.
pub(crate) async fn create_system(objects: &Objects, mut obj: Value, range: &ServiceCidr) -> Result<Value, ApiError> {
    let res = super::registry::builtin("", "services");
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    default(&mut obj, None);
    let causes = validate(&obj, range);
    if !causes.is_empty() {
        return Err(ApiError::invalid(&res, &name, causes));
    }
    let claimed = allocate(objects, &mut obj, None, range).await?;
    match objects.create(&res, Some(&ns), obj).await {
        Ok(created) => Ok(created),
        Err(e) => {
            release(objects, &claimed).await;
            Err(ApiError::from_objects(e, &res, &name))
        }
    }
}

/// The allocation keys a stored Service holds.
pub(crate) fn held_keys(obj: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(ip) = obj["spec"]["clusterIP"].as_str().filter(|s| s.parse::<Ipv4Addr>().is_ok()) {
        keys.push(format!("{IP_PREFIX}{ip}"));
    }
    for p in obj["spec"]["ports"].as_array().into_iter().flatten() {
        if let Some(np) = p["nodePort"].as_i64() {
            keys.push(format!("{PORT_PREFIX}{np}"));
        }
    }
    keys
}

/// Allocates what the Service needs and does not hold yet; returns the keys newly claimed (to
/// release if the write fails).
pub(crate) async fn allocate(
    objects: &Objects,
    obj: &mut Value,
    old: Option<&Value>,
    range: &ServiceCidr,
) -> Result<Vec<String>, ApiError> {
    let who = owner(obj);
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let res = super::registry::builtin("", "services");
    let held: Vec<String> = old.map(held_keys).unwrap_or_default();
    let mut claimed = Vec::new();
    let ty = svc_type(obj).to_string();
    let result = async {
        let spec = obj
            .get_mut("spec")
            .and_then(|s| s.as_object_mut())
            .ok_or_else(|| ApiError::bad_request("spec must be an object"))?;
        if ty == "ExternalName" {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        } else {
            match spec.get("clusterIP").and_then(|c| c.as_str()).filter(|s| !s.is_empty()).map(String::from) {
                Some(ip) if ip == "None" => {
                    spec.insert("clusterIPs".into(), json!(["None"]));
                }
                Some(ip) => {
                    let key = format!("{IP_PREFIX}{ip}");
                    if !held.contains(&key) {
                        if !claim(objects, &key, &who).await? {
                            return Err(ApiError::invalid(
                                &res,
                                &name,
                                vec![Cause::invalid(
                                    "spec.clusterIPs",
                                    &ip,
                                    "failed to allocate IP: provided IP is already allocated",
                                )],
                            ));
                        }
                        claimed.push(key);
                    }
                    spec.insert("clusterIPs".into(), json!([ip]));
                }
                None => {
                    let mut got = None;
                    for _ in 0..64 {
                        let ip = range.nth(rand::random_range(range.dynamic_offsets())).to_string();
                        let key = format!("{IP_PREFIX}{ip}");
                        if claim(objects, &key, &who).await? {
                            claimed.push(key);
                            got = Some(ip);
                            break;
                        }
                    }
                    let ip = got.ok_or_else(|| ApiError::internal("failed to allocate a service IP: range is full"))?;
                    spec.insert("clusterIP".into(), json!(ip));
                    spec.insert("clusterIPs".into(), json!([ip]));
                }
            }
        }
        let wants_node_ports = ty == "NodePort"
            || (ty == "LoadBalancer"
                && spec.get("allocateLoadBalancerNodePorts").and_then(|a| a.as_bool()) != Some(false));
        if wants_node_ports {
            let ports = spec.get_mut("ports").and_then(|p| p.as_array_mut());
            for (i, p) in ports.into_iter().flatten().enumerate() {
                let Some(p) = p.as_object_mut() else { continue };
                match p.get("nodePort").and_then(|n| n.as_i64()) {
                    Some(np) => {
                        let key = format!("{PORT_PREFIX}{np}");
                        if !held.contains(&key) {
                            if !claim(objects, &key, &who).await? {
                                return Err(ApiError::invalid(
                                    &res,
                                    &name,
                                    vec![Cause::invalid(
                                        &format!("spec.ports[{i}].nodePort"),
                                        &np.to_string(),
                                        "provided port is already allocated",
                                    )],
                                ));
                            }
                            claimed.push(key);
                        }
                    }
                    None => {
                        let mut got = None;
                        for _ in 0..64 {
                            let np = rand::random_range(NODE_PORT_MIN..=NODE_PORT_MAX);
                            let key = format!("{PORT_PREFIX}{np}");
                            if claim(objects, &key, &who).await? {
                                claimed.push(key);
                                got = Some(np);
                                break;
                            }
                        }
                        let np =
                            got.ok_or_else(|| ApiError::internal("failed to allocate a node port: range is full"))?;
                        p.insert("nodePort".into(), json!(np));
                    }
                }
            }
        } else if ty == "ClusterIP" || ty == "ExternalName" {
            if let Some(ports) = spec.get_mut("ports").and_then(|p| p.as_array_mut()) {
                for p in ports.iter_mut().filter_map(|p| p.as_object_mut()) {
                    p.remove("nodePort");
                }
            }
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok(claimed),
        Err(e) => {
            release(objects, &claimed).await;
            Err(e)
        }
    }
}

/// Keys the old object held that the new one no longer does (to release after an update).
pub(crate) fn dropped_keys(old: &Value, new: &Value) -> Vec<String> {
    let now = held_keys(new);
    held_keys(old).into_iter().filter(|k| !now.contains(k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_store::Store;

    #[tokio::test]
    async fn allocates_distinct_ips_and_node_ports() {
        let objects = Objects::new(Store::in_memory());
        let mut a = json!({"metadata": {"name": "a", "namespace": "default"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        default(&mut a, None);
        assert!(validate(&a, &ServiceCidr::default()).is_empty());
        allocate(&objects, &mut a, None, &ServiceCidr::default()).await.unwrap();
        assert_eq!(a["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(a["spec"]["ports"][0]["protocol"], "TCP");
        let ip = a["spec"]["clusterIP"].as_str().unwrap().to_string();
        assert!(ip.starts_with("10.43."));
        let np = a["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        assert!((30000..=32767).contains(&np));
        // The same IP cannot be claimed by another Service.
        let mut b = json!({"metadata": {"name": "b", "namespace": "default"}, "spec": {"clusterIP": ip, "ports": [{"port": 80}]}});
        default(&mut b, None);
        assert_eq!(allocate(&objects, &mut b, None, &ServiceCidr::default()).await.unwrap_err().code, 422);
        // An update keeps what the client left out.
        let mut a2 = json!({"metadata": {"name": "a", "namespace": "default"}, "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
        default(&mut a2, Some(&a));
        assert!(allocate(&objects, &mut a2, Some(&a), &ServiceCidr::default()).await.unwrap().is_empty());
        assert_eq!(a2["spec"]["clusterIP"], a["spec"]["clusterIP"]);
        assert_eq!(a2["spec"]["ports"][0]["nodePort"], np);
    }

    #[tokio::test]
    async fn a_configured_range_is_where_addresses_come_from() {
        let objects = Objects::new(Store::in_memory());
        let range = ServiceCidr::parse("192.168.7.0/27").unwrap();
        for i in 0..8 {
            let mut s = json!({"metadata": {"name": format!("s{i}"), "namespace": "default"}, "spec": {"ports": [{"port": 80}]}});
            default(&mut s, None);
            allocate(&objects, &mut s, None, &range).await.unwrap();
            let ip: Ipv4Addr = s["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
            assert!(range.contains(ip) && u32::from(ip) >= u32::from(range.nth(16)), "{ip}");
        }
        let mut outside =
            json!({"metadata": {"name": "o"}, "spec": {"clusterIP": "10.43.0.5", "ports": [{"port": 80}]}});
        default(&mut outside, None);
        let causes = validate(&outside, &range);
        assert!(causes[0].message.ends_with("The range of valid IPs is 192.168.7.0/27"), "{}", causes[0].message);
    }
}
