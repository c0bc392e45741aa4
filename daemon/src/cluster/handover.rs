//! A witness never keeps the Raft leadership: the leader runs the controllers, the scheduler,
//! the LoadBalancer allocator and the CSR signer, and a witness runs none of them.
//!
//! A witness stands for election only after the workers had their turn (`candidacy_delay_ms`),
//! but it can still win: when it created the cluster, or when the surviving workload voter's
//! log was behind its own (a voter refuses a candidate with a shorter log). Once it has led
//! past its own leader lease, it asks a workload voter that has applied everything it had
//! (same term) to stand for election at once; it votes for that voter, which becomes the
//! leader. Until then nothing leader-only runs: controllers pause for about a second.
//!
//! Only the current leader may ask (a node certificate, named as the leader the asked node
//! knows), and a node only stands when it is a caught-up workload voter of the same term.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_gossip::membership::Member;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Node, ATTR_ROLE};
use crate::config::NodeRole;

/// Transport service: the leader (a witness) asks a workload voter to stand for election.
pub const SERVICE: &str = "cluster/stand-for-election";
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a witness leads before it asks: past its leader lease (the store's
/// `election_timeout_max_ms`, 500 ms), during which it would refuse the voter its vote.
const LEAD_BEFORE_HANDOVER: Duration = Duration::from_millis(1000);
/// Between two rounds of asking while the witness still leads.
const RETRY: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(250);

/// What the leader sends: its term and how far it has applied the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StandRequest {
    pub term: u64,
    pub applied_index: u64,
}

/// Why a node refuses to stand (the reply names it; the witness asks the next voter).
pub(crate) fn refusal(
    me: u64,
    role: NodeRole,
    st: &shoal_store::StoreStatus,
    caller: Option<u64>,
    req: &StandRequest,
) -> Option<String> {
    if role == NodeRole::Witness {
        return Some("this node is a witness: it never takes the leadership over".into());
    }
    if caller.is_none() || st.leader != caller {
        return Some("only the current leader may ask a node to stand for election".into());
    }
    if !st.members.iter().any(|m| m.node_id == me && m.role == shoal_store::Role::Voter) {
        return Some("this node does not vote".into());
    }
    if st.term != req.term {
        return Some(format!("term {} here, {} in the request", st.term, req.term));
    }
    if st.applied_index < req.applied_index {
        return Some(format!("behind: applied {} of the leader's {}", st.applied_index, req.applied_index));
    }
    None
}

/// Answers a leader that asks this node to stand for election.
pub(crate) fn serve(node: &Arc<Node>) {
    super::peers::serve_node_only(node, SERVICE, "stand-for-election request", |node, peer, body| async move {
        let req: StandRequest =
            serde_json::from_slice(&body).map_err(|e| format!("bad stand-for-election request: {e}"))?;
        let caller = crate::members::node_records(&node.store)
            .await
            .into_values()
            .find(|r| r.name == peer.node_name)
            .map(|r| r.node_id);
        let st = node.store.status();
        if let Some(why) = refusal(node.identity.node_id, node.cfg.node.role, &st, caller, &req) {
            tracing::debug!(peer = %peer.node_name, reason = %why, "not standing for election");
            return Err(why);
        }
        tracing::info!(leader = %peer.node_name, "the witness leads: standing for election to take over");
        node.store.stand_for_election().await.map_err(|e| e.to_string())?;
        Ok(Vec::new())
    });
}

/// The workload voters a witness leader may hand over to, in sight and alive: node id and
/// peer address (from the Raft membership, never from gossip).
pub(crate) fn workload_voters(me: u64, st: &shoal_store::StoreStatus, gossip: &[Member]) -> Vec<(u64, SocketAddr)> {
    let by_id: BTreeMap<u64, &Member> =
        gossip.iter().filter_map(|m| m.attrs.get("node_id").and_then(|s| s.parse().ok()).map(|id| (id, m))).collect();
    st.members
        .iter()
        .filter(|m| m.node_id != me && m.role == shoal_store::Role::Voter)
        .filter(|m| {
            by_id.get(&m.node_id).is_some_and(|g| g.alive && g.attrs.get(ATTR_ROLE).is_none_or(|r| r != "witness"))
        })
        .filter_map(|m| m.addr.parse().ok().map(|a| (m.node_id, a)))
        .collect()
}

/// On a witness: while it leads, asks a workload voter to take the leadership over.
pub(crate) async fn run(node: Arc<Node>, stop: CancellationToken) {
    let me = node.identity.node_id;
    let mut leading_since: Option<Instant> = None;
    let mut next_try = Instant::now();
    let mut warned = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        let st = node.store.status();
        if st.leader != Some(me) {
            leading_since = None;
            warned = false;
            continue;
        }
        let now = Instant::now();
        let since = *leading_since.get_or_insert(now);
        if now < since + LEAD_BEFORE_HANDOVER || now < next_try {
            continue;
        }
        next_try = now + RETRY;
        let voters = workload_voters(me, &st, &node.membership.members());
        if voters.is_empty() {
            if !warned {
                tracing::warn!(
                    "this witness leads and no workload node votes: controllers and the scheduler wait until \
                     one does (create a cluster on a workload node, then join the witness)"
                );
                warned = true;
            }
            continue;
        }
        let req = StandRequest { term: st.term, applied_index: st.applied_index };
        let body = serde_json::to_vec(&req).unwrap_or_default();
        for (id, addr) in voters {
            match node.transport.call_with_timeout(addr, SERVICE, body.clone(), CALL_TIMEOUT).await {
                Ok(_) => {
                    tracing::info!(node_id = id, %addr, "this witness leads: a workload voter stands to take over");
                    break;
                }
                Err(e) => tracing::debug!(node_id = id, %addr, error = %e, "handing the leadership over"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
