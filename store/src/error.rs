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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
