//! The peer transport: one QUIC endpoint per node, mutual TLS 1.3 with certificates from the
//! cluster CA.
//!
//! ALPN `shoal/1` carries request/response calls and raw streams between nodes; a client must
//! present a node certificate (O `system:nodes`) from the cluster CA, and a connection without
//! one (no certificate, or a user's) is closed before any stream is read. ALPN `shoal-join/1` serves exactly one join request per connection to a node
//! holding only a join token.

mod frame;
mod join;
mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::pki::{common_name, organizations, ClusterSecrets, NodeTls, PEER_SERVER_NAME};

pub use join::{join, refusal as join_refusal, JoinBundle, JoinRequest};
pub use tls::{check_after_handshake, refusing_revoked, resumption, skew_tolerant_client_verifier, AfterHandshake};

use crate::revocation::Revocations;

/// Default UDP port of the peer endpoint.
pub const DEFAULT_PEER_PORT: u16 = 7443;
/// Default cap on one request or response.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024 * 1024;

/// QUIC application close code for a peer without a valid client certificate.
const CLOSE_UNAUTHENTICATED: u32 = 0x10;
const CLOSE_UNKNOWN_ALPN: u32 = 0x11;
/// QUIC application close code for a client certificate that is not a node's.
const CLOSE_NOT_A_NODE: u32 = 0x13;
/// QUIC application close code for a connection whose certificate was revoked while open.
const CLOSE_REVOKED: u32 = 0x14;
const CLOSE_SHUTDOWN: u32 = 0x12;
const CLOSE_DONE: u32 = 0;
/// Stream stop code for a request frame over the size cap.
const STOP_TOO_LARGE: u32 = 0x20;

/// Who is on the other end of a peer connection, from its verified certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// The node name for node certificates (`system:node:` stripped), else the common name.
    pub node_name: String,
    /// The certificate's organizations ("system:nodes" for node certificates).
    pub organizations: Vec<String>,
}

impl PeerInfo {
    /// Whether the certificate is a node's (O `system:nodes`); only nodes reach peer services.
    pub fn is_node(&self) -> bool {
        self.organizations.iter().any(|o| o == crate::pki::NODES_ORG)
    }
}

/// Serves one request: the body in, the response body or an error message out.
pub type RpcHandler = Arc<dyn Fn(PeerInfo, Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, String>> + Send + Sync>;
/// Owns an accepted raw stream: peer, the header the opener sent, then both directions.
pub type StreamHandler = Arc<dyn Fn(PeerInfo, Vec<u8>, SendStream, RecvStream) -> BoxFuture<'static, ()> + Send + Sync>;
/// Called for every join with a valid token, before the reply is sent: returns the opaque
/// `extra` bytes of the reply, or a message refusing the join.
pub type JoinHook = Arc<dyn Fn(JoinRequest, SocketAddr) -> BoxFuture<'static, Result<Vec<u8>, String>> + Send + Sync>;
/// Decides whether a presented join secret admits `JoinRequest` (and records a use of it):
/// `Err` carries the message the joiner sees ("join token expired", ...). Without one, the
/// secret must equal the cluster secrets' `token_secret`.
pub type TokenCheck =
    Arc<dyn Fn(String, JoinRequest, SocketAddr) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Sends a join request (its raw bytes, and the joiner's address) to the node that signs
/// certificates: `Some(reply bytes)` (see [`join_refusal`]), or `None` to answer here.
pub type JoinForward = Arc<dyn Fn(Vec<u8>, SocketAddr) -> BoxFuture<'static, Option<Vec<u8>>> + Send + Sync>;

/// Timeouts and limits of the transport.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Whole-call limit for [`Transport::call`] (connect, send, remote handler, answer) and for
    /// [`Transport::open_stream`] until the remote accepts the stream.
    pub call_timeout: Duration,
    /// Limit on establishing a QUIC connection.
    pub connect_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Keep-alive interval on open connections (detects a vanished peer within `idle_timeout`).
    pub keep_alive: Duration,
    /// Largest request or response accepted or sent, in bytes.
    pub max_frame: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

impl TransportConfig {
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason| Err(Error::InvalidTransportConfig { reason });
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return invalid("keep_alive must be positive and shorter than idle_timeout");
        }
        if self.call_timeout.is_zero() || self.connect_timeout.is_zero() {
            return invalid("timeouts must be positive");
        }
        if self.max_frame < 1024 {
            return invalid("max_frame must be at least 1024 bytes");
        }
        Ok(())
    }
}

