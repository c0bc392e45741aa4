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
use std::sync::Arc;

use shoal_kube::Objects;
use tokio_util::sync::CancellationToken;

pub(crate) mod apiservice;
pub(crate) mod cronjob;
pub(crate) mod daemonset;
pub(crate) mod deployment;
pub(crate) mod endpoints;
pub(crate) mod gc;
pub(crate) mod hpa;
pub(crate) mod job;
pub(crate) mod namespace;
pub(crate) mod nodelifecycle;
pub(crate) mod pdb;
pub(crate) mod replicaset;
pub(crate) mod resourcequota;
pub(crate) mod revisions;
pub(crate) mod serviceaccount;
pub(crate) mod statefulset;
pub(crate) mod storageclass;
pub(crate) mod volumes;

#[cfg(test)]
pub(crate) mod tests;

pub(crate) use crate::reconcile::{runner, util, Context, Kinds};
pub use crate::reconcile::{ControllerConfig, Error, NodeHealth, PodMetrics, Result};

/// How soon a controller whose pod admission refused tries again.
pub(crate) const REFUSED_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// Creates a pod of `owner` through admission (LimitRange defaults, ResourceQuota charged with
/// the write), as kube-apiserver admits a controller's pods. A refusal becomes the owner's
/// `FailedCreate` Warning event (`Error creating: pods "x" is forbidden: exceeded quota: ...`)
/// and `None`.
pub(crate) async fn create_pod(
    ctx: &Context,
    component: &str,
    owner: &serde_json::Value,
    ns: Option<&str>,
    pod: serde_json::Value,
) -> Result<Option<serde_json::Value>> {
    let defaults = &ctx.config.pod_security_defaults;
    match crate::admission::create(&ctx.objects, defaults, &ctx.kinds.pods, ns.unwrap_or("default"), pod).await {
        Ok(p) => Ok(Some(p)),
        Err(
            crate::admission::Error::Forbidden { message }
            | crate::admission::Error::Invalid { message }
            | crate::admission::Error::Status { message, .. },
        ) => {
            ctx.events.warning(component, owner, "FailedCreate", &format!("Error creating: {message}")).await;
            Ok(None)
        }
        Err(crate::admission::Error::Read { resource, source }) => Err(Error::Read { resource, source }),
        Err(crate::admission::Error::Write { resource, name, source }) => Err(Error::Write { resource, name, source }),
    }
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
            resourcequota::spec(&ctx.kinds),
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
