//! The runtime's error type.

use std::io;
use std::path::PathBuf;

/// Everything the runtime can fail at, named after the failing operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid container id {0:?}: use letters, digits, '-', '_' and '.'")]
    InvalidId(String),
    #[error("container {0} already exists")]
    AlreadyExists(String),
    #[error("container {0} not found")]
    NotFound(String),
    #[error("container {id} is {status}, the operation needs it {needed}")]
    WrongStatus { id: String, status: String, needed: &'static str },
    #[error("read runtime spec {path}")]
    ReadSpec {
        path: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("invalid runtime spec: {0}")]
    InvalidSpec(String),
    #[error("write state {path}")]
    WriteState {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("read state {path}")]
    ReadState {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("decode state {path}")]
    DecodeState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("spawn shim {program}")]
    SpawnShim {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("create container {id}: {message}")]
    CreateContainer { id: String, message: String },
    #[error("start container {id}")]
    StartContainer {
        id: String,
        #[source]
        source: io::Error,
    },
    #[error("signal container {id}")]
    Signal {
        id: String,
        #[source]
        source: nix::Error,
    },
    #[error("cgroup {path}: {operation}")]
    Cgroup {
        path: String,
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("remove state {path}")]
    RemoveState {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("exec in container {id}")]
    Exec {
        id: String,
        #[source]
        source: io::Error,
    },
    #[error("create sandbox {id}: {operation}")]
    CreateSandbox {
        id: String,
        operation: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("remove sandbox {path}")]
    RemoveSandbox {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("timed out waiting for container {0}")]
    Timeout(String),
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