struct JoinService {
    secrets: ClusterSecrets,
    hook: Option<JoinHook>,
}

struct Inner {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    cfg: TransportConfig,
    rpc: RwLock<HashMap<String, RpcHandler>>,
    streams: RwLock<HashMap<String, StreamHandler>>,
    join: RwLock<Option<Arc<JoinService>>>,
    token_check: RwLock<Option<TokenCheck>>,
    join_forward: RwLock<Option<JoinForward>>,
    conns: Mutex<HashMap<SocketAddr, Connection>>,
    /// One dial at a time per peer, so concurrent first calls share one connection.
    dialing: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// Certificates refused at every handshake, both ways; open connections of one that gets
    /// revoked are closed.
    revoked: Revocations,
}

/// A node's QUIC endpoint: serves registered services and calls other nodes. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("local_addr", &self.local_addr().ok()).finish()
    }
}

impl Transport {
    /// Binds the endpoint with default timeouts and limits. Must be called inside a tokio runtime.
    pub fn bind(addr: SocketAddr, tls: NodeTls) -> Result<Self> {
        Self::bind_with(addr, tls, TransportConfig::default())
    }

    pub fn bind_with(addr: SocketAddr, tls: NodeTls, cfg: TransportConfig) -> Result<Self> {
        cfg.validate()?;
        let transport = tls::quic_transport_config(cfg.idle_timeout, cfg.keep_alive)?;
        let revoked = Revocations::default();
        let server_config = tls::server_config(&tls, transport.clone(), &revoked)?;
        let client_config = tls::peer_client_config(&tls, transport, &revoked)?;
        let endpoint = quinn::Endpoint::server(server_config, addr).map_err(|source| Error::Bind { addr, source })?;
        let inner = Arc::new(Inner {
            endpoint,
            client_config,
            cfg,
            rpc: RwLock::new(HashMap::new()),
            streams: RwLock::new(HashMap::new()),
            join: RwLock::new(None),
            token_check: RwLock::new(None),
            join_forward: RwLock::new(None),
            conns: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            revoked,
        });
        inner.tasks.spawn(accept_loop(inner.clone()));
        inner.tasks.spawn(close_revoked_outgoing(inner.clone(), inner.revoked.subscribe()));
        Ok(Self { inner })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.inner.endpoint.local_addr().map_err(Error::LocalAddr)
    }

    /// The revoked certificate serials this endpoint refuses (shared: keep it current, and
    /// hand the same set to other TLS servers of the node).
    pub fn revocations(&self) -> Revocations {
        self.inner.revoked.clone()
    }

    /// QUIC connections this endpoint holds, incoming and outgoing (closing ones included).
    pub fn open_connections(&self) -> usize {
        self.inner.endpoint.open_connections()
    }

    /// Registers (or replaces) the handler of a request/response service.
    pub fn register(&self, service: &str, handler: RpcHandler) {
        write_lock(&self.inner.rpc).insert(service.to_string(), handler);
    }

    /// Registers (or replaces) the handler of a raw-stream service.
    pub fn register_stream(&self, service: &str, handler: StreamHandler) {
        write_lock(&self.inner.streams).insert(service.to_string(), handler);
    }

    /// Starts answering joins: a valid token gets a node certificate signed by the CA in
    /// `secrets`, the secrets without the CA key, and whatever `hook` returns as `extra`.
    pub fn enable_join(&self, secrets: ClusterSecrets, hook: Option<JoinHook>) {
        *write_lock(&self.inner.join) = Some(Arc::new(JoinService { secrets, hook }));
    }

    /// Checks join secrets with `check` instead of comparing them with the cluster secrets'
    /// `token_secret` (kept across [`Self::enable_join`]).
    pub fn set_token_check(&self, check: TokenCheck) {
        *write_lock(&self.inner.token_check) = Some(check);
    }

    /// Lets `forward` decide where each join request is answered (kept across
    /// [`Self::enable_join`]).
    pub fn set_join_forward(&self, forward: JoinForward) {
        *write_lock(&self.inner.join_forward) = Some(forward);
    }

