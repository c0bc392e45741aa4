//! Discovery and `/version`: the aggregated documents (`APIGroupDiscoveryList` for `/api` and
//! `/apis`, one round trip for kubectl) when the client asks for them, and the legacy ones
//! (`/api`, `/api/v1`, `/apis`, `/apis/<g>`, `/apis/<g>/<v>`) otherwise.
use serde_json::{json, Value};
use shoal_kube::Resource;

use super::KUBERNETES_VERSION;

pub(crate) const METRICS_GROUP: &str = "metrics.k8s.io";
pub(crate) const METRICS_VERSION: &str = "v1beta1";

/// The verbs of a stored resource.
const VERBS: [&str; 8] = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

pub(crate) fn version() -> Value {
    let minor = KUBERNETES_VERSION.trim_start_matches('v').split('.').nth(1).unwrap_or("36");
    json!({
        "major": "1",
        "minor": minor,
        "gitVersion": KUBERNETES_VERSION,
        "gitCommit": "shoal",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": format!("linux/{}", match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", a => a }),
    })
}

pub(crate) fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

/// Groups in first-seen order with their versions in first-seen order (the first preferred).
pub(crate) fn groups(resources: &[Resource]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for r in resources.iter().filter(|r| !r.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, vs)) => {
                if !vs.contains(&r.version) {
                    vs.push(r.version.clone());
                }
            }
            None => out.push((r.group.clone(), vec![r.version.clone()])),
        }
    }
    out.push((METRICS_GROUP.into(), vec![METRICS_VERSION.into()]));
    out
}

fn group_json(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> =
        versions.iter().map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v})).collect();
    json!({"name": name, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(Value::Null)})
}

pub(crate) fn api_group_list(resources: &[Resource]) -> Value {
    let groups: Vec<Value> = groups(resources).iter().map(|(g, vs)| group_json(g, vs)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub(crate) fn api_group(resources: &[Resource], group: &str) -> Option<Value> {
    let (g, vs) = groups(resources).into_iter().find(|(g, _)| g == group)?;
    let mut v = group_json(&g, &vs);
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    Some(v)
}

fn subresource(r: &Resource, sub: &str) -> Value {
    let (group, version, kind, verbs): (Option<&str>, Option<&str>, &str, &[&str]) = match sub {
        "status" => (None, None, r.kind.as_str(), &["get", "patch", "update"]),
        "scale" => (Some("autoscaling"), Some("v1"), "Scale", &["get", "patch", "update"]),
        "log" => (None, None, "Pod", &["get"]),
        "ephemeralcontainers" => (None, None, "Pod", &["get", "patch", "update"]),
        "exec" => (None, None, "PodExecOptions", &["create", "get"]),
        "attach" => (None, None, "PodAttachOptions", &["create", "get"]),
        "portforward" => (None, None, "PodPortForwardOptions", &["create", "get"]),
        "binding" => (None, None, "Binding", &["create"]),
        "eviction" => (Some("policy"), Some("v1"), "Eviction", &["create"]),
        "finalize" => (None, None, "Namespace", &["update"]),
        "token" => (Some("authentication.k8s.io"), Some("v1"), "TokenRequest", &["create"]),
        "proxy" => (
            None,
            None,
            if r.kind == "Node" { "NodeProxyOptions" } else { "ServiceProxyOptions" },
            &["create", "delete", "get", "patch", "update"],
        ),
        _ => (None, None, r.kind.as_str(), &["get"]),
    };
    let mut v = json!({
        "name": format!("{}/{sub}", r.plural),
        "singularName": "",
        "namespaced": r.namespaced,
        "kind": kind,
        "verbs": verbs,
    });
    if let (Some(g), Some(ver)) = (group, version) {
        v["group"] = json!(g);
        v["version"] = json!(ver);
    }
    v
}

pub(crate) fn resource_list(resources: &[Resource], group: &str, version: &str) -> Option<Value> {
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    if group == METRICS_GROUP && version == METRICS_VERSION {
        return Some(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": gv,
            "resources": [
                {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
                {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]},
            ],
        }));
    }
    let mine: Vec<&Resource> = resources.iter().filter(|r| r.group == group && r.version == version).collect();
    if mine.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for r in mine {
        let mut v = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": if r.group == super::apiservice::GROUP { &super::apiservice::VERBS[..] } else { &VERBS[..] },
        });
        if !r.short_names.is_empty() {
            v["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            v["categories"] = json!(r.categories);
        }
        out.push(v);
        for sub in &r.subresources {
            out.push(subresource(r, sub));
        }
    }
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}))
}

