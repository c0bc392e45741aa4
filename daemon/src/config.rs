//! The node configuration: one versioned TOML file, every field with a default that works on
//! a small board, each overridable by a flag of `shoal up`.
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Default location of the config file, read if present.
pub const DEFAULT_CONFIG: &str = "/etc/shoal/config.toml";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/shoal";
/// The cluster secrets (CA key and certificate) in the data dir.
pub const SECRETS_FILE: &str = "secrets.json";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: version {version} is not supported (this shoal reads version 1)")]
    Version { path: PathBuf, version: u32 },
}

/// Parses "250ms", "3s", "2m", "1h" (and a bare number of seconds).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .ok_or_else(|| serde::de::Error::custom(format!("invalid duration {s:?} (use e.g. 500ms, 3s, 2m)")))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Format version of this file; 1.
    pub version: u32,
    /// Node name; defaults to the host name.
    pub name: Option<String>,
    pub data_dir: PathBuf,
    /// Address other nodes reach this one at; defaults to the address of the default route.
    pub advertise: Option<IpAddr>,
    pub ports: Ports,
    pub gossip: GossipConfig,
    pub store: StoreConfig,
    pub node: NodeAgentConfig,
    pub network: NetworkConfig,
    pub lb: LbConfig,
    pub api: ApiSection,
    pub ingress: IngressConfig,
    pub admission: AdmissionSection,
    pub metrics: MetricsSection,
}

/// The `[metrics]` section (docs/observability.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Count and serve Prometheus metrics (on by default). Off: requests are not timed or
    /// counted, `/metrics` answers 404 and `[api] metrics_listen` is not opened.
    pub enabled: bool,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection { enabled: true }
    }
}

/// The `[admission]` section (docs/policy.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionSection {
    /// CIDRs a Service's `spec.externalIPs` may use; empty (the default): none, every
    /// externalIP is refused (the CVE-2020-8554 class).
    pub external_ip_cidrs: Vec<String>,
    /// Pod Security levels of namespaces that do not label their own.
    pub pod_security: PodSecurityDefaults,
}

/// `[admission.pod_security]`: the Pod Security Admission levels (privileged, baseline,
/// restricted) and versions (`latest`, `v1.N`) a namespace gets for each mode it does not
/// label; upstream's defaults (privileged, latest) when left out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PodSecurityDefaults {
    pub enforce: String,
    pub enforce_version: String,
    pub audit: String,
    pub audit_version: String,
    pub warn: String,
    pub warn_version: String,
    /// Namespaces whose pods are not checked (upstream's `exemptions.namespaces`).
    pub exempt_namespaces: Vec<String>,
    /// Users whose requests are not checked (`exemptions.usernames`; the controllers' pods
    /// are created as `system:serviceaccount:kube-system:shoal-controllers`).
    pub exempt_users: Vec<String>,
    /// Pods with one of these `spec.runtimeClassName`s are not checked
    /// (`exemptions.runtimeClasses`).
    pub exempt_runtime_classes: Vec<String>,
}

impl Default for PodSecurityDefaults {
    fn default() -> Self {
        let (p, l) = ("privileged".to_string(), "latest".to_string());
        PodSecurityDefaults {
            enforce: p.clone(),
            enforce_version: l.clone(),
            audit: p.clone(),
            audit_version: l.clone(),
            warn: p,
            warn_version: l,
            exempt_namespaces: Vec::new(),
            exempt_users: Vec::new(),
            exempt_runtime_classes: Vec::new(),
        }
    }
}

impl PodSecurityDefaults {
    /// As namespace labels (`pod-security.kubernetes.io/enforce` = `baseline`, ...), plus
    /// the exemptions under the keys `exempt/namespaces`, `exempt/users` and
    /// `exempt/runtime-classes` (one name a line), which no label can take.
    pub fn labels(&self) -> std::collections::BTreeMap<String, String> {
        let mut out: std::collections::BTreeMap<String, String> = [
            ("enforce", &self.enforce),
            ("enforce-version", &self.enforce_version),
            ("audit", &self.audit),
            ("audit-version", &self.audit_version),
            ("warn", &self.warn),
            ("warn-version", &self.warn_version),
        ]
        .into_iter()
        .map(|(k, v)| (format!("pod-security.kubernetes.io/{k}"), v.clone()))
        .collect();
        for (k, v) in [
            ("namespaces", &self.exempt_namespaces),
            ("users", &self.exempt_users),
            ("runtime-classes", &self.exempt_runtime_classes),
        ] {
            if !v.is_empty() {
                out.insert(format!("exempt/{k}"), v.join("\n"));
            }
        }
        out
    }

