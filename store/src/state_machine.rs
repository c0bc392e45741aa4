//! The replicated state machine in redb: objects, revisions, leases, watch history and the
//! answers to recent requests. Applying reads no clock: every replica computes the same state.
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, RaftSnapshotBuilder, StorageIOError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, WriteTransaction};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::codec::{decode, encode};
use crate::raft_types::{
    ApplyError, Command, CommandResponse, Entry, LogId, RequestId, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};
use crate::tables::*;
use crate::types::{Compare, EventKind, Op, Txn, TxnResult, WatchEvent};
use crate::{Error, Result};

/// Answers kept for duplicate detection of retried requests.
const REQUESTS_KEPT: u64 = 20_000;

/// What watchers of this replica are told after each applied batch.
#[derive(Debug, Clone)]
pub(crate) enum Notice {
    Events(Arc<Vec<WatchEvent>>),
    /// The state was replaced by a snapshot: watchers re-list.
    Reset {
        revision: u64,
    },
}

/// Progress of the local replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    pub index: u64,
    pub revision: u64,
}

pub(crate) struct SmShared {
    pub db: Arc<Db>,
    pub notices: broadcast::Sender<Notice>,
    pub applied: watch::Sender<Applied>,
    pub history_revisions: u64,
    pub snapshot_seq: AtomicU64,
}

/// The state machine handed to openraft.
pub(crate) struct StateMachine {
    pub shared: Arc<SmShared>,
}

pub(crate) struct SnapshotBuilder {
    shared: Arc<SmShared>,
}

/// The content of a snapshot (and of a backup file).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SnapshotData {
    pub revision: u64,
    pub kv: Vec<(String, KvRecord)>,
    pub leases: Vec<(u64, u64)>,
    pub requests: Vec<((u64, u32), RequestId, Vec<u8>)>,
}

fn sm_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(AnyError::error(e.to_string())).into()
}

fn sm_read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_state_machine(AnyError::error(e.to_string())).into()
}

impl StateMachine {
    pub(crate) fn open(db: Arc<Db>, history_revisions: u64) -> Result<Self> {
        let (notices, _) = broadcast::channel(4096);
        let (applied, revision) = read_applied(&db)?;
        let (applied_tx, _) = watch::channel(Applied { index: applied.map_or(0, |l| l.index), revision });
        Ok(StateMachine {
            shared: Arc::new(SmShared {
                db,
                notices,
                applied: applied_tx,
                history_revisions: history_revisions.max(1),
                snapshot_seq: AtomicU64::new(0),
            }),
        })
    }
}

fn read_applied(db: &Database) -> Result<(Option<LogId>, u64)> {
    let r = db.begin_read().map_err(|e| Error::db("read state", e))?;
    let meta = r.open_table(SM_META).map_err(|e| Error::db("read state", e))?;
    let applied = match meta.get("applied").map_err(|e| Error::db("read state", e))? {
        Some(v) => decode("applied log id", v.value())?,
        None => None,
    };
    let revision = match meta.get("revision").map_err(|e| Error::db("read state", e))? {
        Some(v) => decode("revision", v.value())?,
        None => 0,
    };
    Ok((applied, revision))
}

fn read_membership(db: &Database) -> Result<StoredMembership> {
    let r = db.begin_read().map_err(|e| Error::db("read state", e))?;
    let meta = r.open_table(SM_META).map_err(|e| Error::db("read state", e))?;
    match meta.get("membership").map_err(|e| Error::db("read state", e))? {
        Some(v) => decode("membership", v.value()),
        None => Ok(StoredMembership::default()),
    }
}

/// The tables one apply batch writes.
struct Tx<'t> {
    kv: Table<'t, &'static str, &'static [u8]>,
    leases: Table<'t, u64, u64>,
    lease_keys: Table<'t, (u64, &'static str), ()>,
    events: Table<'t, u64, &'static [u8]>,
    requests: Table<'t, (u64, u64), &'static [u8]>,
    order: Table<'t, (u64, u32), (u64, u64)>,
    revision: u64,
    history: u64,
}

