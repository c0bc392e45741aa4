//! One node's replicated store: openraft over the redb log and state machine, writes
//! forwarded to the leader, read index, leases expired by the leader, voter management.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::raft::AppendEntriesResponse;
use openraft::{BasicNode, ChangeMembers, ServerState, SnapshotPolicy};
use redb::{ReadableDatabase, ReadableTable};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::churn::Churn;
use crate::codec::{decode, encode};
use crate::log_store::LogStore;
use crate::network::{
    reply_of, request_for, service, AddLearnerRequest, AdminReply, KeepaliveReply, LeaderHint, Network, PreVoteReply,
    PreVoteRequest, ProposeReply, ProposeRequest, RaftTransport, ReadIndexReply, WireFormat,
};
use crate::raft_types::{Command, CommandResponse, NodeId, Raft, RequestId};

type ServerMetrics = openraft::metrics::RaftServerMetrics<NodeId, crate::raft_types::Node>;
use crate::state_machine::{Applied, Notice, StateMachine};
use crate::tables::{open_db_with_cache, Db, KvRecord, EVENTS, FILE_NAME, KV, LEASES};
use crate::types::{Kv, MemberStatus, Role, StoreConfig, StoreStatus, VoterChange, WatchEvent, WatchStream};
use crate::voters::Grace;
use crate::voters::{plan, HealthTracker};
use crate::{Error, Result};

const WATCH_BUFFER: usize = 1024;
/// Largest transaction a client may propose.
const MAX_TXN_BYTES: usize = 8 << 20;
/// Largest snapshot a node accepts from its leader.
const MAX_SNAPSHOT_BYTES: usize = 1 << 30;
const RETRY_PAUSE: Duration = Duration::from_millis(50);
const LEASE_TICK: Duration = Duration::from_millis(200);
/// Group commit: transactions arriving while earlier batches are in flight are proposed as
/// one log entry (one flash flush on each node), up to these bounds.
const BATCH_MAX_COMMANDS: usize = 512;
const BATCH_MAX_BYTES: usize = 4 << 20;
const BATCHES_IN_FLIGHT: usize = 2;

/// A transaction waiting for the batcher.
struct Pending {
    command: Command,
    size: usize,
    reply: tokio::sync::oneshot::Sender<Result<ProposeReply>>,
}

pub(crate) struct RaftNode {
    pub cfg: StoreConfig,
    raft: Raft,
    transport: Arc<dyn RaftTransport>,
    /// The format written to peers and the newest format a proposed command may need.
    format: Arc<WireFormat>,
    db: RwLock<Option<Arc<Db>>>,
    /// Set once the redb file is closed and unlocked (see [`Db`]).
    db_closed: Arc<AtomicBool>,
    notices: broadcast::Sender<Notice>,
    applied: watch::Receiver<Applied>,
    cancel: CancellationToken,
    lease_deadlines: Mutex<HashMap<u64, Instant>>,
    health: Mutex<HealthTracker>,
    shut: AtomicBool,
    batcher: mpsc::UnboundedSender<Pending>,
    /// When this node last heard from a leader or granted a vote (see [`elect_loop`]).
    last_heard: Mutex<Instant>,
    /// When this node last accepted entries or a heartbeat from a leader (for pre-votes).
    leader_contact: Mutex<Option<Instant>>,
    /// Leaders replaced in a row lengthen the wait before standing (see [`Churn`]).
    churn: Mutex<Churn>,
    log_tail: crate::log_store::LogTail,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn db_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join(FILE_NAME)
}