    /// A level or version that is not one of upstream's.
    fn check(&self) -> Result<(), String> {
        for (k, v) in [("enforce", &self.enforce), ("audit", &self.audit), ("warn", &self.warn)] {
            if !["privileged", "baseline", "restricted"].contains(&v.as_str()) {
                return Err(format!(
                    "[admission.pod_security] {k} = {v:?}: must be privileged, baseline or restricted"
                ));
            }
        }
        for (k, v) in [
            ("enforce_version", &self.enforce_version),
            ("audit_version", &self.audit_version),
            ("warn_version", &self.warn_version),
        ] {
            let ok = v == "latest"
                || v.strip_prefix("v1.").is_some_and(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()));
            if !ok {
                return Err(format!("[admission.pod_security] {k} = {v:?}: must be \"latest\" or \"v1.N\""));
            }
        }
        Ok(())
    }
}

/// How long Events live unless configured otherwise (kube-apiserver's `--event-ttl` default).
pub const DEFAULT_EVENT_TTL: Duration = Duration::from_secs(3600);

/// The `[api]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// Events are deleted this long after they are created (kube-apiserver's `--event-ttl`);
    /// `"0s"` keeps them for ever.
    #[serde(deserialize_with = "de_duration")]
    pub event_ttl: Duration,
    /// An extra plain-HTTP listener serving only `GET /metrics`, for scrapers on a trusted
    /// network (e.g. `"0.0.0.0:9100"`). Off by default: `/metrics` is then served on the API
    /// port to authenticated clients only.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The longest ServiceAccount token a TokenRequest gets (`kubectl create token
    /// --duration` above it is capped), as `--service-account-max-token-expiration`.
    #[serde(deserialize_with = "de_duration")]
    pub service_account_max_token_expiration: Duration,
    /// One JSON line per mutating request in `<data_dir>/audit/audit.log` (on by default).
    pub audit_log: bool,
    /// The audit log rotates when it reaches this many MiB ...
    pub audit_log_max_mib: u64,
    /// ... and this many files are kept (the current one included).
    pub audit_log_max_files: u32,
    /// A connection is closed when a request head takes longer than this to arrive, or when
    /// it has had no request open this long (HTTP/1 keep-alive and HTTP/2 alike).
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// Concurrent connections from one client address; more are closed at once (0: no cap).
    pub max_connections_per_client: usize,
    /// Concurrent watches of one user; more get 429 Too Many Requests (0: no cap).
    pub max_watches_per_user: usize,
    /// Read-only requests in flight, watches and streams not counted; more get 429
    /// (kube-apiserver's `--max-requests-inflight`; 0: no cap).
    pub max_requests_inflight: usize,
    /// Mutating requests in flight; more get 429 (`--max-mutating-requests-inflight`; 0: no cap).
    pub max_mutating_requests_inflight: usize,
}