fn db_err(e: impl Into<redb::Error>) -> Error {
    Error::db("apply", e)
}

impl<'t> Tx<'t> {
    fn open(w: &'t WriteTransaction, revision: u64, history: u64) -> Result<Self> {
        Ok(Tx {
            kv: w.open_table(KV).map_err(db_err)?,
            leases: w.open_table(LEASES).map_err(db_err)?,
            lease_keys: w.open_table(LEASE_KEYS).map_err(db_err)?,
            events: w.open_table(EVENTS).map_err(db_err)?,
            requests: w.open_table(REQUESTS).map_err(db_err)?,
            order: w.open_table(REQUEST_ORDER).map_err(db_err)?,
            revision,
            history,
        })
    }

    fn get(&self, key: &str) -> Result<Option<KvRecord>> {
        match self.kv.get(key).map_err(db_err)? {
            Some(v) => Ok(Some(decode("object", v.value())?)),
            None => Ok(None),
        }
    }

    fn holds(&self, c: &Compare) -> Result<bool> {
        Ok(match c {
            Compare::ModRevision { key, revision } => self.get(key)?.is_some_and(|r| r.mod_revision == *revision),
            Compare::Exists { key } => self.get(key)?.is_some(),
            Compare::NotExists { key } => self.get(key)?.is_none(),
        })
    }

    fn delete(&mut self, key: &str, rev: u64, events: &mut Vec<WatchEvent>) -> Result<()> {
        let prev = match self.kv.remove(key).map_err(db_err)? {
            Some(v) => decode::<KvRecord>("object", v.value())?,
            None => return Ok(()),
        };
        if let Some(l) = prev.lease {
            self.lease_keys.remove((l, key)).map_err(db_err)?;
        }
        let prev = prev.into_kv(key.to_string());
        let mut kv = prev.clone();
        kv.mod_revision = rev;
        events.push(WatchEvent { kind: EventKind::Delete, kv, prev: Some(prev), revision: rev });
        Ok(())
    }

    fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        for item in self.kv.range(prefix..).map_err(db_err)? {
            let (k, _) = item.map_err(db_err)?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            keys.push(k.to_string());
        }
        Ok(keys)
    }

    fn txn(&mut self, txn: &Txn) -> Result<(CommandResponse, Vec<WatchEvent>)> {
        let mut succeeded = true;
        for c in &txn.compares {
            if !self.holds(c)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { &txn.success } else { &txn.failure };
        for op in ops {
            if let Op::Put { lease: Some(l), .. } = op {
                if self.leases.get(*l).map_err(db_err)?.is_none() {
                    return Ok((CommandResponse::Failed(ApplyError::LeaseNotFound { lease: *l }), Vec::new()));
                }
            }
        }
        let current = if succeeded {
            Vec::new()
        } else {
            let mut cur = Vec::new();
            for c in &txn.compares {
                let key = match c {
                    Compare::ModRevision { key, .. } | Compare::Exists { key } | Compare::NotExists { key } => key,
                };
                cur.push(self.get(key)?.map(|r| r.into_kv(key.clone())));
            }
            cur
        };
        let rev = self.revision + 1;
        let mut events = Vec::new();
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    let prev = self.get(key)?;
                    if let Some(old) = prev.as_ref().and_then(|p| p.lease) {
                        self.lease_keys.remove((old, key.as_str())).map_err(db_err)?;
                    }
                    if let Some(l) = lease {
                        self.lease_keys.insert((*l, key.as_str()), ()).map_err(db_err)?;
                    }
                    let rec = KvRecord {
                        value: value.clone(),
                        create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                        mod_revision: rev,
                        lease: *lease,
                    };
                    let bytes = encode("object", &rec)?;
                    self.kv.insert(key.as_str(), bytes.as_slice()).map_err(db_err)?;
                    events.push(WatchEvent {
                        kind: EventKind::Put,
                        kv: rec.into_kv(key.clone()),
                        prev: prev.map(|p| p.into_kv(key.clone())),
                        revision: rev,
                    });
                }
                Op::Delete { key } => self.delete(key, rev, &mut events)?,
                Op::DeletePrefix { prefix } => {
                    for key in self.keys_with_prefix(prefix)? {
                        self.delete(&key, rev, &mut events)?;
                    }
                }
            }
        }
        let events = self.commit_events(events)?;
        Ok((CommandResponse::Txn(TxnResult { succeeded, revision: self.revision, current }), events))
    }

    /// Records the events of one revision in the history (trimming it) and bumps the revision.
    fn commit_events(&mut self, events: Vec<WatchEvent>) -> Result<Vec<WatchEvent>> {
        if events.is_empty() {
            return Ok(events);
        }
        self.revision += 1;
        let bytes = encode("events", &events)?;
        self.events.insert(self.revision, bytes.as_slice()).map_err(db_err)?;
        let keep_from = self.revision.saturating_sub(self.history) + 1;
        loop {
            let first = match self.events.first().map_err(db_err)? {
                Some((k, _)) => k.value(),
                None => break,
            };
            if first >= keep_from {
                break;
            }
            self.events.remove(first).map_err(db_err)?;
        }
        Ok(events)
    }

    fn revoke(&mut self, lease: u64) -> Result<(CommandResponse, Vec<WatchEvent>)> {
        if self.leases.remove(lease).map_err(db_err)?.is_none() {
            return Ok((CommandResponse::Failed(ApplyError::LeaseNotFound { lease }), Vec::new()));
        }
        let mut keys = Vec::new();
        for item in self.lease_keys.range((lease, "")..(lease.saturating_add(1), "")).map_err(db_err)? {
            let (k, _) = item.map_err(db_err)?;
            let (l, key) = k.value();
            if l == lease {
                keys.push(key.to_string());
            }
        }
        let rev = self.revision + 1;
        let mut events = Vec::new();
        for key in keys {
            self.delete(&key, rev, &mut events)?;
        }
        let events = self.commit_events(events)?;
        Ok((CommandResponse::LeaseRevoked { revision: self.revision }, events))
    }

    fn remember(&mut self, index: (u64, u32), req: RequestId, resp: &CommandResponse) -> Result<()> {
        let bytes = encode("answer", resp)?;
        self.requests.insert((req.origin, req.nonce), bytes.as_slice()).map_err(db_err)?;
        self.order.insert(index, (req.origin, req.nonce)).map_err(db_err)?;
        if self.order.len().map_err(db_err)? > REQUESTS_KEPT {
            if let Some((_, v)) = self.order.pop_first().map_err(db_err)? {
                let id = v.value();
                self.requests.remove(id).map_err(db_err)?;
            }
        }
        Ok(())
    }

    fn answered(&self, req: RequestId) -> Result<Option<CommandResponse>> {
        match self.requests.get((req.origin, req.nonce)).map_err(db_err)? {
            Some(v) => Ok(Some(decode("answer", v.value())?)),
            None => Ok(None),
        }
    }

    fn command(&mut self, index: u64, cmd: &Command) -> Result<(CommandResponse, Vec<WatchEvent>)> {
        let Command::Batch(cmds) = cmd else { return self.single(index, 0, cmd) };
        let mut answers = Vec::with_capacity(cmds.len());
        let mut events = Vec::new();
        for (pos, c) in cmds.iter().enumerate() {
            let (a, ev) = match c {
                Command::Batch(_) => (CommandResponse::Failed(ApplyError::NestedBatch), Vec::new()),
                c => self.single(index, u32::try_from(pos).unwrap_or(u32::MAX), c)?,
            };
            answers.push(a);
            events.extend(ev);
        }
        Ok((CommandResponse::Batch(answers), events))
    }

    fn single(&mut self, index: u64, pos: u32, cmd: &Command) -> Result<(CommandResponse, Vec<WatchEvent>)> {
        let Some(req) = cmd.request() else {
            return Ok((CommandResponse::Failed(ApplyError::NestedBatch), Vec::new()));
        };
        if let Some(prev) = self.answered(req)? {
            return Ok((prev, Vec::new()));
        }
        let (resp, events) = match cmd {
            Command::Txn { txn, .. } => self.txn(txn)?,
            Command::LeaseGrant { ttl_ms, .. } => {
                self.leases.insert(index, *ttl_ms).map_err(db_err)?;
                (CommandResponse::LeaseGranted { lease: index, revision: self.revision }, Vec::new())
            }
            Command::LeaseRevoke { lease, .. } => self.revoke(*lease)?,
            Command::Batch(_) => (CommandResponse::Failed(ApplyError::NestedBatch), Vec::new()),
        };
        self.remember((index, pos), req, &resp)?;
        Ok((resp, events))
    }
}

