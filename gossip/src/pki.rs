//! The cluster CA, node and client certificates, and join tokens.
//!
//! Every certificate is ECDSA P-256, signed by one cluster CA that every node holds (peers are
//! symmetric: any node can admit a new one). Certificates and keys travel as PEM strings.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// DNS name present in every node certificate; peers connect with it as the TLS server name,
/// since node names need not resolve.
pub const PEER_SERVER_NAME: &str = "shoal-peer";

/// Organization of every node certificate.
pub const NODES_ORG: &str = "system:nodes";
/// Common-name prefix of node certificates: `system:node:NAME`, as the kubelet's.
pub const NODE_CN_PREFIX: &str = "system:node:";

/// Prefix and version of join tokens.
pub const TOKEN_PREFIX: &str = "shoal1";

const CA_VALIDITY_DAYS: i64 = 100 * 365;
const NODE_VALIDITY_DAYS: i64 = 10 * 365;
const CLIENT_VALIDITY_DAYS: i64 = 10 * 365;
/// Certificates start being valid an hour in the past, against small clock skews between nodes.
const BACKDATE_HOURS: i64 = 1;
const TOKEN_HASH_HEX_LEN: usize = 32;
const TOKEN_SECRET_HEX_LEN: usize = 32;

/// What a cluster's nodes share: the CA that signs every certificate and the join secret.
/// The daemon keeps it in its data dir; it never travels over gossip. The CA private key is
/// held only by the nodes that can become leader (voters): on the others `ca_key_pem` is
/// empty and absent from the file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSecrets {
    pub ca_cert_pem: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_key_pem: String,
    /// 32 lowercase hex characters, the last part of the join token.
    pub token_secret: String,
    /// The gossip keys. Absent from data dirs written before gossip keys existed: such a
    /// cluster gossips in plaintext until `shoal gossip-key rotate` gives it a key.
    #[serde(default)]
    pub gossip: crate::seal::GossipKeyring,
    /// The keys that sign ServiceAccount tokens (PKCS#8 PEM, ECDSA P-256), never the CA key:
    /// the first signs, the others only verify until their `retired_until`. Absent from data
    /// dirs written before they existed: such a cluster signs with the CA key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_account_keys: Vec<ServiceAccountKey>,
    /// Bumped by every change of `service_account_keys` (`shoal sa-key rotate|retire`): a node
    /// takes a key set from a peer only when it is newer than its own.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub service_account_keys_epoch: u64,
    /// The key that wraps the data keys of Secrets encrypted at rest (64 hex characters).
    /// Absent from data dirs written before it existed: such a cluster derives one from its
    /// `token_secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_encryption_key: Option<Box<str>>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One ServiceAccount token key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccountKey {
    pub key_pem: String,
    /// Unix seconds after which a retired key verifies nothing; None for the signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_until: Option<i64>,
}

