//! Running local programs and finding processes by namespace in /proc.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::rig::ExecOutput;

/// Renders a command line for messages.
pub(crate) fn render(program: &str, args: &[String]) -> String {
    let mut line = program.to_string();
    for arg in args {
        line.push(' ');
        line.push_str(arg);
    }
    line
}

/// Runs a program to completion and captures its output; a non-zero exit is not an error here.
pub(crate) fn output(program: &str, args: &[String]) -> Result<ExecOutput> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn { program: program.to_string(), source })?;
    Ok(ExecOutput {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs a program and fails with `op` when it exits non-zero.
pub(crate) fn checked(op: &'static str, program: &str, args: &[String]) -> Result<ExecOutput> {
    let out = output(program, args)?;
    if out.status != 0 {
        return Err(Error::Command {
            op,
            command: render(program, args),
            status: out.status,
            stderr: out.stderr.trim().to_string(),
        });
    }
    Ok(out)
}

/// Builds an owned argument vector.
pub(crate) fn args<S: AsRef<str>>(parts: &[S]) -> Vec<String> {
    parts.iter().map(|s| s.as_ref().to_string()).collect()
}

/// All process ids currently in /proc.
pub(crate) fn all_pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok())).collect()
}

/// The namespace identity (`net:[4026...]`) of a process, if it still exists.
pub(crate) fn ns_of(pid: i32, kind: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok().map(|p| p.to_string_lossy().into_owned())
}

/// The namespace identity of a named network namespace (`/run/netns/NAME`).
pub(crate) fn netns_id(name: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(Path::new("/run/netns").join(name)).ok()?;
    Some(format!("net:[{}]", meta.ino()))
}

/// The `NSpid:` line of a process: its pid in every pid namespace from the root down.
pub(crate) fn ns_pids(pid: i32) -> Vec<i32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|rest| rest.split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// Processes whose network namespace is the named one.
pub(crate) fn pids_in_netns(name: &str) -> Vec<i32> {
    let Some(id) = netns_id(name) else {
        return Vec::new();
    };
    all_pids().into_iter().filter(|&p| ns_of(p, "net").as_deref() == Some(id.as_str())).collect()
}

/// The init (pid 1 of a child pid namespace) among the processes of a network namespace.
pub(crate) fn pid_ns_init(netns: &str) -> Option<i32> {
    pids_in_netns(netns).into_iter().find(|&p| {
        let nspids = ns_pids(p);
        nspids.len() == 2 && nspids[1] == 1
    })
}

/// Every process in the same pid namespace as `init` (init included).
pub(crate) fn pids_in_pid_ns_of(init: i32) -> Vec<i32> {
    let Some(id) = ns_of(init, "pid") else {
        return Vec::new();
    };
    all_pids().into_iter().filter(|&p| ns_of(p, "pid").as_deref() == Some(id.as_str())).collect()
}

/// Direct children of a process.
pub(crate) fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| s.split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// The state letter of a process (`R`, `S`, `T`, `Z`, ...), if it exists.
pub(crate) fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next())
}

/// Whether a process exists and is not a zombie.
pub(crate) fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

/// Sends a signal; a process that is already gone is not an error.
pub(crate) fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// Polls `cond` every `every` until it holds or `timeout` passes.
pub fn wait_until<F: FnMut() -> bool>(what: &str, timeout: Duration, every: Duration, mut cond: F) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(Error::Timeout { what: what.to_string(), waited: timeout });
        }
        std::thread::sleep(every);
    }
}
