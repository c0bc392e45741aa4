//! The seeds' kubectl walkthrough, run with the real `kubectl` against a rig: every manifest of
//! the seeds applies, the nginx Deployment rolls out, back and scales, the Job completes, the
//! ReplicaSet heals, logs show, and the everyday kubectl commands print what users expect; then
//! the research note's whole kubectl table once with each of kubectl 1.31, 1.32 and 1.33, each
//! against another node, and with kubectl 1.37 (from PyPI) against node 1 (`versions`). Each step is checked on its own so one failure does not hide the others.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub(crate) mod versions;

/// What one step of the walkthrough saw.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: &'static str,
    /// None when the step passed, else what went wrong.
    pub failure: Option<String>,
    pub took: Duration,
}

/// Where the walkthrough runs: a kubeconfig and the API URL of every node (first = node 1).
pub struct Target {
    pub kubeconfig: PathBuf,
    pub servers: Vec<String>,
    pub manifests: PathBuf,
}

type StepResult = std::result::Result<(), String>;

impl Target {
    /// Runs `kubectl ARGS` against node 1; the output, or the error kubectl printed.
    pub fn kubectl(&self, args: &[&str]) -> std::result::Result<String, String> {
        self.kubectl_on(0, args)
    }

    /// Runs `kubectl ARGS` against node `i` (0-based).
    pub fn kubectl_on(&self, i: usize, args: &[&str]) -> std::result::Result<String, String> {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).arg("--request-timeout=15s");
        if let Some(s) = self.servers.get(i) {
            cmd.arg("--server").arg(s);
        }
        let out = cmd.args(args).output().map_err(|e| format!("cannot run kubectl: {e}"))?;
        stdout_or_failure(&format!("`kubectl {}`", args.join(" ")), &out)
    }

    fn manifest(&self, name: &str) -> String {
        self.manifests.join(name).display().to_string()
    }

    /// Polls `f` until it returns Ok or `timeout` passes; the last error otherwise.
    fn wait(&self, what: &str, timeout: Duration, f: impl FnMut() -> StepResult) -> StepResult {
        wait_result(timeout, f).map_err(|e| format!("{what} {e}"))
    }

    fn pods_running(&self, selector: &str, n: usize) -> StepResult {
        let out = self.kubectl(&["get", "pods", "-l", selector, "--no-headers"])?;
        let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
        let running = lines.iter().filter(|l| l.contains(" Running ") && l.contains("1/1")).count();
        if running == n && lines.len() == n {
            Ok(())
        } else {
            Err(format!("want {n} pods Running ({selector}), kubectl shows:\n{out}"))
        }
    }

    fn rs_names(&self) -> std::result::Result<Vec<String>, String> {
        let out = self.kubectl(&[
            "get",
            "rs",
            "-l",
            "app=nginx",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}",
        ])?;
        Ok(out.lines().map(str::to_string).filter(|l| !l.is_empty()).collect())
    }

    fn rs_ready(&self, name: &str, n: u32) -> StepResult {
        let out = self.kubectl(&["get", "rs", name, "-o", "jsonpath={.spec.replicas} {.status.readyReplicas}"])?;
        if out.trim() == format!("{n} {n}") {
            Ok(())
        } else {
            Err(format!("replicaset {name}: spec/ready {out:?}, want {n}/{n}"))
        }
    }
}

/// What a finished command printed on stdout, or, when it failed, `what` with its stderr and
/// stdout.
fn stdout_or_failure(what: &str, out: &std::process::Output) -> std::result::Result<String, String> {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{what} failed: {}{}", String::from_utf8_lossy(&out.stderr).trim(), stdout.trim()))
    }
}

