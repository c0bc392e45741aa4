//! What runs inside the container before the user's program: namespaces, filesystem, identity,
//! capabilities, limits, then execve. Also the same process setup for `exec`.

use std::convert::Infallible;
use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{LinuxSeccomp, PosixRlimitType, Process, Spec};

use crate::{caps, rootfs, seccomp, sys};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything the init process gets from the shim across the clone.
pub(crate) struct InitConfig<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    /// Read end: one byte once the shim has placed the process in its cgroup.
    pub go: OwnedFd,
    /// Write end: `ready\n` or `error MESSAGE\n`.
    pub status: OwnedFd,
    /// O_PATH fd of the exec fifo; opening it for writing blocks until `start`.
    pub fifo: OwnedFd,
    /// Descriptors to install as 0, 1, 2.
    pub stdio: [RawFd; 3],
    /// With a terminal: the socket the master end of the container's pty goes back over.
    pub console: Option<OwnedFd>,
    /// Namespaces to join, opened by the shim before the clone.
    pub join: Vec<(CloneFlags, OwnedFd)>,
    /// Namespaces the clone created.
    pub created: CloneFlags,
}

fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn ctx(what: impl std::fmt::Display, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The container's init: never returns. Failures are written to the status pipe.
pub(crate) fn container_init(cfg: InitConfig<'_>) -> ! {
    let status = cfg.status.as_raw_fd();
    let err = match init_inner(&cfg) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let msg = format!("error {}\n", err.to_string().replace('\n', " "));
    let _ = nix::unistd::write(&cfg.status, msg.as_bytes());
    let _ = status;
    sys::exit_now(1)
}

fn init_inner(cfg: &InitConfig<'_>) -> io::Result<Infallible> {
    let mut b = [0u8; 1];
    if nix::unistd::read(&cfg.go, &mut b).map_err(errno)? == 0 {
        return Err(io::Error::other("shim went away before the container was set up"));
    }
    let mut join: Vec<&(CloneFlags, OwnedFd)> = cfg.join.iter().collect();
    join.sort_by_key(|(f, _)| if *f == CloneFlags::CLONE_NEWUSER { 0 } else { 1 });
    for (flag, fd) in join {
        nix::sched::setns(fd, *flag).map_err(|e| ctx(format!("join namespace {flag:?}"), errno(e)))?;
    }
    nix::unistd::setsid().map_err(|e| ctx("setsid", errno(e)))?;
    if cfg.console.is_none() {
        for (i, fd) in cfg.stdio.iter().enumerate() {
            sys::dup_onto(*fd, i as RawFd).map_err(|e| ctx("install stdio", e))?;
        }
    }

    let spec = cfg.spec;
    let has_ns = |t: oci_spec::runtime::LinuxNamespaceType| {
        spec.linux().as_ref().and_then(|l| l.namespaces().as_ref()).is_some_and(|ns| ns.iter().any(|n| n.typ() == t))
    };
    if !has_ns(oci_spec::runtime::LinuxNamespaceType::Mount) {
        return Err(io::Error::other("the spec must ask for a mount namespace"));
    }
    rootfs::setup(spec, cfg.rootfs, cfg.created.contains(CloneFlags::CLONE_NEWNET))?;
    if let Some(console) = &cfg.console {
        // The rootfs is in place: the pty comes from the container's own /dev/pts.
        sys::hand_over_terminal(console.as_raw_fd()).map_err(|e| ctx("terminal", e))?;
        sys::set_controlling_tty(0).map_err(|e| ctx("set controlling terminal", e))?;
    }

    if has_ns(oci_spec::runtime::LinuxNamespaceType::Uts) {
        if let Some(h) = spec.hostname() {
            nix::unistd::sethostname(h).map_err(|e| ctx("set hostname", errno(e)))?;
        }
        if let Some(d) = spec.domainname() {
            let c = CString::new(d.as_bytes()).map_err(io::Error::other)?;
            // SAFETY: c is a valid buffer of the given length for the duration of the call.
            if unsafe { libc::setdomainname(c.as_ptr(), d.len()) } != 0 {
                return Err(ctx("set domain name", io::Error::last_os_error()));
            }
        }
    }

    let process = spec.process().as_ref().ok_or_else(|| io::Error::other("the spec has no process"))?;
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string()).map_err(|e| ctx("set oom_score_adj", e))?;
    }
    let prepared = prepare(process, spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()))?;
    finalize(process, &prepared)?;
    chdir_cwd(process)?;

    nix::unistd::write(&cfg.status, b"ready\n").map_err(|e| ctx("report ready", errno(e)))?;
    let fifo_path = format!("/proc/self/fd/{}", cfg.fifo.as_raw_fd());
    let fifo = nix::fcntl::open(fifo_path.as_str(), OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| ctx("open exec fifo", errno(e)))?;
    nix::unistd::write(&fifo, b"0").map_err(|e| ctx("write exec fifo", errno(e)))?;
    drop(fifo);
    exec(prepared)
}

