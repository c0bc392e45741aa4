//! The per-container shim: the `shoal` binary re-executed. It creates the container, owns its
//! stdio (CRI logs), reaps it and records the exit status, outliving the daemon that started it.
//! It also hosts the short-lived helper that `exec` runs to enter a container.
//!
//! Single-threaded and without an async runtime, so that it stays small and may fork freely.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use crate::attach;
use crate::cgroups::{CgroupDriver, LinuxCgroups};
use crate::init::{self, InitConfig};
use crate::logs::{CriLog, Stream};
use crate::state::{self, ContainerFile, ExitFile, InitFile};
use crate::sys;

/// The fd on which the shim reports `ok PID` or `error MESSAGE` to the runtime.
pub(crate) const REPORT_FD: RawFd = 3;
/// The fd from which the exec helper reads its process spec (JSON, to end of file): args and
/// env stay off its argv, which any local user can read in /proc/PID/cmdline.
pub(crate) const SPEC_FD: RawFd = 3;

/// Entry point of the hidden `__shim` subcommand; `args` are the arguments after it:
/// `create STATE_DIR` or `exec STATE_DIR TTY(0|1)` (the process spec, JSON, on [`SPEC_FD`]).
/// Returns the exit code.
pub fn shim_main(args: Vec<String>) -> i32 {
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["create", dir] => create_main(Path::new(dir)),
        ["exec", dir, tty] => exec_main(Path::new(dir), *tty == "1"),
        _ => {
            let _ = writeln!(
                io::stderr(),
                "usage: __shim create STATE_DIR | __shim exec STATE_DIR 0|1 (process spec on fd 3)"
            );
            2
        }
    }
}

fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn ctx(what: impl std::fmt::Display, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

fn create_main(dir: &Path) -> i32 {
    // SAFETY: fd 3 is the report pipe the runtime installed before exec; nothing else owns it.
    let report = if nix::fcntl::fcntl(
        // SAFETY: borrowing fd 3 only to query its flags.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(REPORT_FD) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .is_ok()
    {
        // SAFETY: see above; ownership of fd 3 moves to this File.
        let f = unsafe { File::from_raw_fd(REPORT_FD) };
        set_cloexec(f.as_fd());
        Some(f)
    } else {
        None
    };
    // Detach from the caller: the intermediate process exits at once, the shim lives on under
    // init (or the nearest subreaper), in a session of its own.
    // SAFETY: the shim is single-threaded, so the child may use any function.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => sys::exit_now(0),
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(e) => {
            report_line(report, &format!("error fork shim: {e}"));
            return 1;
        }
    }
    let _ = nix::unistd::setsid();
    sys::ignore_signal(libc::SIGHUP);
    sys::ignore_signal(libc::SIGINT);
    sys::ignore_signal(libc::SIGPIPE);
    let _ = sys::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0);

    let container: ContainerFile = match state::read_json(&dir.join(state::CONTAINER_FILE)) {
        Ok(c) => c,
        Err(e) => {
            report_line(report, &format!("error {e}"));
            return 1;
        }
    };
    if !container.inherit_stdio {
        if let Ok(log) = OpenOptions::new().create(true).append(true).open(dir.join(state::SHIM_LOG)) {
            let _ = sys::dup_onto(log.as_raw_fd(), 2);
        }
    }
    let cgroups = LinuxCgroups::new();
    let mut sup = match create_container(dir, &container, &cgroups) {
        Ok(s) => s,
        Err(e) => {
            report_line(report, &format!("error {e}"));
            return 1;
        }
    };
    // Listening before the report: a client may attach as soon as create returns.
    let server = match sup.input.take().filter(|_| !container.inherit_stdio) {
        Some(input) => match attach::Server::bind(dir, input) {
            Ok(s) => Some(s),
            Err(e) => {
                let _ = writeln!(io::stderr(), "attach socket: {e}");
                None
            }
        },
        None => None,
    };
    report_line(report, &format!("ok {}", sup.pid));
    if !container.inherit_stdio {
        if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
            for fd in 0..2 {
                let _ = sys::dup_onto(null.as_raw_fd(), fd);
            }
        }
    }
    // Setup ran most of this binary once; from here the shim needs only its loop. Unmapping the
    // clean text and read-only data it touched keeps its resident size to what it uses.
    sys::drop_clean_file_pages();
    match supervise(dir, &container, &cgroups, sup, server.as_ref()) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(io::stderr(), "shim {}: {e}", container.id);
            1
        }
    }
}

fn report_line(report: Option<File>, line: &str) {
    if let Some(mut f) = report {
        let _ = f.write_all(format!("{}\n", line.replace('\n', " ")).as_bytes());
    }
}

