//! rustls and quinn configurations: TLS 1.3 only, ring only.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::{Error, Result};
use crate::pki::{load_certs, load_private_key, root_store, JoinToken, NodeTls};

pub(crate) const PEER_ALPN: &[u8] = b"shoal/1";
pub(crate) const JOIN_ALPN: &[u8] = b"shoal-join/1";

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn quic_transport_config(
    idle_timeout: Duration,
    keep_alive: Duration,
) -> Result<Arc<quinn::TransportConfig>> {
    let mut cfg = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(idle_timeout).map_err(Error::IdleTimeout)?;
    cfg.max_idle_timeout(Some(idle));
    cfg.keep_alive_interval(Some(keep_alive));
    Ok(Arc::new(cfg))
}

/// Server side: presents the node certificate (with the CA, so joiners can pin it), asks every
/// client for a certificate from the cluster CA but lets certificate-less clients finish the
/// handshake; the transport then closes any peer connection that has none.
pub(crate) fn server_config(tls: &NodeTls, transport: Arc<quinn::TransportConfig>) -> Result<quinn::ServerConfig> {
    let provider = provider();
    let roots = root_store(&tls.ca_cert_pem)?;
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(Error::BuildVerifier)?;
    let mut chain = load_certs(&tls.cert_pem, "node certificate")?;
    chain.extend(load_certs(&tls.ca_cert_pem, "CA certificate")?);
    let key = load_private_key(&tls.key_pem)?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(Error::BuildTls)?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain, key)
        .map_err(Error::BuildTls)?;
    server.alpn_protocols = vec![PEER_ALPN.to_vec(), JOIN_ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(Error::BuildQuic)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// Client side for peers: verifies the server's chain against the cluster CA and presents the
/// node certificate.
pub(crate) fn peer_client_config(tls: &NodeTls, transport: Arc<quinn::TransportConfig>) -> Result<quinn::ClientConfig> {
    let provider = provider();
    let roots = root_store(&tls.ca_cert_pem)?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(Error::BuildVerifier)?;
    let chain = load_certs(&tls.cert_pem, "node certificate")?;
    let key = load_private_key(&tls.key_pem)?;
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(Error::BuildTls)?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .map_err(Error::BuildTls)?;
    client.alpn_protocols = vec![PEER_ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(Error::BuildQuic)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// Client side for joining: no client certificate; the server's chain must contain a CA whose
/// hash the token names (trust on first use), and the server certificate must chain to it.
pub(crate) fn join_client_config(
    token: &JoinToken,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier { token: token.clone(), provider: provider.clone() });
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(Error::BuildTls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    client.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(Error::BuildQuic)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

#[derive(Debug)]
struct PinnedCaVerifier {
    token: JoinToken,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|cert| self.token.matches_ca(cert.as_ref()))
            .ok_or(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(format!("build verifier for pinned CA: {e}")))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
