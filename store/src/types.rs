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
