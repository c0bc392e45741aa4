//! `pods/log`, `pods/exec` and `pods/portforward` for any pod of the cluster: served locally for the pods of this
//! node, and proxied over the peer QUIC transport (service [`SERVICE`]) to the node that runs
//! the pod otherwise.
//!
//! Wire format on the raw stream, after the transport's header (a JSON [`Request`]): frames of
//! `tag: u8, len: u32 (big endian), payload`. The serving node answers first with an
//! [`TAG_OPEN`] frame (`null` or a JSON [`WireError`]), then sends output frames
//! ([`TAG_STDOUT`], [`TAG_STDERR`]) and, for exec, one [`TAG_EXIT`] frame with the exit code.
//! The opener sends [`TAG_STDIN`], [`TAG_STDIN_EOF`] and [`TAG_RESIZE`] frames.
//!
//! A port-forward stream carries no frames after the open answer: both directions are the
//! bytes of the TCP connection to the pod's port, and finishing a direction half-closes it.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shoal_gossip::{PeerInfo, Transport};
use shoal_store::Store;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::streams::{
    follow_output, ByteStream, ExecIo, ExecOptions, LogOptions, PodStreams, PortConnection, StreamError, TerminalSize,
};

/// The transport service that serves pod streams to peers.
pub const SERVICE: &str = "pod-streams";

