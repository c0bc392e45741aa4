//! The ServiceAccount token keys across the cluster: `shoal sa-key status|rotate|retire`.
//!
//! The keys live in every node's cluster secrets (`secrets.json`, 0600; never a ConfigMap nor
//! the replicated store) and travel only over the mutual-TLS peer transport, between holders
//! of a node certificate. Every change bumps the key set's epoch; a node takes a key set only
//! when it is newer than its own, saves it and its API server and agent use it within a
//! second ([`crate::auth::sa_token::TokenKeys::reloading_from`]).
//!
//! `rotate`: a new signing key on every node; the old key keeps verifying the tokens it signed
//! until the longest of them has expired (the maximum token expiration, 48 h by default),
//! after which it verifies nothing. `retire`: the old keys verify nothing from now on.
//! Every 30 s (and at start) a node asks its peers for a newer key set, so a node that was
//! down during a rotation catches up as soon as it is back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use shoal_gossip::pki::{ClusterSecrets, ServiceAccountKey};
use tokio_util::sync::CancellationToken;

use super::gossip_keys::others;
use super::identity::{write_atomic, SECRETS_FILE};
use super::{ca_key, gossip_keys, Node};
use crate::auth::sa_token::{self, Signer};

/// Transport service of key set exchanges between nodes.
pub const SERVICE: &str = "cluster/sa-keys";
const SYNC_EVERY: Duration = Duration::from_secs(30);

/// The ServiceAccount keys of the cluster at one epoch.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeySet {
    pub epoch: u64,
    pub keys: Vec<ServiceAccountKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet").field("epoch", &self.epoch).field("keys", &self.keys).finish()
    }
}

impl KeySet {
    fn of(secrets: &ClusterSecrets) -> KeySet {
        KeySet { epoch: secrets.service_account_keys_epoch, keys: secrets.service_account_keys.clone() }
    }

    /// One signing key and every key a valid ECDSA P-256 key.
    pub fn validate(&self) -> Result<(), String> {
        let active = self.keys.iter().filter(|k| k.retired_until.is_none()).count();
        if active != 1 {
            return Err(format!("a service account key set needs exactly one signing key, not {active}"));
        }
        for k in &self.keys {
            Signer::from_pem(&k.key_pem).map_err(|e| format!("a service account key does not load: {e}"))?;
        }
        Ok(())
    }

    /// What `status` shows of it: key ids, never keys.
    pub fn summary(&self, now: i64) -> serde_json::Value {
        let kid = |k: &ServiceAccountKey| Signer::from_pem(&k.key_pem).map(|s| s.key_id().to_string()).ok();
        let active = self.keys.iter().find(|k| k.retired_until.is_none()).and_then(kid);
        let verifying: Vec<serde_json::Value> = self
            .keys
            .iter()
            .filter_map(|k| Some((k, k.retired_until?)))
            .map(|(k, until)| json!({"kid": kid(k), "until": until, "expired": until < now}))
            .collect();
        json!({"epoch": self.epoch, "signing_key": active, "retired_keys": verifying})
    }
}

/// `rotate` on a key set: a new signing key, the old one verifying until `now` plus the
/// maximum token expiration.
pub(crate) fn rotated(set: &KeySet, now: i64, max_expiration_secs: i64) -> Result<KeySet, String> {
    let mut keys = set.keys.clone();
    sa_token::rotate(&mut keys, now, max_expiration_secs).map_err(|e| e.to_string())?;
    Ok(KeySet { epoch: set.epoch + 1, keys })
}

