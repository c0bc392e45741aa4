//! Starts the components of a running node and moves the leader-only ones with leadership.
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::api::{ApiConfig, MetricsSource, NodeHeartbeats, TlsMaterial};
use crate::controllers::{ControllerConfig, ControllerManager, NodeHealth};
use crate::lb::{GossipView, LbAllocator, LbAnnouncer, LinuxAnnouncer};
use crate::node::{AgentConfig, NodeAgent};
use crate::proxy::Proxy;
use crate::scheduler::Scheduler;
use crate::streams::PodStreams;

use tokio_util::sync::CancellationToken;

use crate::cluster::ca_key::signing_secrets;
use crate::cluster::{Node, NodeRecord};
use crate::config::NodeRole;

/// Runs every component of the node until `stop`.
pub(crate) async fn run_services(node: Arc<Node>, stop: CancellationToken) {
    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(register_self(node.clone(), stop.clone()));
    if node.cfg.node.role == NodeRole::Witness {
        run_witness(&node, &tasks, stop.clone());
        tasks.close();
        stop.cancelled().await;
        tasks.wait().await;
        return;
    }
    let health = node_health(&node, &tasks, stop.clone());
    tasks.spawn(leader_duties(node.clone(), health, stop.clone()));
    // Logs and exec of any pod through any node: served locally or proxied over QUIC.
    crate::node::register_streams(&node.transport, &node.cfg.data_dir, &node.identity.name);
    let streams = Some(crate::node::streams(
        Some(node.transport.clone()),
        node.store.clone(),
        &node.cfg.data_dir,
        &node.identity.name,
    ));
    let metrics = crate::node::metrics(
        Some(node.transport.clone()),
        node.objects.clone(),
        node.store.clone(),
        &node.identity.name,
        node.cfg.node.runs_pods(),
    );
    crate::node::register_metrics(&node.transport, metrics.clone());
    tasks.spawn(metrics.clone().run(stop.clone()));
    let _ = node.metrics.set(metrics.clone());
    crate::metrics::set_enabled(node.cfg.metrics.enabled);
    let exporter = exporter(&node, &tasks, stop.clone());
    if let Some(addr) = crate::metrics::plain::address(node.cfg.api.metrics_listen, node.cfg.metrics.enabled) {
        tasks.spawn(crate::metrics::plain::run(addr, exporter.clone(), stop.clone()));
    }
    tasks.spawn(api_server(
        node.clone(),
        streams,
        Some(metrics.clone() as Arc<dyn MetricsSource>),
        exporter,
        stop.clone(),
    ));
    // A node with run_pods = false stops here: no node agent and so no Node object (nothing
    // is scheduled on it, DaemonSets included), no Service data plane, no DNS, no Ingress, no
    // LoadBalancer announcer.
    if node.cfg.node.runs_pods() {
        tasks.spawn(run_agent(node.clone(), stop.clone()));
        tasks.spawn(unretire(node.clone(), stop.clone()));
        tasks.spawn(run_proxy(node.clone(), stop.clone()));
        tasks.spawn(run_netpol(node.clone(), stop.clone()));
        tasks.spawn(run_dns(node.clone(), stop.clone()));
        tasks.spawn(run_announcer(node.clone(), stop.clone()));
        if node.cfg.ingress.enabled {
            tasks.spawn(run_ingress(node.clone(), stop.clone()));
        }
    } else {
        tasks.spawn(retire_worker(node.clone(), stop.clone()));
    }
    tasks.close();
    stop.cancelled().await;
    tasks.wait().await;
}

