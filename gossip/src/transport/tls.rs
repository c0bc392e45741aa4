//! rustls and quinn configurations: TLS 1.3 only, ring only.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::error::{Error, Result};
use crate::pki::{load_certs, load_private_key, root_store, JoinToken, NodeTls};
use crate::revocation::Revocations;

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
/// handshake; the transport then closes any peer connection that has none. A revoked
/// certificate fails the handshake.
pub(crate) fn server_config(
    tls: &NodeTls,
    transport: Arc<quinn::TransportConfig>,
    revoked: &Revocations,
) -> Result<quinn::ServerConfig> {
    let provider = provider();
    let roots = root_store(&tls.ca_cert_pem)?;
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(Error::BuildVerifier)?;
    let client_verifier = refusing_revoked(skew_tolerant_client_verifier(client_verifier), revoked.clone());
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
    resumption(&mut server);
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(server).map_err(Error::BuildQuic)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// Client side for peers: verifies the server's chain against the cluster CA and presents the
/// node certificate. A server presenting a revoked certificate (a removed node) is refused.
pub(crate) fn peer_client_config(
    tls: &NodeTls,
    transport: Arc<quinn::TransportConfig>,
    revoked: &Revocations,
) -> Result<quinn::ClientConfig> {
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
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SkewTolerantServer(verifier, revoked.clone())))
        .with_client_auth_cert(chain, key)
        .map_err(Error::BuildTls)?;
    client.alpn_protocols = vec![PEER_ALPN.to_vec()];
    // A resumed session skips the server's certificate check: the transport checks the
    // server's certificate after every handshake (`check_after_handshake`). No 0-RTT.
    client.enable_early_data = false;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(client).map_err(Error::BuildQuic)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// Why a connection is refused after its handshake (see [`check_after_handshake`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterHandshake {
    /// The peer's certificate is on the revocation list.
    Revoked,
    /// The session was resumed and the certificate it was made with has expired since.
    Expired,
}

impl std::fmt::Display for AfterHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AfterHandshake::Revoked => "certificate revoked",
            AfterHandshake::Expired => "certificate expired since the session began",
        })
    }
}

/// The check every connection passes once its handshake is done, before its first request is
/// served: TLS session resumption (tickets or the session cache) skips the certificate
/// verifiers, so a session made before a revocation would otherwise get back in. rustls hands
/// a resumed connection the certificates of the session it resumed, so they are checked here:
/// not revoked and not expired (against the clock, as the verifier does; a full handshake
/// passed both already). `leaf` is the peer's end-entity certificate, None when it presented
/// none.
pub fn check_after_handshake(
    leaf: Option<&CertificateDer<'_>>,
    revoked: &Revocations,
) -> std::result::Result<(), AfterHandshake> {
    let Some(leaf) = leaf else { return Ok(()) };
    if revoked.is_revoked_cert(leaf.as_ref()) {
        return Err(AfterHandshake::Revoked);
    }
    let not_after = x509_parser::parse_x509_certificate(leaf.as_ref())
        .ok()
        .and_then(|(_, c)| u64::try_from(c.validity().not_after.timestamp()).ok());
    // The certificate passed a verifier once: unreadable now means something is wrong, so it
    // is refused as well.
    if not_after.is_none_or(|na| na < UnixTime::now().as_secs()) {
        return Err(AfterHandshake::Expired);
    }
    Ok(())
}

/// TLS session resumption on a server: rustls's in-memory session cache (TLS 1.3 tickets
/// name its entries; nothing secret leaves the node), and no 0-RTT data, which would be read
/// before [`check_after_handshake`] runs. The Kubernetes API uses it as well.
pub fn resumption(server: &mut rustls::ServerConfig) {
    server.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    server.send_tls13_tickets = 2;
    server.max_early_data_size = 0;
}

/// Sessions a server keeps for resumption (a few hundred bytes each).
const SESSION_CACHE_ENTRIES: usize = 1024;

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
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, check_time(end_entity, now))
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

/// The time a peer's certificate is checked against: the clock, or the certificate's own
/// notBefore when the clock is behind it. Boards without a battery-backed clock boot in the
/// past until NTP steps them, and a clock stepped back must not cut a node off its cluster;
/// expiry (notAfter) is still checked against the clock. Every certificate comes from the
/// cluster's own CA, so an early notBefore proves nothing an attacker could use.
pub(crate) fn check_time(end_entity: &CertificateDer<'_>, now: UnixTime) -> UnixTime {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(end_entity.as_ref()) else {
        return now;
    };
    match u64::try_from(cert.validity().not_before.timestamp()) {
        Ok(nb) if nb > now.as_secs() => UnixTime::since_unix_epoch(Duration::from_secs(nb)),
        _ => now,
    }
}

/// The signature checks of a verifier that wraps another (`self.0`) and only adjusts the time.
macro_rules! delegate_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    };
}

/// What a client-certificate verifier that wraps another (`self.0`) asks of clients.
macro_rules! delegate_client_auth {
    () => {
        fn offer_client_auth(&self) -> bool {
            self.0.offer_client_auth()
        }

        fn client_auth_mandatory(&self) -> bool {
            self.0.client_auth_mandatory()
        }

        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            self.0.root_hint_subjects()
        }
    };
}

