//! Container cgroups behind a trait: cgroups-rs on the real kernel (v1 and v2), a recording fake
//! for unit tests.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cgroups_rs::manager::Manager;
use cgroups_rs::{CgroupPid, FsManager};
use oci_spec::runtime::{
    LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder, LinuxResources,
};

use crate::cgroup2::Cgroup2;
use crate::error::{Error, Result};

/// Usage figures of one container, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// CPU time used by every process of the container, in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory charged to the container, in bytes (page cache included).
    pub memory_usage_bytes: u64,
    /// Processes (tasks) in the container.
    pub pids: u64,
}

/// What the runtime needs from a cgroup implementation. Paths are relative to each hierarchy's
/// root (`shoal/web-1`).
pub trait CgroupDriver: Send + Sync {
    /// Creates the cgroup, applies the limits and moves `pid` into it.
    fn create(&self, path: &str, resources: Option<&LinuxResources>, pid: u32) -> Result<()>;
    /// Moves a process into an existing cgroup (for exec).
    fn add_process(&self, path: &str, pid: u32) -> Result<()>;
    /// The processes in the cgroup.
    fn processes(&self, path: &str) -> Result<Vec<u32>>;
    /// CPU and memory usage.
    fn stats(&self, path: &str) -> Result<Stats>;
    /// How many times the OOM killer killed a process of this cgroup.
    fn oom_kills(&self, path: &str) -> Result<u64>;
    /// Removes the cgroup; it must hold no process.
    fn destroy(&self, path: &str) -> Result<()>;
}

/// Resources as the runtime applies them: a memory limit without a swap limit gets swap equal to
/// the limit (no swap use), as Kubernetes expects.
///
/// Devices: everything is denied except the default nodes of /dev (null, zero, full, random,
/// urandom, tty, console, ptmx and the pty slaves), then the spec's own rules apply.
pub(crate) fn effective_resources(res: &LinuxResources) -> LinuxResources {
    let mut res = res.clone();
    let rule = |allow: bool, typ: LinuxDeviceType, major: i64, minor: i64| {
        LinuxDeviceCgroupBuilder::default().allow(allow).typ(typ).major(major).minor(minor).access("rwm").build().ok()
    };
    let mut devices: Vec<LinuxDeviceCgroup> = [
        rule(false, LinuxDeviceType::A, -1, -1),
        rule(true, LinuxDeviceType::C, 1, 3),
        rule(true, LinuxDeviceType::C, 1, 5),
        rule(true, LinuxDeviceType::C, 1, 7),
        rule(true, LinuxDeviceType::C, 1, 8),
        rule(true, LinuxDeviceType::C, 1, 9),
        rule(true, LinuxDeviceType::C, 5, 0),
        rule(true, LinuxDeviceType::C, 5, 1),
        rule(true, LinuxDeviceType::C, 5, 2),
        rule(true, LinuxDeviceType::C, 136, -1),
    ]
    .into_iter()
    .flatten()
    .collect();
    devices.extend(res.devices().clone().unwrap_or_default().into_iter().map(|mut d| {
        if d.major().is_none() {
            d.set_major(Some(-1));
        }
        if d.minor().is_none() {
            d.set_minor(Some(-1));
        }
        d
    }));
    res.set_devices(Some(devices));
    if let Some(mem) = *res.memory() {
        if let (Some(limit), None) = (mem.limit(), mem.swap()) {
            if limit > 0 {
                let mut b = LinuxMemoryBuilder::default().limit(limit).swap(limit);
                if let Some(r) = mem.reservation() {
                    b = b.reservation(r);
                }
                if let Ok(m) = b.build() {
                    res.set_memory(Some(m));
                }
            }
        }
    }
    res
}

fn cg_err(path: &str, operation: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Cgroup { path: path.to_string(), operation, source: Box::new(e) }
}

/// cgroupfs through cgroups-rs; v1 or v2 is detected from the mount at `root` (/sys/fs/cgroup).
pub struct LinuxCgroups {
    root: PathBuf,
}

impl LinuxCgroups {
    pub fn new() -> LinuxCgroups {
        LinuxCgroups { root: PathBuf::from("/sys/fs/cgroup") }
    }

