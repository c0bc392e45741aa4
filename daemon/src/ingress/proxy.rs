//! The HTTP side: accepts connections, matches each request against the current table and
//! forwards it to a ready endpoint of the backend Service (round robin over keep-alive pools,
//! the next endpoint when a connect fails), or answers it itself (redirects, 403, 404, 413,
//! 502/503/504 with the reason).
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::matching::PathMatch;
use super::table::{Backend, Table};

pub(crate) type Body = BoxBody<Bytes, hyper::Error>;
type Pool = Client<HttpConnector, Full<Bytes>>;

/// What every connection shares: the current table and the upstream pools.
pub(crate) struct Router {
    table: RwLock<Arc<Table>>,
    /// One keep-alive pool per connect timeout in use.
    pools: Mutex<HashMap<Duration, Pool>>,
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
        Arc::new(Router { table: RwLock::new(Arc::new(Table::default())), pools: Mutex::new(HashMap::new()) })
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

    fn pool(&self, connect: Duration) -> Pool {
        let mut pools = match self.pools.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        pools
            .entry(connect)
            .or_insert_with(|| {
                let mut http = HttpConnector::new();
                http.set_connect_timeout(Some(connect));
                http.set_nodelay(true);
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .pool_max_idle_per_host(64)
                    .build(http)
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
        let conn = builder.serve_connection(io, svc);
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

    /// Answers one request.
    pub(crate) async fn handle(&self, req: Request<Incoming>, peer: SocketAddr, scheme: &str) -> Response<Body> {
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
                None => return text(StatusCode::NOT_FOUND, "no ingress rule matches this host and path"),
            },
        };
        let ann = &route.annotations;
        if !ann.allow.is_empty() && !ann.allow.iter().any(|c| c.contains(peer.ip())) {
            return text(StatusCode::FORBIDDEN, "the client address is not in whitelist-source-range");
        }
        if let Some(to) = &ann.permanent_redirect {
            return redirect(
                StatusCode::from_u16(ann.permanent_redirect_code).unwrap_or(StatusCode::MOVED_PERMANENTLY),
                to,
            );
        }
        if scheme == "http" && (ann.force_ssl_redirect || (ann.ssl_redirect && server.tls)) {
            let h = host
                .rsplit_once(':')
                .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
                .map_or(host.as_str(), |(h, _)| h);
            let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
            return redirect(StatusCode::PERMANENT_REDIRECT, &format!("https://{h}{pq}"));
        }
        if let Some(root) = &ann.app_root {
            if path == "/" {
                return redirect(StatusCode::FOUND, root);
            }
        }
        let upstream = match &route.backend {
            Backend::Missing(why) => return text(StatusCode::SERVICE_UNAVAILABLE, why),
            Backend::Service(u) => u.clone(),
        };
        if upstream.endpoints.is_empty() {
            return text(StatusCode::SERVICE_UNAVAILABLE, &format!("service {} has no ready endpoints", upstream.name));
        }
        let limit = ann.body_limit;
        let declared =
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if let (Some(limit), Some(len)) = (limit, declared) {
            if len > limit {
                return text(StatusCode::PAYLOAD_TOO_LARGE, "request body larger than proxy-body-size");
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
        let (parts, body) = req.into_parts();
        // Buffered (as nginx buffers request bodies), so a refused connect can be retried.
        let max = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        let body = match Limited::new(body, max).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    return text(StatusCode::PAYLOAD_TOO_LARGE, "request body larger than proxy-body-size");
                }
                return text(StatusCode::BAD_REQUEST, "request body could not be read");
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
        if !headers.contains_key("x-request-id") {
            set(&mut headers, "x-request-id", &uuid::Uuid::new_v4().simple().to_string());
        }
        if !headers.contains_key(header::HOST) && !host.is_empty() {
            set(&mut headers, "host", &host);
        }
        let pool = self.pool(ann.connect_timeout);
        let mut last_err = String::new();
        for ep in upstream.order() {
            let uri = match format!("http://{ep}{pq}").parse::<hyper::Uri>() {
                Ok(u) => u,
                Err(_) => return text(StatusCode::BAD_REQUEST, "request path cannot be forwarded"),
            };
            let mut out = Request::new(Full::new(body.clone()));
            *out.method_mut() = parts.method.clone();
            *out.uri_mut() = uri;
            *out.headers_mut() = headers.clone();
            match tokio::time::timeout(ann.connect_timeout + ann.read_timeout, pool.request(out)).await {
                Err(_) => {
                    return text(
                        StatusCode::GATEWAY_TIMEOUT,
                        &format!("endpoint {ep} of {} did not answer in time", upstream.name),
                    )
                }
                Ok(Ok(resp)) => {
                    let (mut rp, rb) = resp.into_parts();
                    for h in HOP {
                        rp.headers.remove(*h);
                    }
                    return Response::from_parts(rp, rb.boxed());
                }
                Ok(Err(e)) if e.is_connect() => {
                    upstream.eject(ep);
                    tracing::debug!(endpoint = %ep, upstream = %upstream.name, error = %e, "ingress endpoint refused; trying the next");
                    last_err = format!("no endpoint of {} accepted a connection (last: {ep})", upstream.name);
                }
                Ok(Err(e)) => {
                    tracing::debug!(endpoint = %ep, upstream = %upstream.name, error = %e, "ingress upstream failed");
                    return text(
                        StatusCode::BAD_GATEWAY,
                        &format!("endpoint {ep} of {} failed to answer", upstream.name),
                    );
                }
            }
        }
        text(StatusCode::BAD_GATEWAY, &last_err)
    }
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