/// The aggregated discovery media type the client accepts first ("v2" or "v2beta1"), if any.
pub(crate) fn aggregated_version(accept: &str) -> Option<&'static str> {
    accept.split(',').find_map(|media| {
        let params: Vec<&str> = media.split(';').map(|p| p.trim()).collect();
        let has = |p: &str| params.contains(&p);
        if params.first() != Some(&"application/json")
            || !has("g=apidiscovery.k8s.io")
            || !has("as=APIGroupDiscoveryList")
        {
            return None;
        }
        if has("v=v2") {
            Some("v2")
        } else if has("v=v2beta1") {
            Some("v2beta1")
        } else {
            None
        }
    })
}

/// The content type of an aggregated discovery reply (client-go decides by it).
pub(crate) fn aggregated_content_type(version: &str) -> String {
    format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList")
}

/// One version of a group in the aggregated form, built from its legacy resource list.
fn discovery_version(list: &Value, version: &str) -> Value {
    let entries = list["resources"].as_array().cloned().unwrap_or_default();
    let kind_of = |e: &Value| {
        json!({
            "group": e["group"].as_str().unwrap_or_default(),
            "version": e["version"].as_str().unwrap_or_default(),
            "kind": e["kind"],
        })
    };
    let mut resources: Vec<Value> = Vec::new();
    for e in entries.iter().filter(|e| !e["name"].as_str().unwrap_or_default().contains('/')) {
        let name = e["name"].as_str().unwrap_or_default();
        let singular = match e["singularName"].as_str() {
            Some(s) if !s.is_empty() => s.to_string(),
            _ => e["kind"].as_str().unwrap_or_default().to_ascii_lowercase(),
        };
        let mut r = json!({
            "resource": name,
            "responseKind": kind_of(e),
            "scope": if e["namespaced"].as_bool().unwrap_or(false) { "Namespaced" } else { "Cluster" },
            "singularResource": singular,
            "verbs": e["verbs"],
        });
        for k in ["shortNames", "categories"] {
            if e.get(k).is_some() {
                r[k] = e[k].clone();
            }
        }
        let subs: Vec<Value> = entries
            .iter()
            .filter_map(|s| {
                let (parent, sub) = s["name"].as_str()?.split_once('/')?;
                (parent == name).then(|| json!({"subresource": sub, "responseKind": kind_of(s), "verbs": s["verbs"]}))
            })
            .collect();
        if !subs.is_empty() {
            r["subresources"] = Value::Array(subs);
        }
        resources.push(r);
    }
    json!({"version": version, "resources": resources, "freshness": "Current"})
}

/// `/api` (`core`) or `/apis` (every other group) as an `APIGroupDiscoveryList`.
pub(crate) fn aggregated(resources: &[Resource], core: bool, api_version: &str) -> Value {
    let groups: Vec<(String, Vec<String>)> =
        if core { vec![(String::new(), vec!["v1".to_string()])] } else { groups(resources) };
    let items: Vec<Value> = groups
        .iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .filter_map(|v| resource_list(resources, g, v).map(|list| discovery_version(&list, v)))
                .collect();
            json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{api_version}"),
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployments_scale_is_autoscaling_v1() {
        let all = shoal_kube::resources::builtin();
        let apps = resource_list(&all, "apps", "v1").unwrap();
        let scale = apps["resources"].as_array().unwrap().iter().find(|r| r["name"] == "deployments/scale").unwrap();
        assert_eq!(scale["group"], "autoscaling");
        assert_eq!(scale["version"], "v1");
        assert_eq!(scale["kind"], "Scale");
        let core = resource_list(&all, "", "v1").unwrap();
        let pods = core["resources"].as_array().unwrap().iter().find(|r| r["name"] == "pods").unwrap();
        assert_eq!(pods["categories"], json!(["all"]));
        assert_eq!(pods["shortNames"], json!(["po"]));
        let groups = api_group_list(&all);
        assert!(groups["groups"].as_array().unwrap().iter().any(|g| g["name"] == "metrics.k8s.io"));
        assert_eq!(version()["minor"], "36");
    }

    #[test]
    fn aggregated_discovery_carries_what_legacy_does() {
        let accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_version(accept), Some("v2"));
        assert_eq!(aggregated_version("application/json"), None);
        let all = shoal_kube::resources::builtin();
        let apis = aggregated(&all, false, "v2");
        let items = apis["items"].as_array().unwrap();
        let apps = items.iter().find(|i| i["metadata"]["name"] == "apps").unwrap();
        let deploy = apps["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "deployments")
            .unwrap();
        assert_eq!(deploy["scope"], "Namespaced");
        assert_eq!(deploy["categories"], json!(["all"]));
        let scale = deploy["subresources"].as_array().unwrap().iter().find(|s| s["subresource"] == "scale").unwrap();
        assert_eq!(scale["responseKind"], json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}));
        assert!(items.iter().any(|i| i["metadata"]["name"] == "metrics.k8s.io"));
        let core = aggregated(&all, true, "v2");
        let pods = core["items"][0]["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "pods")
            .unwrap();
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert!(pods["subresources"].as_array().unwrap().iter().any(|s| s["subresource"] == "portforward"));
    }
}
