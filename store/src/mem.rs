//! The in-memory backend behind `Store::in_memory()`: the same semantics as the replicated
//! store (revisions, compare-and-swap, watch history, leases) for tests and tools, applied
//! directly without Raft or a file. Leases here never expire on their own; revoke them.
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc};

use crate::types::{Compare, EventKind, Kv, Op, Txn, TxnResult, WatchEvent, WatchStream};
use crate::{Error, Result};

/// How many events the watch history keeps.
const HISTORY: usize = 10_000;
/// Buffer of one watch stream before the watcher is considered stuck.
const WATCH_BUFFER: usize = 1024;

#[derive(Default)]
struct State {
    revision: u64,
    data: BTreeMap<String, Kv>,
    history: VecDeque<WatchEvent>,
    leases: BTreeMap<u64, u64>,
    next_lease: u64,
}

/// A cloneable handle on an in-memory store.
#[derive(Clone)]
pub(crate) struct MemStore {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<WatchEvent>,
}

impl MemStore {
    /// A store that lives in memory only, for tests and tools.
    pub fn in_memory() -> Self {
        let (events, _) = broadcast::channel(WATCH_BUFFER * 4);
        MemStore { state: Arc::new(Mutex::new(State::default())), events }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-read; the map is still valid.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current revision of the local replica.
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    /// One key from the local replica.
    pub async fn get(&self, key: &str) -> Result<Option<Kv>> {
        Ok(self.lock().data.get(key).cloned())
    }

    /// Every key under `prefix` from the local replica, with the revision they were read at.
    pub async fn range(&self, prefix: &str) -> Result<(Vec<Kv>, u64)> {
        let st = self.lock();
        let items = st
            .data
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        Ok((items, st.revision))
    }

    /// Waits until the local replica has applied everything the leader had committed when
    /// the call started (read index), so a following read is linearizable.
    pub async fn sync(&self) -> Result<()> {
        Ok(())
    }

    /// Runs a transaction through the leader and waits until it is applied locally.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        let (result, events) = {
            let mut st = self.lock();
            for op in txn.success.iter().chain(txn.failure.iter()) {
                if let Op::Put { lease: Some(l), .. } = op {
                    if !st.leases.contains_key(l) {
                        return Err(Error::LeaseNotFound { lease: *l });
                    }
                }
            }
            apply(&mut st, &txn)
        };
        for ev in events {
            let _ = self.events.send(ev);
        }
        Ok(result)
    }

    pub async fn lease_grant(&self, ttl: std::time::Duration) -> Result<u64> {
        let mut st = self.lock();
        st.next_lease += 1;
        let id = st.next_lease;
        st.leases.insert(id, u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        Ok(id)
    }

    pub async fn lease_keepalive(&self, lease: u64) -> Result<std::time::Duration> {
        match self.lock().leases.get(&lease) {
            Some(ttl) => Ok(std::time::Duration::from_millis(*ttl)),
            None => Err(Error::LeaseNotFound { lease }),
        }
    }

    pub async fn lease_revoke(&self, lease: u64) -> Result<u64> {
        let (rev, events) = {
            let mut st = self.lock();
            if st.leases.remove(&lease).is_none() {
                return Err(Error::LeaseNotFound { lease });
            }
            let keys: BTreeSet<String> =
                st.data.values().filter(|kv| kv.lease == Some(lease)).map(|kv| kv.key.clone()).collect();
            let txn = Txn::ops(keys.into_iter().map(|key| Op::Delete { key }).collect());
            let (r, events) = apply(&mut st, &txn);
            (r.revision, events)
        };
        for ev in events {
            let _ = self.events.send(ev);
        }
        Ok(rev)
    }

    /// Every key with its record, and the revision (for backups).
    pub(crate) fn dump(&self) -> (Vec<Kv>, Vec<(u64, u64)>, u64) {
        let st = self.lock();
        (st.data.values().cloned().collect(), st.leases.iter().map(|(k, v)| (*k, *v)).collect(), st.revision)
    }

    /// Watches every key under `prefix`. `after: Some(rev)` delivers every event with a
    /// revision above `rev` (from the retained history first); `None` starts from now.
    pub async fn watch(&self, prefix: &str, after: Option<u64>) -> Result<WatchStream> {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let mut live = self.events.subscribe();
        let (backlog, mut last) = {
            let st = self.lock();
            let after = after.unwrap_or(st.revision);
            let oldest = st.history.front().map(|e| e.revision).unwrap_or(st.revision + 1);
            if after + 1 < oldest && after < st.revision {
                return Err(Error::Compacted { requested: after, oldest });
            }
            let backlog: Vec<WatchEvent> =
                st.history.iter().filter(|e| e.revision > after && e.kv.key.starts_with(prefix)).cloned().collect();
            (backlog, after.max(st.revision))
        };
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            for ev in backlog {
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            loop {
                match live.recv().await {
                    Ok(ev) => {
                        if ev.revision <= last || !ev.kv.key.starts_with(&prefix) {
                            continue;
                        }
                        last = ev.revision;
                        match tx.try_send(Ok(ev)) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                let _ = tx.try_send(Err(Error::Compacted { requested: last, oldest: last }));
                                return;
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => return,
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(Err(Error::Compacted { requested: last, oldest: last })).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(rx)
    }
}

fn holds(st: &State, c: &Compare) -> bool {
    match c {
        Compare::ModRevision { key, revision } => st.data.get(key).is_some_and(|kv| kv.mod_revision == *revision),
        Compare::Exists { key } => st.data.contains_key(key),
        Compare::NotExists { key } => !st.data.contains_key(key),
    }
}

fn compared_key(c: &Compare) -> &str {
    match c {
        Compare::ModRevision { key, .. } | Compare::Exists { key } | Compare::NotExists { key } => key,
    }
}

fn apply(st: &mut State, txn: &Txn) -> (TxnResult, Vec<WatchEvent>) {
    let succeeded = txn.compares.iter().all(|c| holds(st, c));
    let ops = if succeeded { &txn.success } else { &txn.failure };
    let current = if succeeded {
        Vec::new()
    } else {
        txn.compares.iter().map(|c| st.data.get(compared_key(c)).cloned()).collect()
    };
    let rev = st.revision + 1;
    let mut events = Vec::new();
    for op in ops {
        match op {
            Op::Put { key, value, lease } => {
                let prev = st.data.get(key).cloned();
                let kv = Kv {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                    mod_revision: rev,
                    lease: *lease,
                };
                st.data.insert(key.clone(), kv.clone());
                events.push(WatchEvent { kind: EventKind::Put, kv, prev, revision: rev });
            }
            Op::Delete { key } => {
                if let Some(prev) = st.data.remove(key) {
                    let mut kv = prev.clone();
                    kv.mod_revision = rev;
                    events.push(WatchEvent { kind: EventKind::Delete, kv, prev: Some(prev), revision: rev });
                }
            }
            Op::DeletePrefix { prefix } => {
                let keys: Vec<String> = st
                    .data
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in keys {
                    if let Some(prev) = st.data.remove(&key) {
                        let mut kv = prev.clone();
                        kv.mod_revision = rev;
                        events.push(WatchEvent { kind: EventKind::Delete, kv, prev: Some(prev), revision: rev });
                    }
                }
            }
        }
    }
    if !events.is_empty() {
        st.revision = rev;
        for ev in &events {
            st.history.push_back(ev.clone());
        }
        while st.history.len() > HISTORY {
            st.history.pop_front();
        }
    }
    (TxnResult { succeeded, revision: st.revision, current }, events)
}
