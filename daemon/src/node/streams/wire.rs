//! The wire format of pod streams between nodes: the request that opens a stream, the frames
//! that follow (`tag: u8, len: u32 (big endian), payload`) and the error an open answers with.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::streams::{ExecOptions, LogOptions, StreamError};

/// The transport service that serves pod streams to peers.
pub const SERVICE: &str = "pod-streams";

pub(super) const TAG_OPEN: u8 = 0;
pub(super) const TAG_STDOUT: u8 = 1;
pub(super) const TAG_STDERR: u8 = 2;
pub(super) const TAG_EXIT: u8 = 3;
pub(super) const TAG_STDIN: u8 = 4;
pub(super) const TAG_STDIN_EOF: u8 = 5;
pub(super) const TAG_RESIZE: u8 = 6;
pub(super) const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(super) enum Request {
    Logs { pod: Value, opts: WireLogOptions },
    Exec { pod: Value, opts: WireExecOptions },
    Attach { pod: Value, opts: WireExecOptions },
    PortForward { pod: Value, port: u16 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct WireLogOptions {
    pub(super) container: Option<String>,
    pub(super) follow: bool,
    pub(super) previous: bool,
    pub(super) timestamps: bool,
    pub(super) tail_lines: Option<i64>,
    pub(super) since_seconds: Option<i64>,
    pub(super) limit_bytes: Option<i64>,
}

impl From<&LogOptions> for WireLogOptions {
    fn from(o: &LogOptions) -> Self {
        WireLogOptions {
            container: o.container.clone(),
            follow: o.follow,
            previous: o.previous,
            timestamps: o.timestamps,
            tail_lines: o.tail_lines,
            since_seconds: o.since_seconds,
            limit_bytes: o.limit_bytes,
        }
    }
}

impl From<WireLogOptions> for LogOptions {
    fn from(o: WireLogOptions) -> Self {
        LogOptions {
            container: o.container,
            follow: o.follow,
            previous: o.previous,
            timestamps: o.timestamps,
            tail_lines: o.tail_lines,
            since_seconds: o.since_seconds,
            limit_bytes: o.limit_bytes,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct WireExecOptions {
    pub(super) container: String,
    pub(super) command: Vec<String>,
    pub(super) stdin: bool,
    pub(super) stdout: bool,
    pub(super) stderr: bool,
    pub(super) tty: bool,
}

impl From<&ExecOptions> for WireExecOptions {
    fn from(o: &ExecOptions) -> Self {
        WireExecOptions {
            container: o.container.clone(),
            command: o.command.clone(),
            stdin: o.stdin,
            stdout: o.stdout,
            stderr: o.stderr,
            tty: o.tty,
        }
    }
}

impl From<WireExecOptions> for ExecOptions {
    fn from(o: WireExecOptions) -> Self {
        ExecOptions {
            container: o.container,
            command: o.command,
            stdin: o.stdin,
            stdout: o.stdout,
            stderr: o.stderr,
            tty: o.tty,
        }
    }
}

/// A [`StreamError`] on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub(super) enum WireError {
    ContainerNotFound { pod: String, container: String },
    NotStarted { pod: String, container: String, reason: String },
    Unavailable { message: String },
    ConnectPort { pod: String, port: u16, reason: String },
}

impl From<StreamError> for WireError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::ContainerNotFound { pod, container } => WireError::ContainerNotFound { pod, container },
            StreamError::NotStarted { pod, container, reason } => WireError::NotStarted { pod, container, reason },
            StreamError::Unavailable(message) => WireError::Unavailable { message },
            StreamError::ConnectPort { pod, port, reason } => WireError::ConnectPort { pod, port, reason },
        }
    }
}

impl From<WireError> for StreamError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::ContainerNotFound { pod, container } => StreamError::ContainerNotFound { pod, container },
            WireError::NotStarted { pod, container, reason } => StreamError::NotStarted { pod, container, reason },
            WireError::Unavailable { message } => StreamError::Unavailable(message),
            WireError::ConnectPort { pod, port, reason } => StreamError::ConnectPort { pod, port, reason },
        }
    }
}

pub(super) async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, tag: u8, payload: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    let mut head = [0u8; 5];
    head[0] = tag;
    head[1..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&head).await?;
    w.write_all(payload).await
}

/// Reads one frame; `None` at a clean end of stream.
pub(super) async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("frame of {len} bytes is over the limit")));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(Some((head[0], buf)))
}
