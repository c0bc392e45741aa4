//! The tables of a node's `store.redb` and the records they hold.
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::types::Kv;
use crate::{Error, Result};

/// Raft log: index -> encoded entry.
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Raft log store state: "vote", "committed", "purged".
pub(crate) const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// State machine state: "applied", "membership", "revision".
pub(crate) const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
/// The last snapshot: "meta" and "data".
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
/// Objects: key -> encoded [`KvRecord`].
pub(crate) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Leases: id -> TTL in milliseconds.
pub(crate) const LEASES: TableDefinition<u64, u64> = TableDefinition::new("leases");
/// Keys attached to each lease.
pub(crate) const LEASE_KEYS: TableDefinition<(u64, &str), ()> = TableDefinition::new("lease_keys");
/// Watch history: revision -> encoded events of that revision.
pub(crate) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Answers to recent requests, so a retried forwarded write is not applied twice.
pub(crate) const REQUESTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("requests");
/// (log index, position in a batch) -> request id, to trim `REQUESTS` in order.
pub(crate) const REQUEST_ORDER: TableDefinition<(u64, u32), (u64, u64)> = TableDefinition::new("request_order");

pub(crate) const FILE_NAME: &str = "store.redb";

/// One object as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KvRecord {
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub lease: Option<u64>,
}

impl KvRecord {
    pub fn into_kv(self, key: String) -> Kv {
        Kv {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            lease: self.lease,
        }
    }
}

/// Opens (or creates) the redb file and makes sure every table exists.
pub(crate) fn open_db(path: &Path) -> Result<Arc<Database>> {
    let open_err = |e: redb::Error| Error::OpenDatabase { path: path.display().to_string(), source: e };
    let db = Database::builder().create(path).map_err(|e| open_err(e.into()))?;
    let missing = {
        let r = db.begin_read().map_err(|e| open_err(e.into()))?;
        r.open_table(KV).is_err() || r.open_table(REQUEST_ORDER).is_err()
    };
    if missing {
        let w = db.begin_write().map_err(|e| open_err(e.into()))?;
        {
            w.open_table(LOG).map_err(|e| open_err(e.into()))?;
            w.open_table(RAFT_META).map_err(|e| open_err(e.into()))?;
            w.open_table(SM_META).map_err(|e| open_err(e.into()))?;
            w.open_table(SNAPSHOT).map_err(|e| open_err(e.into()))?;
            w.open_table(KV).map_err(|e| open_err(e.into()))?;
            w.open_table(LEASES).map_err(|e| open_err(e.into()))?;
            w.open_table(LEASE_KEYS).map_err(|e| open_err(e.into()))?;
            w.open_table(EVENTS).map_err(|e| open_err(e.into()))?;
            w.open_table(REQUESTS).map_err(|e| open_err(e.into()))?;
            w.open_table(REQUEST_ORDER).map_err(|e| open_err(e.into()))?;
        }
        w.commit().map_err(|e| open_err(e.into()))?;
    }
    Ok(Arc::new(db))
}
