//! The node agent's boundary with the operating system: the container runtime (sandboxes and
//! containers) and the pod network, as traits. The agent holds them as `Arc<dyn ...>`; on a
//! node they are the thin Linux adapters below (over `shoal_runtime` and rtnetlink), in unit
//! tests the in-memory fakes of `node/testing.rs`, so the pod lifecycle (init containers,
//! restarts, probes, status) is tested without root. Host paths (the run dir under
//! `/run/shoal`, `/proc`) come from [`HostPaths`] in the agent's config.
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use shoal_runtime::{CreateOpts, Error as RuntimeError, Sandbox, State, Stats};

use super::network::{NetError, PodNetwork, Routes, Subnet};

/// Where the agent finds the host: its run dir's root and procfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    /// Per-node state (sandboxes, container state, pod files) lives in `<run>/<node>`.
    pub run: PathBuf,
    /// procfs: memory, kernel release, `sys/net/ipv4/ip_forward`, a process's namespaces.
    pub proc: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths { run: PathBuf::from("/run/shoal"), proc: PathBuf::from("/proc") }
    }
}

/// What the agent asks of a container runtime. Calls block (files, the shim, the kernel): the
/// agent makes the slow ones on the blocking pool. Container ids are the agent's
/// (`<pod uid>-<container name>`), sandbox ids the pod's short uid.
pub(crate) trait ContainerRuntime: Send + Sync {
    /// The sandbox (shared network, ipc and uts namespaces) of a pod, if it exists.
    fn open_sandbox(&self, id: &str) -> Option<Sandbox>;
    fn create_sandbox(&self, id: &str) -> Result<Sandbox, RuntimeError>;
    fn remove_sandbox(&self, sandbox: &Sandbox) -> Result<(), RuntimeError>;
    /// Creates a container from the bundle (its `config.json` written by the agent).
    fn create(&self, id: &str, bundle: &Path, opts: &CreateOpts) -> Result<(), RuntimeError>;
    fn start(&self, id: &str) -> Result<(), RuntimeError>;
    fn state(&self, id: &str) -> Result<State, RuntimeError>;
    /// SIGTERM (the image's stop signal), then SIGKILL after `grace`.
    fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;
    fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError>;
    fn stats(&self, id: &str) -> Result<Stats, RuntimeError>;
    /// Runs `cmd` in the container (an exec probe or hook): Ok when it exits 0 within
    /// `timeout`, else why not (its output, or its exit code).
    fn exec(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<(), String>;
}

/// What the agent asks of the pod network of its node.
pub(crate) trait PodNetworking: Send + Sync {
    /// The node's pod subnet (the Node's `podCIDR`).
    fn subnet(&self) -> Subnet;
    /// Marks an address as used (a pod found running at start).
    fn reserve(&self, ip: Ipv4Addr, owner: &str);
    /// Connects a pod's network namespace; returns its address.
    fn attach<'a>(&'a self, owner: &'a str, netns: &'a Path) -> BoxFuture<'a, Result<Ipv4Addr, NetError>>;
    /// Disconnects a pod and frees its address.
    fn detach<'a>(&'a self, owner: &'a str, ip: Option<Ipv4Addr>) -> BoxFuture<'a, ()>;
    /// Routes to the other nodes' pod subnets; false when a route could not be set (retried).
    fn sync_routes<'a>(&'a self, want: &'a Routes) -> BoxFuture<'a, bool>;
}

/// The container runtime of a Linux node: `shoal_runtime` with its shims, sandboxes under
/// `<run dir>/sandboxes`.
pub(crate) struct LinuxRuntime {
    pub runtime: shoal_runtime::Runtime,
    pub sandboxes: PathBuf,
}

impl ContainerRuntime for LinuxRuntime {
    fn open_sandbox(&self, id: &str) -> Option<Sandbox> {
        Sandbox::open(id, &self.sandboxes)
    }

    fn create_sandbox(&self, id: &str) -> Result<Sandbox, RuntimeError> {
        Sandbox::create(id, &self.sandboxes)
    }

    fn remove_sandbox(&self, sandbox: &Sandbox) -> Result<(), RuntimeError> {
        sandbox.remove()
    }

    fn create(&self, id: &str, bundle: &Path, opts: &CreateOpts) -> Result<(), RuntimeError> {
        self.runtime.create(id, bundle, opts).map(drop)
    }

    fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.runtime.start(id)
    }

    fn state(&self, id: &str) -> Result<State, RuntimeError> {
        self.runtime.state(id)
    }

    fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.runtime.stop(id, grace).map(drop)
    }

    fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        self.runtime.delete(id, force)
    }

    fn stats(&self, id: &str) -> Result<Stats, RuntimeError> {
        self.runtime.stats(id)
    }

    fn exec(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<(), String> {
        let chain = |e: &RuntimeError| crate::reconcile::runner::error_chain(e);
        let spec = self.runtime.spec(id).map_err(|e| chain(&e))?;
        let mut process = spec.process().clone().unwrap_or_default();
        process.set_args(Some(cmd.to_vec()));
        process.set_terminal(Some(false));
        let mut p = self.runtime.exec(id, &process, false).map_err(|e| chain(&e))?;
        p.stdin = None;
        // Drain the output so a chatty command never blocks on a full pipe.
        let readers: Vec<_> = [
            p.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            p.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|mut r| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.by_ref().take(64 * 1024).read_to_end(&mut buf);
                let _ = std::io::copy(&mut r, &mut std::io::sink());
                buf
            })
        })
        .collect();
        let deadline = Instant::now() + timeout;
        let code = loop {
            match p.try_wait() {
                Ok(Some(code)) => break code,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = p.kill(shoal_runtime::Signal::SIGKILL);
                    let _ = p.wait();
                    return Err(format!("command {cmd:?} timed out after {}s", timeout.as_secs()));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("waiting for command {cmd:?}: {e}")),
            }
        };
        let out: Vec<u8> = readers.into_iter().filter_map(|h| h.join().ok()).flatten().collect();
        if code == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&out).trim().to_string();
        if text.is_empty() {
            Err(format!("command {cmd:?} exited with {code}"))
        } else {
            Err(text)
        }
    }
}

impl PodNetworking for PodNetwork {
    fn subnet(&self) -> Subnet {
        self.subnet
    }

    fn reserve(&self, ip: Ipv4Addr, owner: &str) {
        PodNetwork::reserve(self, ip, owner)
    }

    fn attach<'a>(&'a self, owner: &'a str, netns: &'a Path) -> BoxFuture<'a, Result<Ipv4Addr, NetError>> {
        Box::pin(PodNetwork::attach(self, owner, netns))
    }

    fn detach<'a>(&'a self, owner: &'a str, ip: Option<Ipv4Addr>) -> BoxFuture<'a, ()> {
        Box::pin(PodNetwork::detach(self, owner, ip))
    }

    fn sync_routes<'a>(&'a self, want: &'a Routes) -> BoxFuture<'a, bool> {
        Box::pin(super::network::sync_routes(self.subnet, self.cluster, want))
    }
}
