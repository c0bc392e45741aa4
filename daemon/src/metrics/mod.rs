//! Prometheus metrics: `/metrics` on every node's API port (and on the opt-in plain listener),
//! with the upstream names where upstream has the metric, so existing dashboards work.
//!
//! Counters and histograms fed from the code paths that count (requests, pod starts, rule syncs)
//! live in one process-wide set ([`global`]); what is cheap to read at scrape time (Raft status,
//! gossip members, announced IPs, container usage) is read then by a per-node collector
//! (`cluster::metrics::NodeCollector`, at the top, reads a whole node). Files: `apiserver`, `kubelet`, `store` (Raft), `gossip`, `lb`,
//! `proxy`, `images`, `workqueue` (the controllers' queues), one per family group.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::registry::Registry;

pub(crate) mod apiserver;
pub(crate) mod gossip;
pub(crate) mod images;
pub(crate) mod kubelet;
pub(crate) mod lb;
pub(crate) mod plain;
pub(crate) mod proxy;
pub(crate) mod store;
pub(crate) mod workqueue;

/// The content type of [`Exporter::render`] (Prometheus negotiates OpenMetrics).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns metrics off for this process (`[metrics] enabled = false`): API requests and store
/// calls are no longer timed or counted and `/metrics` answers 404.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether this process counts and serves metrics (on unless [`set_enabled`] said no).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The process-wide metrics fed by the code paths.
pub(crate) struct Global {
    pub api: apiserver::ApiMetrics,
    pub kubelet: kubelet::KubeletMetrics,
    pub proxy: proxy::ProxyMetrics,
    pub images: images::ImageMetrics,
    pub store: store::StoreMetrics,
    pub lb: lb::LbMetrics,
}

/// The process-wide metrics (created at first use).
pub(crate) fn global() -> &'static Global {
    static G: OnceLock<Global> = OnceLock::new();
    G.get_or_init(|| {
        shoal_kube::objects::set_request_observer(store::observe);
        shoal_store::observe::set_commit_observer(store::committed);
        new_global()
    })
}

fn new_global() -> Global {
    Global {
        api: apiserver::ApiMetrics::default(),
        kubelet: kubelet::KubeletMetrics::default(),
        proxy: proxy::ProxyMetrics::default(),
        images: images::ImageMetrics::default(),
        store: store::StoreMetrics::default(),
        lb: lb::LbMetrics::default(),
    }
}

/// What `/metrics` serves: the process-wide families and, on a node, its own collector.
pub struct Exporter {
    registry: Registry,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exporter")
    }
}

impl Default for Exporter {
    fn default() -> Self {
        Exporter::new(None)
    }
}

impl Exporter {
    /// The process-wide families, plus `collector` (a node's scrape-time values) if given.
    pub(crate) fn new(collector: Option<Box<dyn prometheus_client::collector::Collector>>) -> Exporter {
        let mut registry = Registry::default();
        let g = global();
        g.api.register(&mut registry);
        g.kubelet.register(&mut registry);
        g.proxy.register(&mut registry);
        g.images.register(&mut registry);
        g.store.register(&mut registry);
        g.lb.register(&mut registry);
        registry.register_collector(Box::new(workqueue::WorkqueueCollector));
        registry.register_collector(Box::new(images::PullBytesCollector));
        if let Some(c) = collector {
            registry.register_collector(c);
        }
        Exporter { registry }
    }

    /// An exporter with no families at all (what a node with metrics off holds).
    pub(crate) fn empty() -> Exporter {
        Exporter { registry: Registry::default() }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}

/// A shared exporter for the API server.
pub type SharedExporter = Arc<Exporter>;

#[cfg(test)]
mod tests;