impl RaftNode {
    pub(crate) async fn open(cfg: StoreConfig, transport: Arc<dyn RaftTransport>) -> Result<Arc<Self>> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| Error::Io {
            operation: "create data directory",
            path: cfg.data_dir.display().to_string(),
            source: e,
        })?;
        let path = db_path(&cfg.data_dir);
        let db = {
            let (path, cache) = (path.clone(), cfg.cache_bytes);
            tokio::task::spawn_blocking(move || open_db_with_cache(&path, cache))
                .await
                .map_err(|e| Error::raft("open", e))??
        };
        let log = LogStore::open(db.clone())?;
        let log_tail = log.tail();
        let sm = StateMachine::open(db.clone(), cfg.history_revisions)?;
        let notices = sm.shared.notices.clone();
        let applied = sm.shared.applied.subscribe();
        let config = openraft::Config {
            cluster_name: "shoal".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: cfg.election_timeout_min_ms,
            election_timeout_max: cfg.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: cfg.keep_logs_behind_snapshot,
            install_snapshot_timeout: 2000,
            // openraft times an AppendEntries out after one heartbeat interval: small batches
            // keep a catching-up follower within it on a slow board.
            max_payload_entries: 64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::raft("configure", e))?;
        let format = WireFormat::new();
        let network = Network { transport: transport.clone(), format: format.clone() };
        let raft =
            Raft::new(cfg.node_id, Arc::new(config), network, log, sm).await.map_err(|e| Error::raft("start", e))?;
        // Elections are started by `elect_loop` only: openraft's own timer (the lease plus a
        // random timeout fixed per node at start, on a 1.5-heartbeat tick) fired while an
        // election `elect_loop` had started was still in flight, and split the vote.
        raft.runtime_config().elect(false);
        let (batcher, batch_rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        tokio::spawn(batch_loop(raft.clone(), batch_rx, cancel.clone()));
        let cfg_lease_ms = cfg.election_timeout_max_ms;
        let node = Arc::new(RaftNode {
            batcher,
            cfg,
            raft,
            transport,
            format,
            db_closed: db.closed_flag(),
            db: RwLock::new(Some(db)),
            notices,
            applied,
            cancel,
            lease_deadlines: Mutex::new(HashMap::new()),
            health: Mutex::new(HealthTracker::default()),
            shut: AtomicBool::new(false),
            // A node that just started waits one more lease before it may stand: its peers
            // may not have reached it yet, and standing would unseat a live leader.
            last_heard: Mutex::new(Instant::now() + Duration::from_millis(cfg_lease_ms)),
            leader_contact: Mutex::new(None),
            churn: Mutex::new(Churn::new(Instant::now())),
            log_tail,
        });
        tokio::spawn(lease_loop(Arc::downgrade(&node), node.cancel.clone()));
        tokio::spawn(elect_loop(Arc::downgrade(&node), node.raft.server_metrics(), node.cancel.clone()));
        Ok(node)
    }

    fn db(&self) -> Result<Arc<Db>> {
        self.db.read().unwrap_or_else(|p| p.into_inner()).clone().ok_or(Error::Shutdown)
    }

    fn check_open(&self) -> Result<()> {
        if self.shut.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        Ok(())
    }

    // ----- reads from the local replica -----

    pub(crate) fn revision(&self) -> u64 {
        self.applied.borrow().revision
    }

    pub(crate) fn get(&self, key: &str) -> Result<Option<Kv>> {
        let db = self.db()?;
        let r = db.begin_read().map_err(|e| Error::db("read", e))?;
        let t = r.open_table(KV).map_err(|e| Error::db("read", e))?;
        match t.get(key).map_err(|e| Error::db("read", e))? {
            Some(v) => Ok(Some(decode::<KvRecord>("object", v.value())?.into_kv(key.to_string()))),
            None => Ok(None),
        }
    }

    pub(crate) fn range(&self, prefix: &str) -> Result<(Vec<Kv>, u64)> {
        let db = self.db()?;
        let r = db.begin_read().map_err(|e| Error::db("read", e))?;
        let revision = read_revision(&r)?;
        let t = r.open_table(KV).map_err(|e| Error::db("read", e))?;
        let mut out = Vec::new();
        for item in t.range(prefix..).map_err(|e| Error::db("read", e))? {
            let (k, v) = item.map_err(|e| Error::db("read", e))?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            out.push(decode::<KvRecord>("object", v.value())?.into_kv(key.to_string()));
        }
        Ok((out, revision))
    }

    // ----- leader tracking -----

    fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }

    /// Returns once a leader other than `id` is known.
    async fn leader_moved_from(&self, id: NodeId) {
        let mut rx = self.raft.metrics();
        if rx.wait_for(|m| m.current_leader.is_some_and(|l| l != id)).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.cfg.node_id)
    }

    fn hint(&self) -> LeaderHint {
        LeaderHint { leader: self.leader() }
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        svc: &'static str,
        req: &Req,
        deadline: Instant,
    ) -> Result<Resp> {
        let (svc, body) = request_for(svc, self.format.get(), req)?;
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
        match tokio::time::timeout(left, self.transport.call(addr, svc, body)).await {
            Ok(Ok(bytes)) => reply_of(svc, &bytes),
            Ok(Err(e)) => Err(Error::Transport { addr: addr.to_string(), source: e }),
            Err(_) => Err(Error::Transport {
                addr: addr.to_string(),
                source: crate::TransportError::Timeout { addr: addr.to_string() },
            }),
        }
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<()> {
        let mut rx = self.applied.clone();
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
        let res = tokio::time::timeout(left, async { rx.wait_for(|a| a.index >= index).await.map(|_| ()) }).await;
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::Shutdown),
            Err(_) => Err(Error::NoLeader { reason: format!("local replica did not reach index {index} in time") }),
        }
    }

    // ----- writes -----

    /// The format this node writes (the lowest its members read).
    pub(crate) fn cluster_format(&self) -> u32 {
        self.format.get()
    }

    pub(crate) fn set_cluster_format(&self, format: u32) {
        let before = self.format.get();
        self.format.set(format);
        let now = self.format.get();
        if now != before {
            tracing::info!(node = self.cfg.node_id, from = before, to = now, "cluster format changed");
        }
    }

    /// Refuses a command some member could not apply.
    fn gate(&self, command: &Command) -> Result<()> {
        gate(command.format(), self.format.get())
    }

    pub(crate) async fn propose(&self, command: Command) -> Result<CommandResponse> {
        self.check_open()?;
        self.gate(&command)?;
        let proposed = Instant::now();
        let deadline = proposed + self.cfg.request_timeout;
        let mut hint: Option<(NodeId, String)> = None;
        let mut last_err = String::from("no leader known");
        loop {
            self.check_open()?;
            let target = hint.take().or_else(|| self.leader());
            match target {
                Some((id, _)) if id == self.cfg.node_id => match self.write_local(command.clone(), deadline).await {
                    Ok(ProposeReply::Applied { response, .. }) => {
                        crate::observe::committed(proposed.elapsed());
                        return Ok(response);
                    }
                    Ok(ProposeReply::NotLeader(h)) => {
                        hint = h.leader.filter(|(l, _)| *l != self.cfg.node_id);
                        last_err = "leadership changed".into();
                    }
                    Ok(ProposeReply::Failed { reason }) => last_err = reason,
                    Err(e) => return Err(e),
                },
                Some((id, addr)) => {
                    let req = ProposeRequest { command: command.clone() };
                    // A leader that died mid-call never answers: once another leader is known,
                    // send the write there (the request id makes a double apply impossible).
                    let reply = tokio::select! {
                        r = self.call::<_, ProposeReply>(&addr, service::PROPOSE, &req, deadline) => r,
                        () = self.leader_moved_from(id) => {
                            hint = self.leader();
                            tracing::debug!(node = self.cfg.node_id, old = id, new = ?hint.as_ref().map(|h| h.0), "forwarded write moves to the new leader");
                            last_err = format!("node {id} is no longer the leader");
                            continue;
                        }
                    };
                    match reply {
                        Ok(ProposeReply::Applied { response, index }) => {
                            self.wait_applied(index, deadline).await?;
                            crate::observe::committed(proposed.elapsed());
                            return Ok(response);
                        }
                        Ok(ProposeReply::NotLeader(h)) => {
                            hint = h.leader.filter(|(l, _)| *l != id);
                            last_err = format!("node {id} is no longer the leader");
                        }
                        Ok(ProposeReply::Failed { reason }) => last_err = reason,
                        Err(e) => last_err = e.to_string(),
                    }
                }
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::NoLeader { reason: last_err });
            }
            if hint.is_none() {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }

    /// Runs a write on this node, which must be the leader.
    async fn write_local(&self, command: Command, deadline: Instant) -> Result<ProposeReply> {
        if !self.is_leader() {
            return Ok(ProposeReply::NotLeader(self.hint()));
        }
        if let Err(e) = self.gate(&command) {
            return Ok(ProposeReply::Failed { reason: e.to_string() });
        }
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        let timed_out = || ProposeReply::Failed { reason: "timed out waiting for a quorum".into() };
        if let Command::Txn { txn, .. } = &command {
            let size = txn_size(txn);
            let (reply, rx) = tokio::sync::oneshot::channel();
            self.batcher.send(Pending { command, size, reply }).map_err(|_| Error::Shutdown)?;
            return match tokio::time::timeout(left, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(Error::Shutdown),
                Err(_) => Ok(timed_out()),
            };
        }
        match tokio::time::timeout(left, client_write(&self.raft, command)).await {
            Ok(r) => r,
            Err(_) => Ok(timed_out()),
        }
    }

    pub(crate) async fn txn(&self, txn: crate::Txn) -> Result<crate::TxnResult> {
        let size = txn_size(&txn);
        if size > MAX_TXN_BYTES {
            return Err(Error::TooLarge { what: "transaction", size, limit: MAX_TXN_BYTES });
        }
        let request = RequestId::new(self.cfg.node_id);
        match self.propose(Command::Txn { request, txn }).await? {
            CommandResponse::Txn(r) => Ok(r),
            CommandResponse::Failed(e) => Err(e.into()),
            other => Err(Error::raft("txn", format!("unexpected answer {other:?}"))),
        }
    }

    pub(crate) async fn lease_grant(&self, ttl: Duration) -> Result<u64> {
        let request = RequestId::new(self.cfg.node_id);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        match self.propose(Command::LeaseGrant { request, ttl_ms }).await? {
            CommandResponse::LeaseGranted { lease, .. } => Ok(lease),
            CommandResponse::Failed(e) => Err(e.into()),
            other => Err(Error::raft("lease grant", format!("unexpected answer {other:?}"))),
        }
    }

    pub(crate) async fn lease_revoke(&self, lease: u64) -> Result<u64> {
        let request = RequestId::new(self.cfg.node_id);
        match self.propose(Command::LeaseRevoke { request, lease }).await? {
            CommandResponse::LeaseRevoked { revision } => Ok(revision),
            CommandResponse::Failed(e) => Err(e.into()),
            other => Err(Error::raft("lease revoke", format!("unexpected answer {other:?}"))),
        }
    }

    fn lease_ttl(&self, lease: u64) -> Result<Option<u64>> {
        let db = self.db()?;
        let r = db.begin_read().map_err(|e| Error::db("read lease", e))?;
        let t = r.open_table(LEASES).map_err(|e| Error::db("read lease", e))?;
        Ok(t.get(lease).map_err(|e| Error::db("read lease", e))?.map(|v| v.value()))
    }

    fn keepalive_local(&self, lease: u64) -> Result<KeepaliveReply> {
        if !self.is_leader() {
            return Ok(KeepaliveReply::NotLeader(self.hint()));
        }
        match self.lease_ttl(lease)? {
            Some(ttl_ms) => {
                lock(&self.lease_deadlines).insert(lease, Instant::now() + Duration::from_millis(ttl_ms));
                Ok(KeepaliveReply::Alive { ttl_ms })
            }
            None => Ok(KeepaliveReply::NotFound),
        }
    }

    /// Refreshes a lease on the leader (no log write): its keys live another TTL.
    pub(crate) async fn lease_keepalive(&self, lease: u64) -> Result<Duration> {
        self.check_open()?;
        let deadline = Instant::now() + self.cfg.request_timeout;
        let mut last_err = String::from("no leader known");
        loop {
            let reply = match self.leader() {
                Some((id, _)) if id == self.cfg.node_id => Some(self.keepalive_local(lease)?),
                Some((id, addr)) => {
                    let reply = tokio::select! {
                        r = self.call::<_, KeepaliveReply>(&addr, service::KEEPALIVE, &lease, deadline) => r,
                        () = self.leader_moved_from(id) => continue,
                    };
                    match reply {
                        Ok(r) => Some(r),
                        Err(e) => {
                            last_err = e.to_string();
                            None
                        }
                    }
                }
                None => None,
            };
            match reply {
                Some(KeepaliveReply::Alive { ttl_ms }) => return Ok(Duration::from_millis(ttl_ms)),
                Some(KeepaliveReply::NotFound) => return Err(Error::LeaseNotFound { lease }),
                Some(KeepaliveReply::NotLeader(_)) | None => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::NoLeader { reason: last_err });
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    // ----- linearizable reads -----

    pub(crate) async fn sync(&self) -> Result<()> {
        self.check_open()?;
        let deadline = Instant::now() + self.cfg.request_timeout;
        let mut last_err = String::from("no leader known");
        loop {
            match self.leader() {
                Some((id, _)) if id == self.cfg.node_id => {
                    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
                    match tokio::time::timeout(left, self.raft.ensure_linearizable()).await {
                        Ok(Ok(_)) => return Ok(()),
                        Ok(Err(RaftError::Fatal(_))) => return Err(Error::Shutdown),
                        Ok(Err(e)) => last_err = e.to_string(),
                        Err(_) => last_err = "timed out confirming leadership".into(),
                    }
                }
                Some((id, addr)) => {
                    // As for writes: a leader that died mid-call never answers, so ask the next
                    // leader as soon as one is known.
                    let reply = tokio::select! {
                        r = self.call::<_, ReadIndexReply>(&addr, service::READ_INDEX, &(), deadline) => r,
                        () = self.leader_moved_from(id) => {
                            tracing::debug!(node = self.cfg.node_id, old = id, "read index moves to the new leader");
                            continue;
                        }
                    };
                    match reply {
                        Ok(ReadIndexReply::Index(i)) => return self.wait_applied(i, deadline).await,
                        Ok(ReadIndexReply::NotLeader(_)) => last_err = "leadership changed".into(),
                        Ok(ReadIndexReply::Failed { reason }) => last_err = reason,
                        Err(e) => last_err = e.to_string(),
                    }
                }
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::NoLeader { reason: last_err });
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    async fn read_index_local(&self) -> ReadIndexReply {
        if !self.is_leader() {
            return ReadIndexReply::NotLeader(self.hint());
        }
        let t = self.cfg.request_timeout;
        match tokio::time::timeout(t, self.raft.get_read_log_id()).await {
            Ok(Ok((read, _))) => ReadIndexReply::Index(read.map_or(0, |l| l.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                ReadIndexReply::NotLeader(self.hint())
            }
            Ok(Err(e)) => ReadIndexReply::Failed { reason: e.to_string() },
            Err(_) => ReadIndexReply::Failed { reason: "timed out confirming leadership".into() },
        }
    }

    // ----- membership -----

    pub(crate) async fn initialize(&self) -> Result<()> {
        let mut members = BTreeMap::new();
        members.insert(self.cfg.node_id, BasicNode { addr: self.cfg.addr.clone() });
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(Error::raft("initialize", e)),
        }
    }

    pub(crate) async fn is_initialized(&self) -> Result<bool> {
        self.raft.is_initialized().await.map_err(|_| Error::Shutdown)
    }

    async fn add_learner_local(&self, req: AddLearnerRequest) -> AdminReply {
        if !self.is_leader() {
            return AdminReply::NotLeader(self.hint());
        }
        {
            let m = self.raft.metrics();
            let m = m.borrow();
            if m.membership_config.membership().get_node(&req.node_id).is_some_and(|n| n.addr == req.addr) {
                return AdminReply::Done;
            }
        }
        let t = self.cfg.request_timeout;
        match tokio::time::timeout(t, self.raft.add_learner(req.node_id, BasicNode { addr: req.addr }, false)).await {
            Ok(Ok(_)) => AdminReply::Done,
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => AdminReply::NotLeader(self.hint()),
            Ok(Err(e)) => AdminReply::Failed { reason: e.to_string() },
            Err(_) => AdminReply::Failed { reason: "timed out adding learner".into() },
        }
    }

    pub(crate) async fn add_learner(&self, node_id: NodeId, addr: String) -> Result<()> {
        self.check_open()?;
        let deadline = Instant::now() + self.cfg.request_timeout;
        let mut last_err = String::from("no leader known");
        let req = AddLearnerRequest { node_id, addr };
        loop {
            let local = self.add_learner_local(req.clone());
            let reply = self.admin_attempt(service::ADD_LEARNER_LEADER, &req, deadline, &mut last_err, local).await;
            match reply {
                Some(AdminReply::Done) => return Ok(()),
                Some(AdminReply::Failed { reason }) => last_err = reason,
                Some(AdminReply::NotLeader(_)) | None => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::NoLeader { reason: last_err });
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// One try of a leader-only admin request: `local` when this node leads, else `svc` on the
    /// leader; None (and `last_err` set when a call failed) when no leader answered.
    async fn admin_attempt<Req: Serialize>(
        &self,
        svc: &'static str,
        req: &Req,
        deadline: Instant,
        last_err: &mut String,
        local: impl std::future::Future<Output = AdminReply>,
    ) -> Option<AdminReply> {
        match self.leader() {
            Some((id, _)) if id == self.cfg.node_id => Some(local.await),
            Some((_, addr)) => match self.call::<_, AdminReply>(&addr, svc, req, deadline).await {
                Ok(r) => Some(r),
                Err(e) => {
                    *last_err = e.to_string();
                    None
                }
            },
            None => None,
        }
    }

    async fn remove_member_local(&self, node_id: NodeId) -> AdminReply {
        if !self.is_leader() {
            return AdminReply::NotLeader(self.hint());
        }
        if node_id == self.cfg.node_id {
            return AdminReply::Failed {
                reason: "the node to remove leads the cluster: stop shoal on it first, then remove it".into(),
            };
        }
        let (voters, learners) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let mem = m.membership_config.membership();
            if mem.get_joint_config().len() > 1 {
                return AdminReply::Failed { reason: "a membership change is in progress; try again".into() };
            }
            (mem.voter_ids().collect::<BTreeSet<u64>>(), mem.learner_ids().collect::<BTreeSet<u64>>())
        };
        let t = self.cfg.request_timeout;
        if voters.contains(&node_id) {
            let mut rest: BTreeSet<u64> = voters.iter().copied().filter(|id| *id != node_id).collect();
            // Two members left: one voter and one learner, the layout of a two-node cluster
            // (with two voters, losing either would stop the cluster).
            if rest.len() == 2 && learners.is_empty() {
                rest = [self.cfg.node_id].into();
            }
            tracing::info!(node = self.cfg.node_id, removed = node_id, voters = ?rest, "removing a voter");
            match tokio::time::timeout(t, self.raft.change_membership(ChangeMembers::ReplaceAllVoters(rest), true))
                .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return AdminReply::Failed { reason: format!("demoting the member: {e}") },
                Err(_) => return AdminReply::Failed { reason: "timed out demoting the member".into() },
            }
        } else if !learners.contains(&node_id) {
            return AdminReply::Done;
        }
        match tokio::time::timeout(t, self.raft.change_membership(ChangeMembers::RemoveNodes([node_id].into()), false))
            .await
        {
            Ok(Ok(_)) => AdminReply::Done,
            Ok(Err(e)) => AdminReply::Failed { reason: format!("removing the member: {e}") },
            Err(_) => AdminReply::Failed { reason: "timed out removing the member".into() },
        }
    }

    /// Removes a member from the group for good (forwarded to the leader). A voter is demoted
    /// first; when two members remain, the one that does not lead becomes a learner.
    pub(crate) async fn remove_member(&self, node_id: NodeId) -> Result<()> {
        self.check_open()?;
        let deadline = Instant::now() + self.cfg.request_timeout * 2;
        let mut last_err = String::from("no leader known");
        loop {
            let local = self.remove_member_local(node_id);
            let reply =
                self.admin_attempt(service::REMOVE_MEMBER_LEADER, &node_id, deadline, &mut last_err, local).await;
            match reply {
                Some(AdminReply::Done) => return Ok(()),
                Some(AdminReply::Failed { reason }) => return Err(Error::Raft { operation: "remove member", reason }),
                Some(AdminReply::NotLeader(_)) | None => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::NoLeader { reason: last_err });
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Asks the node at `addr` (any member) to add this node as a learner.
    pub(crate) async fn join_via(&self, addr: &str) -> Result<()> {
        self.check_open()?;
        let deadline = Instant::now() + self.cfg.request_timeout;
        let req = AddLearnerRequest { node_id: self.cfg.node_id, addr: self.cfg.addr.clone() };
        loop {
            let err = match self.call::<_, AdminReply>(addr, service::ADD_LEARNER, &req, deadline).await {
                Ok(AdminReply::Done) => return Ok(()),
                Ok(AdminReply::Failed { reason }) => reason,
                Ok(AdminReply::NotLeader(_)) => "no leader".into(),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::NoLeader { reason: err });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(crate) async fn reconcile_voters(&self, healthy: &BTreeSet<u64>, now: Instant) -> Result<Option<VoterChange>> {
        self.check_open()?;
        let (voters, learners, joint) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let mem = m.membership_config.membership();
            let voters: BTreeSet<u64> = mem.voter_ids().collect();
            let learners: BTreeSet<u64> = mem.learner_ids().collect();
            (voters, learners, mem.get_joint_config().len() > 1)
        };
        let members: BTreeSet<u64> = voters.union(&learners).copied().collect();
        let change = {
            let mut h = lock(&self.health);
            h.observe(&members, healthy, now);
            if !self.is_leader() || joint {
                return Ok(None);
            }
            plan(
                self.cfg.node_id,
                &voters,
                &learners,
                healthy,
                &h,
                now,
                Grace { voter: self.cfg.voter_grace, learner: self.cfg.learner_grace },
            )
        };
        let Some(change) = change else { return Ok(None) };
        let changes = match &change {
            VoterChange::Promote { node_id } => {
                // Promote every healthy learner needed at once: one joint change from 1 to 3
                // voters never leaves the group at 2 voters, where losing either stops it.
                let want = if members.len() >= 5 { 5 } else { 3 };
                let mut ids: BTreeSet<u64> = [*node_id].into();
                for id in learners.iter().filter(|id| healthy.contains(id)) {
                    if voters.len() + ids.len() >= want {
                        break;
                    }
                    ids.insert(*id);
                }
                ChangeMembers::AddVoterIds(ids)
            }
            VoterChange::Replace { removed, added } => {
                let mut v = voters.clone();
                v.remove(removed);
                v.insert(*added);
                ChangeMembers::ReplaceAllVoters(v)
            }
            VoterChange::Demote { node_id } => ChangeMembers::RemoveVoters([*node_id].into()),
            VoterChange::RemoveLearner { node_id } => ChangeMembers::RemoveNodes([*node_id].into()),
        };
        tracing::info!(node = self.cfg.node_id, change = ?change, "changing voters");
        match tokio::time::timeout(self.cfg.request_timeout, self.raft.change_membership(changes, true)).await {
            Ok(Ok(_)) => Ok(Some(change)),
            Ok(Err(e)) => Err(Error::raft("change voters", e)),
            Err(_) => Err(Error::raft("change voters", "timed out")),
        }
    }

    /// openraft's view of this node's role and leader, updated on every change.
    pub(crate) fn server_metrics(&self) -> watch::Receiver<ServerMetrics> {
        self.raft.server_metrics()
    }

    pub(crate) fn status(&self) -> StoreStatus {
        let m = self.raft.metrics();
        let m = m.borrow();
        let mem = m.membership_config.membership();
        let voters: BTreeSet<u64> = mem.voter_ids().collect();
        let members = mem
            .nodes()
            .map(|(id, n)| MemberStatus {
                node_id: *id,
                addr: n.addr.clone(),
                role: if voters.contains(id) { Role::Voter } else { Role::Learner },
            })
            .collect();
        StoreStatus {
            node_id: self.cfg.node_id,
            leader: m.current_leader,
            term: m.current_term,
            applied_index: m.last_applied.map_or(0, |l| l.index),
            revision: self.revision(),
            members,
        }
    }

    // ----- watch -----

    pub(crate) fn watch(&self, prefix: &str, after: Option<u64>) -> Result<WatchStream> {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let mut live = self.notices.subscribe();
        let db = self.db()?;
        let (backlog, mut last) = {
            let r = db.begin_read().map_err(|e| Error::db("read history", e))?;
            let revision = read_revision(&r)?;
            let t = r.open_table(EVENTS).map_err(|e| Error::db("read history", e))?;
            let oldest = match t.first().map_err(|e| Error::db("read history", e))? {
                Some((k, _)) => k.value(),
                None => revision + 1,
            };
            let after = after.unwrap_or(revision);
            if after + 1 < oldest && after < revision {
                return Err(Error::Compacted { requested: after, oldest });
            }
            let mut backlog = Vec::new();
            for item in t.range(after.saturating_add(1)..).map_err(|e| Error::db("read history", e))? {
                let (_, v) = item.map_err(|e| Error::db("read history", e))?;
                let events: Vec<WatchEvent> = decode("events", v.value())?;
                backlog.extend(events.into_iter().filter(|e| e.kv.key.starts_with(prefix)));
            }
            (backlog, after.max(revision))
        };
        drop(db);
        let prefix = prefix.to_string();
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            for ev in backlog {
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            loop {
                let notice = tokio::select! {
                    n = live.recv() => n,
                    _ = cancel.cancelled() => return,
                };
                match notice {
                    Ok(Notice::Events(events)) => {
                        for ev in events.iter() {
                            if ev.revision <= last || !ev.kv.key.starts_with(&prefix) {
                                continue;
                            }
                            match tx.try_send(Ok(ev.clone())) {
                                Ok(()) => {}
                                Err(mpsc::error::TrySendError::Full(_)) => {
                                    let _ = tx.try_send(Err(Error::Compacted { requested: last, oldest: last }));
                                    return;
                                }
                                Err(mpsc::error::TrySendError::Closed(_)) => return,
                            }
                        }
                        if let Some(ev) = events.last() {
                            last = last.max(ev.revision);
                        }
                    }
                    Ok(Notice::Reset { revision }) => {
                        let _ = tx.send(Err(Error::Compacted { requested: last, oldest: revision + 1 })).await;
                        return;
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

    // ----- peers -----

    pub(crate) async fn handle_rpc(&self, svc: &str, body: &[u8]) -> Result<Vec<u8>> {
        self.check_open()?;
        let (base, framed) = service::base(svc);
        if !framed {
            return self.serve(base, body).await;
        }
        let (format, payload) = match crate::version::unframe("peer message", body) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(node = self.cfg.node_id, service = base, error = %e, "refusing a peer message");
                return Err(e);
            }
        };
        Ok(crate::version::frame(format, self.serve(base, payload).await?))
    }

    async fn serve(&self, svc: &str, body: &[u8]) -> Result<Vec<u8>> {
        match svc {
            service::APPEND => {
                let req = decode("append entries request", body)?;
                let res = self.raft.append_entries(req).await;
                // A heartbeat or entries from the leader of our term (a higher vote here means
                // the sender is a stale leader).
                if matches!(&res, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
                    self.heard_now();
                    *lock(&self.leader_contact) = Some(Instant::now());
                }
                encode("reply", &res)
            }
            service::VOTE => {
                let req = decode("vote request", body)?;
                let res = self.raft.vote(req).await;
                if matches!(&res, Ok(r) if r.vote_granted) {
                    self.heard_now();
                }
                encode("reply", &res)
            }
            service::SNAPSHOT => {
                let req: openraft::raft::InstallSnapshotRequest<crate::raft_types::TypeConfig> =
                    decode("install snapshot request", body)?;
                // A chunk lands at its offset: refuse offsets that would make the receiver
                // allocate more than any real snapshot needs.
                let end = usize::try_from(req.offset).unwrap_or(usize::MAX).saturating_add(req.data.len());
                if end > MAX_SNAPSHOT_BYTES {
                    return Err(Error::TooLarge { what: "snapshot", size: end, limit: MAX_SNAPSHOT_BYTES });
                }
                let res = self.raft.install_snapshot(req).await;
                if res.is_ok() {
                    self.heard_now();
                    *lock(&self.leader_contact) = Some(Instant::now());
                }
                encode("reply", &res)
            }
            service::PROPOSE => {
                let req: ProposeRequest = decode("propose request", body)?;
                if let Command::Batch(_) = req.command {
                    return encode(
                        "reply",
                        &ProposeReply::Failed { reason: "batches are formed by the leader".into() },
                    );
                }
                let deadline = Instant::now() + self.cfg.request_timeout;
                encode("reply", &self.write_local(req.command, deadline).await?)
            }
            service::READ_INDEX => {
                let () = decode("read index request", body)?;
                encode("reply", &self.read_index_local().await)
            }
            service::ADD_LEARNER => {
                let req: AddLearnerRequest = decode("add learner request", body)?;
                let reply = match self.add_learner(req.node_id, req.addr).await {
                    Ok(()) => AdminReply::Done,
                    Err(e) => AdminReply::Failed { reason: e.to_string() },
                };
                encode("reply", &reply)
            }
            service::ADD_LEARNER_LEADER => {
                let req: AddLearnerRequest = decode("add learner request", body)?;
                encode("reply", &self.add_learner_local(req).await)
            }
            service::REMOVE_MEMBER_LEADER => {
                let node_id: NodeId = decode("remove member request", body)?;
                encode("reply", &self.remove_member_local(node_id).await)
            }
            base if base == service::base(service::PRE_VOTE).0 => {
                let req: PreVoteRequest = decode("pre-vote request", body)?;
                encode("reply", &self.pre_vote_local(&req))
            }
            service::KEEPALIVE => {
                let lease: u64 = decode("keepalive request", body)?;
                encode("reply", &self.keepalive_local(lease)?)
            }
            other => Err(Error::UnknownService { service: other.to_string() }),
        }
    }

    // ----- backup and shutdown -----

    pub(crate) fn backup(&self, path: &Path) -> Result<u64> {
        let db = self.db()?;
        crate::backup::write_backup(&db, path)
    }

    pub(crate) async fn shutdown(&self) -> Result<()> {
        if self.shut.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.cancel.cancel();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown failed");
        }
        self.db.write().unwrap_or_else(|p| p.into_inner()).take();
        // Wait until the log writer and state machine have let go of the file, so it can be
        // opened again at once.
        for _ in 0..200 {
            if self.db_closed.load(Ordering::Acquire) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        tracing::warn!(node = self.cfg.node_id, "store file still in use after shutdown");
        Ok(())
    }

    // ----- elections -----

    fn heard_now(&self) {
        *lock(&self.last_heard) = Instant::now();
    }

    /// How long this follower lets its leader stay silent before it stands for election
    /// itself. The other voters refuse to vote while the leader's lease (openraft's
    /// `election_timeout_max` since its last heartbeat) runs, so asking earlier is useless;
    /// asking just after it spares the random election timeout openraft would wait on top.
    /// The voters other than the silent leader go in turn, by node id, half a heartbeat
    /// apart, so that two of them do not split the vote. After leaders replaced in a row the
    /// wait grows (see [`Churn`]).
    fn silence_before_election(&self, voters: &BTreeSet<NodeId>, leader: Option<NodeId>) -> Duration {
        let rank = voters.iter().filter(|v| Some(**v) != leader).position(|v| *v == self.cfg.node_id).unwrap_or(0);
        let hb = self.cfg.heartbeat_ms;
        let lease = Duration::from_millis(self.cfg.election_timeout_max_ms);
        let churn = lock(&self.churn).extra_wait(lease, Instant::now());
        Duration::from_millis(
            self.cfg.election_timeout_max_ms + hb / 4 + hb / 2 * rank as u64 + self.cfg.candidacy_delay_ms,
        ) + churn
    }

    /// Stands for election at once, as if the leader had been silent past its lease.
    pub(crate) async fn stand_for_election(&self) -> Result<()> {
        let st = self.raft.metrics().borrow().state;
        if st != ServerState::Follower {
            return Ok(());
        }
        tracing::info!(node = self.cfg.node_id, "asked to stand for election; standing");
        self.heard_now();
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| Error::Raft { operation: "stand for election", reason: e.to_string() })
    }

    /// Whether this node would vote for `req`'s candidate now: it does not lead, it has not
    /// heard from a leader for the shortest election timeout, and the candidate's log is at
    /// least as new as its own (the checks of a real vote, without raising any term).
    fn pre_vote_local(&self, req: &PreVoteRequest) -> PreVoteReply {
        if self.raft.metrics().borrow().state == ServerState::Leader {
            return PreVoteReply::Refused { reason: "I lead".into() };
        }
        let quiet = Duration::from_millis(self.cfg.election_timeout_min_ms);
        if let Some(at) = *lock(&self.leader_contact) {
            if at.elapsed() < quiet {
                return PreVoteReply::Refused {
                    reason: format!("heard from the leader {} ms ago", at.elapsed().as_millis()),
                };
            }
        }
        let mine = self.log_tail.last_log_id();
        if req.last_log_id < mine {
            return PreVoteReply::Refused {
                reason: format!("candidate's log ends at {:?}, mine at {mine:?}", req.last_log_id),
            };
        }
        PreVoteReply::Granted
    }

    /// Asks the other voters for a pre-vote; whether a majority (this node included) grants
    /// it. Skipped (true) while a member reads a format older than [`crate::version::PRE_VOTE_FORMAT`]
    /// (older releases neither ask nor answer).
    /// Returns as soon as the outcome is known; a peer that does not answer in time refuses.
    async fn pre_vote(&self, voters: &BTreeSet<NodeId>) -> bool {
        if self.format.get() < crate::version::PRE_VOTE_FORMAT {
            return true;
        }
        let peers: Vec<String> = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            voters
                .iter()
                .filter(|id| **id != self.cfg.node_id)
                .filter_map(|id| membership.get_node(id).map(|n| n.addr.clone()))
                .collect()
        };
        let req = PreVoteRequest { candidate: self.cfg.node_id, last_log_id: self.log_tail.last_log_id() };
        let need = voters.len() / 2 + 1;
        let mut granted = 1;
        let mut left = peers.len();
        if granted >= need {
            return true;
        }
        let until = Instant::now() + Duration::from_millis(self.cfg.heartbeat_ms.max(50));
        let req = &req;
        let mut calls: futures::stream::FuturesUnordered<_> = peers
            .iter()
            .map(|addr| async move { (addr, self.call::<_, PreVoteReply>(addr, service::PRE_VOTE, req, until).await) })
            .collect();
        let mut refusals = Vec::new();
        while let Some((addr, reply)) = futures::StreamExt::next(&mut calls).await {
            left -= 1;
            match reply {
                Ok(PreVoteReply::Granted) => granted += 1,
                Ok(PreVoteReply::Refused { reason }) => refusals.push(format!("{addr}: {reason}")),
                Err(e) => refusals.push(format!("{addr}: {e}")),
            }
            if granted >= need {
                return true;
            }
            if granted + left < need {
                break;
            }
        }
        tracing::info!(node = self.cfg.node_id, granted, need, refusals = ?refusals, "pre-vote lost; not standing");
        false
    }

    /// Asks the leader directly whether it still leads (a read index, answered from its
    /// memory). A leader that answers is alive: a slow link or a busy board delayed its
    /// heartbeats, and an election would only unseat it.
    async fn leader_answers(&self, addr: &str, until: Instant) -> bool {
        let reply = self.call::<_, ReadIndexReply>(addr, service::READ_INDEX, &(), until).await;
        matches!(reply, Ok(ReadIndexReply::Index(_)))
    }

    /// One check of [`elect_loop`]: stands for election if the leader has been silent past
    /// its lease and does not answer a direct question either; returns when to check next.
    async fn check_leader_silence(&self) -> Instant {
        let now = Instant::now();
        let (voters, leader, state) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
            let leader = m.current_leader.and_then(|id| {
                let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
                Some((id, addr))
            });
            (voters, leader, m.state)
        };
        let wait = self.silence_before_election(&voters, leader.as_ref().map(|l| l.0));
        let probe_lead = Duration::from_millis(self.cfg.heartbeat_ms);
        if state == ServerState::Leader && voters.len() > 1 {
            // Heartbeats twice as often as openraft's own (which also bound an AppendEntries
            // call, so they stay long): the followers' lease stays fresh with a short
            // election timeout.
            let _ = self.raft.trigger().heartbeat().await;
            return now + probe_lead / 2;
        }
        let alone = voters.len() == 1 && voters.contains(&self.cfg.node_id);
        if alone && state != ServerState::Leader {
            // The only voter (after a restart, or a forced single voter): stand at once.
            let _ = self.raft.trigger().elect().await;
            return now + wait;
        }
        // A candidate whose election failed stands again after another silence of `wait`
        // (its count restarted when it became a candidate), the voters still in turn.
        let standing = matches!(state, ServerState::Follower | ServerState::Candidate);
        if !standing || voters.len() < 2 || !voters.contains(&self.cfg.node_id) {
            // Learners never stand.
            self.heard_now();
            return now + wait;
        }
        let heard = *lock(&self.last_heard);
        let probe_at = (heard + wait).checked_sub(probe_lead).unwrap_or(heard);
        if now < probe_at {
            return probe_at;
        }
        // Silent for almost the whole lease: ask the leader itself meanwhile.
        let deadline = heard + wait;
        let alive = match &leader {
            Some((id, addr)) if *id != self.cfg.node_id => {
                let answered = self.leader_answers(addr, deadline).await;
                tokio::time::sleep_until(deadline.into()).await;
                answered
            }
            _ => {
                tokio::time::sleep_until(deadline.into()).await;
                false
            }
        };
        let heard_again = *lock(&self.last_heard);
        if heard_again > heard {
            return heard_again + wait;
        }
        let leader_id = leader.as_ref().map(|l| l.0);
        let silent_ms = u64::try_from(Instant::now().duration_since(heard).as_millis()).unwrap_or(u64::MAX);
        if alive {
            tracing::info!(node = self.cfg.node_id, leader = ?leader_id, silent_ms, "leader silent but answering; no election");
            self.heard_now();
            return Instant::now() + wait;
        }
        if !matches!(self.raft.metrics().borrow().state, ServerState::Follower | ServerState::Candidate) {
            return Instant::now() + wait;
        }
        if !self.pre_vote(&voters).await {
            self.heard_now();
            return Instant::now() + wait;
        }
        tracing::info!(node = self.cfg.node_id, leader = ?leader_id, silent_ms, "leader silent past its lease; standing for election");
        self.heard_now();
        if let Err(e) = self.raft.trigger().elect().await {
            tracing::debug!(error = %e, "cannot start an election");
        }
        Instant::now() + wait
    }

    // ----- leases -----

    async fn expire_leases(&self) {
        if !self.is_leader() {
            lock(&self.lease_deadlines).clear();
            return;
        }
        let leases: Vec<(u64, u64)> = match self.db().and_then(|db| {
            let r = db.begin_read().map_err(|e| Error::db("read leases", e))?;
            let t = r.open_table(LEASES).map_err(|e| Error::db("read leases", e))?;
            let mut v = Vec::new();
            for item in t.iter().map_err(|e| Error::db("read leases", e))? {
                let (k, ttl) = item.map_err(|e| Error::db("read leases", e))?;
                v.push((k.value(), ttl.value()));
            }
            Ok(v)
        }) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read leases");
                return;
            }
        };
        let now = Instant::now();
        let expired: Vec<u64> = {
            let mut d = lock(&self.lease_deadlines);
            let live: BTreeSet<u64> = leases.iter().map(|(id, _)| *id).collect();
            d.retain(|id, _| live.contains(id));
            for (id, ttl) in &leases {
                // A lease this leader has not seen yet gets a full TTL from now (as after an
                // election in etcd).
                d.entry(*id).or_insert(now + Duration::from_millis(*ttl));
            }
            d.iter().filter(|(_, at)| **at <= now).map(|(id, _)| *id).collect()
        };
        for lease in expired {
            lock(&self.lease_deadlines).insert(lease, now + Duration::from_secs(1));
            let request = RequestId::new(self.cfg.node_id);
            let deadline = Instant::now() + Duration::from_secs(2);
            match self.write_local(Command::LeaseRevoke { request, lease }, deadline).await {
                Ok(ProposeReply::Applied { .. }) => {
                    tracing::info!(lease, "lease expired");
                    lock(&self.lease_deadlines).remove(&lease);
                }
                Ok(other) => tracing::debug!(lease, reply = ?other, "lease expiry not committed"),
                Err(e) => tracing::debug!(lease, error = %e, "lease expiry failed"),
            }
        }
    }
}

/// A command that needs format `needed` is refused while the cluster writes an older one.
fn gate(needed: u32, cluster: u32) -> Result<()> {
    if needed > cluster {
        return Err(Error::FormatGated { needed, cluster });
    }
    Ok(())
}

fn txn_size(txn: &crate::Txn) -> usize {
    txn.success
        .iter()
        .chain(txn.failure.iter())
        .map(|op| match op {
            crate::Op::Put { key, value, .. } => key.len() + value.len(),
            crate::Op::Delete { key } => key.len(),
            crate::Op::DeletePrefix { prefix } => prefix.len(),
        })
        .sum::<usize>()
        + txn.compares.len() * 16
}

async fn client_write(raft: &Raft, command: Command) -> Result<ProposeReply> {
    match raft.client_write(command).await {
        Ok(resp) => Ok(ProposeReply::Applied { response: resp.data, index: resp.log_id.index }),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Ok(ProposeReply::NotLeader(LeaderHint { leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)) }))
        }
        Err(RaftError::APIError(e)) => Ok(ProposeReply::Failed { reason: e.to_string() }),
        Err(RaftError::Fatal(_)) => Err(Error::Shutdown),
    }
}

/// Proposes queued transactions, several per log entry when they pile up.
async fn batch_loop(raft: Raft, mut rx: mpsc::UnboundedReceiver<Pending>, cancel: CancellationToken) {
    let permits = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = cancel.cancelled() => return,
        };
        let first = tokio::select! {
            p = rx.recv() => match p { Some(p) => p, None => return },
            _ = cancel.cancelled() => return,
        };
        let mut bytes = first.size;
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX_COMMANDS && bytes < BATCH_MAX_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.size;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if batch.len() == 1 {
                if let Some(p) = batch.pop() {
                    let r = client_write(&raft, p.command).await;
                    let _ = p.reply.send(r);
                }
                return;
            }
            let (commands, replies): (Vec<Command>, Vec<_>) = batch.into_iter().map(|p| (p.command, p.reply)).unzip();
            let n = commands.len();
            match client_write(&raft, Command::Batch(commands)).await {
                Ok(ProposeReply::Applied { response: CommandResponse::Batch(answers), index })
                    if answers.len() == n =>
                {
                    for (reply, response) in replies.into_iter().zip(answers) {
                        let _ = reply.send(Ok(ProposeReply::Applied { response, index }));
                    }
                }
                Ok(ProposeReply::Applied { response, .. }) => {
                    for reply in replies {
                        let reason = format!("unexpected answer to a batch: {response:?}");
                        let _ = reply.send(Ok(ProposeReply::Failed { reason }));
                    }
                }
                Ok(other) => {
                    for reply in replies {
                        let _ = reply.send(Ok(other.clone()));
                    }
                }
                Err(_) => {
                    for reply in replies {
                        let _ = reply.send(Err(Error::Shutdown));
                    }
                }
            }
        });
    }
}

