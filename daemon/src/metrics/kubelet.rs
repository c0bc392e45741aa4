//! The kubelet's metrics: `kubelet_pod_start_duration_seconds` (fed by the node agent when a pod
//! first runs), and at scrape time `kubelet_running_pods`, `kubelet_running_containers` and the
//! cAdvisor container usage (`container_cpu_usage_seconds_total`,
//! `container_memory_working_set_bytes`) from the node's last usage sample.
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Cumulative usage of one running container of this node at the last sample (for the
/// cAdvisor-named Prometheus metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContainerSample {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub cpu_usage_ns: u64,
    pub memory_bytes: u64,
}

/// Upstream's buckets of `kubelet_pod_start_duration_seconds`.
pub(crate) const POD_START_BUCKETS: [f64; 25] = [
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0, 300.0, 360.0, 480.0,
    600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];

pub(crate) struct KubeletMetrics {
    pub pod_start: Histogram,
}

impl Default for KubeletMetrics {
    fn default() -> Self {
        KubeletMetrics { pod_start: Histogram::new(POD_START_BUCKETS) }
    }
}

impl KubeletMetrics {
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "kubelet_pod_start_duration_seconds",
            "Duration in seconds from the pod's creation to the pod running, as the node agent saw it.",
            self.pod_start.clone(),
        );
    }
}

/// Records a pod that just reached Running: `created` is its creationTimestamp.
pub(crate) fn pod_started(created: Option<&str>) {
    let Some(ts) = created.and_then(|c| c.parse::<jiff::Timestamp>().ok()) else { return };
    let secs = jiff::Timestamp::now().duration_since(ts).as_secs_f64();
    if secs.is_finite() && secs >= 0.0 {
        super::global().kubelet.pod_start.observe(secs);
    }
}

/// Running pods and containers and their usage, from the node's last sample.
pub(crate) fn encode(samples: &[ContainerSample], encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let pods: std::collections::BTreeSet<(&str, &str)> =
        samples.iter().map(|s| (s.namespace.as_str(), s.pod.as_str())).collect();
    let g = ConstGauge::new(pods.len() as i64);
    g.encode(encoder.encode_descriptor(
        "kubelet_running_pods",
        "Number of pods that have a running pod sandbox",
        None,
        g.metric_type(),
    )?)?;
    let g = ConstGauge::new(samples.len() as i64);
    g.encode(encoder.encode_descriptor(
        "kubelet_running_containers",
        "Number of containers currently running",
        None,
        g.metric_type(),
    )?)?;
    let labels = |s: &ContainerSample| {
        [("container", s.container.clone()), ("pod", s.pod.clone()), ("namespace", s.namespace.clone())]
    };
    let mut e = encoder.encode_descriptor(
        "container_cpu_usage_seconds",
        "Cumulative cpu time consumed in seconds.",
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for s in samples {
        ConstCounter::new(s.cpu_usage_ns as f64 / 1e9).encode(e.encode_family(&labels(s))?)?;
    }
    let mut e = encoder.encode_descriptor(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for s in samples {
        ConstGauge::new(s.memory_bytes as f64).encode(e.encode_family(&labels(s))?)?;
    }
    Ok(())
}
