//! Observability checked with the real tools, as steps of a 3-node scenario: Debian's
//! `prometheus` scrapes every node's `/metrics` over HTTPS with a certificate of group
//! `system:monitoring`, and its own HTTP API must show `up == 1` for each node and a non-zero
//! rate of `apiserver_request_total` on each after kubectl calls.
//!
//! Prometheus runs on the rig's client host with a temporary config and data dir (in the
//! scenario's scratch dir) and is killed when the step ends, whatever its outcome. The Debian
//! package's own service is not used (scripts/test.sh installs the package and stops it).

use std::collections::BTreeSet;
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
    // shoal's own families reach Prometheus: Raft commits timed somewhere, and the gossip
    // drop and flap counters present on every node.
    let (mut commits, mut drops) = (Vec::new(), Vec::new());
    wait_until(
        "shoal's Raft and gossip families in prometheus",
        Duration::from_secs(60),
        Duration::from_secs(1),
        || {
            commits = query(rig, &k.client, "shoal_raft_commit_duration_seconds_count")
                .map(|r| by_instance(&r))
                .unwrap_or_default();
            drops = query(
                rig,
                &k.client,
                "sum by (instance) (shoal_gossip_datagrams_dropped_total) + on (instance) shoal_gossip_flaps_total",
            )
            .map(|r| by_instance(&r))
            .unwrap_or_default();
            commits.iter().any(|(_, v)| *v > 0.0) && drops.len() == targets.len()
        },
    )
    .map_err(|e| failed(scenario, format!("{e}: commits = {commits:?}, gossip drops + flaps = {drops:?}")))?;
    m.notes.push(format!("prometheus: raft commits per node {commits:?}, gossip drops + flaps per node {drops:?}"));
    let checked = no_plain_metrics(rig, &k.client, hosts).map_err(|e| failed(scenario, e))?;
    m.notes.push(format!("no plain-HTTP /metrics on the defaults: {checked} listening TCP ports tried"));
    Ok(())
}

