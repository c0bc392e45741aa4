//! The runtime API the node agent and `shoal runtime` call: create, start, state, kill, stop,
//! wait, delete, exec, list, stats. Blocking calls: from async code use `spawn_blocking`.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use oci_spec::runtime::{Process, Spec};
use tracing::{debug, warn};

use crate::cgroups::{CgroupDriver, LinuxCgroups, Stats};
use crate::error::{Error, Result};
use crate::shim::REPORT_FD;
use crate::state::{self, ContainerFile, InitFile, State, Status};
use crate::sys;

/// How the runtime starts a shim: `PROGRAM ARGS... create STATE_DIR`.
#[derive(Clone, Debug)]
pub struct ShimCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl Default for ShimCommand {
    /// The running executable with the hidden `__shim` subcommand.
    fn default() -> Self {
        ShimCommand { program: PathBuf::from("/proc/self/exe"), args: vec![OsString::from("__shim")] }
    }
}

/// Where the runtime keeps state and puts cgroups.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// One directory per container below it.
    pub root: PathBuf,
    /// Cgroup of all containers (below each hierarchy's root) when a spec names none.
    pub cgroup_parent: String,
    pub shim: ShimCommand,
    /// How long `start` waits for a created container to take the start signal.
    pub start_timeout: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            root: PathBuf::from("/run/shoal/runtime"),
            cgroup_parent: "shoal".to_string(),
            shim: ShimCommand::default(),
            start_timeout: Duration::from_secs(10),
        }
    }
}

/// Options of one `create`.
#[derive(Clone, Debug)]
pub struct CreateOpts {
    /// CRI log file; without one the output is discarded.
    pub log_path: Option<PathBuf>,
    /// Rotate the log past this size (bytes).
    pub log_max_size: u64,
    /// Log files kept, the live one included.
    pub log_max_files: u32,
    /// Give the container the caller's stdin/stdout/stderr instead of logging (for
    /// `shoal runtime run`).
    pub inherit_stdio: bool,
    /// Give the container a stdin that attached clients write to (a Pod container's
    /// `stdin: true`); without it, stdin is /dev/null.
    pub open_stdin: bool,
    /// Close that stdin once the first attached client's input ends (`stdinOnce`).
    pub stdin_once: bool,
}

impl Default for CreateOpts {
    fn default() -> Self {
        CreateOpts {
            log_path: None,
            log_max_size: 10 << 20,
            log_max_files: 5,
            inherit_stdio: false,
            open_stdin: false,
            stdin_once: false,
        }
    }
}

