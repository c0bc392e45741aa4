//! shoal-store: the replicated key-value store every node keeps in redb.
//!
//! Public surface used by the daemon (API, controllers, scheduler, node agent):
//! [`Store`] (a cheap, cloneable handle), [`Kv`], [`Txn`], [`Compare`], [`Op`],
//! [`WatchEvent`] and [`Error`]. Keys are UTF-8 strings, values are bytes; every committed
//! write bumps one cluster-wide revision, as etcd does.
#![forbid(unsafe_code)]

mod error;
mod mem;
mod types;

pub use error::{Error, Result};
pub use mem::Store;
pub use types::{Compare, EventKind, Kv, Op, Txn, TxnResult, WatchEvent, WatchStream};
