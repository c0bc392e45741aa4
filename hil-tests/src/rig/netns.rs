//! A rig of network namespaces on this machine.
//!
//! Layout (rig id `ID`, a hash of the rig dir, so a stale rig of the same dir has the same names):
//! - `shoal-ID-sw`: the switch namespace, holding bridge `br0` (and `br1` for the routed topology)
//!   and one veth port per host; nothing of the rig touches the root namespace's links.
//! - `shoal-ID-n1` ...: one namespace per host, `eth0` on the bridge, address `10.77.0.N/24`
//!   (routed: the second half of the hosts sit on `10.77.1.0/24` behind router `shoal-ID-r`).
//! - `shoal-ID-c`: the optional client host (`10.77.0.200`), which never runs shoal.
//! - Each powered host runs an init in its own pid namespace (`unshare --pid --fork --kill-child
//!   --mount-proc`); shoal and everything it starts live below it, so killing that init is a power
//!   cut. Commands run on a host enter its net, pid and mount namespaces with `nsenter`.
//! - `DIR/state.json` records all of it, so `down` (or the next `up` in the same dir) removes a rig
//!   left by a crashed run.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::{ExecOutput, HostInfo, Launch, Netem, Rig, RigInfo};
use crate::error::{Error, Result};
use crate::proc;

/// Starts `program` through bash after closing every file descriptor above 2 that this process
/// inherited without close-on-exec (a `flock LOCK cargo test` passes its lock down as fd 3).
/// A rig's hosts and daemons outlive the test that started them, so they must not keep
/// such a lock held (every later run would wait for it). Builtins only: the script forks no
/// child, so "the launcher has a child" still means the daemon started.
fn without_inherited_fds(program: &str) -> Command {
    let mut cmd = Command::new("bash");
    cmd.args([
        "-c",
        r#"for fd in /proc/$$/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done; exec "$@""#,
        "bash",
        program,
    ]);
    cmd
}

/// The nftables table holding partition rules inside a host.
pub(crate) const PARTITION_TABLE: &str = "shoal_hil_partition";
/// The nftables table holding the loss rules used when the kernel has no netem.
pub(crate) const LOSS_TABLE: &str = "shoal_hil_loss";
/// Name of the client host.
pub const CLIENT: &str = "client";

/// How the hosts are wired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// One bridge, one /24.
    #[default]
    Flat,
    /// Two bridges, two /24s, a router namespace between them (routed and VXLAN cases).
    Routed,
}

/// What to build.
#[derive(Clone, Debug)]
pub struct NetnsOptions {
    /// Rig dir: state file, per-host data dirs and logs.
    pub dir: PathBuf,
    /// Number of shoal hosts (n1..nN).
    pub nodes: usize,
    /// Add a client host without shoal.
    pub client: bool,
    pub topology: Topology,
    /// The shoal binary hosts start (may be missing when `daemon_override` is set).
    pub shoal_bin: PathBuf,
    /// Run this command as the host's daemon instead of `shoal up ...` (tests of the rig itself).
    pub daemon_override: Option<Vec<String>>,
    /// Give this machine an address (`10.77.0.250`) on the rig's first bridge, so kubectl and
    /// curl reach the hosts. Only one rig with host access can be up at a time.
    pub host_access: bool,
    /// Put the rig dir (data dirs, images, logs) on a tmpfs of this many MiB, so the fill level
    /// of this machine's disk (a node's DiskPressure) does not decide what the rig can run.
    /// Default: `$SHOAL_HIL_TMPFS_MB`, else none.
    pub tmpfs_mb: Option<u64>,
}