const TAG_OPEN: u8 = 0;
const TAG_STDOUT: u8 = 1;
const TAG_STDERR: u8 = 2;
const TAG_EXIT: u8 = 3;
const TAG_STDIN: u8 = 4;
const TAG_STDIN_EOF: u8 = 5;
const TAG_RESIZE: u8 = 6;
const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Request {
    Logs { pod: Value, opts: WireLogOptions },
    Exec { pod: Value, opts: WireExecOptions },
    Attach { pod: Value, opts: WireExecOptions },
    PortForward { pod: Value, port: u16 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct WireLogOptions {
    container: Option<String>,
    follow: bool,
    previous: bool,
    timestamps: bool,
    tail_lines: Option<i64>,
    since_seconds: Option<i64>,
    limit_bytes: Option<i64>,
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
struct WireExecOptions {
    container: String,
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
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
enum WireError {
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

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, tag: u8, payload: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    let mut head = [0u8; 5];
    head[0] = tag;
    head[1..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&head).await?;
    w.write_all(payload).await
}

/// Reads one frame; `None` at a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(u8, Vec<u8>)>> {
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

type Writer = Box<dyn AsyncWrite + Send + Unpin>;
type Reader = Box<dyn AsyncRead + Send + Unpin>;

/// Serves the streams of pods: local ones itself, the others through their node.
pub(crate) struct NodeStreams {
    local: Arc<dyn PodStreams>,
    transport: Option<Transport>,
    peers: Peers,
    node_name: String,
}

/// Where the other nodes are: their records in the store, or a fixed map (tests).
#[derive(Clone)]
enum Peers {
    Store(Store),
    #[cfg_attr(not(test), allow(dead_code))]
    Fixed(std::collections::BTreeMap<String, std::net::SocketAddr>),
}

/// Where `spec.nodeName` of `pod` can be reached over the transport.
async fn peer_of(peers: &Peers, node: &str) -> Result<std::net::SocketAddr, StreamError> {
    let store = match peers {
        Peers::Store(s) => s,
        Peers::Fixed(m) => {
            return m
                .get(node)
                .copied()
                .ok_or_else(|| StreamError::Unavailable(format!("node {node:?} is not known to the cluster")))
        }
    };
    let records = crate::members::node_records(store).await;
    let rec = records
        .values()
        .find(|r| r.name == node)
        .ok_or_else(|| StreamError::Unavailable(format!("node {node:?} is not known to the cluster")))?;
    rec.peer_addr
        .parse()
        .map_err(|_| StreamError::Unavailable(format!("node {node:?} has no valid peer address ({})", rec.peer_addr)))
}

fn unavailable(node: &str, e: impl std::fmt::Display) -> StreamError {
    StreamError::Unavailable(format!("node {node}: {e}"))
}

/// Opens the stream to the node that runs the pod and reads its open answer.
async fn open_remote(
    transport: &Transport,
    peers: &Peers,
    node: &str,
    req: &Request,
) -> Result<(Writer, Reader), StreamError> {
    let addr = peer_of(peers, node).await?;
    let header = serde_json::to_vec(req).map_err(|e| unavailable(node, e))?;
    let (send, mut recv) = transport.open_stream(addr, SERVICE, header).await.map_err(|e| unavailable(node, e))?;
    match read_frame(&mut recv).await {
        Ok(Some((TAG_OPEN, body))) => match serde_json::from_slice::<Option<WireError>>(&body) {
            Ok(None) => Ok((Box::new(send), Box::new(recv))),
            Ok(Some(e)) => Err(e.into()),
            Err(e) => Err(unavailable(node, format!("bad answer: {e}"))),
        },
        Ok(_) => Err(unavailable(node, "stream closed before it opened")),
        Err(e) => Err(unavailable(node, e)),
    }
}

/// Logs and exec for the pods of this node.
pub(crate) struct Local {
    logs: super::logs::LocalLogs,
    runtime: shoal_runtime::RuntimeConfig,
    /// Where the pods' namespace files live (`/run/shoal/NODE/sandboxes/ID/net`).
    sandboxes: PathBuf,
}

impl Local {
    pub(crate) fn new(data_dir: &Path, node_name: &str) -> Local {
        let run = super::os::HostPaths::default().run;
        Local {
            logs: super::logs::LocalLogs { log_dir: data_dir.join("pods") },
            runtime: super::runtime_config(&run, node_name),
            sandboxes: run.join(node_name).join("sandboxes"),
        }
    }
}

fn pod_name(pod: &Value) -> String {
    pod["metadata"]["name"].as_str().unwrap_or_default().to_string()
}

/// The container a request names: `container`, or the pod's first when it is empty.
fn container_name(pod: &Value, container: &str) -> String {
    if container.is_empty() {
        pod["spec"]["containers"][0]["name"].as_str().unwrap_or_default().to_string()
    } else {
        container.to_string()
    }
}

/// Every container of a pod: app, init and ephemeral.
pub(crate) fn all_containers(pod: &Value) -> impl Iterator<Item = &Value> {
    ["containers", "initContainers", "ephemeralContainers"]
        .into_iter()
        .flat_map(move |k| pod["spec"][k].as_array().into_iter().flatten())
}

/// The runtime id of the named container (the first one when `container` is empty).
fn container_of(pod: &Value, container: &str) -> Result<String, StreamError> {
    let name = container_name(pod, container);
    let known = all_containers(pod).any(|c| c["name"].as_str() == Some(name.as_str()));
    if !known {
        return Err(StreamError::ContainerNotFound { pod: pod_name(pod), container: name });
    }
    Ok(super::pod::container_id(pod["metadata"]["uid"].as_str().unwrap_or_default(), &name))
}

impl PodStreams for Local {
    fn logs(&self, pod: &Value, opts: LogOptions) -> BoxFuture<'static, Result<ByteStream, StreamError>> {
        self.logs.logs(pod, opts)
    }

    fn exec(&self, pod: &Value, opts: ExecOptions, io: ExecIo) -> BoxFuture<'static, Result<i32, StreamError>> {
        let cfg = self.runtime.clone();
        let id = container_of(pod, &opts.container);
        let name = pod_name(pod);
        Box::pin(async move {
            let id = id?;
            exec_local(cfg, id, name, opts, io).await
        })
    }

    fn attach(&self, pod: &Value, opts: ExecOptions, io: ExecIo) -> BoxFuture<'static, Result<i32, StreamError>> {
        let cfg = self.runtime.clone();
        let id = container_of(pod, &opts.container);
        let name = pod_name(pod);
        let container = container_name(pod, &opts.container);
        let has_stdin = all_containers(pod)
            .any(|c| c["name"].as_str() == Some(container.as_str()) && c["stdin"].as_bool() == Some(true));
        let logs = self.logs.clone();
        let pod = pod.clone();
        Box::pin(async move {
            let id = id?;
            if opts.stdin && !has_stdin {
                return Err(StreamError::Unavailable(format!(
                    "container {container} of pod {name} was not created with stdin: true, so it takes no input; \
                     attach without -i to follow its output"
                )));
            }
            match attach_local(cfg, id, name, opts, io).await {
                Attached::Done(r) => r,
                // A container started before its shim had an attach socket (an upgrade): its
                // output can still be followed in the log.
                Attached::NoSocket(io) => follow_output(&logs, &pod, &container, io).await,
            }
        })
    }

    fn port_forward(&self, pod: &Value, port: u16) -> BoxFuture<'static, Result<PortConnection, StreamError>> {
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
        let netns = self.sandboxes.join(super::pod::short(uid)).join("net");
        connect_pod_port(pod, port, netns)
    }
}

/// Connects to `port` as a process of the pod would reach it, as the kubelet's runtimes do:
/// `localhost:port` inside the pod's network namespace (`netns`), so a server that listens on
/// 127.0.0.1 only is reachable too. A pod without its own namespace here (host network) is
/// reached on its IP.
fn connect_pod_port(pod: &Value, port: u16, netns: PathBuf) -> BoxFuture<'static, Result<PortConnection, StreamError>> {
    let name = pod_name(pod);
    let ip = pod["status"]["podIP"].as_str().and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
    let host_network = pod["spec"]["hostNetwork"].as_bool() == Some(true);
    Box::pin(async move {
        let fail = |addr: String, reason: String| StreamError::ConnectPort {
            pod: name.clone(),
            port,
            reason: format!("dial tcp {addr}: {reason}"),
        };
        let tcp = if !host_network && netns.exists() {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let std_tcp = tokio::task::spawn_blocking(move || connect_in_netns(&netns, addr))
                .await
                .map_err(|e| fail(addr.to_string(), e.to_string()))?
                .map_err(|e| fail(addr.to_string(), e))?;
            tokio::net::TcpStream::from_std(std_tcp).map_err(|e| fail(addr.to_string(), e.to_string()))?
        } else {
            let ip = ip.ok_or_else(|| StreamError::NotStarted {
                pod: name.clone(),
                container: String::new(),
                reason: "the pod has no IP address yet".into(),
            })?;
            let addr = std::net::SocketAddr::new(ip, port);
            tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| fail(addr.to_string(), "timeout".into()))?
                .map_err(|e| fail(addr.to_string(), e.to_string()))?
        };
        let _ = tcp.set_nodelay(true);
        let (read, write) = tcp.into_split();
        Ok(PortConnection { read: Box::new(read), write: Box::new(write) })
    })
}

