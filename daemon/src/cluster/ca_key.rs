//! Who holds the cluster CA's private key: only the nodes that can become leader (voters).
//!
//! A joining node proves its join token and receives its own certificate (`system:node:NAME`)
//! and the cluster secrets without the CA key. Joins reach any node; a node that is not the
//! leader forwards the request over the mutual-TLS peer link to the leader, which checks the
//! token and signs. A node promoted to voter asks the leader (or another voter) for the CA key
//! over the peer link, and only a node certificate of a current voter gets it. A node that
//! stops being a voter (demoted to learner, or removed) deletes the key from its secrets file
//! and stops signing; promoted again, it fetches the key again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serde::{Deserialize, Serialize};
use shoal_gossip::pki::ClusterSecrets;
use shoal_gossip::transport::join_refusal;
use shoal_store::{Role, Store, StoreStatus};
use tokio_util::sync::CancellationToken;

use super::identity::{write_atomic, SECRETS_FILE};
use super::{peers, Node};

/// Transport service: a join request forwarded to the leader.
const JOIN_SERVICE: &str = "cluster/join";
/// Transport service: a voter asks for the CA key.
const CA_KEY_SERVICE: &str = "cluster/ca-key";
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Checks in a row that must find this node outside the voters before it deletes its CA key
/// (a membership change seen mid-way is not enough).
const DROP_AFTER_CHECKS: u32 = 3;

#[derive(Debug, Serialize, Deserialize)]
struct ForwardedJoin {
    /// The joiner's request, as it sent it.
    request: Vec<u8>,
    /// The joiner's address, for the leader's logs.
    remote: SocketAddr,
}

#[derive(Debug, Serialize, Deserialize)]
struct CaKeyReply {
    ca_key_pem: String,
}

/// The peer address of the current leader, unless it is this node.
fn leader_addr(store: &Store, me: u64) -> Result<Option<SocketAddr>, String> {
    let st = store.status();
    let leader = st.leader.ok_or("no cluster leader right now; retry")?;
    if leader == me {
        return Ok(None);
    }
    st.members
        .iter()
        .find(|m| m.node_id == leader)
        .and_then(|m| m.addr.parse().ok())
        .map(Some)
        .ok_or_else(|| "the cluster leader has no known address; retry".to_string())
}