    /// Answers a join request here, never forwarding it (the leader's side of a forwarded
    /// join): the reply's bytes for the joiner.
    pub async fn answer_join(&self, request: &[u8], remote: SocketAddr) -> Vec<u8> {
        join::answer(&self.inner, remote, request).await
    }

    /// Stops answering joins (every join is refused).
    pub fn disable_join(&self) {
        *write_lock(&self.inner.join) = None;
    }

    /// Calls `service` on the node at `addr` and waits for its answer, at most
    /// [`TransportConfig::call_timeout`].
    pub async fn call(&self, addr: SocketAddr, service: &str, body: Vec<u8>) -> Result<Vec<u8>> {
        self.call_with_timeout(addr, service, body, self.inner.cfg.call_timeout).await
    }

    /// [`Self::call`] with its own limit (e.g. short Raft heartbeats). On timeout the cached
    /// connection to `addr` is dropped, so the next call reconnects.
    pub async fn call_with_timeout(
        &self,
        addr: SocketAddr,
        service: &str,
        body: Vec<u8>,
        after: Duration,
    ) -> Result<Vec<u8>> {
        let max = self.inner.cfg.max_frame;
        let len = body.len() + frame::request_overhead(service);
        if len > max {
            return Err(Error::FrameTooLarge { len: len as u64, max: max as u64 });
        }
        match tokio::time::timeout(after, self.call_inner(addr, service, &body)).await {
            Ok(result) => result,
            Err(_) => {
                // The connection may be dead without QUIC knowing yet: the next call starts afresh.
                self.forget_connection(addr);
                Err(Error::Timeout { addr, service: service.to_string(), after })
            }
        }
    }

    async fn call_inner(&self, addr: SocketAddr, service: &str, body: &[u8]) -> Result<Vec<u8>> {
        let (mut send, mut recv) = self.open_bi(addr).await?;
        let head = frame::encode_request_head(frame::KIND_RPC, service)?;
        let written = frame::write_frame(&mut send, addr, &[&head, body]).await;
        let _ = send.finish();
        // Even when writing failed the peer may have answered why (e.g. request too large).
        let answer = frame::read_frame(&mut recv, addr, self.inner.cfg.max_frame).await;
        let answer = match (answer, written) {
            (Ok(answer), _) => answer,
            (Err(e), Ok(())) | (Err(_), Err(e)) => {
                self.forget_connection_if_closed(addr);
                return Err(e);
            }
        };
        decode_answer(addr, service, answer, body.len())
    }

    /// Opens a raw stream to `service` on `addr`, sending `header` first. Returns once the
    /// remote has accepted the stream.
    pub async fn open_stream(
        &self,
        addr: SocketAddr,
        service: &str,
        header: Vec<u8>,
    ) -> Result<(SendStream, RecvStream)> {
        let max = self.inner.cfg.max_frame;
        let len = header.len() + frame::request_overhead(service);
        if len > max {
            return Err(Error::FrameTooLarge { len: len as u64, max: max as u64 });
        }
        let after = self.inner.cfg.call_timeout;
        let open = async {
            let (mut send, mut recv) = self.open_bi(addr).await?;
            let head = frame::encode_request_head(frame::KIND_STREAM, service)?;
            frame::write_frame(&mut send, addr, &[&head, &header]).await?;
            let answer = frame::read_frame(&mut recv, addr, max).await?;
            decode_answer(addr, service, answer, header.len())?;
            Ok((send, recv))
        };
        match tokio::time::timeout(after, open).await {
            Ok(result) => result,
            Err(_) => {
                self.forget_connection(addr);
                Err(Error::Timeout { addr, service: service.to_string(), after })
            }
        }
    }

    /// Closes every connection and stops serving; in-flight handlers see their streams fail.
    pub async fn shutdown(&self) {
        self.inner.endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        self.inner.shutdown.cancel();
        lock(&self.inner.conns).clear();
        self.inner.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.tasks.wait()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
        self.release_port();
    }

