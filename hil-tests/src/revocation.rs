//! The `attacks` scenario, its revocation part: a user minted with `shoal kubeconfig --user`
//! works on every node, gets `edit` in a namespace and uses it as upstream with kubectl 1.31
//! and 1.33, is revoked on one node, and is refused by every node within 2 s
//! (`revoke_lockout_ms`); then a node removed with `shoal node remove` can no longer open a
//! peer service of any node with its certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::rig::Rig;
use crate::scenarios::Measured;
use crate::services::{Kubectl, Scratch};
use crate::shoal;
use crate::{Error, Result};

/// The longest a revocation may take to reach every node.
const LOCKOUT_LIMIT: Duration = Duration::from_secs(2);

fn failed(reason: impl Into<String>) -> Error {
    Error::ScenarioFailed { scenario: "attacks".into(), reason: reason.into() }
}

/// The kubectl versions alice's steps run with, each against its own node (index into the
/// hosts): the oldest and the newest the gcloud SDK carries that the issue names.
pub(crate) const VERSIONS: [(&str, usize); 2] = [("1.31", 1), ("1.33", 2)];

/// kube-apiserver's refusal of alice's `get secrets -n default`, word for word.
const FORBIDDEN_SECRETS: &str = r#"Error from server (Forbidden): secrets is forbidden: User "alice" cannot list resource "secrets" in API group "" in the namespace "default""#;

/// `kubectl ARGS` (the binary `bin`) as the user of `kubeconfig` against `host`'s API, from
/// the client: Ok(stdout) or Err(stderr).
pub(crate) fn kubectl_as(
    rig: &dyn Rig,
    client: &str,
    bin: &Path,
    kubeconfig: &Path,
    host: &str,
    args: &[&str],
) -> Result<std::result::Result<String, String>> {
    let server = format!("https://{}:6443", rig.address(host)?);
    let (kc, bin) = (kubeconfig.display().to_string(), bin.display().to_string());
    let mut cmd = vec![bin.as_str(), "--kubeconfig", &kc, "--server", &server, "--request-timeout=5s"];
    cmd.extend_from_slice(args);
    let out = rig.exec_timeout(client, &cmd, Duration::from_secs(20))?;
    Ok(if out.success() { Ok(out.stdout) } else { Err(format!("{}{}", out.stderr, out.stdout)) })
}

/// The kubectl binaries of [`VERSIONS`].
pub(crate) fn binaries() -> Result<Vec<(&'static str, usize, PathBuf)>> {
    VERSIONS
        .iter()
        .map(|&(v, i)| crate::walkthrough::versions::kubectl_bin(v).map(|b| (v, i, b)).map_err(failed))
        .collect()
}

/// The issue's "Done when" steps for a minted user, with each kubectl of [`VERSIONS`] against
/// its own node: alice, bound to `edit` in dev (and `admin` in ops), creates a Deployment in
/// dev, is refused Secrets in default with upstream's words, sees `edit`'s rules in `auth
/// can-i --list`, and cannot write a Role granting more than she holds.
fn alice_as_editor(
    rig: &dyn Rig,
    k: &Kubectl<'_>,
    hosts: &[String],
    client: &str,
    kc: &Path,
    m: &mut Measured,
) -> Result<()> {
    let first = &hosts[0];
    let admin = |args: &[&str]| k.on(first, args).map_err(failed);
    for ns in ["dev", "ops"] {
        if let Err(e) = k.on(first, &["create", "namespace", ns]) {
            if !e.contains("AlreadyExists") {
                return Err(failed(e));
            }
        }
    }
    admin(&["create", "rolebinding", "alice-edit", "--clusterrole=edit", "--user=alice", "-n", "dev"])?;
    admin(&["create", "rolebinding", "alice-admin", "--clusterrole=admin", "--user=alice", "-n", "ops"])?;
    for (version, i, bin) in binaries()? {
        let host = &hosts[i.min(hosts.len() - 1)];
        let alice = |args: &[&str]| kubectl_as(rig, client, &bin, kc, host, args);
        let what = |step: &str| format!("kubectl {version} on {host}: {step}");
        let deploy = format!("web-{}", version.replace('.', "-"));
        alice(&["create", "deployment", &deploy, "--image=busybox", "--replicas=0", "-n", "dev"])?
            .map_err(|e| failed(what(&format!("alice could not create a Deployment in dev: {e}"))))?;
        match alice(&["get", "secrets", "-n", "default"])? {
            Err(e) if e.contains(FORBIDDEN_SECRETS) => {}
            other => return Err(failed(what(&format!("get secrets -n default: not upstream's refusal: {other:?}")))),
        }
        let list = alice(&["auth", "can-i", "--list", "-n", "dev"])?
            .map_err(|e| failed(what(&format!("auth can-i --list: {e}"))))?;
        for want in ["selfsubjectaccessreviews.authorization.k8s.io", "deployments.apps", "secrets", "pods/exec"] {
            if !list.lines().any(|l| l.starts_with(want)) {
                return Err(failed(what(&format!("auth can-i --list -n dev lacks {want}:\n{list}"))));
            }
        }
        if list.contains("rolebindings") {
            return Err(failed(what(&format!("auth can-i --list -n dev shows RBAC rights edit lacks:\n{list}"))));
        }
        let role = format!("nodes-{}", version.replace('.', "-"));
        match alice(&["create", "role", &role, "--verb=get", "--resource=nodes", "-n", "ops"])? {
            Err(e) if e.contains("is attempting to grant RBAC permissions not currently held") => {}
            other => return Err(failed(what(&format!("an escalating Role was not refused as upstream: {other:?}")))),
        }
        m.note(format!("alice with kubectl {version} on {host}: edit in dev as upstream"));
    }
    Ok(())
}

