//! Cluster membership and failure detection over chitchat (UDP gossip).
//!
//! Every node gossips its attributes (addresses, arch, capacity, readiness, ...) as string
//! key/values. Liveness is chitchat's phi detector plus a heartbeat-silence cap, damped against
//! flapping links (see `damping` and docs/gossip.md). Every datagram is sealed with the
//! cluster gossip key (see `crate::seal`); attributes are still readable by every member, so
//! never put secrets in them.

mod damping;
#[cfg(test)]
mod tests;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chitchat::transport::Socket;
use chitchat::{Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::damping::{DampingConfig, NodeLiveness, Transition};
use crate::error::{Error, Result};
use crate::seal::{GossipKeyring, Sealer};

/// Default UDP port of gossip.
pub const DEFAULT_GOSSIP_PORT: u16 = 7946;

/// How a node takes part in gossip. `MembershipConfig::new` fills the defaults.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Unique in the cluster; a restarted node keeps its name and gets a new generation.
    pub node_name: String,
    /// Nodes only gossip with nodes of the same cluster id.
    pub cluster_id: String,
    /// Where the gossip socket binds (port 0 picks a free one).
    pub gossip_addr: SocketAddr,
    /// What peers use to reach this node; `None` means `gossip_addr`. A port of 0 is replaced
    /// by the bound port. Must not be an unspecified IP (0.0.0.0) when peers are remote.
    pub advertise_addr: Option<SocketAddr>,
    /// "ip:port" or "host:port" of nodes already in the cluster (DNS names are re-resolved
    /// every minute).
    pub seeds: Vec<String>,
    /// Distinguishes this run of the node from earlier ones; must grow across restarts.
    /// `None` takes the current Unix time in milliseconds.
    pub generation: Option<u64>,
    /// One gossip round: every round the node gossips with up to 3 live nodes, maybe a dead
    /// one and maybe a seed.
    pub gossip_interval: Duration,
    /// chitchat's phi threshold: a node is suspected once the silence since its last
    /// heartbeat exceeds `phi_threshold` mean heartbeat intervals.
    pub phi_threshold: f64,
    /// The prior mean heartbeat interval (weight 5 samples) right after a node appears.
    pub initial_interval: Duration,
    /// Heartbeat intervals longer than this are left out of the mean.
    pub max_interval: Duration,
    /// Heartbeat samples kept per node.
    pub sampling_window_size: usize,
    /// A node whose heartbeat has not advanced for this long is dead, whatever phi says.
    pub dead_after: Duration,
    /// Base hold before a node that died is reported alive again (doubles per recent death).
    pub revive_hold: Duration,
    /// Upper bound of the revive hold.
    pub revive_hold_max: Duration,
    /// Deaths older than this no longer lengthen the revive hold.
    pub flap_window: Duration,
    /// A dead node's state is forgotten after this long.
    pub dead_node_grace_period: Duration,
    /// Deleted attributes are kept as tombstones this long.
    pub marked_for_deletion_grace_period: Duration,
    /// The gossip keys. `MembershipConfig::new` leaves plaintext (the keyring of a cluster
    /// without a key); the daemon always passes the cluster's keyring.
    pub keyring: GossipKeyring,
}

impl MembershipConfig {
    pub fn new(node_name: impl Into<String>, cluster_id: impl Into<String>, gossip_addr: SocketAddr) -> Self {
        Self {
            node_name: node_name.into(),
            cluster_id: cluster_id.into(),
            gossip_addr,
            advertise_addr: None,
            seeds: Vec::new(),
            generation: None,
            gossip_interval: Duration::from_millis(250),
            phi_threshold: 8.0,
            initial_interval: Duration::from_millis(250),
            max_interval: Duration::from_secs(2),
            sampling_window_size: 1000,
            dead_after: Duration::from_millis(2500),
            revive_hold: Duration::from_secs(2),
            revive_hold_max: Duration::from_secs(60),
            flap_window: Duration::from_secs(600),
            dead_node_grace_period: Duration::from_secs(3600),
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            keyring: GossipKeyring::default(),
        }
    }

