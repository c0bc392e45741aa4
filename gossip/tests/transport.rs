//! The peer transport as nodes and strangers see it, on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use shoal_gossip::pki::{load_certs, root_store};
use shoal_gossip::transport::{JoinHook, RpcHandler, StreamHandler};
use shoal_gossip::{join, ClusterSecrets, Error, JoinRequest, NodeTls, Transport, TransportConfig};

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn node(secrets: &ClusterSecrets, name: &str) -> Transport {
    node_with(secrets, name, TransportConfig::default())
}

fn node_with(secrets: &ClusterSecrets, name: &str, cfg: TransportConfig) -> Transport {
    let tls = secrets.node_tls(name, &["127.0.0.1".parse().unwrap()]).unwrap();
    Transport::bind_with(any_port(), tls, cfg).unwrap()
}

fn echo_handler(calls: Arc<AtomicUsize>) -> RpcHandler {
    Arc::new(move |peer, body| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut out = format!("{}:", peer.node_name).into_bytes();
            out.extend_from_slice(&body);
            Ok(out)
        }
        .boxed()
    })
}

#[tokio::test]
async fn nodes_of_one_cluster_call_each_other() {
    init_tracing();
    let secrets = ClusterSecrets::generate("test").unwrap();
    let a = node(&secrets, "node-a");
    let b = node(&secrets, "node-b");
    let b_addr = b.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    b.register("echo", echo_handler(calls.clone()));
    b.register("fail", Arc::new(|_, _| async { Err("disk on fire".to_string()) }.boxed()));

    let answer = a.call(b_addr, "echo", b"hello".to_vec()).await.unwrap();
    assert_eq!(answer, b"node-a:hello");

    // Many calls at once share one connection.
    let mut joins = Vec::new();
    for i in 0..32 {
        let a = a.clone();
        joins.push(tokio::spawn(async move { a.call(b_addr, "echo", vec![i]).await }));
    }
    for (i, j) in joins.into_iter().enumerate() {
        let mut want = b"node-a:".to_vec();
        want.push(i as u8);
        assert_eq!(j.await.unwrap().unwrap(), want);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 33);
    b.register("whoami", Arc::new(move |_, _| async { Ok(Vec::new()) }.boxed()));
    let fresh = node(&secrets, "node-c");
    let mut joins = Vec::new();
    for _ in 0..16 {
        let fresh = fresh.clone();
        joins.push(tokio::spawn(async move { fresh.call(b_addr, "whoami", Vec::new()).await }));
    }
    for j in joins {
        j.await.unwrap().unwrap();
    }
    assert_eq!(fresh.open_connections(), 1, "concurrent first calls opened several connections");
    fresh.shutdown().await;

    match a.call(b_addr, "fail", Vec::new()).await {
        Err(Error::Remote { message, service, .. }) => {
            assert_eq!(message, "disk on fire");
            assert_eq!(service, "fail");
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    assert!(matches!(a.call(b_addr, "nope", Vec::new()).await, Err(Error::UnknownService { .. })));
    // Empty bodies and answers are fine.
    b.register("empty", Arc::new(|_, _| async { Ok(Vec::new()) }.boxed()));
    assert_eq!(a.call(b_addr, "empty", Vec::new()).await.unwrap(), Vec::<u8>::new());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn raw_streams_carry_bytes_both_ways() {
    init_tracing();
    let secrets = ClusterSecrets::generate("test").unwrap();
    let a = node(&secrets, "node-a");
    let b = node(&secrets, "node-b");
    let b_addr = b.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(None));
    let seen2 = seen.clone();
    let handler: StreamHandler = Arc::new(move |peer, header, mut send, mut recv| {
        *seen2.lock().unwrap() = Some((peer.node_name.clone(), header));
        async move {
            if let Ok(data) = recv.read_to_end(1 << 20).await {
                let _ = send.write_all(&data).await;
                let _ = send.write_all(b"!").await;
                let _ = send.finish();
            }
        }
        .boxed()
    });
    b.register_stream("logs", handler);
    let (mut send, mut recv) = a.open_stream(b_addr, "logs", b"pod=web".to_vec()).await.unwrap();
    send.write_all(b"line 1\nline 2\n").await.unwrap();
    send.finish().unwrap();
    let back = recv.read_to_end(1 << 20).await.unwrap();
    assert_eq!(back, b"line 1\nline 2\n!");
    assert_eq!(seen.lock().unwrap().clone(), Some(("node-a".to_string(), b"pod=web".to_vec())));
    assert!(matches!(a.open_stream(b_addr, "exec", Vec::new()).await, Err(Error::UnknownService { .. })));
    a.shutdown().await;
    b.shutdown().await;
}

/// A QUIC client speaking "shoal/1" that trusts the cluster CA but presents no certificate.
fn certless_client(ca_pem: &str) -> (quinn::Endpoint, quinn::ClientConfig) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(root_store(ca_pem).unwrap())
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"shoal/1".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let endpoint = quinn::Endpoint::client(any_port()).unwrap();
    (endpoint, quinn::ClientConfig::new(Arc::new(quic)))
}

fn rpc_request(service: &str, body: &[u8]) -> Vec<u8> {
    let mut payload = vec![0u8];
    payload.extend_from_slice(&(service.len() as u16).to_be_bytes());
    payload.extend_from_slice(service.as_bytes());
    payload.extend_from_slice(body);
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    frame
}

#[tokio::test]
async fn a_client_without_a_certificate_gets_a_closed_connection() {
    init_tracing();
    let secrets = ClusterSecrets::generate("test").unwrap();
    let b = node(&secrets, "node-b");
    let b_addr = b.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    b.register("echo", echo_handler(calls.clone()));

    let (endpoint, config) = certless_client(&secrets.ca_cert_pem);
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        let conn = endpoint.connect_with(config, b_addr, "shoal-peer").unwrap().await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&rpc_request("echo", b"hi")).await?;
        let _ = send.finish();
        let mut answer = Vec::new();
        let mut buf = [0u8; 64];
        while let Some(n) = recv.read(&mut buf).await? {
            answer.extend_from_slice(&buf[..n]);
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(answer)
    })
    .await
    .expect("the server neither answered nor closed");
    eprintln!("certificate-less client: {outcome:?}");
    assert!(outcome.is_err(), "a certificate-less client got an answer: {outcome:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    b.shutdown().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_gets_a_closed_connection() {
    init_tracing();
    let secrets = ClusterSecrets::generate("test").unwrap();
    let b = node(&secrets, "node-b");
    let b_addr = b.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    b.register("echo", echo_handler(calls.clone()));

    // Trusts our CA (so it accepts node-b) but holds a certificate from a stranger's CA.
    let stranger = ClusterSecrets::generate("stranger").unwrap();
    let forged = stranger.issue_node_cert("node-b", &[]).unwrap();
    let cfg = TransportConfig { call_timeout: Duration::from_secs(5), ..TransportConfig::default() };
    let intruder = Transport::bind_with(
        any_port(),
        NodeTls { ca_cert_pem: secrets.ca_cert_pem.clone(), cert_pem: forged.cert_pem, key_pem: forged.key_pem },
        cfg,
    )
    .unwrap();
    let result = intruder.call(b_addr, "echo", b"hi".to_vec()).await;
    eprintln!("foreign certificate: {result:?}");
    assert!(result.is_err(), "a foreign certificate got an answer: {result:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // A node of another cluster does not even accept ours.
    let foreign = node(&stranger, "node-x");
    let x_addr = foreign.local_addr().unwrap();
    foreign.register("echo", echo_handler(calls.clone()));
    let a = node(&secrets, "node-a");
    assert!(a.call(x_addr, "echo", Vec::new()).await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    for t in [b, intruder, foreign, a] {
        t.shutdown().await;
    }
}

/// The admin's certificate (system:masters, from `shoal kubeconfig`) and any other user's
/// certificate signed by the cluster CA open no peer service: neither a call (Raft, forwarded
/// writes) nor a raw stream (pod streams, image blobs) reaches its handler.
#[tokio::test]
async fn a_user_certificate_opens_no_peer_service() {
    init_tracing();
    let secrets = ClusterSecrets::generate("test").unwrap();
    let b = node(&secrets, "node-b");
    let b_addr = b.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    b.register("raft/append-entries", echo_handler(calls.clone()));
    let streams = Arc::new(AtomicUsize::new(0));
    let s2 = streams.clone();
    let handler: StreamHandler = Arc::new(move |_, _, _, _| {
        s2.fetch_add(1, Ordering::SeqCst);
        async {}.boxed()
    });
    b.register_stream("pod/exec", handler.clone());
    b.register_stream("image/blob", handler);
    let cfg = TransportConfig { call_timeout: Duration::from_secs(5), ..TransportConfig::default() };
    for (cn, orgs) in [("admin", vec!["system:masters"]), ("alice", vec![]), ("system:node:node-b", vec![])] {
        let user = secrets.issue_client_cert(cn, &orgs).unwrap();
        let intruder = Transport::bind_with(
            any_port(),
            NodeTls { ca_cert_pem: secrets.ca_cert_pem.clone(), cert_pem: user.cert_pem, key_pem: user.key_pem },
            cfg.clone(),
        )
        .unwrap();
        let result = intruder.call(b_addr, "raft/append-entries", b"vote for me".to_vec()).await;
        assert!(result.is_err(), "{cn}'s certificate got a Raft answer: {result:?}");
        for service in ["pod/exec", "image/blob"] {
            let opened = intruder.open_stream(b_addr, service, b"{}".to_vec()).await;
            assert!(opened.is_err(), "{cn}'s certificate opened {service}");
        }
        intruder.shutdown().await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(streams.load(Ordering::SeqCst), 0);
    // A node still gets through.
    let a = node(&secrets, "node-a");
    assert_eq!(a.call(b_addr, "raft/append-entries", b"x".to_vec()).await.unwrap(), b"node-a:x");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn join_with_the_right_token_yields_working_certificates() {
    init_tracing();
    let secrets = ClusterSecrets::generate("test").unwrap();
    let seed = node(&secrets, "node-a");
    let seed_addr = seed.local_addr().unwrap();
    let joined = Arc::new(Mutex::new(Vec::new()));
    let joined2 = joined.clone();
    let hook: JoinHook = Arc::new(move |request, _remote| {
        joined2.lock().unwrap().push(request.name.clone());
        async { Ok(b"cluster-42".to_vec()) }.boxed()
    });
    seed.enable_join(secrets.clone(), Some(hook));
    let calls = Arc::new(AtomicUsize::new(0));
    seed.register("echo", echo_handler(calls.clone()));

    let token = secrets.join_token().unwrap();
    let request = JoinRequest { name: "node-c".to_string(), ips: vec!["127.0.0.1".parse().unwrap()] };
    let bundle = join(seed_addr, &token, request).await.unwrap();
    assert_eq!(bundle.extra, b"cluster-42");
    // The token yields the node's own certificate and the secrets, never the CA key.
    assert!(bundle.secrets.ca_key_pem.is_empty(), "a joiner received the CA private key");
    assert!(!serde_json::to_string(&bundle.secrets).unwrap().contains("ca_key_pem"));
    assert_eq!(bundle.secrets, secrets.without_ca_key());
    assert_eq!(*joined.lock().unwrap(), vec!["node-c".to_string()]);
    let leaf = load_certs(&bundle.node_cert_pem, "node").unwrap().remove(0);
    assert_eq!(shoal_gossip::pki::common_name(leaf.as_ref()).as_deref(), Some("system:node:node-c"));
    assert_eq!(shoal_gossip::pki::organizations(leaf.as_ref()), ["system:nodes"]);

    let c = Transport::bind(any_port(), bundle.node_tls()).unwrap();
    let answer = c.call(seed_addr, "echo", b"hi".to_vec()).await.unwrap();
    assert_eq!(answer, b"node-c:hi");

    // The new node cannot sign for the next one: without a way to the key holder it says so...
    c.enable_join(bundle.secrets.clone(), None);
    let c_addr = c.local_addr().unwrap();
    let err = join(c_addr, &token, JoinRequest { name: "node-d".to_string(), ips: vec![] }).await.unwrap_err();
    assert!(err.to_string().contains("holds no CA key"), "{err}");
    // ...and forwards the request to the node that holds it.
    let signer = seed.clone();
    c.set_join_forward(Arc::new(move |request, remote| {
        let signer = signer.clone();
        async move { Some(signer.answer_join(&request, remote).await) }.boxed()
    }));
    let d = join(c_addr, &token, JoinRequest { name: "node-d".to_string(), ips: vec![] }).await.unwrap();
    assert_eq!(d.extra, b"cluster-42");
    assert!(d.secrets.ca_key_pem.is_empty());
    seed.shutdown().await;
    c.shutdown().await;
}

/// A joiner holding a valid token tries to mint a certificate with what it received: its own
/// node certificate is no CA, and a certificate it signs is refused by every node.
#[tokio::test]
async fn a_node_certificate_cannot_sign_another() {
    init_tracing();
    let secrets = ClusterSecrets::generate("test").unwrap();
    let seed = node(&secrets, "node-a");
    let seed_addr = seed.local_addr().unwrap();
    seed.enable_join(secrets.clone(), None);
    let calls = Arc::new(AtomicUsize::new(0));
    seed.register("echo", echo_handler(calls.clone()));
    let token = secrets.join_token().unwrap();
    let bundle = join(seed_addr, &token, JoinRequest { name: "node-c".to_string(), ips: vec![] }).await.unwrap();
    // No CA key to sign with.
    assert!(bundle.secrets.issue_node_cert("node-x", &[]).is_err());
    let der = load_certs(&bundle.node_cert_pem, "node").unwrap().remove(0);
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let ca = parsed.basic_constraints().unwrap().map(|b| b.value.ca);
    assert_eq!(ca, Some(false), "a node certificate must say it is no CA");

    // Sign "node-x" with the node key as if it were a CA, present the chain to a node.
    let node_key = rcgen::KeyPair::from_pem(&bundle.node_key_pem).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&bundle.node_cert_pem, node_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["shoal-peer".to_string()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "system:node:node-x");
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "system:nodes");
    let forged = params.signed_by(&key, &issuer).unwrap();
    let chain = format!("{}{}", forged.pem(), bundle.node_cert_pem);
    let cfg = TransportConfig { call_timeout: Duration::from_secs(5), ..TransportConfig::default() };
    let intruder = Transport::bind_with(
        any_port(),
        NodeTls { ca_cert_pem: secrets.ca_cert_pem.clone(), cert_pem: chain, key_pem: key.serialize_pem() },
        cfg,
    )
    .unwrap();
    let result = intruder.call(seed_addr, "echo", b"hi".to_vec()).await;
    assert!(result.is_err(), "a certificate signed by a node certificate got an answer: {result:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    for t in [seed, intruder] {
        t.shutdown().await;
    }
}

#[tokio::test]
async fn a_wrong_token_is_refused_with_a_message() {
    init_tracing();
    let secrets = ClusterSecrets::generate("test").unwrap();
    let seed = node(&secrets, "node-a");
    let seed_addr = seed.local_addr().unwrap();
    seed.enable_join(secrets.clone(), None);
    let request = JoinRequest { name: "node-c".to_string(), ips: vec![] };

    // Right CA, wrong secret.
    let mut wrong = secrets.clone();
    wrong.rotate_token();
    let err = join(seed_addr, &wrong.join_token().unwrap(), request.clone()).await.unwrap_err();
    assert!(matches!(err, Error::JoinRefused { .. }), "{err:?}");
    assert_eq!(err.to_string(), "join refused: invalid join token");

    // A token naming another CA: the joiner does not trust this server at all.
    let other = ClusterSecrets::generate("other").unwrap();
    let err = join(seed_addr, &other.join_token().unwrap(), request.clone()).await.unwrap_err();
    assert!(matches!(err, Error::Handshake { .. }), "{err:?}");

    // Not a token at all.
    let err = join(seed_addr, "hunter2", request.clone()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidToken { .. }), "{err:?}");

    // A node that does not admit joins says so.
    seed.disable_join();
    let err = join(seed_addr, &secrets.join_token().unwrap(), request).await.unwrap_err();
    assert!(matches!(err, Error::JoinRefused { .. }), "{err:?}");
    seed.shutdown().await;
}

#[tokio::test]
async fn oversized_frames_are_refused() {
    init_tracing();
    let secrets = ClusterSecrets::generate("test").unwrap();
    let small = TransportConfig { max_frame: 1024, ..TransportConfig::default() };
    let b = node_with(&secrets, "node-b", small.clone());
    let b_addr = b.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    b.register("echo", echo_handler(calls.clone()));
    b.register("big", Arc::new(|_, _| async { Ok(vec![7u8; 4096]) }.boxed()));
    let a = node(&secrets, "node-a");

    // The server refuses a request over its limit without reading it.
    match a.call(b_addr, "echo", vec![1u8; 100_000]).await {
        Err(Error::FrameTooLarge { max, .. }) => assert_eq!(max, 1024),
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // A handler's answer over the limit becomes an error, not a truncated answer.
    assert!(matches!(a.call(b_addr, "big", Vec::new()).await, Err(Error::Remote { .. })));
    // The sender refuses what it may not send.
    let c = node_with(&secrets, "node-c", small);
    assert!(matches!(c.call(b_addr, "echo", vec![0u8; 2048]).await, Err(Error::FrameTooLarge { .. })));
    // The connection stays usable.
    assert_eq!(a.call(b_addr, "echo", b"ok".to_vec()).await.unwrap(), b"node-a:ok");
    for t in [a, b, c] {
        t.shutdown().await;
    }
}

#[tokio::test]
async fn a_peer_vanishing_mid_call_is_an_error_and_its_return_is_served() {
    init_tracing();
    let secrets = ClusterSecrets::generate("test").unwrap();
    let b = node(&secrets, "node-b");
    let b_addr = b.local_addr().unwrap();
    b.register(
        "slow",
        Arc::new(|_, _| {
            async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(Vec::new())
            }
            .boxed()
        }),
    );
    let a = node_with(
        &secrets,
        "node-a",
        TransportConfig { call_timeout: Duration::from_secs(8), ..TransportConfig::default() },
    );
    let pending = {
        let a = a.clone();
        tokio::spawn(async move { a.call(b_addr, "slow", Vec::new()).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.shutdown().await;
    let result = pending.await.unwrap();
    eprintln!("call to a vanished peer: {result:?}");
    assert!(result.is_err(), "{result:?}");

    // A call may carry its own, shorter limit.
    let b2 = node(&secrets, "node-b2");
    b2.register(
        "slow",
        Arc::new(|_, _| {
            async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(Vec::new())
            }
            .boxed()
        }),
    );
    let result = a.call_with_timeout(b2.local_addr().unwrap(), "slow", Vec::new(), Duration::from_millis(300)).await;
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    b2.shutdown().await;

    // The node comes back on the same address: the next call reconnects.
    let tls = secrets.node_tls("node-b", &[]).unwrap();
    let b = Transport::bind(b_addr, tls).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    b.register("echo", echo_handler(calls));
    let answer = a.call(b_addr, "echo", b"again".to_vec()).await.unwrap();
    assert_eq!(answer, b"node-a:again");

    // Nobody listening at all: an error within the connect timeout.
    let dead: SocketAddr = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let started = std::time::Instant::now();
    let result = a.call(dead, "echo", Vec::new()).await;
    eprintln!("call to a closed port after {:?}: {result:?}", started.elapsed());
    assert!(result.is_err());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn garbage_on_the_quic_port_is_ignored() {
    init_tracing();
    let secrets = ClusterSecrets::generate("test").unwrap();
    let b = node(&secrets, "node-b");
    let b_addr = b.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    b.register("echo", echo_handler(calls));
    let junk = tokio::net::UdpSocket::bind(any_port()).await.unwrap();
    for len in [0usize, 1, 20, 1200, 1500, 9000, 65000] {
        let mut payload: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
        if let Some(first) = payload.first_mut() {
            *first |= 0xc0; // looks like a QUIC long header
        }
        let _ = junk.send_to(&payload, b_addr).await;
    }
    let a = node(&secrets, "node-a");
    assert_eq!(a.call(b_addr, "echo", b"x".to_vec()).await.unwrap(), b"node-a:x");
    a.shutdown().await;
    b.shutdown().await;
}

fn serial_of_tls(tls: &NodeTls) -> String {
    let leaf = load_certs(&tls.cert_pem, "node").unwrap().remove(0);
    shoal_gossip::revocation::serial_of(leaf.as_ref()).unwrap()
}

#[tokio::test]
async fn a_revoked_node_certificate_is_cut_off_both_ways() {
    init_tracing();
    let secrets = ClusterSecrets::generate("test").unwrap();
    let a_tls = secrets.node_tls("node-a", &["127.0.0.1".parse().unwrap()]).unwrap();
    let a_serial = serial_of_tls(&a_tls);
    let a = Transport::bind(any_port(), a_tls).unwrap();
    let b = node(&secrets, "node-b");
    let c = node(&secrets, "node-c");
    let calls = Arc::new(AtomicUsize::new(0));
    for t in [&a, &b, &c] {
        t.register("echo", echo_handler(calls.clone()));
    }
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    assert_eq!(a.call(b_addr, "echo", b"x".to_vec()).await.unwrap(), b"node-a:x");
    assert_eq!(c.call(a_addr, "echo", b"x".to_vec()).await.unwrap(), b"node-c:x");

    // b and c learn that node-a was removed: b closes the connection a opened, and no new
    // handshake of a's succeeds; c no longer accepts a as a server either.
    b.revocations().insert(&a_serial);
    c.revocations().insert(&a_serial);
    let mut refused = false;
    for _ in 0..50 {
        if a.call(b_addr, "echo", b"y".to_vec()).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "a revoked node still reaches a peer service");
    // Every new attempt fails its handshake (TLS 1.3: the client may learn it on its first read).
    let served = calls.load(Ordering::SeqCst);
    for _ in 0..3 {
        let e = a.call(b_addr, "echo", b"y".to_vec()).await.unwrap_err();
        assert!(format!("{e:?}").contains("Revoked") || format!("{e:?}").contains("revoked"), "{e:?}");
    }
    let e = c.call(a_addr, "echo", b"y".to_vec()).await.unwrap_err();
    assert!(format!("{e:?}").contains("Revoked"), "{e:?}");
    assert_eq!(calls.load(Ordering::SeqCst), served, "no request of a revoked peer was served");
    // The others are untouched.
    assert_eq!(c.call(b_addr, "echo", b"z".to_vec()).await.unwrap(), b"node-c:z");
    for t in [a, b, c] {
        t.shutdown().await;
    }
}

/// A QUIC client speaking "shoal/1" with `tls`'s node certificate and rustls's default
/// session store, so its later connections resume the first one's session.
fn resuming_client(tls: &NodeTls) -> (quinn::Endpoint, quinn::ClientConfig) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = load_certs(&tls.cert_pem, "node").unwrap();
    let key = shoal_gossip::pki::load_private_key(&tls.key_pem).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(root_store(&tls.ca_cert_pem).unwrap())
        .with_client_auth_cert(chain, key)
        .unwrap();
    client.alpn_protocols = vec![b"shoal/1".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(client).unwrap();
    let endpoint = quinn::Endpoint::client(any_port()).unwrap();
    (endpoint, quinn::ClientConfig::new(Arc::new(quic)))
}

/// One call over a new connection: Err("handshake: ...") when the handshake failed, else the
/// answer or why there was none.
async fn call_on_new_connection(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    addr: SocketAddr,
) -> Result<Vec<u8>, String> {
    let attempt = async {
        let conn = endpoint
            .connect_with(config.clone(), addr, "shoal-peer")
            .unwrap()
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let call = async {
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(&rpc_request("echo", b"hi")).await?;
            let _ = send.finish();
            let mut answer = Vec::new();
            let mut buf = [0u8; 64];
            while let Some(n) = recv.read(&mut buf).await? {
                answer.extend_from_slice(&buf[..n]);
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(answer)
        };
        let r = call.await.map_err(|e| format!("after the handshake: {e:?}"));
        // Give the session tickets a moment to arrive, then close.
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.close(0u32.into(), b"");
        r
    };
    tokio::time::timeout(Duration::from_secs(10), attempt).await.unwrap_or_else(|_| Err("timed out".into()))
}

/// Sessions are resumed on the peer port, and a resumed session is checked against the
/// revocation list all the same: a node that resumed before its certificate was revoked is
/// refused after, before any request of its is served.
#[tokio::test]
async fn a_resumed_session_of_a_revoked_certificate_is_refused() {
    init_tracing();
    let secrets = ClusterSecrets::generate("test").unwrap();
    let b = node(&secrets, "node-b");
    let b_addr = b.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    b.register("echo", echo_handler(calls.clone()));
    let a_tls = secrets.node_tls("node-a", &["127.0.0.1".parse().unwrap()]).unwrap();
    let (endpoint, config) = resuming_client(&a_tls);
    for _ in 0..2 {
        let answer = call_on_new_connection(&endpoint, &config, b_addr).await.expect("served");
        assert_eq!(answer.first(), Some(&0u8), "status OK");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    b.revocations().insert(&serial_of_tls(&a_tls));
    // The handshake itself succeeds: a resumed session skips the certificate verifier (a
    // full handshake would fail with a revoked alert). The connection is closed before its
    // request is read.
    let refused = call_on_new_connection(&endpoint, &config, b_addr).await.expect_err("refused");
    assert!(refused.contains(r#"ApplicationClosed"#) && refused.contains(r#"b"certificate revoked""#), "{refused}");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "no request of the revoked certificate was served");
    // Without a session to resume, the handshake itself fails: a TLS alert (which a TLS 1.3
    // client may only read after sending its request), not the close after a resumption.
    let (fresh, fresh_config) = resuming_client(&a_tls);
    let full = call_on_new_connection(&fresh, &fresh_config, b_addr).await.expect_err("refused");
    assert!(full.contains("invalid peer certificate: Revoked"), "{full}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    fresh.close(0u32.into(), b"");
    endpoint.close(0u32.into(), b"");
    b.shutdown().await;
}
