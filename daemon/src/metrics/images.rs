//! Image pulls: `shoal_image_pulls_total{result}` (pulls the node agent asked for, by outcome)
//! and `shoal_image_pull_bytes_total{source}` (blob bytes fetched from peers, that is other
//! nodes' stores, vs from registries, read at scrape time from shoal-images' counts).
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PullLabels {
    pub result: &'static str,
}

#[derive(Default)]
pub(crate) struct ImageMetrics {
    pub pulls: Family<PullLabels, Counter>,
}

impl ImageMetrics {
    pub(crate) fn register(&self, r: &mut Registry) {
        for result in ["success", "failure"] {
            let _ = self.pulls.get_or_create(&PullLabels { result });
        }
        r.register("shoal_image_pulls", "Image pulls from registries by result.", self.pulls.clone());
    }
}

/// Counts one pull the node agent made (`ok`: the image was fetched).
pub(crate) fn pulled(ok: bool) {
    let result = if ok { "success" } else { "failure" };
    super::global().images.pulls.get_or_create(&PullLabels { result }).inc();
}

/// The blob bytes fetched by source.
#[derive(Debug, Default)]
pub(crate) struct PullBytesCollector;

impl Collector for PullBytesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode(shoal_images::stats::bytes_from_peers(), shoal_images::stats::bytes_from_registries(), &mut encoder)
    }
}

pub(crate) fn encode(peers: u64, registries: u64, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let mut e = encoder.encode_descriptor(
        "shoal_image_pull_bytes",
        "Image blob bytes fetched, from peers (other nodes) or from registries.",
        None,
        MetricType::Counter,
    )?;
    ConstCounter::new(peers).encode(e.encode_family(&[("source", "peer")])?)?;
    ConstCounter::new(registries).encode(e.encode_family(&[("source", "registry")])?)?;
    Ok(())
}