    /// Rejects values chitchat cannot work with (it would panic or never see a node alive).
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason| Err(Error::InvalidMembershipConfig { reason });
        if self.node_name.is_empty() {
            return invalid("node_name is empty");
        }
        if self.gossip_interval.is_zero() {
            return invalid("gossip_interval must be positive");
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold > 0.0) {
            return invalid("phi_threshold must be a positive number");
        }
        if self.initial_interval.is_zero() {
            return invalid("initial_interval must be positive");
        }
        if self.sampling_window_size == 0 {
            return invalid("sampling_window_size must be at least 1");
        }
        if self.dead_after < self.gossip_interval {
            return invalid("dead_after must be at least one gossip_interval");
        }
        if let Err(reason) = self.keyring.validate() {
            return Err(Error::InvalidGossipKeyring { reason });
        }
        Ok(())
    }

    fn damping(&self) -> DampingConfig {
        DampingConfig {
            dead_after: self.dead_after,
            revive_hold: self.revive_hold,
            revive_hold_max: self.revive_hold_max,
            flap_window: self.flap_window,
        }
    }
}

/// One node as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub gossip_addr: SocketAddr,
    /// Current generation (changes when the node restarts).
    pub generation: u64,
    /// Damped liveness; the local node is always alive.
    pub alive: bool,
    pub attrs: BTreeMap<String, String>,
}

/// A running gossip participant.
pub struct Membership {
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    self_id: ChitchatId,
    members: watch::Receiver<Vec<Member>>,
    heard: Heard,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
    handle: Mutex<Option<ChitchatHandle>>,
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    sealer: Sealer,
    flaps: Arc<AtomicU64>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").field("self", &self.self_id).finish()
    }
}

impl Membership {
    /// Binds the gossip socket and starts gossiping.
    pub async fn start(cfg: MembershipConfig, initial_attrs: BTreeMap<String, String>) -> Result<Self> {
        Self::start_with_loss(cfg, initial_attrs, Arc::new(LinkLoss::default())).await
    }

