//! Control loops: the controllers Kubernetes users expect, run on the Raft leader only.
//!
//! Every controller has the same shape (one file each): a list of watched resources, a mapping of
//! their events to keys of the controller's own kind, and `reconcile(key, ctx) -> Result<Action>`
//! that reads the current state from the local replica and writes the difference through
//! [`Objects`]. [`runner`] drives them all: one reconcile per key at a time, back-off on errors,
//! a periodic resync.
//!
//! Starting and stopping the manager repeatedly is safe: no state outside the store matters for
//! correctness, names are derived deterministically where Kubernetes does so, and everything
//! else is counted from the replica before it is created.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_kube::{resources, Objects, Resource};
use tokio_util::sync::CancellationToken;

pub(crate) mod apiservice;
pub(crate) mod cronjob;
pub(crate) mod daemonset;
pub(crate) mod deployment;
pub(crate) mod endpoints;
#[path = "../reconcile/events.rs"]
pub(crate) mod events;
pub(crate) mod gc;
pub(crate) mod hpa;
pub(crate) mod job;
pub(crate) mod namespace;
pub(crate) mod nodelifecycle;
pub(crate) mod pdb;
pub(crate) mod replicaset;
pub(crate) mod revisions;
#[path = "../reconcile/runner.rs"]
pub(crate) mod runner;
pub(crate) mod serviceaccount;
pub(crate) mod statefulset;
pub(crate) mod storageclass;
#[path = "../reconcile/util.rs"]
pub(crate) mod util;
pub(crate) mod volumes;

#[cfg(test)]
pub(crate) mod tests;

/// Liveness of every node as gossip sees it: node name -> alive. Fed by the daemon; a node
/// missing from the map is left as it is.
pub type NodeHealth = tokio::sync::watch::Receiver<BTreeMap<String, bool>>;

/// Errors of the control loops.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("read {resource}")]
    Read {
        resource: String,
        #[source]
        source: Box<shoal_kube::Error>,
    },
    #[error("write {resource} {name:?}")]
    Write {
        resource: String,
        name: String,
        #[source]
        source: Box<shoal_kube::Error>,
    },
    #[error("watch {resource}")]
    Watch {
        resource: String,
        #[source]
        source: Box<shoal_kube::Error>,
    },
    #[error("resource {0} is not served")]
    UnknownResource(String),
    #[error("invalid {what}: {reason}")]
    InvalidSpec { what: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Cluster-wide knobs of the controllers. The defaults are what shoal promises; tests shorten
/// the waits.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// How long a pod stays bound to an unreachable node before it is evicted, unless the pod
    /// tolerates `node.kubernetes.io/unreachable:NoExecute` for a given time itself.
    pub default_unreachable_toleration: Duration,
    /// First Job pod re-creation delay after a failure; doubles per failure.
    pub job_backoff_base: Duration,
    /// Cap of the Job back-off.
    pub job_backoff_max: Duration,
    /// Every controller re-reconciles all its objects this often.
    pub resync_period: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            default_unreachable_toleration: Duration::from_secs(10),
            job_backoff_base: Duration::from_secs(10),
            job_backoff_max: Duration::from_secs(360),
            resync_period: Duration::from_secs(30),
        }
    }
}

/// The built-in resources the controllers touch, looked up once.
#[derive(Debug, Clone)]
pub(crate) struct Kinds {
    pub pods: Resource,
    pub nodes: Resource,
    pub namespaces: Resource,
    pub services: Resource,
    pub endpoints: Resource,
    pub endpointslices: Resource,
    pub serviceaccounts: Resource,
    pub events: Resource,
    pub pvcs: Resource,
    pub replicasets: Resource,
    pub deployments: Resource,
    pub daemonsets: Resource,
    pub statefulsets: Resource,
    pub jobs: Resource,
    pub cronjobs: Resource,
    pub pdbs: Resource,
    pub controllerrevisions: Resource,
    pub hpas: Resource,
}

fn lookup(group: &str, plural: &str) -> Result<Resource> {
    resources::find(group, plural).ok_or_else(|| Error::UnknownResource(format!("{plural}.{group}")))
}