impl ApiSection {
    /// An idle timeout under a second would close connections between a client's requests.
    fn check(&self) -> Result<(), String> {
        if self.idle_timeout < Duration::from_secs(1) {
            return Err(format!("[api] idle_timeout = {:?}: must be at least 1s", self.idle_timeout));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ports {
    pub gossip: u16,
    pub peer: u16,
    pub api: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GossipConfig {
    /// How often a node gossips; failure detection takes about 8 intervals.
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// How long a voter may be dead before the leader replaces it.
    #[serde(deserialize_with = "de_duration")]
    pub voter_grace: Duration,
    /// How long a learner may be dead before the leader drops it from the Raft group (it is
    /// added back when it returns).
    #[serde(deserialize_with = "de_duration")]
    pub learner_grace: Duration,
    /// The store file's page cache in memory, in MiB (a witness keeps 2). Pages it cannot hold
    /// are read again from the file, which the kernel's page cache usually holds.
    pub cache_mb: u64,
}

/// The store's page cache unless configured: enough for the pages a node reads and writes
/// all the time (the tables' upper levels, the newest objects); redb's own default (1 GiB)
/// let a worker's memory grow with the file (about 80 MiB more with 400 pods in the cluster).
pub const DEFAULT_STORE_CACHE_MB: u64 = 16;

impl StoreConfig {
    fn check(&self) -> Result<(), String> {
        if !(1..=4096).contains(&self.cache_mb) {
            return Err(format!("[store] cache_mb = {}: must be 1 to 4096", self.cache_mb));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeAgentConfig {
    /// `worker` (the default) or `witness`: a witness gossips and votes in Raft but runs no
    /// pods, no Service data plane, no DNS, no Ingress and announces no LoadBalancer IPs.
    pub role: NodeRole,
    /// Run the node agent (containers) on this node (ignored on a witness: never).
    pub run_pods: bool,
    /// Declared devices for hardware-in-the-loop benches: path and resource name.
    pub devices: Vec<DeviceConfig>,
    /// Hard eviction thresholds, as the kubelet's `--eviction-hard`:
    /// `"memory.available<200Mi,nodefs.available<5%,pid.available<1000"`; signals not named keep
    /// their defaults (`memory.available<100Mi`, `nodefs.available<10%` at most 2 GiB,
    /// `pid.available<5%`).
    #[serde(deserialize_with = "de_eviction")]
    pub eviction_hard: EvictionConfig,
}

/// What a node is for (`[node] role`, `shoal up --witness`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Runs workloads (if `run_pods`) and takes part in the cluster.
    #[default]
    Worker,
    /// A Raft voter and gossip member that runs nothing else: the third vote of a
    /// two-node site.
    Witness,
}

impl NodeRole {
    /// As in config files and gossip: `worker`, `witness`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Worker => "worker",
            NodeRole::Witness => "witness",
        }
    }
}

impl NodeAgentConfig {
    /// Whether this node runs pods and the per-node data plane (proxy, DNS, LoadBalancer
    /// announcer, Ingress): a worker with `run_pods`, never a witness.
    pub fn runs_pods(&self) -> bool {
        self.run_pods && self.role == NodeRole::Worker
    }
}

fn de_eviction<'de, D: Deserializer<'de>>(d: D) -> Result<EvictionConfig, D::Error> {
    let s = String::deserialize(d)?;
    EvictionConfig::parse(&s).map_err(|e| serde::de::Error::custom(e.to_string()))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub path: PathBuf,
    pub resource: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// The cluster's pod network; each node gets a /24 of it.
    pub pod_cidr: String,
    /// ClusterIPs are allocated from here.
    pub service_cidr: String,
    /// The cluster DNS Service address; empty: the tenth address of `service_cidr`.
    pub dns_ip: String,
}

impl NetworkConfig {
    /// `service_cidr`, parsed (checked when the config is loaded; the default otherwise).
    pub fn service_range(&self) -> shoal_kube::service_cidr::ServiceCidr {
        shoal_kube::service_cidr::ServiceCidr::parse(&self.service_cidr).unwrap_or_default()
    }

    /// The cluster DNS address: `dns_ip`, or the tenth address of the Service range.
    pub fn cluster_dns_ip(&self) -> String {
        if self.dns_ip.is_empty() {
            self.service_range().dns_ip().to_string()
        } else {
            self.dns_ip.clone()
        }
    }

    /// Refuses a Service range that is not an IPv4 CIDR of at least 32 addresses, and a DNS
    /// address outside it.
    fn check(&self) -> Result<(), String> {
        let range = shoal_kube::service_cidr::ServiceCidr::parse(&self.service_cidr)
            .map_err(|e| format!("[network] service_cidr: {e}"))?;
        if !self.dns_ip.is_empty() {
            let ok = self.dns_ip.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| range.contains(ip));
            if !ok {
                return Err(format!("[network] dns_ip {:?} is not an address of service_cidr {range}", self.dns_ip));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LbConfig {
    /// A shoal-native default address pool (CIDR or `a-b` range), so a fresh cluster hands out
    /// LoadBalancer IPs without any MetalLB YAML. Empty: none.
    pub default_pool: Vec<String>,
}

/// The built-in Ingress controller (see docs/ingress.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressConfig {
    /// Run the router on this node (nodes that run pods only).
    pub enabled: bool,
    /// Ingress class names served besides `shoal` (so manifests written for ingress-nginx work).
    pub classes: Vec<String>,
    /// Port of the router's plain HTTP listener on the node.
    pub http_port: u16,
    /// Port HTTPS is published on (the ingress Service's `https` port targets it).
    pub https_port: u16,
    /// One log line per request (target `shoal::ingress::access`).
    pub access_log: bool,
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            enabled: true,
            classes: vec!["nginx".into()],
            http_port: 80,
            https_port: 443,
            access_log: false,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            version: 1,
            name: None,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            advertise: None,
            ports: Ports::default(),
            gossip: GossipConfig::default(),
            store: StoreConfig::default(),
            node: NodeAgentConfig::default(),
            network: NetworkConfig::default(),
            lb: LbConfig::default(),
            api: ApiSection::default(),
            ingress: IngressConfig::default(),
            admission: AdmissionSection::default(),
            metrics: MetricsSection::default(),
        }
    }
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            event_ttl: DEFAULT_EVENT_TTL,
            metrics_listen: None,
            service_account_max_token_expiration: Duration::from_secs(48 * 3600),
            audit_log: true,
            audit_log_max_mib: 100,
            audit_log_max_files: 5,
            idle_timeout: Duration::from_secs(30),
            max_connections_per_client: 200,
            max_watches_per_user: 500,
            max_requests_inflight: 400,
            max_mutating_requests_inflight: 200,
        }
    }
}

impl Default for Ports {
    fn default() -> Self {
        Ports { gossip: 7946, peer: 7443, api: 6443 }
    }
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig { interval: Duration::from_millis(250) }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            voter_grace: Duration::from_secs(30),
            learner_grace: Duration::from_secs(600),
            cache_mb: DEFAULT_STORE_CACHE_MB,
        }
    }
}