/// Wraps a client-certificate verifier so that a clock behind a certificate's notBefore does
/// not refuse it (see [`check_time`]). The Kubernetes API uses it as well.
pub fn skew_tolerant_client_verifier(inner: Arc<dyn ClientCertVerifier>) -> Arc<dyn ClientCertVerifier> {
    Arc::new(SkewTolerantClient(inner))
}

#[derive(Debug)]
struct SkewTolerantClient(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for SkewTolerantClient {
    delegate_client_auth!();

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.0.verify_client_cert(end_entity, intermediates, check_time(end_entity, now))
    }

    delegate_signatures!();
}

/// Wraps a client-certificate verifier so that a certificate whose serial is in `revoked`
/// fails the handshake (after the chain checks, so garbage is refused as before). The
/// Kubernetes API uses it as well.
pub fn refusing_revoked(inner: Arc<dyn ClientCertVerifier>, revoked: Revocations) -> Arc<dyn ClientCertVerifier> {
    Arc::new(RevocationCheckingClient(inner, revoked))
}

#[derive(Debug)]
struct RevocationCheckingClient(Arc<dyn ClientCertVerifier>, Revocations);

impl ClientCertVerifier for RevocationCheckingClient {
    delegate_client_auth!();

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let verified = self.0.verify_client_cert(end_entity, intermediates, now)?;
        if self.1.is_revoked_cert(end_entity.as_ref()) {
            tracing::warn!(
                serial = %crate::revocation::serial_of(end_entity.as_ref()).unwrap_or_default(),
                subject = %crate::pki::common_name(end_entity.as_ref()).unwrap_or_default(),
                "refusing a revoked client certificate"
            );
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    delegate_signatures!();
}

#[derive(Debug)]
struct SkewTolerantServer(Arc<rustls::client::WebPkiServerVerifier>, Revocations);

impl ServerCertVerifier for SkewTolerantServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let verified = self.0.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            check_time(end_entity, now),
        )?;
        if self.1.is_revoked_cert(end_entity.as_ref()) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    delegate_signatures!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_from(not_before: time::OffsetDateTime) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["n1".to_string()]).unwrap();
        params.not_before = not_before;
        params.not_after = not_before + time::Duration::days(30);
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn a_clock_behind_the_certificate_is_moved_up_to_its_not_before() {
        let now = time::OffsetDateTime::now_utc();
        let future = cert_from(now + time::Duration::days(3));
        let checked = check_time(&future, UnixTime::now());
        let nb = u64::try_from((now + time::Duration::days(3)).unix_timestamp()).unwrap();
        assert_eq!(checked.as_secs(), nb);
    }

    #[test]
    fn a_clock_past_not_before_is_kept_and_garbage_changes_nothing() {
        let now = time::OffsetDateTime::now_utc();
        let past = cert_from(now - time::Duration::hours(1));
        let t = UnixTime::now();
        assert_eq!(check_time(&past, t), t);
        assert_eq!(check_time(&CertificateDer::from(vec![0x30, 0x03, 0x01, 0x02]), t), t);
    }
}

#[cfg(test)]
mod revocation_tests {
    use super::*;
    use crate::pki::ClusterSecrets;

    #[test]
    fn a_revoked_client_certificate_fails_verification() {
        let secrets = ClusterSecrets::generate("test").unwrap();
        let alice = secrets.issue_client_cert_valid_for("alice", &["dev"], 3600).unwrap();
        let bob = secrets.issue_client_cert_valid_for("bob", &[], 3600).unwrap();
        let alice = load_certs(&alice.cert_pem, "alice").unwrap().remove(0);
        let bob = load_certs(&bob.cert_pem, "bob").unwrap().remove(0);
        let webpki = WebPkiClientVerifier::builder_with_provider(root_store(&secrets.ca_cert_pem).unwrap(), provider())
            .allow_unauthenticated()
            .build()
            .unwrap();
        let revoked = Revocations::default();
        let v = refusing_revoked(skew_tolerant_client_verifier(webpki), revoked.clone());
        let now = UnixTime::now();
        assert!(v.verify_client_cert(&alice, &[], now).is_ok());
        revoked.insert(&crate::revocation::serial_of(alice.as_ref()).unwrap());
        assert_eq!(
            v.verify_client_cert(&alice, &[], now).unwrap_err(),
            rustls::Error::InvalidCertificate(CertificateError::Revoked)
        );
        assert!(v.verify_client_cert(&bob, &[], now).is_ok(), "only the revoked serial is refused");
        // A certificate from another CA is still refused for what it is, revoked or not.
        let other = ClusterSecrets::generate("other").unwrap().issue_client_cert("alice", &[]).unwrap();
        let other = load_certs(&other.cert_pem, "other").unwrap().remove(0);
        revoked.insert(&crate::revocation::serial_of(other.as_ref()).unwrap());
        assert!(matches!(
            v.verify_client_cert(&other, &[], now).unwrap_err(),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ));
        assert!(v.offer_client_auth() && !v.client_auth_mandatory());
    }
}
