//! The API under abuse, as a client sees it: an API server on 127.0.0.1 over an in-memory store,
//! raw TLS/HTTP clients (HTTP/1 and HTTP/2) with client certificates from the cluster CA.
//! Connections per client address, watches per user and mutating requests in flight are capped;
//! an idle HTTP/2 connection is closed; slots come back when their holder goes away.
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use shoal::api::{ApiConfig, Caps, Server, TlsMaterial};
use shoal::auth::revocation::mint_client_cert;
use shoal_gossip::ClusterSecrets;
use shoal_kube::Objects;
use shoal_store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

struct Api {
    addr: SocketAddr,
    store: Store,
    secrets: ClusterSecrets,
    shutdown: CancellationToken,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

type Who = Arc<rustls::ClientConfig>;

impl Api {
    async fn start(caps: Caps, idle: Duration) -> Api {
        let secrets = ClusterSecrets::generate("caps-test").unwrap();
        let serving = secrets.node_tls("n1", &["127.0.0.1".parse().unwrap()]).unwrap();
        let tls = TlsMaterial {
            cert_pem: serving.cert_pem,
            key_pem: serving.key_pem,
            client_ca_pem: secrets.ca_cert_pem.clone(),
        };
        let store = Store::in_memory();
        let mut cfg = ApiConfig::new("127.0.0.1:0".parse().unwrap(), tls, Objects::new(store.clone()), "n1");
        cfg.caps = caps;
        cfg.header_read_timeout = idle;
        let server = Server::bind(cfg).await.unwrap();
        let addr = server.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move { server.run(s).await.unwrap() });
        Api { addr, store, secrets, shutdown }
    }

    /// A client identity: the admin (`system:masters`) without a user, else that user.
    async fn identity(&self, user: Option<&str>, alpn: &[u8]) -> Who {
        let (_, cert) =
            mint_client_cert(&self.store, &self.secrets, user.map(String::from), Vec::new(), Some(3600)).await.unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.secrets.ca_cert_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes()).map(|c| c.unwrap()).collect();
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(cfg)
    }

    async fn tcp(&self, from: IpAddr) -> std::io::Result<TcpStream> {
        let sock = TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(from, 0))?;
        sock.connect(self.addr).await
    }

    async fn tls(&self, who: &Who, from: IpAddr) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = self.tcp(from).await?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        tokio_rustls::TlsConnector::from(who.clone()).connect(name, tcp).await
    }

    /// An HTTP/1.1 connection (the identity must offer `http/1.1`).
    async fn h1(
        &self,
        who: &Who,
        from: IpAddr,
    ) -> std::io::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        let tls = self.tls(who, from).await?;
        let (send, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(send)
    }

    /// An HTTP/2 connection (the identity must offer `h2`) and the task driving it, which ends
    /// when the server closes the connection.
    async fn h2(
        &self,
        who: &Who,
        from: IpAddr,
    ) -> (hyper::client::conn::http2::SendRequest<Full<Bytes>>, tokio::task::JoinHandle<()>) {
        let tls = self.tls(who, from).await.unwrap();
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
        (
            send,
            tokio::spawn(async move {
                let _ = conn.await;
            }),
        )
    }
}

fn request(method: &str, path: &str, body: Option<Value>) -> Request<Full<Bytes>> {
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    Request::builder()
        .method(method)
        .uri(format!("https://127.0.0.1{path}"))
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap()
}

type Answer = (StatusCode, hyper::HeaderMap, Value);