/// On the defaults the plain metrics listener is off: every TCP port a node listens on is
/// asked `GET /metrics` over plain HTTP from `client`, and none answers with the metrics. The
/// number of ports tried.
fn no_plain_metrics(rig: &dyn Rig, client: &str, hosts: &[String]) -> std::result::Result<usize, String> {
    let mut tried = 0;
    for h in hosts {
        let addr = rig.address(h).map_err(|e| e.to_string())?;
        let out = rig.exec_timeout(h, &["ss", "-Hltn"], Duration::from_secs(10)).map_err(|e| e.to_string())?;
        let ports: BTreeSet<u16> = out
            .stdout
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .filter(|local| !local.starts_with("127.") && !local.starts_with("[::1]"))
            .filter_map(|local| local.rsplit(':').next()?.parse().ok())
            .collect();
        if ports.is_empty() {
            return Err(format!("{h} listens on no TCP port: {}{}", out.stdout, out.stderr));
        }
        for port in ports {
            let url = format!("http://{addr}:{port}/metrics");
            let got = rig
                .exec_timeout(client, &["curl", "-s", "-m", "3", &url], Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            if got.stdout.contains("apiserver_request_total") {
                return Err(format!("{url} serves the metrics over plain HTTP on the defaults"));
            }
            tried += 1;
        }
    }
    Ok(tried)
}

/// Debian's chromium, the browser of the status page's test.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Playwright for Python, from PyPI (it drives the system chromium; its own browsers are not
/// downloaded).
const PLAYWRIGHT: &str = "playwright==1.*";

/// The browser script of [`StatusPage`].
const STATUS_PAGE_PY: &str = include_str!("observe/status_page.py");

/// How long the browser waits for each step of the page.
const PAGE_STEP_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `cmd` on this machine; its stdout, or why it failed.
fn local(cmd: &mut std::process::Command) -> std::result::Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Debian's chromium, installed with apt-get when missing (the tests run as root).
fn ensure_chromium() -> std::result::Result<(), String> {
    if Path::new(CHROMIUM).exists() {
        return Ok(());
    }
    info!("installing Debian's chromium");
    local(
        std::process::Command::new("apt-get")
            .args(["install", "-y", "-q", "chromium"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    if Path::new(CHROMIUM).exists() {
        Ok(())
    } else {
        Err(format!("apt-get install chromium brought no {CHROMIUM}"))
    }
}

/// Playwright installed once with `pip install --target` into a cache directory
/// (`SHOAL_KUBECTL_CACHE`, default the system temp dir) under a temporary name, then renamed;
/// the directory to put on PYTHONPATH.
fn playwright_dir() -> std::result::Result<std::path::PathBuf, String> {
    let cache =
        std::env::var_os("SHOAL_KUBECTL_CACHE").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = cache.join("shoal-playwright-1");
    if dir.join("playwright").is_dir() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let partial = cache.join(format!("shoal-playwright-1.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let r = local(
        std::process::Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-cache-dir", "--target"])
            .arg(&partial)
            .arg(PLAYWRIGHT),
    );
    if let Err(e) = r {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(format!("pip install {PLAYWRIGHT}: {e}"));
    }
    if std::fs::rename(&partial, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    Ok(dir)
}

/// The status page open in headless Chromium on the client host (see `status_page.py`): it
/// signs in and reports each step it saw in a progress file. Stopped (by its pid) when dropped.
pub(crate) struct StatusPage<'a> {
    rig: &'a dyn Rig,
    client: String,
    pid: String,
    dir: std::path::PathBuf,
    scenario: String,
}

impl Drop for StatusPage<'_> {
    fn drop(&mut self) {
        // SIGTERM lets the script close the browser; then the whole group, whatever is left.
        let _ = self.rig.exec_timeout(&self.client, &["kill", "-TERM", &self.pid], Duration::from_secs(5));
        std::thread::sleep(Duration::from_secs(1));
        let group = format!("-{}", self.pid);
        let _ = self.rig.exec_timeout(&self.client, &["kill", "-KILL", "--", &group], Duration::from_secs(5));
    }
}

impl<'a> StatusPage<'a> {
    /// Gives a ServiceAccount read access to what the page shows, mints its token with `kubectl
    /// create token`, and opens `https://HOST:6443/ui/` in the browser, which signs in with it.
    /// The page must show the Running pod `pod` (namespace/name) once the scenario creates it.
    pub(crate) fn open(
        rig: &'a dyn Rig,
        k: &Kubectl<'_>,
        host: &str,
        pod: &str,
        scratch: &Scratch,
        scenario: &str,
    ) -> Result<StatusPage<'a>> {
        ensure_chromium().map_err(|e| failed(scenario, e))?;
        let pythonpath = playwright_dir().map_err(|e| failed(scenario, e))?;
        // The interpreter itself (not a shim), so that it runs the same on the client host.
        let python = local(std::process::Command::new("python3").args(["-c", "import sys; print(sys.executable)"]))
            .map_err(|e| failed(scenario, e))?;
        let step = |what: &str, r: std::result::Result<String, String>| {
            r.map_err(|e| failed(scenario, format!("{what}: {e}")))
        };
        step("create serviceaccount", k.on(host, &["create", "serviceaccount", "status-page", "-n", "kube-system"]))?;
        step(
            "create clusterrole",
            k.on(
                host,
                &[
                    "create",
                    "clusterrole",
                    "status-page",
                    "--verb=get,list,watch",
                    "--resource=nodes,pods,services,events,leases.coordination.k8s.io",
                ],
            ),
        )?;
        step(
            "create clusterrolebinding",
            k.on(
                host,
                &[
                    "create",
                    "clusterrolebinding",
                    "status-page",
                    "--clusterrole=status-page",
                    "--serviceaccount=kube-system:status-page",
                ],
            ),
        )?;
        let token = step(
            "create token",
            k.on(host, &["create", "token", "status-page", "-n", "kube-system", "--duration=1h"]),
        )?;
        let dir = scratch.0.join("status-page");
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io { op: "create dir", path: dir.clone(), source })?;
        let token_file = dir.join("token");
        std::fs::write(&token_file, token.trim()).map_err(|source| Error::Io {
            op: "write",
            path: token_file.clone(),
            source,
        })?;
        let script = dir.join("status_page.py");
        std::fs::write(&script, STATUS_PAGE_PY).map_err(|source| Error::Io {
            op: "write",
            path: script.clone(),
            source,
        })?;
        let shots = crate::results::default_out_dir().join("status-page");
        std::fs::create_dir_all(&shots).map_err(|source| Error::Io {
            op: "create dir",
            path: shots.clone(),
            source,
        })?;
        let url = format!("https://{}:6443/ui/", rig.address(host)?);
        let sh = format!(
            "HOME={d} PYTHONPATH={pp} setsid {python} {s} {url} {t} {shots} {d}/progress {pod} {timeout} >{d}/browser.log 2>&1 </dev/null & echo $!",
            d = dir.display(),
            pp = pythonpath.display(),
            s = script.display(),
            t = token_file.display(),
            shots = shots.display(),
            timeout = PAGE_STEP_TIMEOUT.as_secs(),
        );
        let client = k.client.clone();
        let out = rig.exec_timeout(&client, &["sh", "-c", &sh], Duration::from_secs(10))?;
        let pid = out.stdout.trim().to_string();
        if !out.success() || pid.is_empty() || !pid.chars().all(|c| c.is_ascii_digit()) {
            return Err(failed(scenario, format!("the browser did not start: {}{}", out.stdout, out.stderr)));
        }
        info!(url, "status page open in chromium");
        Ok(StatusPage { rig, client, pid, dir, scenario: scenario.to_string() })
    }

    /// The steps the browser reported so far.
    fn steps(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("progress"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until the browser reports `step`; its report. A failed step, or a browser that
    /// exited, fails at once (with the browser's log).
    pub(crate) fn wait(&self, step: &str, timeout: Duration) -> Result<Value> {
        let mut found = None;
        let mut error = None;
        let _ = wait_until(&format!("the status page shows {step}"), timeout, Duration::from_millis(500), || {
            let steps = self.steps();
            if let Some(e) = steps.iter().find(|s| s.get("error").is_some()) {
                error = Some(e.to_string());
                return true;
            }
            found = steps.into_iter().find(|s| s["step"] == step);
            if found.is_none() {
                let alive = self.rig.exec_timeout(&self.client, &["kill", "-0", &self.pid], Duration::from_secs(5));
                if !alive.is_ok_and(|o| o.success()) {
                    error = Some("the browser script exited".into());
                    return true;
                }
            }
            found.is_some()
        });
        if let Some(v) = found {
            return Ok(v);
        }
        let log = std::fs::read_to_string(self.dir.join("browser.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        Err(failed(
            &self.scenario,
            format!(
                "the status page never showed {step} within {timeout:?}: {}; browser log (newest first): {}",
                error.unwrap_or_else(|| "timed out".into()),
                tail.join(" | ")
            ),
        ))
    }
}

/// The status page in Chromium, through `host`: a wrong token refused, 3 nodes after signing in
/// (figures `ui_first_load_bytes`, `ui_first_load_s`, `ui_three_nodes_s`), then a pod created
/// with `kubectl run` appears Running. The returned page then waits for a node going NotReady
/// ([`StatusPage::wait`] `notready`).
pub(crate) fn status_page_live<'a>(
    rig: &'a dyn Rig,
    k: &Kubectl<'_>,
    host: &str,
    scratch: &Scratch,
    scenario: &str,
    m: &mut Measured,
) -> Result<StatusPage<'a>> {
    let page = StatusPage::open(rig, k, host, "default/ui-probe", scratch, scenario)?;
    let refused = page.wait("refused", Duration::from_secs(120))?;
    let nodes = page.wait("nodes", Duration::from_secs(120))?;
    for (figure, field) in [
        ("ui_first_load_bytes", "first_load_bytes"),
        ("ui_first_load_s", "first_load_s"),
        ("ui_three_nodes_s", "three_nodes_s"),
        ("ui_signin_to_nodes_s", "signin_to_nodes_s"),
    ] {
        if let Some(v) = nodes[field].as_f64() {
            m.set(figure, v);
        }
    }
    k.on(host, &["run", "ui-probe", "--image=nginx", "--image-pull-policy=IfNotPresent"])
        .map_err(|e| failed(scenario, format!("kubectl run: {e}")))?;
    page.wait("pod", Duration::from_secs(240))?;
    m.notes.push(format!(
        "status page in chromium: a wrong token refused ({}), 3 nodes, 3 members led by {}, pod ui-probe Running after kubectl run",
        refused["message"].as_str().unwrap_or_default(),
        nodes["leader"].as_str().unwrap_or("?")
    ));
    Ok(page)
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
    fn the_browser_script_is_python_and_reports_every_step() {
        let out = std::process::Command::new("python3")
            .args(["-c", "import ast, sys; ast.parse(sys.stdin.read())"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin.take().map(|mut i| i.write_all(STATUS_PAGE_PY.as_bytes())).transpose()?;
                c.wait_with_output()
            });
        let out = out.expect("python3");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        for step in
            ["step=\"refused\"", "step=\"nodes\"", "step=\"pod\"", "step=\"notready\"", "#cluster tr[data-leader="]
        {
            assert!(STATUS_PAGE_PY.contains(step), "{step}");
        }
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