/// `retire` on a key set: only the signing key is left. Before any rotation (a cluster that
/// signed with its CA key) there is nothing to retire.
pub(crate) fn retired(set: &KeySet) -> KeySet {
    let mut keys = set.keys.clone();
    sa_token::retire(&mut keys);
    KeySet { epoch: set.epoch + 1, keys }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum KeysRequest {
    /// The whole key set, keys included.
    Get,
    /// Take this key set if it is newer.
    Offer(KeySet),
    /// Epoch and key ids only.
    Summary,
}

/// Serves key set exchanges to other nodes (node certificates only).
pub(crate) fn serve(node: &Arc<Node>) {
    super::peers::serve_node_only(node, SERVICE, "service account key request", |node, _peer, body| async move {
        let req: KeysRequest =
            serde_json::from_slice(&body).map_err(|e| format!("bad service account key request: {e}"))?;
        let reply = match req {
            KeysRequest::Get => serde_json::to_value(current(&node)?).map_err(|e| e.to_string())?,
            KeysRequest::Offer(set) => {
                adopt(&node, set).await?;
                summary(&node)?
            }
            KeysRequest::Summary => summary(&node)?,
        };
        Ok(serde_json::to_vec(&reply).unwrap_or_default())
    });
}

/// This node's key set, as saved.
fn current(node: &Node) -> Result<KeySet, String> {
    Ok(KeySet::of(&ca_key::saved_secrets(&node.cfg.data_dir)?))
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn summary(node: &Node) -> Result<serde_json::Value, String> {
    let mut v = current(node)?.summary(now());
    v["name"] = json!(node.identity.name);
    Ok(v)
}

/// Takes `set` if it is newer than this node's: saved (0600), given to joiners, and in use by
/// this node's API server and agent within a second.
pub(crate) async fn adopt(node: &Node, set: KeySet) -> Result<bool, String> {
    // The secrets file is rewritten by gossip key and CA key changes too: one writer at a time.
    let _guard = node.gossip_keys_lock.lock().await;
    let Some(secrets) = save_if_newer(&node.cfg.data_dir, &set)? else { return Ok(false) };
    node.transport.enable_join(secrets, None);
    tracing::info!(epoch = set.epoch, summary = %set.summary(now()), "service account keys changed");
    Ok(true)
}

/// Writes `set` into the secrets file of `data_dir` (0600) when it is valid and newer than the
/// one there; the secrets as saved, or None when the file already held this epoch or a later one.
fn save_if_newer(data_dir: &std::path::Path, set: &KeySet) -> Result<Option<ClusterSecrets>, String> {
    let mut secrets = ca_key::saved_secrets(data_dir)?;
    if set.epoch <= secrets.service_account_keys_epoch {
        return Ok(None);
    }
    set.validate()?;
    secrets.service_account_keys = set.keys.clone();
    secrets.service_account_keys_epoch = set.epoch;
    let data = serde_json::to_string_pretty(&secrets).map_err(|e| e.to_string())?;
    let path = data_dir.join(SECRETS_FILE);
    write_atomic(&path, data.as_bytes(), 0o600).map_err(|e| format!("{e}: {}", path.display()))?;
    Ok(Some(secrets))
}

async fn call(node: &Node, addr: SocketAddr, req: &KeysRequest) -> Result<serde_json::Value, String> {
    gossip_keys::call_service(node, addr, SERVICE, req).await
}

/// Applies `set` here and on every other node; fails naming the nodes that did not take it.
async fn apply_everywhere(node: &Node, set: &KeySet, what: &str) -> Result<(), String> {
    adopt(node, set.clone()).await?;
    let failed = gossip_keys::offer_to_others(node, SERVICE, &KeysRequest::Offer(set.clone()), set.epoch).await;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "service account key {what}: applied here but not yet on {}; such a node takes it from a peer within 30 s \
             once it is reachable (check with `shoal sa-key status`)",
            failed.join(", ")
        ))
    }
}

/// `shoal sa-key rotate`: a new signing key on every node; the old one keeps verifying until
/// the tokens it signed have expired.
pub(crate) async fn rotate(node: &Node) -> Result<serde_json::Value, String> {
    let _one = node.rotation_lock.lock().await;
    let start = current(node)?;
    let max = node.cfg.api.service_account_max_token_expiration.as_secs() as i64;
    let next = rotated(&start, now(), max)?;
    apply_everywhere(node, &next, "rotation").await?;
    let v = next.summary(now());
    tracing::info!(signing_key = %v["signing_key"], epoch = next.epoch, "service account signing key rotated");
    Ok(v)
}

/// `shoal sa-key retire`: the retired keys verify nothing from now on (tokens they signed get 401).
pub(crate) async fn retire(node: &Node) -> Result<serde_json::Value, String> {
    let _one = node.rotation_lock.lock().await;
    let start = current(node)?;
    let gone = start.keys.len() - start.keys.iter().filter(|k| k.retired_until.is_none()).count();
    let next = retired(&start);
    apply_everywhere(node, &next, "retirement").await?;
    tracing::info!(retired = gone, epoch = next.epoch, "old service account keys retired");
    let mut v = next.summary(now());
    v["retired"] = json!(gone);
    Ok(v)
}

/// `shoal sa-key status`: this node's key set and every other node's, by name.
pub(crate) async fn status(node: &Node) -> serde_json::Value {
    let mut nodes = vec![summary(node).unwrap_or_else(|e| json!({"name": node.identity.name, "error": e}))];
    for (name, addr) in others(node).await {
        match call(node, addr, &KeysRequest::Summary).await {
            Ok(v) => nodes.push(v),
            Err(e) => nodes.push(json!({"name": name, "error": e})),
        }
    }
    json!({"nodes": nodes})
}