impl ServiceAccountKey {
    /// A new ECDSA P-256 key.
    pub fn generate() -> Result<Self> {
        let key = KeyPair::generate().map_err(Error::GenerateKey)?;
        Ok(ServiceAccountKey { key_pem: key.serialize_pem(), retired_until: None })
    }
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey").field("retired_until", &self.retired_until).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSecrets")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("ca_key_pem", &"<redacted>")
            .field("token_secret", &"<redacted>")
            .field("gossip_keys", &self.gossip.key_ids())
            .field("service_account_keys", &self.service_account_keys)
            .field("service_account_keys_epoch", &self.service_account_keys_epoch)
            .field("secrets_encryption_key", &self.secrets_encryption_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A certificate and its private key, PEM encoded.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

/// What a node needs to speak on the peer transport: the CA to trust and its own certificate.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTls {
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl ClusterSecrets {
    /// Creates a new cluster CA (ECDSA P-256, valid for a century) and a random join secret.
    pub fn generate(cluster_name: &str) -> Result<Self> {
        let key = KeyPair::generate().map_err(Error::GenerateKey)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, format!("shoal-ca@{cluster_name}"));
        params.distinguished_name.push(DnType::OrganizationName, "shoal");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        set_validity(&mut params, CA_VALIDITY_DAYS);
        let cert = params
            .self_signed(&key)
            .map_err(|source| Error::SignCertificate { subject: "cluster CA".to_string(), source })?;
        Ok(Self {
            ca_cert_pem: cert.pem(),
            ca_key_pem: key.serialize_pem(),
            token_secret: random_hex16(),
            gossip: crate::seal::GossipKeyring::generate(),
            service_account_keys: vec![ServiceAccountKey::generate()?],
            service_account_keys_epoch: 0,
            secrets_encryption_key: Some(format!("{}{}", random_hex16(), random_hex16()).into()),
        })
    }

    /// Whether these secrets hold the CA private key (and can sign certificates).
    pub fn has_ca_key(&self) -> bool {
        !self.ca_key_pem.trim().is_empty()
    }

    /// Whether `ca_key_pem` is the private key of `ca_cert_pem`.
    pub fn ca_key_matches(&self) -> bool {
        let Ok(key) = KeyPair::from_pem(&self.ca_key_pem) else { return false };
        let Ok(certs) = load_certs(&self.ca_cert_pem, "CA certificate") else { return false };
        let Some(der) = certs.first() else { return false };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else { return false };
        cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
    }

    /// The same secrets without the CA private key: what a joining node receives.
    pub fn without_ca_key(&self) -> Self {
        Self { ca_key_pem: String::new(), ..self.clone() }
    }

    /// A new random join secret; the old token stops working once the new secrets are in use.
    pub fn rotate_token(&mut self) {
        self.token_secret = random_hex16();
    }

    /// `shoal1.<first 32 hex chars of sha256(CA cert DER)>.<secret>`.
    pub fn join_token(&self) -> Result<String> {
        Ok(format!("{TOKEN_PREFIX}.{}.{}", ca_hash_hex(&self.ca_cert_pem)?, self.token_secret))
    }

    /// Constant-time comparison of a presented secret with ours.
    pub fn verify_token_secret(&self, presented: &str) -> bool {
        constant_time_eq(self.token_secret.as_bytes(), presented.as_bytes())
    }

    /// A node certificate: CN = `system:node:NAME`, O = `system:nodes`; SANs = name (when it is a DNS name), "localhost",
    /// [`PEER_SERVER_NAME`] and every given IP; usable as TLS server and client.
    pub fn issue_node_cert(&self, name: &str, ips: &[IpAddr]) -> Result<IssuedCert> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, format!("{NODE_CN_PREFIX}{name}"));
        params.distinguished_name.push(DnType::OrganizationName, NODES_ORG);
        // Never a CA: a node certificate signs nothing.
        params.is_ca = IsCa::ExplicitNoCa;
        let mut dns_names: Vec<String> = Vec::new();
        if is_dns_name(name) {
            dns_names.push(name.to_ascii_lowercase());
        }
        for fixed in ["localhost", PEER_SERVER_NAME] {
            if !dns_names.iter().any(|n| n == fixed) {
                dns_names.push(fixed.to_string());
            }
        }
        for dns in dns_names {
            let ia5 = dns.clone().try_into().map_err(|source| Error::InvalidCertificateField {
                field: "dns name",
                value: dns,
                source,
            })?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        let mut seen_ips: Vec<IpAddr> = Vec::new();
        for ip in ips.iter().copied().chain([IpAddr::from([127, 0, 0, 1])]) {
            if !seen_ips.contains(&ip) {
                seen_ips.push(ip);
                params.subject_alt_names.push(SanType::IpAddress(ip));
            }
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, name, NODE_VALIDITY_DAYS)
    }

    /// A client certificate (client auth only), e.g. CN=admin O=system:masters for kubectl.
    pub fn issue_client_cert(&self, common_name: &str, organizations: &[&str]) -> Result<IssuedCert> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        for org in organizations {
            params.distinguished_name.push(DnType::OrganizationName, *org);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, common_name, CLIENT_VALIDITY_DAYS)
    }

    /// A client certificate valid for `validity_secs` (from an hour ago, against clock skew);
    /// CN the user, O the groups (at most two: rcgen holds one attribute per type, so the
    /// second goes in under O's OID; callers refuse more).
    pub fn issue_client_cert_valid_for(
        &self,
        common_name: &str,
        organizations: &[&str],
        validity_secs: i64,
    ) -> Result<IssuedCert> {
        let params = client_params(common_name, organizations, validity_secs);
        let issuer = self.issuer()?;
        let key = KeyPair::generate().map_err(Error::GenerateKey)?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|source| Error::SignCertificate { subject: common_name.to_string(), source })?;
        Ok(IssuedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Signs the public key of a PKCS#10 request (PEM, signature verified) as a client
    /// certificate valid for `validity_secs`, CN `common_name` and O `organizations` (what
    /// the caller read from the request with [`parse_certificate_request`] and checked); no
    /// other field of the request reaches the certificate. Returns the certificate PEM.
    pub fn sign_certificate_request(
        &self,
        request_pem: &str,
        common_name: &str,
        organizations: &[&str],
        validity_secs: i64,
    ) -> Result<String> {
        let issuer = self.issuer()?;
        let request = rcgen::CertificateSigningRequestParams::from_pem(request_pem)
            .map_err(|source| Error::CertificateRequest { reason: source.to_string() })?;
        let signed = rcgen::CertificateSigningRequestParams {
            params: client_params(common_name, organizations, validity_secs),
            public_key: request.public_key,
        }
        .signed_by(&issuer)
        .map_err(|source| Error::SignCertificate { subject: common_name.to_string(), source })?;
        Ok(signed.pem())
    }

    /// Issues a node certificate and bundles it with the CA for the transport.
    pub fn node_tls(&self, name: &str, ips: &[IpAddr]) -> Result<NodeTls> {
        let issued = self.issue_node_cert(name, ips)?;
        Ok(NodeTls { ca_cert_pem: self.ca_cert_pem.clone(), cert_pem: issued.cert_pem, key_pem: issued.key_pem })
    }

    /// The CA as an issuer; [`Error::NoCaKey`] on a node that does not hold the key.
    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        if !self.has_ca_key() {
            return Err(Error::NoCaKey);
        }
        let ca_key = KeyPair::from_pem(&self.ca_key_pem).map_err(Error::LoadKey)?;
        Issuer::from_ca_cert_pem(&self.ca_cert_pem, ca_key).map_err(Error::LoadCa)
    }

    fn sign(&self, mut params: CertificateParams, subject: &str, days: i64) -> Result<IssuedCert> {
        let issuer = self.issuer()?;
        let key = KeyPair::generate().map_err(Error::GenerateKey)?;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, days);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|source| Error::SignCertificate { subject: subject.to_string(), source })?;
        Ok(IssuedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// First 32 hex characters of sha256 over the CA certificate's DER.
    pub ca_hash: String,
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken").field("ca_hash", &self.ca_hash).field("secret", &"<redacted>").finish()
    }
}

