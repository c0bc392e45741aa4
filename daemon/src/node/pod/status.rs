//! The pod status this node writes back: phase, conditions, container states and QoS class,
//! computed from the agent's view and written only when it changed.
use std::net::Ipv4Addr;

use serde_json::{json, Value};
use shoal_kube::UpdateMode;
use shoal_runtime::Status;

use super::{pod_ref, rfc3339, PodState};
use crate::node::probes::{ContainerProbes, ProbeSet};
use crate::node::{Agent, AgentError};

impl Agent {
    /// Computes the pod status and writes it if it differs from the stored one.
    pub(super) async fn write_status(&self, uid: &str, pod: &Value, st: &PodState) -> Result<(), AgentError> {
        if st.evicted || pod["status"]["reason"] == "Evicted" {
            return Ok(());
        }
        let status = self.compute_status(uid, pod, st);
        let old = &pod["status"];
        let comparable = |s: &Value| {
            let mut s = s.clone();
            if let Some(conds) = s["conditions"].as_array_mut() {
                for c in conds {
                    if let Some(o) = c.as_object_mut() {
                        o.remove("lastTransitionTime");
                        o.remove("lastProbeTime");
                    }
                }
            }
            s
        };
        if comparable(old) == comparable(&status) {
            return Ok(());
        }
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let status_phase = status["phase"].as_str().unwrap_or_default().to_string();
        let mut next = pod.clone();
        next["status"] = status;
        if let Some(m) = next["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        self.cfg.objects.update(&self.pods, Some(ns), next, UpdateMode::Status).await?;
        if status_phase == "Running" && matches!(old["phase"].as_str(), None | Some("Pending")) {
            crate::metrics::kubelet::pod_started(pod["metadata"]["creationTimestamp"].as_str());
        }
        tracing::debug!(pod = %pod_ref(pod), phase = %status_phase, "pod status written");
        Ok(())
    }

    pub(super) fn compute_status(&self, _uid: &str, pod: &Value, st: &PodState) -> Value {
        let now = shoal_kube::objects::now_rfc3339();
        let old_conds = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let since = |ty: &str, status: &str| -> String {
            old_conds
                .iter()
                .find(|c| c["type"] == ty && c["status"] == status)
                .and_then(|c| c["lastTransitionTime"].as_str().map(String::from))
                .unwrap_or_else(|| now.clone())
        };
        let statuses = |list: &Value| -> Vec<Value> {
            list.as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let name = c["name"].as_str().unwrap_or_default();
                    let ctr = st.containers.get(name);
                    let rt = ctr.and_then(|x| self.runtime.state(&x.id).ok());
                    let mut state = json!({"waiting": {"reason": "ContainerCreating"}});
                    let mut ready = false;
                    let mut started = false;
                    match rt.as_ref().map(|s| s.status) {
                        Some(Status::Running) => {
                            state =
                                json!({"running": {"startedAt": rt.as_ref().and_then(|s| s.started_at).map(rfc3339)}});
                            // Without probes a running container is started and ready.
                            let mut probes = ctr.map(|x| x.probes.clone()).unwrap_or_default();
                            let same_instance = ctr.is_some_and(|x| {
                                x.instance.is_none() || x.instance == rt.as_ref().and_then(|s| s.started_at)
                            });
                            if !same_instance {
                                probes = ProbeSet::default();
                            }
                            ContainerProbes::of(c).init(&mut probes);
                            ready = probes.ready && probes.started;
                            started = probes.started;
                        }
                        Some(Status::Stopped) => {
                            if let Some(t) = ctr.and_then(|x| x.last_terminated.clone()) {
                                state = json!({"terminated": t});
                            }
                        }
                        _ => {}
                    }
                    if let Some((reason, message)) = ctr.and_then(|x| x.waiting.clone()) {
                        if !started {
                            state = json!({"waiting": {"reason": reason, "message": message}});
                        }
                    }
                    let mut s = json!({
                        "name": name,
                        "image": c["image"],
                        "imageID": ctr.map(|x| x.image_id.clone()).unwrap_or_default(),
                        "ready": ready,
                        "started": started,
                        "restartCount": ctr.map(|x| x.restarts).unwrap_or(0),
                        "state": state,
                        "lastState": {},
                    });
                    if let Some(x) = ctr {
                        if !x.id.is_empty() && rt.is_some() {
                            s["containerID"] = json!(format!("shoal://{}", x.id));
                        }
                        if x.restarts > 0 {
                            if let Some(t) = &x.last_terminated {
                                s["lastState"] = json!({"terminated": t});
                            }
                        }
                    }
                    s
                })
                .collect()
        };
        let app = statuses(&pod["spec"]["containers"]);
        let mut ephemeral = statuses(&pod["spec"]["ephemeralContainers"]);
        // As the kubelet: an ephemeral container is never ready (it serves nothing).
        for s in &mut ephemeral {
            s["ready"] = json!(false);
        }
        let init = statuses(&pod["spec"]["initContainers"]);
        let restart_policy = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always");
        let all_ready = !app.is_empty() && app.iter().all(|s| s["ready"] == true);
        let terminated: Vec<&Value> = app.iter().filter_map(|s| s["state"].get("terminated")).collect();
        let all_terminated = !app.is_empty() && terminated.len() == app.len();
        let initialized = pod["spec"]["initContainers"].as_array().is_none_or(|l| {
            l.iter().all(|c| {
                st.containers.get(c["name"].as_str().unwrap_or_default()).is_some_and(|x| x.done)
                    || c["restartPolicy"] == "Always"
            })
        });
        let phase = if st.init_failed {
            "Failed"
        } else if all_terminated && restart_policy != "Always" {
            let failed = terminated.iter().any(|t| t["exitCode"].as_i64() != Some(0));
            if failed && restart_policy == "OnFailure" {
                "Running"
            } else if failed {
                "Failed"
            } else {
                "Succeeded"
            }
        } else if app.iter().any(|s| s["state"].get("running").is_some() || s["state"].get("terminated").is_some()) {
            "Running"
        } else {
            "Pending"
        };
        let b = |v: bool| if v { "True" } else { "False" };
        let finished = phase == "Succeeded" || phase == "Failed";
        let ready = all_ready && !finished;
        let mut conditions = vec![
            json!({"type": "PodReadyToStartContainers", "status": b(st.sandbox.is_some()), "lastTransitionTime": since("PodReadyToStartContainers", b(st.sandbox.is_some()))}),
            json!({"type": "Initialized", "status": b(initialized), "lastTransitionTime": since("Initialized", b(initialized))}),
            json!({"type": "Ready", "status": b(ready), "lastTransitionTime": since("Ready", b(ready))}),
            json!({"type": "ContainersReady", "status": b(ready), "lastTransitionTime": since("ContainersReady", b(ready))}),
            json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": since("PodScheduled", "True")}),
        ];
        if !ready {
            for c in conditions.iter_mut().filter(|c| c["type"] == "Ready" || c["type"] == "ContainersReady") {
                c["reason"] = json!(if finished { "PodCompleted" } else { "ContainersNotReady" });
            }
        }
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.cfg.address.to_string(),
            "hostIPs": [{"ip": self.cfg.address.to_string()}],
            "startTime": st.started_at,
            "containerStatuses": app,
            "qosClass": qos_class(pod),
        });
        let pod_ip = st
            .ip
            .map(|i| i.to_string())
            .or_else(|| (pod["spec"]["hostNetwork"].as_bool() == Some(true)).then(|| self.cfg.address.to_string()));
        if let Some(ip) = pod_ip {
            status["podIP"] = json!(ip);
            status["podIPs"] = json!([{"ip": ip}]);
        }
        if !init.is_empty() {
            status["initContainerStatuses"] = json!(init);
        }
        if !ephemeral.is_empty() {
            status["ephemeralContainerStatuses"] = json!(ephemeral);
        }
        status
    }
}

pub(super) fn st_ip(st: &PodState) -> Option<Ipv4Addr> {
    st.ip
}

/// The pod's QoS class, as Kubernetes derives it from requests and limits.
pub(crate) fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = pod["spec"]["containers"].as_array().into_iter().flatten().collect();
    let any = containers.iter().any(|c| {
        c["resources"]["requests"].as_object().is_some_and(|m| !m.is_empty())
            || c["resources"]["limits"].as_object().is_some_and(|m| !m.is_empty())
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        let l = &c["resources"]["limits"];
        let r = &c["resources"]["requests"];
        ["cpu", "memory"].iter().all(|k| l[k].is_string() && (r[k].is_null() || r[k] == l[k]))
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}
