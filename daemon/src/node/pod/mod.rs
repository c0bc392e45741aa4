//! One Pod on this node: sandbox and network, pod files and volumes, init containers in
//! order, app containers with their restart policy and back-off, graceful termination, and
//! the status written back (only when it changed). This file syncs a pod; one container is
//! `containers`, the files and volumes its containers see are `files`, probes and lifecycle hooks
//! `hooks`, and the status it writes `status`.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use shoal_kube::Preconditions;
use shoal_runtime::{Sandbox, Status};
use tokio::sync::Mutex;

use super::probes::{self, ProbeSet};
use super::{Agent, AgentError};
use crate::reconcile::events::Type;

mod containers;
mod files;
mod hooks;
mod status;

use files::unmount_volumes;
pub(crate) use status::qos_class;

/// First restart back-off; doubles per crash up to [`BACKOFF_MAX`], reset after 10 min running.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
const BACKOFF_RESET: Duration = Duration::from_secs(600);

#[derive(Default)]
pub(crate) struct Ctr {
    pub id: String,
    pub restarts: u32,
    pub backoff: Duration,
    pub retry_at: Option<Instant>,
    pub last_terminated: Option<Value>,
    pub image_id: String,
    /// Why the container is not running yet (ErrImagePull, CreateContainerError, ...).
    pub waiting: Option<(String, String)>,
    pub done: bool,
    /// Probe state of the running instance, keyed by its start time.
    pub probes: ProbeSet,
    pub instance: Option<SystemTime>,
    /// Why the agent killed the running instance (a failed liveness or startup probe).
    pub kill_reason: Option<String>,
}

#[derive(Default)]
pub(crate) struct PodState {
    pub sandbox: Option<Sandbox>,
    pub ip: Option<Ipv4Addr>,
    pub containers: BTreeMap<String, Ctr>,
    pub init_failed: bool,
    pub started_at: Option<String>,
    /// Evicted under node pressure: its containers are gone and its status says so.
    pub evicted: bool,
}

pub(super) fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|ts| ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| shoal_kube::objects::now_rfc3339())
}

pub(crate) fn short(uid: &str) -> String {
    uid.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect()
}

/// Runtime id of a container of a pod.
pub(crate) fn container_id(uid: &str, name: &str) -> String {
    format!("{}-{}", short(uid), name)
}

impl Agent {
    pub(super) fn pod_dir(&self, uid: &str) -> PathBuf {
        self.run_dir.join("pods").join(short(uid))
    }

    pub(crate) fn log_path(&self, pod: &Value, container: &str, restart: u32) -> PathBuf {
        let m = &pod["metadata"];
        self.log_dir
            .join(format!(
                "{}_{}_{}",
                m["namespace"].as_str().unwrap_or("default"),
                m["name"].as_str().unwrap_or("pod"),
                m["uid"].as_str().unwrap_or("")
            ))
            .join(container)
            .join(format!("{restart}.log"))
    }

