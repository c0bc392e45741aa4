//! shoal-store: the replicated key-value store every node keeps in redb.
//!
//! Public surface used by the daemon (API, controllers, scheduler, node agent):
//! [`Store`] (a cheap, cloneable handle), [`Kv`], [`Txn`], [`Compare`], [`Op`],
//! [`WatchEvent`] and [`Error`]. Keys are UTF-8 strings, values are bytes; every committed
//! write bumps one cluster-wide revision, as etcd does.
//!
//! A cluster member opens its store with [`Store::open`] and a [`RaftTransport`] (the daemon's
//! QUIC endpoint); peers' calls are served by [`Store::handle_rpc`].
#![forbid(unsafe_code)]

mod backup;
mod churn;
mod codec;
mod encryption;
mod error;
mod force;
mod log_store;
mod mem;
mod network;
mod node;
pub mod observe;
mod raft_types;
mod secrets;
mod state_machine;
#[cfg(test)]
mod storage_tests;
mod store;
mod tables;
pub mod testing;
mod types;
pub mod version;
mod voters;

pub use encryption::{derive_key, KEYRING_KEY};
pub use error::{Error, Result};
pub use force::ForceOutcome;
pub use network::{service, RaftTransport, TransportError};
pub use secrets::{EncryptionStatus, RotateOutcome};
pub use store::{LeaderWatch, Store};
pub use types::{
    Compare, EventKind, Kv, MemberStatus, Op, Role, StoreConfig, StoreStatus, Txn, TxnResult, VoterChange, WatchEvent,
    WatchStream,
};
