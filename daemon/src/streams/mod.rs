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
    /// The port of the pod refused the connection (reported on the port-forward error stream).
    #[error("error forwarding port {port} to pod {pod}: {reason}")]
    ConnectPort { pod: String, port: u16, reason: String },
}

/// Both directions of a connection to a port of a pod (`pods/portforward`). Shutting down
/// `write` half-closes the connection; `read` ends when the pod side closes.
pub struct PortConnection {
    pub read: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    pub write: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
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

/// Attaches to the output only, by following the container's log from now on (stdout and
/// stderr both arrive on `io.stdout`).
pub fn follow_output<S: PodStreams + ?Sized>(
    streams: &S,
    pod: &Value,
    container: &str,
    io: ExecIo,
) -> BoxFuture<'static, Result<i32, StreamError>> {
    let logs = LogOptions {
        container: Some(container.to_string()),
        follow: true,
        tail_lines: Some(0),
        ..LogOptions::default()
    };
    let stream = streams.logs(pod, logs);
    Box::pin(async move {
        use futures::StreamExt;
        let mut stream = stream.await?;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => {
                    if io.stdout.send(b).await.is_err() {
                        break;
                    }
                }
                Err(e) => return Err(StreamError::Unavailable(format!("reading the container output: {e}"))),
            }
        }
        Ok(0)
    })
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
    ///
    /// The default attaches to the output only: it follows the container's log from now on
    /// (stdout and stderr both arrive on `stdout`). Writing to the process' stdin needs the
    /// runtime to keep it open, which the default cannot do: a request with `stdin` is refused.
    fn attach(&self, pod: &Value, opts: ExecOptions, io: ExecIo) -> BoxFuture<'static, Result<i32, StreamError>> {
        if opts.stdin {
            return Box::pin(async {
                Err(StreamError::Unavailable(
                    "attaching to the stdin of a container is not supported by this node agent; \
                     attach without -i to follow its output"
                        .into(),
                ))
            });
        }
        follow_output(self, pod, &opts.container, io)
    }

    /// Connects to `port` of the pod (on the node that runs it).
    fn port_forward(&self, pod: &Value, port: u16) -> BoxFuture<'static, Result<PortConnection, StreamError>> {
        let _ = (pod, port);
        Box::pin(async { Err(StreamError::Unavailable("port-forward is not supported by this node agent".into())) })
    }
}
