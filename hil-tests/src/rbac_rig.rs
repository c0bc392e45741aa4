//! The `attacks` scenario, its RBAC part: the issue's "Done when" items other than alice's
//! (see [`crate::revocation`]), each with kubectl 1.31 and 1.33 (each version against its own
//! node) on the real rig:
//! - the token mounted in a running pod of the `default` ServiceAccount cannot list pods
//!   (kube-apiserver's 403, word for word); the token of a pod whose ServiceAccount is bound to
//!   `view` can;
//! - `kubectl create token default --audience foo` gives a token the API refuses (401), and a
//!   `--duration` above the maximum (48 h) is capped;
//! - a node's own certificate (from its data dir) reads the Secret of a pod bound to it, and is
//!   refused the Secret of a pod bound to another node (upstream's Node authorizer words);
//! - MetalLB's and ingress-nginx's install YAML (`../shared/fixtures`) apply unchanged, and
//!   `kubectl auth can-i --as=system:serviceaccount:metallb-system:...` answers as upstream.
//!
//! Everything it creates is deleted at the end (without waiting), so the later steps of the
//! scenario see the cluster as before.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::revocation::{binaries, kubectl_as};
use crate::rig::Rig;
use crate::scenarios::Measured;
use crate::services::{Kubectl, Scratch};
use crate::{Error, Result};

fn failed(reason: impl Into<String>) -> Error {
    Error::ScenarioFailed { scenario: "attacks".into(), reason: reason.into() }
}

/// Where a pod's ServiceAccount token is mounted.
const TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Where the install YAML lives when the checkout is not next to `shared/` (a worktree).
const SHARED_FIXTURES: &str = "/work/shared/fixtures";

/// The install YAML of the issue, applied unchanged.
const FIXTURES: [&str; 2] = ["metallb-native.yaml", "ingress-nginx-baremetal.yaml"];

/// Two busybox pods, one per node (`NODE1`, `NODE2`), each using a Secret of its own: `sa-default`
/// runs as the `default` ServiceAccount, `sa-viewer` as `viewer`, bound to `view` in default.
const OBJECTS: &str = r#"apiVersion: v1
kind: Secret
metadata: {name: rbac-rig-s1}
stringData: {k: one}
---
apiVersion: v1
kind: Secret
metadata: {name: rbac-rig-s2}
stringData: {k: two}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: viewer}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: viewer-view}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects: [{kind: ServiceAccount, name: viewer, namespace: default}]
---
apiVersion: v1
kind: Pod
metadata: {name: sa-default}
spec:
  nodeName: NODE1
  containers:
  - name: c
    image: busybox:1.25
    imagePullPolicy: Never
    command: [sleep, "3600"]
    envFrom: [{secretRef: {name: rbac-rig-s1}}]
  terminationGracePeriodSeconds: 0
---
apiVersion: v1
kind: Pod
metadata: {name: sa-viewer}
spec:
  nodeName: NODE2
  serviceAccountName: viewer
  containers:
  - name: c
    image: busybox:1.25
    imagePullPolicy: Never
    command: [sleep, "3600"]
    envFrom: [{secretRef: {name: rbac-rig-s2}}]
  terminationGracePeriodSeconds: 0
"#;

/// kube-apiserver's refusal of `get pods` to the default ServiceAccount of default.
const FORBIDDEN_PODS: &str = r#"Error from server (Forbidden): pods is forbidden: User "system:serviceaccount:default:default" cannot list resource "pods" in API group "" in the namespace "default""#;

/// The `certificate-authority-data` of a kubeconfig.
fn ca_data(kubeconfig: &str) -> Result<String> {
    kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .ok_or_else(|| failed("no certificate-authority-data in the admin kubeconfig"))
}

/// A kubeconfig with `user` (a YAML flow mapping) and the cluster CA; the server is given on
/// the command line by [`kubectl_as`].
fn kubeconfig_with(ca: &str, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: {ca}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user: {user}\n"
    )
}

