//! HTTPS: the certificates of `spec.tls` (Secrets of type kubernetes.io/tls in the Ingress's
//! namespace), chosen by SNI; a self-signed default certificate for any other name. The set is
//! rebuilt with the table, so a changed Secret is served from the next handshake on.
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use serde_json::Value;

use super::matching::normalize_host;
use super::table::Warning;

/// Errors setting HTTPS up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generate the default certificate")]
    Generate(#[source] rcgen::Error),
    #[error("load the default key")]
    Key(#[source] rustls::Error),
    #[error("build the tls configuration")]
    Config(#[source] rustls::Error),
}

/// Certificates by server name.
#[derive(Debug, Default)]
pub(crate) struct Certs {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*` (".example.com").
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl Certs {
    fn get(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = normalize_host(name);
        if let Some(c) = self.exact.get(&name) {
            return Some(c.clone());
        }
        let i = name.find('.')?;
        self.wildcard.get(&name[i..]).cloned()
    }

    pub(crate) fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }
}

/// Picks the certificate for each handshake from the current set.
#[derive(Debug)]
pub(crate) struct Resolver {
    current: RwLock<Arc<Certs>>,
    default: Arc<CertifiedKey>,
}

impl Resolver {
    pub(crate) fn new() -> Result<Arc<Resolver>, TlsError> {
        Ok(Arc::new(Resolver { current: RwLock::new(Arc::new(Certs::default())), default: self_signed()? }))
    }

    pub(crate) fn set(&self, certs: Certs) {
        let c = Arc::new(certs);
        match self.current.write() {
            Ok(mut g) => *g = c,
            Err(p) => *p.into_inner() = c,
        }
    }

    fn certs(&self) -> Arc<Certs> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The rustls configuration: TLS 1.2/1.3, ALPN h2 and http/1.1.
    pub(crate) fn server_config(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello.server_name().and_then(|n| self.certs().get(n)).or_else(|| Some(self.default.clone()))
    }
}

/// The certificate served for names no Secret covers.
fn self_signed() -> Result<Arc<CertifiedKey>, TlsError> {
    let key = rcgen::KeyPair::generate().map_err(TlsError::Generate)?;
    let params =
        rcgen::CertificateParams::new(vec!["shoal-ingress.invalid".to_string()]).map_err(TlsError::Generate)?;
    let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
    let der =
        PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| TlsError::Key(rustls::Error::General(e.into())))?;
    let signing = any_supported_type(&der).map_err(TlsError::Key)?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)))
}

/// A certificate and key from a Secret of type kubernetes.io/tls.
fn from_secret(secret: &Value) -> Result<Arc<CertifiedKey>, String> {
    let field = |k: &str| -> Result<Vec<u8>, String> {
        let b64 = secret["data"][k].as_str().ok_or_else(|| format!("has no {k}"))?;
        base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| format!("{k} is not base64"))
    };
    let crt = field("tls.crt")?;
    let key = field("tls.key")?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&crt).collect::<Result<_, _>>().map_err(|_| "tls.crt is not PEM".to_string())?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|_| "tls.key is not a PEM private key".to_string())?;
    let signing = any_supported_type(&key).map_err(|e| format!("tls.key cannot be used: {e}"))?;
    let ck = CertifiedKey::new(chain, signing);
    if ck.keys_match().is_err() {
        return Err("tls.key does not belong to tls.crt".into());
    }
    Ok(Arc::new(ck))
}

/// The certificates of the served Ingresses' `spec.tls`; the oldest Ingress wins a host.
pub(crate) fn certificates(served: &[&Value], secrets: &[Value]) -> (Certs, Vec<Warning>) {
    let mut certs = Certs::default();
    let mut warnings = Vec::new();
    let by_key: HashMap<(&str, &str), &Value> = secrets
        .iter()
        .map(|s| ((s["metadata"]["namespace"].as_str().unwrap_or(""), s["metadata"]["name"].as_str().unwrap_or("")), s))
        .collect();
    let mut loaded: HashMap<(String, String), Option<Arc<CertifiedKey>>> = HashMap::new();
    for ing in served {
        let ns = ing["metadata"]["namespace"].as_str().unwrap_or("");
        let name = ing["metadata"]["name"].as_str().unwrap_or("");
        let mut warn = |reason: &str, message: String| {
            warnings.push(Warning { namespace: ns.into(), name: name.into(), reason: reason.into(), message })
        };
        for t in ing["spec"]["tls"].as_array().into_iter().flatten() {
            let Some(secret) = t["secretName"].as_str() else { continue };
            let ck = loaded
                .entry((ns.to_string(), secret.to_string()))
                .or_insert_with(|| match by_key.get(&(ns, secret)) {
                    None => {
                        warn(
                            "MissingSecret",
                            format!("tls secret {ns}/{secret} does not exist; the default certificate is served"),
                        );
                        None
                    }
                    Some(s) => match from_secret(s) {
                        Ok(c) => Some(c),
                        Err(why) => {
                            warn(
                                "InvalidSecret",
                                format!("tls secret {ns}/{secret} {why}; the default certificate is served"),
                            );
                            None
                        }
                    },
                })
                .clone();
            let Some(ck) = ck else { continue };
            for h in t["hosts"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                let h = h.to_ascii_lowercase();
                match h.strip_prefix('*') {
                    Some(suffix) => certs.wildcard.entry(suffix.to_string()).or_insert_with(|| ck.clone()),
                    None => certs.exact.entry(h).or_insert_with(|| ck.clone()),
                };
            }
        }
    }
    (certs, warnings)
}
