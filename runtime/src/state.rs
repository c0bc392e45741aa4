//! The per-container state directory: what the runtime and the shim write, and the status derived
//! from it, so a restarted daemon re-adopts containers from disk alone.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{Error, Result};

pub(crate) const CONTAINER_FILE: &str = "container.json";
pub(crate) const SPEC_FILE: &str = "config.json";
pub(crate) const INIT_FILE: &str = "init.json";
pub(crate) const STARTED_FILE: &str = "started.json";
pub(crate) const EXIT_FILE: &str = "exit.json";
pub(crate) const FIFO_FILE: &str = "exec.fifo";
pub(crate) const SHIM_LOG: &str = "shim.log";

/// Where a container is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Set up and waiting for `start`; the user's process has not run yet.
    Created,
    /// The user's process runs.
    Running,
    /// The process has exited (or its shim is gone).
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        })
    }
}

/// What `Runtime::state` reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    pub status: Status,
    /// The container's init process as the host sees it; 0 once it is gone.
    pub pid: u32,
    pub bundle: PathBuf,
    /// Exit code; a process killed by signal N reports 128 + N.
    pub exit_code: Option<i32>,
    /// The kernel's OOM killer acted in the container's cgroup.
    pub oom_killed: bool,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    /// Path of the container's cgroup below each hierarchy's root.
    pub cgroup_path: String,
    pub log_path: Option<PathBuf>,
}

/// Written by the runtime at create.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ContainerFile {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub cgroup_path: String,
    pub log_path: Option<PathBuf>,
    pub log_max_size: u64,
    pub log_max_files: u32,
    pub inherit_stdio: bool,
    /// Keep the container's stdin open for attached clients (a pipe, or the terminal).
    #[serde(default)]
    pub open_stdin: bool,
    /// Close that stdin once the first attached client's input ends.
    #[serde(default)]
    pub stdin_once: bool,
    pub created_at: SystemTime,
}

/// Written by the shim once the init process is set up.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct InitFile {
    pub pid: u32,
    /// Field 22 of /proc/PID/stat, to tell the process from a later one with the same pid.
    pub start_time: u64,
    pub shim_pid: u32,
    pub shim_start_time: u64,
}

/// Written by `start`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StartedFile {
    pub started_at: SystemTime,
}

/// Written by the shim when the init process has exited.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ExitFile {
    pub exit_code: i32,
    pub oom_killed: bool,
    pub finished_at: SystemTime,
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let data = serde_json::to_vec(value).map_err(|e| Error::WriteState { path: path.into(), source: e.into() })?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| Error::WriteState { path: path.into(), source })
}

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let data = std::fs::read(path).map_err(|source| Error::ReadState { path: path.into(), source })?;
    serde_json::from_slice(&data).map_err(|source| Error::DecodeState { path: path.into(), source })
}

pub(crate) fn read_json_opt<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(data) => {
            serde_json::from_slice(&data).map(Some).map_err(|source| Error::DecodeState { path: path.into(), source })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::ReadState { path: path.into(), source }),
    }
}

/// Field 22 (start time in clock ticks) of /proc/PID/stat, or None if the process is gone.
pub(crate) fn process_start_time(proc_root: &Path, pid: u32) -> Option<u64> {
    // One read into a buffer big enough for any stat line: the kernel formats the whole line on
    // every read, and a read that grows its buffer from 32 bytes would ask five times.
    let mut buf = [0u8; 1024];
    let n = std::io::Read::read(&mut std::fs::File::open(proc_root.join(pid.to_string()).join("stat")).ok()?, &mut buf)
        .ok()?;
    let stat = std::str::from_utf8(&buf[..n]).ok()?;
    // The command name may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is at index 19.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Reads a container's state from its directory. `proc_root` is normally /proc.
pub(crate) fn load(dir: &Path, proc_root: &Path) -> Result<State> {
    let c: ContainerFile = read_json(&dir.join(CONTAINER_FILE))?;
    let init: Option<InitFile> = read_json_opt(&dir.join(INIT_FILE))?;
    let started: Option<StartedFile> = read_json_opt(&dir.join(STARTED_FILE))?;
    let exit: Option<ExitFile> = read_json_opt(&dir.join(EXIT_FILE))?;
    let alive = init.as_ref().is_some_and(|i| process_start_time(proc_root, i.pid) == Some(i.start_time));
    let status = derive_status(init.is_some(), alive, dir.join(FIFO_FILE).exists(), exit.is_some());
    Ok(State {
        id: c.id,
        status,
        pid: match (&init, alive) {
            (Some(i), true) => i.pid,
            _ => 0,
        },
        bundle: c.bundle,
        exit_code: exit.as_ref().map(|e| e.exit_code),
        oom_killed: exit.as_ref().is_some_and(|e| e.oom_killed),
        created_at: c.created_at,
        started_at: started.map(|s| s.started_at),
        finished_at: exit.map(|e| e.finished_at),
        cgroup_path: c.cgroup_path,
        log_path: c.log_path,
    })
}

/// The status from what is on disk and whether the init process still lives.
pub(crate) fn derive_status(has_init: bool, alive: bool, fifo_exists: bool, has_exit: bool) -> Status {
    if has_exit || (has_init && !alive) {
        Status::Stopped
    } else if !has_init || fifo_exists {
        Status::Created
    } else {
        Status::Running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_files() {
        assert_eq!(derive_status(true, true, true, false), Status::Created);
        assert_eq!(derive_status(true, true, false, false), Status::Running);
        assert_eq!(derive_status(true, false, false, false), Status::Stopped);
        assert_eq!(derive_status(true, true, false, true), Status::Stopped);
        assert_eq!(derive_status(false, false, true, false), Status::Created);
    }

    #[test]
    fn reads_start_time_after_odd_command_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("42")).unwrap();
        let mut fields = vec!["S".to_string()];
        fields.extend((4..=52).map(|n| n.to_string()));
        std::fs::write(dir.path().join("42/stat"), format!("42 (a b) c) {}", fields.join(" "))).unwrap();
        assert_eq!(process_start_time(dir.path(), 42), Some(22));
        assert_eq!(process_start_time(dir.path(), 43), None);
    }
}
