//! The tables of a node's `store.redb` and the records they hold.
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::types::Kv;
use crate::version::STORE_FILE_FORMAT;
use crate::{Error, Result};

/// Raft log: index -> encoded entry.
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Raft log store state: "vote", "committed", "purged", and the file's "format".
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
/// Key of the store file format in `RAFT_META`.
pub(crate) const FORMAT_KEY: &str = "format";

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

/// The open redb file. It says when it is closed: `Arc::strong_count` reaches zero before the
/// last owner has finished dropping the database (redb writes and syncs on close, then
/// releases its file lock), so a waiter that watched the count could reopen the file while
/// it was still locked.
pub(crate) struct Db {
    // Fields drop in order: the database first, then the signal.
    db: Database,
    closed: ClosedSignal,
}

impl std::ops::Deref for Db {
    type Target = Database;
    fn deref(&self) -> &Database {
        &self.db
    }
}

impl Db {
    /// True once this database has been dropped and its file released.
    pub(crate) fn closed_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.closed.0.clone()
    }
}

struct ClosedSignal(Arc<std::sync::atomic::AtomicBool>);

impl Drop for ClosedSignal {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Opens (or creates) the redb file and makes sure every table exists.
pub(crate) fn open_db(path: &Path) -> Result<Arc<Db>> {
    open_db_with_cache(path, None)
}

/// [`open_db`] with a page cache of at most `cache_bytes` (None: redb's default).
pub(crate) fn open_db_with_cache(path: &Path, cache_bytes: Option<usize>) -> Result<Arc<Db>> {
    let open_err = |e: redb::Error| Error::OpenDatabase { path: path.display().to_string(), source: e };
    let mut builder = Database::builder();
    if let Some(bytes) = cache_bytes {
        builder.set_cache_size(bytes);
    }
    let db = builder.create(path).map_err(|e| open_err(e.into()))?;
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
    check_file_format(&db, path)?;
    Ok(Arc::new(Db { db, closed: ClosedSignal(Arc::default()) }))
}

/// Refuses a file written in a newer store format; records the format in one that has none
/// (every file written before formats existed is format 1).
fn check_file_format(db: &Database, path: &Path) -> Result<()> {
    let open_err = |e: redb::Error| Error::OpenDatabase { path: path.display().to_string(), source: e };
    let found = {
        let r = db.begin_read().map_err(|e| open_err(e.into()))?;
        let meta = r.open_table(RAFT_META).map_err(|e| open_err(e.into()))?;
        let v = meta.get(FORMAT_KEY).map_err(|e| open_err(e.into()))?;
        v.map(|v| decode::<u32>("store file format", v.value())).transpose()?
    };
    match found {
        Some(f) if f > STORE_FILE_FORMAT => {
            let e = Error::UnsupportedFormat { what: "store file", found: f, oldest: 1, newest: STORE_FILE_FORMAT };
            tracing::error!(path = %path.display(), error = %e, "refusing to open the store");
            Err(e)
        }
        Some(_) => Ok(()),
        None => {
            let w = db.begin_write().map_err(|e| open_err(e.into()))?;
            {
                let mut meta = w.open_table(RAFT_META).map_err(|e| open_err(e.into()))?;
                let b = encode("store file format", &STORE_FILE_FORMAT)?;
                meta.insert(FORMAT_KEY, b.as_slice()).map_err(|e| open_err(e.into()))?;
            }
            w.commit().map_err(|e| open_err(e.into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_file_from_a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            let db = open_db(&path).unwrap();
            let r = db.begin_read().unwrap();
            let meta = r.open_table(RAFT_META).unwrap();
            let f: u32 = decode("test", meta.get(FORMAT_KEY).unwrap().unwrap().value()).unwrap();
            assert_eq!(f, STORE_FILE_FORMAT, "a new file records its format");
            drop(meta);
            drop(r);
            let w = db.begin_write().unwrap();
            {
                let mut meta = w.open_table(RAFT_META).unwrap();
                meta.insert(FORMAT_KEY, encode("test", &(STORE_FILE_FORMAT + 1)).unwrap().as_slice()).unwrap();
            }
            w.commit().unwrap();
        }
        let Err(e) = open_db(&path) else { panic!("a newer file is refused") };
        assert!(matches!(e, Error::UnsupportedFormat { what: "store file", .. }), "got {e:?}");
    }
}
