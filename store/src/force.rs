//! `shoal promote --force`: makes a stopped node the only voter of its Raft group, keeping
//! every entry of its log and its applied state, as etcd's `--force-new-cluster`. For a
//! survivor whose peers are gone for good (the operator says so): the other members must
//! never come back with their old data.
//!
//! It appends one membership entry (this node the only voter, no learners) after the last
//! entry of the local log, under the same leader id. On start the node sees itself as the
//! whole voting group, elects itself and commits that entry with everything before it.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::{EntryPayload, Membership};
use redb::{ReadableDatabase, ReadableTable};

use crate::codec::{decode, encode};
use crate::raft_types::{Entry, LogId, StoredMembership};
use crate::tables::{FILE_NAME, LOG, RAFT_META, SM_META};
use crate::{Error, Result};

/// What [`force_single_voter`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForceOutcome {
    /// The node was already the only voter: nothing written.
    AlreadySingleVoter,
    /// A membership entry at `index` makes the node the only voter; `dropped` are the ids of
    /// the members no longer in the group.
    Forced { index: u64, dropped: Vec<u64> },
}

fn failed(reason: impl Into<String>) -> Error {
    Error::Raft { operation: "force single voter", reason: reason.into() }
}

/// Rewrites `<data_dir>/store.redb` of a stopped node so that `node_id` is the only voter.
/// Fails if the store is open elsewhere (the daemon still runs) or the node is not a member.
pub(crate) fn force_single_voter(data_dir: &Path, node_id: u64) -> Result<ForceOutcome> {
    let path = data_dir.join(FILE_NAME);
    if !path.exists() {
        return Err(Error::Io {
            operation: "open store",
            path: path.display().to_string(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    // redb locks the file: this fails while the daemon holds it.
    let db = redb::Database::open(&path)
        .map_err(|e| Error::OpenDatabase { path: path.display().to_string(), source: e.into() })?;
    let dberr = |e: redb::Error| Error::db("force single voter", e);

    let (last, membership) = {
        let r = db.begin_read().map_err(|e| dberr(e.into()))?;
        let log = r.open_table(LOG).map_err(|e| dberr(e.into()))?;
        let mut last: Option<LogId> = None;
        let mut latest: Option<Membership<u64, openraft::BasicNode>> = None;
        for row in log.iter().map_err(|e| dberr(e.into()))? {
            let (_, v) = row.map_err(|e| dberr(e.into()))?;
            let entry: Entry = decode("log entry", v.value())?;
            if let EntryPayload::Membership(m) = &entry.payload {
                latest = Some(m.clone());
            }
            last = Some(entry.log_id);
        }
        let meta = r.open_table(RAFT_META).map_err(|e| dberr(e.into()))?;
        let purged: Option<LogId> = match meta.get("purged").map_err(|e| dberr(e.into()))? {
            Some(v) => Some(decode("purged", v.value())?),
            None => None,
        };
        let sm = r.open_table(SM_META).map_err(|e| dberr(e.into()))?;
        let applied: Option<StoredMembership> = match sm.get("membership").map_err(|e| dberr(e.into()))? {
            Some(v) => Some(decode("membership", v.value())?),
            None => None,
        };
        let membership = match (latest, applied) {
            (Some(m), _) => m,
            (None, Some(s)) => s.membership().clone(),
            (None, None) => return Err(failed("this store was never part of a cluster")),
        };
        (last.or(purged), membership)
    };
    let Some(last) = last else { return Err(failed("the Raft log is empty")) };
    let Some(me) = membership.get_node(&node_id).cloned() else {
        return Err(failed(format!("node {node_id} is not a member of the group this store records")));
    };
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let all: BTreeSet<u64> = membership.nodes().map(|(id, _)| *id).collect();
    if voters.len() == 1 && voters.contains(&node_id) && all.len() == 1 {
        return Ok(ForceOutcome::AlreadySingleVoter);
    }
    let index = last.index + 1;
    let nodes: BTreeMap<u64, openraft::BasicNode> = [(node_id, me)].into();
    let entry = Entry {
        log_id: LogId::new(last.leader_id, index),
        payload: EntryPayload::Membership(Membership::new(vec![[node_id].into()], nodes)),
    };
    let bytes = encode("log entry", &entry)?;
    let w = db.begin_write().map_err(|e| dberr(e.into()))?;
    {
        let mut log = w.open_table(LOG).map_err(|e| dberr(e.into()))?;
        log.insert(index, bytes.as_slice()).map_err(|e| dberr(e.into()))?;
    }
    w.commit().map_err(|e| dberr(e.into()))?;
    Ok(ForceOutcome::Forced { index, dropped: all.into_iter().filter(|id| *id != node_id).collect() })
}