impl JoinToken {
    pub fn parse(token: &str) -> Result<Self> {
        let mut parts = token.trim().split('.');
        let (Some(prefix), Some(hash), Some(secret), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::InvalidToken { reason: "expected shoal1.<ca hash>.<secret>" });
        };
        if prefix != TOKEN_PREFIX {
            return Err(Error::InvalidToken { reason: "unknown token version (expected shoal1)" });
        }
        if hash.len() != TOKEN_HASH_HEX_LEN || !is_lower_hex(hash) {
            return Err(Error::InvalidToken { reason: "CA hash must be 32 lowercase hex characters" });
        }
        if secret.len() != TOKEN_SECRET_HEX_LEN || !is_lower_hex(secret) {
            return Err(Error::InvalidToken { reason: "secret must be 32 lowercase hex characters" });
        }
        Ok(Self { ca_hash: hash.to_string(), secret: secret.to_string() })
    }

    /// Whether a CA certificate (DER) is the one this token names.
    pub fn matches_ca(&self, ca_der: &[u8]) -> bool {
        let full = hex::encode(Sha256::digest(ca_der));
        constant_time_eq(&full.as_bytes()[..TOKEN_HASH_HEX_LEN], self.ca_hash.as_bytes())
    }
}

/// First 32 hex characters of sha256 over the DER of the first certificate in `ca_cert_pem`.
pub fn ca_hash_hex(ca_cert_pem: &str) -> Result<String> {
    let der = load_certs(ca_cert_pem, "CA certificate")?
        .into_iter()
        .next()
        .ok_or(Error::EmptyPem { what: "CA certificate" })?;
    let full = hex::encode(Sha256::digest(der.as_ref()));
    Ok(full[..TOKEN_HASH_HEX_LEN].to_string())
}

/// Every certificate in a PEM string.
pub fn load_certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|source| Error::ParsePem { what, source })?;
    if certs.is_empty() {
        return Err(Error::EmptyPem { what });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) in a PEM string.
pub fn load_private_key(pem: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => Error::EmptyPem { what: "private key" },
        source => Error::ParsePem { what: "private key", source },
    })
}

/// A root store holding the cluster CA.
pub fn root_store(ca_cert_pem: &str) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca_cert_pem, "CA certificate")? {
        roots.add(cert).map_err(Error::TrustCa)?;
    }
    Ok(Arc::new(roots))
}

