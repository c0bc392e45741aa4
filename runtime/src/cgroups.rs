//! Container cgroups behind a trait: cgroupfs on the real kernel (v1 and v2), a recording fake
//! for unit tests.
//!
//! What a spec's `linux.resources` becomes is two pure mappings, `v1_settings` and
//! `v2_settings` (file, value, in write order); `cgroup1` and `cgroup2` lay the directories out.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use oci_spec::runtime::{
    LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder, LinuxResources,
};

use crate::cgroup1::Cgroup1;
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

/// One value written into a controller's file when a cgroup is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Setting {
    /// The controller that owns the file: its hierarchy on v1, its bit in the parents'
    /// `cgroup.subtree_control` on v2.
    pub controller: &'static str,
    pub file: &'static str,
    pub value: String,
}

fn setting(controller: &'static str, file: &'static str, value: impl ToString) -> Setting {
    Setting { controller, file, value: value.to_string() }
}

fn unsupported(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, format!("{what} are not supported"))
}

/// Refuses the limits shoal never sets and the driver does not apply, rather than drop them.
fn check_supported(res: &LinuxResources) -> io::Result<()> {
    if res.block_io().is_some() {
        return Err(unsupported("blockIO limits"));
    }
    if res.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()) {
        return Err(unsupported("hugepage limits"));
    }
    if res.network().is_some() {
        return Err(unsupported("network class and priorities"));
    }
    Ok(())
}

fn cpuset_settings(res: &LinuxResources, out: &mut Vec<Setting>) {
    if let Some(cpu) = res.cpu() {
        if let Some(cpus) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
            out.push(setting("cpuset", "cpuset.cpus", cpus));
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
            out.push(setting("cpuset", "cpuset.mems", mems));
        }
    }
}

fn pids_settings(res: &LinuxResources, out: &mut Vec<Setting>) {
    if let Some(pids) = res.pids() {
        let max = if pids.limit() > 0 { pids.limit().to_string() } else { "max".to_string() };
        out.push(setting("pids", "pids.max", max));
    }
}

/// The files of the v1 controllers for `res`, in the order they are written. Devices are a
/// rule per write, from the first to the last (the kernel's list is built in that order).
pub(crate) fn v1_settings(res: &LinuxResources) -> io::Result<Vec<Setting>> {
    check_supported(res)?;
    let mut out = Vec::new();
    cpuset_settings(res, &mut out);
    if let Some(cpu) = res.cpu() {
        if let Some(shares) = cpu.shares().filter(|s| *s != 0) {
            out.push(setting("cpu", "cpu.shares", shares));
        }
        // The period first: the quota is checked against it.
        if let Some(period) = cpu.period() {
            out.push(setting("cpu", "cpu.cfs_period_us", period));
        }
        if let Some(quota) = cpu.quota() {
            out.push(setting("cpu", "cpu.cfs_quota_us", quota));
        }
        if let Some(period) = cpu.realtime_period() {
            out.push(setting("cpu", "cpu.rt_period_us", period));
        }
        if let Some(runtime) = cpu.realtime_runtime() {
            out.push(setting("cpu", "cpu.rt_runtime_us", runtime));
        }
    }
    if let Some(mem) = res.memory() {
        let limit = mem.limit().unwrap_or(0);
        // memory+swap, where 0 is unset; an unlimited memory with no word on swap unlimits both.
        let memsw = match mem.swap().unwrap_or(0) {
            0 if limit == -1 => -1,
            s => s,
        };
        let limit_set = (limit != 0).then(|| setting("memory", "memory.limit_in_bytes", limit));
        let memsw_set = (memsw != 0).then(|| setting("memory", "memory.memsw.limit_in_bytes", memsw));
        // The kernel keeps memory <= memory+swap at every write: lifting memory+swap to
        // unlimited goes first, any other value after the memory limit it must not undercut.
        if memsw == -1 {
            out.extend(memsw_set.into_iter().chain(limit_set));
        } else {
            out.extend(limit_set.into_iter().chain(memsw_set));
        }
        if let Some(reservation) = mem.reservation() {
            out.push(setting("memory", "memory.soft_limit_in_bytes", reservation));
        }
        if mem.disable_oom_killer() == Some(true) {
            out.push(setting("memory", "memory.oom_control", 1));
        }
        if let Some(swappiness) = mem.swappiness() {
            if swappiness > 100 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("memory swappiness {swappiness} is above 100"),
                ));
            }
            out.push(setting("memory", "memory.swappiness", swappiness));
        }
    }
    pids_settings(res, &mut out);
    for rule in res.devices().iter().flatten() {
        let typ = match rule.typ() {
            Some(LinuxDeviceType::A) | None => 'a',
            Some(LinuxDeviceType::B) => 'b',
            Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => 'c',
            // A pipe or fifo never reaches the device controller.
            Some(LinuxDeviceType::P) => continue,
        };
        let number = |n: Option<i64>| n.filter(|n| *n >= 0).map_or("*".to_string(), |n| n.to_string());
        let access: String =
            rule.access().as_deref().unwrap_or("rwm").chars().filter(|c| matches!(c, 'r' | 'w' | 'm')).collect();
        let file = if rule.allow() { "devices.allow" } else { "devices.deny" };
        out.push(setting("devices", file, format!("{typ} {}:{} {access}", number(rule.major()), number(rule.minor()))));
    }
    Ok(out)
}

