//! ServiceAccount tokens: ES256 JWTs signed with the cluster CA key, with the claims the
//! Kubernetes API server puts in bound tokens (issuer, `system:serviceaccount:NS:NAME`,
//! audiences, expiry, and the pod and node they are bound to). Every node holds the CA key,
//! so each agent mints the tokens of its own pods; `auth::token::verify` checks them.
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

/// The issuer and default audience of every token, as in-cluster clients expect.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Lifetime of the token of the automatically mounted volume (the kubelet's 1 h + 7 s).
pub const DEFAULT_EXPIRATION_SECS: i64 = 3607;
/// The shortest lifetime a pod may ask for (`expirationSeconds`), as the API server enforces.
pub const MIN_EXPIRATION_SECS: i64 = 600;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the cluster CA key")]
    LoadKey(#[source] rcgen::Error),
    #[error("the cluster CA key is not an ECDSA P-256 key: {0}")]
    KeyType(String),
    #[error("signing a token")]
    Sign,
}

/// Who a token speaks for and what it is bound to.
#[derive(Debug, Clone, Default)]
pub struct Binding {
    pub namespace: String,
    pub service_account: String,
    pub service_account_uid: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub node_name: String,
    pub node_uid: String,
}

/// The JWT claims of a bound ServiceAccount token valid from `now` for `lifetime` seconds.
pub fn claims(b: &Binding, audiences: &[String], now: i64, lifetime: i64) -> Value {
    let lifetime = lifetime.max(MIN_EXPIRATION_SECS);
    let aud: Vec<String> = if audiences.is_empty() { vec![ISSUER.to_string()] } else { audiences.to_vec() };
    json!({
        "aud": aud,
        "exp": now + lifetime,
        "iat": now,
        "nbf": now,
        "iss": ISSUER,
        "jti": uuid::Uuid::new_v4().to_string(),
        "sub": format!("system:serviceaccount:{}:{}", b.namespace, b.service_account),
        "kubernetes.io": {
            "namespace": b.namespace,
            "node": {"name": b.node_name, "uid": b.node_uid},
            "pod": {"name": b.pod_name, "uid": b.pod_uid},
            "serviceaccount": {"name": b.service_account, "uid": b.service_account_uid},
            "warnafter": now + lifetime * 8 / 10,
        },
    })
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// Key id of a public key: the base64url SHA-256 of it, as the API server derives `kid`.
pub fn key_id(public_key: &[u8]) -> String {
    use sha2::Digest;
    b64(&sha2::Sha256::digest(public_key))
}

/// Signs tokens with the cluster CA key.
pub struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
}

impl Signer {
    /// From the PEM of the cluster CA key (`secrets.json`'s `ca_key_pem`).
    pub fn from_pem(ca_key_pem: &str) -> Result<Signer, TokenError> {
        let kp = rcgen::KeyPair::from_pem(ca_key_pem).map_err(TokenError::LoadKey)?;
        if !kp.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256) {
            return Err(TokenError::KeyType(format!("{:?}", kp.algorithm())));
        }
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &kp.serialize_der(), &rng)
            .map_err(|e| TokenError::KeyType(e.to_string()))?;
        let kid = key_id(key.public_key().as_ref());
        Ok(Signer { key, rng, kid })
    }

    /// A compact JWS (`header.payload.signature`) of the claims.
    pub fn sign(&self, claims: &Value) -> Result<String, TokenError> {
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let sig = self.key.sign(&self.rng, input.as_bytes()).map_err(|_| TokenError::Sign)?;
        Ok(format!("{input}.{}", b64(sig.as_ref())))
    }
}

/// The claims of a token, read without checking its signature (to decide whether a token
/// already written is still fresh enough to keep).
pub fn unverified_claims(token: &str) -> Option<Value> {
    let payload = token.trim().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether a token written earlier can stay: same audiences and binding, and less than 80 %
/// of its lifetime gone (the kubelet refreshes at 80 %, or after 24 h).
pub fn still_fresh(token: &str, audiences: &[String], b: &Binding, now: i64) -> bool {
    let Some(c) = unverified_claims(token) else { return false };
    let (Some(iat), Some(exp)) = (c["iat"].as_i64(), c["exp"].as_i64()) else { return false };
    let want: Vec<String> = if audiences.is_empty() { vec![ISSUER.to_string()] } else { audiences.to_vec() };
    let aud: Vec<String> =
        c["aud"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(String::from)).collect();
    let refresh_at = iat + ((exp - iat) * 8 / 10).min(24 * 3600);
    aud == want && c["kubernetes.io"]["pod"]["uid"] == b.pod_uid.as_str() && now < refresh_at && now >= iat
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_upstream_claims_and_stay_until_80_percent() {
        let ca = rcgen::KeyPair::generate().expect("key");
        let signer = Signer::from_pem(&ca.serialize_pem()).expect("signer");
        let b = Binding {
            namespace: "shop".into(),
            service_account: "default".into(),
            pod_name: "web-0".into(),
            pod_uid: "u1".into(),
            node_name: "n1".into(),
            ..Binding::default()
        };
        let tok = signer.sign(&claims(&b, &[], 1000, DEFAULT_EXPIRATION_SECS)).expect("sign");
        assert_eq!(tok.split('.').count(), 3);
        let c = unverified_claims(&tok).expect("claims");
        assert_eq!(c["sub"], "system:serviceaccount:shop:default");
        assert_eq!(c["iss"], ISSUER);
        assert_eq!(c["aud"][0], ISSUER);
        assert_eq!(c["exp"], 1000 + DEFAULT_EXPIRATION_SECS);
        assert_eq!(c["kubernetes.io"]["pod"]["name"], "web-0");
        assert!(still_fresh(&tok, &[], &b, 1000 + 100));
        assert!(!still_fresh(&tok, &[], &b, 1000 + DEFAULT_EXPIRATION_SECS * 9 / 10));
        assert!(!still_fresh(&tok, &["vault".into()], &b, 1001));
        // Too short a lifetime is raised to the minimum.
        let short = claims(&b, &["vault".into()], 0, 10);
        assert_eq!(short["exp"], MIN_EXPIRATION_SECS);
        assert_eq!(short["aud"][0], "vault");
    }
}
