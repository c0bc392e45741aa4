//! Bearer-token authentication with ServiceAccount tokens (minted by [`super::sa_token`]): the ES256 JWTs the node agents
//! mint for their pods, signed with the cluster CA key. A token is accepted when its
//! signature verifies against the cluster CA certificate, it is within its validity, its
//! issuer is the cluster's, and the pod it is bound to (if any) still exists with the same uid.
use axum::http::{header, HeaderMap};
use base64::Engine;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use serde_json::Value;
use shoal_kube::Objects;

use super::UserInfo;

/// Issuer of the cluster's tokens.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The ConfigMap that publishes the cluster CA certificate (key `ca.crt`) in kube-system;
/// the node agents write it.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// Clock skew tolerated on `nbf`/`exp`.
const LEEWAY_SECS: i64 = 60;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("not a JWT")]
    Malformed,
    #[error("unsupported token algorithm {0:?}")]
    Algorithm(String),
    #[error("the CA certificate cannot be read")]
    ReadCa,
    #[error("bad token signature")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issuer {0:?} is not this cluster")]
    Issuer(String),
    #[error("token subject {0:?} is not a service account")]
    Subject(String),
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenUser {
    /// `system:serviceaccount:NS:NAME`.
    pub username: String,
    pub namespace: String,
    pub service_account: String,
    /// (name, uid) of the pod the token is bound to.
    pub pod: Option<(String, String)>,
    pub audiences: Vec<String>,
}

fn unb64(s: &str) -> Result<Vec<u8>, TokenError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Malformed)
}

/// Raw public key (uncompressed EC point) of the first certificate of a PEM bundle.
fn ca_public_key(ca_cert_pem: &str) -> Result<Vec<u8>, TokenError> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(ca_cert_pem.as_bytes())
        .next()
        .and_then(|r| r.ok())
        .ok_or(TokenError::ReadCa)?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|_| TokenError::ReadCa)?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// Verifies a ServiceAccount token against the cluster CA certificate at time `now`
/// (seconds since the epoch). Does not look at the store: [`authenticate`] adds the check
/// that the bound pod still exists.
pub fn verify(token: &str, ca_cert_pem: &str, now: i64) -> Result<TokenUser, TokenError> {
    let mut parts = token.trim().split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    let header: Value = serde_json::from_slice(&unb64(h)?).map_err(|_| TokenError::Malformed)?;
    if header["alg"] != "ES256" {
        return Err(TokenError::Algorithm(header["alg"].as_str().unwrap_or_default().to_string()));
    }
    let key = ca_public_key(ca_cert_pem)?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key)
        .verify(format!("{h}.{p}").as_bytes(), &unb64(s)?)
        .map_err(|_| TokenError::Signature)?;
    let c: Value = serde_json::from_slice(&unb64(p)?).map_err(|_| TokenError::Malformed)?;
    if c["iss"] != ISSUER {
        return Err(TokenError::Issuer(c["iss"].as_str().unwrap_or_default().to_string()));
    }
    match c["exp"].as_i64() {
        Some(exp) if now <= exp + LEEWAY_SECS => {}
        _ => return Err(TokenError::Expired),
    }
    if c["nbf"].as_i64().is_some_and(|nbf| now + LEEWAY_SECS < nbf) {
        return Err(TokenError::NotYetValid);
    }
    let sub = c["sub"].as_str().unwrap_or_default();
    let Some((ns, name)) = sub.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':')) else {
        return Err(TokenError::Subject(sub.to_string()));
    };
    let pod = &c["kubernetes.io"]["pod"];
    let audiences = match &c["aud"] {
        Value::String(a) => vec![a.clone()],
        v => v.as_array().into_iter().flatten().filter_map(|a| a.as_str().map(String::from)).collect(),
    };
    Ok(TokenUser {
        username: sub.to_string(),
        namespace: ns.to_string(),
        service_account: name.to_string(),
        pod: pod["name"]
            .as_str()
            .zip(pod["uid"].as_str())
            .filter(|(n, _)| !n.is_empty())
            .map(|(n, u)| (n.to_string(), u.to_string())),
        audiences,
    })
}

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty())
}

/// The identity of a request's ServiceAccount token of this cluster (whose bound pod, if
/// any, still exists), or None. The CA certificate is read from kube-system's `kube-root-ca.crt`.
pub async fn authenticate(objects: &Objects, headers: &HeaderMap) -> Option<UserInfo> {
    let token = bearer(headers)?;
    let cms = shoal_kube::resources::lookup("", "configmaps");
    let Ok(Some(cm)) = objects.get(&cms, Some("kube-system"), ROOT_CA_CONFIGMAP).await else { return None };
    let ca = cm["data"]["ca.crt"].as_str()?;
    let user = match verify(token, ca, jiff::Timestamp::now().as_second()) {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "bearer token rejected");
            return None;
        }
    };
    if let Some((name, uid)) = &user.pod {
        let pods = shoal_kube::resources::lookup("", "pods");
        match objects.get(&pods, Some(&user.namespace), name).await {
            Ok(Some(p)) if p["metadata"]["uid"].as_str() == Some(uid.as_str()) => {}
            _ => {
                tracing::debug!(pod = %name, "bearer token bound to a pod that is gone");
                return None;
            }
        }
    }
    let mut info = UserInfo::service_account(&user.namespace, &user.service_account);
    if let Some((name, uid)) = &user.pod {
        info.extra.insert("authentication.kubernetes.io/pod-name".into(), vec![name.clone()]);
        info.extra.insert("authentication.kubernetes.io/pod-uid".into(), vec![uid.clone()]);
    }
    Some(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::sa_token::{claims, Binding, Signer};

    fn ca() -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn tokens_of_this_cluster_verify_and_others_do_not() {
        let (cert, key) = ca();
        let signer = Signer::from_pem(&key).expect("signer");
        let b = Binding {
            namespace: "shop".into(),
            service_account: "builder".into(),
            pod_name: "p".into(),
            pod_uid: "u".into(),
            ..Binding::default()
        };
        let tok = signer.sign(&claims(&b, &[], 10_000, 3600)).expect("sign");
        let user = verify(&tok, &cert, 10_100).expect("valid");
        assert_eq!(user.username, "system:serviceaccount:shop:builder");
        assert_eq!(user.pod, Some(("p".into(), "u".into())));
        assert_eq!(verify(&tok, &cert, 10_000 + 3600 + 3600), Err(TokenError::Expired));
        let (other_cert, _) = ca();
        assert_eq!(verify(&tok, &other_cert, 10_100), Err(TokenError::Signature));
        let mut forged: Vec<&str> = tok.split('.').collect();
        let evil = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"iss":"https://kubernetes.default.svc.cluster.local","sub":"system:serviceaccount:kube-system:admin","exp":99999999999}"#);
        forged[1] = &evil;
        assert_eq!(verify(&forged.join("."), &cert, 10_100), Err(TokenError::Signature));
        assert_eq!(verify("abc", &cert, 0), Err(TokenError::Malformed));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, format!("Bearer {tok}").parse().expect("header"));
        assert_eq!(bearer(&h), Some(tok.as_str()));
    }
}
