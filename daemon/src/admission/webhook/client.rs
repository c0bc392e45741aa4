//! Connections to admission webhooks, kept open between calls: a busy webhook costs one request
//! per admission, not a TCP connection and a TLS handshake as well (upstream's API server keeps
//! one HTTP transport per webhook client configuration for the same reason).
//!
//! Connections are pooled per endpoint: the address dialled, the TLS server name and the
//! caBundle. A changed caBundle or URL (or a Service whose endpoint moved) is another endpoint,
//! so a connection verified with an old CA is never used for the new configuration; the old
//! endpoint and its connections are dropped when its replacement (same address and name) is
//! first used. HTTP/2 when the server offers it by ALPN (one connection, a stream per call),
//! HTTP/1.1 keep-alive otherwise (a call at a time per connection, up to [`MAX_IDLE`] idle ones
//! kept). Idle connections close after [`IDLE`].
//!
//! A call that finds its pooled connection closed by the server (an idle timeout on its side)
//! before the request went out is made again on another connection; one that fails after the
//! request was written is not repeated (the webhook may have seen it), and `failurePolicy`
//! decides, as a new connection's failure would.
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::{http1, http2};
use serde_json::Value;

use super::{fail, CallError, MAX_REPLY_BYTES};

/// How long an unused connection (and an unused endpoint's TLS configuration) is kept.
pub(super) const IDLE: Duration = Duration::from_secs(90);
/// Idle HTTP/1.1 connections kept per endpoint (upstream's transports keep 25).
pub(super) const MAX_IDLE: usize = 25;

/// The connections of every webhook endpoint this process calls.
pub(super) static POOL: LazyLock<Pool> = LazyLock::new(Pool::default);

/// Where a call goes: one pool entry per distinct key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    /// host:port dialled.
    addr: String,
    /// The name the certificate must hold.
    host: String,
    /// `clientConfig.caBundle` as configured (base64 PEM).
    ca_bundle: String,
}

/// Aborts the task driving a connection when the last user of it is gone.
struct ConnTask(tokio::task::AbortHandle);

impl Drop for ConnTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// One connection (for HTTP/2, one handle on a shared connection).
struct Conn {
    sender: Sender,
    task: Arc<ConnTask>,
}

impl Conn {
    fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
}

struct Endpoint {
    tls: Arc<rustls::ClientConfig>,
    /// HTTP/1.1 connections waiting for a call, the most recently used last.
    idle: Vec<(Conn, Instant)>,
    /// The HTTP/2 connection, shared by every call.
    shared: Option<Conn>,
    used: Instant,
}

/// The pool; see the module documentation.
#[derive(Default)]
pub(super) struct Pool {
    endpoints: Mutex<HashMap<Key, Endpoint>>,
}

/// How one attempt on a connection ended.
enum Attempt {
    /// The reply, and the connection if it can carry another call.
    Reply(Value, Option<Conn>),
    /// The connection was closed before the request went out: another connection may try.
    Unsent(CallError),
    Failed(CallError),
}

impl Pool {
    /// POSTs `review` (AdmissionReview JSON) to `path_q` of the webhook at `addr`, verified as
    /// `host` against `ca_bundle`; the parsed reply. Not bounded in time: the caller is.
    pub(super) async fn post(
        &self,
        addr: &str,
        host: &str,
        ca_bundle: Option<&str>,
        path_q: &str,
        review: &Value,
    ) -> Result<Value, CallError> {
        let key = Key { addr: addr.into(), host: host.into(), ca_bundle: ca_bundle.unwrap_or_default().into() };
        let body = Bytes::from(serde_json::to_vec(review).unwrap_or_default());
        loop {
            let (conn, reused) = match self.checkout(&key)? {
                Some(c) => (c, true),
                None => (self.dial(&key).await?, false),
            };
            match send(conn, host, path_q, body.clone()).await {
                Attempt::Reply(v, conn) => {
                    if let Some(c) = conn {
                        self.checkin(&key, c);
                    }
                    return Ok(v);
                }
                Attempt::Unsent(e) if !reused => return Err(e),
                Attempt::Unsent(e) => {
                    tracing::debug!(addr, error = %e, "pooled webhook connection closed; another one")
                }
                Attempt::Failed(e) => return Err(e),
            }
        }
    }