struct Supervisor {
    pid: Pid,
    sigfd: SignalFd,
    streams: Vec<(OwnedFd, Stream)>,
    /// Where attached clients' input goes.
    input: Option<attach::Input>,
}

fn ns_flag(t: LinuxNamespaceType) -> Option<CloneFlags> {
    Some(match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        _ => return None,
    })
}

fn open_ro(path: &Path, flags: OFlag) -> io::Result<OwnedFd> {
    nix::fcntl::open(path, flags | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| ctx(format!("open {}", path.display()), errno(e)))
}

fn create_container(dir: &Path, c: &ContainerFile, cgroups: &dyn CgroupDriver) -> io::Result<Supervisor> {
    let spec = Spec::load(dir.join(state::SPEC_FILE)).map_err(|e| ctx("load spec", e))?;
    let process = spec.process().as_ref().ok_or_else(|| io::Error::other("the spec has no process"))?;
    let terminal = process.terminal().unwrap_or(false);
    let linux = spec.linux().as_ref();

    let mut created = CloneFlags::empty();
    let mut join = Vec::new();
    for ns in linux.and_then(|l| l.namespaces().as_deref()).unwrap_or(&[]) {
        let Some(flag) = ns_flag(ns.typ()) else { continue };
        match ns.path() {
            None => created |= flag,
            Some(p) if flag == CloneFlags::CLONE_NEWPID => {
                let fd = open_ro(p, OFlag::O_RDONLY)?;
                nix::sched::setns(&fd, flag)
                    .map_err(|e| ctx(format!("join pid namespace {}", p.display()), errno(e)))?;
            }
            Some(p) => join.push((flag, open_ro(p, OFlag::O_RDONLY)?)),
        }
    }

    // stdio: a terminal, the shim's own (for `shoal runtime run`), or pipes into the log.
    let mut streams = Vec::new();
    let mut keep: Vec<OwnedFd> = Vec::new();
    // With a terminal, the init opens it on the container's devpts once the rootfs is set up
    // and sends the master end back over `console`.
    let mut console = None;
    let mut stdin_w: Option<OwnedFd> = None;
    let stdio: [RawFd; 3] = if terminal {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| ctx("socketpair", e))?;
        console = Some((ours, OwnedFd::from(theirs)));
        [0, 1, 2]
    } else if c.inherit_stdio {
        [0, 1, 2]
    } else {
        // stdin: a pipe whose write end the attach server keeps, or /dev/null.
        let input = if c.open_stdin {
            let (in_r, in_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| ctx("pipe", errno(e)))?;
            stdin_w = Some(in_w);
            in_r
        } else {
            open_ro(Path::new("/dev/null"), OFlag::O_RDWR)?
        };
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| ctx("pipe", errno(e)))?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| ctx("pipe", errno(e)))?;
        let fds = [input.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
        streams.push((out_r, Stream::Stdout));
        streams.push((err_r, Stream::Stderr));
        keep.extend([input, out_w, err_w]);
        fds
    };

    let (go_r, go_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| ctx("pipe", errno(e)))?;
    let (status_r, status_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| ctx("pipe", errno(e)))?;
    let fifo = open_ro(&dir.join(state::FIFO_FILE), OFlag::O_PATH)?;

    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block().map_err(|e| ctx("block SIGCHLD", errno(e)))?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).map_err(|e| ctx("signalfd", errno(e)))?;

    let pid = sys::clone_process(created.bits()).map_err(|e| ctx("clone container process", e))?;
    if pid == 0 {
        drop(go_w);
        drop(status_r);
        drop(sigfd);
        for (fd, _) in streams {
            drop(fd);
        }
        init::container_init(InitConfig {
            spec: &spec,
            rootfs: &c.rootfs,
            go: go_r,
            status: status_w,
            fifo,
            stdio,
            console: console.take().map(|(_, theirs)| theirs),
            join,
            created,
        });
    }
    drop(go_r);
    drop(status_w);
    drop(keep);
    let console = console.map(|(ours, _)| ours);
    drop(fifo);
    let pid = Pid::from_raw(pid);
    let fail = |e: io::Error| -> io::Error {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        let _ = cgroups.destroy(&c.cgroup_path);
        e
    };

    let resources = linux.and_then(|l| l.resources().as_ref());
    if let Err(e) = cgroups.create(&c.cgroup_path, resources, pid.as_raw() as u32) {
        return Err(fail(ctx("set up cgroup", e)));
    }
    if created.contains(CloneFlags::CLONE_NEWUSER) {
        if let Err(e) = write_id_maps(pid, &spec) {
            return Err(fail(e));
        }
    }
    if let Err(e) = nix::unistd::write(&go_w, b"1") {
        return Err(fail(ctx("signal container init", errno(e))));
    }
    let mut msg = Vec::new();
    let mut file = File::from(status_r);
    let mut byte = [0u8; 1];
    loop {
        match file.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => msg.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail(ctx("read init status", e))),
        }
    }
    let msg = String::from_utf8_lossy(&msg).into_owned();
    if msg != "ready" {
        let reason = msg.strip_prefix("error ").unwrap_or(if msg.is_empty() { "container init died" } else { &msg });
        return Err(fail(io::Error::other(reason.to_string())));
    }
    let mut terminal_fd = None;
    if let Some(sock) = &console {
        match sys::receive_fd(sock, Duration::from_secs(10), "the container init") {
            Ok(master) => {
                terminal_fd = master.try_clone().ok();
                if c.open_stdin {
                    stdin_w = master.try_clone().ok();
                }
                streams.push((master, Stream::Stdout));
            }
            Err(e) => return Err(fail(ctx("terminal", e))),
        }
    }
    let input = attach::Input { stdin: stdin_w, terminal: terminal_fd, stdin_once: c.stdin_once };
    let proc_root = Path::new("/proc");
    let init = InitFile {
        pid: pid.as_raw() as u32,
        start_time: state::process_start_time(proc_root, pid.as_raw() as u32).unwrap_or(0),
        shim_pid: std::process::id(),
        shim_start_time: state::process_start_time(proc_root, std::process::id()).unwrap_or(0),
    };
    if let Err(e) = state::write_json(&dir.join(state::INIT_FILE), &init) {
        return Err(fail(ctx("record init", e)));
    }
    Ok(Supervisor { pid, sigfd, streams, input: Some(input) })
}