/// The OCI runtime: containers as directories of state, each run by its own shim.
pub struct Runtime {
    config: RuntimeConfig,
    cgroups: Arc<dyn CgroupDriver>,
    proc_root: PathBuf,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Runtime {
    /// A runtime on the real kernel.
    pub fn new(config: RuntimeConfig) -> Runtime {
        Runtime::with_cgroups(config, Arc::new(LinuxCgroups::new()))
    }

    /// A runtime with another cgroup implementation (usage, cleanup); the shim always uses the
    /// kernel's.
    pub fn with_cgroups(config: RuntimeConfig, cgroups: Arc<dyn CgroupDriver>) -> Runtime {
        Runtime { config, cgroups, proc_root: PathBuf::from("/proc") }
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    fn dir(&self, id: &str) -> Result<PathBuf> {
        if !valid_id(id) {
            return Err(Error::InvalidId(id.to_string()));
        }
        Ok(self.config.root.join(id))
    }

    fn existing_dir(&self, id: &str) -> Result<PathBuf> {
        let dir = self.dir(id)?;
        if !dir.join(state::CONTAINER_FILE).exists() {
            return Err(Error::NotFound(id.to_string()));
        }
        Ok(dir)
    }

    /// Sets a container up from `BUNDLE/config.json` and leaves it waiting for `start`.
    pub fn create(&self, id: &str, bundle: &Path, opts: &CreateOpts) -> Result<State> {
        let dir = self.dir(id)?;
        std::fs::create_dir_all(&self.config.root)
            .map_err(|source| Error::WriteState { path: self.config.root.clone(), source })?;
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(Error::AlreadyExists(id.to_string())),
            Err(source) => return Err(Error::WriteState { path: dir, source }),
        }
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711));
        match self.create_in(id, &dir, bundle, opts) {
            Ok(st) => Ok(st),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    fn create_in(&self, id: &str, dir: &Path, bundle: &Path, opts: &CreateOpts) -> Result<State> {
        let bundle = std::path::absolute(bundle).map_err(|e| Error::InvalidSpec(format!("bundle path: {e}")))?;
        let spec_path = bundle.join("config.json");
        let mut spec = Spec::load(&spec_path).map_err(|source| Error::ReadSpec { path: spec_path.clone(), source })?;
        let root = spec.root().as_ref().ok_or_else(|| Error::InvalidSpec("no root".into()))?;
        let rootfs = if root.path().is_absolute() { root.path().clone() } else { bundle.join(root.path()) };
        let rootfs =
            rootfs.canonicalize().map_err(|e| Error::InvalidSpec(format!("rootfs {}: {e}", rootfs.display())))?;
        if spec.process().is_none() {
            return Err(Error::InvalidSpec("no process".into()));
        }
        if let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
            crate::seccomp::compile(profile).map_err(|e| Error::InvalidSpec(format!("seccomp: {e}")))?;
        }
        let mut root = root.clone();
        root.set_path(rootfs.clone());
        spec.set_root(Some(root));
        let cgroup_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.to_string_lossy().trim_start_matches('/').to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| format!("{}/{}", self.config.cgroup_parent.trim_matches('/'), id));
        let spec_out = dir.join(state::SPEC_FILE);
        spec.save(&spec_out)
            .map_err(|e| Error::WriteState { path: spec_out.clone(), source: io::Error::other(e.to_string()) })?;
        let container = ContainerFile {
            id: id.to_string(),
            bundle: bundle.clone(),
            rootfs,
            cgroup_path,
            log_path: opts.log_path.clone(),
            log_max_size: opts.log_max_size,
            log_max_files: opts.log_max_files,
            inherit_stdio: opts.inherit_stdio,
            open_stdin: opts.open_stdin,
            stdin_once: opts.stdin_once,
            created_at: SystemTime::now(),
        };
        state::write_json(&dir.join(state::CONTAINER_FILE), &container)?;
        let fifo = dir.join(state::FIFO_FILE);
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o622))
            .map_err(|e| Error::WriteState { path: fifo.clone(), source: io::Error::from_raw_os_error(e as i32) })?;
        let _ = std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o622));

        let report = self.spawn_shim(dir, opts.inherit_stdio)?;
        match report.strip_prefix("ok ") {
            Some(_) => {
                debug!(container = id, "created");
                self.state(id)
            }
            None => {
                let message = match report.strip_prefix("error ") {
                    Some(m) => m.to_string(),
                    None => {
                        let log = std::fs::read_to_string(dir.join(state::SHIM_LOG)).unwrap_or_default();
                        format!("shim exited without a report: {}", log.trim())
                    }
                };
                Err(Error::CreateContainer { id: id.to_string(), message })
            }
        }
    }

    fn spawn_shim(&self, dir: &Path, inherit_stdio: bool) -> Result<String> {
        let spawn_err = |source| Error::SpawnShim { program: self.config.shim.program.clone(), source };
        let (report_r, report_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| spawn_err(io::Error::from(e)))?;
        let mut cmd = Command::new(&self.config.shim.program);
        cmd.args(&self.config.shim.args).arg("create").arg(dir);
        if !inherit_stdio {
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        }
        let raw = report_w.as_raw_fd();
        // SAFETY: the closure only calls dup2/fcntl (async-signal-safe) in the forked child.
        unsafe {
            cmd.pre_exec(move || sys::dup_onto(raw, REPORT_FD));
        }
        let mut child = cmd.spawn().map_err(spawn_err)?;
        drop(report_w);
        // One line: the container's init keeps a copy of the pipe until it execs.
        let mut report = Vec::new();
        let mut f = File::from(report_r);
        let mut b = [0u8; 1];
        let read = loop {
            match f.read(&mut b) {
                Ok(0) => break Ok(()),
                Ok(_) if b[0] == b'\n' => break Ok(()),
                Ok(_) => report.push(b[0]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e),
            }
        };
        let _ = child.wait();
        read.map_err(spawn_err)?;
        Ok(String::from_utf8_lossy(&report).into_owned())
    }

    /// Attaches to a running container's main process: its live output, and its stdin when it
    /// was created with `open_stdin` (see [`crate::attach`]).
    pub fn attach(&self, id: &str) -> Result<crate::attach::Attach> {
        let dir = self.existing_dir(id)?;
        crate::attach::Attach::connect(&dir).map_err(|source| Error::Exec { id: id.to_string(), source })
    }

    /// Lets a created container run its process.
    pub fn start(&self, id: &str) -> Result<()> {
        let dir = self.existing_dir(id)?;
        let st = self.state(id)?;
        if st.status != Status::Created || st.pid == 0 {
            return Err(Error::WrongStatus { id: id.into(), status: st.status.to_string(), needed: "created" });
        }
        let start_err = |source| Error::StartContainer { id: id.to_string(), source };
        let fifo_path = dir.join(state::FIFO_FILE);
        let fifo = nix::fcntl::open(&fifo_path, OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| start_err(io::Error::from(e)))?;
        let deadline = Instant::now() + self.config.start_timeout;
        // Opening the fifo lets the init's open for writing go on; it then writes one byte and
        // execs. Sleep in poll on the fifo and on the init's pidfd (so a dying init wakes us too),
        // not in a timer loop.
        let init_fd = sys::pidfd_open(st.pid).ok();
        let mut b = [0u8; 1];
        loop {
            let hung_up = match nix::unistd::read(&fifo, &mut b) {
                Ok(1) => break,
                Ok(_) => true,
                Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => false,
                Err(e) => return Err(start_err(io::Error::from(e))),
            };
            let now = Instant::now();
            if now >= deadline || state::process_start_time(&self.proc_root, st.pid).is_none() {
                return Err(start_err(io::Error::other("the container init did not take the start signal")));
            }
            if hung_up || init_fd.is_none() {
                // A writer came and went without a byte, or no pidfd to watch the init with: the
                // fifo alone could wake us at once or never, so check again soon.
                std::thread::sleep(Duration::from_millis(1));
            } else {
                wait_readable(fifo.as_fd(), init_fd.as_ref().map(|f| f.as_fd()), (deadline - now).min(MAX_POLL));
            }
        }
        drop(fifo);
        state::write_json(&dir.join(state::STARTED_FILE), &state::StartedFile { started_at: SystemTime::now() })?;
        let _ = std::fs::remove_file(&fifo_path);
        debug!(container = id, "started");
        Ok(())
    }

    /// The container's state as the state directory and the kernel tell it.
    pub fn state(&self, id: &str) -> Result<State> {
        let dir = self.existing_dir(id)?;
        state::load(&dir, &self.proc_root)
    }

    /// The spec a container was created from (its root path made absolute).
    pub fn spec(&self, id: &str) -> Result<Spec> {
        let path = self.existing_dir(id)?.join(state::SPEC_FILE);
        Spec::load(&path).map_err(|source| Error::ReadSpec { path, source })
    }

    /// Every container under the state root (a restarted daemon re-adopts them from this).
    pub fn list(&self) -> Result<Vec<State>> {
        let entries = match std::fs::read_dir(&self.config.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(Error::ReadState { path: self.config.root.clone(), source }),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_string) else { continue };
            if !entry.path().join(state::CONTAINER_FILE).exists() {
                continue;
            }
            match self.state(&id) {
                Ok(st) => out.push(st),
                Err(e) => warn!(container = %id, error = %e, "unreadable container state"),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Sends a signal to the container's init process.
    pub fn kill(&self, id: &str, signal: Signal) -> Result<()> {
        let st = self.state(id)?;
        if st.pid == 0 {
            return Err(Error::WrongStatus {
                id: id.into(),
                status: st.status.to_string(),
                needed: "created or running",
            });
        }
        nix::sys::signal::kill(Pid::from_raw(st.pid as i32), signal)
            .map_err(|source| Error::Signal { id: id.into(), source })
    }

    /// Sends a signal to every process of the container (its cgroup).
    pub fn kill_all(&self, id: &str, signal: Signal) -> Result<()> {
        let st = self.state(id)?;
        if st.pid != 0 {
            let _ = nix::sys::signal::kill(Pid::from_raw(st.pid as i32), signal);
        }
        for pid in self.cgroups.processes(&st.cgroup_path).unwrap_or_default() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), signal);
        }
        Ok(())
    }

    /// Asks the container to stop with `signal`-less SIGTERM, waits up to `grace`, then SIGKILLs
    /// every process of it; returns the final state.
    pub fn stop(&self, id: &str, grace: Duration) -> Result<State> {
        let st = self.state(id)?;
        if st.status == Status::Stopped {
            return self.wait(id);
        }
        if st.status == Status::Running {
            let _ = self.kill(id, Signal::SIGTERM);
            if let Some(st) = self.wait_timeout(id, grace)? {
                return Ok(st);
            }
        }
        self.kill_all(id, Signal::SIGKILL)?;
        self.wait_timeout(id, Duration::from_secs(30))?.ok_or_else(|| Error::Timeout(id.to_string()))
    }

    /// Blocks until the container has stopped and its exit is recorded.
    pub fn wait(&self, id: &str) -> Result<State> {
        loop {
            if let Some(st) = self.wait_timeout(id, Duration::from_secs(3600))? {
                return Ok(st);
            }
        }
    }

    /// Like `wait`, giving up after `timeout` with `None`.
    pub fn wait_timeout(&self, id: &str, timeout: Duration) -> Result<Option<State>> {
        let dir = self.existing_dir(id)?;
        let begin = Instant::now();
        let deadline = begin + timeout;
        let mut pause = Duration::from_micros(100);
        // The shim records the exit and then ends: its pidfd wakes us then, without polling the
        // state files. None once it fired (the shim is gone) or when pidfds are unavailable.
        let mut shim_fd = self.shim_pidfd(&dir);
        loop {
            let st = state::load(&dir, &self.proc_root)?;
            if st.status == Status::Stopped {
                if st.exit_code.is_some() {
                    return Ok(Some(st));
                }
                if !self.shim_alive(&dir)? {
                    // The shim may have written the exit file and ended since `st` was read:
                    // read again now that nothing can change any more.
                    return Ok(Some(state::load(&dir, &self.proc_root)?));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            if let Some(fd) = &shim_fd {
                if wait_readable(fd.as_fd(), None, (deadline - now).min(MAX_POLL)) {
                    shim_fd = None;
                }
                continue;
            }
            std::thread::sleep(pause.min(deadline - now));
            // Short polls first: most waits end within a few milliseconds.
            let cap = if now.duration_since(begin) < Duration::from_millis(200) { 1 } else { 20 };
            pause = (pause * 2).min(Duration::from_millis(cap));
        }
    }

    /// A pidfd of the container's shim, if it still runs (checked after opening, so a reused
    /// pid is not mistaken for it).
    fn shim_pidfd(&self, dir: &Path) -> Option<OwnedFd> {
        let init: InitFile = state::read_json_opt(&dir.join(state::INIT_FILE)).ok()??;
        let fd = sys::pidfd_open(init.shim_pid).ok()?;
        (state::process_start_time(&self.proc_root, init.shim_pid) == Some(init.shim_start_time)).then_some(fd)
    }

    fn shim_alive(&self, dir: &Path) -> Result<bool> {
        let init: Option<InitFile> = state::read_json_opt(&dir.join(state::INIT_FILE))?;
        Ok(init.is_some_and(|i| state::process_start_time(&self.proc_root, i.shim_pid) == Some(i.shim_start_time)))
    }

    /// Removes a stopped container: its cgroup and state. With `force`, kills it first.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let dir = self.existing_dir(id)?;
        let st = self.state(id)?;
        if st.status != Status::Stopped {
            if !force && st.status == Status::Running {
                return Err(Error::WrongStatus { id: id.into(), status: st.status.to_string(), needed: "stopped" });
            }
            self.kill_all(id, Signal::SIGKILL)?;
            self.wait_timeout(id, Duration::from_secs(30))?.ok_or_else(|| Error::Timeout(id.to_string()))?;
        } else if st.exit_code.is_none() {
            // The shim may still be recording the exit.
            let _ = self.wait_timeout(id, Duration::from_secs(5))?;
        }
        // Processes that outlived the init (no pid namespace) go too.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let procs = self.cgroups.processes(&st.cgroup_path).unwrap_or_default();
            if procs.is_empty() {
                break;
            }
            for pid in procs {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Err(e) = self.cgroups.destroy(&st.cgroup_path) {
            warn!(container = id, error = %e, "cgroup not removed");
        }
        std::fs::remove_dir_all(&dir).map_err(|source| Error::RemoveState { path: dir, source })?;
        debug!(container = id, "deleted");
        Ok(())
    }

    /// CPU and memory usage of the container.
    pub fn stats(&self, id: &str) -> Result<Stats> {
        let st = self.state(id)?;
        self.cgroups.stats(&st.cgroup_path)
    }

    /// Runs another process in a running container (its namespaces, cgroup, and the user,
    /// capabilities and environment `process` gives). With `tty`, the process gets a terminal
    /// whose master end the handle holds.
    pub fn exec(&self, id: &str, process: &Process, tty: bool) -> Result<ExecProcess> {
        let dir = self.existing_dir(id)?;
        let st = self.state(id)?;
        if st.status != Status::Running {
            return Err(Error::WrongStatus { id: id.into(), status: st.status.to_string(), needed: "running" });
        }
        let exec_err = |source| Error::Exec { id: id.to_string(), source };
        let json = serde_json::to_vec(process).map_err(|e| exec_err(io::Error::other(e)))?;
        // The process spec (its args and env may hold secrets) goes over a pipe on the helper's
        // SPEC_FD, never on its argv, which every local user can read in /proc.
        let (spec_r, spec_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| exec_err(io::Error::from(e)))?;
        let mut cmd = Command::new(&self.config.shim.program);
        cmd.args(&self.config.shim.args).arg("exec").arg(&dir).arg(if tty { "1" } else { "0" });
        let raw = spec_r.as_raw_fd();
        // SAFETY: the closure only calls dup2/fcntl (async-signal-safe) in the forked child.
        unsafe {
            cmd.pre_exec(move || sys::dup_onto(raw, crate::shim::SPEC_FD));
        }
        let send_spec = |child: &mut Child| -> Result<()> {
            drop(spec_r);
            let sent = File::from(spec_w).write_all(&json);
            if let Err(e) = sent {
                let _ = child.kill();
                let _ = child.wait();
                return Err(exec_err(io::Error::new(e.kind(), format!("sending the process spec: {e}"))));
            }
            Ok(())
        };
        if !tty {
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = cmd.spawn().map_err(exec_err)?;
            drop(cmd);
            send_spec(&mut child)?;
            return Ok(ExecProcess {
                stdin: child.stdin.take(),
                stdout: child.stdout.take(),
                stderr: child.stderr.take(),
                pty: None,
                child,
            });
        }
        // The terminal is opened by the shim inside the container (its devpts), which sends the
        // master end back over this socket.
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(exec_err)?;
        cmd.stdin(Stdio::from(OwnedFd::from(theirs))).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(exec_err)?;
        drop(cmd);
        send_spec(&mut child)?;
        let master = match crate::sys::receive_fd(&ours, Duration::from_secs(10), "the exec helper") {
            Ok(fd) => fd,
            Err(e) => {
                let _ = child.kill();
                let mut why = String::new();
                if let Some(mut err) = child.stderr.take() {
                    let _ = err.read_to_string(&mut why);
                }
                let _ = child.wait();
                let why = if why.trim().is_empty() { e.to_string() } else { why.trim().to_string() };
                return Err(exec_err(io::Error::other(why)));
            }
        };
        // From here the helper's messages go to the terminal.
        drop(child.stderr.take());
        Ok(ExecProcess { stdin: None, stdout: None, stderr: None, pty: Some(File::from(master)), child })
    }
}

/// A process started by `exec`. Without a tty its stdio are pipes; with one, `pty` is the
/// terminal's master end (read output from it, write input to it).
pub struct ExecProcess {
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
    pub pty: Option<File>,
    child: Child,
}

impl ExecProcess {
    /// Host pid of the helper that holds the process (killing it kills the process).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process; returns its exit code (128 + N when killed by signal N; 126 or 127
    /// when it could not be started).
    pub fn wait(&mut self) -> io::Result<i32> {
        self.stdin = None;
        let status = self.child.wait()?;
        Ok(status_code(status))
    }

    /// Returns the exit code if the process has ended.
    pub fn try_wait(&mut self) -> io::Result<Option<i32>> {
        Ok(self.child.try_wait()?.map(status_code))
    }

    /// Sends a signal to the helper (SIGKILL there kills the process too).
    pub fn kill(&mut self, signal: Signal) -> io::Result<()> {
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), signal).map_err(io::Error::from)
    }

    /// Resizes the terminal (tty mode only).
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        match &self.pty {
            Some(p) => sys::set_winsize(p.as_fd(), rows, cols),
            None => Err(io::Error::other("the process has no terminal")),
        }
    }
}