/// cpu.shares (2..=262144, default 1024) to cpu.weight (1..=10000, default 100), the
/// conversion runc and the kernel's documentation use; 0 stays unset.
pub(crate) fn cpu_weight(shares: u64) -> u64 {
    match shares {
        0 => 0,
        1..=2 => 1,
        s if s >= 262_144 => 10_000,
        s => 1 + (s - 2) * 9999 / 262_142,
    }
}

/// The files of the v2 controllers for `res`, in the order they are written; devices are not
/// among them (an eBPF program, see `Cgroup2::set_device_rules`).
pub(crate) fn v2_settings(res: &LinuxResources) -> io::Result<Vec<Setting>> {
    check_supported(res)?;
    let mut out = Vec::new();
    cpuset_settings(res, &mut out);
    if let Some(cpu) = res.cpu() {
        if cpu.realtime_period().is_some() || cpu.realtime_runtime().is_some() {
            return Err(unsupported("realtime cpu limits on cgroup v2"));
        }
        let weight = cpu_weight(cpu.shares().unwrap_or(0));
        if weight != 0 {
            out.push(setting("cpu", "cpu.weight", weight));
        }
        let quota = |q: Option<i64>| q.filter(|q| *q > 0).map_or("max".to_string(), |q| q.to_string());
        match (cpu.quota(), cpu.period()) {
            (None, None) => {}
            // One number sets the quota and keeps the period.
            (q, None) => out.push(setting("cpu", "cpu.max", quota(q))),
            (q, Some(p)) => out.push(setting("cpu", "cpu.max", format!("{} {p}", quota(q)))),
        }
    }
    if let Some(mem) = res.memory() {
        let max = |v: i64| if v == -1 { "max".to_string() } else { v.to_string() };
        let limit = mem.limit().unwrap_or(0);
        let memsw = mem.swap().unwrap_or(0);
        if limit > 0 || memsw > 0 {
            // OCI's swap is memory+swap; v2 limits swap alone.
            let swap = match (memsw, limit) {
                (-1 | 0, _) => memsw,
                (s, -1) => s,
                (s, l) if l > 0 && s >= l => s - l,
                (s, l) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("memory+swap limit {s} is below the memory limit {l}"),
                    ))
                }
            };
            out.push(setting("memory", "memory.swap.max", max(swap)));
            if limit != 0 {
                out.push(setting("memory", "memory.max", max(limit)));
            }
        }
        if let Some(reservation) = mem.reservation() {
            out.push(setting("memory", "memory.low", max(reservation)));
        }
    }
    pids_settings(res, &mut out);
    Ok(out)
}