impl Default for NodeAgentConfig {
    fn default() -> Self {
        NodeAgentConfig {
            role: NodeRole::Worker,
            run_pods: true,
            devices: Vec::new(),
            eviction_hard: Default::default(),
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig { pod_cidr: "10.42.0.0/16".into(), service_cidr: "10.43.0.0/16".into(), dns_ip: String::new() }
    }
}

impl NodeConfig {
    /// Reads a config file. `required`: a missing file is an error (an explicit --config);
    /// otherwise a missing file gives the defaults.
    pub fn load(path: &Path, required: bool) -> Result<NodeConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(NodeConfig::default()),
            Err(source) => return Err(ConfigError::Read { path: path.into(), source }),
        };
        let cfg: NodeConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        if cfg.version != 1 {
            return Err(ConfigError::Version { path: path.into(), version: cfg.version });
        }
        cfg.admission.pod_security.check().map_err(|message| ConfigError::Parse { path: path.into(), message })?;
        cfg.network.check().map_err(|message| ConfigError::Parse { path: path.into(), message })?;
        cfg.api.check().map_err(|message| ConfigError::Parse { path: path.into(), message })?;
        cfg.store.check().map_err(|message| ConfigError::Parse { path: path.into(), message })?;
        Ok(cfg)
    }

    /// A config for in-process tests: everything under `data_dir`, loopback ports given.
    pub fn for_test(data_dir: &Path, name: &str) -> NodeConfig {
        NodeConfig {
            name: Some(name.into()),
            data_dir: data_dir.into(),
            advertise: Some(IpAddr::from([127, 0, 0, 1])),
            node: NodeAgentConfig { run_pods: false, ..NodeAgentConfig::default() },
            ..NodeConfig::default()
        }
    }
}

// ---------------------------------------------------------------- eviction thresholds

/// A threshold: an absolute amount of bytes, or a percentage of the capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quantity {
    Bytes(u64),
    Percent(f64),
    /// A percentage, but never more than this many bytes (the default disk threshold: a
    /// large, mostly full disk is not short of space for pods).
    PercentAtMost(f64, u64),
}

