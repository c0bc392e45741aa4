//! Gossip membership at scrape time: `shoal_gossip_members_alive`, `shoal_gossip_members`,
//! `shoal_gossip_flaps_total` (returns of a member held back by flap damping) and
//! `shoal_gossip_datagrams_dropped_total{reason}` (datagrams the authenticated transport
//! refused: `plaintext` without a seal, `unauthenticated` when the seal did not verify).
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

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

/// The damping and transport counters of this node's gossip.
pub(crate) fn encode_counters(
    flaps: u64,
    dropped: shoal_gossip::seal::SealStats,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(flaps);
    c.encode(encoder.encode_descriptor(
        "shoal_gossip_flaps",
        "Times a member that came back was held dead by flap damping.",
        None,
        c.metric_type(),
    )?)?;
    let mut e = encoder.encode_descriptor(
        "shoal_gossip_datagrams_dropped",
        "Gossip datagrams dropped because they were not sealed with a key of the cluster.",
        None,
        MetricType::Counter,
    )?;
    let unauthenticated = dropped.dropped.saturating_sub(dropped.dropped_plaintext);
    for (reason, n) in [("plaintext", dropped.dropped_plaintext), ("unauthenticated", unauthenticated)] {
        ConstCounter::new(n).encode(e.encode_family(&[("reason", reason)])?)?;
    }
    Ok(())
}
