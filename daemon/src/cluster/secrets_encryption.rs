//! Secrets encrypted at rest (`shoal secrets-encrypt status|rotate`).
//!
//! The store seals every Secret with a data key; the data keys live in the store wrapped with
//! the key-encryption key (KEK) of the cluster secrets (`secrets.json`, 0600 in every node's
//! data dir, handed to joining nodes with the rest of the cluster secrets). A cluster whose
//! `secrets.json` predates the key derives it from its `token_secret`, which every node of
//! such a cluster holds.
use serde_json::{json, Value};
use shoal_gossip::pki::ClusterSecrets;
use shoal_store::Store;

/// Store prefixes whose values are sealed: every Secret (`/core/secrets/NS/NAME`).
pub(crate) const PREFIXES: &[&str] = &["/core/secrets/"];

/// Where the KEK comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KekSource {
    /// `secrets_encryption_key` of `secrets.json`.
    ClusterSecrets,
    /// Derived from `token_secret` (a data dir from before the dedicated key).
    DerivedFromTokenSecret,
}

impl KekSource {
    fn describe(self) -> &'static str {
        match self {
            KekSource::ClusterSecrets => "secrets_encryption_key of secrets.json",
            KekSource::DerivedFromTokenSecret => {
                "derived from token_secret of secrets.json (cluster created before encryption at rest)"
            }
        }
    }
}

/// The KEK of these cluster secrets.
pub(crate) fn kek(secrets: &ClusterSecrets) -> Result<([u8; 32], KekSource), String> {
    match &secrets.secrets_encryption_key {
        Some(hex_key) => {
            let bytes =
                hex::decode(hex_key.as_bytes()).map_err(|e| format!("secrets_encryption_key of secrets.json: {e}"))?;
            let key: [u8; 32] = bytes
                .try_into()
                .map_err(|_| "secrets_encryption_key of secrets.json must be 64 hex characters".to_string())?;
            Ok((key, KekSource::ClusterSecrets))
        }
        None => Ok((
            shoal_store::derive_key(secrets.token_secret.as_bytes(), "shoal secrets-encryption kek v1"),
            KekSource::DerivedFromTokenSecret,
        )),
    }
}

/// The KEK of the cluster secrets in `path` (a `secrets.json`), for `shoal restore`.
pub(crate) fn kek_from_file(path: &std::path::Path) -> Result<[u8; 32], String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let secrets: ClusterSecrets =
        serde_json::from_str(&text).map_err(|e| format!("{} is not a shoal secrets.json: {e}", path.display()))?;
    kek(&secrets).map(|(k, _)| k)
}

/// Turns the sealing of Secrets on for this node's store.
pub(crate) fn enable(store: &Store, secrets: &ClusterSecrets) -> Result<KekSource, String> {
    let (key, source) = kek(secrets)?;
    store
        .enable_secrets_encryption(&key, PREFIXES.iter().map(|p| p.to_string()).collect())
        .map_err(|e| e.to_string())?;
    Ok(source)
}

/// `shoal secrets-encrypt status`.
pub(crate) async fn status(store: &Store, secrets: &ClusterSecrets) -> Result<Value, String> {
    let st = store.secrets_encryption_status().await.map_err(|e| e.to_string())?;
    let source = kek(secrets).map(|(_, s)| s.describe()).unwrap_or("unreadable");
    Ok(json!({
        "enabled": st.enabled,
        "key_encryption_key": source,
        "primary_key": st.primary,
        "keys": st.keys.iter().map(|(id, created)| json!({"id": id, "created": created})).collect::<Vec<_>>(),
        "secrets": st.objects,
        "plaintext": st.plaintext,
        "by_key": st.by_key.iter().map(|(id, n)| (id.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
    }))
}

/// `shoal secrets-encrypt rotate`: a new data key, every Secret sealed again with it.
pub(crate) async fn rotate(store: &Store) -> Result<Value, String> {
    // Every Secret written anywhere before the rotation is seen by its passes.
    store.sync().await.map_err(|e| e.to_string())?;
    let out = store.rotate_secrets_key().await.map_err(|e| e.to_string())?;
    Ok(json!({
        "key": out.key,
        "resealed": out.resealed,
        "were_plaintext": out.were_plaintext,
        "retired": out.retired,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_where_secrets_are_stored() {
        let r = shoal_kube::resources::lookup("", "secrets");
        assert_eq!(r.prefix(None), PREFIXES[0]);
    }

    #[test]
    fn new_clusters_get_their_own_key_old_ones_derive_one() {
        let mut s = ClusterSecrets::generate("t").unwrap();
        let (k1, src) = kek(&s).unwrap();
        assert_eq!(src, KekSource::ClusterSecrets);
        s.secrets_encryption_key = None;
        let (k2, src) = kek(&s).unwrap();
        assert_eq!(src, KekSource::DerivedFromTokenSecret);
        assert_ne!(k1, k2);
        s.secrets_encryption_key = Some("abcd".into());
        assert!(kek(&s).is_err());
    }
}
