//! Raft and store metrics, read at scrape time from the replica's status:
//! `shoal_raft_term`, `shoal_raft_applied_index`, `shoal_raft_is_leader`,
//! `shoal_raft_members{role}`, `shoal_store_revision`, and `shoal_raft_leader_changes_total`
//! (counted by [`LeaderTracker`], which polls the in-memory status: nothing is written),
//! `shoal_raft_snapshot_bytes` (the last snapshot built, installed or loaded), and the histogram
//! `shoal_raft_commit_duration_seconds` (each write, from its proposal to its application on the
//! node that proposed it, fed by shoal-store).
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use shoal_store::{Role, Store, StoreStatus};
use tokio_util::sync::CancellationToken;

/// How often the leader is looked at.
const POLL: Duration = Duration::from_millis(250);

/// Counts the leader changes this node sees (a leader lost counts once, the next one once).
#[derive(Debug, Default)]
pub(crate) struct LeaderTracker {
    last: Mutex<Option<Option<u64>>>,
    changes: AtomicU64,
}

impl LeaderTracker {
    /// Notes the current leader; counts a change from the previous one.
    pub(crate) fn observe(&self, leader: Option<u64>) {
        let Ok(mut last) = self.last.lock() else { return };
        match *last {
            Some(prev) if prev != leader => {
                // Losing a leader and electing the next are one change, not two.
                if leader.is_some() {
                    self.changes.fetch_add(1, Ordering::Relaxed);
                }
                *last = Some(leader);
            }
            Some(_) => {}
            None => {
                if leader.is_some() {
                    self.changes.fetch_add(1, Ordering::Relaxed);
                }
                *last = Some(leader);
            }
        }
    }

    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// Polls `store` until `stop`.
    pub(crate) async fn run(self: std::sync::Arc<Self>, store: Store, stop: CancellationToken) {
        loop {
            self.observe(store.status().leader);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

pub(crate) fn encode(st: &StoreStatus, changes: u64, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, v: i64| -> Result<(), std::fmt::Error> {
        let g = ConstGauge::new(v);
        g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
    };
    gauge(encoder, "shoal_raft_term", "Current Raft term.", st.term as i64)?;
    gauge(
        encoder,
        "shoal_raft_applied_index",
        "Last Raft log index applied to this replica.",
        st.applied_index as i64,
    )?;
    gauge(
        encoder,
        "shoal_raft_is_leader",
        "1 if this node leads the Raft group.",
        i64::from(st.leader.is_some() && st.leader == Some(st.node_id)),
    )?;
    gauge(encoder, "shoal_raft_has_leader", "1 if this node knows a Raft leader.", i64::from(st.leader.is_some()))?;
    gauge(encoder, "shoal_store_revision", "Store revision of this replica.", st.revision as i64)?;
    gauge(
        encoder,
        "shoal_raft_snapshot_bytes",
        "Size of the last Raft snapshot this node built, installed or loaded (0: none yet).",
        i64::try_from(shoal_store::observe::snapshot_bytes()).unwrap_or(i64::MAX),
    )?;
    let c = ConstCounter::new(changes);
    c.encode(encoder.encode_descriptor(
        "shoal_raft_leader_changes",
        "Leader changes this node has seen (a new leader known, after none or another).",
        None,
        c.metric_type(),
    )?)?;
    let mut e = encoder.encode_descriptor(
        "shoal_raft_members",
        "Members of the Raft group by role.",
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (role, name) in [(Role::Voter, "voter"), (Role::Learner, "learner")] {
        let n = st.members.iter().filter(|m| m.role == role).count();
        ConstGauge::new(n as i64).encode(e.encode_family(&[("role", name)])?)?;
    }
    Ok(())
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub operation: &'static str,
    /// The resource (`pods`, `deployments.apps`): bounded by the served resources.
    pub r#type: String,
}

type LatencyFamily = prometheus_client::metrics::family::Family<RequestLabels, Histogram, fn() -> Histogram>;

use prometheus_client::metrics::histogram::Histogram;

fn latency_histogram() -> Histogram {
    Histogram::new(super::apiserver::DURATION_BUCKETS)
}

/// `etcd_request_duration_seconds`: each request of the object layer to the store (get, list,
/// create, update, delete), timed as kube-apiserver times its etcd calls.
pub(crate) struct StoreMetrics {
    pub latency: LatencyFamily,
    /// `shoal_raft_commit_duration_seconds`.
    pub commit: Histogram,
}

/// Commit latency buckets: exponential from 1 ms to 8 s (etcd's WAL and backend buckets).
const COMMIT_BUCKETS: [f64; 14] =
    [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192];

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            latency: LatencyFamily::new_with_constructor(latency_histogram),
            commit: Histogram::new(COMMIT_BUCKETS),
        }
    }
}

impl StoreMetrics {
    pub(crate) fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "etcd_request_duration_seconds",
            "Store request latency in seconds for each operation and object type.",
            self.latency.clone(),
        );
        r.register(
            "shoal_raft_commit_duration_seconds",
            "Raft write latency in seconds, from proposal to application on the proposing node.",
            self.commit.clone(),
        );
    }
}

/// The commit observer set on shoal-store.
pub(crate) fn committed(d: Duration) {
    if !super::enabled() {
        return;
    }
    super::global().store.commit.observe(d.as_secs_f64());
}

/// The observer set on shoal-kube's object layer.
pub(crate) fn observe(op: &'static str, res: &shoal_kube::resources::Resource, d: Duration) {
    if !super::enabled() {
        return;
    }
    let r#type = if res.group.is_empty() { res.plural.clone() } else { format!("{}.{}", res.plural, res.group) };
    super::global().store.latency.get_or_create(&RequestLabels { operation: op, r#type }).observe(d.as_secs_f64());
}
