//! A runtime spec with the defaults containerd gives a container, for the node agent and tests
//! to start from.

use std::path::PathBuf;

use oci_spec::runtime::{
    get_default_mounts, LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, MountBuilder, PosixRlimitBuilder,
    PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::caps::default_linux_capabilities;

/// Paths containerd hides from containers.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths containerd makes read-only.
pub const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// A spec running `args` as root in `rootfs` with containerd's defaults: new pid, mount, ipc,
/// uts, network and cgroup namespaces, the default mounts (/proc, /dev, /dev/pts, /dev/shm,
/// /dev/mqueue, read-only /sys), masked and read-only paths, the default capabilities,
/// no_new_privs and RLIMIT_NOFILE 1024.
pub fn default_spec(rootfs: impl Into<PathBuf>, args: Vec<String>) -> Spec {
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(0u32).gid(0u32).build().unwrap_or_default())
        .args(args)
        .env(vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()])
        .cwd("/")
        .capabilities(default_linux_capabilities())
        .rlimits(
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .hard(1024u64)
                .soft(1024u64)
                .build()
                .map(|r| vec![r])
                .unwrap_or_default(),
        )
        .no_new_privileges(true)
        .build()
        .unwrap_or_default();
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .filter_map(|t| LinuxNamespaceBuilder::default().typ(t).build().ok())
    .collect::<Vec<_>>();
    let mut mounts = get_default_mounts();
    // containerd's /sys is read-only and without setuid, devices or exec.
    for m in mounts.iter_mut() {
        if m.destination() == &PathBuf::from("/sys") {
            m.set_options(Some(vec!["nosuid".into(), "noexec".into(), "nodev".into(), "ro".into()]));
        }
    }
    if !mounts.iter().any(|m| m.destination() == &PathBuf::from("/sys/fs/cgroup")) {
        if let Ok(m) = MountBuilder::default()
            .destination("/sys/fs/cgroup")
            .typ("cgroup")
            .source("cgroup")
            .options(vec!["nosuid".into(), "noexec".into(), "nodev".into(), "relatime".into(), "ro".into()])
            .build()
        {
            mounts.push(m);
        }
    }
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(MASKED_PATHS.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .readonly_paths(READONLY_PATHS.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .unwrap_or_default();
    SpecBuilder::default()
        .version("1.0.2")
        .root(RootBuilder::default().path(rootfs.into()).readonly(false).build().unwrap_or_default())
        .hostname("shoal")
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_round_trips_through_json() {
        let spec = default_spec("/rootfs", vec!["echo".into(), "hi".into()]);
        let json = serde_json::to_string(&spec).unwrap();
        let back: Spec = serde_json::from_str(&json).unwrap();
        assert_eq!(back.process().as_ref().unwrap().args().as_ref().unwrap()[1], "hi");
        let linux = back.linux().as_ref().unwrap();
        assert!(linux.readonly_paths().as_ref().unwrap().contains(&"/proc/sys".to_string()));
        assert_eq!(linux.namespaces().as_ref().unwrap().len(), 6);
        assert!(back.mounts().as_ref().unwrap().iter().any(|m| m.destination() == &PathBuf::from("/dev/pts")));
    }
}
