//! A volume mount's `subPath`, resolved inside the volume as the kubelet's safe subPath: each
//! component is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` from the volume's
//! root, so a symlink a pod planted in the volume (`ln -s / vol/escape`) cannot lead the mount
//! out of it; a symlink that stays inside the volume still works. Missing directories are made
//! (0755) on the way, as the kubelet does. On a kernel without openat2 (before 5.6, or under
//! qemu's user mode) the same rules are walked component by component with `lstat`, following
//! only relative symlinks that stay inside the volume.
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SubPathError {
    #[error("subPath {0:?} must be a relative path without '..'")]
    Invalid(String),
    #[error("subPath {sub:?} leads out of the volume (a symlink to {target}?)")]
    Escapes { sub: String, target: String },
    #[error("opening the volume {path}")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("resolving subPath {sub:?}")]
    Resolve {
        sub: String,
        #[source]
        source: std::io::Error,
    },
}

fn how(dir: bool) -> OpenHow {
    let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    if dir {
        flags |= OFlag::O_DIRECTORY;
    }
    OpenHow::new().flags(flags).resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// The host path to mount for `sub` inside the volume at `root` (made if missing).
pub(crate) fn resolve(root: &Path, sub: &str) -> Result<PathBuf, SubPathError> {
    let rel = Path::new(sub);
    if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(SubPathError::Invalid(sub.into()));
    }
    // The volume's own path is the agent's (a claim's volume is a link to its directory).
    let root = std::fs::canonicalize(root).map_err(|source| SubPathError::Root { path: root.into(), source })?;
    let root_fd: OwnedFd =
        std::fs::File::open(&root).map_err(|source| SubPathError::Root { path: root.clone(), source })?.into();
    let fd = match openat2(root_fd.as_fd(), ".", how(true)) {
        Err(Errno::ENOSYS) => {
            let path = walk_beneath(&root, rel, sub)?;
            nix::fcntl::open(&path, OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW, Mode::empty())
                .map_err(|e| SubPathError::Resolve { sub: sub.into(), source: e.into() })?
        }
        _ => open_beneath(&root, &root_fd, rel, sub)?,
    };
    // The real path of what was opened: mounted by path, it must still be inside the volume.
    let real = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd)))
        .map_err(|source| SubPathError::Resolve { sub: sub.into(), source })?;
    if !real.starts_with(&root) {
        return Err(SubPathError::Escapes { sub: sub.into(), target: real.display().to_string() });
    }
    Ok(real)
}

/// `rel` opened beneath `root_fd` with openat2, making missing directories on the way.
fn open_beneath(root: &Path, root_fd: &OwnedFd, rel: &Path, sub: &str) -> Result<OwnedFd, SubPathError> {
    let err = |e: Errno| -> SubPathError {
        match e {
            Errno::EXDEV | Errno::ELOOP => SubPathError::Escapes { sub: sub.into(), target: link_target(root, sub) },
            e => SubPathError::Resolve { sub: sub.into(), source: e.into() },
        }
    };
    let comps: Vec<&std::ffi::OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s),
            _ => None,
        })
        .collect();
    // Walk from the root, making missing directories; every step stays beneath the root.
    let mut done = PathBuf::new();
    for (i, comp) in comps.iter().enumerate() {
        done.push(comp);
        let last = i + 1 == comps.len();
        match openat2(root_fd.as_fd(), done.as_path(), how(!last)) {
            Ok(_) => {}
            Err(Errno::ENOENT) => {
                let parent = done.parent().filter(|p| !p.as_os_str().is_empty());
                let parent_fd = match parent {
                    Some(p) => openat2(root_fd.as_fd(), p, how(true)).map_err(err)?,
                    None => root_fd.try_clone().map_err(|source| SubPathError::Resolve { sub: sub.into(), source })?,
                };
                match nix::sys::stat::mkdirat(parent_fd.as_fd(), *comp, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(err(e)),
                }
                openat2(root_fd.as_fd(), done.as_path(), how(!last)).map_err(err)?;
            }
            Err(e) => return Err(err(e)),
        }
    }
    openat2(root_fd.as_fd(), rel, how(false)).map_err(err)
}

