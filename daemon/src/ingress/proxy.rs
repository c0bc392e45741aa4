//! The HTTP side: accepts connections, matches each request against the current table and
//! forwards it to a ready endpoint of the backend Service (round robin over keep-alive pools,
//! the next endpoint when a connect fails), or answers it itself (redirects, 403, 404, 413,
//! 502/503/504 with the reason).
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::annotations::Protocol;
use super::matching::PathMatch;
use super::table::{Backend, Route, Table};

pub(crate) type Body = BoxBody<Bytes, hyper::Error>;
type Pool = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// What every connection shares: the current table and the upstream pools.
pub(crate) struct Router {
    table: RwLock<Arc<Table>>,
    /// One keep-alive pool per connect timeout and backend protocol in use.
    pools: Mutex<HashMap<(Duration, Protocol), Pool>>,
    access_log: AtomicBool,
}

/// Hop-by-hop headers, never forwarded.
const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

impl Router {
    pub(crate) fn new() -> Arc<Router> {
        Arc::new(Router {
            table: RwLock::new(Arc::new(Table::default())),
            pools: Mutex::new(HashMap::new()),
            access_log: AtomicBool::new(false),
        })
    }

    /// Writes one log line per request from now on (`[ingress] access_log`).
    pub(crate) fn set_access_log(&self, on: bool) {
        self.access_log.store(on, Ordering::Relaxed);
    }

    /// Swaps in a new table; requests in flight finish with the one they started with.
    pub(crate) fn set_table(&self, t: Table) {
        let t = Arc::new(t);
        match self.table.write() {
            Ok(mut g) => *g = t,
            Err(p) => *p.into_inner() = t,
        }
    }