    /// With another cgroupfs root (for reading usage only; cgroups-rs itself always uses
    /// /sys/fs/cgroup).
    pub fn with_root(root: impl Into<PathBuf>) -> LinuxCgroups {
        LinuxCgroups { root: root.into() }
    }

    fn v2(&self) -> bool {
        self.root.join("cgroup.controllers").exists()
    }

    fn file(&self, controller: &str, path: &str, name: &str) -> PathBuf {
        if self.v2() {
            self.root.join(path).join(name)
        } else {
            self.root.join(controller).join(path).join(name)
        }
    }

    fn read(&self, controller: &str, path: &str, name: &str) -> Result<String> {
        let p = self.file(controller, path, name);
        std::fs::read_to_string(&p).map_err(|e| cg_err(path, "read", e))
    }

    fn manager(&self, path: &str) -> Result<FsManager> {
        FsManager::new(path).map_err(|e| cg_err(path, "open", e))
    }
}

impl Default for LinuxCgroups {
    fn default() -> Self {
        Self::new()
    }
}

fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key)).then(|| it.next().and_then(|v| v.parse().ok())).flatten()
    })
}

impl CgroupDriver for LinuxCgroups {
    fn create(&self, path: &str, resources: Option<&LinuxResources>, pid: u32) -> Result<()> {
        let mut m = self.manager(path)?;
        m.add_proc(CgroupPid { pid: pid as u64 }).map_err(|e| cg_err(path, "add process", e))?;
        let mut res = effective_resources(&resources.cloned().unwrap_or_default());
        if m.v2() {
            // cgroup v2 has no devices controller: the filter is an eBPF program on the cgroup.
            let devices = res.devices().clone().unwrap_or_default();
            res.set_devices(None);
            m.set(&res).map_err(|e| cg_err(path, "apply resources", e))?;
            return Cgroup2::new(&self.root).set_device_rules(path, &devices);
        }
        m.set(&res).map_err(|e| cg_err(path, "apply resources", e))
    }

    fn add_process(&self, path: &str, pid: u32) -> Result<()> {
        let mut m = self.manager(path)?;
        m.add_proc(CgroupPid { pid: pid as u64 }).map_err(|e| cg_err(path, "add process", e))
    }

