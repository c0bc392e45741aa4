//! What `rolling-upgrade` needs besides the key-value workload: the previous build of shoal
//! (built once per commit and cached), and a Deployment behind a LoadBalancer Service that a
//! steady kubectl loop and an HTTP loop through the LoadBalancer IP use while every node is
//! upgraded. It reports failed requests and pod restarts (the goal of both is 0).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::error::Result;
use crate::proc::wait_until;
use crate::rig::Rig;
use crate::scenarios::Measured;
use crate::services::{client_answers, failed, kubectl_for, read_polls, Kubectl, Scratch, LB_APP};
use crate::shoal::{self, CONVERGE_TIMEOUT};

/// The client's HTTP loop: one request to the IP every 100 ms, `epoch_ms ok|fail` per line,
/// until the stop file exists. A request that gets no answer within 2 s fails.
const HTTP_LOOP: &str = r#"vip=$1 out=$2 stop=$3
while [ ! -e "$stop" ]; do
  t=$(date +%s%3N)
  if curl -sf -o /dev/null --connect-timeout 1 -m 2 "http://$vip/"; then echo "$t ok"; else echo "$t fail"; fi >>"$out"
  sleep 0.1
done
"#;

fn git(root: &Path, args: &[&str]) -> std::result::Result<String, String> {
    let out = Command::new("git").arg("-C").arg(root).args(args).output().map_err(|e| format!("git: {e}"))?;
    if !out.status.success() {
        return Err(format!("git {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The file that lists the released versions and their commits (tags do not travel with every
/// clone).
const RELEASES_FILE: &str = "packaging/releases";

/// The commit of the last release listed in `packaging/releases` (`VERSION COMMIT` lines,
/// `#` comments), if any.
fn last_listed_release(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join(RELEASES_FILE)).ok()?;
    text.lines()
        .rev()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .find_map(|l| l.split_whitespace().nth(1).map(str::to_string))
}

/// The commit `rev` names; `release` is the merge base of HEAD with the last release tag, or
/// without tags (a clone that did not fetch them) the last release in `packaging/releases`.
pub fn resolve_previous(root: &Path, rev: &str) -> std::result::Result<String, String> {
    let rev = if rev == "release" {
        let release = match git(root, &["describe", "--tags", "--abbrev=0"]) {
            Ok(tag) => tag,
            Err(e) => last_listed_release(root).ok_or_else(|| {
                format!("no release tag ({e}) and no release in {RELEASES_FILE}; set SHOAL_UPGRADE_FROM to a commit")
            })?,
        };
        git(root, &["merge-base", "HEAD", &release])?
    } else {
        rev.to_string()
    };
    git(root, &["rev-parse", "--verify", &format!("{rev}^{{commit}}")])
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

fn run(cmd: &mut Command, what: &str) -> std::result::Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        Err(format!("{what} failed: {}", tail.into_iter().rev().collect::<Vec<_>>().join("\n")))
    }
}

/// The shoal binary of commit `rev` (see [`resolve_previous`]), built on first use and kept in
/// `<target>/upgrade-from/<commit>/shoal`. The build runs in an export of that commit (no git
/// worktree is created) with its own target dir whose dependency artifacts are hard links to
/// this workspace's, so only the workspace crates are compiled.
pub fn previous_binary(rev: &str) -> std::result::Result<PathBuf, String> {
    let root = shoal::workspace_root();
    let commit = resolve_previous(&root, rev)?;
    let target = target_dir(&root);
    let cache = target.join("upgrade-from").join(&commit);
    let bin = cache.join("shoal");
    if bin.is_file() {
        return Ok(bin);
    }
    let work = target.join("upgrade-from").join(format!("build-{commit}"));
    let result = build_in(&root, &commit, &target, &work, &cache, &bin);
    let _ = std::fs::remove_dir_all(&work);
    result.map(|()| bin)
}

fn build_in(
    root: &Path,
    commit: &str,
    target: &Path,
    work: &Path,
    cache: &Path,
    bin: &Path,
) -> std::result::Result<(), String> {
    let t0 = Instant::now();
    let src = work.join("src");
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(&src).map_err(|e| format!("create {}: {e}", src.display()))?;
    let archive = format!("git -C '{}' archive --format=tar {commit} | tar -x -C '{}'", root.display(), src.display());
    run(Command::new("sh").args(["-c", &archive]), "exporting the previous commit")?;
    let own_target = work.join("target");
    let debug = own_target.join("debug");
    std::fs::create_dir_all(&debug).map_err(|e| format!("create {}: {e}", debug.display()))?;
    for d in ["deps", "build", ".fingerprint"] {
        let from = target.join("debug").join(d);
        if from.is_dir() {
            // Hard links: the dependencies are fresh there, and cost no disk.
            let _ = run(Command::new("cp").arg("-al").arg(&from).arg(&debug), "linking dependency artifacts");
        }
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    info!(commit, "building the previous shoal");
    run(
        Command::new(cargo)
            .args(["build", "--locked", "-p", "shoal"])
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", &own_target)
            .env("CARGO_INCREMENTAL", "0"),
        "building the previous shoal",
    )?;
    std::fs::create_dir_all(cache).map_err(|e| format!("create {}: {e}", cache.display()))?;
    let tmp = cache.join(".shoal.partial");
    std::fs::copy(debug.join("shoal"), &tmp).map_err(|e| format!("copy the previous shoal: {e}"))?;
    std::fs::rename(&tmp, bin).map_err(|e| format!("rename {}: {e}", bin.display()))?;
    info!(commit, secs = t0.elapsed().as_secs(), "previous shoal built");
    Ok(())
}

/// One pod: (name, container restarts summed).
type PodState = BTreeMap<String, (String, u64)>;

/// The Deployment behind the LoadBalancer Service, and what was seen of it.
pub(crate) struct App<'a> {
    pub k: Kubectl<'a>,
    pub vip: String,
    pub first: String,
    before: PodState,
}

fn pod_state(k: &Kubectl<'_>, host: &str) -> std::result::Result<PodState, String> {
    let fmt = "jsonpath={range .items[*]}{.metadata.uid} {.metadata.name} {.status.containerStatuses[*].restartCount}{\"\\n\"}{end}";
    let out = k.on(host, &["get", "pods", "-l", "app=lb-web", "-o", fmt])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let uid = w.next()?.to_string();
            let name = w.next()?.to_string();
            let restarts = w.filter_map(|r| r.parse::<u64>().ok()).sum();
            Some((uid, (name, restarts)))
        })
        .collect())
}