    pub(crate) fn table(&self) -> Arc<Table> {
        match self.table.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn pool(&self, connect: Duration, protocol: Protocol) -> Pool {
        let mut pools = match self.pools.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        pools
            .entry((connect, protocol))
            .or_insert_with(|| {
                let mut http = HttpConnector::new();
                http.set_connect_timeout(Some(connect));
                http.set_nodelay(true);
                http.enforce_http(false);
                // The builder sets ALPN: h2 for gRPC, http/1.1 otherwise.
                let b = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(backend_tls()).https_or_http();
                let https = if protocol.h2() {
                    b.enable_http2().wrap_connector(http)
                } else {
                    b.enable_http1().wrap_connector(http)
                };
                let mut b = Client::builder(TokioExecutor::new());
                b.pool_idle_timeout(Duration::from_secs(60)).pool_max_idle_per_host(64);
                if protocol.h2() {
                    b.http2_only(true);
                }
                b.build(https)
            })
            .clone()
    }

    /// Serves HTTP (or HTTPS with `tls`) on `listener` until `stop`; open requests are given
    /// 5 s to finish.
    pub(crate) async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        stop: CancellationToken,
    ) {
        let tracker = TaskTracker::new();
        loop {
            let (tcp, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                acc = listener.accept() => match acc {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "ingress accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let router = self.clone();
            let stop = stop.clone();
            let tls = tls.clone();
            tracker.spawn(async move {
                match tls {
                    None => router.connection(TokioIo::new(tcp), peer, "http", stop).await,
                    Some(acceptor) => match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => router.connection(TokioIo::new(s), peer, "https", stop).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "ingress tls handshake failed"),
                        Err(_) => tracing::debug!(%peer, "ingress tls handshake timed out"),
                    },
                }
            });
        }
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(6), tracker.wait()).await;
    }

    /// Serves one connection (HTTP/1.1, or HTTP/2 by preface or ALPN).
    async fn connection<I>(self: Arc<Self>, io: I, peer: SocketAddr, scheme: &'static str, stop: CancellationToken)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let router = self;
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let router = router.clone();
            async move { Ok::<_, Infallible>(router.handle(req, peer, scheme).await) }
        });
        let builder = auto::Builder::new(TokioExecutor::new());
        let conn = builder.serve_connection_with_upgrades(io, svc);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "ingress connection ended with an error");
                }
            }
            _ = stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
            }
        }
    }

    /// Answers one request (and writes its access log line when asked to).
    pub(crate) async fn handle(&self, req: Request<Incoming>, peer: SocketAddr, scheme: &str) -> Response<Body> {
        if !self.access_log.load(Ordering::Relaxed) {
            return self.route(req, peer, scheme).await.0;
        }
        let started = std::time::Instant::now();
        let method = req.method().clone();
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").to_string();
        let uri = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
        let version = req.version();
        let (resp, upstream) = self.route(req, peer, scheme).await;
        let rid = resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
        tracing::info!(
            target: "shoal::ingress::access",
            client = %peer.ip(),
            %method,
            %host,
            uri = %uri,
            version = ?version,
            scheme,
            status = resp.status().as_u16(),
            upstream = %upstream.map_or_else(|| "-".to_string(), |u| u.to_string()),
            ms = started.elapsed().as_secs_f64() * 1000.0,
            request_id = %rid,
            "ingress request"
        );
        resp
    }

    /// Routes one request; the answer and the endpoint that gave it.
    async fn route(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        scheme: &str,
    ) -> (Response<Body>, Option<SocketAddr>) {
        let table = self.table();
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let path = req.uri().path().to_string();
        let query = req.uri().query().map(str::to_string);
        let server = table.hosts.server(&host);
        let (route, location) = match server.find(&path) {
            Some(f) => (f.route.clone(), Some(f.location)),
            None => match &table.default_backend {
                Some(r) => (r.clone(), None),
                None => return (text(StatusCode::NOT_FOUND, "no ingress rule matches this host and path"), None),
            },
        };
        let ann = &route.annotations;
        if !ann.allow.is_empty() && !ann.allow.iter().any(|c| c.contains(peer.ip())) {
            return (text(StatusCode::FORBIDDEN, "the client address is not in whitelist-source-range"), None);
        }
        if let Some(to) = &ann.permanent_redirect {
            return (
                redirect(
                    StatusCode::from_u16(ann.permanent_redirect_code).unwrap_or(StatusCode::MOVED_PERMANENTLY),
                    to,
                ),
                None,
            );
        }
        if scheme == "http" && (ann.force_ssl_redirect || (ann.ssl_redirect && server.tls)) {
            let h = host
                .rsplit_once(':')
                .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
                .map_or(host.as_str(), |(h, _)| h);
            let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
            return (redirect(StatusCode::PERMANENT_REDIRECT, &format!("https://{h}{pq}")), None);
        }
        if let Some(root) = &ann.app_root {
            if path == "/" {
                return (redirect(StatusCode::FOUND, root), None);
            }
        }
        // A canary Ingress on the same host and path takes the request when its annotations say so.
        let backend = match &route.canary {
            Some(c) if takes_canary(c, req.headers()) => &c.backend,
            _ => &route.backend,
        };
        let upstream = match backend {
            Backend::Missing(why) => return (text(StatusCode::SERVICE_UNAVAILABLE, why), None),
            Backend::Service(u) => u.clone(),
        };
        if upstream.endpoints.is_empty() {
            return (
                text(StatusCode::SERVICE_UNAVAILABLE, &format!("service {} has no ready endpoints", upstream.name)),
                None,
            );
        }
        let limit = ann.body_limit;
        let declared =
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if let (Some(limit), Some(len)) = (limit, declared) {
            if len > limit {
                return (text(StatusCode::PAYLOAD_TOO_LARGE, "request body larger than proxy-body-size"), None);
            }
        }
        // The path the backend sees.
        let mut new_path = path.clone();
        if let Some(target) = &ann.rewrite_target {
            new_path = match location.map(|l| &l.matcher) {
                Some(PathMatch::Regex(re)) => super::matching::rewrite(re, &path, target),
                _ => target.clone(),
            };
        }
        let pq = match &query {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        };
        // An HTTP/1.1 `Upgrade` (WebSocket): forwarded with its headers, then tunnelled.
        let upgrade = req.version() == Version::HTTP_11
            && !ann.protocol.h2()
            && req.headers().contains_key(header::UPGRADE)
            && connection_has(req.headers(), "upgrade");
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        // Buffered (as nginx buffers request bodies), so a refused connect can be retried.
        let max = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        let body = match Limited::new(body, max).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    return (text(StatusCode::PAYLOAD_TOO_LARGE, "request body larger than proxy-body-size"), None);
                }
                return (text(StatusCode::BAD_REQUEST, "request body could not be read"), None);
            }
        };
        let mut headers = parts.headers.clone();
        for h in HOP {
            headers.remove(*h);
        }
        let xff = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        let set = |headers: &mut hyper::HeaderMap, name: &'static str, v: &str| {
            if let Ok(v) = HeaderValue::from_str(v) {
                headers.insert(HeaderName::from_static(name), v);
            }
        };
        set(&mut headers, "x-forwarded-for", &xff);
        set(&mut headers, "x-real-ip", &peer.ip().to_string());
        set(&mut headers, "x-forwarded-proto", scheme);
        set(&mut headers, "x-forwarded-host", &host);
        let rid = match headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
            Some(r) => r.to_string(),
            None => {
                let r = uuid::Uuid::new_v4().simple().to_string();
                set(&mut headers, "x-request-id", &r);
                r
            }
        };
        if !headers.contains_key(header::HOST) && !host.is_empty() {
            set(&mut headers, "host", &host);
        }
        if upgrade {
            if let Some(u) = parts.headers.get(header::UPGRADE) {
                headers.insert(header::UPGRADE, u.clone());
            }
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        if ann.protocol.h2()
            && parts.headers.get(header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"))
        {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        // `affinity: cookie`: the endpoint the cookie names goes first.
        let sticky = ann.affinity_cookie.as_ref().map(|name| {
            let want = cookie(&parts.headers, name);
            let chosen = want.and_then(|v| upstream.endpoints.iter().copied().find(|ep| affinity_value(*ep) == v));
            (name, chosen)
        });
        let pool = self.pool(ann.connect_timeout, ann.protocol);
        let uri_scheme = if ann.protocol.tls() { "https" } else { "http" };
        let mut last_err = String::new();
        let mut order = upstream.order();
        if let Some((_, Some(ep))) = &sticky {
            if let Some(i) = order.iter().position(|e| e == ep) {
                let ep = order.remove(i);
                order.insert(0, ep);
            }
        }
        for ep in order {
            let uri = match format!("{uri_scheme}://{ep}{pq}").parse::<hyper::Uri>() {
                Ok(u) => u,
                Err(_) => return (text(StatusCode::BAD_REQUEST, "request path cannot be forwarded"), None),
            };
            let mut out = Request::new(Full::new(body.clone()));
            *out.method_mut() = parts.method.clone();
            *out.uri_mut() = uri;
            *out.headers_mut() = headers.clone();
            if ann.protocol.h2() {
                *out.version_mut() = Version::HTTP_2;
            }
            // The body is buffered and sent at once: the answer's headers are due within the three.
            let answer = ann.connect_timeout + ann.send_timeout + ann.read_timeout;
            match tokio::time::timeout(answer, pool.request(out)).await {
                Err(_) => {
                    return (
                        text(
                            StatusCode::GATEWAY_TIMEOUT,
                            &format!("endpoint {ep} of {} did not answer in time", upstream.name),
                        ),
                        Some(ep),
                    )
                }
                Ok(Ok(mut resp)) => {
                    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
                    let backend_upgrade = (switching && upgrade).then(|| hyper::upgrade::on(&mut resp));
                    let (mut rp, rb) = resp.into_parts();
                    let upgraded_to = rp.headers.get(header::UPGRADE).cloned();
                    for h in HOP {
                        rp.headers.remove(*h);
                    }
                    if let (Some(theirs), Some(ours), Some(to)) = (backend_upgrade, client_upgrade, upgraded_to) {
                        rp.headers.insert(header::UPGRADE, to);
                        rp.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                        let name = upstream.name.clone();
                        tokio::spawn(async move {
                            match tokio::try_join!(theirs, ours) {
                                Ok((b, c)) => {
                                    let (mut b, mut c) = (TokioIo::new(b), TokioIo::new(c));
                                    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut b).await {
                                        tracing::debug!(endpoint = %ep, upstream = %name, error = %e, "ingress upgraded connection ended");
                                    }
                                }
                                Err(e) => {
                                    tracing::debug!(endpoint = %ep, upstream = %name, error = %e, "ingress upgrade failed")
                                }
                            }
                        });
                    }
                    if let Some((name, chosen)) = &sticky {
                        if *chosen != Some(ep) {
                            let path = ann
                                .affinity_cookie_path
                                .clone()
                                .or_else(|| {
                                    location
                                        .filter(|l| !matches!(l.matcher, PathMatch::Regex(_)))
                                        .map(|l| l.path.clone())
                                })
                                .unwrap_or_else(|| "/".to_string());
                            let c = format!("{name}={}; Path={path}; HttpOnly", affinity_value(ep));
                            if let Ok(v) = HeaderValue::from_str(&c) {
                                rp.headers.append(header::SET_COOKIE, v);
                            }
                        }
                    }
                    if !rp.headers.contains_key("x-request-id") {
                        if let Ok(v) = HeaderValue::from_str(&rid) {
                            rp.headers.insert(HeaderName::from_static("x-request-id"), v);
                        }
                    }
                    return (Response::from_parts(rp, rb.boxed()), Some(ep));
                }
                Ok(Err(e)) if e.is_connect() => {
                    upstream.eject(ep);
                    tracing::debug!(endpoint = %ep, upstream = %upstream.name, error = %e, "ingress endpoint refused; trying the next");
                    last_err = format!("no endpoint of {} accepted a connection (last: {ep})", upstream.name);
                }
                Ok(Err(e)) => {
                    tracing::debug!(endpoint = %ep, upstream = %upstream.name, error = %e, "ingress upstream failed");
                    return (
                        text(StatusCode::BAD_GATEWAY, &format!("endpoint {ep} of {} failed to answer", upstream.name)),
                        Some(ep),
                    );
                }
            }
        }
        (text(StatusCode::BAD_GATEWAY, &last_err), None)
    }
}

