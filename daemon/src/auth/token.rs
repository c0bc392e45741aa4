//! Bearer-token authentication with ServiceAccount tokens (minted by [`super::sa_token`]): the
//! ES256 JWTs the node agents mint for their pods and TokenRequest hands out. A token is
//! accepted when its signature verifies against one of the cluster's ServiceAccount keys (from
//! the node's own secrets, never from anything the API can write), it is within its validity,
//! its issuer is the cluster's, one of its audiences is the API's, its ServiceAccount still
//! exists with the same uid, and the pod it is bound to (if any) still exists with the same
//! name and uid.
use axum::http::{header, HeaderMap};
use base64::Engine;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use serde_json::Value;
use shoal_kube::Objects;

use super::sa_token::TokenKeys;
use super::UserInfo;

/// Issuer of the cluster's tokens, and the audience the API accepts.
pub const ISSUER: &str = super::sa_token::ISSUER;
/// Clock skew tolerated on `nbf`/`exp`.
const LEEWAY_SECS: i64 = 60;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("not a JWT")]
    Malformed,
    #[error("unsupported token algorithm {0:?}")]
    Algorithm(String),
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
    #[error("token audiences {0:?} are not the API's")]
    Audience(Vec<String>),
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
    /// The ServiceAccount's uid when the token names one.
    pub service_account_uid: Option<String>,
    pub audiences: Vec<String>,
}

fn unb64(s: &str) -> Result<Vec<u8>, TokenError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Malformed)
}

/// Verifies a ServiceAccount token with the cluster's keys at time `now` (seconds since the
/// epoch), for the API's audience. Does not look at the store: [`authenticate`] adds the
/// checks that the ServiceAccount and the bound pod still exist.
pub fn verify(token: &str, keys: &TokenKeys, now: i64) -> Result<TokenUser, TokenError> {
    let mut parts = token.trim().split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    let header: Value = serde_json::from_slice(&unb64(h)?).map_err(|_| TokenError::Malformed)?;
    if header["alg"] != "ES256" {
        return Err(TokenError::Algorithm(header["alg"].as_str().unwrap_or_default().to_string()));
    }
    let signed = format!("{h}.{p}");
    let sig = unb64(s)?;
    let verified = keys.verifying(header["kid"].as_str(), now).into_iter().any(|k| {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &k.public_key).verify(signed.as_bytes(), &sig).is_ok()
    });
    if !verified {
        return Err(TokenError::Signature);
    }
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
    let audiences: Vec<String> = match &c["aud"] {
        Value::String(a) => vec![a.clone()],
        v => v.as_array().into_iter().flatten().filter_map(|a| a.as_str().map(String::from)).collect(),
    };
    if !audiences.iter().any(|a| a == ISSUER) {
        return Err(TokenError::Audience(audiences));
    }
    let sa_uid = c["kubernetes.io"]["serviceaccount"]["uid"].as_str().filter(|u| !u.is_empty());
    Ok(TokenUser {
        username: sub.to_string(),
        namespace: ns.to_string(),
        service_account: name.to_string(),
        pod: pod["name"]
            .as_str()
            .zip(pod["uid"].as_str())
            .filter(|(n, _)| !n.is_empty())
            .map(|(n, u)| (n.to_string(), u.to_string())),
        service_account_uid: sa_uid.map(String::from),
        audiences,
    })
}

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty())
}

