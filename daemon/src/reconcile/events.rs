//! Events for `kubectl describe` and `kubectl get events`, deduplicated: the same reason and
//! message about the same object bumps `count` and `lastTimestamp` of one Event.
use serde_json::{json, Value};
use shoal_kube::{Objects, Resource, UpdateMode};

use super::util::{fmt_time, fnv32a, name_of, namespace_of, now, uid_of};

/// Writes Events; failures are logged, never fatal to a reconcile.
#[derive(Clone)]
pub(crate) struct Recorder {
    objects: Objects,
    events: Resource,
}

impl Recorder {
    pub(crate) fn new(objects: Objects, events: Resource) -> Self {
        Recorder { objects, events }
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
}