/// Mints alice on `hosts[0]`, runs [`alice_as_editor`], revokes her there and measures until
/// every node refuses her handshake (each node polled with one kubectl of [`VERSIONS`]; then
/// every version is refused by every node).
pub(crate) fn revoke_user(
    rig: &dyn Rig,
    k: &Kubectl<'_>,
    hosts: &[String],
    client: &str,
    scratch: &Scratch,
    m: &mut Measured,
) -> Result<()> {
    let first = &hosts[0];
    let kc = shoal::kubeconfig_for(rig, first, "alice", &[])?;
    let kc = scratch.write("alice.kubeconfig", &kc)?;
    let bins = binaries()?;
    for (i, h) in hosts.iter().enumerate() {
        let bin = &bins[i % bins.len()].2;
        match kubectl_as(rig, client, bin, &kc, h, &["auth", "whoami"])? {
            Ok(out) if out.contains("alice") => {}
            Ok(out) => return Err(failed(format!("alice on {h} is not alice: {out}"))),
            Err(e) => return Err(failed(format!("a freshly minted alice is refused on {h}: {e}"))),
        }
    }
    alice_as_editor(rig, k, hosts, client, &kc, m)?;
    let out = shoal::run_shoal(rig, first, &["kubeconfig", "revoke", "--user", "alice"], shoal::CLI_TIMEOUT)?;
    if !out.success() {
        return Err(failed(format!("shoal kubeconfig revoke: {}", out.stderr.trim())));
    }
    let revoked = Instant::now();
    // One poller per node, so each refusal is timed on its own.
    let results: Vec<std::result::Result<Duration, String>> = std::thread::scope(|s| {
        let pollers: Vec<_> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let (kc, bin) = (&kc, &bins[i % bins.len()].2);
                s.spawn(move || -> std::result::Result<Duration, String> {
                    let mut last = String::new();
                    while revoked.elapsed() < LOCKOUT_LIMIT * 5 {
                        match kubectl_as(rig, client, bin, kc, h, &["auth", "whoami"]) {
                            Ok(Err(e)) if e.contains("revoked") => return Ok(revoked.elapsed()),
                            Ok(Err(e)) => last = e,
                            Ok(Ok(_)) => last = "still admitted".into(),
                            Err(e) => last = e.to_string(),
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(format!("{h}: alice not refused as revoked: {}", last.trim()))
                })
            })
            .collect();
        pollers.into_iter().map(|p| p.join().unwrap_or_else(|_| Err("poller panicked".into()))).collect()
    });
    let mut worst = Duration::ZERO;
    for r in results {
        worst = worst.max(r.map_err(failed)?);
    }
    let ms = worst.as_millis() as f64;
    println!("revoke_lockout_ms: {ms}");
    m.set("revoke_lockout_ms", ms);
    if worst > LOCKOUT_LIMIT {
        return Err(failed(format!("revoking alice took {worst:?} to reach every node (limit {LOCKOUT_LIMIT:?})")));
    }
    for (version, _, bin) in &bins {
        for h in hosts {
            match kubectl_as(rig, client, bin, &kc, h, &["get", "deployments", "-n", "dev"])? {
                Err(e) if e.contains("revoked") => {}
                other => return Err(failed(format!("revoked alice with kubectl {version} on {h}: {other:?}"))),
            }
        }
    }
    m.note(format!("revoked alice: refused by every node within {ms} ms, with kubectl 1.31 and 1.33"));
    Ok(())
}