/// A TCP connection to `addr` made from inside the network namespace at `netns`; the socket
/// stays in that namespace.
fn connect_in_netns(netns: &Path, addr: std::net::SocketAddr) -> Result<std::net::TcpStream, String> {
    shoal_netlink::run_in_netns(netns, || {
        let tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        tcp.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(tcp)
    })
    .map_err(|e| format!("{e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()))?
    .map_err(|e| e.to_string())
}

/// Ok when the container `id` (`container` of `pod`) is running; otherwise why not, as the
/// kubelet reports it.
fn must_be_running(rt: &shoal_runtime::Runtime, id: &str, pod: String, container: String) -> Result<(), StreamError> {
    match rt.state(id) {
        Err(_) => Err(StreamError::NotStarted { pod, container, reason: "ContainerCreating".into() }),
        Ok(st) if st.status != shoal_runtime::Status::Running => {
            Err(StreamError::NotStarted { pod, container, reason: format!("container is {}", st.status) })
        }
        Ok(_) => Ok(()),
    }
}

/// Runs a command in a local container and pumps its stdio through `io`.
async fn exec_local(
    cfg: shoal_runtime::RuntimeConfig,
    id: String,
    pod: String,
    opts: ExecOptions,
    io: ExecIo,
) -> Result<i32, StreamError> {
    use std::io::{Read, Write};
    let ExecIo { stdin, stdout, stderr, mut resize } = io;
    let container = opts.container.clone();
    let tty = opts.tty;
    let started = tokio::task::spawn_blocking(move || {
        let rt = shoal_runtime::Runtime::new(cfg);
        must_be_running(&rt, &id, pod, container)?;
        let spec = rt.spec(&id).map_err(|e| StreamError::Unavailable(e.to_string()))?;
        let mut process = spec.process().clone().unwrap_or_default();
        process.set_args(Some(opts.command.clone()));
        process.set_terminal(Some(tty));
        rt.exec(&id, &process, tty).map_err(|e| StreamError::Unavailable(super::pod::chain(&e)))
    })
    .await
    .map_err(|e| StreamError::Unavailable(format!("exec task: {e}")))??;
    let mut p = started;
    // Output readers (blocking threads) feed the async senders.
    let pump = |mut r: Box<dyn Read + Send>, tx: mpsc::Sender<Bytes>| {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                            break;
                        }
                    }
                }
            }
        })
    };
    let mut readers = Vec::new();
    let mut input: Option<Box<dyn Write + Send>> = None;
    if let Some(pty) = p.pty.as_ref() {
        if let Ok(r) = pty.try_clone() {
            readers.push(pump(Box::new(r), stdout.clone()));
        }
        input = pty.try_clone().ok().map(|w| Box::new(w) as Box<dyn Write + Send>);
    } else {
        if let Some(o) = p.stdout.take() {
            readers.push(pump(Box::new(o), stdout.clone()));
        }
        if let Some(e) = p.stderr.take() {
            readers.push(pump(Box::new(e), stderr.clone()));
        }
        input = p.stdin.take().map(|w| Box::new(w) as Box<dyn Write + Send>).or(input);
    }
    // Input: from the client until it closes (then EOF to the process).
    let writer = match (stdin, input) {
        (Some(mut rx), Some(mut w)) => Some(std::thread::spawn(move || {
            while let Some(b) = rx.blocking_recv() {
                if w.write_all(&b).and_then(|_| w.flush()).is_err() {
                    break;
                }
            }
        })),
        _ => None,
    };
    let p = Arc::new(std::sync::Mutex::new(p));
    let resizer = {
        let p = p.clone();
        tokio::spawn(async move {
            while let Some(TerminalSize { width, height }) = resize.recv().await {
                if let Ok(p) = p.lock() {
                    let _ = p.resize(height, width);
                }
            }
        })
    };
    let waiter = p.clone();
    let code = tokio::task::spawn_blocking(move || loop {
        let done = match waiter.lock() {
            Ok(mut p) => p.try_wait(),
            Err(_) => Err(std::io::Error::other("exec handle poisoned")),
        };
        match done {
            Ok(Some(code)) => return Ok(code),
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e),
        }
    })
    .await
    .map_err(|e| StreamError::Unavailable(format!("exec task: {e}")))?
    .map_err(|e| StreamError::Unavailable(format!("waiting for the command: {e}")))?;
    resizer.abort();
    // The output is complete once the readers hit EOF (with a tty, the pty may stay open
    // while other processes hold it: do not wait forever).
    let readers = tokio::task::spawn_blocking(move || {
        for r in readers {
            let _ = r.join();
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(2), readers).await;
    drop(writer);
    drop((stdout, stderr));
    Ok(code)
}

/// How [`attach_local`] ended: with the session's result, or at once because the container's
/// shim has no attach socket (`io` handed back untouched).
enum Attached {
    Done(Result<i32, StreamError>),
    NoSocket(ExecIo),
}

/// Attaches to a local container's main process through its shim: live output, and input
/// when the client sends it. Ends when the container does (or the client goes away).
async fn attach_local(
    cfg: shoal_runtime::RuntimeConfig,
    id: String,
    pod: String,
    opts: ExecOptions,
    io: ExecIo,
) -> Attached {
    let container = opts.container.clone();
    let want_stdin = opts.stdin;
    let connected = tokio::task::spawn_blocking(move || {
        let rt = shoal_runtime::Runtime::new(cfg);
        must_be_running(&rt, &id, pod, container)?;
        match rt.attach(&id) {
            Ok(a) => Ok(Some(a)),
            Err(shoal_runtime::Error::Exec { source, .. })
                if !want_stdin
                    && matches!(
                        source.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
            {
                Ok(None)
            }
            Err(e) => Err(StreamError::Unavailable(super::pod::chain(&e))),
        }
    })
    .await
    .map_err(|e| StreamError::Unavailable(format!("attach task: {e}")));
    let conn = match connected {
        Ok(Ok(Some(conn))) => conn,
        Ok(Ok(None)) => return Attached::NoSocket(io),
        Ok(Err(e)) | Err(e) => return Attached::Done(Err(e)),
    };
    Attached::Done(attach_session(conn, opts, io).await)
}

/// Pumps `io` through an attach connection until the container ends it.
async fn attach_session(
    conn: shoal_runtime::attach::Attach,
    opts: ExecOptions,
    io: ExecIo,
) -> Result<i32, StreamError> {
    use shoal_runtime::attach::Attach;
    let ExecIo { stdin, stdout, stderr, mut resize } = io;
    let clone = |a: &Attach| a.try_clone().map_err(|e| StreamError::Unavailable(format!("attach socket: {e}")));
    /// Shuts the connection down when the session ends, however it ends, so the blocking
    /// reader returns.
    struct Hangup(Attach);
    impl Drop for Hangup {
        fn drop(&mut self) {
            self.0.shutdown();
        }
    }
    let _hangup = Hangup(clone(&conn)?);
    let mut reader = clone(&conn)?;
    let writer = Arc::new(std::sync::Mutex::new(conn));
    let tty = opts.tty;
    let output = tokio::task::spawn_blocking(move || {
        while let Ok(Some((stream, b))) = reader.read_output() {
            let tx = if stream == shoal_runtime::Stream::Stderr && !tty { &stderr } else { &stdout };
            if tx.blocking_send(Bytes::from(b)).is_err() {
                break;
            }
        }
    });
    if let (true, Some(mut rx)) = (opts.stdin, stdin) {
        let w = writer.clone();
        std::thread::spawn(move || {
            while let Some(b) = rx.blocking_recv() {
                if w.lock().map_or(true, |mut a| a.write_stdin(&b).is_err()) {
                    return;
                }
            }
            if let Ok(mut a) = w.lock() {
                let _ = a.close_stdin();
            }
        });
    }
    let resizer = tokio::spawn(async move {
        while let Some(TerminalSize { width, height }) = resize.recv().await {
            if let Ok(mut a) = writer.lock() {
                let _ = a.resize(height, width);
            }
        }
    });
    let _ = output.await;
    resizer.abort();
    Ok(0)
}

/// Serves pod streams: this node's pods locally, the others through the node that runs them.
pub(crate) fn node_streams(
    transport: Option<Transport>,
    store: Store,
    data_dir: &Path,
    node_name: &str,
) -> NodeStreams {
    NodeStreams {
        local: Arc::new(Local::new(data_dir, node_name)),
        transport,
        peers: Peers::Store(store),
        node_name: node_name.to_string(),
    }
}

impl NodeStreams {
    /// An exec or attach session (`req`) with the node that runs the pod: `io` is pumped over
    /// the stream; resolves to the exit code the node reports.
    fn remote_session(&self, node: &str, req: Request, io: ExecIo) -> BoxFuture<'static, Result<i32, StreamError>> {
        let node = node.to_string();
        let Some(transport) = self.transport.clone() else {
            return Box::pin(async move { Err(StreamError::Unavailable(format!("pod runs on node {node}"))) });
        };
        let peers = self.peers.clone();
        Box::pin(async move {
            let (mut send, mut recv) = open_remote(&transport, &peers, &node, &req).await?;
            let ExecIo { stdin, stdout, stderr, mut resize } = io;
            // Client → node: stdin and resizes.
            let up = tokio::spawn(async move {
                let mut stdin = stdin;
                loop {
                    tokio::select! {
                        b = async { match stdin.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                            match b {
                                Some(b) => { if write_frame(&mut send, TAG_STDIN, &b).await.is_err() { break; } }
                                None => {
                                    stdin = None;
                                    if write_frame(&mut send, TAG_STDIN_EOF, &[]).await.is_err() { break; }
                                }
                            }
                        }
                        r = resize.recv() => match r {
                            Some(TerminalSize { width, height }) => {
                                let body = serde_json::json!({"width": width, "height": height}).to_string();
                                if write_frame(&mut send, TAG_RESIZE, body.as_bytes()).await.is_err() { break; }
                            }
                            None => std::future::pending::<()>().await,
                        },
                    }
                }
            });
            // Node → client: output, then the exit code.
            let result = loop {
                match read_frame(&mut recv).await {
                    Ok(Some((TAG_STDOUT, b))) => {
                        let _ = stdout.send(Bytes::from(b)).await;
                    }
                    Ok(Some((TAG_STDERR, b))) => {
                        let _ = stderr.send(Bytes::from(b)).await;
                    }
                    Ok(Some((TAG_EXIT, b))) => {
                        break match serde_json::from_slice::<Result<i32, WireError>>(&b) {
                            Ok(Ok(code)) => Ok(code),
                            Ok(Err(e)) => Err(e.into()),
                            Err(e) => Err(unavailable(&node, format!("bad exit frame: {e}"))),
                        };
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => break Err(unavailable(&node, "stream ended before the command did")),
                    Err(e) => break Err(unavailable(&node, e)),
                }
            };
            up.abort();
            result
        })
    }

    /// The node that must serve `pod`, or `None` for this one.
    fn remote<'a>(&self, pod: &'a Value) -> Result<Option<&'a str>, StreamError> {
        match pod["spec"]["nodeName"].as_str() {
            None | Some("") => Err(StreamError::NotStarted {
                pod: pod_name(pod),
                container: String::new(),
                reason: "the pod is not scheduled yet".into(),
            }),
            Some(n) if n == self.node_name => Ok(None),
            Some(n) => Ok(Some(n)),
        }
    }
}

