//! TLS for the API: the node's serving certificate, and client certificates checked against
//! the cluster CA (a connection without one is accepted, and every request on it gets 401).
//! A revoked certificate fails the handshake. Sessions may be resumed; a resumed session skips
//! the verifier, so every connection's certificate is checked again once its handshake is done,
//! before its first request is read ([`admit`]).
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::{Error, Result};

/// PEM material the API serves with.
#[derive(Clone)]
pub struct TlsMaterial {
    /// Serving certificate chain (leaf first), with every node address in its SANs.
    pub cert_pem: String,
    pub key_pem: String,
    /// CA whose client certificates are accepted (the cluster CA).
    pub client_ca_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

fn certs(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<_, _>>()
        .map_err(|source| Error::ParsePem { what, source })?;
    if certs.is_empty() {
        return Err(Error::EmptyPem { what });
    }
    Ok(certs)
}

/// The rustls server configuration: TLS 1.2/1.3 with ring, ALPN h2 and http/1.1.
pub(crate) fn server_config(m: &TlsMaterial, revoked: &shoal_gossip::Revocations) -> Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs("serving certificate", &m.cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(m.key_pem.as_bytes())
        .map_err(|source| Error::ParsePem { what: "serving key", source })?;
    let mut roots = RootCertStore::empty();
    for ca in certs("client CA", &m.client_ca_pem)? {
        roots.add(ca).map_err(Error::TlsConfig)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::ClientVerifier(e.to_string()))?;
    // A node whose clock is behind still accepts the kubeconfig it just issued.
    let verifier = shoal_gossip::transport::skew_tolerant_client_verifier(verifier);
    let verifier = shoal_gossip::transport::refusing_revoked(verifier, revoked.clone());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::TlsConfig)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(Error::TlsConfig)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    shoal_gossip::transport::resumption(&mut cfg);
    Ok(cfg)
}

/// The connection once its handshake is done, or None when its certificate is refused (on a
/// resumed session the verifier did not run: see `shoal_gossip::transport::check_after_handshake`);
/// a refused connection gets a close_notify, what the client already sent is read and dropped
/// for at most a second (so it reads the close rather than a reset), and it is closed.
pub(crate) async fn admit<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut tls: tokio_rustls::server::TlsStream<S>,
    revoked: &shoal_gossip::Revocations,
    peer: std::net::SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<S>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let conn = tls.get_ref().1;
    let leaf = conn.peer_certificates().and_then(|c| c.first());
    let Err(reason) = shoal_gossip::transport::check_after_handshake(leaf, revoked) else {
        return Some(tls);
    };
    let serial = leaf.and_then(|c| shoal_gossip::revocation::serial_of(c.as_ref())).unwrap_or_default();
    let kind = conn.handshake_kind();
    tracing::warn!(%peer, %serial, %reason, handshake = ?kind, "refusing a client certificate after the handshake");
    let _ = tls.shutdown().await;
    let mut buf = [0u8; 4096];
    let drain = async { while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
    None
}
