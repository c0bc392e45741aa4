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
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::Value;
use shoal_gossip::{PeerInfo, Transport};
use shoal_store::Store;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::streams::{
    ByteStream, ExecIo, ExecOptions, LogOptions, PodStreams, PortConnection, StreamError, TerminalSize,
};

mod local;
mod wire;

use local::pod_name;
pub(crate) use local::{all_containers, Local};
use wire::{
    read_frame, write_frame, Request, WireError, WireExecOptions, SERVICE, TAG_EXIT, TAG_OPEN, TAG_RESIZE, TAG_STDERR,
    TAG_STDIN, TAG_STDIN_EOF, TAG_STDOUT,
};

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
    use std::path::PathBuf;

    use tokio::io::AsyncReadExt;

    use super::local::{connect_pod_port, container_of};
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
