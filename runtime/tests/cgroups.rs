//! Root tests of `LinuxCgroups` on the machine's cgroupfs (/sys/fs/cgroup, v1 or v2): a
//! sleeping process is put in a cgroup with the limits shoal sets, and the kernel's view of it
//! is checked; then the cgroup is removed from every hierarchy.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use shoal_runtime::oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};
use shoal_runtime::{CgroupDriver, LinuxCgroups};

const ROOT: &str = "/sys/fs/cgroup";

fn v2() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// A `sleep` child and the cgroup parent of this test: the child is killed and every directory
/// of the parent removed on drop, whatever the test got to.
struct Sleeper {
    child: Child,
    parent: String,
}

impl Sleeper {
    fn new(name: &str) -> Sleeper {
        assert!(nix::unistd::geteuid().is_root(), "these tests need root");
        let child = Command::new("sleep").arg("60").spawn().expect("spawn sleep");
        Sleeper { child, parent: format!("shoal-test-{}-{name}", std::process::id()) }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every directory named `rel` below the parent, in every hierarchy.
    fn dirs(&self, rel: &str) -> Vec<PathBuf> {
        let mut out = vec![Path::new(ROOT).join(&self.parent).join(rel)];
        for h in std::fs::read_dir(ROOT).into_iter().flatten().flatten() {
            out.push(h.path().join(&self.parent).join(rel));
        }
        out.into_iter().filter(|d| d.exists()).collect()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        self.stop();
        for rel in ["c/own", "c", ""] {
            for d in self.dirs(rel) {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_string()
}

/// What the daemon sets for a pod with a request of 500m CPU, a limit of 1 CPU and 32 MiB.
fn pod_resources(cpus: Option<&str>) -> LinuxResources {
    let mut cpu = LinuxCpuBuilder::default().shares(512u64).quota(100_000i64).period(100_000u64);
    if let Some(c) = cpus {
        cpu = cpu.cpus(c).mems("0");
    }
    LinuxResourcesBuilder::default()
        .cpu(cpu.build().unwrap())
        .memory(LinuxMemoryBuilder::default().limit(32i64 << 20).build().unwrap())
        .pids(LinuxPidsBuilder::default().limit(64).build().unwrap())
        .build()
        .unwrap()
}

/// The controllers (v1) whose cgroup of `pid` is `path`, from /proc/PID/cgroup.
fn joined(pid: u32, path: &str) -> Vec<String> {
    read(format!("/proc/{pid}/cgroup"))
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, controllers, p) = (it.next()?, it.next()?, it.next()?);
            (p == format!("/{path}")).then(|| controllers.to_string())
        })
        .flat_map(|c| c.split(',').map(String::from).collect::<Vec<_>>())
        .collect()
}

#[test]
fn a_container_cgroup_gets_shoals_limits_and_is_removed_from_every_hierarchy() {
    let mut s = Sleeper::new("limits");
    let path = format!("{}/c", s.parent);
    let cg = LinuxCgroups::new();
    cg.create(&path, Some(&pod_resources(None)), s.pid()).expect("create");

    assert_eq!(cg.processes(&path).unwrap(), vec![s.pid()]);
    assert_eq!(cg.stats(&path).unwrap().pids, 1);
    let dir = |controller: &str| {
        if v2() {
            Path::new(ROOT).join(&path)
        } else {
            Path::new(ROOT).join(controller).join(&path)
        }
    };
    if v2() {
        assert_eq!(joined(s.pid(), &path), [""]);
        assert_eq!(read(dir("cpu").join("cpu.weight")), "20");
        assert_eq!(read(dir("cpu").join("cpu.max")), "100000 100000");
        assert_eq!(read(dir("memory").join("memory.max")), (32u64 << 20).to_string());
        assert_eq!(read(dir("memory").join("memory.swap.max")), "0");
    } else {
        let mut joined = joined(s.pid(), &path);
        joined.sort();
        assert_eq!(joined, ["cpu", "cpuacct", "devices", "memory", "pids"], "only the controllers it needs");
        assert_eq!(read(dir("cpu").join("cpu.shares")), "512");
        assert_eq!(read(dir("cpu").join("cpu.cfs_quota_us")), "100000");
        assert_eq!(read(dir("memory").join("memory.limit_in_bytes")), (32u64 << 20).to_string());
        assert_eq!(read(dir("memory").join("memory.memsw.limit_in_bytes")), (32u64 << 20).to_string());
        let devices = read(dir("devices").join("devices.list"));
        assert!(devices.lines().any(|l| l == "c 1:3 rwm"), "{devices}");
        assert!(!devices.lines().any(|l| l.starts_with("a ")), "{devices}");
    }
    assert_eq!(read(dir("pids").join("pids.max")), "64");

    // A cgroup the container made of its own goes with it.
    std::fs::create_dir(dir("memory").join("own")).unwrap();
    s.stop();
    cg.destroy(&path).expect("destroy");
    assert_eq!(s.dirs("c"), Vec::<PathBuf>::new(), "removed from every hierarchy");
}

#[test]
fn a_cpuset_is_filled_from_the_parent_before_the_process_joins() {
    let mut s = Sleeper::new("cpuset");
    let path = format!("{}/c", s.parent);
    let cg = LinuxCgroups::new();
    cg.create(&path, Some(&pod_resources(Some("0"))), s.pid()).expect("create");
    let (parent, dir) = if v2() {
        (Path::new(ROOT).join(&s.parent), Path::new(ROOT).join(&path))
    } else {
        (Path::new(ROOT).join("cpuset").join(&s.parent), Path::new(ROOT).join("cpuset").join(&path))
    };
    if !v2() {
        assert!(joined(s.pid(), &path).contains(&"cpuset".to_string()));
        assert_eq!(read(parent.join("cpuset.cpus")), read(Path::new(ROOT).join("cpuset/cpuset.cpus")));
    }
    assert_eq!(read(dir.join("cpuset.cpus")), "0");
    assert_eq!(read(dir.join("cpuset.mems")), "0");
    s.stop();
    cg.destroy(&path).expect("destroy");
    assert_eq!(s.dirs("c"), Vec::<PathBuf>::new());
}