impl NetnsOptions {
    /// `nodes` hosts on a flat bridge in `dir`, running `shoal_bin`.
    pub fn new(dir: impl Into<PathBuf>, nodes: usize, shoal_bin: impl Into<PathBuf>) -> Self {
        NetnsOptions {
            dir: dir.into(),
            nodes,
            client: false,
            topology: Topology::Flat,
            shoal_bin: shoal_bin.into(),
            daemon_override: None,
            host_access: false,
            tmpfs_mb: std::env::var("SHOAL_HIL_TMPFS_MB").ok().and_then(|v| v.parse().ok()).filter(|v| *v > 0),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct HostState {
    name: String,
    netns: String,
    /// Port name in the switch namespace.
    port: String,
    address: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
    data_dir: PathBuf,
    binary: PathBuf,
    runs_shoal: bool,
    launch: Option<Launch>,
    /// `nsenter` process whose child is the daemon.
    launcher_pid: Option<i32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    id: String,
    dir: PathBuf,
    topology: Topology,
    switch_ns: String,
    router_ns: Option<String>,
    /// Every namespace created, in creation order.
    namespaces: Vec<String>,
    hosts: Vec<HostState>,
    daemon_override: Option<Vec<String>>,
    /// Link in the root namespace, when the rig has host access.
    #[serde(default)]
    access_link: Option<String>,
}

/// N hosts in network namespaces on this machine. Tears itself down when dropped unless
/// [`NetnsRig::keep`] was called (the CLI's `rig up`).
pub struct NetnsRig {
    state: Mutex<State>,
    children: Mutex<Vec<Child>>,
    teardown_on_drop: AtomicBool,
    netem: Mutex<Option<bool>>,
}

/// Rig id of a dir: 6 hex digits of a hash of its path.
pub(crate) fn rig_id(dir: &Path) -> String {
    let mut hash: u64 = 0xcbf29ce484222325;
    for b in dir.to_string_lossy().bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    format!("{:06x}", hash & 0xff_ffff)
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io { op, path: path.to_path_buf(), source }
}

fn ip(args: &[&str], op: &'static str) -> Result<ExecOutput> {
    proc::checked(op, "ip", &proc::args(args))
}

/// Names of all network namespaces.
fn list_netns() -> Vec<String> {
    fs::read_dir("/run/netns")
        .map(|d| d.filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Kills every process in a network namespace and deletes it.
fn remove_netns(name: &str) {
    for _ in 0..50 {
        let pids = proc::pids_in_netns(name);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            proc::signal(pid, Signal::SIGCONT);
            proc::signal(pid, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if Path::new("/run/netns").join(name).exists() {
        if let Err(e) = ip(&["netns", "del", name], "delete namespace") {
            warn!(netns = name, error = %e, "cannot delete namespace");
        }
    }
}

/// Removes every namespace whose name starts with `shoal-ID-` and the state file of `dir`.
fn remove_stale(dir: &Path, id: &str) {
    let prefix = format!("shoal-{id}-");
    let mut names: Vec<String> = Vec::new();
    if let Ok(text) = fs::read_to_string(state_path(dir)) {
        if let Ok(state) = serde_json::from_str::<State>(&text) {
            names.extend(state.namespaces);
        }
    }
    names.extend(list_netns().into_iter().filter(|n| n.starts_with(&prefix)));
    names.sort();
    names.dedup();
    // hosts first, the switch last
    names.sort_by_key(|n| n.ends_with("-sw"));
    for name in names {
        info!(netns = %name, "removing namespace of a stale rig");
        remove_netns(&name);
    }
    let link = format!("shoal-{id}");
    if Path::new("/sys/class/net").join(&link).exists() {
        let _ = ip(&["link", "del", &link], "delete access link");
    }
    let _ = fs::remove_file(state_path(dir));
    if is_mountpoint(dir) {
        let _ = proc::output("umount", &proc::args(&["-l", &dir.to_string_lossy()]));
    }
}

/// Whether `dir` is a mount point (a rig dir on its own tmpfs).
fn is_mountpoint(dir: &Path) -> bool {
    let want = dir.to_string_lossy();
    fs::read_to_string("/proc/self/mountinfo")
        .map(|t| t.lines().any(|l| l.split_whitespace().nth(4) == Some(want.as_ref())))
        .unwrap_or(false)
}

/// Removes every rig namespace (`shoal-XXXXXX-*`) on this machine, whatever dir it came from.
pub fn sweep_all() -> usize {
    let names: Vec<String> = list_netns()
        .into_iter()
        .filter(|n| {
            let parts: Vec<&str> = n.splitn(3, '-').collect();
            parts.len() == 3
                && parts[0] == "shoal"
                && parts[1].len() == 6
                && parts[1].chars().all(|c| c.is_ascii_hexdigit())
        })
        .collect();
    let mut ordered = names.clone();
    ordered.sort_by_key(|n| n.ends_with("-sw"));
    for name in &ordered {
        remove_netns(name);
    }
    names.len()
}

impl NetnsRig {
    /// Builds the rig, first removing a stale one left in the same dir.
    pub fn up(opts: NetnsOptions) -> Result<NetnsRig> {
        let dir = if opts.dir.is_absolute() {
            opts.dir.clone()
        } else {
            std::env::current_dir().map_err(io("resolve", &opts.dir))?.join(&opts.dir)
        };
        let id = rig_id(&dir);
        remove_stale(&dir, &id);
        fs::create_dir_all(&dir).map_err(io("create dir", &dir))?;
        if let Some(mb) = opts.tmpfs_mb {
            let size = format!("size={mb}m");
            proc::checked(
                "mount rig tmpfs",
                "mount",
                &proc::args(&["-t", "tmpfs", "-o", &size, "shoal-hil", &dir.to_string_lossy()]),
            )?;
        }
        let ns = |suffix: &str| format!("shoal-{id}-{suffix}");
        let mut state = State {
            id: id.clone(),
            dir: dir.clone(),
            topology: opts.topology,
            switch_ns: ns("sw"),
            router_ns: None,
            namespaces: Vec::new(),
            hosts: Vec::new(),
            daemon_override: opts.daemon_override.clone(),
            access_link: opts.host_access.then(|| format!("shoal-{id}")),
        };
        let split = match opts.topology {
            Topology::Flat => opts.nodes,
            Topology::Routed => opts.nodes.div_ceil(2),
        };
        for i in 1..=opts.nodes {
            let (subnet, gateway) = if i <= split { (0, None) } else { (1, Some(Ipv4Addr::new(10, 77, 1, 254))) };
            let gateway = match opts.topology {
                Topology::Flat => None,
                Topology::Routed => gateway.or(Some(Ipv4Addr::new(10, 77, 0, 254))),
            };
            let name = format!("n{i}");
            state.hosts.push(HostState {
                netns: ns(&name),
                port: name.clone(),
                address: Ipv4Addr::new(10, 77, subnet, i as u8),
                prefix: 24,
                gateway,
                data_dir: dir.join(&name).join("data"),
                binary: opts.shoal_bin.clone(),
                runs_shoal: true,
                launch: None,
                launcher_pid: None,
                name,
            });
        }
        if opts.client {
            state.hosts.push(HostState {
                name: CLIENT.to_string(),
                netns: ns("c"),
                port: "c".to_string(),
                address: Ipv4Addr::new(10, 77, 0, 200),
                prefix: 24,
                gateway: (opts.topology == Topology::Routed).then_some(Ipv4Addr::new(10, 77, 0, 254)),
                data_dir: dir.join(CLIENT),
                binary: opts.shoal_bin.clone(),
                runs_shoal: false,
                launch: None,
                launcher_pid: None,
            });
        }
        if opts.topology == Topology::Routed {
            state.router_ns = Some(ns("r"));
        }
        let rig = NetnsRig {
            state: Mutex::new(state),
            children: Mutex::new(Vec::new()),
            teardown_on_drop: AtomicBool::new(true),
            netem: Mutex::new(None),
        };
        if let Err(e) = rig.build() {
            let _ = rig.down();
            return Err(e);
        }
        Ok(rig)
    }

    /// Reopens the rig recorded in `dir` (for `rig status` / `rig down` from another process).
    pub fn open(dir: &Path) -> Result<NetnsRig> {
        let path = state_path(dir);
        let text = fs::read_to_string(&path).map_err(|_| Error::NoRig(dir.to_path_buf()))?;
        let state: State = serde_json::from_str(&text).map_err(|source| Error::ParseState { path, source })?;
        Ok(NetnsRig {
            state: Mutex::new(state),
            children: Mutex::new(Vec::new()),
            teardown_on_drop: AtomicBool::new(false),
            netem: Mutex::new(None),
        })
    }

    /// Removes the rig recorded in `dir` and any namespaces of its id; fine if there is none.
    pub fn down_dir(dir: &Path) -> Result<()> {
        let dir = if dir.is_absolute() {
            dir.to_path_buf()
        } else {
            std::env::current_dir().map_err(io("resolve", dir))?.join(dir)
        };
        remove_stale(&dir, &rig_id(&dir));
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io("remove", &dir))?;
        }
        Ok(())
    }

    /// Leaves the rig up when this value is dropped.
    pub fn keep(&self) {
        self.teardown_on_drop.store(false, Ordering::SeqCst);
    }

    /// The rig dir.
    pub fn dir(&self) -> PathBuf {
        self.lock().dir.clone()
    }

    /// The log file of a host's daemon.
    pub fn log_path(&self, host: &str) -> PathBuf {
        self.lock().dir.join(host).join("daemon.log")
    }

    /// The network namespace of a host.
    pub fn netns(&self, host: &str) -> Result<String> {
        Ok(self.host(host)?.netns)
    }

    /// Starts `argv` as the daemon of `host`, inside its namespaces (powering it on if needed).
    pub fn spawn(&self, host: &str, argv: &[String]) -> Result<()> {
        self.spawn_with_env(host, argv, &[])
    }

    /// [`NetnsRig::spawn`] with extra environment variables for the daemon.
    pub fn spawn_with_env(&self, host: &str, argv: &[String], env: &[(String, String)]) -> Result<()> {
        let h = self.host(host)?;
        let init = self.power_on(&h)?;
        let log = self.log_path(host);
        if let Some(parent) = log.parent() {
            fs::create_dir_all(parent).map_err(io("create dir", parent))?;
        }
        let file = fs::OpenOptions::new().create(true).append(true).open(&log).map_err(io("open log", &log))?;
        let err = file.try_clone().map_err(io("open log", &log))?;
        let mut cmd = without_inherited_fds("nsenter");
        cmd.args(["-t", &init.to_string(), "-n", "-p", "-m", "--"])
            .args(argv)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .process_group(0);
        let child = cmd.spawn().map_err(|source| Error::Spawn { program: "nsenter".to_string(), source })?;
        let pid = child.id() as i32;
        debug!(host, pid, argv = ?argv, "started daemon");
        self.reap();
        self.lock_children().push(child);
        self.update(host, |s| s.launcher_pid = Some(pid))?;
        // nsenter forks the daemon into the pid namespace; wait for it to be there
        let _ = proc::wait_until("daemon process", Duration::from_secs(10), Duration::from_millis(5), || {
            !proc::alive(pid) || proc::children(pid).into_iter().any(proc::alive)
        });
        if self.daemon_pid(host)?.is_none() {
            return Err(Error::DaemonNotRunning(format!("{host} (it exited at once; see {})", log.display())));
        }
        Ok(())
    }

    /// Pid (in the root pid namespace) of the host's daemon, if it runs.
    pub fn daemon_pid(&self, host: &str) -> Result<Option<i32>> {
        let h = self.host(host)?;
        self.reap();
        Ok(h.launcher_pid
            .filter(|&p| proc::alive(p))
            .and_then(|p| proc::children(p).into_iter().find(|&c| proc::alive(c))))
    }

    /// Pid of the host's init, if the host is powered.
    pub fn init_pid(&self, host: &str) -> Result<Option<i32>> {
        Ok(proc::pid_ns_init(&self.host(host)?.netns))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_children(&self) -> std::sync::MutexGuard<'_, Vec<Child>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Collects exited children so they do not linger as zombies.
    fn reap(&self) {
        self.lock_children().retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
    }

    fn host(&self, name: &str) -> Result<HostState> {
        self.lock().hosts.iter().find(|h| h.name == name).cloned().ok_or_else(|| Error::UnknownHost(name.to_string()))
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut HostState)) -> Result<()> {
        {
            let mut st = self.lock();
            let h = st.hosts.iter_mut().find(|h| h.name == name).ok_or_else(|| Error::UnknownHost(name.to_string()))?;
            f(h);
        }
        self.save()
    }

    fn save(&self) -> Result<()> {
        let st = self.lock().clone();
        let path = state_path(&st.dir);
        let tmp = path.with_extension("json.tmp");
        let text =
            serde_json::to_string_pretty(&st).map_err(|source| Error::WriteJson { path: path.clone(), source })?;
        fs::write(&tmp, text).map_err(io("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io("rename", &path))
    }

    fn add_netns(&self, name: &str) -> Result<()> {
        // record first: a crash between the two steps still leaves a trace for cleanup
        self.lock().namespaces.push(name.to_string());
        self.save()?;
        ip(&["netns", "add", name], "create namespace")?;
        ip(&["-n", name, "link", "set", "lo", "up"], "set lo up")?;
        Ok(())
    }

    fn build(&self) -> Result<()> {
        let st = self.lock().clone();
        let sw = st.switch_ns.as_str();
        self.add_netns(sw)?;
        let bridges: &[&str] = match st.topology {
            Topology::Flat => &["br0"],
            Topology::Routed => &["br0", "br1"],
        };
        for br in bridges {
            ip(&["-n", sw, "link", "add", br, "type", "bridge"], "create bridge")?;
            ip(&["-n", sw, "link", "set", br, "up"], "set bridge up")?;
        }
        if let Some(link) = &st.access_link {
            ip(
                &["-n", sw, "link", "add", "host", "type", "veth", "peer", "name", link, "netns", "1"],
                "create access link",
            )?;
            ip(&["-n", sw, "link", "set", "host", "master", "br0", "up"], "attach port")?;
            ip(&["addr", "add", "10.77.0.250/24", "dev", link], "add access address")?;
            ip(&["link", "set", link, "up"], "set access link up")?;
        }
        if let Some(r) = &st.router_ns {
            self.add_netns(r)?;
            for (i, br) in bridges.iter().enumerate() {
                let port = format!("r{i}");
                let inner = format!("eth{i}");
                ip(
                    &["-n", sw, "link", "add", &port, "type", "veth", "peer", "name", &inner, "netns", r],
                    "create veth",
                )?;
                ip(&["-n", sw, "link", "set", &port, "master", br, "up"], "attach port")?;
                ip(&["-n", r, "addr", "add", &format!("10.77.{i}.254/24"), "dev", &inner], "add address")?;
                ip(&["-n", r, "link", "set", &inner, "up"], "set link up")?;
            }
            proc::checked(
                "enable forwarding",
                "ip",
                &proc::args(&["netns", "exec", r, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]),
            )?;
        }
        for h in &st.hosts {
            self.add_netns(&h.netns)?;
            let br = if h.address.octets()[2] == 1 { "br1" } else { "br0" };
            ip(
                &["-n", sw, "link", "add", &h.port, "type", "veth", "peer", "name", "eth0", "netns", &h.netns],
                "create veth",
            )?;
            ip(&["-n", sw, "link", "set", &h.port, "master", br, "up"], "attach port")?;
            ip(&["-n", &h.netns, "addr", "add", &format!("{}/{}", h.address, h.prefix), "dev", "eth0"], "add address")?;
            ip(&["-n", &h.netns, "link", "set", "eth0", "up"], "set link up")?;
            if let Some(gw) = h.gateway {
                ip(&["-n", &h.netns, "route", "add", "default", "via", &gw.to_string()], "add route")?;
            }
            let host_dir = st.dir.join(&h.name);
            // a crashed run leaves its hosts' data behind: a node must not start with another
            // cluster's state (or append to its log)
            if host_dir.exists() {
                if let Err(e) = fs::remove_dir_all(&host_dir) {
                    warn!(dir = %host_dir.display(), error = %e, "cannot remove a stale host dir");
                }
            }
            fs::create_dir_all(&h.data_dir).map_err(io("create dir", &h.data_dir))?;
            fs::create_dir_all(&host_dir).map_err(io("create dir", &host_dir))?;
        }
        for h in &st.hosts {
            let h = self.host(&h.name)?;
            self.power_on(&h)?;
        }
        info!(id = %st.id, hosts = st.hosts.len(), dir = %st.dir.display(), "rig up");
        Ok(())
    }

    /// Starts the host's init if it is not running; returns its pid.
    fn power_on(&self, h: &HostState) -> Result<i32> {
        if let Some(pid) = proc::pid_ns_init(&h.netns) {
            return Ok(pid);
        }
        // a host powered off had its link taken down; a fresh host's link is up already
        ip(&["-n", &h.netns, "link", "set", "eth0", "up"], "set link up")?;
        // nsenter, not `ip netns exec`: the latter remounts /sys in a new mount namespace, which
        // hides /sys/fs/cgroup from the node (and its containers would get no cgroups).
        let net = format!("--net=/run/netns/{}", h.netns);
        let child = without_inherited_fds("nsenter")
            .args([net.as_str(), "unshare", "--pid", "--fork", "--kill-child", "--mount-proc"])
            .args(["bash", "-c", "trap '' TERM HUP INT; while :; do sleep 3600 & wait $!; done"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|source| Error::Spawn { program: "nsenter unshare".to_string(), source })?;
        self.lock_children().push(child);
        let mut init = None;
        proc::wait_until(&format!("init of {}", h.name), Duration::from_secs(10), Duration::from_millis(20), || {
            init = proc::pid_ns_init(&h.netns);
            init.is_some()
        })?;
        init.ok_or_else(|| Error::HostDown(h.name.clone()))
    }

    fn ns_of_any(&self, host: &str) -> Result<String> {
        Ok(self.host(host)?.netns)
    }

    fn nft(&self, netns: &str, script: &str, op: &'static str) -> Result<ExecOutput> {
        proc::checked(op, "ip", &proc::args(&["netns", "exec", netns, "nft", script]))
    }

    fn netem_available(&self) -> bool {
        let mut cached = self.netem.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = *cached {
            return v;
        }
        let sw = self.lock().switch_ns.clone();
        let probe = "shoal-hil-probe";
        let _ = ip(&["-n", &sw, "link", "add", probe, "type", "dummy"], "create probe");
        let ok = proc::output(
            "tc",
            &proc::args(&["-n", &sw, "qdisc", "add", "dev", probe, "root", "netem", "delay", "1ms"]),
        )
        .map(|o| o.success())
        .unwrap_or(false);
        let _ = ip(&["-n", &sw, "link", "del", probe], "delete probe");
        *cached = Some(ok);
        ok
    }
}

impl Drop for NetnsRig {
    fn drop(&mut self) {
        if self.teardown_on_drop.load(Ordering::SeqCst) {
            if let Err(e) = self.down() {
                warn!(error = %e, "rig teardown failed");
            }
        }
    }
}

impl Rig for NetnsRig {
    fn info(&self) -> RigInfo {
        let st = self.lock();
        let arch = std::env::consts::ARCH.to_string();
        let to_info =
            |h: &HostState| HostInfo { name: h.name.clone(), address: h.address.to_string(), arch: arch.clone() };
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        RigInfo {
            kind: "netns".to_string(),
            name: st.id.clone(),
            hosts: st.hosts.iter().filter(|h| h.runs_shoal).map(to_info).collect(),
            client: st.hosts.iter().find(|h| !h.runs_shoal).map(to_info),
            notes: format!(
                "network namespaces on one machine ({} cpus), {:?} topology, kernel {}",
                std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                st.topology,
                kernel.trim()
            ),
        }
    }

    fn hosts(&self) -> Vec<String> {
        self.lock().hosts.iter().filter(|h| h.runs_shoal).map(|h| h.name.clone()).collect()
    }

    fn client(&self) -> Option<String> {
        self.lock().hosts.iter().find(|h| !h.runs_shoal).map(|h| h.name.clone())
    }

    fn address(&self, host: &str) -> Result<IpAddr> {
        Ok(IpAddr::V4(self.host(host)?.address))
    }

    fn data_dir(&self, host: &str) -> Result<PathBuf> {
        Ok(self.host(host)?.data_dir)
    }

    fn start(&self, host: &str, launch: &Launch) -> Result<()> {
        let h = self.host(host)?;
        if !h.runs_shoal {
            return Err(Error::Unsupported("start shoal on the client host"));
        }
        self.update(host, |s| s.launch = Some(launch.clone()))?;
        if self.is_running(host)? {
            return Ok(());
        }
        let daemon_override = self.lock().daemon_override.clone();
        let dir = self.lock().dir.clone();
        let argv = match daemon_override {
            Some(argv) => argv,
            None => {
                let mut argv = vec![
                    h.binary.to_string_lossy().into_owned(),
                    "up".to_string(),
                    "--data-dir".to_string(),
                    h.data_dir.to_string_lossy().into_owned(),
                    "--name".to_string(),
                    h.name.clone(),
                    "--advertise".to_string(),
                    h.address.to_string(),
                ];
                if let Some(config) = &launch.config {
                    let path = dir.join(&h.name).join("config.toml");
                    fs::write(&path, config).map_err(io("write", &path))?;
                    argv.push("--config".to_string());
                    argv.push(path.to_string_lossy().into_owned());
                }
                if let Some(join) = &launch.join {
                    argv.push("--join".to_string());
                    argv.push(join.clone());
                }
                argv.extend(launch.extra_args.iter().cloned());
                argv
            }
        };
        // The join token goes in the environment, as the systemd unit does, never on argv.
        let mut env = launch.env.clone();
        if let Some(token) = &launch.token {
            env.push(("SHOAL_TOKEN".to_string(), token.clone()));
        }
        self.spawn_with_env(host, &argv, &env)
    }

    fn restart(&self, host: &str) -> Result<()> {
        let launch = self.host(host)?.launch.unwrap_or_default();
        self.start(host, &launch)
    }

    fn stop(&self, host: &str, grace: Duration) -> Result<()> {
        let Some(pid) = self.daemon_pid(host)? else {
            return Ok(());
        };
        proc::signal(pid, Signal::SIGCONT);
        proc::signal(pid, Signal::SIGTERM);
        if proc::wait_until("daemon exit", grace, Duration::from_millis(20), || !proc::alive(pid)).is_err() {
            warn!(host, pid, "daemon ignored SIGTERM, killing it");
            proc::signal(pid, Signal::SIGKILL);
            proc::wait_until("daemon exit", Duration::from_secs(10), Duration::from_millis(20), || !proc::alive(pid))?;
        }
        self.reap();
        self.update(host, |s| s.launcher_pid = None)
    }

    fn power_off(&self, host: &str) -> Result<()> {
        let h = self.host(host)?;
        if let Some(init) = proc::pid_ns_init(&h.netns) {
            proc::signal(init, Signal::SIGKILL);
        }
        // anything else in the host's network namespace (commands run while it was down)
        for pid in proc::pids_in_netns(&h.netns) {
            proc::signal(pid, Signal::SIGKILL);
        }
        proc::wait_until(&format!("power off of {host}"), Duration::from_secs(10), Duration::from_millis(10), || {
            proc::pids_in_netns(&h.netns).iter().all(|&p| !proc::alive(p))
        })?;
        // A powered-off machine is gone from the wire: its kernel must not keep answering ARP,
        // forwarding or resetting connections, and the addresses it held at run time (a
        // LoadBalancer IP) do not survive the reboot.
        ip(&["-n", &h.netns, "link", "set", "eth0", "down"], "set link down")?;
        for addr in run_time_addresses(&h) {
            let _ = ip(&["-n", &h.netns, "addr", "del", &addr, "dev", "eth0"], "delete address");
        }
        self.reap();
        self.update(host, |s| s.launcher_pid = None)
    }

    fn is_running(&self, host: &str) -> Result<bool> {
        Ok(self.daemon_pid(host)?.is_some())
    }

    fn freeze(&self, host: &str) -> Result<()> {
        let init = self.init_pid(host)?.ok_or_else(|| Error::HostDown(host.to_string()))?;
        let pids: Vec<i32> = proc::pids_in_pid_ns_of(init).into_iter().filter(|&p| p != init).collect();
        for &pid in &pids {
            proc::signal(pid, Signal::SIGSTOP);
        }
        proc::wait_until(&format!("{host} frozen"), Duration::from_secs(5), Duration::from_millis(5), || {
            pids.iter().all(|&p| matches!(proc::state(p), None | Some('T' | 't' | 'Z' | 'X')))
        })?;
        Ok(())
    }

    fn thaw(&self, host: &str) -> Result<()> {
        let init = self.init_pid(host)?.ok_or_else(|| Error::HostDown(host.to_string()))?;
        for pid in proc::pids_in_pid_ns_of(init) {
            proc::signal(pid, Signal::SIGCONT);
        }
        Ok(())
    }

    fn partition(&self, a: &[&str], b: &[&str]) -> Result<()> {
        let addrs = |hosts: &[&str]| -> Result<Vec<String>> {
            hosts.iter().map(|h| self.host(h).map(|s| s.address.to_string())).collect()
        };
        let (addr_a, addr_b) = (addrs(a)?, addrs(b)?);
        for (side, other) in [(a, &addr_b), (b, &addr_a)] {
            for h in side {
                let netns = self.ns_of_any(h)?;
                self.nft(&netns, &partition_script(other), "partition")?;
            }
        }
        info!(a = ?a, b = ?b, "partitioned");
        Ok(())
    }

    fn heal(&self) -> Result<()> {
        let names: Vec<String> = self.lock().hosts.iter().map(|h| h.netns.clone()).collect();
        for netns in names {
            let _ = proc::output(
                "ip",
                &proc::args(&["netns", "exec", &netns, "nft", &format!("delete table inet {PARTITION_TABLE}")]),
            );
        }
        info!("healed");
        Ok(())
    }

    fn degrade(&self, host: &str, netem: &Netem) -> Result<()> {
        self.restore(host)?;
        let h = self.host(host)?;
        let sw = self.lock().switch_ns.clone();
        let sides = [(h.netns.clone(), "eth0".to_string()), (sw, h.port.clone())];
        if self.netem_available() {
            for (ns, dev) in &sides {
                let mut args = proc::args(&["-n", ns, "qdisc", "replace", "dev", dev, "root", "netem"]);
                args.extend(netem.tc_args());
                proc::checked("degrade", "tc", &args)?;
            }
        } else {
            if netem.latency.is_some() || netem.jitter.is_some() {
                return Err(Error::NetemUnsupported { host: host.to_string(), what: "latency" });
            }
            if netem.reorder_percent.is_some() {
                return Err(Error::NetemUnsupported { host: host.to_string(), what: "reordering" });
            }
            if let Some(loss) = netem.loss_percent {
                self.nft(&h.netns, &loss_script(loss), "degrade")?;
            }
            if let Some(rate) = netem.rate_kbit {
                for (ns, dev) in &sides {
                    let args = proc::args(&[
                        "-n",
                        ns,
                        "qdisc",
                        "replace",
                        "dev",
                        dev,
                        "root",
                        "tbf",
                        "rate",
                        &format!("{rate}kbit"),
                        "burst",
                        "32kbit",
                        "latency",
                        "400ms",
                    ]);
                    proc::checked("degrade", "tc", &args)?;
                }
            }
        }
        info!(host, netem = ?netem, "degraded");
        Ok(())
    }

    fn restore(&self, host: &str) -> Result<()> {
        let h = self.host(host)?;
        let sw = self.lock().switch_ns.clone();
        for (ns, dev) in [(h.netns.as_str(), "eth0"), (sw.as_str(), h.port.as_str())] {
            let _ = proc::output("tc", &proc::args(&["-n", ns, "qdisc", "del", "dev", dev, "root"]));
        }
        let _ = proc::output(
            "ip",
            &proc::args(&["netns", "exec", &h.netns, "nft", &format!("delete table inet {LOSS_TABLE}")]),
        );
        Ok(())
    }

    fn exec_timeout(&self, host: &str, cmd: &[&str], timeout: Duration) -> Result<ExecOutput> {
        let h = self.host(host)?;
        let secs = format!("{:.3}", timeout.as_secs_f64());
        let mut args = match proc::pid_ns_init(&h.netns) {
            Some(init) => proc::args(&["nsenter", "-t", &init.to_string(), "-n", "-p", "-m", "--"]),
            None => proc::args(&["ip", "netns", "exec", &h.netns]),
        };
        args.extend(proc::args(&["timeout", "-k", "2", &secs]));
        args.extend(proc::args(cmd));
        let program = args.remove(0);
        proc::output(&program, &args)
    }

    fn shoal_path(&self, host: &str) -> Result<PathBuf> {
        Ok(self.host(host)?.binary)
    }

    fn install_binary(&self, host: &str, binary: &Path) -> Result<()> {
        let dir = self.lock().dir.join(host).join("bin");
        fs::create_dir_all(&dir).map_err(io("create dir", &dir))?;
        let target = dir.join("shoal");
        let tmp = dir.join(".shoal.new");
        fs::copy(binary, &tmp).map_err(io("copy", binary))?;
        fs::rename(&tmp, &target).map_err(io("rename", &target))?;
        self.update(host, |s| s.binary = target.clone())
    }

    fn down(&self) -> Result<()> {
        let st = self.lock().clone();
        let mut names = st.namespaces.clone();
        names.sort_by_key(|n| n.ends_with("-sw"));
        for name in &names {
            remove_netns(name);
        }
        remove_stale(&st.dir, &st.id);
        self.reap();
        for mut child in self.lock_children().drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if st.dir.exists() {
            fs::remove_dir_all(&st.dir).map_err(io("remove", &st.dir))?;
        }
        self.teardown_on_drop.store(false, Ordering::SeqCst);
        info!(id = %st.id, "rig down");
        Ok(())
    }
}

/// Addresses (`ip/prefix`) on a host's `eth0` other than the one the rig gave it.
fn run_time_addresses(h: &HostState) -> Vec<String> {
    let Ok(out) = proc::output("ip", &proc::args(&["-n", &h.netns, "-o", "addr", "show", "dev", "eth0"])) else {
        return Vec::new();
    };
    let own = format!("{}/{}", h.address, h.prefix);
    out.stdout
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6")?;
            words.next().map(str::to_string)
        })
        .filter(|a| *a != own && !a.starts_with("fe80:"))
        .collect()
}

/// The nft script that drops all traffic to and from `addresses`.
pub(crate) fn partition_script(addresses: &[String]) -> String {
    let set = addresses.join(", ");
    format!(
        "add table inet {t}; \
         add chain inet {t} input {{ type filter hook input priority -10; policy accept; }}; \
         add chain inet {t} output {{ type filter hook output priority -10; policy accept; }}; \
         add rule inet {t} input ip saddr {{ {set} }} drop; \
         add rule inet {t} output ip daddr {{ {set} }} drop",
        t = PARTITION_TABLE
    )
}

/// The nft script that drops `percent` of packets in both directions (when netem is missing).
pub(crate) fn loss_script(percent: f64) -> String {
    let per_mille = (percent * 10.0).round().clamp(0.0, 1000.0) as u32;
    let matcher = match per_mille {
        1000 => String::new(),
        n => format!("numgen random mod 1000 < {n} "),
    };
    format!(
        "add table inet {t}; \
         add chain inet {t} input {{ type filter hook input priority -5; policy accept; }}; \
         add chain inet {t} output {{ type filter hook output priority -5; policy accept; }}; \
         add rule inet {t} input iifname != lo {matcher}drop; \
         add rule inet {t} output oifname != lo {matcher}drop",
        t = LOSS_TABLE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rig_id_is_stable_and_short() {
        let a = rig_id(Path::new("/tmp/shoal-rig-a"));
        assert_eq!(a, rig_id(Path::new("/tmp/shoal-rig-a")));
        assert_ne!(a, rig_id(Path::new("/tmp/shoal-rig-b")));
        assert_eq!(a.len(), 6);
    }

    #[test]
    fn scripts_name_their_tables() {
        let p = partition_script(&["10.77.0.1".to_string(), "10.77.0.2".to_string()]);
        assert!(p.contains("ip saddr { 10.77.0.1, 10.77.0.2 } drop"));
        assert!(loss_script(30.0).contains("mod 1000 < 300 drop"));
        assert!(loss_script(100.0).contains("iifname != lo drop"));
    }

    #[test]
    fn netem_arguments() {
        let n = Netem {
            latency: Some(Duration::from_millis(50)),
            jitter: Some(Duration::from_millis(5)),
            loss_percent: Some(30.0),
            reorder_percent: Some(10.0),
            rate_kbit: Some(1000),
        };
        assert_eq!(n.tc_args(), ["delay", "50000us", "5000us", "loss", "30%", "reorder", "10%", "rate", "1000kbit"]);
    }
}
