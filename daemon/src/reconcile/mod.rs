//! The reconcile framework every control loop is built on: controllers, the scheduler, the lb
//! allocator and the node agent alike. [`runner`] drives a loop (one reconcile per key at a time,
//! back-off on errors, a periodic resync), [`runner::Action`] says when to look again,
//! [`runner::ObjKey`] names an object, [`util`] holds the listers and object accessors and
//! [`events`] the one Event recorder. It may use `shoal_kube` and nothing else of the daemon.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_kube::{resources, Objects, Resource};

pub(crate) mod events;
pub mod images;
pub(crate) mod runner;
#[cfg(test)]
pub(crate) mod testing;
pub(crate) mod util;
pub(crate) mod volumes;
pub(crate) mod watch;

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
    /// Pod Security labels a namespace gets unless it sets them (`[admission.pod_security]`),
    /// applied to the pods the controllers create.
    pub pod_security_defaults: std::collections::BTreeMap<String, String>,
    /// The Service range (`[network] service_cidr`): the `kubernetes` Service takes its first
    /// address.
    pub service_cidr: shoal_kube::service_cidr::ServiceCidr,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            default_unreachable_toleration: Duration::from_secs(10),
            job_backoff_base: Duration::from_secs(10),
            job_backoff_max: Duration::from_secs(360),
            resync_period: Duration::from_secs(30),
            pod_security_defaults: Default::default(),
            service_cidr: Default::default(),
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