/// A resolved program with its arguments, environment and seccomp filter.
pub(crate) struct Prepared {
    path: CString,
    args: Vec<CString>,
    env: Vec<CString>,
    seccomp: Option<seccomp::Filter>,
    /// Install the filter before dropping privileges (it needs CAP_SYS_ADMIN without
    /// no_new_privs) rather than right before execve.
    seccomp_early: bool,
}

/// Resolves the program, compiles the seccomp profile and applies limits; runs while still
/// privileged.
pub(crate) fn prepare(process: &Process, profile: Option<&LinuxSeccomp>) -> io::Result<Prepared> {
    let seccomp = profile.map(seccomp::compile).transpose().map_err(|e| ctx("compile seccomp profile", e))?;
    apply_rlimits(process)?;
    let args = process.args().as_deref().unwrap_or(&[]);
    let prog = args.first().ok_or_else(|| io::Error::other("the process has no args"))?;
    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", if process.user().uid() == 0 { "/root" } else { "/" }));
    }
    let path_var = env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH);
    let cwd = process.cwd();
    if !cwd.as_os_str().is_empty() {
        let _ = std::fs::create_dir_all(cwd);
    }
    let resolved = find_executable(prog, path_var, cwd)?;
    let cs = |s: &str| CString::new(s).map_err(io::Error::other);
    Ok(Prepared {
        path: CString::new(resolved.as_os_str().as_bytes()).map_err(io::Error::other)?,
        args: args.iter().map(|a| cs(a)).collect::<io::Result<_>>()?,
        env: env.iter().map(|e| cs(e)).collect::<io::Result<_>>()?,
        seccomp,
        seccomp_early: !process.no_new_privileges().unwrap_or(false),
    })
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds `prog` like execvp, but reports a missing program before anything runs.
pub(crate) fn find_executable(prog: &str, path_var: &str, cwd: &Path) -> io::Result<PathBuf> {
    if prog.contains('/') {
        let p = if Path::new(prog).is_absolute() { PathBuf::from(prog) } else { cwd.join(prog) };
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(io::Error::new(io::ErrorKind::NotFound, format!("exec {prog}: no such executable")))
        };
    }
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(prog);
        if is_executable(&p) {
            return Ok(p);
        }
    }
    Err(io::Error::new(io::ErrorKind::NotFound, format!("exec {prog:?}: executable file not found in $PATH")))
}

