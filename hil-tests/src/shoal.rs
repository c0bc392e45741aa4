//! Talking to shoal on a rig's hosts through its CLI, and forming clusters.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::error::{Error, Result};
use crate::history::Outcome;
use crate::rig::{Launch, Rig};

/// Finds the shoal binary: `$SHOAL_BIN`, else `target/debug/shoal`, else `target/release/shoal`
/// (in `$CARGO_TARGET_DIR`, the current dir and the workspace this crate was built in).
pub fn find_shoal_bin() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("SHOAL_BIN") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        return Err(Error::ShoalBinaryMissing { looked: format!("SHOAL_BIN={}", path.display()) });
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        roots.push(PathBuf::from(dir));
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd.join("target"));
    }
    roots.push(workspace_root().join("target"));
    let candidates: Vec<PathBuf> = ["debug", "release"]
        .iter()
        .flat_map(|profile| roots.iter().map(move |r| r.join(profile).join("shoal")))
        .collect();
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| Error::ShoalBinaryMissing {
        looked: candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
    })
}

/// The workspace this crate belongs to.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// One member in `shoal status --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub addr: String,
    pub role: String,
    pub alive: bool,
}

/// `shoal status --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    #[serde(default)]
    pub leader: Option<String>,
    #[serde(default)]
    pub term: u64,
    #[serde(default)]
    pub applied_index: u64,
    #[serde(default)]
    pub members: Vec<Member>,
}

impl Status {
    /// Members marked alive.
    pub fn alive(&self) -> Vec<&str> {
        self.members.iter().filter(|m| m.alive).map(|m| m.name.as_str()).collect()
    }

    /// Members with the voter role.
    pub fn voters(&self) -> Vec<&str> {
        self.members.iter().filter(|m| m.role == "voter").map(|m| m.name.as_str()).collect()
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }
}

/// Timeout of one CLI call that should answer at once.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `shoal SUBCOMMAND... --data-dir DIR ARGS...` on `host`; `args` starts with the subcommand
/// words (one word, or two for `kv put` / `kv get`), then the rest.
pub(crate) fn run_shoal(rig: &dyn Rig, host: &str, args: &[&str], timeout: Duration) -> Result<crate::rig::ExecOutput> {
    let bin = rig.shoal_path(host)?.to_string_lossy().into_owned();
    let data_dir = rig.data_dir(host)?.to_string_lossy().into_owned();
    let words = if args.first() == Some(&"kv") { 2 } else { 1 }.min(args.len());
    let mut cmd: Vec<&str> = vec![bin.as_str()];
    cmd.extend_from_slice(&args[..words]);
    cmd.extend(["--data-dir", data_dir.as_str()]);
    cmd.extend_from_slice(&args[words..]);
    rig.exec_timeout(host, &cmd, timeout)
}

/// Exit status of `shoal kv put` meaning the write was certainly not applied (the local daemon
/// could not be reached, or refused it before sending it anywhere).
pub const KV_NOT_APPLIED: i32 = 3;

