//! Node-pressure eviction, as the kubelet does it: the node's free memory, the free space of
//! the filesystem holding the data dir and the free process ids are watched against hard
//! thresholds (kubelet's defaults: `memory.available<100Mi`, `nodefs.available<10%`, the latter
//! at most 2 GiB unless set explicitly, so a big disk that is mostly full of other data does not
//! evict; and `pid.available<5%` of `kernel.pid_max`, which the kubelet leaves unset). Under
//! pressure the node reports `MemoryPressure` / `DiskPressure` / `PIDPressure` and, one pod per
//! pass, evicts pods: for memory and disk BestEffort first, then Burstable pods using more than
//! they requested, then by priority and usage; for process ids by priority, then by the number
//! of processes. Guaranteed pods and critical pods last or never. An evicted pod ends `Failed` with reason
//! `Evicted`, as upstream. A condition clears only after the signal has stayed fine for the
//! transition period, so a node at the edge does not flap (nor write its status each time).
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::Value;

pub use crate::config::{EvictionConfig, EvictionError, Quantity};

/// One reading of the node's signals (bytes; process ids for `pid_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Signals {
    pub memory_available: Option<u64>,
    pub memory_capacity: Option<u64>,
    pub nodefs_available: Option<u64>,
    pub nodefs_capacity: Option<u64>,
    pub pid_available: Option<u64>,
    pub pid_capacity: Option<u64>,
}

/// Where the signals come from: `/proc/meminfo` and statvfs of the data dir, or a test's fake.
pub trait NodeStats: Send + Sync {
    fn signals(&self) -> Signals;
}

/// The node's signals from the kernel: `meminfo`, statvfs of `data_dir`, and `proc` for
/// `sys/kernel/pid_max` and the task count of `loadavg` (as the kubelet reads them).
pub struct LinuxNodeStats {
    pub meminfo: PathBuf,
    pub data_dir: PathBuf,
    pub proc: PathBuf,
}

/// The number of tasks (processes and threads) from `/proc/loadavg`: `0.00 0.01 0.05 1/123 456`.
fn loadavg_tasks(text: &str) -> Option<u64> {
    text.split_whitespace().nth(3)?.split_once('/')?.1.parse().ok()
}

fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
}

impl NodeStats for LinuxNodeStats {
    // statvfs counts are 32-bit on some targets (32-bit ARM boards).
    #[allow(clippy::unnecessary_cast)]
    fn signals(&self) -> Signals {
        let mem = std::fs::read_to_string(&self.meminfo).unwrap_or_default();
        let fs = nix::sys::statvfs::statvfs(&self.data_dir).ok();
        let read = |p: &str| std::fs::read_to_string(self.proc.join(p)).ok();
        let pid_max = read("sys/kernel/pid_max").and_then(|s| s.trim().parse::<u64>().ok());
        let tasks = read("loadavg").as_deref().and_then(loadavg_tasks);
        Signals {
            memory_available: meminfo_kib(&mem, "MemAvailable:").map(|k| k * 1024),
            memory_capacity: meminfo_kib(&mem, "MemTotal:").map(|k| k * 1024),
            nodefs_available: fs.as_ref().map(|s| s.blocks_available() as u64 * s.fragment_size() as u64),
            nodefs_capacity: fs.as_ref().map(|s| s.blocks() as u64 * s.fragment_size() as u64),
            pid_available: pid_max.zip(tasks).map(|(max, used)| max.saturating_sub(used)),
            pid_capacity: pid_max,
        }
    }
}

/// A fake source of signals for tests: set what the next reading returns.
#[derive(Default)]
pub struct FakeNodeStats {
    pub current: std::sync::Mutex<Signals>,
}

impl FakeNodeStats {
    pub fn set(&self, s: Signals) {
        if let Ok(mut c) = self.current.lock() {
            *c = s;
        }
    }
}

impl NodeStats for FakeNodeStats {
    fn signals(&self) -> Signals {
        self.current.lock().map(|c| *c).unwrap_or_default()
    }
}

/// The resource a node is short of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    Memory,
    Disk,
    Pids,
}