/// A witness runs only what a voter needs (Raft, the peer transport, gossip, the control
/// socket and the store run in `cluster::run`): no Kubernetes API, no controllers or scheduler
/// even while it leads (it hands the leadership to a workload voter), no node agent, no Service
/// data plane, DNS, Ingress, NetworkPolicy or LoadBalancer announcer. It drains what it ran if
/// it was a worker before, and serves the plain `/metrics` listener only when one is set.
fn run_witness(node: &Arc<Node>, tasks: &tokio_util::task::TaskTracker, stop: CancellationToken) {
    tasks.spawn(shed_startup_code(stop.clone()));
    tasks.spawn(crate::cluster::handover::run(node.clone(), stop.clone()));
    tasks.spawn(retire_worker(node.clone(), stop.clone()));
    crate::metrics::set_enabled(node.cfg.metrics.enabled);
    if let Some(addr) = crate::metrics::plain::address(node.cfg.api.metrics_listen, node.cfg.metrics.enabled) {
        let exporter = exporter(node, tasks, stop.clone());
        tasks.spawn(crate::metrics::plain::run(addr, exporter, stop));
    }
}

/// How long after start a witness drops the pages of its binary from its page tables.
const SHED_STARTUP_CODE_AFTER: Duration = Duration::from_secs(10);

/// A witness's resident memory is mostly the pages of its own binary: the start-up maps code it
/// never runs again (command line, configuration, certificates, the join) and, with the
/// kernel's read-ahead, the code around it. Once it runs, it drops every clean page of the
/// binary from its page tables (the same as the container shim does): what it runs from then on
/// maps back in with a minor fault from the page cache, the rest stays out of its RSS. The pages
/// are clean and shared, so nothing is lost or copied.
async fn shed_startup_code(stop: CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(SHED_STARTUP_CODE_AFTER) => {
            let _ = tokio::task::spawn_blocking(shoal_runtime::drop_clean_file_pages).await;
        }
    }
}

/// The node's `/metrics`: the process-wide families and this node's scrape-time values
/// (nothing when metrics are off).
fn exporter(
    node: &Arc<Node>,
    tasks: &tokio_util::task::TaskTracker,
    stop: CancellationToken,
) -> Arc<crate::metrics::Exporter> {
    if !node.cfg.metrics.enabled {
        return Arc::new(crate::metrics::Exporter::empty());
    }
    let leaders = Arc::new(crate::metrics::store::LeaderTracker::default());
    tasks.spawn(leaders.clone().run(node.store.clone(), stop));
    let collector = crate::cluster::metrics::NodeCollector { node: node.clone(), leaders };
    Arc::new(crate::metrics::Exporter::new(Some(Box::new(collector))))
}

