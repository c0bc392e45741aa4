//! `shoal up`: the wiring of one node. Creates, joins or rejoins the cluster, then runs the
//! peer transport, the replicated store, gossip membership, the control socket, the
//! Kubernetes API and, on the Raft leader only, the controllers and the scheduler. A witness
//! runs the first five only and hands the leadership to a workload voter (`handover`).
pub(crate) mod ca_key;
pub(crate) mod gossip_keys;
pub(crate) mod handover;
pub mod identity;
pub(crate) mod join_tokens;
pub(crate) mod leader_lease;
pub(crate) mod metrics;
pub(crate) mod peers;
mod revocations;
pub(crate) mod sa_keys;
pub(crate) mod secrets_encryption;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::json;
use shoal_gossip::membership::{Member, Membership, MembershipConfig};
use shoal_gossip::pki::{ClusterSecrets, JoinToken};
use shoal_gossip::transport::{JoinRequest, Transport};
use shoal_store::{Store, StoreConfig};
use tokio_util::sync::CancellationToken;

use crate::config::NodeConfig;
use crate::control::{self, Request};
use identity::{Identity, NodeState};
pub use peers::NodeRecord;

/// Gossip attribute: the node's role (`worker`, `witness`); absent on older nodes (workers).
pub(crate) const ATTR_ROLE: &str = "role";
/// Gossip attribute: the shoal version the node runs.
pub(crate) const ATTR_VERSION: &str = "version";
/// Gossip attribute: the newest peer message format the node reads (absent on releases before
/// formats existed: format 1). See `shoal_store::version`.
pub(crate) const ATTR_FORMAT: &str = "format";

/// Page cache of a witness's store file.
const WITNESS_STORE_CACHE_BYTES: usize = 2 << 20;

