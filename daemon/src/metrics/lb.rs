//! LoadBalancer announcements: at scrape time `shoal_lb_announced_ips` (IPs this node
//! announces) and `shoal_lb_ips` (LoadBalancer IPs known, whoever announces them); counted by
//! the announcer, `shoal_lb_failovers_total` (IPs this node took over from another node),
//! `shoal_lb_arp_replies_total` (this node's ARP/NDP probes that another host answered, so the
//! IP was not taken yet) and `shoal_lb_announcements_total` (gratuitous ARP / unsolicited NA
//! sent). The kernel answers the ARP requests for an announced IP itself; those are not counted.
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// An IP and the node elected to announce it, as the announcer's table has them.
pub(crate) type Winner<'a> = (std::net::IpAddr, Option<&'a str>);

/// The announcer's counters.
#[derive(Default)]
pub(crate) struct LbMetrics {
    pub failovers: Counter,
    pub arp_replies: Counter,
    pub announcements: Counter,
}

impl LbMetrics {
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "shoal_lb_failovers",
            "LoadBalancer IPs this node took over from another node.",
            self.failovers.clone(),
        );
        r.register(
            "shoal_lb_arp_replies",
            "ARP/NDP probes of this node answered by another host still holding the IP.",
            self.arp_replies.clone(),
        );
        r.register(
            "shoal_lb_announcements",
            "Gratuitous ARP / unsolicited neighbour advertisements sent by this node.",
            self.announcements.clone(),
        );
    }
}

/// Counts the IPs `node` wins in `now` that another node held in `before`.
pub(crate) fn took_over<'a>(
    before: impl IntoIterator<Item = Winner<'a>>,
    now: impl IntoIterator<Item = Winner<'a>>,
    node: &str,
) {
    let before: Vec<Winner<'a>> = before.into_iter().collect();
    let n = now
        .into_iter()
        .filter(|(_, w)| *w == Some(node))
        .filter(|(ip, _)| before.iter().any(|(b, w)| b == ip && w.is_some_and(|w| w != node)))
        .count();
    if n > 0 {
        super::global().lb.failovers.inc_by(n as u64);
    }
}

/// A probe another host answered.
pub(crate) fn probe_answered() {
    super::global().lb.arp_replies.inc();
}

/// One gratuitous ARP / NA sent.
pub(crate) fn announced() {
    super::global().lb.announcements.inc();
}

/// `mine` of the `known` LoadBalancer IPs are announced by this node.
pub(crate) fn encode(mine: usize, known: usize, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(mine as i64);
    g.encode(encoder.encode_descriptor(
        "shoal_lb_announced_ips",
        "LoadBalancer IPs this node announces (ARP/NDP).",
        None,
        g.metric_type(),
    )?)?;
    let g = ConstGauge::new(known as i64);
    g.encode(encoder.encode_descriptor(
        "shoal_lb_ips",
        "LoadBalancer IPs this node knows of, whoever announces them.",
        None,
        g.metric_type(),
    )?)?;
    Ok(())
}
