use serde::{Deserialize, Serialize};

/// One key with its value and revisions, as read from the local replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created the key (kept across updates).
    pub create_revision: u64,
    /// Revision of the last write to the key (an object's `resourceVersion`).
    pub mod_revision: u64,
    /// Lease the key is attached to; the key is deleted when the lease expires.
    pub lease: Option<u64>,
}

/// A condition checked atomically before a transaction's operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compare {
    /// The key exists and its `mod_revision` equals the given one.
    ModRevision { key: String, revision: u64 },
    /// The key exists.
    Exists { key: String },
    /// The key does not exist.
    NotExists { key: String },
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put { key: String, value: Vec<u8>, lease: Option<u64> },
    Delete { key: String },
    DeletePrefix { prefix: String },
}

/// A multi-key transaction: if every compare holds, `success` runs, otherwise `failure`.
/// All the operations of one transaction commit at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl Txn {
    /// A transaction with no conditions.
    pub fn ops(ops: Vec<Op>) -> Self {
        Txn { compares: Vec::new(), success: ops, failure: Vec::new() }
    }

    /// A single unconditional put.
    pub fn put(key: impl Into<String>, value: Vec<u8>) -> Self {
        Self::ops(vec![Op::Put { key: key.into(), value, lease: None }])
    }
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResult {
    /// Whether the compares held (and so `success` ran).
    pub succeeded: bool,
    /// The store revision after the transaction (unchanged if no operation wrote).
    pub revision: u64,
    /// For a failed compare: the current value of each compared key (None where absent),
    /// in the order of `compares`, so a caller can report a conflict without another read.
    pub current: Vec<Option<Kv>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// A change seen by a watch, in revision order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// For `Put` the new key-value; for `Delete` the key with its value before deletion and
    /// `mod_revision` set to the deleting revision.
    pub kv: Kv,
    /// The value before this event, if there was one.
    pub prev: Option<Kv>,
    pub revision: u64,
}

/// A stream of watch events; `recv` returns `None` when the store shuts down, and
/// `Some(Err(Compacted))` if the watcher fell so far behind that events were lost
/// (the caller re-lists, as a Kubernetes client does on 410).
pub type WatchStream = tokio::sync::mpsc::Receiver<crate::Result<WatchEvent>>;

/// Settings of one node's replicated store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory that holds `store.redb`.
    pub data_dir: std::path::PathBuf,
    /// This node's Raft id (unique in the cluster, never reused).
    pub node_id: u64,
    /// The address peers reach this node at (handed to the transport as is).
    pub addr: String,
    /// Leader heartbeat interval in milliseconds.
    pub heartbeat_ms: u64,
    /// Election timeout range in milliseconds. The maximum is also the leader's lease: a voter
    /// refuses to vote for another node while it heard from its leader within it. A follower
    /// that stops hearing from the leader stands for election just after the lease (see
    /// `silence_before_election` in node.rs).
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Extra silence of the leader before this node stands for election (a witness, so that
    /// the workers go first): it stands `election_timeout_max_ms` plus this delay after it last
    /// heard from a leader. It still votes like every voter.
    pub candidacy_delay_ms: u64,
    /// Build a snapshot (and purge the log before it) after this many applied entries.
    pub snapshot_every: u64,
    /// Log entries kept behind the last snapshot, so slightly lagging followers catch up
    /// from the log rather than from a snapshot.
    pub keep_logs_behind_snapshot: u64,
    /// How long a write or read index keeps retrying while the leader changes.
    pub request_timeout: std::time::Duration,
    /// How long a voter may be unhealthy before `reconcile_voters` replaces it.
    pub voter_grace: std::time::Duration,
    /// How long a learner may be unhealthy before `reconcile_voters` removes it from the group,
    /// so the leader stops replicating to a node that is gone.
    pub learner_grace: std::time::Duration,
    /// Number of revisions the watch history keeps.
    pub history_revisions: u64,
    /// Largest page cache of the store file, bytes (None: redb's default, 1 GiB, filled as
    /// pages are read). A witness keeps it small: it reads little and every cached page is
    /// resident memory.
    pub cache_bytes: Option<usize>,
}

impl StoreConfig {
    /// Defaults tuned for fast failover on small machines: heartbeat 200 ms (openraft gives an
    /// AppendEntries call one heartbeat to finish, and a loaded 2-core board needs that much;
    /// the leader sends extra empty heartbeats every 100 ms, so the followers' lease stays
    /// fresh), election timeout 300-500 ms. A follower whose leader stays silent past the
    /// lease (the maximum, 500 ms) and does not answer a direct question stands for election
    /// at once, the voters in turn 100 ms apart: a new leader 0.45-0.65 s after the old one
    /// last sent a heartbeat. openraft's own election timer is off (it split votes with this
    /// one); the minimum only matters to openraft's config checks.
    pub fn new(data_dir: impl Into<std::path::PathBuf>, node_id: u64, addr: impl Into<String>) -> Self {
        StoreConfig {
            data_dir: data_dir.into(),
            node_id,
            addr: addr.into(),
            heartbeat_ms: 200,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 500,
            candidacy_delay_ms: 0,
            snapshot_every: 5000,
            keep_logs_behind_snapshot: 1000,
            request_timeout: std::time::Duration::from_secs(10),
            voter_grace: std::time::Duration::from_secs(30),
            learner_grace: std::time::Duration::from_secs(600),
            history_revisions: 10_000,
            cache_bytes: None,
        }
    }
}

/// Whether a member votes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Voter,
    Learner,
}

/// One member of the Raft group as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node_id: u64,
    pub addr: String,
    pub role: Role,
}

/// This node's view of the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    pub node_id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub applied_index: u64,
    pub revision: u64,
    pub members: Vec<MemberStatus>,
}

/// A membership change `reconcile_voters` made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VoterChange {
    /// A healthy learner became a voter.
    Promote { node_id: u64 },
    /// A voter that stayed unhealthy past the grace period was replaced by a healthy learner.
    Replace { removed: u64, added: u64 },
    /// A voter became a learner (too many voters, or dead with no replacement available).
    Demote { node_id: u64 },
    /// A learner that stayed unhealthy past the learner grace period left the group; it is
    /// added back as a learner when it returns (see [`crate::Store::add_learner`]).
    RemoveLearner { node_id: u64 },
}
