//! Backup files: a consistent copy of the replicated state, and restoring one as the state of
//! a fresh one-node cluster (as `etcdutl snapshot restore` does).
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use openraft::{BasicNode, CommittedLeaderId, Membership};
use redb::Database;
use sha2::{Digest, Sha256};

use crate::codec::{decode, encode};
use crate::raft_types::{LogId, SnapshotMeta, StoredMembership};
use crate::state_machine::{read_snapshot_data, write_snapshot_state, SnapshotData};
use crate::tables::{open_db, FILE_NAME, RAFT_META};
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"SHOALBK1";

/// Writes the local replica's state to `path`; returns the revision it holds.
pub(crate) fn write_backup(db: &Database, path: &Path) -> Result<u64> {
    let (data, _, _) = read_snapshot_data(db)?;
    write_file(path, &data)?;
    Ok(data.revision)
}

pub(crate) fn write_file(path: &Path, data: &SnapshotData) -> Result<()> {
    let io = |operation, e| Error::Io { operation, path: path.display().to_string(), source: e };
    let payload = encode("backup", data)?;
    let digest = Sha256::digest(&payload);
    let tmp = path.with_extension("partial");
    let mut f = std::fs::File::create(&tmp).map_err(|e| io("create backup", e))?;
    f.write_all(MAGIC).map_err(|e| io("write backup", e))?;
    f.write_all(&digest).map_err(|e| io("write backup", e))?;
    f.write_all(&payload).map_err(|e| io("write backup", e))?;
    f.sync_all().map_err(|e| io("write backup", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io("rename backup", e))
}

pub(crate) fn read_file(path: &Path) -> Result<SnapshotData> {
    let invalid = |reason: &str| Error::InvalidBackup { path: path.display().to_string(), reason: reason.to_string() };
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        operation: "read backup",
        path: path.display().to_string(),
        source: e,
    })?;
    if bytes.len() < MAGIC.len() + 32 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(invalid("not a shoal store backup"));
    }
    let (digest, payload) = bytes[MAGIC.len()..].split_at(32);
    if Sha256::digest(payload).as_slice() != digest {
        return Err(invalid("checksum mismatch (file damaged or truncated)"));
    }
    postcard::from_bytes(payload).map_err(|e| invalid(&format!("cannot decode: {e}")))
}

/// Creates `<data_dir>/store.redb` holding the backup's state as a one-node cluster of
/// `node_id` at `addr`. Open it with `Store::open`; the node elects itself and others join it.
pub(crate) fn restore(file: &Path, data_dir: &Path, node_id: u64, addr: &str) -> Result<u64> {
    let data = read_file(file)?;
    let db_file = data_dir.join(FILE_NAME);
    if db_file.exists() {
        return Err(Error::AlreadyExists { path: data_dir.display().to_string() });
    }
    std::fs::create_dir_all(data_dir).map_err(|e| Error::Io {
        operation: "create data directory",
        path: data_dir.display().to_string(),
        source: e,
    })?;
    let db = open_db(&db_file)?;
    let log_id = LogId::new(CommittedLeaderId::new(1, node_id), 1);
    let voters: BTreeSet<u64> = [node_id].into();
    let nodes: BTreeMap<u64, BasicNode> = [(node_id, BasicNode { addr: addr.to_string() })].into();
    let membership = StoredMembership::new(Some(log_id), Membership::new(vec![voters], nodes));
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: membership,
        snapshot_id: format!("restore-{node_id}-{}", data.revision),
    };
    let blob = encode("snapshot", &data)?;
    write_snapshot_state(&db, &data, &meta, &blob)?;
    // The log starts after the restored state, as on a node that installed a snapshot.
    let w = db.begin_write().map_err(|e| Error::db("restore", e))?;
    {
        let mut m = w.open_table(RAFT_META).map_err(|e| Error::db("restore", e))?;
        m.insert("purged", encode("purged", &log_id)?.as_slice()).map_err(|e| Error::db("restore", e))?;
        m.insert("committed", encode("committed", &Some(log_id))?.as_slice()).map_err(|e| Error::db("restore", e))?;
    }
    w.commit().map_err(|e| Error::db("restore", e))?;
    let _ = decode::<SnapshotData>("snapshot", &blob)?;
    Ok(data.revision)
}