/// Deploys 3 replicas of the web app behind a LoadBalancer Service and waits until the IP answers.
pub(crate) fn deploy<'a>(rig: &'a dyn Rig, name: &str, hosts: &[String], scratch: &Scratch) -> Result<App<'a>> {
    let k = kubectl_for(rig, name, hosts, scratch)?;
    let first = hosts[0].clone();
    k.apply_metallb(&first, scratch)?;
    k.apply(&first, &scratch.write("lb-web.yaml", LB_APP)?, CONVERGE_TIMEOUT)?;
    let vip = k
        .ingress_ip(&first, "lb-web", Duration::from_secs(120))
        .map_err(|e| failed(name, format!("{e}: the Service never got a LoadBalancer IP")))?;
    wait_until("3 ready lb-web pods", Duration::from_secs(240), Duration::from_secs(1), || {
        k.on(&first, &["get", "deploy", "lb-web", "-o", "jsonpath={.status.readyReplicas}"])
            .is_ok_and(|s| s.trim() == "3")
    })
    .map_err(|e| failed(name, e.to_string()))?;
    wait_until(&format!("{vip} answering"), Duration::from_secs(120), Duration::from_millis(500), || {
        client_answers(rig, &k.client, &vip)
    })
    .map_err(|e| failed(name, e.to_string()))?;
    let before = pod_state(&k, &first).map_err(|e| failed(name, e))?;
    Ok(App { k, vip, first, before })
}

