//! The operating-system calls that need privileges, behind a trait so the logic is testable
//! without root.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

/// Kinds of special files a layer may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Char,
    Block,
    Fifo,
}

/// Privileged operations used by unpacking and rootfs preparation.
pub trait ImageOs: Send + Sync + std::fmt::Debug {
    /// Creates a device node or fifo (a char 0/0 device is an overlayfs whiteout).
    fn mknod(&self, path: &Path, kind: NodeKind, mode: u32, major: u64, minor: u64) -> io::Result<()>;
    /// Changes ownership without following a symlink.
    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()>;
    /// Sets an extended attribute without following a symlink.
    fn set_xattr(&self, path: &Path, name: &str, value: &[u8]) -> io::Result<()>;
    /// Mounts overlayfs with the given option string.
    fn mount_overlay(&self, target: &Path, options: &str) -> io::Result<()>;
    /// Detaches the mount at `target`.
    fn unmount(&self, target: &Path) -> io::Result<()>;
    /// Whether `target` is a mount point.
    fn is_mounted(&self, target: &Path) -> bool;
}

/// The real thing.
#[derive(Debug, Default)]
pub struct LinuxImageOs;

impl ImageOs for LinuxImageOs {
    fn mknod(&self, path: &Path, kind: NodeKind, mode: u32, major: u64, minor: u64) -> io::Result<()> {
        let kind = match kind {
            NodeKind::Char => SFlag::S_IFCHR,
            NodeKind::Block => SFlag::S_IFBLK,
            NodeKind::Fifo => SFlag::S_IFIFO,
        };
        mknod(path, kind, Mode::from_bits_truncate(mode & 0o7777), makedev(major, minor)).map_err(io::Error::from)
    }

    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
    }

    fn set_xattr(&self, path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
        xattr::set(path, name, value)
    }

    fn mount_overlay(&self, target: &Path, options: &str) -> io::Result<()> {
        nix::mount::mount(Some("overlay"), target, Some("overlay"), nix::mount::MsFlags::empty(), Some(options))
            .map_err(io::Error::from)
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).map_err(io::Error::from)
    }

    fn is_mounted(&self, target: &Path) -> bool {
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return false;
        };
        let Ok(target) = target.canonicalize() else {
            return false;
        };
        let target = target.to_string_lossy().replace(' ', "\\040");
        info.lines().any(|l| l.split(' ').nth(4) == Some(target.as_str()))
    }
}

/// A recorded call of [`FakeImageOs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OsCall {
    Mknod { path: PathBuf, kind: NodeKind, major: u64, minor: u64 },
    Lchown { path: PathBuf, uid: u32, gid: u32 },
    SetXattr { path: PathBuf, name: String, value: Vec<u8> },
    MountOverlay { target: PathBuf, options: String },
    Unmount { target: PathBuf },
}

/// Records calls; special files become empty regular files so the tree stays inspectable.
#[derive(Debug, Default)]
pub struct FakeImageOs {
    calls: Mutex<Vec<OsCall>>,
}

impl FakeImageOs {
    pub fn calls(&self) -> Vec<OsCall> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn record(&self, call: OsCall) {
        if let Ok(mut c) = self.calls.lock() {
            c.push(call);
        }
    }
}

impl ImageOs for FakeImageOs {
    fn mknod(&self, path: &Path, kind: NodeKind, _mode: u32, major: u64, minor: u64) -> io::Result<()> {
        std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
        self.record(OsCall::Mknod { path: path.to_path_buf(), kind, major, minor });
        Ok(())
    }

    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        self.record(OsCall::Lchown { path: path.to_path_buf(), uid, gid });
        Ok(())
    }

    fn set_xattr(&self, path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
        self.record(OsCall::SetXattr { path: path.to_path_buf(), name: name.to_string(), value: value.to_vec() });
        Ok(())
    }

    fn mount_overlay(&self, target: &Path, options: &str) -> io::Result<()> {
        self.record(OsCall::MountOverlay { target: target.to_path_buf(), options: options.to_string() });
        Ok(())
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        self.record(OsCall::Unmount { target: target.to_path_buf() });
        Ok(())
    }

    fn is_mounted(&self, target: &Path) -> bool {
        let mut mounted = false;
        for c in self.calls() {
            match c {
                OsCall::MountOverlay { target: t, .. } if t == target => mounted = true,
                OsCall::Unmount { target: t } if t == target => mounted = false,
                _ => {}
            }
        }
        mounted
    }
}
