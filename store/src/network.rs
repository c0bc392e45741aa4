//! How stores talk to each other: a transport trait the daemon implements (over QUIC),
//! the openraft network on top of it, and the messages of the store's own services.
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode, MAX_RPC_BYTES};
use crate::raft_types::{Command, CommandResponse, LogId, Node, NodeId, TypeConfig};

/// Service names carried by [`RaftTransport::call`].
pub mod service {
    pub const APPEND: &str = "raft.append";
    pub const VOTE: &str = "raft.vote";
    pub const SNAPSHOT: &str = "raft.snapshot";
    /// A write proposed to the leader (leader only).
    pub const PROPOSE: &str = "store.propose";
    /// A read index asked of the leader (leader only).
    pub const READ_INDEX: &str = "store.read_index";
    /// Add a learner; any node accepts it and forwards it to the leader.
    pub const ADD_LEARNER: &str = "store.add_learner";
    /// Add a learner (leader only).
    pub const ADD_LEARNER_LEADER: &str = "store.add_learner_leader";
    /// Refresh a lease's deadline (leader only).
    pub const KEEPALIVE: &str = "store.lease_keepalive";
    /// Remove a member from the group (leader only; `shoal node remove`).
    pub const REMOVE_MEMBER_LEADER: &str = "store.remove_member_leader";
    /// Would the receiver vote for this candidate now? (format 3 and later, framed only)
    pub const PRE_VOTE: &str = "store.pre_vote/v";

    /// Largest request body `Store::handle_rpc` accepts; a transport may refuse larger ones
    /// before reading them.
    pub const MAX_BODY_BYTES: usize = crate::codec::MAX_RPC_BYTES;

    /// The services under their format-1 names (bare bodies).
    pub const LEGACY: [&str; 9] =
        [APPEND, VOTE, SNAPSHOT, PROPOSE, READ_INDEX, ADD_LEARNER, ADD_LEARNER_LEADER, KEEPALIVE, REMOVE_MEMBER_LEADER];

    /// Every service name a node serves: the format-1 names and the framed ones.
    pub const ALL: [&str; 19] = [
        APPEND,
        VOTE,
        SNAPSHOT,
        PROPOSE,
        READ_INDEX,
        ADD_LEARNER,
        ADD_LEARNER_LEADER,
        KEEPALIVE,
        REMOVE_MEMBER_LEADER,
        "raft.append/v",
        "raft.vote/v",
        "raft.snapshot/v",
        "store.propose/v",
        "store.read_index/v",
        "store.add_learner/v",
        "store.add_learner_leader/v",
        "store.lease_keepalive/v",
        "store.remove_member_leader/v",
        PRE_VOTE,
    ];

    /// The name a message of `format` is sent under.
    pub fn for_format(name: &'static str, format: u32) -> &'static str {
        if format < 2 {
            return name;
        }
        match LEGACY.iter().position(|s| *s == name) {
            Some(i) => ALL[LEGACY.len() + i],
            None => name,
        }
    }

    /// The service a name stands for, and whether its bodies are framed.
    pub fn base(name: &str) -> (&str, bool) {
        match name.strip_suffix(crate::version::FRAMED_SUFFIX) {
            Some(b) => (b, true),
            None => (name, false),
        }
    }
}

/// A failed call to a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The request provably did not reach the peer (no connection).
    #[error("peer {addr} unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    /// The call failed after the request may have been delivered.
    #[error("call to {addr} failed: {reason}")]
    Failed { addr: String, reason: String },
    /// No answer within the transport's deadline.
    #[error("call to {addr} timed out")]
    Timeout { addr: String },
    /// The peer's daemon refused the call (for example `Store::handle_rpc` returned an error).
    #[error("peer {addr} refused the call: {reason}")]
    Refused { addr: String, reason: String },
}

/// What the store needs from the node's peer transport: one request, one answer.
/// The receiving side hands `(service, body)` to [`crate::Store::handle_rpc`] and returns its
/// bytes (or, when it fails, an error the caller sees as [`TransportError::Refused`]).
pub trait RaftTransport: Send + Sync + 'static {
    fn call(
        &self,
        addr: &str,
        service: &'static str,
        body: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>>;
}