/// Most symlinks followed in one subPath, as the kernel's limit.
const MAX_LINKS: usize = 40;

/// The openat2 rules walked by hand (kernels without openat2): every component is looked at with
/// `lstat`; `..` may not climb above the volume; a symlink is followed only when relative, and
/// its target is walked by the same rules. Missing directories are made (0755).
fn walk_beneath(root: &Path, rel: &Path, sub: &str) -> Result<PathBuf, SubPathError> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    let escapes = |target: String| SubPathError::Escapes { sub: sub.into(), target };
    let io = |source: std::io::Error| SubPathError::Resolve { sub: sub.into(), source };
    let mut pending: VecDeque<OsString> = rel.iter().map(OsString::from).collect();
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(comp) = pending.pop_front() {
        match comp.to_str() {
            Some("." | "" | "/") => continue,
            Some("..") => {
                if done.pop().is_none() {
                    return Err(escapes(link_target(root, sub)));
                }
                continue;
            }
            _ => {}
        }
        let mut here = root.to_path_buf();
        here.extend(&done);
        here.push(&comp);
        match std::fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                let target = std::fs::read_link(&here).map_err(io)?;
                if target.is_absolute() || links > MAX_LINKS {
                    return Err(escapes(target.display().to_string()));
                }
                for (i, c) in target.iter().enumerate() {
                    pending.insert(i, OsString::from(c));
                }
            }
            Ok(_) => done.push(comp),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::create_dir(&here) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io(e)),
                }
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&here, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
                // Looked at again: it may have been made as something else meanwhile.
                pending.push_front(comp);
            }
            Err(e) => return Err(io(e)),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&done);
    Ok(out)
}

/// Where a symlink on the way points, for the message.
fn link_target(root: &Path, sub: &str) -> String {
    let mut p = root.to_path_buf();
    for comp in Path::new(sub).components() {
        p.push(comp);
        if let Ok(t) = std::fs::read_link(&p) {
            return t.display().to_string();
        }
    }
    "outside".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subpaths_stay_inside_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(vol.join("data/inner")).unwrap();
        std::os::unix::fs::symlink("/", vol.join("escape")).unwrap();
        std::os::unix::fs::symlink("../../..", vol.join("data/up")).unwrap();
        std::os::unix::fs::symlink("data/inner", vol.join("inside")).unwrap();
        std::os::unix::fs::symlink("/proc/self/root", vol.join("magic")).unwrap();
        let real = std::fs::canonicalize(&vol).unwrap();

        assert_eq!(resolve(&vol, "data/inner").unwrap(), real.join("data/inner"));
        // A link that stays inside is followed.
        assert_eq!(resolve(&vol, "inside").unwrap(), real.join("data/inner"));
        // Missing directories are made inside the volume.
        assert_eq!(resolve(&vol, "new/deep").unwrap(), real.join("new/deep"));
        assert!(real.join("new/deep").is_dir());
        for bad in ["escape", "escape/etc", "data/up", "data/up/etc", "magic"] {
            let e = resolve(&vol, bad).unwrap_err();
            assert!(matches!(e, SubPathError::Escapes { .. }), "{bad}: {e:?}");
        }
        // The hand walk (kernels without openat2) gives the same answers.
        for ok in ["data/inner", "inside", "new/deeper"] {
            let want = resolve(&vol, ok).unwrap();
            assert_eq!(walk_beneath(&real, Path::new(ok), ok).unwrap(), want, "{ok}");
        }
        for bad in ["escape", "escape/etc", "data/up", "data/up/etc", "magic"] {
            let e = walk_beneath(&real, Path::new(bad), bad).unwrap_err();
            assert!(matches!(e, SubPathError::Escapes { .. }), "{bad}: {e:?}");
        }
        // Nothing was made outside.
        assert!(!Path::new("/etc/new").exists() || Path::new("/etc/new").is_dir());
        for bad in ["/etc", "../x", "a/../../b"] {
            assert!(matches!(resolve(&vol, bad), Err(SubPathError::Invalid(_))), "{bad}");
        }
    }
}