/// Writes this node's record into the store once (retrying until a leader takes it).
async fn register_self(node: Arc<Node>, stop: CancellationToken) {
    let rec = NodeRecord::of(&node.identity);
    let mut wait = Duration::from_millis(100);
    loop {
        match crate::cluster::peers::put_record(&node.store, &rec).await {
            Ok(()) => return,
            Err(e) => tracing::debug!(error = %e, "registering node record; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

/// How long the components of a term that ended may take to stop before the next term starts
/// anyway (with a warning).
const TERM_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the controllers, the scheduler and the other leader-only components while this node
/// leads. Leadership is followed as the store reports it (no polling); the components of a term
/// run in their own task tracker, and when the term ends they are cancelled and awaited before
/// another term may start, so two sets never run at once on one node.
async fn leader_duties(node: Arc<Node>, health: NodeHealth, stop: CancellationToken) {
    let me = node.identity.node_id;
    let mut leader = node.store.leader_watch();
    loop {
        while leader.leader() != Some(me) {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = leader.changed() => if changed.is_err() { return },
            }
        }
        tracing::info!("became leader: starting controllers and scheduler");
        let token = stop.child_token();
        let term = tokio_util::task::TaskTracker::new();
        start_leader_components(&node, health.clone(), token.clone(), &term);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = leader.changed() => if changed.is_err() { break },
            }
            if leader.leader() != Some(me) {
                tracing::info!("lost leadership: stopping controllers and scheduler");
                break;
            }
        }
        token.cancel();
        term.close();
        if tokio::time::timeout(TERM_STOP_TIMEOUT, term.wait()).await.is_err() {
            tracing::warn!(
                tasks = term.len(),
                "leader components of the last term still running after {TERM_STOP_TIMEOUT:?}"
            );
        }
        if stop.is_cancelled() {
            return;
        }
    }
}

fn start_leader_components(
    node: &Arc<Node>,
    health: NodeHealth,
    token: CancellationToken,
    term: &tokio_util::task::TaskTracker,
) {
    let node = node.clone();
    let tasks = term.clone();
    term.spawn(async move {
        // The controllers count what exists before they create: a new leader first applies
        // everything committed before it took over.
        while let Err(e) = node.store.sync().await {
            tracing::debug!(error = %e, "waiting for the replica to catch up before starting controllers");
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        let config = ControllerConfig {
            pod_security_defaults: node.cfg.admission.pod_security.labels(),
            service_cidr: node.cfg.network.service_range(),
            ..ControllerConfig::default()
        };
        let mut manager = ControllerManager::new(config);
        if let Some(m) = node.metrics.get() {
            manager = manager.with_metrics(m.clone() as Arc<dyn crate::controllers::PodMetrics>);
        }
        // Their writes carry the field managers kube-apiserver records for these components.
        tasks.spawn(manager.run(node.objects.as_manager("kube-controller-manager"), health, token.clone()));
        tasks.spawn(Scheduler::new().run(node.objects.as_manager("kube-scheduler"), token.clone()));
        let signer = Arc::downgrade(&node);
        let ca = move || signer.upgrade().ok_or("node is stopping".to_string()).and_then(|n| signing_secrets(&n));
        tasks.spawn(crate::auth::csr::run_signer(
            node.objects.as_manager("kube-controller-manager"),
            ca,
            token.clone(),
        ));
        tasks.spawn(crate::cluster::leader_lease::run(node.clone(), token.clone()));
        let allocator = LbAllocator::new(node.objects.clone(), node.cfg.lb.default_pool.clone());
        tasks.spawn(async move {
            if let Err(e) = allocator.run(token).await {
                tracing::error!(error = %e, "LoadBalancer allocator stopped");
            }
        });
    });
}

/// Liveness of every node by name, from gossip (never from the store: an idle cluster writes
/// nothing).
fn node_health(node: &Arc<Node>, tasks: &tokio_util::task::TaskTracker, stop: CancellationToken) -> NodeHealth {
    let snapshot = |members: &[shoal_gossip::Member]| -> BTreeMap<String, bool> {
        members.iter().map(|m| (m.name.clone(), m.alive)).collect()
    };
    let mut sub = node.membership.subscribe();
    let (tx, rx) = tokio::sync::watch::channel(snapshot(&sub.borrow()));
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = sub.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let next = snapshot(&sub.borrow_and_update());
                    tx.send_if_modified(|cur| {
                        if *cur != next {
                            *cur = next;
                            true
                        } else {
                            false
                        }
                    });
                }
            }
        }
    });
    rx
}

