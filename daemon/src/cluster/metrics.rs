//! A node's scrape-time metrics: Raft, gossip, LoadBalancer, the kubelet's running pods and
//! container usage, and the process (`process_resident_memory_bytes`,
//! `shoal_node_written_bytes_total`: what shoal wrote to storage, from /proc/self/io).
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::cluster::Node;

use crate::metrics::store::LeaderTracker;

/// Reads a node's state at each scrape.
pub(crate) struct NodeCollector {
    pub node: Arc<Node>,
    pub leaders: Arc<LeaderTracker>,
}

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCollector").field("node", &self.node.identity.name).finish()
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = &self.node;
        crate::metrics::store::encode(&node.store.status(), self.leaders.changes(), &mut encoder)?;
        crate::metrics::gossip::encode(&node.membership.members(), &mut encoder)?;
        let (flaps, dropped) = (node.membership.flaps_damped(), node.membership.sealer().stats());
        crate::metrics::gossip::encode_counters(flaps, dropped, &mut encoder)?;
        if let Some(rx) = node.lb_announced.get() {
            let (mine, known) = {
                let list = rx.borrow();
                (list.iter().filter(|a| a.node.as_deref() == Some(node.identity.name.as_str())).count(), list.len())
            };
            crate::metrics::lb::encode(mine, known, &mut encoder)?;
        }
        if node.cfg.node.runs_pods() {
            let samples = node.metrics.get().map(|m| m.container_samples()).unwrap_or_default();
            crate::metrics::kubelet::encode(&samples, &mut encoder)?;
        }
        encode_process(&mut encoder)
    }
}

/// Resident memory and bytes written to storage by this process.
pub(crate) fn encode_process(encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    if let Some(rss) = std::fs::read_to_string("/proc/self/status").ok().as_deref().and_then(rss_bytes) {
        let g = ConstGauge::new(rss as i64);
        g.encode(encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            None,
            g.metric_type(),
        )?)?;
    }
    if let Some(w) = std::fs::read_to_string("/proc/self/io").ok().as_deref().and_then(write_bytes) {
        let c = ConstCounter::new(w);
        c.encode(encoder.encode_descriptor(
            "shoal_node_written_bytes",
            "Bytes this shoal process caused to be written to storage (flash wear), from /proc/self/io.",
            None,
            c.metric_type(),
        )?)?;
    }
    Ok(())
}

/// `VmRSS` of /proc/self/status, in bytes.
pub(crate) fn rss_bytes(status: &str) -> Option<u64> {
    let kb: u64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `write_bytes` of /proc/self/io.
pub(crate) fn write_bytes(io: &str) -> Option<u64> {
    io.lines().find(|l| l.starts_with("write_bytes:"))?.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn proc_parsing() {
        assert_eq!(super::rss_bytes("Name:\tshoal\nVmRSS:\t   20480 kB\n"), Some(20480 * 1024));
        assert_eq!(super::write_bytes("rchar: 1\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n"), Some(8192));
        assert_eq!(super::write_bytes("garbage"), None);
    }
}