/// Reads the cluster secrets as saved in the data dir (the CA key may have come after start).
pub(crate) fn saved_secrets(dir: &std::path::Path) -> Result<ClusterSecrets, String> {
    let path = dir.join(SECRETS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is damaged: {e}", path.display()))
}

/// The secrets with the CA key, on a node that holds it; a clear error elsewhere. The saved
/// file is the authority: a node that stopped being a voter deleted the key from it.
pub(crate) fn signing_secrets(node: &Node) -> Result<ClusterSecrets, String> {
    let saved = saved_secrets(&node.cfg.data_dir)?;
    if saved.has_ca_key() {
        return Ok(saved);
    }
    Err(format!(
        "node {} does not hold the cluster CA key (only voters do): run this on a voter (see `shoal status`)",
        node.identity.name
    ))
}

/// Forwards joins to the leader, serves forwarded joins when this node is the leader, and
/// serves the CA key to the node certificates of current voters.
pub(crate) fn serve(node: &Arc<Node>) {
    let weak = Arc::downgrade(node);
    node.transport.set_join_forward(Arc::new(move |request: Vec<u8>, remote: SocketAddr| {
        let weak = weak.clone();
        async move {
            let node = weak.upgrade()?;
            let addr = match leader_addr(&node.store, node.identity.node_id) {
                Ok(None) => return None,
                Ok(Some(addr)) => addr,
                Err(message) => return Some(join_refusal(&message)),
            };
            let body = serde_json::to_vec(&ForwardedJoin { request, remote }).unwrap_or_default();
            match node.transport.call_with_timeout(addr, JOIN_SERVICE, body, FORWARD_TIMEOUT).await {
                Ok(reply) => Some(reply),
                Err(e) => {
                    tracing::warn!(%remote, leader = %addr, error = %e, "forwarding a join to the leader");
                    Some(join_refusal(&format!(
                        "the cluster leader could not be reached to sign the certificate ({e}); retry"
                    )))
                }
            }
        }
        .boxed()
    }));
    super::peers::serve_node_only(node, JOIN_SERVICE, "forwarded join", |node, peer, body| async move {
        if node.store.status().leader != Some(node.identity.node_id) {
            return Err("not the leader".to_string());
        }
        let fwd: ForwardedJoin = serde_json::from_slice(&body).map_err(|e| format!("bad forwarded join: {e}"))?;
        tracing::info!(via = %peer.node_name, joiner = %fwd.remote, "join forwarded by a peer");
        Ok(node.transport.answer_join(&fwd.request, fwd.remote).await)
    });
    serve_ca_key(node);
}

/// Serves the CA key to the node certificates of current voters.
fn serve_ca_key(node: &Arc<Node>) {
    super::peers::serve_node_only(node, CA_KEY_SERVICE, "CA key request", |node, peer, _body| async move {
        let records = peers::node_records(&node.store).await;
        let id = records.values().find(|r| r.name == peer.node_name).map(|r| r.node_id);
        let voter =
            id.is_some_and(|id| node.store.status().members.iter().any(|m| m.node_id == id && m.role == Role::Voter));
        if !voter {
            tracing::warn!(peer = %peer.addr, name = %peer.node_name, "CA key refused: not a voter");
            return Err(format!("node {} is not a voter: only voters hold the CA key", peer.node_name));
        }
        let secrets = signing_secrets(&node)?;
        tracing::info!(node = %peer.node_name, "CA key handed to a voter");
        serde_json::to_vec(&CaKeyReply { ca_key_pem: secrets.ca_key_pem }).map_err(|e| e.to_string())
    });
}

/// Whether this node is a voter now.
fn is_voter(node: &Node) -> bool {
    node.store.status().members.iter().any(|m| m.node_id == node.identity.node_id && m.role == Role::Voter)
}

/// Whether the store says for sure that `me` is not a voter: a leader other than `me` is
/// known, another voter holds the key, and `me` is a learner or not a member at all. An
/// empty or leaderless view (a node starting up) never says so.
fn outside_voters(st: &StoreStatus, me: u64) -> bool {
    st.leader.is_some_and(|l| l != me)
        && st.members.iter().any(|m| m.role == Role::Voter && m.node_id != me)
        && !st.members.iter().any(|m| m.node_id == me && m.role == Role::Voter)
}

/// Deletes the CA key from the secrets file of `data_dir` (rewritten 0600); the secrets as
/// saved, or None when the file held no key.
fn remove_saved_key(data_dir: &std::path::Path) -> Result<Option<ClusterSecrets>, String> {
    let saved = saved_secrets(data_dir)?;
    if !saved.has_ca_key() {
        return Ok(None);
    }
    let without = saved.without_ca_key();
    let data = serde_json::to_string_pretty(&without).map_err(|e| e.to_string())?;
    let path = data_dir.join(SECRETS_FILE);
    write_atomic(&path, data.as_bytes(), 0o600).map_err(|e| format!("{e}: {}", path.display()))?;
    Ok(Some(without))
}

/// On a node that is no longer a voter: the CA key leaves its secrets file, and joins it
/// answers itself are signed by nobody (they go to the leader).
async fn drop_key(node: &Node) -> Result<bool, String> {
    let _guard = node.gossip_keys_lock.lock().await;
    let Some(without) = remove_saved_key(&node.cfg.data_dir)? else { return Ok(false) };
    node.transport.enable_join(without, None);
    Ok(true)
}

/// On a voter without the CA key: fetches it from the leader (or any other voter), checks it
/// is the CA's, saves it with the secrets (0600) and starts signing with it. On a node that
/// is no longer a voter: deletes its copy of the key.
pub(crate) async fn sync_loop(node: Arc<Node>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outside = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if outside_voters(&node.store.status(), node.identity.node_id) {
            outside = outside.saturating_add(1);
            if outside >= DROP_AFTER_CHECKS {
                match drop_key(&node).await {
                    Ok(true) => {
                        tracing::info!("this node is no longer a voter: it deleted its copy of the cluster CA key")
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "deleting the CA key of a node that is no longer a voter"),
                }
            }
            continue;
        }
        outside = 0;
        if !is_voter(&node) || signing_secrets(&node).is_ok() {
            continue;
        }
        match fetch(&node).await {
            Ok(()) => tracing::info!("this node is a voter: it now holds the cluster CA key"),
            Err(e) => tracing::debug!(error = %e, "fetching the CA key"),
        }
    }
}

