//! The Raft log, vote and committed/purged ids in redb.
//!
//! Appends are group-committed: `append` hands its entries to one writer thread and returns;
//! the writer drains everything queued, writes it in one redb transaction with immediate
//! durability, and only then reports the entries flushed. Entries waiting for the writer stay
//! readable from memory. Nothing is written when nothing changes (an unchanged vote or
//! committed id is not rewritten).
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogReader, StorageIOError};
use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::oneshot;

use crate::codec::{decode, encode};
use crate::raft_types::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::tables::{Db, LOG, RAFT_META};

/// Most operations one redb commit takes from the queue.
const MAX_BATCH: usize = 4096;

struct LogMem {
    /// Appended entries the writer has not committed yet.
    pending: BTreeMap<u64, Entry>,
    last_log_id: Option<LogId>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    committed_written: Option<LogId>,
}

pub(crate) struct LogShared {
    db: Arc<Db>,
    mem: Arc<Mutex<LogMem>>,
}

/// The end of the log, readable without holding the store file open (for pre-votes).
#[derive(Clone)]
pub(crate) struct LogTail(Arc<Mutex<LogMem>>);

impl LogTail {
    /// The id of the last entry appended (or purged into a snapshot).
    pub(crate) fn last_log_id(&self) -> Option<LogId> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.last_log_id.or(m.last_purged)
    }
}

impl LogShared {
    fn lock(&self) -> MutexGuard<'_, LogMem> {
        self.mem.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum LogOp {
    Append { entries: Vec<(LogId, Vec<u8>)>, callback: LogFlushed<TypeConfig> },
    Truncate { from: u64, done: oneshot::Sender<Result<(), String>> },
    Purge { upto: LogId, done: oneshot::Sender<Result<(), String>> },
    SaveVote { vote: Vec<u8>, done: oneshot::Sender<Result<(), String>> },
}

/// The log store handed to openraft.
pub(crate) struct LogStore {
    shared: Arc<LogShared>,
    tx: mpsc::Sender<LogOp>,
}

/// A read handle on the log (used by replication tasks).
#[derive(Clone)]
pub(crate) struct LogReader {
    shared: Arc<LogShared>,
}

fn io_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_logs(AnyError::error(e.to_string())).into()
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_logs(AnyError::error(e.to_string())).into()
}

impl LogStore {
    pub(crate) fn open(db: Arc<Db>) -> crate::Result<Self> {
        let (mem, _) = load(&db)?;
        let shared = Arc::new(LogShared { db, mem: Arc::new(Mutex::new(mem)) });
        let (tx, rx) = mpsc::channel();
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("store-log-writer".into())
            .spawn(move || writer_loop(writer, rx))
            .map_err(|e| crate::Error::Io { operation: "spawn log writer", path: String::new(), source: e })?;
        Ok(LogStore { shared, tx })
    }

    pub(crate) fn tail(&self) -> LogTail {
        LogTail(self.shared.mem.clone())
    }
}

fn load(db: &Database) -> crate::Result<(LogMem, ())> {
    let dberr = |e: redb::Error| crate::Error::db("read log state", e);
    let r = db.begin_read().map_err(|e| dberr(e.into()))?;
    let meta = r.open_table(RAFT_META).map_err(|e| dberr(e.into()))?;
    let get = |k: &str| -> crate::Result<Option<Vec<u8>>> {
        Ok(meta.get(k).map_err(|e| dberr(e.into()))?.map(|v| v.value().to_vec()))
    };
    let vote: Option<Vote> = get("vote")?.map(|b| decode("vote", &b)).transpose()?;
    let committed: Option<LogId> = get("committed")?.map(|b| decode("committed", &b)).transpose()?;
    let last_purged: Option<LogId> = get("purged")?.map(|b| decode("purged", &b)).transpose()?;
    let log = r.open_table(LOG).map_err(|e| dberr(e.into()))?;
    let last = match log.last().map_err(|e| dberr(e.into()))? {
        Some((_, v)) => Some(decode::<Entry>("log entry", v.value())?.log_id),
        None => None,
    };
    let last_log_id = last.or(last_purged);
    Ok((
        LogMem { pending: BTreeMap::new(), last_log_id, last_purged, vote, committed, committed_written: committed },
        (),
    ))
}

fn writer_loop(shared: Arc<LogShared>, rx: mpsc::Receiver<LogOp>) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let committed = {
            let m = shared.lock();
            (m.committed != m.committed_written).then_some(m.committed)
        };
        let result = write_batch(&shared.db, &ops, committed);
        if result.is_ok() {
            let mut m = shared.lock();
            if let Some(c) = committed {
                m.committed_written = c;
            }
            for op in &ops {
                if let LogOp::Append { entries, .. } = op {
                    for (id, _) in entries {
                        if m.pending.get(&id.index).is_some_and(|e| e.log_id == *id) {
                            m.pending.remove(&id.index);
                        }
                    }
                }
            }
        }
        for op in ops {
            let res = result.clone();
            match op {
                LogOp::Append { callback, .. } => {
                    callback.log_io_completed(res.map_err(std::io::Error::other));
                }
                LogOp::Truncate { done, .. } | LogOp::Purge { done, .. } | LogOp::SaveVote { done, .. } => {
                    let _ = done.send(res);
                }
            }
        }
    }
}

