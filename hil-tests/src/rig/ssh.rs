//! A rig of real boards reached over ssh, described by a TOML file (see docs/hil.md).
//!
//! Every action is a short POSIX `sh` script run on the board with `ssh HOST -- sh -c SCRIPT`; the
//! binary is uploaded through the same channel (`cat > FILE`), so a board needs only an ssh server,
//! a POSIX shell and coreutils (busybox is enough). Connections are multiplexed (`ControlMaster`)
//! so the many short commands of a scenario do not each pay for a key exchange.
//!
//! shoal runs either as a transient systemd unit (`systemd-run --unit shoal-hil`) or, on boards
//! without systemd, as a plain process in its own session whose pid is kept in a pid file. Next to
//! the data dir `D`, `D.hil/` holds the pid file, shoal's log (process launcher) and the config
//! file of the launch.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::netns::{partition_script, PARTITION_TABLE};
use super::{ExecOutput, HostInfo, Launch, Netem, Rig, RigInfo};
use crate::error::{Error, Result};
use crate::proc;

/// The systemd unit shoal runs in on a board (systemd launcher).
pub const UNIT: &str = "shoal-hil";

/// How long one ssh call for rig bookkeeping may take.
const SSH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an upload may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// CPU architecture of a board.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The architecture of the machine running the suite, if it is one shoal is built for.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    /// `x86_64` or `aarch64`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
}

/// How shoal is kept running on the boards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Launcher {
    /// systemd when the board runs it (`/run/systemd/system` exists), else a plain process.
    #[default]
    Auto,
    /// A transient unit `shoal-hil` (`systemd-run`); journal for logs.
    Systemd,
    /// A process in its own session, its pid in `DATA_DIR.hil/shoal.pid`, its output in
    /// `DATA_DIR.hil/shoal.log`.
    Process,
}

/// The rig file.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SshRigFile {
    /// Name of the bench, for reports.
    pub name: String,
    /// Extra options for every ssh call (they win over the suite's own defaults).
    #[serde(default)]
    pub ssh_options: Vec<String>,
    /// Local shoal binary for x86_64 boards (relative paths: to the rig file's dir).
    pub binary_x86_64: Option<PathBuf>,
    /// Local shoal binary for aarch64 boards (relative paths: to the rig file's dir).
    pub binary_aarch64: Option<PathBuf>,
    /// Where the binary goes on each board.
    #[serde(default = "default_remote_binary")]
    pub remote_binary: PathBuf,
    /// How shoal is kept running on the boards.
    #[serde(default)]
    pub launcher: Launcher,
    /// How long a board may take to answer ssh again after `power_on_command`, in seconds.
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout_s: u64,
    /// Share one ssh connection per board between commands (`ControlMaster`).
    #[serde(default = "default_true")]
    pub multiplex: bool,
    #[serde(rename = "host")]
    pub hosts: Vec<SshHost>,
}

/// One board.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SshHost {
    pub name: String,
    /// Address ssh reaches and peers use.
    pub address: IpAddr,
    #[serde(default = "default_user")]
    pub user: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub arch: Arch,
    /// The interface that carries cluster traffic (netem goes there).
    #[serde(default = "default_interface")]
    pub interface: String,
    /// shoal's data dir on the board; wiped by `rig down`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// A client board that never runs shoal.
    #[serde(default)]
    pub client: bool,
    /// Cuts the board's power, run on the machine running the suite (a smart plug, a PDU, a
    /// relay). Without it a power cut is a kill -9 of shoal, its shims and its containers.
    pub power_off_command: Option<String>,
    /// Powers the board back on, run on the machine running the suite; the suite then waits until
    /// ssh answers again.
    pub power_on_command: Option<String>,
}

fn default_remote_binary() -> PathBuf {
    PathBuf::from("/usr/local/bin/shoal")
}
fn default_user() -> String {
    "root".to_string()
}
fn default_port() -> u16 {
    22
}
fn default_interface() -> String {
    "eth0".to_string()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/shoal")
}
fn default_boot_timeout() -> u64 {
    180
}
fn default_true() -> bool {
    true
}

