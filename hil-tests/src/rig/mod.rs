//! Rigs: sets of hosts the suite can start, stop, cut off and power-cycle.

pub(crate) mod netns;
pub(crate) mod ssh;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Result;

pub use netns::{NetnsOptions, NetnsRig, Topology};
pub use ssh::{Launcher, SshHost, SshRig, SshRigFile};

/// What a command run on a host printed and how it ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutput {
    /// Exit status; -1 when killed by a signal. 124 or 137 when the command ran past its timeout.
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl ExecOutput {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// Was stopped by its timeout (the `timeout` wrapper's 124, or 137 after SIGKILL).
    pub fn timed_out(&self) -> bool {
        self.status == 124 || self.status == 137
    }
}

/// How `shoal up` is started on one host; kept by the rig so a power cycle restarts it the same way.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    /// `--join HOST[:PORT]`.
    pub join: Option<String>,
    /// `--token TOKEN`.
    pub token: Option<String>,
    /// Contents of the config file passed with `--config` (written next to the data dir).
    pub config: Option<String>,
    /// Extra arguments appended after the standard ones.
    pub extra_args: Vec<String>,
    /// Extra environment variables for the daemon (for instance a faked clock).
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

/// A network impairment applied to the link between a host and its switch, both directions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Netem {
    /// Added one-way delay.
    pub latency: Option<Duration>,
    /// Jitter around the delay.
    pub jitter: Option<Duration>,
    /// Packet loss in percent (0..=100).
    pub loss_percent: Option<f64>,
    /// Percent of packets sent out of order (needs a latency).
    pub reorder_percent: Option<f64>,
    /// Bandwidth cap in kbit/s.
    pub rate_kbit: Option<u64>,
}

impl Netem {
    /// Only packet loss.
    pub fn loss(percent: f64) -> Self {
        Netem { loss_percent: Some(percent), ..Netem::default() }
    }

    /// The `netem` arguments of `tc qdisc ... netem ARGS`.
    pub fn tc_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(latency) = self.latency {
            args.push("delay".to_string());
            args.push(format!("{}us", latency.as_micros()));
            if let Some(jitter) = self.jitter {
                args.push(format!("{}us", jitter.as_micros()));
            }
        }
        if let Some(loss) = self.loss_percent {
            args.push("loss".to_string());
            args.push(format!("{loss}%"));
        }
        if let Some(reorder) = self.reorder_percent {
            args.push("reorder".to_string());
            args.push(format!("{reorder}%"));
        }
        if let Some(rate) = self.rate_kbit {
            args.push("rate".to_string());
            args.push(format!("{rate}kbit"));
        }
        args
    }
}

/// A description of a rig for reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RigInfo {
    /// `netns` or `ssh`.
    pub kind: String,
    /// Rig id or bench name.
    pub name: String,
    /// Hosts that run shoal, with their addresses and architectures.
    pub hosts: Vec<HostInfo>,
    /// The client host without shoal, if any.
    pub client: Option<HostInfo>,
    /// Free text: topology, kernel, ...
    pub notes: String,
}

/// One host in a [`RigInfo`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub name: String,
    pub address: String,
    pub arch: String,
}

/// A set of hosts under the suite's control. Host names are `n1`, `n2`, ... on a netns rig and
/// whatever the rig file says on an ssh rig; the client host (no shoal) is separate.
pub trait Rig: Send + Sync {
    /// Describes the rig for reports.
    fn info(&self) -> RigInfo;
    /// The hosts that can run shoal, in order.
    fn hosts(&self) -> Vec<String>;
    /// The client host without shoal, if the rig has one.
    fn client(&self) -> Option<String>;
    /// The address peers use to reach `host`.
    fn address(&self, host: &str) -> Result<IpAddr>;
    /// The data dir of shoal on `host` (a path on that host).
    fn data_dir(&self, host: &str) -> Result<PathBuf>;
    /// Starts `shoal up` on `host` (powering the host on first if needed).
    fn start(&self, host: &str, launch: &Launch) -> Result<()>;
    /// Starts `shoal up` again with the last [`Launch`] given to [`Rig::start`].
    fn restart(&self, host: &str) -> Result<()>;
    /// Stops shoal gracefully (SIGTERM, then SIGKILL after `grace`). Containers are left alone.
    fn stop(&self, host: &str, grace: Duration) -> Result<()>;
    /// Cuts the power: kill -9 of every process of the host, containers included, at once.
    fn power_off(&self, host: &str) -> Result<()>;
    /// [`Rig::power_off`] then [`Rig::restart`].
    fn power_cycle(&self, host: &str) -> Result<()> {
        self.power_off(host)?;
        self.restart(host)
    }
    /// Whether shoal is running on `host`.
    fn is_running(&self, host: &str) -> Result<bool>;
    /// SIGSTOP to every process of the host.
    fn freeze(&self, host: &str) -> Result<()>;
    /// SIGCONT to every process of the host.
    fn thaw(&self, host: &str) -> Result<()>;
    /// Drops all traffic between every host of `a` and every host of `b` (both directions).
    fn partition(&self, a: &[&str], b: &[&str]) -> Result<()>;
    /// Removes every partition.
    fn heal(&self) -> Result<()>;
    /// Impairs the link of `host` (both directions), replacing an earlier impairment.
    fn degrade(&self, host: &str, netem: &Netem) -> Result<()>;
    /// Removes the impairment of `host`'s link.
    fn restore(&self, host: &str) -> Result<()>;
    /// Runs a command on `host`; a command still running after `timeout` is killed (status 124/137).
    fn exec_timeout(&self, host: &str, cmd: &[&str], timeout: Duration) -> Result<ExecOutput>;
    /// Runs a command on `host` with a two-minute timeout.
    fn exec(&self, host: &str, cmd: &[&str]) -> Result<ExecOutput> {
        self.exec_timeout(host, cmd, Duration::from_secs(120))
    }
    /// The path of the shoal binary on `host`.
    fn shoal_path(&self, host: &str) -> Result<PathBuf>;
    /// Installs `binary` as the shoal of `host`; used by the next start (rolling upgrades).
    fn install_binary(&self, host: &str, binary: &std::path::Path) -> Result<()>;
    /// Tears everything down: processes, namespaces, links, rules, state.
    fn down(&self) -> Result<()>;
}
