//! The Kubernetes API server every node runs: HTTPS on :6443 (HTTP/2 and HTTP/1.1), client
//! certificates from the cluster CA, discovery, OpenAPI v3, CRUD with patches, Tables, watch,
//! and the pod streaming endpoints, over the object layer ([`shoal_kube::Objects`]).
//!
//! Files: `router` parses paths and dispatches, `crud` holds the generic verbs, `watch` the
//! event streams, `discovery` and `openapi` what kubectl reads before it acts, `table` the
//! server-side printing, `registry` the served resources (built-in and from CRDs), and one
//! file per kind with behaviour of its own (`pod`, `service`, `namespace`, `secret`,
//! `workloads`, `job`, `crd`, `scale`), `exec` the WebSocket exec/attach sessions, `portforward` and `spdy` the
//! port-forward sessions.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use shoal_kube::Objects;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

mod apiservice;
pub mod audit;
mod authz;
mod crd;
mod crud;
mod csr;
mod discovery;
mod ephemeral;
mod events_v1;
mod exec;
mod job;
mod kubeconfig;
mod limits;
mod list_options;
mod metadata;
mod namespace;
mod node;
mod openapi;
mod openapi_v2;
mod paging;
mod pod;
mod portforward;
mod proxy;
mod rbac;
mod registry;
mod router;
mod scale;
mod secret;
mod service;
mod spdy;
mod status;
mod table;
mod tls;
mod token_request;
mod ui;
mod watch;
mod workloads;

pub use crate::streams::{
    follow_output, ByteStream, ExecIo, ExecOptions, LogOptions, PodStreams, PortConnection, StreamError, TerminalSize,
};
pub use audit::{AuditConfig, AuditLog};
pub use kubeconfig::{kubeconfig, kubeconfig_for};
pub use limits::Caps;
pub use node::NodeHeartbeats;
pub use tls::TlsMaterial;

pub use shoal_kube::KUBERNETES_VERSION;

pub use crate::config::DEFAULT_EVENT_TTL;