/// Controllers every container joins whatever its limits, for usage figures, OOM kills, its
/// process list and (v1) its device list.
const V1_ALWAYS: &[&str] = &["cpuacct", "memory", "pids", "devices"];
/// The order v1 hierarchies are joined in.
const V1_ORDER: &[&str] = &["cpuset", "cpu", "cpuacct", "memory", "pids", "devices"];
/// Controllers enabled for a container on v2 (those the parent offers), besides cpuset when
/// it is limited.
const V2_ALWAYS: &[&str] = &["cpu", "memory", "pids"];

/// cgroupfs of the kernel, v1 (a hierarchy per controller) or v2 (one unified hierarchy),
/// told apart by `cgroup.controllers` at the root (/sys/fs/cgroup).
///
/// A container joins only the controllers it needs: on v1 cpuacct, memory, pids and devices,
/// plus cpu and cpuset when it limits them; hierarchies it does not join keep it in their root.
pub struct LinuxCgroups {
    root: PathBuf,
}

impl LinuxCgroups {
    pub fn new() -> LinuxCgroups {
        LinuxCgroups { root: PathBuf::from("/sys/fs/cgroup") }
    }

    /// With another cgroupfs root (a tempdir laid out like one, in tests).
    pub fn with_root(root: impl Into<PathBuf>) -> LinuxCgroups {
        LinuxCgroups { root: root.into() }
    }

    fn v2(&self) -> bool {
        is_v2(&self.root)
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

    fn create_v1(&self, path: &str, res: &LinuxResources, pid: u32) -> Result<()> {
        let settings = v1_settings(res).map_err(|e| cg_err(path, "apply resources", e))?;
        let controllers: Vec<&str> = V1_ORDER
            .iter()
            .copied()
            .filter(|c| V1_ALWAYS.contains(c) || settings.iter().any(|s| s.controller == *c))
            .collect();
        Cgroup1::new(&self.root).create(path, &controllers, &settings, pid)
    }

    /// The v2 cgroup with its controllers and limits, before the device filter and the process.
    pub(crate) fn set_up_v2(&self, path: &str, res: &LinuxResources) -> Result<Cgroup2> {
        let settings = v2_settings(res).map_err(|e| cg_err(path, "apply resources", e))?;
        let mut controllers = V2_ALWAYS.to_vec();
        if settings.iter().any(|s| s.controller == "cpuset") {
            controllers.push("cpuset");
        }
        let cg = Cgroup2::new(&self.root);
        cg.create_with_controllers(path, &controllers)?;
        for s in &settings {
            cg.set(path, s.file, &s.value)?;
        }
        Ok(cg)
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

/// Removes a cgroup directory, and the cgroups a container made below it; waits briefly while
/// it is busy (processes of a killed container leave it a moment after they are reaped).
/// A missing directory is fine.
pub(crate) fn remove_cgroup_dir(dir: &Path) -> io::Result<()> {
    let mut pause = Duration::from_millis(10);
    let mut retries = 5;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && retries > 0 => {
                retries -= 1;
                let entries = match std::fs::read_dir(dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(e),
                };
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        remove_cgroup_dir(&entry.path())?;
                    }
                }
                std::thread::sleep(pause);
                pause *= 2;
            }
            Err(e) => return Err(e),
        }
    }
}

impl CgroupDriver for LinuxCgroups {
    fn create(&self, path: &str, resources: Option<&LinuxResources>, pid: u32) -> Result<()> {
        let res = effective_resources(&resources.cloned().unwrap_or_default());
        if !self.v2() {
            return self.create_v1(path, &res, pid);
        }
        let cg = self.set_up_v2(path, &res)?;
        // cgroup v2 has no devices controller: the filter is an eBPF program on the cgroup.
        cg.set_device_rules(path, res.devices().as_deref().unwrap_or_default())?;
        cg.add_process(path, pid)
    }