/// The longest single sleep in poll: state is re-read at least this often.
const MAX_POLL: Duration = Duration::from_secs(1);

/// Waits until `fd` (or `also`) is readable or hung up, at most `timeout`; whether one was.
fn wait_readable(
    fd: std::os::fd::BorrowedFd<'_>,
    also: Option<std::os::fd::BorrowedFd<'_>>,
    timeout: Duration,
) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = vec![PollFd::new(fd, PollFlags::POLLIN)];
    if let Some(a) = also {
        fds.push(PollFd::new(a, PollFlags::POLLIN));
    }
    let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    matches!(poll(&mut fds, timeout), Ok(n) if n > 0)
}

fn status_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(valid_id("web-1_a.b"));
        assert!(!valid_id(""));
        assert!(!valid_id(".."));
        assert!(!valid_id("a/b"));
        let rt = Runtime::with_cgroups(
            RuntimeConfig { root: PathBuf::from("/nonexistent"), ..Default::default() },
            Arc::new(crate::cgroups::FakeCgroups::new()),
        );
        assert!(matches!(rt.state("../x"), Err(Error::InvalidId(_))));
        assert!(matches!(rt.state("x"), Err(Error::NotFound(_))));
        assert!(rt.list().unwrap().is_empty());
    }

    #[test]
    fn state_and_stats_come_from_the_state_dir_and_cgroups() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(crate::cgroups::FakeCgroups::new());
        fake.set_stats(Stats { cpu_usage_ns: 5, memory_usage_bytes: 6, pids: 1 });
        let rt = Runtime::with_cgroups(RuntimeConfig { root: dir.path().into(), ..Default::default() }, fake.clone());
        let cdir = dir.path().join("c1");
        std::fs::create_dir(&cdir).unwrap();
        let c = ContainerFile {
            id: "c1".into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            cgroup_path: "shoal/c1".into(),
            log_path: None,
            log_max_size: 1,
            log_max_files: 1,
            inherit_stdio: false,
            open_stdin: false,
            stdin_once: false,
            created_at: SystemTime::now(),
        };
        state::write_json(&cdir.join(state::CONTAINER_FILE), &c).unwrap();
        state::write_json(
            &cdir.join(state::INIT_FILE),
            &InitFile { pid: 999_999_999, start_time: 1, shim_pid: 999_999_999, shim_start_time: 1 },
        )
        .unwrap();
        state::write_json(
            &cdir.join(state::EXIT_FILE),
            &state::ExitFile { exit_code: 137, oom_killed: true, finished_at: SystemTime::now() },
        )
        .unwrap();
        let st = rt.state("c1").unwrap();
        assert_eq!(st.status, Status::Stopped);
        assert_eq!(st.exit_code, Some(137));
        assert!(st.oom_killed);
        assert_eq!(rt.list().unwrap().len(), 1);
        assert_eq!(rt.stats("c1").unwrap().memory_usage_bytes, 6);
        rt.delete("c1", false).unwrap();
        assert!(!cdir.exists());
        assert_eq!(fake.calls(), vec![crate::cgroups::CgroupCall::Destroy { path: "shoal/c1".into() }]);
    }
}