impl Quantity {
    pub(crate) fn bytes_of(self, capacity: u64) -> u64 {
        match self {
            Quantity::Bytes(b) => b,
            Quantity::Percent(p) => (capacity as f64 * p / 100.0) as u64,
            Quantity::PercentAtMost(p, max) => ((capacity as f64 * p / 100.0) as u64).min(max),
        }
    }

    /// `100Mi`, `1G`, `10%`.
    pub fn parse(s: &str) -> Option<Quantity> {
        match s.trim().strip_suffix('%') {
            Some(p) => p.trim().parse::<f64>().ok().filter(|p| (0.0..=100.0).contains(p)).map(Quantity::Percent),
            None => shoal_kube::quantity::bytes(s.trim()).map(Quantity::Bytes),
        }
    }
}

/// Hard eviction thresholds and how often they are checked.
#[derive(Debug, Clone, PartialEq)]
pub struct EvictionConfig {
    /// Evict when the node's available memory falls below this.
    pub memory_available: Quantity,
    /// Evict when the free space of the data dir's filesystem falls below this.
    pub nodefs_available: Quantity,
    /// Evict when the free process ids (`kernel.pid_max` minus the tasks running) fall below
    /// this (a count, or a percentage of `kernel.pid_max`).
    pub pid_available: Quantity,
    /// How long a signal must stay above its threshold before the pressure condition clears.
    pub transition_period: Duration,
    /// How often the signals are read (and at most one pod evicted).
    pub interval: Duration,
}

