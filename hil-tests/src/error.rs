//! The one error type of the harness.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while building a rig, driving it or running a scenario.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op}: `{command}` exited with status {status}: {stderr}")]
    Command { op: &'static str, command: String, status: i32, stderr: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("read rig state {path}: {source}")]
    ParseState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("write json {path}: {source}")]
    WriteJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("rig file {path}: {source}")]
    ParseRigFile {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("rig file {path}: {reason}")]
    InvalidRigFile { path: PathBuf, reason: String },
    #[error("unknown host {0}")]
    UnknownHost(String),
    #[error("host {0} is powered off")]
    HostDown(String),
    #[error("host {0} has no running daemon")]
    DaemonNotRunning(String),
    #[error("a rig is already up in {0}: run `shoal-hil rig down` first")]
    RigExists(PathBuf),
    #[error("no rig in {0}")]
    NoRig(PathBuf),
    #[error(
        "the shoal binary is missing: build it with `cargo build -p shoal` or point SHOAL_BIN at it (looked at {looked})"
    )]
    ShoalBinaryMissing { looked: String },
    #[error("degrade {host}: {what} needs the kernel's netem qdisc (CONFIG_NET_SCH_NETEM), which this kernel lacks")]
    NetemUnsupported { host: String, what: &'static str },
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },
    #[error("parse `shoal status --json` of {host}: {source}")]
    ParseStatus {
        host: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("scenario {scenario}: {reason}")]
    ScenarioFailed { scenario: String, reason: String },
    #[error("unknown scenario {0} (known: {1})")]
    UnknownScenario(String, String),
    #[error("this rig cannot {0}")]
    Unsupported(&'static str),
}

/// Result of the harness.
pub type Result<T, E = Error> = std::result::Result<T, E>;
