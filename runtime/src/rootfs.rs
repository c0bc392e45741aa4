//! The container's filesystem view: spec mounts, /dev, pivot_root, masked and read-only paths.
//! Runs in the container's init process, inside its new mount namespace.

use std::ffi::CString;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use oci_spec::runtime::{Mount, Spec};

use crate::cgroups::is_v2;
use crate::sys;

/// Joins `path` below `root`, resolving every symlink as if `root` were `/`, so that no link in
/// the (untrusted) root filesystem can lead a mount outside it.
pub(crate) fn secure_join(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<PathBuf> = path.components().rev().map(|c| PathBuf::from(c.as_os_str())).collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        let comp = match part.components().next() {
            Some(c) => c,
            None => continue,
        };
        match comp {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
            Component::ParentDir => {
                resolved.pop();
                continue;
            }
            Component::Normal(name) => {
                let candidate = resolved.join(name);
                let full = root.join(&candidate);
                match std::fs::symlink_metadata(&full) {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        links += 1;
                        if links > 255 {
                            return Err(io::Error::from_raw_os_error(libc::ELOOP));
                        }
                        let target = std::fs::read_link(&full)?;
                        if target.is_absolute() {
                            resolved = PathBuf::new();
                        }
                        for c in target.components().rev() {
                            pending.push(PathBuf::from(c.as_os_str()));
                        }
                    }
                    _ => resolved = candidate,
                }
            }
        }
    }
    Ok(root.join(resolved))
}

/// Mount options split into flags, propagation flags and filesystem data.
#[derive(Debug, PartialEq)]
pub(crate) struct MountOptions {
    pub flags: MsFlags,
    pub clear: MsFlags,
    pub propagation: MsFlags,
    pub data: Vec<String>,
    pub bind: bool,
    pub recursive: bool,
}

pub(crate) fn parse_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions {
        flags: MsFlags::empty(),
        clear: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: Vec::new(),
        bind: false,
        recursive: false,
    };
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => {
                o.bind = true;
                continue;
            }
            "rbind" => {
                o.bind = true;
                o.recursive = true;
                continue;
            }
            "private" => {
                o.propagation |= MsFlags::MS_PRIVATE;
                continue;
            }
            "rprivate" => {
                o.propagation |= MsFlags::MS_PRIVATE | MsFlags::MS_REC;
                continue;
            }
            "shared" => {
                o.propagation |= MsFlags::MS_SHARED;
                continue;
            }
            "rshared" => {
                o.propagation |= MsFlags::MS_SHARED | MsFlags::MS_REC;
                continue;
            }
            "slave" => {
                o.propagation |= MsFlags::MS_SLAVE;
                continue;
            }
            "rslave" => {
                o.propagation |= MsFlags::MS_SLAVE | MsFlags::MS_REC;
                continue;
            }
            "unbindable" => {
                o.propagation |= MsFlags::MS_UNBINDABLE;
                continue;
            }
            "runbindable" => {
                o.propagation |= MsFlags::MS_UNBINDABLE | MsFlags::MS_REC;
                continue;
            }
            other => {
                o.data.push(other.to_string());
                continue;
            }
        };
        o.flags |= set;
        o.flags &= !clear;
        o.clear |= clear;
    }
    o
}

fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn ctx(what: impl std::fmt::Display, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The flags a mount point currently has that a bind remount must keep (the kernel refuses to
/// clear locked ones).
fn locked_flags(path: &Path) -> MsFlags {
    let mut out = MsFlags::empty();
    if let Ok(st) = nix::sys::statvfs::statvfs(path) {
        use nix::sys::statvfs::FsFlags;
        let f = st.flags();
        for (a, b) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            // ST_RELATIME (0x1000); nix names it on glibc only.
            (FsFlags::from_bits_retain(0x1000), MsFlags::MS_RELATIME),
        ] {
            if f.contains(a) {
                out |= b;
            }
        }
    }
    out
}

fn ensure_dir(path: &Path) -> io::Result<()> {
    std::fs::create_dir_all(path).map_err(|e| ctx(format!("create {}", path.display()), e))
}

fn ensure_file(path: &Path) -> io::Result<()> {
    if let Some(p) = path.parent() {
        ensure_dir(p)?;
    }
    if !path.exists() {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| ctx(format!("create {}", path.display()), e))?;
    }
    Ok(())
}