fn apply_batch(shared: &SmShared, entries: Vec<Entry>) -> Result<(Vec<CommandResponse>, Vec<WatchEvent>, Applied)> {
    let (_, revision) = read_applied(&shared.db)?;
    let mut w = shared.db.begin_write().map_err(db_err)?;
    // The log holds every applied entry with immediate durability, so the state machine may
    // trail it after a crash and is rebuilt by re-applying: one flash flush per batch is enough.
    w.set_durability(Durability::None).map_err(db_err)?;
    let mut responses = Vec::with_capacity(entries.len());
    let mut all_events = Vec::new();
    let mut last: Option<LogId> = None;
    let mut membership: Option<StoredMembership> = None;
    let revision = {
        let mut tx = Tx::open(&w, revision, shared.history_revisions)?;
        for entry in entries {
            last = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(CommandResponse::None),
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    responses.push(CommandResponse::None);
                }
                EntryPayload::Normal(cmd) => {
                    let (resp, events) = tx.command(entry.log_id.index, &cmd)?;
                    all_events.extend(events);
                    responses.push(resp);
                }
            }
        }
        tx.revision
    };
    {
        let mut meta = w.open_table(SM_META).map_err(db_err)?;
        if let Some(m) = &membership {
            meta.insert("membership", encode("membership", m)?.as_slice()).map_err(db_err)?;
        }
        meta.insert("applied", encode("applied log id", &last)?.as_slice()).map_err(db_err)?;
        meta.insert("revision", encode("revision", &revision)?.as_slice()).map_err(db_err)?;
    }
    w.commit().map_err(db_err)?;
    Ok((responses, all_events, Applied { index: last.map_or(0, |l| l.index), revision }))
}

/// Reads the whole replicated state in one consistent read transaction.
pub(crate) fn read_snapshot_data(db: &Database) -> Result<(SnapshotData, Option<LogId>, StoredMembership)> {
    let r = db.begin_read().map_err(|e| Error::db("read snapshot", e))?;
    let e = |e: redb::StorageError| Error::db("read snapshot", e);
    let meta = r.open_table(SM_META).map_err(|e| Error::db("read snapshot", e))?;
    let applied: Option<LogId> = match meta.get("applied").map_err(e)? {
        Some(v) => decode("applied log id", v.value())?,
        None => None,
    };
    let membership: StoredMembership = match meta.get("membership").map_err(e)? {
        Some(v) => decode("membership", v.value())?,
        None => StoredMembership::default(),
    };
    let revision: u64 = match meta.get("revision").map_err(e)? {
        Some(v) => decode("revision", v.value())?,
        None => 0,
    };
    let mut data = SnapshotData { revision, ..Default::default() };
    let kv = r.open_table(KV).map_err(|e| Error::db("read snapshot", e))?;
    for item in kv.iter().map_err(e)? {
        let (k, v) = item.map_err(e)?;
        data.kv.push((k.value().to_string(), decode("object", v.value())?));
    }
    let leases = r.open_table(LEASES).map_err(|e| Error::db("read snapshot", e))?;
    for item in leases.iter().map_err(e)? {
        let (k, v) = item.map_err(e)?;
        data.leases.push((k.value(), v.value()));
    }
    let order = r.open_table(REQUEST_ORDER).map_err(|e| Error::db("read snapshot", e))?;
    let requests = r.open_table(REQUESTS).map_err(|e| Error::db("read snapshot", e))?;
    for item in order.iter().map_err(e)? {
        let (k, v) = item.map_err(e)?;
        let (origin, nonce) = v.value();
        if let Some(ans) = requests.get((origin, nonce)).map_err(e)? {
            data.requests.push((k.value(), RequestId { origin, nonce }, ans.value().to_vec()));
        }
    }
    Ok((data, applied, membership))
}

