//! The route-lookup measurement of bench/README.md: a table of many Ingress paths, some of them
//! regexes, and the time one lookup takes (host, then path), as the router does per request.
//! Run by `cargo run --release -p shoal --example ingress_lookup`; a small case runs as a test.
use std::time::Instant;

use serde_json::{json, Value};

use super::table::{build, Classes, Snapshot, Table};

/// What one run measured.
#[derive(Debug, Clone)]
pub struct LookupFigures {
    pub paths: usize,
    pub regex_paths: usize,
    pub lookups: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Lookups that found the route they were meant to.
    pub hits: usize,
    pub build_ms: f64,
    /// This process's resident memory before the table was built (its input already held)
    /// and after: the difference is what the table takes.
    pub rss_before_kib: u64,
    pub rss_with_table_kib: u64,
}

const PER_HOST: usize = 50;

/// Ingresses with `paths` paths in all, `regex` of them on `use-regex` hosts (50 paths a host).
pub(crate) fn snapshot(paths: usize, regex: usize) -> Snapshot {
    let mut ingresses = Vec::new();
    let mut services = Vec::new();
    let mut slices = Vec::new();
    let hosts = paths.div_ceil(PER_HOST);
    let regex_hosts = regex.div_ceil(PER_HOST);
    for h in 0..hosts {
        let is_regex = h < regex_hosts;
        let host = format!("h{h}.bench.test");
        let svc = format!("s{h}");
        let n = PER_HOST.min(paths - h * PER_HOST);
        let list: Vec<Value> = (0..n)
            .map(|i| {
                let (p, ty) = if is_regex {
                    (format!("/api/v{}/r{i}/?(.*)", i % 3), "ImplementationSpecific")
                } else {
                    (format!("/app{i}/v{}", i % 3), "Prefix")
                };
                json!({"path": p, "pathType": ty, "backend": {"service": {"name": svc, "port": {"number": 80}}}})
            })
            .collect();
        let ann = if is_regex { json!({"nginx.ingress.kubernetes.io/use-regex": "true"}) } else { json!({}) };
        ingresses.push(json!({
            "metadata": {"namespace": "default", "name": format!("i{h}"), "creationTimestamp": "2026-01-01T00:00:00Z",
                         "annotations": ann},
            "spec": {"ingressClassName": "shoal", "rules": [{"host": host, "http": {"paths": list}}]}}));
        services.push(json!({"metadata": {"namespace": "default", "name": svc},
                             "spec": {"ports": [{"name": "web", "port": 80, "protocol": "TCP"}]}}));
        slices.push(json!({"metadata": {"namespace": "default", "name": format!("{svc}-1"),
                                        "labels": {"kubernetes.io/service-name": svc}},
                           "ports": [{"name": "web", "port": 8080, "protocol": "TCP"}],
                           "endpoints": [{"addresses": [format!("10.42.{}.{}", h / 250, h % 250 + 2)],
                                          "conditions": {"ready": true}}]}));
    }
    Snapshot { ingresses, classes: Vec::new(), services, slices }
}

/// Builds the table for `paths` paths (`regex` regex) and times `lookups` lookups of request
/// paths spread over every host and path (a tenth of them match nothing).
pub fn measure(paths: usize, regex: usize, lookups: usize) -> LookupFigures {
    measure_table(paths, regex, lookups).0
}

pub(crate) fn measure_table(paths: usize, regex: usize, lookups: usize) -> (LookupFigures, Table) {
    let snap = snapshot(paths, regex);
    let rss_before_kib = rss_kib();
    let t0 = Instant::now();
    let (table, _) = build(&snap, &Classes { extra: Vec::new() });
    let build_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let rss_with_table_kib = rss_kib();
    let hosts = paths.div_ceil(PER_HOST);
    let regex_hosts = regex.div_ceil(PER_HOST);
    let mut samples = Vec::with_capacity(lookups);
    let mut hits = 0;
    // A fixed pseudo-random walk (no rand: the same requests every run).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..lookups {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let h = (x % hosts as u64) as usize;
        let i = ((x >> 20) % PER_HOST as u64) as usize;
        let miss = (x >> 40).is_multiple_of(10);
        let host = format!("h{h}.bench.test");
        let path = match (miss, h < regex_hosts) {
            (true, _) => "/nothing/here".to_string(),
            (false, true) => format!("/api/v{}/r{i}/items/42", i % 3),
            (false, false) => format!("/app{i}/v{}/items/42", i % 3),
        };
        let start = Instant::now();
        let found = table.hosts.server(&host).find(&path).is_some();
        samples.push(start.elapsed().as_nanos() as f64 / 1000.0);
        if found != miss {
            hits += 1;
        }
    }
    samples.sort_by(f64::total_cmp);
    let pick = |q: f64| samples.get(((samples.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(0.0);
    let f = LookupFigures {
        paths,
        regex_paths: regex,
        lookups,
        p50_us: pick(0.5),
        p99_us: pick(0.99),
        max_us: pick(1.0),
        hits,
        build_ms,
        rss_before_kib,
        rss_with_table_kib,
    };
    (f, table)
}

/// This process's resident memory in KiB (Linux), 0 when unknown.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn lookup_bench_routes_every_request_it_means_to() {
        let (f, t) = super::measure_table(300, 100, 2000);
        assert_eq!(f.hits, f.lookups, "{f:?}");
        assert_eq!(t.hosts.exact.len(), 6);
        let regex: usize = t.hosts.exact.values().map(|s| s.regex.len()).sum();
        assert_eq!(regex, 100);
        assert!(f.p99_us > 0.0);
    }
}
