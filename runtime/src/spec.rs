//! A runtime spec with the defaults containerd gives a container, for the node agent and tests
//! to start from.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    get_default_mounts, LinuxBuilder, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxNamespaceBuilder, LinuxNamespaceType, MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder,
    RootBuilder, Spec, SpecBuilder, UserBuilder,
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

/// Entries of the host's /dev a privileged container does not get (as containerd): its own
/// devpts, shm, mqueue and console, and the fd links.
const HOST_DEV_SKIPPED: &[&str] = &["pts", "shm", "mqueue", "fd", "console", "ptmx", ".lxc", ".lxd-mounts", ".udev"];

/// Every device node below `dev` (the host's /dev), as `linux.devices` entries at the same
/// paths: what a privileged container gets, as with containerd. Symlinks and other files are
/// left out; unreadable directories are skipped.
pub fn host_devices(dev: &Path) -> Vec<LinuxDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let mut dirs = vec![dev.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            if dir == dev && HOST_DEV_SKIPPED.iter().any(|s| name == *s) {
                continue;
            }
            // symlink_metadata: a link is not followed (not even one pointing at a device).
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            let ft = meta.file_type();
            let typ = if ft.is_dir() {
                dirs.push(entry.path());
                continue;
            } else if ft.is_char_device() {
                LinuxDeviceType::C
            } else if ft.is_block_device() {
                LinuxDeviceType::B
            } else {
                continue;
            };
            let rdev = meta.rdev();
            let built = LinuxDeviceBuilder::default()
                .path(Path::new("/dev").join(entry.path().strip_prefix(dev).unwrap_or(&entry.path())))
                .typ(typ)
                .major(nix::sys::stat::major(rdev) as i64)
                .minor(nix::sys::stat::minor(rdev) as i64)
                .file_mode(meta.mode() & 0o7777)
                .uid(meta.uid())
                .gid(meta.gid())
                .build();
            if let Ok(d) = built {
                out.push(d);
            }
        }
    }
    out.sort_by(|a, b| a.path().cmp(b.path()));
    out
}

/// Gives a privileged container the host's devices, as upstream: every node of the host's
/// /dev created in its /dev, and a device cgroup that allows every device.
pub fn set_privileged_devices(spec: &mut Spec) {
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut devices = linux.devices().clone().unwrap_or_default();
    devices.extend(host_devices(Path::new("/dev")));
    linux.set_devices(Some(devices));
    let mut res = linux.resources().clone().unwrap_or_default();
    let mut rules = res.devices().clone().unwrap_or_default();
    if let Ok(all) = LinuxDeviceCgroupBuilder::default().allow(true).typ(LinuxDeviceType::A).access("rwm").build() {
        rules.push(all);
    }
    res.set_devices(Some(rules));
    linux.set_resources(Some(res));
    spec.set_linux(Some(linux));
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