    fn processes(&self, path: &str) -> Result<Vec<u32>> {
        let text = match self.read("pids", path, "cgroup.procs") {
            Ok(t) => t,
            Err(_) if !self.file("pids", path, "").exists() => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    fn stats(&self, path: &str) -> Result<Stats> {
        if self.v2() {
            let cpu = self.read("cpu", path, "cpu.stat")?;
            let mem = self.read("memory", path, "memory.current")?;
            let pids = self.read("pids", path, "pids.current").unwrap_or_default();
            Ok(Stats {
                cpu_usage_ns: keyed(&cpu, "usage_usec").unwrap_or(0) * 1000,
                memory_usage_bytes: mem.trim().parse().unwrap_or(0),
                pids: pids.trim().parse().unwrap_or(0),
            })
        } else {
            let cpu = self.read("cpuacct", path, "cpuacct.usage")?;
            let mem = self.read("memory", path, "memory.usage_in_bytes")?;
            let pids = self.read("pids", path, "pids.current").unwrap_or_default();
            Ok(Stats {
                cpu_usage_ns: cpu.trim().parse().unwrap_or(0),
                memory_usage_bytes: mem.trim().parse().unwrap_or(0),
                pids: pids.trim().parse().unwrap_or(0),
            })
        }
    }

    fn oom_kills(&self, path: &str) -> Result<u64> {
        if self.v2() {
            Ok(keyed(&self.read("memory", path, "memory.events")?, "oom_kill").unwrap_or(0))
        } else {
            let ctl = self.read("memory", path, "memory.oom_control")?;
            match keyed(&ctl, "oom_kill") {
                Some(n) => Ok(n),
                // Kernels before 4.13 lack the counter: a hit limit is the best evidence left.
                None => Ok(self.read("memory", path, "memory.failcnt")?.trim().parse::<u64>().unwrap_or(0).min(1)),
            }
        }
    }

    fn destroy(&self, path: &str) -> Result<()> {
        let mut m = self.manager(path)?;
        m.destroy().map_err(|e| cg_err(path, "remove", e))
    }
}

/// One call the fake recorded.
#[derive(Clone, Debug, PartialEq)]
pub enum CgroupCall {
    Create { path: String, pid: u32, memory_limit: Option<i64>, swap: Option<i64>, pids_limit: Option<i64> },
    AddProcess { path: String, pid: u32 },
    Destroy { path: String },
}

/// A cgroup double that records what it is asked and reports set figures.
#[derive(Default)]
pub struct FakeCgroups {
    inner: Mutex<FakeInner>,
}

#[derive(Default)]
struct FakeInner {
    calls: Vec<CgroupCall>,
    stats: Stats,
    oom_kills: u64,
    processes: Vec<u32>,
}

impl FakeCgroups {
    pub fn new() -> FakeCgroups {
        FakeCgroups::default()
    }

    pub fn calls(&self) -> Vec<CgroupCall> {
        self.lock().calls.clone()
    }

    pub fn set_stats(&self, stats: Stats) {
        self.lock().stats = stats;
    }

    pub fn set_oom_kills(&self, n: u64) {
        self.lock().oom_kills = n;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl CgroupDriver for FakeCgroups {
    fn create(&self, path: &str, resources: Option<&LinuxResources>, pid: u32) -> Result<()> {
        let res = resources.map(effective_resources);
        let mem = res.as_ref().and_then(|r| *r.memory());
        let mut g = self.lock();
        g.calls.push(CgroupCall::Create {
            path: path.into(),
            pid,
            memory_limit: mem.as_ref().and_then(|m| m.limit()),
            swap: mem.as_ref().and_then(|m| m.swap()),
            pids_limit: res.as_ref().and_then(|r| r.pids().as_ref().map(|p| p.limit())),
        });
        g.processes.push(pid);
        Ok(())
    }

    fn add_process(&self, path: &str, pid: u32) -> Result<()> {
        let mut g = self.lock();
        g.calls.push(CgroupCall::AddProcess { path: path.into(), pid });
        g.processes.push(pid);
        Ok(())
    }

    fn processes(&self, _path: &str) -> Result<Vec<u32>> {
        Ok(self.lock().processes.clone())
    }

    fn stats(&self, _path: &str) -> Result<Stats> {
        Ok(self.lock().stats)
    }

    fn oom_kills(&self, _path: &str) -> Result<u64> {
        Ok(self.lock().oom_kills)
    }

    fn destroy(&self, path: &str) -> Result<()> {
        let mut g = self.lock();
        g.calls.push(CgroupCall::Destroy { path: path.into() });
        g.processes.clear();
        Ok(())
    }
}

/// Whether the cgroupfs at `root` is v2.
pub(crate) fn is_v2(root: &Path) -> bool {
    root.join("cgroup.controllers").exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxPidsBuilder, LinuxResourcesBuilder};

    #[test]
    fn memory_limit_without_swap_gets_swap_equal_to_limit() {
        let res = LinuxResourcesBuilder::default()
            .memory(LinuxMemoryBuilder::default().limit(64 << 20).build().unwrap())
            .pids(LinuxPidsBuilder::default().limit(32).build().unwrap())
            .build()
            .unwrap();
        let fake = FakeCgroups::new();
        fake.create("shoal/a", Some(&res), 7).unwrap();
        assert_eq!(
            fake.calls(),
            vec![CgroupCall::Create {
                path: "shoal/a".into(),
                pid: 7,
                memory_limit: Some(64 << 20),
                swap: Some(64 << 20),
                pids_limit: Some(32)
            }]
        );
    }

    #[test]
    fn reads_v1_usage_files() {
        let dir = tempfile::tempdir().unwrap();
        for (c, f, v) in [
            ("cpuacct", "cpuacct.usage", "1234\n"),
            ("memory", "memory.usage_in_bytes", "4096\n"),
            ("memory", "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            ("pids", "pids.current", "3\n"),
        ] {
            let d = dir.path().join(c).join("shoal/a");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(f), v).unwrap();
        }
        let cg = LinuxCgroups::with_root(dir.path());
        assert_eq!(cg.stats("shoal/a").unwrap(), Stats { cpu_usage_ns: 1234, memory_usage_bytes: 4096, pids: 3 });
        assert_eq!(cg.oom_kills("shoal/a").unwrap(), 2);
    }
}
