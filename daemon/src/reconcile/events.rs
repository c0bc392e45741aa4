//! Events for `kubectl describe` and `kubectl get events`, deduplicated: the same reason and
//! message about the same object bumps `count` and `lastTimestamp` of one Event. One recorder for
//! the whole daemon: the controllers, the scheduler and the lb write through [`Recorder::record`]
//! (awaited), the node agent through [`Recorder::emit`] (in the background, as the kubelet does:
//! about a pod and one of its containers, a repeat written at most every 30 s).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_kube::{Objects, Resource, UpdateMode};

use super::util::{fmt_time, fnv32a, name_of, namespace_of, now, uid_of};

/// A repeated event is written at most this often; repeats in between are added to its count
/// at the next write.
const BUMP_INTERVAL: Duration = Duration::from_secs(30);

/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Type {
    Normal,
    Warning,
}

impl Type {
    fn as_str(self) -> &'static str {
        match self {
            Type::Normal => "Normal",
            Type::Warning => "Warning",
        }
    }
}

/// Writes Events; failures are logged, never fatal to a reconcile.
#[derive(Clone)]
pub(crate) struct Recorder {
    objects: Objects,
    events: Resource,
    /// The node whose agent reports (`source.host` of [`Recorder::emit`]); None elsewhere.
    node: Option<String>,
    /// Event name → when it was last written and the repeats not written yet (node events).
    seen: Arc<Mutex<HashMap<String, (Instant, i64)>>>,
}

/// The Event's name: `<pod>.<hash of what makes it the same event>`.
pub(crate) fn event_name(pod: &Value, field_path: &str, type_: Type, reason: &str, message: &str) -> String {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let key = format!("{uid}/{field_path}/{}/{reason}/{message}", type_.as_str());
    format!("{}.{:08x}", pod["metadata"]["name"].as_str().unwrap_or("pod"), fnv32a(key.as_bytes()))
}

/// The Event object for a first occurrence.
pub(crate) fn event_object(
    pod: &Value,
    node: &str,
    container: Option<&str>,
    type_: Type,
    reason: &str,
    message: &str,
    now: &str,
) -> Value {
    let field_path = container.map(|c| field_path(pod, c)).unwrap_or_default();
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let mut involved = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "name": pod["metadata"]["name"],
        "namespace": ns,
        "uid": pod["metadata"]["uid"],
        "resourceVersion": pod["metadata"]["resourceVersion"],
    });
    if !field_path.is_empty() {
        involved["fieldPath"] = json!(field_path);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name(pod, &field_path, type_, reason, message), "namespace": ns},
        "involvedObject": involved,
        "reason": reason,
        "message": message,
        "type": type_.as_str(),
        "count": 1,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "source": {"component": "kubelet", "host": node},
        "reportingComponent": "kubelet",
        "reportingInstance": node,
    })
}

/// `spec.containers{name}` or `spec.initContainers{name}`.
fn field_path(pod: &Value, container: &str) -> String {
    let init = pod["spec"]["initContainers"]
        .as_array()
        .is_some_and(|l| l.iter().any(|c| c["name"].as_str() == Some(container)));
    if init {
        format!("spec.initContainers{{{container}}}")
    } else {
        format!("spec.containers{{{container}}}")
    }
}

