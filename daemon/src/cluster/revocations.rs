//! The node's side of certificate revocation: keeps the transport's (and the API's) revoked
//! set current, records this node's own certificate, and serves `shoal kubeconfig revoke`,
//! `shoal kubeconfig list` and `shoal node remove`.
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Node;
use crate::auth::revocation;

/// Until `stop`: the revoked set from the store, and this node's certificate on record (once,
/// when the store takes the write), so `shoal node remove` can revoke it.
pub(crate) async fn run(node: Arc<Node>, stop: CancellationToken) {
    let keep = tokio::spawn(revocation::keep_current(node.store.clone(), node.transport.revocations(), stop.clone()));
    let prune = tokio::spawn(prune_loop(node.clone(), stop.clone()));
    let mut wait = Duration::from_millis(200);
    loop {
        match record_own(&node).await {
            Ok(()) => break,
            Err(e) => tracing::debug!(error = %e, "recording this node's certificate"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(10));
    }
    let _ = keep.await;
    let _ = prune.await;
}

/// How often the leader drops the records of expired certificates.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// On the leader, every [`PRUNE_EVERY`] (the first a minute after start): prunes the records of
/// certificates long expired, so the revoked set stays bounded.
async fn prune_loop(node: Arc<Node>, stop: CancellationToken) {
    let mut wait = Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = PRUNE_EVERY;
        if node.store.status().leader != Some(node.identity.node_id) {
            continue;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        if let Err(e) = revocation::prune_expired(&node.store, now).await {
            tracing::debug!(error = %e, "pruning expired certificate records");
        }
    }
}

async fn record_own(node: &Node) -> Result<(), revocation::RevocationError> {
    let own = revocation::describe(&node.node_cert_pem)?;
    let known = revocation::issued(&node.store).await?.iter().any(|c| c.serial == own.serial);
    if !known {
        revocation::record_issued(&node.store, &node.node_cert_pem).await?;
    }
    Ok(())
}

/// `shoal kubeconfig revoke --user NAME | --serial N [--reason TEXT]`.
pub(crate) async fn revoke(
    node: &Node,
    user: Option<String>,
    serial: Option<String>,
    reason: Option<String>,
) -> Result<serde_json::Value, String> {
    let reason = reason.unwrap_or_else(|| "revoked by an operator".to_string());
    let done = match (user, serial) {
        (Some(user), None) => {
            if user.starts_with("system:node:") {
                return Err("node certificates are revoked with `shoal node remove NAME`".to_string());
            }
            revocation::revoke_subject(&node.store, &user, &reason, None).await.map_err(|e| super::error_chain(&e))?
        }
        (None, Some(serial)) => {
            vec![revocation::revoke_serial(&node.store, &serial, &reason).await.map_err(|e| super::error_chain(&e))?]
        }
        _ => return Err("give exactly one of --user NAME and --serial N".to_string()),
    };
    Ok(json!({"revoked": done}))
}

/// `shoal kubeconfig list`.
pub(crate) async fn list(node: &Node) -> Result<serde_json::Value, String> {
    let issued = revocation::issued(&node.store).await.map_err(|e| super::error_chain(&e))?;
    let revoked = revocation::revoked(&node.store).await.map_err(|e| super::error_chain(&e))?;
    Ok(json!({"issued": issued, "revoked": revoked}))
}

/// The revocation half of `shoal node remove NAME` (see `remove_member`, which has found the
/// member `node_id`): revokes the node's
/// certificates (its QUIC handshakes then fail on every node, and its open connections are
/// closed), and the cluster stops counting it as a healthy member.
pub(crate) async fn remove_node(node: &Node, name: &str, node_id: u64) -> Result<serde_json::Value, String> {
    let subject = format!("system:node:{name}");
    let done = revocation::revoke_subject(&node.store, &subject, "node removed", Some(node_id))
        .await
        .map_err(|e| super::error_chain(&e))?;
    Ok(json!({"node": name, "node_id": node_id, "revoked": done}))
}
