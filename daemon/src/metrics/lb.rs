//! LoadBalancer announcements at scrape time: `shoal_lb_announced_ips` (IPs this node
//! announces) and `shoal_lb_ips` (LoadBalancer IPs known, whoever announces them).
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

use crate::lb::Announcement;

pub(crate) fn encode(
    node: &str,
    list: &[Announcement],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let mine = list.iter().filter(|a| a.node.as_deref() == Some(node)).count();
    let g = ConstGauge::new(mine as i64);
    g.encode(encoder.encode_descriptor(
        "shoal_lb_announced_ips",
        "LoadBalancer IPs this node announces (ARP/NDP).",
        None,
        g.metric_type(),
    )?)?;
    let g = ConstGauge::new(list.len() as i64);
    g.encode(encoder.encode_descriptor(
        "shoal_lb_ips",
        "LoadBalancer IPs this node knows of, whoever announces them.",
        None,
        g.metric_type(),
    )?)?;
    Ok(())
}