impl PodStreams for NodeStreams {
    fn logs(&self, pod: &Value, opts: LogOptions) -> BoxFuture<'static, Result<ByteStream, StreamError>> {
        let node = match self.remote(pod) {
            Ok(None) => return self.local.logs(pod, opts),
            Ok(Some(n)) => n.to_string(),
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let Some(transport) = self.transport.clone() else {
            return Box::pin(async move { Err(StreamError::Unavailable(format!("pod runs on node {node}"))) });
        };
        let peers = self.peers.clone();
        let req = Request::Logs { pod: pod.clone(), opts: (&opts).into() };
        Box::pin(async move {
            let (send, recv) = open_remote(&transport, &peers, &node, &req).await?;
            let stream = futures::stream::unfold((recv, send), |(mut recv, send)| async move {
                loop {
                    match read_frame(&mut recv).await {
                        Ok(Some((TAG_STDOUT, b))) => return Some((Ok(Bytes::from(b)), (recv, send))),
                        Ok(Some(_)) => continue,
                        Ok(None) => return None,
                        Err(e) => return Some((Err(e), (recv, send))),
                    }
                }
            });
            Ok(Box::pin(stream) as ByteStream)
        })
    }

    fn exec(&self, pod: &Value, opts: ExecOptions, io: ExecIo) -> BoxFuture<'static, Result<i32, StreamError>> {
        match self.remote(pod) {
            Ok(None) => self.local.exec(pod, opts, io),
            Ok(Some(n)) => self.remote_session(n, Request::Exec { pod: pod.clone(), opts: (&opts).into() }, io),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn attach(&self, pod: &Value, opts: ExecOptions, io: ExecIo) -> BoxFuture<'static, Result<i32, StreamError>> {
        match self.remote(pod) {
            Ok(None) => self.local.attach(pod, opts, io),
            Ok(Some(n)) => self.remote_session(n, Request::Attach { pod: pod.clone(), opts: (&opts).into() }, io),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn port_forward(&self, pod: &Value, port: u16) -> BoxFuture<'static, Result<PortConnection, StreamError>> {
        let node = match self.remote(pod) {
            Ok(None) => return self.local.port_forward(pod, port),
            Ok(Some(n)) => n.to_string(),
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let Some(transport) = self.transport.clone() else {
            return Box::pin(async move { Err(StreamError::Unavailable(format!("pod runs on node {node}"))) });
        };
        let peers = self.peers.clone();
        let req = Request::PortForward { pod: pod.clone(), port };
        Box::pin(async move {
            let (write, read) = open_remote(&transport, &peers, &node, &req).await?;
            Ok(PortConnection { read, write })
        })
    }
}

/// Registers the [`SERVICE`] on the transport: peers (nodes only) open streams of the pods
/// of this node.
pub(crate) fn register(transport: &Transport, data_dir: &Path, node_name: &str) {
    register_with(transport, Arc::new(Local::new(data_dir, node_name)), node_name)
}

fn register_with(transport: &Transport, local: Arc<dyn PodStreams>, node_name: &str) {
    let me = node_name.to_string();
    transport.register_stream(
        SERVICE,
        Arc::new(move |peer: PeerInfo, header: Vec<u8>, send, recv| {
            let local = local.clone();
            let me = me.clone();
            Box::pin(async move {
                if !peer.organizations.iter().any(|o| o == "system:nodes") {
                    tracing::warn!(peer = %peer.node_name, "pod stream refused: not a node");
                    return;
                }
                if let Err(e) = serve(local, &me, header, Box::new(send), Box::new(recv)).await {
                    tracing::debug!(peer = %peer.node_name, error = %e, "pod stream ended");
                }
            })
        }),
    );
}

async fn serve(
    local: Arc<dyn PodStreams>,
    me: &str,
    header: Vec<u8>,
    mut send: Writer,
    mut recv: Reader,
) -> std::io::Result<()> {
    let req: Request = match serde_json::from_slice(&header) {
        Ok(r) => r,
        Err(e) => {
            let err = WireError::Unavailable { message: format!("bad pod stream request: {e}") };
            write_frame(&mut send, TAG_OPEN, &serde_json::to_vec(&Some(err))?).await?;
            return send.shutdown().await;
        }
    };
    let pod = match &req {
        Request::Logs { pod, .. }
        | Request::Exec { pod, .. }
        | Request::Attach { pod, .. }
        | Request::PortForward { pod, .. } => pod,
    };
    if pod["spec"]["nodeName"].as_str() != Some(me) {
        let err = WireError::Unavailable { message: format!("pod {} does not run on node {me}", pod_name(pod)) };
        write_frame(&mut send, TAG_OPEN, &serde_json::to_vec(&Some(err))?).await?;
        return send.shutdown().await;
    }
    match req {
        Request::PortForward { pod, port } => match local.port_forward(&pod, port).await {
            Err(e) => {
                write_frame(&mut send, TAG_OPEN, &serde_json::to_vec(&Some(WireError::from(e)))?).await?;
                send.shutdown().await
            }
            Ok(PortConnection { mut read, mut write }) => {
                write_frame(&mut send, TAG_OPEN, b"null").await?;
                let up = async {
                    tokio::io::copy(&mut recv, &mut write).await?;
                    write.shutdown().await
                };
                let down = async {
                    tokio::io::copy(&mut read, &mut send).await?;
                    send.shutdown().await
                };
                // The first failure (a reset on either side) ends both directions.
                tokio::try_join!(up, down).map(|_| ())
            }
        },
        Request::Logs { pod, opts } => match local.logs(&pod, opts.into()).await {
            Err(e) => {
                write_frame(&mut send, TAG_OPEN, &serde_json::to_vec(&Some(WireError::from(e)))?).await?;
                send.shutdown().await
            }
            Ok(mut stream) => {
                write_frame(&mut send, TAG_OPEN, b"null").await?;
                use futures::StreamExt;
                while let Some(chunk) = stream.next().await {
                    write_frame(&mut send, TAG_STDOUT, &chunk?).await?;
                }
                send.shutdown().await
            }
        },
        Request::Exec { pod, opts } => serve_session(local, pod, opts, false, send, recv).await,
        Request::Attach { pod, opts } => serve_session(local, pod, opts, true, send, recv).await,
    }
}

/// Serves an exec (or, with `attach`, an attach) session opened by a peer: its stdin and resize
/// frames in, the output frames and one exit frame out.
async fn serve_session(
    local: Arc<dyn PodStreams>,
    pod: Value,
    opts: WireExecOptions,
    attach: bool,
    mut send: Writer,
    mut recv: Reader,
) -> std::io::Result<()> {
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(16);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(16);
    let (err_tx, mut err_rx) = mpsc::channel::<Bytes>(16);
    let (rs_tx, rs_rx) = mpsc::channel::<TerminalSize>(4);
    let want_stdin = opts.stdin;
    let io = ExecIo { stdin: want_stdin.then_some(in_rx), stdout: out_tx, stderr: err_tx, resize: rs_rx };
    write_frame(&mut send, TAG_OPEN, b"null").await?;
    // Opener → process.
    let inbound = tokio::spawn(async move {
        let mut in_tx = Some(in_tx);
        while let Ok(Some((tag, body))) = read_frame(&mut recv).await {
            match tag {
                TAG_STDIN => {
                    if let Some(tx) = &in_tx {
                        let _ = tx.send(Bytes::from(body)).await;
                    }
                }
                TAG_STDIN_EOF => in_tx = None,
                TAG_RESIZE => {
                    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let size = TerminalSize {
                        width: v["width"].as_u64().unwrap_or(80) as u16,
                        height: v["height"].as_u64().unwrap_or(24) as u16,
                    };
                    let _ = rs_tx.send(size).await;
                }
                _ => {}
            }
        }
    });
    let mut run = if attach { local.attach(&pod, opts.into(), io) } else { local.exec(&pod, opts.into(), io) };
    let result = loop {
        tokio::select! {
            Some(b) = out_rx.recv() => write_frame(&mut send, TAG_STDOUT, &b).await?,
            Some(b) = err_rx.recv() => write_frame(&mut send, TAG_STDERR, &b).await?,
            r = &mut run => break r,
        }
    };
    // What the process wrote before it ended.
    while let Some(b) = out_rx.recv().await {
        write_frame(&mut send, TAG_STDOUT, &b).await?;
    }
    while let Some(b) = err_rx.recv().await {
        write_frame(&mut send, TAG_STDERR, &b).await?;
    }
    inbound.abort();
    let exit: Result<i32, WireError> = result.map_err(WireError::from);
    write_frame(&mut send, TAG_EXIT, &serde_json::to_vec(&exit)?).await?;
    send.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, TAG_STDOUT, b"hello").await.expect("write");
        write_frame(&mut a, TAG_EXIT, b"").await.expect("write");
        drop(a);
        assert_eq!(read_frame(&mut b).await.expect("read"), Some((TAG_STDOUT, b"hello".to_vec())));
        assert_eq!(read_frame(&mut b).await.expect("read"), Some((TAG_EXIT, vec![])));
        assert_eq!(read_frame(&mut b).await.expect("read"), None);
    }