fn write_batch(db: &Database, ops: &[LogOp], committed: Option<Option<LogId>>) -> Result<(), String> {
    let w = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut log = w.open_table(LOG).map_err(|e| e.to_string())?;
        let mut meta = w.open_table(RAFT_META).map_err(|e| e.to_string())?;
        for op in ops {
            match op {
                LogOp::Append { entries, .. } => {
                    for (id, bytes) in entries {
                        log.insert(id.index, bytes.as_slice()).map_err(|e| e.to_string())?;
                    }
                }
                LogOp::Truncate { from, .. } => {
                    log.retain_in(*from.., |_, _| false).map_err(|e| e.to_string())?;
                }
                LogOp::Purge { upto, .. } => {
                    log.retain_in(..=upto.index, |_, _| false).map_err(|e| e.to_string())?;
                    let b = encode("purged", upto).map_err(|e| e.to_string())?;
                    meta.insert("purged", b.as_slice()).map_err(|e| e.to_string())?;
                }
                LogOp::SaveVote { vote, .. } => {
                    meta.insert("vote", vote.as_slice()).map_err(|e| e.to_string())?;
                }
            }
        }
        if let Some(c) = committed {
            let b = encode("committed", &c).map_err(|e| e.to_string())?;
            meta.insert("committed", b.as_slice()).map_err(|e| e.to_string())?;
        }
    }
    w.commit().map_err(|e| e.to_string())
}

async fn wait(rx: oneshot::Receiver<Result<(), String>>) -> Result<(), StorageError> {
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(io_err(e)),
        Err(_) => Err(io_err("log writer stopped")),
    }
}

// openraft's StorageError is large; it is the error type the storage traits demand.
#[allow(clippy::result_large_err)]
fn read_entries(shared: &LogShared, start: u64, end: Option<u64>) -> Result<Vec<Entry>, StorageError> {
    let mut out: BTreeMap<u64, Entry> = BTreeMap::new();
    {
        let r = shared.db.begin_read().map_err(read_err)?;
        let log = r.open_table(LOG).map_err(read_err)?;
        let iter = match end {
            Some(end) => log.range(start..end),
            None => log.range(start..),
        }
        .map_err(read_err)?;
        for item in iter {
            let (k, v) = item.map_err(read_err)?;
            let e: Entry = decode("log entry", v.value()).map_err(read_err)?;
            out.insert(k.value(), e);
        }
    }
    let m = shared.lock();
    let hi = match end {
        Some(end) => Bound::Excluded(end),
        None => Bound::Unbounded,
    };
    for (k, e) in m.pending.range((Bound::Included(start), hi)) {
        out.insert(*k, e.clone());
    }
    // Entries past the in-memory last log id were truncated but may still be on disk
    // until the writer deletes them.
    let last = m.last_log_id.map(|l| l.index);
    Ok(out.into_iter().filter(|(k, _)| last.is_some_and(|l| *k <= l)).map(|(_, e)| e).collect())
}

fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => Some(e.saturating_add(1)),
        Bound::Excluded(e) => Some(*e),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(&range);
        read_entries(&self.shared, start, end)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(&range);
        read_entries(&self.shared, start, end)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let m = self.shared.lock();
        Ok(LogState { last_purged_log_id: m.last_purged, last_log_id: m.last_log_id.or(m.last_purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader { shared: self.shared.clone() }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        {
            let mut m = self.shared.lock();
            if m.vote.as_ref() == Some(vote) {
                return Ok(());
            }
            m.vote = Some(*vote);
        }
        let bytes = encode("vote", vote).map_err(io_err)?;
        let (done, rx) = oneshot::channel();
        self.tx.send(LogOp::SaveVote { vote: bytes, done }).map_err(|_| io_err("log writer stopped"))?;
        wait(rx).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.shared.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Written together with the next log write: the committed id only saves re-applying
        // entries after a restart, so it is not worth a flash write of its own.
        self.shared.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.shared.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        {
            let mut m = self.shared.lock();
            for e in entries {
                let bytes = encode("log entry", &e).map_err(io_err)?;
                encoded.push((e.log_id, bytes));
                m.last_log_id = Some(e.log_id);
                m.pending.insert(e.log_id.index, e);
            }
        }
        self.tx.send(LogOp::Append { entries: encoded, callback }).map_err(|_| io_err("log writer stopped"))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index;
        {
            let prev = if from == 0 {
                None
            } else {
                let before = read_entries(&self.shared, from - 1, Some(from))?;
                before.first().map(|e| e.log_id)
            };
            let mut m = self.shared.lock();
            m.pending.retain(|k, _| *k < from);
            m.last_log_id = prev.or(m.last_purged);
        }
        let (done, rx) = oneshot::channel();
        self.tx.send(LogOp::Truncate { from, done }).map_err(|_| io_err("log writer stopped"))?;
        wait(rx).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut m = self.shared.lock();
            m.pending.retain(|k, _| *k > log_id.index);
            m.last_purged = Some(log_id);
            if m.last_log_id.is_none_or(|l| l.index < log_id.index) {
                m.last_log_id = Some(log_id);
            }
        }
        let (done, rx) = oneshot::channel();
        self.tx.send(LogOp::Purge { upto: log_id, done }).map_err(|_| io_err("log writer stopped"))?;
        wait(rx).await
    }
}