/// Replaces the whole replicated state with `data` (snapshot install and restore).
pub(crate) fn write_snapshot_state(db: &Database, data: &SnapshotData, meta: &SnapshotMeta, blob: &[u8]) -> Result<()> {
    let mut w = db.begin_write().map_err(db_err)?;
    w.set_durability(Durability::Immediate).map_err(db_err)?;
    w.delete_table(KV).map_err(db_err)?;
    w.delete_table(LEASES).map_err(db_err)?;
    w.delete_table(LEASE_KEYS).map_err(db_err)?;
    w.delete_table(EVENTS).map_err(db_err)?;
    w.delete_table(REQUESTS).map_err(db_err)?;
    w.delete_table(REQUEST_ORDER).map_err(db_err)?;
    {
        let mut tx = Tx::open(&w, data.revision, 1)?;
        for (k, rec) in &data.kv {
            tx.kv.insert(k.as_str(), encode("object", rec)?.as_slice()).map_err(db_err)?;
            if let Some(l) = rec.lease {
                tx.lease_keys.insert((l, k.as_str()), ()).map_err(db_err)?;
            }
        }
        for (id, ttl) in &data.leases {
            tx.leases.insert(*id, *ttl).map_err(db_err)?;
        }
        for (index, req, ans) in &data.requests {
            tx.requests.insert((req.origin, req.nonce), ans.as_slice()).map_err(db_err)?;
            tx.order.insert(*index, (req.origin, req.nonce)).map_err(db_err)?;
        }
        let mut sm = w.open_table(SM_META).map_err(db_err)?;
        sm.insert("applied", encode("applied log id", &meta.last_log_id)?.as_slice()).map_err(db_err)?;
        sm.insert("membership", encode("membership", &meta.last_membership)?.as_slice()).map_err(db_err)?;
        sm.insert("revision", encode("revision", &data.revision)?.as_slice()).map_err(db_err)?;
        let mut snap = w.open_table(SNAPSHOT).map_err(db_err)?;
        snap.insert("meta", encode("snapshot meta", meta)?.as_slice()).map_err(db_err)?;
        snap.insert("data", blob).map_err(db_err)?;
    }
    w.commit().map_err(db_err)?;
    Ok(())
}