fn read_revision(r: &redb::ReadTransaction) -> Result<u64> {
    let meta = r.open_table(crate::tables::SM_META).map_err(|e| Error::db("read", e))?;
    match meta.get("revision").map_err(|e| Error::db("read", e))? {
        Some(v) => decode("revision", v.value()),
        None => Ok(0),
    }
}

/// Stands for election once the leader has been silent past its lease (see
/// [`RaftNode::silence_before_election`]), instead of waiting out openraft's random election
/// timeout on top. Sleeps until the next possible deadline, so an idle healthy follower wakes
/// about once per lease; a change of role or leader restarts the count.
async fn elect_loop(node: Weak<RaftNode>, mut server: watch::Receiver<ServerMetrics>, cancel: CancellationToken) {
    let mut seen = {
        let s = server.borrow_and_update();
        (s.state, s.current_leader)
    };
    let mut next = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next.into()) => {
                let Some(node) = node.upgrade() else { return };
                next = node.check_leader_silence().await;
            }
            changed = server.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = {
                    let s = server.borrow_and_update();
                    (s.state, s.current_leader)
                };
                if now != seen {
                    seen = now;
                    let Some(node) = node.upgrade() else { return };
                    tracing::info!(node = node.cfg.node_id, state = ?seen.0, leader = ?seen.1, "raft role changed");
                    if let Some(level) = lock(&node.churn).observe(seen.1, Instant::now()) {
                        tracing::warn!(node = node.cfg.node_id, level,
                            "leaders replaced in a row (an overloaded machine?); waiting longer before standing");
                    }
                    node.heard_now();
                    next = node.check_leader_silence().await;
                }
            }
            () = cancel.cancelled() => return,
        }
    }
}

