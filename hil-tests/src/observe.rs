//! Observability checked with the real tools, as steps of a 3-node scenario: Debian's
//! `prometheus` scrapes every node's `/metrics` over HTTPS with a certificate of group
//! `system:monitoring`, and its own HTTP API must show `up == 1` for each node and a non-zero
//! rate of `apiserver_request_total` on each after kubectl calls.
//!
//! Prometheus runs on the rig's client host with a temporary config and data dir (in the
//! scenario's scratch dir) and is killed when the step ends, whatever its outcome. The Debian
//! package's own service is not used (scripts/test.sh installs the package and stops it).

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use tracing::info;

use crate::error::{Error, Result};
use crate::proc::wait_until;
use crate::rig::Rig;
use crate::scenarios::Measured;
use crate::services::{Kubectl, Scratch};

/// Debian's prometheus binary.
pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Where the scenario's prometheus listens on the client host (its own network namespace).
const PROM_ADDR: &str = "127.0.0.1:9090";

fn failed(scenario: &str, reason: impl Into<String>) -> Error {
    Error::ScenarioFailed { scenario: scenario.to_string(), reason: reason.into() }
}

/// The field `name: VALUE` of a kubeconfig, base64-decoded.
fn kubeconfig_data(text: &str, name: &str) -> Option<Vec<u8>> {
    let v = text.lines().map(str::trim).find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))?;
    base64::engine::general_purpose::STANDARD.decode(v.trim_matches('"')).ok()
}

/// The scrape config: every node over HTTPS, the cluster CA, the monitoring certificate.
pub fn prometheus_config(dir: &Path, targets: &[String]) -> String {
    let quoted: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: shoal
    scheme: https
    tls_config:
      ca_file: {d}/ca.pem
      cert_file: {d}/client.pem
      key_file: {d}/client-key.pem
    static_configs:
      - targets: [{t}]
"#,
        d = dir.display(),
        t = quoted.join(", ")
    )
}

/// A prometheus started on the client host; killed (by its pid) when dropped.
struct Running<'a> {
    rig: &'a dyn Rig,
    client: String,
    pid: String,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let _ = self.rig.exec_timeout(&self.client, &["kill", "-9", &self.pid], Duration::from_secs(5));
    }
}