/// A rustls server config for TCP listeners (the Kubernetes API): TLS 1.2 and 1.3, the node
/// certificate with the CA chain, client certificates from the CA verified when presented
/// (requests without one reach the server, which decides; see [`common_name`]).
pub fn https_server_config(tls: &NodeTls, alpn: &[&[u8]]) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(root_store(&tls.ca_cert_pem)?, provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(Error::BuildVerifier)?;
    let mut chain = load_certs(&tls.cert_pem, "node certificate")?;
    chain.extend(load_certs(&tls.ca_cert_pem, "CA certificate")?);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::BuildTls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, load_private_key(&tls.key_pem)?)
        .map_err(Error::BuildTls)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A rustls client config trusting only the cluster CA and presenting `cert_pem`/`key_pem`
/// (e.g. the CLI with an admin certificate).
pub fn client_config(ca_cert_pem: &str, cert_pem: &str, key_pem: &str) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::BuildTls)?
        .with_root_certificates(root_store(ca_cert_pem)?)
        .with_client_auth_cert(load_certs(cert_pem, "client certificate")?, load_private_key(key_pem)?)
        .map_err(Error::BuildTls)
}

/// The subject common name of a DER certificate, if it has one.
pub fn common_name(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The node name of a node certificate's common name: `system:node:NAME` (or plain `NAME`,
/// as certificates issued before the prefix have it).
pub fn node_name_of(common_name: &str) -> &str {
    common_name.strip_prefix(NODE_CN_PREFIX).unwrap_or(common_name)
}

/// Whether a DER certificate says it is a CA (basic constraints `cA`); false for garbage.
pub fn is_ca_certificate(cert_der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else { return false };
    cert.basic_constraints().ok().flatten().is_some_and(|b| b.value.ca)
}

/// The subject organizations of a DER certificate.
pub fn organizations(cert_der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return Vec::new();
    };
    cert.subject().iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect()
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn random_hex16() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn random_serial() -> SerialNumber {
    let mut bytes = rand::random::<[u8; 16]>();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// Client-auth certificate parameters: CN, O (a second and later O go in under O's OID: rcgen
/// holds one attribute per type), a random serial, valid from an hour ago for `validity_secs`.
fn client_params(common_name: &str, organizations: &[&str], validity_secs: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    for (i, org) in organizations.iter().enumerate() {
        let ty = if i == 0 { DnType::OrganizationName } else { DnType::CustomDnType(vec![2, 5, 4, 10]) };
        params.distinguished_name.push(ty, *org);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(BACKDATE_HOURS);
    params.not_after = now + time::Duration::seconds(validity_secs);
    params
}

/// The subject of a certificate request, as a signer checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSubject {
    pub common_name: String,
    /// Every O attribute, in order.
    pub organizations: Vec<String>,
}

/// Parses a PEM `CERTIFICATE REQUEST` and verifies its self-signature; the error says what is
/// wrong in words a user can act on.
pub fn parse_certificate_request(pem_text: &str) -> std::result::Result<RequestSubject, String> {
    use x509_parser::prelude::FromDer;
    let block = x509_parser::pem::parse_x509_pem(pem_text.as_bytes())
        .map_err(|_| "PEM block type must be CERTIFICATE REQUEST".to_string())?
        .1;
    if block.label != "CERTIFICATE REQUEST" && block.label != "NEW CERTIFICATE REQUEST" {
        return Err("PEM block type must be CERTIFICATE REQUEST".into());
    }
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&block.contents)
        .map_err(|e| format!("x509: malformed certificate request: {e}"))?;
    csr.verify_signature().map_err(|_| "x509: certificate request signature does not verify".to_string())?;
    let subject = &csr.certification_request_info.subject;
    let common_name = subject.iter_common_name().next().and_then(|c| c.as_str().ok()).unwrap_or_default().to_string();
    let organizations =
        subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect::<Vec<_>>();
    Ok(RequestSubject { common_name, organizations })
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(BACKDATE_HOURS);
    params.not_after = now + time::Duration::days(days);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_and_checks() {
        let secrets = ClusterSecrets::generate("test").unwrap();
        let token = secrets.join_token().unwrap();
        let parsed = JoinToken::parse(&token).unwrap();
        assert!(secrets.verify_token_secret(&parsed.secret));
        let ca_der = load_certs(&secrets.ca_cert_pem, "ca").unwrap().remove(0);
        assert!(parsed.matches_ca(ca_der.as_ref()));
        let other = ClusterSecrets::generate("other").unwrap();
        let other_der = load_certs(&other.ca_cert_pem, "ca").unwrap().remove(0);
        assert!(!parsed.matches_ca(other_der.as_ref()));
        assert!(!secrets.verify_token_secret(&other.token_secret));
        assert!(!secrets.verify_token_secret(""));
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        for bad in [
            "",
            "shoal1",
            "shoal1.abc.def",
            "shoal2.00000000000000000000000000000000.00000000000000000000000000000000",
            "shoal1.0000000000000000000000000000000G.00000000000000000000000000000000",
            "shoal1.00000000000000000000000000000000.00000000000000000000000000000000.x",
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn node_and_client_certs_carry_their_names() {
        let secrets = ClusterSecrets::generate("test").unwrap();
        let node = secrets.issue_node_cert("node-a", &["10.0.0.5".parse().unwrap()]).unwrap();
        let der = load_certs(&node.cert_pem, "node").unwrap().remove(0);
        assert_eq!(common_name(der.as_ref()).as_deref(), Some("system:node:node-a"));
        assert_eq!(node_name_of("system:node:node-a"), "node-a");
        assert_eq!(node_name_of("node-a"), "node-a");
        load_private_key(&node.key_pem).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let san = parsed.subject_alternative_name().unwrap().unwrap().value.general_names.clone();
        let rendered = format!("{san:?}");
        for want in ["node-a", "localhost", PEER_SERVER_NAME] {
            assert!(rendered.contains(want), "{want} missing from {rendered}");
        }

        let client = secrets.issue_client_cert("admin", &["system:masters"]).unwrap();
        let der = load_certs(&client.cert_pem, "client").unwrap().remove(0);
        assert_eq!(common_name(der.as_ref()).as_deref(), Some("admin"));
        assert_eq!(organizations(der.as_ref()), vec!["system:masters".to_string()]);
    }

    #[test]
    fn tls_configs_build_from_issued_certificates() {
        let secrets = ClusterSecrets::generate("test").unwrap();
        let tls = secrets.node_tls("node-a", &[]).unwrap();
        https_server_config(&tls, &[b"h2", b"http/1.1"]).unwrap();
        let admin = secrets.issue_client_cert("admin", &["system:masters"]).unwrap();
        client_config(&secrets.ca_cert_pem, &admin.cert_pem, &admin.key_pem).unwrap();
        let wrong_key = secrets.issue_client_cert("other", &[]).unwrap().key_pem;
        assert!(client_config(&secrets.ca_cert_pem, &admin.cert_pem, &wrong_key).is_err());
    }

    #[test]
    fn only_the_key_holder_signs_and_the_key_is_checked() {
        let secrets = ClusterSecrets::generate("test").unwrap();
        assert!(secrets.has_ca_key() && secrets.ca_key_matches());
        let learner = secrets.without_ca_key();
        assert!(!learner.has_ca_key());
        assert!(matches!(learner.issue_node_cert("n", &[]), Err(Error::NoCaKey)));
        assert!(matches!(learner.issue_client_cert_valid_for("u", &[], 60), Err(Error::NoCaKey)));
        // Saved without the field; read back without it.
        let json = serde_json::to_string(&learner).unwrap();
        assert!(!json.contains("ca_key_pem"), "{json}");
        assert_eq!(serde_json::from_str::<ClusterSecrets>(&json).unwrap(), learner);
        // Another CA's key is not ours.
        let other = ClusterSecrets::generate("other").unwrap();
        let wrong = ClusterSecrets { ca_key_pem: other.ca_key_pem, ..learner.clone() };
        assert!(!wrong.ca_key_matches());
        assert!(!ClusterSecrets { ca_key_pem: "junk".into(), ..learner }.ca_key_matches());
    }

    #[test]
    fn secrets_survive_serde() {
        let secrets = ClusterSecrets::generate("test").unwrap();
        let json = serde_json::to_string(&secrets).unwrap();
        let back: ClusterSecrets = serde_json::from_str(&json).unwrap();
        assert_eq!(back, secrets);
        assert!(!format!("{secrets:?}").contains(&secrets.token_secret));
    }

    #[test]
    fn garbage_pem_is_an_error() {
        assert!(load_certs("not a pem", "x").is_err());
        assert!(load_private_key("-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n").is_err());
        assert!(root_store("").is_err());
    }
}
