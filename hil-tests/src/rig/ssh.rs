//! A rig of real boards reached over ssh, described by a TOML file (see docs/hil.md).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::info;

use super::netns::{partition_script, PARTITION_TABLE};
use super::{ExecOutput, HostInfo, Launch, Netem, Rig, RigInfo};
use crate::error::{Error, Result};
use crate::proc;

/// The systemd unit shoal runs in on a board.
pub const UNIT: &str = "shoal-hil";

/// CPU architecture of a board.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    X86_64,
    Aarch64,
}

/// The rig file.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SshRigFile {
    /// Name of the bench, for reports.
    pub name: String,
    /// Extra options for every ssh and scp call.
    #[serde(default)]
    pub ssh_options: Vec<String>,
    /// Local shoal binary for x86_64 boards.
    pub binary_x86_64: Option<PathBuf>,
    /// Local shoal binary for aarch64 boards.
    pub binary_aarch64: Option<PathBuf>,
    /// Where the binary goes on each board.
    #[serde(default = "default_remote_binary")]
    pub remote_binary: PathBuf,
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
    /// Run locally after the kill -9 of a power cut (for instance switching a smart plug off).
    pub power_off_command: Option<String>,
    /// Run locally before the host is started again after a power cut.
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

impl SshRigFile {
    /// Parses and checks a rig file's text.
    pub fn parse(path: &Path, text: &str) -> Result<SshRigFile> {
        let file: SshRigFile =
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
        for h in file.hosts.iter().filter(|h| !h.client) {
            let bin = match h.arch {
                Arch::X86_64 => &file.binary_x86_64,
                Arch::Aarch64 => &file.binary_aarch64,
            };
            if bin.is_none() {
                return Err(invalid(format!("host {} is {:?} but no binary for that arch is set", h.name, h.arch)));
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

/// Boards over ssh. Not tested on this machine beyond parsing: it needs a bench.
pub struct SshRig {
    file: SshRigFile,
    launches: Mutex<std::collections::HashMap<String, Launch>>,
    uploaded: Mutex<std::collections::HashSet<String>>,
}

impl SshRig {
    pub fn new(file: SshRigFile) -> SshRig {
        SshRig { file, launches: Mutex::default(), uploaded: Mutex::default() }
    }

    fn host(&self, name: &str) -> Result<&SshHost> {
        self.file.hosts.iter().find(|h| h.name == name).ok_or_else(|| Error::UnknownHost(name.to_string()))
    }

    fn ssh(&self, host: &SshHost, script: &str) -> Result<ExecOutput> {
        let mut args = self.file.ssh_options.clone();
        args.extend(proc::args(&[
            "-p",
            &host.port.to_string(),
            &format!("{}@{}", host.user, host.address),
            "--",
            script,
        ]));
        proc::output("ssh", &args)
    }

    fn ssh_checked(&self, host: &SshHost, op: &'static str, script: &str) -> Result<ExecOutput> {
        let out = self.ssh(host, script)?;
        if out.status != 0 {
            return Err(Error::Command {
                op,
                command: format!("ssh {} {script}", host.name),
                status: out.status,
                stderr: out.stderr,
            });
        }
        Ok(out)
    }

    fn local(&self, op: &'static str, command: &str) -> Result<ExecOutput> {
        proc::checked(op, "sh", &proc::args(&["-c", command]))
    }

    fn binary_for(&self, host: &SshHost) -> Result<PathBuf> {
        let bin = match host.arch {
            Arch::X86_64 => &self.file.binary_x86_64,
            Arch::Aarch64 => &self.file.binary_aarch64,
        };
        bin.clone().ok_or(Error::Unsupported("start shoal on a board whose arch has no binary"))
    }

    fn upload(&self, host: &SshHost, local: &Path) -> Result<()> {
        let remote = self.file.remote_binary.to_string_lossy().into_owned();
        let tmp = format!("{remote}.new");
        let mut args = self.file.ssh_options.clone();
        args.extend(proc::args(&[
            "-P",
            &host.port.to_string(),
            &local.to_string_lossy(),
            &format!("{}@{}:{}", host.user, host.address, tmp),
        ]));
        proc::checked("copy binary", "scp", &args)?;
        self.ssh_checked(
            host,
            "install binary",
            &format!("chmod 755 {0} && mv {0} {1}", shell_quote(&tmp), shell_quote(&remote)),
        )?;
        Ok(())
    }
}

impl Rig for SshRig {
    fn info(&self) -> RigInfo {
        let to_info = |h: &SshHost| HostInfo {
            name: h.name.clone(),
            address: h.address.to_string(),
            arch: format!("{:?}", h.arch).to_lowercase(),
        };
        RigInfo {
            kind: "ssh".to_string(),
            name: self.file.name.clone(),
            hosts: self.file.hosts.iter().filter(|h| !h.client).map(to_info).collect(),
            client: self.file.hosts.iter().find(|h| h.client).map(to_info),
            notes: "boards over ssh".to_string(),
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
        self.launches.lock().unwrap_or_else(|p| p.into_inner()).insert(host.to_string(), launch.clone());
        let first_upload = self.uploaded.lock().unwrap_or_else(|p| p.into_inner()).insert(host.to_string());
        if first_upload {
            self.upload(h, &self.binary_for(h)?)?;
        }
        if self.is_running(host)? {
            return Ok(());
        }
        let data_dir = h.data_dir.to_string_lossy().into_owned();
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
        let mut script = format!("mkdir -p {}", shell_quote(&data_dir));
        if let Some(config) = &launch.config {
            let path = format!("{data_dir}.hil-config.toml");
            script.push_str(&format!(" && printf %s {} > {}", shell_quote(config), shell_quote(&path)));
            argv.extend(["--config".to_string(), path]);
        }
        if let Some(join) = &launch.join {
            argv.extend(["--join".to_string(), join.clone()]);
        }
        if let Some(token) = &launch.token {
            argv.extend(["--token".to_string(), token.clone()]);
        }
        argv.extend(launch.extra_args.iter().cloned());
        let cmd: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
        script.push_str(&format!(
            " && (systemctl reset-failed {UNIT} 2>/dev/null; true) && systemd-run --quiet --unit={UNIT} --collect -p KillMode=control-group {}",
            cmd.join(" ")
        ));
        self.ssh_checked(h, "start shoal", &script)?;
        Ok(())
    }

    fn restart(&self, host: &str) -> Result<()> {
        let launch = self.launches.lock().unwrap_or_else(|p| p.into_inner()).get(host).cloned().unwrap_or_default();
        self.start(host, &launch)
    }

    fn stop(&self, host: &str, grace: Duration) -> Result<()> {
        let h = self.host(host)?;
        self.ssh_checked(
            h,
            "stop shoal",
            &format!(
                "systemctl stop {UNIT} -p TimeoutStopSec={}s 2>/dev/null || systemctl stop {UNIT} 2>/dev/null; true",
                grace.as_secs().max(1)
            ),
        )?;
        Ok(())
    }

    fn power_off(&self, host: &str) -> Result<()> {
        let h = self.host(host)?;
        self.ssh(h, &format!("systemctl kill -s KILL {UNIT} 2>/dev/null; pkill -9 -x shoal; true"))?;
        if let Some(cmd) = &h.power_off_command {
            self.local("power off", cmd)?;
        }
        if let Some(cmd) = &h.power_on_command {
            self.local("power on", cmd)?;
        }
        Ok(())
    }

    fn is_running(&self, host: &str) -> Result<bool> {
        Ok(self.ssh(self.host(host)?, &format!("systemctl is-active --quiet {UNIT}"))?.success())
    }

    fn freeze(&self, host: &str) -> Result<()> {
        self.ssh_checked(self.host(host)?, "freeze", &format!("systemctl kill -s STOP {UNIT}"))?;
        Ok(())
    }

    fn thaw(&self, host: &str) -> Result<()> {
        self.ssh_checked(self.host(host)?, "thaw", &format!("systemctl kill -s CONT {UNIT}"))?;
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
            self.ssh(h, &format!("nft delete table inet {PARTITION_TABLE} 2>/dev/null; true"))?;
        }
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
        self.ssh(h, &format!("timeout -k 2 {:.3} {}", timeout.as_secs_f64(), words.join(" ")))
    }

    fn shoal_path(&self, _host: &str) -> Result<PathBuf> {
        Ok(self.file.remote_binary.clone())
    }

    fn install_binary(&self, host: &str, binary: &Path) -> Result<()> {
        let h = self.host(host)?;
        self.upload(h, binary)?;
        self.uploaded.lock().unwrap_or_else(|p| p.into_inner()).insert(host.to_string());
        Ok(())
    }

    fn down(&self) -> Result<()> {
        for h in &self.file.hosts {
            self.ssh(
                h,
                &format!(
                    "systemctl kill -s KILL {UNIT} 2>/dev/null; systemctl reset-failed {UNIT} 2>/dev/null; nft delete table inet {PARTITION_TABLE} 2>/dev/null; tc qdisc del dev {} root 2>/dev/null; rm -rf {}; true",
                    shell_quote(&h.interface),
                    shell_quote(&h.data_dir.to_string_lossy())
                ),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
name = "desk-bench"
ssh_options = ["-o", "StrictHostKeyChecking=accept-new"]
binary_x86_64 = "target/x86_64-unknown-linux-musl/release/shoal"
binary_aarch64 = "target/aarch64-unknown-linux-musl/release/shoal"

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

[[host]]
name = "laptop"
address = "192.168.50.99"
arch = "x86_64"
client = true
"#;

    #[test]
    fn parses_the_documented_example() {
        let file = SshRigFile::parse(Path::new("bench.toml"), EXAMPLE).unwrap();
        assert_eq!(file.hosts.len(), 3);
        assert_eq!(file.hosts[0].user, "root");
        assert_eq!(file.hosts[0].interface, "eth0");
        assert_eq!(file.hosts[0].data_dir, PathBuf::from("/var/lib/shoal"));
        assert_eq!(file.hosts[1].arch, Arch::X86_64);
        assert_eq!(file.remote_binary, PathBuf::from("/usr/local/bin/shoal"));
        let rig = SshRig::new(file);
        assert_eq!(rig.hosts(), ["pi1", "nuc1"]);
        assert_eq!(rig.client().as_deref(), Some("laptop"));
        assert_eq!(rig.info().hosts[0].arch, "aarch64");
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
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/var/lib/shoal"), "/var/lib/shoal");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
