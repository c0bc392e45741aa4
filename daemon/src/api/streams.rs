//! The pod streaming endpoints (`pods/log`, `pods/exec`, `pods/attach`, `pods/portforward`)
//! are served by the node agent that runs the pod; the API reaches it through [`PodStreams`].
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde_json::Value;

/// A stream of bytes (a container's log), ending when the log ends or the pod goes away.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// `pods/log` query options, as kubectl sends them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Container name; `None` means the pod's only (or first) container.
    pub container: Option<String>,
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<i64>,
    pub since_seconds: Option<i64>,
    pub limit_bytes: Option<i64>,
}

/// Why a stream could not be opened; the API answers with the matching Status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StreamError {
    /// 400: the named container is not in the pod.
    #[error("container {container} is not valid for pod {pod}")]
    ContainerNotFound { pod: String, container: String },
    /// 400: the container has not started (or has no previous instance).
    #[error("container \"{container}\" in pod \"{pod}\" is waiting to start: {reason}")]
    NotStarted { pod: String, container: String, reason: String },
    /// 503: the node that runs the pod cannot be reached.
    #[error("node agent not available: {0}")]
    Unavailable(String),
}

/// `pods/exec` and `pods/attach` options, as kubectl sends them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOptions {
    pub container: String,
    /// The command to run (empty for attach).
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A terminal size sent by the client (`kubectl exec -t` on resize).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// The streams of one exec/attach session. The implementation reads `stdin` (closed on EOF),
/// writes `stdout`/`stderr` (with a TTY everything goes to `stdout`) and follows `resize`.
pub struct ExecIo {
    pub stdin: Option<tokio::sync::mpsc::Receiver<Bytes>>,
    pub stdout: tokio::sync::mpsc::Sender<Bytes>,
    pub stderr: tokio::sync::mpsc::Sender<Bytes>,
    pub resize: tokio::sync::mpsc::Receiver<TerminalSize>,
}

/// Implemented by the node agent (locally, or by proxying to the node that runs the pod).
/// `pod` is the Pod object as stored, so the implementation knows `spec.nodeName` and the uid.
pub trait PodStreams: Send + Sync {
    fn logs(&self, pod: &Value, opts: LogOptions) -> BoxFuture<'static, Result<ByteStream, StreamError>>;

    /// Runs `opts.command` in the container; resolves to its exit code once it has ended and
    /// its output has been written.
    fn exec(&self, pod: &Value, opts: ExecOptions, io: ExecIo) -> BoxFuture<'static, Result<i32, StreamError>> {
        let _ = (pod, opts, io);
        Box::pin(async { Err(StreamError::Unavailable("exec is not supported by this node agent".into())) })
    }

    /// Attaches to the container's main process; resolves when it ends (or stdin closes).
    fn attach(&self, pod: &Value, opts: ExecOptions, io: ExecIo) -> BoxFuture<'static, Result<i32, StreamError>> {
        let _ = (pod, opts, io);
        Box::pin(async { Err(StreamError::Unavailable("attach is not supported by this node agent".into())) })
    }
}