/// Mounts one spec mount below `rootfs`.
pub(crate) fn mount_one(rootfs: &Path, m: &Mount, new_netns: bool) -> io::Result<()> {
    let dest = secure_join(rootfs, m.destination())?;
    let typ = m.typ().clone().unwrap_or_default();
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
    let data = if opts.data.is_empty() { None } else { Some(opts.data.join(",")) };
    let bind = opts.bind || typ == "bind";
    if bind {
        let source = m
            .source()
            .clone()
            .ok_or_else(|| io::Error::other(format!("bind mount {} without source", m.destination().display())))?;
        let meta = std::fs::metadata(&source).map_err(|e| ctx(format!("bind source {}", source.display()), e))?;
        if meta.is_dir() {
            ensure_dir(&dest)?;
        } else {
            ensure_file(&dest)?;
        }
        let mut flags = MsFlags::MS_BIND;
        if opts.recursive {
            flags |= MsFlags::MS_REC;
        }
        mount(Some(&source), &dest, None::<&str>, flags, None::<&str>)
            .map_err(|e| ctx(format!("bind {} on {}", source.display(), dest.display()), errno(e)))?;
        let extra = opts.flags & !MsFlags::MS_REMOUNT;
        if !extra.is_empty() {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra | (locked_flags(&dest) & !opts.clear);
            mount(None::<&str>, &dest, None::<&str>, flags, None::<&str>)
                .map_err(|e| ctx(format!("remount {}", dest.display()), errno(e)))?;
        }
    } else {
        match typ.as_str() {
            "cgroup" | "cgroup2" => return mount_cgroup(&dest, opts.flags),
            _ => {}
        }
        ensure_dir(&dest)?;
        let source = m.source().clone().unwrap_or_else(|| PathBuf::from(&typ));
        let res = mount(Some(&source), &dest, Some(typ.as_str()), opts.flags, data.as_deref());
        match res {
            Ok(()) => {}
            Err(nix::Error::EPERM) | Err(nix::Error::EBUSY) if typ == "sysfs" && !new_netns => {
                // sysfs cannot be mounted without a network namespace of one's own: bind the
                // host's, read-only.
                mount(Some("/sys"), &dest, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                    .map_err(|e| ctx("bind /sys", errno(e)))?;
                let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked_flags(&dest);
                mount(None::<&str>, &dest, None::<&str>, flags, None::<&str>)
                    .map_err(|e| ctx("remount /sys read-only", errno(e)))?;
            }
            Err(e) => return Err(ctx(format!("mount {typ} on {}", dest.display()), errno(e))),
        }
    }
    if !opts.propagation.is_empty() {
        mount(None::<&str>, &dest, None::<&str>, opts.propagation, None::<&str>)
            .map_err(|e| ctx(format!("set propagation of {}", dest.display()), errno(e)))?;
    }
    Ok(())
}

/// A cgroup mount: on v2 the container's own cgroup namespace root, read-only unless asked
/// otherwise; on v1 a read-only tmpfs (per-controller v1 mounts are not provided).
fn mount_cgroup(dest: &Path, flags: MsFlags) -> io::Result<()> {
    ensure_dir(dest)?;
    if is_v2(Path::new("/sys/fs/cgroup")) {
        mount(
            Some("cgroup2"),
            dest,
            Some("cgroup2"),
            flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| ctx(format!("mount cgroup2 on {}", dest.display()), errno(e)))
    } else {
        mount(
            Some("tmpfs"),
            dest,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=755"),
        )
        .map_err(|e| ctx(format!("mount tmpfs on {}", dest.display()), errno(e)))
    }
}

const DEFAULT_DEVICES: &[(&str, u64, u64)] =
    &[("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

/// Creates the default device nodes and links in a fresh /dev.
pub(crate) fn populate_dev(dev: &Path) -> io::Result<()> {
    for (name, major, minor) in DEFAULT_DEVICES {
        let path = dev.join(name);
        let _ = std::fs::remove_file(&path);
        match mknod(&path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(*major, *minor)) {
            Ok(()) => {
                // mknod honours the umask: set the mode exactly.
                let _ = nix::sys::stat::fchmodat(
                    nix::fcntl::AT_FDCWD,
                    &path,
                    Mode::from_bits_truncate(0o666),
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                );
            }
            Err(nix::Error::EPERM) => {
                // In a user namespace device nodes cannot be made: bind the host's.
                ensure_file(&path)?;
                let host = Path::new("/dev").join(name);
                mount(Some(&host), &path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                    .map_err(|e| ctx(format!("bind {}", host.display()), errno(e)))?;
            }
            Err(e) => return Err(ctx(format!("mknod {}", path.display()), errno(e))),
        }
    }
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let path = dev.join(link);
        if std::fs::symlink_metadata(&path).is_err() {
            symlink(target, &path).map_err(|e| ctx(format!("symlink {}", path.display()), e))?;
        }
    }
    Ok(())
}

/// Makes `rootfs` the root: pivot_root, then detaches the old root.
pub(crate) fn pivot(rootfs: &Path) -> io::Result<()> {
    nix::unistd::chdir(rootfs).map_err(|e| ctx("chdir to rootfs", errno(e)))?;
    let dot = CString::new(".").map_err(io::Error::other)?;
    sys::pivot_root(&dot, &dot).map_err(|e| ctx("pivot_root", e))?;
    // The old root now sits below the new one; keep its unmount from reaching the host.
    mount(None::<&str>, ".", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| ctx("make old root a slave", errno(e)))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| ctx("detach old root", errno(e)))?;
    nix::unistd::chdir("/").map_err(|e| ctx("chdir /", errno(e)))?;
    Ok(())
}

/// Hides a path: /dev/null over a file, an empty read-only tmpfs over a directory.
pub(crate) fn mask_path(path: &Path) -> io::Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ctx(format!("stat {}", path.display()), e)),
    };
    let res = if meta.is_dir() {
        mount(Some("tmpfs"), path, Some("tmpfs"), MsFlags::MS_RDONLY, None::<&str>)
    } else {
        mount(Some("/dev/null"), path, None::<&str>, MsFlags::MS_BIND, None::<&str>)
    };
    res.map_err(|e| ctx(format!("mask {}", path.display()), errno(e)))
}

