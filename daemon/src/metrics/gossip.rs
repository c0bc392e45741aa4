//! Gossip membership at scrape time: `shoal_gossip_members_alive` and `shoal_gossip_members`.
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

pub(crate) fn encode(members: &[shoal_gossip::Member], encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let alive = members.iter().filter(|m| m.alive).count();
    let g = ConstGauge::new(alive as i64);
    g.encode(encoder.encode_descriptor(
        "shoal_gossip_members_alive",
        "Gossip members this node sees alive (itself included).",
        None,
        g.metric_type(),
    )?)?;
    let g = ConstGauge::new(members.len() as i64);
    g.encode(encoder.encode_descriptor(
        "shoal_gossip_members",
        "Gossip members this node knows, alive or not.",
        None,
        g.metric_type(),
    )?)?;
    Ok(())
}