/// Request bodies above this many bytes get 413 (kube-apiserver's limit is 3 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Errors that stop the API server from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("parse {what} PEM")]
    ParsePem {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what} PEM holds no certificate")]
    EmptyPem { what: &'static str },
    #[error("build TLS configuration")]
    TlsConfig(#[source] rustls::Error),
    #[error("build client certificate verifier: {0}")]
    ClientVerifier(String),
    #[error("bind API listener on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("read listener address")]
    LocalAddr(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the API server needs.
#[derive(Clone)]
pub struct ApiConfig {
    /// Where to listen (`0.0.0.0:6443` on a node; `127.0.0.1:0` in tests).
    pub listen: SocketAddr,
    pub tls: TlsMaterial,
    pub objects: Objects,
    /// This node's name (reported in logs and used for node-local answers).
    pub node_name: String,
    /// The node agent's log/exec/attach/port-forward provider; `None` answers 503.
    pub streams: Option<Arc<dyn PodStreams>>,
    /// Request bodies above this size get 413.
    pub max_body_bytes: usize,
    /// Where `metrics.k8s.io` reads usage; `None` serves empty lists.
    pub metrics: Option<Arc<dyn MetricsSource>>,
    /// Live node heartbeats (gossip) shown in Node conditions; `None` shows the stored ones.
    pub heartbeats: Option<Arc<dyn NodeHeartbeats>>,
    /// What `/metrics` serves (the process-wide families unless a node sets its own).
    pub exporter: Arc<crate::metrics::Exporter>,
    /// Events expire this long after their creation, unless `objects` already has a TTL
    /// (a node sets it from `[api] event_ttl`); None: never.
    pub event_ttl: Option<Duration>,
    /// The cluster's ServiceAccount keys: bearer tokens are verified with them and
    /// TokenRequest signs with them; None: no token is accepted and TokenRequest answers 503.
    pub tokens: Option<Arc<crate::auth::sa_token::TokenKeys>>,
    /// The longest token TokenRequest hands out (`[api] service_account_max_token_expiration`).
    pub max_token_expiration: Duration,
    /// Where mutating requests are recorded; None: nowhere.
    pub audit: Option<Arc<AuditLog>>,
    /// CIDRs Services' `externalIPs` may use (`[admission] external_ip_cidrs`); empty: none.
    /// The Service range ClusterIPs come from (`[network] service_cidr`).
    pub service_cidr: shoal_kube::service_cidr::ServiceCidr,
    pub external_ip_cidrs: Vec<String>,
    /// Pod Security labels a namespace gets unless it sets them (`[admission.pod_security]`),
    /// label key to value; empty: privileged everywhere, as upstream.
    pub pod_security_defaults: std::collections::BTreeMap<String, String>,
    /// Client certificates refused at the TLS handshake; a connection whose certificate is
    /// revoked while it is open is closed (watches and streams on it end).
    pub revoked: shoal_gossip::Revocations,
    /// An HTTP/1 connection is closed when a request head takes longer than this to arrive,
    /// or when it sits idle between requests this long; an HTTP/2 connection when it has had
    /// no request open this long.
    pub header_read_timeout: Duration,
    /// Connections per client address, watches per user, requests in flight (`[api]`).
    pub caps: Caps,
}

/// Closes a connection whose TLS handshake failed so that the client reads the alert (say,
/// "revoked certificate") rather than a reset: a TLS 1.3 client sends its request before the
/// server has checked its certificate, and closing with that request unread resets the
/// connection ("broken pipe"). So: stop sending, then read and drop what the client still
/// sends, for at most a second.
async fn close_after_alert(mut tcp: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let mut buf = [0u8; 4096];
    let drain = async { while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// Pod and node usage for `metrics.k8s.io` (`kubectl top`), from the node agents.
pub trait MetricsSource: Send + Sync {
    /// A PodMetricsList / NodeMetricsList (or one object when `name` is given); None: not found.
    fn to_json(&self, plural: &str, namespace: Option<&str>, name: Option<&str>) -> Option<serde_json::Value>;
}

impl ApiConfig {
    pub fn new(listen: SocketAddr, tls: TlsMaterial, objects: Objects, node_name: impl Into<String>) -> Self {
        ApiConfig {
            listen,
            tls,
            objects,
            node_name: node_name.into(),
            streams: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            metrics: None,
            heartbeats: None,
            exporter: Arc::new(crate::metrics::Exporter::default()),
            event_ttl: Some(DEFAULT_EVENT_TTL),
            tokens: None,
            max_token_expiration: Duration::from_secs(crate::auth::sa_token::DEFAULT_MAX_EXPIRATION_SECS as u64),
            audit: None,
            external_ip_cidrs: Vec::new(),
            service_cidr: Default::default(),
            pod_security_defaults: Default::default(),
            revoked: Default::default(),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            caps: Caps::default(),
        }
    }
}

/// Shared by every request handler.
pub(crate) struct ApiState {
    pub objects: Objects,
    pub node_name: String,
    pub streams: Option<Arc<dyn PodStreams>>,
    pub max_body_bytes: usize,
    pub metrics: Option<Arc<dyn MetricsSource>>,
    pub heartbeats: Option<Arc<dyn NodeHeartbeats>>,
    pub exporter: Arc<crate::metrics::Exporter>,
    /// Decides every request from outside (RBAC).
    pub authz: Arc<crate::auth::Authorizer>,
    /// See [`ApiConfig::tokens`].
    pub tokens: Option<Arc<crate::auth::sa_token::TokenKeys>>,
    pub max_token_expiration: Duration,
    pub audit: Option<Arc<AuditLog>>,
    /// Cancelled when the server stops; open watches and log streams end with it.
    pub shutdown: CancellationToken,
    /// See [`ApiConfig::service_cidr`].
    pub service_cidr: shoal_kube::service_cidr::ServiceCidr,
    /// See [`ApiConfig::external_ip_cidrs`].
    pub external_ip_cidrs: Vec<String>,
    /// See [`ApiConfig::pod_security_defaults`].
    pub pod_security_defaults: std::collections::BTreeMap<String, String>,
    /// See [`ApiConfig::caps`].
    pub limits: Arc<limits::Limits>,
}

/// A bound, not yet serving, API server.
pub struct Server {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    cfg: ApiConfig,
}

impl Server {
    /// Binds the listener and loads the TLS material.
    pub async fn bind(mut cfg: ApiConfig) -> Result<Self> {
        if let (None, Some(ttl)) = (cfg.objects.event_ttl(), cfg.event_ttl) {
            cfg.objects = cfg.objects.clone().with_event_ttl(ttl);
        }
        let tls = tls::server_config(&cfg.tls, &cfg.revoked)?;
        let listener =
            TcpListener::bind(cfg.listen).await.map_err(|source| Error::Bind { addr: cfg.listen, source })?;
        Ok(Server { listener, acceptor: TlsAcceptor::from(Arc::new(tls)), cfg })
    }

    /// The address actually bound (for `127.0.0.1:0`).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(Error::LocalAddr)
    }

    /// Serves until `shutdown`; then stops accepting, lets open requests finish (watches and
    /// log streams end at once) and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let state = Arc::new(ApiState {
            objects: self.cfg.objects.clone(),
            node_name: self.cfg.node_name.clone(),
            streams: self.cfg.streams.clone(),
            max_body_bytes: self.cfg.max_body_bytes,
            metrics: self.cfg.metrics.clone(),
            heartbeats: self.cfg.heartbeats.clone(),
            exporter: self.cfg.exporter.clone(),
            authz: crate::auth::Authorizer::new(self.cfg.objects.clone()),
            tokens: self.cfg.tokens.clone(),
            max_token_expiration: self.cfg.max_token_expiration,
            audit: self.cfg.audit.clone(),
            shutdown: shutdown.child_token(),
            external_ip_cidrs: self.cfg.external_ip_cidrs.clone(),
            service_cidr: self.cfg.service_cidr,
            pod_security_defaults: self.cfg.pod_security_defaults.clone(),
            limits: Arc::new(limits::Limits::new(self.cfg.caps)),
        });
        let tracker = TaskTracker::new();
        let (objects, stop) = (state.objects.clone(), shutdown.clone());
        tracker.spawn(async move {
            namespace::ensure_initial(objects.clone(), stop.clone()).await;
            crd::ensure_builtin(objects, stop).await;
        });
        tracker.spawn(crate::auth::ensure_defaults(state.objects.clone(), shutdown.clone()));
        tracker.spawn(state.authz.clone().run(shutdown.clone()));
        info!(addr = ?self.listener.local_addr().ok(), node = %state.node_name, "api server listening");
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                acc = self.listener.accept() => match acc {
                    Ok(x) => x,
                    Err(e) => {
                        warn!(error = %e, "api accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Over its cap, a client's new connection is closed at once: no TLS, no task.
            let Some(slot) = state.limits.connection(peer.ip()) else {
                debug!(%peer, "api connection refused: too many connections from this address");
                drop(tcp);
                continue;
            };
            let tcp = limits::Held::new(tcp, slot);
            let acceptor = self.acceptor.clone();
            let header_read_timeout = self.cfg.header_read_timeout;
            let state = state.clone();
            let shutdown = shutdown.clone();
            let revoked = self.cfg.revoked.clone();
            tracker.spawn(async move {
                let accept = acceptor.accept(tcp).into_fallible();
                let tls = match tokio::time::timeout(Duration::from_secs(10), accept).await {
                    Ok(Ok(s)) => s,
                    Ok(Err((e, tcp))) => {
                        debug!(%peer, error = %e, "api tls handshake failed");
                        close_after_alert(tcp.io).await;
                        return;
                    }
                    Err(_) => return,
                };
                let Some(tls) = tls::admit(tls, &revoked, peer).await else { return };
                let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
                let cert_user = leaf.as_ref().and_then(|c| crate::auth::from_certificate(c.as_ref())).map(Arc::new);
                let mut revocations = revoked.subscribe();
                let user_name = cert_user.as_ref().map(|u| u.name.clone());
                // As upstream, system:masters is not held back by the in-flight caps.
                let exempt = cert_user.as_ref().is_some_and(|u| u.in_group("system:masters"));
                // Requests open on this connection (their response bodies included).
                let (open_tx, mut open_rx) = tokio::sync::watch::channel(0usize);
                let open_tx = Arc::new(open_tx);
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let state = state.clone();
                    let cert_user = cert_user.clone();
                    let open = OpenRequest::new(open_tx.clone());
                    async move {
                        let pending = crate::metrics::apiserver::begin(req.method(), req.uri(), req.headers());
                        let info = crate::metrics::apiserver::RequestInfo::of(req.method(), req.uri(), req.headers());
                        let permit = match (exempt || info.long_running).then_some(()) {
                            Some(()) => Ok(None),
                            None => state.limits.inflight(info.mutating),
                        };
                        let resp = match permit {
                            Ok(permit) => {
                                let mut req = req.map(axum::body::Body::new);
                                req.extensions_mut().insert(peer);
                                let resp = router::dispatch(state, cert_user, req).await;
                                drop(permit);
                                resp
                            }
                            Err(e) => {
                                debug!(%peer, code = e.code, message = %e.message, "api request refused");
                                axum::response::IntoResponse::into_response(e)
                            }
                        };
                        Ok::<_, Infallible>(open.hold(crate::metrics::apiserver::end(pending, resp)))
                    }
                });
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let builder = connection_builder(h2, header_read_timeout);
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
                tokio::pin!(conn);
                // Checked once at once too: a revocation may have landed since the handshake.
                revocations.mark_changed();
                // HTTP/2: closed (GOAWAY) once no request has been open for the idle timeout;
                // a client that does not then let go within GOAWAY_GRACE is dropped.
                let idle = tokio::time::sleep(header_read_timeout);
                tokio::pin!(idle);
                let mut closing = false;
                loop {
                    tokio::select! {
                        r = conn.as_mut() => {
                            if let Err(e) = r {
                                debug!(%peer, error = %e, "api connection ended with an error");
                            }
                            break;
                        }
                        _ = &mut idle, if h2 && *open_rx.borrow() == 0 => {
                            if closing {
                                debug!(%peer, "idle http/2 connection did not close; dropping it");
                                break;
                            }
                            debug!(%peer, "closing an idle http/2 connection");
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                            idle.as_mut().reset(tokio::time::Instant::now() + GOAWAY_GRACE);
                        }
                        Ok(()) = open_rx.changed(), if !closing => {
                            if *open_rx.borrow_and_update() == 0 {
                                idle.as_mut().reset(tokio::time::Instant::now() + header_read_timeout);
                            }
                        }
                        _ = shutdown.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                            break;
                        }
                        Ok(()) = revocations.changed() => {
                            if leaf.as_ref().is_some_and(|c| revoked.is_revoked_cert(c.as_ref())) {
                                // Dropping the connection ends its requests, watches included.
                                warn!(%peer, user = ?user_name, "closing the connection of a revoked client certificate");
                                break;
                            }
                        }
                    }
                }
            });
        }
        state.shutdown.cancel();
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
        info!("api server stopped");
        Ok(())
    }
}

