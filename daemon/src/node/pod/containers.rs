//! One container of a pod: ensured (created, started, restarted with back-off under the
//! restart policy), created from its spec with the devices, namespaces and mounts it asks for,
//! stopped and removed.
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_runtime::{CreateOpts, Sandbox, Status};

use super::files::volume_mounts;
use super::status::st_ip;

use super::{chain, container_id, pod_ref, rfc3339, short, Ctr, PodState, BACKOFF_BASE, BACKOFF_MAX, BACKOFF_RESET};
use crate::node::probes::ProbeSet;
use crate::node::spec::{self, ContainerInput};
use crate::node::{Agent, AgentError};
use crate::reconcile::events::Type;

impl Agent {
    /// SIGTERM (the image's stop signal), then SIGKILL after `grace`.
    pub(super) async fn stop_container(&self, id: &str, grace: Duration) {
        let runtime = self.runtime.clone();
        let id = id.to_string();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = runtime.stop(&id, grace.max(Duration::from_millis(100)));
        })
        .await;
    }

    /// Makes one container run (or stay finished) per the restart policy; returns its status.
    pub(super) async fn ensure_container(
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
    pub(super) fn claim_devices(&self, uid: &str, c: &Value) -> Result<Vec<PathBuf>, (String, String)> {
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

    pub(super) async fn remove_container(&self, id: &str, uid: &str) {
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
    pub(super) async fn create_container(
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
        let env = crate::node::env::container_env(pod, c, ip, &self.cfg).await;
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
    pub(super) fn target_pid_namespace(&self, uid: &str, c: &Value) -> Result<Option<PathBuf>, (String, String)> {
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
}

/// Points the spec's own pid namespace at `path` (none with hostPID: the host's is shared).
pub(super) fn join_pid_namespace(spec: &mut Value, path: &Path) {
    for ns in spec["linux"]["namespaces"].as_array_mut().into_iter().flatten() {
        if ns["type"] == "pid" {
            ns["path"] = json!(path);
        }
    }
}
