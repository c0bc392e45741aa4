//! The environment of a container: `env` (value, fieldRef, resourceFieldRef,
//! configMapKeyRef, secretKeyRef), `envFrom`, and Docker-link style variables for the
//! Services of the pod's namespace that exist when it starts.
use std::net::Ipv4Addr;

use serde_json::Value;

use super::AgentConfig;

fn field_ref(pod: &Value, path: &str, ip: Option<Ipv4Addr>, cfg: &AgentConfig) -> Option<String> {
    let m = &pod["metadata"];
    Some(match path {
        "metadata.name" => m["name"].as_str()?.to_string(),
        "metadata.namespace" => m["namespace"].as_str()?.to_string(),
        "metadata.uid" => m["uid"].as_str()?.to_string(),
        "spec.nodeName" => pod["spec"]["nodeName"].as_str()?.to_string(),
        "spec.serviceAccountName" => pod["spec"]["serviceAccountName"].as_str().unwrap_or("default").to_string(),
        "status.podIP" => ip.map(|i| i.to_string()).unwrap_or_default(),
        "status.hostIP" => cfg.address.to_string(),
        p => {
            if let Some(key) = p.strip_prefix("metadata.labels['").and_then(|k| k.strip_suffix("']")) {
                m["labels"][key].as_str().unwrap_or_default().to_string()
            } else if let Some(key) = p.strip_prefix("metadata.annotations['").and_then(|k| k.strip_suffix("']")) {
                m["annotations"][key].as_str().unwrap_or_default().to_string()
            } else if p == "metadata.labels" || p == "metadata.annotations" {
                let field = p.trim_start_matches("metadata.");
                m[field]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap_or_default()))
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_default()
            } else {
                return None;
            }
        }
    })
}

fn resource_field(c: &Value, resource: &str) -> String {
    let (section, name) = resource.split_once('.').unwrap_or(("limits", resource));
    let v = c["resources"][section][name].as_str().unwrap_or_default();
    match name {
        "cpu" => super::spec::cpu_millis(v)
            .map(|m| m.div_ceil(1000).max(1).to_string())
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).to_string()),
        "memory" | "ephemeral-storage" => super::spec::bytes(v).map(|b| b.to_string()).unwrap_or_default(),
        _ => v.to_string(),
    }
}

fn decode_secret(v: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(v)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// `KEY=value` entries for a container, in the order Kubernetes applies them.
pub(crate) async fn container_env(pod: &Value, c: &Value, ip: Option<Ipv4Addr>, cfg: &AgentConfig) -> Vec<String> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let mut out: Vec<String> = Vec::new();
    if pod["spec"]["enableServiceLinks"].as_bool() != Some(false) {
        out.extend(service_links(cfg, ns).await);
    }
    out.push(format!("KUBERNETES_SERVICE_HOST={}", cfg.kubernetes_ip));
    out.push("KUBERNETES_SERVICE_PORT=443".into());
    let get = |plural: &'static str, name: String| {
        let objects = cfg.objects.clone();
        let ns = ns.to_string();
        async move {
            let res = super::res(plural);
            objects.get(&res, Some(&ns), &name).await.ok().flatten()
        }
    };
    for from in c["envFrom"].as_array().into_iter().flatten() {
        let prefix = from["prefix"].as_str().unwrap_or_default();
        let (obj, secret) = if let Some(n) = from["configMapRef"]["name"].as_str() {
            (get("configmaps", n.to_string()).await, false)
        } else if let Some(n) = from["secretRef"]["name"].as_str() {
            (get("secrets", n.to_string()).await, true)
        } else {
            continue;
        };
        for (k, v) in obj.as_ref().and_then(|o| o["data"].as_object()).into_iter().flatten() {
            let v = v.as_str().unwrap_or_default();
            out.push(format!("{prefix}{k}={}", if secret { decode_secret(v) } else { v.to_string() }));
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let Some(name) = e["name"].as_str() else { continue };
        let value = if let Some(v) = e["value"].as_str() {
            Some(expand(v, &out))
        } else if let Some(path) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            field_ref(pod, path, ip, cfg)
        } else if let Some(r) = e["valueFrom"]["resourceFieldRef"]["resource"].as_str() {
            Some(resource_field(c, r))
        } else if let Some(r) = e["valueFrom"].get("configMapKeyRef") {
            let obj = get("configmaps", r["name"].as_str().unwrap_or_default().to_string()).await;
            obj.and_then(|o| o["data"][r["key"].as_str().unwrap_or_default()].as_str().map(String::from))
        } else if let Some(r) = e["valueFrom"].get("secretKeyRef") {
            let obj = get("secrets", r["name"].as_str().unwrap_or_default().to_string()).await;
            obj.and_then(|o| o["data"][r["key"].as_str().unwrap_or_default()].as_str().map(decode_secret))
        } else {
            Some(String::new())
        };
        if let Some(v) = value {
            out.push(format!("{name}={v}"));
        }
    }
    out
}

/// `$(VAR)` references to earlier variables, as Kubernetes expands them.
fn expand(v: &str, env: &[String]) -> String {
    let mut out = v.to_string();
    for e in env.iter().rev() {
        if let Some((k, val)) = e.split_once('=') {
            out = out.replace(&format!("$({k})"), val);
        }
    }
    out
}

/// `SVC_NODE_SERVICE_HOST=10.43.0.12`, `SVC_NODE_PORT_80_TCP_ADDR=...`, for every Service
/// of the namespace with a ClusterIP.
async fn service_links(cfg: &AgentConfig, ns: &str) -> Vec<String> {
    let res = super::res("services");
    let Ok((svcs, _)) = cfg.objects.list(&res, Some(ns)).await else { return Vec::new() };
    let mut out = Vec::new();
    for s in svcs {
        let Some(ip) = s["spec"]["clusterIP"].as_str().filter(|i| *i != "None" && !i.is_empty()) else { continue };
        let name = s["metadata"]["name"].as_str().unwrap_or_default().to_uppercase().replace('-', "_");
        let ports = s["spec"]["ports"].as_array().cloned().unwrap_or_default();
        out.push(format!("{name}_SERVICE_HOST={ip}"));
        if let Some(p) = ports.first() {
            out.push(format!("{name}_SERVICE_PORT={}", p["port"]));
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            out.push(format!("{name}_PORT={}://{ip}:{}", proto.to_lowercase(), p["port"]));
        }
        for p in &ports {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            let port = &p["port"];
            let base = format!("{name}_PORT_{port}_{proto}");
            if let Some(pn) = p["name"].as_str() {
                out.push(format!("{name}_SERVICE_PORT_{}={port}", pn.to_uppercase().replace('-', "_")));
            }
            out.push(format!("{base}={}://{ip}:{port}", proto.to_lowercase()));
            out.push(format!("{base}_PROTO={}", proto.to_lowercase()));
            out.push(format!("{base}_PORT={port}"));
            out.push(format!("{base}_ADDR={ip}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependent_variables_expand() {
        let env = vec!["A=1".to_string(), "B=two".to_string()];
        assert_eq!(expand("x-$(A)-$(B)-$(C)", &env), "x-1-two-$(C)");
    }
}