impl SshRigFile {
    /// Parses and checks a rig file's text.
    pub fn parse(path: &Path, text: &str) -> Result<SshRigFile> {
        let mut file: SshRigFile =
            toml::from_str(text).map_err(|source| Error::ParseRigFile { path: path.to_path_buf(), source })?;
        let invalid = |reason: String| Error::InvalidRigFile { path: path.to_path_buf(), reason };
        if file.hosts.iter().filter(|h| !h.client).count() == 0 {
            return Err(invalid("no host runs shoal".to_string()));
        }
        let mut names: Vec<&str> = file.hosts.iter().map(|h| h.name.as_str()).collect();
        names.sort();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("host names must be unique".to_string()));
        }
        for h in &file.hosts {
            if h.name.is_empty() || !h.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(invalid(format!("host name {:?}: use letters, digits and '-'", h.name)));
            }
            if !h.data_dir.is_absolute() {
                return Err(invalid(format!("host {}: data_dir must be an absolute path", h.name)));
            }
            if h.power_off_command.is_some() != h.power_on_command.is_some() {
                return Err(invalid(format!("host {}: give both power_off_command and power_on_command", h.name)));
            }
        }
        if !file.remote_binary.is_absolute() {
            return Err(invalid("remote_binary must be an absolute path".to_string()));
        }
        for h in file.hosts.iter().filter(|h| !h.client) {
            let bin = match h.arch {
                Arch::X86_64 => &file.binary_x86_64,
                Arch::Aarch64 => &file.binary_aarch64,
            };
            if bin.is_none() {
                return Err(invalid(format!(
                    "host {} is {} but no binary for that arch is set",
                    h.name,
                    h.arch.as_str()
                )));
            }
        }
        let base = path.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(base) = base {
            for bin in [&mut file.binary_x86_64, &mut file.binary_aarch64].into_iter().flatten() {
                if bin.is_relative() {
                    *bin = base.join(&*bin);
                }
            }
        }
        Ok(file)
    }

    /// Reads and parses a rig file.
    pub fn load(path: &Path) -> Result<SshRigFile> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })?;
        SshRigFile::parse(path, &text)
    }
}

/// Quotes one word for a POSIX shell.
pub(crate) fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c)) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// Boards over ssh.
pub struct SshRig {
    file: SshRigFile,
    launches: Mutex<HashMap<String, Launch>>,
    uploaded: Mutex<HashSet<String>>,
    /// The launcher each board turned out to have (for `Launcher::Auto`).
    launchers: Mutex<HashMap<String, Launcher>>,
    /// Boards whose power was cut with their `power_off_command`.
    powered_off: Mutex<HashSet<String>>,
    /// Local dir of the ssh control sockets.
    control_dir: PathBuf,
    /// Held while a shared connection is opened or closed.
    masters: Mutex<()>,
    /// sha256 of the local binaries.
    sums: Mutex<HashMap<(PathBuf, u64, std::time::SystemTime), String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SshRig {
    pub fn new(file: SshRigFile) -> SshRig {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let control_dir = std::env::temp_dir().join(format!(
            "shoal-hil-ssh-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        SshRig {
            file,
            launches: Mutex::default(),
            uploaded: Mutex::default(),
            launchers: Mutex::default(),
            powered_off: Mutex::default(),
            control_dir,
            masters: Mutex::new(()),
            sums: Mutex::default(),
        }
    }

    /// The rig file this rig was made from.
    pub fn file(&self) -> &SshRigFile {
        &self.file
    }

    fn host(&self, name: &str) -> Result<&SshHost> {
        self.file.hosts.iter().find(|h| h.name == name).ok_or_else(|| Error::UnknownHost(name.to_string()))
    }

    /// The dir next to the data dir that holds the pid file, the log and the launch's config.
    fn run_dir(h: &SshHost) -> String {
        format!("{}.hil", h.data_dir.to_string_lossy().trim_end_matches('/'))
    }

    fn pid_file(h: &SshHost) -> String {
        format!("{}/shoal.pid", Self::run_dir(h))
    }

    /// Where shoal's output goes on the board with the process launcher.
    pub fn log_path(&self, host: &str) -> Result<PathBuf> {
        Ok(PathBuf::from(format!("{}/shoal.log", Self::run_dir(self.host(host)?))))
    }

    /// The control socket of the shared connection to `h`.
    fn control_path(&self, h: &SshHost) -> PathBuf {
        self.control_dir.join(&h.name)
    }

    /// The ssh command line up to (not including) the remote command.
    fn ssh_args(&self, h: &SshHost) -> Vec<String> {
        let mut args = self.file.ssh_options.clone();
        args.extend(proc::args(&[
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "ServerAliveInterval=2",
            "-o",
            "ServerAliveCountMax=5",
        ]));
        if self.file.multiplex {
            args.extend(proc::args(&[
                "-o",
                "ControlMaster=no",
                "-o",
                &format!("ControlPath={}", self.control_path(h).display()),
            ]));
        }
        args.extend(proc::args(&["-p", &h.port.to_string(), "-l", &h.user, &h.address.to_string()]));
        args
    }

    /// Opens the shared connection to `h` if there is none. The master runs detached (`-f -N`)
    /// with no pipe of ours, and ends after two idle minutes or at [`SshRig::close_connection`].
    fn ensure_master(&self, h: &SshHost) -> Result<()> {
        if !self.file.multiplex {
            return Ok(());
        }
        let _guard = lock(&self.masters);
        let socket = self.control_path(h);
        if socket.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.control_dir).map_err(|source| Error::Io {
            op: "create dir",
            path: self.control_dir.clone(),
            source,
        })?;
        let mut args = self.ssh_args(h);
        for a in args.iter_mut() {
            if a == "ControlMaster=no" {
                *a = "ControlMaster=yes".to_string();
            }
        }
        let dest = args.split_off(args.len() - 1);
        args.extend(proc::args(&["-o", "ControlPersist=120", "-f", "-N"]));
        args.extend(dest);
        let status = Command::new("timeout")
            .args(["-k", "5", "30", "ssh"])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|source| Error::Spawn { program: "ssh".to_string(), source })?;
        if !status.success() {
            // no shared connection: each command then connects on its own
            warn!(host = %h.name, status = ?status.code(), "cannot open a shared ssh connection");
        }
        Ok(())
    }

