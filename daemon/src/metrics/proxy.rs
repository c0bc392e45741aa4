//! The Service proxy's metrics, under kube-proxy's names where they exist:
//! `kubeproxy_sync_proxy_rules_duration_seconds` (every sync, whether the table changed or
//! not, as kube-proxy observes every `syncProxyRules`), `kubeproxy_sync_proxy_rules_last_timestamp_seconds`,
//! `shoal_proxy_service_ports` (the Service ports of the last sync) and `shoal_proxy_rules`
//! (the nftables rules of the last applied table).
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use shoal_netlink::nft::Table;

/// kube-proxy's buckets (exponential from 1 ms).
const SYNC_BUCKETS: [f64; 14] =
    [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192];

pub(crate) struct ProxyMetrics {
    pub sync: Histogram,
    pub last_sync: Gauge<f64, AtomicU64>,
    pub service_ports: Gauge,
    pub rules: Gauge,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        ProxyMetrics {
            sync: Histogram::new(SYNC_BUCKETS),
            last_sync: Gauge::default(),
            service_ports: Gauge::default(),
            rules: Gauge::default(),
        }
    }
}

impl ProxyMetrics {
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds (reading the Services, and rebuilding and applying the nftables table when it changed).",
            self.sync.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time the proxy rules were successfully synced (Unix seconds).",
            self.last_sync.clone(),
        );
        r.register("shoal_proxy_service_ports", "Service ports in the last synced table.", self.service_ports.clone());
        r.register("shoal_proxy_rules", "Rules in the last applied nftables table.", self.rules.clone());
    }
}

/// Records one successful sync of `ports` Service ports; `applied` is the table when it
/// changed and was applied.
pub(crate) fn synced(elapsed: std::time::Duration, ports: usize, applied: Option<&Table>) {
    let m = &super::global().proxy;
    m.sync.observe(elapsed.as_secs_f64());
    m.service_ports.set(ports as i64);
    if let Some(t) = applied {
        m.rules.set(rule_count(&t.definition()) as i64);
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    m.last_sync.set(now.as_secs_f64());
}

/// The rules of a table definition: the lines inside its chains, hook declarations aside.
pub(crate) fn rule_count(definition: &str) -> usize {
    let mut in_chain = false;
    let mut n = 0;
    for line in definition.lines() {
        let t = line.trim();
        if line.starts_with("  chain ") {
            in_chain = true;
        } else if line.starts_with("  }") {
            in_chain = false;
        } else if in_chain && !t.is_empty() && !t.starts_with("type ") {
            n += 1;
        }
    }
    n
}
