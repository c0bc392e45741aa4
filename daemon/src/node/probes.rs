//! Container probes (startup, liveness, readiness): what a probe asks, when it is due, and how
//! consecutive results turn into a container's started/ready state or a restart. The checks
//! themselves (exec in the container, HTTP GET and TCP connect from the node to the pod IP)
//! are in [`check_http`], [`check_tcp`] and the agent's exec path.
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a probe runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Handler {
    Exec(Vec<String>),
    /// HTTP GET; HTTPS endpoints are checked by connecting only (no TLS handshake).
    Http {
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
        https: bool,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
    /// gRPC health; checked by connecting to the port.
    Grpc {
        port: u16,
    },
    /// A lifecycle hook's `sleep`.
    Sleep(Duration),
}

/// One probe of a container with its timing fields (Kubernetes defaults applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Probe {
    pub handler: Handler,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

fn secs(v: &Value, default: u64, min: u64) -> Duration {
    Duration::from_secs(v.as_u64().unwrap_or(default).max(min))
}

/// Resolves a probe port: a number, or the name of one of the container's ports.
fn port(v: &Value, container: &Value) -> Option<u16> {
    if let Some(n) = v.as_u64() {
        return u16::try_from(n).ok();
    }
    let name = v.as_str()?;
    if let Ok(n) = name.parse::<u16>() {
        return Some(n);
    }
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|n| u16::try_from(n).ok())
}

impl Probe {
    /// Reads `container[field]` (`startupProbe`, `livenessProbe`, `readinessProbe`).
    pub(crate) fn parse(container: &Value, field: &str) -> Option<Probe> {
        let p = container.get(field).filter(|p| p.is_object())?;
        let handler = parse_handler(p, container)?;
        let success_threshold = p["successThreshold"].as_u64().unwrap_or(1).max(1) as u32;
        Some(Probe {
            handler,
            initial_delay: secs(&p["initialDelaySeconds"], 0, 0),
            period: secs(&p["periodSeconds"], 10, 1),
            timeout: secs(&p["timeoutSeconds"], 1, 1),
            // Liveness and startup probes must have 1; Kubernetes validation enforces it.
            success_threshold: if field == "readinessProbe" { success_threshold } else { 1 },
            failure_threshold: p["failureThreshold"].as_u64().unwrap_or(3).max(1) as u32,
        })
    }
}

/// A lifecycle hook of a container (`postStart`, `preStop`).
pub(crate) fn hook(container: &Value, which: &str) -> Option<Handler> {
    let h = container["lifecycle"].get(which).filter(|h| h.is_object())?;
    if let Some(n) = h["sleep"]["seconds"].as_u64() {
        return Some(Handler::Sleep(Duration::from_secs(n)));
    }
    parse_handler(h, container)
}

/// The action of a probe or hook.
fn parse_handler(p: &Value, container: &Value) -> Option<Handler> {
    {
        let handler = if let Some(cmd) = p["exec"]["command"].as_array() {
            Handler::Exec(cmd.iter().filter_map(|s| s.as_str().map(String::from)).collect())
        } else if p["httpGet"].is_object() {
            let h = &p["httpGet"];
            Handler::Http {
                host: h["host"].as_str().filter(|s| !s.is_empty()).map(String::from),
                port: port(&h["port"], container)?,
                path: h["path"].as_str().filter(|s| !s.is_empty()).unwrap_or("/").to_string(),
                headers: h["httpHeaders"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| {
                        Some((x["name"].as_str()?.to_string(), x["value"].as_str().unwrap_or("").to_string()))
                    })
                    .collect(),
                https: h["scheme"].as_str() == Some("HTTPS"),
            }
        } else if p["tcpSocket"].is_object() {
            let t = &p["tcpSocket"];
            Handler::Tcp {
                host: t["host"].as_str().filter(|s| !s.is_empty()).map(String::from),
                port: port(&t["port"], container)?,
            }
        } else if p["grpc"].is_object() {
            Handler::Grpc { port: port(&p["grpc"]["port"], container)? }
        } else {
            return None;
        };
        Some(handler)
    }
}

/// Consecutive results of one probe of one container instance.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tracker {
    last_run: Option<Instant>,
    successes: u32,
    failures: u32,
}