/// Where to join: the `--join` host (and optional port) and the token.
#[derive(Debug, Clone)]
pub struct JoinTarget {
    pub host: String,
    pub token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("data dir {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error("{0}")]
    Conflict(String),
    #[error("invalid join target {0:?}: use HOST or HOST:PORT")]
    JoinTarget(String),
    #[error("joining the cluster at {addr}")]
    Join {
        addr: SocketAddr,
        #[source]
        source: Box<shoal_gossip::Error>,
    },
    #[error("cluster certificates")]
    Pki(#[source] Box<shoal_gossip::Error>),
    #[error("peer transport on {addr}")]
    Transport {
        addr: SocketAddr,
        #[source]
        source: Box<shoal_gossip::Error>,
    },
    #[error("gossip membership")]
    Membership(#[source] Box<shoal_gossip::Error>),
    #[error("opening the store in {path}")]
    Store {
        path: PathBuf,
        #[source]
        source: Box<shoal_store::Error>,
    },
    #[error("control socket")]
    Control(#[from] control::ControlError),
    #[error("Kubernetes API")]
    Api(#[source] crate::api::Error),
}

/// The host name, for the default node name.
fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "shoal".into())
}

/// The address of the interface that holds the default route (no packet is sent).
fn default_address() -> IpAddr {
    let probe = || -> std::io::Result<IpAddr> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.connect("192.0.2.1:9")?;
        Ok(s.local_addr()?.ip())
    };
    probe().unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// Resolves `HOST` or `HOST:PORT` with a default port.
fn resolve(host: &str, default_port: u16) -> Result<SocketAddr, ClusterError> {
    use std::net::ToSocketAddrs;
    let with_port = if host.parse::<SocketAddr>().is_ok()
        || (host.contains(':') && !host.contains("::") && host.matches(':').count() == 1)
    {
        host.to_string()
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        SocketAddr::new(ip, default_port).to_string()
    } else {
        format!("{host}:{default_port}")
    };
    with_port.to_socket_addrs().ok().and_then(|mut a| a.next()).ok_or_else(|| ClusterError::JoinTarget(host.into()))
}

/// Everything a running node holds.
pub(crate) struct Node {
    pub cfg: NodeConfig,
    pub identity: Identity,
    pub secrets: ClusterSecrets,
    pub node_cert_pem: String,
    pub node_key_pem: String,
    pub transport: Transport,
    pub store: Store,
    pub membership: Membership,
    pub objects: shoal_kube::Objects,
    /// Which node announces each LoadBalancer IP (set once the announcer runs).
    pub lb_announced: std::sync::OnceLock<tokio::sync::watch::Receiver<Vec<crate::lb::Announcement>>>,
    /// Pod and node usage gathered from every node agent.
    pub metrics: std::sync::OnceLock<Arc<crate::node::metrics::ClusterMetrics>>,
    /// Held while the gossip keyring is changed and saved.
    pub gossip_keys_lock: tokio::sync::Mutex<()>,
    /// One gossip or service account key rotation at a time from this node.
    pub rotation_lock: tokio::sync::Mutex<()>,
}

/// Runs a node until `shutdown`.
pub async fn run(cfg: NodeConfig, join: Option<JoinTarget>, shutdown: CancellationToken) -> Result<(), ClusterError> {
    let dir = cfg.data_dir.clone();
    std::fs::create_dir_all(&dir).map_err(|source| ClusterError::DataDir { path: dir.clone(), source })?;
    identity::restrict_data_dir(&dir).map_err(|source| ClusterError::DataDir { path: dir.clone(), source })?;
    let name = cfg.name.clone().unwrap_or_else(hostname);
    let advertise = cfg.advertise.unwrap_or_else(default_address);

    let (state, fresh_cluster, join_addr) = match (NodeState::load(&dir)?, join) {
        (Some(st), join) => {
            check_rejoin(&st, &cfg, join.as_ref())?;
            tracing::info!(name = %st.identity.name, node_id = st.identity.node_id, "rejoining with existing state");
            (st, false, None)
        }
        (None, None) => {
            let st = new_cluster(&cfg, &name, advertise)?;
            st.save(&dir)?;
            (st, true, None)
        }
        (None, Some(j)) => {
            let addr = resolve(&j.host, cfg.ports.peer)?;
            let st = join_cluster(&cfg, &name, advertise, addr, &j.token).await?;
            st.save(&dir)?;
            tracing::info!(%addr, "joined the cluster");
            (st, false, Some(addr))
        }
    };
    let identity = state.identity.clone();
    let peer_addr = SocketAddr::new(identity.advertise, identity.peer_port);

    // Peer transport (QUIC, mutual TLS).
    let tls = shoal_gossip::pki::NodeTls {
        ca_cert_pem: state.secrets.ca_cert_pem.clone(),
        cert_pem: state.node_cert_pem.clone(),
        key_pem: state.node_key_pem.clone(),
    };
    let bind = SocketAddr::new(bind_ip(identity.advertise), identity.peer_port);
    let transport = Transport::bind(bind, tls)
        .map_err(|source| ClusterError::Transport { addr: bind, source: Box::new(source) })?;

    // The replicated store.
    let mut store_cfg = StoreConfig {
        voter_grace: cfg.store.voter_grace,
        learner_grace: cfg.store.learner_grace,
        cache_bytes: Some(usize::try_from(cfg.store.cache_mb << 20).unwrap_or(usize::MAX)),
        ..StoreConfig::new(dir.join("store"), identity.node_id, peer_addr.to_string())
    };
    if cfg.node.role == crate::config::NodeRole::Witness {
        // A witness stands for election only after the workers had their turn, so the
        // leader (controllers, scheduler, LoadBalancer allocator) is a worker whenever one
        // is up; it still votes at once.
        store_cfg.candidacy_delay_ms = 2 * store_cfg.election_timeout_max_ms;
        // It reads little (Raft appends, the odd API read): a small page cache, not one that
        // grows with every page of the file it ever read.
        store_cfg.cache_bytes = Some(WITNESS_STORE_CACHE_BYTES);
    }
    let store = Store::open(store_cfg, peers::raft_transport(transport.clone()))
        .await
        .map_err(|source| ClusterError::Store { path: dir.join("store"), source: Box::new(source) })?;
    // Secrets are sealed before they reach the log, the file, snapshots and backups.
    let kek_source = secrets_encryption::enable(&store, &state.secrets)
        .map_err(|e| ClusterError::Conflict(format!("secrets encryption: {e}")))?;
    tracing::info!(key = ?kek_source, "secrets encrypted at rest");
    // The store holds every Secret: root only, whatever the umask was when it was created.
    identity::restrict_files(&dir.join("store"), 0o600)
        .map_err(|source| ClusterError::DataDir { path: dir.join("store"), source })?;
    peers::serve_store(&transport, &store);
    if fresh_cluster {
        store
            .initialize()
            .await
            .map_err(|source| ClusterError::Store { path: dir.join("store"), source: Box::new(source) })?;
    }
    peers::serve_joins(&transport, state.secrets.clone(), store.clone(), cfg.ports.clone());
    join_tokens::serve(&transport, store.clone());
    if fresh_cluster {
        // The first token, once the new store has elected itself.
        let (store, ca, d) = (store.clone(), state.secrets.ca_cert_pem.clone(), dir.clone());
        tokio::spawn(async move {
            for _ in 0..120 {
                match join_tokens::default_token(&store, &ca, &d).await {
                    Ok(token) => {
                        println!(
                            "created a new cluster; join other nodes with:\n  shoal up --join {advertise} --token-file FILE\n(FILE holding the token, valid 24 h; print it again with `shoal token`):\n  {token}"
                        );
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "first join token"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    // Gossip.
    let mut attrs = BTreeMap::new();
    attrs.insert("node_id".to_string(), identity.node_id.to_string());
    attrs.insert("peer_addr".to_string(), peer_addr.to_string());
    attrs.insert("api_addr".to_string(), SocketAddr::new(identity.advertise, identity.api_port).to_string());
    attrs.insert("arch".to_string(), std::env::consts::ARCH.to_string());
    attrs.insert("ready".to_string(), "true".to_string());
    attrs.insert(ATTR_ROLE.to_string(), cfg.node.role.as_str().to_string());
    attrs.insert(ATTR_VERSION.to_string(), env!("CARGO_PKG_VERSION").to_string());
    attrs.insert(ATTR_FORMAT.to_string(), shoal_store::version::FORMAT.to_string());
    if !cfg.node.runs_pods() {
        // Never elected to announce a LoadBalancer IP it would not announce.
        attrs.insert(crate::lb::ATTR_LB.to_string(), "false".to_string());
    }
    let seeds = peers::gossip_seeds(&store, join_addr, identity.gossip_port).await;
    let membership = Membership::start(
        MembershipConfig {
            gossip_interval: cfg.gossip.interval,
            advertise_addr: Some(SocketAddr::new(identity.advertise, identity.gossip_port)),
            generation: Some(identity::next_generation(&dir, wall_clock_ms())?),
            seeds: seeds.iter().map(|s| s.to_string()).collect(),
            keyring: state.secrets.gossip.clone(),
            ..MembershipConfig::new(
                identity.name.clone(),
                identity.cluster_id.clone(),
                SocketAddr::new(bind_ip(identity.advertise), identity.gossip_port),
            )
        },
        attrs,
    )
    .await
    .map_err(|e| ClusterError::Membership(Box::new(e)))?;

    // A node that joined asks the cluster to add it (retried until it is in).
    if let Some(addr) = join_addr {
        if let Err(reason) = peers::request_membership(&transport, addr, &identity).await {
            tracing::error!(%addr, %reason, "the cluster refused this node");
            node_shutdown(&store, &membership, &transport).await;
            return Err(ClusterError::Conflict(format!("the cluster at {addr} refused this node: {reason}")));
        }
        let mut st = NodeState::load(&dir)?.ok_or_else(|| ClusterError::Conflict("node state vanished".into()))?;
        st.identity.member = true;
        st.save(&dir)?;
    }

    let mut objects = shoal_kube::Objects::new(store.clone());
    if !cfg.api.event_ttl.is_zero() {
        objects = objects.with_event_ttl(cfg.api.event_ttl);
    }
    let node = Arc::new(Node {
        cfg: cfg.clone(),
        identity: identity.clone(),
        secrets: state.secrets.clone(),
        node_cert_pem: state.node_cert_pem.clone(),
        node_key_pem: state.node_key_pem.clone(),
        transport: transport.clone(),
        store: store.clone(),
        membership,
        objects,
        lb_announced: std::sync::OnceLock::new(),
        metrics: std::sync::OnceLock::new(),
        gossip_keys_lock: tokio::sync::Mutex::new(()),
        rotation_lock: tokio::sync::Mutex::new(()),
    });
    gossip_keys::serve(&node);
    ca_key::serve(&node);
    sa_keys::serve(&node);
    handover::serve(&node);

    let tasks = tokio_util::task::TaskTracker::new();
    let control_stop = CancellationToken::new();
    {
        let n = node.clone();
        let stop = control_stop.clone();
        let d = dir.clone();
        tasks.spawn(async move {
            let handler: Arc<dyn control::Handler> = Arc::new(ControlHandler { node: n });
            if let Err(e) = control::serve(&d, handler, stop).await {
                tracing::error!(error = %e, "control socket stopped");
            }
        });
    }
    let work_stop = CancellationToken::new();
    tasks.spawn(voter_loop(node.clone(), work_stop.clone()));
    tasks.spawn(gossip_keys::sync_loop(node.clone(), work_stop.clone()));
    tasks.spawn(ca_key::sync_loop(node.clone(), work_stop.clone()));
    tasks.spawn(sa_keys::sync_loop(node.clone(), work_stop.clone()));
    tasks.spawn(crate::wiring::run_services(node.clone(), work_stop.clone()));
    tasks.spawn(revocations::run(node.clone(), work_stop.clone()));
    tasks.close();
    tracing::info!(name = %identity.name, addr = %peer_addr, "node up");

    shutdown.cancelled().await;
    // Stop in order: API and controllers, then the control socket, then the store; gossip last.
    work_stop.cancel();
    control_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    if let Err(e) = node.store.shutdown().await {
        tracing::warn!(error = %e, "store shutdown");
    }
    node.membership.shutdown().await;
    transport.shutdown().await;
    Ok(())
}

async fn node_shutdown(store: &Store, membership: &Membership, transport: &Transport) {
    if let Err(e) = store.shutdown().await {
        tracing::warn!(error = %e, "store shutdown");
    }
    membership.shutdown().await;
    transport.shutdown().await;
}

fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Listening address for an advertised one: the unspecified address of its family.
fn bind_ip(advertise: IpAddr) -> IpAddr {
    match advertise {
        IpAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
        IpAddr::V6(_) => IpAddr::from([0u16; 8]),
    }
}

fn check_rejoin(st: &NodeState, cfg: &NodeConfig, join: Option<&JoinTarget>) -> Result<(), ClusterError> {
    let id = &st.identity;
    if let Some(n) = &cfg.name {
        if n != &id.name {
            return Err(ClusterError::Conflict(format!(
                "this data dir belongs to node {:?}, not {:?}: drop --name or use another --data-dir",
                id.name, n
            )));
        }
    }
    if let Some(a) = cfg.advertise {
        if a != id.advertise {
            return Err(ClusterError::Conflict(format!(
                "this node was created with address {}, not {a}: the cluster knows it by its first address",
                id.advertise
            )));
        }
    }
    if let Some(j) = join {
        if let Ok(tok) = JoinToken::parse(&j.token) {
            let ours =
                shoal_gossip::pki::ca_hash_hex(&st.secrets.ca_cert_pem).map_err(|e| ClusterError::Pki(Box::new(e)))?;
            if !ours.starts_with(&tok.ca_hash) {
                return Err(ClusterError::Conflict(
                    "this data dir belongs to another cluster than the --token's: remove the data dir to join the new one".into(),
                ));
            }
        }
    }
    Ok(())
}

fn new_cluster(cfg: &NodeConfig, name: &str, advertise: IpAddr) -> Result<NodeState, ClusterError> {
    let secrets = ClusterSecrets::generate("shoal").map_err(|e| ClusterError::Pki(Box::new(e)))?;
    let cert = secrets.issue_node_cert(name, &[advertise]).map_err(|e| ClusterError::Pki(Box::new(e)))?;
    node_state(cfg, name, advertise, secrets, cert.cert_pem, cert.key_pem, true)
}

async fn join_cluster(
    cfg: &NodeConfig,
    name: &str,
    advertise: IpAddr,
    addr: SocketAddr,
    token: &str,
) -> Result<NodeState, ClusterError> {
    // A join refused with "retry" (no leader during a failover, the leader out of reach) is
    // tried again a few times, 1, 2, 4 and 8 s apart; any other refusal is final at once.
    let mut wait = std::time::Duration::from_secs(1);
    let bundle = loop {
        let req = JoinRequest { name: name.into(), ips: vec![advertise] };
        match shoal_gossip::transport::join(addr, token, req).await {
            Ok(b) => break b,
            Err(e) if join_retryable(&e) && wait <= JOIN_RETRY_MAX_WAIT => {
                tracing::warn!(%addr, error = %e, retry_in = ?wait, "join refused for now; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(source) => return Err(ClusterError::Join { addr, source: Box::new(source) }),
        }
    };
    node_state(cfg, name, advertise, bundle.secrets, bundle.node_cert_pem, bundle.node_key_pem, false)
}

const JOIN_RETRY_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(8);

/// Whether a join refusal asks to be retried (its message ends with "retry").
fn join_retryable(e: &shoal_gossip::Error) -> bool {
    matches!(e, shoal_gossip::Error::JoinRefused { message } if message.trim_end().ends_with("retry"))
}

/// A node's state with a fresh Raft id; the cluster id is derived from the CA.
fn node_state(
    cfg: &NodeConfig,
    name: &str,
    advertise: IpAddr,
    secrets: ClusterSecrets,
    node_cert_pem: String,
    node_key_pem: String,
    member: bool,
) -> Result<NodeState, ClusterError> {
    let cluster_id =
        shoal_gossip::pki::ca_hash_hex(&secrets.ca_cert_pem).map_err(|e| ClusterError::Pki(Box::new(e)))?;
    Ok(NodeState {
        identity: Identity {
            name: name.into(),
            // Never 0: some tools treat it as "no node".
            node_id: rand::random::<u64>() | 1,
            cluster_id: cluster_id[..16.min(cluster_id.len())].to_string(),
            advertise,
            gossip_port: cfg.ports.gossip,
            peer_port: cfg.ports.peer,
            api_port: cfg.ports.api,
            member,
        },
        secrets,
        node_cert_pem,
        node_key_pem,
    })
}

/// Keeps the voters healthy: every second, tell the store which nodes gossip sees alive.
async fn voter_loop(node: Arc<Node>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(1000));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let members = node.membership.members();
        // A removed node (`shoal node remove`) is never healthy again, gossip or not.
        let removed = crate::auth::revocation::removed_nodes(&node.store).await;
        let healthy: BTreeSet<u64> = members
            .iter()
            .filter(|m| m.alive)
            .filter_map(|m| m.attrs.get("node_id").and_then(|s| s.parse().ok()))
            .filter(|id| !removed.contains(id))
            .collect();
        if let Err(e) = node.store.reconcile_voters(&healthy, Instant::now()).await {
            tracing::warn!(error = %e, "voter reconcile");
        }
        node.store.set_cluster_format(member_formats(&node, &members));
        readmit_returning(&node, &healthy).await;
    }
}

/// The format to write: the lowest any member of the Raft group reads (voters and learners
/// both apply entries). A member out of sight, or one that gossips no format (a release before
/// formats existed), counts as format 1, so an older node is never sent what it cannot read.
fn member_formats(node: &Node, members: &[Member]) -> u32 {
    let by_id: BTreeMap<u64, &Member> =
        members.iter().filter_map(|m| m.attrs.get("node_id").and_then(|s| s.parse().ok()).map(|id| (id, m))).collect();
    let formats = node.store.status().members.into_iter().map(|m| {
        if m.node_id == node.identity.node_id {
            return Some(shoal_store::version::FORMAT);
        }
        by_id.get(&m.node_id).and_then(|g| g.attrs.get(ATTR_FORMAT)).and_then(|f| f.parse().ok())
    });
    shoal_store::version::cluster_format(formats)
}

/// Whether the members run different versions (during a rolling upgrade), said plainly.
/// `members` holds each member's name, version and format (`None` where unknown).
pub(crate) fn version_skew(members: &[(String, Option<String>, Option<u32>)]) -> serde_json::Value {
    let mut seen: BTreeMap<(String, u32), Vec<&str>> = BTreeMap::new();
    let mut unknown = Vec::new();
    for (name, version, format) in members {
        match version {
            Some(v) => seen.entry((v.clone(), format.unwrap_or(1))).or_default().push(name),
            None => unknown.push(name.as_str()),
        }
    }
    let mixed = seen.len() > 1;
    let mut message = if mixed {
        let parts: Vec<String> =
            seen.iter().map(|((v, f), names)| format!("{v} (format {f}) on {}", names.join(", "))).collect();
        format!(
            "MIXED versions: {}; finish the upgrade (or roll back) one node at a time, see docs/operations.md",
            parts.join("; ")
        )
    } else {
        match seen.keys().next() {
            Some((v, f)) => format!("every member runs {v} (format {f})"),
            None => "no member version known".to_string(),
        }
    };
    if !unknown.is_empty() {
        message.push_str(&format!("; version unknown (out of sight) for {}", unknown.join(", ")));
    }
    json!({"mixed": mixed, "message": message})
}

/// On the leader: a node the cluster knows (it has a record) that is alive again but no longer
/// in the Raft group, because it was dropped as a dead learner, is added back as a learner.
/// The address comes from the record in the store, never from gossip.
async fn readmit_returning(node: &Node, healthy: &BTreeSet<u64>) {
    let st = node.store.status();
    if st.leader != Some(node.identity.node_id) {
        return;
    }
    let members: BTreeSet<u64> = st.members.iter().map(|m| m.node_id).collect();
    if healthy.iter().all(|id| members.contains(id)) {
        return;
    }
    let records = peers::node_records(&node.store).await;
    for id in healthy.iter().filter(|id| !members.contains(id)) {
        let Some(rec) = records.get(id) else { continue };
        tracing::info!(node = %rec.name, node_id = id, "a dropped node is back; adding it as a learner");
        if let Err(e) = node.store.add_learner(*id, rec.peer_addr.clone()).await {
            tracing::warn!(node = %rec.name, error = %e, "re-adding a returning node");
        }
    }
}

struct ControlHandler {
    node: Arc<Node>,
}

impl control::Handler for ControlHandler {
    fn handle(&self, req: Request) -> BoxFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(async move {
            let node = &self.node;
            match req {
                Request::Status => Ok(status_json(node).await),
                // Opened by control::serve_one itself; nothing to do here.
                Request::Session => Ok(serde_json::Value::Null),
                Request::GossipKeyRotate => {
                    gossip_keys::rotate(node, (node.cfg.gossip.interval * 8).max(Duration::from_secs(2))).await
                }
                Request::GossipKeyStatus => Ok(gossip_keys::status(node).await),
                Request::SaKeyStatus => Ok(sa_keys::status(node).await),
                Request::SaKeyRotate => sa_keys::rotate(node).await,
                Request::SaKeyRetire => sa_keys::retire(node).await,
                Request::NodeRemove { name } => remove_member(node, &name).await,
                Request::SecretsEncryptStatus => secrets_encryption::status(&node.store, &node.secrets).await,
                Request::SecretsEncryptRotate => secrets_encryption::rotate(&node.store).await,
                Request::Token => {
                    join_tokens::default_token(&node.store, &node.secrets.ca_cert_pem, &node.cfg.data_dir)
                        .await
                        .map(serde_json::Value::String)
                        .map_err(|e| error_chain(&e))
                }
                Request::TokenCreate { ttl_secs, uses, description } => {
                    let req = join_tokens::NewToken {
                        ttl_secs,
                        max_uses: uses,
                        description: description.unwrap_or_default(),
                    };
                    let (token, rec) = join_tokens::create(&node.store, &node.secrets.ca_cert_pem, req)
                        .await
                        .map_err(|e| error_chain(&e))?;
                    Ok(json!({"token": token, "record": rec.view(join_tokens::now_secs())}))
                }
                Request::TokenList => {
                    let now = join_tokens::now_secs();
                    let list = join_tokens::list(&node.store).await.map_err(|e| error_chain(&e))?;
                    Ok(serde_json::Value::Array(list.iter().map(|r| r.view(now)).collect()))
                }
                Request::TokenDelete { id } => {
                    let rec = join_tokens::delete(&node.store, &id).await.map_err(|e| error_chain(&e))?;
                    Ok(rec.view(join_tokens::now_secs()))
                }
                Request::Kubeconfig { server, user, groups, ttl_secs } => {
                    crate::wiring::kubeconfig(node, server, user, groups, ttl_secs).await.map(serde_json::Value::String)
                }
                Request::KubeconfigRevoke { user, serial, reason } => {
                    revocations::revoke(node, user, serial, reason).await
                }
                Request::Certificates => revocations::list(node).await,
                Request::KvPut { key, value } => {
                    let r = node
                        .store
                        .txn(shoal_store::Txn::put(key, value.into_bytes()))
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(json!({"revision": r.revision}))
                }
                Request::KvGet { key, linearizable } => {
                    if linearizable {
                        node.store.sync().await.map_err(|e| e.to_string())?;
                    }
                    match node.store.get(&key).await.map_err(|e| e.to_string())? {
                        Some(kv) => Ok(serde_json::Value::String(String::from_utf8_lossy(&kv.value).into_owned())),
                        None => Ok(serde_json::Value::Null),
                    }
                }
                Request::Backup { path } => {
                    // Every write acknowledged anywhere before the backup is in it.
                    node.store.sync().await.map_err(|e| e.to_string())?;
                    let rev = node.store.backup(&path).await.map_err(|e| e.to_string())?;
                    // A backup holds every Secret of the cluster.
                    identity::restrict_files(&path, 0o600).map_err(|e| format!("{}: {e}", path.display()))?;
                    Ok(json!({"revision": rev}))
                }
            }
        })
    }
}

/// `shoal node remove NAME`: takes a stopped member out of the Raft group (forwarded to the
/// leader), then deletes its record (so it is not re-admitted) and its Node object, if any.
async fn remove_member(node: &Node, name: &str) -> Result<serde_json::Value, String> {
    let name = shoal_gossip::pki::node_name_of(name);
    if name == node.identity.name {
        return Err(format!("{name} is this node: run `shoal node remove {name}` on another member"));
    }
    let records = peers::node_records(&node.store).await;
    let in_group: BTreeSet<u64> = node.store.status().members.iter().map(|m| m.node_id).collect();
    let Some(rec) = records.values().find(|r| r.name == name) else {
        return Err(format!("no member named {name:?} (see `shoal status`)"));
    };
    // Cut it off first: its certificates are revoked on every node, so a node still running
    // (or someone holding its disk) has its connections closed and refused from now on.
    let revoked = revocations::remove_node(node, name, rec.node_id).await?;
    // A running leader cut off that way loses its followers: wait for the next one (the
    // removal is a leader's act).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while node.store.status().leader == Some(rec.node_id) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    if in_group.contains(&rec.node_id) {
        node.store.remove_member(rec.node_id).await.map_err(|e| {
            format!("{name}'s certificates are revoked, but it is still a Raft member: {}", error_chain(&e))
        })?;
    }
    let key = format!("{}{name}", peers::NODES_PREFIX);
    node.store.txn(shoal_store::Txn::ops(vec![shoal_store::Op::Delete { key }])).await.map_err(|e| error_chain(&e))?;
    let nodes = shoal_kube::resources::lookup("", "nodes");
    match node.objects.delete(&nodes, None, name, shoal_kube::Preconditions::default()).await {
        Ok(_) | Err(shoal_kube::Error::NotFound { .. }) => {}
        Err(e) => return Err(format!("removed {name} from the cluster, but not its Node object: {e}")),
    }
    tracing::info!(node = %name, node_id = rec.node_id, "member removed");
    let voters = node.store.status().members.iter().filter(|m| m.role == shoal_store::Role::Voter).count();
    let message = format!("removed {name}; {}", fault_tolerance(voters)["message"].as_str().unwrap_or_default());
    Ok(json!({"node": name, "node_id": rec.node_id, "revoked": revoked["revoked"], "message": message}))
}

/// An error and its causes, "a: b: c".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// `shoal status --json`.
pub(crate) async fn status_json(node: &Node) -> serde_json::Value {
    let st = node.store.status();
    let members = node.membership.members();
    let by_id: BTreeMap<u64, &Member> =
        members.iter().filter_map(|m| m.attrs.get("node_id").and_then(|s| s.parse().ok()).map(|id| (id, m))).collect();
    let records = peers::node_records(&node.store).await;
    let name_of = |id: u64| -> String {
        by_id
            .get(&id)
            .map(|m| m.name.clone())
            .or_else(|| records.get(&id).map(|r| r.name.clone()))
            .unwrap_or_else(|| format!("node-{id:x}"))
    };
    // A gossip attribute of a member: this node's own value for itself, null when unknown
    // (the member is out of sight, or runs a version that does not gossip it: a worker).
    let attr_of = |id: u64, key: &str, own: &str| -> serde_json::Value {
        if id == node.identity.node_id {
            return json!(own);
        }
        match by_id.get(&id) {
            Some(m) => m
                .attrs
                .get(key)
                .map_or_else(|| if key == ATTR_ROLE { json!("worker") } else { serde_json::Value::Null }, |v| json!(v)),
            None => serde_json::Value::Null,
        }
    };
    // The format a member reads: its gossiped one; 1 for a member in sight that gossips none
    // (a release before formats existed); null when out of sight.
    let member_format = |id: u64| -> serde_json::Value {
        if id == node.identity.node_id {
            return json!(shoal_store::version::FORMAT);
        }
        match by_id.get(&id) {
            Some(m) => json!(m.attrs.get(ATTR_FORMAT).and_then(|f| f.parse::<u32>().ok()).unwrap_or(1)),
            None => serde_json::Value::Null,
        }
    };
    let list: Vec<serde_json::Value> = st
        .members
        .iter()
        .map(|m| {
            json!({
                "name": name_of(m.node_id),
                "node_id": m.node_id,
                "addr": m.addr,
                "role": match m.role { shoal_store::Role::Voter => "voter", shoal_store::Role::Learner => "learner" },
                "alive": m.node_id == node.identity.node_id || by_id.get(&m.node_id).is_some_and(|g| g.alive),
                "node_role": attr_of(m.node_id, ATTR_ROLE, node.cfg.node.role.as_str()),
                "version": attr_of(m.node_id, ATTR_VERSION, env!("CARGO_PKG_VERSION")),
                "format": member_format(m.node_id),
            })
        })
        .collect();
    let skew: Vec<(String, Option<String>, Option<u32>)> = list
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("?").to_string(),
                m["version"].as_str().map(str::to_string),
                m["format"].as_u64().and_then(|f| u32::try_from(f).ok()),
            )
        })
        .collect();
    let voters = st.members.iter().filter(|m| m.role == shoal_store::Role::Voter).count();
    json!({
        "name": node.identity.name,
        "node_id": node.identity.node_id,
        "cluster_id": node.identity.cluster_id,
        "leader": st.leader.map(name_of),
        "term": st.term,
        "applied_index": st.applied_index,
        "revision": st.revision,
        "members": list,
        "fault_tolerance": fault_tolerance(voters),
        "cluster_format": node.store.cluster_format(),
        "versions": version_skew(&skew),
        "load_balancer_ips": crate::wiring::lb_status(node).await,
        "gossip": gossip_status(node),
        // This process's resident memory (a witness's footprint, at a glance).
        "rss_bytes": std::fs::read_to_string("/proc/self/status").ok().as_deref().and_then(metrics::rss_bytes),
    })
}

/// How many voters may fail with the API still writable, said plainly.
pub(crate) fn fault_tolerance(voters: usize) -> serde_json::Value {
    let tolerates = voters.saturating_sub(1) / 2;
    let message = if tolerates == 0 {
        format!(
            "NO fault tolerance: {voters} voter{}; if {} down, the API stops accepting writes and \
             LoadBalancer IPs are withdrawn (add a third node or a witness; see `shoal promote --force` \
             in docs/operations.md to recover a survivor)",
            if voters == 1 { "" } else { "s" },
            if voters == 1 { "it goes" } else { "one goes" }
        )
    } else {
        format!("{voters} voters: the cluster stays writable with {tolerates} of them down")
    };
    json!({"voters": voters, "tolerates": tolerates, "message": message})
}

/// The gossip key in use and the datagrams refused (`shoal status --json`, `shoal gossip-key status`).
pub(crate) fn gossip_status(node: &Node) -> serde_json::Value {
    let sealer = node.membership.sealer();
    let ring = sealer.keyring();
    let stats = sealer.stats();
    json!({
        "sealed": ring.is_sealed(),
        "primary_key": ring.primary,
        "key_ids": ring.key_ids(),
        "accept_plaintext": ring.accept_plaintext,
        "epoch": ring.epoch,
        "datagrams_accepted": stats.accepted,
        "datagrams_dropped": stats.dropped,
        "datagrams_dropped_plaintext": stats.dropped_plaintext,
        "members": node
            .membership
            .members()
            .iter()
            .map(|m| json!({"name": m.name, "alive": m.alive, "generation": m.generation}))
            .collect::<Vec<_>>(),
    })
}

/// `shoal promote --force --data-dir DIR`, on a stopped node: makes it the only voter of its
/// cluster again, keeping its whole replicated state (etcd's `--force-new-cluster`). For the
/// survivor of a two-node cluster without a witness whose other node is gone for good.
pub fn promote_force(dir: &Path) -> Result<String, ClusterError> {
    let st = NodeState::load(dir)?
        .ok_or_else(|| ClusterError::Conflict(format!("{} holds no node: nothing to promote", dir.display())))?;
    if std::os::unix::net::UnixStream::connect(dir.join(crate::control::SOCKET)).is_ok() {
        return Err(ClusterError::Conflict(
            "shoal is running on this data dir: stop it first (systemctl stop shoal)".into(),
        ));
    }
    let store_dir = dir.join("store");
    let outcome = Store::force_single_voter(&store_dir, st.identity.node_id)
        .map_err(|source| ClusterError::Store { path: store_dir.clone(), source: Box::new(source) })?;
    Ok(match outcome {
        shoal_store::ForceOutcome::AlreadySingleVoter => {
            format!("{} is already the only member of its cluster; nothing changed", st.identity.name)
        }
        shoal_store::ForceOutcome::Forced { index, dropped } => format!(
            "{} is now the only voter of its cluster (membership entry {index}; {} member(s) dropped).\n\
             Start it with `shoal up`. Never start a dropped node with its old data dir: wipe it and \
             join it again with a new token.",
            st.identity.name,
            dropped.len()
        ),
    })
}

/// `shoal restore FILE --data-dir DIR`: a fresh data dir holding the backup's state, as a
/// new one-node cluster (new CA and token) named `name` at `advertise`; `shoal up` there
/// starts it and other nodes join it, as after `etcdutl snapshot restore`.
pub fn restore(
    file: &Path,
    dir: &Path,
    name: Option<String>,
    advertise: Option<IpAddr>,
    secrets_from: Option<&Path>,
) -> Result<String, ClusterError> {
    // The backup's Secrets are sealed with data keys wrapped by the old cluster's key.
    let old_kek = match secrets_from {
        Some(p) => Some(secrets_encryption::kek_from_file(p).map_err(ClusterError::Conflict)?),
        None => None,
    };
    let encrypted = Store::backup_is_encrypted(file)
        .map_err(|source| ClusterError::Store { path: file.into(), source: Box::new(source) })?;
    if encrypted && old_kek.is_none() {
        return Err(ClusterError::Conflict(
            "the backup holds encrypted Secrets: add --secrets-from PATH/secrets.json (from a node of the \
             backed-up cluster) so the restored cluster can read them"
                .to_string(),
        ));
    }
    if NodeState::load(dir)?.is_some() || dir.join("store").exists() {
        return Err(ClusterError::Conflict(format!("{} is not empty: restore into a fresh data dir", dir.display())));
    }
    std::fs::create_dir_all(dir).map_err(|source| ClusterError::DataDir { path: dir.into(), source })?;
    identity::restrict_data_dir(dir).map_err(|source| ClusterError::DataDir { path: dir.into(), source })?;
    let cfg = NodeConfig { data_dir: dir.into(), ..NodeConfig::default() };
    let name = name.unwrap_or_else(hostname);
    let advertise = advertise.unwrap_or_else(default_address);
    let mut st = new_cluster(&cfg, &name, advertise)?;
    if let Some(kek) = old_kek {
        st.secrets.secrets_encryption_key = Some(hex::encode(kek).into());
    }
    let addr = SocketAddr::new(advertise, cfg.ports.peer).to_string();
    let rev = Store::restore(file, dir.join("store"), st.identity.node_id, &addr)
        .map_err(|source| ClusterError::Store { path: dir.join("store"), source: Box::new(source) })?;
    st.save(dir)?;
    Ok(format!(
        "restored revision {rev} into {} as node {name} ({advertise}); start it with `shoal up --data-dir {}`",
        dir.display(),
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::{fault_tolerance, version_skew};

    #[test]
    fn status_warns_when_members_run_different_versions() {
        let m = |n: &str, v: Option<&str>, f: Option<u32>| (n.to_string(), v.map(str::to_string), f);
        let same = version_skew(&[m("a", Some("0.2.0"), Some(2)), m("b", Some("0.2.0"), Some(2))]);
        assert_eq!(same["mixed"], false, "{same}");
        assert_eq!(same["message"], "every member runs 0.2.0 (format 2)");
        // Same version string, different format: a build from before formats existed.
        let old = version_skew(&[m("a", Some("0.1.0"), Some(2)), m("b", Some("0.1.0"), None)]);
        assert_eq!(old["mixed"], true, "{old}");
        let msg = old["message"].as_str().unwrap();
        assert!(msg.starts_with("MIXED versions") && msg.contains("format 1) on b"), "{msg}");
        let gone = version_skew(&[m("a", Some("0.2.0"), Some(2)), m("c", None, None)]);
        assert_eq!(gone["mixed"], false);
        assert!(gone["message"].as_str().unwrap().contains("unknown (out of sight) for c"), "{gone}");
    }

    #[test]
    fn status_says_plainly_when_there_is_no_fault_tolerance() {
        for voters in [1, 2] {
            let v = fault_tolerance(voters);
            assert_eq!(v["tolerates"], 0);
            assert!(v["message"].as_str().unwrap().starts_with("NO fault tolerance"), "{v}");
        }
        let v = fault_tolerance(3);
        assert_eq!(v["tolerates"], 1);
        assert!(v["message"].as_str().unwrap().contains("with 1 of them down"), "{v}");
        assert_eq!(fault_tolerance(5)["tolerates"], 2);
    }
}

#[cfg(test)]
mod join_retry_tests {
    use super::*;

    #[test]
    fn only_refusals_that_ask_for_it_are_retried() {
        let refused = |m: &str| shoal_gossip::Error::JoinRefused { message: m.to_string() };
        assert!(join_retryable(&refused("no cluster leader right now; retry")));
        assert!(join_retryable(&refused(
            "the cluster leader could not be reached to sign the certificate (timeout); retry"
        )));
        assert!(!join_retryable(&refused("invalid join token")));
        assert!(!join_retryable(&refused("join token expired")));
    }
}