    #[test]
    fn errors_survive_the_wire() {
        let e = StreamError::NotStarted { pod: "p".into(), container: "c".into(), reason: "ContainerCreating".into() };
        let wire = serde_json::to_vec(&Some(WireError::from(e.clone()))).expect("encode");
        let back: Option<WireError> = serde_json::from_slice(&wire).expect("decode");
        assert_eq!(StreamError::from(back.expect("some")).to_string(), e.to_string());
        let ok: Option<WireError> = serde_json::from_slice(b"null").expect("decode");
        assert!(ok.is_none());
    }

    /// Serves one fixed log and an exec that echoes stdin, as a node's local streams would.
    struct Fake;

    impl PodStreams for Fake {
        fn logs(&self, pod: &Value, opts: LogOptions) -> BoxFuture<'static, Result<ByteStream, StreamError>> {
            let name = pod_name(pod);
            Box::pin(async move {
                if opts.container.as_deref() == Some("nope") {
                    return Err(StreamError::ContainerNotFound { pod: name, container: "nope".into() });
                }
                let chunks =
                    vec![Ok(Bytes::from("started\n")), Ok(Bytes::from(format!("tail={:?}\n", opts.tail_lines)))];
                Ok(Box::pin(futures::stream::iter(chunks)) as ByteStream)
            })
        }