/// Calls a peer service of the node at `addr` with the node certificate in `pki` (node.crt,
/// node.key, ca.crt of a data dir), as that node would (`shoal-hil peer-call`): Ok when the
/// peer served the call (an unknown service answered counts: the connection was accepted).
pub fn peer_call(addr: SocketAddr, pki: &Path) -> anyhow::Result<()> {
    let read =
        |f: &str| std::fs::read_to_string(pki.join(f)).map_err(|e| anyhow::anyhow!("{}: {e}", pki.join(f).display()));
    let tls =
        shoal_gossip::NodeTls { ca_cert_pem: read("ca.crt")?, cert_pem: read("node.crt")?, key_pem: read("node.key")? };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let t = shoal_gossip::Transport::bind("0.0.0.0:0".parse()?, tls)?;
        let r = t.call_with_timeout(addr, "hil/probe", Vec::new(), Duration::from_secs(5)).await;
        t.shutdown().await;
        match r {
            Ok(_) | Err(shoal_gossip::Error::UnknownService { .. }) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("{e:?}")),
        }
    })
}

/// Removes `hosts[last]` with `shoal node remove` on `hosts[0]`; its certificate opened peer
/// services before, and every other node refuses it after. Leaves the cluster without that
/// node: run it last.
pub(crate) fn remove_node(
    rig: &dyn Rig,
    hosts: &[String],
    client: &str,
    hil_bin: &Path,
    scratch: &Scratch,
    m: &mut Measured,
) -> Result<()> {
    let (first, removed) = (&hosts[0], &hosts[hosts.len() - 1]);
    // A copy of the removed node's certificate and key, as someone who took its disk has.
    let pki = rig.data_dir(removed)?.join("pki");
    let marker = scratch.write("removed-pki.txt", "the removed node's certificate, copied for peer-call\n")?;
    let copy = marker.with_extension("d");
    std::fs::create_dir_all(&copy).map_err(|source| Error::Io { op: "create dir", path: copy.clone(), source })?;
    for f in ["ca.crt", "node.crt", "node.key"] {
        std::fs::copy(pki.join(f), copy.join(f)).map_err(|source| Error::Io {
            op: "copy",
            path: pki.join(f),
            source,
        })?;
    }
    let bin = hil_bin.display().to_string();
    let dir = copy.display().to_string();
    let others = &hosts[..hosts.len() - 1];
    let call = |h: &str| -> Result<std::result::Result<(), String>> {
        let addr = format!("{}:7443", rig.address(h)?);
        let out =
            rig.exec_timeout(client, &[&bin, "peer-call", "--addr", &addr, "--pki", &dir], Duration::from_secs(20))?;
        Ok(if out.success() { Ok(()) } else { Err(out.stderr.trim().to_string()) })
    };
    for h in others {
        if let Err(e) = call(h)? {
            return Err(failed(format!("{removed}'s certificate cannot reach {h} even before its removal: {e}")));
        }
    }
    let out = shoal::run_shoal(rig, first, &["node", "remove", removed], shoal::CLI_TIMEOUT)?;
    if !out.success() {
        return Err(failed(format!("shoal node remove {removed}: {}", out.stderr.trim())));
    }
    let started = Instant::now();
    for h in others {
        let mut last = String::new();
        let refused = crate::wait_until(
            &format!("{h} refuses {removed}'s certificate"),
            LOCKOUT_LIMIT * 5,
            Duration::from_millis(100),
            || match call(h) {
                Ok(Err(e)) if e.contains("evoked") => true,
                Ok(Err(e)) => {
                    last = e;
                    false
                }
                Ok(Ok(())) => {
                    last = "still served".into();
                    false
                }
                Err(e) => {
                    last = e.to_string();
                    false
                }
            },
        );
        if refused.is_err() {
            return Err(failed(format!("{h} still lets the removed {removed} in: {last}")));
        }
    }
    let ms = started.elapsed().as_millis();
    m.set("node_remove_lockout_ms", ms as f64);
    // The rest of the cluster still takes writes.
    match shoal::kv_put(rig, first, "/hil/after-remove", "1", Duration::from_secs(10)) {
        crate::history::Outcome::Ok(_) => {}
        other => return Err(failed(format!("after removing {removed}, a write through {first}: {other:?}"))),
    }
    m.note(format!("removed {removed}: its certificate refused by every other node within {ms} ms"));
    Ok(())
}