    /// Frees the bound port now rather than when the last clone and quinn's driver go away, so
    /// a node restarted in the same process can bind it again. quinn keeps the previous socket
    /// of one rebind alive for late packets; the second rebind drops the original.
    fn release_port(&self) {
        let Ok(local) = self.inner.endpoint.local_addr() else {
            return;
        };
        let throwaway: SocketAddr = if local.is_ipv4() {
            (std::net::Ipv4Addr::LOCALHOST, 0).into()
        } else {
            (std::net::Ipv6Addr::LOCALHOST, 0).into()
        };
        for _ in 0..2 {
            match std::net::UdpSocket::bind(throwaway) {
                Ok(socket) => {
                    if let Err(error) = self.inner.endpoint.rebind(socket) {
                        debug!(%error, "releasing the peer port failed");
                        return;
                    }
                }
                Err(error) => {
                    debug!(%error, "releasing the peer port failed");
                    return;
                }
            }
        }
    }

    async fn open_bi(&self, addr: SocketAddr) -> Result<(SendStream, RecvStream)> {
        let mut fresh = false;
        loop {
            let conn = self.connection(addr, fresh).await?;
            match conn.open_bi().await {
                Ok(streams) => return Ok(streams),
                Err(source) => {
                    self.forget_exact(addr, &conn);
                    if fresh {
                        return Err(Error::OpenStream { addr, source });
                    }
                    debug!(peer = %addr, error = %source, "cached connection failed, reconnecting");
                    fresh = true;
                }
            }
        }
    }

    async fn connection(&self, addr: SocketAddr, fresh: bool) -> Result<Connection> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::Closed);
        }
        if !fresh {
            if let Some(conn) = self.cached(addr) {
                return Ok(conn);
            }
        }
        let dial_lock = lock(&self.inner.dialing).entry(addr).or_default().clone();
        let _dialing = dial_lock.lock().await;
        // Someone else may have connected while this call waited (a failed connection was
        // already forgotten, so whatever is cached now is newer).
        if let Some(conn) = self.cached(addr) {
            return Ok(conn);
        }
        let connecting = self
            .inner
            .endpoint
            .connect_with(self.inner.client_config.clone(), addr, PEER_SERVER_NAME)
            .map_err(|source| Error::Connect { addr, source })?;
        let after = self.inner.cfg.connect_timeout;
        let conn = tokio::time::timeout(after, connecting)
            .await
            .map_err(|_| Error::ConnectTimeout { addr, after })?
            .map_err(|source| Error::Handshake { addr, source })?;
        if let Err(reason) = tls::check_after_handshake(leaf_certificate(&conn).as_ref(), &self.inner.revoked) {
            warn!(peer = %addr, %reason, "refusing a peer's certificate after the handshake");
            conn.close(VarInt::from_u32(CLOSE_REVOKED), reason.to_string().as_bytes());
            return Err(Error::PeerCertificateRefused { addr, reason });
        }
        debug!(peer = %addr, "connected to peer");
        lock(&self.inner.conns).insert(addr, conn.clone());
        Ok(conn)
    }

    fn cached(&self, addr: SocketAddr) -> Option<Connection> {
        lock(&self.inner.conns).get(&addr).filter(|conn| conn.close_reason().is_none()).cloned()
    }

    fn forget_connection(&self, addr: SocketAddr) {
        lock(&self.inner.conns).remove(&addr);
    }

    fn forget_connection_if_closed(&self, addr: SocketAddr) {
        let mut conns = lock(&self.inner.conns);
        if conns.get(&addr).is_some_and(|c| c.close_reason().is_some()) {
            conns.remove(&addr);
        }
    }

    fn forget_exact(&self, addr: SocketAddr, conn: &Connection) {
        let mut conns = lock(&self.inner.conns);
        if conns.get(&addr).is_some_and(|c| c.stable_id() == conn.stable_id()) {
            conns.remove(&addr);
        }
    }
}

fn decode_answer(addr: SocketAddr, service: &str, mut answer: Vec<u8>, sent: usize) -> Result<Vec<u8>> {
    if answer.is_empty() {
        return Err(Error::MalformedFrame { addr, reason: "empty answer" });
    }
    let status = answer[0];
    let payload = answer.split_off(1);
    match status {
        frame::STATUS_OK => Ok(payload),
        frame::STATUS_HANDLER_ERROR => Err(Error::Remote {
            addr,
            service: service.to_string(),
            message: String::from_utf8_lossy(&payload).into_owned(),
        }),
        frame::STATUS_UNKNOWN_SERVICE => Err(Error::UnknownService { addr, service: service.to_string() }),
        frame::STATUS_TOO_LARGE => {
            let max = payload.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes).unwrap_or(0);
            Err(Error::FrameTooLarge { len: (sent + frame::request_overhead(service)) as u64, max })
        }
        frame::STATUS_SHUTTING_DOWN => Err(Error::PeerShuttingDown { addr }),
        frame::STATUS_MALFORMED => Err(Error::MalformedFrame { addr, reason: "peer could not decode the request" }),
        _ => Err(Error::MalformedFrame { addr, reason: "unknown answer status" }),
    }
}