/// How one connection is served. The protocol is the one TLS negotiated (ALPN `h2`, else
/// HTTP/1.1), so no read waits unbounded to sniff it. HTTP/1: the request head must arrive
/// within `header_read_timeout`, counted from when the connection waits for a request, so a
/// slow-header (slowloris) or idle keep-alive connection is closed. HTTP/2: pings find dead
/// peers; streams per connection are capped.
fn connection_builder(h2: bool, header_read_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_read_timeout);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(H2_KEEP_ALIVE))
        .keep_alive_timeout(H2_KEEP_ALIVE)
        .max_concurrent_streams(H2_MAX_STREAMS);
    if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    }
}

/// Counts a request as open on its connection until its response body has been sent or dropped
/// (a watch stays open for as long as it streams).
struct OpenRequest(Arc<tokio::sync::watch::Sender<usize>>);

impl OpenRequest {
    fn new(open: Arc<tokio::sync::watch::Sender<usize>>) -> Self {
        open.send_modify(|n| *n += 1);
        OpenRequest(open)
    }

    /// The response, whose body now holds this request open.
    fn hold(self, resp: hyper::Response<axum::body::Body>) -> hyper::Response<axum::body::Body> {
        use http_body_util::BodyExt;
        resp.map(move |body| {
            axum::body::Body::new(body.map_frame(move |f| {
                let _open = &self;
                f
            }))
        })
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// How long an idle HTTP/2 client has to close after GOAWAY before its connection is dropped.
const GOAWAY_GRACE: Duration = Duration::from_secs(5);

/// Default of [`ApiConfig::header_read_timeout`].
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// kube-apiserver's `--http2-max-streams-per-connection` default.
const H2_MAX_STREAMS: u32 = 1000;

/// Creates a Service owned by the cluster itself (defaulted, its ClusterIP claimed like any
/// other); the error is the message a client would have seen.
pub(crate) async fn create_system_service(
    objects: &Objects,
    obj: serde_json::Value,
    range: &shoal_kube::service_cidr::ServiceCidr,
) -> Result<serde_json::Value, String> {
    service::create_system(objects, obj, range).await.map_err(|e| e.message)
}

/// Binds and serves until `shutdown` (see [`Server`] to learn the bound port first).
pub async fn serve(cfg: ApiConfig, shutdown: CancellationToken) -> Result<()> {
    Server::bind(cfg).await?.run(shutdown).await
}
