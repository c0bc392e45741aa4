//! Certificate revocation as a kubectl user sees it: an API server on 127.0.0.1 over an
//! in-memory store, kubeconfigs minted and recorded as `shoal kubeconfig --user` does, the
//! revocation list kept current from the store as on a node; real kubectl 1.33.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal::api::{kubeconfig_for, ApiConfig, Server, TlsMaterial};
use shoal::auth::revocation::{mint_client_cert, revoke_serial, revoke_subject};
use shoal_gossip::{ClusterSecrets, Revocations};
use shoal_kube::Objects;
use shoal_store::Store;
use tokio_util::sync::CancellationToken;

fn kubectl() -> PathBuf {
    let real =
        std::fs::canonicalize("/usr/bin/kubectl").expect("these tests need kubectl at /usr/bin/kubectl (gcloud SDK)");
    real.parent().expect("kubectl has a parent directory").join("kubectl.1.33")
}

struct Api {
    dir: tempfile::TempDir,
    url: String,
    store: Store,
    secrets: ClusterSecrets,
    revoked: Revocations,
    shutdown: CancellationToken,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Api {
    async fn start() -> Api {
        let secrets = ClusterSecrets::generate("revoke-test").unwrap();
        let serving = secrets.node_tls("n1", &["127.0.0.1".parse().unwrap()]).unwrap();
        let tls = TlsMaterial {
            cert_pem: serving.cert_pem,
            key_pem: serving.key_pem,
            client_ca_pem: secrets.ca_cert_pem.clone(),
        };
        let store = Store::in_memory();
        let mut cfg = ApiConfig::new("127.0.0.1:0".parse().unwrap(), tls, Objects::new(store.clone()), "n1");
        let revoked = Revocations::default();
        cfg.revoked = revoked.clone();
        let server = Server::bind(cfg).await.unwrap();
        let url = format!("https://{}", server.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move { server.run(s).await.unwrap() });
        // As every node does: the revoked set follows the store.
        tokio::spawn(shoal::auth::revocation::keep_current(store.clone(), revoked.clone(), shutdown.clone()));
        let api = Api { dir: tempfile::tempdir().unwrap(), url, store, secrets, revoked, shutdown };
        api.mint(None).await;
        api
    }

    fn home(&self) -> &Path {
        self.dir.path()
    }

    /// Mints and records a kubeconfig (`admin.yaml` without a user), as `shoal kubeconfig`
    /// does; returns the certificate's serial.
    async fn mint(&self, user: Option<&str>) -> String {
        self.mint_pem(user).await.0
    }

    /// As `mint`; also returns the certificate and key PEM.
    async fn mint_pem(&self, user: Option<&str>) -> (String, String, String) {
        let (name, cert) =
            mint_client_cert(&self.store, &self.secrets, user.map(String::from), Vec::new(), Some(3600)).await.unwrap();
        std::fs::write(
            self.home().join(format!("{}.yaml", user.unwrap_or("admin"))),
            kubeconfig_for(&self.url, &self.secrets.ca_cert_pem, &cert.cert_pem, &cert.key_pem, &name),
        )
        .unwrap();
        (shoal::auth::revocation::describe(&cert.cert_pem).unwrap().serial, cert.cert_pem, cert.key_pem)
    }

    fn command(&self, who: &str, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(kubectl());
        cmd.args(args)
            .arg("--request-timeout=10s")
            .env_clear()
            .env("HOME", self.home())
            .env("KUBECONFIG", self.home().join(format!("{who}.yaml")))
            .env("PATH", "/usr/bin:/bin")
            .env("TMPDIR", self.home())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    async fn run(&self, who: &str, args: &[&str]) -> (bool, String, String) {
        let out = tokio::time::timeout(Duration::from_secs(60), self.command(who, args).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish"))
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn ok(&self, who: &str, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(who, args).await;
        assert!(ok, "{who}: kubectl {args:?} failed:\nstdout: {stdout}\nstderr: {stderr}");
        stdout
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_user_is_refused_at_the_handshake_and_its_watch_is_closed() {
    let api = Api::start().await;
    api.mint(Some("alice")).await;
    let bob = api.mint(Some("bob")).await;
    assert!(api.ok("alice", &["auth", "whoami"]).await.contains("alice"));
    api.ok("admin", &["create", "clusterrolebinding", "alice-view", "--clusterrole=view", "--user=alice"]).await;
    api.ok("alice", &["get", "pods", "-n", "default"]).await;

    // A watch of alice's, open across the revocation.
    let mut watch = api.command("alice", &["get", "configmaps", "-n", "default", "--watch"]).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(watch.try_wait().unwrap().is_none(), "the watch should be running");

    let done = revoke_subject(&api.store, "alice", "left the team", None).await.unwrap();
    assert_eq!(done.len(), 1);
    let revoked_at = Instant::now();
    // Refused from now on, before any request runs: the TLS handshake fails.
    // Under TLS 1.3 the server's alert can reach kubectl after it has started HTTP/2; kubectl then
    // sometimes reports only "http2: client conn could not be established". Every attempt after
    // the revocation must fail, and kubectl must name the revocation within a few of them.
    let mut refusal = String::new();
    let mut lockout = None;
    for _ in 0..40 {
        let (ok, _, stderr) = api.run("alice", &["auth", "whoami"]).await;
        if !ok {
            lockout.get_or_insert_with(|| revoked_at.elapsed());
            refusal = stderr;
            if refusal.contains("revoked") {
                break;
            }
        } else {
            assert!(lockout.is_none(), "alice got in again after a refusal");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refusal.contains("revoked"), "kubectl should say the certificate is revoked: {refusal}");
    let lockout = lockout.expect("refused");
    assert!(lockout < Duration::from_secs(2), "lockout took {lockout:?}");
    println!("revoke_lockout_ms: {}", lockout.as_millis());
    let mut said = String::new();
    for _ in 0..5 {
        let (ok, _, stderr) = api.run("alice", &["get", "pods", "-n", "default"]).await;
        assert!(!ok, "a revoked user got in: {stderr}");
        said = stderr;
        if said.contains("revoked") {
            break;
        }
    }
    assert!(said.contains("revoked"), "{said}");
    // Her open watch was closed with her connection (kubectl's watch ends or errors out).
    let ended = tokio::time::timeout(Duration::from_secs(10), watch.wait()).await;
    assert!(ended.is_ok(), "the watch of a revoked user is still open");

    // A new kubeconfig for the same name is a new certificate: an operator can re-admit.
    api.mint(Some("alice")).await;
    assert!(api.ok("alice", &["auth", "whoami"]).await.contains("alice"));
    // Others are untouched; then bob by serial, in openssl's upper-case form.
    assert!(api.ok("bob", &["auth", "whoami"]).await.contains("bob"));
    api.ok("admin", &["get", "ns"]).await;
    revoke_serial(&api.store, &bob.to_uppercase(), "lost laptop").await.unwrap();
    let mut refused = false;
    for _ in 0..40 {
        if !api.run("bob", &["auth", "whoami"]).await.0 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "bob's revoked serial still gets in");
    api.ok("admin", &["get", "ns"]).await;
}

#[tokio::test]
async fn kubeconfig_refuses_node_groups_and_system_names() {
    let store = Store::in_memory();
    let secrets = ClusterSecrets::generate("revoke-test").unwrap();
    let e = mint_client_cert(&store, &secrets, Some("mallory".into()), vec!["system:nodes".into()], None)
        .await
        .unwrap_err();
    assert_eq!(e, r#"group "system:nodes" is for node certificates, which nodes get by joining"#);
    let e = mint_client_cert(&store, &secrets, None, vec!["system:nodes".into()], None).await.unwrap_err();
    assert!(e.contains("node certificates"), "{e}");
    for name in ["system:node:n1", "system:admin", ""] {
        let e = mint_client_cert(&store, &secrets, Some(name.into()), Vec::new(), None).await.unwrap_err();
        assert!(e.contains("not in the system: namespace"), "{name}: {e}");
    }
    let e = mint_client_cert(&store, &secrets, Some("alice".into()), Vec::new(), Some(0)).await.unwrap_err();
    assert_eq!(e, "--ttl must be positive");
    let groups = vec!["a".to_string(), "b".to_string(), "c".to_string()];
    assert!(mint_client_cert(&store, &secrets, Some("alice".into()), groups, None).await.is_err());
    // Nothing refused was minted, so nothing is on record.
    assert!(shoal::auth::revocation::issued(&store).await.unwrap().is_empty());
}

/// A rustls client holding `cert_pem`'s certificate and rustls's default session store: its
/// later connections resume the first one's session.
fn resuming_client(ca_pem: &str, cert_pem: &str, key_pem: &str) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// `GET /version` over a new connection: whether the handshake resumed a session, and the
/// response's status line, or why there was none.
async fn get_version(url: &str, connector: &tokio_rustls::TlsConnector) -> (bool, Result<String, String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("https://");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = match connector.connect(name, tcp).await {
        Ok(t) => t,
        Err(e) => return (false, Err(format!("handshake: {e}"))),
    };
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let exchange = async {
        tls.write_all(b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return (resumed, Err(format!("after the handshake: {e}"))),
        Err(_) => return (resumed, Err("no answer within 10 s".into())),
    };
    let text = String::from_utf8_lossy(&answer);
    match text.lines().next() {
        Some(line) if line.starts_with("HTTP/") => (resumed, Ok(line.to_string())),
        _ => (resumed, Err(format!("after the handshake: no response ({} bytes)", answer.len()))),
    }
}

/// TLS sessions are resumed on the API, and a resumed session is checked against the
/// revocation list all the same: a client that resumed before its certificate was revoked is
/// refused after, before its request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_of_a_revoked_certificate_is_refused() {
    let api = Api::start().await;
    let (serial, cert, key) = api.mint_pem(Some("carol")).await;
    let client = resuming_client(&api.secrets.ca_cert_pem, &cert, &key);
    let (resumed, first) = get_version(&api.url, &client).await;
    assert!(!resumed && first.is_ok(), "{first:?}");
    let (resumed, second) = get_version(&api.url, &client).await;
    assert!(resumed, "the second connection should resume the first one's session");
    assert!(second.is_ok(), "{second:?}");

    revoke_serial(&api.store, &serial, "lost laptop").await.unwrap();
    for _ in 0..200 {
        if api.revoked.is_revoked(&serial) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(api.revoked.is_revoked(&serial));
    // The resumed handshake succeeds (the verifier does not run on resumption); the
    // connection is closed before the request is served.
    let (resumed, third) = get_version(&api.url, &client).await;
    assert!(resumed, "the third connection should resume too");
    let refusal = third.expect_err("a revoked certificate was served on a resumed session");
    assert!(refusal.starts_with("after the handshake"), "{refusal}");
    // Without a session, the handshake itself fails.
    let fresh = resuming_client(&api.secrets.ca_cert_pem, &cert, &key);
    let (_, full) = get_version(&api.url, &fresh).await;
    let full = full.expect_err("a revoked certificate was served");
    assert!(full.contains("revoked") || full.contains("Revoked"), "{full}");
}