/// The claims of a JWT, unverified.
fn claims(token: &str) -> Result<serde_json::Value> {
    let payload = token.trim().split('.').nth(1).ok_or_else(|| failed(format!("not a JWT: {token:?}")))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| failed(format!("JWT payload: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| failed(format!("JWT payload: {e}")))
}

/// Runs the module's steps (see the module doc) on `hosts` (3 of them: pods go to the second and
/// the third), from the client host; the admin is `k`.
pub(crate) fn rbac_on_rig(
    rig: &dyn Rig,
    k: &Kubectl<'_>,
    hosts: &[String],
    client: &str,
    scratch: &Scratch,
    m: &mut Measured,
) -> Result<()> {
    let started = Instant::now();
    let first = &hosts[0];
    let (n1, n2) = (&hosts[1 % hosts.len()], &hosts[2 % hosts.len()]);
    let objects = scratch.write("rbac-rig.yaml", &OBJECTS.replace("NODE1", n1).replace("NODE2", n2))?;
    k.apply(first, &objects, crate::shoal::CONVERGE_TIMEOUT)?;
    let admin_kc = std::fs::read_to_string(&k.kubeconfig).map_err(|source| Error::Io {
        op: "read",
        path: k.kubeconfig.clone(),
        source,
    })?;
    let ca = ca_data(&admin_kc)?;
    let bins = binaries()?;
    // While the pods start: tokens for another audience or too long, then the install YAML.
    create_token(rig, hosts, client, &k.kubeconfig, &ca, &bins, scratch, m)?;
    install_yaml(rig, k, hosts, client, &bins, m)?;
    let result = pod_tokens_and_node_certs(rig, k, hosts, client, &ca, &bins, scratch, m);
    let path = objects.display().to_string();
    if let Err(e) = k.on(first, &["delete", "-f", &path, "--wait=false", "--ignore-not-found"]) {
        m.note(format!("deleting the RBAC step's objects: {e}"));
    }
    result?;
    let ms = started.elapsed().as_millis() as f64;
    println!("rbac_rig_ms: {ms}");
    m.set("rbac_rig_ms", ms);
    Ok(())
}

/// `kubectl create token` as the admin with each version: `--audience foo` is refused by the
/// API, `--duration 100h` is capped at 48 h and signs in as the ServiceAccount.
#[allow(clippy::too_many_arguments)]
fn create_token(
    rig: &dyn Rig,
    hosts: &[String],
    client: &str,
    admin: &Path,
    ca: &str,
    bins: &[(&'static str, usize, PathBuf)],
    scratch: &Scratch,
    m: &mut Measured,
) -> Result<()> {
    for (version, i, bin) in bins {
        let host = &hosts[*i % hosts.len()];
        let what = |step: &str| format!("kubectl {version} on {host}: {step}");
        let as_admin = |args: &[&str]| kubectl_as(rig, client, bin, admin, host, args);
        let other_aud = as_admin(&["create", "token", "default", "--audience", "foo"])?
            .map_err(|e| failed(what(&format!("create token --audience foo: {e}"))))?;
        let aud = claims(&other_aud)?["aud"].clone();
        if aud != serde_json::json!(["foo"]) {
            return Err(failed(what(&format!("a token asked for audience foo has aud {aud}"))));
        }
        let kc = scratch.write(
            &format!("foo-{version}.kubeconfig"),
            &kubeconfig_with(ca, &format!("{{token: {}}}", other_aud.trim())),
        )?;
        match kubectl_as(rig, client, bin, &kc, host, &["get", "pods"])? {
            Err(e) if e.contains("Unauthorized") => {}
            other => return Err(failed(what(&format!("a token for audience foo was not refused (401): {other:?}")))),
        }
        let long = as_admin(&["create", "token", "default", "--duration", "100h"])?
            .map_err(|e| failed(what(&format!("create token --duration 100h: {e}"))))?;
        let c = claims(&long)?;
        let lifetime = c["exp"].as_i64().unwrap_or(0) - c["iat"].as_i64().unwrap_or(0);
        if lifetime != 48 * 3600 {
            return Err(failed(what(&format!("--duration 100h gave a token for {lifetime} s, not the 48 h maximum"))));
        }
        let kc = scratch.write(
            &format!("long-{version}.kubeconfig"),
            &kubeconfig_with(ca, &format!("{{token: {}}}", long.trim())),
        )?;
        match kubectl_as(
            rig,
            client,
            bin,
            &kc,
            host,
            &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"],
        )? {
            Ok(who) if who.trim() == "system:serviceaccount:default:default" => {}
            other => return Err(failed(what(&format!("the capped token does not sign in as default: {other:?}")))),
        }
        m.note(what("create token: audience foo refused (401), --duration 100h capped at 48 h"));
    }
    Ok(())
}

/// `kubectl auth can-i` checks of MetalLB's ServiceAccounts, with kube-apiserver's answers.
const CAN_I: [(&str, &[&str], &str); 5] = [
    ("controller", &["list", "services"], "yes"),
    ("controller", &["delete", "services"], "no"),
    ("controller", &["get", "secrets", "-n", "metallb-system"], "yes"),
    ("controller", &["get", "secrets", "-n", "default"], "no"),
    ("speaker", &["list", "pods", "-n", "kube-system"], "no"),
];

/// The install YAML applied unchanged (MetalLB with the first version, ingress-nginx with the
/// second, then MetalLB again with the second: nothing to change), `auth can-i` as MetalLB's
/// ServiceAccounts with each version; then both deleted.
fn install_yaml(
    rig: &dyn Rig,
    k: &Kubectl<'_>,
    hosts: &[String],
    client: &str,
    bins: &[(&'static str, usize, PathBuf)],
    m: &mut Measured,
) -> Result<()> {
    let dir = [crate::shoal::workspace_root().join("../shared/fixtures"), PathBuf::from(SHARED_FIXTURES)]
        .into_iter()
        .find(|d| d.join(FIXTURES[0]).is_file())
        .unwrap_or_else(|| PathBuf::from(SHARED_FIXTURES));
    let files: Vec<String> = FIXTURES.iter().map(|f| dir.join(f).display().to_string()).collect();
    for f in &files {
        if !Path::new(f).is_file() {
            return Err(failed(format!("no install YAML at {f}")));
        }
    }
    let result = (|| -> Result<()> {
        let plan = [(&files[0], &bins[0]), (&files[1], &bins[bins.len() - 1]), (&files[0], &bins[bins.len() - 1])];
        for (file, (version, i, bin)) in plan {
            let host = &hosts[*i % hosts.len()];
            let out = kubectl_as(rig, client, bin, &k.kubeconfig, host, &["apply", "-f", file])?
                .map_err(|e| failed(format!("kubectl {version} apply -f {file} on {host}: {e}")))?;
            if !out.contains("clusterrolebinding.rbac.authorization.k8s.io/") {
                return Err(failed(format!("kubectl {version} apply -f {file}: no ClusterRoleBinding in\n{out}")));
            }
        }
        for (version, i, bin) in bins {
            let host = &hosts[*i % hosts.len()];
            for (sa, args, want) in CAN_I {
                let as_sa = format!("--as=system:serviceaccount:metallb-system:{sa}");
                let mut full = vec!["auth", "can-i", as_sa.as_str()];
                full.extend_from_slice(args);
                let got = match kubectl_as(rig, client, bin, &k.kubeconfig, host, &full)? {
                    Ok(out) | Err(out) => out,
                };
                if got.trim().lines().last().map(str::trim) != Some(want) {
                    return Err(failed(format!(
                        "kubectl {version} on {host}: auth can-i {sa} {}: want {want}, got {got:?}",
                        args.join(" ")
                    )));
                }
            }
        }
        Ok(())
    })();
    for f in files.iter().rev() {
        if let Err(e) = k.on(&hosts[0], &["delete", "-f", f, "--wait=false", "--ignore-not-found"]) {
            m.note(format!("deleting {f}: {e}"));
        }
    }
    result?;
    m.note(format!(
        "{} and {} applied unchanged; auth can-i as MetalLB's ServiceAccounts as upstream, with kubectl 1.31 and 1.33",
        FIXTURES[0], FIXTURES[1]
    ));
    Ok(())
}

/// The running pods' tokens with each version: the default ServiceAccount's cannot list pods,
/// `viewer`'s can; each node's certificate reads its pod's Secret and not the other node's.
#[allow(clippy::too_many_arguments)]
fn pod_tokens_and_node_certs(
    rig: &dyn Rig,
    k: &Kubectl<'_>,
    hosts: &[String],
    client: &str,
    ca: &str,
    bins: &[(&'static str, usize, PathBuf)],
    scratch: &Scratch,
    m: &mut Measured,
) -> Result<()> {
    let first = &hosts[0];
    let mut last = String::new();
    crate::wait_until("sa-default and sa-viewer running", Duration::from_secs(90), Duration::from_millis(500), || {
        last = k
            .on(first, &["get", "pods", "sa-default", "sa-viewer", "-o", "jsonpath={.items[*].status.phase}"])
            .unwrap_or_else(|e| e);
        last.trim() == "Running Running"
    })
    .map_err(|e| failed(format!("{e}: {last}")))?;
    let mut kcs = Vec::new();
    for pod in ["sa-default", "sa-viewer"] {
        let token =
            k.on(first, &["exec", pod, "--", "cat", TOKEN_PATH]).map_err(|e| failed(format!("{pod}'s token: {e}")))?;
        let kc = scratch
            .write(&format!("{pod}.kubeconfig"), &kubeconfig_with(ca, &format!("{{token: {}}}", token.trim())))?;
        kcs.push(kc);
    }
    for (version, i, bin) in bins {
        let host = &hosts[*i % hosts.len()];
        let what = |step: &str| format!("kubectl {version} on {host}: {step}");
        match kubectl_as(rig, client, bin, &kcs[0], host, &["get", "pods", "-n", "default"])? {
            Err(e) if e.contains(FORBIDDEN_PODS) => {}
            other => {
                return Err(failed(what(&format!("the default token's get pods: not upstream's refusal: {other:?}"))))
            }
        }
        match kubectl_as(rig, client, bin, &kcs[1], host, &["get", "pods", "-n", "default", "-o", "name"])? {
            Ok(out) if out.lines().any(|l| l.trim() == "pod/sa-viewer") => {}
            other => return Err(failed(what(&format!("the view-bound token cannot list pods: {other:?}")))),
        }
        m.note(what("a pod's default token is refused pods (403), a view-bound pod's token lists them"));
    }
    // Each node's certificate, as its data dir holds it, with the version that talks to it.
    for (version, i, bin) in bins {
        let node = &hosts[*i % hosts.len()];
        let (own, other) = if node == &hosts[1 % hosts.len()] {
            ("rbac-rig-s1", "rbac-rig-s2")
        } else {
            ("rbac-rig-s2", "rbac-rig-s1")
        };
        let pki = rig.data_dir(node)?.join("pki");
        let user = format!(
            "{{client-certificate: {}, client-key: {}}}",
            pki.join("node.crt").display(),
            pki.join("node.key").display()
        );
        let kc = scratch.write(&format!("node-{node}.kubeconfig"), &kubeconfig_with(ca, &user))?;
        let what = |step: &str| format!("kubectl {version} as node {node}: {step}");
        match kubectl_as(rig, client, bin, &kc, node, &["get", "secret", own, "-o", "jsonpath={.data.k}"])? {
            Ok(v) if !v.trim().is_empty() => {}
            other => return Err(failed(what(&format!("its own pod's Secret {own}: {other:?}")))),
        }
        let refusal = format!(
            r#"secrets "{other}" is forbidden: User "system:node:{node}" cannot get resource "secrets" in API group "" in the namespace "default": no relationship found between node '{node}' and this object"#
        );
        match kubectl_as(rig, client, bin, &kc, node, &["get", "secret", other])? {
            Err(e) if e.contains(&refusal) => {}
            other_result => {
                return Err(failed(what(&format!(
                    "another node's pod's Secret {other}: not upstream's refusal: {other_result:?}"
                ))))
            }
        }
        m.note(what("reads its pod's Secret, refused another node's pod's Secret as upstream"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_of_a_jwt_are_read_and_garbage_is_an_error() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"aud":["foo"],"exp":10,"iat":4}"#);
        let c = claims(&format!("h.{payload}.s\n")).unwrap();
        assert_eq!(c["aud"][0], "foo");
        assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 6);
        assert!(claims("nodots").is_err());
        assert!(claims("a.!!!.c").is_err());
    }

    #[test]
    fn a_kubeconfig_carries_the_admins_ca() {
        let admin = "clusters:\n- cluster:\n    certificate-authority-data: QUJD\n    server: https://x:6443\n";
        let ca = ca_data(admin).unwrap();
        assert_eq!(ca, "QUJD");
        let kc = kubeconfig_with(&ca, "{token: t}");
        assert!(kc.contains("certificate-authority-data: QUJD") && kc.contains("user: {token: t}"), "{kc}");
        assert!(ca_data("users: []").is_err());
    }
}