    pub(crate) async fn start_with_loss(
        cfg: MembershipConfig,
        initial_attrs: BTreeMap<String, String>,
        loss: Arc<LinkLoss>,
    ) -> Result<Self> {
        cfg.validate()?;
        let socket = tokio::net::UdpSocket::bind(cfg.gossip_addr)
            .await
            .map_err(|source| Error::BindGossip { addr: cfg.gossip_addr, source })?;
        let bound = socket.local_addr().map_err(|e| Error::StartGossip(e.into()))?;
        let sealer = Sealer::new(cfg.keyring.clone()).map_err(|reason| Error::InvalidGossipKeyring { reason })?;
        let socket =
            wire::SealedSocket::new(socket, sealer.clone(), loss).await.map_err(|e| Error::StartGossip(e.into()))?;
        let mut advertise = cfg.advertise_addr.unwrap_or(cfg.gossip_addr);
        if advertise.port() == 0 {
            advertise.set_port(bound.port());
        }
        if advertise.ip().is_unspecified() {
            warn!(advertise = %advertise, "gossip advertise address is unspecified: remote peers cannot reach this node");
        }
        let generation = cfg
            .generation
            .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0));
        let self_id = ChitchatId::new(cfg.node_name.clone(), generation, advertise);
        let chitchat_config = ChitchatConfig {
            chitchat_id: self_id.clone(),
            cluster_id: cfg.cluster_id.clone(),
            gossip_interval: cfg.gossip_interval,
            listen_addr: bound,
            seed_nodes: cfg.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: cfg.phi_threshold,
                sampling_window_size: cfg.sampling_window_size,
                max_interval: cfg.max_interval,
                initial_interval: cfg.initial_interval,
                dead_node_grace_period: cfg.dead_node_grace_period,
            },
            marked_for_deletion_grace_period: cfg.marked_for_deletion_grace_period,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let transport = PreparedTransport { socket: Mutex::new(Some(Box::new(socket))) };
        let handle = chitchat::spawn_chitchat(chitchat_config, initial_attrs.into_iter().collect(), &transport)
            .await
            .map_err(|e| Error::StartGossip(e.into()))?;
        let chitchat = handle.chitchat();
        let (tx, rx) = watch::channel(Vec::new());
        let changed = Arc::new(Notify::new());
        let heard = Heard::default();
        let flaps = Arc::new(AtomicU64::new(0));
        let shutdown = CancellationToken::new();
        let watcher = Watcher {
            chitchat: chitchat.clone(),
            self_id: self_id.clone(),
            damping: cfg.damping(),
            tick: (cfg.gossip_interval / 2).max(Duration::from_millis(20)),
            nodes: HashMap::new(),
            tx,
            heard: heard.clone(),
            changed: changed.clone(),
            flaps: flaps.clone(),
        };
        watcher.refresh().await;
        let watcher = tokio::spawn(watcher.run(shutdown.clone()));
        let keyring = sealer.keyring();
        if keyring.is_sealed() {
            info!(node = %cfg.node_name, generation, gossip = %bound, advertise = %advertise, key = ?keyring.primary, "gossip started");
        } else {
            warn!(node = %cfg.node_name, generation, gossip = %bound, advertise = %advertise, "gossip started without a gossip key: any host of the network can forge membership; run `shoal gossip-key rotate` once every node runs this version");
        }
        Ok(Self {
            chitchat,
            self_id,
            members: rx,
            heard,
            changed,
            shutdown,
            handle: Mutex::new(Some(handle)),
            watcher: Mutex::new(Some(watcher)),
            sealer,
            flaps,
        })
    }

    /// The gossip keyring in use and the counters of refused datagrams; setting a new keyring
    /// on it takes effect with the next datagram.
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// How many times a member that came back was held dead by flap damping (see `damping`).
    pub fn flaps_damped(&self) -> u64 {
        self.flaps.load(Ordering::Relaxed)
    }

    /// The address peers gossip with this node on.
    pub fn advertise_addr(&self) -> SocketAddr {
        self.self_id.gossip_advertise_addr
    }

    pub fn generation(&self) -> u64 {
        self.self_id.generation_id
    }

    /// Sets one of this node's attributes; it spreads with the next gossip rounds.
    pub async fn set_attr(&self, key: &str, value: &str) {
        self.chitchat.lock().await.self_node_state().set(key, value);
        self.changed.notify_one();
    }

    /// Removes one of this node's attributes.
    pub async fn delete_attr(&self, key: &str) {
        let mut chitchat = self.chitchat.lock().await;
        let state = chitchat.self_node_state();
        if state.get(key).is_some() {
            state.delete(key);
        }
        drop(chitchat);
        self.changed.notify_one();
    }

    /// Every known node, this one included, sorted by name.
    pub fn members(&self) -> Vec<Member> {
        self.members.borrow().clone()
    }

    /// When this node last heard a fresh heartbeat of `name` (wall clock; now for this node).
    /// Kept apart from [`Self::members`], whose subscribers wake only when liveness or
    /// attributes change, not on every heartbeat.
    pub fn last_heard(&self, name: &str) -> Option<SystemTime> {
        if *name == *self.self_id.node_id {
            return Some(SystemTime::now());
        }
        lock(&self.heard.0).get(name).copied()
    }

    /// Follows [`Self::members`]; a new value is published on every change.
    pub fn subscribe(&self) -> watch::Receiver<Vec<Member>> {
        self.members.clone()
    }

    /// Stops gossiping; peers then see this node go silent and mark it dead.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let watcher = lock(&self.watcher).take();
        if let Some(watcher) = watcher {
            let _ = watcher.await;
        }
        let handle = lock(&self.handle).take();
        if let Some(handle) = handle {
            if let Err(error) = handle.shutdown().await {
                warn!(error = %error, "gossip server stopped with an error");
            }
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(handle) = lock(&self.handle).take() {
            let _ = handle.initiate_shutdown();
        }
    }
}

/// Per node, the wall-clock time its heartbeat last advanced.
#[derive(Debug, Clone, Default)]
struct Heard(Arc<Mutex<HashMap<String, SystemTime>>>);

struct Watcher {
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    self_id: ChitchatId,
    damping: DampingConfig,
    tick: Duration,
    nodes: HashMap<String, NodeLiveness>,
    tx: watch::Sender<Vec<Member>>,
    heard: Heard,
    changed: Arc<Notify>,
    flaps: Arc<AtomicU64>,
}