fn build(shared: &SmShared) -> Result<Snapshot<TypeConfig>> {
    let (data, applied, membership) = read_snapshot_data(&shared.db)?;
    let blob = encode("snapshot", &data)?;
    let seq = shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
    let snapshot_id = match applied {
        Some(l) => format!("{}-{}-{}-{seq}", l.leader_id.term, l.leader_id.node_id, l.index),
        None => format!("0-0-0-{seq}"),
    };
    let meta = SnapshotMeta { last_log_id: applied, last_membership: membership, snapshot_id };
    let mut w = shared.db.begin_write().map_err(db_err)?;
    w.set_durability(Durability::Immediate).map_err(db_err)?;
    {
        let mut snap = w.open_table(SNAPSHOT).map_err(db_err)?;
        snap.insert("meta", encode("snapshot meta", &meta)?.as_slice()).map_err(db_err)?;
        snap.insert("data", blob.as_slice()).map_err(db_err)?;
    }
    w.commit().map_err(db_err)?;
    crate::observe::snapshot(blob.len());
    Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(blob)) })
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || build(&shared))
            .await
            .map_err(sm_err)?
            .map_err(|e| StorageIOError::write_snapshot(None, AnyError::error(e.to_string())).into())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let (applied, _) = read_applied(&self.shared.db).map_err(sm_read_err)?;
        let membership = read_membership(&self.shared.db).map_err(sm_read_err)?;
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let shared = self.shared.clone();
        let (responses, events, applied) = tokio::task::spawn_blocking(move || apply_batch(&shared, entries))
            .await
            .map_err(sm_err)?
            .map_err(sm_err)?;
        if !events.is_empty() {
            let _ = self.shared.notices.send(Notice::Events(Arc::new(events)));
        }
        self.shared.applied.send_replace(applied);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { shared: self.shared.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let blob = snapshot.into_inner();
        let data: SnapshotData = decode("snapshot", &blob).map_err(sm_err)?;
        let shared = self.shared.clone();
        let meta2 = meta.clone();
        let revision = data.revision;
        crate::observe::snapshot(blob.len());
        tokio::task::spawn_blocking(move || write_snapshot_state(&shared.db, &data, &meta2, &blob))
            .await
            .map_err(sm_err)?
            .map_err(sm_err)?;
        let _ = self.shared.notices.send(Notice::Reset { revision });
        self.shared.applied.send_replace(Applied { index: meta.last_log_id.map_or(0, |l| l.index), revision });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let r = self.shared.db.begin_read().map_err(sm_read_err)?;
        let t = r.open_table(SNAPSHOT).map_err(sm_read_err)?;
        let meta = match t.get("meta").map_err(sm_read_err)? {
            Some(v) => decode::<SnapshotMeta>("snapshot meta", v.value()).map_err(sm_read_err)?,
            None => return Ok(None),
        };
        let data = match t.get("data").map_err(sm_read_err)? {
            Some(v) => v.value().to_vec(),
            None => return Ok(None),
        };
        crate::observe::snapshot(data.len());
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::types::Txn;

    fn entry(index: u64, cmd: Command) -> Entry {
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Normal(cmd) }
    }

    fn open(dir: &tempfile::TempDir) -> StateMachine {
        let db = crate::tables::open_db(&dir.path().join("store.redb")).unwrap();
        StateMachine::open(db, 100).unwrap()
    }

    #[tokio::test]
    async fn a_retried_request_applies_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(&dir);
        let request = RequestId { origin: 2, nonce: 42 };
        let cmd = Command::Txn { request, txn: Txn::put("/k", vec![1]) };
        let first = sm.apply([entry(1, cmd.clone())]).await.unwrap();
        let again = sm.apply([entry(2, cmd)]).await.unwrap();
        assert_eq!(first, again, "the retry gets the first answer");
        assert_eq!(sm.shared.applied.borrow().revision, 1, "and writes nothing");
        // Inside a batch too.
        let other = Command::Txn { request: RequestId { origin: 2, nonce: 43 }, txn: Txn::put("/k", vec![2]) };
        let batch = Command::Batch(vec![Command::Txn { request, txn: Txn::put("/k", vec![9]) }, other]);
        let res = sm.apply([entry(3, batch)]).await.unwrap();
        let CommandResponse::Batch(answers) = &res[0] else { panic!("expected a batch answer, got {res:?}") };
        assert_eq!(answers[0], first[0]);
        assert!(matches!(&answers[1], CommandResponse::Txn(r) if r.revision == 2));
    }

    #[tokio::test]
    async fn state_survives_reopen_and_snapshot_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut sm = open(&dir);
            for i in 0..5u8 {
                let cmd = Command::Txn { request: RequestId::new(1), txn: Txn::put(format!("/k/{i}"), vec![i]) };
                sm.apply([entry(u64::from(i) + 1, cmd)]).await.unwrap();
            }
            let grant = Command::LeaseGrant { request: RequestId::new(1), ttl_ms: 1000 };
            sm.apply([entry(6, grant)]).await.unwrap();
        }
        let mut sm = open(&dir);
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(6));
        let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let other = tempfile::tempdir().unwrap();
        let mut sm2 = open(&other);
        sm2.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
        let (data, applied2, _) = read_snapshot_data(&sm2.shared.db).unwrap();
        assert_eq!(applied2.map(|l| l.index), Some(6));
        assert_eq!(data.kv.len(), 5);
        assert_eq!(data.revision, 5);
        assert_eq!(data.leases, vec![(6, 1000)]);
    }
}