impl Default for EvictionConfig {
    fn default() -> Self {
        EvictionConfig {
            memory_available: Quantity::Bytes(100 * 1024 * 1024),
            nodefs_available: Quantity::PercentAtMost(10.0, 2 << 30),
            pid_available: Quantity::Percent(5.0),
            transition_period: Duration::from_secs(300),
            interval: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EvictionError {
    #[error("unknown eviction signal {0:?} (memory.available, nodefs.available or pid.available)")]
    Signal(String),
    #[error("invalid eviction threshold {0:?}")]
    Threshold(String),
}

impl EvictionConfig {
    /// Reads kubelet-style hard thresholds, `memory.available<200Mi,nodefs.available<5%`, over
    /// the defaults (`pid.available<1000`: a count of process ids).
    pub fn parse(spec: &str) -> Result<EvictionConfig, EvictionError> {
        let mut cfg = EvictionConfig::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (signal, value) = part.split_once('<').ok_or_else(|| EvictionError::Threshold(part.into()))?;
            let q = Quantity::parse(value).ok_or_else(|| EvictionError::Threshold(part.into()))?;
            match signal.trim() {
                "memory.available" => cfg.memory_available = q,
                "nodefs.available" => cfg.nodefs_available = q,
                "pid.available" => {
                    // A bare number counts process ids, not bytes: `1k` would be odd, `1Ki` wrong.
                    let q = match value.trim().strip_suffix('%') {
                        Some(_) => q,
                        None => Quantity::Bytes(
                            value.trim().parse::<u64>().map_err(|_| EvictionError::Threshold(part.into()))?,
                        ),
                    };
                    cfg.pid_available = q;
                }
                s => return Err(EvictionError::Signal(s.into())),
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("3s"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("3 parsecs"), None);
    }

    #[test]
    fn eviction_thresholds_come_from_the_node_section() {
        use super::Quantity;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "version = 1\n[node]\neviction_hard = \"memory.available<200Mi,pid.available<1000\"\n")
            .unwrap();
        let c = NodeConfig::load(&p, true).unwrap();
        assert_eq!(c.node.eviction_hard.memory_available, Quantity::Bytes(200 << 20));
        assert_eq!(c.node.eviction_hard.pid_available, Quantity::Bytes(1000));
        assert_eq!(c.node.eviction_hard.nodefs_available, Quantity::PercentAtMost(10.0, 2 << 30), "default kept");
        std::fs::write(&p, "version = 1\n[node]\neviction_hard = \"memory.free<1Gi\"\n").unwrap();
        let err = NodeConfig::load(&p, true).unwrap_err().to_string();
        assert!(err.contains("unknown eviction signal \"memory.free\""), "{err}");
    }

    #[test]
    fn the_node_role_defaults_to_worker_and_a_witness_runs_no_pods() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "version = 1\n").unwrap();
        let c = NodeConfig::load(&p, true).unwrap();
        assert_eq!(c.node.role, NodeRole::Worker);
        assert!(c.node.runs_pods());
        std::fs::write(&p, "version = 1\n[node]\nrole = \"witness\"\nrun_pods = true\n").unwrap();
        let c = NodeConfig::load(&p, true).unwrap();
        assert_eq!(c.node.role, NodeRole::Witness);
        assert!(!c.node.runs_pods(), "a witness never runs pods, whatever run_pods says");
        std::fs::write(&p, "version = 1\n[node]\nrole = \"arbiter\"\n").unwrap();
        let err = NodeConfig::load(&p, true).unwrap_err().to_string();
        assert!(err.contains("unknown variant") && err.contains("witness"), "{err}");
    }

    #[test]
    fn the_service_range_places_dns_and_refuses_bad_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        let c = NodeConfig::load(&p, false).unwrap();
        assert_eq!(c.network.cluster_dns_ip(), "10.43.0.10");
        std::fs::write(&p, "version = 1\n[network]\nservice_cidr = \"10.96.0.0/12\"\n").unwrap();
        let c = NodeConfig::load(&p, true).unwrap();
        assert_eq!(c.network.service_range().kubernetes_ip().to_string(), "10.96.0.1");
        assert_eq!(c.network.cluster_dns_ip(), "10.96.0.10");
        for (bad, why) in [
            ("service_cidr = \"10.96.0.0/28\"", "[network] service_cidr: \"10.96.0.0/28\": the prefix must be"),
            ("service_cidr = \"10.96.0.0\"", "is not a CIDR"),
            ("service_cidr = \"fd00::/108\"", "not an IPv4 address"),
            (
                "dns_ip = \"10.42.0.10\"",
                "[network] dns_ip \"10.42.0.10\" is not an address of service_cidr 10.43.0.0/16",
            ),
        ] {
            std::fs::write(&p, format!("version = 1\n[network]\n{bad}\n")).unwrap();
            let err = NodeConfig::load(&p, true).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn api_caps_and_idle_timeout_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        let c = NodeConfig::load(&p, false).unwrap();
        assert_eq!(c.api.idle_timeout, Duration::from_secs(30));
        assert_eq!((c.api.max_connections_per_client, c.api.max_watches_per_user), (200, 500));
        assert_eq!((c.api.max_requests_inflight, c.api.max_mutating_requests_inflight), (400, 200));
        std::fs::write(
            &p,
            "version = 1\n[api]\nidle_timeout = \"2m\"\nmax_connections_per_client = 0\nmax_watches_per_user = 7\n",
        )
        .unwrap();
        let c = NodeConfig::load(&p, true).unwrap();
        assert_eq!(c.api.idle_timeout, Duration::from_secs(120));
        assert_eq!((c.api.max_connections_per_client, c.api.max_watches_per_user), (0, 7));
        std::fs::write(&p, "version = 1\n[api]\nidle_timeout = \"0s\"\n").unwrap();
        let err = NodeConfig::load(&p, true).unwrap_err().to_string();
        assert!(err.contains("idle_timeout") && err.contains("at least 1s"), "{err}");
    }

    #[test]
    fn the_store_cache_is_bounded_and_configurable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "version = 1\n[store]\ncache_mb = 64\n").unwrap();
        assert_eq!(NodeConfig::load(&p, true).unwrap().store.cache_mb, 64);
        for bad in ["0", "5000"] {
            std::fs::write(&p, format!("version = 1\n[store]\ncache_mb = {bad}\n")).unwrap();
            let err = NodeConfig::load(&p, true).unwrap_err().to_string();
            assert!(err.contains("cache_mb") && err.contains("1 to 4096"), "{err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "version = 1\nbogus = 3\n").unwrap();
        let err = NodeConfig::load(&p, true).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
        std::fs::write(&p, "version = 1\n[store]\nvoter_grace = \"5s\"\n[ports]\napi = 16443\n").unwrap();
        let c = NodeConfig::load(&p, true).unwrap();
        assert_eq!(c.store.voter_grace, Duration::from_secs(5));
        assert_eq!(c.store.cache_mb, DEFAULT_STORE_CACHE_MB);
        assert_eq!(c.ports.api, 16443);
        assert_eq!(c.ports.gossip, 7946);
        assert_eq!(c.api.event_ttl, Duration::from_secs(3600), "events expire after 1 h by default");
        assert_eq!(c.api.metrics_listen, None, "the plain metrics listener is off by default");
        std::fs::write(&p, "version = 1\n[api]\nevent_ttl = \"10m\"\nmetrics_listen = \"0.0.0.0:9100\"\n").unwrap();
        let c = NodeConfig::load(&p, true).unwrap();
        assert_eq!(c.api.event_ttl, Duration::from_secs(600));
        assert_eq!(c.api.metrics_listen, Some("0.0.0.0:9100".parse().unwrap()));
        std::fs::write(&p, "version = 1\n[api]\nmetrics_listen = \"everywhere\"\n").unwrap();
        assert!(NodeConfig::load(&p, true).is_err());
        assert!(NodeConfig::default().metrics.enabled, "metrics are on by default");
        std::fs::write(&p, "version = 1\n[metrics]\nenabled = false\n").unwrap();
        assert!(!NodeConfig::load(&p, true).unwrap().metrics.enabled);
        std::fs::write(&p, "version = 1\n[metrics]\nenabled = \"no\"\n").unwrap();
        assert!(NodeConfig::load(&p, true).is_err(), "a bad value is refused");
        assert!(c.admission.external_ip_cidrs.is_empty(), "no externalIP is allowed by default");
        std::fs::write(&p, "version = 1\n[admission]\nexternal_ip_cidrs = [\"192.168.10.0/24\"]\n").unwrap();
        let c = NodeConfig::load(&p, true).unwrap();
        assert_eq!(c.admission.external_ip_cidrs, vec!["192.168.10.0/24".to_string()]);
        assert_eq!(c.admission.pod_security.labels()["pod-security.kubernetes.io/enforce"], "privileged");
        std::fs::write(&p, "version = 1\n[admission.pod_security]\nenforce = \"baseline\"\nwarn = \"restricted\"\n")
            .unwrap();
        let c = NodeConfig::load(&p, true).unwrap();
        let labels = c.admission.pod_security.labels();
        assert_eq!(labels["pod-security.kubernetes.io/enforce"], "baseline");
        assert_eq!(labels["pod-security.kubernetes.io/warn"], "restricted");
        assert_eq!(labels["pod-security.kubernetes.io/audit-version"], "latest");
        std::fs::write(
            &p,
            "version = 1\n[admission.pod_security]\nexempt_namespaces = [\"a\", \"b\"]\nexempt_users = [\"ops\"]\n",
        )
        .unwrap();
        let labels = NodeConfig::load(&p, true).unwrap().admission.pod_security.labels();
        assert_eq!(labels["exempt/namespaces"], "a\nb");
        assert_eq!(labels["exempt/users"], "ops");
        assert!(!labels.contains_key("exempt/runtime-classes"));
        std::fs::write(&p, "version = 1\n[admission.pod_security]\nenforce = \"strict\"\n").unwrap();
        let e = NodeConfig::load(&p, true).unwrap_err().to_string();
        assert!(e.contains("must be privileged, baseline or restricted"), "{e}");
        assert!(NodeConfig::load(&dir.path().join("missing.toml"), false).is_ok());
        assert_eq!(c.ingress.classes, vec!["nginx".to_string()]);
        std::fs::write(&p, "version = 1\n[ingress]\nclasses = []\nhttp_port = 8080\n").unwrap();
        let c = NodeConfig::load(&p, true).unwrap();
        assert!(c.ingress.classes.is_empty() && c.ingress.enabled);
        assert_eq!(c.ingress.http_port, 8080);
        std::fs::write(&p, "version = 1\n[ingress]\nport = 8080\n").unwrap();
        assert!(NodeConfig::load(&p, true).is_err());
        assert!(NodeConfig::load(&dir.path().join("missing.toml"), true).is_err());
    }
}
