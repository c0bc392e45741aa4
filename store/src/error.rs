/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A watch asked for a revision older than the retained history (the API answers 410 Gone).
    #[error("revision {requested} has been compacted; oldest retained is {oldest}")]
    Compacted { requested: u64, oldest: u64 },
    /// No leader is known or reachable: the write may be retried.
    #[error("no leader available: {reason}")]
    NoLeader { reason: String },
    /// The store is shutting down.
    #[error("store is shutting down")]
    Shutdown,
    /// The redb file could not be opened (corrupt, truncated, locked or unreadable).
    #[error("cannot open store file {path}: {source}")]
    OpenDatabase {
        path: String,
        #[source]
        source: redb::Error,
    },
    /// A read or write of the local redb file failed.
    #[error("store file {operation} failed: {source}")]
    Database {
        operation: &'static str,
        #[source]
        source: redb::Error,
    },
    /// A record in the local file or a message from a peer could not be decoded.
    #[error("cannot decode {what}: {reason}")]
    Decode { what: &'static str, reason: String },
    /// A transaction or message exceeds the size limit.
    #[error("{what} is {size} bytes, over the limit of {limit}")]
    TooLarge { what: &'static str, size: usize, limit: usize },
    /// A put referred to a lease that does not exist (revoked or expired).
    #[error("lease {lease} not found")]
    LeaseNotFound { lease: u64 },
    /// The Raft engine refused or failed an operation.
    #[error("raft {operation} failed: {reason}")]
    Raft { operation: &'static str, reason: String },
    /// A call to a peer failed.
    #[error("call to peer {addr} failed: {source}")]
    Transport {
        addr: String,
        #[source]
        source: crate::TransportError,
    },
    /// A peer answered an RPC with an error.
    #[error("peer refused {service}: {reason}")]
    Remote { service: String, reason: String },
    /// An RPC named a service this store does not serve.
    #[error("unknown store service {service}")]
    UnknownService { service: String },
    /// Reading or writing a backup file or a data directory failed.
    #[error("{operation} {path} failed: {source}")]
    Io {
        operation: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A backup file is not one this store wrote, or is damaged.
    #[error("backup file {path} is invalid: {reason}")]
    InvalidBackup { path: String, reason: String },
    /// `restore` found an existing store in the target data directory.
    #[error("data directory {path} already holds a store")]
    AlreadyExists { path: String },
    /// A peer message or the store file is in a format this node does not read.
    #[error("{what} is in format {found}; this node reads formats {oldest} to {newest} (upgrade this node, or keep the cluster on its current version)")]
    UnsupportedFormat { what: &'static str, found: u32, oldest: u32, newest: u32 },
    /// A write needs a newer format than every member of the cluster reads.
    #[error("this write needs format {needed}, but some member reads only format {cluster}; finish upgrading every node first")]
    FormatGated { needed: u32, cluster: u32 },
    /// The operation needs the replicated backend (the in-memory store does not have it).
    #[error("{operation} is not available on an in-memory store")]
    NotReplicated { operation: &'static str },
    /// A value under an encrypted prefix could not be sealed or opened.
    #[error("secrets encryption of {key:?}: {reason}")]
    Encryption { key: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn db(operation: &'static str, e: impl Into<redb::Error>) -> Self {
        Error::Database { operation, source: e.into() }
    }

    pub(crate) fn raft(operation: &'static str, e: impl std::fmt::Display) -> Self {
        Error::Raft { operation, reason: e.to_string() }
    }
}