async fn accept_loop(inner: Arc<Inner>) {
    loop {
        let incoming = tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            incoming = inner.endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let cancel = inner.shutdown.clone();
        let serve = handle_incoming(inner.clone(), incoming);
        inner.tasks.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = serve => {}
            }
        });
    }
}

/// Closes the cached outgoing connections to a peer whose certificate was just revoked (a
/// removed node): the next call dials again, and that handshake fails.
async fn close_revoked_outgoing(inner: Arc<Inner>, mut changes: tokio::sync::watch::Receiver<u64>) {
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            changed = changes.changed() => if changed.is_err() { break },
        }
        let mut conns = lock(&inner.conns);
        conns.retain(|addr, conn| {
            let revoked = leaf_certificate(conn).is_some_and(|leaf| inner.revoked.is_revoked_cert(leaf.as_ref()));
            if revoked {
                warn!(peer = %addr, "closing the connection to a peer whose certificate was revoked");
                conn.close(VarInt::from_u32(CLOSE_REVOKED), b"certificate revoked");
            }
            !revoked
        });
    }
}

fn leaf_certificate(conn: &Connection) -> Option<rustls::pki_types::CertificateDer<'static>> {
    let certs = conn.peer_identity()?.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    certs.first().cloned()
}

async fn handle_incoming(inner: Arc<Inner>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(error) => {
            debug!(peer = %remote, %error, "refused incoming connection");
            return;
        }
    };
    let conn = match tokio::time::timeout(inner.cfg.connect_timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => {
            debug!(peer = %remote, %error, "incoming handshake failed");
            return;
        }
        Err(_) => {
            debug!(peer = %remote, "incoming handshake timed out");
            return;
        }
    };
    let alpn = conn
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol);
    match alpn.as_deref() {
        Some(tls::PEER_ALPN) => match peer_info(&conn) {
            Some(peer) if peer.is_node() => serve_peer(inner, conn, peer).await,
            Some(peer) => {
                // A user's certificate from the same CA (the admin's too) opens no peer
                // service: Raft, forwarded writes, pod streams and image blobs are for nodes.
                warn!(peer = %remote, name = %peer.node_name, orgs = ?peer.organizations, "closing peer connection: not a node certificate");
                conn.close(VarInt::from_u32(CLOSE_NOT_A_NODE), b"not a node certificate");
            }
            None => {
                warn!(peer = %remote, "closing peer connection without a client certificate");
                conn.close(VarInt::from_u32(CLOSE_UNAUTHENTICATED), b"");
            }
        },
        Some(tls::JOIN_ALPN) => join::serve_join(&inner, conn).await,
        _ => conn.close(VarInt::from_u32(CLOSE_UNKNOWN_ALPN), b""),
    }
}

/// The verified client certificate's names; `None` when the client presented none.
fn peer_info(conn: &Connection) -> Option<PeerInfo> {
    let leaf = leaf_certificate(conn)?;
    Some(PeerInfo {
        addr: conn.remote_address(),
        node_name: crate::pki::node_name_of(&common_name(leaf.as_ref())?).to_string(),
        organizations: organizations(leaf.as_ref()),
    })
}