/// What a result means once thresholds are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not enough consecutive results to change anything.
    Pending,
    /// success_threshold consecutive successes.
    Passed,
    /// failure_threshold consecutive failures.
    Failed,
}

impl Tracker {
    /// Whether the probe should run now for a container started at `started`.
    pub(crate) fn due(&self, p: &Probe, started: SystemTime, now_wall: SystemTime, now: Instant) -> bool {
        let age = now_wall.duration_since(started).unwrap_or(Duration::ZERO);
        if age < p.initial_delay {
            return false;
        }
        self.last_run.is_none_or(|t| now.saturating_duration_since(t) >= p.period)
    }

    /// Records one result and says what the consecutive results amount to.
    pub(crate) fn observe(&mut self, p: &Probe, ok: bool, now: Instant) -> Verdict {
        self.last_run = Some(now);
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.successes >= p.success_threshold {
                return Verdict::Passed;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= p.failure_threshold {
                return Verdict::Failed;
            }
        }
        Verdict::Pending
    }
}

/// The probe state of one container instance; reset when the container is (re)created.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProbeSet {
    pub startup: Tracker,
    pub liveness: Tracker,
    pub readiness: Tracker,
    /// The startup probe has passed (or there is none).
    pub started: bool,
    /// The readiness probe has passed (or there is none).
    pub ready: bool,
    /// Set once, at the first pass over a container with this state.
    pub initialized: bool,
}

/// What the agent must do after a probe pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    None,
    /// Kill the container so the restart policy restarts it; the message says why.
    Restart(String),
}

/// The probes of one container, parsed.
#[derive(Debug, Clone, Default)]
pub(crate) struct ContainerProbes {
    pub startup: Option<Probe>,
    pub liveness: Option<Probe>,
    pub readiness: Option<Probe>,
}

impl ContainerProbes {
    pub(crate) fn of(container: &Value) -> ContainerProbes {
        ContainerProbes {
            startup: Probe::parse(container, "startupProbe"),
            liveness: Probe::parse(container, "livenessProbe"),
            readiness: Probe::parse(container, "readinessProbe"),
        }
    }

    /// The probes due now, in the order the kubelet considers them: the startup probe alone
    /// until it passes, then liveness and readiness.
    pub(crate) fn due(&self, set: &ProbeSet, started: SystemTime, now_wall: SystemTime, now: Instant) -> Vec<Kind> {
        let mut out = Vec::new();
        if !set.started {
            if let Some(p) = &self.startup {
                if set.startup.due(p, started, now_wall, now) {
                    out.push(Kind::Startup);
                }
                return out;
            }
        }
        if let Some(p) = &self.liveness {
            if set.liveness.due(p, started, now_wall, now) {
                out.push(Kind::Liveness);
            }
        }
        if let Some(p) = &self.readiness {
            if set.readiness.due(p, started, now_wall, now) {
                out.push(Kind::Readiness);
            }
        }
        out
    }

    /// Sets the state of a freshly seen container instance: started and ready at once when it
    /// has no such probe.
    pub(crate) fn init(&self, set: &mut ProbeSet) {
        if !set.initialized {
            set.initialized = true;
            set.started = self.startup.is_none();
            set.ready = self.readiness.is_none();
        }
    }

    /// Applies one result; returns what to do.
    pub(crate) fn apply(&self, set: &mut ProbeSet, kind: Kind, ok: bool, now: Instant) -> Action {
        let (probe, tracker) = match kind {
            Kind::Startup => (&self.startup, &mut set.startup),
            Kind::Liveness => (&self.liveness, &mut set.liveness),
            Kind::Readiness => (&self.readiness, &mut set.readiness),
        };
        let Some(p) = probe else { return Action::None };
        let verdict = tracker.observe(p, ok, now);
        match (kind, verdict) {
            (Kind::Startup, Verdict::Passed) => {
                set.started = true;
                if self.readiness.is_none() {
                    set.ready = true;
                }
                Action::None
            }
            (Kind::Startup, Verdict::Failed) => Action::Restart("failed startup probe, will be restarted".into()),
            (Kind::Liveness, Verdict::Failed) => Action::Restart("failed liveness probe, will be restarted".into()),
            (Kind::Readiness, Verdict::Passed) => {
                set.ready = true;
                Action::None
            }
            (Kind::Readiness, Verdict::Failed) => {
                set.ready = false;
                Action::None
            }
            _ => Action::None,
        }
    }

