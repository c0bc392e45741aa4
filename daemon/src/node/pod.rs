//! One Pod on this node: sandbox and network, pod files and volumes, init containers in
//! order, app containers with their restart policy and back-off, graceful termination, and
//! the status written back (only when it changed).
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use shoal_kube::{Preconditions, UpdateMode};
use shoal_runtime::{CreateOpts, Sandbox, Status};
use tokio::sync::Mutex;

use super::probes::{self, ContainerProbes, ProbeSet};
use super::spec::{self, ContainerInput};
use super::{token, volumes, Agent, AgentError};
use crate::reconcile::events::Type;

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

fn rfc3339(t: SystemTime) -> String {
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
    fn pod_dir(&self, uid: &str) -> PathBuf {
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

    async fn run_pod(&self, uid: &str, pod: &Value, st: &mut PodState) -> Result<(), AgentError> {
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

    /// Runs the probes of a running container that are due, and kills it when its liveness
    /// or startup probe has failed often enough (the restart policy then restarts it).
    async fn run_probes(&self, pod: &Value, c: &Value, st: &mut PodState) {
        let name = c["name"].as_str().unwrap_or_default().to_string();
        let pod_ip = st.ip.map(std::net::IpAddr::V4).unwrap_or(self.cfg.address);
        let Some(ctr) = st.containers.get_mut(&name) else { return };
        let Ok(rt) = self.runtime.state(&ctr.id) else { return };
        if rt.status != Status::Running {
            return;
        }
        let started = rt.started_at.unwrap_or_else(SystemTime::now);
        if ctr.instance != Some(started) {
            ctr.instance = Some(started);
            ctr.probes = ProbeSet::default();
        }
        let spec = ContainerProbes::of(c);
        spec.init(&mut ctr.probes);
        let due = spec.due(&ctr.probes, started, SystemTime::now(), Instant::now());
        let id = ctr.id.clone();
        for kind in due {
            let Some(probe) = spec.probe(kind).cloned() else { continue };
            let result = self.check(&id, &probe, pod_ip).await;
            if let Err(msg) = &result {
                tracing::debug!(container = %name, probe = kind.name(), error = %msg, "probe failed");
                self.events.emit(
                    pod,
                    Some(&name),
                    Type::Warning,
                    "Unhealthy",
                    &format!("{} probe failed: {msg}", kind.name()),
                );
            }
            let Some(ctr) = st.containers.get_mut(&name) else { return };
            if let probes::Action::Restart(why) = spec.apply(&mut ctr.probes, kind, result.is_ok(), Instant::now()) {
                let msg = format!("Container {name} {why}");
                tracing::info!(container = %name, reason = %why, "killing container");
                self.events.emit(pod, Some(&name), Type::Normal, "Killing", &msg);
                ctr.kill_reason = Some(msg);
                ctr.probes.ready = false;
                let grace =
                    Duration::from_secs(pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(30).min(300));
                let started = Instant::now();
                let _ = self.run_hook(pod, c, &id, st.ip, "preStop", grace).await;
                self.stop_container(&id, grace.saturating_sub(started.elapsed())).await;
                return;
            }
        }
    }

    /// Runs one probe once: Ok, or why it failed.
    async fn check(&self, id: &str, probe: &probes::Probe, pod_ip: std::net::IpAddr) -> Result<(), String> {
        self.run_handler(id, &probe.handler, pod_ip, probe.timeout).await
    }

    /// Runs a probe's or hook's action once, within `timeout`.
    async fn run_handler(
        &self,
        id: &str,
        handler: &probes::Handler,
        pod_ip: std::net::IpAddr,
        timeout: Duration,
    ) -> Result<(), String> {
        match handler {
            probes::Handler::Exec(cmd) => self.exec_probe(id, cmd.clone(), timeout).await,
            probes::Handler::Http { host, port, path, headers, https: false } => {
                probes::check_http(host, pod_ip, *port, path, headers, timeout).await
            }
            probes::Handler::Http { host, port, https: true, .. } | probes::Handler::Tcp { host, port } => {
                probes::check_tcp(host, pod_ip, *port, timeout).await
            }
            probes::Handler::Grpc { port } => probes::check_tcp(&None, pod_ip, *port, timeout).await,
            probes::Handler::Sleep(d) => {
                tokio::time::sleep((*d).min(timeout)).await;
                Ok(())
            }
        }
    }

    /// Runs a lifecycle hook of a container if it has one; Err is the hook's failure.
    async fn run_hook(
        &self,
        pod: &Value,
        c: &Value,
        id: &str,
        pod_ip: Option<Ipv4Addr>,
        which: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let Some(h) = probes::hook(c, which) else { return Ok(()) };
        let ip = pod_ip.map(std::net::IpAddr::V4).unwrap_or(self.cfg.address);
        let r = self.run_handler(id, &h, ip, timeout).await;
        if let Err(e) = &r {
            let name = c["name"].as_str().unwrap_or_default();
            let reason = if which == "preStop" { "FailedPreStopHook" } else { "FailedPostStartHook" };
            self.events.emit(
                pod,
                Some(name),
                Type::Warning,
                reason,
                &format!("{which} hook for container {name} failed: {e}"),
            );
        }
        r
    }

    /// SIGTERM (the image's stop signal), then SIGKILL after `grace`.
    async fn stop_container(&self, id: &str, grace: Duration) {
        let runtime = self.runtime.clone();
        let id = id.to_string();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = runtime.stop(&id, grace.max(Duration::from_millis(100)));
        })
        .await;
    }

    /// Runs a command in the container; success is exit code 0 within the timeout.
    async fn exec_probe(&self, id: &str, cmd: Vec<String>, timeout: Duration) -> Result<(), String> {
        let runtime = self.runtime.clone();
        let id = id.to_string();
        let run = tokio::task::spawn_blocking(move || runtime.exec(&id, &cmd, timeout));
        run.await.map_err(|e| format!("probe task: {e}"))?
    }

    /// Makes one container run (or stay finished) per the restart policy; returns its status.
    async fn ensure_container(
        &self,
        uid: &str,
        pod: &Value,
        c: &Value,
        st: &mut PodState,
        restart_policy: &str,
    ) -> Result<Option<Status>, AgentError> {
        let name = c["name"].as_str().unwrap_or_default().to_string();
        let id = container_id(uid, &name);
        let ctr = st.containers.entry(name.clone()).or_insert_with(|| Ctr { id: id.clone(), ..Ctr::default() });
        let current = self.runtime.state(&id).ok();
        match current.as_ref().map(|s| s.status) {
            Some(Status::Running) | Some(Status::Created) => {
                if let Some(s) = &current {
                    // A container that ran long enough forgets its back-off.
                    if s.started_at.and_then(|t| t.elapsed().ok()).is_some_and(|d| d > BACKOFF_RESET) {
                        ctr.backoff = Duration::ZERO;
                    }
                }
                return Ok(current.map(|s| s.status));
            }
            Some(Status::Stopped) => {
                let s = current.as_ref().expect("matched Some");
                let code = s.exit_code.unwrap_or(-1);
                let reason = if s.oom_killed {
                    "OOMKilled"
                } else if code == 0 {
                    "Completed"
                } else {
                    "Error"
                };
                let mut term = json!({
                    "exitCode": code,
                    "reason": reason,
                    "startedAt": s.started_at.map(rfc3339),
                    "finishedAt": s.finished_at.map(rfc3339),
                    "containerID": format!("shoal://{id}"),
                });
                if let Some(why) = &ctr.kill_reason {
                    term["message"] = json!(why);
                }
                let restart = match restart_policy {
                    "Always" => true,
                    "OnFailure" => code != 0 || ctr.kill_reason.is_some(),
                    _ => false,
                };
                if ctr.last_terminated.as_ref() != Some(&term) {
                    ctr.last_terminated = Some(term);
                    if restart {
                        ctr.backoff =
                            if ctr.backoff.is_zero() { BACKOFF_BASE } else { (ctr.backoff * 2).min(BACKOFF_MAX) };
                        ctr.retry_at = Some(Instant::now() + ctr.backoff);
                        ctr.waiting = Some((
                            "CrashLoopBackOff".into(),
                            format!("back-off {}s restarting failed container={name}", ctr.backoff.as_secs()),
                        ));
                        self.events.emit(
                            pod,
                            Some(&name),
                            Type::Warning,
                            "BackOff",
                            &format!("Back-off restarting failed container {name} in pod {}", pod_ref(pod)),
                        );
                    }
                }
                if !restart {
                    return Ok(Some(Status::Stopped));
                }
                if ctr.retry_at.is_some_and(|t| Instant::now() < t) {
                    return Ok(Some(Status::Stopped));
                }
                self.remove_container(&id, uid).await;
                ctr.restarts += 1;
            }
            None => {
                if ctr.retry_at.is_some_and(|t| Instant::now() < t) {
                    return Ok(None);
                }
            }
        }
        // Create and start.
        let restarts = ctr.restarts;
        match self.create_container(uid, pod, c, st_ip(st), st.sandbox.clone(), &id, restarts).await {
            Ok(image_id) => {
                tracing::debug!(pod = %pod_ref(pod), container = %name, "pod start: container started");
                let ctr = st.containers.get_mut(&name).expect("inserted above");
                ctr.image_id = image_id;
                ctr.waiting = None;
                ctr.retry_at = None;
                ctr.kill_reason = None;
                ctr.probes = ProbeSet::default();
                ctr.instance = None;
                self.events.emit(pod, Some(&name), Type::Normal, "Created", &format!("Created container: {name}"));
                self.events.emit(pod, Some(&name), Type::Normal, "Started", &format!("Started container {name}"));
                if self.run_hook(pod, c, &id, st.ip, "postStart", Duration::from_secs(30)).await.is_err() {
                    // As the kubelet: a failed postStart hook kills the container.
                    let msg = format!("Container {name} failed post-start hook, will be restarted");
                    self.events.emit(pod, Some(&name), Type::Normal, "Killing", &msg);
                    if let Some(ctr) = st.containers.get_mut(&name) {
                        ctr.kill_reason = Some(msg);
                    }
                    self.stop_container(&id, Duration::from_secs(2)).await;
                }
                Ok(Some(Status::Running))
            }
            Err((reason, message)) => {
                tracing::warn!(container = %name, %reason, %message, "container not started");
                self.events.emit(pod, Some(&name), Type::Warning, "Failed", &format!("Error: {reason}: {message}"));
                let ctr = st.containers.get_mut(&name).expect("inserted above");
                ctr.waiting = Some((reason, message));
                ctr.backoff = if ctr.backoff.is_zero() { BACKOFF_BASE } else { (ctr.backoff * 2).min(BACKOFF_MAX) };
                ctr.retry_at = Some(Instant::now() + ctr.backoff.min(Duration::from_secs(20)));
                Ok(None)
            }
        }
    }

    /// The declared devices this container requests (limits or requests of their resource
    /// names), held by this pod until it is torn down.
    fn claim_devices(&self, uid: &str, c: &Value) -> Result<Vec<PathBuf>, (String, String)> {
        let mut out = Vec::new();
        let Ok(mut owners) = self.device_owners.lock() else { return Ok(out) };
        let resources: std::collections::BTreeSet<&str> = self.devices.iter().map(|d| d.resource.as_str()).collect();
        for resource in resources {
            let want = c["resources"]["limits"][resource]
                .as_str()
                .or_else(|| c["resources"]["requests"][resource].as_str())
                .and_then(|q| q.parse::<usize>().ok())
                .or_else(|| c["resources"]["limits"][resource].as_u64().map(|n| n as usize))
                .unwrap_or(0);
            if want == 0 {
                continue;
            }
            let mine: Vec<PathBuf> = self
                .devices
                .iter()
                .filter(|d| d.resource == resource && owners.get(&d.path).is_none_or(|o| o == uid))
                .map(|d| d.path.clone())
                .take(want)
                .collect();
            if mine.len() < want {
                return Err((
                    "CreateContainerError".into(),
                    format!("{want} {resource} requested, {} free on this node", mine.len()),
                ));
            }
            for p in &mine {
                owners.insert(p.clone(), uid.to_string());
            }
            out.extend(mine);
        }
        Ok(out)
    }

    async fn remove_container(&self, id: &str, uid: &str) {
        let (images, runtime, id) = (self.images.clone(), self.runtime.clone(), id.to_string());
        let rootfs = self.pod_dir(uid).join(&id).join("rootfs");
        // Unmounting and removing a writable layer block: off the async workers.
        let _ = tokio::task::spawn_blocking(move || {
            let _ = runtime.delete(&id, true);
            let _ = images.remove_rootfs(&id, &rootfs);
        })
        .await;
    }

    /// Pulls if needed, prepares the rootfs and bundle, creates and starts the container.
    /// Returns the image id, or the waiting reason and message.
    #[allow(clippy::too_many_arguments)]
    async fn create_container(
        &self,
        uid: &str,
        pod: &Value,
        c: &Value,
        ip: Option<Ipv4Addr>,
        sandbox: Option<Sandbox>,
        id: &str,
        restarts: u32,
    ) -> Result<String, (String, String)> {
        let image = c["image"].as_str().unwrap_or_default();
        let policy = c["imagePullPolicy"].as_str().unwrap_or("IfNotPresent");
        let present = self.images.get(image).map_err(|e| ("InvalidImageName".to_string(), chain(&e)))?;
        let info = match (present, policy) {
            (Some(info), "IfNotPresent") | (Some(info), "Never") => {
                self.events.emit(
                    pod,
                    c["name"].as_str(),
                    Type::Normal,
                    "Pulled",
                    &format!("Container image \"{image}\" already present on machine"),
                );
                info
            }
            (None, "Never") => {
                return Err((
                    "ErrImageNeverPull".into(),
                    format!("Container image \"{image}\" is not present with pull policy of Never"),
                ))
            }
            (present, _) => {
                let regs =
                    shoal_images::Registries::load(&self.cfg.data_dir.join("registries.toml")).unwrap_or_default();
                let pull = self.images.pull(image, &regs, shoal_images::Auth::Anonymous);
                // With a local copy, an unreachable registry must not hold the pod for long.
                let limit = if present.is_some() { Duration::from_secs(3) } else { Duration::from_secs(300) };
                let pulled = match tokio::time::timeout(limit, pull).await {
                    Ok(r) => r.map_err(|e| chain(&e)),
                    Err(_) => Err(format!("no answer from the registry within {}s", limit.as_secs())),
                };
                crate::metrics::images::pulled(pulled.is_ok());
                match pulled {
                    Ok(info) => {
                        self.events.emit(
                            pod,
                            c["name"].as_str(),
                            Type::Normal,
                            "Pulled",
                            &format!("Successfully pulled image \"{image}\""),
                        );
                        info
                    }
                    Err(e) => match present {
                        // Offline fleets: a failed pull of an image we hold still runs it.
                        Some(info) => {
                            tracing::info!(%image, error = %e, "pull failed; using the local image");
                            self.events.emit(
                                pod,
                                c["name"].as_str(),
                                Type::Normal,
                                "Pulled",
                                &format!("Container image \"{image}\" already present on machine"),
                            );
                            info
                        }
                        None => {
                            self.events.emit(
                                pod,
                                c["name"].as_str(),
                                Type::Warning,
                                "Failed",
                                &format!("Failed to pull image \"{image}\": {e}"),
                            );
                            return Err(("ErrImagePull".into(), format!("failed to pull image \"{image}\": {e}")));
                        }
                    },
                }
            }
        };
        let env = super::env::container_env(pod, c, ip, &self.cfg).await;
        let dir = self.pod_dir(uid);
        let mut mounts = vec![
            (dir.join("hosts").to_string_lossy().to_string(), "/etc/hosts".to_string(), false),
            (dir.join("hostname").to_string_lossy().to_string(), "/etc/hostname".to_string(), false),
            (dir.join("resolv.conf").to_string_lossy().to_string(), "/etc/resolv.conf".to_string(), false),
        ];
        mounts.extend(volume_mounts(pod, c, &dir)?);
        let devices = self.claim_devices(uid, c)?;
        let cgroups_path =
            format!("/shoal-{}/pod{}/{}", self.cfg.node_name, short(uid), c["name"].as_str().unwrap_or("c"));
        let log_path = self.log_path(pod, c["name"].as_str().unwrap_or("c"), restarts);
        let target_pid_ns = self.target_pid_namespace(uid, c)?;
        // The rootfs mount, the bundle and the shim's create and start block on the kernel and
        // on the container's init: on the blocking pool, so a burst of pod starts never holds
        // the async workers (the API, Raft and the watches share them).
        let (images, rt) = (self.images.clone(), self.runtime.clone());
        let (pod_v, c_v, image_ref, id_s, config) =
            (pod.clone(), c.clone(), image.to_string(), id.to_string(), info.config.clone());
        let bundle = dir.join(id);
        tokio::task::spawn_blocking(move || {
            let (pod, c, image, id) = (&pod_v, &c_v, image_ref.as_str(), id_s.as_str());
            let rootfs = bundle.join("rootfs");
            let _ = std::fs::create_dir_all(&rootfs);
            let _ = rt.delete(id, true);
            let _ = images.remove_rootfs(id, &rootfs);
            images.prepare_rootfs(image, id, &rootfs).map_err(|e| ("CreateContainerError".to_string(), chain(&e)))?;
            let (uid_n, gid_n) = spec::run_as(pod, c, spec::resolve_user(&config.user, &rootfs));
            if let Err(reason) = spec::check_security(pod, c) {
                let _ = images.remove_rootfs(id, &rootfs);
                return Err(("CreateContainerConfigError".to_string(), reason));
            }
            // As the kubelet: runAsNonRoot (the container's, else the pod's) refuses a root user.
            let non_root = c["securityContext"]["runAsNonRoot"]
                .as_bool()
                .or_else(|| pod["spec"]["securityContext"]["runAsNonRoot"].as_bool());
            if non_root == Some(true) && uid_n == 0 {
                let _ = images.remove_rootfs(id, &rootfs);
                return Err((
                    "CreateContainerConfigError".to_string(),
                    "container has runAsNonRoot and image will run as root".to_string(),
                ));
            }
            let empty = PathBuf::new();
            let sb = sandbox.as_ref();
            let input = ContainerInput {
                pod,
                container: c,
                image: &config,
                rootfs: &rootfs,
                netns: sb.map(|s| s.netns_path.as_path()).unwrap_or(&empty),
                ipcns: sb.map(|s| s.ipc_ns_path.as_path()).unwrap_or(&empty),
                utsns: sb.map(|s| s.uts_ns_path.as_path()).unwrap_or(&empty),
                env,
                mounts,
                cgroups_path,
                uid: uid_n,
                gid: gid_n,
            };
            let mut spec_json = spec::build(&input);
            if let Some(path) = &target_pid_ns {
                join_pid_namespace(&mut spec_json, path);
            }
            for dev in devices {
                spec::add_device(&mut spec_json, &dev)
                    .map_err(|e| ("CreateContainerError".to_string(), format!("device {}: {e}", dev.display())))?;
            }
            let body = serde_json::to_vec_pretty(&spec_json).unwrap_or_default();
            std::fs::write(bundle.join("config.json"), body)
                .map_err(|e| ("CreateContainerError".to_string(), e.to_string()))?;
            if let Some(p) = log_path.parent() {
                // Root only: what a container prints may be a secret.
                use std::os::unix::fs::DirBuilderExt;
                let _ = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(p);
            }
            let opts = CreateOpts {
                log_path: Some(log_path),
                open_stdin: c["stdin"].as_bool() == Some(true),
                stdin_once: c["stdinOnce"].as_bool() == Some(true),
                ..CreateOpts::default()
            };
            rt.create(id, &bundle, &opts).map_err(|e| ("CreateContainerError".to_string(), chain(&e)))?;
            rt.start(id).map_err(|e| ("RunContainerError".to_string(), chain(&e)))
        })
        .await
        .map_err(|e| ("CreateContainerError".to_string(), format!("container task: {e}")))??;
        Ok(format!("{}@{}", info.names.first().cloned().unwrap_or_else(|| image.to_string()), info.digest))
    }

    /// The pid namespace an ephemeral container with `targetContainerName` joins: its
    /// target's (as the kubelet's namespace targeting), which must be running.
    fn target_pid_namespace(&self, uid: &str, c: &Value) -> Result<Option<PathBuf>, (String, String)> {
        let Some(target) = c["targetContainerName"].as_str().filter(|t| !t.is_empty()) else { return Ok(None) };
        match self.runtime.state(&container_id(uid, target)) {
            Ok(s) if s.status == Status::Running && s.pid > 0 => {
                Ok(Some(self.cfg.paths.proc.join(s.pid.to_string()).join("ns/pid")))
            }
            _ => Err((
                "CreateContainerError".to_string(),
                format!("target container {target:?} is not running, so its process namespace cannot be shared"),
            )),
        }
    }

    /// /etc/hosts, /etc/hostname, /etc/resolv.conf and the volumes: emptyDir, the ones the agent
    /// fills (configMap, secret, downwardAPI, projected, rewritten in place when their sources
    /// change) and persistentVolumeClaims (a link to the bound volume's directory).
    async fn write_pod_files(&self, pod: &Value, st: &PodState, dir: &Path) -> Result<(), AgentError> {
        let io = |e: std::io::Error| AgentError::Pod(format!("writing pod files in {}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        let name = pod["metadata"]["name"].as_str().unwrap_or("pod");
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let ip = st.ip.map(|i| i.to_string()).unwrap_or_else(|| self.cfg.address.to_string());
        let hosts = super::dns_files::hosts(pod, ns, &ip);
        write_if_changed(&dir.join("hosts"), hosts.as_bytes()).map_err(io)?;
        let hostname = pod["spec"]["hostname"].as_str().filter(|h| !h.is_empty()).unwrap_or(name);
        write_if_changed(&dir.join("hostname"), format!("{hostname}\n").as_bytes()).map_err(io)?;
        let resolv =
            super::dns_files::resolv_conf(pod, ns, &self.cfg.dns_ip.to_string(), &super::dns_files::host_resolv());
        write_if_changed(&dir.join("resolv.conf"), resolv.as_bytes()).map_err(io)?;
        let vols: Vec<Value> = pod["spec"]["volumes"].as_array().cloned().unwrap_or_default();
        let (cm_names, secret_names) = volumes::referenced(&vols);
        let mut configmaps = BTreeMap::new();
        for n in cm_names {
            if let Ok(Some(o)) = self.cfg.objects.get(&super::res("configmaps"), Some(ns), &n).await {
                configmaps.insert(n, o);
            }
        }
        let mut secrets = BTreeMap::new();
        for n in secret_names {
            if let Ok(Some(o)) = self.cfg.objects.get(&super::res("secrets"), Some(ns), &n).await {
                secrets.insert(n, o);
            }
        }
        let binding =
            if vols.iter().any(volumes::wants_token) { self.token_binding(pod).await } else { Default::default() };
        let (node_cpu_millis, node_memory_bytes) = super::node_allocatable(&self.cfg.paths.proc);
        for v in &vols {
            let vname = v["name"].as_str().unwrap_or_default();
            if vname.is_empty() || vname.contains('/') || vname.starts_with('.') {
                continue;
            }
            let vdir = dir.join("volumes").join(vname);
            if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                if let Err(msg) = self.link_claim(ns, claim, &vdir).await {
                    self.events.emit(pod, None, Type::Warning, "FailedMount", &msg);
                    return Err(AgentError::Pod(msg));
                }
                continue;
            }
            std::fs::create_dir_all(&vdir).map_err(io)?;
            if v["emptyDir"]["medium"].as_str() == Some("Memory") {
                let size = v["emptyDir"]["sizeLimit"].as_str().and_then(spec::bytes);
                mount_tmpfs(&vdir, size).map_err(io)?;
                continue;
            }
            let mint = |r: &volumes::TokenRequest<'_>| -> Result<String, String> {
                let signer =
                    self.signer.as_ref().map(token::TokenKeys::signer).ok_or("this node holds no cluster secrets")?;
                let now = jiff::Timestamp::now().as_second();
                if let Ok(old) = std::fs::read_to_string(vdir.join(r.path)) {
                    if token::still_fresh(&old, &r.audiences, &binding, now) {
                        return Ok(old);
                    }
                }
                signer.sign(&token::claims(&binding, &r.audiences, now, r.expiration_secs)).map_err(|e| e.to_string())
            };
            let src = volumes::Sources {
                configmaps: &configmaps,
                secrets: &secrets,
                token: &mint,
                ca_crt: self.ca_crt.as_deref(),
                node_cpu_millis,
                node_memory_bytes,
            };
            match volumes::files(pod, v, &src) {
                None => {}
                Some(Ok(files)) => {
                    volumes::write(&vdir, &files).map_err(io)?;
                }
                Some(Err(e)) => {
                    let err = AgentError::Mount { volume: vname.to_string(), message: e.to_string() };
                    self.events.emit(pod, None, Type::Warning, "FailedMount", &err.to_string());
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Points a claim's volume directory at the node-local directory of its bound volume.
    async fn link_claim(&self, ns: &str, claim: &str, vdir: &Path) -> Result<(), String> {
        let pvc = self
            .cfg
            .objects
            .get(&super::res("persistentvolumeclaims"), Some(ns), claim)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("persistentvolumeclaim \"{claim}\" not found"))?;
        let pv_name = pvc["spec"]["volumeName"].as_str().filter(|v| !v.is_empty());
        let Some(pv_name) = pv_name.filter(|_| pvc["status"]["phase"] == "Bound") else {
            return Err(format!("persistentvolumeclaim \"{claim}\" is not bound yet"));
        };
        let pv = self
            .cfg
            .objects
            .get(&super::res("persistentvolumes"), None, pv_name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("persistentvolume \"{pv_name}\" not found"))?;
        let node = self.cfg.objects.get(&self.nodes, None, &self.cfg.node_name).await.ok().flatten();
        if let Some(node) = &node {
            if !crate::reconcile::volumes::pv_fits_node(&pv, node) {
                return Err(format!("persistentvolume \"{pv_name}\" is bound to another node"));
            }
        }
        let path = crate::reconcile::volumes::host_path(&pv)
            .ok_or_else(|| format!("persistentvolume \"{pv_name}\" has no local or hostPath source"))?;
        let path = PathBuf::from(path);
        if crate::reconcile::volumes::is_provisioned_here(&pv) || pv["spec"]["hostPath"]["type"] == "DirectoryOrCreate"
        {
            std::fs::create_dir_all(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        } else if !path.is_dir() {
            return Err(format!("path {} of persistentvolume \"{pv_name}\" does not exist", path.display()));
        }
        if std::fs::read_link(vdir).ok().as_deref() == Some(path.as_path()) {
            return Ok(());
        }
        if let Some(parent) = vdir.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        let _ = std::fs::remove_file(vdir);
        let _ = std::fs::remove_dir(vdir);
        std::os::unix::fs::symlink(&path, vdir).map_err(|e| format!("linking {}: {e}", vdir.display()))
    }

    /// The pod as this node runs it: with the ServiceAccount token volume injected (unless
    /// the pod or its ServiceAccount opts out, or this node cannot sign tokens).
    pub(crate) async fn effective_pod(&self, pod: &Value) -> Value {
        if self.signer.is_none() {
            return pod.clone();
        }
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let sa_name = pod["spec"]["serviceAccountName"].as_str().filter(|s| !s.is_empty()).unwrap_or("default");
        let sa = self.cfg.objects.get(&super::res("serviceaccounts"), Some(ns), sa_name).await.ok().flatten();
        volumes::with_service_account_volume(pod, volumes::automount(pod, sa.as_ref()))
    }

    /// Who the pod's tokens speak for: its ServiceAccount (with uid), the pod and this node.
    async fn token_binding(&self, pod: &Value) -> token::Binding {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let sa_name = pod["spec"]["serviceAccountName"].as_str().filter(|s| !s.is_empty()).unwrap_or("default");
        let sa = self.cfg.objects.get(&super::res("serviceaccounts"), Some(ns), sa_name).await.ok().flatten();
        let node = self.cfg.objects.get(&self.nodes, None, &self.cfg.node_name).await.ok().flatten();
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        token::Binding {
            namespace: ns.to_string(),
            service_account: sa_name.to_string(),
            service_account_uid: sa.map(|a| s(&a["metadata"]["uid"])).unwrap_or_default(),
            pod_name: s(&pod["metadata"]["name"]),
            pod_uid: s(&pod["metadata"]["uid"]),
            node_name: self.cfg.node_name.clone(),
            node_uid: node.map(|n| s(&n["metadata"]["uid"])).unwrap_or_default(),
        }
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

    /// Computes the pod status and writes it if it differs from the stored one.
    async fn write_status(&self, uid: &str, pod: &Value, st: &PodState) -> Result<(), AgentError> {
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

    fn compute_status(&self, _uid: &str, pod: &Value, st: &PodState) -> Value {
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
fn pod_ref(pod: &Value) -> String {
    format!(
        "{}_{}",
        pod["metadata"]["name"].as_str().unwrap_or_default(),
        pod["metadata"]["namespace"].as_str().unwrap_or("default")
    )
}

fn st_ip(st: &PodState) -> Option<Ipv4Addr> {
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

/// Points the spec's own pid namespace at `path` (none with hostPID: the host's is shared).
fn join_pid_namespace(spec: &mut Value, path: &Path) {
    for ns in spec["linux"]["namespaces"].as_array_mut().into_iter().flatten() {
        if ns["type"] == "pid" {
            ns["path"] = json!(path);
        }
    }
}

/// A bind mount: host path, container path, read-only.
type Mount = (String, String, bool);

/// The volume mounts of container `c`; a `subPath` that leads out of its volume is the
/// kubelet's CreateContainerConfigError.
fn volume_mounts(pod: &Value, c: &Value, dir: &Path) -> Result<Vec<Mount>, (String, String)> {
    let volumes: BTreeMap<&str, &Value> = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v["name"].as_str()?, v)))
        .collect();
    let mut out = Vec::new();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let (Some(name), Some(path)) = (m["name"].as_str(), m["mountPath"].as_str()) else { continue };
        let Some(v) = volumes.get(name) else { continue };
        if name.contains('/') || name.starts_with('.') {
            continue;
        }
        let ro = m["readOnly"].as_bool().unwrap_or(false);
        let mut src = if let Some(hp) = v["hostPath"]["path"].as_str() {
            PathBuf::from(hp)
        } else {
            dir.join("volumes").join(name)
        };
        if let Some(sub) = m["subPath"].as_str().filter(|s| !s.is_empty()) {
            src = super::subpath::resolve(&src, sub).map_err(|e| {
                (
                    "CreateContainerConfigError".to_string(),
                    format!(
                        "failed to prepare subPath for volumeMount {name:?} of container {:?}: {}",
                        c["name"].as_str().unwrap_or(""),
                        chain(&e)
                    ),
                )
            })?;
        }
        let ro = ro
            || ["configMap", "secret", "projected", "downwardAPI"].iter().any(|k| v.get(*k).is_some())
            || v["persistentVolumeClaim"]["readOnly"].as_bool() == Some(true);
        out.push((src.to_string_lossy().to_string(), path.to_string(), ro));
    }
    Ok(out)
}

/// Whether `path` is a mount point (its device differs from its parent's).
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), path.parent().map(std::fs::metadata)) {
        (Ok(m), Some(Ok(p))) => m.dev() != p.dev(),
        _ => false,
    }
}

/// An emptyDir with `medium: Memory`: a tmpfs (of `sizeLimit` bytes when set), mounted once.
fn mount_tmpfs(dir: &Path, size: Option<u64>) -> std::io::Result<()> {
    if is_mount_point(dir) {
        return Ok(());
    }
    let mut data = String::from("mode=1777");
    if let Some(bytes) = size.filter(|b| *b > 0) {
        data.push_str(&format!(",size={bytes}"));
    }
    use nix::mount::MsFlags;
    nix::mount::mount(Some("tmpfs"), dir, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some(data.as_str()))
        .map_err(std::io::Error::from)
}

/// Unmounts the tmpfs volumes of a pod before its directory is removed.
fn unmount_volumes(volumes: &Path) {
    for e in std::fs::read_dir(volumes).into_iter().flatten().flatten() {
        let p = e.path();
        // A claim's volume is a link to its directory on the node: nothing mounted there.
        if e.file_type().is_ok_and(|t| t.is_symlink()) {
            continue;
        }
        if is_mount_point(&p) {
            if let Err(err) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(path = %p.display(), error = %err, "unmounting a memory volume");
            }
        }
    }
}

fn write_if_changed(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).ok().as_deref() == Some(data) {
        return Ok(());
    }
    std::fs::write(path, data)
}