async fn serve_peer(inner: Arc<Inner>, conn: Connection, peer: PeerInfo) {
    debug!(peer = %peer.addr, node = %peer.node_name, "peer connected");
    let leaf = leaf_certificate(&conn);
    // Subscribed first, so a revocation after the check below is seen by the loop.
    let mut revocations = inner.revoked.subscribe();
    // Before any request: a resumed session skipped the verifier, and a revocation may have
    // landed since the handshake.
    if let Err(reason) = tls::check_after_handshake(leaf.as_ref(), &inner.revoked) {
        warn!(peer = %peer.addr, node = %peer.node_name, %reason, "closing a peer connection after the handshake");
        conn.close(VarInt::from_u32(CLOSE_REVOKED), reason.to_string().as_bytes());
        return;
    }
    loop {
        let (send, recv) = tokio::select! {
            _ = inner.shutdown.cancelled() => {
                conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
                break;
            }
            Ok(()) = revocations.changed() => {
                if leaf.as_ref().is_some_and(|l| inner.revoked.is_revoked_cert(l.as_ref())) {
                    warn!(peer = %peer.addr, node = %peer.node_name, "closing the connection of a peer whose certificate was revoked");
                    conn.close(VarInt::from_u32(CLOSE_REVOKED), b"certificate revoked");
                    break;
                }
                continue;
            }
            streams = conn.accept_bi() => match streams {
                Ok(streams) => streams,
                Err(error) => {
                    debug!(peer = %peer.addr, %error, "peer connection ended");
                    break;
                }
            },
        };
        let cancel = inner.shutdown.clone();
        let serve = serve_stream(inner.clone(), peer.clone(), send, recv);
        inner.tasks.spawn(async move {
            // Handlers are dropped at shutdown, so the endpoint (and its port) can go.
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = serve => {}
            }
        });
    }
}

async fn serve_stream(inner: Arc<Inner>, peer: PeerInfo, mut send: SendStream, mut recv: RecvStream) {
    let max = inner.cfg.max_frame;
    let addr = peer.addr;
    let request = match tokio::time::timeout(inner.cfg.call_timeout, frame::read_frame(&mut recv, addr, max)).await {
        Ok(Ok(frame)) => frame,
        Ok(Err(Error::FrameTooLarge { len, max })) => {
            warn!(peer = %addr, len, max, "refusing oversized request");
            let _ = recv.stop(VarInt::from_u32(STOP_TOO_LARGE));
            answer(&mut send, addr, frame::STATUS_TOO_LARGE, &max.to_be_bytes()).await;
            return;
        }
        Ok(Err(error)) => {
            debug!(peer = %addr, %error, "reading request failed");
            return;
        }
        Err(_) => {
            debug!(peer = %addr, "peer sent no complete request in time");
            return;
        }
    };
    let request = match frame::decode_request(addr, request) {
        Ok(request) => request,
        Err(error) => {
            warn!(peer = %addr, %error, "malformed request");
            answer(&mut send, addr, frame::STATUS_MALFORMED, &[]).await;
            return;
        }
    };
    if inner.shutdown.is_cancelled() {
        answer(&mut send, addr, frame::STATUS_SHUTTING_DOWN, &[]).await;
        return;
    }
    match request.kind {
        frame::KIND_RPC => {
            let handler = read_lock(&inner.rpc).get(&request.service).cloned();
            let Some(handler) = handler else {
                debug!(peer = %addr, service = %request.service, "call to unknown service");
                answer(&mut send, addr, frame::STATUS_UNKNOWN_SERVICE, &[]).await;
                return;
            };
            match handler(peer, request.body).await {
                Ok(body) if body.len() + 1 > max => {
                    warn!(peer = %addr, service = %request.service, len = body.len(), "response over the frame limit");
                    let message = format!("response of {} bytes exceeds the limit of {max} bytes", body.len());
                    answer(&mut send, addr, frame::STATUS_HANDLER_ERROR, message.as_bytes()).await;
                }
                Ok(body) => answer(&mut send, addr, frame::STATUS_OK, &body).await,
                Err(message) => answer(&mut send, addr, frame::STATUS_HANDLER_ERROR, message.as_bytes()).await,
            }
        }
        frame::KIND_STREAM => {
            let handler = read_lock(&inner.streams).get(&request.service).cloned();
            let Some(handler) = handler else {
                debug!(peer = %addr, service = %request.service, "stream to unknown service");
                answer(&mut send, addr, frame::STATUS_UNKNOWN_SERVICE, &[]).await;
                return;
            };
            if frame::write_frame(&mut send, addr, &[&[frame::STATUS_OK]]).await.is_err() {
                return;
            }
            handler(peer, request.body, send, recv).await;
        }
        _ => answer(&mut send, addr, frame::STATUS_MALFORMED, &[]).await,
    }
}

async fn answer(send: &mut SendStream, addr: SocketAddr, status: u8, payload: &[u8]) {
    match frame::write_frame(send, addr, &[&[status], payload]).await {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(error) => debug!(peer = %addr, %error, "writing answer failed"),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read_lock<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write_lock<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}