impl Kinds {
    pub(crate) fn load() -> Result<Kinds> {
        Ok(Kinds {
            pods: lookup("", "pods")?,
            nodes: lookup("", "nodes")?,
            namespaces: lookup("", "namespaces")?,
            services: lookup("", "services")?,
            endpoints: lookup("", "endpoints")?,
            endpointslices: lookup("discovery.k8s.io", "endpointslices")?,
            serviceaccounts: lookup("", "serviceaccounts")?,
            events: lookup("", "events")?,
            pvcs: lookup("", "persistentvolumeclaims")?,
            replicasets: lookup("apps", "replicasets")?,
            deployments: lookup("apps", "deployments")?,
            daemonsets: lookup("apps", "daemonsets")?,
            statefulsets: lookup("apps", "statefulsets")?,
            jobs: lookup("batch", "jobs")?,
            cronjobs: lookup("batch", "cronjobs")?,
            pdbs: lookup("policy", "poddisruptionbudgets")?,
            controllerrevisions: lookup("apps", "controllerrevisions")?,
            hpas: lookup("autoscaling", "horizontalpodautoscalers")?,
        })
    }
}

/// What every reconcile gets.
pub(crate) struct Context {
    pub objects: Objects,
    pub health: NodeHealth,
    pub config: ControllerConfig,
    pub kinds: Kinds,
    pub events: events::Recorder,
    pub metrics: Option<Arc<dyn PodMetrics>>,
    /// Recent HPA recommendations, for the scale-down stabilization window.
    pub hpa_history: std::sync::Mutex<std::collections::HashMap<runner::ObjKey, Vec<(tokio::time::Instant, i64)>>>,
}

impl Context {
    pub(crate) fn new(objects: Objects, health: NodeHealth, config: ControllerConfig) -> Result<Arc<Context>> {
        Context::with_metrics(objects, health, config, None)
    }

    pub(crate) fn with_metrics(
        objects: Objects,
        health: NodeHealth,
        config: ControllerConfig,
        metrics: Option<Arc<dyn PodMetrics>>,
    ) -> Result<Arc<Context>> {
        let kinds = Kinds::load()?;
        let events = events::Recorder::new(objects.clone(), kinds.events.clone());
        Ok(Arc::new(Context { objects, health, config, kinds, events, metrics, hpa_history: Default::default() }))
    }
}

/// Current resource usage of pods, as the node agents measure it; what the
/// HorizontalPodAutoscaler scales on.
pub trait PodMetrics: Send + Sync {
    /// Usage of one pod by resource name ("cpu", "memory") in thousandths of the unit
    /// (millicores, millibytes); None if this pod has no fresh sample.
    fn usage(&self, namespace: &str, pod: &str) -> Option<BTreeMap<String, i128>>;
}

/// Runs every controller until `shutdown`. The daemon starts it when this node becomes the Raft
/// leader and cancels it when leadership is lost.
pub struct ControllerManager {
    config: ControllerConfig,
    metrics: Option<Arc<dyn PodMetrics>>,
}

impl Default for ControllerManager {
    fn default() -> Self {
        ControllerManager::new(ControllerConfig::default())
    }
}

impl ControllerManager {
    pub fn new(config: ControllerConfig) -> Self {
        ControllerManager { config, metrics: None }
    }

    /// Where the HorizontalPodAutoscaler reads pod usage; without it, HPAs report
    /// `ScalingActive=False` (FailedGetResourceMetric), as Kubernetes does without metrics-server.
    pub fn with_metrics(mut self, metrics: Arc<dyn PodMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub async fn run(self, objects: Objects, health: NodeHealth, shutdown: CancellationToken) {
        let ctx = match Context::with_metrics(objects, health, self.config, self.metrics) {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(%error, "controllers cannot start");
                return;
            }
        };
        let specs = [
            replicaset::spec(&ctx.kinds),
            deployment::spec(&ctx.kinds),
            job::spec(&ctx.kinds),
            cronjob::spec(&ctx.kinds),
            daemonset::spec(&ctx.kinds),
            statefulset::spec(&ctx.kinds),
            gc::spec(&ctx.kinds),
            namespace::spec(&ctx.kinds),
            serviceaccount::spec(&ctx.kinds),
            endpoints::spec(&ctx.kinds),
            nodelifecycle::spec(&ctx.kinds),
            pdb::spec(&ctx.kinds),
            hpa::spec(&ctx.kinds),
            volumes::spec(&ctx.kinds),
            apiservice::spec(&ctx.kinds),
            storageclass::spec(&ctx.kinds),
        ];
        let tracker = tokio_util::task::TaskTracker::new();
        for spec in specs {
            tracker.spawn(runner::run_controller(spec, ctx.clone(), shutdown.child_token()));
        }
        tracker.close();
        tracing::info!("controllers started");
        shutdown.cancelled().await;
        tracker.wait().await;
        tracing::info!("controllers stopped");
    }
}
