//! The Service proxy's metrics, under kube-proxy's names where they exist:
//! `kubeproxy_sync_proxy_rules_duration_seconds` and `shoal_proxy_service_ports` (the Service
//! ports the last applied table carries).
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// kube-proxy's buckets (exponential from 1 ms).
const SYNC_BUCKETS: [f64; 14] =
    [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192];

pub(crate) struct ProxyMetrics {
    pub sync: Histogram,
    pub service_ports: Gauge,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        ProxyMetrics { sync: Histogram::new(SYNC_BUCKETS), service_ports: Gauge::default() }
    }
}

impl ProxyMetrics {
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds (rebuilding and applying the nftables table).",
            self.sync.clone(),
        );
        r.register(
            "shoal_proxy_service_ports",
            "Service ports in the last applied nftables table.",
            self.service_ports.clone(),
        );
    }
}

/// Records one sync that applied a table of `ports` Service ports.
pub(crate) fn synced(elapsed: std::time::Duration, ports: usize) {
    let m = &super::global().proxy;
    m.sync.observe(elapsed.as_secs_f64());
    m.service_ports.set(ports as i64);
}