async fn fetch(node: &Node) -> Result<(), String> {
    let st = node.store.status();
    let mut voters: Vec<(u64, String)> = st
        .members
        .iter()
        .filter(|m| m.role == Role::Voter && m.node_id != node.identity.node_id)
        .map(|m| (m.node_id, m.addr.clone()))
        .collect();
    // The leader first.
    voters.sort_by_key(|(id, _)| Some(*id) != st.leader);
    let mut last = "no other voter".to_string();
    for (_, addr) in voters {
        let Ok(sa) = addr.parse::<SocketAddr>() else { continue };
        let reply = match node.transport.call_with_timeout(sa, CA_KEY_SERVICE, Vec::new(), CALL_TIMEOUT).await {
            Ok(reply) => reply,
            Err(e) => {
                last = format!("{addr}: {e}");
                continue;
            }
        };
        let reply: CaKeyReply = serde_json::from_slice(&reply).map_err(|e| format!("bad CA key reply: {e}"))?;
        return adopt(node, reply.ca_key_pem).await;
    }
    Err(last)
}

async fn adopt(node: &Node, ca_key_pem: String) -> Result<(), String> {
    // The secrets file is rewritten by gossip key changes too: one writer at a time.
    let _guard = node.gossip_keys_lock.lock().await;
    let mut secrets = saved_secrets(&node.cfg.data_dir)?;
    secrets.ca_key_pem = ca_key_pem;
    if !secrets.ca_key_matches() {
        return Err("the key offered is not the cluster CA's".to_string());
    }
    let data = serde_json::to_string_pretty(&secrets).map_err(|e| e.to_string())?;
    let path = node.cfg.data_dir.join(SECRETS_FILE);
    write_atomic(&path, data.as_bytes(), 0o600).map_err(|e| format!("{e}: {}", path.display()))?;
    node.transport.enable_join(secrets, None);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_store::MemberStatus;

    fn status(leader: Option<u64>, members: &[(u64, Role)]) -> StoreStatus {
        StoreStatus {
            node_id: 2,
            leader,
            term: 1,
            applied_index: 1,
            revision: 1,
            members: members
                .iter()
                .map(|(id, role)| MemberStatus { node_id: *id, addr: String::new(), role: *role })
                .collect(),
        }
    }

    #[test]
    fn only_a_settled_view_without_this_node_as_voter_drops_the_key() {
        use Role::{Learner, Voter};
        // Demoted to learner, or removed, while node 1 leads and holds the key.
        assert!(outside_voters(&status(Some(1), &[(1, Voter), (2, Learner), (3, Voter)]), 2));
        assert!(outside_voters(&status(Some(1), &[(1, Voter), (3, Voter)]), 2));
        // Still a voter; no leader known; an empty view at start; the only voter left.
        assert!(!outside_voters(&status(Some(1), &[(1, Voter), (2, Voter)]), 2));
        assert!(!outside_voters(&status(None, &[(1, Voter), (2, Learner)]), 2));
        assert!(!outside_voters(&status(None, &[]), 2));
        assert!(!outside_voters(&status(Some(2), &[(2, Learner)]), 2));
    }

    #[test]
    fn a_demoted_node_deletes_the_ca_key_from_its_secrets_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let secrets = ClusterSecrets::generate("t").expect("secrets");
        let path = dir.path().join(SECRETS_FILE);
        write_atomic(&path, serde_json::to_string(&secrets).expect("json").as_bytes(), 0o600).expect("write");
        let without = remove_saved_key(dir.path()).expect("remove").expect("it held the key");
        assert!(!without.has_ca_key());
        let text = std::fs::read_to_string(&path).expect("read");
        let key_body = secrets.ca_key_pem.lines().nth(1).expect("a PEM body line");
        assert!(!text.contains(key_body) && !text.contains("ca_key_pem"), "the CA key is still in the file");
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        // Everything else is kept: the CA certificate, the join secret, the other keys.
        let saved = saved_secrets(dir.path()).expect("saved");
        assert_eq!(saved, secrets.without_ca_key());
        assert!(remove_saved_key(dir.path()).expect("again").is_none());
    }
}