impl App<'_> {
    /// Waits until `host`'s Node is Ready as the API through `via` says.
    pub(crate) fn wait_node_ready(&self, name: &str, host: &str, via: &str) -> Result<()> {
        let path = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
        wait_until(&format!("node {host} Ready"), CONVERGE_TIMEOUT, Duration::from_millis(500), || {
            self.k.on(via, &["get", "node", host, "-o", path]).is_ok_and(|s| s.trim() == "True")
        })
        .map(|_| ())
        .map_err(|e| failed(name, e.to_string()))
    }

    /// Pods replaced and container restarts since the deploy; fails when the app does not have
    /// its 3 pods ready at the end.
    pub(crate) fn finish(&self, name: &str, m: &mut Measured) -> Result<()> {
        wait_until("3 ready lb-web pods after the upgrade", Duration::from_secs(120), Duration::from_secs(1), || {
            self.k
                .on(&self.first, &["get", "deploy", "lb-web", "-o", "jsonpath={.status.readyReplicas}"])
                .is_ok_and(|s| s.trim() == "3")
        })
        .map_err(|e| failed(name, e.to_string()))?;
        let after = pod_state(&self.k, &self.first).map_err(|e| failed(name, e))?;
        let replaced = self.before.keys().filter(|uid| !after.contains_key(*uid)).count();
        let restarts: u64 =
            after.iter().map(|(uid, (_, r))| r.saturating_sub(self.before.get(uid).map_or(0, |b| b.1))).sum();
        m.set("pods_replaced", replaced as f64);
        m.set("pod_restarts", restarts as f64);
        if replaced > 0 || restarts > 0 {
            let names: Vec<&str> = after.values().map(|(n, _)| n.as_str()).collect();
            m.note(format!("pods after the upgrade: {names:?}; {replaced} replaced, {restarts} restarts (goal 0)"));
        }
        Ok(())
    }
}

/// The nodes kubectl may use while one is being upgraded.
#[derive(Clone, Default)]
pub(crate) struct Targets(Arc<Mutex<Vec<String>>>);

impl Targets {
    pub(crate) fn set(&self, hosts: Vec<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = hosts;
    }

    fn pick(&self, n: u64) -> Option<String> {
        let t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (!t.is_empty()).then(|| t[(n as usize) % t.len()].clone())
    }
}