    /// Re-adopts what survived a restart of the daemon: sandboxes, addresses and containers
    /// of pods that are still bound here.
    pub(crate) async fn adopt(&self) {
        let Ok(pods) = self.my_pods().await else { return };
        for pod in pods {
            let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_string();
            let mut st = PodState::default();
            if let Some(sb) = self.runtime.open_sandbox(&short(&uid)) {
                st.sandbox = Some(sb);
            }
            if let Some(ip) = pod["status"]["podIP"].as_str().and_then(|s| s.parse().ok()) {
                self.net.reserve(ip, &uid);
                st.ip = Some(ip);
            }
            st.started_at = pod["status"]["startTime"].as_str().map(String::from);
            let statuses = ["containerStatuses", "ephemeralContainerStatuses"]
                .into_iter()
                .flat_map(|k| pod["status"][k].as_array().into_iter().flatten());
            for cs in statuses {
                let name = cs["name"].as_str().unwrap_or_default().to_string();
                st.containers.insert(
                    name.clone(),
                    Ctr {
                        id: container_id(&uid, &name),
                        restarts: cs["restartCount"].as_u64().unwrap_or(0) as u32,
                        image_id: cs["imageID"].as_str().unwrap_or_default().to_string(),
                        last_terminated: cs["lastState"].get("terminated").cloned(),
                        probes: ProbeSet {
                            started: cs["started"].as_bool().unwrap_or(false),
                            ready: cs["ready"].as_bool().unwrap_or(false),
                            initialized: true,
                            ..ProbeSet::default()
                        },
                        instance: self.runtime.state(&container_id(&uid, &name)).ok().and_then(|s| s.started_at),
                        ..Ctr::default()
                    },
                );
            }
            if st.sandbox.is_some() {
                // Devices go back to the pods that ran with them.
                for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
                    let _ = self.claim_devices(&uid, c);
                }
                tracing::info!(pod = %pod["metadata"]["name"], "re-adopted pod");
                self.state.lock().await.insert(uid, Arc::new(Mutex::new(st)));
            }
        }
    }

    /// One pass over one pod: make it real, or tear it down when it is gone or terminating.
    pub(crate) async fn sync_pod(self: &Arc<Self>, uid: &str, pod: Option<Value>) {
        let entry = {
            let mut map = self.state.lock().await;
            map.entry(uid.to_string()).or_insert_with(|| Arc::new(Mutex::new(PodState::default()))).clone()
        };
        let mut st = entry.lock().await;
        let terminating = pod.as_ref().is_none_or(|p| p["metadata"]["deletionTimestamp"].is_string());
        if terminating {
            let grace = pod
                .as_ref()
                .and_then(|p| p["metadata"]["deletionGracePeriodSeconds"].as_i64())
                .unwrap_or(0)
                .clamp(0, 3600) as u64;
            if let Some(p) = &pod {
                for (name, c) in &st.containers {
                    if self.runtime.state(&c.id).is_ok_and(|s| s.status == Status::Running) {
                        self.events.emit(p, Some(name), Type::Normal, "Killing", &format!("Stopping container {name}"));
                    }
                }
            }
            self.teardown(uid, &mut st, Duration::from_secs(grace), pod.as_ref()).await;
            if let Some(p) = &pod {
                let ns = p["metadata"]["namespace"].as_str().unwrap_or("default");
                let name = p["metadata"]["name"].as_str().unwrap_or_default();
                let pre = Preconditions { uid: Some(uid.to_string()), resource_version: None };
                if let Err(e) = self.cfg.objects.delete(&self.pods, Some(ns), name, pre).await {
                    if !matches!(e, shoal_kube::Error::NotFound { .. }) {
                        tracing::warn!(pod = name, error = %e, "final delete of pod");
                        return;
                    }
                }
            }
            self.state.lock().await.remove(uid);
            return;
        }
        let Some(pod) = pod else { return };
        if let Err(e) = self.run_pod(uid, &pod, &mut st).await {
            let cause = chain(&e);
            tracing::warn!(pod = %pod["metadata"]["name"], error = %cause, "pod sync");
            let host_network = pod["spec"]["hostNetwork"].as_bool() == Some(true);
            let sandbox_ready = st.sandbox.is_some() && (st.ip.is_some() || host_network);
            if let Some((reason, message)) = sync_failure_event(&e, sandbox_ready) {
                self.events.emit(&pod, None, Type::Warning, reason, &message);
            }
        }
        if let Err(e) = self.write_status(uid, &pod, &st).await {
            tracing::debug!(pod = %pod["metadata"]["name"], error = %e, "pod status");
        }
    }

    pub(super) async fn run_pod(&self, uid: &str, pod: &Value, st: &mut PodState) -> Result<(), AgentError> {
        let phase = pod["status"]["phase"].as_str().unwrap_or("");
        if phase == "Succeeded" || phase == "Failed" || st.evicted {
            // A finished pod keeps its status; its containers are gone already.
            return Ok(());
        }
        if st.started_at.is_none() {
            st.started_at = Some(shoal_kube::objects::now_rfc3339());
            tracing::debug!(pod = %pod_ref(pod), "pod start: first sync");
        }
        let pod = &self.effective_pod(pod).await;
        let host_network = pod["spec"]["hostNetwork"].as_bool() == Some(true);
        if st.sandbox.is_none() {
            let id = short(uid);
            let sb = match self.runtime.open_sandbox(&id) {
                Some(sb) => sb,
                None => {
                    let runtime = self.runtime.clone();
                    tokio::task::spawn_blocking(move || runtime.create_sandbox(&id))
                        .await
                        .map_err(|e| AgentError::Pod(format!("sandbox task: {e}")))??
                }
            };
            st.sandbox = Some(sb);
            tracing::debug!(pod = %pod_ref(pod), "pod start: sandbox ready");
        }
        if st.ip.is_none() && !host_network {
            if let Some(sb) = &st.sandbox {
                st.ip = Some(self.net.attach(uid, &sb.netns_path).await?);
                tracing::debug!(pod = %pod_ref(pod), "pod start: network attached");
            }
        }
        let dir = self.pod_dir(uid);
        self.write_pod_files(pod, st, &dir).await?;

        let restart_policy = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always").to_string();
        // Init containers, in order; each must succeed before the next starts.
        for c in pod["spec"]["initContainers"].as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            let sidecar = c["restartPolicy"].as_str() == Some("Always");
            let done = st.containers.get(&name).is_some_and(|x| x.done);
            if done {
                continue;
            }
            let state = self.ensure_container(uid, pod, c, st, if sidecar { "Always" } else { "OnFailure" }).await?;
            if sidecar {
                if state == Some(Status::Running) {
                    continue;
                }
                return Ok(());
            }
            match st.containers.get(&name).and_then(|x| x.last_terminated.as_ref()).map(|t| t["exitCode"].as_i64()) {
                Some(Some(0)) if state == Some(Status::Stopped) => {
                    if let Some(x) = st.containers.get_mut(&name) {
                        x.done = true;
                    }
                    continue;
                }
                Some(Some(_)) if restart_policy == "Never" && state == Some(Status::Stopped) => {
                    st.init_failed = true;
                    return Ok(());
                }
                _ => return Ok(()),
            }
        }
        for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
            self.ensure_container(uid, pod, c, st, &restart_policy).await?;
        }
        for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
            self.run_probes(pod, c, st).await;
        }
        // Ephemeral containers (`kubectl debug`) run once, never restarted, as the kubelet.
        for c in pod["spec"]["ephemeralContainers"].as_array().into_iter().flatten() {
            self.ensure_container(uid, pod, c, st, "Never").await?;
        }
        Ok(())
    }

    /// Stops every container (SIGTERM, grace, SIGKILL), removes them, the network and the
    /// sandbox.
    pub(crate) async fn teardown(&self, uid: &str, st: &mut PodState, grace: Duration, pod: Option<&Value>) {
        let started = Instant::now();
        // preStop hooks first, all containers at once, within the grace period.
        if let Some(pod) = pod {
            let hooks = pod["spec"]["containers"].as_array().into_iter().flatten().filter_map(|c| {
                let ctr = st.containers.get(c["name"].as_str()?)?;
                let running = self.runtime.state(&ctr.id).is_ok_and(|s| s.status == Status::Running);
                (running && probes::hook(c, "preStop").is_some())
                    .then(|| self.run_hook(pod, c, &ctr.id, st.ip, "preStop", grace))
            });
            let _ = futures::future::join_all(hooks).await;
        }
        let grace = grace.saturating_sub(started.elapsed());
        let ids: Vec<String> = st.containers.values().map(|c| c.id.clone()).collect();
        let mut handles = Vec::new();
        for id in ids {
            let rt_stop = {
                let id = id.clone();
                let grace = grace.max(Duration::from_millis(100));
                let rt = self.runtime.clone();
                tokio::task::spawn_blocking(move || {
                    let _ = rt.stop(&id, grace);
                })
            };
            handles.push((id, rt_stop));
        }
        for (id, h) in handles {
            let _ = h.await;
            self.remove_container(&id, uid).await;
        }
        self.net.detach(uid, st.ip.take()).await;
        if let Some(sb) = st.sandbox.take() {
            let _ = self.runtime.remove_sandbox(&sb);
        }
        unmount_volumes(&self.pod_dir(uid).join("volumes"));
        let _ = std::fs::remove_dir_all(self.pod_dir(uid));
        st.containers.clear();
        if let Ok(mut owners) = self.device_owners.lock() {
            owners.retain(|_, o| o != uid);
        }
    }
}

/// An error with its sources, for the messages users read in `kubectl describe`.
pub(crate) use crate::reconcile::runner::error_chain as chain;

/// The Warning event of a failed pod sync, as the kubelet writes it, with the whole cause
/// (`kubectl describe pod` says why): FailedCreatePodSandBox until the sandbox and its network
/// are up, FailedSync after. None where an event was written already (FailedMount).
pub(crate) fn sync_failure_event(e: &AgentError, sandbox_ready: bool) -> Option<(&'static str, String)> {
    if matches!(e, AgentError::Mount { .. }) {
        return None;
    }
    let (reason, what) = if sandbox_ready {
        ("FailedSync", "Error syncing pod")
    } else {
        ("FailedCreatePodSandBox", "Failed to create pod sandbox")
    };
    Some((reason, format!("{what}: {}", chain(e))))
}

/// `name_namespace` of a pod, as the kubelet names it in messages.
pub(super) fn pod_ref(pod: &Value) -> String {
    format!(
        "{}_{}",
        pod["metadata"]["name"].as_str().unwrap_or_default(),
        pod["metadata"]["namespace"].as_str().unwrap_or("default")
    )
}
