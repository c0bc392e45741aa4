//! The gossip keyring across the cluster: `shoal gossip-key rotate|status`.
//!
//! Keyrings travel only over the mutual-TLS peer transport, between holders of a node
//! certificate. Every change bumps the keyring's epoch; a node takes a keyring only when it is
//! newer than its own, saves it with the cluster secrets (0600) and hands it to joiners.
//! A rotation runs in three steps, each applied on every node before the next starts: the new
//! key is accepted everywhere, then senders switch to it, then the old keys are retired. No
//! node ever sends with a key another node does not accept, so no liveness flaps.
//! Every 30 s (and at start) a node asks its peers for a newer keyring, so a node that was
//! down during a rotation catches up as soon as it is back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use shoal_gossip::seal::GossipKeyring;
use tokio_util::sync::CancellationToken;

use super::identity::{write_atomic, SECRETS_FILE};
use super::{peers, Node};

/// Transport service of keyring exchanges between nodes.
pub const SERVICE: &str = "cluster/gossip-keyring";
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const SYNC_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum KeyringRequest {
    /// The whole keyring, keys included.
    Get,
    /// Take this keyring if it is newer.
    Offer(GossipKeyring),
    /// Key ids and counters only.
    Summary,
}

/// Serves keyring exchanges to other nodes.
pub(crate) fn serve(node: &Arc<Node>) {
    super::peers::serve_node_only(node, SERVICE, "gossip keyring request", |node, _peer, body| async move {
        let req: KeyringRequest =
            serde_json::from_slice(&body).map_err(|e| format!("bad gossip keyring request: {e}"))?;
        let reply = match req {
            KeyringRequest::Get => {
                serde_json::to_value(node.membership.sealer().keyring()).map_err(|e| e.to_string())?
            }
            KeyringRequest::Offer(ring) => {
                adopt(&node, ring).await?;
                summary(&node)
            }
            KeyringRequest::Summary => summary(&node),
        };
        Ok(serde_json::to_vec(&reply).unwrap_or_default())
    });
}

/// Takes `ring` if it is newer than this node's: in use at once, saved, given to joiners.
pub(crate) async fn adopt(node: &Node, ring: GossipKeyring) -> Result<bool, String> {
    let _guard = node.gossip_keys_lock.lock().await;
    let current = node.membership.sealer().keyring();
    if ring.epoch <= current.epoch {
        return Ok(false);
    }
    ring.validate()?;
    // Saved first: a node restarted after it answered must not come back with older keys.
    let path = node.cfg.data_dir.join(SECRETS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut secrets: shoal_gossip::pki::ClusterSecrets =
        serde_json::from_str(&text).map_err(|e| format!("{} is damaged: {e}", path.display()))?;
    secrets.gossip = ring.clone();
    let data = serde_json::to_string_pretty(&secrets).map_err(|e| e.to_string())?;
    write_atomic(&path, data.as_bytes(), 0o600).map_err(|e| format!("{e}: {}", source_of(&e)))?;
    node.membership.sealer().set_keyring(ring.clone())?;
    node.transport.enable_join(secrets, None);
    tracing::info!(epoch = ring.epoch, keys = ?ring.key_ids(), primary = ?ring.primary, "gossip keyring changed");
    Ok(true)
}

fn source_of(e: &dyn std::error::Error) -> String {
    e.source().map(|s| s.to_string()).unwrap_or_default()
}

fn summary(node: &Node) -> serde_json::Value {
    let mut v = super::gossip_status(node);
    v["name"] = json!(node.identity.name);
    v
}

/// Every other node's peer address, by name.
pub(super) async fn others(node: &Node) -> Vec<(String, SocketAddr)> {
    peers::node_records(&node.store)
        .await
        .into_values()
        .filter(|r| r.node_id != node.identity.node_id)
        .filter_map(|r| r.peer_addr.parse().ok().map(|a| (r.name, a)))
        .collect()
}

async fn call(node: &Node, addr: SocketAddr, req: &KeyringRequest) -> Result<serde_json::Value, String> {
    call_service(node, addr, SERVICE, req).await
}

/// One JSON request to a peer's `service`, one JSON reply.
pub(super) async fn call_service(
    node: &Node,
    addr: SocketAddr,
    service: &str,
    req: &impl Serialize,
) -> Result<serde_json::Value, String> {
    let body = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    let reply = node.transport.call_with_timeout(addr, service, body, CALL_TIMEOUT).await.map_err(|e| e.to_string())?;
    serde_json::from_slice(&reply).map_err(|e| format!("bad reply: {e}"))
}

/// Applies `ring` here and on every other node; fails naming the nodes that did not take it.
async fn apply_everywhere(node: &Node, ring: &GossipKeyring, step: &str) -> Result<(), String> {
    adopt(node, ring.clone()).await?;
    let failed = offer_to_others(node, SERVICE, &KeyringRequest::Offer(ring.clone()), ring.epoch).await;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "gossip key rotation stopped at step {step:?}: not applied on {}; every node still accepts the keys in use, \
             so gossip is unaffected: bring the node back (it catches up within 30 s) or remove it, then rotate again",
            failed.join(", ")
        ))
    }
}