    /// The endpoint's TLS configuration (made on first use, replacing the entries of the same
    /// address and name with another caBundle) and a pooled connection if one is open.
    fn checkout(&self, key: &Key) -> Result<Option<Conn>, CallError> {
        let mut eps = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        eps.retain(|k, ep| {
            ep.idle.retain(|(c, since)| now.duration_since(*since) < IDLE && !c.is_closed());
            k == key || now.duration_since(ep.used) < IDLE || !ep.idle.is_empty()
        });
        if !eps.contains_key(key) {
            let tls = Arc::new(super::tls_config(Some(&key.ca_bundle))?);
            eps.retain(|k, _| k.addr != key.addr || k.host != key.host);
            eps.insert(key.clone(), Endpoint { tls, idle: Vec::new(), shared: None, used: now });
        }
        let Some(ep) = eps.get_mut(key) else { return Ok(None) };
        ep.used = now;
        if let Some(shared) = &ep.shared {
            match &shared.sender {
                Sender::H2(s) if !s.is_closed() => {
                    return Ok(Some(Conn { sender: Sender::H2(s.clone()), task: shared.task.clone() }));
                }
                _ => ep.shared = None,
            }
        }
        Ok(ep.idle.pop().map(|(c, _)| c))
    }

    /// A new connection to the endpoint; an HTTP/2 one is shared from now on.
    async fn dial(&self, key: &Key) -> Result<Conn, CallError> {
        let tls = {
            let eps = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
            match eps.get(key) {
                Some(ep) => ep.tls.clone(),
                None => Arc::new(super::tls_config(Some(&key.ca_bundle))?),
            }
        };
        let addr = &key.addr;
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| fail(format!("dial tcp {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(key.host.clone()).map_err(|e| fail(e.to_string()))?;
        let stream =
            tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.map_err(|e| fail(format!("tls: {e}")))?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = hyper_util::rt::TokioIo::new(stream);
        if h2 {
            let (sender, conn) =
                http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.map_err(|e| fail(e.to_string()))?;
            let task = Arc::new(ConnTask(tokio::spawn(conn).abort_handle()));
            let mut eps = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(ep) = eps.get_mut(key) {
                ep.shared = Some(Conn { sender: Sender::H2(sender.clone()), task: task.clone() });
            }
            return Ok(Conn { sender: Sender::H2(sender), task });
        }
        let (sender, conn) = http1::handshake(io).await.map_err(|e| fail(e.to_string()))?;
        let task = Arc::new(ConnTask(tokio::spawn(conn).abort_handle()));
        Ok(Conn { sender: Sender::H1(sender), task })
    }

    /// Puts an HTTP/1.1 connection back for the next call.
    fn checkin(&self, key: &Key, conn: Conn) {
        if conn.is_closed() || matches!(conn.sender, Sender::H2(_)) {
            return;
        }
        let mut eps = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ep) = eps.get_mut(key) {
            if ep.idle.len() < MAX_IDLE {
                ep.idle.push((conn, Instant::now()));
            }
        }
    }

    /// Open connections (HTTP/1.1 idle ones and HTTP/2 shared ones) across every endpoint.
    #[cfg(test)]
    pub(super) fn open_connections(&self) -> usize {
        let eps = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        eps.values().map(|ep| ep.idle.len() + usize::from(ep.shared.is_some())).sum()
    }
}

/// One request on `conn`.
async fn send(mut conn: Conn, host: &str, path_q: &str, body: Bytes) -> Attempt {
    let builder = match &conn.sender {
        // HTTP/1.1: origin-form with a Host header, as before.
        Sender::H1(_) => hyper::Request::post(path_q).header(hyper::header::HOST, host),
        // HTTP/2: the authority goes in the URI (`:authority`).
        Sender::H2(_) => {
            let authority = if host.contains(':') { format!("[{host}]") } else { host.to_string() };
            hyper::Request::post(format!("https://{authority}{path_q}"))
        }
    };
    let req = match builder
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::ACCEPT, "application/json")
        .body(Full::new(body))
    {
        Ok(r) => r,
        Err(e) => return Attempt::Failed(fail(e.to_string())),
    };
    let sent = match &mut conn.sender {
        Sender::H1(s) => {
            if let Err(e) = s.ready().await {
                return Attempt::Unsent(fail(e.to_string()));
            }
            s.try_send_request(req).await
        }
        Sender::H2(s) => {
            if let Err(e) = s.ready().await {
                return Attempt::Unsent(fail(e.to_string()));
            }
            s.try_send_request(req).await
        }
    };
    let resp = match sent {
        Ok(r) => r,
        Err(mut e) => {
            let not_sent = e.take_message().is_some();
            let e = fail(e.into_error().to_string());
            return if not_sent { Attempt::Unsent(e) } else { Attempt::Failed(e) };
        }
    };
    let status = resp.status();
    let bytes = match Limited::new(resp.into_body(), MAX_REPLY_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Attempt::Failed(fail(format!("reading the reply: {e}"))),
    };
    if !status.is_success() {
        return Attempt::Failed(fail(format!("expected response code 200, got {}", status.as_u16())));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => Attempt::Reply(v, Some(conn)),
        Err(e) => Attempt::Failed(fail(format!("the server replied with no AdmissionReview: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::body::Incoming;
    use serde_json::json;

    use super::*;

    /// A webhook server on 127.0.0.1 answering every review with `allowed: true`: its address,
    /// the caBundle that verifies it, and how many connections it accepted. `alpn` is what it
    /// offers; `close` answers with `Connection: close`.
    async fn server(alpn: &[u8], close: bool) -> (String, String, Arc<AtomicUsize>) {
        use base64::Engine;
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = p.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(p, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        let review: Value = serde_json::from_slice(&body).unwrap_or_default();
                        let reply = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                            "response": {"uid": review["request"]["uid"], "allowed": true}});
                        let mut resp = hyper::Response::new(Full::new(Bytes::from(reply.to_string())));
                        if close {
                            resp.headers_mut().insert(hyper::header::CONNECTION, "close".parse().unwrap());
                        }
                        Ok::<_, hyper::Error>(resp)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        (addr, base64::engine::general_purpose::STANDARD.encode(ca.pem()), accepted)
    }

    async fn call(pool: &Pool, addr: &str, ca: &str, i: usize) {
        let review = json!({"request": {"uid": format!("u{i}")}});
        let reply = pool.post(addr, "127.0.0.1", Some(ca), "/validate?timeout=10s", &review).await.unwrap();
        assert_eq!(reply["response"]["uid"], format!("u{i}"), "{reply}");
    }

    /// The cost of a call on a kept connection against one that dials (TCP and TLS) first, to
    /// a local server, in `name: value` lines:
    /// `cargo nextest run -p shoal -E 'test(/call_cost/)' --no-capture`.
    #[tokio::test]
    async fn call_cost() {
        let (addr, ca, _) = server(b"http/1.1", false).await;
        let pool = Pool::default();
        let (mut kept, mut dialled) = (Vec::new(), Vec::new());
        for i in 0..100 {
            let t = Instant::now();
            call(&pool, &addr, &ca, i).await;
            kept.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            call(&Pool::default(), &addr, &ca, i).await;
            dialled.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        for (name, mut v) in [("kept_connection", kept), ("new_connection", dialled)] {
            v.sort_by(f64::total_cmp);
            eprintln!("webhook_call_{name}_p50_ms: {:.2}", v[v.len() / 2]);
            eprintln!("webhook_call_{name}_p99_ms: {:.2}", v[v.len() * 99 / 100]);
        }
    }

    /// HTTP/1.1 keep-alive: calls one after the other share one connection.
    #[tokio::test]
    async fn http1_calls_share_one_connection() {
        let (addr, ca, accepted) = server(b"http/1.1", false).await;
        let pool = Pool::default();
        for i in 0..20 {
            call(&pool, &addr, &ca, i).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.open_connections(), 1);
    }

    /// HTTP/2 when the server offers it: concurrent calls are streams of one connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http2_calls_share_one_connection_concurrently() {
        let (addr, ca, accepted) = server(b"h2", false).await;
        let pool = Pool::default();
        call(&pool, &addr, &ca, 0).await;
        futures::future::join_all((1..20).map(|i| call(&pool, &addr, &ca, i))).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// A server that closes each connection after its reply: every call still gets its answer,
    /// on a new connection, and nothing closed stays pooled.
    #[tokio::test]
    async fn a_server_closing_connections_costs_a_dial_not_a_failure() {
        let (addr, ca, accepted) = server(b"http/1.1", true).await;
        let pool = Pool::default();
        for i in 0..5 {
            call(&pool, &addr, &ca, i).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
        assert_eq!(pool.open_connections(), 0);
    }

    /// Another caBundle for the same address and name replaces the endpoint: its connections
    /// are closed, and the new caBundle verifies the next connection.
    #[tokio::test]
    async fn another_ca_bundle_replaces_the_endpoint() {
        let (addr, ca, accepted) = server(b"http/1.1", false).await;
        let (_, other_ca, _) = server(b"http/1.1", false).await;
        let pool = Pool::default();
        call(&pool, &addr, &ca, 0).await;
        assert_eq!(pool.open_connections(), 1);
        let review = json!({"request": {"uid": "x"}});
        let e = pool.post(&addr, "127.0.0.1", Some(&other_ca), "/", &review).await.unwrap_err();
        assert!(e.to_string().starts_with("tls: "), "{e}");
        assert_eq!(pool.open_connections(), 0, "the old caBundle's connection is closed");
        call(&pool, &addr, &ca, 1).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "the old connection was not reused");
    }
}