fn rlimit_resource(t: PosixRlimitType) -> Option<Resource> {
    Some(match t {
        PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

fn apply_rlimits(process: &Process) -> io::Result<()> {
    for r in process.rlimits().as_deref().unwrap_or(&[]) {
        if let Some(res) = rlimit_resource(r.typ()) {
            setrlimit(res, r.soft(), r.hard()).map_err(|e| ctx(format!("setrlimit {:?}", r.typ()), errno(e)))?;
        }
    }
    Ok(())
}

/// Switches to the process's user and groups and sets its capabilities and no_new_privs.
pub(crate) fn finalize(process: &Process, prepared: &Prepared) -> io::Result<()> {
    if let (Some(filter), true) = (&prepared.seccomp, prepared.seccomp_early) {
        filter.install().map_err(|e| ctx("install seccomp filter", e))?;
    }
    let c = process.capabilities().as_ref();
    let bounding = caps::mask(c.and_then(|c| c.bounding().as_ref()));
    let effective = caps::mask(c.and_then(|c| c.effective().as_ref()));
    let permitted = caps::mask(c.and_then(|c| c.permitted().as_ref()));
    let inheritable = caps::mask(c.and_then(|c| c.inheritable().as_ref()));
    let ambient = caps::mask(c.and_then(|c| c.ambient().as_ref()));
    for cap in 0..=sys::last_cap() {
        if bounding & (1u64 << cap) == 0 {
            match sys::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(ctx(format!("drop capability {cap} from the bounding set"), e)),
            }
        }
    }
    sys::prctl(libc::PR_SET_KEEPCAPS, 1, 0).map_err(|e| ctx("keep capabilities", e))?;
    let user = process.user();
    let gids: Vec<Gid> = user.additional_gids().as_deref().unwrap_or(&[]).iter().map(|g| Gid::from_raw(*g)).collect();
    match nix::unistd::setgroups(&gids) {
        Ok(()) => {}
        // A user namespace whose setgroups is denied keeps its groups.
        Err(nix::Error::EPERM) if gids.is_empty() => {}
        Err(e) => return Err(ctx("setgroups", errno(e))),
    }
    let gid = Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| ctx("setresgid", errno(e)))?;
    let uid = Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| ctx("setresuid", errno(e)))?;
    sys::prctl(libc::PR_SET_KEEPCAPS, 0, 0).map_err(|e| ctx("reset keep capabilities", e))?;
    sys::capset(effective, permitted, inheritable).map_err(|e| ctx("capset", e))?;
    for cap in 0..=sys::last_cap() {
        // As runc does, an ambient capability the inheritable set lacks is skipped, not fatal.
        if ambient & inheritable & permitted & (1u64 << cap) != 0 {
            sys::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong, cap as libc::c_ulong)
                .map_err(|e| ctx(format!("raise ambient capability {cap}"), e))?;
        }
    }
    if process.no_new_privileges().unwrap_or(false) {
        sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).map_err(|e| ctx("set no_new_privs", e))?;
    }
    let umask = user.umask().unwrap_or(0o022);
    nix::sys::stat::umask(Mode::from_bits_truncate(umask as libc::mode_t));
    Ok(())
}

pub(crate) fn chdir_cwd(process: &Process) -> io::Result<()> {
    let cwd = process.cwd();
    let cwd = if cwd.as_os_str().is_empty() { Path::new("/") } else { cwd.as_path() };
    nix::unistd::chdir(cwd).map_err(|e| ctx(format!("chdir {}", cwd.display()), errno(e)))
}

/// Replaces this process with the prepared program.
pub(crate) fn exec(p: Prepared) -> io::Result<Infallible> {
    sys::reset_signals();
    sys::cloexec_from(3);
    if let (Some(filter), false) = (&p.seccomp, p.seccomp_early) {
        filter.install().map_err(|e| ctx("install seccomp filter", e))?;
    }
    let e = nix::unistd::execve(&p.path, &p.args, &p.env).map_err(errno);
    match e {
        Ok(never) => match never {},
        Err(e) => Err(ctx(format!("exec {}", p.path.to_string_lossy()), e)),
    }
}

/// The child side of `exec`: already in the container's namespaces and cgroup.
pub(crate) fn exec_child(process: &Process, seccomp: Option<&LinuxSeccomp>, tty: bool) -> ! {
    let res = (|| -> io::Result<Infallible> {
        nix::unistd::setsid().map_err(|e| ctx("setsid", errno(e)))?;
        if tty {
            sys::set_controlling_tty(0).map_err(|e| ctx("set controlling terminal", e))?;
        }
        let prepared = prepare(process, seccomp)?;
        finalize(process, &prepared)?;
        sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0)
            .map_err(|e| ctx("set parent death signal", e))?;
        chdir_cwd(process)?;
        exec(prepared)
    })();
    let code = match res {
        Ok(never) => match never {},
        Err(e) => {
            let _ = writeln!(io::stderr(), "shoal exec: {e}");
            if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            }
        }
    };
    sys::exit_now(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(bin.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(bin.join("data"), "").unwrap();
        let path = format!("/nonexistent:{}", bin.display());
        assert_eq!(find_executable("tool", &path, Path::new("/")).unwrap(), bin.join("tool"));
        assert_eq!(find_executable("data", &path, Path::new("/")).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(find_executable("./tool", "", &bin).unwrap(), bin.join("./tool"));
    }
}