    pub(crate) fn probe(&self, kind: Kind) -> Option<&Probe> {
        match kind {
            Kind::Startup => self.startup.as_ref(),
            Kind::Liveness => self.liveness.as_ref(),
            Kind::Readiness => self.readiness.as_ref(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

fn target(host: &Option<String>, pod_ip: IpAddr, port: u16) -> Result<SocketAddr, String> {
    let ip = match host {
        Some(h) => h.parse::<IpAddr>().map_err(|_| format!("probe host {h:?} is not an IP address"))?,
        None => pod_ip,
    };
    Ok(SocketAddr::new(ip, port))
}

/// TCP connect within the timeout.
pub(crate) async fn check_tcp(
    host: &Option<String>,
    pod_ip: IpAddr,
    port: u16,
    timeout: Duration,
) -> Result<(), String> {
    let addr = target(host, pod_ip, port)?;
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {e}")),
        Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
    }
}

/// HTTP GET within the timeout: success for a status from 200 to 399, as the kubelet.
pub(crate) async fn check_http(
    host: &Option<String>,
    pod_ip: IpAddr,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let addr = target(host, pod_ip, port)?;
    let url = format!("http://{addr}{path}");
    let run = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("Get \"{url}\": dial tcp {addr}: connect: {e}"))?;
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n");
        for (k, v) in headers {
            if !k.contains(['\r', '\n', ':']) && !v.contains(['\r', '\n']) {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.map_err(|e| format!("Get \"{url}\": {e}"))?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !buf.contains(&b'\n') && buf.len() < 4096 {
            let n = s.read(&mut chunk).await.map_err(|e| format!("Get \"{url}\": {e}"))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&buf);
        let code = status_code(&line).ok_or_else(|| format!("Get \"{url}\": malformed HTTP response"))?;
        if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => {
            Err(format!("Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"))
        }
    }
}

/// The status code of an HTTP/1.x status line.
pub(crate) fn status_code(response: &str) -> Option<u16> {
    let line = response.lines().next()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_handlers_and_defaults() {
        let c = json!({
            "ports": [{"name": "http", "containerPort": 8080}],
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 3},
            "readinessProbe": {"tcpSocket": {"port": 80}, "successThreshold": 2, "failureThreshold": 1},
            "startupProbe": {"exec": {"command": ["cat", "/tmp/ok"]}, "initialDelaySeconds": 5},
        });
        let p = ContainerProbes::of(&c);
        let l = p.liveness.expect("liveness");
        assert_eq!(
            l.handler,
            Handler::Http { host: None, port: 8080, path: "/healthz".into(), headers: vec![], https: false }
        );
        assert_eq!((l.period, l.timeout, l.failure_threshold), (Duration::from_secs(3), Duration::from_secs(1), 3));
        let r = p.readiness.expect("readiness");
        assert_eq!(r.handler, Handler::Tcp { host: None, port: 80 });
        assert_eq!((r.success_threshold, r.failure_threshold), (2, 1));
        let s = p.startup.expect("startup");
        assert_eq!(s.handler, Handler::Exec(vec!["cat".into(), "/tmp/ok".into()]));
        assert_eq!(s.initial_delay, Duration::from_secs(5));
        assert!(Probe::parse(&json!({"livenessProbe": {"httpGet": {"port": "nope"}}}), "livenessProbe").is_none());
        let hooks = json!({"lifecycle": {"preStop": {"exec": {"command": ["nginx", "-s", "quit"]}}, "postStart": {"sleep": {"seconds": 2}}}});
        assert_eq!(hook(&hooks, "preStop"), Some(Handler::Exec(vec!["nginx".into(), "-s".into(), "quit".into()])));
        assert_eq!(hook(&hooks, "postStart"), Some(Handler::Sleep(Duration::from_secs(2))));
        assert_eq!(hook(&json!({}), "preStop"), None);
    }

    #[test]
    fn no_probes_means_started_and_ready() {
        let p = ContainerProbes::of(&json!({}));
        let mut set = ProbeSet::default();
        p.init(&mut set);
        assert!(set.started && set.ready);
        assert!(p.due(&set, SystemTime::now(), SystemTime::now(), Instant::now()).is_empty());
    }

    #[test]
    fn readiness_follows_thresholds() {
        let c =
            json!({"readinessProbe": {"exec": {"command": ["true"]}, "successThreshold": 2, "failureThreshold": 2}});
        let p = ContainerProbes::of(&c);
        let mut set = ProbeSet::default();
        p.init(&mut set);
        assert!(!set.ready, "a readiness probe starts not ready");
        let t = Instant::now();
        p.apply(&mut set, Kind::Readiness, true, t);
        assert!(!set.ready);
        p.apply(&mut set, Kind::Readiness, true, t);
        assert!(set.ready);
        p.apply(&mut set, Kind::Readiness, false, t);
        assert!(set.ready, "one failure is below the threshold");
        p.apply(&mut set, Kind::Readiness, false, t);
        assert!(!set.ready);
    }

    #[test]
    fn liveness_failures_restart_and_startup_gates_it() {
        let c = json!({
            "startupProbe": {"exec": {"command": ["true"]}, "failureThreshold": 2},
            "livenessProbe": {"exec": {"command": ["true"]}, "failureThreshold": 3},
        });
        let p = ContainerProbes::of(&c);
        let mut set = ProbeSet::default();
        p.init(&mut set);
        let (now_wall, t) = (SystemTime::now(), Instant::now());
        assert_eq!(p.due(&set, now_wall, now_wall, t), vec![Kind::Startup]);
        assert_eq!(p.apply(&mut set, Kind::Startup, true, t), Action::None);
        assert!(set.started && set.ready);
        assert_eq!(p.due(&set, now_wall, now_wall, t), vec![Kind::Liveness]);
        assert_eq!(p.apply(&mut set, Kind::Liveness, false, t), Action::None);
        assert_eq!(p.apply(&mut set, Kind::Liveness, false, t), Action::None);
        assert!(matches!(p.apply(&mut set, Kind::Liveness, false, t), Action::Restart(_)));
        let mut fresh = ProbeSet::default();
        p.init(&mut fresh);
        p.apply(&mut fresh, Kind::Startup, false, t);
        assert!(matches!(p.apply(&mut fresh, Kind::Startup, false, t), Action::Restart(_)));
    }

    #[test]
    fn timing_fields_gate_runs() {
        let c = json!({"livenessProbe": {"tcpSocket": {"port": 1}, "initialDelaySeconds": 10, "periodSeconds": 5}});
        let p = ContainerProbes::of(&c);
        let mut set = ProbeSet::default();
        p.init(&mut set);
        let started = SystemTime::now();
        let t = Instant::now();
        assert!(p.due(&set, started, started + Duration::from_secs(9), t).is_empty());
        assert_eq!(p.due(&set, started, started + Duration::from_secs(10), t), vec![Kind::Liveness]);
        p.apply(&mut set, Kind::Liveness, true, t);
        assert!(p.due(&set, started, started + Duration::from_secs(12), t + Duration::from_secs(2)).is_empty());
        assert_eq!(
            p.due(&set, started, started + Duration::from_secs(15), t + Duration::from_secs(5)),
            vec![Kind::Liveness]
        );
    }

    #[test]
    fn http_status_lines() {
        assert_eq!(status_code("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code("HTTP/1.0 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(status_code("SSH-2.0-OpenSSH\r\n"), None);
    }

    #[tokio::test]
    async fn http_and_tcp_checks_against_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let code = if req.starts_with("GET /ok ") { "200 OK" } else { "500 Internal Server Error" };
                let _ = s.write_all(format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let to = Duration::from_secs(5);
        assert!(check_http(&None, ip, port, "/ok", &[], to).await.is_ok());
        let err = check_http(&None, ip, port, "/bad", &[], to).await.expect_err("500 fails");
        assert!(err.contains("statuscode: 500"), "{err}");
        assert!(check_tcp(&None, ip, port, to).await.is_ok());
    }
}