/// Runs the node agent (retrying its start until the cluster can hand out a pod subnet).
async fn run_agent(node: Arc<Node>, stop: CancellationToken) {
    let cfg = AgentConfig {
        node_name: node.identity.name.clone(),
        data_dir: node.cfg.data_dir.clone(),
        address: node.identity.advertise,
        objects: node.objects.as_manager("kubelet"),
        store: node.store.clone(),
        pod_cidr: node.cfg.network.pod_cidr.clone(),
        dns_ip: node.cfg.network.cluster_dns_ip(),
        kubernetes_ip: node.cfg.network.service_range().kubernetes_ip().to_string(),
        paths: crate::node::os::HostPaths::default(),
    };
    // The pod CIDR claim needs a leader; wait for one rather than fail.
    let mut wait = Duration::from_millis(200);
    loop {
        match NodeAgent::start(cfg.clone()).await {
            Ok(agent) => {
                share_image_blobs(&node, agent.images());
                return agent
                    .with_devices(node.cfg.node.devices.clone())
                    .with_eviction(node.cfg.node.eviction_hard.clone(), None)
                    .run(stop)
                    .await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "node agent cannot start yet; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Taint a node that turns into a witness carries while it drains: nothing new is placed
/// there, DaemonSet pods included.
pub(crate) const RETIRING_TAINT: &str = "shoal.dev/witness";
/// How long a drain may take before the Node object is deleted anyway.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(120);

/// A witness started on the data dir of a node that ran pods (`shoal up --witness` on a
/// worker) hands its work over first: its Node is cordoned and tainted, every pod on it is
/// deleted (their controllers create them on the other nodes) while the node agent stops their
/// containers, then the agent stops and the Node object is deleted. Its LoadBalancer IPs went
/// with the worker's announcer; the witness gossips that it announces none.
async fn retire_worker(node: Arc<Node>, stop: CancellationToken) {
    use serde_json::json;
    let (nodes, pods) = (shoal_kube::resources::lookup("", "nodes"), shoal_kube::resources::lookup("", "pods"));
    let name = node.identity.name.clone();
    let existing = loop {
        match node.objects.get(&nodes, None, &name).await {
            Ok(n) => break n,
            Err(e) => tracing::debug!(error = %e, "looking for this node's Node object; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    };
    if existing.is_none() {
        return;
    }
    tracing::info!(node = %name, "this node ran pods and is now a witness: draining it");
    let cordon = node
        .objects
        .modify(&nodes, None, &name, shoal_kube::UpdateMode::All, |n| {
            let tainted =
                n["spec"]["taints"].as_array().is_some_and(|ts| ts.iter().any(|t| t["key"] == RETIRING_TAINT));
            if tainted && n["spec"]["unschedulable"] == json!(true) {
                return Ok(false);
            }
            n["spec"]["unschedulable"] = json!(true);
            if !tainted {
                let taint = json!({"key": RETIRING_TAINT, "effect": "NoExecute"});
                match n["spec"]["taints"].as_array_mut() {
                    Some(ts) => ts.push(taint),
                    None => n["spec"]["taints"] = json!([taint]),
                }
            }
            Ok(true)
        })
        .await;
    if let Err(e) = cordon {
        tracing::warn!(error = %e, "cordoning this node");
    }
    // The agent stops the containers of the deleted pods (they outlive a daemon restart).
    let agent_stop = stop.child_token();
    let agent = tokio::spawn(run_agent(node.clone(), agent_stop.clone()));
    let deadline = tokio::time::Instant::now() + RETIRE_TIMEOUT;
    loop {
        let on_node: Vec<serde_json::Value> = match node.objects.list(&pods, None).await {
            Ok((all, _)) => all.into_iter().filter(|p| p["spec"]["nodeName"].as_str() == Some(name.as_str())).collect(),
            Err(e) => {
                tracing::debug!(error = %e, "listing pods to drain");
                vec![json!(null)]
            }
        };
        if on_node.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(pods = on_node.len(), "drain timed out; deleting the Node object anyway");
            break;
        }
        for p in on_node.iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()) {
            let (Some(ns), Some(pod)) = (p["metadata"]["namespace"].as_str(), p["metadata"]["name"].as_str()) else {
                continue;
            };
            let grace = p["spec"]["terminationGracePeriodSeconds"].as_i64().unwrap_or(30).clamp(0, 30);
            if let Err(e) = node.objects.terminate(&pods, Some(ns), pod, grace, Default::default()).await {
                tracing::debug!(pod, error = %e, "deleting a pod to drain");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => {
                agent_stop.cancel();
                let _ = agent.await;
                return;
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    agent_stop.cancel();
    let _ = agent.await;
    loop {
        match node.objects.delete(&nodes, None, &name, Default::default()).await {
            Ok(_) | Err(shoal_kube::Error::NotFound { .. }) => break,
            Err(e) => tracing::debug!(error = %e, "deleting this node's Node object; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    tracing::info!(node = %name, "drained: its pods run elsewhere, its Node object is deleted");
}

/// A worker started on the data dir of a witness that did not finish draining: its Node takes
/// pods again (the drain's taint and cordon go).
async fn unretire(node: Arc<Node>, stop: CancellationToken) {
    let nodes = shoal_kube::resources::lookup("", "nodes");
    for _ in 0..120 {
        if let Ok(Some(n)) = node.objects.get(&nodes, None, &node.identity.name).await {
            let tainted =
                n["spec"]["taints"].as_array().is_some_and(|ts| ts.iter().any(|t| t["key"] == RETIRING_TAINT));
            if !tainted {
                return;
            }
            let done = node
                .objects
                .modify(&nodes, None, &node.identity.name, shoal_kube::UpdateMode::All, |n| {
                    if let Some(ts) = n["spec"]["taints"].as_array_mut() {
                        ts.retain(|t| t["key"] != RETIRING_TAINT);
                    }
                    if let Some(spec) = n["spec"].as_object_mut() {
                        spec.remove("unschedulable");
                    }
                    Ok(true)
                })
                .await;
            match done {
                Ok(_) => {
                    tracing::info!("this witness is a worker again: its Node takes pods");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "removing the witness taint; retrying"),
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Serves this node's image blobs to its peers and asks the live peers first when pulling.
fn share_image_blobs(node: &Arc<Node>, images: shoal_images::ImageStore) {
    use crate::node::blobs::{self, QuicPeers};
    blobs::serve(&node.transport, images.clone());
    let n = node.clone();
    let peers: blobs::PeerList = Arc::new(move || {
        n.membership
            .members()
            .iter()
            .filter(|m| m.alive && m.name != n.identity.name)
            .filter_map(|m| m.attrs.get("peer_addr").and_then(|a| a.parse().ok()))
            .collect()
    });
    images.set_blob_sources(vec![Arc::new(QuicPeers { transport: node.transport.clone(), peers })]);
}

/// The Service data plane (nftables) of this node.
async fn run_proxy(node: Arc<Node>, stop: CancellationToken) {
    let proxy = Proxy::new(node.objects.clone(), node.identity.name.clone(), vec![node.identity.advertise])
        .with_pod_cidr(node.cfg.network.pod_cidr.clone());
    proxy.run(stop).await;
}

/// NetworkPolicy enforcement (nftables) for the pods of this node (docs/network-policy.md).
async fn run_netpol(node: Arc<Node>, stop: CancellationToken) {
    let subnet = loop {
        match crate::node::network::claim_subnet(&node.store, &node.cfg.network.pod_cidr, &node.identity.name).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::debug!(error = %e, "network policy waits for this node's pod subnet");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    crate::netpol::Netpol::new(node.objects.clone(), node.identity.name.clone())
        .with_resolver(subnet.gateway())
        .run(stop)
        .await;
}

/// The built-in Ingress controller of this node (docs/ingress.md).
async fn run_ingress(node: Arc<Node>, stop: CancellationToken) {
    crate::ingress::Ingress::new(
        node.objects.clone(),
        node.identity.name.clone(),
        node.identity.advertise,
        node.cfg.ingress.clone(),
    )
    .with_service_cidr(node.cfg.network.service_range())
    .run(stop)
    .await;
}

/// Cluster DNS: served on this node's pod gateway address, reached by pods at the DNS Service
/// IP through a DNAT rule.
async fn run_dns(node: Arc<Node>, stop: CancellationToken) {
    let subnet = loop {
        match crate::node::network::claim_subnet(&node.store, &node.cfg.network.pod_cidr, &node.identity.name).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::debug!(error = %e, "waiting for this node's pod subnet");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let listen = SocketAddr::new(IpAddr::V4(subnet.gateway()), 53);
    if let Ok(service_ip) = node.cfg.network.cluster_dns_ip().parse::<IpAddr>() {
        let rules = crate::dns::dnat_rules(service_ip, listen).join("\n    ");
        let table = format!(
            "table ip shoal-dns\ndelete table ip shoal-dns\ntable ip shoal-dns {{\n  chain prerouting {{\n    type nat hook prerouting priority -110; policy accept;\n    {rules}\n  }}\n  chain output {{\n    type nat hook output priority -110; policy accept;\n    {rules}\n  }}\n}}\n"
        );
        if let Err(e) = shoal_netlink::nft::apply(&table) {
            tracing::warn!(error = %e, "cluster DNS redirect rules");
        }
    }
    let upstreams = crate::dns::system_upstreams().await;
    if let Err(e) = crate::dns::Dns::new(node.objects.clone(), vec![listen], upstreams).run(stop).await {
        tracing::error!(error = %e, "cluster DNS stopped");
    }
}

/// Announces the LoadBalancer IPs this node wins (ARP / NDP), withdrawing them without quorum.
async fn run_announcer(node: Arc<Node>, stop: CancellationToken) {
    let net = match shoal_netlink::LinuxNet::new() {
        Ok(n) => Arc::new(n),
        Err(e) => {
            tracing::error!(error = %e, "LoadBalancer announcer cannot reach netlink");
            return;
        }
    };
    let view = GossipView { members: node.membership.subscribe(), store: node.store.clone() };
    let announcer = LbAnnouncer::new(node.identity.name.clone(), net, Arc::new(LinuxAnnouncer), view)
        .with_node_ip(node.identity.advertise);
    let _ = node.lb_announced.set(announcer.announced());
    if let Err(e) = announcer.run(node.objects.clone(), stop).await {
        tracing::error!(error = %e, "LoadBalancer announcer stopped");
    }
}

impl MetricsSource for crate::node::metrics::ClusterMetrics {
    fn to_json(&self, plural: &str, namespace: Option<&str>, name: Option<&str>) -> Option<serde_json::Value> {
        crate::node::metrics::ClusterMetrics::to_json(self, plural, namespace, name)
    }
}

/// Node heartbeats for the API, from this node's gossip view.
struct GossipHeartbeats(Arc<Node>);

impl NodeHeartbeats for GossipHeartbeats {
    fn last_heard(&self, node: &str) -> Option<std::time::SystemTime> {
        let alive = self.0.membership.members().iter().any(|m| m.name == node && m.alive);
        alive.then(|| self.0.membership.last_heard(node)).flatten()
    }
}

/// Serves the Kubernetes API on every node.
async fn api_server(
    node: Arc<Node>,
    streams: Option<Arc<dyn PodStreams>>,
    metrics: Option<Arc<dyn MetricsSource>>,
    exporter: Arc<crate::metrics::Exporter>,
    stop: CancellationToken,
) {
    let listen = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), node.identity.api_port);
    let tls = TlsMaterial {
        cert_pem: node.node_cert_pem.clone(),
        key_pem: node.node_key_pem.clone(),
        client_ca_pem: node.secrets.ca_cert_pem.clone(),
    };
    let mut cfg = ApiConfig::new(listen, tls, node.objects.clone(), node.identity.name.clone());
    cfg.streams = streams;
    cfg.metrics = metrics;
    cfg.exporter = exporter;
    cfg.event_ttl = None; // the node's objects carry [api] event_ttl (0s: none)
    cfg.external_ip_cidrs = node.cfg.admission.external_ip_cidrs.clone();
    cfg.service_cidr = node.cfg.network.service_range();
    cfg.pod_security_defaults = node.cfg.admission.pod_security.labels();
    cfg.heartbeats = Some(Arc::new(GossipHeartbeats(node.clone())));
    cfg.max_token_expiration = node.cfg.api.service_account_max_token_expiration;
    cfg.revoked = node.transport.revocations();
    cfg.header_read_timeout = node.cfg.api.idle_timeout;
    cfg.caps = crate::api::Caps {
        max_connections_per_client: node.cfg.api.max_connections_per_client,
        max_watches_per_user: node.cfg.api.max_watches_per_user,
        max_requests_inflight: node.cfg.api.max_requests_inflight,
        max_mutating_requests_inflight: node.cfg.api.max_mutating_requests_inflight,
    };
    if node.cfg.api.audit_log {
        cfg.audit = Some(Arc::new(crate::api::AuditLog::new(crate::api::AuditConfig {
            path: node.cfg.data_dir.join("audit").join("audit.log"),
            max_bytes: node.cfg.api.audit_log_max_mib.saturating_mul(1 << 20),
            max_files: node.cfg.api.audit_log_max_files,
        })));
    }
    match crate::auth::sa_token::TokenKeys::from_secrets(&node.secrets) {
        // Kept current with the secrets file, which `shoal sa-key rotate|retire` rewrites.
        Ok(keys) => {
            cfg.tokens = Some(Arc::new(keys.reloading_from(node.cfg.data_dir.join(crate::config::SECRETS_FILE))))
        }
        Err(e) => tracing::warn!(error = %e, "no service account keys; bearer tokens are refused"),
    }
    if let Err(e) = crate::api::serve(cfg, stop).await {
        tracing::error!(error = %e, %listen, "Kubernetes API stopped");
    }
}

/// A kubeconfig for this cluster: by default for user `admin` in `system:masters`, else for
/// `user` in `groups` (client certificate CN and O), valid for `ttl_secs` (default one year).
/// The certificate is recorded in the store, so `shoal kubeconfig revoke` can revoke it.
pub(crate) async fn kubeconfig(
    node: &Node,
    server: Option<String>,
    user: Option<String>,
    groups: Vec<String>,
    ttl_secs: Option<i64>,
) -> Result<String, String> {
    let server = match server {
        Some(s) => s,
        None if node.cfg.node.role == NodeRole::Witness => workload_api(node).ok_or_else(|| {
            "this witness serves no Kubernetes API and sees no workload node alive: pass --server \
             https://NODE:6443 or run this on a workload node"
                .to_string()
        })?,
        None => format!("https://{}:{}", node.identity.advertise, node.identity.api_port),
    };
    let signer = crate::cluster::ca_key::signing_secrets(node)?;
    let (user, cert) = crate::auth::revocation::mint_client_cert(&node.store, &signer, user, groups, ttl_secs).await?;
    Ok(crate::api::kubeconfig_for(&server, &node.secrets.ca_cert_pem, &cert.cert_pem, &cert.key_pem, &user))
}

/// The API URL of a live workload node (by name order), from gossip: a witness serves none.
fn workload_api(node: &Node) -> Option<String> {
    let mut members = node.membership.members();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    members
        .iter()
        .filter(|m| m.alive && m.name != node.identity.name)
        .filter(|m| m.attrs.get(crate::cluster::ATTR_ROLE).is_none_or(|r| r != NodeRole::Witness.as_str()))
        .find_map(|m| m.attrs.get("api_addr").and_then(|a| a.parse::<SocketAddr>().ok()))
        .map(|a| format!("https://{a}"))
}

/// Which node announces each LoadBalancer IP, as this node sees it.
pub(crate) async fn lb_status(node: &Node) -> serde_json::Value {
    let Some(rx) = node.lb_announced.get() else { return serde_json::Value::Array(Vec::new()) };
    let list: Vec<serde_json::Value> = rx
        .borrow()
        .iter()
        .map(|a| serde_json::json!({"ip": a.ip.to_string(), "service": a.service, "node": a.node}))
        .collect();
    serde_json::Value::Array(list)
}
