//! Pod sandboxes: network, ipc and uts namespaces held by bind-mounted nsfs files, with no
//! process keeping them alive. Containers of the pod join them by path.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType};

use crate::error::{Error, Result};

/// A pod's shared namespaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    pub id: String,
    /// `ROOT/ID`, holding the three nsfs files.
    pub dir: PathBuf,
    pub netns_path: PathBuf,
    pub ipc_ns_path: PathBuf,
    pub uts_ns_path: PathBuf,
}

const FILES: [(&str, &str); 3] = [("net", "net"), ("ipc", "ipc"), ("uts", "uts")];

impl Sandbox {
    fn at(id: &str, root: &Path) -> Sandbox {
        let dir = root.join(id);
        Sandbox {
            id: id.to_string(),
            netns_path: dir.join("net"),
            ipc_ns_path: dir.join("ipc"),
            uts_ns_path: dir.join("uts"),
            dir,
        }
    }

    /// Creates fresh network (with loopback up), ipc and uts namespaces under `ROOT/ID`.
    pub fn create(id: &str, root: &Path) -> Result<Sandbox> {
        if id.is_empty() || id.contains('/') || id == "." || id == ".." {
            return Err(Error::InvalidId(id.to_string()));
        }
        let sb = Sandbox::at(id, root);
        let err = |operation: &'static str| {
            move |source: io::Error| Error::CreateSandbox { id: id.to_string(), operation, source }
        };
        std::fs::create_dir_all(root).map_err(err("create root"))?;
        std::fs::create_dir(&sb.dir).map_err(err("create directory"))?;
        for (name, _) in FILES {
            std::fs::File::create(sb.dir.join(name)).map_err(err("create nsfs file"))?;
        }
        let files = [sb.netns_path.clone(), sb.ipc_ns_path.clone(), sb.uts_ns_path.clone()];
        // A thread may unshare these three namespaces on its own; its bind mounts land in the
        // process's mount namespace and keep the namespaces alive after it ends.
        let res = std::thread::spawn(move || -> io::Result<()> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
                .map_err(|e| io::Error::other(format!("unshare: {e}")))?;
            loopback_up()?;
            let tid = nix::unistd::gettid();
            for ((_, ns), file) in FILES.iter().zip(files.iter()) {
                let src = format!("/proc/self/task/{tid}/ns/{ns}");
                mount(Some(src.as_str()), file, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                    .map_err(|e| io::Error::other(format!("bind {src} on {}: {e}", file.display())))?;
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")));
        if let Err(e) = res {
            let _ = sb.remove();
            return Err(err("hold namespaces")(e));
        }
        Ok(sb)
    }

    /// The sandbox of a pod created earlier (after a daemon restart).
    pub fn open(id: &str, root: &Path) -> Option<Sandbox> {
        let sb = Sandbox::at(id, root);
        sb.netns_path.exists().then_some(sb)
    }

    /// The namespaces a container of this pod joins, for its runtime spec.
    pub fn namespaces(&self) -> Vec<LinuxNamespace> {
        [
            (LinuxNamespaceType::Network, &self.netns_path),
            (LinuxNamespaceType::Ipc, &self.ipc_ns_path),
            (LinuxNamespaceType::Uts, &self.uts_ns_path),
        ]
        .into_iter()
        .filter_map(|(typ, path)| LinuxNamespaceBuilder::default().typ(typ).path(path.clone()).build().ok())
        .collect()
    }

    /// Unmounts the nsfs files and removes the directory; the namespaces go once no process
    /// uses them.
    pub fn remove(&self) -> Result<()> {
        for (name, _) in FILES {
            let p = self.dir.join(name);
            match umount2(&p, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
                Err(e) => return Err(Error::RemoveSandbox { path: p, source: e.into() }),
            }
        }
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::RemoveSandbox { path: self.dir.clone(), source }),
        }
    }
}

/// Sets the loopback interface up in the calling thread's network namespace.
fn loopback_up() -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| io::Error::other(format!("socket: {e}")))?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the ifreq we pass; it lives for the duration of the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifru_flags is the union member SIOCGIFFLAGS just set.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads the ifreq we pass.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