/// The identity of a request's ServiceAccount token of this cluster (whose ServiceAccount and
/// bound pod, if any, still exist), or None; also None when this server holds no keys.
pub async fn authenticate(objects: &Objects, keys: Option<&TokenKeys>, headers: &HeaderMap) -> Option<UserInfo> {
    let token = bearer(headers)?;
    let Some(keys) = keys else {
        tracing::debug!("bearer token rejected: this server holds no service account keys");
        return None;
    };
    let user = match verify(token, keys, jiff::Timestamp::now().as_second()) {
        Ok(u) => u,
        Err(e) => {
            tracing::info!(error = %e, "bearer token rejected");
            return None;
        }
    };
    if let Some(uid) = &user.service_account_uid {
        let sas = shoal_kube::resources::lookup("", "serviceaccounts");
        match objects.get(&sas, Some(&user.namespace), &user.service_account).await {
            Ok(Some(sa)) if sa["metadata"]["uid"].as_str() == Some(uid.as_str()) => {}
            _ => {
                tracing::info!(serviceaccount = %user.username, "bearer token of a service account that is gone");
                return None;
            }
        }
    }
    if let Some((name, uid)) = &user.pod {
        let pods = shoal_kube::resources::lookup("", "pods");
        match objects.get(&pods, Some(&user.namespace), name).await {
            Ok(Some(p)) if p["metadata"]["uid"].as_str() == Some(uid.as_str()) => {}
            _ => {
                tracing::info!(pod = %name, "bearer token bound to a pod that is gone");
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
    use crate::auth::sa_token::{claims, rotate, Binding, Signer};
    use shoal_gossip::pki::ClusterSecrets;

    fn binding() -> Binding {
        Binding {
            namespace: "shop".into(),
            service_account: "builder".into(),
            pod_name: "p".into(),
            pod_uid: "u".into(),
            ..Binding::default()
        }
    }

    #[test]
    fn tokens_of_this_cluster_verify_and_others_do_not() {
        let secrets = ClusterSecrets::generate("test").expect("secrets");
        let keys = TokenKeys::from_secrets(&secrets).expect("keys");
        let tok = keys.signer().sign(&claims(&binding(), &[], 10_000, 3600)).expect("sign");
        let user = verify(&tok, &keys, 10_100).expect("valid");
        assert_eq!(user.username, "system:serviceaccount:shop:builder");
        assert_eq!(user.pod, Some(("p".into(), "u".into())));
        assert_eq!(verify(&tok, &keys, 10_000 + 3600 + 3600), Err(TokenError::Expired));
        let other = TokenKeys::from_secrets(&ClusterSecrets::generate("other").expect("other")).expect("keys");
        assert_eq!(verify(&tok, &other, 10_100), Err(TokenError::Signature));
        let mut forged: Vec<&str> = tok.split('.').collect();
        let evil = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"iss":"https://kubernetes.default.svc.cluster.local","sub":"system:serviceaccount:kube-system:admin","exp":99999999999}"#);
        forged[1] = &evil;
        assert_eq!(verify(&forged.join("."), &keys, 10_100), Err(TokenError::Signature));
        assert_eq!(verify("abc", &keys, 0), Err(TokenError::Malformed));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, format!("Bearer {tok}").parse().expect("header"));
        assert_eq!(bearer(&h), Some(tok.as_str()));
    }

    #[test]
    fn the_ca_key_signs_no_tokens_and_other_audiences_are_refused() {
        let secrets = ClusterSecrets::generate("test").expect("secrets");
        let keys = TokenKeys::from_secrets(&secrets).expect("keys");
        // The CA key (whose certificate is published in kube-root-ca.crt) is not a token key.
        let ca_signed = Signer::from_pem(&secrets.ca_key_pem).expect("ca signer");
        let tok = ca_signed.sign(&claims(&binding(), &[], 10_000, 3600)).expect("sign");
        assert_eq!(verify(&tok, &keys, 10_100), Err(TokenError::Signature));
        // A token for another audience (kubectl create token --audience foo) is not for the API.
        let foo = keys.signer().sign(&claims(&binding(), &["foo".into()], 10_000, 3600)).expect("sign");
        assert_eq!(verify(&foo, &keys, 10_100), Err(TokenError::Audience(vec!["foo".into()])));
        let both = keys.signer().sign(&claims(&binding(), &["foo".into(), ISSUER.into()], 10_000, 3600)).expect("sign");
        assert!(verify(&both, &keys, 10_100).is_ok());
        // Another issuer, with our key, is refused too.
        let mut c = claims(&binding(), &[], 10_000, 3600);
        c["iss"] = "https://elsewhere".into();
        let tok = keys.signer().sign(&c).expect("sign");
        assert_eq!(verify(&tok, &keys, 10_100), Err(TokenError::Issuer("https://elsewhere".into())));
    }

    #[test]
    fn a_rotated_key_verifies_until_its_tokens_expired() {
        let mut secrets = ClusterSecrets::generate("test").expect("secrets");
        let old_keys = TokenKeys::from_secrets(&secrets).expect("keys");
        let old = old_keys.signer().sign(&claims(&binding(), &[], 10_000, 3600)).expect("sign");
        rotate(&mut secrets.service_account_keys, 10_000, 48 * 3600).expect("rotate");
        let keys = TokenKeys::from_secrets(&secrets).expect("keys");
        assert_ne!(keys.signer().key_id(), old_keys.signer().key_id());
        assert!(verify(&old, &keys, 10_100).is_ok(), "old tokens keep working");
        let new = keys.signer().sign(&claims(&binding(), &[], 10_000, 3600)).expect("sign");
        assert!(verify(&new, &keys, 10_100).is_ok());
        assert_eq!(verify(&new, &old_keys, 10_100), Err(TokenError::Signature));
        // Past the longest lifetime the old key could have signed, it verifies nothing.
        let long = old_keys.signer().sign(&claims(&binding(), &[], 10_000, 100 * 3600)).expect("sign");
        assert_eq!(verify(&long, &keys, 10_000 + 49 * 3600), Err(TokenError::Signature));
        // A second rotation drops keys past their time.
        rotate(&mut secrets.service_account_keys, 10_000 + 49 * 3600, 48 * 3600).expect("rotate");
        assert_eq!(secrets.service_account_keys.len(), 2);
    }
}