/// Makes a path read-only (a bind of itself, remounted read-only).
pub(crate) fn readonly_path(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ctx(format!("stat {}", path.display()), e)),
    }
    mount(Some(path), path, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| ctx(format!("bind {}", path.display()), errno(e)))?;
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC | locked_flags(path);
    mount(Some(path), path, None::<&str>, flags, None::<&str>)
        .map_err(|e| ctx(format!("remount {} read-only", path.display()), errno(e)))
}

/// Sets up the whole filesystem view of a container and pivots into it.
pub(crate) fn setup(spec: &Spec, rootfs: &Path, new_netns: bool) -> io::Result<()> {
    let linux = spec.linux().as_ref();
    let propagation = match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        Some("shared") | Some("rshared") => MsFlags::MS_SHARED | MsFlags::MS_REC,
        Some("private") | Some("rprivate") => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        Some("unbindable") | Some("runbindable") => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => MsFlags::MS_SLAVE | MsFlags::MS_REC,
    };
    mount(None::<&str>, "/", None::<&str>, propagation, None::<&str>)
        .map_err(|e| ctx("set / propagation", errno(e)))?;
    mount(Some(rootfs), rootfs, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| ctx(format!("bind rootfs {}", rootfs.display()), errno(e)))?;

    let mut dev_is_tmpfs = false;
    for m in spec.mounts().as_deref().unwrap_or(&[]) {
        mount_one(rootfs, m, new_netns)?;
        if m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs") {
            dev_is_tmpfs = true;
        }
    }
    if dev_is_tmpfs {
        let dev = secure_join(rootfs, Path::new("/dev"))?;
        populate_dev(&dev)?;
        for d in linux.and_then(|l| l.devices().as_deref()).unwrap_or(&[]) {
            let path = secure_join(rootfs, d.path())?;
            if let Some(p) = path.parent() {
                ensure_dir(p)?;
            }
            let kind = match d.typ() {
                oci_spec::runtime::LinuxDeviceType::B => SFlag::S_IFBLK,
                oci_spec::runtime::LinuxDeviceType::P => SFlag::S_IFIFO,
                _ => SFlag::S_IFCHR,
            };
            let mode = Mode::from_bits_truncate(d.file_mode().unwrap_or(0o666));
            let _ = std::fs::remove_file(&path);
            mknod(&path, kind, mode, makedev(d.major() as u64, d.minor() as u64))
                .map_err(|e| ctx(format!("mknod {}", path.display()), errno(e)))?;
            let _ = nix::unistd::chown(
                &path,
                d.uid().map(nix::unistd::Uid::from_raw),
                d.gid().map(nix::unistd::Gid::from_raw),
            );
        }
    }

    pivot(rootfs)?;

    // Sysctls go in while /proc/sys is still writable (as runc does), before it is made
    // read-only below.
    if let Some(sysctl) = linux.and_then(|l| l.sysctl().as_ref()) {
        for (k, v) in sysctl {
            let path = Path::new("/proc/sys").join(k.replace('.', "/"));
            std::fs::write(&path, v).map_err(|e| io::Error::new(e.kind(), format!("sysctl {k}: {e}")))?;
        }
    }

    if let Some(l) = linux {
        for p in l.masked_paths().as_deref().unwrap_or(&[]) {
            mask_path(Path::new(p))?;
        }
        for p in l.readonly_paths().as_deref().unwrap_or(&[]) {
            readonly_path(Path::new(p))?;
        }
    }
    if spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false) {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked_flags(Path::new("/"));
        mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
            .map_err(|e| ctx("remount / read-only", errno(e)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_join_keeps_links_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("real/sub")).unwrap();
        symlink("/etc", root.join("etc-link")).unwrap();
        symlink("../../../..", root.join("real/up")).unwrap();
        symlink("sub", root.join("real/rel")).unwrap();
        assert_eq!(secure_join(root, Path::new("/etc-link/passwd")).unwrap(), root.join("etc/passwd"));
        assert_eq!(secure_join(root, Path::new("/real/up/etc")).unwrap(), root.join("etc"));
        assert_eq!(secure_join(root, Path::new("/../../x")).unwrap(), root.join("x"));
        assert_eq!(secure_join(root, Path::new("/real/rel/f")).unwrap(), root.join("real/sub/f"));
    }

    #[test]
    fn secure_join_stops_link_loops() {
        let dir = tempfile::tempdir().unwrap();
        symlink("/a", dir.path().join("a")).unwrap();
        assert!(secure_join(dir.path(), Path::new("/a/b")).is_err());
    }

    #[test]
    fn parses_mount_options() {
        let o = parse_options(&["rbind".into(), "ro".into(), "nosuid".into(), "rprivate".into(), "mode=755".into()]);
        assert!(o.bind && o.recursive);
        assert_eq!(o.flags, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(o.data, vec!["mode=755".to_string()]);
        let o = parse_options(&["ro".into(), "rw".into()]);
        assert_eq!(o.flags, MsFlags::empty());
    }
}