impl Resource {
    /// The Node condition that reports it.
    pub fn condition(self) -> &'static str {
        match self {
            Resource::Memory => "MemoryPressure",
            Resource::Disk => "DiskPressure",
            Resource::Pids => "PIDPressure",
        }
    }

    /// The taint that keeps new pods away while it lasts.
    pub fn taint(self) -> &'static str {
        match self {
            Resource::Memory => "node.kubernetes.io/memory-pressure",
            Resource::Disk => "node.kubernetes.io/disk-pressure",
            Resource::Pids => "node.kubernetes.io/pid-pressure",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::Disk => "ephemeral-storage",
            Resource::Pids => "pids",
        }
    }

    /// How an observed amount reads in the eviction message.
    fn amount(self, n: u64) -> String {
        match self {
            Resource::Pids => n.to_string(),
            _ => format!("{}Ki", n / 1024),
        }
    }
}

/// The pressure conditions of the node, with the transition period applied.
#[derive(Debug, Default)]
pub struct Pressure {
    /// Resource → when its signal was last seen below the threshold.
    last_under: HashMap<Resource, Instant>,
}

/// Which signals are below their threshold in this reading (with the observed and threshold
/// bytes, for the messages).
pub fn under(cfg: &EvictionConfig, s: &Signals) -> Vec<(Resource, u64, u64)> {
    let mut out = Vec::new();
    if let Some(avail) = s.memory_available {
        let t = cfg.memory_available.bytes_of(s.memory_capacity.unwrap_or(0));
        if avail < t {
            out.push((Resource::Memory, avail, t));
        }
    }
    if let Some(avail) = s.nodefs_available {
        let t = cfg.nodefs_available.bytes_of(s.nodefs_capacity.unwrap_or(0));
        if avail < t {
            out.push((Resource::Disk, avail, t));
        }
    }
    if let Some(avail) = s.pid_available {
        let t = cfg.pid_available.bytes_of(s.pid_capacity.unwrap_or(0));
        if avail < t {
            out.push((Resource::Pids, avail, t));
        }
    }
    out
}

impl Pressure {
    /// Records a reading; says which conditions hold now (a resource stays under pressure for
    /// `transition_period` after its signal recovered).
    pub fn observe(&mut self, cfg: &EvictionConfig, now: Instant, under_now: &[(Resource, u64, u64)]) -> Vec<Resource> {
        for (r, _, _) in under_now {
            self.last_under.insert(*r, now);
        }
        self.last_under.retain(|_, at| now.saturating_duration_since(*at) < cfg.transition_period);
        let mut out: Vec<Resource> = self.last_under.keys().copied().collect();
        out.sort_by_key(|r| r.condition());
        out
    }
}

/// Pods at or above this priority (system-node-critical and system-cluster-critical) are
/// never evicted.
const CRITICAL_PRIORITY: i64 = 2_000_000_000;

fn requested_memory(pod: &Value) -> u64 {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            c["resources"]["requests"]["memory"]
                .as_str()
                .or(c["resources"]["limits"]["memory"].as_str())
                .and_then(super::spec::bytes)
        })
        .sum()
}

/// The order pods are evicted in for a resource, first victim first: BestEffort, then pods
/// using more than they requested, then lower priority, then the most usage above the
/// request; for process ids (nothing requests them) lower priority, then the most processes.
/// `usage` is each pod's memory, or processes, by uid. Critical and finished pods are left out.
pub fn rank<'a>(pods: &'a [Value], usage: &HashMap<String, u64>, resource: Resource) -> Vec<&'a Value> {
    type Key = (u8, bool, i64, i128);
    let mut list: Vec<(&Value, Key)> = pods
        .iter()
        .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| p["spec"]["priority"].as_i64().unwrap_or(0) < CRITICAL_PRIORITY)
        .map(|p| {
            let qos = match (resource, super::pod::qos_class(p)) {
                (Resource::Pids, _) => 0,
                (_, "BestEffort") => 0,
                (_, "Burstable") => 1,
                _ => 2,
            };
            let used = usage.get(p["metadata"]["uid"].as_str().unwrap_or_default()).copied().unwrap_or(0);
            let req = if resource == Resource::Memory { requested_memory(p) } else { 0 };
            let above = used as i128 - req as i128;
            (p, (qos, above <= 0, p["spec"]["priority"].as_i64().unwrap_or(0), -above))
        })
        .collect();
    list.sort_by_key(|(_, k)| *k);
    list.into_iter().map(|(p, _)| p).collect()
}