/// Offers a key set of `epoch` (`offer`, to `service`) to every other node at once; the nodes
/// that did not take it, each with why ("n2 (at epoch 3)", "n3 (timed out)").
pub(super) async fn offer_to_others(node: &Node, service: &str, offer: &impl Serialize, epoch: u64) -> Vec<String> {
    let others = others(node).await;
    let replies = futures::future::join_all(
        others.iter().map(|(name, addr)| async move { (name, call_service(node, *addr, service, offer).await) }),
    )
    .await;
    replies
        .into_iter()
        .filter_map(|(name, r)| match r {
            Ok(v) if v["epoch"].as_u64() >= Some(epoch) => None,
            Ok(v) => Some(format!("{name} (at epoch {})", v["epoch"])),
            Err(e) => Some(format!("{name} ({e})")),
        })
        .collect()
}

/// `shoal gossip-key rotate`: a new key on every node, senders switched to it, old keys
/// retired. Also the way a cluster created before gossip keys gets its first key.
pub(crate) async fn rotate(node: &Node, settle: Duration) -> Result<serde_json::Value, String> {
    let _one = node.rotation_lock.lock().await;
    let start = node.membership.sealer().keyring();
    let installed = start.with_new_key();
    let new_id = *installed.key_ids().last().ok_or("no key generated")?;
    apply_everywhere(node, &installed, "install").await?;
    // Datagrams already on the wire, and nodes that took the key from a peer's sync, settle.
    tokio::time::sleep(settle).await;
    let switched = installed.with_primary(new_id);
    apply_everywhere(node, &switched, "switch").await?;
    tokio::time::sleep(settle).await;
    let retired = switched.retired();
    apply_everywhere(node, &retired, "retire").await?;
    let old: Vec<u8> = start.key_ids();
    tracing::info!(key = new_id, retired = ?old, "gossip key rotated");
    Ok(json!({"key": new_id, "retired": old, "plaintext_refused": retired.is_sealed(), "epoch": retired.epoch}))
}

/// `shoal gossip-key status`: this node's keyring and every other node's, by name.
pub(crate) async fn status(node: &Node) -> serde_json::Value {
    let mut nodes = vec![summary(node)];
    for (name, addr) in others(node).await {
        match call(node, addr, &KeyringRequest::Summary).await {
            Ok(v) => nodes.push(v),
            Err(e) => nodes.push(json!({"name": name, "error": e})),
        }
    }
    json!({"nodes": nodes})
}

/// Takes a newer keyring from any peer: at start, then every 30 s.
pub(crate) async fn sync_loop(node: Arc<Node>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (name, addr) in others(&node).await {
            let ring = match call(&node, addr, &KeyringRequest::Get).await {
                Ok(v) => serde_json::from_value::<GossipKeyring>(v),
                Err(e) => {
                    tracing::debug!(peer = %name, error = %e, "gossip keyring sync");
                    continue;
                }
            };
            match ring {
                Ok(ring) if ring.epoch > node.membership.sealer().keyring().epoch => {
                    tracing::info!(peer = %name, epoch = ring.epoch, "taking a newer gossip keyring from a peer");
                    if let Err(e) = adopt(&node, ring).await {
                        tracing::warn!(peer = %name, error = %e, "gossip keyring sync");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(peer = %name, error = %e, "gossip keyring sync: bad keyring"),
            }
        }
    }
}