fn checked(rig: &dyn Rig, host: &str, op: &'static str, args: &[&str]) -> Result<String> {
    let out = run_shoal(rig, host, args, CLI_TIMEOUT)?;
    if !out.success() {
        return Err(Error::Command {
            op,
            command: format!("shoal {} on {host}", args.join(" ")),
            status: out.status,
            stderr: out.stderr.trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// `shoal status --json` on `host`.
pub fn status(rig: &dyn Rig, host: &str) -> Result<Status> {
    let out = checked(rig, host, "shoal status", &["status", "--json"])?;
    serde_json::from_str(&out).map_err(|source| Error::ParseStatus { host: host.to_string(), source })
}

/// `shoal token` on `host`.
pub fn token(rig: &dyn Rig, host: &str) -> Result<String> {
    Ok(checked(rig, host, "shoal token", &["token"])?.trim().to_string())
}

/// `shoal kubeconfig [--server URL]` on `host`.
pub fn kubeconfig(rig: &dyn Rig, host: &str, server: Option<&str>) -> Result<String> {
    match server {
        Some(url) => checked(rig, host, "shoal kubeconfig", &["kubeconfig", "--server", url]),
        None => checked(rig, host, "shoal kubeconfig", &["kubeconfig"]),
    }
}

/// `shoal kubeconfig --user USER --group G...` on `host`: a kubeconfig with a certificate for
/// that user and groups (rights from RBAC bindings).
pub fn kubeconfig_for(rig: &dyn Rig, host: &str, user: &str, groups: &[&str]) -> Result<String> {
    let mut args = vec!["kubeconfig", "--user", user];
    for g in groups {
        args.extend(["--group", *g]);
    }
    checked(rig, host, "shoal kubeconfig", &args)
}

/// `shoal kv put KEY VALUE` through `host`: exit 0 is an acknowledged write; anything else
/// (error, timeout) may or may not have been applied.
pub fn kv_put(rig: &dyn Rig, host: &str, key: &str, value: &str, timeout: Duration) -> Outcome {
    match run_shoal(rig, host, &["kv", "put", key, value], timeout) {
        Ok(out) if out.success() => Outcome::Ok(None),
        Ok(out) if out.status == KV_NOT_APPLIED => Outcome::Failed,
        Ok(out) => {
            debug!(host, key, status = out.status, stderr = %out.stderr.trim(), "put not acknowledged");
            Outcome::Unknown
        }
        Err(_) => Outcome::Failed,
    }
}

/// `shoal kv get KEY` through `host`: exit 0 with the value on stdout; exit 1 with `not found` on
/// stderr (or nothing printed) = no such key.
pub fn kv_get(rig: &dyn Rig, host: &str, key: &str, timeout: Duration) -> Outcome {
    match run_shoal(rig, host, &["kv", "get", key], timeout) {
        Ok(out) if out.success() => {
            let value = out.stdout.strip_suffix('\n').unwrap_or(&out.stdout).to_string();
            Outcome::Ok((!value.is_empty()).then_some(value))
        }
        Ok(out) if out.status == 1 && out.stderr.to_ascii_lowercase().contains("not found") => Outcome::Ok(None),
        Ok(_) => Outcome::Unknown,
        Err(_) => Outcome::Failed,
    }
}

/// A cluster being driven on a rig.
pub struct Cluster<'a> {
    pub rig: &'a dyn Rig,
    /// Hosts started so far, in order; the first created the cluster.
    pub members: Vec<String>,
    pub token: String,
    /// Config file contents given to every node.
    pub config: Option<String>,
}

/// How long cluster operations may take before a scenario gives up.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

impl<'a> Cluster<'a> {
    /// Starts `hosts[0]` as a new cluster, then joins the others to it, and waits until every
    /// node sees all of them alive under one leader.
    pub fn form(rig: &'a dyn Rig, hosts: &[String], config: Option<String>) -> Result<Cluster<'a>> {
        let first = hosts.first().ok_or(Error::Unsupported("form a cluster of no hosts"))?;
        rig.start(first, &Launch { config: config.clone(), ..Launch::default() })?;
        let mut token_value = String::new();
        crate::proc::wait_until(
            &format!("join token of {first}"),
            CONVERGE_TIMEOUT,
            Duration::from_millis(200),
            || {
                if let Ok(t) = token(rig, first) {
                    token_value = t;
                }
                !token_value.is_empty()
            },
        )?;
        let mut cluster = Cluster { rig, members: vec![first.clone()], token: token_value, config };
        cluster.wait_converged(CONVERGE_TIMEOUT)?;
        for host in &hosts[1..] {
            cluster.start_joining(host)?;
        }
        cluster.wait_converged(CONVERGE_TIMEOUT)?;
        info!(members = ?cluster.members, "cluster formed");
        Ok(cluster)
    }

    /// The launch of a node joining this cluster.
    pub fn launch(&self) -> Result<Launch> {
        let first = self.members.first().ok_or(Error::Unsupported("join a cluster of no hosts"))?;
        Ok(Launch {
            join: Some(self.rig.address(first)?.to_string()),
            token: Some(self.token.clone()),
            config: self.config.clone(),
            ..Launch::default()
        })
    }

    /// Starts `host` joining the cluster (does not wait).
    pub fn start_joining(&mut self, host: &str) -> Result<()> {
        let launch = self.launch()?;
        self.rig.start(host, &launch)?;
        if !self.members.iter().any(|m| m == host) {
            self.members.push(host.to_string());
        }
        Ok(())
    }

    /// Whether every host in `hosts` answers, sees every one of them alive, and all agree on a leader.
    pub fn converged(&self, hosts: &[String]) -> Option<(String, Vec<Status>)> {
        let mut statuses = Vec::new();
        for h in hosts {
            let st = status(self.rig, h).ok()?;
            if hosts.iter().any(|m| !st.member(m).is_some_and(|mm| mm.alive)) {
                return None;
            }
            statuses.push(st);
        }
        let leader = statuses.first()?.leader.clone()?;
        if !hosts.contains(&leader) || statuses.iter().any(|s| s.leader.as_deref() != Some(leader.as_str())) {
            return None;
        }
        // Converged means fault tolerant too: as many voters as the cluster keeps.
        let want = if hosts.len() >= 5 { 5 } else { hosts.len().min(3) };
        if statuses.first()?.voters().len() < want {
            return None;
        }
        Some((leader, statuses))
    }

    /// Waits until every member converged; returns the leader.
    pub fn wait_converged(&self, timeout: Duration) -> Result<String> {
        self.wait_converged_on(&self.members, timeout)
    }

    /// Waits until `hosts` converged; returns the leader.
    pub fn wait_converged_on(&self, hosts: &[String], timeout: Duration) -> Result<String> {
        let mut leader = String::new();
        crate::proc::wait_until(
            &format!("{hosts:?} alive under one leader"),
            timeout,
            Duration::from_millis(200),
            || match self.converged(hosts) {
                Some((l, _)) => {
                    leader = l;
                    true
                }
                None => false,
            },
        )?;
        Ok(leader)
    }

    /// The leader as `host` sees it.
    pub fn leader_seen_by(&self, host: &str) -> Option<String> {
        status(self.rig, host).ok().and_then(|s| s.leader)
    }

    /// Waits until some host of `hosts` reports a leader among `hosts`; returns it.
    pub fn wait_leader_among(&self, hosts: &[String], timeout: Duration) -> Result<String> {
        let mut found = String::new();
        crate::proc::wait_until(&format!("a leader among {hosts:?}"), timeout, Duration::from_millis(100), || {
            for h in hosts {
                if let Some(l) = self.leader_seen_by(h) {
                    if hosts.contains(&l) {
                        found = l;
                        return true;
                    }
                }
            }
            false
        })?;
        Ok(found)
    }
}

/// Milliseconds between two instants.
pub fn ms(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_json() {
        let text = r#"{"name":"n1","leader":"n2","term":3,"applied_index":17,
            "members":[{"name":"n1","addr":"10.77.0.1:7443","role":"voter","alive":true},
                       {"name":"n4","addr":"10.77.0.4:7443","role":"learner","alive":false}],"extra":1}"#;
        let st: Status = serde_json::from_str(text).unwrap();
        assert_eq!(st.leader.as_deref(), Some("n2"));
        assert_eq!(st.alive(), ["n1"]);
        assert_eq!(st.voters(), ["n1"]);
        let no_leader: Status =
            serde_json::from_str(r#"{"name":"n1","leader":null,"term":0,"applied_index":0,"members":[]}"#).unwrap();
        assert_eq!(no_leader.leader, None);
    }
}