    /// Runs `script` with `sh -c` on the board; ssh itself is bounded by `timeout` (status 124).
    fn ssh_with(&self, h: &SshHost, script: &str, timeout: Duration, stdin: Option<&Path>) -> Result<ExecOutput> {
        self.ensure_master(h)?;
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", &format!("{:.3}", timeout.as_secs_f64()), "ssh"]).args(self.ssh_args(h)).args([
            "--",
            "sh",
            "-c",
            &shell_quote(script),
        ]);
        match stdin {
            Some(path) => {
                let f = std::fs::File::open(path).map_err(|source| Error::Io {
                    op: "open",
                    path: path.to_path_buf(),
                    source,
                })?;
                cmd.stdin(f);
            }
            None => {
                cmd.stdin(Stdio::null());
            }
        }
        let out = cmd.output().map_err(|source| Error::Spawn { program: "ssh".to_string(), source })?;
        Ok(ExecOutput {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn ssh(&self, h: &SshHost, script: &str) -> Result<ExecOutput> {
        self.ssh_with(h, script, SSH_TIMEOUT, None)
    }

    fn ssh_checked(&self, h: &SshHost, op: &'static str, script: &str) -> Result<ExecOutput> {
        let out = self.ssh(h, script)?;
        if out.status != 0 {
            return Err(Error::Command {
                op,
                command: format!("ssh {} {script}", h.name),
                status: out.status,
                stderr: out.stderr.trim().to_string(),
            });
        }
        Ok(out)
    }

    fn local(&self, op: &'static str, command: &str) -> Result<ExecOutput> {
        proc::checked(op, "sh", &proc::args(&["-c", command]))
    }

    /// Closes the shared connection to a board (after a power cut, or at the end).
    fn close_connection(&self, h: &SshHost) {
        let _guard = lock(&self.masters);
        if !self.file.multiplex || !self.control_path(h).exists() {
            return;
        }
        let mut args = self.ssh_args(h);
        let dest = args.split_off(args.len() - 1);
        args.extend(proc::args(&["-O", "exit"]));
        args.extend(dest);
        let _ = proc::output("ssh", &args);
    }

    fn binary_for(&self, host: &SshHost) -> Result<PathBuf> {
        let bin = match host.arch {
            Arch::X86_64 => &self.file.binary_x86_64,
            Arch::Aarch64 => &self.file.binary_aarch64,
        };
        bin.clone().ok_or(Error::Unsupported("start shoal on a board whose arch has no binary"))
    }

    /// The sha256 of a local file (`sha256sum`), remembered per path, size and mtime.
    fn local_sha256(&self, local: &Path) -> Option<String> {
        let meta = std::fs::metadata(local).ok()?;
        let key = (local.to_path_buf(), meta.len(), meta.modified().ok()?);
        if let Some(sum) = lock(&self.sums).get(&key) {
            return Some(sum.clone());
        }
        let out = proc::output("sha256sum", &proc::args(&[local.to_string_lossy()])).ok()?;
        let sum = out.stdout.split_whitespace().next().filter(|s| out.success() && s.len() == 64)?.to_string();
        lock(&self.sums).insert(key, sum.clone());
        Some(sum)
    }

    /// Copies `local` to the board unless the board already has the same file.
    fn upload(&self, h: &SshHost, local: &Path) -> Result<()> {
        let remote = self.file.remote_binary.to_string_lossy().into_owned();
        if let Some(sum) = self.local_sha256(local) {
            let same = self.ssh(h, &format!("sha256sum {} 2>/dev/null", shell_quote(&remote)))?;
            if same.success() && same.stdout.split_whitespace().next() == Some(sum.as_str()) {
                info!(host = %h.name, binary = %local.display(), "binary already installed");
                return Ok(());
            }
        }
        let tmp = format!("{remote}.hil-new");
        let dir = self.file.remote_binary.parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        let script = format!(
            "mkdir -p {d} && cat > {t} && chmod 755 {t} && mv -f {t} {r}",
            d = shell_quote(&dir),
            t = shell_quote(&tmp),
            r = shell_quote(&remote)
        );
        let started = Instant::now();
        let out = self.ssh_with(h, &script, UPLOAD_TIMEOUT, Some(local))?;
        if !out.success() {
            return Err(Error::Command {
                op: "copy binary",
                command: format!("ssh {} {script} < {}", h.name, local.display()),
                status: out.status,
                stderr: out.stderr.trim().to_string(),
            });
        }
        info!(host = %h.name, binary = %local.display(), secs = started.elapsed().as_secs_f64(), "binary installed");
        Ok(())
    }

    /// The launcher `h` uses, asking the board once when the file says `auto`.
    fn launcher(&self, h: &SshHost) -> Result<Launcher> {
        if self.file.launcher != Launcher::Auto {
            return Ok(self.file.launcher);
        }
        if let Some(l) = lock(&self.launchers).get(&h.name) {
            return Ok(*l);
        }
        let probe = self.ssh(h, "[ -d /run/systemd/system ] && command -v systemd-run >/dev/null")?;
        if probe.timed_out() || probe.status == 255 {
            return Err(Error::Command {
                op: "reach board",
                command: format!("ssh {}", h.name),
                status: probe.status,
                stderr: probe.stderr.trim().to_string(),
            });
        }
        let l = if probe.success() { Launcher::Systemd } else { Launcher::Process };
        lock(&self.launchers).insert(h.name.clone(), l);
        Ok(l)
    }

    /// Shell that defines `alive`: the pid file names a live (not zombie) process of the binary.
    fn alive_fn(&self, h: &SshHost) -> String {
        let bin = shell_quote(&self.file.remote_binary.to_string_lossy());
        format!(
            "alive() {{ p=$(cat {pf} 2>/dev/null) && [ -n \"$p\" ] && [ -d /proc/$p ] || return 1; \
             grep -q '^State:[[:space:]]*Z' /proc/$p/status 2>/dev/null && return 1; \
             case \"$(readlink /proc/$p/exe 2>/dev/null)\" in {bin}|{bin}' (deleted)') return 0;; esac; return 1; }}; ",
            pf = shell_quote(&Self::pid_file(h)),
        )
    }

    /// Shell that defines `shoal_pids`: every process of shoal on the board (the daemon and its
    /// shims, which are the same binary) and every process in the cgroups of its pods.
    fn shoal_pids_fn(&self, h: &SshHost) -> String {
        let bin = shell_quote(&self.file.remote_binary.to_string_lossy());
        let cg = shell_quote(&format!("shoal-{}", h.name));
        format!(
            "shoal_pids() {{ for d in /proc/[0-9]*; do \
               case \"$(readlink $d/exe 2>/dev/null)\" in {bin}|{bin}' (deleted)') echo ${{d#/proc/}};; esac; done; \
             for c in /sys/fs/cgroup/{cg} /sys/fs/cgroup/*/{cg}; do \
               [ -d \"$c\" ] && find \"$c\" -name cgroup.procs -exec cat {{}} + 2>/dev/null; done; true; }}; "
        )
    }

    /// Kills shoal, its shims and its containers on a reachable board and waits until they are gone.
    fn kill_everything(&self, h: &SshHost) -> Result<()> {
        let unit = if self.launcher(h)? == Launcher::Systemd {
            format!("systemctl kill -s KILL {UNIT} 2>/dev/null; ")
        } else {
            String::new()
        };
        let script = format!(
            "{pids}{unit}i=0; while [ $i -lt 100 ]; do ps=$(shoal_pids); [ -z \"$ps\" ] && break; \
             for p in $ps; do kill -9 $p 2>/dev/null; done; i=$((i+1)); sleep 0.1; done; \
             rm -f {pf}; [ -z \"$(shoal_pids)\" ]",
            pids = self.shoal_pids_fn(h),
            pf = shell_quote(&Self::pid_file(h)),
        );
        self.ssh_checked(h, "power off", &script)?;
        Ok(())
    }

    /// Runs the board's `power_on_command` if its power was cut, then waits until ssh answers.
    fn ensure_powered(&self, h: &SshHost) -> Result<()> {
        if !lock(&self.powered_off).contains(&h.name) {
            return Ok(());
        }
        if let Some(cmd) = &h.power_on_command {
            self.local("power on", cmd)?;
        }
        let timeout = Duration::from_secs(self.file.boot_timeout_s);
        proc::wait_until(&format!("{} answering ssh", h.name), timeout, Duration::from_millis(500), || {
            self.ssh_with(h, "true", Duration::from_secs(15), None).is_ok_and(|o| o.success())
        })?;
        lock(&self.powered_off).remove(&h.name);
        info!(host = %h.name, "board powered on");
        Ok(())
    }

    /// The last lines of shoal's output on `host` (its log file, or the unit's journal).
    pub fn log_tail(&self, host: &str, lines: usize) -> Result<String> {
        let h = self.host(host)?;
        let script = match self.launcher(h)? {
            Launcher::Systemd => format!("journalctl -u {UNIT} -n {lines} --no-pager 2>&1"),
            _ => format!("tail -n {lines} {} 2>&1", shell_quote(&format!("{}/shoal.log", Self::run_dir(h)))),
        };
        Ok(self.ssh(h, &script)?.stdout)
    }
}

impl Drop for SshRig {
    fn drop(&mut self) {
        for h in &self.file.hosts {
            self.close_connection(h);
        }
        let _ = std::fs::remove_dir_all(&self.control_dir);
    }
}

impl Rig for SshRig {
    fn info(&self) -> RigInfo {
        let to_info = |h: &SshHost| HostInfo {
            name: h.name.clone(),
            address: h.address.to_string(),
            arch: h.arch.as_str().to_string(),
        };
        RigInfo {
            kind: "ssh".to_string(),
            name: self.file.name.clone(),
            hosts: self.file.hosts.iter().filter(|h| !h.client).map(to_info).collect(),
            client: self.file.hosts.iter().find(|h| h.client).map(to_info),
            notes: format!("boards over ssh, launcher {:?}", self.file.launcher).to_lowercase(),
        }
    }

    fn hosts(&self) -> Vec<String> {
        self.file.hosts.iter().filter(|h| !h.client).map(|h| h.name.clone()).collect()
    }

    fn client(&self) -> Option<String> {
        self.file.hosts.iter().find(|h| h.client).map(|h| h.name.clone())
    }

    fn address(&self, host: &str) -> Result<IpAddr> {
        Ok(self.host(host)?.address)
    }

    fn data_dir(&self, host: &str) -> Result<PathBuf> {
        Ok(self.host(host)?.data_dir.clone())
    }

    fn start(&self, host: &str, launch: &Launch) -> Result<()> {
        let h = self.host(host)?;
        if h.client {
            return Err(Error::Unsupported("start shoal on the client host"));
        }
        self.ensure_powered(h)?;
        lock(&self.launches).insert(host.to_string(), launch.clone());
        if !lock(&self.uploaded).contains(host) {
            self.upload(h, &self.binary_for(h)?)?;
            lock(&self.uploaded).insert(host.to_string());
        }
        if self.is_running(host)? {
            return Ok(());
        }
        let data_dir = h.data_dir.to_string_lossy().into_owned();
        let run_dir = Self::run_dir(h);
        let mut argv = vec![
            self.file.remote_binary.to_string_lossy().into_owned(),
            "up".to_string(),
            "--data-dir".to_string(),
            data_dir.clone(),
            "--name".to_string(),
            h.name.clone(),
            "--advertise".to_string(),
            h.address.to_string(),
        ];
        let mut script = format!("set -e; mkdir -p {} {}; ", shell_quote(&data_dir), shell_quote(&run_dir));
        if let Some(config) = &launch.config {
            let path = format!("{run_dir}/config.toml");
            script.push_str(&format!("printf %s {} > {}; ", shell_quote(config), shell_quote(&path)));
            argv.extend(["--config".to_string(), path]);
        }
        if let Some(join) = &launch.join {
            argv.extend(["--join".to_string(), join.clone()]);
        }
        if let Some(token) = &launch.token {
            argv.extend(["--token".to_string(), token.clone()]);
        }
        argv.extend(launch.extra_args.iter().cloned());
        let env: Vec<String> = launch.env.iter().map(|(k, v)| shell_quote(&format!("{k}={v}"))).collect();
        let mut cmd: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
        match self.launcher(h)? {
            Launcher::Systemd => script.push_str(&format!(
                "systemctl reset-failed {UNIT} 2>/dev/null || true; \
                 systemd-run --quiet --unit={UNIT} --collect -p KillMode=control-group {} {}",
                env.iter().map(|e| format!("--setenv={e}")).collect::<Vec<_>>().join(" "),
                cmd.join(" ")
            )),
            _ => {
                if !env.is_empty() {
                    // `env` execs shoal in place: the pid in the pid file stays shoal's
                    cmd.splice(0..0, std::iter::once("env".to_string()).chain(env.iter().cloned()));
                }
                let pid_file = shell_quote(&Self::pid_file(h));
                let log = shell_quote(&format!("{run_dir}/shoal.log"));
                // the shell writes its own pid, then becomes shoal (exec keeps the pid)
                script.push_str(&format!(
                    "rm -f {pid_file}; cd /; \
                     setsid sh -c 'echo $$ > \"$0\"; exec \"$@\"' {pid_file} {cmd} >> {log} 2>&1 < /dev/null & \
                     i=0; while [ ! -s {pid_file} ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; \
                     sleep 0.2; {alive}alive || {{ tail -n 20 {log} >&2; exit 1; }}",
                    cmd = cmd.join(" "),
                    alive = self.alive_fn(h),
                ));
            }
        }
        self.ssh_checked(h, "start shoal", &script)?;
        info!(host, "shoal started");
        Ok(())
    }

    fn restart(&self, host: &str) -> Result<()> {
        let launch = lock(&self.launches).get(host).cloned().unwrap_or_default();
        self.start(host, &launch)
    }

    fn stop(&self, host: &str, grace: Duration) -> Result<()> {
        let h = self.host(host)?;
        let script = match self.launcher(h)? {
            Launcher::Systemd => format!(
                "systemctl kill -s CONT {UNIT} 2>/dev/null; \
                 timeout {s} systemctl stop {UNIT} 2>/dev/null || systemctl kill -s KILL {UNIT} 2>/dev/null; true",
                s = grace.as_secs().max(1)
            ),
            _ => format!(
                "{alive}alive || exit 0; kill -CONT $p; kill -TERM $p; i=0; \
                 while alive && [ $i -lt {n} ]; do sleep 0.1; i=$((i+1)); done; \
                 if alive; then kill -KILL $p; fi; i=0; while alive && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
                 if alive; then exit 1; fi; rm -f {pf}",
                alive = self.alive_fn(h),
                n = (grace.as_millis() / 100).max(1),
                pf = shell_quote(&Self::pid_file(h)),
            ),
        };
        self.ssh_checked(h, "stop shoal", &script)?;
        Ok(())
    }

    fn power_off(&self, host: &str) -> Result<()> {
        let h = self.host(host)?;
        match &h.power_off_command {
            Some(cmd) => {
                self.local("power off", cmd)?;
                lock(&self.powered_off).insert(h.name.clone());
                self.close_connection(h);
            }
            None => self.kill_everything(h)?,
        }
        info!(host, "power cut");
        Ok(())
    }

    fn is_running(&self, host: &str) -> Result<bool> {
        let h = self.host(host)?;
        if lock(&self.powered_off).contains(host) {
            return Ok(false);
        }
        let script = match self.launcher(h)? {
            Launcher::Systemd => format!("systemctl is-active --quiet {UNIT}"),
            _ => format!("{}alive", self.alive_fn(h)),
        };
        let out = self.ssh(h, &script)?;
        if out.status == 255 || out.timed_out() {
            return Err(Error::Command {
                op: "reach board",
                command: format!("ssh {host}"),
                status: out.status,
                stderr: out.stderr.trim().to_string(),
            });
        }
        Ok(out.success())
    }

    fn freeze(&self, host: &str) -> Result<()> {
        let h = self.host(host)?;
        self.ssh_checked(
            h,
            "freeze",
            &format!("{}for p in $(shoal_pids); do kill -STOP $p; done", self.shoal_pids_fn(h)),
        )?;
        Ok(())
    }

    fn thaw(&self, host: &str) -> Result<()> {
        let h = self.host(host)?;
        self.ssh_checked(
            h,
            "thaw",
            &format!("{}for p in $(shoal_pids); do kill -CONT $p; done", self.shoal_pids_fn(h)),
        )?;
        Ok(())
    }

    fn partition(&self, a: &[&str], b: &[&str]) -> Result<()> {
        let addrs = |hosts: &[&str]| -> Result<Vec<String>> {
            hosts.iter().map(|h| self.host(h).map(|s| s.address.to_string())).collect()
        };
        let (addr_a, addr_b) = (addrs(a)?, addrs(b)?);
        for (side, other) in [(a, &addr_b), (b, &addr_a)] {
            for name in side {
                let h = self.host(name)?;
                self.ssh_checked(h, "partition", &format!("nft {}", shell_quote(&partition_script(other))))?;
            }
        }
        info!(a = ?a, b = ?b, "partitioned");
        Ok(())
    }

    fn heal(&self) -> Result<()> {
        for h in &self.file.hosts {
            if lock(&self.powered_off).contains(&h.name) {
                continue;
            }
            self.ssh(h, &format!("nft delete table inet {PARTITION_TABLE} 2>/dev/null; true"))?;
        }
        info!("healed");
        Ok(())
    }

    fn degrade(&self, host: &str, netem: &Netem) -> Result<()> {
        let h = self.host(host)?;
        let args: Vec<String> = netem.tc_args().iter().map(|a| shell_quote(a)).collect();
        self.ssh_checked(
            h,
            "degrade",
            &format!("tc qdisc replace dev {} root netem {}", shell_quote(&h.interface), args.join(" ")),
        )?;
        Ok(())
    }

    fn restore(&self, host: &str) -> Result<()> {
        let h = self.host(host)?;
        self.ssh(h, &format!("tc qdisc del dev {} root 2>/dev/null; true", shell_quote(&h.interface)))?;
        Ok(())
    }

    fn exec_timeout(&self, host: &str, cmd: &[&str], timeout: Duration) -> Result<ExecOutput> {
        let h = self.host(host)?;
        let words: Vec<String> = cmd.iter().map(|w| shell_quote(w)).collect();
        // the remote `timeout` ends the command; the local bound only catches a hung connection
        self.ssh_with(
            h,
            &format!("exec timeout -k 2 {:.3} {}", timeout.as_secs_f64(), words.join(" ")),
            timeout + Duration::from_secs(15),
            None,
        )
    }

    fn shoal_path(&self, _host: &str) -> Result<PathBuf> {
        Ok(self.file.remote_binary.clone())
    }

    fn install_binary(&self, host: &str, binary: &Path) -> Result<()> {
        let h = self.host(host)?;
        self.upload(h, binary)?;
        lock(&self.uploaded).insert(host.to_string());
        Ok(())
    }

    fn down(&self) -> Result<()> {
        let mut first_error = None;
        for h in &self.file.hosts {
            let result = (|| -> Result<()> {
                self.ensure_powered(h)?;
                if !h.client {
                    self.kill_everything(h)?;
                }
                let cg = shell_quote(&format!("shoal-{}", h.name));
                let mut script = format!(
                    "{}nft delete table inet {PARTITION_TABLE} 2>/dev/null; tc qdisc del dev {} root 2>/dev/null; ",
                    if self.launcher(h)? == Launcher::Systemd && !h.client {
                        format!("systemctl reset-failed {UNIT} 2>/dev/null; ")
                    } else {
                        String::new()
                    },
                    shell_quote(&h.interface),
                );
                if !h.client {
                    script.push_str(&format!(
                        "rm -rf {} {}; for c in /sys/fs/cgroup/{cg} /sys/fs/cgroup/*/{cg}; do \
                         [ -d \"$c\" ] && find \"$c\" -depth -type d -exec rmdir {{}} \\; 2>/dev/null; done; ",
                        shell_quote(&h.data_dir.to_string_lossy()),
                        shell_quote(&Self::run_dir(h)),
                    ));
                }
                script.push_str("true");
                self.ssh_checked(h, "clean board", &script)?;
                Ok(())
            })();
            if let Err(e) = result {
                warn!(host = %h.name, error = %e, "cannot clean board");
                first_error.get_or_insert(e);
            }
            self.close_connection(h);
        }
        lock(&self.uploaded).clear();
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
name = "desk-bench"
ssh_options = ["-o", "StrictHostKeyChecking=accept-new"]
binary_x86_64 = "out/release/shoal-x86_64"
binary_aarch64 = "/opt/shoal/shoal-aarch64"

[[host]]
name = "pi1"
address = "192.168.50.11"
arch = "aarch64"

[[host]]
name = "nuc1"
address = "192.168.50.21"
user = "admin"
arch = "x86_64"
interface = "enp1s0"
data_dir = "/srv/shoal"
power_off_command = "curl -s http://plug-3/off"
power_on_command = "curl -s http://plug-3/on"

[[host]]
name = "laptop"
address = "192.168.50.99"
arch = "x86_64"
client = true
"#;

    #[test]
    fn parses_the_documented_example() {
        let file = SshRigFile::parse(Path::new("/benches/bench.toml"), EXAMPLE).unwrap();
        assert_eq!(file.hosts.len(), 3);
        assert_eq!(file.hosts[0].user, "root");
        assert_eq!(file.hosts[0].interface, "eth0");
        assert_eq!(file.hosts[0].data_dir, PathBuf::from("/var/lib/shoal"));
        assert_eq!(file.hosts[1].arch, Arch::X86_64);
        assert_eq!(file.remote_binary, PathBuf::from("/usr/local/bin/shoal"));
        assert_eq!(file.launcher, Launcher::Auto);
        assert!(file.multiplex);
        // relative binaries are relative to the rig file
        assert_eq!(file.binary_x86_64, Some(PathBuf::from("/benches/out/release/shoal-x86_64")));
        assert_eq!(file.binary_aarch64, Some(PathBuf::from("/opt/shoal/shoal-aarch64")));
        let rig = SshRig::new(file);
        assert_eq!(rig.hosts(), ["pi1", "nuc1"]);
        assert_eq!(rig.client().as_deref(), Some("laptop"));
        assert_eq!(rig.info().hosts[0].arch, "aarch64");
        assert_eq!(rig.log_path("nuc1").unwrap(), PathBuf::from("/srv/shoal.hil/shoal.log"));
    }

    #[test]
    fn rejects_bad_files() {
        let path = Path::new("bench.toml");
        assert!(matches!(SshRigFile::parse(path, "name = 1"), Err(Error::ParseRigFile { .. })));
        let unknown = "name = \"b\"\n[[host]]\nname = \"a\"\naddress = \"10.0.0.1\"\narch = \"riscv\"\n";
        assert!(matches!(SshRigFile::parse(path, unknown), Err(Error::ParseRigFile { .. })));
        let no_binary = "name = \"b\"\n[[host]]\nname = \"a\"\naddress = \"10.0.0.1\"\narch = \"aarch64\"\n";
        assert!(matches!(SshRigFile::parse(path, no_binary), Err(Error::InvalidRigFile { .. })));
        let dup = "name = \"b\"\nbinary_x86_64 = \"s\"\n[[host]]\nname = \"a\"\naddress = \"10.0.0.1\"\narch = \"x86_64\"\n[[host]]\nname = \"a\"\naddress = \"10.0.0.2\"\narch = \"x86_64\"\n";
        assert!(matches!(SshRigFile::parse(path, dup), Err(Error::InvalidRigFile { .. })));
        let typo =
            "name = \"b\"\nbinary_x86_64 = \"s\"\n[[host]]\nname = \"a\"\nadress = \"10.0.0.1\"\narch = \"x86_64\"\n";
        assert!(SshRigFile::parse(path, typo).is_err());
        let half_power = "name = \"b\"\nbinary_x86_64 = \"s\"\n[[host]]\nname = \"a\"\naddress = \"10.0.0.1\"\narch = \"x86_64\"\npower_off_command = \"x\"\n";
        assert!(matches!(SshRigFile::parse(path, half_power), Err(Error::InvalidRigFile { .. })));
        let bad_name = "name = \"b\"\nbinary_x86_64 = \"s\"\n[[host]]\nname = \"a b\"\naddress = \"10.0.0.1\"\narch = \"x86_64\"\n";
        assert!(matches!(SshRigFile::parse(path, bad_name), Err(Error::InvalidRigFile { .. })));
        let launcher = "name = \"b\"\nbinary_x86_64 = \"s\"\nlauncher = \"process\"\n[[host]]\nname = \"a\"\naddress = \"10.0.0.1\"\narch = \"x86_64\"\n";
        assert_eq!(SshRigFile::parse(path, launcher).unwrap().launcher, Launcher::Process);
    }

    /// The rig file shown to bench owners in docs/hil.md is valid.
    #[test]
    fn the_example_in_the_docs_parses() {
        let doc = include_str!("../../../docs/hil.md");
        let start = doc.find("```toml\n# bench.toml").expect("example in docs/hil.md") + "```toml\n".len();
        let len = doc[start..].find("```").expect("end of the example");
        let file = SshRigFile::parse(Path::new("/home/me/bench/bench.toml"), &doc[start..start + len]).unwrap();
        assert_eq!(file.hosts.len(), 4);
        assert_eq!(file.binary_aarch64, Some(PathBuf::from("/home/me/bench/../out/release/shoal-aarch64")));
        assert!(file.hosts[1].power_on_command.is_some());
        assert!(file.hosts[3].client);
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/var/lib/shoal"), "/var/lib/shoal");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    /// The scripts the rig runs on boards are valid POSIX sh.
    #[test]
    fn board_scripts_parse() {
        let file = SshRigFile::parse(Path::new("b.toml"), EXAMPLE).unwrap();
        let rig = SshRig::new(file);
        let h = rig.host("nuc1").unwrap().clone();
        for script in [rig.alive_fn(&h) + "alive", rig.shoal_pids_fn(&h) + "shoal_pids"] {
            let out = proc::output("sh", &proc::args(&["-n", "-c", &script])).unwrap();
            assert!(out.success(), "{script}: {}", out.stderr);
        }
    }
}
