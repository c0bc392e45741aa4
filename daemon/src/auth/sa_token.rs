//! ServiceAccount tokens: ES256 JWTs signed with the cluster's own ServiceAccount key (kept
//! with the cluster secrets, separate from the CA key), with the claims the Kubernetes API
//! server puts in bound tokens (issuer, `system:serviceaccount:NS:NAME`, audiences, expiry,
//! and the pod and node they are bound to). Every node holds the key, so each agent mints the
//! tokens of its own pods and each API server verifies them ([`TokenKeys`]); a rotated key
//! keeps verifying until the last token it signed has expired.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

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
/// The longest lifetime a token may get unless configured otherwise (48 h, as
/// `--service-account-max-token-expiration` in the distributions users know).
pub const DEFAULT_MAX_EXPIRATION_SECS: i64 = 48 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the cluster CA key")]
    LoadKey(#[source] rcgen::Error),
    #[error("the cluster CA key is not an ECDSA P-256 key: {0}")]
    KeyType(String),
    #[error("signing a token")]
    Sign,
    #[error("generating a service account key")]
    Generate(#[source] shoal_gossip::Error),
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
    let mut k8s = json!({
        "namespace": b.namespace,
        "serviceaccount": {"name": b.service_account, "uid": b.service_account_uid},
    });
    if !b.pod_name.is_empty() {
        k8s["pod"] = json!({"name": b.pod_name, "uid": b.pod_uid});
        k8s["warnafter"] = json!(now + lifetime * 8 / 10);
    }
    if !b.node_name.is_empty() {
        k8s["node"] = json!({"name": b.node_name, "uid": b.node_uid});
    }
    json!({
        "aud": aud,
        "exp": now + lifetime,
        "iat": now,
        "nbf": now,
        "iss": ISSUER,
        "jti": uuid::Uuid::new_v4().to_string(),
        "sub": format!("system:serviceaccount:{}:{}", b.namespace, b.service_account),
        "kubernetes.io": k8s,
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

/// Signs tokens with a ServiceAccount key.
pub struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
}

impl Signer {
    /// From the PEM of an ECDSA P-256 key (a ServiceAccount key of the cluster secrets).
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

    /// The uncompressed public point, what verifiers check signatures with.
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    pub fn key_id(&self) -> &str {
        &self.kid
    }
}

/// A key tokens are verified with.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyKey {
    pub kid: String,
    pub public_key: Vec<u8>,
    /// Unix seconds after which this (retired) key verifies nothing.
    pub until: Option<i64>,
}

/// One generation of the cluster's ServiceAccount keys: the signer of new tokens and every
/// key tokens are still accepted from.
struct KeySet {
    signer: Arc<Signer>,
    verify: Vec<VerifyKey>,
}

impl KeySet {
    fn from_secrets(secrets: &shoal_gossip::pki::ClusterSecrets) -> Result<KeySet, TokenError> {
        let active = secrets.service_account_keys.iter().find(|k| k.retired_until.is_none());
        let signer = Signer::from_pem(active.map_or(secrets.ca_key_pem.as_str(), |k| k.key_pem.as_str()))?;
        let mut verify = vec![VerifyKey { kid: signer.kid.clone(), public_key: signer.public_key(), until: None }];
        for k in secrets.service_account_keys.iter().filter(|k| k.retired_until.is_some()) {
            let s = Signer::from_pem(&k.key_pem)?;
            verify.push(VerifyKey { kid: s.kid.clone(), public_key: s.public_key(), until: k.retired_until });
        }
        Ok(KeySet { signer: Arc::new(signer), verify })
    }
}

/// Where a node's keys are reloaded from when `shoal sa-key rotate|retire` rewrites them.
struct Source {
    path: PathBuf,
    /// When the file was last looked at, and its (mtime, length) then.
    seen: Mutex<(Instant, Option<(SystemTime, u64)>)>,
}

/// How often a node looks whether its secrets file changed (one `stat`).
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// The cluster's ServiceAccount keys as a node holds them: the signer of new tokens and every
/// key tokens are still accepted from. With [`TokenKeys::reloading_from`], a new key set
/// written to the node's secrets file is taken within a second (by the API server and by the
/// agent that mints the pods' tokens alike).
pub struct TokenKeys {
    current: RwLock<Arc<KeySet>>,
    source: Option<Source>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.set();
        f.debug_struct("TokenKeys").field("signer", &set.signer.kid).field("verify", &set.verify).finish()
    }
}

impl TokenKeys {
    /// From the cluster secrets. A cluster created before ServiceAccount keys existed signs and
    /// verifies with its CA key (still the node's own secret, never a ConfigMap).
    pub fn from_secrets(secrets: &shoal_gossip::pki::ClusterSecrets) -> Result<TokenKeys, TokenError> {
        Ok(TokenKeys { current: RwLock::new(Arc::new(KeySet::from_secrets(secrets)?)), source: None })
    }

    /// Keeps these keys current with the secrets file at `path` (the node's `secrets.json`):
    /// when it changes, the keys are read again; a file that does not parse keeps the keys in use.
    pub fn reloading_from(mut self, path: PathBuf) -> TokenKeys {
        let stamp = file_stamp(&path);
        self.source = Some(Source { path, seen: Mutex::new((Instant::now(), stamp)) });
        self
    }

    /// Replaces the keys (after the node took a new key set).
    pub fn replace(&self, secrets: &shoal_gossip::pki::ClusterSecrets) -> Result<(), TokenError> {
        let set = Arc::new(KeySet::from_secrets(secrets)?);
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = set;
        Ok(())
    }

    fn set(&self) -> Arc<KeySet> {
        self.refresh();
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Reads the source file again when it changed; at most one `stat` per [`RELOAD_CHECK`].
    fn refresh(&self) {
        let Some(src) = &self.source else { return };
        let stamp = {
            let mut seen = src.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if seen.0.elapsed() < RELOAD_CHECK {
                return;
            }
            seen.0 = Instant::now();
            let stamp = file_stamp(&src.path);
            if stamp == seen.1 || stamp.is_none() {
                return;
            }
            seen.1 = stamp;
            stamp
        };
        let loaded = std::fs::read_to_string(&src.path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<shoal_gossip::pki::ClusterSecrets>(&t).map_err(|e| e.to_string()))
            .and_then(|s| self.replace(&s).map_err(|e| e.to_string()));
        match loaded {
            Ok(()) => {
                tracing::info!(path = %src.path.display(), signer = %self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).signer.kid, "service account keys reloaded")
            }
            Err(e) => {
                tracing::warn!(path = %src.path.display(), ?stamp, error = %e, "service account keys not reloaded; keeping the keys in use")
            }
        }
    }

    /// The signer of new tokens.
    pub fn signer(&self) -> Arc<Signer> {
        self.set().signer.clone()
    }

    /// The keys that may have signed a token with this `kid` (every key when it has none),
    /// leaving out retired keys past their time.
    pub fn verifying(&self, kid: Option<&str>, now: i64) -> Vec<VerifyKey> {
        self.set()
            .verify
            .iter()
            .filter(|k| k.until.is_none_or(|until| now <= until))
            .filter(|k| kid.is_none_or(|kid| kid == k.kid))
            .cloned()
            .collect()
    }
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Replaces the signing key with a new one. The old key keeps verifying until the longest
/// token it can have signed has expired (`max_expiration_secs` from `now`, plus a minute);
/// retired keys past that are dropped.
pub fn rotate(
    keys: &mut Vec<shoal_gossip::pki::ServiceAccountKey>,
    now: i64,
    max_expiration_secs: i64,
) -> Result<(), TokenError> {
    let until = now + max_expiration_secs.max(DEFAULT_EXPIRATION_SECS) + 60;
    keys.retain(|k| k.retired_until.is_none_or(|u| u >= now));
    for k in keys.iter_mut().filter(|k| k.retired_until.is_none()) {
        k.retired_until = Some(until);
    }
    let new = shoal_gossip::pki::ServiceAccountKey::generate().map_err(TokenError::Generate)?;
    keys.insert(0, new);
    Ok(())
}

/// Retires every key but the signing one: tokens they signed are refused from now on.
pub fn retire(keys: &mut Vec<shoal_gossip::pki::ServiceAccountKey>) {
    keys.retain(|k| k.retired_until.is_none());
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