impl Watcher {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                _ = self.changed.notified() => {}
            }
            self.observe().await;
        }
    }

    /// Publishes the current view without advancing liveness (used once at start).
    async fn refresh(&self) {
        let members = {
            let chitchat = self.chitchat.lock().await;
            self_member(&chitchat, &self.self_id).into_iter().collect::<Vec<_>>()
        };
        self.tx.send_replace(members);
    }

    async fn observe(&mut self) {
        let now = Instant::now();
        let chitchat = self.chitchat.lock().await;
        let live: std::collections::HashSet<&ChitchatId> = chitchat.live_nodes().collect();
        // The current incarnation of each node: the live generation, else the newest one.
        let mut current: HashMap<&str, &ChitchatId> = HashMap::new();
        for id in chitchat.node_states().keys() {
            if id.node_id == self.self_id.node_id {
                continue;
            }
            let better = match current.get(&*id.node_id) {
                None => true,
                Some(prev) => {
                    let (id_live, prev_live) = (live.contains(id), live.contains(*prev));
                    (id_live && !prev_live) || (id_live == prev_live && id.generation_id > prev.generation_id)
                }
            };
            if better {
                current.insert(&id.node_id, id);
            }
        }
        let mut members: Vec<Member> = self_member(&chitchat, &self.self_id).into_iter().collect();
        for (name, id) in &current {
            let Some(state) = chitchat.node_state(id) else {
                continue;
            };
            let heartbeat: u64 = state.heartbeat().into();
            let liveness = self
                .nodes
                .entry(name.to_string())
                .or_insert_with(|| NodeLiveness::new(now, id.generation_id, heartbeat));
            let damped = liveness.damped();
            let transition = liveness.observe(&self.damping, now, id.generation_id, heartbeat, live.contains(*id));
            self.flaps.fetch_add(liveness.damped() - damped, Ordering::Relaxed);
            if liveness.heartbeat_changed_at() == now {
                lock(&self.heard.0).insert(name.to_string(), SystemTime::now());
            }
            match transition {
                Transition::Died => info!(node = %name, generation = id.generation_id, "node marked dead"),
                Transition::Revived => info!(node = %name, generation = id.generation_id, "node marked alive"),
                Transition::None => {}
            }
            members.push(Member {
                name: name.to_string(),
                gossip_addr: id.gossip_advertise_addr,
                generation: id.generation_id,
                alive: liveness.alive(),
                attrs: state.key_values().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            });
        }
        let known: std::collections::HashSet<String> = current.keys().map(|name| name.to_string()).collect();
        drop(chitchat);
        self.nodes.retain(|name, _| known.contains(name));
        lock(&self.heard.0).retain(|name, _| known.contains(name));
        members.sort_by(|a, b| a.name.cmp(&b.name));
        self.tx.send_if_modified(|old| {
            if *old == members {
                false
            } else {
                debug!(members = members.len(), "membership changed");
                *old = members;
                true
            }
        });
    }
}

fn self_member(chitchat: &Chitchat, self_id: &ChitchatId) -> Option<Member> {
    let state = chitchat.node_state(self_id)?;
    Some(Member {
        name: self_id.node_id.to_string(),
        gossip_addr: self_id.gossip_advertise_addr,
        generation: self_id.generation_id,
        alive: true,
        attrs: state.key_values().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Drops a share of gossip datagrams in both directions (per mille), to exercise damping.
#[derive(Debug, Default)]
pub(crate) struct LinkLoss {
    per_mille: AtomicU64,
}

impl LinkLoss {
    #[cfg(test)]
    pub(crate) fn set(&self, per_mille: u64) {
        self.per_mille.store(per_mille.min(1000), Ordering::Relaxed);
    }

    fn drop_now(&self) -> bool {
        let p = self.per_mille.load(Ordering::Relaxed);
        p > 0 && rand::random_range(0..1000) < p
    }
}

/// Hands chitchat the socket bound before it started, so the advertised port is known.
struct PreparedTransport {
    socket: Mutex<Option<Box<dyn Socket>>>,
}

#[async_trait]
impl chitchat::transport::Transport for PreparedTransport {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        lock(&self.socket).take().ok_or_else(|| anyhow::anyhow!("gossip socket already handed out"))
    }
}