/// Takes a newer key set from any peer: at start, then every 30 s.
pub(crate) async fn sync_loop(node: Arc<Node>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(mine) = current(&node) else { continue };
        for (name, addr) in others(&node).await {
            let set = match call(&node, addr, &KeysRequest::Get).await {
                Ok(v) => serde_json::from_value::<KeySet>(v),
                Err(e) => {
                    tracing::debug!(peer = %name, error = %e, "service account key sync");
                    continue;
                }
            };
            match set {
                Ok(set) if set.epoch > mine.epoch => {
                    tracing::info!(peer = %name, epoch = set.epoch, "taking newer service account keys from a peer");
                    if let Err(e) = adopt(&node, set).await {
                        tracing::warn!(peer = %name, error = %e, "service account key sync");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(peer = %name, error = %e, "service account key sync: bad key set"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::sa_token::{claims, Binding, TokenKeys};
    use crate::auth::token::{verify, TokenError};
    use std::time::Instant;

    #[test]
    fn rotate_then_retire_keeps_then_drops_the_old_key() {
        let secrets = ClusterSecrets::generate("t").expect("secrets");
        let start = KeySet::of(&secrets);
        assert_eq!(start.epoch, 0);
        let old = TokenKeys::from_secrets(&secrets).expect("keys");
        let b = Binding { namespace: "ns".into(), service_account: "default".into(), ..Binding::default() };
        let tok = old.signer().sign(&claims(&b, &[], 1000, 3600)).expect("sign");

        let next = rotated(&start, 1000, 48 * 3600).expect("rotate");
        next.validate().expect("valid");
        assert_eq!(next.epoch, 1);
        assert_eq!(next.keys.len(), 2);
        let mut s = secrets.clone();
        s.service_account_keys = next.keys.clone();
        let keys = TokenKeys::from_secrets(&s).expect("keys");
        assert!(verify(&tok, &keys, 1100).is_ok());
        let summary = next.summary(1100);
        assert_eq!(summary["retired_keys"][0]["until"], 1000 + 48 * 3600 + 60);
        assert_ne!(summary["signing_key"], start.summary(0)["signing_key"]);

        let after = retired(&next);
        assert_eq!(after.epoch, 2);
        assert_eq!(after.keys.len(), 1);
        s.service_account_keys = after.keys;
        let keys = TokenKeys::from_secrets(&s).expect("keys");
        assert_eq!(verify(&tok, &keys, 1100), Err(TokenError::Signature));
    }

    #[test]
    fn a_node_saves_only_newer_valid_key_sets_and_its_keys_follow_the_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let secrets = ClusterSecrets::generate("t").expect("secrets");
        let path = dir.path().join(SECRETS_FILE);
        write_atomic(&path, serde_json::to_string(&secrets).expect("json").as_bytes(), 0o600).expect("write");
        let keys = TokenKeys::from_secrets(&secrets).expect("keys").reloading_from(path.clone());
        let old_kid = keys.signer().key_id().to_string();

        let next = rotated(&KeySet::of(&secrets), now(), 3600).expect("rotate");
        let saved = save_if_newer(dir.path(), &next).expect("save").expect("newer");
        assert_eq!(saved.service_account_keys_epoch, 1);
        assert_eq!(saved.ca_key_pem, secrets.ca_key_pem, "the rest of the secrets is kept");
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        // The same epoch again, or an older one, changes nothing.
        assert!(save_if_newer(dir.path(), &next).expect("same").is_none());
        assert!(save_if_newer(dir.path(), &KeySet::of(&secrets)).expect("older").is_none());
        // A newer but broken set is refused and the file keeps the good one.
        let broken = KeySet { epoch: 9, keys: Vec::new() };
        assert!(save_if_newer(dir.path(), &broken).is_err());
        assert_eq!(ca_key::saved_secrets(dir.path()).expect("saved").service_account_keys_epoch, 1);

        // The keys in use follow the file within a second.
        let deadline = Instant::now() + Duration::from_secs(10);
        while keys.signer().key_id() == old_kid {
            assert!(Instant::now() < deadline, "the new signing key was not taken from the file");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(Some(keys.signer().key_id()), next.summary(0)["signing_key"].as_str());
    }

    #[test]
    fn bad_key_sets_are_refused() {
        let secrets = ClusterSecrets::generate("t").expect("secrets");
        let mut two = KeySet::of(&secrets);
        two.keys.push(ServiceAccountKey::generate().expect("key"));
        assert!(two.validate().is_err(), "two signing keys");
        assert!(KeySet { epoch: 1, keys: Vec::new() }.validate().is_err(), "no signing key");
        let junk = KeySet { epoch: 1, keys: vec![ServiceAccountKey { key_pem: "junk".into(), retired_until: None }] };
        assert!(junk.validate().is_err());
    }
}