async fn lease_loop(node: Weak<RaftNode>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(LEASE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let Some(node) = node.upgrade() else { return };
        node.expire_leases().await;
    }
}

#[cfg(test)]
mod tests {
    use openraft::raft::InstallSnapshotRequest;

    use crate::raft_types::{SnapshotMeta, TypeConfig, Vote};
    use crate::testing::TestCluster;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn removing_the_third_voter_leaves_the_two_node_layout() {
        use crate::types::Role;
        let dir = tempfile::tempdir().unwrap();
        let mut c = TestCluster::start(dir.path(), 3).await.unwrap();
        let leader = c.wait_leader(std::time::Duration::from_secs(10)).await.unwrap();
        let gone = (1..=3).find(|id| *id != leader).unwrap();
        let other = (1..=3).find(|id| *id != leader && *id != gone).unwrap();
        // The leader cannot be removed, from any member.
        let e = c.store(other).remove_member(leader).await.unwrap_err();
        assert!(e.to_string().contains("stop shoal on it first"), "{e}");
        c.stop(gone).await.unwrap();
        // Asked of a member that does not lead: forwarded to the leader.
        c.store(other).remove_member(gone).await.unwrap();
        let st = c.store(leader).status();
        let roles: Vec<(u64, Role)> = st.members.iter().map(|m| (m.node_id, m.role)).collect();
        assert_eq!(roles.len(), 2, "{roles:?}");
        assert!(roles.contains(&(leader, Role::Voter)) && roles.contains(&(other, Role::Learner)), "{roles:?}");
        // Removing it again (or a stranger) is a no-op, and writes still commit.
        c.store(leader).remove_member(gone).await.unwrap();
        c.store(other).txn(crate::Txn::put("k", b"v".to_vec())).await.unwrap();
        c.stop_all().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_chunk_at_a_huge_offset_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = TestCluster::start(dir.path(), 1).await.unwrap();
        let req: InstallSnapshotRequest<TypeConfig> = InstallSnapshotRequest {
            vote: Vote::new(99, 2),
            meta: SnapshotMeta::default(),
            offset: u64::MAX / 2,
            data: vec![1, 2, 3],
            done: false,
        };
        let body = crate::codec::encode("test", &req).unwrap();
        let res = c.store(1).handle_rpc(super::service::SNAPSHOT, &body).await;
        assert!(matches!(res, Err(crate::Error::TooLarge { .. })), "got {res:?}");
        c.store(1).txn(crate::Txn::put("/ok", vec![1])).await.unwrap();
    }

