//! Probes and lifecycle hooks of a pod's running containers: when a probe is due, what a
//! failed liveness or startup probe does, and the exec/HTTP/TCP handlers of postStart and preStop.
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use shoal_runtime::Status;

use super::PodState;
use crate::node::probes::{self, ContainerProbes, ProbeSet};
use crate::node::Agent;
use crate::reconcile::events::Type;

impl Agent {
    /// Runs the probes of a running container that are due, and kills it when its liveness
    /// or startup probe has failed often enough (the restart policy then restarts it).
    pub(super) async fn run_probes(&self, pod: &Value, c: &Value, st: &mut PodState) {
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
    pub(super) async fn check(&self, id: &str, probe: &probes::Probe, pod_ip: std::net::IpAddr) -> Result<(), String> {
        self.run_handler(id, &probe.handler, pod_ip, probe.timeout).await
    }

    /// Runs a probe's or hook's action once, within `timeout`.
    pub(super) async fn run_handler(
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
    pub(super) async fn run_hook(
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

    /// Runs a command in the container; success is exit code 0 within the timeout.
    pub(super) async fn exec_probe(&self, id: &str, cmd: Vec<String>, timeout: Duration) -> Result<(), String> {
        let runtime = self.runtime.clone();
        let id = id.to_string();
        let run = tokio::task::spawn_blocking(move || runtime.exec(&id, &cmd, timeout));
        run.await.map_err(|e| format!("probe task: {e}"))?
    }
}