/// Runs `f` under the two loops: kubectl through the nodes in `targets` (a ConfigMap created
/// and the pods listed, every 300 ms) and HTTP through the LoadBalancer IP from the client.
/// Sets `kubectl_requests`, `kubectl_failed`, `http_requests`, `http_failed`; fails when a
/// ConfigMap whose creation kubectl confirmed is missing afterwards (a lost write).
pub(crate) fn under_load<R>(
    app: &App<'_>,
    name: &str,
    rig: &dyn Rig,
    scratch: &Scratch,
    targets: &Targets,
    m: &mut Measured,
    f: impl FnOnce() -> Result<R>,
) -> Result<R> {
    let script = scratch.write("http-loop.sh", HTTP_LOOP)?;
    let polls = scratch.0.join("http-polls");
    let stop_file = scratch.0.join("http-stop");
    let (script_s, polls_s, stop_s) =
        (script.display().to_string(), polls.display().to_string(), stop_file.display().to_string());
    let stop = AtomicBool::new(false);
    let (ok, fail) = (AtomicU64::new(0), AtomicU64::new(0));
    let created: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let out = std::thread::scope(|s| {
        let client = app.k.client.clone();
        let vip = app.vip.clone();
        let http = s.spawn(move || {
            rig.exec_timeout(&client, &["bash", &script_s, &vip, &polls_s, &stop_s], Duration::from_secs(1800))
        });
        let kube = s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let Some(via) = targets.pick(n) else {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                };
                let cm = format!("upgrade-{n}");
                for args in [vec!["create", "configmap", cm.as_str(), "--from-literal=n=1"], vec!["get", "pods"]] {
                    match app.k.on(&via, &args) {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if args[0] == "create" {
                                created.lock().unwrap_or_else(|p| p.into_inner()).push(cm.clone());
                            }
                        }
                        Err(e) => {
                            fail.fetch_add(1, Ordering::Relaxed);
                            warn!(error = %e, "kubectl failed during the upgrade");
                            errors.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        let out = f();
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        let _ = std::fs::write(&stop_file, b"");
        let _ = kube.join();
        let _ = http.join();
        out
    });
    let out = out?;
    let p = read_polls(&polls);
    let http_failed = p.iter().filter(|p| !p.ok).count();
    m.set("http_requests", p.len() as f64);
    m.set("http_failed", http_failed as f64);
    m.set("kubectl_requests", (ok.load(Ordering::Relaxed) + fail.load(Ordering::Relaxed)) as f64);
    m.set("kubectl_failed", fail.load(Ordering::Relaxed) as f64);
    if let Some(e) = errors.lock().unwrap_or_else(|p| p.into_inner()).first() {
        m.note(format!("first kubectl failure: {e}"));
    }
    // Every ConfigMap kubectl saw created is still there.
    let list = app
        .k
        .on(&app.first, &["get", "configmaps", "-o", "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}"])
        .map_err(|e| failed(name, e))?;
    let have: std::collections::BTreeSet<&str> = list.lines().map(str::trim).collect();
    let created = created.into_inner().unwrap_or_else(|p| p.into_inner());
    let lost: Vec<&String> = created.iter().filter(|c| !have.contains(c.as_str())).collect();
    m.set("kubectl_writes_acked", created.len() as f64);
    if !lost.is_empty() {
        return Err(failed(name, format!("ConfigMaps created during the upgrade are gone: {lost:?}")));
    }
    Ok(out)
}

/// Waits until `host` has applied everything `leader` had applied when the wait started.
pub(crate) fn wait_caught_up(rig: &dyn Rig, name: &str, host: &str, leader: &str) -> Result<()> {
    let goal = shoal::status(rig, leader)?.applied_index;
    wait_until(&format!("{host} caught up to index {goal}"), CONVERGE_TIMEOUT, Duration::from_millis(200), || {
        shoal::status(rig, host).is_ok_and(|s| s.applied_index >= goal)
    })
    .map(|_| ())
    .map_err(|e| failed(name, e.to_string()))
}

/// `shoal status --json` on `host` as JSON (fields this crate's [`shoal::Status`] leaves out).
pub(crate) fn status_value(rig: &dyn Rig, host: &str) -> Option<serde_json::Value> {
    let out = shoal::run_shoal(rig, host, &["status", "--json"], shoal::CLI_TIMEOUT).ok()?;
    serde_json::from_str(&out.stdout).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_previous_commit_is_a_clear_error() {
        let root = shoal::workspace_root();
        let e = resolve_previous(&root, "no-such-rev-for-sure").unwrap_err();
        assert!(e.contains("no-such-rev-for-sure"), "{e}");
    }

    /// A clone without tags (as CI's may be) still finds the last release, from the list in
    /// the tree; the listed commit is an ancestor of HEAD.
    #[test]
    fn the_last_release_is_found_without_tags() {
        let root = shoal::workspace_root();
        let listed = last_listed_release(&root).expect("packaging/releases lists a release");
        let resolved = resolve_previous(&root, &listed).expect("the listed release is a commit of this history");
        assert_eq!(resolved, listed);
        assert!(git(&root, &["merge-base", "--is-ancestor", &listed, "HEAD"]).is_ok(), "{listed} is not an ancestor");
        assert!(resolve_previous(&root, "release").is_ok());
    }

    #[test]
    fn targets_rotate() {
        let t = Targets::default();
        assert_eq!(t.pick(1), None);
        t.set(vec!["a".into(), "b".into()]);
        assert_eq!((t.pick(0), t.pick(1)), (Some("a".into()), Some("b".into())));
    }
}