/// Polls `f` until it returns Ok (its value) or `timeout` passes (the last error).
fn wait_result<T>(
    timeout: Duration,
    mut f: impl FnMut() -> std::result::Result<T, String>,
) -> std::result::Result<T, String> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() > timeout => return Err(format!("within {timeout:?}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn contains(out: &str, want: &str) -> StepResult {
    if out.contains(want) {
        Ok(())
    } else {
        Err(format!("output lacks {want:?}:\n{out}"))
    }
}

/// Every step name, in order.
pub const STEPS: &[&str] = &[
    "nodes-ready",
    "apply-every-manifest",
    "nginx-get-all",
    "nginx-rollout-cpu200",
    "nginx-rollout-history",
    "nginx-rollout-undo",
    "nginx-scale",
    "get-output-formats",
    "describe",
    "label-annotate",
    "job-parallel-completes",
    "rs-node-web-heals",
    "logs-pod-example",
    "write-n1-visible-n3",
    "create-kinds",
    "expose",
    "run",
    "api-resources",
    "kubectl-1.31-on-node-1",
    "kubectl-1.32-on-node-2",
    "kubectl-1.33-on-node-3",
    "kubectl-1.37-on-node-1",
    "kubectl-debug-1.33-on-node-2",
    "kubectl-debug-1.37-on-node-3",
    "kubectl-debug-node",
];

/// Runs the walkthrough; one result per entry of `STEPS`.
pub fn run(t: &Target) -> Vec<Step> {
    let mut first_rs = String::new();
    let mut steps = Vec::new();
    // SHOAL_WALKTHROUGH_STEPS=a,b runs only those steps (with nodes-ready), to try one locally.
    let only: Option<Vec<String>> = std::env::var("SHOAL_WALKTHROUGH_STEPS")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    for &name in STEPS {
        if only.as_ref().is_some_and(|o| name != "nodes-ready" && !o.iter().any(|x| x == name)) {
            continue;
        }
        let start = Instant::now();
        let r = match name {
            "nodes-ready" => t.wait("3 Ready nodes", Duration::from_secs(60), || {
                let out = t.kubectl(&["get", "nodes", "--no-headers"])?;
                let ready = out.lines().filter(|l| l.split_whitespace().nth(1) == Some("Ready")).count();
                if ready == 3 {
                    Ok(())
                } else {
                    Err(format!("kubectl get nodes:\n{out}"))
                }
            }),
            "apply-every-manifest" => apply_every_manifest(t),
            "nginx-get-all" => (|| {
                let out = t.kubectl(&["apply", "-f", &t.manifest("nginx_deployment_k8s.yaml")])?;
                contains(&out, "deployment.apps/nginx created")?;
                t.wait("nginx: 1 deployment, 1 replicaset, 2 pods", Duration::from_secs(90), || {
                    let out = t.kubectl(&["get", "all", "-l", "app=nginx"])?;
                    let deps = out.lines().filter(|l| l.starts_with("deployment.apps/nginx ")).count();
                    let rss = out.lines().filter(|l| l.starts_with("replicaset.apps/nginx-")).count();
                    let pods = out.lines().filter(|l| l.starts_with("pod/nginx-") && l.contains("Running")).count();
                    if deps == 1 && rss == 1 && pods == 2 {
                        Ok(())
                    } else {
                        Err(format!("kubectl get all:\n{out}"))
                    }
                })?;
                first_rs = t.rs_names()?.into_iter().next().unwrap_or_default();
                Ok(())
            })(),
            "nginx-rollout-cpu200" => (|| {
                let out = t.kubectl(&["apply", "-f", &t.manifest("nginx_deployment_cpu200_k8s.yaml")])?;
                contains(&out, "deployment.apps/nginx configured")?;
                t.wait("a second ReplicaSet with the 2 pods", Duration::from_secs(90), || {
                    let names = t.rs_names()?;
                    let new: Vec<&String> = names.iter().filter(|n| **n != first_rs).collect();
                    if names.len() != 2 || new.len() != 1 {
                        return Err(format!("replicasets {names:?}"));
                    }
                    t.rs_ready(new[0], 2)?;
                    t.rs_ready(&first_rs, 0)
                })
            })(),
            "nginx-rollout-history" => (|| {
                let out = t.kubectl(&["rollout", "history", "deployment", "nginx"])?;
                let revs: Vec<&str> = out
                    .lines()
                    .skip_while(|l| !l.starts_with("REVISION"))
                    .skip(1)
                    .filter_map(|l| l.split_whitespace().next())
                    .collect();
                if revs == ["1", "2"] {
                    Ok(())
                } else {
                    Err(format!("want revisions 1 and 2:\n{out}"))
                }
            })(),
            "nginx-rollout-undo" => (|| {
                let out = t.kubectl(&["rollout", "undo", "deployment", "nginx", "--to-revision=1"])?;
                contains(&out, "deployment.apps/nginx rolled back")?;
                t.wait("the first ReplicaSet back with 2 pods", Duration::from_secs(90), || t.rs_ready(&first_rs, 2))
            })(),
            "nginx-scale" => (|| {
                let out = t.kubectl(&["scale", "deployment", "nginx", "--replicas=3"])?;
                contains(&out, "deployment.apps/nginx scaled")?;
                t.wait("3 nginx pods Running", Duration::from_secs(60), || t.pods_running("app=nginx", 3))
            })(),
            "get-output-formats" => (|| {
                let wide = t.kubectl(&["get", "pods", "-l", "app=nginx", "-o", "wide"])?;
                contains(&wide, "NODE")?;
                contains(&wide, "IP")?;
                let yaml = t.kubectl(&["get", "deployment", "nginx", "-o", "yaml"])?;
                contains(&yaml, "kind: Deployment")?;
                let json = t.kubectl(&["get", "deployment", "nginx", "-o", "json"])?;
                let v: serde_json::Value =
                    serde_json::from_str(&json).map_err(|e| format!("-o json is not JSON: {e}"))?;
                if v["kind"] != "Deployment" || v["metadata"]["name"] != "nginx" {
                    return Err(format!("-o json: kind {} name {}", v["kind"], v["metadata"]["name"]));
                }
                let jp = t.kubectl(&["get", "deployment", "nginx", "-o", "jsonpath={.spec.replicas}"])?;
                if jp.trim() == "3" {
                    Ok(())
                } else {
                    Err(format!("jsonpath .spec.replicas = {jp:?}, want 3"))
                }
            })(),
            "describe" => (|| {
                let out = t.kubectl(&["describe", "deployment", "nginx"])?;
                contains(&out, "Name:")?;
                contains(&out, "Replicas:")?;
                contains(&out, "NewReplicaSet:")
            })(),
            "label-annotate" => (|| {
                let pod = t.kubectl(&["get", "pods", "-l", "app=nginx", "-o", "jsonpath={.items[0].metadata.name}"])?;
                let out = t.kubectl(&["label", "pod", pod.trim(), "tier=web"])?;
                contains(&out, "labeled")?;
                contains(&t.kubectl(&["get", "pods", "-l", "tier=web", "-o", "name"])?, pod.trim())?;
                let out = t.kubectl(&["annotate", "pod", pod.trim(), "note=walkthrough"])?;
                contains(&out, "annotated")?;
                let a = t.kubectl(&["get", "pod", pod.trim(), "-o", "jsonpath={.metadata.annotations.note}"])?;
                if a.trim() == "walkthrough" {
                    Ok(())
                } else {
                    Err(format!("annotation note = {a:?}"))
                }
            })(),
            "job-parallel-completes" => (|| {
                // throw-dice succeeds with probability 1/6 and failed pods are retried with a
                // back-off of 10 s doubling per failure, as upstream does: 3/3 can take many
                // minutes. Within the budget the Job must either complete or visibly retry.
                t.kubectl(&["apply", "-f", &t.manifest("job-parallel.yaml")])?;
                let done = t.wait("throw-dice-job 3/3", Duration::from_secs(150), || {
                    let out = t.kubectl(&["get", "job", "throw-dice-job", "--no-headers"])?;
                    if out.split_whitespace().nth(1) == Some("3/3") {
                        Ok(())
                    } else {
                        Err(format!("kubectl get job:\n{out}"))
                    }
                });
                if done.is_ok() {
                    return Ok(());
                }
                let job = t.kubectl(&["get", "job", "throw-dice-job", "-o", "json"])?;
                let job: serde_json::Value = serde_json::from_str(&job).map_err(|e| format!("job -o json: {e}"))?;
                let st = &job["status"];
                let (ok, failed) = (st["succeeded"].as_u64().unwrap_or(0), st["failed"].as_u64().unwrap_or(0));
                let job_failed = st["conditions"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["type"] == "Failed" && c["status"] == "True"));
                let pods = t.kubectl(&["get", "pods", "-l", "job-name=throw-dice-job", "--no-headers"])?;
                let npods = pods.lines().filter(|l| !l.trim().is_empty()).count();
                if job_failed || failed == 0 || npods <= 3 {
                    return Err(format!("no completion and no visible retries: status {st}, pods:\n{pods}"));
                }
                eprintln!("walkthrough: NOTE throw-dice-job not 3/3 within 150 s (succeeded {ok}, failed {failed}, {npods} pods): retries visible, the dice were unlucky");
                Ok(())
            })(),
            "rs-node-web-heals" => (|| {
                t.kubectl(&["apply", "-f", &t.manifest("rs-node-web.yaml")])?;
                t.wait("3 node-web pods Running", Duration::from_secs(60), || t.pods_running("app=node-web", 3))?;
                let victim =
                    t.kubectl(&["get", "pods", "-l", "app=node-web", "-o", "jsonpath={.items[0].metadata.name}"])?;
                t.kubectl(&["delete", "pod", victim.trim(), "--wait=false"])?;
                t.wait("3 node-web pods Running after a delete", Duration::from_secs(60), || {
                    let names = t.kubectl(&["get", "pods", "-l", "app=node-web", "-o", "name"])?;
                    if names.contains(victim.trim()) {
                        return Err(format!("{} still listed", victim.trim()));
                    }
                    t.pods_running("app=node-web", 3)
                })
            })(),
            "logs-pod-example" => (|| {
                t.kubectl(&["apply", "-f", &t.manifest("pod-example.yaml")])?;
                t.wait("`kubectl logs example` shows started", Duration::from_secs(60), || {
                    contains(&t.kubectl(&["logs", "example"])?, "started")
                })
            })(),
            "write-n1-visible-n3" => (|| {
                if t.servers.len() < 3 {
                    return Err("needs 3 servers".to_string());
                }
                t.kubectl_on(0, &["create", "configmap", "cross-node", "--from-literal=written=n1"])?;
                let start = Instant::now();
                t.wait("the ConfigMap through node 3", Duration::from_secs(10), || {
                    let v = t.kubectl_on(2, &["get", "configmap", "cross-node", "-o", "jsonpath={.data.written}"])?;
                    if v.trim() == "n1" {
                        Ok(())
                    } else {
                        Err(format!("data.written = {v:?}"))
                    }
                })?;
                let took = start.elapsed();
                eprintln!("walkthrough: write through node 1 visible through node 3 after {} ms (kubectl round trips included)", took.as_millis());
                Ok(())
            })(),
            "create-kinds" => (|| {
                contains(
                    &t.kubectl(&["create", "deployment", "walk-web", "--image=nginx"])?,
                    "deployment.apps/walk-web created",
                )?;
                contains(&t.kubectl(&["create", "namespace", "walk-ns"])?, "namespace/walk-ns created")?;
                contains(
                    &t.kubectl(&["create", "configmap", "walk-cm", "--from-literal=a=b"])?,
                    "configmap/walk-cm created",
                )?;
                contains(
                    &t.kubectl(&["create", "secret", "generic", "walk-secret", "--from-literal=p=q"])?,
                    "secret/walk-secret created",
                )?;
                let d = t.kubectl(&["get", "secret", "walk-secret", "-o", "jsonpath={.data.p}"])?;
                if d.trim() != "cQ==" {
                    return Err(format!("secret data.p = {d:?}, want cQ=="));
                }
                contains(&t.kubectl(&["get", "namespaces"])?, "walk-ns")
            })(),
            "expose" => (|| {
                contains(&t.kubectl(&["expose", "deployment", "nginx", "--port=80"])?, "service/nginx exposed")?;
                let ip = t.kubectl(&["get", "service", "nginx", "-o", "jsonpath={.spec.clusterIP}"])?;
                if ip.trim().parse::<std::net::Ipv4Addr>().is_ok() {
                    Ok(())
                } else {
                    Err(format!("clusterIP {ip:?}"))
                }
            })(),
            "run" => (|| {
                contains(
                    &t.kubectl(&["run", "walk-run", "--image=busybox:1.25", "--", "sleep", "3600"])?,
                    "pod/walk-run created",
                )?;
                t.wait("walk-run Running", Duration::from_secs(60), || {
                    let p = t.kubectl(&["get", "pod", "walk-run", "-o", "jsonpath={.status.phase}"])?;
                    if p.trim() == "Running" {
                        Ok(())
                    } else {
                        Err(format!("phase {p:?}"))
                    }
                })
            })(),
            "api-resources" => (|| {
                let out = t.kubectl(&["api-resources"])?;
                for want in
                    ["deployments", "replicasets", "configmaps", "jobs", "namespaces", "customresourcedefinitions"]
                {
                    contains(&out, want)?;
                }
                Ok(())
            })(),
            "kubectl-1.31-on-node-1" => versions::table(t, "1.31", 0),
            "kubectl-1.32-on-node-2" => versions::table(t, "1.32", 1),
            "kubectl-1.33-on-node-3" => versions::table(t, "1.33", 2),
            "kubectl-1.37-on-node-1" => versions::table(t, "1.37", 0),
            "kubectl-debug-1.33-on-node-2" => versions::debug(t, "1.33", 1),
            "kubectl-debug-1.37-on-node-3" => versions::debug(t, "1.37", 2),
            "kubectl-debug-node" => versions::debug_node(t, "1.33", 0),
            other => Err(format!("unknown step {other}")),
        };
        let step = Step { name, failure: r.err(), took: start.elapsed() };
        eprintln!(
            "walkthrough step {name}: {} ({:.1} s)",
            if step.failure.is_none() { "ok" } else { "FAILED" },
            step.took.as_secs_f64()
        );
        steps.push(step);
    }
    steps
}

/// Applies every manifest of the seeds unchanged into a namespace of its own (so the names do
/// not meet the walkthrough's), then deletes that namespace.
fn apply_every_manifest(t: &Target) -> StepResult {
    let ns = "manifests";
    let _ = t.kubectl(&["create", "namespace", ns]);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&t.manifests)
        .map_err(|e| format!("read {}: {e}", t.manifests.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut failures = Vec::new();
    for f in &files {
        let path = f.display().to_string();
        if let Err(e) = t.kubectl(&["apply", "-n", ns, "-f", &path]) {
            failures.push(format!("{}: {e}", file_name(f)));
        }
    }
    let _ = t.kubectl(&["delete", "namespace", ns, "--wait=false"]);
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
}