        fn exec(&self, _pod: &Value, opts: ExecOptions, io: ExecIo) -> BoxFuture<'static, Result<i32, StreamError>> {
            Box::pin(async move {
                let _ = io.stderr.send(Bytes::from(opts.command.join(" "))).await;
                let mut stdin = io.stdin.ok_or_else(|| StreamError::Unavailable("no stdin".into()))?;
                while let Some(b) = stdin.recv().await {
                    let _ = io.stdout.send(b).await;
                }
                Ok(7)
            })
        }

        /// Connects to `status.podIP:port`, as a node does for a pod without a network
        /// namespace of its own (tests put 127.0.0.1 there).
        fn port_forward(&self, pod: &Value, port: u16) -> BoxFuture<'static, Result<PortConnection, StreamError>> {
            connect_pod_port(pod, port, PathBuf::from("/nonexistent/net"))
        }
    }

    #[tokio::test]
    async fn logs_and_exec_are_proxied_to_the_node_that_runs_the_pod() {
        use futures::StreamExt;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let secrets = shoal_gossip::ClusterSecrets::generate("test").expect("ca");
        let lo: std::net::IpAddr = "127.0.0.1".parse().expect("ip");
        let bind = |name: &str| {
            let tls = secrets.node_tls(name, &[lo]).expect("node cert");
            Transport::bind("127.0.0.1:0".parse().expect("addr"), tls).expect("bind")
        };
        let (a, b) = (bind("n1"), bind("n2"));
        register_with(&b, Arc::new(Fake), "n2");
        let peers = Peers::Fixed([("n2".to_string(), b.local_addr().expect("addr"))].into_iter().collect());
        let streams = NodeStreams { local: Arc::new(Fake), transport: Some(a.clone()), peers, node_name: "n1".into() };
        let pod = serde_json::json!({"metadata": {"name": "p", "uid": "u"}, "spec": {"nodeName": "n2", "containers": [{"name": "c"}]}});

        let opts = LogOptions { tail_lines: Some(3), ..LogOptions::default() };
        let mut log = streams.logs(&pod, opts).await.expect("remote log opens");
        let mut text = String::new();
        while let Some(chunk) = log.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        }
        assert_eq!(text, "started\ntail=Some(3)\n");
        let err = streams.logs(&pod, LogOptions { container: Some("nope".into()), ..LogOptions::default() }).await;
        assert!(matches!(err, Err(StreamError::ContainerNotFound { .. })));

        let (in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, mut out_rx) = mpsc::channel(4);
        let (err_tx, mut err_rx) = mpsc::channel(4);
        let (_rs_tx, rs_rx) = mpsc::channel(1);
        let io = ExecIo { stdin: Some(in_rx), stdout: out_tx, stderr: err_tx, resize: rs_rx };
        let opts = ExecOptions {
            container: "c".into(),
            command: vec!["cat".into()],
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        let run = tokio::spawn(streams.exec(&pod, opts, io));
        in_tx.send(Bytes::from("ping")).await.expect("stdin");
        drop(in_tx);
        assert_eq!(run.await.expect("join").expect("exec"), 7);
        assert_eq!(out_rx.recv().await, Some(Bytes::from("ping")));
        assert_eq!(err_rx.recv().await, Some(Bytes::from("cat")));

        // Port-forward: bytes both ways through n2, which connects to the pod's IP and port.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            tcp.read_to_end(&mut got).await.expect("read");
            tcp.write_all(b"pong:").await.expect("write");
            tcp.write_all(&got).await.expect("write");
        });
        let mut running = pod.clone();
        running["status"]["podIP"] = serde_json::json!("127.0.0.1");
        let PortConnection { mut read, mut write } = streams.port_forward(&running, port).await.expect("forward");
        write.write_all(b"ping").await.expect("send");
        write.shutdown().await.expect("half-close");
        let mut back = Vec::new();
        read.read_to_end(&mut back).await.expect("answer");
        assert_eq!(back, b"pong:ping");
        server.await.expect("server");
        let refused = streams.port_forward(&running, 1).await.err().expect("nothing listens on port 1");
        assert!(matches!(refused, StreamError::ConnectPort { port: 1, .. }), "{refused}");

        let elsewhere =
            serde_json::json!({"metadata": {"name": "q"}, "spec": {"nodeName": "n9", "containers": [{"name": "c"}]}});
        assert!(matches!(streams.logs(&elsewhere, LogOptions::default()).await, Err(StreamError::Unavailable(_))));
        a.shutdown().await;
        b.shutdown().await;
    }

    mod root {
        use super::*;
        use std::io::{Read, Write};

        /// A server on 127.0.0.1 only, inside a pod's network namespace, is reached by
        /// port-forward (as with the kubelet), though nothing outside the namespace can reach it.
        #[tokio::test]
        async fn port_forward_reaches_a_server_on_the_pods_loopback() {
            assert!(nix::unistd::geteuid().is_root(), "this test creates a network namespace: run it as root");
            let ns = format!("shoal-pf-{}", std::process::id());
            let ok = |args: &[&str]| std::process::Command::new("ip").args(args).status().is_ok_and(|s| s.success());
            assert!(ok(&["netns", "add", &ns]), "ip netns add");
            struct Gone(String);
            impl Drop for Gone {
                fn drop(&mut self) {
                    let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).status();
                }
            }
            let _gone = Gone(ns.clone());
            assert!(ok(&["-n", &ns, "link", "set", "lo", "up"]));
            let path = PathBuf::from("/run/netns").join(&ns);
            let (tx, rx) = std::sync::mpsc::channel();
            let server_ns = path.clone();
            let server = std::thread::spawn(move || {
                let f = std::fs::File::open(&server_ns).expect("open netns");
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
                tx.send(l.local_addr().expect("addr").port()).expect("port");
                let (mut c, _) = l.accept().expect("accept");
                let mut buf = [0u8; 4];
                c.read_exact(&mut buf).expect("read");
                c.write_all(b"pong").expect("write");
            });
            let port = rx.recv().expect("port");
            // The pod's IP is elsewhere: only the namespace route can work.
            let pod = serde_json::json!({"metadata": {"name": "p", "uid": "u"}, "status": {"podIP": "192.0.2.1"}});
            let PortConnection { mut read, mut write } =
                connect_pod_port(&pod, port, path.clone()).await.expect("forward into the namespace");
            write.write_all(b"ping").await.expect("send");
            let mut back = [0u8; 4];
            read.read_exact(&mut back).await.expect("answer");
            assert_eq!(&back, b"pong");
            server.join().expect("server");
            let refused = connect_pod_port(&pod, 1, path).await.err().expect("nothing listens on port 1");
            assert!(matches!(refused, StreamError::ConnectPort { port: 1, .. }), "{refused}");
        }
    }

    #[test]
    fn unknown_containers_are_refused() {
        let pod =
            serde_json::json!({"metadata": {"name": "p", "uid": "abc"}, "spec": {"containers": [{"name": "web"}]}});
        assert!(container_of(&pod, "").is_ok());
        assert!(matches!(container_of(&pod, "nope"), Err(StreamError::ContainerNotFound { .. })));
    }
}
