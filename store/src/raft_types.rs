//! The Raft type configuration and the commands the state machine applies.
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::types::{Txn, TxnResult};

openraft::declare_raft_types!(
    /// openraft types of the shoal store.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
);

pub type NodeId = u64;
pub type Node = openraft::BasicNode;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Raft = openraft::Raft<TypeConfig>;

/// Identifies one client request across forwarding retries: the state machine answers a
/// repeated id with the first answer, so a retried write never applies twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    pub origin: u64,
    pub nonce: u64,
}

impl RequestId {
    pub fn new(origin: u64) -> Self {
        RequestId { origin, nonce: rand::random() }
    }
}

/// A replicated command. Applying one reads no clock and no local state beyond the
/// replicated tables, so every replica reaches the same state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Txn {
        request: RequestId,
        txn: Txn,
    },
    /// Grants a lease; its id is the log index of this command.
    LeaseGrant {
        request: RequestId,
        ttl_ms: u64,
    },
    /// Revokes a lease and deletes its keys (sent by a client, or by the leader on expiry).
    LeaseRevoke {
        request: RequestId,
        lease: u64,
    },
    /// Transactions the leader collected while the previous write was in flight: one log
    /// entry, one flush, applied in order (each at its own revision).
    Batch(Vec<Command>),
}

impl Command {
    /// The lowest format a node must read to apply this command (see [`crate::version`]).
    /// A new variant, or a new field that changes the meaning of an old one, gets the format
    /// that introduced it; the leader refuses it while some member reads only older formats.
    pub fn format(&self) -> u32 {
        match self {
            Command::Txn { .. } | Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } => 1,
            Command::Batch(cmds) => cmds.iter().map(Command::format).max().unwrap_or(1),
        }
    }

    pub fn request(&self) -> Option<RequestId> {
        match self {
            Command::Txn { request, .. }
            | Command::LeaseGrant { request, .. }
            | Command::LeaseRevoke { request, .. } => Some(*request),
            Command::Batch(_) => None,
        }
    }
}

/// Why a command applied as a no-op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyError {
    LeaseNotFound {
        lease: u64,
    },
    /// A batch inside a batch (never proposed by a correct leader).
    NestedBatch,
}

/// The state machine's answer to one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CommandResponse {
    /// Blank and membership entries.
    #[default]
    None,
    Txn(TxnResult),
    LeaseGranted {
        lease: u64,
        revision: u64,
    },
    LeaseRevoked {
        revision: u64,
    },
    Batch(Vec<CommandResponse>),
    Failed(ApplyError),
}

impl From<ApplyError> for crate::Error {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::LeaseNotFound { lease } => crate::Error::LeaseNotFound { lease },
            ApplyError::NestedBatch => crate::Error::raft("apply", "nested batch"),
        }
    }
}