/// Reads a whole answer (at most 10 s for its head), its body as JSON (null if it is not).
async fn answer<F>(sent: F) -> Answer
where
    F: std::future::Future<Output = hyper::Result<hyper::Response<hyper::body::Incoming>>>,
{
    let resp = tokio::time::timeout(Duration::from_secs(10), sent).await.unwrap().unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Sends a request on an HTTP/1 connection and reads the whole answer.
async fn call1(send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>, req: Request<Full<Bytes>>) -> Answer {
    send.ready().await.unwrap();
    answer(send.send_request(req)).await
}

/// The same on an HTTP/2 connection.
async fn call2(send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>, req: Request<Full<Bytes>>) -> Answer {
    send.ready().await.unwrap();
    answer(send.send_request(req)).await
}

/// This process's resident memory, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `shoal_api_refused_total{reason=...}` as the admin reads it from `/metrics`.
async fn refused(api: &Api, admin: &Who, reason: &str) -> u64 {
    let mut send = api.h1(admin, OTHER).await.unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(request("GET", "/metrics", None)).await.unwrap();
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let prefix = format!("shoal_api_refused_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// Waits (at most 10 s) until `f` holds.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "{what}: still not true after 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_once_and_others_are_still_served() {
    let cap = 8;
    let caps = Caps { max_connections_per_client: cap, ..Caps::default() };
    let api = Api::start(caps, Duration::from_secs(300)).await;
    let admin = api.identity(None, b"http/1.1").await;

    // The client holds its whole allowance with open, idle connections.
    let mut held = Vec::new();
    for _ in 0..cap {
        let mut send = api.h1(&admin, CLIENT).await.unwrap();
        let (code, _, _) = call1(&mut send, request("GET", "/version", None)).await;
        assert_eq!(code, StatusCode::OK);
        held.push(send);
    }
    let before = rss_kib();
    // Then floods: every further connection is closed before a byte is read (no TLS).
    let flood = 2000;
    for batch in 0..flood / 100 {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let conn = api.tcp(CLIENT).await.unwrap();
            set.spawn(async move {
                let mut conn = conn;
                let mut buf = [0u8; 64];
                // Closed by the server at once: end of stream or a reset (a connection that
                // was served would wait 10 s for its TLS ClientHello).
                match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => {}
                    other => panic!("an over-cap connection was not closed: {other:?}"),
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap_or_else(|e| panic!("batch {batch}: {e}"));
        }
    }
    // A TLS client over the cap fails its handshake too.
    assert!(api.h1(&admin, CLIENT).await.is_err(), "a connection over the cap was served");
    // Another address is served meanwhile, and so is every held connection.
    let mut other = api.h1(&admin, OTHER).await.unwrap();
    assert_eq!(call1(&mut other, request("GET", "/api/v1/namespaces", None)).await.0, StatusCode::OK);
    for send in &mut held {
        assert_eq!(call1(send, request("GET", "/version", None)).await.0, StatusCode::OK);
    }
    let grown = rss_kib().saturating_sub(before);
    println!("refused_connections: {flood} rss_growth_kib: {grown}");
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB over {flood} refused connections");
    assert!(refused(&api, &admin, "connections_per_client").await > flood as u64);

    // Slots come back when connections end.
    drop(held);
    eventually("a new connection from the client after it closed its others", || async {
        match api.h1(&admin, CLIENT).await {
            Ok(mut send) => {
                send.ready().await.is_ok()
                    && matches!(
                        tokio::time::timeout(Duration::from_secs(5), send.send_request(request("GET", "/version", None))).await,
                        Ok(Ok(r)) if r.status() == StatusCode::OK
                    )
            }
            Err(_) => false,
        }
    })
    .await;
    let mut again = Vec::new();
    for _ in 0..cap - 1 {
        again.push(api.h1(&admin, CLIENT).await.expect("the whole allowance is back"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_over_the_cap_get_429_with_retry_after_and_slots_come_back() {
    let caps = Caps { max_watches_per_user: 3, ..Caps::default() };
    let api = Api::start(caps, Duration::from_secs(300)).await;
    let admin = api.identity(None, b"h2").await;
    let bob = api.identity(Some("bob"), b"h2").await;
    let (mut send, _conn) = api.h2(&admin, CLIENT).await;
    let crb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "bob-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "User", "name": "bob", "apiGroup": "rbac.authorization.k8s.io"}]});
    let (code, _, body) =
        call2(&mut send, request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", Some(crb))).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");

    let watch = "/api/v1/namespaces/default/configmaps?watch=true";
    let mut open = Vec::new();
    for _ in 0..3 {
        send.ready().await.unwrap();
        let resp = send.send_request(request("GET", watch, None)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        open.push(resp);
    }
    // The fourth, on the same connection or another: 429, Status and Retry-After.
    let (mut fresh, _fresh_conn) = api.h2(&admin, OTHER).await;
    for same in [true, false] {
        let conn = if same { &mut send } else { &mut fresh };
        let (code, headers, status) = call2(conn, request("GET", watch, None)).await;
        assert_eq!(code, StatusCode::TOO_MANY_REQUESTS, "{status}");
        assert_eq!(headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "TooManyRequests");
        assert_eq!(status["details"]["retryAfterSeconds"], 1);
        assert!(status["message"].as_str().unwrap_or_default().contains("Too many watches"), "{status}");
    }
    // Lists and other users are not affected.
    assert_eq!(call2(&mut send, request("GET", "/api/v1/namespaces/default/configmaps", None)).await.0, StatusCode::OK);
    let (mut bob_send, _bob_conn) = api.h2(&bob, CLIENT).await;
    send.ready().await.unwrap();
    bob_send.ready().await.unwrap();
    let bob_watch = bob_send.send_request(request("GET", watch, None)).await.unwrap();
    assert_eq!(bob_watch.status(), StatusCode::OK, "another user's watch is counted apart");
    assert!(refused(&api, &admin, "watches_per_user").await >= 2);

    // A watch the client drops gives its slot back.
    open.pop();
    eventually("a watch after one was closed", || {
        let mut send = send.clone();
        async move {
            send.ready().await.is_ok()
                && send.send_request(request("GET", watch, None)).await.is_ok_and(|r| {
                    let ok = r.status() == StatusCode::OK;
                    drop(r);
                    ok
                })
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_requests_over_the_inflight_cap_get_429_but_admins_pass() {
    let caps = Caps { max_mutating_requests_inflight: 1, ..Caps::default() };
    let api = Api::start(caps, Duration::from_secs(300)).await;
    let admin = api.identity(None, b"http/1.1").await;
    let carol = api.identity(Some("carol"), b"http/1.1").await;
    let mut a = api.h1(&admin, CLIENT).await.unwrap();
    let crb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "carol-edit"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"kind": "User", "name": "carol", "apiGroup": "rbac.authorization.k8s.io"}]});
    let (code, _, body) =
        call1(&mut a, request("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", Some(crb))).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let cm = |name: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}});

    // A slow create holds the only mutating slot: its body never finishes arriving.
    let mut slow = api.tls(&carol, CLIENT).await.unwrap();
    slow.write_all(
        b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nhost: 127.0.0.1\r\n\
          content-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"apiVersion\"",
    )
    .await
    .unwrap();
    slow.flush().await.unwrap();
    let mut c = api.h1(&carol, CLIENT).await.unwrap();
    // (The slow request reaches the server in its own time: retried until it holds the slot.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    let (_, headers, status) = loop {
        n += 1;
        let got =
            call1(&mut c, request("POST", "/api/v1/namespaces/default/configmaps", Some(cm(&format!("c{n}"))))).await;
        if got.0 == StatusCode::TOO_MANY_REQUESTS {
            break got;
        }
        assert!(Instant::now() < deadline, "no create was refused while the slot was held: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(status["reason"], "TooManyRequests");
    assert_eq!(status["message"], "Too many requests, please try again later.");
    // Reads have their own pool; system:masters is not held back, as upstream.
    assert_eq!(call1(&mut c, request("GET", "/api/v1/namespaces/default/configmaps", None)).await.0, StatusCode::OK);
    let (code, _, body) =
        call1(&mut a, request("POST", "/api/v1/namespaces/default/configmaps", Some(cm("admin")))).await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    assert!(refused(&api, &admin, "mutating_inflight").await >= 1);

    // The slow client goes away: the slot comes back.
    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        n += 1;
        let got =
            call1(&mut c, request("POST", "/api/v1/namespaces/default/configmaps", Some(cm(&format!("c{n}"))))).await;
        if got.0 == StatusCode::CREATED {
            break;
        }
        assert_eq!(got.0, StatusCode::TOO_MANY_REQUESTS, "{got:?}");
        assert!(Instant::now() < deadline, "the slot did not come back after the slow client left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_but_one_with_an_open_watch_is_not() {
    let idle = Duration::from_secs(2);
    let api = Api::start(Caps::default(), idle).await;
    let admin = api.identity(None, b"h2").await;

    // Idle after one request: closed (GOAWAY) after the idle timeout.
    let (mut send, conn) = api.h2(&admin, CLIENT).await;
    assert_eq!(call2(&mut send, request("GET", "/version", None)).await.0, StatusCode::OK);
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), conn).await.expect("the idle connection was not closed").unwrap();
    let took = started.elapsed();
    println!("h2_idle_close_ms: {}", took.as_millis());
    assert!(took >= idle / 2, "closed long before the idle timeout: {took:?}");

    // With a watch open, the connection is busy, not idle: it outlives the timeout and the
    // watch still gets its events.
    let (mut send, conn) = api.h2(&admin, CLIENT).await;
    send.ready().await.unwrap();
    let resp =
        send.send_request(request("GET", "/api/v1/namespaces/default/configmaps?watch=true", None)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    tokio::time::sleep(idle * 2).await;
    assert!(!conn.is_finished(), "a connection with an open watch was closed as idle");
    let (mut other, _c) = api.h2(&admin, OTHER).await;
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "seen"}});
    assert_eq!(
        call2(&mut other, request("POST", "/api/v1/namespaces/default/configmaps", Some(cm))).await.0,
        StatusCode::CREATED
    );
    let frame = tokio::time::timeout(Duration::from_secs(10), body.frame()).await.expect("an event").unwrap().unwrap();
    let event: Value = serde_json::from_slice(frame.data_ref().expect("data")).unwrap();
    assert_eq!(event["object"]["metadata"]["name"], "seen");
    // The watch ends: the connection goes idle and is closed.
    drop(body);
    tokio::time::timeout(Duration::from_secs(30), conn).await.expect("closed once the watch ended").unwrap();
}