impl Recorder {
    pub(crate) fn new(objects: Objects, events: Resource) -> Self {
        Recorder { objects, events, node: None, seen: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// The recorder of a node agent: its events come from `kubelet` on `node`.
    pub(crate) fn for_node(objects: Objects, node: String) -> Self {
        let events = shoal_kube::resources::lookup("", "events");
        Recorder { objects, events, node: Some(node), seen: Arc::new(Mutex::new(HashMap::new())) }
    }

    pub(crate) async fn normal(&self, component: &str, involved: &Value, reason: &str, message: &str) {
        self.record(component, involved, "Normal", reason, message).await
    }

    pub(crate) async fn warning(&self, component: &str, involved: &Value, reason: &str, message: &str) {
        self.record(component, involved, "Warning", reason, message).await
    }

    pub(crate) async fn record(&self, component: &str, involved: &Value, type_: &str, reason: &str, message: &str) {
        let ns = namespace_of(involved).unwrap_or("default").to_string();
        let key = format!("{}/{}/{}/{}", uid_of(involved), type_, reason, message);
        let name = format!("{}.{:08x}", name_of(involved), fnv32a(key.as_bytes()));
        let ts = fmt_time(now());
        let bumped = self
            .objects
            .modify(&self.events, Some(&ns), &name, UpdateMode::All, |e| {
                let count = e["count"].as_i64().unwrap_or(1);
                e["count"] = json!(count + 1);
                e["lastTimestamp"] = json!(ts);
                Ok(true)
            })
            .await;
        match bumped {
            Ok(_) => return,
            Err(shoal_kube::Error::NotFound { .. }) => {}
            Err(error) => {
                tracing::debug!(%error, reason, "event not recorded");
                return;
            }
        }
        let ev = json!({
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {
                "apiVersion": involved["apiVersion"],
                "kind": involved["kind"],
                "name": name_of(involved),
                "namespace": namespace_of(involved),
                "uid": uid_of(involved),
                "resourceVersion": involved["metadata"]["resourceVersion"],
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "count": 1,
            "firstTimestamp": ts,
            "lastTimestamp": ts,
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": component,
        });
        if let Err(error) = self.objects.create(&self.events, Some(&ns), ev).await {
            tracing::debug!(%error, reason, "event not recorded");
        }
    }

    /// Records an event about a pod (and one of its containers) without waiting for the write.
    pub(crate) fn emit(&self, pod: &Value, container: Option<&str>, type_: Type, reason: &str, message: &str) {
        let now = shoal_kube::objects::now_rfc3339();
        let ev = event_object(pod, self.node.as_deref().unwrap_or_default(), container, type_, reason, message, &now);
        let this = self.clone();
        let reason = reason.to_string();
        tokio::spawn(async move { this.write(ev, &now, &reason).await });
    }

    async fn write(&self, ev: Value, now: &str, reason: &str) {
        let name = ev["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let ns = ev["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        // How many occurrences this write adds, or None while the event is written recently.
        let bump = match self.seen.lock() {
            Ok(mut m) => match m.get_mut(&name) {
                None => Some(0),
                Some((at, pending)) if at.elapsed() < BUMP_INTERVAL => {
                    *pending += 1;
                    None
                }
                Some((at, pending)) => {
                    let n = *pending + 1;
                    *pending = 0;
                    *at = Instant::now();
                    Some(n)
                }
            },
            Err(_) => Some(0),
        };
        let Some(add) = bump else { return };
        if add == 0 {
            match self.objects.create(&self.events, Some(&ns), ev).await {
                Ok(_) => {
                    if let Ok(mut m) = self.seen.lock() {
                        if m.len() > 4096 {
                            m.clear();
                        }
                        m.insert(name, (Instant::now(), 0));
                    }
                    return;
                }
                Err(shoal_kube::Error::AlreadyExists { .. }) => {}
                Err(error) => {
                    tracing::debug!(%error, reason, "event not recorded");
                    return;
                }
            }
        }
        let bumped = self
            .objects
            .modify(&self.events, Some(&ns), &name, UpdateMode::All, |e| {
                let count = e["count"].as_i64().unwrap_or(1);
                e["count"] = json!(count + add.max(1));
                e["lastTimestamp"] = json!(now);
                Ok(true)
            })
            .await;
        match bumped {
            Ok(_) => {
                if let Ok(mut m) = self.seen.lock() {
                    m.entry(name).or_insert((Instant::now(), 0));
                }
            }
            Err(error) => {
                // Gone (expired or deleted): forget it so the next one is created afresh.
                if let Ok(mut m) = self.seen.lock() {
                    m.remove(&name);
                }
                tracing::debug!(%error, reason, "event not bumped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_the_pod_and_container() {
        let pod = json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1", "resourceVersion": "7"},
            "spec": {"containers": [{"name": "nginx"}], "initContainers": [{"name": "setup"}]},
        });
        let ev = event_object(
            &pod,
            "n1",
            Some("nginx"),
            Type::Normal,
            "Pulled",
            "Container image \"nginx\" already present on machine",
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(ev["involvedObject"]["kind"], "Pod");
        assert_eq!(ev["involvedObject"]["fieldPath"], "spec.containers{nginx}");
        assert_eq!(ev["source"], json!({"component": "kubelet", "host": "n1"}));
        assert_eq!(ev["reportingComponent"], "kubelet");
        assert_eq!(ev["metadata"]["namespace"], "shop");
        assert!(ev["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("web-1.")));
        let init = event_object(&pod, "n1", Some("setup"), Type::Normal, "Started", "Started container setup", "t");
        assert_eq!(init["involvedObject"]["fieldPath"], "spec.initContainers{setup}");
        let other = event_object(&pod, "n1", Some("nginx"), Type::Warning, "BackOff", "x", "t");
        assert_ne!(ev["metadata"]["name"], other["metadata"]["name"]);
        let again = event_object(
            &pod,
            "n1",
            Some("nginx"),
            Type::Normal,
            "Pulled",
            "Container image \"nginx\" already present on machine",
            "later",
        );
        assert_eq!(ev["metadata"]["name"], again["metadata"]["name"], "the same event is deduplicated");
    }
}
