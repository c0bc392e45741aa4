//! The controllers' work queues under client-go's names, read at scrape time from the reconcile
//! runner: `workqueue_depth`, `workqueue_adds_total` and `workqueue_retries_total`, labelled
//! `name` with the controller's kind (`Deployment`, `ReplicaSet`, `scheduler`...).
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::reconcile::runner::{all_queue_stats, QueueStats};

/// Encodes the queues of every controller started in this process.
#[derive(Debug, Default)]
pub(crate) struct WorkqueueCollector;

impl Collector for WorkqueueCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode(&all_queue_stats(), &mut encoder)
    }
}

pub(crate) fn encode(
    queues: &[(&'static str, std::sync::Arc<QueueStats>)],
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    if queues.is_empty() {
        return Ok(());
    }
    let mut e = encoder.encode_descriptor("workqueue_depth", "Current depth of workqueue.", None, MetricType::Gauge)?;
    for (name, q) in queues {
        ConstGauge::new(q.depth.load(Ordering::Relaxed)).encode(e.encode_family(&[("name", *name)])?)?;
    }
    let mut e = encoder.encode_descriptor(
        "workqueue_adds",
        "Total number of adds handled by workqueue.",
        None,
        MetricType::Counter,
    )?;
    for (name, q) in queues {
        ConstCounter::new(q.adds.load(Ordering::Relaxed)).encode(e.encode_family(&[("name", *name)])?)?;
    }
    let mut e = encoder.encode_descriptor(
        "workqueue_retries",
        "Total number of retries handled by workqueue.",
        None,
        MetricType::Counter,
    )?;
    for (name, q) in queues {
        ConstCounter::new(q.retries.load(Ordering::Relaxed)).encode(e.encode_family(&[("name", *name)])?)?;
    }
    Ok(())
}
