//! The pod streams of this node's own pods: logs from the log files, exec and attach through
//! the runtime, port-forward into the pod's network namespace.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::streams::{
    follow_output, ByteStream, ExecIo, ExecOptions, LogOptions, PodStreams, PortConnection, StreamError, TerminalSize,
};

/// Logs and exec for the pods of this node.
pub(crate) struct Local {
    logs: crate::node::logs::LocalLogs,
    runtime: shoal_runtime::RuntimeConfig,
    /// Where the pods' namespace files live (`/run/shoal/NODE/sandboxes/ID/net`).
    sandboxes: PathBuf,
}

impl Local {
    pub(crate) fn new(data_dir: &Path, node_name: &str) -> Local {
        let run = crate::node::os::HostPaths::default().run;
        Local {
            logs: crate::node::logs::LocalLogs { log_dir: data_dir.join("pods") },
            runtime: crate::node::runtime_config(&run, node_name),
            sandboxes: run.join(node_name).join("sandboxes"),
        }
    }
}

pub(super) fn pod_name(pod: &Value) -> String {
    pod["metadata"]["name"].as_str().unwrap_or_default().to_string()
}

/// The container a request names: `container`, or the pod's first when it is empty.
pub(super) fn container_name(pod: &Value, container: &str) -> String {
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
pub(super) fn container_of(pod: &Value, container: &str) -> Result<String, StreamError> {
    let name = container_name(pod, container);
    let known = all_containers(pod).any(|c| c["name"].as_str() == Some(name.as_str()));
    if !known {
        return Err(StreamError::ContainerNotFound { pod: pod_name(pod), container: name });
    }
    Ok(crate::node::pod::container_id(pod["metadata"]["uid"].as_str().unwrap_or_default(), &name))
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
        let netns = self.sandboxes.join(crate::node::pod::short(uid)).join("net");
        connect_pod_port(pod, port, netns)
    }
}

/// Connects to `port` as a process of the pod would reach it, as the kubelet's runtimes do:
/// `localhost:port` inside the pod's network namespace (`netns`), so a server that listens on
/// 127.0.0.1 only is reachable too. A pod without its own namespace here (host network) is
/// reached on its IP.
pub(super) fn connect_pod_port(
    pod: &Value,
    port: u16,
    netns: PathBuf,
) -> BoxFuture<'static, Result<PortConnection, StreamError>> {
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
pub(super) fn connect_in_netns(netns: &Path, addr: std::net::SocketAddr) -> Result<std::net::TcpStream, String> {
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
pub(super) fn must_be_running(
    rt: &shoal_runtime::Runtime,
    id: &str,
    pod: String,
    container: String,
) -> Result<(), StreamError> {
    match rt.state(id) {
        Err(_) => Err(StreamError::NotStarted { pod, container, reason: "ContainerCreating".into() }),
        Ok(st) if st.status != shoal_runtime::Status::Running => {
            Err(StreamError::NotStarted { pod, container, reason: format!("container is {}", st.status) })
        }
        Ok(_) => Ok(()),
    }
}

/// Runs a command in a local container and pumps its stdio through `io`.
pub(super) async fn exec_local(
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
        rt.exec(&id, &process, tty).map_err(|e| StreamError::Unavailable(crate::node::pod::chain(&e)))
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
pub(super) enum Attached {
    Done(Result<i32, StreamError>),
    NoSocket(ExecIo),
}

/// Attaches to a local container's main process through its shim: live output, and input
/// when the client sends it. Ends when the container does (or the client goes away).
pub(super) async fn attach_local(
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
            Err(e) => Err(StreamError::Unavailable(crate::node::pod::chain(&e))),
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
pub(super) async fn attach_session(
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