    fn add_process(&self, path: &str, pid: u32) -> Result<()> {
        if self.v2() {
            Cgroup2::new(&self.root).add_process(path, pid)
        } else {
            Cgroup1::new(&self.root).add_process(path, pid)
        }
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
        if !self.v2() {
            return Cgroup1::new(&self.root).remove(path);
        }
        let d = Cgroup2::new(&self.root).dir(path);
        remove_cgroup_dir(&d).map_err(|e| cg_err(&d.display().to_string(), "remove", e))
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
    use oci_spec::runtime::{LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxPidsBuilder, LinuxResourcesBuilder};

    /// A cgroup directory as the kernel makes it: the interface files exist, empty.
    fn kernel_dir(dir: &Path, files: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        for f in files {
            std::fs::write(dir.join(f), "").unwrap();
        }
    }

    fn read(path: PathBuf) -> String {
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// What shoal sets from a pod spec: cpu shares, quota and period, a memory limit, pids.
    fn pod_resources() -> LinuxResources {
        LinuxResourcesBuilder::default()
            .cpu(LinuxCpuBuilder::default().shares(102u64).quota(25_000i64).period(100_000u64).build().unwrap())
            .memory(LinuxMemoryBuilder::default().limit(64i64 << 20).build().unwrap())
            .pids(LinuxPidsBuilder::default().limit(4096).build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn v1_joins_only_the_hierarchies_it_needs_and_writes_their_files() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        // cpu and cpuacct co-mounted behind two links, as systemd mounts them.
        for h in ["cpu,cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "blkio"] {
            std::fs::create_dir(r.join(h)).unwrap();
        }
        std::os::unix::fs::symlink("cpu,cpuacct", r.join("cpu")).unwrap();
        std::os::unix::fs::symlink("cpu,cpuacct", r.join("cpuacct")).unwrap();
        std::fs::write(r.join("cpuset/cpuset.cpus"), "0-3\n").unwrap();
        std::fs::write(r.join("cpuset/cpuset.mems"), "0\n").unwrap();
        kernel_dir(&r.join("cpuset/shoal"), &["cpuset.cpus", "cpuset.mems"]);
        let leaf = |h: &str| r.join(h).join("shoal/a");
        kernel_dir(&leaf("cpu,cpuacct"), &["cgroup.procs", "cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us"]);
        kernel_dir(&leaf("cpuset"), &["cgroup.procs", "cpuset.cpus", "cpuset.mems"]);
        kernel_dir(
            &leaf("memory"),
            &["cgroup.procs", "memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.soft_limit_in_bytes"],
        );
        kernel_dir(&leaf("pids"), &["cgroup.procs", "pids.max"]);
        kernel_dir(&leaf("devices"), &["cgroup.procs", "devices.allow", "devices.deny"]);

        let cg = LinuxCgroups::with_root(r);
        cg.create("shoal/a", Some(&pod_resources()), 42).unwrap();
        assert_eq!(read(leaf("cpu,cpuacct").join("cpu.shares")), "102");
        assert_eq!(read(leaf("cpu,cpuacct").join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(leaf("cpu,cpuacct").join("cpu.cfs_quota_us")), "25000");
        assert_eq!(read(leaf("memory").join("memory.limit_in_bytes")), (64u64 << 20).to_string());
        assert_eq!(read(leaf("memory").join("memory.memsw.limit_in_bytes")), (64u64 << 20).to_string());
        assert_eq!(read(leaf("pids").join("pids.max")), "4096");
        assert_eq!(read(leaf("devices").join("devices.deny")), "a *:* rwm");
        for h in ["cpu,cpuacct", "memory", "pids", "devices"] {
            assert_eq!(read(leaf(h).join("cgroup.procs")), "42", "{h}");
        }
        // No cpuset asked for: the cpuset hierarchy is left alone, and so are the others.
        assert_eq!(read(leaf("cpuset").join("cgroup.procs")), "");
        assert!(!r.join("freezer/shoal").exists() && !r.join("blkio/shoal").exists());

        // A cpuset: the new cgroup and its empty parent get the CPUs and nodes of the root first.
        let res = LinuxResourcesBuilder::default()
            .cpu(LinuxCpuBuilder::default().cpus("1").build().unwrap())
            .build()
            .unwrap();
        cg.create("shoal/a", Some(&res), 43).unwrap();
        assert_eq!(read(r.join("cpuset/shoal/cpuset.cpus")), "0-3");
        assert_eq!(read(r.join("cpuset/shoal/cpuset.mems")), "0");
        assert_eq!(read(leaf("cpuset").join("cpuset.cpus")), "1");
        assert_eq!(read(leaf("cpuset").join("cpuset.mems")), "0");
        assert_eq!(read(leaf("cpuset").join("cgroup.procs")), "43");

        // exec: every hierarchy the cgroup exists in.
        cg.add_process("shoal/a", 44).unwrap();
        for h in ["cpu,cpuacct", "cpuset", "memory", "pids", "devices"] {
            assert_eq!(read(leaf(h).join("cgroup.procs")), "44", "{h}");
        }
    }

    #[test]
    fn v1_refuses_a_limit_whose_controller_is_not_mounted() {
        let root = tempfile::tempdir().unwrap();
        for h in ["cpuacct", "memory", "pids", "devices"] {
            std::fs::create_dir(root.path().join(h)).unwrap();
        }
        let e = LinuxCgroups::with_root(root.path()).create("shoal/a", Some(&pod_resources()), 42).unwrap_err();
        assert!(matches!(&e, Error::Cgroup { path, operation: "create", .. } if path.ends_with("/cpu")), "{e:?}");
        assert!(!root.path().join("cpu").exists());
    }

    #[test]
    fn v2_enables_controllers_in_the_parents_and_writes_their_files() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::write(r.join("cgroup.controllers"), "cpuset cpu io memory hugetlb pids rdma misc\n").unwrap();
        std::fs::write(r.join("cgroup.subtree_control"), "").unwrap();
        // The parent already has memory; it does not offer cpuset.
        std::fs::create_dir(r.join("shoal")).unwrap();
        std::fs::write(r.join("shoal/cgroup.controllers"), "cpu io memory pids\n").unwrap();
        std::fs::write(r.join("shoal/cgroup.subtree_control"), "memory\n").unwrap();
        let leaf = r.join("shoal/a");
        kernel_dir(&leaf, &["cgroup.procs", "cpu.weight", "cpu.max", "memory.max", "memory.swap.max", "pids.max"]);

        let cg = LinuxCgroups::with_root(r);
        cg.set_up_v2("shoal/a", &effective_resources(&pod_resources())).unwrap();
        assert_eq!(read(r.join("cgroup.subtree_control")), "+cpu +memory +pids");
        assert_eq!(read(r.join("shoal/cgroup.subtree_control")), "+cpu +pids");
        assert_eq!(read(leaf.join("cpu.weight")), "4");
        assert_eq!(read(leaf.join("cpu.max")), "25000 100000");
        assert_eq!(read(leaf.join("memory.max")), (64u64 << 20).to_string());
        assert_eq!(read(leaf.join("memory.swap.max")), "0", "memory+swap equal to memory: no swap");
        assert_eq!(read(leaf.join("pids.max")), "4096");
        cg.add_process("shoal/a", 42).unwrap();
        assert_eq!(read(leaf.join("cgroup.procs")), "42");

        // A limit on a controller the parent does not offer fails on its missing file.
        let res = LinuxResourcesBuilder::default()
            .cpu(LinuxCpuBuilder::default().cpus("1").build().unwrap())
            .build()
            .unwrap();
        let e = cg.set_up_v2("shoal/a", &res).unwrap_err();
        assert!(matches!(&e, Error::Cgroup { path, .. } if path.ends_with("cpuset.cpus")), "{e:?}");
    }

    #[test]
    fn v1_device_rules_deny_all_then_allow_the_defaults_and_the_spec_rules_in_order() {
        let privileged = LinuxResourcesBuilder::default()
            .devices(vec![LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::A)
                .access("rwm")
                .build()
                .unwrap()])
            .build()
            .unwrap();
        let rules: Vec<(&str, String)> = v1_settings(&effective_resources(&privileged))
            .unwrap()
            .into_iter()
            .map(|s| {
                assert_eq!(s.controller, "devices");
                (s.file, s.value)
            })
            .collect();
        assert_eq!(rules.first(), Some(&("devices.deny", "a *:* rwm".to_string())));
        assert!(rules.contains(&("devices.allow", "c 1:3 rwm".to_string())));
        assert!(rules.contains(&("devices.allow", "c 136:* rwm".to_string())));
        assert_eq!(rules.last(), Some(&("devices.allow", "a *:* rwm".to_string())), "privileged: allow all, last");
        assert_eq!(rules.len(), 11);
    }

    #[test]
    fn memory_and_cpu_map_as_the_kernel_expects() {
        let mem = |limit: i64, swap: Option<i64>| {
            let mut b = LinuxMemoryBuilder::default().limit(limit);
            if let Some(s) = swap {
                b = b.swap(s);
            }
            LinuxResourcesBuilder::default().memory(b.build().unwrap()).build().unwrap()
        };
        let files = |s: Vec<Setting>| s.into_iter().map(|s| (s.file, s.value)).collect::<Vec<_>>();
        // v1: the limit before memory+swap, unless memory+swap is lifted to unlimited.
        assert_eq!(
            files(v1_settings(&mem(100, Some(300))).unwrap()),
            [("memory.limit_in_bytes", "100".to_string()), ("memory.memsw.limit_in_bytes", "300".to_string())]
        );
        assert_eq!(
            files(v1_settings(&mem(-1, None)).unwrap()),
            [("memory.memsw.limit_in_bytes", "-1".to_string()), ("memory.limit_in_bytes", "-1".to_string())]
        );
        // v2: swap alone.
        assert_eq!(
            files(v2_settings(&mem(100, Some(300))).unwrap()),
            [("memory.swap.max", "200".to_string()), ("memory.max", "100".to_string())]
        );
        assert_eq!(files(v2_settings(&mem(100, Some(-1))).unwrap())[0], ("memory.swap.max", "max".to_string()));
        assert_eq!(v2_settings(&mem(300, Some(100))).unwrap_err().kind(), io::ErrorKind::InvalidInput);

        assert_eq!([2, 100, 1024, 262_144, 1 << 20].map(cpu_weight), [1, 4, 39, 10_000, 10_000]);
        let quota_only = LinuxResourcesBuilder::default()
            .cpu(LinuxCpuBuilder::default().quota(-1i64).build().unwrap())
            .build()
            .unwrap();
        assert_eq!(files(v2_settings(&quota_only).unwrap()), [("cpu.max", "max".to_string())]);
        assert_eq!(files(v1_settings(&quota_only).unwrap()), [("cpu.cfs_quota_us", "-1".to_string())]);
    }

    #[test]
    fn limits_the_driver_does_not_apply_are_refused_not_dropped() {
        let res = LinuxResourcesBuilder::default()
            .block_io(LinuxBlockIoBuilder::default().weight(500u16).build().unwrap())
            .build()
            .unwrap();
        assert_eq!(v1_settings(&res).unwrap_err().kind(), io::ErrorKind::Unsupported);
        assert_eq!(v2_settings(&res).unwrap_err().kind(), io::ErrorKind::Unsupported);
    }

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