/// `GET /api/v1/query?query=Q` of the client host's prometheus: the result vector.
fn query(rig: &dyn Rig, client: &str, q: &str) -> Option<Vec<Value>> {
    let url = format!("http://{PROM_ADDR}/api/v1/query");
    let out = rig
        .exec_timeout(
            client,
            &["curl", "-s", "-m", "3", "-G", &url, "--data-urlencode", &format!("query={q}")],
            Duration::from_secs(8),
        )
        .ok()?;
    let v: Value = serde_json::from_str(&out.stdout).ok()?;
    (v["status"] == "success").then(|| v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// (instance, value) of each series of a query's result.
fn by_instance(result: &[Value]) -> Vec<(String, f64)> {
    result
        .iter()
        .filter_map(|r| {
            let inst = r["metric"]["instance"].as_str()?.to_string();
            let v = r["value"][1].as_str()?.parse::<f64>().ok()?;
            Some((inst, v))
        })
        .collect()
}

/// Debian's prometheus scrapes `hosts`; `up == 1` for each, then a non-zero request rate on
/// each after kubectl calls through every node. Figures: `prometheus_all_up_s`.
pub(crate) fn prometheus_scrapes(
    rig: &dyn Rig,
    k: &Kubectl<'_>,
    hosts: &[String],
    scratch: &Scratch,
    scenario: &str,
    m: &mut Measured,
) -> Result<()> {
    if !Path::new(PROMETHEUS).exists() {
        return Err(failed(
            scenario,
            format!("{PROMETHEUS} is missing: install Debian's prometheus (scripts/test.sh does)"),
        ));
    }
    let dir = scratch.0.join("prometheus");
    std::fs::create_dir_all(dir.join("data")).map_err(|source| Error::Io {
        op: "create dir",
        path: dir.clone(),
        source,
    })?;
    // A certificate of group system:monitoring: /metrics and the health paths, nothing else.
    let kc = crate::shoal::kubeconfig_for(rig, &hosts[0], "prometheus", &["system:monitoring"])?;
    for (field, file) in [
        ("certificate-authority-data", "ca.pem"),
        ("client-certificate-data", "client.pem"),
        ("client-key-data", "client-key.pem"),
    ] {
        let data = kubeconfig_data(&kc, field).ok_or_else(|| failed(scenario, format!("kubeconfig has no {field}")))?;
        let path = dir.join(file);
        std::fs::write(&path, data).map_err(|source| Error::Io { op: "write", path: path.clone(), source })?;
    }
    let mut targets = Vec::new();
    for h in hosts {
        targets.push(format!("{}:6443", rig.address(h)?));
    }
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, prometheus_config(&dir, &targets)).map_err(|source| Error::Io {
        op: "write",
        path: config.clone(),
        source,
    })?;
    let script = format!(
        "setsid {PROMETHEUS} --config.file={c} --storage.tsdb.path={d}/data --web.listen-address={PROM_ADDR} >{d}/prometheus.log 2>&1 </dev/null & echo $!",
        c = config.display(),
        d = dir.display()
    );
    let out = rig.exec_timeout(&k.client, &["sh", "-c", &script], Duration::from_secs(10))?;
    let pid = out.stdout.trim().to_string();
    if !out.success() || pid.is_empty() || !pid.chars().all(|c| c.is_ascii_digit()) {
        return Err(failed(scenario, format!("prometheus did not start: {}{}", out.stdout, out.stderr)));
    }
    let _running = Running { rig, client: k.client.clone(), pid };
    let log = || std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
    let t0 = Instant::now();
    let mut up = Vec::new();
    wait_until("prometheus sees up == 1 for every node", Duration::from_secs(90), Duration::from_secs(1), || {
        up = query(rig, &k.client, "up{job=\"shoal\"}").map(|r| by_instance(&r)).unwrap_or_default();
        up.len() == targets.len() && up.iter().all(|(_, v)| *v == 1.0)
    })
    .map_err(|e| {
        let log = log();
        let tail: Vec<&str> = log.lines().rev().take(8).collect();
        failed(scenario, format!("{e}: up = {up:?}; prometheus log (last lines, newest first): {}", tail.join(" | ")))
    })?;
    let all_up = t0.elapsed().as_secs_f64();
    m.set("prometheus_all_up_s", all_up);
    info!(all_up, "prometheus scrapes every node");
    // A few kubectl calls through each node, then a request rate on each.
    let q = "sum by (instance) (rate(apiserver_request_total{verb=\"LIST\",resource=\"nodes\"}[15s]))";
    let mut rates = Vec::new();
    wait_until("a non-zero LIST nodes rate on every node", Duration::from_secs(60), Duration::from_secs(1), || {
        for h in hosts {
            let _ = k.on(h, &["get", "nodes"]);
        }
        rates = query(rig, &k.client, q).map(|r| by_instance(&r)).unwrap_or_default();
        rates.len() == targets.len() && rates.iter().all(|(_, v)| *v > 0.0)
    })
    .map_err(|e| failed(scenario, format!("{e}: rates = {rates:?}")))?;
    m.notes.push(format!("prometheus: up on {up:?}, LIST nodes rate per node {rates:?}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_fields_decode_and_the_config_names_every_target() {
        let kc = "users:\n- name: u\n  user:\n    client-key-data: aGVsbG8=\n";
        assert_eq!(kubeconfig_data(kc, "client-key-data").as_deref(), Some(&b"hello"[..]));
        assert_eq!(kubeconfig_data(kc, "client-certificate-data"), None);
        let c = prometheus_config(Path::new("/tmp/x"), &["10.77.0.1:6443".into(), "10.77.0.2:6443".into()]);
        assert!(c.contains("targets: [\"10.77.0.1:6443\", \"10.77.0.2:6443\"]"), "{c}");
        assert!(c.contains("cert_file: /tmp/x/client.pem"), "{c}");
    }

    #[test]
    fn series_values_by_instance() {
        let r: Vec<Value> = serde_json::from_str(
            r#"[{"metric":{"instance":"10.77.0.1:6443"},"value":[1,"1"]},{"metric":{},"value":[1,"2"]}]"#,
        )
        .unwrap_or_default();
        assert_eq!(by_instance(&r), vec![("10.77.0.1:6443".to_string(), 1.0)]);
    }
}