fn set_cloexec(fd: impl AsFd) {
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
}

fn write_id_maps(pid: Pid, spec: &Spec) -> io::Result<()> {
    let linux = spec.linux().as_ref();
    let fmt = |maps: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| -> String {
        maps.map(|m| m.iter().map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size())).collect())
            .unwrap_or_default()
    };
    let base = PathBuf::from(format!("/proc/{}", pid.as_raw()));
    let uid = fmt(linux.and_then(|l| l.uid_mappings().as_ref()));
    let gid = fmt(linux.and_then(|l| l.gid_mappings().as_ref()));
    if !uid.is_empty() {
        std::fs::write(base.join("uid_map"), uid).map_err(|e| ctx("write uid_map", e))?;
    }
    if !gid.is_empty() {
        std::fs::write(base.join("gid_map"), gid).map_err(|e| ctx("write gid_map", e))?;
    }
    Ok(())
}

fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

fn supervise(
    dir: &Path,
    c: &ContainerFile,
    cgroups: &dyn CgroupDriver,
    sup: Supervisor,
    server: Option<&attach::Server>,
) -> io::Result<()> {
    let mut log = match (&c.log_path, c.inherit_stdio) {
        (Some(p), false) => match CriLog::open(p, c.log_max_size, c.log_max_files) {
            Ok(l) => Some(l),
            Err(e) => {
                let _ = writeln!(io::stderr(), "open log {}: {e}", p.display());
                None
            }
        },
        _ => None,
    };
    let mut streams: Vec<Option<(OwnedFd, Stream)>> = sup.streams.into_iter().map(Some).collect();
    let mut code: Option<i32> = None;
    let mut deadline: Option<Instant> = None;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        if code.is_some() && (streams.iter().all(Option::is_none) || deadline.is_some_and(|d| Instant::now() >= d)) {
            break;
        }
        let timeout = match deadline {
            Some(d) => PollTimeout::try_from(d.saturating_duration_since(Instant::now())).unwrap_or(PollTimeout::ZERO),
            None => PollTimeout::NONE,
        };
        let (readable, sig_ready, attach_ready) = {
            let mut fds = vec![PollFd::new(sup.sigfd.as_fd(), PollFlags::POLLIN)];
            if let Some(s) = server {
                fds.push(PollFd::new(s.fd(), PollFlags::POLLIN));
            }
            let first_stream = fds.len();
            let mut idx = Vec::new();
            for (i, s) in streams.iter().enumerate() {
                if let Some((fd, _)) = s {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    idx.push(i);
                }
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(ctx("poll", errno(e))),
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            let sig_ready = ready(&fds[0]);
            let attach_ready = server.is_some() && ready(&fds[1]);
            let readable: Vec<usize> =
                fds[first_stream..].iter().zip(idx).filter(|(f, _)| ready(f)).map(|(_, i)| i).collect();
            (readable, sig_ready, attach_ready)
        };
        if let (true, Some(s)) = (attach_ready, server) {
            s.accept();
        }
        for i in readable {
            let Some((fd, stream)) = streams[i].as_ref() else { continue };
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) | Err(nix::Error::EIO) => streams[i] = None,
                Ok(n) => {
                    if let Some(s) = server {
                        s.clients.send(*stream, &buf[..n]);
                    }
                    if let Some(l) = log.as_mut() {
                        if let Err(e) = l.write(*stream, &buf[..n]) {
                            let _ = writeln!(io::stderr(), "write log: {e}");
                        }
                    }
                }
                Err(nix::Error::EINTR) | Err(nix::Error::EAGAIN) => {}
                Err(_) => streams[i] = None,
            }
        }
        if sig_ready {
            let _ = sup.sigfd.read_signal();
            loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(status) => {
                        if status.pid() == Some(sup.pid) {
                            code = exit_code(status).or(code);
                            if code.is_some() && deadline.is_none() {
                                // Processes outside a pid namespace of their own may keep the
                                // pipes open: drain for a moment, then stop.
                                deadline = Some(Instant::now() + Duration::from_secs(1));
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(l) = log.as_mut() {
        let _ = l.flush();
    }
    let oom_killed = cgroups.oom_kills(&c.cgroup_path).unwrap_or(0) > 0;
    let exit = ExitFile { exit_code: code.unwrap_or(255), oom_killed, finished_at: SystemTime::now() };
    state::write_json(&dir.join(state::EXIT_FILE), &exit).map_err(|e| ctx("record exit", e))?;
    Ok(())
}

const EXEC_NAMESPACES: &[(&str, CloneFlags)] = &[
    ("user", CloneFlags::CLONE_NEWUSER),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

fn exec_main(dir: &Path, tty: bool) -> i32 {
    let process_json = match sys::read_inherited_fd(SPEC_FD) {
        Ok(json) => json,
        Err(e) => {
            let _ = writeln!(io::stderr(), "shoal exec: reading the process spec on fd {SPEC_FD}: {e}");
            return 126;
        }
    };
    match exec_enter(dir, &process_json, tty) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(io::stderr(), "shoal exec: {e}");
            126
        }
    }
}

fn exec_enter(dir: &Path, process_json: &str, tty: bool) -> io::Result<i32> {
    let c: ContainerFile = state::read_json(&dir.join(state::CONTAINER_FILE)).map_err(|e| ctx("read container", e))?;
    let init: InitFile = state::read_json(&dir.join(state::INIT_FILE)).map_err(|e| ctx("read init", e))?;
    if state::process_start_time(Path::new("/proc"), init.pid) != Some(init.start_time) {
        return Err(io::Error::other(format!("container {} is not running", c.id)));
    }
    let process: Process = serde_json::from_str(process_json).map_err(|e| ctx("decode process", e))?;
    // The container's seccomp profile binds every process that enters it.
    let spec = Spec::load(dir.join(state::SPEC_FILE)).map_err(|e| ctx("load spec", e))?;
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    LinuxCgroups::new().add_process(&c.cgroup_path, std::process::id()).map_err(|e| ctx("join cgroup", e))?;
    let mut fds = Vec::new();
    for (name, flag) in EXEC_NAMESPACES {
        let theirs = PathBuf::from(format!("/proc/{}/ns/{name}", init.pid));
        let ours = PathBuf::from(format!("/proc/self/ns/{name}"));
        let (Ok(a), Ok(b)) = (std::fs::metadata(&theirs), std::fs::metadata(&ours)) else { continue };
        if a.ino() == b.ino() && a.dev() == b.dev() {
            continue;
        }
        fds.push((open_ro(&theirs, OFlag::O_RDONLY)?, *flag, *name));
    }
    for (fd, flag, name) in &fds {
        nix::sched::setns(fd, *flag).map_err(|e| ctx(format!("join {name} namespace"), errno(e)))?;
    }
    drop(fds);
    if tty {
        // In the container's mount namespace: the terminal is on its devpts; the runtime
        // waits for the master end on fd 0.
        sys::hand_over_terminal(0).map_err(|e| ctx("terminal", e))?;
    }
    let pid = sys::clone_process(0).map_err(|e| ctx("fork", e))?;
    if pid == 0 {
        init::exec_child(&process, seccomp.as_ref(), tty);
    }
    let pid = Pid::from_raw(pid);
    // Killing this helper kills the process too (its parent-death signal).
    loop {
        match waitpid(pid, None) {
            Ok(status) => {
                if let Some(code) = exit_code(status) {
                    return Ok(code);
                }
            }
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(ctx("wait", errno(e))),
        }
    }
}