/// Leader hint in answers from a node that is not the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaderHint {
    pub leader: Option<(NodeId, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ProposeReply {
    Applied { response: CommandResponse, index: u64 },
    NotLeader(LeaderHint),
    Failed { reason: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ProposeRequest {
    pub command: Command,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ReadIndexReply {
    Index(u64),
    NotLeader(LeaderHint),
    Failed { reason: String },
}

/// A pre-vote (Raft thesis, 9.6): asked of every voter before a node stands for election, so
/// that a node which cannot win (its log is behind, or the others still hear their leader)
/// does not raise the term and unseat the leader the others elect.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PreVoteRequest {
    pub candidate: NodeId,
    pub last_log_id: Option<LogId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum PreVoteReply {
    Granted,
    Refused { reason: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AddLearnerRequest {
    pub node_id: NodeId,
    pub addr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum AdminReply {
    Done,
    NotLeader(LeaderHint),
    Failed { reason: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum KeepaliveReply {
    Alive { ttl_ms: u64 },
    NotFound,
    NotLeader(LeaderHint),
}

/// The format this node writes to its peers (see [`crate::version`]).
#[derive(Debug)]
pub(crate) struct WireFormat(AtomicU32);

impl WireFormat {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(WireFormat(AtomicU32::new(crate::version::OLDEST_FORMAT)))
    }

    pub(crate) fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn set(&self, f: u32) {
        self.0.store(f.clamp(crate::version::OLDEST_FORMAT, crate::version::FORMAT), Ordering::Relaxed);
    }
}

/// Encodes a request of `format`: the service name to send it under and its body.
pub(crate) fn request_for<T: Serialize + ?Sized>(
    service: &'static str,
    format: u32,
    req: &T,
) -> crate::Result<(&'static str, Vec<u8>)> {
    Ok((service::for_format(service, format), crate::version::frame(format, encode("request", req)?)))
}

/// Decodes the reply to a request sent under `service`.
pub(crate) fn reply_of<T: DeserializeOwned>(service: &str, bytes: &[u8]) -> crate::Result<T> {
    if service::base(service).1 {
        let (_, payload) = crate::version::unframe("reply", bytes)?;
        decode("reply", payload)
    } else {
        decode("reply", bytes)
    }
}

/// Creates one [`PeerClient`] per target for openraft.
pub(crate) struct Network {
    pub transport: Arc<dyn RaftTransport>,
    pub format: Arc<WireFormat>,
}

pub(crate) struct PeerClient {
    transport: Arc<dyn RaftTransport>,
    format: Arc<WireFormat>,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        PeerClient { transport: self.transport.clone(), format: self.format.clone(), target, addr: node.addr.clone() }
    }
}

impl PeerClient {
    async fn rpc<Req, Resp, E>(
        &self,
        service: &'static str,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = encode("raft request", req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.rpc_bytes(service, body, ttl).await
    }

    /// Sends an encoded request at the current wire format.
    async fn rpc_bytes<Resp, E>(
        &self,
        service: &'static str,
        body: Vec<u8>,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let format = self.format.get();
        let service = service::for_format(service, format);
        let body = crate::version::frame(format, body);
        let call = self.transport.call(&self.addr, service, body);
        let bytes = match tokio::time::timeout(ttl, call).await {
            Ok(Ok(b)) => b,
            Ok(Err(e @ TransportError::Unreachable { .. })) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
            Ok(Err(e)) => return Err(RPCError::Network(NetworkError::new(&e))),
            Err(_) => {
                let e = TransportError::Timeout { addr: self.addr.clone() };
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
        };
        let res: Result<Resp, RaftError<NodeId, E>> =
            reply_of(service, &bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let body = encode("raft request", &rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // Receivers refuse bodies over MAX_RPC_BYTES: ask openraft to send fewer entries.
        if body.len() > MAX_RPC_BYTES / 2 && rpc.entries.len() > 1 {
            let hint = (rpc.entries.len() as u64 / 2).max(1);
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(hint)));
        }
        self.rpc_bytes(service::APPEND, body, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>> {
        self.rpc(service::SNAPSHOT, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.rpc(service::VOTE, &rpc, option.hard_ttl()).await
    }
}