    fn vote_body() -> Vec<u8> {
        let req: openraft::raft::VoteRequest<u64> = openraft::raft::VoteRequest::new(Vote::new(0, 9), None);
        crate::codec::encode("test", &req).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn old_and_new_message_formats_are_served_and_a_future_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = TestCluster::start(dir.path(), 1).await.unwrap();
        let s = c.store(1);
        // Format 1: the bare encoding older releases send, answered bare.
        let old = s.handle_rpc(super::service::VOTE, &vote_body()).await.unwrap();
        let _: Result<openraft::raft::VoteResponse<u64>, openraft::error::RaftError<u64>> =
            crate::codec::decode("reply", &old).unwrap();
        // Format 2: framed, under the framed name, answered framed.
        let svc = super::service::for_format(super::service::VOTE, 2);
        assert_eq!(svc, "raft.vote/v");
        let new = s.handle_rpc(svc, &crate::version::frame(2, vote_body())).await.unwrap();
        let _: Result<openraft::raft::VoteResponse<u64>, openraft::error::RaftError<u64>> =
            crate::network::reply_of(svc, &new).unwrap();
        // A future format is refused with an error naming it, and the store keeps working.
        let mut future = crate::version::frame(2, vote_body());
        future[3] = 9;
        let e = s.handle_rpc(svc, &future).await.unwrap_err();
        assert!(matches!(e, crate::Error::UnsupportedFormat { found: 9, .. }), "got {e:?}");
        // An unframed body under a framed name is refused too.
        assert!(s.handle_rpc(svc, &vote_body()).await.is_err());
        s.txn(crate::Txn::put("/ok", vec![1])).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_writing_different_formats_replicate() {
        use crate::network::WireFormat;
        let dir = tempfile::tempdir().unwrap();
        let c = TestCluster::start(dir.path(), 3).await.unwrap();
        c.reconcile_until(3, std::time::Duration::from_secs(20)).await.unwrap();
        // Node 1 writes format 2 (framed), node 2 format 3 (pre-votes), node 3 format 1 (bare,
        // as older releases do).
        assert_eq!(WireFormat::new().get(), 1, "a node starts at format 1 until told otherwise");
        c.store(1).set_cluster_format(2);
        assert_eq!(c.store(1).cluster_format(), 2);
        c.store(2).set_cluster_format(99);
        assert_eq!(c.store(2).cluster_format(), crate::version::FORMAT, "clamped to what it writes");
        c.store(3).set_cluster_format(1);
        for (i, id) in [1u64, 2, 3, 1, 2, 3].into_iter().enumerate() {
            c.store(id).txn(crate::Txn::put(format!("/k/{i}"), vec![i as u8])).await.unwrap();
        }
        for id in [1u64, 2, 3] {
            c.store(id).sync().await.unwrap();
            let (kvs, _) = c.store(id).range("/k/").await.unwrap();
            assert_eq!(kvs.len(), 6, "node {id}");
        }
    }

    #[test]
    fn a_command_above_the_cluster_format_is_refused() {
        use crate::raft_types::{Command, RequestId};
        let txn = Command::Txn { request: RequestId::new(1), txn: crate::Txn::put("/a", vec![]) };
        assert_eq!(txn.format(), 1, "every command today is format 1");
        assert_eq!(Command::Batch(vec![txn.clone(), txn]).format(), 1);
        assert!(super::gate(1, 1).is_ok());
        assert!(super::gate(2, 2).is_ok());
        let e = super::gate(2, 1).unwrap_err();
        assert!(matches!(e, crate::Error::FormatGated { needed: 2, cluster: 1 }), "got {e:?}");
        assert!(e.to_string().contains("finish upgrading"), "{e}");
    }
}