/// Whether a request goes to the canary: `canary-by-header` (`always`/`never`, or the
/// `canary-by-header-value`), then `canary-by-cookie` (`always`/`never`), then `canary-weight`.
pub(crate) fn takes_canary(c: &Route, headers: &hyper::HeaderMap) -> bool {
    let Some(rule) = &c.annotations.canary else { return false };
    if let Some(h) = &rule.by_header {
        if let Some(v) = headers.get(h.as_str()).and_then(|v| v.to_str().ok()) {
            match &rule.by_header_value {
                Some(want) => {
                    if v == want {
                        return true;
                    }
                }
                None => match v {
                    "always" => return true,
                    "never" => return false,
                    _ => {}
                },
            }
        }
    }
    if let Some(name) = &rule.by_cookie {
        match cookie(headers, name) {
            Some("always") => return true,
            Some("never") => return false,
            _ => {}
        }
    }
    rule.weight > 0 && rand::random_range(0..rule.weight_total) < rule.weight
}

/// Whether the `Connection` header lists `token`.
fn connection_has(headers: &hyper::HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The value of cookie `name` in the request.
fn cookie<'a>(headers: &'a hyper::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// The affinity cookie's value for an endpoint: the same on every node (FNV-1a of `ip:port`).
pub(crate) fn affinity_value(ep: SocketAddr) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ep.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A plain-text answer of the router itself.
pub(crate) fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{} {}: {msg}\n", status.as_u16(), status.canonical_reason().unwrap_or(""))))
            .map_err(|n| match n {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r.headers_mut().insert(HeaderName::from_static("x-shoal-ingress"), HeaderValue::from_static("1"));
    r
}

fn redirect(status: StatusCode, to: &str) -> Response<Body> {
    let mut r = text(status, &format!("see {to}"));
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// TLS to backends (`backend-protocol: HTTPS`/`GRPCS`): encrypted, the certificate not
/// verified, as ingress-nginx does unless `proxy-ssl-verify` is set (pod certificates are
/// rarely issued for the pod address).
fn backend_tls() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(NoVerify(provider.clone()));
    match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
        Ok(b) => b.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth(),
        // The ring provider supports the default versions; this is not reached.
        Err(_) => {
            rustls::ClientConfig::builder().dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth()
        }
    }
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