/// The status of an evicted pod, from its last status: Failed, reason Evicted, containers
/// terminated, and the DisruptionTarget condition.
pub fn evicted_status(old: &Value, resource: Resource, observed: u64, threshold: u64, now: &str) -> Value {
    let message = format!(
        "The node was low on resource: {}. Threshold quantity: {threshold}, available: {}.",
        resource.name(),
        resource.amount(observed)
    );
    let mut st = old.clone();
    st["phase"] = "Failed".into();
    st["reason"] = "Evicted".into();
    st["message"] = message.into();
    for list in ["containerStatuses", "initContainerStatuses"] {
        for cs in st.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            if cs["state"].get("terminated").is_none() {
                let started = cs["state"]["running"]["startedAt"].clone();
                cs["state"] = serde_json::json!({"terminated": {
                    "exitCode": 137, "reason": "ContainerStatusUnknown", "startedAt": started, "finishedAt": now,
                    "message": "The container could not be located when the pod was terminated",
                }});
            }
            cs["ready"] = false.into();
            cs["started"] = false.into();
        }
    }
    let mut conds: Vec<Value> = st["conditions"].as_array().cloned().unwrap_or_default();
    for c in conds.iter_mut() {
        if c["type"] == "Ready" || c["type"] == "ContainersReady" {
            c["status"] = "False".into();
            c["reason"] = "PodFailed".into();
            c["lastTransitionTime"] = now.into();
        }
    }
    conds.retain(|c| c["type"] != "DisruptionTarget");
    conds.push(serde_json::json!({
        "type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
        "message": st["message"], "lastTransitionTime": now,
    }));
    st["conditions"] = Value::Array(conds);
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn pod(name: &str, uid: &str, resources: Value, priority: i64) -> Value {
        json!({"metadata": {"name": name, "uid": uid}, "spec": {"priority": priority,
            "containers": [{"name": "c", "resources": resources}]}, "status": {"phase": "Running"}})
    }

    #[test]
    fn thresholds_parse_like_the_kubelet() {
        let c = EvictionConfig::parse("memory.available<200Mi, nodefs.available<5%").expect("parse");
        assert_eq!(c.memory_available, Quantity::Bytes(200 * 1024 * 1024));
        assert_eq!(c.nodefs_available, Quantity::Percent(5.0));
        assert_eq!(EvictionConfig::parse("").expect("empty"), EvictionConfig::default());
        let p = EvictionConfig::parse("pid.available<1000").expect("pids");
        assert_eq!(p.pid_available, Quantity::Bytes(1000), "a count of process ids");
        assert_eq!(EvictionConfig::parse("pid.available<2%").expect("pids").pid_available, Quantity::Percent(2.0));
        assert!(EvictionConfig::parse("pid.available<1Ki").is_err());
        assert!(EvictionConfig::parse("imagefs.available<10%").is_err());
        assert!(EvictionConfig::parse("memory.available>1Gi").is_err());
    }

    #[test]
    fn fake_signals_drive_pressure_with_a_transition_period() {
        let cfg = EvictionConfig::default();
        let stats = FakeNodeStats::default();
        let gib = 1u64 << 30;
        stats.set(Signals {
            memory_available: Some(2 * gib),
            memory_capacity: Some(4 * gib),
            nodefs_available: Some(50 * gib),
            nodefs_capacity: Some(100 * gib),
            ..Default::default()
        });
        let mut p = Pressure::default();
        let t0 = Instant::now();
        assert!(p.observe(&cfg, t0, &under(&cfg, &stats.signals())).is_empty());
        // A 1 TB disk with 5 GiB free is not under pressure by default (at most 2 GiB).
        let big = Signals { nodefs_available: Some(5 * gib), nodefs_capacity: Some(1000 * gib), ..stats.signals() };
        assert!(under(&cfg, &big).is_empty());
        // 50 MiB left: memory pressure; 1 GiB of 100 left: disk pressure (below 10 %, at most 2 GiB).
        stats.set(Signals { memory_available: Some(50 << 20), nodefs_available: Some(gib), ..stats.signals() });
        let now = under(&cfg, &stats.signals());
        assert_eq!(now[0], (Resource::Memory, 50 << 20, 100 << 20));
        assert_eq!(p.observe(&cfg, t0, &now), vec![Resource::Disk, Resource::Memory]);
        stats.set(Signals { memory_available: Some(2 * gib), nodefs_available: Some(50 * gib), ..stats.signals() });
        let fine = under(&cfg, &stats.signals());
        assert!(fine.is_empty());
        assert_eq!(p.observe(&cfg, t0 + Duration::from_secs(60), &fine).len(), 2, "held for the transition period");
        assert!(p.observe(&cfg, t0 + Duration::from_secs(301), &fine).is_empty());
    }

    #[test]
    fn few_free_process_ids_are_pid_pressure() {
        assert_eq!(loadavg_tasks("0.52 0.58 0.59 3/467 12345\n"), Some(467));
        assert_eq!(loadavg_tasks("garbage"), None);
        let cfg = EvictionConfig::default();
        let fine = Signals { pid_available: Some(30_000), pid_capacity: Some(32_768), ..Default::default() };
        assert!(under(&cfg, &fine).is_empty());
        // A Raspberry Pi's pid_max of 32768 with 32000 tasks: 768 free, under 5 % (1638).
        let short = Signals { pid_available: Some(768), pid_capacity: Some(32_768), ..Default::default() };
        assert_eq!(under(&cfg, &short), vec![(Resource::Pids, 768, 1638)]);
        let st = evicted_status(&json!({"phase": "Running"}), Resource::Pids, 768, 1638, "t");
        assert_eq!(st["message"], "The node was low on resource: pids. Threshold quantity: 1638, available: 768.");
        assert_eq!(Resource::Pids.condition(), "PIDPressure");
        assert_eq!(Resource::Pids.taint(), "node.kubernetes.io/pid-pressure");
    }

    #[test]
    fn pid_pressure_evicts_by_priority_then_process_count() {
        let guaranteed = pod(
            "g",
            "g",
            json!({"limits": {"memory": "64Mi", "cpu": "100m"}, "requests": {"memory": "64Mi", "cpu": "100m"}}),
            0,
        );
        let best_effort = pod("be", "be", json!({}), 0);
        let important = pod("imp", "imp", json!({}), 1000);
        let pods = vec![best_effort, important, guaranteed];
        let usage: HashMap<String, u64> =
            [("g", 900u64), ("be", 3), ("imp", 5000)].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let order: Vec<&str> =
            rank(&pods, &usage, Resource::Pids).iter().map(|p| p["metadata"]["name"].as_str().unwrap_or("")).collect();
        assert_eq!(order, ["g", "be", "imp"], "the fork bomb of the lower priority goes first, QoS aside");
    }

    #[test]
    fn best_effort_goes_first_and_critical_never() {
        let guaranteed = pod(
            "g",
            "g",
            json!({"limits": {"memory": "64Mi", "cpu": "100m"}, "requests": {"memory": "64Mi", "cpu": "100m"}}),
            0,
        );
        let burstable_over = pod("b1", "b1", json!({"requests": {"memory": "10Mi"}}), 0);
        let burstable_under = pod("b2", "b2", json!({"requests": {"memory": "500Mi"}}), 0);
        let best_effort_low = pod("be1", "be1", json!({}), 0);
        let best_effort_big = pod("be2", "be2", json!({}), 0);
        let critical = pod("dns", "crit", json!({}), 2_000_001_000);
        let pods = vec![guaranteed, burstable_under, critical, burstable_over, best_effort_low, best_effort_big];
        let usage: HashMap<String, u64> =
            [("g", 60u64 << 20), ("b1", 100 << 20), ("b2", 100 << 20), ("be1", 1 << 20), ("be2", 300 << 20)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
        let order: Vec<&str> = rank(&pods, &usage, Resource::Memory)
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(order, ["be2", "be1", "b1", "b2", "g"]);
    }

    #[test]
    fn evicted_pods_are_failed_with_reason_evicted() {
        let old = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "c", "ready": true, "state": {"running": {"startedAt": "t0"}}}]});
        let st = evicted_status(&old, Resource::Memory, 50 << 20, 100 << 20, "t1");
        assert_eq!(st["phase"], "Failed");
        assert_eq!(st["reason"], "Evicted");
        assert!(st["message"].as_str().is_some_and(|m| m.starts_with("The node was low on resource: memory.")));
        assert_eq!(st["containerStatuses"][0]["state"]["terminated"]["exitCode"], 137);
        assert_eq!(st["conditions"][0]["status"], "False");
        assert_eq!(st["conditions"][1]["type"], "DisruptionTarget");
        assert!(st.get("initContainerStatuses").is_none());
    }
}
